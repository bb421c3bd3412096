//! Publishing spooled results over MQTT (rumqttc on a single-threaded tokio runtime, in its
//! own thread).
//!
//! QoS 1. Up to `WINDOW` results are in flight; rumqttc numbers each publish when it writes it
//! (`Outgoing::Publish(pkid)`, in request order), and the matching `PubAck` removes the file
//! from the spool. On any connection error the connection is rebuilt after a backoff (1 s
//! doubling to 30 s, jittered; new results do not cut it short) and everything still in the
//! spool is sent again: at least once, de-duplicated by the decryptor. The event loop is
//! polled continuously and never cancelled mid-poll ([`Connection`]).

use super::delivery::{Delivery, Release};
use super::error::EdgeError;
use super::spool::Spool;
use crate::files::IoError;
use crate::transport::mqtt::MqttConfig;
use crate::transport::{Backoff, Connection};
use rumqttc::{Event, MqttOptions, Outgoing, Packet, QoS};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

const WINDOW: usize = 16;

/// Handle on the publishing thread.
pub struct Publisher {
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

impl Publisher {
    pub fn start(
        config: &MqttConfig,
        client_id: &str,
        topic: String,
        spool: Arc<Spool>,
    ) -> Result<Self, EdgeError> {
        let options = config.options(client_id)?;
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
                    Ok(rt) => rt.block_on(run(options, topic, spool, rx, f)),
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
    pub fn shutdown_when(mut self, timeout: Duration, abort: impl Fn() -> bool) {
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

async fn run(
    options: MqttOptions,
    topic: String,
    spool: Arc<Spool>,
    mut wake: tokio::sync::mpsc::UnboundedReceiver<()>,
    flags: Arc<Flags>,
) {
    let mut backoff = Backoff::default();
    loop {
        let mut conn = Connection::open(options.clone(), WINDOW * 2);
        let mut delivery = Delivery::new(Release::OnBrokerAck, WINDOW);
        let mut up = false;
        let error = loop {
            let drained =
                flags.drain.load(Ordering::Relaxed) && spool.is_empty() && delivery.is_idle();
            if drained || flags.abort.load(Ordering::Relaxed) {
                if up {
                    conn.close(Duration::from_millis(200)).await;
                }
                return;
            }
            if up {
                for seq in spool.pending_after(delivery.resume_after(), delivery.room()) {
                    match spool.read(seq) {
                        Ok(payload) => {
                            if conn
                                .client()
                                .try_publish(&topic, QoS::AtLeastOnce, false, payload)
                                .is_err()
                            {
                                break;
                            }
                            delivery.sent(seq, std::time::Instant::now());
                        }
                        Err(e) => {
                            log::error!("spool: cannot read #{seq}: {e}");
                            delivery.skipped(seq);
                        }
                    }
                }
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
                    backoff.reset();
                }
                Ok(Event::Outgoing(Outgoing::Publish(pkid))) => delivery.numbered(pkid),
                Ok(Event::Incoming(Packet::PubAck(ack))) => {
                    if let Some(seq) = delivery.broker_acked(ack.pkid) {
                        spool.remove(seq);
                        log::debug!("#{seq} acknowledged");
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
        log::warn!(
            "broker connection: {error}; retrying in {delay:.1?} ({} spooled)",
            spool.len()
        );
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
