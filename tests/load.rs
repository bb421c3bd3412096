//! A fleet under load and faults, over a real mosquitto with persistence: several daemons
//! publishing continuously while the broker restarts and the decryption agent crashes; a
//! backlog drained and acknowledged once; the reconnect backoff while the broker is down.
//! `mosquitto_sub` is the control consumer that shows what the broker delivered.

mod common;
use common::*;
use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, Read, Write};
use std::path::{Path, PathBuf};
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

/// A fleet run: `devices` daemons each fed `per_device` vectors, one every `interval`, while
/// the broker is restarted `broker_restarts` times and the decryptor killed (SIGKILL) and
/// started again `decryptor_kills` times, evenly spread over the stream.
struct Plan {
    devices: usize,
    per_device: usize,
    interval: Duration,
    broker_restarts: usize,
    decryptor_kills: usize,
}

/// What reached the decryptor and the control consumer.
#[derive(Debug)]
struct Report {
    results: usize,
    decrypted: usize,
    lost: usize,
    /// Lines written twice (none: the agent cuts off what it wrote and did not commit).
    written_twice: usize,
    /// Results each device's registry record says were accepted (each exactly once).
    accepted: Vec<u64>,
    control: usize,
    seconds: f64,
}

fn run_fleet(plan: &Plan) -> (Setup, Report, BTreeMap<(String, u64), u64>) {
    let st = setup("last");
    let mut broker = Mosquitto::start_with(&st.root, "allow_anonymous true\nautosave_interval 1\n");
    let control_out = st.root.join("control.bin");
    let control = control_consumer(broker.port, &control_out);
    let session = ["--client-id", "backend-1", "--idle-timeout", "600"];
    let outs = [st.root.join("dec-0.jsonl")];
    let mut dec = decryptor_with(&st, &broker.addr(), &session, &outs[0]);
    let devices: Vec<String> = (1..=plan.devices).map(|d| format!("board-{d}")).collect();
    let mut daemons = Vec::new();
    let mut feeders = Vec::new();
    let started = Instant::now();
    for d in &devices {
        let spool = st.root.join(format!("spool-{d}"));
        enrol(&st, &spool, d);
        let mut h = Draining::spawn(&mut hedged_device(&st, &broker.addr(), "-", &spool, d));
        feeders.push(feed_steadily(
            h.child.stdin.take().unwrap(),
            st.vectors.clone(),
            plan.per_device,
            plan.interval,
        ));
        daemons.push(h);
    }
    // Faults spread over the stream, alternating broker restarts and decryptor kills.
    let faults = plan.broker_restarts + plan.decryptor_kills;
    let stream = plan.interval * plan.per_device as u32;
    let (mut restarts, mut kills) = (0, 0);
    for i in 0..faults {
        let at = stream * (i as u32 + 1) / (faults as u32 + 1);
        std::thread::sleep(at.saturating_sub(started.elapsed()));
        if (i % 2 == 0 || kills == plan.decryptor_kills) && restarts < plan.broker_restarts {
            broker.stop();
            std::thread::sleep(Duration::from_secs(2));
            broker.restart();
            restarts += 1;
        } else {
            signal(dec.id(), 9);
            dec.wait().unwrap();
            std::thread::sleep(Duration::from_millis(500));
            // Started again on the same file, as a service would be: what the kill left
            // written and not committed is cut off (backend::output).
            dec = decryptor_with(&st, &broker.addr(), &session, &outs[0]);
            kills += 1;
        }
    }
    for f in feeders {
        f.join().unwrap();
    }
    for h in daemons {
        let log = h.wait_ok("hedged");
        assert!(log.contains("0 left in the spool"), "{log}");
    }
    let results = plan.devices * plan.per_device;
    let paths: Vec<&Path> = outs.iter().map(|p| p.as_path()).collect();
    let t = Instant::now();
    while decrypted(&paths).0.len() < results && t.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(200));
    }
    let seconds = started.elapsed().as_secs_f64();
    let (seen, written_twice) = decrypted(&paths);
    terminate(&dec);
    wait_ok(dec, "decryptor");
    std::thread::sleep(Duration::from_millis(500));
    terminate(&control);
    let mut control = control;
    control.wait().unwrap();
    let list = String::from_utf8(hedge(&["device", "--keys", s(&st.keys), "list"]).stdout).unwrap();
    let accepted = devices
        .iter()
        .map(|d| {
            let row = list.lines().find(|l| l.starts_with(d.as_str())).unwrap();
            row.split_whitespace().nth(3).unwrap().parse().unwrap()
        })
        .collect();
    let report = Report {
        results,
        decrypted: seen.len(),
        lost: results.saturating_sub(seen.len()),
        written_twice,
        accepted,
        control: controlled(&control_out).len(),
        seconds,
    };
    (st, report, seen)
}

#[test]
fn a_fleet_under_broker_restarts_and_a_decryptor_crash_loses_nothing() {
    let plan = Plan {
        devices: 4,
        per_device: 400,
        interval: Duration::from_millis(25),
        broker_restarts: 2,
        decryptor_kills: 1,
    };
    let (st, report, seen) = run_fleet(&plan);
    eprintln!("{report:?}");
    let devices: Vec<String> = (1..=plan.devices).map(|d| format!("board-{d}")).collect();
    check_all(&seen, &devices, plan.per_device, &reference_classes(&st));
    // The registry accepted each exactly once, across the restart; a line written and not
    // committed when the SIGKILL came is cut off when the agent starts again.
    assert_eq!(report.accepted, vec![plan.per_device as u64; plan.devices]);
    assert_eq!(report.written_twice, 0, "{report:?}");
    assert_eq!(
        report.control, report.results,
        "the broker delivered every result"
    );
}

/// The same at a size and duration of your choosing (`scripts/soak.sh`).
#[test]
#[ignore = "long: run by scripts/soak.sh"]
fn soak() {
    let var = |name: &str, default: usize| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let devices = var("SOAK_DEVICES", 8);
    let per_device = var("SOAK_RESULTS", 2000);
    let seconds = var("SOAK_SECONDS", 120);
    let plan = Plan {
        devices,
        per_device,
        interval: Duration::from_secs_f64(seconds as f64 / per_device as f64),
        broker_restarts: var("SOAK_BROKER_RESTARTS", 4),
        decryptor_kills: var("SOAK_DECRYPTOR_KILLS", 2),
    };
    let (st, report, seen) = run_fleet(&plan);
    println!(
        "soak: {} devices, {} results, {} broker restarts, {} decryptor kills: {} decrypted, \
         {} lost, {} written twice, control {} of {}, {:.0} s, {:.1} results/s at the decryptor",
        plan.devices,
        report.results,
        plan.broker_restarts,
        plan.decryptor_kills,
        report.decrypted,
        report.lost,
        report.written_twice,
        report.control,
        report.results,
        report.seconds,
        report.decrypted as f64 / report.seconds
    );
    let devices: Vec<String> = (1..=plan.devices).map(|d| format!("board-{d}")).collect();
    check_all(&seen, &devices, plan.per_device, &reference_classes(&st));
    assert_eq!(report.accepted, vec![plan.per_device as u64; plan.devices]);
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

/// A fleet of simulated boards (`hedge loadgen`) through mosquitto to agents in one shared
/// subscription, with faults spread over the run.
struct FleetPlan {
    boards: usize,
    results: usize,
    /// Results per second for all boards together (None: as fast as acknowledgements allow).
    rate: Option<usize>,
    agents: usize,
    broker_restarts: usize,
    agent_kills: usize,
    /// Time before each fault (a broker restart, then 3 s later an agent kill).
    fault_every: Duration,
}

/// Run `plan` and check it: every result acknowledged, none lost, each decrypted line written
/// exactly once, to the class of the one honest result the simulated boards re-sign.
fn simulated_fleet(plan: &FleetPlan) -> serde_json::Value {
    let st = setup("last");
    let mut broker = Mosquitto::start_with(
        &st.root,
        "allow_anonymous true\nautosave_interval 1\nmax_queued_messages 100000\n",
    );
    let addr = broker.addr();
    let agent = |i: usize, out: &Path| {
        let id = format!("agent-{i}");
        let args = [
            "--client-id",
            &id,
            "--topic",
            "$share/agents/hedge/+/results",
            "--idle-timeout",
            "600",
        ];
        decryptor_with(&st, &addr, &args, out)
    };
    let outs: Vec<PathBuf> = (0..plan.agents)
        .map(|i| st.root.join(format!("agent-{i}.jsonl")))
        .collect();
    let mut agents: Vec<Child> = (0..plan.agents).map(|i| agent(i, &outs[i])).collect();
    let (boards, results) = (plan.boards.to_string(), plan.results.to_string());
    let rate = plan.rate.map(|r| r.to_string());
    let report = std::thread::scope(|scope| {
        let run = scope.spawn(|| {
            let mut args = vec![
                "loadgen",
                "--keys",
                s(&st.keys),
                "--bundle",
                s(&st.bundle),
                "--broker",
                &addr,
                "--boards",
                &boards,
                "--results",
                &results,
                "--resend-after",
                "5",
                "--grace",
                "90",
                "--prefix",
                "sim",
            ];
            args.extend(rate.iter().flat_map(|r| ["--rate", r.as_str()]));
            loadgen(&args)
        });
        for i in 0..plan.broker_restarts.max(plan.agent_kills) {
            std::thread::sleep(plan.fault_every);
            if run.is_finished() {
                break;
            }
            if i < plan.broker_restarts {
                broker.stop();
                std::thread::sleep(Duration::from_secs(2));
                broker.restart();
            }
            std::thread::sleep(Duration::from_secs(3));
            if i < plan.agent_kills {
                // Started again on the same file, as a service would be.
                let k = i % plan.agents;
                signal(agents[k].id(), 9);
                agents[k].wait().unwrap();
                agents[k] = agent(k, &outs[k]);
            }
        }
        run.join().unwrap()
    });
    eprintln!("{report}");
    let total = (plan.boards * plan.results) as u64;
    assert_eq!(report["boards"], plan.boards as u64);
    assert_eq!(report["sent"], total, "{report}");
    assert_eq!(report["acknowledged"], total, "{report}");
    assert_eq!(report["lost"], 0, "{report}");
    assert!(report["p99_ms"].as_f64().unwrap() > 0.0, "{report}");
    for a in agents {
        terminate(&a);
        wait_ok(a, "decryption agent");
    }
    let paths: Vec<&Path> = outs.iter().map(|p| p.as_path()).collect();
    let (seen, written_twice) = decrypted(&paths);
    assert_eq!(seen.len() as u64, total, "every result decrypted");
    assert_eq!(written_twice, 0, "no line written twice");
    let width = (plan.boards - 1).to_string().len();
    let expected: BTreeSet<(String, u64)> = (0..plan.boards)
        .map(|i| format!("sim-{i:0width$}"))
        .flat_map(|b| (1..=plan.results as u64).map(move |q| (b.clone(), q)))
        .collect();
    assert_eq!(seen.keys().cloned().collect::<BTreeSet<_>>(), expected);
    // One honest result re-signed: every line decrypts to the class of the all-zero input.
    let classes: BTreeSet<u64> = seen.values().copied().collect();
    assert_eq!(classes.len(), 1, "{classes:?}");
    report
}

/// 200 simulated boards × 20 results through mosquitto to two agents in one shared
/// subscription, the broker restarted and one agent SIGKILLed (and started again) midway:
/// every result acknowledged, none lost, each decrypted line written exactly once.
#[test]
fn a_simulated_fleet_through_a_broker_restart_and_an_agent_kill_loses_nothing() {
    simulated_fleet(&FleetPlan {
        boards: 200,
        results: 20,
        rate: Some(400),
        agents: 2,
        broker_restarts: 1,
        agent_kills: 1,
        fault_every: Duration::from_secs(4),
    });
}

/// The same at a size of your choosing (`scripts/soak.sh --fleet`).
#[test]
#[ignore = "long: run by scripts/soak.sh --fleet"]
fn soak_fleet() {
    let var = |name: &str, default: usize| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let plan = FleetPlan {
        boards: var("SOAK_BOARDS", 1000),
        results: var("SOAK_RESULTS", 20),
        rate: Some(var("SOAK_RATE", 0)).filter(|&r| r > 0),
        agents: var("SOAK_AGENTS", 2),
        broker_restarts: var("SOAK_BROKER_RESTARTS", 2),
        agent_kills: var("SOAK_AGENT_KILLS", 2),
        fault_every: Duration::from_secs(var("SOAK_FAULT_EVERY", 5) as u64),
    };
    let r = simulated_fleet(&plan);
    println!(
        "soak: {} boards × {} results, {} agents, {} broker restarts, {} agent kills: \
         {} acknowledged, {} lost, 0 written twice, {} resent, {:.0} results/s, \
         p50/p95/p99 {}/{}/{} ms",
        plan.boards,
        plan.results,
        plan.agents,
        plan.broker_restarts,
        plan.agent_kills,
        r["acknowledged"],
        r["lost"],
        r["resent"],
        r["results_per_s"].as_f64().unwrap_or(0.0),
        r["p50_ms"],
        r["p95_ms"],
        r["p99_ms"]
    );
}

/// Two agents started with one `--client-id` take the MQTT session from each other (the
/// broker closes the older connection as the newer one arrives). Each must back off instead
/// of reconnecting every second forever, and say why.
#[test]
fn two_agents_with_one_client_id_back_off_and_say_why() {
    let st = setup("last");
    let broker = Mosquitto::start(&st.root);
    let twin = ["--client-id", "twin", "--idle-timeout", "600"];
    let a = decryptor_with(&st, &broker.addr(), &twin, &st.root.join("a.jsonl"));
    let b = decryptor_with(&st, &broker.addr(), &twin, &st.root.join("b.jsonl"));
    std::thread::sleep(Duration::from_secs(15));
    terminate(&a);
    terminate(&b);
    let logs = [wait_ok(a, "agent a"), wait_ok(b, "agent b")];
    let reconnects: usize = logs
        .iter()
        .map(|l| l.matches("broker connection").count())
        .sum();
    eprintln!("{reconnects} reconnects in 15 s\n{}\n{}", logs[0], logs[1]);
    assert!(
        reconnects <= 12,
        "{reconnects} reconnects in 15 s: a tight loop"
    );
    assert!(
        logs.iter().any(|l| l.contains("same client id")),
        "neither agent says why: {logs:?}"
    );
}
