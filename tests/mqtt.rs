//! hedged and the decryption agent over a real MQTT broker (mosquitto, started by each test on
//! a free port): end to end, broker outage, SIGKILL, SIGTERM, garbage payloads, TLS with
//! passwords, shared subscriptions, a spool on a full file system.

mod common;
use common::*;
use std::time::{Duration, Instant};

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
        spooled(&st.root.join("spool")),
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
    wait_for(|| spooled(&spool) >= 12, "12 results spooled");
    signal(h.id(), 9);
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
    opts.set_max_packet_size(8 << 20, 8 << 20);
    let (client, mut conn) = rumqttc::Client::new(opts, 10);
    // A well-formed result under another key set (seq 1: it must not shadow the real #1).
    let other_keys = st.root.join("other-keys");
    hedge(&["keygen", "--out", s(&other_keys)]);
    let other_bundle = model(&st.root, &other_keys, "other-", 3, "last");
    let other_out = st.root.join("other-results");
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_hedged"))
        .args(["--bundle", s(&other_bundle), "--verifying-key"])
        .arg(other_keys.join("verifying.key"))
        .args(["--input", s(&st.root.join("other-test.txt")), "--out-dir"])
        .arg(&other_out)
        .output()
        .unwrap();
    assert!(o.status.success());
    // The other board's own result message, re-published as this board's #1.
    let mut wrong_key = hedge::transport::message::ResultMessage::decode(
        &std::fs::read(other_out.join("result-000001.bin")).unwrap(),
    )
    .unwrap();
    wrong_key.device_id = "board".into();
    wrong_key.seq = 1;
    let wrong_key = wrong_key.encode();
    for payload in [
        wrong_key,
        b"\x01garbage".to_vec(),
        vec![9u8; 100],
        Vec::new(),
        vec![1u8; 300_000],
        vec![1u8; 5 << 20], // over the decryptor's 4 MiB limit
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
    while acks < 6 {
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
    assert_eq!(dlog.matches("refused a result").count(), 6, "{dlog}");
    check_results(&st, &out, 3);
}

/// A CA, and a server certificate for 127.0.0.1 signed by it (PEM files in `dir`).
fn certificates(dir: &std::path::Path) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca.self_signed(&ca_key).unwrap();
    let server_key = KeyPair::generate().unwrap();
    let server = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
        .unwrap()
        .signed_by(&server_key, &ca, &ca_key)
        .unwrap();
    std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
    std::fs::write(dir.join("server.pem"), server.pem()).unwrap();
    std::fs::write(dir.join("server.key"), server_key.serialize_pem()).unwrap();
    // An unrelated CA, which must not be trusted.
    let other_key = KeyPair::generate().unwrap();
    let mut other = CertificateParams::new(Vec::<String>::new()).unwrap();
    other.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    std::fs::write(
        dir.join("other-ca.pem"),
        other.self_signed(&other_key).unwrap().pem(),
    )
    .unwrap();
}

#[test]
fn tls_and_password_authentication() {
    let st = setup("last");
    certificates(&st.root);
    let passwd = st.root.join("passwd");
    std::fs::write(&passwd, "").unwrap();
    let status = std::process::Command::new("mosquitto_passwd")
        .args(["-b", s(&passwd), "board", "right-password"])
        .status()
        .unwrap();
    assert!(status.success());
    std::fs::write(st.root.join("good.pw"), "right-password\n").unwrap();
    std::fs::write(st.root.join("bad.pw"), "wrong-password\n").unwrap();
    let broker = Mosquitto::start_with(
        &st.root,
        &format!(
            "allow_anonymous false\npassword_file {}\ncafile {}\ncertfile {}\nkeyfile {}\n",
            s(&passwd),
            s(&st.root.join("ca.pem")),
            s(&st.root.join("server.pem")),
            s(&st.root.join("server.key"))
        ),
    );
    let spool = st.root.join("spool");
    let tls = |pw: &str, ca: &str| {
        vec![
            "--username".to_string(),
            "board".into(),
            "--password-file".into(),
            s(&st.root.join(pw)).to_string(),
            "--ca-file".into(),
            s(&st.root.join(ca)).to_string(),
        ]
    };

    // A wrong password and an untrusted CA: refused, and the results stay spooled.
    for (round, (pw, ca)) in [("bad.pw", "ca.pem"), ("good.pw", "other-ca.pem")]
        .into_iter()
        .enumerate()
    {
        let mut h = hedged_command(&st, &broker.addr(), "-", &spool)
            .args(tls(pw, ca))
            .spawn()
            .unwrap();
        feed(&mut h, &st.vectors[round..round + 1]);
        wait_for(|| spooled(&spool) > round, "result spooled");
        std::thread::sleep(Duration::from_secs(1));
        terminate(&h);
        let log = wait_ok(h, "hedged with bad credentials");
        eprintln!("{log}");
        assert!(log.contains("broker connection"), "{log}");
        assert!(
            log.contains(&format!("{} left in the spool", round + 1)),
            "{log}"
        );
    }

    // The right ones: the spool is delivered, then 3 more, over TLS.
    let out = st.root.join("out.jsonl");
    let mut dec_args = vec![
        "--client-id".to_string(),
        "decryptor-tls".into(),
        "--count".into(),
        "5".into(),
        "--idle-timeout".into(),
        "90".into(),
    ];
    dec_args.extend(tls("good.pw", "ca.pem"));
    let dec_args: Vec<&str> = dec_args.iter().map(String::as_str).collect();
    let dec = decryptor_with(&st, &broker.addr(), &dec_args, &out);
    let mut h = hedged_command(&st, &broker.addr(), "-", &spool)
        .args(tls("good.pw", "ca.pem"))
        .spawn()
        .unwrap();
    feed(&mut h, &st.vectors[2..5]);
    drop(h.stdin.take());
    let log = wait_ok(h, "hedged over TLS");
    assert!(
        log.contains("2 spooled result(s) from a previous run"),
        "{log}"
    );
    wait_ok(dec, "decryptor over TLS");
    check_results(&st, &out, 5);
    assert_eq!(spooled(&spool), 0);
}

#[test]
fn shared_subscription_splits_results_between_decryptors() {
    let st = setup("last");
    let broker = Mosquitto::start(&st.root);
    let outs = [st.root.join("a.jsonl"), st.root.join("b.jsonl")];
    let decs: Vec<_> = outs
        .iter()
        .enumerate()
        .map(|(i, out)| {
            decryptor_with(
                &st,
                &broker.addr(),
                &[
                    "--topic",
                    "$share/decryptors/hedge/+/results",
                    "--client-id",
                    &format!("shared-{i}"),
                    "--idle-timeout",
                    "4",
                ],
                out,
            )
        })
        .collect();
    let input = st.root.join("in.txt");
    std::fs::write(&input, st.vectors[..12].join("\n")).unwrap();
    wait_ok(
        hedged(&st, &broker.addr(), s(&input), &st.root.join("spool")),
        "hedged",
    );
    for d in decs {
        wait_ok(d, "shared decryptor");
    }
    let (a, b) = (results(&outs[0]), results(&outs[1]));
    assert!(
        !a.is_empty() && !b.is_empty(),
        "both decryptors got a share: {} and {}",
        a.len(),
        b.len()
    );
    let all: Vec<_> = a.into_iter().chain(b).collect();
    check_result_lines(&st, &all, 12);
}

/// A small tmpfs mounted on `dir` for one test (needs root, as `.ci/run` runs), unmounted on
/// drop: a real file system that really fills up.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(dir: &std::path::Path, size: &str) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        let status = std::process::Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size}"),
                "tmpfs",
                s(dir),
            ])
            .status()
            .unwrap();
        assert!(
            status.success(),
            "mounting a {size} tmpfs on {} failed: this test needs root (bash .ci/run)",
            dir.display()
        );
        Tmpfs(dir.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .args(["-l", s(&self.0)])
            .status();
    }
}

/// Write zeros to `path` until the file system says it is full.
fn fill(path: &std::path::Path) {
    use std::io::Write;
    let mut f = std::fs::File::create(path).unwrap();
    let chunk = vec![0u8; 4096];
    while f.write_all(&chunk).and_then(|_| f.flush()).is_ok() {}
    let _ = f.sync_all();
}

#[test]
fn full_disk_pauses_inference_and_loses_nothing() {
    let st = setup("last");
    let spool = st.root.join("spool");
    let _fs = Tmpfs::mount(&spool, "1m");
    let broker = Mosquitto::start(&st.root);
    let out = st.root.join("out.jsonl");
    let dec = decryptor(&st, &broker.addr(), 8, &out);
    let mut h = hedged(&st, &broker.addr(), "-", &spool);
    feed(&mut h, &st.vectors[..2]);
    wait_lines(&out, 2);
    wait_for(
        || spooled(&spool) == 0,
        "the first results acknowledged and unspooled",
    );
    // The disk fills up: results cannot be spooled, so none may be published either.
    let filler = spool.join("filler");
    fill(&filler);
    feed(&mut h, &st.vectors[2..8]);
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        h.try_wait().unwrap().is_none(),
        "hedged stays up on a full disk"
    );
    assert_eq!(
        results(&out).len(),
        2,
        "nothing is published unless spooled first"
    );
    // Space comes back: the paused result and the queued ones go out, each exactly once.
    std::fs::remove_file(&filler).unwrap();
    drop(h.stdin.take());
    let log = wait_ok(h, "hedged");
    assert!(
        log.contains("No space left on device") && log.contains("spool writable again"),
        "{log}"
    );
    wait_ok(dec, "decryptor");
    check_results(&st, &out, 8);
    assert_eq!(spooled(&spool), 0, "spool emptied after acknowledgements");
}

/// `hedge fleet --broker … --listen 2`: its table's row for `device` (state and the rest).
/// hedged as board "board" reading vectors from stdin, with `config` and `spool`.
fn stdin_board(
    st: &Setup,
    config: &std::path::Path,
    spool: &std::path::Path,
    log: &str,
) -> Draining {
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_hedged"));
    c.args(["--config", s(config), "--bundle", s(&st.bundle)])
        .args(["--verifying-key", s(&st.keys.join("verifying.key"))])
        .args([
            "--input",
            "-",
            "--spool-dir",
            s(spool),
            "--device-id",
            "board",
        ])
        .env("RUST_LOG", log)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null());
    Draining::spawn(&mut c)
}

fn fleet_row(st: &Setup, broker: &str, device: &str) -> String {
    let o = hedge(&[
        "fleet",
        "--keys",
        s(&st.keys),
        "--broker",
        broker,
        "--listen",
        "2",
    ]);
    let table = String::from_utf8_lossy(&o.stdout).into_owned();
    table
        .lines()
        .find(|l| l.split_whitespace().next() == Some(device))
        .unwrap_or_else(|| panic!("{device} missing from:\n{table}"))
        .to_string()
}

/// The board's health as any MQTT tool sees it: a retained "online" status naming its bundle,
/// metrics at the configured interval, "offline" through its last will when SIGKILLed and
/// online again after a restart, "offline" from the board itself on a clean stop; `hedge
/// fleet` records it in the registry and lists it.
#[test]
fn status_with_last_will_metrics_and_the_fleet_view() {
    let st = setup("last");
    let broker = Mosquitto::start(&st.root);
    let spool = st.root.join("spool");
    enrol(&st, &spool, "board");
    let config = st.root.join("hedged.toml");
    std::fs::write(
        &config,
        format!(
            "[mqtt]\nhost = \"127.0.0.1\"\nport = {}\nkeep_alive_s = 5\nmetrics_interval_s = 1\n",
            broker.port
        ),
    )
    .unwrap();
    let start = || stdin_board(&st, &config, &spool, "info");
    let bundle_id = hedge(&["inspect", s(&st.bundle), "--keys", s(&st.keys)]);
    let bundle_id = String::from_utf8_lossy(&bundle_id.stdout)
        .lines()
        .find_map(|l| {
            l.split("(id ")
                .nth(1)
                .map(|r| r.trim_end_matches(')').to_string())
        })
        .unwrap();

    let mut h = start();
    feed(&mut h.child, &st.vectors[..3]);
    // Retained: a subscriber that comes later still gets it.
    wait_for(
        || fleet_row(&st, &broker.addr(), "board").contains("online"),
        "online status",
    );
    let row = fleet_row(&st, &broker.addr(), "board");
    assert!(row.contains(&bundle_id), "{row}");
    let sub = std::process::Command::new("mosquitto_sub")
        .args([
            "-p",
            &broker.port.to_string(),
            "-t",
            "hedge/board/metrics",
            "-C",
            "1",
        ])
        .args(["-W", "10"])
        .output()
        .unwrap();
    let metrics: serde_json::Value = serde_json::from_slice(&sub.stdout).unwrap();
    assert_eq!(metrics["device"], "board");
    assert_eq!(metrics["inferences"], 3, "{metrics}");
    assert!(metrics["spool_depth"].is_u64() && metrics["queue_depth"].is_u64());

    // Vanished: the broker publishes the last will (1.5 keep-alives, here 7.5 s).
    signal(h.child.id(), 9);
    h.child.wait().unwrap();
    wait_for(
        || fleet_row(&st, &broker.addr(), "board").contains("offline"),
        "offline by the last will",
    );
    let h = start();
    wait_for(
        || fleet_row(&st, &broker.addr(), "board").contains("online"),
        "online again after a restart",
    );
    // A clean stop (SIGTERM; its results stay spooled, no decryptor runs) says so itself.
    terminate(&h.child);
    h.wait_ok("hedged");
    let row = fleet_row(&st, &broker.addr(), "board");
    assert!(row.contains("offline"), "{row}");
    // Without a broker, the registry's last record.
    let o = hedge(&["fleet", "--keys", s(&st.keys)]);
    assert!(String::from_utf8_lossy(&o.stdout).contains("offline"));
}

/// GET `url` with curl (the HTTP client operators check exporters with): its body.
fn scrape(url: &str) -> String {
    let o = std::process::Command::new("curl")
        .args(["-sS", "--fail", "--max-time", "5", url])
        .output()
        .expect("curl (apt-get install curl; .ci/run does)");
    assert!(
        o.status.success(),
        "{url}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).unwrap()
}

/// The value of the series `series` (name and labels, exactly) in a scrape.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// Prometheus metrics scraped over HTTP: the agent's counters move with results and refusals,
/// the fleet exporter shows the board online with its inferences and bundle, and flags a
/// second board started under the same device id (a cloned SD card).
#[test]
fn prometheus_metrics_of_the_agent_and_the_fleet() {
    let st = setup("last");
    let broker = Mosquitto::start(&st.root);
    let (agent_port, fleet_port) = (free_port(), free_port());
    let agent_addr = format!("127.0.0.1:{agent_port}");
    let agent_url = format!("http://{agent_addr}/metrics");
    let fleet_url = format!("http://127.0.0.1:{fleet_port}/metrics");
    let out = st.root.join("agent.jsonl");
    let agent = decryptor_with(
        &st,
        &broker.addr(),
        &["--client-id", "agent", "--metrics-listen", &agent_addr],
        &out,
    );
    let fleet = Draining::spawn(
        std::process::Command::new(env!("CARGO_BIN_EXE_hedge"))
            .args(["fleet", "--keys", s(&st.keys), "--broker", &broker.addr()])
            .args(["--metrics-listen", &format!("127.0.0.1:{fleet_port}")])
            .env("RUST_LOG", "info"),
    );
    let before = scrape(&agent_url);
    assert_eq!(
        sample(&before, "hedge_results_total{outcome=\"recorded\"}"),
        Some(0.0)
    );

    let config = st.root.join("hedged.toml");
    std::fs::write(
        &config,
        format!(
            "[mqtt]\nhost = \"127.0.0.1\"\nport = {}\nmetrics_interval_s = 1\n",
            broker.port
        ),
    )
    .unwrap();
    let board = |spool: &std::path::Path| stdin_board(&st, &config, spool, "warn");
    let spool = st.root.join("spool");
    enrol(&st, &spool, "board");
    let mut h = board(&spool);
    feed(&mut h.child, &st.vectors[..3]);
    wait_lines(&out, 3);
    // A message no board signed: refused, counted by reason.
    let garbage = std::process::Command::new("mosquitto_pub")
        .args(["-p", &broker.port.to_string(), "-q", "1"])
        .args(["-t", "hedge/board/results", "-m", "not a result"])
        .status()
        .unwrap();
    assert!(garbage.success());
    wait_for(
        || {
            let m = scrape(&agent_url);
            sample(&m, "hedge_refused_total{reason=\"version\"}") == Some(1.0)
                && sample(&m, "hedge_ack_latency_seconds_count").unwrap_or(0.0) >= 3.0
        },
        "the refusal and the acknowledgements counted",
    );
    let m = scrape(&agent_url);
    assert_eq!(
        sample(&m, "hedge_results_total{outcome=\"recorded\"}"),
        Some(3.0),
        "{m}"
    );
    assert_eq!(
        sample(&m, "hedge_results_total{outcome=\"refused\"}"),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        sample(&m, "hedge_device_results_total{device=\"board\"}"),
        Some(3.0)
    );
    assert!(
        sample(&m, "hedge_registry_seconds_count").unwrap() >= 1.0,
        "{m}"
    );

    wait_for(
        || {
            let f = scrape(&fleet_url);
            sample(&f, "hedge_board_online{device=\"board\"}") == Some(1.0)
                && sample(&f, "hedge_board_inferences_total{device=\"board\"}") == Some(3.0)
        },
        "the board online with its 3 inferences in the fleet's metrics",
    );
    let f = scrape(&fleet_url);
    assert!(
        f.contains("hedge_board_bundle_info{device=\"board\""),
        "{f}"
    );
    assert_eq!(
        sample(&f, "hedge_boards{state=\"online\"}"),
        Some(1.0),
        "{f}"
    );
    assert!(!f.contains("hedge_board_shared_id{"), "{f}");

    // A clone of the board: the same device id, started later.
    let twin_spool = st.root.join("twin-spool");
    std::fs::create_dir_all(&twin_spool).unwrap();
    let twin = board(&twin_spool);
    wait_for(
        || {
            sample(
                &scrape(&fleet_url),
                "hedge_board_shared_id{device=\"board\"}",
            ) == Some(1.0)
        },
        "two boards under one id flagged",
    );
    for p in [h, twin] {
        terminate(&p.child);
        p.finish();
    }
    terminate(&fleet.child);
    let log = fleet.wait_ok("hedge fleet --metrics-listen");
    assert!(log.contains("two boards share this device id"), "{log}");
    terminate(&agent);
    wait_ok(agent, "agent");
}
