//! The registry's behaviour, as a store must provide it: run on SQLite by the unit tests and
//! on a real PostgreSQL server by `tests/postgres.rs`. Each function takes a fresh location.
#![doc(hidden)]

use super::*;
use crate::crypto::keys::KeyKind;
use crate::engine::PartShape;

pub fn decoding() -> Decoding {
    Decoding {
        key_id: [7; 16],
        key: KeyKind::Wide,
        poly_size: 4096,
        delta_out: 1 << 40,
        out_scale: 0.25,
        parts: vec![PartShape::Lwe; 10],
        exact: true,
        score_limits: vec![1000.0; 10],
        own_masks: vec![1, 2, 3],
        labels: Some((0..10).map(|i| format!("class {i}")).collect()),
        checks: crate::engine::ResultChecks {
            rows: vec![vec![3; 10]],
            log2_deltas: vec![30],
            offsets: vec![5],
            method: crate::engine::CheckMethod::Tolerance,
            tolerances: vec![1 << 58],
        },
        wire: crate::engine::Wire::Switched { drop_bits: 21 },
    }
}

pub fn records_survive_reopening_and_migrations_are_versioned(path: &Path) {
    {
        let r = Registry::open(path).unwrap();
        r.add_key_set(&KeySetRecord {
            id: [7; 16],
            security: 128,
            secret_key: "/keys/secret.key".into(),
        })
        .unwrap();
        r.add_bundle(&BundleRecord {
            id: "00112233aabbccdd".into(),
            name: "model".into(),
            variant: Variant::Noact,
            input_dim: 48,
            hidden_dim: 16,
            out_dim: 10,
            epoch: 3,
            decoding: decoding(),
        })
        .unwrap();
        r.add_device("board-1", &[9; 32]).unwrap();
    }
    let r = Registry::open(path).unwrap();
    let version = r.store().schema_version().unwrap();
    assert_eq!(version, MIGRATIONS.len());
    assert_eq!(r.key_set(&[7; 16]).unwrap().unwrap().security, 128);
    let b = r.bundle("00112233aabbccdd").unwrap().unwrap();
    assert_eq!(
        (b.variant, b.epoch, b.decoding),
        (Variant::Noact, 3, decoding())
    );
    assert_eq!(r.latest_epoch().unwrap(), 3);
    assert!(r.bundle("ffffffffffffffff").unwrap().is_none());
    assert_eq!(r.devices().unwrap()[0].identity_key, [9; 32]);
    r.add_device("board-1", &[9; 32]).unwrap();
    assert!(r.add_device("board-1", &[8; 32]).is_err(), "another key");
    // A newer schema than this build knows is refused, not misread.
    r.store().set_schema_version(MIGRATIONS.len() + 1).unwrap();
    drop(r);
    assert!(Registry::open(path).is_err());
}

pub fn each_result_is_accepted_once_within_the_window(path: &Path) {
    let mut r = Registry::open(path).unwrap();
    r.add_device("d", &[1; 32]).unwrap();
    let ok = || Ok(());
    assert_eq!(r.accept("d", 5, ok).unwrap(), Acceptance::New);
    assert_eq!(r.accept("d", 5, ok).unwrap(), Acceptance::Seen);
    // Late but within the window: accepted once.
    assert_eq!(r.accept("d", 2, ok).unwrap(), Acceptance::New);
    assert_eq!(r.accept("d", 2, ok).unwrap(), Acceptance::Seen);
    let far = 5 + REPLAY_WINDOW + 10;
    assert_eq!(r.accept("d", far, ok).unwrap(), Acceptance::New);
    assert_eq!(r.accept("d", 5, ok).unwrap(), Acceptance::TooOld);
    assert_eq!(r.accept("d", far - 1, ok).unwrap(), Acceptance::New);
    // The window keeps the table bounded.
    let kept = r
        .store()
        .query("SELECT COUNT(*) FROM accepted", &[])
        .unwrap()[0]
        .int(0)
        .unwrap();
    assert_eq!(kept, 2);
    // A record that fails leaves the result unaccepted (it is taken again).
    let failing = || Err(BackendError::Data("disk full".into()));
    assert!(r.accept("d", far + 1, failing).is_err());
    assert_eq!(r.accept("d", far + 1, ok).unwrap(), Acceptance::New);
    let d = r.device("d").unwrap().unwrap();
    assert_eq!((d.high_water, d.accepted), (far + 1, 5));
    assert!(r.accept("nobody", 1, ok).is_err());
}

pub fn refusals_quarantine_until_cleared(path: &Path) {
    let r = Registry::open(path).unwrap();
    r.add_device("d", &[1; 32]).unwrap();
    assert_eq!(r.refused("d", 3).unwrap(), DeviceState::Active);
    assert_eq!(r.refused("d", 3).unwrap(), DeviceState::Active);
    assert_eq!(r.refused("d", 3).unwrap(), DeviceState::Quarantined);
    r.clear("d").unwrap();
    let d = r.device("d").unwrap().unwrap();
    assert_eq!((d.state, d.refused), (DeviceState::Active, 0));
    r.revoke("d").unwrap();
    assert_eq!(r.refused("d", 1).unwrap(), DeviceState::Revoked);
    assert!(r.clear("nobody").is_err());
}

pub fn two_agents_never_both_accept_a_result(path: &Path) {
    Registry::open(path)
        .unwrap()
        .add_device("d", &[1; 32])
        .unwrap();
    let counts: Vec<usize> = std::thread::scope(|s| {
        let agents: Vec<_> = (0..2)
            .map(|_| {
                s.spawn(move || {
                    let mut r = Registry::open(path).unwrap();
                    (1..=300)
                        .filter(|&seq| r.accept("d", seq, || Ok(())).unwrap() == Acceptance::New)
                        .count()
                })
            })
            .collect();
        agents.into_iter().map(|a| a.join().unwrap()).collect()
    });
    assert_eq!(counts.iter().sum::<usize>(), 300, "{counts:?}");
}

/// Groups, health and deployments: what `hedge fleet` and `hedge deploy` record.
pub fn fleet_and_deployments_are_recorded(path: &Path) {
    let r = Registry::open(path).unwrap();
    r.add_device("a", &[1; 32]).unwrap();
    r.add_device("b", &[2; 32]).unwrap();
    r.set_group("a", "lab").unwrap();
    r.set_group("b", "lab").unwrap();
    assert!(r.set_group("nobody", "lab").is_err());
    r.revoke("b").unwrap();
    assert_eq!(r.group("lab").unwrap(), ["a"]);
    r.record_status(&HealthRecord {
        device: "a".into(),
        online: true,
        version: Some("1".into()),
        bundle: Some("aa".into()),
        epoch: Some(2),
        started_ms: Some(5),
        status_ms: 6,
        metrics: None,
        metrics_ms: None,
    })
    .unwrap();
    r.record_metrics("a", "{}", 7).unwrap();
    // A later status without a bundle keeps the one known.
    r.record_status(&HealthRecord {
        device: "a".into(),
        online: false,
        version: None,
        bundle: None,
        epoch: None,
        started_ms: None,
        status_ms: 8,
        metrics: None,
        metrics_ms: None,
    })
    .unwrap();
    let h = &r.health().unwrap()[0];
    assert_eq!(
        (
            h.online,
            h.bundle.as_deref(),
            h.epoch,
            h.status_ms,
            h.metrics_ms
        ),
        (false, Some("aa"), Some(2), 8, Some(7))
    );
    // Payloads in chunks, bytes as stored (every byte value, a short last chunk).
    let payload: Vec<u8> = (0..=255u8).cycle().take(4096 * 2 + 100).collect();
    let one = r
        .add_deployment(
            "aa",
            3,
            4096,
            &[("bundle", &payload)],
            &[("a", "bundle", 100)],
        )
        .unwrap();
    let two = r
        .add_deployment("bb", 4, 4096, &[], &[("a", "model-update", 10)])
        .unwrap();
    assert!(two > one);
    let chunks = r.deployment_chunks(one, "bundle", 0, 4).unwrap();
    assert_eq!(
        chunks.iter().map(|c| c.0).collect::<Vec<_>>(),
        [0, 1, 2],
        "none past the end"
    );
    assert_eq!(
        chunks
            .iter()
            .map(|c| c.1.clone())
            .collect::<Vec<_>>()
            .concat(),
        payload
    );
    assert_eq!(
        chunks.iter().map(|c| c.1.len()).collect::<Vec<_>>(),
        [4096, 4096, 100]
    );
    assert_eq!(r.target(one, "a").unwrap().map(|t| t.size), Some(100));
    assert!(r.target(one, "zz").unwrap().is_none());
    assert!(r.target(two, "a").unwrap().is_some());
    let middle = r.deployment_chunks(one, "bundle", 1, 2).unwrap();
    assert_eq!(middle, vec![(1, payload[4096..8192].to_vec())]);
    assert!(r
        .deployment_chunks(one, "model-update", 0, 4)
        .unwrap()
        .is_empty());
    assert!(r.deployment_chunks(two, "bundle", 0, 4).unwrap().is_empty());
    // One row per target; a deployment that fails part-way (here at its second target)
    // leaves no deployment, payload or target behind.
    assert!(r
        .add_deployment(
            "cc",
            5,
            4096,
            &[("bundle", &payload)],
            &[("b", "bundle", 100), ("b", "bundle", 100)],
        )
        .is_err());
    // The failed one's id is taken again (SQLite) or skipped (a PostgreSQL sequence): either
    // way nothing is stored under it.
    let three = r.add_deployment("dd", 6, 4096, &[], &[]).unwrap();
    for failed in two + 1..=three {
        assert!(r
            .deployment_chunks(failed, "bundle", 0, 4)
            .unwrap()
            .is_empty());
        assert!(r.targets(Some(failed)).unwrap().is_empty());
        if failed < three {
            assert!(
                r.deployment(failed).unwrap().is_none(),
                "deployment {failed} left"
            );
        }
    }
    assert_eq!(r.latest_deployment_for("b").unwrap(), 0, "no target left");
    assert!(r
        .record_target_state(one, "a", "downloading", 50, None, "aa")
        .unwrap());
    assert!(!r
        .record_target_state(one, "zz", "active", 0, None, "")
        .unwrap());
    assert_eq!(r.latest_deployment_for("a").unwrap(), two);
    assert_eq!(r.latest_deployment_for("b").unwrap(), 0);
    r.cancel_deployment(two).unwrap();
    let d = r.deployment(one).unwrap().unwrap();
    assert_eq!(
        (d.bundle.as_str(), d.chunk_size, d.cancelled),
        ("aa", 4096, false)
    );
    assert!(r.deployment(two).unwrap().unwrap().cancelled);
    let all = r.targets(None).unwrap();
    assert_eq!(
        all.iter().map(|t| t.deployment).collect::<Vec<_>>(),
        [two, one]
    );
    let t = &r.targets(Some(one)).unwrap()[0];
    assert_eq!(
        (t.state.as_str(), t.received, t.running.as_deref()),
        ("downloading", 50, Some("aa"))
    );
}
