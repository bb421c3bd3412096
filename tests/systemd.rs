//! The shipped unit passes `systemd-analyze verify` (with no warnings: unknown keys are only
//! warnings there) and keeps the hardening it promises.

use std::process::Command;

#[test]
fn unit_verifies_and_is_hardened() {
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/systemd/hedged.service"
    ))
    .unwrap();
    for setting in [
        "Type=notify",
        "WatchdogSec=",
        "StateDirectory=hedge",
        "ConfigurationDirectory=hedge",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "PrivateTmp=yes",
    ] {
        assert!(unit.contains(setting), "{setting} missing");
    }
    // verify checks that ExecStart exists: point it at the binary under test.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hedged.service");
    std::fs::write(
        &path,
        unit.replace("/usr/bin/hedged", env!("CARGO_BIN_EXE_hedged")),
    )
    .unwrap();
    let o = Command::new("systemd-analyze")
        .args(["verify", path.to_str().unwrap()])
        .output()
        .expect("systemd-analyze (apt-get install systemd; .ci/run does)");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success() && err.trim().is_empty(), "{err}");

    // And the unit is really hardened: systemd's own exposure score (0 safe … 10 exposed).
    let o = Command::new("systemd-analyze")
        .args(["security", "--offline=true", path.to_str().unwrap()])
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr);
    let score: f64 = text
        .split("Overall exposure level for hedged.service:")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no exposure score in: {text}"));
    assert!(score <= 2.0, "exposure {score}: {text}");
}
