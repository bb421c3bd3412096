//! The board's health as any MQTT tool sees it: a retained status on `hedge/<device>/status`
//! (online with version, bundle, epoch and start time; offline through the broker's last will
//! when the board vanishes, or from the board itself on a clean stop) and periodic metrics on
//! `hedge/<device>/metrics`. Plain JSON, unsigned: it is advisory (the backend's registry
//! records it for `hedge fleet`; results carry their own signatures).

use super::queue::BoundedQueue;
use super::source::Rejects;
use super::spool::Spool;
use crate::transport::frame::Input;
use crate::transport::message::now_ms;
use serde_json::json;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What the scheduler and the acquisition report, read by the publisher.
pub struct Health {
    device: String,
    started_ms: u64,
    /// The running bundle: its id and epoch.
    bundle: Mutex<(String, u64)>,
    /// The status changed since the publisher last sent it (a bundle swap).
    changed: AtomicBool,
    inferences: AtomicU64,
    /// Inferences whose input had features beyond the calibrated range (clamped).
    clamped: AtomicU64,
    last_infer_us: AtomicU64,
    last_inference_ms: AtomicU64,
    queue: Arc<BoundedQueue<Input>>,
    rejects: Arc<Rejects>,
}

impl Health {
    pub fn new(
        device: &str,
        bundle: (&str, u64),
        queue: Arc<BoundedQueue<Input>>,
        rejects: Arc<Rejects>,
    ) -> Self {
        Self {
            device: device.to_string(),
            started_ms: now_ms(),
            bundle: Mutex::new((bundle.0.to_string(), bundle.1)),
            changed: AtomicBool::new(false),
            inferences: AtomicU64::new(0),
            clamped: AtomicU64::new(0),
            last_infer_us: AtomicU64::new(0),
            last_inference_ms: AtomicU64::new(0),
            queue,
            rejects,
        }
    }

    /// A new bundle took over (the status is sent again).
    pub(crate) fn bundle_changed(&self, id: &str, epoch: u64) {
        *self.bundle.lock().unwrap_or_else(|p| p.into_inner()) = (id.to_string(), epoch);
        self.changed.store(true, Ordering::Relaxed);
    }

    /// The running bundle's id.
    pub fn bundle_id(&self) -> String {
        self.bundle
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .0
            .clone()
    }

    /// One inference done, taking `took`, with `clamped` features beyond the calibrated range.
    /// Returns how many inferences had clamped features so far (this one's count if it had).
    pub(crate) fn inferred(&self, took: Duration, clamped: usize) -> Option<u64> {
        self.inferences.fetch_add(1, Ordering::Relaxed);
        let clamped = (clamped > 0).then(|| self.clamped.fetch_add(1, Ordering::Relaxed) + 1);
        self.last_infer_us
            .store(took.as_micros() as u64, Ordering::Relaxed);
        self.last_inference_ms.store(now_ms(), Ordering::Relaxed);
        clamped
    }

    /// Whether the status changed since the last call.
    pub(crate) fn take_changed(&self) -> bool {
        self.changed.swap(false, Ordering::Relaxed)
    }

    /// The retained status message: online (what runs, since when) or offline.
    pub fn status(&self, online: bool) -> Vec<u8> {
        let message = if online {
            let (bundle, epoch) = self
                .bundle
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            json!({
                "device": self.device,
                "state": "online",
                "version": env!("CARGO_PKG_VERSION"),
                "bundle": bundle,
                "epoch": epoch,
                "started_ms": self.started_ms,
                "timestamp_ms": now_ms(),
            })
        } else {
            json!({ "device": self.device, "state": "offline", "started_ms": self.started_ms })
        };
        message.to_string().into_bytes()
    }

    /// One metrics message: queue, spool, inferences (and those with clamped features),
    /// rejected inputs by kind.
    pub fn metrics(&self, spool: &Spool) -> Vec<u8> {
        json!({
            "device": self.device,
            "timestamp_ms": now_ms(),
            "uptime_s": now_ms().saturating_sub(self.started_ms) / 1000,
            "queue_depth": self.queue.len(),
            "spool_depth": spool.len(),
            "spool_bytes": spool.bytes(),
            "inferences": self.inferences.load(Ordering::Relaxed),
            "clamped_inputs": self.clamped.load(Ordering::Relaxed),
            "last_infer_ms": self.last_infer_us.load(Ordering::Relaxed) as f64 / 1e3,
            "last_inference_ms": self.last_inference_ms.load(Ordering::Relaxed),
            "rejected": self
                .rejects
                .by_kind()
                .into_iter()
                .map(|(kind, n)| (kind.name(), n))
                .collect::<std::collections::BTreeMap<_, _>>(),
        })
        .to_string()
        .into_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::edge::queue::QueuePolicy;

    #[test]
    fn status_and_metrics_say_what_runs_and_how_it_goes() {
        let dir = tempfile::tempdir().unwrap();
        let queue = Arc::new(BoundedQueue::new(4, usize::MAX, QueuePolicy::Block));
        let rejects = Arc::new(Rejects::default());
        rejects.reject(crate::input::RejectKind::Width, "a line");
        let h = Health::new("b1", ("aa", 3), queue, rejects);
        let v: serde_json::Value = serde_json::from_slice(&h.status(true)).unwrap();
        assert_eq!(
            (v["state"].as_str(), v["bundle"].as_str()),
            (Some("online"), Some("aa"))
        );
        assert_eq!(v["epoch"], 3);
        assert!(!h.take_changed());
        h.bundle_changed("bb", 4);
        assert!(h.take_changed() && !h.take_changed());
        let v: serde_json::Value = serde_json::from_slice(&h.status(true)).unwrap();
        assert_eq!(
            (v["bundle"].as_str(), v["epoch"].as_u64()),
            (Some("bb"), Some(4))
        );
        let v: serde_json::Value = serde_json::from_slice(&h.status(false)).unwrap();
        assert_eq!(v["state"], "offline");
        assert_eq!(h.inferred(Duration::from_millis(9), 0), None);
        assert_eq!(h.inferred(Duration::from_millis(8), 3), Some(1));
        assert_eq!(h.inferred(Duration::from_millis(7), 1), Some(2));
        let spool = Spool::open(dir.path(), 8, 1 << 20).unwrap();
        let m: serde_json::Value = serde_json::from_slice(&h.metrics(&spool)).unwrap();
        assert_eq!(
            (m["inferences"].as_u64(), m["clamped_inputs"].as_u64()),
            (Some(3), Some(2))
        );
        assert_eq!(m["last_infer_ms"], 7.0);
        assert_eq!(m["rejected"]["width"], 1);
        assert_eq!(m["spool_depth"], 0);
    }
}
