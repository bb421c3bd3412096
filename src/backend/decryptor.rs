//! The decryption agent (`hedge decrypt --subscribe`): subscribes to result messages,
//! decrypts them with the backend's secret key, drops duplicates by (device, sequence) and
//! writes one JSON line per result.
//!
//! Works with shared subscriptions (`$share/<group>/hedge/+/results`) so several decryptors can
//! split the load. Subscriptions are renewed on every ConnAck (a clean session forgets them).
//! Acknowledgements are manual and sent only after the line is written, so a decryptor crash
//! re-delivers rather than loses; none is ever dropped ([`Connection`]). A malformed,
//! oversized or wrong-key payload is logged with its reason, acknowledged (so it is not
//! redelivered forever) and skipped.

use super::{BackendError, Result};
use crate::crypto::keys::SecretKeys;
use crate::engine::decrypt;
use crate::files::IoError;
use crate::transport::message::{ResultMessage, MAX_PAYLOAD};
use crate::transport::mqtt::MqttConfig;
use crate::transport::{Backoff, Connection};
use rumqttc::{Event, Packet, QoS};
use std::collections::HashSet;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The largest packet MQTT 3.1.1 can express (remaining length 268,435,455 plus header).
const MQTT_MAX_PACKET: usize = 268_435_460;

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
}

#[derive(Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub results: usize,
    pub duplicates: usize,
    pub rejected: usize,
}

/// Run until `count` results, the idle timeout, or forever.
pub fn run(keys: &SecretKeys, opts: &SubscribeOptions, out: &mut dyn Write) -> Result<Stats> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| IoError::new("tokio runtime", e))?;
    rt.block_on(subscribe(keys, opts, out))
}

async fn subscribe(
    keys: &SecretKeys,
    opts: &SubscribeOptions,
    out: &mut dyn Write,
) -> Result<Stats> {
    let mut mqtt_options = opts.mqtt.options(&opts.client_id)?;
    // Accept any packet MQTT allows and reject oversized payloads ourselves: if rumqttc refused
    // one, the connection would drop and the broker would redeliver it forever.
    mqtt_options.set_max_packet_size(MQTT_MAX_PACKET, MAX_PAYLOAD + 1024);
    mqtt_options.set_manual_acks(true);
    mqtt_options.set_clean_session(!opts.persistent);
    let mut seen: HashSet<(String, u64)> = HashSet::new();
    let mut stats = Stats::default();
    let mut backoff = Backoff::default();
    let mut last_message = std::time::Instant::now();
    loop {
        let mut conn = Connection::open(mqtt_options.clone(), 64);
        let error = loop {
            if opts.count.is_some_and(|c| stats.results >= c) {
                conn.close(Duration::from_secs(5)).await;
                return Ok(stats);
            }
            if opts.stop.load(Ordering::Relaxed)
                || opts
                    .idle_timeout
                    .is_some_and(|t| last_message.elapsed() > t)
            {
                conn.close(Duration::from_secs(1)).await;
                return Ok(stats);
            }
            let event = tokio::select! {
                e = conn.next() => e,
                _ = tokio::time::sleep(Duration::from_millis(200)) => continue,
            };
            match event {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    backoff.reset();
                    log::info!("connected; subscribing to {}", opts.filter);
                    conn.subscribe(&opts.filter, QoS::AtLeastOnce);
                }
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    if let Some(ready) = &opts.ready {
                        let _ = ready.send(());
                    }
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    last_message = std::time::Instant::now();
                    handle(keys, &p, &mut seen, &mut stats, out)?;
                    // Only once the line is written: a crash before this redelivers.
                    conn.ack(&p);
                }
                Ok(_) => {}
                Err(e) => break e,
            }
        };
        let delay = backoff.next_delay();
        log::warn!("broker connection: {error}; retrying in {delay:.1?}");
        tokio::time::sleep(delay).await;
    }
}

/// Decrypt one result message into its JSON line (the same fields from the broker and from
/// files).
pub fn decrypt_message(bytes: &[u8], keys: &SecretKeys) -> Result<serde_json::Value> {
    let m = ResultMessage::decode(bytes).map_err(crate::transport::TransportError::from)?;
    let d = decrypt(&m.result, keys)?;
    Ok(line(&m, &d))
}

fn line(m: &ResultMessage, d: &crate::engine::Decrypted) -> serde_json::Value {
    serde_json::json!({
        "device": m.device_id,
        "seq": m.seq,
        "timestamp_ms": m.timestamp_ms,
        "infer_ms": m.infer_us as f64 / 1e3,
        "extract_ms": m.extract_us as f64 / 1e3,
        "bundle": m.bundle_id,
        "class": d.class,
        "scores": d.float_scores,
        "noise_margin_bits": (d.noise_margin_bits * 10.0).round() / 10.0,
    })
}

/// Decrypt one message and write its line (or count it as a duplicate or a rejection).
fn handle(
    keys: &SecretKeys,
    p: &rumqttc::Publish,
    seen: &mut HashSet<(String, u64)>,
    stats: &mut Stats,
    out: &mut dyn Write,
) -> Result<()> {
    let decoded = ResultMessage::decode(&p.payload)
        .map_err(|e| BackendError::from(crate::transport::TransportError::from(e)))
        .and_then(|m| Ok(decrypt(&m.result, keys).map(|d| (m, d))?));
    match decoded {
        Ok((m, d)) => {
            if seen.insert((m.device_id.clone(), m.seq)) {
                writeln!(out, "{}", line(&m, &d))
                    .and_then(|_| out.flush())
                    .map_err(|e| IoError::new("output", e))?;
                stats.results += 1;
            } else {
                stats.duplicates += 1;
                log::debug!("duplicate {}#{} dropped", m.device_id, m.seq);
            }
        }
        Err(e) => {
            stats.rejected += 1;
            log::warn!("rejected a message on {}: {e}", p.topic);
        }
    }
    Ok(())
}
