//! Packaging and cross-compilation configuration stays consistent: cross-rs finds its config
//! under the name it reads, and every packaged file exists.

use std::path::Path;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn cross_reads_the_config_under_its_own_name() {
    // cross looks for Cross.toml; the design keeps cross.toml, so Cross.toml must resolve to it.
    let upper = std::fs::read_to_string(root().join("Cross.toml")).expect("Cross.toml");
    assert_eq!(
        upper,
        std::fs::read_to_string(root().join("cross.toml")).unwrap()
    );
    let config: toml::Table = toml::from_str(&upper).unwrap();
    assert_eq!(
        config["build"]["default-target"].as_str(),
        Some("aarch64-unknown-linux-musl")
    );
    assert_eq!(
        config["target"]["aarch64-unknown-linux-musl"]["runner"].as_str(),
        Some("qemu-user")
    );
}

#[test]
fn debian_package_assets_exist() {
    let manifest: toml::Table =
        toml::from_str(&std::fs::read_to_string(root().join("Cargo.toml")).unwrap()).unwrap();
    let deb = &manifest["package"]["metadata"]["deb"];
    let edge = &deb["variants"]["edge"];
    for asset in deb["assets"]
        .as_array()
        .unwrap()
        .iter()
        .chain(edge["assets"].as_array().unwrap())
    {
        let source = asset[0].as_str().unwrap();
        if source.starts_with("target/") {
            continue; // built binaries
        }
        assert!(root().join(source).is_file(), "{source} missing");
    }
    // The boards' package carries the edge daemon and nothing of the backend.
    let edge_bins: Vec<&str> = edge["assets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a[0].as_str().unwrap())
        .filter(|s| s.starts_with("target/"))
        .collect();
    assert_eq!(edge_bins, ["target/release/hedged"]);
    let scripts = root().join(deb["maintainer-scripts"].as_str().unwrap());
    for script in ["postinst", "postrm"] {
        let text = std::fs::read_to_string(scripts.join(script)).unwrap();
        assert!(text.contains("#DEBHELPER#"), "{script}: no #DEBHELPER#");
    }
    let units = root().join(deb["systemd-units"]["unit-scripts"].as_str().unwrap());
    assert!(units.join("hedged.service").is_file());
}
