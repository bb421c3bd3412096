//! hedged and the decryption agent over a real MQTT broker (mosquitto, started by each test on
//! a free port): end to end, broker outage, SIGKILL, SIGTERM, garbage payloads.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Mosquitto {
    child: Option<Child>,
    conf: PathBuf,
    port: u16,
}

impl Mosquitto {
    fn start(dir: &Path) -> Self {
        let port = free_port();
        let conf = dir.join("mosquitto.conf");
        let db = dir.join("mosquitto-db");
        std::fs::create_dir_all(&db).unwrap();
        std::fs::write(
            &conf,
            format!(
                "listener {port} 127.0.0.1\nallow_anonymous true\npersistence true\npersistence_location {}/\nlog_dest file {}/mosquitto.log\n{}",
                db.display(),
                db.display(),
                // As root, mosquitto drops to its own user and could not write our temp dir.
                if std::env::var("USER").as_deref() == Ok("root") || unsafe_is_root() { "user root\n" } else { "" }
            ),
        )
        .unwrap();
        let mut m = Self {
            child: None,
            conf,
            port,
        };
        m.restart();
        m
    }

    fn restart(&mut self) {
        let bin = ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .expect("mosquitto is not installed (apt-get install mosquitto; .ci/run does)");
        self.child = Some(
            Command::new(bin)
                .args(["-c", s(&self.conf)])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
        let t = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "mosquitto did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Graceful stop (SIGTERM), so the broker saves its sessions.
    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            terminate(&c);
            c.wait().unwrap();
        }
    }

    fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn unsafe_is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .map(|s| {
            s.lines()
                .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

fn terminate(c: &Child) {
    unsafe_kill(c.id(), 15);
}

fn unsafe_kill(pid: u32, sig: i32) {
    Command::new("kill")
        .args([format!("-{sig}"), pid.to_string()])
        .status()
        .unwrap();
}

fn hedge(args: &[&str]) -> std::process::Output {
    let o = Command::new(env!("CARGO_BIN_EXE_hedge"))
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "hedge {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    o
}

struct Setup {
    variant: String,
    _dir: tempfile::TempDir,
    root: PathBuf,
    keys: PathBuf,
    bundle: PathBuf,
    vectors: Vec<String>,
}

fn setup(variant: &str) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let keys = root.join("keys");
    hedge(&["keygen", "--out", s(&keys)]);
    hedge(&[
        "synth",
        "--out",
        s(&root),
        "--shape",
        "48,16,10",
        "--test",
        "40",
        "--calibration",
        "60",
    ]);
    let bundle = root.join("b.bundle");
    hedge(&[
        "protect",
        "--model",
        s(&root.join("model.onnx")),
        "--keys",
        s(&keys),
        "--variant",
        variant,
        "--calibration",
        s(&root.join("calibration.txt")),
        "--out",
        s(&bundle),
    ]);
    let vectors = std::fs::read_to_string(root.join("test.txt"))
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    Setup {
        variant: variant.into(),
        _dir: dir,
        root,
        keys,
        bundle,
        vectors,
    }
}

fn hedged(st: &Setup, broker: &str, input: &str, spool: &Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_hedged"))
        .args([
            "--bundle",
            s(&st.bundle),
            "--verifying-key",
            s(&st.keys.join("verifying.key")),
        ])
        .args([
            "--input",
            input,
            "--broker",
            broker,
            "--spool-dir",
            s(spool),
            "--device-id",
            "board",
        ])
        .env("RUST_LOG", "info")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn decryptor(st: &Setup, broker: &str, count: usize, out: &Path) -> Child {
    let c = Command::new(env!("CARGO_BIN_EXE_hedge"))
        .args([
            "decrypt",
            "--keys",
            s(&st.keys),
            "--subscribe",
            broker,
            "--client-id",
            "decryptor-1",
        ])
        .args([
            "--count",
            &count.to_string(),
            "--idle-timeout",
            "90",
            "--output",
            s(out),
        ])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Let it connect and subscribe (its session then persists across broker restarts).
    std::thread::sleep(Duration::from_millis(800));
    c
}

fn wait_ok(c: Child, what: &str) -> String {
    let o = c.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success(), "{what} failed: {err}");
    err
}

/// The decrypted lines: (seq, class), checked against the plaintext integer reference (the
/// same deterministic quantisation `hedge protect` did).
fn check_results(st: &Setup, out: &Path, expected: usize) {
    use hedge::model::quant::{QuantModel, Variant};
    let model = hedge::model::onnx::load(&st.root.join("model.onnx")).unwrap();
    let calibration: Vec<Vec<f32>> = hedge::data::read_samples(&st.root.join("calibration.txt"))
        .unwrap()
        .into_iter()
        .map(|s| s.values)
        .collect();
    let variant = if st.variant == "noact" {
        Variant::Noact
    } else {
        Variant::Last
    };
    let params =
        hedge::crypto::params::ParameterSet::for_level(hedge::crypto::params::SecurityLevel::L128);
    let q = QuantModel::quantize(&model, variant, None, &calibration, &params).unwrap();
    let text = std::fs::read_to_string(out).unwrap();
    let mut seqs: Vec<u64> = Vec::new();
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let seq = v["seq"].as_u64().unwrap();
        let x = hedge::data::parse_line(&st.vectors[seq as usize - 1])
            .unwrap()
            .unwrap()
            .values;
        let reference = q.reference(&q.input.quantize(&x).unwrap());
        assert_eq!(
            v["class"].as_u64(),
            Some(hedge::model::argmax(&reference.scores) as u64),
            "seq {seq}"
        );
        assert_eq!(v["device"], "board");
        seqs.push(seq);
    }
    seqs.sort();
    assert_eq!(
        seqs,
        (1..=expected as u64).collect::<Vec<_>>(),
        "every result exactly once"
    );
}

fn feed(child: &mut Child, lines: &[String]) {
    let stdin = child.stdin.as_mut().unwrap();
    for l in lines {
        writeln!(stdin, "{l}").unwrap();
    }
    stdin.flush().unwrap();
}

fn wait_lines(path: &Path, n: usize) {
    let t = Instant::now();
    while std::fs::read_to_string(path)
        .map(|s| s.lines().count())
        .unwrap_or(0)
        < n
    {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "results did not arrive"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn vectors_in_decrypted_classes_out() {
    let st = setup("last");
    let broker = Mosquitto::start(&st.root);
    let out = st.root.join("out.jsonl");
    let dec = decryptor(&st, &broker.addr(), 20, &out);
    let input = st.root.join("in.txt");
    std::fs::write(&input, st.vectors[..20].join("\n")).unwrap();
    let h = hedged(&st, &broker.addr(), s(&input), &st.root.join("spool"));
    wait_ok(h, "hedged");
    wait_ok(dec, "decryptor");
    check_results(&st, &out, 20);
    assert_eq!(
        std::fs::read_dir(st.root.join("spool"))
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .ends_with(".msg")
            })
            .count(),
        0,
        "spool emptied after acknowledgements"
    );
}

#[test]
fn broker_outage_loses_nothing() {
    let st = setup("noact");
    let mut broker = Mosquitto::start(&st.root);
    let out = st.root.join("out.jsonl");
    let dec = decryptor(&st, &broker.addr(), 30, &out);
    let mut h = hedged(&st, &broker.addr(), "-", &st.root.join("spool"));
    feed(&mut h, &st.vectors[..10]);
    wait_lines(&out, 10);
    broker.stop();
    feed(&mut h, &st.vectors[10..20]);
    std::thread::sleep(Duration::from_secs(2));
    broker.restart();
    feed(&mut h, &st.vectors[20..30]);
    drop(h.stdin.take());
    let hlog = wait_ok(h, "hedged");
    let dlog = wait_ok(dec, "decryptor");
    eprintln!("hedged:\n{hlog}\ndecryptor:\n{dlog}");
    eprintln!(
        "MOSQUITTO:\n{}",
        std::fs::read_to_string(st.root.join("mosquitto-db/mosquitto.log")).unwrap_or_default()
    );
    check_results(&st, &out, 30);
}

#[test]
fn sigkill_then_restart_replays_the_spool() {
    let st = setup("last");
    let down = format!("127.0.0.1:{}", free_port());
    let spool = st.root.join("spool");
    let mut h = hedged(&st, &down, "-", &spool);
    feed(&mut h, &st.vectors[..12]);
    let t = Instant::now();
    while std::fs::read_dir(&spool)
        .map(|d| {
            d.filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .ends_with(".msg")
            })
            .count()
        })
        .unwrap_or(0)
        < 12
    {
        assert!(t.elapsed() < Duration::from_secs(60), "results not spooled");
        std::thread::sleep(Duration::from_millis(50));
    }
    unsafe_kill(h.id(), 9);
    h.wait().unwrap();
    let broker = Mosquitto::start(&st.root);
    let out = st.root.join("out.jsonl");
    let dec = decryptor(&st, &broker.addr(), 12, &out);
    let h = hedged(&st, &broker.addr(), "/dev/null", &spool);
    let log = wait_ok(h, "restarted hedged");
    assert!(
        log.contains("12 spooled result(s) from a previous run"),
        "{log}"
    );
    wait_ok(dec, "decryptor");
    check_results(&st, &out, 12);
}

#[test]
fn sigterm_drains_and_exits_cleanly() {
    let st = setup("last");
    let broker = Mosquitto::start(&st.root);
    let out = st.root.join("out.jsonl");
    let dec = decryptor(&st, &broker.addr(), 5, &out);
    let mut h = hedged(&st, &broker.addr(), "-", &st.root.join("spool"));
    feed(&mut h, &st.vectors[..5]);
    wait_lines(&out, 5);
    terminate(&h);
    let t = Instant::now();
    let log = wait_ok(h, "hedged after SIGTERM");
    assert!(t.elapsed() < Duration::from_secs(15));
    assert!(log.contains("stopped:"), "{log}");
    wait_ok(dec, "decryptor");
    check_results(&st, &out, 5);
}

#[test]
fn garbage_payloads_and_frames_are_rejected_and_survived() {
    let st = setup("last");
    let broker = Mosquitto::start(&st.root);
    let out = st.root.join("out.jsonl");
    let dec = decryptor(&st, &broker.addr(), 3, &out);
    // Garbage on the results topic, from another client.
    let mut opts = rumqttc::MqttOptions::new("vandal", "127.0.0.1", broker.port);
    opts.set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut conn) = rumqttc::Client::new(opts, 10);
    for payload in [
        b"\x01garbage".to_vec(),
        vec![9u8; 100],
        Vec::new(),
        vec![1u8; 300_000],
    ] {
        client
            .publish(
                "hedge/board/results",
                rumqttc::QoS::AtLeastOnce,
                false,
                payload,
            )
            .unwrap();
    }
    let mut acks = 0;
    while acks < 4 {
        match conn.recv_timeout(Duration::from_secs(10)) {
            Ok(Ok(rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_)))) => acks += 1,
            Ok(Ok(_)) => {}
            other => panic!("garbage publisher: {other:?}"),
        }
    }
    // Then bad frames and good vectors through hedged.
    let mut h = hedged(&st, &broker.addr(), "-", &st.root.join("spool"));
    let good = &st.vectors[..3];
    feed(
        &mut h,
        &[
            good[0].clone(),
            "1,2,3".into(),
            "x,y".into(),
            good[1].clone(),
            "NaN".into(),
            good[2].clone(),
        ],
    );
    drop(h.stdin.take());
    let log = wait_ok(h, "hedged");
    assert!(log.contains("rejected"), "{log}");
    let dlog = wait_ok(dec, "decryptor");
    assert!(dlog.contains("rejected a message"), "{dlog}");
    check_results(&st, &out, 3);
}
