//! The systemd watchdog: fed at half of WatchdogSec while the scheduler is responsive — idle
//! and going round its loop, or inside an inference younger than `watchdog_max_inference_s`.

use super::error::EdgeError;
use super::notify::Notifier;
use super::shutdown::Shutdown;
use crate::files::IoError;
use crate::transport::message::now_ms;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// What the watchdog looks at: when the scheduler last went round its loop, and since when it
/// has been inside an inference (0: it is not).
#[derive(Default)]
pub struct Heartbeat {
    beat_ms: AtomicU64,
    busy_since_ms: AtomicU64,
}

impl Heartbeat {
    pub(crate) fn beat(&self) {
        self.beat_ms.store(now_ms(), Ordering::Relaxed);
    }

    pub(crate) fn busy(&self, busy: bool) {
        self.busy_since_ms
            .store(if busy { now_ms() } else { 0 }, Ordering::Relaxed);
    }

    fn alive(&self, max_inference: Duration) -> bool {
        let now = now_ms();
        match self.busy_since_ms.load(Ordering::Relaxed) {
            0 => now.saturating_sub(self.beat_ms.load(Ordering::Relaxed)) < 30_000,
            since => now.saturating_sub(since) < max_inference.as_millis() as u64,
        }
    }
}

/// Start feeding the watchdog if systemd asked for one.
pub fn start(
    notifier: Arc<Notifier>,
    heartbeat: Arc<Heartbeat>,
    shutdown: Arc<Shutdown>,
    max_inference: Duration,
) -> Result<(), EdgeError> {
    let Some(interval) = Notifier::watchdog_interval() else {
        return Ok(());
    };
    heartbeat.beat();
    std::thread::Builder::new()
        .name("watchdog".into())
        .spawn(move || loop {
            if heartbeat.alive(max_inference) || shutdown.stopping() {
                notifier.send("WATCHDOG=1");
            } else {
                log::error!("scheduler unresponsive: no longer feeding the watchdog");
            }
            std::thread::sleep(interval);
        })
        .map_err(|e| IoError::new("watchdog thread", e))?;
    Ok(())
}
