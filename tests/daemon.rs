//! hedged's lifecycle as a service: the Unix-socket source fed by the shipped client
//! (plaintext vectors and `hedge encrypt-features` frames), bad frames, SIGHUP reload to a new
//! bundle and refusal of a tampered one, and the systemd notifications (READY, WATCHDOG,
//! STOPPING) on a real notify socket. Results travel over a real mosquitto.

mod common;
use common::*;
use std::io::Write;
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

fn send_lines(socket: &Path, root: &Path, lines: &[String]) {
    let file = root.join("send.txt");
    std::fs::write(&file, lines.join("\n")).unwrap();
    client(&[s(socket), s(&file)]);
}

/// scripts/hedge-send, the documented client.
fn client(args: &[&str]) {
    let o = Command::new("python3")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/hedge-send"))
        .args(args)
        .output()
        .expect("python3 (apt-get install python3; .ci/run does)");
    assert!(
        o.status.success(),
        "hedge-send: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

fn plain_frame(values: &[f32]) -> Vec<u8> {
    let mut payload = vec![1u8];
    for v in values {
        payload.extend_from_slice(&v.to_le_bytes());
    }
    let mut frame = (payload.len() as u32).to_be_bytes().to_vec();
    frame.extend(payload);
    frame
}

#[test]
fn socket_source_reload_and_systemd_notifications() {
    let st = setup("last");
    let bundle_b = model(&st.root, &st.keys, "b-", 7, "last");
    let broker = Mosquitto::start(&st.root);
    let out = st.root.join("out.jsonl");
    let dec = decryptor(&st, &broker.addr(), 10, &out);

    let socket = st.root.join("features.sock");
    let config = st.root.join("hedged.toml");
    let write_config = |bundle: &Path| {
        std::fs::write(
            &config,
            format!(
                "bundle = {:?}\nverifying_key = {:?}\ninput = \"unix:{}\"\ndevice_id = \"board\"\n\
                 spool_dir = {:?}\nlog_level = \"info\"\nmax_frame_bytes = 4000000\n\
                 [mqtt]\nhost = \"127.0.0.1\"\nport = {}\n",
                s(bundle),
                s(&st.keys.join("verifying.key")),
                s(&socket),
                s(&st.root.join("spool")),
                broker.port
            ),
        )
        .unwrap()
    };
    write_config(&st.bundle);

    // A notify socket standing in for systemd's, recording every datagram.
    let notify = UnixDatagram::bind(st.root.join("notify.sock")).unwrap();
    let notes = Arc::new(Mutex::new(Vec::<String>::new()));
    {
        let notes = notes.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = notify.recv(&mut buf) {
                notes
                    .lock()
                    .unwrap()
                    .push(String::from_utf8_lossy(&buf[..n]).into_owned());
            }
        });
    }
    let noted = |what: &str| notes.lock().unwrap().iter().any(|n| n.contains(what));
    let log_path = st.root.join("hedged.log");
    let log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    enrol(&st, &st.root.join("spool"), "board");
    let h = Command::new(env!("CARGO_BIN_EXE_hedged"))
        .args(["--config", s(&config)])
        .env_remove("RUST_LOG")
        .env("NOTIFY_SOCKET", st.root.join("notify.sock"))
        .env("WATCHDOG_USEC", "400000")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .unwrap();
    wait_for(|| noted("READY=1"), "READY=1");

    // Plaintext vectors through the client.
    send_lines(&socket, &st.root, &st.vectors[..3]);
    wait_lines(&out, 3);
    // Features encrypted by `hedge encrypt-features`, sent as ready frames; bad frames on
    // their own connection.
    let encrypted_input = st.root.join("enc.txt");
    std::fs::write(&encrypted_input, st.vectors[3..5].join("\n")).unwrap();
    let frames = st.root.join("enc.frames");
    hedge(&[
        "encrypt-features",
        "--bundle",
        s(&st.bundle),
        "--keys",
        s(&st.keys),
        "--input",
        s(&encrypted_input),
        "--out",
        s(&frames),
    ]);
    let mut bad = UnixStream::connect(&socket).unwrap();
    bad.write_all(&[0, 0, 0, 2, 9, 9]).unwrap(); // unknown kind
    bad.write_all(&[0, 0, 0, 3, 1, 0, 0]).unwrap(); // ragged f32s
    bad.write_all(&plain_frame(&[1.0, 2.0, 3.0])).unwrap(); // wrong length
    bad.write_all(&plain_frame(&[f32::NAN; 48])).unwrap(); // NaN
    bad.write_all(&[0, 0, 0, 3, 2, 1, 0]).unwrap(); // undecodable ciphertext
    bad.write_all(&[0x7f, 0xff, 0xff, 0xff]).unwrap(); // oversized: ends this connection
    drop(bad);
    client(&["--frames", s(&socket), s(&frames)]);
    wait_lines(&out, 5);

    // SIGHUP to another bundle: later results come from it.
    write_config(&bundle_b);
    signal(h.id(), 1);
    wait_for(|| log().contains("reloaded"), "reload");
    send_lines(&socket, &st.root, &st.vectors[5..8]);
    wait_lines(&out, 8);

    // SIGHUP to a tampered bundle: refused, the running one stays.
    let mut tampered = std::fs::read(&bundle_b).unwrap();
    let middle = tampered.len() / 2;
    tampered[middle] ^= 1;
    let bad_bundle = st.root.join("tampered.bundle");
    std::fs::write(&bad_bundle, tampered).unwrap();
    write_config(&bad_bundle);
    signal(h.id(), 1);
    wait_for(|| log().contains("reload refused"), "refused reload");
    // SIGHUP back to the first bundle (epoch 1, superseded by bundle b's 2): a rollback,
    // refused.
    write_config(&st.bundle);
    signal(h.id(), 1);
    wait_for(
        || log().contains("refused (a rollback)"),
        "refused rollback on reload",
    );
    // A second daemon on the same state directory is refused while this one runs.
    let second = Command::new(env!("CARGO_BIN_EXE_hedged"))
        .args(["--config", s(&config)])
        .output()
        .unwrap();
    assert!(!second.status.success());
    assert!(
        String::from_utf8_lossy(&second.stderr).contains("in use by another hedged"),
        "{}",
        String::from_utf8_lossy(&second.stderr)
    );
    send_lines(&socket, &st.root, &st.vectors[8..10]);
    wait_lines(&out, 10);

    terminate(&h);
    let status = h.wait_with_output().unwrap().status;
    let log = log();
    assert!(status.success(), "{log}");
    assert!(log.contains("rejected"), "{log}");
    assert!(log.contains("oversized"), "{log}");
    assert!(!log.contains("panicked"), "{log}");
    assert!(log.contains("stopped: 10 result(s), 6 rejected"), "{log}");
    assert!(!socket.exists(), "socket removed at exit");
    wait_ok(dec, "decryptor");
    std::thread::sleep(Duration::from_millis(200));
    assert!(noted("STOPPING=1"));
    // Started again on the superseded bundle: refused at start-up as well.
    let rollback = Command::new(env!("CARGO_BIN_EXE_hedged"))
        .args(["--config", s(&config)])
        .output()
        .unwrap();
    assert!(!rollback.status.success());
    let err = String::from_utf8_lossy(&rollback.stderr);
    assert!(
        err.contains("bundle epoch 1 is older than epoch 2"),
        "{err}"
    );
    let watchdog = notes
        .lock()
        .unwrap()
        .iter()
        .filter(|n| n.contains("WATCHDOG=1"))
        .count();
    assert!(watchdog >= 3, "{watchdog} watchdog notifications");

    let id = |p: &Path| hedge::bundle::bundle_id(&std::fs::read(p).unwrap());
    let lines = results(&out);
    assert_eq!(lines.len(), 10);
    for (i, line) in lines.iter().enumerate() {
        let (bundle, model) = if i < 5 {
            (&st.bundle, "")
        } else {
            (&bundle_b, "b-")
        };
        assert_eq!(line["seq"].as_u64(), Some(i as u64 + 1));
        assert_eq!(line["bundle"].as_str(), Some(id(bundle).as_str()), "#{i}");
        assert_eq!(
            line["class"].as_u64(),
            Some(reference_class(&st.root, model, "last", &st.vectors[i])),
            "#{i}"
        );
    }
}
