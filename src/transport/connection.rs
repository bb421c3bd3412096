//! One broker connection, driven safely: rumqttc's event loop runs in its own task and every
//! `poll` runs to completion; the owner reads events from a channel and hands requests over
//! without ever waiting on the event loop.
//!
//! Why: `EventLoop::poll` is not cancel-safe. Raced against a timer in `select!`, a poll that
//! has taken a request from the channel (and already recorded it in the MQTT state) can be
//! dropped before the packet is written. And an owner that polls the loop itself cannot wait
//! for room in the request channel (it would wait on itself), so `try_ack` on a full channel
//! silently lost acknowledgements: the broker kept those messages in flight, stopped
//! delivering once its window was full, queued the rest up to its limit (mosquitto:
//! `max_queued_messages`, 1000) and dropped what came after. Here a request that does not fit
//! waits in [`Connection`]'s outbox and goes out as the channel drains.
//!
//! A connection lives until its first error; the owner then waits out a [`Backoff`] and opens
//! a new one (a fresh client numbers its packets from scratch, so an owner that maps packet ids
//! to its own records never mixes two connections).

use rumqttc::{AsyncClient, ClientError, ConnectionError, Event, MqttOptions, Publish, QoS};
use std::collections::VecDeque;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// Events buffered between the driver and the owner; the driver waits when it is full, so
/// the broker's flow control (not this process's memory) absorbs a slow owner.
const EVENT_BUFFER: usize = 64;

/// A request that did not fit into rumqttc's channel yet.
enum Pending {
    Ack(Publish),
    Subscribe(String, QoS),
    /// Topic, payload, retain.
    Publish(String, Vec<u8>, bool),
}

/// A broker connection whose event loop is polled by its own task.
pub struct Connection {
    client: AsyncClient,
    events: mpsc::Receiver<Result<Event, ConnectionError>>,
    outbox: VecDeque<Pending>,
    driver: tokio::task::JoinHandle<()>,
}

impl Connection {
    /// Start connecting (on the current tokio runtime). `requests` is rumqttc's request
    /// channel capacity.
    pub fn open(options: MqttOptions, requests: usize) -> Self {
        let (client, mut eventloop) = AsyncClient::new(options, requests);
        let (tx, events) = mpsc::channel(EVENT_BUFFER);
        let driver = tokio::spawn(async move {
            loop {
                let event = eventloop.poll().await;
                let failed = event.is_err();
                if tx.send(event).await.is_err() || failed {
                    return;
                }
            }
        });
        Self {
            client,
            events,
            outbox: VecDeque::new(),
            driver,
        }
    }

    /// The next event; `Err` ends the connection. Cancel-safe (a channel receive), so it can
    /// be raced against timers.
    pub async fn next(&mut self) -> Result<Event, ConnectionError> {
        self.flush();
        let event = self.events.recv().await;
        // Each request the event loop takes yields an event: room for the next ones.
        self.flush();
        event.unwrap_or(Err(ConnectionError::RequestsDone))
    }

    /// The next event if one is already waiting (for taking a batch of messages at once).
    pub fn try_next(&mut self) -> Option<Result<Event, ConnectionError>> {
        let event = self.events.try_recv().ok();
        self.flush();
        event
    }

    /// Events received and not yet taken.
    pub fn waiting(&self) -> usize {
        self.events.len()
    }

    pub fn client(&self) -> &AsyncClient {
        &self.client
    }

    /// Acknowledge a QoS 1 message (manual acknowledgements): never lost, only delayed while
    /// the request channel is full.
    pub fn ack(&mut self, publish: &Publish) {
        // The acknowledgement needs the packet id and QoS, not the payload.
        let mut header = Publish::new(publish.topic.clone(), publish.qos, Vec::new());
        header.pkid = publish.pkid;
        self.outbox.push_back(Pending::Ack(header));
        self.flush();
    }

    /// Publish at QoS 1 (queued while the channel is full).
    /// Publish at QoS 1.
    pub fn publish(&mut self, topic: &str, payload: Vec<u8>) {
        self.outbox
            .push_back(Pending::Publish(topic.to_string(), payload, false));
        self.flush();
    }

    /// Publish at QoS 1, retained (the broker keeps it for later subscribers).
    #[cfg(feature = "backend")]
    pub(crate) fn publish_retained(&mut self, topic: &str, payload: Vec<u8>) {
        self.outbox
            .push_back(Pending::Publish(topic.to_string(), payload, true));
        self.flush();
    }

    pub fn subscribe(&mut self, filter: &str, qos: QoS) {
        self.outbox
            .push_back(Pending::Subscribe(filter.to_string(), qos));
        self.flush();
    }

    /// Requests still waiting for room in the channel.
    pub(crate) fn outbox_len(&self) -> usize {
        self.outbox.len()
    }

    /// Move what fits from the outbox into rumqttc's channel, in order.
    pub fn flush(&mut self) {
        while let Some(next) = self.outbox.front() {
            let sent = match next {
                Pending::Ack(p) => self.client.try_ack(p),
                Pending::Subscribe(f, qos) => self.client.try_subscribe(f.clone(), *qos),
                Pending::Publish(topic, payload, retain) => self.client.try_publish(
                    topic.clone(),
                    QoS::AtLeastOnce,
                    *retain,
                    payload.clone(),
                ),
            };
            match sent {
                Ok(()) => {
                    self.outbox.pop_front();
                }
                Err(ClientError::TryRequest(_)) | Err(ClientError::Request(_)) => return,
            }
        }
    }

    /// Send DISCONNECT once the outbox is empty, and give it `grace` to go out.
    pub async fn close(mut self, grace: Duration) {
        let _ = tokio::time::timeout(grace, async {
            while self.outbox_len() > 0 {
                if self.next().await.is_err() {
                    return;
                }
            }
            if self.client.try_disconnect().is_ok() {
                // The driver ends when the broker closes the connection.
                while self.next().await.is_ok() {}
            }
        })
        .await;
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

/// Delay between connection attempts: exponential from `min` to `max`, with jitter so that a
/// fleet that lost its broker at the same moment does not come back at the same moment.
/// "Equal jitter": half of each step is fixed, half random, so the attempts stay spaced out
/// (at most about log2(max/min) + t/max attempts in t).
///
/// A connection counts as a success only once it has stayed up for [`STABLE`]: one the broker
/// closes sooner after accepting it — most often because another client connected with the
/// same client id and took the session — keeps the delay growing, so two such clients do not
/// take the session from each other every second ([`Backoff::taken_over`] says when to
/// suspect it).
#[derive(Clone, Debug)]
pub struct Backoff {
    step: Duration,
    min: Duration,
    max: Duration,
    /// When the broker last accepted a connection (None: not since the last failure).
    up_since: Option<Instant>,
    /// Connections in a row the broker closed within [`STABLE`] of accepting them.
    short: u32,
}

/// A connection up this long was a success: the next failure starts the delays over.
pub const STABLE: Duration = Duration::from_secs(10);

/// Short connections in a row before [`Backoff::taken_over`] says so.
const TAKEOVER_AFTER: u32 = 3;

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Self {
        Self {
            step: min,
            min,
            max,
            up_since: None,
            short: 0,
        }
    }

    /// The delay before the next attempt, given a uniform random `unit` in [0, 1) and the
    /// time the connection ended; the step then doubles, up to the cap.
    pub(crate) fn next_delay_with(&mut self, unit: f64, now: Instant) -> Duration {
        match self.up_since.take() {
            Some(up) if now.duration_since(up) >= STABLE => {
                self.step = self.min;
                self.short = 0;
            }
            Some(_) => self.short += 1,
            None => {}
        }
        let half = self.step / 2;
        let delay = half + half.mul_f64(unit.clamp(0.0, 1.0));
        self.step = (self.step * 2).min(self.max);
        delay
    }

    pub fn next_delay(&mut self) -> Duration {
        self.next_delay_with(rand::random::<f64>(), Instant::now())
    }

    /// The broker accepted the connection (CONNACK).
    pub fn connected(&mut self) {
        self.connected_at(Instant::now());
    }

    pub(crate) fn connected_at(&mut self, now: Instant) {
        self.up_since = Some(now);
    }

    /// Connections in a row the broker closed soon after accepting them, once that suggests
    /// another client with the same id (else None).
    pub fn taken_over(&self) -> Option<u32> {
        (self.short >= TAKEOVER_AFTER).then_some(self.short)
    }
}

impl Default for Backoff {
    /// 1 s doubling to 30 s.
    fn default() -> Self {
        Self::new(Duration::from_secs(1), Duration::from_secs(30))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_up_to_the_cap() {
        let now = Instant::now();
        let mut b = Backoff::default();
        let low: Vec<f64> = (0..8)
            .map(|_| b.next_delay_with(0.0, now).as_secs_f64())
            .collect();
        assert_eq!(low, [0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 15.0, 15.0]);
        // A connection that stayed up starts the delays over.
        b.connected_at(now);
        let later = now + STABLE;
        assert_eq!(b.next_delay_with(0.0, later).as_secs_f64(), 0.5);
        let high: Vec<f64> = (0..6)
            .map(|_| b.next_delay_with(0.999_999, later).as_secs_f64().round())
            .collect();
        assert_eq!(high, [2.0, 4.0, 8.0, 16.0, 30.0, 30.0]);
        // Attempts in 30 s of outage, even with the shortest delays: the first, then 5 more.
        let mut b = Backoff::default();
        let (mut t, mut attempts) = (Duration::ZERO, 1);
        loop {
            t += b.next_delay_with(0.0, now);
            if t > Duration::from_secs(30) {
                break;
            }
            attempts += 1;
        }
        assert_eq!(attempts, 6);
        // Random delays stay within their step's half-open band.
        let mut b = Backoff::default();
        for step in [1.0, 2.0, 4.0] {
            let d = b.next_delay().as_secs_f64();
            assert!(d >= step / 2.0 && d <= step, "{d} for step {step}");
        }
    }

    #[test]
    fn connections_closed_right_after_they_are_accepted_keep_the_delay_growing() {
        let t0 = Instant::now();
        let mut b = Backoff::default();
        let mut delays = Vec::new();
        let mut now = t0;
        for _ in 0..5 {
            b.connected_at(now);
            // Taken over 100 ms after the CONNACK.
            now += Duration::from_millis(100);
            let d = b.next_delay_with(0.0, now);
            delays.push(d.as_secs_f64());
            now += d;
        }
        assert_eq!(delays, [0.5, 1.0, 2.0, 4.0, 8.0]);
        assert_eq!(b.taken_over(), Some(5));
        // A failure to connect at all is not a takeover, and does not clear the count.
        b.next_delay_with(0.0, now);
        assert_eq!(b.taken_over(), Some(5));
        b.connected_at(now);
        b.next_delay_with(0.0, now + STABLE);
        assert_eq!(b.taken_over(), None);
    }
}
