//! Helpers shared by the integration tests: a real mosquitto on a free port, the CLIs, small
//! fixed-seed models protected with fresh keys, and checks against the integer reference.
#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub struct Mosquitto {
    child: Option<Child>,
    conf: PathBuf,
    pub port: u16,
}

impl Mosquitto {
    /// Anonymous, plain TCP.
    pub fn start(dir: &Path) -> Self {
        Self::start_with(dir, "allow_anonymous true\n")
    }

    /// Anonymous, plain TCP, no persistence: a restart forgets every session and message.
    pub fn start_volatile(dir: &Path) -> Self {
        Self::launch(dir, "allow_anonymous true\n", "")
    }

    /// `listener_config` follows the listener line (TLS files, password_file, …).
    pub fn start_with(dir: &Path, listener_config: &str) -> Self {
        let db = dir.join("mosquitto-db");
        std::fs::create_dir_all(&db).unwrap();
        let persistence = format!("persistence true\npersistence_location {}/\n", db.display());
        Self::launch(dir, listener_config, &persistence)
    }

    fn launch(dir: &Path, listener_config: &str, persistence: &str) -> Self {
        let port = free_port();
        let conf = dir.join("mosquitto.conf");
        let logs = dir.join("mosquitto-db");
        std::fs::create_dir_all(&logs).unwrap();
        std::fs::write(
            &conf,
            format!(
                "per_listener_settings true\nlistener {port} 127.0.0.1\n{listener_config}{persistence}log_dest file {}/mosquitto.log\n{}",
                logs.display(),
                // As root, mosquitto drops to its own user and could not write our temp dir.
                if is_root() { "user root\n" } else { "" }
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

    pub fn restart(&mut self) {
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
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            terminate(&c);
            c.wait().unwrap();
        }
    }

    pub fn addr(&self) -> String {
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

pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .map(|s| {
            s.lines()
                .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

pub fn terminate(c: &Child) {
    signal(c.id(), 15);
}

pub fn signal(pid: u32, sig: i32) {
    Command::new("kill")
        .args([format!("-{sig}"), pid.to_string()])
        .status()
        .unwrap();
}

pub fn hedge(args: &[&str]) -> std::process::Output {
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

/// Keys, one protected model (48→16→10) and its test vectors in a temp dir.
pub struct Setup {
    pub variant: String,
    _dir: tempfile::TempDir,
    pub root: PathBuf,
    pub keys: PathBuf,
    pub bundle: PathBuf,
    pub vectors: Vec<String>,
}

pub fn setup(variant: &str) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let keys = root.join("keys");
    hedge(&["keygen", "--out", s(&keys)]);
    let bundle = model(&root, &keys, "", 1, variant);
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

/// Synthesise model `{name}model.onnx` (with `{name}calibration.txt`, `{name}test.txt`) from
/// `seed` under `root` and protect it as `{name}b.bundle`.
pub fn model(root: &Path, keys: &Path, name: &str, seed: u64, variant: &str) -> PathBuf {
    model_shaped(root, keys, name, seed, variant, "48,16,10")
}

/// [`model`] of another shape (`input,hidden,classes`).
pub fn model_shaped(
    root: &Path,
    keys: &Path,
    name: &str,
    seed: u64,
    variant: &str,
    shape: &str,
) -> PathBuf {
    let dir = root.join(format!("{name}synth"));
    let seed = seed.to_string();
    let mut synth = vec![
        "synth",
        "--out",
        s(&dir),
        "--seed",
        &seed,
        "--shape",
        shape,
        "--test",
        "40",
        "--calibration",
        "60",
    ];
    // noact is the paper's model without an activation (protect refuses to drop one).
    if variant == "noact" {
        synth.push("--no-activation");
    }
    hedge(&synth);
    for f in ["model.onnx", "calibration.txt", "test.txt"] {
        std::fs::rename(dir.join(f), root.join(format!("{name}{f}"))).unwrap();
    }
    let bundle = root.join(format!("{name}b.bundle"));
    hedge(&[
        "protect",
        "--model",
        s(&root.join(format!("{name}model.onnx"))),
        "--keys",
        s(keys),
        "--variant",
        variant,
        "--calibration",
        s(&root.join(format!("{name}calibration.txt"))),
        "--out",
        s(&bundle),
    ]);
    bundle
}

/// Model `{name}` under `root`, quantised for `variant` as `hedge protect` does.
fn quantised(root: &Path, name: &str, variant: &str) -> hedge::model::quant::QuantModel {
    use hedge::model::quant::{QuantModel, Variant};
    let model = hedge::model::onnx::load(&root.join(format!("{name}model.onnx"))).unwrap();
    let calibration: Vec<Vec<f32>> =
        hedge::input::vectors::read_samples(&root.join(format!("{name}calibration.txt")))
            .unwrap()
            .into_iter()
            .map(|s| s.values)
            .collect();
    let variant = match variant {
        "noact" => Variant::Noact,
        "last" => Variant::Last,
        other => panic!("no exact reference for {other}"),
    };
    let params =
        hedge::crypto::params::ParameterSet::for_level(hedge::crypto::params::SecurityLevel::L128);
    QuantModel::quantize(&model, variant, None, &calibration, &params).unwrap()
}

/// The class the integer reference gives a vector line.
fn class_of(q: &hedge::model::quant::QuantModel, vector: &str) -> u64 {
    let x = hedge::input::vectors::parse_line(vector)
        .unwrap()
        .unwrap()
        .values;
    hedge::model::argmax(&q.reference(&q.input.quantize(&x).unwrap()).scores) as u64
}

/// The class the deterministic integer reference gives `vector` under model `{name}`.
pub fn reference_class(root: &Path, name: &str, variant: &str, vector: &str) -> u64 {
    class_of(&quantised(root, name, variant), vector)
}

/// The class the integer reference gives each of `st`'s test vectors (model quantised once).
pub fn reference_classes(st: &Setup) -> Vec<u64> {
    let q = quantised(&st.root, "", &st.variant);
    st.vectors.iter().map(|v| class_of(&q, v)).collect()
}

/// hedged as device "board", enrolled with the backend.
pub fn hedged_command(st: &Setup, broker: &str, input: &str, spool: &Path) -> Command {
    enrol(st, spool, "board");
    hedged_device(st, broker, input, spool, "board")
}

/// hedged as device `device`.
pub fn hedged_device(st: &Setup, broker: &str, input: &str, spool: &Path, device: &str) -> Command {
    hedged_args(
        Command::new(env!("CARGO_BIN_EXE_hedged")),
        st,
        broker,
        input,
        spool,
        device,
    )
}

/// hedged's usual arguments on `c` (the binary, or an emulator running it).
pub fn hedged_args(
    mut c: Command,
    st: &Setup,
    broker: &str,
    input: &str,
    spool: &Path,
    device: &str,
) -> Command {
    c.args([
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
        device,
    ])
    .env("RUST_LOG", "info")
    .stdin(Stdio::piped())
    .stdout(Stdio::null())
    .stderr(Stdio::piped());
    c
}

pub fn hedged(st: &Setup, broker: &str, input: &str, spool: &Path) -> Child {
    hedged_command(st, broker, input, spool).spawn().unwrap()
}

/// The public identity key hedged prints for its state directory (`spool`), created there.
pub fn identity(st: &Setup, spool: &Path, device: &str) -> String {
    let o = hedged_device(st, "127.0.0.1:1", "-", spool, device)
        .arg("--print-identity")
        .stderr(Stdio::piped())
        .stdout(Stdio::piped())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout).unwrap().trim().to_string()
}

/// Enrol the board whose state directory is `spool` as `device`, as an operator does:
/// `hedged --print-identity` on the board, `hedge device add` on the backend.
pub fn enrol(st: &Setup, spool: &Path, device: &str) {
    let key = identity(st, spool, device);
    hedge(&[
        "device",
        "--keys",
        s(&st.keys),
        "add",
        device,
        "--key",
        &key,
    ]);
}

/// `hedge decrypt --subscribe` with `extra` flags, writing to `out`; returns once it had time
/// to subscribe.
pub fn decryptor_with(st: &Setup, broker: &str, extra: &[&str], out: &Path) -> Child {
    decryptor_of(&st.keys, broker, extra, out)
}

/// [`decryptor_with`] for the backend whose key directory is `keys`.
pub fn decryptor_of(keys: &Path, broker: &str, extra: &[&str], out: &Path) -> Child {
    let c = Command::new(env!("CARGO_BIN_EXE_hedge"))
        .args([
            "decrypt",
            "--keys",
            s(keys),
            "--subscribe",
            broker,
            "--output",
            s(out),
        ])
        .args(extra)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Let it connect and subscribe (its session then persists across broker restarts).
    std::thread::sleep(Duration::from_millis(800));
    c
}

pub fn decryptor(st: &Setup, broker: &str, count: usize, out: &Path) -> Child {
    decryptor_with(
        st,
        broker,
        &[
            "--client-id",
            "decryptor-1",
            "--count",
            &count.to_string(),
            "--idle-timeout",
            "90",
        ],
        out,
    )
}

/// A child whose stderr is read as it comes (a chatty child would block on a full pipe long
/// before anyone waits for it).
pub struct Draining {
    pub child: Child,
    log: std::thread::JoinHandle<String>,
}

impl Draining {
    pub fn spawn(command: &mut Command) -> Self {
        let mut child = command.stderr(Stdio::piped()).spawn().unwrap();
        let mut stderr = child.stderr.take().unwrap();
        let log = std::thread::spawn(move || {
            use std::io::Read;
            let mut text = String::new();
            let _ = stderr.read_to_string(&mut text);
            text
        });
        Self { child, log }
    }

    /// Its stderr, once it has exited however it exits (after a kill).
    pub fn finish(self) -> String {
        let Draining { mut child, log } = self;
        let _ = child.wait();
        log.join().unwrap()
    }

    /// Wait for a successful exit (5 minutes at most); its stderr.
    pub fn wait_ok(self, what: &str) -> String {
        let Draining { child, log } = self;
        wait_ok(child, what);
        log.join().unwrap()
    }
}

/// Wait for `c` to exit successfully (killed and failed after 5 minutes: a hang must not hold up
/// CI); returns its stderr.
pub fn wait_ok(mut c: Child, what: &str) -> String {
    use std::io::Read;
    let mut stderr = c.stderr.take();
    // Read stderr meanwhile: a chatty child would block on a full pipe.
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        if let Some(e) = stderr.as_mut() {
            let _ = e.read_to_string(&mut text);
        }
        text
    });
    let t = Instant::now();
    let status = loop {
        if let Some(status) = c.try_wait().unwrap() {
            break status;
        }
        if t.elapsed() > Duration::from_secs(300) {
            let _ = c.kill();
            let _ = c.wait();
            panic!("{what} hung for 300 s: {}", reader.join().unwrap());
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let err = reader.join().unwrap();
    assert!(status.success(), "{what} failed: {err}");
    err
}

/// The decrypted JSON lines of `out`, sorted by sequence number.
pub fn results(out: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(out).unwrap_or_default();
    let mut v: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    v.sort_by_key(|r| r["seq"].as_u64());
    v
}

/// Every result 1..=expected exactly once, from device "board", with the class the integer
/// reference gives the vector of the same number.
pub fn check_results(st: &Setup, out: &Path, expected: usize) {
    check_result_lines(st, &results(out), expected);
}

pub fn check_result_lines(st: &Setup, lines: &[serde_json::Value], expected: usize) {
    let mut seqs = Vec::new();
    for v in lines {
        let seq = v["seq"].as_u64().unwrap();
        assert_eq!(
            v["class"].as_u64(),
            Some(reference_class(
                &st.root,
                "",
                &st.variant,
                &st.vectors[seq as usize - 1]
            )),
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

pub fn feed(child: &mut Child, lines: &[String]) {
    let stdin = child.stdin.as_mut().unwrap();
    for l in lines {
        writeln!(stdin, "{l}").unwrap();
    }
    stdin.flush().unwrap();
}

/// Wait until `path` has `n` lines.
pub fn wait_lines(path: &Path, n: usize) {
    wait_for(
        || {
            std::fs::read_to_string(path)
                .map(|s| s.lines().count())
                .unwrap_or(0)
                >= n
        },
        &format!("{n} lines in {}", path.display()),
    );
}

/// Poll `done` for up to 60 s.
pub fn wait_for(mut done: impl FnMut() -> bool, what: &str) {
    let t = Instant::now();
    while !done() {
        assert!(t.elapsed() < Duration::from_secs(60), "timed out: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Spooled result files in `dir`.
pub fn spooled(dir: &Path) -> usize {
    std::fs::read_dir(dir)
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
}

/// A private PostgreSQL server (Debian's binaries) in a temporary directory, trusting local
/// connections: the registry's scale-out store. As root (as `.ci/run` runs), the server runs
/// as the `postgres` user the package creates, since it refuses to run as root.
pub struct Postgres {
    child: Child,
    dir: PathBuf,
    /// `pg_ctl stop`, as the server's user.
    stop: Command,
    pub port: u16,
}

impl Postgres {
    pub fn start() -> Self {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .ok()
            .and_then(|d| d.flatten().map(|e| e.path().join("bin")).max())
            .filter(|b| b.join("postgres").exists())
            .expect("PostgreSQL is not installed (apt-get install postgresql; .ci/run does)");
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = PathBuf::from(format!("/tmp/hedge-pg-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let as_server = |program: &Path| {
            if is_root() {
                let mut c = Command::new("runuser");
                c.args(["-u", "postgres", "--"]).arg(program);
                c
            } else {
                Command::new(program)
            }
        };
        if is_root() {
            let ok = Command::new("chown")
                .args(["postgres:postgres", s(&dir)])
                .status()
                .unwrap();
            assert!(ok.success(), "chown postgres {}", dir.display());
        }
        let data = dir.join("data");
        let init = as_server(&bin.join("initdb"))
            .args(["-D", s(&data), "-A", "trust", "-U", "hedge", "--no-sync"])
            .stdout(Stdio::null())
            .output()
            .unwrap();
        assert!(
            init.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&init.stderr)
        );
        let port = free_port();
        let child = as_server(&bin.join("postgres"))
            .args(["-D", s(&data), "-p", &port.to_string(), "-k", s(&dir)])
            .args(["-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut stop = as_server(&bin.join("pg_ctl"));
        stop.args(["-D", s(&data), "-m", "fast", "-w", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let pg = Self {
            child,
            dir,
            stop,
            port,
        };
        let t = Instant::now();
        while !pg.psql("postgres", "SELECT 1").status.success() {
            assert!(
                t.elapsed() < Duration::from_secs(30),
                "PostgreSQL did not start"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        pg
    }

    fn psql(&self, db: &str, sql: &str) -> std::process::Output {
        Command::new("psql")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "hedge",
                "-d",
                db,
            ])
            .args(["-v", "ON_ERROR_STOP=1", "-c", sql])
            .output()
            .unwrap()
    }

    /// A new, empty database: its URL (a registry location).
    pub fn database(&self, name: &str) -> PathBuf {
        let o = self.psql("postgres", &format!("CREATE DATABASE {name}"));
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        PathBuf::from(format!("postgres://hedge@127.0.0.1:{}/{name}", self.port))
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = self.stop.status();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Run `hedge loadgen` (with `args` after the global ones) to its end; its last line, parsed.
pub fn loadgen(args: &[&str]) -> serde_json::Value {
    let mut run = Draining::spawn(
        Command::new(env!("CARGO_BIN_EXE_hedge"))
            .args(args)
            .stdout(Stdio::piped()),
    );
    let mut stdout = String::new();
    use std::io::Read;
    run.child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .unwrap();
    run.wait_ok("hedge loadgen");
    let last = stdout.lines().last().expect("loadgen printed nothing");
    serde_json::from_str(last).unwrap_or_else(|e| panic!("{e}: {last}"))
}

/// A bundle's id, as `hedge inspect` prints it.
pub fn bundle_id(bundle: &Path, keys: &Path) -> String {
    let o = hedge(&["inspect", s(bundle), "--keys", s(keys)]);
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .find_map(|l| {
            l.split("(id ")
                .nth(1)
                .map(|r| r.trim_end_matches(')').to_string())
        })
        .unwrap()
}

/// What a board can make with the public key alone: a fresh LWE (dimension N) of the phase
/// `phase`, sample-extracted from a public-key GLWE encryption — a forged `noact` part.
pub fn public_lwe(pk: &mut hedge::crypto::pke::PreparedPublicKey, phase: u64) -> Vec<u64> {
    use tfhe::core_crypto::prelude::*;
    let n = pk.poly_size();
    let mut message = vec![0u64; n];
    message[0] = phase;
    let glwe = pk.encrypt_glwe(&message);
    let mut lwe = LweCiphertext::new(0u64, LweSize(n + 1), hedge::crypto::modulus());
    extract_lwe_sample_from_glwe_ciphertext(&glwe, &mut lwe, MonomialDegree(0));
    lwe.into_container()
}
