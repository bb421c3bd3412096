//! A deployment's life on the board once its payload is fetched, without I/O: verified and
//! swapped in (active) or refused (failed); then on probation until its first inference
//! succeeds (confirmed) or its first inputs all fail (rolled back to the bundle it replaced);
//! across restarts, given up after [`MAX_PROBATION_STARTS`] starts without a first result.
//!
//! The scheduler feeds it events and carries out the [`Step`]s it returns — reporting the
//! state, confirming, swapping back — in one place (`Scheduler::carry_out`). `B` is the
//! running bundle (an `Inference` in hedged, anything in the tests).

use crate::transport::deploy::DeployState;

/// Starts with a deployed bundle that has not yet produced a result before it is rolled back:
/// it may be what brings the daemon down (a crash, the OOM killer).
pub(crate) const MAX_PROBATION_STARTS: u32 = 3;

/// What the owner of the running bundle must do.
#[derive(Debug, PartialEq)]
pub enum Step<B> {
    /// Say that `deployment` is now in `state`.
    Report {
        deployment: u64,
        state: DeployState,
        reason: Option<String>,
    },
    /// The deployed bundle proved itself: keep it (its epoch becomes the board's newest) and
    /// let the previous one go.
    Confirm { deployment: u64 },
    /// Run `previous` again and report `deployment` rolled back, for `why`.
    RollBack {
        deployment: u64,
        previous: B,
        why: String,
    },
}

/// A deployed bundle until its first inference succeeds.
#[derive(Debug)]
struct Probation<B> {
    deployment: u64,
    /// What a rollback returns to.
    previous: B,
    /// Inputs the source refused for their width before it took over: those refused after
    /// count against it (the bundle does not fit the data), other malformed input does not.
    width_rejects_before: u64,
    failed_inferences: u64,
}

#[derive(Debug)]
pub struct Rollout<B> {
    probation: Option<Probation<B>>,
    /// A step decided before the scheduler ran (a rollback at start-up).
    pending: Option<Step<B>>,
    /// A deployed bundle whose first this-many inputs all fail is rolled back.
    rollback_after: u64,
}

impl<B> Rollout<B> {
    pub fn new(rollback_after: u32) -> Self {
        Self {
            probation: None,
            pending: None,
            rollback_after: rollback_after.max(1) as u64,
        }
    }

    /// Whether a start with a deployed bundle still on probation, the `starts`-th, should
    /// give it up before loading it.
    pub(crate) fn gives_up_at_start(starts: u32) -> bool {
        starts > MAX_PROBATION_STARTS
    }

    /// The board started with `deployment` still on probation (restarted before its first
    /// result), `previous` loaded to go back to.
    pub fn resume(&mut self, deployment: u64, previous: B) {
        self.probation = Some(Probation {
            deployment,
            previous,
            width_rejects_before: 0,
            failed_inferences: 0,
        });
    }

    /// The board started on an earlier bundle because `deployment` could not run: reported
    /// once the scheduler runs ([`Self::take_pending`]).
    pub(crate) fn rolled_back_at_start(&mut self, deployment: u64, why: String) {
        self.pending = Some(Step::Report {
            deployment,
            state: DeployState::RolledBack,
            reason: Some(why),
        });
    }

    /// A step decided before the scheduler ran, once.
    pub(crate) fn take_pending(&mut self) -> Option<Step<B>> {
        self.pending.take()
    }

    /// One deployment at a time: the next waits until this one has proved itself or rolled
    /// back.
    pub(crate) fn can_take_next(&self) -> bool {
        self.probation.is_none()
    }

    /// The deployment on probation, if any.
    #[cfg(test)]
    pub(crate) fn on_probation(&self) -> Option<u64> {
        self.probation.as_ref().map(|p| p.deployment)
    }

    /// `deployment` verified, passed its test load and runs now instead of `previous`.
    pub(crate) fn activated(
        &mut self,
        deployment: u64,
        previous: B,
        width_rejects: u64,
    ) -> Step<B> {
        self.probation = Some(Probation {
            deployment,
            previous,
            width_rejects_before: width_rejects,
            failed_inferences: 0,
        });
        Step::Report {
            deployment,
            state: DeployState::Active,
            reason: None,
        }
    }

    /// `deployment` failed its verification or test load: the running bundle stays.
    pub fn refused(&self, deployment: u64, why: String) -> Step<B> {
        Step::Report {
            deployment,
            state: DeployState::Failed,
            reason: Some(why),
        }
    }

    /// An inference succeeded.
    pub(crate) fn inferred(&mut self) -> Option<Step<B>> {
        self.probation.take().map(|p| Step::Confirm {
            deployment: p.deployment,
        })
    }

    /// An inference failed.
    pub(crate) fn inference_failed(&mut self) {
        if let Some(p) = &mut self.probation {
            p.failed_inferences += 1;
        }
    }

    /// With `width_rejects()` inputs refused for their width so far (asked only while a
    /// deployment is on probation): roll back a deployment whose first inputs all failed.
    pub fn check(&mut self, width_rejects: impl FnOnce() -> u64) -> Option<Step<B>> {
        let p = self.probation.as_ref()?;
        let failed = p.failed_inferences + width_rejects().saturating_sub(p.width_rejects_before);
        if failed < self.rollback_after {
            return None;
        }
        let p = self.probation.take()?;
        Some(Step::RollBack {
            deployment: p.deployment,
            previous: p.previous,
            why: format!("its first {failed} input(s) failed"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report<B>(s: &Step<B>) -> Option<(u64, DeployState)> {
        match s {
            Step::Report {
                deployment, state, ..
            } => Some((*deployment, *state)),
            _ => None,
        }
    }

    #[test]
    fn a_deployment_that_infers_is_confirmed() {
        let mut r = Rollout::new(3);
        assert!(r.can_take_next());
        let s = r.activated(7, "old", 0);
        assert_eq!(report(&s), Some((7, DeployState::Active)));
        assert!(!r.can_take_next());
        r.inference_failed();
        assert_eq!(r.check(|| 0), None, "one failure of three");
        assert_eq!(r.inferred(), Some(Step::Confirm { deployment: 7 }));
        assert!(r.can_take_next());
        assert_eq!(r.inferred(), None, "confirmed once");
    }

    #[test]
    fn a_deployment_whose_first_inputs_fail_rolls_back() {
        let mut r = Rollout::new(2);
        r.activated(4, "old", 5);
        r.inference_failed();
        // Width rejects from before the swap do not count against it; one after does.
        assert_eq!(r.check(|| 5), None);
        match r.check(|| 6) {
            Some(Step::RollBack {
                deployment: 4,
                previous: "old",
                why,
            }) => assert!(why.contains("first 2 input(s)"), "{why}"),
            other => panic!("{other:?}"),
        }
        assert!(r.can_take_next());
        assert_eq!(r.inferred(), None, "nothing left to confirm");
    }

    #[test]
    fn refusals_and_restarts() {
        let mut r: Rollout<&str> = Rollout::new(0);
        assert_eq!(
            report(&r.refused(2, "bad signature".into())),
            Some((2, DeployState::Failed))
        );
        assert!(
            r.can_take_next(),
            "a refused deployment leaves nothing on probation"
        );
        r.resume(3, "old");
        assert_eq!(r.on_probation(), Some(3));
        r.inference_failed();
        assert!(
            matches!(r.check(|| 0), Some(Step::RollBack { deployment: 3, .. })),
            "rollback_after 0 means 1"
        );
        assert!(!Rollout::<()>::gives_up_at_start(MAX_PROBATION_STARTS));
        assert!(Rollout::<()>::gives_up_at_start(MAX_PROBATION_STARTS + 1));
        r.rolled_back_at_start(1, "crashed".into());
        assert_eq!(
            r.take_pending().as_ref().and_then(report),
            Some((1, DeployState::RolledBack))
        );
        assert!(r.take_pending().is_none(), "reported once");
    }
}
