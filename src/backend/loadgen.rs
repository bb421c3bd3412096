//! `hedge loadgen`: many simulated boards speaking the real protocol, to measure and test the
//! backend under a fleet's load. Each board is what `hedged` is on the wire: its own MQTT
//! connection and client id, its own Ed25519 identity (enrolled in bulk), its own sequence
//! numbers, real signed result messages, its acknowledgement topic subscribed, and the
//! publisher's own delivery rules ([`Delivery`]: a broker window, an end-to-end window,
//! everything unacknowledged sent again when none comes). Only the inference is not repeated:
//! one honest ciphertext is made from the bundle and signed anew in every message, so the
//! backend's checks and decryption all run.
//!
//! [`SimBoard`] is a board's bookkeeping without I/O (unit-tested); [`run`] drives one tokio
//! task per board on one thread and ends with a [`Report`].

use super::registry::Registry;
use super::{BackendError, Result};
use crate::edge::delivery::{Delivery, Release};
use crate::engine::ResultCiphertext;
use crate::transport::ack::Ack;
use crate::transport::message::now_ms;
use crate::transport::mqtt::MqttConfig;
use crate::transport::{Backoff, Connection, ResultMessage};
use ed25519_dalek::{SigningKey, VerifyingKey};
use rumqttc::{Event, Outgoing, Packet, QoS};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What one simulated board publishes: an honest result of the bundle, re-signed per message.
#[derive(Clone)]
pub struct Template {
    pub bundle_id: String,
    pub result: ResultCiphertext,
    /// How long the one real inference took (reported in every message, as a board would).
    pub infer_us: u64,
}

impl Template {
    /// Verify the bundle against `trusted` and run it once on an all-zero feature vector.
    pub fn from_bundle(path: &Path, trusted: &VerifyingKey) -> Result<Self> {
        let ready = crate::bundle::open(path, trusted)?.ready()?;
        let mut engine = ready.engine;
        let started = Instant::now();
        let result = engine.infer_plain(&vec![0.0; engine.info.input.dim])?;
        Ok(Self {
            bundle_id: ready.id,
            result,
            infer_us: started.elapsed().as_micros() as u64,
        })
    }

    /// The signed message `seq` of board `id`.
    fn message(&self, id: &str, key: &SigningKey, seq: u64) -> Vec<u8> {
        let mut m = ResultMessage {
            device_id: id.to_string(),
            bundle_id: self.bundle_id.clone(),
            seq,
            timestamp_ms: now_ms(),
            infer_us: self.infer_us,
            extract_us: 0,
            result: self.result.clone(),
            signed: None,
        };
        m.sign(key);
        m.encode()
    }
}

/// One simulated board's identity.
pub struct Identity {
    pub id: String,
    pub key: SigningKey,
}

/// `n` fresh identities named `<prefix>-<i>`.
pub fn identities(prefix: &str, n: usize) -> Vec<Identity> {
    let width = n.saturating_sub(1).to_string().len();
    (0..n)
        .map(|i| Identity {
            id: format!("{prefix}-{i:0width$}"),
            key: SigningKey::generate(&mut rand::rngs::OsRng),
        })
        .collect()
}

/// Enrol the boards in one transaction, after checking that the registry knows the bundle
/// (else every result would be refused as from an unknown bundle).
pub fn enrol(registry: &Registry, bundle_id: &str, boards: &[Identity]) -> Result<()> {
    if registry.bundle(bundle_id)?.is_none() {
        return Err(BackendError::Registry(format!(
            "bundle {bundle_id} is not in the registry {}: pass the --registry it was \
             protected with",
            registry.path().display()
        )));
    }
    let keys: Vec<(String, [u8; 32])> = boards
        .iter()
        .map(|b| (b.id.clone(), b.key.verifying_key().to_bytes()))
        .collect();
    registry.add_devices(&keys)
}

/// How the boards send.
#[derive(Clone, Debug)]
pub struct Load {
    /// Results per board; `None`: until `duration` ends.
    pub results: Option<u64>,
    /// Stop making results after this long.
    pub duration: Option<Duration>,
    /// Results per second, all boards together; `None`: as fast as acknowledgements allow.
    pub rate: Option<f64>,
    /// Results a board keeps waiting for the backend's acknowledgement (hedged's
    /// `e2e_window`).
    pub window: usize,
    /// Unacknowledged results are sent again after this long (hedged's `e2e_timeout_s`).
    pub resend_after: Duration,
    /// How long a board that has made its last result waits for the acknowledgements.
    pub grace: Duration,
}

/// What became of an acknowledged sequence number.
#[derive(Debug, PartialEq)]
pub enum Acked {
    /// First acknowledgement: the time since it was first published.
    New(Duration),
    /// Acknowledged before (a result sent again, or a repeated acknowledgement).
    Again,
    /// Never made by this board (a forged or misrouted acknowledgement would be refused
    /// before; counted anyway).
    Unknown,
}

/// One board's bookkeeping, without I/O: which results it has made, which wait for the
/// backend, when the next is due.
pub struct SimBoard {
    made: u64,
    limit: Option<u64>,
    /// Made and not acknowledged: seq → when first published (None: not yet).
    pending: BTreeMap<u64, Option<Instant>>,
    /// Sequence numbers below this that are not pending were acknowledged.
    acked: u64,
    period: Option<Duration>,
    next_due: Instant,
    stop_making: Option<Instant>,
    window: usize,
}

impl SimBoard {
    /// Board `index` of `boards` under `load`, starting at `start`: with a rate the boards'
    /// first results are spread over one period.
    pub fn new(load: &Load, index: usize, boards: usize, start: Instant) -> Self {
        let period = load
            .rate
            .map(|r| Duration::from_secs_f64(boards as f64 / r.max(1e-9)));
        let offset = period.map_or(Duration::ZERO, |p| p.mul_f64(index as f64 / boards as f64));
        Self {
            made: 0,
            limit: load.results,
            pending: BTreeMap::new(),
            acked: 0,
            period,
            next_due: start + offset,
            stop_making: load.duration.map(|d| start + d),
            window: load.window.max(1),
        }
    }

    /// Whether every result it will make is made.
    pub fn all_made(&self, now: Instant) -> bool {
        self.limit.is_some_and(|l| self.made >= l) || self.stop_making.is_some_and(|t| now >= t)
    }

    /// Make the results due by `now`: on the rate's schedule, or (without a rate) while fewer
    /// than a window's worth wait. Sequence numbers start at 1.
    pub fn make(&mut self, now: Instant) {
        while !self.all_made(now) {
            match self.period {
                Some(p) if now >= self.next_due => self.next_due += p,
                None if self.pending.len() < self.window => {}
                _ => return,
            }
            self.made += 1;
            self.pending.insert(self.made, None);
        }
    }

    /// When [`Self::make`] has something to do next (None: only an acknowledgement can).
    pub fn next_due(&self, now: Instant) -> Option<Instant> {
        (!self.all_made(now) && self.period.is_some()).then_some(self.next_due)
    }

    /// The next result to publish after `after` (the delivery's place in the "spool").
    pub fn next_after(&self, after: Option<u64>) -> Option<u64> {
        let from = after.map_or(0, |a| a.saturating_add(1));
        self.pending.range(from..).next().map(|(&s, _)| s)
    }

    /// `seq` was published; true the first time.
    pub fn published(&mut self, seq: u64, now: Instant) -> bool {
        match self.pending.get_mut(&seq) {
            Some(first @ None) => {
                *first = Some(now);
                true
            }
            _ => false,
        }
    }

    pub fn acked(&mut self, seq: u64, now: Instant) -> Acked {
        match self.pending.remove(&seq) {
            Some(first) => {
                self.acked += 1;
                Acked::New(first.map_or(Duration::ZERO, |t| now.duration_since(t)))
            }
            None if seq >= 1 && seq <= self.made => Acked::Again,
            None => Acked::Unknown,
        }
    }

    /// Made, published at least once.
    pub fn sent(&self) -> u64 {
        self.made - self.pending.values().filter(|t| t.is_none()).count() as u64
    }

    pub fn acknowledged(&self) -> u64 {
        self.acked
    }

    pub fn waiting(&self) -> usize {
        self.pending.len()
    }
}

/// The run's outcome: the last line `hedge loadgen` prints (scripts read these names).
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct Report {
    pub boards: usize,
    /// Distinct results published.
    pub sent: u64,
    /// Distinct results the backend acknowledged.
    pub acknowledged: u64,
    /// Sent and never acknowledged within the grace period.
    pub lost: u64,
    /// Made and never published (a board that could not reach the broker to the end).
    pub unsent: u64,
    /// Acknowledgements of results acknowledged before (results sent again).
    pub duplicates: u64,
    /// Publishes of results already published (resends after a timeout or reconnect).
    pub resent: u64,
    /// Connections that failed or ended before a board was done (each followed by a retry).
    pub reconnects: u64,
    pub seconds: f64,
    /// Acknowledged results per second, from the first publish to the last acknowledgement.
    pub results_per_s: f64,
    /// Publish → end-to-end acknowledgement.
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub result_bytes: usize,
}

/// Live counts, for progress lines.
#[derive(Default)]
pub struct Progress {
    pub sent: AtomicU64,
    pub acknowledged: AtomicU64,
    pub connected: AtomicU64,
}

/// One board's share of the report.
#[derive(Default)]
struct BoardOutcome {
    made: u64,
    sent: u64,
    acknowledged: u64,
    duplicates: u64,
    resent: u64,
    reconnects: u64,
    latencies_us: Vec<u32>,
    first_publish: Option<Instant>,
    last_ack: Option<Instant>,
}

/// The value at quantile `q` of sorted `values` (nearest rank), in ms.
fn quantile_ms(sorted_us: &[u32], q: f64) -> f64 {
    if sorted_us.is_empty() {
        return 0.0;
    }
    let rank = ((q * sorted_us.len() as f64).ceil() as usize).clamp(1, sorted_us.len());
    f64::from(sorted_us[rank - 1]) / 1e3
}

/// Run the boards until every one has made its results and had them acknowledged (or its
/// grace period ended). `progress` is called about once a second.
pub fn run(
    mqtt: &MqttConfig,
    boards: Vec<Identity>,
    template: Template,
    backend: VerifyingKey,
    load: Load,
    mut progress: impl FnMut(&Progress, Duration),
) -> Result<Report> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| crate::files::IoError::new("tokio runtime", e))?;
    // Check the settings once, before a thousand tasks fail alike.
    mqtt.options("hedge-loadgen")?;
    let count = boards.len();
    let result_bytes = boards
        .first()
        .map_or(0, |b| template.message(&b.id, &b.key, 1).len());
    let shared = Arc::new(Shared {
        mqtt: mqtt.clone(),
        template,
        backend,
        load,
        progress: Progress::default(),
    });
    let started = Instant::now();
    let outcomes = rt.block_on(async {
        let mut set = tokio::task::JoinSet::new();
        // Connections opened a millisecond apart: a thousand at once would look like a storm.
        let ramp = Duration::from_millis(1);
        for (i, board) in boards.into_iter().enumerate() {
            let shared = shared.clone();
            set.spawn(async move {
                tokio::time::sleep(ramp * i as u32).await;
                drive(board, i, count, shared).await
            });
        }
        let mut outcomes = Vec::with_capacity(count);
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                joined = set.join_next() => match joined {
                    Some(Ok(o)) => outcomes.push(o),
                    Some(Err(e)) => log::error!("a simulated board failed: {e}"),
                    None => break,
                },
                _ = tick.tick() => progress(&shared.progress, started.elapsed()),
            }
        }
        outcomes
    });
    let mut report = Report {
        boards: count,
        result_bytes,
        seconds: started.elapsed().as_secs_f64(),
        ..Report::default()
    };
    let mut latencies = Vec::new();
    let mut made = 0;
    let (mut first, mut last) = (None::<Instant>, None::<Instant>);
    for o in outcomes {
        report.sent += o.sent;
        report.acknowledged += o.acknowledged;
        report.duplicates += o.duplicates;
        report.resent += o.resent;
        report.reconnects += o.reconnects;
        made += o.made;
        latencies.extend(o.latencies_us);
        first = match (first, o.first_publish) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        last = last.max(o.last_ack);
    }
    report.lost = report.sent - report.acknowledged.min(report.sent);
    report.unsent = made - report.sent.min(made);
    if let (Some(a), Some(b)) = (first, last) {
        let span = b.duration_since(a).as_secs_f64();
        if span > 0.0 {
            report.results_per_s = report.acknowledged as f64 / span;
        }
    }
    latencies.sort_unstable();
    report.p50_ms = quantile_ms(&latencies, 0.50);
    report.p95_ms = quantile_ms(&latencies, 0.95);
    report.p99_ms = quantile_ms(&latencies, 0.99);
    report.max_ms = quantile_ms(&latencies, 1.0);
    Ok(report)
}

struct Shared {
    mqtt: MqttConfig,
    template: Template,
    backend: VerifyingKey,
    load: Load,
    progress: Progress,
}

/// The broker window per connection: hedged's.
const BROKER_WINDOW: usize = 16;

/// One board: connect, publish under [`Delivery`]'s rules, take acknowledgements, reconnect
/// after a failure (with hedged's backoff), until done.
async fn drive(board: Identity, index: usize, boards: usize, shared: Arc<Shared>) -> BoardOutcome {
    let load = &shared.load;
    let mut sim = SimBoard::new(load, index, boards, Instant::now());
    let mut out = BoardOutcome::default();
    let mut grace_until: Option<Instant> = None;
    let ack_topic = shared.mqtt.ack_topic_for(&board.id);
    let topic = shared.mqtt.topic_for(&board.id);
    let Ok(options) = shared.mqtt.options(&board.id) else {
        return out;
    };
    let release = Release::EndToEnd {
        backend_window: load.window.max(1),
        timeout: load.resend_after,
    };
    let mut backoff = Backoff::default();
    'connections: loop {
        let mut conn = Connection::open(options.clone(), BROKER_WINDOW * 2);
        let mut delivery = Delivery::new(release, BROKER_WINDOW);
        let mut up = false;
        let error = loop {
            let now = Instant::now();
            sim.make(now);
            if sim.all_made(now) {
                let until = *grace_until.get_or_insert(now + load.grace);
                if sim.waiting() == 0 || now >= until {
                    if up {
                        shared.progress.connected.fetch_sub(1, Ordering::Relaxed);
                    }
                    conn.close(Duration::from_millis(500)).await;
                    break 'connections;
                }
            }
            if up {
                delivery.resend_due(now);
                while delivery.room() > 0 {
                    let Some(seq) = sim.next_after(delivery.resume_after()) else {
                        break;
                    };
                    conn.publish(&topic, shared.template.message(&board.id, &board.key, seq));
                    delivery.sent(seq, now);
                    if sim.published(seq, now) {
                        shared.progress.sent.fetch_add(1, Ordering::Relaxed);
                        out.first_publish.get_or_insert(now);
                    } else {
                        out.resent += 1;
                    }
                }
            }
            let wake = sim
                .next_due(now)
                .unwrap_or(now + Duration::from_secs(1))
                .min(now + Duration::from_secs(1));
            let event = tokio::select! {
                e = conn.next() => e,
                _ = tokio::time::sleep_until(wake.into()) => continue,
            };
            match event {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    up = true;
                    backoff.connected();
                    shared.progress.connected.fetch_add(1, Ordering::Relaxed);
                    conn.subscribe(&ack_topic, QoS::AtLeastOnce);
                }
                Ok(Event::Outgoing(Outgoing::Publish(pkid))) if pkid != 0 => {
                    delivery.numbered(pkid)
                }
                Ok(Event::Incoming(Packet::PubAck(ack))) => {
                    delivery.broker_acked(ack.pkid);
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let Ok(ack) = Ack::decode(&p.payload, &shared.backend, &board.id) else {
                        log::warn!(
                            "{}: ignored an acknowledgement that does not verify",
                            board.id
                        );
                        continue;
                    };
                    let now = Instant::now();
                    for seq in ack.seqs() {
                        delivery.backend_acked(seq, now);
                        match sim.acked(seq, now) {
                            Acked::New(latency) => {
                                out.latencies_us
                                    .push(latency.as_micros().min(u32::MAX as u128) as u32);
                                out.last_ack = Some(now);
                                shared.progress.acknowledged.fetch_add(1, Ordering::Relaxed);
                            }
                            Acked::Again | Acked::Unknown => out.duplicates += 1,
                        }
                    }
                }
                Ok(_) => {}
                Err(e) => break e,
            }
        };
        out.reconnects += 1;
        if up {
            shared.progress.connected.fetch_sub(1, Ordering::Relaxed);
        }
        let delay = backoff.next_delay();
        log::debug!(
            "{}: broker connection: {error}; retrying in {delay:.1?}",
            board.id
        );
        tokio::time::sleep(delay).await;
    }
    out.made = sim.made;
    out.sent = sim.sent();
    out.acknowledged = sim.acknowledged();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(results: Option<u64>, rate: Option<f64>, window: usize) -> Load {
        Load {
            results,
            duration: None,
            rate,
            window,
            resend_after: Duration::from_secs(10),
            grace: Duration::from_secs(30),
        }
    }

    #[test]
    fn without_a_rate_a_board_keeps_its_window_full() {
        let t0 = Instant::now();
        let mut b = SimBoard::new(&load(Some(10), None, 4), 0, 1, t0);
        b.make(t0);
        assert_eq!(b.waiting(), 4);
        assert_eq!(b.next_due(t0), None, "only an acknowledgement makes more");
        assert_eq!(b.next_after(None), Some(1));
        assert_eq!(b.next_after(Some(1)), Some(2));
        assert!(b.published(1, t0));
        assert!(!b.published(1, t0), "a second publish is a resend");
        assert_eq!(b.sent(), 1);
        let later = t0 + Duration::from_millis(7);
        assert_eq!(b.acked(1, later), Acked::New(Duration::from_millis(7)));
        assert_eq!(b.acked(1, later), Acked::Again);
        assert_eq!(b.acked(99, later), Acked::Unknown);
        b.make(later);
        assert_eq!((b.waiting(), b.next_after(Some(4))), (4, Some(5)));
        for seq in 2..=10 {
            b.make(later);
            b.published(seq, later);
            assert!(matches!(b.acked(seq, later), Acked::New(_)));
        }
        b.make(later);
        assert!(b.all_made(later));
        assert_eq!((b.sent(), b.acknowledged(), b.waiting()), (10, 10, 0));
    }

    #[test]
    fn a_rate_spreads_the_boards_over_one_period() {
        let t0 = Instant::now();
        // 4 boards at 8 results/s: one result every 0.5 s each, starts 125 ms apart.
        let l = load(Some(3), Some(8.0), 100);
        let mut third = SimBoard::new(&l, 2, 4, t0);
        assert_eq!(third.next_due(t0), Some(t0 + Duration::from_millis(250)));
        third.make(t0);
        assert_eq!(third.waiting(), 0);
        third.make(t0 + Duration::from_millis(250));
        assert_eq!(third.waiting(), 1);
        // A board that fell behind catches up, but never beyond its limit.
        third.make(t0 + Duration::from_secs(60));
        assert_eq!(third.waiting(), 3);
        assert!(third.all_made(t0));
        assert_eq!(third.next_due(t0), None);
    }

    #[test]
    fn a_duration_stops_the_making() {
        let t0 = Instant::now();
        let mut l = load(None, Some(10.0), 100);
        l.duration = Some(Duration::from_secs(1));
        let mut b = SimBoard::new(&l, 0, 1, t0);
        b.make(t0 + Duration::from_millis(950));
        assert_eq!(b.waiting(), 10);
        assert!(b.all_made(t0 + Duration::from_secs(1)));
        b.make(t0 + Duration::from_secs(5));
        assert_eq!(b.waiting(), 10);
    }

    #[test]
    fn quantiles_are_nearest_rank() {
        let v: Vec<u32> = (1..=100).map(|ms| ms * 1000).collect();
        assert_eq!(quantile_ms(&v, 0.5), 50.0);
        assert_eq!(quantile_ms(&v, 0.99), 99.0);
        assert_eq!(quantile_ms(&v, 1.0), 100.0);
        assert_eq!(quantile_ms(&[], 0.5), 0.0);
    }
}
