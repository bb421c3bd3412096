//! The registry on a real PostgreSQL server (Debian's, started privately): the same behaviour
//! as on SQLite, and two decryption agents on one shared subscription, sharing it, that never
//! both accept a result — also when the broker and the board deliver it again.

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

#[test]
fn the_registry_behaves_the_same_on_postgres() {
    use hedge::backend::registry::conformance as c;
    let pg = Postgres::start();
    c::records_survive_reopening_and_migrations_are_versioned(&pg.database("records"));
    c::each_result_is_accepted_once_within_the_window(&pg.database("replay_window"));
    c::refusals_quarantine_until_cleared(&pg.database("quarantine"));
    c::two_agents_never_both_accept_a_result(&pg.database("agents"));
    c::fleet_and_deployments_are_recorded(&pg.database("fleet"));
}

fn hedge_on(registry: &Path, args: &[&str]) -> std::process::Output {
    let mut all = vec!["--registry", s(registry)];
    all.extend_from_slice(args);
    hedge(&all)
}

/// Keys and the 48→16→10 synthetic model (`test` test vectors) protected for `last` under
/// `root`, recorded in `registry`: (keys, synth directory, bundle).
fn protected(registry: &Path, root: &Path, test: &str) -> (PathBuf, PathBuf, PathBuf) {
    let keys = root.join("keys");
    hedge_on(registry, &["keygen", "--out", s(&keys)]);
    let (synth, bundle) = synth_protected(registry, root, &keys, "", "1", test);
    (keys, synth, bundle)
}

/// The synthetic model of `seed` protected with `keys`: `<name>synth/`, `<name>b.bundle`.
fn synth_protected(
    registry: &Path,
    root: &Path,
    keys: &Path,
    name: &str,
    seed: &str,
    test: &str,
) -> (PathBuf, PathBuf) {
    let synth = root.join(format!("{name}synth"));
    let shape = ["--seed", seed, "--shape", "48,16,10", "--test", test];
    hedge(&[&["synth", "--out", s(&synth)][..], &shape].concat());
    let bundle = root.join(format!("{name}b.bundle"));
    let model = synth.join("model.onnx");
    let calibration = synth.join("calibration.txt");
    hedge_on(
        registry,
        &[
            "protect",
            "--model",
            s(&model),
            "--keys",
            s(keys),
            "--variant",
            "last",
            "--calibration",
            s(&calibration),
            "--out",
            s(&bundle),
        ],
    );
    (synth, bundle)
}

/// The board "board" of `bundle` (state under `root`, its `[mqtt]` section the broker at
/// `port` and the lines `mqtt`), enrolled in `registry` as an operator does it:
/// `hedged --print-identity`, then `hedge device add`. Returns its command, given the rest of
/// its arguments.
fn enrolled_board<'a>(
    registry: &'a Path,
    root: &'a Path,
    keys: &'a Path,
    bundle: &'a Path,
    port: u16,
    mqtt: &str,
) -> impl Fn(&[&str]) -> Command + 'a {
    let config = root.join("hedged.toml");
    let section = format!("[mqtt]\nhost = \"127.0.0.1\"\nport = {port}\n{mqtt}\n");
    std::fs::write(&config, section).unwrap();
    let hedged = move |extra: &[&str]| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_hedged"));
        c.args(["--config", s(&config), "--bundle", s(bundle)])
            .args(["--verifying-key", s(&keys.join("verifying.key"))])
            .args([
                "--spool-dir",
                s(&root.join("spool")),
                "--device-id",
                "board",
            ])
            .args(extra)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        c
    };
    let printed = hedged(&["--input", "-", "--print-identity"])
        .stdout(Stdio::piped())
        .output()
        .unwrap();
    let key = String::from_utf8(printed.stdout).unwrap();
    hedge_on(
        registry,
        &[
            "device",
            "--keys",
            s(keys),
            "add",
            "board",
            "--key",
            key.trim(),
        ],
    );
    hedged
}

fn agent(registry: &Path, keys: &Path, broker: &str, i: usize, out: &Path) -> Draining {
    let mut c = Command::new(env!("CARGO_BIN_EXE_hedge"));
    c.args(["--registry", s(registry), "decrypt", "--keys", s(keys)])
        .args([
            "--subscribe",
            broker,
            "--topic",
            "$share/decryptors/hedge/+/results",
        ])
        .args(["--client-id", &format!("agent-{i}"), "--output", s(out)])
        .env("RUST_LOG", "info")
        .stdout(Stdio::null());
    Draining::spawn(&mut c)
}

/// Two agents on two hosts' worth of processes, one PostgreSQL registry: one is SIGKILLed
/// mid-stream (what it held unacknowledged goes to the other, and the board sends again what
/// nobody acknowledged) and comes back; every result is decrypted exactly once in all.
#[test]
fn two_agents_on_one_shared_subscription_accept_each_result_once() {
    let pg = Postgres::start();
    let registry = pg.database("fleet");
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let (keys, synth, bundle) = protected(&registry, root, "200");
    let broker = Mosquitto::start(root);
    let addr = broker.addr();
    let mqtt = "e2e_timeout_s = 2\ne2e_window = 32";
    let hedged = enrolled_board(&registry, root, &keys, &bundle, broker.port, mqtt);

    let outs = [root.join("a.jsonl"), root.join("b.jsonl")];
    let mut first = agent(&registry, &keys, &addr, 0, &outs[0]);
    let second = agent(&registry, &keys, &addr, 1, &outs[1]);
    std::thread::sleep(std::time::Duration::from_millis(800));
    let test = synth.join("test.txt");
    let board = Draining::spawn(hedged(&["--input", s(&test)]).stdin(Stdio::null()));
    wait_lines(&outs[0], 20);
    signal(first.child.id(), 9);
    first.child.wait().unwrap();
    first = agent(&registry, &keys, &addr, 0, &outs[0]);
    board.wait_ok("hedged");
    let lines = || {
        outs.iter()
            .flat_map(|o| {
                std::fs::read_to_string(o)
                    .unwrap_or_default()
                    .lines()
                    .map(String::from)
                    .collect::<Vec<_>>()
            })
            .collect::<Vec<String>>()
    };
    wait_for(|| lines().len() >= 200, "200 results decrypted in all");
    std::thread::sleep(std::time::Duration::from_secs(3)); // anything more would come now
    let mut duplicates = 0;
    for a in [first, second] {
        terminate(&a.child);
        let log = a.wait_ok("decryption agent");
        // "N results, M duplicates dropped, …"
        duplicates += log
            .lines()
            .filter_map(|l| {
                l.split(" results, ")
                    .nth(1)?
                    .split(' ')
                    .next()?
                    .parse::<u64>()
                    .ok()
            })
            .sum::<u64>();
    }
    eprintln!("duplicates dropped by the two agents after the kill: {duplicates}");
    let mut seqs: Vec<u64> = lines()
        .iter()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["seq"]
                .as_u64()
                .unwrap()
        })
        .collect();
    seqs.sort();
    assert_eq!(
        seqs,
        (1..=200).collect::<Vec<_>>(),
        "each result exactly once, in all"
    );
    let shares: Vec<usize> = outs
        .iter()
        .map(|o| {
            std::fs::read_to_string(o)
                .unwrap_or_default()
                .lines()
                .count()
        })
        .collect();
    assert!(shares[1] > 0, "the second agent took a share: {shares:?}");
}

/// Four agents on one shared subscription and one PostgreSQL registry under `hedge loadgen`
/// (100 boards × 20 results as fast as acknowledgements allow), one agent SIGKILLed midway and
/// started again: every result acknowledged, each written exactly once, every agent took a
/// share, and their batches never deadlock on each other.
#[test]
fn four_agents_under_a_simulated_fleet_accept_each_result_once() {
    let pg = Postgres::start();
    let registry = pg.database("four");
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let (keys, _, bundle) = protected(&registry, root, "10");
    let broker = Mosquitto::start(root);
    let addr = broker.addr();
    let outs: Vec<_> = (0..4)
        .map(|i| root.join(format!("agent-{i}.jsonl")))
        .collect();
    let mut agents: Vec<Draining> = (0..4)
        .map(|i| agent(&registry, &keys, &addr, i, &outs[i]))
        .collect();
    std::thread::sleep(std::time::Duration::from_millis(800));
    let report = std::thread::scope(|scope| {
        let run = scope.spawn(|| {
            loadgen(&[
                "--registry",
                s(&registry),
                "loadgen",
                "--keys",
                s(&keys),
                "--bundle",
                s(&bundle),
                "--broker",
                &addr,
                "--boards",
                "100",
                "--results",
                "20",
                "--window",
                "4",
                "--resend-after",
                "5",
                "--prefix",
                "pg",
            ])
        });
        wait_lines(&outs[3], 50);
        signal(agents[3].child.id(), 9);
        let _ = agents.pop().unwrap().finish();
        agents.push(agent(&registry, &keys, &addr, 3, &outs[3]));
        run.join().unwrap()
    });
    eprintln!("{report}");
    assert_eq!(report["acknowledged"], 2000, "{report}");
    assert_eq!(report["lost"], 0, "{report}");
    for a in agents {
        terminate(&a.child);
        let log = a.wait_ok("decryption agent");
        assert!(!log.contains("deadlock"), "{log}");
    }
    let mut seen = std::collections::BTreeMap::new();
    let mut shares = Vec::new();
    for o in &outs {
        let text = std::fs::read_to_string(o).unwrap_or_default();
        shares.push(text.lines().count());
        for l in text.lines() {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            let key = (
                v["device"].as_str().unwrap().to_string(),
                v["seq"].as_u64().unwrap(),
            );
            *seen.entry(key).or_insert(0) += 1;
        }
    }
    assert_eq!(seen.len(), 2000, "every result decrypted");
    assert!(seen.values().all(|&n| n == 1), "each exactly once");
    assert!(
        shares[..4].iter().all(|&n| n > 0),
        "every agent took a share: {shares:?}"
    );
}

/// Deployments without a shared directory: `hedge deploy` on one host stores the payload in
/// the PostgreSQL registry, and a deployment agent on another — its own empty working
/// directory, no key directory — serves it: the board takes the new bundle and runs it.
#[test]
fn a_deployment_agent_on_another_host_serves_the_payload_from_the_registry() {
    let pg = Postgres::start();
    let registry = pg.database("deploy");
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let (keys, _, bundle) = protected(&registry, root, "4");
    let (_, next) = synth_protected(&registry, root, &keys, "next-", "2", "4");
    let broker = Mosquitto::start(root);
    let addr = broker.addr();
    let mqtt = "deploy_window = 4\ndeploy_timeout_s = 3";
    let hedged = enrolled_board(&registry, root, &keys, &bundle, broker.port, mqtt);
    let board = Draining::spawn(hedged(&["--input", "-"]).stdin(Stdio::piped()));
    let mut deploy = vec!["deploy", "--keys", s(&keys), "--bundle", s(&next)];
    deploy.extend([
        "--device",
        "board",
        "--broker",
        &addr,
        "--chunk-size",
        "16384",
    ]);
    hedge_on(&registry, &deploy);

    let elsewhere = tempfile::tempdir().unwrap();
    let mut serve = Command::new(env!("CARGO_BIN_EXE_hedge"));
    serve
        .current_dir(elsewhere.path())
        .args([
            "--registry",
            s(&registry),
            "deploy",
            "serve",
            "--broker",
            &addr,
        ])
        .env("RUST_LOG", "info")
        .stdout(Stdio::null());
    let serving = Draining::spawn(&mut serve);
    let state = || {
        let o = hedge_on(&registry, &["deploy", "status", "--deployment", "1"]);
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    wait_for(
        || {
            state()
                .lines()
                .any(|l| l.contains(" board ") && l.contains(" active "))
        },
        "the board runs the deployed bundle",
    );
    terminate(&serving.child);
    serving.wait_ok("deployment agent");
    terminate(&board.child);
    let log = board.wait_ok("hedged");
    assert!(log.contains("deployment 1"), "{log}");
    let files: Vec<_> = walk(root)
        .into_iter()
        .chain(walk(elsewhere.path()))
        .filter(|p| {
            p.extension()
                .is_some_and(|e| e == "bundle" || e == "update")
        })
        .filter(|p| !p.starts_with(root.join("spool")))
        .collect();
    assert_eq!(
        files,
        [root.join("b.bundle"), root.join("next-b.bundle")],
        "no payload copy on either host"
    );
}

/// Every file under `dir`, sorted.
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out.sort();
    out
}
