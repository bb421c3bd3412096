//! The bounded queue between the acquisition thread and the scheduler.
//!
//! Bounded twice: by item count (`queue_capacity`) and by the bytes the items hold
//! (`queue_max_bytes`) — one encrypted-feature frame of a full classifier holds hundreds of MB,
//! so a count alone does not bound memory. One item is always admitted into an empty queue
//! (its size is already bounded by `max_frame_bytes`).
//!
//! Policy when full (config `queue_policy`):
//! - `block`: the source waits (back-pressure: nothing is lost, the sensor side slows down);
//! - `drop-oldest`: the oldest queued vector is discarded and counted (freshness first).

use serde::Deserialize;
use std::collections::VecDeque;
use std::sync::{Condvar, Mutex};
use std::time::Duration;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum QueuePolicy {
    #[default]
    Block,
    DropOldest,
}

/// What [`BoundedQueue::pop`] found.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Pop<T> {
    Item(T),
    /// Nothing within the timeout.
    Empty,
    /// Closed and drained: no item will ever come.
    Closed,
}

/// What an item costs in memory, for the byte bound.
pub trait Weighed {
    fn weight(&self) -> usize;
}

impl Weighed for crate::transport::frame::Input {
    fn weight(&self) -> usize {
        crate::transport::frame::Input::weight(self)
    }
}

struct State<T> {
    items: VecDeque<(T, usize)>,
    bytes: usize,
    closed: bool,
    dropped: u64,
}

impl<T> State<T> {
    fn has_room_for(&self, bytes: usize, capacity: usize, max_bytes: usize) -> bool {
        self.items.is_empty()
            || (self.items.len() < capacity && self.bytes.saturating_add(bytes) <= max_bytes)
    }

    fn pop_front(&mut self) -> Option<T> {
        let (item, bytes) = self.items.pop_front()?;
        self.bytes -= bytes;
        Some(item)
    }
}

pub struct BoundedQueue<T> {
    capacity: usize,
    max_bytes: usize,
    policy: QueuePolicy,
    state: Mutex<State<T>>,
    changed: Condvar,
}

impl<T: Weighed> BoundedQueue<T> {
    pub fn new(capacity: usize, max_bytes: usize, policy: QueuePolicy) -> Self {
        Self {
            capacity: capacity.max(1),
            max_bytes,
            policy,
            state: Mutex::new(State {
                items: VecDeque::new(),
                bytes: 0,
                closed: false,
                dropped: 0,
            }),
            changed: Condvar::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State<T>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Enqueue per the policy; false once the queue is closed.
    pub fn push(&self, item: T) -> bool {
        let bytes = item.weight();
        let mut st = self.lock();
        loop {
            if st.closed {
                return false;
            }
            if st.has_room_for(bytes, self.capacity, self.max_bytes) {
                break;
            }
            match self.policy {
                QueuePolicy::DropOldest => {
                    st.pop_front();
                    st.dropped += 1;
                }
                QueuePolicy::Block => st = self.changed.wait(st).unwrap_or_else(|p| p.into_inner()),
            }
        }
        st.items.push_back((item, bytes));
        st.bytes += bytes;
        self.changed.notify_all();
        true
    }

    /// The next item, waiting at most `timeout`.
    pub(crate) fn pop(&self, timeout: Duration) -> Pop<T> {
        let mut st = self.lock();
        if st.items.is_empty() && !st.closed {
            st = self
                .changed
                .wait_timeout(st, timeout)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        match st.pop_front() {
            Some(item) => {
                self.changed.notify_all();
                Pop::Item(item)
            }
            None if st.closed => Pop::Closed,
            None => Pop::Empty,
        }
    }

    /// No more items will come (end of input).
    pub fn close(&self) {
        self.lock().closed = true;
        self.changed.notify_all();
    }

    pub fn dropped(&self) -> u64 {
        self.lock().dropped
    }

    /// Items waiting.
    pub fn len(&self) -> usize {
        self.lock().items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A test item that weighs its own value in bytes.
    impl Weighed for usize {
        fn weight(&self) -> usize {
            *self
        }
    }

    #[test]
    fn drop_oldest_keeps_the_newest() {
        let q = BoundedQueue::new(2, usize::MAX, QueuePolicy::DropOldest);
        for i in 0..5 {
            assert!(q.push(i));
        }
        assert_eq!(q.dropped(), 3);
        assert_eq!(q.pop(Duration::ZERO), Pop::Item(3));
        assert_eq!(q.pop(Duration::ZERO), Pop::Item(4));
        q.close();
        assert_eq!(q.pop(Duration::ZERO), Pop::Closed);
    }

    #[test]
    fn block_waits_for_room() {
        let q = std::sync::Arc::new(BoundedQueue::new(1, usize::MAX, QueuePolicy::Block));
        q.push(1);
        let q2 = q.clone();
        let t = std::thread::spawn(move || q2.push(2));
        std::thread::sleep(Duration::from_millis(50));
        assert!(!t.is_finished());
        assert_eq!(q.pop(Duration::ZERO), Pop::Item(1));
        assert!(t.join().unwrap());
        assert_eq!(q.pop(Duration::ZERO), Pop::Item(2));
        assert_eq!(q.dropped(), 0);
    }

    #[test]
    fn the_byte_bound_holds_but_admits_one_big_item() {
        let q = BoundedQueue::new(100, 10, QueuePolicy::DropOldest);
        assert!(q.push(4));
        assert!(q.push(5));
        assert!(q.push(3)); // 12 > 10: the 4 goes
        assert_eq!(q.dropped(), 1);
        assert!(q.push(50)); // alone over the bound: everything else goes, it stays
        assert_eq!(q.dropped(), 3);
        assert_eq!(q.pop(Duration::ZERO), Pop::Item(50));
        assert_eq!(q.pop(Duration::ZERO), Pop::Empty);

        let q = std::sync::Arc::new(BoundedQueue::new(100, 10, QueuePolicy::Block));
        q.push(8);
        let q2 = q.clone();
        let t = std::thread::spawn(move || q2.push(3));
        std::thread::sleep(Duration::from_millis(50));
        assert!(
            !t.is_finished(),
            "8 + 3 bytes must wait under a 10-byte bound"
        );
        assert_eq!(q.pop(Duration::ZERO), Pop::Item(8));
        assert!(t.join().unwrap());
        assert_eq!(q.pop(Duration::ZERO), Pop::Item(3));
    }
}
