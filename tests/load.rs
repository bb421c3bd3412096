//! A fleet under load and faults, over a real mosquitto with persistence: several daemons
//! publishing continuously while the broker restarts and the decryption agent crashes; a
//! backlog drained and acknowledged once; the reconnect backoff while the broker is down.
//! `mosquitto_sub` is the control consumer that shows what the broker delivered.

mod common;
use common::*;
use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, Read, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// (device, seq) → class, from the decryptor's JSON lines; counts lines seen more than once.
fn decrypted(paths: &[&Path]) -> (BTreeMap<(String, u64), u64>, usize) {
    let mut seen = BTreeMap::new();
    let mut repeats = 0;
    for path in paths {
        for v in results(path) {
            let key = (
                v["device"].as_str().unwrap().to_string(),
                v["seq"].as_u64().unwrap(),
            );
            if seen.insert(key, v["class"].as_u64().unwrap()).is_some() {
                repeats += 1;
            }
        }
    }
    (seen, repeats)
}

/// Every (device, seq) of `devices` × 1..=per_device present, with the reference class of the
/// vector that produced it (daemons read `vectors` in a cycle).
fn check_all(
    seen: &BTreeMap<(String, u64), u64>,
    devices: &[String],
    per_device: usize,
    reference: &[u64],
) {
    let expected: BTreeSet<(String, u64)> = devices
        .iter()
        .flat_map(|d| (1..=per_device as u64).map(move |q| (d.clone(), q)))
        .collect();
    let got: BTreeSet<(String, u64)> = seen.keys().cloned().collect();
    let missing: Vec<_> = expected.difference(&got).take(10).collect();
    assert!(
        missing.is_empty(),
        "{} of {} results never decrypted, e.g. {missing:?}",
        expected.difference(&got).count(),
        expected.len()
    );
    assert_eq!(got.len(), expected.len(), "results nobody published");
    for ((device, seq), class) in seen {
        let want = reference[(*seq as usize - 1) % reference.len()];
        assert_eq!(*class, want, "{device}#{seq}");
    }
}

/// `mosquitto_sub` with a persistent session at QoS 1, writing `length topic payload` records.
fn control_consumer(port: u16, out: &Path) -> Child {
    Command::new("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(["-c", "-i", "control", "-q", "1", "-t", "hedge/+/results"])
        .args(["-F", "%l %t %p"])
        .stdout(std::fs::File::create(out).unwrap())
        .stderr(Stdio::null())
        .spawn()
        .expect("mosquitto_sub (apt-get install mosquitto-clients; .ci/run does)")
}

/// The (device, seq) of every result message in the control consumer's output.
fn controlled(path: &Path) -> BTreeSet<(String, u64)> {
    let mut r = std::io::BufReader::new(std::fs::File::open(path).unwrap());
    let mut seen = BTreeSet::new();
    let mut head = Vec::new();
    loop {
        head.clear();
        // "<length> <topic> " then the raw payload (mosquitto_sub adds a newline after it).
        if r.read_until(b' ', &mut head).unwrap() == 0 {
            break;
        }
        let len: usize = std::str::from_utf8(&head).unwrap().trim().parse().unwrap();
        head.clear();
        r.read_until(b' ', &mut head).unwrap();
        let mut payload = vec![0u8; len];
        r.read_exact(&mut payload).unwrap();
        let mut newline = [0u8; 1];
        r.read_exact(&mut newline).unwrap();
        let m = hedge::transport::message::ResultMessage::decode(&payload).unwrap();
        seen.insert((m.device_id, m.seq));
    }
    seen
}

/// Write `count` of `vectors` (in a cycle) to the daemon's stdin, one every `every`, then close it.
fn feed_steadily(
    mut child_stdin: std::process::ChildStdin,
    vectors: Vec<String>,
    count: usize,
    every: Duration,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        for i in 0..count {
            writeln!(child_stdin, "{}", vectors[i % vectors.len()]).unwrap();
            child_stdin.flush().unwrap();
            std::thread::sleep(every);
        }
    })
}

#[test]
fn a_drained_backlog_is_acknowledged_once() {
    let st = setup("last");
    let reference = reference_classes(&st);
    let broker = Mosquitto::start(&st.root);
    let session = ["--client-id", "backlog"];
    // Open the decryptor's persistent session, then leave: the broker queues what follows.
    let empty = st.root.join("empty.jsonl");
    let args = [&session[..], &["--idle-timeout", "1"]].concat();
    wait_ok(
        decryptor_with(&st, &broker.addr(), &args, &empty),
        "session",
    );
    // 800 results (mosquitto queues up to 1000 per absent client), released at the broker's
    // PUBACK: this test is about the decryptor's MQTT acknowledgements alone.
    let n = 800;
    let input = st.root.join("in.txt");
    let lines: Vec<&str> = (0..n).map(|i| st.vectors[i % 40].as_str()).collect();
    std::fs::write(&input, lines.join("\n")).unwrap();
    let config = st.root.join("hedged.toml");
    std::fs::write(
        &config,
        "[mqtt]\nhost = \"127.0.0.1\"\nend_to_end = false\n",
    )
    .unwrap();
    let log = wait_ok(
        hedged_command(&st, &broker.addr(), s(&input), &st.root.join("spool"))
            .arg("--config")
            .arg(&config)
            .spawn()
            .unwrap(),
        "hedged",
    );
    assert!(log.contains("0 left in the spool"), "{log}");

    let out = st.root.join("out.jsonl");
    let args = [&session[..], &["--count", "800", "--idle-timeout", "30"]].concat();
    wait_ok(decryptor_with(&st, &broker.addr(), &args, &out), "drain");
    let (seen, repeats) = decrypted(&[&out]);
    check_all(&seen, &["board".to_string()], n, &reference);
    assert_eq!(repeats, 0);
    // Everything written was acknowledged: the session has nothing to deliver again.
    let again = st.root.join("again.jsonl");
    let args = [&session[..], &["--idle-timeout", "3"]].concat();
    wait_ok(decryptor_with(&st, &broker.addr(), &args, &again), "again");
    assert_eq!(
        results(&again).len(),
        0,
        "results redelivered: their acknowledgements were lost"
    );
}

#[test]
fn a_fleet_under_broker_restarts_and_a_decryptor_crash_loses_nothing() {
    const DEVICES: usize = 4;
    const PER_DEVICE: usize = 400;
    let st = setup("last");
    let reference = reference_classes(&st);
    let mut broker = Mosquitto::start_with(&st.root, "allow_anonymous true\nautosave_interval 1\n");
    let control_out = st.root.join("control.bin");
    let control = control_consumer(broker.port, &control_out);
    let session = ["--client-id", "backend-1", "--idle-timeout", "600"];
    let out1 = st.root.join("dec1.jsonl");
    let mut dec = decryptor_with(&st, &broker.addr(), &session, &out1);

    let devices: Vec<String> = (1..=DEVICES).map(|d| format!("board-{d}")).collect();
    let mut daemons = Vec::new();
    let mut feeders = Vec::new();
    for d in &devices {
        let spool = st.root.join(format!("spool-{d}"));
        enrol(&st, &spool, d);
        let mut h = hedged_device(&st, &broker.addr(), "-", &spool, d)
            .spawn()
            .unwrap();
        // ~40 results per second per device, for ~10 s.
        feeders.push(feed_steadily(
            h.stdin.take().unwrap(),
            st.vectors.clone(),
            PER_DEVICE,
            Duration::from_millis(25),
        ));
        daemons.push(h);
    }
    // Faults mid-stream: a broker restart, the decryptor killed and started again, another
    // broker restart.
    let started = Instant::now();
    std::thread::sleep(Duration::from_millis(1500));
    broker.stop();
    std::thread::sleep(Duration::from_secs(2));
    broker.restart();
    std::thread::sleep(Duration::from_millis(1500));
    signal(dec.id(), 9);
    dec.wait().unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let out2 = st.root.join("dec2.jsonl");
    dec = decryptor_with(&st, &broker.addr(), &session, &out2);
    std::thread::sleep(Duration::from_secs(1));
    broker.stop();
    std::thread::sleep(Duration::from_secs(2));
    broker.restart();
    eprintln!("faults done after {:?}", started.elapsed());

    for f in feeders {
        f.join().unwrap();
    }
    for h in daemons {
        let log = wait_ok(h, "hedged");
        assert!(log.contains("0 left in the spool"), "{log}");
    }
    let all = DEVICES * PER_DEVICE;
    let t = Instant::now();
    while decrypted(&[&out1, &out2]).0.len() < all && t.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(200));
    }
    let (seen, repeats) = decrypted(&[&out1, &out2]);
    eprintln!("{} results decrypted, {repeats} written twice", seen.len());
    check_all(&seen, &devices, PER_DEVICE, &reference);
    // The registry accepted each exactly once, across the restart. A line can be written twice
    // only if the SIGKILL fell between writing it and committing it (at least once on output).
    assert!(repeats <= 1, "{repeats} results written twice");
    terminate(&dec);
    wait_ok(dec, "decryptor");
    let list = String::from_utf8(hedge(&["device", "--keys", s(&st.keys), "list"]).stdout).unwrap();
    for d in &devices {
        let row = list.lines().find(|l| l.starts_with(d.as_str())).unwrap();
        let accepted: u64 = row.split_whitespace().nth(3).unwrap().parse().unwrap();
        assert_eq!(accepted, PER_DEVICE as u64, "{row}");
    }

    std::thread::sleep(Duration::from_millis(500));
    terminate(&control);
    let mut control = control;
    control.wait().unwrap();
    let had = controlled(&control_out);
    assert_eq!(
        had.len(),
        all,
        "the broker delivered every result to the control"
    );
}

/// Stream 150 results while the decryptor leaves and a broker without persistence restarts
/// (losing the decryptor's session and everything queued for it), then the decryptor comes
/// back. Returns what was decrypted.
fn through_a_forgetful_broker(end_to_end: bool) -> (Setup, BTreeMap<(String, u64), u64>) {
    const PER_DEVICE: usize = 150;
    let st = setup("last");
    let mut broker = Mosquitto::start_volatile(&st.root);
    let session = ["--client-id", "backend-1", "--idle-timeout", "600"];
    let out = st.root.join("out.jsonl");
    let dec = decryptor_with(&st, &broker.addr(), &session, &out);
    let spool = st.root.join("spool");
    let config = st.root.join("hedged.toml");
    std::fs::write(
        &config,
        format!("[mqtt]\nhost = \"127.0.0.1\"\nend_to_end = {end_to_end}\ne2e_timeout_s = 2\n"),
    )
    .unwrap();
    let mut h = hedged_command(&st, &broker.addr(), "-", &spool)
        .arg("--config")
        .arg(&config)
        .spawn()
        .unwrap();
    let feeder = feed_steadily(
        h.stdin.take().unwrap(),
        st.vectors.clone(),
        PER_DEVICE,
        Duration::from_millis(20),
    );
    // The decryptor leaves (its session stays) and the broker queues what follows.
    std::thread::sleep(Duration::from_millis(1000));
    terminate(&dec);
    wait_ok(dec, "decryptor");
    std::thread::sleep(Duration::from_millis(1000));
    broker.stop();
    broker.restart();
    let dec = decryptor_with(&st, &broker.addr(), &session, &out);
    feeder.join().unwrap();
    let log = wait_ok(h, "hedged");
    assert!(log.contains("0 left in the spool"), "{log}");
    // Time for anything still on its way.
    std::thread::sleep(Duration::from_secs(2));
    terminate(&dec);
    wait_ok(dec, "decryptor");
    let (seen, repeats) = decrypted(&[&out]);
    assert_eq!(repeats, 0);
    (st, seen)
}

#[test]
fn a_broker_that_forgets_everything_loses_nothing() {
    let (st, seen) = through_a_forgetful_broker(true);
    check_all(&seen, &["board".to_string()], 150, &reference_classes(&st));
    // The same without the end-to-end acknowledgement: the broker's PUBACK released results
    // it then lost. (What this test guards against.)
    let (_, without) = through_a_forgetful_broker(false);
    assert!(
        without.len() < 150,
        "released at the broker's PUBACK, all {} arrived anyway: the test lost its point",
        without.len()
    );
    eprintln!(
        "without end-to-end acknowledgement: {} of 150 arrived",
        without.len()
    );
}

/// A broker that accepts connections and drops them at once, counting the attempts.
fn failing_broker() -> (u16, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let attempts = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = attempts.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            drop(conn);
        }
    });
    (port, attempts)
}

#[test]
fn backoff_holds_while_the_broker_is_down() {
    let st = setup("last");
    let (port, attempts) = failing_broker();
    let spool = st.root.join("spool");
    let mut h = hedged_device(&st, &format!("127.0.0.1:{port}"), "-", &spool, "board")
        .spawn()
        .unwrap();
    // A steady input: a result every 100 ms for 30 s.
    let feeder = feed_steadily(
        h.stdin.take().unwrap(),
        st.vectors.clone(),
        300,
        Duration::from_millis(100),
    );
    feeder.join().unwrap();
    let made = attempts.load(std::sync::atomic::Ordering::SeqCst);
    terminate(&h);
    let log = wait_ok(h, "hedged");
    assert!(log.contains("300 result(s)"), "{log}");
    // Exponential backoff from 1 s (jittered, capped at 30 s): 1 + about 5 in 30 s.
    assert!(
        (2..=7).contains(&made),
        "{made} connection attempts in 30 s:\n{log}"
    );
}
