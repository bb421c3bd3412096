//! The aarch64 build of hedged, run under qemu-aarch64, classifies vectors and publishes to a
//! real mosquitto; the x86 backend decrypts them and they match the integer reference.
//!
//! Needs the cross build (`scripts/build-aarch64.sh`) and qemu-user, so it is ignored by a
//! plain `cargo test`; `.ci/run` builds for aarch64 and runs it with `--ignored`.

mod common;
use common::*;
use std::path::PathBuf;
use std::process::Command;

const TARGET: &str = "aarch64-unknown-linux-musl";

#[test]
#[ignore = "needs scripts/build-aarch64.sh and qemu-aarch64; .ci/run runs it"]
fn aarch64_hedged_under_qemu_publishes_decryptable_results() {
    let bin = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("target")
        .join(TARGET)
        .join("release/hedged");
    let elf = std::fs::read(&bin)
        .unwrap_or_else(|e| panic!("{}: {e} (run scripts/build-aarch64.sh)", bin.display()));
    assert_eq!(&elf[..4], b"\x7fELF");
    assert_eq!(u16::from_le_bytes([elf[18], elf[19]]), 183, "EM_AARCH64");

    let st = setup("last");
    let broker = Mosquitto::start(&st.root);
    let out = st.root.join("out.jsonl");
    let dec = decryptor(&st, &broker.addr(), 4, &out);
    let input = st.root.join("in.txt");
    std::fs::write(&input, st.vectors[..4].join("\n")).unwrap();
    // The identity key is a file in the state directory: made by the x86 build, used by the
    // board's.
    enrol(&st, &st.root.join("spool"), "board");
    let mut qemu = Command::new("qemu-aarch64");
    qemu.arg(&bin);
    let h = hedged_args(
        qemu,
        &st,
        &broker.addr(),
        s(&input),
        &st.root.join("spool"),
        "board",
    )
    .spawn()
    .expect("qemu-aarch64 (apt-get install qemu-user; .ci/run does)");
    let log = wait_ok(h, "aarch64 hedged");
    assert!(log.contains("input finished: 4 result(s)"), "{log}");
    wait_ok(dec, "decryptor");
    check_results(&st, &out, 4);
}
