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
pub mod deploy;
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

use deploy::installed::{BundleRef, Installed};
use deploy::Deployments;
use inference::Inference;
use notify::Notifier;
use queue::BoundedQueue;
use reload::{Reload, Reloader};
use scheduler::{Probation, Scheduler};
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
    let (inference, previous) = load_running(&settings, &state)?;
    if previous.is_none() {
        state.accept_epoch(inference.epoch)?;
    }
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
    let deployments = Arc::new(Deployments::new(
        &start.device_id,
        state.clone(),
        health.clone(),
    ));
    let sink = Sink::open(&settings, health.clone(), deployments.clone())?;
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
    let rollback_after = match &start.sink {
        settings::SinkSettings::Broker { mqtt, .. } => mqtt.rollback_after_failures.max(1),
        settings::SinkSettings::Files { .. } => 1,
    };
    notifier.send(&format!("READY=1\nSTATUS=running {}", inference.describe()));
    Scheduler {
        settings,
        inference,
        queue,
        rejects,
        sink,
        health,
        reload: Reload::new(reloader, state, deployments.clone()),
        rollback_after,
        probation: previous.map(|(deployment, previous)| Probation {
            deployment,
            previous: Box::new(previous),
            rejected_before: 0,
        }),
        deployments,
        shutdown,
        heartbeat,
        notifier,
    }
    .run()
}

/// The bundle to run: the deployed one if installed (with the one it replaced, while it has
/// not yet inferred), else — or if the deployed one no longer loads — the configured one.
#[allow(clippy::type_complexity)]
fn load_running(
    settings: &Settings,
    state: &State,
) -> Result<(Inference, Option<(u64, Inference)>), EdgeError> {
    let configured = &settings.reloadable.bundle;
    let installed = Installed::new(state.dir());
    let Some(active) = installed.active() else {
        return Ok((
            Inference::load(
                &BundleRef::configured(configured),
                &settings.reloadable,
                state,
            )?,
            None,
        ));
    };
    let deployed = match Inference::load(&active.bundle, &settings.reloadable, state) {
        Ok(i) => i,
        Err(e) => {
            log::error!(
                "the deployed bundle does not load ({e}); running the configured {}",
                configured.display()
            );
            let configured = BundleRef::configured(configured);
            let _ = installed.roll_back(&configured);
            return Ok((
                Inference::load(&configured, &settings.reloadable, state)?,
                None,
            ));
        }
    };
    log::info!(
        "running deployed bundle {} (deployment {}) instead of the configured {}",
        deployed.bundle_id,
        active.bundle.deployment.unwrap_or(0),
        configured.display()
    );
    // Restarted before the new bundle inferred: it is still on probation.
    let previous = match (
        active.confirmed,
        installed.previous(),
        active.bundle.deployment,
    ) {
        (false, Some(p), Some(deployment)) => Inference::load(&p, &settings.reloadable, state)
            .map_err(|e| log::warn!("the previous bundle does not load ({e}): no rollback"))
            .ok()
            .map(|p| (deployment, p)),
        _ => None,
    };
    Ok((deployed, previous))
}
