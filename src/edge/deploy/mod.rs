//! Deployments over MQTT, the board's side: the publisher's thread fetches an offered bundle
//! in chunks beside inference ([`Deployer`]); the scheduler verifies it, swaps it in between
//! two inferences, and keeps or rolls it back; both report through [`Deployments`].
//!
//! A deployment's life on a board: offered → downloading → verifying → active, or failed
//! (offer, transfer, checks), rolled back (its first inferences failed) or cancelled.
//! Two state machines without I/O decide: [`offer::decide`] what an offer or a cancellation
//! does (offered, refused, cancelled, superseded, fetched), which the [`Deployer`] carries out
//! on the publisher's thread (the transfer itself reports downloading, verifying or a failed
//! transfer); from the fetched payload on, [`rollout::Rollout`] (active, failed checks,
//! confirmed, rolled back), which the scheduler carries out. Every state is reported through
//! [`Deployments::report`].

pub mod download;
pub mod installed;
pub mod offer;
pub mod rollout;

use super::health::Health;
use super::state::State;
use super::trust::TrustAnchor;
use crate::transport::deploy::{Chunk, ChunkRequest, DeployState, Offer, Payload, Report};
use crate::transport::message::now_ms;
use download::{Arrival, Download};
use installed::Installed;
use offer::{BoardFacts, Fetch, OfferFacts};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A fetched payload, checked against its offer, for the scheduler to verify and run.
#[derive(Clone, Debug)]
pub(crate) struct Candidate {
    pub deployment: u64,
    pub file: PathBuf,
    pub payload: Payload,
}

/// Shared by the publisher (transfers) and the scheduler (swaps).
pub struct Deployments {
    pub installed: Installed,
    device: String,
    health: Arc<Health>,
    state: Arc<State>,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// The latest report, and those not yet published (in order: the agent sees each state).
    report: Option<Report>,
    unsent: Vec<Report>,
    candidate: Option<Candidate>,
    /// The deployment handed to the scheduler and not yet decided (active, failed, …).
    handed: Option<u64>,
}

impl Deployments {
    pub fn new(device: &str, state: Arc<State>, health: Arc<Health>) -> Self {
        Self {
            installed: Installed::new(state.dir()),
            device: device.to_string(),
            health,
            state,
            inner: Mutex::new(Inner::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Say where `deployment` stands (a final state is also recorded in the state directory).
    pub fn report(
        &self,
        deployment: u64,
        state: DeployState,
        progress: (u64, u64),
        reason: Option<String>,
    ) {
        // (0, 0): the scheduler's states, which keep the transfer's figures.
        let progress = match &self.lock().report {
            Some(r) if progress == (0, 0) && r.deployment == deployment => (r.received, r.total),
            _ => progress,
        };
        let report = Report {
            device: self.device.clone(),
            deployment,
            state,
            received: progress.0,
            total: progress.1,
            running: self.health.bundle_id(),
            reason,
            at_ms: now_ms(),
        };
        match (&report.reason, state) {
            (Some(why), _) => log::warn!("deployment {deployment}: {} ({why})", state.name()),
            (None, _) => log::info!("deployment {deployment}: {}", state.name()),
        }
        if state.is_final() {
            if let Err(e) = self.installed.record_outcome(&report) {
                log::error!("deployment {deployment}: cannot record its outcome: {e}");
            }
        }
        let mut inner = self.lock();
        if state.is_final() && inner.handed == Some(deployment) {
            inner.handed = None;
        }
        inner.unsent.push(report.clone());
        inner.report = Some(report);
    }

    /// The reports made since the last call, oldest first.
    pub(crate) fn take_reports(&self) -> Vec<Vec<u8>> {
        std::mem::take(&mut self.lock().unsent)
            .iter()
            .map(Report::encode)
            .collect()
    }

    /// The latest report again (a new connection).
    pub(crate) fn last_report(&self) -> Option<Vec<u8>> {
        self.lock().report.as_ref().map(Report::encode)
    }

    fn hand_over(&self, candidate: Candidate) {
        let mut inner = self.lock();
        inner.handed = Some(candidate.deployment);
        inner.candidate = Some(candidate);
    }

    /// A payload ready for verification, once.
    pub(crate) fn take_candidate(&self) -> Option<Candidate> {
        self.lock().candidate.take()
    }
}

/// Transfer settings (`[mqtt]` deploy_* in the configuration).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Transfer {
    /// Chunks asked for and not yet come.
    pub window: usize,
    /// Largest payload accepted.
    pub max_bytes: u64,
    /// A chunk not come after this is asked for again.
    pub timeout: Duration,
}

/// The transfer side, run on the publisher's thread.
pub(crate) struct Deployer {
    shared: Arc<Deployments>,
    trusted: TrustAnchor,
    transfer: Transfer,
    current: Option<Download>,
    last_progress: Instant,
}

impl Deployer {
    pub fn new(shared: Arc<Deployments>, trusted: TrustAnchor, transfer: Transfer) -> Self {
        Self {
            shared,
            trusted,
            transfer,
            current: None,
            last_progress: Instant::now(),
        }
    }

    fn fail(&self, deployment: u64, progress: (u64, u64), why: String) {
        self.shared
            .report(deployment, DeployState::Failed, progress, Some(why));
    }

    /// A message on the offer topic.
    pub fn offered(&mut self, bytes: &[u8]) {
        let offer = match Offer::decode(bytes, &self.trusted.key(), &self.shared.device) {
            Ok(o) => o,
            Err(e) => {
                // Not the backend's (or not for this board): nothing is fetched, and nothing is
                // recorded — an unsigned message must not decide what happens to a deployment.
                log::warn!("refused a deployment offer: {e}");
                return;
            }
        };
        let id = offer.deployment;
        let facts = OfferFacts {
            deployment: id,
            cancelled: offer.cancelled,
            epoch: offer.epoch,
            size: offer.size,
        };
        let board = BoardFacts {
            fetching: self
                .current
                .as_ref()
                .map(|d| (d.offer.deployment, d.progress())),
            handed: self.shared.lock().handed,
            decided: self.shared.installed.outcome(id).is_some(),
            newest_epoch: self
                .shared
                .state
                .epoch()
                .max(self.shared.installed.offered_epoch()),
            max_bytes: self.transfer.max_bytes,
        };
        let decision = offer::decide(facts, board);
        if decision.fetch != Fetch::Keep {
            if let Some(d) = self.current.take() {
                d.discard();
            }
        }
        for r in decision.reports {
            self.shared
                .report(r.deployment, r.state, r.progress, r.reason);
        }
        if decision.fetch != Fetch::Start {
            return;
        }
        if let Err(e) = self.shared.installed.set_offered_epoch(offer.epoch) {
            return self.fail(id, (0, offer.size), e.to_string());
        }
        match Download::resume(
            offer,
            &self.shared.installed.partial_dir(),
            self.transfer.window,
            self.transfer.timeout,
        ) {
            Ok(d) => {
                log::info!(
                    "deployment {id}: fetching {} {} ({} bytes in {} chunks; {} already here)",
                    d.offer.payload.name(),
                    d.offer.bundle_id,
                    d.offer.size,
                    d.offer.chunks.len(),
                    d.resumed
                );
                self.shared
                    .report(id, DeployState::Downloading, d.progress(), None);
                self.last_progress = Instant::now();
                self.current = Some(d);
                self.finish_if_complete();
            }
            Err(e) => self.fail(id, (0, 0), e.to_string()),
        }
    }

    /// A message on the data topic.
    pub fn chunk(&mut self, bytes: &[u8]) {
        let Some(d) = self.current.as_mut() else {
            return;
        };
        let chunk = match Chunk::decode(bytes) {
            Ok(c) if c.deployment == d.offer.deployment => c,
            Ok(_) => return, // another deployment's: a late redelivery
            Err(e) => return log::warn!("ignored a chunk: {e}"),
        };
        match d.arrived(chunk.index, &chunk.bytes) {
            Ok(Arrival::Stored) => {
                if self.last_progress.elapsed() >= Duration::from_secs(1) {
                    self.last_progress = Instant::now();
                    self.shared.report(
                        d.offer.deployment,
                        DeployState::Downloading,
                        d.progress(),
                        None,
                    );
                }
                self.finish_if_complete();
            }
            Ok(Arrival::Refused) => log::warn!(
                "deployment {}: refused chunk {}: not the offered bytes (asked again)",
                d.offer.deployment,
                chunk.index
            ),
            Ok(Arrival::Duplicate | Arrival::Unknown) => {}
            Err(e) => {
                let d = self.current.take().expect("current");
                let (id, progress) = (d.offer.deployment, d.progress());
                d.discard();
                self.fail(id, progress, e.to_string());
            }
        }
    }

    fn finish_if_complete(&mut self) {
        if !self.current.as_ref().is_some_and(Download::is_complete) {
            return;
        }
        let d = self.current.take().expect("current");
        let (offer, progress) = (d.offer.clone(), d.progress());
        let dest = self.shared.installed.payload_path(
            offer.deployment,
            &offer.bundle_id,
            offer.payload == Payload::ModelUpdate,
        );
        match d.finish(&dest) {
            Ok(file) => {
                self.shared
                    .report(offer.deployment, DeployState::Verifying, progress, None);
                self.shared.hand_over(Candidate {
                    deployment: offer.deployment,
                    file,
                    payload: offer.payload,
                });
            }
            Err(e) => self.fail(offer.deployment, progress, e.to_string()),
        }
    }

    /// A new connection: what was asked on the old one will not come.
    pub(crate) fn reconnected(&mut self) {
        if let Some(d) = self.current.as_mut() {
            d.reconnected();
        }
    }

    /// Chunk requests to publish now.
    pub fn requests(&mut self, now: Instant) -> Vec<Vec<u8>> {
        let Some(d) = self.current.as_mut() else {
            return Vec::new();
        };
        let deployment = d.offer.deployment;
        d.requests(now)
            .into_iter()
            .map(|(first, count)| {
                ChunkRequest {
                    deployment,
                    first,
                    count,
                }
                .encode()
            })
            .collect()
    }
}
