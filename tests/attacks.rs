//! A compromised board attacks the backend, end to end over mosquitto through the real
//! binaries. The attacker holds what a board holds — the bundle, the public and evaluation
//! keys, its own identity key — and crafts result messages with the library. Every attack is
//! refused, nothing of it reaches the output, and the honest results keep flowing
//! (docs/THREATS.md lists each attack with its defence and this test).

mod common;
use common::*;
use ed25519_dalek::SigningKey;
use hedge::crypto::raw::U64s;
use hedge::engine::{EncryptedModel, ResultCiphertext};
use hedge::transport::message::{now_ms, ResultMessage};
use std::path::Path;
use std::time::Duration;

/// What a compromised board has, and a connection to publish what it likes.
struct Attacker {
    identity: SigningKey,
    bundle: hedge::bundle::Opened,
    engine: hedge::engine::EdgeEngine,
    client: rumqttc::Client,
    _io: std::thread::JoinHandle<()>,
}

impl Attacker {
    fn new(st: &Setup, spool: &Path, port: u16) -> Self {
        let key: [u8; 32] = std::fs::read(spool.join("identity.key"))
            .unwrap()
            .try_into()
            .unwrap();
        let bundle =
            hedge::bundle::open_verified(&st.bundle, &st.keys.join("verifying.key")).unwrap();
        let engine = bundle.bundle.engine().unwrap();
        let mut opts = rumqttc::MqttOptions::new("attacker", "127.0.0.1", port);
        opts.set_max_packet_size(8 << 20, 8 << 20);
        let (client, mut conn) = rumqttc::Client::new(opts, 64);
        let io = std::thread::spawn(move || for _ in conn.iter() {});
        Self {
            identity: SigningKey::from_bytes(&key),
            bundle,
            engine,
            client,
            _io: io,
        }
    }

    /// A genuine result of its own engine, to start crafting from.
    fn genuine(&mut self, st: &Setup) -> ResultCiphertext {
        let x = hedge::input::vectors::parse_line(&st.vectors[0])
            .unwrap()
            .unwrap()
            .values;
        self.engine.infer_plain(&x).unwrap()
    }

    /// A one-part result of full 64-bit words as the board would send it: cut for the wire
    /// as the bundle says (the attacker sees the bundle).
    fn crafted(&self, words: Vec<u64>) -> ResultCiphertext {
        let shape = &self.bundle.bundle.header.model.result;
        ResultCiphertext {
            key_id: self.bundle.bundle.header.key_id,
            bits: shape.wire.bits(),
            parts: vec![U64s(shape.cut(&shape.parts[0], &words))],
        }
    }

    /// The bundle's public key of its results' GLWE key (the wide one for `last` and
    /// `noact`, the bootstrap's for `act`).
    fn public_key(&self) -> hedge::crypto::pke::PreparedPublicKey {
        let header = &self.bundle.bundle.header;
        self.bundle
            .bundle
            .keys
            .public
            .key(header.model.result.key)
            .prepare()
            .unwrap()
    }

    /// The polynomial size of its results.
    fn poly_size(&self) -> usize {
        self.bundle.bundle.header.model.result.poly_size as usize
    }

    /// A message as `device`, signed with `key` (the board's, unless it says otherwise).
    fn message(&self, device: &str, seq: u64, result: ResultCiphertext) -> ResultMessage {
        let mut m = ResultMessage {
            device_id: device.into(),
            bundle_id: self.bundle.id.clone(),
            seq,
            timestamp_ms: now_ms(),
            infer_us: 1,
            extract_us: 0,
            result,
            signed: None,
        };
        m.sign(&self.identity);
        m
    }

    fn publish(&self, topic: &str, m: &ResultMessage) {
        self.client
            .publish(topic, rumqttc::QoS::AtLeastOnce, false, m.encode())
            .unwrap();
    }
}

/// Lines of the decryptor's output with these sequence numbers.
fn lines_for(out: &Path, seqs: &[u64]) -> Vec<serde_json::Value> {
    results(out)
        .into_iter()
        .filter(|l| seqs.contains(&l["seq"].as_u64().unwrap()))
        .collect()
}

#[test]
fn every_attack_of_a_compromised_board_is_refused() {
    let st = setup("last");
    let broker = Mosquitto::start(&st.root);
    let out = st.root.join("out.jsonl");
    let spool = st.root.join("spool");
    // A second board, enrolled: a victim for results published on its topic.
    let other_spool = st.root.join("other");
    enrol(&st, &other_spool, "board-b");
    let dec = decryptor_with(
        &st,
        &broker.addr(),
        &["--client-id", "backend", "--idle-timeout", "600"],
        &out,
    );
    // Honest results first: 5 from the board (enrolled by the helper).
    let input = st.root.join("in.txt");
    std::fs::write(&input, st.vectors[..5].join("\n")).unwrap();
    wait_ok(hedged(&st, &broker.addr(), s(&input), &spool), "hedged");
    wait_lines(&out, 5);
    let honest = results(&out);

    let mut a = Attacker::new(&st, &spool, broker.port);
    let genuine = a.genuine(&st);
    let n = a.poly_size();
    let delta = 1u64 << 40;
    let own = "hedge/board/results";
    let mut attacks: Vec<(&str, u64)> = Vec::new();
    let mut seq = 1000;
    let mut next = |what: &'static str| {
        seq += 1;
        attacks.push((what, seq));
        seq
    };

    // 1. The key-extraction shape: a constant mask, so that the phase is the secret key.
    let mut words = vec![1u64; 2 * n];
    words[n..].fill(0);
    let m = a.message("board", next("constant mask"), a.crafted(words));
    a.publish(own, &m);
    // 2. The bundle's own weight GLWE as a result: it would decrypt to model weights.
    let EncryptedModel::Last { output, .. } = &a.bundle.bundle.model else {
        panic!("a last bundle");
    };
    let weights = output
        .prepare()
        .unwrap()
        .ciphertexts()
        .next()
        .unwrap()
        .to_vec();
    let m = a.message("board", next("weight GLWE"), a.crafted(weights));
    a.publish(own, &m);
    // 3. A data source's encrypted-feature GGSW row as a result: it would decrypt to its
    //    features (and, in the mask rows, to products with the secret key).
    let x = hedge::input::vectors::parse_line(&st.vectors[1])
        .unwrap()
        .unwrap()
        .values;
    let features = a.engine.encrypt_features(&x).unwrap();
    let row = features.groups()[0].0[..2 * n].to_vec();
    let m = a.message("board", next("feature GGSW row"), a.crafted(row));
    a.publish(own, &m);
    // 4. A trivial ciphertext: mask 0, body Δ·z — a forged class.
    let mut trivial = vec![0u64; 2 * n];
    trivial[n + 3] = 50 * delta;
    let m = a.message("board", next("trivial ciphertext"), a.crafted(trivial));
    a.publish(own, &m);
    // 5. A result from a device the backend does not know.
    let m = a.message("ghost", next("unknown device"), genuine.clone());
    a.publish("hedge/ghost/results", &m);
    // 6. The board's genuine result published on another board's topic.
    let m = a.message("board", next("another board's topic"), genuine.clone());
    a.publish("hedge/board-b/results", &m);
    // 7. A result for a bundle the registry does not know.
    let mut m = a.message("board", next("unknown bundle"), genuine.clone());
    m.bundle_id = "ffffffffffffffff".into();
    m.sign(&a.identity);
    a.publish(own, &m);
    // 8. A genuine result with its sequence number changed (a replay under a new number).
    let mut m = a.message("board", next("renumbered"), genuine.clone());
    m.seq += 1;
    a.publish(own, &m);
    // 9. Unsigned (what an old board or a forger sends).
    let mut m = a.message("board", next("unsigned"), genuine.clone());
    m.signed = None;
    a.publish(own, &m);
    // 10. The board's genuine result #1 again, after the decryptor restarted.
    std::thread::sleep(Duration::from_secs(2));
    terminate(&dec);
    let first_log = wait_ok(dec, "decryptor");
    let dec = decryptor_with(
        &st,
        &broker.addr(),
        &["--client-id", "backend", "--idle-timeout", "600"],
        &out,
    );
    let spooled_copy = a.message("board", 1, genuine.clone());
    a.publish(own, &spooled_copy);
    // Honest results keep flowing: 5 more.
    std::fs::write(&input, st.vectors[5..10].join("\n")).unwrap();
    wait_ok(hedged(&st, &broker.addr(), s(&input), &spool), "hedged");
    wait_lines(&out, 10);
    std::thread::sleep(Duration::from_secs(1));
    terminate(&dec);
    let log = first_log + &wait_ok(dec, "decryptor");

    // Every attack refused with its reason.
    for (what, needle) in [
        ("constant mask", "trivial or structured mask"),
        ("weight GLWE", "one of the bundle's own ciphertexts"),
        ("trivial ciphertext", "trivial or structured mask"),
        ("unknown device", "unknown device ghost"),
        (
            "another board's topic",
            "published on device board-b's topic",
        ),
        ("unknown bundle", "unknown bundle ffffffffffffffff"),
        ("renumbered", "signature does not verify"),
        ("unsigned", "unsigned result message"),
    ] {
        assert!(log.contains(needle), "{what}: no {needle:?} in\n{log}");
    }
    // The feature row: its lowest gadget level decrypts to zeros in every class and check
    // (higher levels land off the grid or out of range): refused either way.
    assert!(
        log.contains("board#1003: check output") || log.contains("board#1003: score"),
        "feature GGSW row:\n{log}"
    );
    assert_eq!(log.matches("refused a result").count(), 9, "{log}");
    // Nothing of them reached the output: only the 10 honest results, class only.
    let seqs: Vec<u64> = attacks.iter().map(|a| a.1).collect();
    assert!(lines_for(&out, &seqs).is_empty());
    let all = results(&out);
    assert_eq!(all.len(), 10, "the replayed #1 is not written again");
    check_result_lines(&st, &all, 10);
    assert_eq!(all[..5], honest[..]);
    for line in &all {
        let mut keys: Vec<&str> = line
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        keys.sort();
        assert_eq!(
            keys,
            [
                "bundle",
                "class",
                "device",
                "extract_ms",
                "infer_ms",
                "seq",
                "timestamp_ms"
            ],
            "a line reveals the class only"
        );
    }
    // The refusals the board signed count against it; the others could be anyone's.
    let list = String::from_utf8(hedge(&["device", "--keys", s(&st.keys), "list"]).stdout).unwrap();
    let board = list.lines().find(|l| l.starts_with("board ")).unwrap();
    let refused: u64 = board.split_whitespace().nth(2).unwrap().parse().unwrap();
    assert_eq!(refused, 5, "{list}");
}

#[test]
fn a_quarantined_board_is_withheld_until_cleared() {
    let st = setup("last");
    let broker = Mosquitto::start(&st.root);
    let out = st.root.join("out.jsonl");
    let spool = st.root.join("spool");
    let dec = decryptor_with(
        &st,
        &broker.addr(),
        &[
            "--client-id",
            "backend",
            "--idle-timeout",
            "600",
            "--quarantine-after",
            "3",
        ],
        &out,
    );
    let input = st.root.join("in.txt");
    std::fs::write(&input, st.vectors[..2].join("\n")).unwrap();
    wait_ok(hedged(&st, &broker.addr(), s(&input), &spool), "hedged");
    wait_lines(&out, 2);
    // The board turns: three crafted results, signed by it.
    let a = Attacker::new(&st, &spool, broker.port);
    let n = a.poly_size();
    for seq in 500..503 {
        let mut words = vec![7u64; 2 * n];
        words[n..].fill(0);
        a.publish(
            "hedge/board/results",
            &a.message("board", seq, a.crafted(words)),
        );
    }
    std::thread::sleep(Duration::from_secs(2));
    let list = String::from_utf8(hedge(&["device", "--keys", s(&st.keys), "list"]).stdout).unwrap();
    assert!(list.contains("quarantined"), "{list}");
    // Its genuine results are withheld now: not decrypted, but kept by the backend and
    // acknowledged like any other (an acknowledgement tells a board nothing of outcomes).
    let mut h = hedged_command(&st, &broker.addr(), "-", &spool)
        .spawn()
        .unwrap();
    feed(&mut h, &st.vectors[2..5]);
    drop(h.stdin.take());
    let hlog = wait_ok(h, "hedged");
    assert!(hlog.contains("0 left in the spool"), "{hlog}");
    assert_eq!(results(&out).len(), 2, "withheld while quarantined");
    let registry =
        hedge::backend::registry::Registry::open(&st.keys.join("registry.sqlite")).unwrap();
    assert_eq!(registry.withheld_count("board").unwrap(), 3);
    // An operator clears it: the agent decrypts what it kept.
    hedge(&["device", "--keys", s(&st.keys), "clear", "board"]);
    wait_lines(&out, 5);
    // Each leaves the store once its line is written (a crash between the two decrypts it
    // again): the last one a moment after its line.
    let t = std::time::Instant::now();
    while registry.withheld_count("board").unwrap() != 0 {
        assert!(t.elapsed() < Duration::from_secs(10), "still withheld");
        std::thread::sleep(Duration::from_millis(50));
    }
    terminate(&dec);
    let dlog = wait_ok(dec, "decryptor");
    assert!(
        dlog.contains("withheld: the device is quarantined"),
        "{dlog}"
    );
    check_results(&st, &out, 5);
}

/// One query of the class-oracle key recovery: an encryption of chosen scores (public key)
/// with c·Δ added to mask coefficient N − j, so that the score at slot k moves by c·s_{j+k}.
/// Class 0 (slot 0) and class 1 (slot `second`) get H + g and H (or H and H + g, 0 < g < c),
/// every other slot 0: the decrypted class says whether (s_j, s_{j+second}) is (0, 1) (or
/// (1, 0)). Two queries give s_j ⊕ s_{j+second}; the chain of them, the whole key up to one
/// bit. `last`: c = 2, g = 1; `act`, whose 15-bit wire adds a switch error of hundreds of
/// score units: c = 4096, g = 2048.
fn key_query(
    pk: &mut hedge::crypto::pke::PreparedPublicKey,
    delta: u64,
    j: usize,
    flip: bool,
    (second, step, gap): (usize, u64, u64),
) -> Vec<u64> {
    let n = pk.poly_size();
    let high = 4 * step;
    let mut scores = vec![0u64; n];
    let (z0, z1) = if flip {
        (high, high + gap)
    } else {
        (high + gap, high)
    };
    scores[0] = z0.wrapping_mul(delta);
    scores[second] = z1.wrapping_mul(delta);
    let mut words = pk.encrypt_glwe(&scores).into_container();
    let i = n - j;
    words[i] = words[i].wrapping_add(step.wrapping_mul(delta));
    words
}

/// What a class-oracle attack got back: the class of each crafted result the decryptor let
/// through (the board's owner sees them), how many were acknowledged, and the decryptor's log.
struct Oracle {
    class_of: std::collections::HashMap<u64, u64>,
    sent: usize,
    acked: usize,
    log: String,
}

/// Publish `results` as the board (sequence numbers from 5000 on) to a decryptor on a real
/// broker, with the board's acknowledgements collected, and wait until every one is answered.
fn class_oracle(
    st: &Setup,
    results: impl FnOnce(&mut Attacker) -> Vec<ResultCiphertext>,
) -> Oracle {
    let broker = Mosquitto::start(&st.root);
    let out = st.root.join("out.jsonl");
    let spool = st.root.join("spool");
    let dec = decryptor_with(
        st,
        &broker.addr(),
        &["--client-id", "backend", "--idle-timeout", "600"],
        &out,
    );
    let input = st.root.join("in.txt");
    std::fs::write(&input, st.vectors[..2].join("\n")).unwrap();
    wait_ok(hedged(st, &broker.addr(), s(&input), &spool), "hedged");
    wait_lines(&out, 2);

    let mut a = Attacker::new(st, &spool, broker.port);
    // What comes back to the board: its acknowledgements.
    let mut opts = rumqttc::MqttOptions::new("attacker-acks", "127.0.0.1", broker.port);
    opts.set_max_packet_size(1 << 20, 1 << 20);
    let (acks_client, mut acks_conn) = rumqttc::Client::new(opts, 64);
    acks_client
        .subscribe("hedge/board/acks", rumqttc::QoS::AtLeastOnce)
        .unwrap();
    let (tx, acks) = std::sync::mpsc::channel::<Vec<u8>>();
    std::thread::spawn(move || {
        for e in acks_conn.iter() {
            match e {
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p))) => {
                    let _ = tx.send(p.payload.to_vec());
                }
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
                _ => {}
            }
        }
    });
    std::thread::sleep(Duration::from_millis(500));

    let first_seq = 5000;
    let crafted = results(&mut a);
    let seqs: Vec<u64> = (first_seq..first_seq + crafted.len() as u64).collect();
    for (&seq, result) in seqs.iter().zip(crafted) {
        a.publish("hedge/board/results", &a.message("board", seq, result));
        // A moment between large messages keeps the broker's queue short.
        std::thread::sleep(Duration::from_millis(5));
    }
    // Every query answered: by a class (the board sees it) or by an acknowledgement.
    let verifying = hedge::bundle::load_verifying_key(&st.keys.join("verifying.key")).unwrap();
    let mut acked = std::collections::BTreeSet::new();
    let t = std::time::Instant::now();
    loop {
        while let Ok(bytes) = acks.try_recv() {
            if let Ok(ack) = hedge::transport::ack::Ack::decode(&bytes, &verifying, "board") {
                acked.extend(ack.seqs().filter(|s| seqs.contains(s)));
            }
        }
        let classes = lines_for(&out, &seqs).len();
        if acked.len() == seqs.len() || classes == seqs.len() {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(90),
            "{} acked, {classes} classes",
            acked.len()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(1));
    terminate(&dec);
    let log = wait_ok(dec, "decryptor");
    Oracle {
        class_of: lines_for(&out, &seqs)
            .iter()
            .map(|l| {
                (
                    l["seq"].as_u64().unwrap() - first_seq,
                    l["class"].as_u64().unwrap(),
                )
            })
            .collect(),
        sent: seqs.len(),
        acked: acked.len(),
        log,
    }
}

/// A class-oracle attack on `variant` that read (`recovered` of `asked`) `what`: reported, and
/// nothing learnt — no key bit, no crafted result decrypted, the board quarantined.
fn assert_learnt_nothing(
    st: &Setup,
    o: &Oracle,
    variant: &str,
    (recovered, asked, what): (usize, usize, &str),
) {
    let queries = o.sent;
    eprintln!(
        "class-oracle attack on {variant}: {queries} crafted results, {} classes returned, {} \
         acknowledged, {recovered} of {asked} {what} recovered",
        o.class_of.len(),
        o.acked
    );
    assert!(recovered <= 64, "{recovered} key bits recovered");
    assert_eq!(recovered, 0, "{recovered} {what} recovered");
    assert_refused_and_quarantined(st, o, queries);
}

/// After a class-oracle attack: no crafted result decrypted, every one acknowledged alike,
/// the board quarantined at the tenth refusal (by a check output) and withheld after.
fn assert_refused_and_quarantined(st: &Setup, o: &Oracle, queries: usize) {
    assert!(o.class_of.is_empty(), "a crafted result was decrypted");
    assert_eq!(
        o.acked, queries,
        "every signed result is acknowledged alike"
    );
    let list = String::from_utf8(hedge(&["device", "--keys", s(&st.keys), "list"]).stdout).unwrap();
    assert!(list.contains("quarantined"), "{list}");
    assert_eq!(o.log.matches("check output").count(), 10, "{}", o.log);
    assert_eq!(
        o.log.matches("withheld: the device is quarantined").count(),
        queries - 10,
        "{}",
        o.log
    );
}

/// The backend's secret key of kind `kind` (the attack's ground truth, never the board's).
fn secret_key(st: &Setup, kind: hedge::crypto::keys::KeyKind) -> Vec<u64> {
    let secret = hedge::crypto::keys::SecretKeys::from_bytes(
        &std::fs::read(st.keys.join("secret.key")).unwrap(),
    )
    .unwrap();
    secret.key(kind).as_ref().to_vec()
}

/// The relations s_j ⊕ s_{j+second} a pair attack (`key_query`, queries (j, flip) in order)
/// read right, wherever both classes of a pair came back.
fn relations_recovered(o: &Oracle, queries: &[(usize, bool)], key: &[u64], second: usize) -> usize {
    let index_of = |q: (usize, bool)| queries.iter().position(|x| *x == q).unwrap() as u64;
    queries
        .iter()
        .filter(|(_, flip)| !flip)
        .filter(|&&(j, _)| {
            let (Some(&c01), Some(&c10)) = (
                o.class_of.get(&index_of((j, false))),
                o.class_of.get(&index_of((j, true))),
            ) else {
                return false;
            };
            // (0, 1): class 1 wins the first query; (1, 0): class 0 wins the second.
            let guess = (c01 == 1) || (c10 == 0);
            guess == (key[j] != key[j + second])
        })
        .count()
}

/// The attack of issue 21, end to end: a compromised board that sees the class of every
/// result it sends (the board's owner buys the classifications) crafts results whose class
/// depends on secret-key bits. Before the check outputs it recovered one key relation per
/// two results, none refused; now every crafted result is refused, the board is quarantined
/// at the tenth, the rest are withheld, every one is acknowledged alike, and it recovers
/// nothing. `HEDGE_ATTACK_PAIRS` sets the size (default 30 pairs, 60 results).
#[test]
fn a_board_that_sees_its_classes_learns_nothing_of_the_key() {
    let st = setup("last");
    let pairs = attack_size(30);
    let queries: Vec<(usize, bool)> = (1..=pairs).flat_map(|j| [(j, false), (j, true)]).collect();
    let o = class_oracle(&st, |a| {
        let delta = a.bundle.bundle.header.model.delta_out;
        let mut pk = a.public_key();
        queries
            .iter()
            .map(|&(j, flip)| a.crafted(key_query(&mut pk, delta, j, flip, (1, 2, 1))))
            .collect()
    });

    // What the board learnt: s_j ⊕ s_{j+1} wherever both classes of a pair came back.
    let key = secret_key(&st, hedge::crypto::keys::KeyKind::Wide);
    let recovered = relations_recovered(&o, &queries, &key, 1);
    assert_learnt_nothing(&st, &o, "last", (recovered, pairs, "key relations"));
}

/// `HEDGE_ATTACK_PAIRS`, or `default`.
fn attack_size(default: usize) -> usize {
    std::env::var("HEDGE_ATTACK_PAIRS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The same attack on `noact`, whose classes are one LWE each, so one mask change moves one
/// score: class 0 gets H + 1, class 1 an encryption of H + 2 with 2Δ added to its mask
/// coefficient j (phase H + 2 − 2·s_j), the others 0, and every check output the board must
/// send (the bundle says how many parts) a fresh encryption of zero, as it cannot compute
/// them. The class says s_j: one key bit per result. Before `noact`'s check outputs the board
/// recovered every bit it asked for, none refused.
#[test]
fn a_noact_board_that_sees_its_classes_learns_nothing_of_the_key() {
    let st = setup("noact");
    let bits = attack_size(30);
    let o = class_oracle(&st, |a| {
        let header = &a.bundle.bundle.header;
        let (delta, parts) = (header.model.delta_out, header.model.result.parts.len());
        let shape = header.model.result.clone();
        let key_id = header.key_id;
        let mut pk = a.public_key();
        let mut lwe = |z: u64| public_lwe(&mut pk, z.wrapping_mul(delta));
        let high = 20u64;
        (1..=bits)
            .map(|j| {
                let mut words: Vec<Vec<u64>> = (0..parts)
                    .map(|c| lwe(if c == 0 { high + 1 } else { 0 }))
                    .collect();
                words[1] = lwe(high + 2);
                words[1][j] = words[1][j].wrapping_add(2u64.wrapping_mul(delta));
                ResultCiphertext {
                    key_id,
                    bits: shape.wire.bits(),
                    parts: words
                        .iter()
                        .zip(&shape.parts)
                        .map(|(w, p)| U64s(shape.cut(p, w)))
                        .collect(),
                }
            })
            .collect()
    });
    let key = secret_key(&st, hedge::crypto::keys::KeyKind::Wide);
    // Class 1 wins when s_j = 0 (H + 2 > H + 1), class 0 when s_j = 1 (H < H + 1).
    let recovered = (1..=bits)
        .filter(|&j| {
            o.class_of
                .get(&(j as u64 - 1))
                .is_some_and(|&c| (c == 0) == (key[j] == 1))
        })
        .count();
    assert_learnt_nothing(&st, &o, "noact", (recovered, bits, "key bits"));
}

/// The same attack on `act`, whose classes share one GLWE under the bootstrap key like
/// `last`'s (at slots a window apart): public-key encryptions of a near-tie between class 0
/// (slot 0) and class 1 (slot W) with 4096Δ on mask coefficient N − j, two a relation
/// s_j ⊕ s_{j+W}. Before `act`'s check outputs every crafted result was decrypted and the
/// board recovered every relation it asked for; the checks refuse forgeries (a fresh
/// encryption passes all four rows with probability ≤ 2^-16 at this model's tolerance).
#[test]
fn an_act_board_that_sees_its_classes_learns_nothing_of_the_key() {
    let st = setup("act");
    let pairs = attack_size(15);
    let queries: Vec<(usize, bool)> = (1..=pairs).flat_map(|j| [(j, false), (j, true)]).collect();
    let mut second = 0;
    let o = class_oracle(&st, |a| {
        let model = &a.bundle.bundle.header.model;
        let hedge::engine::PartShape::Glwe { slots } = &model.result.parts[0] else {
            panic!("act results are GLWEs");
        };
        second = slots[1] as usize;
        let delta = model.delta_out;
        let mut pk = a.public_key();
        queries
            .iter()
            .map(|&(j, flip)| a.crafted(key_query(&mut pk, delta, j, flip, (second, 4096, 2048))))
            .collect()
    });
    let key = secret_key(&st, hedge::crypto::keys::KeyKind::Pbs);
    let recovered = relations_recovered(&o, &queries, &key, second);
    assert_learnt_nothing(&st, &o, "act", (recovered, pairs, "key relations"));
}
