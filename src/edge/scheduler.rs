//! The scheduler: one encrypted inference at a time on this thread (no thread pool), from
//! the acquisition queue to the sink, switching bundles between two inferences on a reload.

use super::deploy::Deployments;
use super::error::EdgeError;
use super::inference::Inference;
use super::notify::Notifier;
use super::queue::{BoundedQueue, Pop};
use super::reload::{Applied, Reload};
use super::settings::Settings;
use super::shutdown::Shutdown;
use super::sink::Sink;
use super::source::Rejects;
use super::watchdog::Heartbeat;
use crate::transport::deploy::DeployState;
use crate::transport::frame::Input;
use crate::transport::message::{now_ms, ResultMessage};
use std::sync::Arc;
use std::time::Duration;

pub struct Scheduler {
    pub settings: Settings,
    pub inference: Inference,
    pub queue: Arc<BoundedQueue<Input>>,
    pub rejects: Arc<Rejects>,
    pub sink: Sink,
    /// The board's status and metrics, as the publisher reports them.
    pub health: Arc<super::health::Health>,
    pub reload: Reload,
    pub deployments: Arc<Deployments>,
    /// A deployed bundle whose first this-many inputs all fail is rolled back.
    pub rollback_after: u32,
    /// A deployed bundle not yet proven, with the one it replaced.
    pub probation: Option<Probation>,
    pub shutdown: Arc<Shutdown>,
    pub heartbeat: Arc<Heartbeat>,
    pub notifier: Arc<Notifier>,
}

/// A newly deployed bundle until its first inference succeeds.
pub struct Probation {
    pub deployment: u64,
    /// What a rollback returns to.
    pub previous: Box<Inference>,
    /// Inputs the source refused for their width before it took over: those refused after
    /// count against it (the bundle does not fit the data), other malformed input does not.
    pub width_rejects_before: u64,
    pub failed_inferences: u64,
}

/// How a run ended.
#[derive(Debug)]
pub struct Summary {
    pub results: u64,
    pub rejected: u64,
    pub dropped_by_queue: u64,
    pub left_in_spool: usize,
    /// Stopped by a signal (else the input ended).
    pub stopped: bool,
}

impl Scheduler {
    /// Another bundle runs now: the source's width, the status, systemd.
    fn switched(&mut self) {
        self.rejects.expect_line_width(self.inference.line_width());
        self.health
            .bundle_changed(&self.inference.bundle_id, self.inference.epoch);
        self.notifier
            .send(&format!("STATUS=running {}", self.inference.describe()));
    }

    /// A deployed bundle's first inference succeeded: it stays (the previous one is let go),
    /// and its epoch becomes the board's newest.
    fn confirm_deployment(&mut self) -> Result<(), EdgeError> {
        let Some(p) = self.probation.take() else {
            return Ok(());
        };
        self.reload.accept_epoch(self.inference.epoch)?;
        self.deployments.installed.confirm()?;
        log::info!(
            "deployment {}: bundle {} confirmed by its first inference",
            p.deployment,
            self.inference.bundle_id
        );
        Ok(())
    }

    fn width_rejects(&self) -> u64 {
        self.rejects
            .by_kind()
            .get(&crate::input::RejectKind::Width)
            .copied()
            .unwrap_or(0)
    }

    /// A deployed bundle whose first inputs all failed gives way to the one it replaced.
    fn roll_back_if_failing(&mut self) {
        let Some(p) = &self.probation else {
            return;
        };
        let failed =
            p.failed_inferences + self.width_rejects().saturating_sub(p.width_rejects_before);
        if failed < self.rollback_after as u64 {
            return;
        }
        let p = self.probation.take().expect("probation");
        let bad = std::mem::replace(&mut self.inference, *p.previous);
        let why = format!(
            "its first {failed} input(s) failed; back to bundle {}",
            self.inference.bundle_id
        );
        log::error!(
            "deployment {}: bundle {} rolled back: {why}",
            p.deployment,
            bad.bundle_id
        );
        if let Err(e) = self.deployments.installed.roll_back(&self.inference.source) {
            log::error!("cannot record the rollback: {e}");
        }
        self.switched();
        self.deployments
            .report(p.deployment, DeployState::RolledBack, (0, 0), Some(why));
    }

    pub fn run(mut self) -> Result<Summary, EdgeError> {
        let device = self.settings.start_up.device_id.clone();
        let mut done = 0u64;
        loop {
            self.heartbeat.beat();
            if self.shutdown.stopping() {
                self.notifier.send("STOPPING=1\nSTATUS=draining");
                break;
            }
            if self.shutdown.take_reload() {
                self.reload.start()?;
            }
            // One deployment at a time: the next waits until this one has proved itself (or
            // rolled back) and no load is under way.
            if self.probation.is_none() && self.reload.is_idle() {
                if let Some(candidate) = self.deployments.take_candidate() {
                    self.reload.start_deployment(
                        candidate,
                        &self.settings,
                        &self.inference.source,
                    )?;
                }
            }
            match self.reload.apply(&mut self.settings, &mut self.inference) {
                Applied::Nothing => {}
                Applied::Reloaded => self.switched(),
                Applied::Deployed {
                    deployment,
                    previous,
                } => {
                    self.probation = Some(Probation {
                        deployment,
                        previous,
                        width_rejects_before: self.width_rejects(),
                        failed_inferences: 0,
                    });
                    self.switched();
                    self.deployments
                        .report(deployment, DeployState::Active, (0, 0), None);
                }
                Applied::Refused { deployment, why } => {
                    self.deployments
                        .report(deployment, DeployState::Failed, (0, 0), Some(why))
                }
            }
            self.roll_back_if_failing();
            let input = match self.queue.pop(Duration::from_millis(200)) {
                Pop::Item(v) => v,
                Pop::Empty => continue,
                Pop::Closed => break,
            };
            self.heartbeat.busy(true);
            let outcome = self.inference.infer(&input);
            self.heartbeat.busy(false);
            let inferred = match outcome {
                Ok(r) => r,
                Err(e) => {
                    self.rejects.reject(e.kind(), format_args!("an input: {e}"));
                    if let Some(p) = &mut self.probation {
                        p.failed_inferences += 1;
                    }
                    continue;
                }
            };
            done += 1;
            self.confirm_deployment()?;
            self.health.inferred(inferred.extract + inferred.infer);
            let bundle_id = &self.inference.bundle_id;
            let message = |seq| ResultMessage {
                device_id: device.clone(),
                bundle_id: bundle_id.clone(),
                seq,
                timestamp_ms: now_ms(),
                infer_us: inferred.infer.as_micros() as u64,
                extract_us: inferred.extract.as_micros() as u64,
                result: inferred.result.clone(),
                signed: None,
            };
            let stored = self.sink.deliver(message, self.shutdown.stop_flag())?;
            log::info!(
                "{stored}: extractor {:.1} ms, encrypted {:.1} ms",
                inferred.extract.as_secs_f64() * 1e3,
                inferred.infer.as_secs_f64() * 1e3
            );
        }
        let stopped = self.shutdown.stopping();
        let left_in_spool = self.sink.close(stopped, self.shutdown.stop_flag());
        Ok(Summary {
            results: done,
            rejected: self.rejects.count(),
            dropped_by_queue: self.queue.dropped(),
            left_in_spool,
            stopped,
        })
    }
}
