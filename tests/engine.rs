//! Encrypted inference against the plaintext integer reference, every variant and feature
//! mode, on small shapes (the full shape runs in `hedge bench`).

use hedge::crypto::keys;
use hedge::crypto::lut::Activation;
use hedge::crypto::params::{ParameterSet, SecurityLevel};
use hedge::engine::{decrypt, Decoding, EdgeEngine, EncryptedModel, ModelInfo, Refusal};
use hedge::model::quant::{QuantModel, Variant};
use hedge::model::{argmax, synth};
use hedge::transport::frame::{self, Input};

fn run(variant: Variant, activation: Option<Activation>, inputs: usize) {
    run_with(variant, activation, inputs, usize::MAX, 1);
}

/// `act` takes `per_table` classes per bootstrap and `levels` gadget levels.
fn run_with(
    variant: Variant,
    activation: Option<Activation>,
    inputs: usize,
    per_table: usize,
    levels: usize,
) {
    let shipped = ParameterSet::for_level(SecurityLevel::L128);
    let ks = keys::generate(shipped);
    let params = shipped.with_pbs_levels(levels).unwrap();
    let task = synth::Task::new(5, 48, 10);
    let model = synth::classifier(5, &task, 24, activation);
    let calib: Vec<Vec<f32>> = task.samples(20, 100).into_iter().map(|s| s.0).collect();
    let q = match variant {
        Variant::Act => QuantModel::quantize_act(&model, None, &calib, &params, per_table),
        _ => QuantModel::quantize(&model, variant, None, &calib, &params),
    }
    .unwrap();
    let enc = EncryptedModel::encrypt(&q, &ks.secret).unwrap();
    let evaluation = ks.evaluation.with_bootstrap_gadget(&ks.secret, &params);
    let edge_keys = keys::EdgeKeys {
        public: ks.public.clone(),
        evaluation: Some(evaluation),
    };
    let mut engine = EdgeEngine::new(
        ModelInfo::of(&q),
        params,
        ks.secret.key_id,
        &edge_keys,
        &enc,
    )
    .unwrap();
    let bound = q.act_score_bound(&params);
    let decoding = Decoding::new(&q, &params, ks.secret.key_id).unwrap();
    for (x, _) in task.samples(21, inputs) {
        let reference = q.reference(&q.input.quantize(&x).unwrap());
        // The streamed frame is the same bytes as the framed struct (same length, decodes).
        let mut streamed = Vec::new();
        let len = frame::write_encrypted(&mut streamed, &mut engine, &x).unwrap();
        let whole = frame::encode(&Input::Encrypted(Box::new(
            engine.encrypt_features(&x).unwrap(),
        )));
        assert_eq!((len, streamed.len()), (whole.len(), whole.len()));
        assert_eq!(streamed[..4], whole[..4]);
        let Ok(Input::Encrypted(feats)) = frame::decode(&streamed[4..]) else {
            panic!("the streamed frame does not decode");
        };
        let mut refused = Vec::new();
        assert!(frame::write_encrypted(&mut refused, &mut engine, &x[1..]).is_err());
        assert!(refused.is_empty(), "a refused vector writes nothing");
        let mut foreign = feats.clone();
        foreign.key_id[0] ^= 1;
        assert!(
            matches!(
                engine.infer_encrypted(&foreign),
                Err(hedge::engine::EngineError::KeyMismatch(_))
            ),
            "features under another key are refused"
        );
        for (mode, result) in [
            ("plain", engine.infer_plain(&x).unwrap()),
            ("enc", engine.infer_encrypted(&feats).unwrap()),
        ] {
            let groups = 10usize.div_ceil(per_table.min(10));
            if variant == Variant::Act {
                assert_eq!(result.parts.len(), groups, "one GLWE per class group");
            }
            let d = decrypt(&result, &decoding, &ks.secret).unwrap();
            match variant {
                Variant::Act => {
                    for (j, (got, want)) in d.scores.iter().zip(&reference.scores).enumerate() {
                        assert!(
                            ((got - want) as f64).abs() <= bound[j],
                            "{mode} class {j}: {got} vs {want}, bound {}",
                            bound[j]
                        );
                    }
                }
                _ => {
                    assert_eq!(d.scores, reference.scores, "{variant:?} {mode}");
                    assert!(
                        d.noise_margin_bits > 3.0,
                        "{variant:?} {mode}: {}",
                        d.noise_margin_bits
                    );
                }
            }
            assert_eq!(d.class, argmax(&d.scores));
        }
    }
}

#[test]
fn last_layer_matches_reference() {
    run(Variant::Last, Some(Activation::Relu), 4);
}

#[test]
fn full_without_activation_matches_reference() {
    run(Variant::Noact, None, 3);
}

#[test]
fn full_with_relu_stays_within_bound() {
    run(Variant::Act, Some(Activation::Relu), 3);
}

#[test]
fn full_with_square_stays_within_bound() {
    run(Variant::Act, Some(Activation::Square), 2);
}

/// The accuracy knob: 3 classes per table (4 tables per unit, the last with one class) and a
/// two-level gadget with its own bootstrapping key.
#[test]
fn full_with_relu_in_class_groups_and_two_gadget_levels_stays_within_bound() {
    run_with(Variant::Act, Some(Activation::Relu), 2, 3, 2);
}

/// Ciphertexts a board can craft with the public material are refused before decryption
/// reveals anything: hand-made masks (the key-extraction shape), the wrong number or size of
/// parts, phases off the message grid, scores the model cannot produce.
#[test]
fn crafted_results_are_refused_before_anything_is_revealed() {
    let params = ParameterSet::for_level(SecurityLevel::L128);
    let ks = keys::generate(params);
    let task = synth::Task::new(5, 48, 10);
    let model = synth::classifier(5, &task, 24, Some(Activation::Relu));
    let calib: Vec<Vec<f32>> = task.samples(20, 100).into_iter().map(|s| s.0).collect();
    let q = QuantModel::quantize(&model, Variant::Last, None, &calib, &params).unwrap();
    let enc = EncryptedModel::encrypt(&q, &ks.secret).unwrap();
    let edge_keys = keys::EdgeKeys {
        public: ks.public.clone(),
        evaluation: None,
    };
    let mut engine = EdgeEngine::new(
        ModelInfo::of(&q),
        params,
        ks.secret.key_id,
        &edge_keys,
        &enc,
    )
    .unwrap();
    let decoding = Decoding::new(&q, &params, ks.secret.key_id).unwrap();
    let x = &task.samples(21, 1)[0].0;
    let genuine = engine.infer_plain(x).unwrap();
    decrypt(&genuine, &decoding, &ks.secret).unwrap();
    let n = params.wide.poly_size;
    let delta = q.delta_out;
    let with_part = |f: &dyn Fn(&mut Vec<u64>)| {
        let mut r = genuine.clone();
        f(&mut r.parts[0].0);
        decrypt(&r, &decoding, &ks.secret)
    };
    // The key-extraction shape: a constant mask reveals the key's coefficients as the phase.
    assert_eq!(
        with_part(&|p| p[..n].fill(1)),
        Err(Refusal::Mask { part: 0 })
    );
    // A trivial ciphertext (mask 0, body Δ·z): a forged result.
    assert_eq!(
        with_part(&|p| {
            p[..n].fill(0);
            p[n..].fill(0);
            p[n] = 3 * delta;
        }),
        Err(Refusal::Mask { part: 0 })
    );
    // A monomial mask (one key coefficient per slot).
    assert_eq!(
        with_part(&|p| {
            p[..n].fill(0);
            p[7] = delta;
        }),
        Err(Refusal::Mask { part: 0 })
    );
    // A phase pushed off the grid: the noise check of the exact variants.
    assert!(matches!(
        with_part(&|p| p[n] = p[n].wrapping_add(delta / 3)),
        Err(Refusal::Noise { class: 0, .. })
    ));
    // A score the model cannot produce.
    assert!(matches!(
        with_part(&|p| p[n + 1] = p[n + 1].wrapping_add(delta.wrapping_mul(1 << 20))),
        Err(Refusal::OutOfRange { class: 1 })
    ));
    // A zero phase everywhere (an encryption of zero): every class ties.
    let zero = engine.encrypt_features(x).unwrap().groups()[0].0[..2 * n].to_vec();
    assert_eq!(
        with_part(&|p| p.copy_from_slice(&zero)),
        Err(Refusal::Degenerate)
    );
    // Shapes other than the bundle's.
    let mut more = genuine.clone();
    more.parts.push(more.parts[0].clone());
    assert!(matches!(
        decrypt(&more, &decoding, &ks.secret),
        Err(Refusal::PartCount { .. })
    ));
    let mut short = genuine.clone();
    short.parts[0].0.truncate(n);
    assert!(matches!(
        decrypt(&short, &decoding, &ks.secret),
        Err(Refusal::PartSize { .. })
    ));
    let mut foreign = genuine.clone();
    foreign.key_id[0] ^= 1;
    assert!(matches!(
        decrypt(&foreign, &decoding, &ks.secret),
        Err(Refusal::WrongKey { .. })
    ));
}
