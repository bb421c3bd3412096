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
pub mod trust;
pub mod watchdog;

pub use error::EdgeError;
pub use scheduler::Summary;

use deploy::installed::{BundleRef, Installed};
use deploy::rollout::Rollout;
use deploy::Deployments;
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
use trust::TrustAnchor;
use watchdog::Heartbeat;

/// Run hedged until its input ends or a stop signal.
pub fn run(settings: Settings, reloader: Reloader) -> Result<Summary, EdgeError> {
    let notifier = Arc::new(Notifier::from_env());
    let shutdown = Shutdown::from_signals()?;
    let start = &settings.start_up;
    let state = Arc::new(State::open(&start.state_dir)?);
    let trust = TrustAnchor::new(TrustAnchor::read(&settings.reloadable.verifying_key)?);
    let Running {
        inference,
        probation: previous,
        rolled_back,
    } = load_running(&settings, &trust, &state)?;
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
    let mut rollout = Rollout::new(match &start.sink {
        settings::SinkSettings::Broker { mqtt, .. } => mqtt.rollback_after_failures,
        settings::SinkSettings::Files { .. } => 1,
    });
    if let Some((deployment, previous)) = previous {
        rollout.resume(deployment, previous);
    }
    if let Some((deployment, why)) = rolled_back {
        rollout.rolled_back_at_start(deployment, why);
    }
    let sink = Sink::open(&settings, health.clone(), deployments.clone(), &trust)?;
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
        reload: Reload::new(reloader, state, deployments.clone(), trust),
        rollout,
        deployments,
        shutdown,
        heartbeat,
        notifier,
    }
    .run()
}

/// The bundle to run: the deployed one if installed (with the one it replaced, while it has
/// not yet inferred), else the configured one. A deployed bundle that no longer loads, or that
/// keeps the daemon from getting to its first result, gives way to the previous bundle, else to
/// the configured one.
fn load_running(
    settings: &Settings,
    trust: &TrustAnchor,
    state: &State,
) -> Result<Running, EdgeError> {
    let configured = BundleRef::configured(&settings.reloadable.bundle);
    let installed = Installed::new(state.dir());
    let trusted = trust.key();
    let load = |r: &BundleRef| Inference::load(r, &trusted, &settings.reloadable, state);
    let Some(active) = installed.active() else {
        return Ok(Running {
            inference: load(&configured)?,
            probation: None,
            rolled_back: None,
        });
    };
    let fall_back = |why: String| -> Result<Running, EdgeError> {
        log::error!(
            "the deployed bundle {}: {why}",
            active.bundle.file.display()
        );
        for candidate in installed.previous().into_iter().chain([configured.clone()]) {
            match load(&candidate) {
                Ok(running) => {
                    installed.roll_back(&candidate)?;
                    log::warn!("running {} instead", running.describe());
                    let rolled_back = active.bundle.deployment.map(|d| (d, why.clone()));
                    return Ok(Running {
                        inference: running,
                        probation: None,
                        rolled_back,
                    });
                }
                Err(e) => log::error!("{}: {e}", candidate.file.display()),
            }
        }
        Err(EdgeError::Settings(format!(
            "no bundle loads (the deployed one: {why})"
        )))
    };
    if !active.confirmed {
        let starts = installed.count_start()?;
        if Rollout::<Inference>::gives_up_at_start(starts) {
            return fall_back(format!(
                "{} starts without a first result: rolled back",
                starts - 1
            ));
        }
    }
    let deployed = match load(&active.bundle) {
        Ok(i) => i,
        Err(e) => return fall_back(format!("does not load ({e})")),
    };
    log::info!(
        "running deployed bundle {} (deployment {}) instead of the configured {}",
        deployed.bundle_id,
        active.bundle.deployment.unwrap_or(0),
        configured.file.display()
    );
    // Restarted before the new bundle inferred: it is still on probation.
    let previous = match (
        active.confirmed,
        installed.previous(),
        active.bundle.deployment,
    ) {
        (false, Some(p), Some(deployment)) => load(&p)
            .map_err(|e| log::warn!("the previous bundle does not load ({e}): no rollback"))
            .ok()
            .map(|p| (deployment, p)),
        _ => None,
    };
    Ok(Running {
        inference: deployed,
        probation: previous,
        rolled_back: None,
    })
}

/// What hedged starts with.
struct Running {
    inference: Inference,
    /// A deployed bundle not yet proven: its deployment and the bundle it replaced.
    probation: Option<(u64, Inference)>,
    /// A deployment rolled back at start-up, and why (reported once connected).
    rolled_back: Option<(u64, String)>,
}
