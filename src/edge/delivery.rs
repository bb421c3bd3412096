//! The publisher's bookkeeping, without I/O (as rumqttc's `MqttState`): which spooled results
//! are in flight to the broker under which packet id, which wait for the backend's
//! end-to-end acknowledgement, where to continue in the spool, and when to send again.
//!
//! The caller reads and removes spool entries and talks to rumqttc; this only decides.
//!
//! - rumqttc numbers publishes in request order (`Outgoing::Publish(pkid)`), so the oldest
//!   unnumbered publish gets the next packet id; a fresh client per connection keeps the two
//!   sequences aligned.
//! - [`Release::OnBrokerAck`]: a result leaves the spool at the broker's PUBACK (the broker
//!   is trusted to deliver).
//! - [`Release::EndToEnd`]: the PUBACK only frees a slot of the broker window; the result
//!   leaves the spool when the backend acknowledges it. At most `backend_window` results wait
//!   for that at once (flow control: a slow backend slows the boards instead of overflowing
//!   the broker's queue); when none comes for `timeout`, everything unacknowledged is sent
//!   again, the wait doubling (up to 16×) until an acknowledgement arrives.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

/// When a result may leave the spool.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Release {
    OnBrokerAck,
    EndToEnd {
        backend_window: usize,
        timeout: Duration,
    },
}

pub(crate) struct Delivery {
    release: Release,
    broker_window: usize,
    /// Published, awaiting the broker's PUBACK: (seq, packet id once rumqttc assigned it).
    to_broker: VecDeque<(u64, Option<u16>)>,
    /// Published, awaiting the backend (end to end): seq → when it was (last) sent.
    to_backend: BTreeMap<u64, Instant>,
    /// The spool is walked in order; publishing continues after this.
    last_sent: Option<u64>,
    /// Consecutive resends without an acknowledgement in between.
    resends: u32,
    last_progress: Option<Instant>,
}

impl Delivery {
    pub fn new(release: Release, broker_window: usize) -> Self {
        Self {
            release,
            broker_window: broker_window.max(1),
            to_broker: VecDeque::new(),
            to_backend: BTreeMap::new(),
            last_sent: None,
            resends: 0,
            last_progress: None,
        }
    }

    /// A new connection: nothing is in flight any more, and the spool is sent again from its
    /// oldest entry.
    #[cfg(test)]
    pub(crate) fn reconnected(&mut self) {
        self.to_broker.clear();
        self.to_backend.clear();
        self.last_sent = None;
    }

    /// Publishing continues with the spool entries after this one.
    pub(crate) fn resume_after(&self) -> Option<u64> {
        self.last_sent
    }

    /// How many more results may be published now.
    pub(crate) fn room(&self) -> usize {
        let broker = self.broker_window.saturating_sub(self.to_broker.len());
        match self.release {
            Release::OnBrokerAck => broker,
            Release::EndToEnd { backend_window, .. } => {
                broker.min(backend_window.saturating_sub(self.to_backend.len()))
            }
        }
    }

    /// `seq` was handed to rumqttc.
    pub fn sent(&mut self, seq: u64, now: Instant) {
        self.to_broker.push_back((seq, None));
        if matches!(self.release, Release::EndToEnd { .. }) {
            self.to_backend.insert(seq, now);
        }
        self.last_sent = Some(seq);
    }

    /// `seq` could not be read from the spool: skip it.
    pub(crate) fn skipped(&mut self, seq: u64) {
        self.last_sent = Some(seq);
    }

    /// rumqttc wrote a publish with this packet id.
    pub(crate) fn numbered(&mut self, pkid: u16) {
        if let Some(entry) = self.to_broker.iter_mut().find(|e| e.1.is_none()) {
            entry.1 = Some(pkid);
        }
    }

    /// The broker acknowledged `pkid`; returns the result that may now leave the spool, if any.
    pub(crate) fn broker_acked(&mut self, pkid: u16) -> Option<u64> {
        let i = self.to_broker.iter().position(|e| e.1 == Some(pkid))?;
        let (seq, _) = self.to_broker.remove(i)?;
        match self.release {
            Release::OnBrokerAck => Some(seq),
            Release::EndToEnd { .. } => None,
        }
    }

    /// The backend acknowledged `seq`: it may leave the spool (whether or not it was sent on
    /// this connection).
    pub(crate) fn backend_acked(&mut self, seq: u64, now: Instant) {
        if self.to_backend.remove(&seq).is_some() {
            self.resends = 0;
            self.last_progress = Some(now);
        }
    }

    /// Whether it is time to send the unacknowledged results again; if so, publishing starts
    /// over from the oldest spooled result.
    pub(crate) fn resend_due(&mut self, now: Instant) -> bool {
        let Release::EndToEnd { timeout, .. } = self.release else {
            return false;
        };
        let Some(oldest) = self.to_backend.values().min().copied() else {
            return false;
        };
        let wait = timeout * 2u32.pow(self.resends.min(4));
        let since = self.last_progress.map_or(oldest, |p| p.max(oldest));
        if now.duration_since(since) < wait {
            return false;
        }
        self.resends += 1;
        self.to_backend.clear();
        self.last_sent = None;
        self.last_progress = Some(now);
        true
    }

    /// Nothing in flight and nothing awaiting an acknowledgement.
    pub(crate) fn is_idle(&self) -> bool {
        self.to_broker.is_empty() && self.to_backend.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(ms: u64) -> Instant {
        // A fixed origin keeps the arithmetic readable.
        static ORIGIN: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
        *ORIGIN.get_or_init(Instant::now) + Duration::from_millis(ms)
    }

    #[test]
    fn packet_ids_follow_request_order_and_acks_release_out_of_order() {
        let mut d = Delivery::new(Release::OnBrokerAck, 3);
        assert_eq!(d.room(), 3);
        for seq in [10, 11, 12] {
            d.sent(seq, t(0));
        }
        assert_eq!((d.room(), d.resume_after()), (0, Some(12)));
        d.numbered(7);
        d.numbered(8);
        // 12 is not numbered yet: its ack cannot be recognised, and unknown ids are ignored.
        assert_eq!(d.broker_acked(9), None);
        assert_eq!(d.broker_acked(8), Some(11));
        assert_eq!(d.broker_acked(8), None, "an id is released once");
        d.numbered(9);
        assert_eq!(d.broker_acked(9), Some(12));
        assert_eq!(d.broker_acked(7), Some(10));
        assert!(d.is_idle());
        assert_eq!(d.room(), 3);
    }

    #[test]
    fn a_reconnect_starts_over_from_the_oldest_spooled_result() {
        let mut d = Delivery::new(Release::OnBrokerAck, 4);
        d.sent(1, t(0));
        d.sent(2, t(0));
        d.numbered(1);
        d.reconnected();
        assert_eq!((d.resume_after(), d.room()), (None, 4));
        assert!(d.is_idle());
        // The new client numbers from scratch.
        d.sent(1, t(0));
        d.numbered(1);
        assert_eq!(d.broker_acked(1), Some(1));
        d.skipped(2);
        assert_eq!(d.resume_after(), Some(2));
    }

    #[test]
    fn end_to_end_waits_for_the_backend_within_its_window() {
        let release = Release::EndToEnd {
            backend_window: 2,
            timeout: Duration::from_secs(10),
        };
        let mut d = Delivery::new(release, 16);
        d.sent(1, t(0));
        d.sent(2, t(0));
        assert_eq!(d.room(), 0, "the backend window is full");
        d.numbered(1);
        d.numbered(2);
        assert_eq!(
            d.broker_acked(1),
            None,
            "the broker's ack does not release it"
        );
        assert_eq!(d.broker_acked(2), None);
        assert_eq!(d.room(), 0);
        assert!(!d.is_idle());
        d.backend_acked(1, t(100));
        assert_eq!(d.room(), 1);
        d.backend_acked(2, t(100));
        d.backend_acked(2, t(100)); // again: harmless
        assert!(d.is_idle());
        assert_eq!(d.resume_after(), Some(2));
    }

    #[test]
    fn unacknowledged_results_are_sent_again_with_a_growing_wait() {
        let release = Release::EndToEnd {
            backend_window: 8,
            timeout: Duration::from_secs(10),
        };
        let mut d = Delivery::new(release, 16);
        assert!(!d.resend_due(t(1_000_000)), "nothing sent, nothing due");
        d.sent(1, t(0));
        d.sent(2, t(0));
        assert!(!d.resend_due(t(9_999)));
        assert!(d.resend_due(t(10_000)));
        assert_eq!((d.resume_after(), d.room()), (None, 8));
        d.sent(1, t(10_000));
        d.sent(2, t(10_000));
        // Second round: twice the wait.
        assert!(!d.resend_due(t(29_999)));
        assert!(d.resend_due(t(30_000)));
        d.sent(1, t(30_000));
        // An acknowledgement resets the wait.
        d.backend_acked(1, t(31_000));
        d.sent(2, t(31_000));
        assert!(!d.resend_due(t(40_999)));
        assert!(d.resend_due(t(41_000)));
        // Releases on the broker's ack never resend.
        let mut b = Delivery::new(Release::OnBrokerAck, 4);
        b.sent(1, t(0));
        assert!(!b.resend_due(t(1_000_000)));
    }
}
