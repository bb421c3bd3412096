//! The edge daemon, `hedged` (untrusted side: it holds only the bundle's public material).
//!
//! - [`settings`]: the configuration resolved once, typed, with what a reload may change;
//! - [`source`] and [`queue`]: the data-stream acquisition thread and its bounded queue;
//! - [`inference`] and [`scheduler`]: one encrypted inference at a time;
//! - [`sink`], [`spool`], [`publisher`] and [`delivery`]: results (signed with the board's
//!   [`identity`]) to files, or store and forward to the broker until the backend
//!   acknowledges them;
//! - [`reload`], [`watchdog`], [`notify`] and [`shutdown`]: SIGHUP, systemd and signals;
//! - [`state`]: the state directory's lock and the anti-rollback epoch.
//!
//! [`run`] wires them: SIGTERM/SIGINT stop taking input, finish the inference in flight, give
//! the broker 10 s to take what is spooled (the rest stays spooled for the next start) and
//! return. systemd (Type=notify): READY=1 once the bundle is loaded and the source is open,
//! STATUS= lines, WATCHDOG=1 while the scheduler is responsive, STOPPING=1 on a stop signal.

pub mod delivery;
pub mod error;
pub mod health;
pub mod identity;
pub mod inference;
pub mod notify;
pub mod publisher;
pub mod queue;
pub mod reload;
pub mod scheduler;
pub mod sequence;
pub mod settings;
pub mod shutdown;
pub mod sink;
pub mod source;
pub mod spool;
pub mod state;
pub mod watchdog;

pub use error::EdgeError;
pub use scheduler::Summary;

use inference::Inference;
use notify::Notifier;
use queue::BoundedQueue;
use reload::{Reload, Reloader};
use scheduler::Scheduler;
use settings::Settings;
use shutdown::Shutdown;
use sink::Sink;
use source::Rejects;
use state::State;
use std::sync::Arc;
use watchdog::Heartbeat;

/// Run hedged until its input ends or a stop signal.
pub fn run(settings: Settings, reloader: Reloader) -> Result<Summary, EdgeError> {
    let notifier = Arc::new(Notifier::from_env());
    let shutdown = Shutdown::from_signals()?;
    let start = &settings.start_up;
    let state = Arc::new(State::open(&start.state_dir)?);
    let inference = Inference::load(&settings.reloadable, &state)?;
    state.accept_epoch(inference.epoch)?;
    log::info!("device {}: {}", start.device_id, inference.describe());
    let queue = Arc::new(BoundedQueue::new(
        start.queue.capacity,
        start.queue.max_bytes,
        start.queue.policy,
    ));
    let rejects = Arc::new(Rejects::default());
    rejects.expect_line_width(inference.line_width());
    let health = Arc::new(health::Health::new(
        &start.device_id,
        (&inference.bundle_id, inference.epoch),
        queue.clone(),
        rejects.clone(),
    ));
    let sink = Sink::open(&settings, health.clone())?;
    let _acquisition = source::start(
        &start.input,
        queue.clone(),
        rejects.clone(),
        start.max_frame_bytes,
    )?;
    let heartbeat = Arc::new(Heartbeat::default());
    watchdog::start(
        notifier.clone(),
        heartbeat.clone(),
        shutdown.clone(),
        start.watchdog_max_inference,
    )?;
    notifier.send(&format!("READY=1\nSTATUS=running {}", inference.describe()));
    Scheduler {
        settings,
        inference,
        queue,
        rejects,
        sink,
        health,
        reload: Reload::new(reloader, state),
        shutdown,
        heartbeat,
        notifier,
    }
    .run()
}
