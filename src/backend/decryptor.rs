//! The decryption agent: result messages in (from the broker, or files), one JSON line out
//! per accepted result. Every byte of a message is taken as written by an attacker who holds
//! the bundle, the public key and the evaluation keys; before anything is revealed:
//!
//! 1. the message decodes and its topic names the device it claims to be from;
//! 2. the device is enrolled (or enrolment mode is on), not revoked, and signed the message
//!    with its identity key;
//! 3. a quarantined device's results are withheld: kept in the registry, not decrypted, and
//!    decrypted once an operator clears the device;
//! 4. the bundle it names is one the registry recorded, whose decoding parameters — not the
//!    message's — are used, and the ciphertext passes [`crate::engine::decrypt`]'s checks
//!    (shape, masks, noise for the exact variants, score range, the secret check outputs);
//! 5. the (device, sequence) has not been accepted before (persistently, across restarts and
//!    across agents sharing the registry).
//!
//! A refusal that carries the device's valid signature counts against the device (at
//! `quarantine_after` it is quarantined); one that does not cannot be attributed to it and
//! only counts in the agent's statistics, so forged traffic cannot get a device quarantined.
//!
//! By default a line reveals the class only ([`Reveal`]); scores and noise measurements are
//! for the vendor's own bench. Decrypted output must not flow back to the boards unrestricted:
//! each revealed bit about a result is a bit a compromised board could learn (docs/THREATS.md).
//!
//! Subscribing: manual MQTT acknowledgements after the line is written (a crash redelivers,
//! [`Connection`] never drops one); end-to-end acknowledgements (signed, per device, in
//! batches) once the output is synced and the registry committed. An acknowledgement says
//! "received" for everything the device signed — recorded, duplicate, refused or withheld
//! alike — so it tells a board nothing about the checks: refusals go to the operators (log,
//! registry, `hedge device list`) only.

use super::metrics::AgentMetrics;
use super::registry::{Accept, Acceptance, DeviceState, Registry};
use super::{BackendError, Result};
use crate::crypto::keys::{KeyId, SecretKeys};
use crate::engine::{decrypt, Refusal};
use crate::files::IoError;
use crate::hex::hex;
use crate::transport::ack::{ranges, Ack};
use crate::transport::message::{now_ms, MessageError, ResultMessage, MAX_PAYLOAD};
use crate::transport::mqtt::MqttConfig;
use crate::transport::{Backoff, Connection};
use ed25519_dalek::{SigningKey, VerifyingKey};
use rumqttc::{Event, Packet, QoS};
use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The largest packet MQTT 3.1.1 can express (remaining length 268,435,455 plus header).
const MQTT_MAX_PACKET: usize = 268_435_460;

/// What a decrypted line shows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub enum Reveal {
    /// The class (and provenance): the least a consumer needs.
    #[default]
    Class,
    /// And every class's score.
    Scores,
    /// And the phases' noise margin: for the vendor's own bench only.
    Diagnostics,
}

/// The decryption policy, the same for files and subscriptions.
#[derive(Clone, Debug)]
pub struct Policy {
    pub reveal: Reveal,
    /// Enrol unknown devices with the key their first result is signed with (trust on first
    /// use: for provisioning a fleet on a trusted network only).
    pub enrol: bool,
    /// Refused results (with the device's valid signature) before it is quarantined.
    pub quarantine_after: u64,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            reveal: Reveal::Class,
            enrol: false,
            quarantine_after: 10,
        }
    }
}

/// Where decrypted lines go: written, then synced before the backend acknowledges them.
pub trait Output: Write {
    fn sync(&mut self) -> std::io::Result<()> {
        self.flush()
    }
}

impl Output for std::fs::File {
    fn sync(&mut self) -> std::io::Result<()> {
        self.flush()?;
        self.sync_data()
    }
}

impl Output for Vec<u8> {}
impl Output for std::io::StdoutLock<'_> {}
impl Output for Box<dyn Output + '_> {
    fn sync(&mut self) -> std::io::Result<()> {
        (**self).sync()
    }
}

/// Why a message was refused: every reason is a variant, through to the log, the counts and the
/// tests (the board never learns any of it: acknowledgements only say "received").
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum Refused {
    /// Undecodable, unsigned, or its signature does not verify.
    #[error(transparent)]
    Message(#[from] MessageError),
    #[error("published on device {topic}'s topic")]
    Topic { topic: String },
    #[error("unknown device {0}")]
    UnknownDevice(String),
    #[error("device {0} is revoked")]
    Revoked(String),
    #[error("unknown bundle {0}")]
    UnknownBundle(String),
    #[error("no secret key for bundle {0}")]
    NoSecretKey(String),
    /// Not an honest result of the bundle it names (the decryption's checks).
    #[error(transparent)]
    Result(#[from] Refusal),
    #[error("older than the replay window")]
    TooOld,
}

impl Refused {
    /// A short name for logs and counts.
    pub fn kind(&self) -> &'static str {
        match self {
            Refused::Message(e) => e.kind(),
            Refused::Topic { .. } => "topic",
            Refused::UnknownDevice(_) => "unknown device",
            Refused::Revoked(_) => "revoked",
            Refused::UnknownBundle(_) => "unknown bundle",
            Refused::NoSecretKey(_) => "no secret key",
            Refused::Result(r) => r.kind(),
            Refused::TooOld => "replay window",
        }
    }
}

/// What became of one message.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// New: its line is written and it is recorded.
    Recorded { device: String, seq: u64 },
    /// Accepted before (a redelivery): nothing written.
    Duplicate { device: String, seq: u64 },
    /// From a quarantined device: not decrypted. `kept`: stored in the registry to decrypt
    /// once the device is cleared (false when its store is full: the board keeps it).
    Withheld {
        device: String,
        seq: u64,
        kept: bool,
    },
    /// Refused. `claimed`: the device and sequence number the message names, if it decoded;
    /// `vouched`: the device's valid signature vouches for them (then it is acknowledged and
    /// counted against the device).
    Refused {
        reason: Refused,
        claimed: Option<(String, u64)>,
        vouched: bool,
    },
}

#[derive(Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub results: usize,
    pub duplicates: usize,
    pub refused: usize,
    pub withheld: usize,
}

/// What the checks made of a message.
enum Checked {
    /// Refused, withheld: nothing to write.
    Done(Outcome),
    /// Passed every check: its line, to write once accepted.
    Decrypted(Decrypted),
}

struct Decrypted {
    message: ResultMessage,
    key_set: KeyId,
    line: String,
}

/// Secret keys by key id: the one given, and others the registry points to.
struct KeyRing {
    keys: HashMap<KeyId, SecretKeys>,
}

impl KeyRing {
    fn get(&mut self, id: &KeyId, registry: &Registry) -> Result<Option<&SecretKeys>> {
        if !self.keys.contains_key(id) {
            let Some(set) = registry.key_set(id)? else {
                return Ok(None);
            };
            let bytes = crate::files::read(&set.secret_key)?;
            let keys = SecretKeys::from_bytes(&bytes)
                .map_err(|e| BackendError::KeyFile(format!("{}: {e}", set.secret_key.display())))?;
            self.keys.insert(*id, keys);
        }
        Ok(self.keys.get(id))
    }
}

/// The checks and the decryption, without I/O of its own beyond the registry and `out`.
pub struct Decryptor {
    registry: Registry,
    keys: KeyRing,
    policy: Policy,
    /// The output file's name in the registry and where it ends: recorded with each result
    /// ([`super::output`]).
    output: Option<(String, u64)>,
    /// Identity keys decompressed once (a point decompression is a fifth of a signature
    /// check); keyed by the key's bytes, so a device enrolled anew never meets a stale one.
    identities: HashMap<[u8; 32], VerifyingKey>,
    /// Exported for Prometheus (`--metrics-listen`), when asked for.
    metrics: Option<Arc<Mutex<AgentMetrics>>>,
    pub stats: Stats,
}

/// Decompressed identity keys kept, at most (a fleet's worth; then the cache starts over).
const MAX_IDENTITIES: usize = 1 << 17;

impl Decryptor {
    pub fn new(registry: Registry, secret: SecretKeys, policy: Policy) -> Self {
        let keys = KeyRing {
            keys: HashMap::from([(secret.key_id, secret)]),
        };
        Self {
            registry,
            keys,
            policy,
            output: None,
            identities: HashMap::new(),
            metrics: None,
            stats: Stats::default(),
        }
    }

    /// Count outcomes and time the registry into `metrics`.
    pub fn export(&mut self, metrics: Arc<Mutex<AgentMetrics>>) {
        self.metrics = Some(metrics);
    }

    fn metrics(&self) -> Option<std::sync::MutexGuard<'_, AgentMetrics>> {
        self.metrics
            .as_ref()
            .map(|m| m.lock().unwrap_or_else(|p| p.into_inner()))
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Record where the output file `name` ends with each result accepted (it ends at `end`
    /// now), so that a restart can cut off what was written and not committed.
    pub fn track_output(&mut self, name: String, end: u64) {
        self.output = Some((name, end));
    }

    /// Check, decrypt and record one message. `topic_device` is the device its topic names
    /// (None for a file). An `Err` is a local failure (registry, output): stop.
    pub fn handle(
        &mut self,
        topic_device: Option<&str>,
        payload: &[u8],
        out: &mut dyn Output,
    ) -> Result<Outcome> {
        let mut outcomes = self.handle_batch(&[(topic_device, payload)], out)?;
        Ok(outcomes.remove(0))
    }

    /// [`Self::handle`] for several messages, accepted in one registry transaction and
    /// written in one write (group commit); one outcome per message, in order.
    pub fn handle_batch(
        &mut self,
        messages: &[(Option<&str>, &[u8])],
        out: &mut dyn Output,
    ) -> Result<Vec<Outcome>> {
        let mut outcomes = Vec::with_capacity(messages.len());
        let mut decrypted = Vec::new();
        for (i, &(topic_device, payload)) in messages.iter().enumerate() {
            match self.check(topic_device, payload)? {
                Checked::Done(outcome) => outcomes.push(Some(outcome)),
                Checked::Decrypted(d) => {
                    outcomes.push(None);
                    decrypted.push((i, d));
                }
            }
        }
        if !decrypted.is_empty() {
            let items: Vec<Accept> = decrypted
                .iter()
                .map(|(_, d)| Accept {
                    device: &d.message.device_id,
                    seq: d.message.seq,
                    key_set: Some(&d.key_set),
                })
                .collect();
            let output = self
                .output
                .as_ref()
                .map(|(name, end)| (name.as_str(), *end));
            let started = Instant::now();
            let accepted = self.registry.accept_all(&items, output, |accepted| {
                let text: String = decrypted
                    .iter()
                    .zip(accepted)
                    .filter(|(_, a)| **a == Acceptance::New)
                    .map(|((_, d), _)| d.line.as_str())
                    .collect();
                // One write for the batch: formatted straight into the file, a JSON value
                // goes out in many small writes. A crash mid-write tears the last line, which
                // the next start cuts off (super::output).
                // Synced before the commit: a power loss after it cannot take lines the
                // registry counts as written (and acknowledged).
                out.write_all(text.as_bytes())
                    .and_then(|_| out.sync())
                    .map_err(|e| IoError::new("output", e))?;
                Ok(text.len() as u64)
            })?;
            if let Some(mut m) = self.metrics() {
                m.registry_latency.observe(started.elapsed().as_secs_f64());
                m.batch_size.observe(items.len() as f64);
            }
            for ((i, d), acceptance) in decrypted.into_iter().zip(accepted) {
                let (device, seq) = (d.message.device_id.clone(), d.message.seq);
                outcomes[i] = Some(match acceptance {
                    Acceptance::New => {
                        if let Some((_, end)) = &mut self.output {
                            *end += d.line.len() as u64;
                        }
                        Outcome::Recorded { device, seq }
                    }
                    Acceptance::Seen => Outcome::Duplicate { device, seq },
                    Acceptance::TooOld => self.suspicious(&d.message, None, Refused::TooOld)?,
                });
            }
        }
        let outcomes: Vec<Outcome> = outcomes
            .into_iter()
            .map(|o| o.expect("every message has an outcome"))
            .collect();
        for outcome in &outcomes {
            self.note(outcome);
        }
        Ok(outcomes)
    }

    /// Count and log one outcome.
    fn note(&mut self, outcome: &Outcome) {
        if let Some(mut m) = self.metrics() {
            let name = match outcome {
                Outcome::Recorded { device, .. } => {
                    m.recorded(device);
                    "recorded"
                }
                Outcome::Duplicate { .. } => "duplicate",
                Outcome::Withheld { .. } => "withheld",
                Outcome::Refused { reason, .. } => {
                    *m.refused.entry(reason.kind()).or_default() += 1;
                    "refused"
                }
            };
            *m.results.entry(name).or_default() += 1;
        }
        match outcome {
            Outcome::Recorded { .. } => self.stats.results += 1,
            Outcome::Duplicate { device, seq } => {
                self.stats.duplicates += 1;
                log::debug!("duplicate {device}#{seq} dropped");
            }
            Outcome::Withheld { device, seq, kept } => {
                self.stats.withheld += 1;
                if *kept {
                    log::warn!("{device}#{seq} withheld: the device is quarantined");
                } else {
                    log::warn!(
                        "{device}#{seq} withheld and not kept: the device is quarantined with \
                         {} results waiting; `hedge device clear {device}` once it is trusted",
                        super::registry::MAX_WITHHELD
                    );
                }
            }
            Outcome::Refused {
                reason, claimed, ..
            } => {
                self.stats.refused += 1;
                let name = claimed
                    .as_ref()
                    .map_or("?".into(), |(device, seq)| format!("{device}#{seq}"));
                log::warn!("refused a result [{}]: {name}: {reason}", reason.kind());
            }
        }
    }

    /// Every check, then the decryption: the line to write, or what became of the message.
    fn check(&mut self, topic_device: Option<&str>, payload: &[u8]) -> Result<Checked> {
        let m = match ResultMessage::decode(payload) {
            Ok(m) => m,
            Err(e) => {
                return Ok(Checked::Done(Outcome::Refused {
                    reason: e.into(),
                    claimed: None,
                    vouched: false,
                }))
            }
        };
        let (device, seq) = (m.device_id.clone(), m.seq);
        let refuse = |reason: Refused| {
            Ok(Checked::Done(Outcome::Refused {
                reason,
                claimed: Some((device.clone(), seq)),
                vouched: false,
            }))
        };
        if let Some(t) = topic_device {
            if t != device {
                return refuse(Refused::Topic { topic: t.into() });
            }
        }
        let record = match self.registry.device(&device)? {
            Some(d) => d,
            None => match (self.policy.enrol, m.signer()) {
                (true, Some(key)) if VerifyingKey::from_bytes(&key).is_ok() => {
                    self.registry.add_device(&device, &key)?;
                    log::info!("enrolled device {device} with identity key {}", hex(&key));
                    self.registry.device(&device)?.expect("just added")
                }
                _ => return refuse(Refused::UnknownDevice(device.clone())),
            },
        };
        if record.state == DeviceState::Revoked {
            return refuse(Refused::Revoked(device.clone()));
        }
        let identity = match self.identities.get(&record.identity_key) {
            Some(key) => *key,
            None => {
                let key = VerifyingKey::from_bytes(&record.identity_key)
                    .map_err(|_| BackendError::Registry(format!("device {device}: invalid key")))?;
                if self.identities.len() >= MAX_IDENTITIES {
                    self.identities.clear();
                }
                self.identities.insert(record.identity_key, key);
                key
            }
        };
        if let Err(e) = m.verify(&identity) {
            return refuse(e.into());
        }
        if record.state == DeviceState::Quarantined {
            let kept = self.registry.withhold(&device, seq, payload)?;
            return Ok(Checked::Done(Outcome::Withheld { device, seq, kept }));
        }
        // From here on the device vouches for the message.
        let Some(bundle) = self.registry.bundle(&m.bundle_id)? else {
            return Ok(Checked::Done(self.suspicious(
                &m,
                None,
                Refused::UnknownBundle(m.bundle_id.clone()),
            )?));
        };
        let key_set = bundle.decoding.key_id;
        let Some(keys) = self.keys.get(&key_set, &self.registry)? else {
            return Ok(Checked::Done(self.suspicious(
                &m,
                Some(&key_set),
                Refused::NoSecretKey(bundle.id),
            )?));
        };
        let d = match decrypt(&m.result, &bundle.decoding, keys) {
            Ok(d) => d,
            Err(e) => {
                return Ok(Checked::Done(self.suspicious(
                    &m,
                    Some(&key_set),
                    e.into(),
                )?))
            }
        };
        let mut line = serde_json::json!({
            "device": device,
            "seq": seq,
            "bundle": m.bundle_id,
            "timestamp_ms": m.timestamp_ms,
            "infer_ms": m.infer_us as f64 / 1e3,
            "extract_ms": m.extract_us as f64 / 1e3,
            "class": d.class,
        });
        if let Some(label) = bundle.decoding.labels.as_ref().and_then(|l| l.get(d.class)) {
            line["label"] = label.clone().into();
        }
        if self.policy.reveal >= Reveal::Scores {
            line["scores"] = d.float_scores.into();
        }
        if self.policy.reveal >= Reveal::Diagnostics {
            line["noise_margin_bits"] = ((d.noise_margin_bits * 10.0).round() / 10.0).into();
        }
        Ok(Checked::Decrypted(Decrypted {
            line: format!("{line}\n"),
            key_set,
            message: m,
        }))
    }

    /// Decrypt up to `limit` withheld results of devices an operator has cleared since; each
    /// leaves the registry's store once handled (unless its device is quarantined again).
    pub fn release(&mut self, limit: u64, out: &mut dyn Output) -> Result<Vec<Outcome>> {
        let mut outcomes = Vec::new();
        for (device, seq, payload) in self.registry.released(limit)? {
            let outcome = self.handle(Some(&device), &payload, out)?;
            if !matches!(outcome, Outcome::Withheld { .. }) {
                self.registry.forget_withheld(&device, seq)?;
            }
            outcomes.push(outcome);
        }
        if !outcomes.is_empty() {
            log::info!("released {} withheld result(s)", outcomes.len());
        }
        Ok(outcomes)
    }

    /// A refusal the device's signature vouches for: counted against it (and against the key
    /// set of the bundle it named, when known: the key set's query budget).
    fn suspicious(
        &mut self,
        m: &ResultMessage,
        key_set: Option<&KeyId>,
        why: Refused,
    ) -> Result<Outcome> {
        let state =
            self.registry
                .refused_under(&m.device_id, self.policy.quarantine_after, key_set)?;
        if state == DeviceState::Quarantined {
            log::error!(
                "device {} quarantined after {} refused results; `hedge device clear` \
                 once it is trusted again",
                m.device_id,
                self.policy.quarantine_after
            );
        }
        Ok(Outcome::Refused {
            reason: why,
            claimed: Some((m.device_id.clone(), m.seq)),
            vouched: true,
        })
    }
}

/// End-to-end acknowledgements waiting to be sent, per device.
#[derive(Default)]
struct AckBatch {
    received: BTreeMap<String, Vec<u64>>,
    since: Option<Instant>,
    /// When each result waiting for its acknowledgement arrived.
    arrivals: Vec<Instant>,
}

/// Acknowledge at most this late, or at this many results.
const ACK_DELAY: Duration = Duration::from_millis(100);
const ACK_BATCH: usize = 64;
/// How often an agent looks for withheld results of devices cleared since.
const RELEASE_EVERY: Duration = Duration::from_secs(1);

impl AckBatch {
    /// Whatever the device signed is acknowledged alike, whatever became of it; only what
    /// cannot be attributed (no valid signature) or could not be kept is not.
    fn add(&mut self, outcome: &Outcome, arrived: Instant) {
        let (device, seq) = match outcome {
            Outcome::Recorded { device, seq }
            | Outcome::Duplicate { device, seq }
            | Outcome::Withheld {
                device,
                seq,
                kept: true,
            }
            | Outcome::Refused {
                claimed: Some((device, seq)),
                vouched: true,
                ..
            } => (device, *seq),
            Outcome::Refused { .. } | Outcome::Withheld { kept: false, .. } => return,
        };
        self.received.entry(device.clone()).or_default().push(seq);
        self.since.get_or_insert_with(Instant::now);
        self.arrivals.push(arrived);
    }

    fn due(&self) -> bool {
        self.since.is_some_and(|t| t.elapsed() >= ACK_DELAY)
            || self.received.values().any(|v| v.len() >= ACK_BATCH)
    }

    fn take(&mut self) -> Vec<Ack> {
        self.since = None;
        std::mem::take(&mut self.received)
            .into_iter()
            .map(|(device, seqs)| Ack {
                received: ranges(seqs),
                device_id: device,
                issued_ms: now_ms(),
            })
            .collect()
    }
}

pub struct SubscribeOptions {
    pub mqtt: MqttConfig,
    pub client_id: String,
    /// Topic filter, e.g. `hedge/+/results` or `$share/decryptors/hedge/+/results`.
    pub filter: String,
    /// Stop after this many distinct results.
    pub count: Option<usize>,
    /// Stop after this long without a message.
    pub idle_timeout: Option<Duration>,
    /// A persistent session (clean_session = false): the broker keeps the subscription and
    /// queues results while this decryptor is away. Needs a stable client id.
    pub persistent: bool,
    /// Told once the subscription is acknowledged.
    pub ready: Option<std::sync::mpsc::Sender<()>>,
    /// Set (by a signal handler) to stop after the message in hand.
    pub stop: Arc<AtomicBool>,
    /// Signs end-to-end acknowledgements (the backend's bundle-signing key); none: send none.
    pub ack_key: Option<SigningKey>,
}

/// The device a topic names, by the position of `{device}` in the results topic template.
pub(crate) fn topic_device<'t>(template: &str, topic: &'t str) -> Option<&'t str> {
    let parts: Vec<&str> = template.split('/').collect();
    let at = parts.iter().position(|p| *p == "{device}")?;
    let segments: Vec<&str> = topic.split('/').collect();
    (segments.len() == parts.len()).then(|| segments[at])
}

/// Run until `count` results, the idle timeout, a stop, or forever.
pub fn run(
    decryptor: &mut Decryptor,
    opts: &SubscribeOptions,
    out: &mut dyn Output,
) -> Result<Stats> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| IoError::new("tokio runtime", e))?;
    rt.block_on(subscribe(decryptor, opts, out))?;
    Ok(std::mem::take(&mut decryptor.stats))
}

async fn subscribe(
    decryptor: &mut Decryptor,
    opts: &SubscribeOptions,
    out: &mut dyn Output,
) -> Result<()> {
    let mut mqtt_options = opts.mqtt.options(&opts.client_id)?;
    // Accept any packet MQTT allows and reject oversized payloads ourselves: if rumqttc refused
    // one, the connection would drop and the broker would redeliver it forever.
    mqtt_options.set_max_packet_size(MQTT_MAX_PACKET, MAX_PAYLOAD + 1024);
    mqtt_options.set_manual_acks(true);
    mqtt_options.set_clean_session(!opts.persistent);
    let mut backoff = Backoff::default();
    let mut last_message = Instant::now();
    let mut acks = AckBatch::default();
    let mut last_release = Instant::now();
    loop {
        let mut conn = Connection::open(mqtt_options.clone(), 64);
        let error = loop {
            let done = opts.count.is_some_and(|c| decryptor.stats.results >= c)
                || opts.stop.load(Ordering::Relaxed)
                || opts
                    .idle_timeout
                    .is_some_and(|t| last_message.elapsed() > t);
            // Withheld results of devices cleared since: one look a second.
            if last_release.elapsed() >= RELEASE_EVERY {
                last_release = Instant::now();
                for outcome in decryptor.release(ACK_BATCH as u64, out)? {
                    acks.add(&outcome, Instant::now());
                }
            }
            if done || acks.due() {
                send_acks(
                    &mut acks,
                    &mut conn,
                    opts,
                    out,
                    decryptor.metrics.as_deref(),
                )?;
            }
            if done {
                conn.close(Duration::from_secs(5)).await;
                return Ok(());
            }
            let event = tokio::select! {
                e = conn.next() => e,
                _ = tokio::time::sleep(Duration::from_millis(50)) => continue,
            };
            // Messages already waiting behind this one are taken with it: one transaction,
            // one write, one sync for the batch (group commit).
            let (batch, event) = take_batch(&mut conn, event);
            if !batch.is_empty() {
                last_message = Instant::now();
                let messages: Vec<(Option<&str>, &[u8])> = batch
                    .iter()
                    .map(|p| (topic_device(&opts.mqtt.topic, &p.topic), &p.payload[..]))
                    .collect();
                let arrived = Instant::now();
                for outcome in decryptor.handle_batch(&messages, out)? {
                    acks.add(&outcome, arrived);
                }
                if let Some(mut m) = decryptor.metrics() {
                    m.queue_depth = conn.waiting() as u64;
                }
                // Only once the lines are written: a crash before this redelivers.
                for p in &batch {
                    conn.ack(p);
                }
            }
            let Some(event) = event else { continue };
            match event {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    backoff.connected();
                    log::info!("connected; subscribing to {}", opts.filter);
                    conn.subscribe(&opts.filter, QoS::AtLeastOnce);
                }
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    if let Some(ready) = &opts.ready {
                        let _ = ready.send(());
                    }
                }
                Ok(_) => {}
                Err(e) => break e,
            }
        };
        let delay = backoff.next_delay();
        match backoff.taken_over() {
            Some(n) => log::error!(
                "broker connection: closed right after it was accepted, {n} times in a row: \
                 another client is probably connected with the same client id {:?} (two \
                 agents started with one --client-id?); retrying in {delay:.1?}",
                opts.client_id
            ),
            None => log::warn!("broker connection: {error}; retrying in {delay:.1?}"),
        }
        // A stop request does not wait out the delay.
        let until = Instant::now() + delay;
        while Instant::now() < until && !opts.stop.load(Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Results taken at once, at most.
const MAX_BATCH: usize = 256;

/// `first` and the result messages already waiting behind it, up to [`MAX_BATCH`]; and the
/// event that ended the batch, if it is not a result message.
fn take_batch(
    conn: &mut Connection,
    first: std::result::Result<Event, rumqttc::ConnectionError>,
) -> (
    Vec<rumqttc::Publish>,
    Option<std::result::Result<Event, rumqttc::ConnectionError>>,
) {
    let mut batch = Vec::new();
    let mut next = Some(first);
    while let Some(Ok(Event::Incoming(Packet::Publish(p)))) = next {
        batch.push(p);
        if batch.len() == MAX_BATCH {
            return (batch, None);
        }
        next = conn.try_next();
    }
    (batch, next)
}

/// Sync the output, then tell each board what is recorded.
fn send_acks(
    acks: &mut AckBatch,
    conn: &mut Connection,
    opts: &SubscribeOptions,
    out: &mut dyn Output,
    metrics: Option<&Mutex<AgentMetrics>>,
) -> Result<()> {
    if acks.since.is_none() {
        return Ok(());
    }
    out.sync().map_err(|e| IoError::new("output", e))?;
    let arrivals = std::mem::take(&mut acks.arrivals);
    let batch = acks.take();
    if let Some(key) = &opts.ack_key {
        for ack in &batch {
            conn.publish(&opts.mqtt.ack_topic_for(&ack.device_id), ack.encode(key));
        }
        if let Some(m) = metrics {
            let mut m = m.lock().unwrap_or_else(|p| p.into_inner());
            m.acks_sent += batch.len() as u64;
            for t in arrivals {
                m.ack_latency.observe(t.elapsed().as_secs_f64());
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_topic_names_the_device() {
        let t = "hedge/{device}/results";
        assert_eq!(topic_device(t, "hedge/board-1/results"), Some("board-1"));
        assert_eq!(topic_device(t, "hedge/a/b/results"), None);
        assert_eq!(topic_device("results", "results"), None);
    }

    /// Each way a message from outside is refused is its own variant (what the operators'
    /// counts and logs name), and a refused message writes nothing.
    #[test]
    fn refusals_are_typed() {
        use crate::crypto::params::{ParameterSet, SecurityLevel};
        use crate::engine::ResultCiphertext;
        let dir = tempfile::tempdir().unwrap();
        let registry = Registry::open(&dir.path().join("registry.sqlite")).unwrap();
        let ks = crate::crypto::keys::generate(ParameterSet::for_level(SecurityLevel::L128));
        let board = SigningKey::from_bytes(&[7; 32]);
        registry
            .add_device("board", &board.verifying_key().to_bytes())
            .unwrap();
        let mut d = Decryptor::new(registry, ks.secret, Policy::default());
        let message = |device: &str, key: &SigningKey| {
            let mut m = ResultMessage {
                device_id: device.into(),
                bundle_id: "0123456789abcdef".into(),
                seq: 1,
                timestamp_ms: 0,
                infer_us: 0,
                extract_us: 0,
                result: ResultCiphertext {
                    key_id: [0; 16],
                    bits: 64,
                    parts: Vec::new(),
                },
                signed: None,
            };
            m.sign(key);
            m.encode()
        };
        let mut out: Vec<u8> = Vec::new();
        let mut why =
            |topic: Option<&str>, payload: &[u8]| match d.handle(topic, payload, &mut out).unwrap()
            {
                Outcome::Refused { reason, .. } => reason,
                other => panic!("not refused: {other:?}"),
            };
        assert!(matches!(
            why(None, b"\x03garbage"),
            Refused::Message(MessageError::Undecodable(_))
        ));
        assert_eq!(
            why(None, &message("ghost", &board)),
            Refused::UnknownDevice("ghost".into())
        );
        assert_eq!(
            why(Some("other"), &message("board", &board)),
            Refused::Topic {
                topic: "other".into()
            }
        );
        assert!(matches!(
            why(None, &message("board", &SigningKey::from_bytes(&[8; 32]))),
            Refused::Message(MessageError::WrongSigner { .. })
        ));
        assert_eq!(
            why(None, &message("board", &board)),
            Refused::UnknownBundle("0123456789abcdef".into())
        );
        assert!(out.is_empty());
    }

    #[test]
    fn acknowledgements_batch_per_device() {
        let mut b = AckBatch::default();
        let now = Instant::now();
        assert!(!b.due());
        for seq in [3, 1, 2] {
            b.add(
                &Outcome::Recorded {
                    device: "a".into(),
                    seq,
                },
                now,
            );
        }
        b.add(
            &Outcome::Duplicate {
                device: "b".into(),
                seq: 9,
            },
            now,
        );
        b.add(
            &Outcome::Refused {
                reason: Refused::Result(Refusal::Check { row: 0 }),
                claimed: Some(("a".into(), 7)),
                vouched: true,
            },
            now,
        );
        b.add(
            &Outcome::Refused {
                reason: Refused::Message(MessageError::BadSignature),
                claimed: Some(("a".into(), 8)),
                vouched: false,
            },
            now,
        );
        b.add(
            &Outcome::Withheld {
                device: "c".into(),
                seq: 1,
                kept: true,
            },
            now,
        );
        b.add(
            &Outcome::Withheld {
                device: "d".into(),
                seq: 1,
                kept: false,
            },
            now,
        );
        std::thread::sleep(ACK_DELAY);
        assert!(b.due());
        let acks = b.take();
        // Recorded, refused and withheld alike: one list, nothing tells them apart.
        let got: Vec<(&str, &Vec<(u64, u64)>)> = acks
            .iter()
            .map(|a| (a.device_id.as_str(), &a.received))
            .collect();
        assert_eq!(
            got,
            [
                ("a", &vec![(1, 3), (7, 7)]),
                ("b", &vec![(9, 9)]),
                ("c", &vec![(1, 1)])
            ]
        );
        assert!(!b.due());
    }
}
