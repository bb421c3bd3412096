//! The fleet's health: the boards' retained status and their metrics, taken from the broker
//! into the registry (`hedge fleet`).
//!
//! These messages are unsigned and advisory (what a board says of itself); every one is parsed
//! with a size limit and must name the device of its topic, and nothing in them reaches
//! decryption. With mutual TLS, the broker's ACLs bind a board to its own topics (as for
//! results, docs/THREATS.md).

use super::decryptor::topic_device;
use super::registry::{HealthRecord, Registry};
use super::Result;
use crate::files::IoError;
use crate::transport::message::now_ms;
use crate::transport::mqtt::MqttConfig;
use crate::transport::Connection;
use rumqttc::{Event, Packet, QoS};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Larger status or metrics messages are ignored.
const MAX_HEALTH_MESSAGE: usize = 16 * 1024;

/// A JSON object of at most [`MAX_HEALTH_MESSAGE`] bytes that names `device`.
pub(crate) fn object_for(device: &str, payload: &[u8]) -> Result<serde_json::Value, String> {
    if payload.len() > MAX_HEALTH_MESSAGE {
        return Err(format!("{} bytes", payload.len()));
    }
    let v: serde_json::Value = serde_json::from_slice(payload).map_err(|e| e.to_string())?;
    if !v.is_object() {
        return Err("not a JSON object".into());
    }
    if v["device"].as_str() != Some(device) {
        return Err("names another device than its topic".into());
    }
    Ok(v)
}

/// A status message of `device`'s topic.
pub(crate) fn parse_status(
    device: &str,
    payload: &[u8],
    at_ms: u64,
) -> Result<HealthRecord, String> {
    let v = object_for(device, payload)?;
    let online = match v["state"].as_str() {
        Some("online") => true,
        Some("offline") => false,
        _ => return Err("state is neither online nor offline".into()),
    };
    let text = |k: &str| {
        v[k].as_str()
            .map(|s| s.chars().take(128).collect::<String>())
    };
    Ok(HealthRecord {
        device: device.to_string(),
        online,
        version: text("version"),
        bundle: text("bundle"),
        epoch: v["epoch"].as_u64(),
        started_ms: v["started_ms"].as_u64(),
        status_ms: at_ms,
        metrics: None,
        metrics_ms: None,
    })
}

/// The device a topic names under `template` (every other level must match).
pub(crate) fn device_of<'t>(template: &str, topic: &'t str) -> Option<&'t str> {
    let device = topic_device(template, topic)?;
    (template.replace("{device}", device) == topic).then_some(device)
}

/// What one listening pass took in.
#[derive(Debug, Default)]
pub struct Heard {
    pub statuses: u64,
    pub metrics: u64,
    pub ignored: u64,
    /// Devices whose statuses come from two boards at once (see [`Twins`]).
    pub twins: Twins,
}

/// Two boards under one device id (a cloned SD card, a copied configuration): each says when
/// it started in its status, and one board's start times only ever grow — so a status with a
/// start time older than one already seen from that id comes from another board.
#[derive(Debug, Default)]
pub struct Twins {
    latest: BTreeMap<String, u64>,
    pub flagged: BTreeSet<String>,
}

impl Twins {
    /// A status of `device` from a board started at `started_ms`; true the first time the
    /// device is flagged.
    pub fn observe(&mut self, device: &str, started_ms: u64) -> bool {
        let latest = self.latest.entry(device.to_string()).or_insert(started_ms);
        if started_ms < *latest {
            return self.flagged.insert(device.to_string());
        }
        *latest = started_ms;
        false
    }
}

/// Listen for `duration` to the status and metrics topics of every board and record what
/// arrives (retained statuses arrive at once).
pub fn listen(config: &MqttConfig, registry: &Registry, duration: Duration) -> Result<Heard> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| IoError::new("tokio runtime", e))?;
    let mut heard = Heard::default();
    let until = Instant::now() + duration;
    let never = AtomicBool::new(false);
    let mut nothing = |_: &Registry, _: &Heard| Ok(());
    let pass = listen_async(config, registry, &mut heard, (until, &never), &mut nothing);
    rt.block_on(pass)?;
    Ok(heard)
}

/// Listen until `stop`, recording what arrives and calling `heard` (with the registry and what
/// was heard so far) after each message and each quiet second; reconnects after a broker
/// failure.
pub fn watch(
    config: &MqttConfig,
    registry: &Registry,
    stop: &AtomicBool,
    mut heard: impl FnMut(&Registry, &Heard) -> Result<()>,
) -> Result<Heard> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| IoError::new("tokio runtime", e))?;
    let mut all = Heard::default();
    let mut backoff = crate::transport::Backoff::default();
    let forever = Instant::now() + Duration::from_secs(100 * 365 * 86_400);
    while !stop.load(Ordering::Relaxed) {
        let started = Instant::now();
        let pass = listen_async(config, registry, &mut all, (forever, stop), &mut heard);
        if let Err(e) = rt.block_on(pass) {
            // A connection that lasted starts the delays over.
            if started.elapsed() >= crate::transport::connection::STABLE {
                backoff = crate::transport::Backoff::default();
            }
            let delay = backoff.next_delay();
            log::warn!("fleet: {e}; reconnecting in {delay:.1?}");
            let until = Instant::now() + delay;
            while Instant::now() < until && !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
    Ok(all)
}

async fn listen_async(
    config: &MqttConfig,
    registry: &Registry,
    heard: &mut Heard,
    (until, stop): (Instant, &AtomicBool),
    after_each: &mut impl FnMut(&Registry, &Heard) -> Result<()>,
) -> Result<()> {
    let options = config.options(&format!("hedge-fleet-{}", std::process::id()))?;
    let mut conn = Connection::open(options, 16);
    while Instant::now() < until && !stop.load(Ordering::Relaxed) {
        // A stop request is seen within a second.
        let wake = until.min(Instant::now() + Duration::from_secs(1));
        let event = tokio::select! {
            e = conn.next() => e,
            _ = tokio::time::sleep_until(wake.into()) => {
                after_each(registry, heard)?;
                continue;
            }
        };
        match event {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                for template in [&config.status_topic, &config.metrics_topic] {
                    conn.subscribe(&template.replace("{device}", "+"), QoS::AtLeastOnce);
                }
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                let at = now_ms();
                let recorded = if let Some(device) = device_of(&config.status_topic, &p.topic) {
                    parse_status(device, &p.payload, at).map(|h| {
                        // Live statuses only: a retained one the broker restored after a
                        // restart may be older than one already seen.
                        let live = h.online && !p.retain;
                        if live && h.started_ms.is_some_and(|t| heard.twins.observe(device, t)) {
                            log::error!(
                                "device {device}: statuses from two boards started at \
                                 different times: two boards share this device id (a cloned \
                                 SD card?); give each its own id and identity"
                            );
                        }
                        registry.record_status(&h).map(|_| heard.statuses += 1)
                    })
                } else if let Some(device) = device_of(&config.metrics_topic, &p.topic) {
                    object_for(device, &p.payload).map(|v| {
                        registry
                            .record_metrics(device, &v.to_string(), at)
                            .map(|_| heard.metrics += 1)
                    })
                } else {
                    Err(format!("unexpected topic {}", p.topic))
                };
                match recorded {
                    Ok(r) => r?,
                    Err(why) => {
                        heard.ignored += 1;
                        log::warn!("ignored a message on {}: {why}", p.topic);
                    }
                }
                after_each(registry, heard)?;
            }
            Ok(_) => {}
            Err(e) => return Err(super::BackendError::Connection(e.to_string())),
        }
    }
    conn.close(Duration::from_millis(200)).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_are_checked_before_they_are_recorded() {
        let ok = br#"{"device":"b1","state":"online","version":"0.1.0","bundle":"aa","epoch":3}"#;
        let h = parse_status("b1", ok, 5).unwrap();
        assert!(h.online);
        assert_eq!(
            (h.bundle.as_deref(), h.epoch, h.status_ms),
            (Some("aa"), Some(3), 5)
        );
        assert!(
            !parse_status("b1", br#"{"device":"b1","state":"offline"}"#, 5)
                .unwrap()
                .online
        );
        // Another board's name, no state, not JSON, too large.
        assert!(parse_status("b2", ok, 5).is_err());
        assert!(parse_status("b1", br#"{"device":"b1"}"#, 5).is_err());
        assert!(parse_status("b1", b"\xff\xfe", 5).is_err());
        assert!(parse_status("b1", b"[1,2]", 5).is_err());
        let big = format!(
            r#"{{"device":"b1","state":"online","pad":"{}"}}"#,
            "x".repeat(20000)
        );
        assert!(parse_status("b1", big.as_bytes(), 5).is_err());
    }
}
