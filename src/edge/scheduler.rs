//! The scheduler: one encrypted inference at a time on this thread (no thread pool), from
//! the acquisition queue to the sink, switching bundles between two inferences on a reload.

use super::deploy::rollout::{Rollout, Step};
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
use crate::input::RejectKind;
use crate::transport::deploy::DeployState;
use crate::transport::frame::Input;
use crate::transport::message::{now_ms, ResultMessage};
use std::sync::Arc;
use std::time::Duration;

pub(crate) struct Scheduler {
    pub settings: Settings,
    pub inference: Inference,
    pub queue: Arc<BoundedQueue<Input>>,
    pub rejects: Arc<Rejects>,
    pub sink: Sink,
    /// The board's status and metrics, as the publisher reports them.
    pub health: Arc<super::health::Health>,
    pub reload: Reload,
    pub deployments: Arc<Deployments>,
    /// The deployment being swapped in or on probation: what to report, keep or roll back.
    pub rollout: Rollout<Inference>,
    pub shutdown: Arc<Shutdown>,
    pub heartbeat: Arc<Heartbeat>,
    pub notifier: Arc<Notifier>,
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

    /// Carry out what the rollout decided: the one place a deployment's state changes are
    /// reported from once its payload is fetched.
    fn carry_out(&mut self, step: Step<Inference>) -> Result<(), EdgeError> {
        match step {
            Step::Report {
                deployment,
                state,
                reason,
            } => self.deployments.report(deployment, state, (0, 0), reason),
            Step::Confirm { deployment } => {
                self.reload.accept_epoch(self.inference.epoch)?;
                self.deployments.installed.confirm()?;
                log::info!(
                    "deployment {deployment}: bundle {} confirmed by its first inference",
                    self.inference.bundle_id
                );
            }
            Step::RollBack {
                deployment,
                previous,
                why,
            } => {
                let bad = std::mem::replace(&mut self.inference, previous);
                let why = format!("{why}; back to bundle {}", self.inference.bundle_id);
                log::error!(
                    "deployment {deployment}: bundle {} rolled back: {why}",
                    bad.bundle_id
                );
                if let Err(e) = self.deployments.installed.roll_back(&self.inference.source) {
                    log::error!("cannot record the rollback: {e}");
                }
                self.switched();
                self.deployments
                    .report(deployment, DeployState::RolledBack, (0, 0), Some(why));
            }
        }
        Ok(())
    }

    pub fn run(mut self) -> Result<Summary, EdgeError> {
        let device = self.settings.start_up.device_id.clone();
        let mut done = 0u64;
        loop {
            if let Some(step) = self.rollout.take_pending() {
                self.carry_out(step)?;
            }
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
            if self.rollout.can_take_next() && self.reload.is_idle() {
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
                    let width_rejects = self.rejects.of_kind(RejectKind::Width);
                    let step = self.rollout.activated(deployment, *previous, width_rejects);
                    self.switched();
                    self.carry_out(step)?;
                }
                Applied::Refused { deployment, why } => {
                    let step = self.rollout.refused(deployment, why);
                    self.carry_out(step)?;
                }
            }
            // (The count is read only while a deployment is on probation.)
            let rejects = &self.rejects;
            if let Some(step) = self.rollout.check(|| rejects.of_kind(RejectKind::Width)) {
                self.carry_out(step)?;
            }
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
                    self.rollout.inference_failed();
                    continue;
                }
            };
            done += 1;
            if let Some(step) = self.rollout.inferred() {
                self.carry_out(step)?;
            }
            let clamped = self
                .health
                .inferred(inferred.extract + inferred.infer, inferred.clamped);
            if let Some(n) = clamped.filter(|n| n.is_power_of_two()) {
                log::warn!(
                    "an input had {} feature(s) beyond the range the bundle was calibrated on, \
                     clamped to it: its class may differ from the float model's ({n} such \
                     input(s) so far; metrics clamped_inputs). If this recurs, protect the model \
                     again with calibration data that covers these inputs",
                    inferred.clamped
                );
            }
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
