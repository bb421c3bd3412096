//! The deployment agent (the paper's "Trained DNN Deployment Agent"): a protected bundle
//! offered to boards over the broker they already use, served in chunks, and each board's
//! progress recorded in the registry (`hedge deploy`).
//!
//! Keys once, models many: a board that reports running a bundle of the same key set gets a
//! model update (the bundle without its evaluation keys) instead of the whole bundle.
//! The offer carries every chunk's SHA-256 and is signed with the bundle-signing key, so a
//! chunk from anyone else is refused by the board; what a board reports is advisory.

use super::fleet::{device_of, object_for};
use super::registry::Registry;
use super::{BackendError, Result};
use crate::bundle::{bundle_id, EdgeBundle, ModelUpdate};
use crate::files::IoError;
use crate::hex::hex;
use crate::transport::deploy::{
    Chunk, ChunkRequest, DeployState, Offer, Payload, MAX_CHUNK_BYTES, MAX_OFFER_BYTES,
    MIN_CHUNK_BYTES,
};
use crate::transport::message::now_ms;
use crate::transport::mqtt::MqttConfig;
use crate::transport::Connection;
use ed25519_dalek::SigningKey;
use rumqttc::{Event, Packet, QoS};
use sha2::{Digest, Sha256};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

pub const DEFAULT_CHUNK: u32 = 256 << 10;
/// Chunks served for one request at most (a board asks for its window).
const MAX_RUN: u32 = 64;

/// One offer to publish: its topic and signed bytes.
pub struct Offered {
    pub device: String,
    pub payload: Payload,
    pub size: u64,
    pub topic: String,
    pub message: Vec<u8>,
}

/// What `hedge deploy` made.
pub struct Created {
    pub deployment: u64,
    pub bundle: String,
    pub offers: Vec<Offered>,
}

/// A payload with its chunks' and its whole SHA-256, hashed once for every board's offer.
struct Hashed<'a> {
    kind: Payload,
    bytes: &'a [u8],
    chunks: Vec<[u8; 32]>,
    digest: [u8; 32],
}

impl<'a> Hashed<'a> {
    fn of(kind: Payload, bytes: &'a [u8], chunk_size: u32) -> Self {
        Self {
            kind,
            bytes,
            chunks: bytes
                .chunks(chunk_size as usize)
                .map(|c| Sha256::digest(c).into())
                .collect(),
            digest: Sha256::digest(bytes).into(),
        }
    }
}

fn offer_for(
    deployment: u64,
    device: &str,
    bundle: &str,
    epoch: u64,
    payload: &Hashed,
    chunk_size: u32,
) -> Offer {
    Offer {
        deployment,
        device_id: device.to_string(),
        bundle_id: bundle.to_string(),
        payload: payload.kind,
        epoch,
        size: payload.bytes.len() as u64,
        chunk_size,
        chunks: payload.chunks.clone(),
        digest: payload.digest,
        cancelled: false,
        issued_ms: now_ms(),
    }
}

/// Record a deployment of the bundle at `path` to `devices` and sign an offer for each; its
/// payloads are stored in the registry, so that any deployment agent on any host that shares
/// the registry serves them (no shared directory). The bundle must be this backend's (signed
/// by `signer`, recorded by `hedge protect`). Unless `full`, a board that last reported
/// running a bundle of the same key set gets the model update.
#[allow(clippy::too_many_arguments)]
pub fn create(
    registry: &Registry,
    config: &MqttConfig,
    signer: &SigningKey,
    path: &Path,
    devices: &[String],
    chunk_size: u32,
    full: bool,
) -> Result<Created> {
    if !(MIN_CHUNK_BYTES..=MAX_CHUNK_BYTES).contains(&chunk_size) {
        return Err(BackendError::Data(format!(
            "chunk size {chunk_size} outside {MIN_CHUNK_BYTES}..={MAX_CHUNK_BYTES}"
        )));
    }
    if devices.is_empty() {
        return Err(BackendError::Data("no target devices".into()));
    }
    let bytes = crate::files::read(path)?;
    let bundle = EdgeBundle::from_bytes(&bytes, &signer.verifying_key())?;
    let id = bundle_id(&bytes);
    if registry.bundle(&id)?.is_none() {
        return Err(BackendError::Registry(format!(
            "bundle {id} is not in this registry (protect it with this backend's keys)"
        )));
    }
    let key_id = hex(&bundle.header.key_id);
    let epoch = bundle.header.epoch;
    for d in devices {
        if registry.device(d)?.is_none() {
            return Err(BackendError::Registry(format!(
                "no device {d} (hedge device add)"
            )));
        }
    }
    let health = registry.health()?;
    let takes_update = |device: &str| -> Result<bool> {
        let running = health
            .iter()
            .find(|h| h.device == device)
            .and_then(|h| h.bundle.clone());
        Ok(match running {
            Some(r) if !full && r != id => {
                registry.bundle_key_id(&r)?.as_deref() == Some(key_id.as_str())
            }
            _ => false,
        })
    };
    let plan: Vec<(String, bool)> = devices
        .iter()
        .map(|d| Ok((d.clone(), takes_update(d)?)))
        .collect::<Result<_>>()?;
    let update = plan
        .iter()
        .any(|(_, u)| *u)
        .then(|| ModelUpdate::of(bundle, id.clone()).to_bytes(signer));
    // Each payload some board takes, hashed once: [whole bundle, model update].
    let taken = |takes_update: bool| plan.iter().any(|(_, u)| *u == takes_update);
    let hashed = [
        taken(false).then(|| Hashed::of(Payload::Bundle, &bytes, chunk_size)),
        update
            .as_deref()
            .map(|u| Hashed::of(Payload::ModelUpdate, u, chunk_size)),
    ];
    let payload_of = |takes_update: bool| {
        hashed[takes_update as usize]
            .as_ref()
            .expect("hashed for the boards that take it")
    };
    // Every offer fits before anything is recorded: sized with the longest device id among
    // its boards and the largest deployment id (the real id is not known yet).
    for takes_update in [false, true] {
        let Some(device) = plan
            .iter()
            .filter(|(_, u)| *u == takes_update)
            .map(|(d, _)| d)
            .max_by_key(|d| d.len())
        else {
            continue;
        };
        let payload = payload_of(takes_update);
        let offer = offer_for(u64::MAX, device, &id, epoch, payload, chunk_size);
        let size = offer.encode(signer).len();
        if size > MAX_OFFER_BYTES {
            return Err(BackendError::Data(format!(
                "{} chunks of {chunk_size} bytes make an offer of {size} bytes, over \
                 {MAX_OFFER_BYTES}: use a larger --chunk-size",
                offer.chunks.len(),
            )));
        }
    }
    let payloads: Vec<(&str, &[u8])> = hashed
        .iter()
        .flatten()
        .map(|h| (h.kind.name(), h.bytes))
        .collect();
    let targets: Vec<(&str, &str, u64)> = plan
        .iter()
        .map(|(device, u)| {
            let payload = payload_of(*u);
            (
                device.as_str(),
                payload.kind.name(),
                payload.bytes.len() as u64,
            )
        })
        .collect();
    let deployment = registry.add_deployment(&id, epoch, chunk_size, &payloads, &targets)?;
    let offers = plan
        .iter()
        .map(|(device, takes_update)| {
            let payload = payload_of(*takes_update);
            let offer = offer_for(deployment, device, &id, epoch, payload, chunk_size);
            Offered {
                topic: config.deploy_topic_for(device, "offer"),
                payload: payload.kind,
                size: offer.size,
                message: offer.encode(signer),
                device: device.clone(),
            }
        })
        .collect();
    Ok(Created {
        deployment,
        bundle: id,
        offers,
    })
}

/// Withdraw a deployment: recorded, and a signed cancellation replaces each target's offer.
pub fn cancel(
    registry: &Registry,
    config: &MqttConfig,
    signer: &SigningKey,
    deployment: u64,
) -> Result<Vec<Offered>> {
    let d = registry
        .deployment(deployment)?
        .ok_or_else(|| BackendError::Registry(format!("no deployment {deployment}")))?;
    registry.cancel_deployment(deployment)?;
    let mut out = Vec::new();
    for t in registry.targets(Some(deployment))? {
        // A newer offer already replaced this one on the board's retained topic: leave it.
        if registry.latest_deployment_for(&t.device)? > deployment {
            continue;
        }
        let mut offer = offer_for(
            deployment,
            &t.device,
            &d.bundle,
            d.epoch,
            &Hashed::of(Payload::Bundle, &[], d.chunk_size),
            d.chunk_size,
        );
        offer.cancelled = true;
        out.push(Offered {
            topic: config.deploy_topic_for(&t.device, "offer"),
            payload: Payload::Bundle,
            size: 0,
            message: offer.encode(signer),
            device: t.device,
        });
    }
    Ok(out)
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| IoError::new("tokio runtime", e).into())
}

/// Publish the offers (retained, QoS 1) and wait for the broker to take them all.
pub fn publish(config: &MqttConfig, offers: &[Offered]) -> Result<()> {
    runtime()?.block_on(async {
        let options = config.options(&format!("hedge-deploy-{}", std::process::id()))?;
        let mut conn = Connection::open(options, 16);
        let mut acked = 0;
        let until = Instant::now() + Duration::from_secs(30);
        while acked < offers.len() {
            let event = tokio::select! {
                e = conn.next() => e,
                _ = tokio::time::sleep_until(until.into()) => {
                    return Err(BackendError::Connection(format!(
                        "the broker took {acked} of {} offers in 30 s", offers.len()
                    )))
                }
            };
            match event {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    for o in offers {
                        conn.publish_retained(&o.topic, o.message.clone());
                    }
                }
                Ok(Event::Incoming(Packet::PubAck(_))) => acked += 1,
                Ok(_) => {}
                Err(e) => return Err(BackendError::Connection(e.to_string())),
            }
        }
        conn.close(Duration::from_millis(200)).await;
        Ok(())
    })
}

/// What a serving pass did.
#[derive(Debug, Default)]
pub struct Served {
    pub chunks: u64,
    pub bytes: u64,
    pub reports: u64,
    pub refused: u64,
}

/// Chunk bytes the agent holds for sending at most; requests beyond are dropped (the boards
/// ask again), so no number of requests can exhaust the agent's memory.
const MAX_QUEUED_BYTES: usize = 64 << 20;
/// Chunks handed to the connection and not yet taken by it.
const MAX_HANDED: usize = 8;

/// Chunks waiting for their turn under the rate limit (a board asking again for one still
/// waiting is not served twice).
#[derive(Default)]
struct Outgoing {
    queue: std::collections::VecDeque<(String, Chunk)>,
    queued: std::collections::HashSet<(String, u64, u32)>,
    bytes: usize,
    /// Bytes per second for all boards together (None: as fast as the broker takes them).
    rate: Option<u64>,
    next: Option<Instant>,
}

impl Outgoing {
    fn has_room(&self, len: usize) -> bool {
        self.bytes + len <= MAX_QUEUED_BYTES
    }

    fn is_queued(&self, topic: &str, deployment: u64, index: u32) -> bool {
        self.queued
            .contains(&(topic.to_string(), deployment, index))
    }

    fn push(&mut self, topic: String, chunk: Chunk) {
        if self
            .queued
            .insert((topic.clone(), chunk.deployment, chunk.index))
        {
            self.bytes += chunk.bytes.len();
            self.queue.push_back((topic, chunk));
        }
    }

    /// Hand the broker what the rate allows now; when to come back.
    fn send(&mut self, conn: &mut Connection, served: &mut Served) -> Option<Instant> {
        loop {
            let now = Instant::now();
            if !self.queue.is_empty() && conn.outbox_len() >= MAX_HANDED {
                return Some(now + Duration::from_millis(10));
            }
            if self.next.is_some_and(|n| n > now) && !self.queue.is_empty() {
                return self.next;
            }
            let (topic, chunk) = self.queue.pop_front()?;
            self.queued
                .remove(&(topic.clone(), chunk.deployment, chunk.index));
            self.bytes -= chunk.bytes.len();
            let len = chunk.bytes.len() as u64;
            served.chunks += 1;
            served.bytes += len;
            conn.publish(&topic, chunk.encode());
            if let Some(rate) = self.rate {
                let start = self.next.map_or(now, |n| n.max(now));
                self.next = Some(start + Duration::from_secs_f64(len as f64 / rate.max(1) as f64));
            }
        }
    }
}

/// Serve chunk requests and record the boards' reports, for `duration` (None: until
/// stopped — the agent reconnects after a broker restart), sending at most `rate` bytes per
/// second of chunks (so a fleet rollout does not take the broker's or the uplinks' whole
/// bandwidth).
pub fn serve(
    config: &MqttConfig,
    registry: &Registry,
    duration: Option<Duration>,
    rate: Option<u64>,
    stop: &AtomicBool,
) -> Result<Served> {
    let until = duration.map(|d| Instant::now() + d);
    let mut served = Served::default();
    let rt = runtime()?;
    let mut backoff = crate::transport::Backoff::default();
    loop {
        let mut outgoing = Outgoing {
            rate,
            ..Outgoing::default()
        };
        let pass = serve_once(config, registry, until, stop, &mut served, &mut outgoing);
        match rt.block_on(pass) {
            Ok(()) => return Ok(served),
            Err(e) => {
                let delay = backoff.next_delay();
                log::warn!("deployment agent: {e}; reconnecting in {delay:.1?}");
                let t = Instant::now();
                while t.elapsed() < delay {
                    if stop.load(Ordering::Relaxed) {
                        return Ok(served);
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        }
    }
}

async fn serve_once(
    config: &MqttConfig,
    registry: &Registry,
    until: Option<Instant>,
    stop: &AtomicBool,
    served: &mut Served,
    outgoing: &mut Outgoing,
) -> Result<()> {
    let options = config.options(&format!("hedge-deploy-agent-{}", std::process::id()))?;
    let mut conn = Connection::open(options, 64);
    let get = config.deploy_topic_for("{device}", "get");
    let state = config.deploy_topic_for("{device}", "state");
    let far = Instant::now() + Duration::from_secs(86_400 * 365);
    while !stop.load(Ordering::Relaxed) {
        let resume = outgoing.send(&mut conn, served);
        let event = tokio::select! {
            e = conn.next() => e,
            _ = tokio::time::sleep(Duration::from_millis(200)) => continue,
            _ = tokio::time::sleep_until(resume.unwrap_or(far).into()), if resume.is_some() => continue,
            _ = tokio::time::sleep_until(until.unwrap_or(far).into()), if until.is_some() => break,
        };
        match event {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                log::debug!("deployment agent connected");
                for template in [&get, &state] {
                    conn.subscribe(&template.replace("{device}", "+"), QoS::AtMostOnce);
                }
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                let outcome = if let Some(device) = device_of(&get, &p.topic) {
                    serve_request(registry, config, device, &p.payload, outgoing)
                } else if let Some(device) = device_of(&state, &p.topic) {
                    record_report(registry, device, &p.payload).map(|_| served.reports += 1)
                } else {
                    Err(format!("unexpected topic {}", p.topic))
                };
                if let Err(why) = outcome {
                    served.refused += 1;
                    log::warn!("ignored a message on {}: {why}", p.topic);
                }
            }
            Ok(_) => {}
            Err(e) => return Err(BackendError::Connection(e.to_string())),
        }
    }
    conn.close(Duration::from_millis(500)).await;
    Ok(())
}

/// Chunks for a board that is a target of a live deployment.
fn serve_request(
    registry: &Registry,
    config: &MqttConfig,
    device: &str,
    payload: &[u8],
    outgoing: &mut Outgoing,
) -> Result<(), String> {
    let request = ChunkRequest::decode(payload)?;
    let d = registry
        .deployment(request.deployment)
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("no deployment {}", request.deployment))?;
    if d.cancelled {
        return Err(format!("deployment {} is cancelled", d.id));
    }
    let target = registry
        .target(d.id, device)
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("{device} is no target of deployment {}", d.id))?;
    let topic = config.deploy_topic_for(device, "data");
    // Within the payload (the board asks for its window; a request past the end is cut).
    let chunks = target.size.div_ceil(d.chunk_size as u64);
    let last = request
        .first
        .saturating_add(request.count.min(MAX_RUN))
        .min(u32::try_from(chunks).unwrap_or(u32::MAX));
    if request.first >= last {
        return Ok(());
    }
    let stored = registry
        .deployment_chunks(d.id, &target.payload, request.first, last)
        .map_err(|e| e.to_string())?;
    if stored.len() as u32 != last - request.first {
        // Made by a build that kept payloads in files.
        return Err(format!(
            "deployment {} has no {} chunks {}..{last} in the registry: deploy the bundle again",
            d.id, target.payload, request.first
        ));
    }
    for (index, bytes) in stored {
        if outgoing.is_queued(&topic, d.id, index) {
            continue;
        }
        if !outgoing.has_room(bytes.len()) {
            return Err(format!(
                "{MAX_QUEUED_BYTES} bytes of chunks already wait: request dropped"
            ));
        }
        outgoing.push(
            topic.clone(),
            Chunk {
                deployment: d.id,
                index,
                bytes,
            },
        );
    }
    Ok(())
}

/// A board's report into the registry (checked like health: size, device, known states).
fn record_report(registry: &Registry, device: &str, payload: &[u8]) -> Result<(), String> {
    let v = object_for(device, payload)?;
    let deployment = v["deployment"].as_u64().ok_or("no deployment number")?;
    let state = v["state"]
        .as_str()
        .and_then(DeployState::parse)
        .ok_or("unknown state")?;
    let text = |k: &str| {
        v[k].as_str()
            .map(|s| s.chars().take(256).collect::<String>())
    };
    let recorded = registry
        .record_target_state(
            deployment,
            device,
            state.name(),
            v["received"].as_u64().unwrap_or(0),
            text("reason").as_deref(),
            &text("running").unwrap_or_default(),
        )
        .map_err(|e| e.to_string())?;
    if !recorded {
        return Err(format!("{device} is no target of deployment {deployment}"));
    }
    Ok(())
}
