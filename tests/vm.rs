//! The board for real: the Debian package installed and run by a real systemd in a virtual
//! machine (the host side of `scripts/vm-test.sh`, which builds the guest image and the
//! package and runs this test with `--ignored`). Here: the backend — keys, two bundles, a
//! mosquitto the guest reaches at 10.0.2.2, `hedge decrypt`, the enrolment of the board's
//! identity — and the VM itself; `scripts/vm-guest.sh` does the board's side in the guest.
//! At the end every result the guest made is decrypted exactly once, to the integer
//! reference's class, by the bundle it ran at the time.

mod common;
use common::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} unset: run scripts/vm-test.sh"))
}

/// How to run an x86-64 guest: KVM when /dev/kvm is there and a kernel actually boots under it
/// (a nested hypervisor may offer /dev/kvm and never get a guest past the kernel's entry),
/// TCG otherwise; and why.
fn x86_accel(vm: &Path, scratch: &Path) -> (&'static str, String) {
    if std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_err()
    {
        return ("tcg", "no usable /dev/kvm".into());
    }
    let console = scratch.join("kvm-probe.log");
    let mut probe = Command::new("qemu-system-x86_64")
        .args(["-machine", "q35,accel=kvm", "-cpu", "host", "-m", "512"])
        .args(["-nographic", "-monitor", "none", "-kernel"])
        .arg(vm.join("vmlinuz"))
        .args(["-append", "console=ttyS0 panic=-1", "-no-reboot", "-serial"])
        .arg(format!("file:{}", console.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("qemu-system-x86_64 (scripts/vm-test.sh installs it)");
    let t = Instant::now();
    let booted = loop {
        let text = std::fs::read_to_string(&console).unwrap_or_default();
        if text.contains("Linux version") {
            break true;
        }
        if t.elapsed() > Duration::from_secs(20) || probe.try_wait().unwrap().is_some() {
            break false;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let _ = probe.kill();
    let _ = probe.wait();
    if booted {
        ("kvm", "KVM".into())
    } else {
        (
            "tcg",
            "/dev/kvm present but no kernel output under KVM within 20 s: TCG".into(),
        )
    }
}

/// The qemu command line for `arch`: direct kernel boot of the cached image through a
/// throw-away overlay, user-mode networking, the share as 9p, the console to `serial`.
fn qemu(
    arch: &str,
    accel: &str,
    vm: &Path,
    overlay: &Path,
    share: &Path,
    serial: &Path,
) -> Command {
    let (mut c, console) = match (arch, accel) {
        ("x86_64", "kvm") => {
            let mut c = Command::new("qemu-system-x86_64");
            c.args(["-machine", "q35,accel=kvm", "-cpu", "host"]);
            (c, "ttyS0")
        }
        ("x86_64", _) => {
            let mut c = Command::new("qemu-system-x86_64");
            c.args(["-machine", "q35,accel=tcg", "-cpu", "max"]);
            (c, "ttyS0")
        }
        ("aarch64", _) => {
            let mut c = Command::new("qemu-system-aarch64");
            c.args(["-machine", "virt", "-cpu", "max,pauth-impdef=on"]);
            (c, "ttyAMA0")
        }
        (other, _) => panic!("no VM for {other}"),
    };
    c.args(["-smp", "2", "-m", "2048", "-nographic", "-monitor", "none"])
        .arg("-kernel")
        .arg(vm.join("vmlinuz"))
        .arg("-initrd")
        .arg(vm.join("initrd.img"))
        .args([
            "-append",
            &format!("root=/dev/vda rw console={console} systemd.show_status=1"),
        ])
        .arg("-drive")
        .arg(format!("file={},if=virtio,format=qcow2", overlay.display()))
        .args([
            "-netdev",
            "user,id=n0",
            "-device",
            "virtio-net-pci,netdev=n0",
        ])
        .args(["-device", "virtio-rng-pci"])
        .arg("-virtfs")
        .arg(format!(
            "local,path={},mount_tag=host,security_model=none,id=host",
            share.display()
        ))
        .arg("-serial")
        .arg(format!("file:{}", serial.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(vm.join("qemu.err")).unwrap());
    c
}

/// The running guest: killed if the test ends before it powers off (a failed check panics).
struct Vm(std::process::Child);

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
#[ignore = "boots a virtual machine: run by scripts/vm-test.sh"]
fn the_package_runs_under_a_real_systemd() {
    let arch = env("HEDGE_VM_ARCH");
    let vm = PathBuf::from(env("HEDGE_VM_DIR"));
    // The synthetic `last` model, 48→16→10 unless HEDGE_VM_SHAPE names another (the demo's
    // 2304,512,10 for figures worth more).
    let shape = std::env::var("HEDGE_VM_SHAPE").unwrap_or_else(|_| "48,16,10".into());
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let keys = root.join("keys");
    hedge(&["keygen", "--out", s(&keys)]);
    let bundle = model_shaped(root, &keys, "", 1, "last", &shape);
    let next = model_shaped(root, &keys, "v2", 2, "last", &shape);
    let vectors: Vec<String> = std::fs::read_to_string(root.join("test.txt"))
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    let broker = Mosquitto::start(root);
    let out = root.join("results.jsonl");
    let session = ["--client-id", "vm-backend", "--idle-timeout", "3600"];
    let decryptor = decryptor_of(&keys, &broker.addr(), &session, &out);

    // What the guest gets: the package, the bundles, the key, the vectors, its script.
    let share = root.join("share");
    std::fs::create_dir(&share).unwrap();
    let copy = |from: &Path, to: &str| std::fs::copy(from, share.join(to)).unwrap();
    copy(Path::new(&env("HEDGE_VM_DEB")), "hedge.deb");
    copy(&bundle, "model.bundle");
    copy(&next, "next.bundle");
    copy(&keys.join("verifying.key"), "verifying.key");
    copy(Path::new(&env("HEDGE_VM_GUEST")), "vm-guest.sh");
    // vectors-1 (4) by the first bundle, vectors-2 (4) after the reload, vectors-3 (2) made
    // offline and delivered after the reboot.
    let batches = [&vectors[0..4], &vectors[4..8], &vectors[8..10]];
    for (i, b) in batches.iter().enumerate() {
        std::fs::write(share.join(format!("vectors-{}.txt", i + 1)), b.join("\n")).unwrap();
    }
    let overlay = root.join("overlay.qcow2");
    let made = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
        .arg(vm.join("image.raw"))
        .arg(&overlay)
        .status()
        .unwrap();
    assert!(made.success(), "qemu-img create");
    let serial = vm.join("serial.log");
    let (accel, why) = match arch.as_str() {
        "x86_64" => x86_accel(&vm, root),
        _ => ("tcg", "TCG".into()),
    };
    eprintln!("vm: {arch} guest under {why}");
    let mut command = qemu(&arch, accel, &vm, &overlay, &share, &serial);
    let slow = if accel == "kvm" {
        1
    } else if arch == "x86_64" {
        8
    } else {
        20
    };
    std::fs::write(
        share.join("host.env"),
        format!("PORT={}\nSLOW={slow}\n", broker.port),
    )
    .unwrap();

    let started = Instant::now();
    let mut guest = Vm(command
        .spawn()
        .expect("qemu (scripts/vm-test.sh installs it)"));
    let limit = Duration::from_secs(600 * slow);
    let failed = |why: &str| -> ! {
        let log = std::fs::read_to_string(share.join("guest.log")).unwrap_or_default();
        let console = std::fs::read_to_string(&serial).unwrap_or_default();
        let tail: Vec<&str> = console.lines().rev().take(40).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        panic!(
            "VM-TEST FAIL {arch}: {why}\n--- guest.log\n{log}\n--- console (last lines)\n{}",
            tail.join("\n")
        );
    };
    // Enrolment, as an operator does it: the identity the board printed, `hedge device add`.
    let identity = share.join("identity");
    while !identity.exists() {
        if started.elapsed() > limit || guest.0.try_wait().unwrap().is_some() {
            failed("the guest printed no identity");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let key = std::fs::read_to_string(&identity).unwrap();
    hedge(&[
        "device",
        "--keys",
        s(&keys),
        "add",
        "vm-board",
        "--key",
        key.trim(),
    ]);
    std::fs::write(share.join("enrolled"), "").unwrap();
    let status = loop {
        if let Some(status) = guest.0.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > limit {
            let _ = guest.0.kill();
            failed("the guest did not finish in time");
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    let seconds = started.elapsed().as_secs_f64();
    let outcome = std::fs::read_to_string(share.join("guest.result")).unwrap_or_default();
    if !status.success() || !outcome.starts_with("GUEST OK") {
        failed(&format!("qemu {status}, guest: {}", outcome.trim()));
    }

    // Every result, once, by the bundle the board ran, with the reference's class.
    wait_lines(&out, 10);
    terminate(&decryptor);
    wait_ok(decryptor, "decryptor");
    let lines = results(&out);
    let seqs: Vec<u64> = lines.iter().map(|v| v["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (1..=10).collect::<Vec<_>>(), "each result once");
    let first = bundle_id(&bundle, &keys);
    let second = bundle_id(&next, &keys);
    for (i, v) in lines.iter().enumerate() {
        let (name, bundle) = if i < 4 { ("", &first) } else { ("v2", &second) };
        assert_eq!(
            v["bundle"].as_str(),
            Some(bundle.as_str()),
            "result {}",
            i + 1
        );
        let class = reference_class(root, name, "last", &vectors[i]);
        assert_eq!(v["class"].as_u64(), Some(class), "result {}", i + 1);
    }
    let figures = outcome.trim().trim_start_matches("GUEST OK").trim();
    println!(
        "VM-TEST OK {arch} ({accel}): 10 results of the {shape} `last` model decrypted to the \
         reference classes; {figures} whole_run_s={seconds:.0}"
    );
}
