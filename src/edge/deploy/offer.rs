//! A deployment's life on the board from its offer to its fetched payload, without I/O: what
//! a verified offer (or cancellation) does to the fetch under way and which states it reports
//! — the decisions before [`super::rollout::Rollout`] takes over. The [`super::Deployer`]
//! carries out what [`decide`] returns (discards and starts transfers, sends the reports).

use crate::transport::deploy::DeployState;

/// A verified offer, as far as the decision goes.
#[derive(Clone, Copy, Debug)]
pub(crate) struct OfferFacts {
    pub deployment: u64,
    pub cancelled: bool,
    pub epoch: u64,
    pub size: u64,
}

/// What the board knows when the offer comes.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct BoardFacts {
    /// The deployment being fetched and its progress (received, total), if any.
    pub fetching: Option<(u64, (u64, u64))>,
    /// The deployment handed to the scheduler and not decided yet.
    pub handed: Option<u64>,
    /// Whether the offered deployment already has a final outcome on record.
    pub decided: bool,
    /// The newest bundle epoch this board ran or was offered.
    pub newest_epoch: u64,
    /// The largest payload the board takes (`deploy_max_bytes`).
    pub max_bytes: u64,
}

/// A state to report, in order.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Report {
    pub deployment: u64,
    pub state: DeployState,
    pub progress: (u64, u64),
    pub reason: Option<String>,
}

/// What happens to the transfers.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Fetch {
    /// Leave the fetch under way (if any) as it is.
    Keep,
    /// Discard the fetch under way.
    Discard,
    /// Discard the fetch under way (if any) and fetch the offered deployment.
    Start,
}

#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Decision {
    /// Carried out before the reports.
    pub fetch: Fetch,
    pub reports: Vec<Report>,
}

impl Decision {
    fn nothing() -> Self {
        Self {
            fetch: Fetch::Keep,
            reports: Vec::new(),
        }
    }
}

fn report(
    deployment: u64,
    state: DeployState,
    progress: (u64, u64),
    why: Option<String>,
) -> Report {
    Report {
        deployment,
        state,
        progress,
        reason: why,
    }
}

/// The decision on a verified offer or cancellation.
pub(crate) fn decide(offer: OfferFacts, board: BoardFacts) -> Decision {
    let id = offer.deployment;
    let current = board.fetching.map(|(d, _)| d);
    if offer.cancelled {
        return match board.fetching {
            Some((d, progress)) if d == id => Decision {
                fetch: Fetch::Discard,
                reports: vec![report(id, DeployState::Cancelled, progress, None)],
            },
            // Cancelled before it was fetched (or after a restart): said once.
            _ if !board.decided => Decision {
                fetch: Fetch::Keep,
                reports: vec![report(id, DeployState::Cancelled, (0, offer.size), None)],
            },
            _ => Decision::nothing(),
        };
    }
    if board.decided || current.is_some_and(|c| c >= id) || board.handed.is_some_and(|h| h >= id) {
        // Done before, or the retained offer again (also while it is being verified), or
        // older than the one under way.
        return Decision::nothing();
    }
    let mut reports = Vec::new();
    let mut fetch = Fetch::Keep;
    if let Some((old, progress)) = board.fetching {
        fetch = Fetch::Discard;
        reports.push(report(
            old,
            DeployState::Cancelled,
            progress,
            Some(format!("superseded by deployment {id}")),
        ));
    }
    reports.push(report(id, DeployState::Offered, (0, offer.size), None));
    // Older than what the board runs, or than a newer offer it took (a replayed offer must
    // not bring back a superseded bundle while the newer one is on probation).
    let refusal = if offer.epoch < board.newest_epoch {
        Some(format!(
            "bundle epoch {} is older than epoch {}, which this board already ran or was offered",
            offer.epoch, board.newest_epoch
        ))
    } else if offer.size > board.max_bytes {
        Some(format!(
            "{} bytes, more than deploy_max_bytes ({})",
            offer.size, board.max_bytes
        ))
    } else {
        None
    };
    match refusal {
        Some(why) => reports.push(report(id, DeployState::Failed, (0, offer.size), Some(why))),
        None => fetch = Fetch::Start,
    }
    Decision { fetch, reports }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offer(deployment: u64, epoch: u64) -> OfferFacts {
        OfferFacts {
            deployment,
            cancelled: false,
            epoch,
            size: 100,
        }
    }

    fn board() -> BoardFacts {
        BoardFacts {
            newest_epoch: 3,
            max_bytes: 1000,
            ..Default::default()
        }
    }

    fn states(d: &Decision) -> Vec<(u64, DeployState)> {
        d.reports.iter().map(|r| (r.deployment, r.state)).collect()
    }

    #[test]
    fn a_new_offer_is_fetched_and_supersedes_the_one_under_way() {
        let d = decide(offer(5, 3), board());
        assert_eq!(d.fetch, Fetch::Start);
        assert_eq!(states(&d), [(5, DeployState::Offered)]);
        let fetching = BoardFacts {
            fetching: Some((4, (30, 90))),
            ..board()
        };
        let d = decide(offer(5, 4), fetching);
        assert_eq!(d.fetch, Fetch::Start);
        assert_eq!(
            states(&d),
            [(4, DeployState::Cancelled), (5, DeployState::Offered)]
        );
        assert_eq!(d.reports[0].progress, (30, 90), "the old one's progress");
        assert!(d.reports[0]
            .reason
            .as_deref()
            .unwrap()
            .contains("deployment 5"));
    }

    #[test]
    fn retained_older_and_decided_offers_change_nothing() {
        let nothing = Decision::nothing();
        let fetching = |d| BoardFacts {
            fetching: Some((d, (1, 2))),
            ..board()
        };
        assert_eq!(
            decide(offer(5, 3), fetching(5)),
            nothing,
            "the retained offer again"
        );
        assert_eq!(
            decide(offer(4, 3), fetching(5)),
            nothing,
            "older than the fetch"
        );
        let handed = BoardFacts {
            handed: Some(5),
            ..board()
        };
        assert_eq!(decide(offer(5, 3), handed), nothing, "being verified");
        let decided = BoardFacts {
            decided: true,
            ..board()
        };
        assert_eq!(decide(offer(6, 9), decided), nothing, "done before");
    }

    #[test]
    fn old_epochs_and_oversized_payloads_are_refused() {
        let d = decide(offer(5, 2), board());
        assert_eq!(d.fetch, Fetch::Keep);
        assert_eq!(
            states(&d),
            [(5, DeployState::Offered), (5, DeployState::Failed)]
        );
        assert!(d.reports[1].reason.as_deref().unwrap().contains("epoch 2"));
        let big = OfferFacts {
            size: 1001,
            ..offer(5, 3)
        };
        let d = decide(big, board());
        assert_eq!(d.fetch, Fetch::Keep);
        assert!(d.reports[1]
            .reason
            .as_deref()
            .unwrap()
            .contains("deploy_max_bytes"));
        // A refused replay still stops the fetch it supersedes (it is newer).
        let fetching = BoardFacts {
            fetching: Some((4, (1, 2))),
            ..board()
        };
        let d = decide(offer(5, 1), fetching);
        assert_eq!(d.fetch, Fetch::Discard);
        assert_eq!(
            states(&d),
            [
                (4, DeployState::Cancelled),
                (5, DeployState::Offered),
                (5, DeployState::Failed)
            ]
        );
    }

    #[test]
    fn cancellations() {
        let cancel = OfferFacts {
            cancelled: true,
            ..offer(5, 3)
        };
        let fetching = BoardFacts {
            fetching: Some((5, (10, 100))),
            ..board()
        };
        let d = decide(cancel, fetching);
        assert_eq!(d.fetch, Fetch::Discard);
        assert_eq!(
            d.reports,
            [report(5, DeployState::Cancelled, (10, 100), None)]
        );
        // Not being fetched: reported once, the fetch of another left alone.
        let other = BoardFacts {
            fetching: Some((6, (1, 2))),
            ..board()
        };
        let d = decide(cancel, other);
        assert_eq!(d.fetch, Fetch::Keep);
        assert_eq!(
            d.reports,
            [report(5, DeployState::Cancelled, (0, 100), None)]
        );
        let decided = BoardFacts {
            decided: true,
            ..board()
        };
        assert_eq!(decide(cancel, decided), Decision::nothing());
    }
}
