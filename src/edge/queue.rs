//! The bounded queue between the acquisition thread and the scheduler.
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
pub enum Pop<T> {
    Item(T),
    /// Nothing within the timeout.
    Empty,
    /// Closed and drained: no item will ever come.
    Closed,
}

pub struct BoundedQueue<T> {
    capacity: usize,
    policy: QueuePolicy,
    state: Mutex<(VecDeque<T>, bool, u64)>, // items, closed, dropped
    changed: Condvar,
}

impl<T> BoundedQueue<T> {
    pub fn new(capacity: usize, policy: QueuePolicy) -> Self {
        Self {
            capacity: capacity.max(1),
            policy,
            state: Mutex::new((VecDeque::new(), false, 0)),
            changed: Condvar::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (VecDeque<T>, bool, u64)> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Enqueue per the policy; false once the queue is closed.
    pub fn push(&self, item: T) -> bool {
        let mut st = self.lock();
        loop {
            if st.1 {
                return false;
            }
            if st.0.len() < self.capacity {
                break;
            }
            match self.policy {
                QueuePolicy::DropOldest => {
                    st.0.pop_front();
                    st.2 += 1;
                    break;
                }
                QueuePolicy::Block => st = self.changed.wait(st).unwrap_or_else(|p| p.into_inner()),
            }
        }
        st.0.push_back(item);
        self.changed.notify_all();
        true
    }

    /// The next item, waiting at most `timeout`.
    pub fn pop(&self, timeout: Duration) -> Pop<T> {
        let mut st = self.lock();
        if st.0.is_empty() && !st.1 {
            st = self
                .changed
                .wait_timeout(st, timeout)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        match st.0.pop_front() {
            Some(item) => {
                self.changed.notify_all();
                Pop::Item(item)
            }
            None if st.1 => Pop::Closed,
            None => Pop::Empty,
        }
    }

    /// No more items will come (end of input).
    pub fn close(&self) {
        self.lock().1 = true;
        self.changed.notify_all();
    }

    pub fn dropped(&self) -> u64 {
        self.lock().2
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drop_oldest_keeps_the_newest() {
        let q = BoundedQueue::new(2, QueuePolicy::DropOldest);
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
        let q = std::sync::Arc::new(BoundedQueue::new(1, QueuePolicy::Block));
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
}
