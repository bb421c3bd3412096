//! Publishing spooled results over MQTT (rumqttc on a single-threaded tokio runtime, in its
//! own thread).
//!
//! QoS 1, up to `WINDOW` results in flight to the broker. With end-to-end acknowledgement (the
//! default) a result leaves the spool only when the backend's signed acknowledgement names it,
//! at most `e2e_window` wait for one, and they are sent again when none comes; otherwise the
//! broker's PUBACK releases it. The bookkeeping is [`super::delivery`]. On any connection
//! error the connection is rebuilt after a backoff (1 s doubling to 30 s, jittered; new
//! results do not cut it short) and everything still in the spool is sent again: at least
//! once, de-duplicated by the backend. The event loop is polled continuously and never
//! cancelled mid-poll ([`Connection`]).
//!
//! Health ([`Health`]): every connection registers a retained "offline" status as its last
//! will, then publishes the retained "online" status (again when the bundle changes) and
//! metrics every `metrics_interval_s`; a clean stop publishes "offline" itself. They go at
//! QoS 0, so that rumqttc numbers only results (a QoS 0 publish has packet id 0, which the
//! delivery bookkeeping skips).

use super::delivery::{Delivery, Release};
use super::deploy::{Deployer, Deployments, Transfer};
use super::error::EdgeError;
use super::health::Health;
use super::spool::Spool;
use super::trust::TrustAnchor;
use crate::files::IoError;
use crate::transport::ack::Ack;
use crate::transport::message::{MessageError, ResultMessage, MESSAGE_VERSION};
use crate::transport::mqtt::MqttConfig;
use crate::transport::{Backoff, Connection};
use ed25519_dalek::SigningKey;
use rumqttc::{Event, LastWill, MqttOptions, Outgoing, Packet, QoS};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const WINDOW: usize = 16;

/// Handle on the publishing thread.
pub(crate) struct Publisher {
    wake: tokio::sync::mpsc::UnboundedSender<()>,
    flags: Arc<Flags>,
    thread: Option<std::thread::JoinHandle<()>>,
}

#[derive(Default)]
struct Flags {
    /// Finish once the spool is empty (keep reconnecting until then).
    drain: AtomicBool,
    /// Finish now; whatever is left stays spooled.
    abort: AtomicBool,
}

/// Who the publisher is and whom it trusts.
pub(crate) struct Identity {
    pub device: String,
    /// Signs results an older hedged spooled unsigned.
    pub key: Arc<SigningKey>,
    /// Verifies the backend's end-to-end acknowledgements and deployment offers.
    pub backend: TrustAnchor,
}

impl Publisher {
    pub fn start(
        config: &MqttConfig,
        client_id: &str,
        identity: Identity,
        spool: Arc<Spool>,
        health: Arc<Health>,
        deployments: Arc<Deployments>,
    ) -> Result<Self, EdgeError> {
        let mut options = config.options(client_id)?;
        let status = config.status_topic.replace("{device}", &identity.device);
        options.set_last_will(LastWill::new(
            &status,
            health.status(false),
            QoS::AtLeastOnce,
            true,
        ));
        let route = Route {
            health: HealthRoute {
                health,
                status,
                metrics: config.metrics_topic.replace("{device}", &identity.device),
                interval: (config.metrics_interval_s > 0)
                    .then(|| Duration::from_secs(config.metrics_interval_s)),
            },
            deploy: DeployRoute {
                offer: config.deploy_topic_for(&identity.device, "offer"),
                data: config.deploy_topic_for(&identity.device, "data"),
                get: config.deploy_topic_for(&identity.device, "get"),
                state: config.deploy_topic_for(&identity.device, "state"),
                deployer: std::cell::RefCell::new(Deployer::new(
                    deployments.clone(),
                    identity.backend.clone(),
                    Transfer {
                        window: config.deploy_window.max(1),
                        max_bytes: config.deploy_max_bytes,
                        timeout: Duration::from_secs(config.deploy_timeout_s.max(1)),
                    },
                )),
                deployments,
            },
            results: config.topic_for(&identity.device),
            acks: config
                .end_to_end
                .then(|| config.ack_topic_for(&identity.device)),
            release: if config.end_to_end {
                Release::EndToEnd {
                    backend_window: config.e2e_window.max(1),
                    timeout: Duration::from_secs(config.e2e_timeout_s.max(1)),
                }
            } else {
                Release::OnBrokerAck
            },
            identity,
        };
        let (wake, rx) = tokio::sync::mpsc::unbounded_channel();
        let flags = Arc::new(Flags::default());
        let f = flags.clone();
        let thread = std::thread::Builder::new()
            .name("publish".into())
            .spawn(move || {
                match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt.block_on(run(options, route, spool, rx, f)),
                    Err(e) => log::error!("publisher cannot start its runtime: {e}"),
                }
            })
            .map_err(|e| IoError::new("publisher thread", e))?;
        Ok(Self {
            wake,
            flags,
            thread: Some(thread),
        })
    }

    /// Tell the publisher a new result is in the spool.
    pub fn notify(&self) {
        let _ = self.wake.send(());
    }

    /// Publish what is spooled, then stop. Gives up after `timeout`, or 10 s after `abort()`
    /// turns true (a signal); what is left stays spooled for the next start.
    pub(crate) fn shutdown_when(mut self, timeout: Duration, abort: impl Fn() -> bool) {
        let start = std::time::Instant::now();
        let mut aborted_at: Option<std::time::Instant> = None;
        self.flags.drain.store(true, Ordering::Relaxed);
        self.notify();
        if let Some(t) = self.thread.take() {
            while !t.is_finished() {
                if abort() {
                    aborted_at.get_or_insert_with(std::time::Instant::now);
                }
                if start.elapsed() > timeout
                    || aborted_at.is_some_and(|a| a.elapsed() > Duration::from_secs(10))
                {
                    self.flags.abort.store(true, Ordering::Relaxed);
                    self.notify();
                    let until = std::time::Instant::now() + Duration::from_secs(2);
                    while !t.is_finished() && std::time::Instant::now() < until {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            if t.is_finished() {
                let _ = t.join();
            }
        }
    }
}

/// Where the board's status and metrics go.
struct HealthRoute {
    health: Arc<Health>,
    status: String,
    metrics: String,
    interval: Option<Duration>,
}

impl HealthRoute {
    /// QoS 0 (see the module docs); a full request channel skips one message, nothing more.
    fn status(&self, conn: &Connection, online: bool) {
        let _ = conn.client().try_publish(
            &self.status,
            QoS::AtMostOnce,
            true,
            self.health.status(online),
        );
    }

    fn metrics(&self, conn: &Connection, spool: &Spool) {
        let _ = conn.client().try_publish(
            &self.metrics,
            QoS::AtMostOnce,
            false,
            self.health.metrics(spool),
        );
    }
}

/// Deployments: offers and chunks in, chunk requests and states out (QoS 0 out, so that
/// only results are numbered).
struct DeployRoute {
    offer: String,
    data: String,
    get: String,
    state: String,
    deployer: std::cell::RefCell<Deployer>,
    deployments: Arc<Deployments>,
}

impl DeployRoute {
    fn connected(&self, conn: &mut Connection) {
        conn.subscribe(&self.offer, QoS::AtLeastOnce);
        conn.subscribe(&self.data, QoS::AtLeastOnce);
        self.deployer.borrow_mut().reconnected();
        if let Some(report) = self.deployments.last_report() {
            let _ = conn
                .client()
                .try_publish(&self.state, QoS::AtMostOnce, true, report);
        }
    }

    /// States to report and chunks to ask for.
    fn outgoing(&self, conn: &Connection) {
        for report in self.deployments.take_reports() {
            let _ = conn
                .client()
                .try_publish(&self.state, QoS::AtMostOnce, true, report);
        }
        for request in self.deployer.borrow_mut().requests(Instant::now()) {
            let _ = conn
                .client()
                .try_publish(&self.get, QoS::AtMostOnce, false, request);
        }
    }

    /// True if the message was a deployment's.
    fn incoming(&self, topic: &str, payload: &[u8]) -> bool {
        if topic == self.offer {
            self.deployer.borrow_mut().offered(payload);
        } else if topic == self.data {
            self.deployer.borrow_mut().chunk(payload);
        } else {
            return false;
        }
        true
    }
}

/// Where results go and acknowledgements come from.
struct Route {
    health: HealthRoute,
    deploy: DeployRoute,
    results: String,
    /// None: results leave the spool at the broker's PUBACK.
    acks: Option<String>,
    release: Release,
    identity: Identity,
}

/// A spooled message ready to publish: entries an older hedged wrote are signed now, so an
/// upgrade loses nothing.
fn publishable(payload: Vec<u8>, key: &SigningKey) -> Result<Vec<u8>, MessageError> {
    if payload.first() == Some(&MESSAGE_VERSION) {
        return Ok(payload);
    }
    let mut m = ResultMessage::decode(&payload)?;
    m.sign(key);
    Ok(m.encode())
}

async fn run(
    options: MqttOptions,
    route: Route,
    spool: Arc<Spool>,
    mut wake: tokio::sync::mpsc::UnboundedReceiver<()>,
    flags: Arc<Flags>,
) {
    let mut backoff = Backoff::default();
    loop {
        let mut conn = Connection::open(options.clone(), WINDOW * 2);
        let mut delivery = Delivery::new(route.release, WINDOW);
        let mut up = false;
        let mut next_metrics = Instant::now();
        let error = loop {
            let drained =
                flags.drain.load(Ordering::Relaxed) && spool.is_empty() && delivery.is_idle();
            if drained || flags.abort.load(Ordering::Relaxed) {
                if up {
                    // A clean stop: no last will, so say it.
                    route.health.status(&conn, false);
                    conn.close(Duration::from_millis(200)).await;
                }
                return;
            }
            if up {
                if route.health.health.take_changed() {
                    route.health.status(&conn, true);
                }
                if let Some(interval) = route.health.interval {
                    if Instant::now() >= next_metrics {
                        route.health.metrics(&conn, &spool);
                        next_metrics = Instant::now() + interval;
                    }
                }
                if delivery.resend_due(Instant::now()) {
                    log::warn!(
                        "no end-to-end acknowledgement for a while: sending the {} spooled \
                         result(s) again",
                        spool.len()
                    );
                }
                publish_from_spool(&mut conn, &mut delivery, &spool, &route);
                route.deploy.outgoing(&conn);
            }
            let event = tokio::select! {
                event = conn.next() => event,
                _ = wake.recv() => continue,
                _ = tokio::time::sleep(Duration::from_millis(200)) => continue,
            };
            match event {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    let (host, port) = options.broker_address();
                    log::info!("connected to {host}:{port}");
                    up = true;
                    backoff.connected();
                    if let Some(acks) = &route.acks {
                        conn.subscribe(acks, QoS::AtLeastOnce);
                    }
                    route.health.status(&conn, true);
                    route.deploy.connected(&mut conn);
                }
                // Packet id 0: a QoS 0 status or metrics message, not a result.
                Ok(Event::Outgoing(Outgoing::Publish(pkid))) if pkid != 0 => {
                    delivery.numbered(pkid)
                }
                Ok(Event::Incoming(Packet::PubAck(ack))) => {
                    if let Some(seq) = delivery.broker_acked(ack.pkid) {
                        spool.remove(seq);
                        log::debug!("#{seq} acknowledged by the broker");
                    }
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    if !route.deploy.incoming(&p.topic, &p.payload) {
                        acknowledged(&p.payload, &route.identity, &mut delivery, &spool)
                    }
                }
                Ok(_) => {}
                Err(e) => break e,
            }
        };
        if flags.abort.load(Ordering::Relaxed) {
            log::warn!(
                "broker unreachable while stopping ({error}); {} result(s) stay spooled",
                spool.len()
            );
            return;
        }
        let delay = backoff.next_delay();
        match backoff.taken_over() {
            Some(n) => log::error!(
                "broker connection: closed right after it was accepted, {n} times in a row: \
                 another client is probably connected with the same client id (a second \
                 board with this device id, e.g. a cloned SD card?); retrying in {delay:.1?} \
                 ({} spooled)",
                spool.len()
            ),
            None => log::warn!(
                "broker connection: {error}; retrying in {delay:.1?} ({} spooled)",
                spool.len()
            ),
        }
        // New results do not shorten the wait (a board that keeps inferring would otherwise
        // reconnect as fast as it infers); only a stop request does.
        let until = tokio::time::Instant::now() + delay;
        while !flags.abort.load(Ordering::Relaxed) {
            tokio::select! {
                _ = tokio::time::sleep_until(until) => break,
                _ = wake.recv() => {}
            }
        }
    }
}

/// Hand rumqttc as many spooled results as the windows allow, oldest first.
fn publish_from_spool(
    conn: &mut Connection,
    delivery: &mut Delivery,
    spool: &Spool,
    route: &Route,
) {
    for seq in spool.pending_after(delivery.resume_after(), delivery.room()) {
        let payload = spool
            .read(seq)
            .map_err(|e| e.to_string())
            .and_then(|p| publishable(p, &route.identity.key).map_err(|e| e.to_string()));
        match payload {
            Ok(payload) => {
                if conn
                    .client()
                    .try_publish(&route.results, QoS::AtLeastOnce, false, payload)
                    .is_err()
                {
                    break;
                }
                delivery.sent(seq, Instant::now());
            }
            Err(e) => {
                log::error!("spool: cannot publish #{seq}: {e}");
                delivery.skipped(seq);
            }
        }
    }
}

/// The backend's end-to-end acknowledgement: what it names leaves the spool.
fn acknowledged(payload: &[u8], identity: &Identity, delivery: &mut Delivery, spool: &Spool) {
    match Ack::decode(payload, &identity.backend.key(), &identity.device) {
        Ok(ack) => {
            let now = Instant::now();
            for seq in ack.seqs() {
                delivery.backend_acked(seq, now);
                spool.remove(seq);
            }
        }
        Err(e) => log::warn!("ignored an acknowledgement: {e}"),
    }
}
