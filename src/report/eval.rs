//! `hedge eval`: accuracy of a trained network on a labelled image set, the way the paper
//! reports it — the float model, the quantised plaintext integer reference (every test image)
//! and the encrypted path (a fixed-seed sample), with the agreement between encrypted and
//! reference predictions, plus the reference's accuracy per quantisation width.

use super::{BackendError, Result};
use crate::crypto::keys::{self, EdgeKeys, KeySet};
use crate::crypto::params::ParameterSet;
use crate::engine::{decrypt, Decoding, EdgeEngine, EncryptedModel, ModelInfo, Refusal};
use crate::input::images::{read_idx_images, read_idx_labels, Image};
use crate::model::activation::Activation;
use crate::model::argmax;
use crate::model::network::Network;
use crate::model::prune::{self, PruneReport};
use crate::model::quant::{float_reference, BitWidths, FlipProbability, QuantModel, Variant};
use crate::model::Classifier;
use crate::progress::Progress;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::Instant;

/// One evaluated configuration: a network, a variant, an optional activation override.
pub struct Case {
    /// `None`: named after the variant and the network's hidden activation.
    pub label: Option<String>,
    pub network: PathBuf,
    pub variant: Variant,
    pub activation: Option<Activation>,
    /// Encrypted inferences to run (a fixed-seed sample of the test set).
    pub encrypted: usize,
}

/// A labelled test set: IDX images with their IDX labels, or a file of labelled vector lines
/// (`label: v1,v2,…`, the label a class index), through the network's extractor if it has one.
pub enum TestSet {
    Idx { images: PathBuf, labels: PathBuf },
    Vectors(PathBuf),
}

/// The test set as read: images or vectors, and the class of each.
enum TestInputs {
    Images(Vec<Image>),
    Vectors(Vec<Vec<f32>>),
}

impl TestSet {
    /// The inputs and their classes; a vector's label may be one of `names` (the model's).
    fn read(&self, names: Option<&[String]>) -> Result<(TestInputs, Vec<usize>)> {
        let (inputs, labels) = match self {
            TestSet::Idx { images, labels } => {
                let images = read_idx_images(images)?;
                let labels: Vec<usize> = read_idx_labels(labels)?
                    .into_iter()
                    .map(usize::from)
                    .collect();
                (TestInputs::Images(images), labels)
            }
            TestSet::Vectors(path) => {
                let samples = crate::input::vectors::read_samples_named(path, names)?;
                let mut labels = Vec::with_capacity(samples.len());
                let mut vectors = Vec::with_capacity(samples.len());
                for (line, s) in samples.into_iter().enumerate() {
                    labels.push(s.label.ok_or_else(|| {
                        BackendError::Data(format!(
                            "{}: test vector {} has no label (`label: v1,v2,…`)",
                            path.display(),
                            line + 1
                        ))
                    })?);
                    vectors.push(s.values);
                }
                (TestInputs::Vectors(vectors), labels)
            }
        };
        let count = match &inputs {
            TestInputs::Images(i) => i.len(),
            TestInputs::Vectors(v) => v.len(),
        };
        if count != labels.len() || count == 0 {
            return Err(BackendError::Data(format!(
                "{count} test inputs and {} labels",
                labels.len()
            )));
        }
        Ok((inputs, labels))
    }
}

pub struct EvalOptions {
    pub cases: Vec<Case>,
    pub test: TestSet,
    pub calibration: PathBuf,
    pub calibration_count: usize,
    pub params: ParameterSet,
    pub seed: u64,
    /// Quantisation widths for the reference-accuracy sweep (empty: none).
    pub widths: Vec<u32>,
    pub encrypt_from: Option<String>,
    /// How variant `act` spends its bootstraps (classes per table, gadget levels).
    pub act: crate::backend::protect::ActSettings,
    /// Prune hidden units to this agreement with the model's own classes on the calibration
    /// inputs first (`hedge protect --prune`).
    pub prune: Option<f64>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CaseReport {
    pub case: String,
    pub variant: String,
    pub test_images: usize,
    pub float_accuracy: f64,
    pub reference_accuracy: f64,
    /// Test images whose features the quantiser refused (out of the calibrated range).
    pub reference_refused: usize,
    pub encrypted_images: usize,
    pub encrypted_accuracy: f64,
    /// Share of encrypted predictions equal to the reference's (target: 1.0).
    pub encrypted_agreement: f64,
    /// Of the same sample: reference accuracy, for a like-for-like comparison.
    pub sample_reference_accuracy: f64,
    pub encrypted_ms_mean: f64,
    pub extractor_ms_mean: f64,
    /// (bits, reference accuracy) for the width sweep.
    pub width_sweep: Vec<(u32, f64)>,
    /// Sampled images whose reference margin exceeds the stated per-score bounds (for every
    /// runner-up j: score_top − score_j > bound_top + bound_j), so that noise within the bounds
    /// cannot change the class; and the agreement on those.
    #[serde(default)]
    pub decided_images: usize,
    #[serde(default)]
    pub decided_agreement: f64,
    /// Every sampled image where the encrypted class differs from the reference's.
    #[serde(default)]
    pub disagreements: Vec<Disagreement>,
    /// The noise model's expected agreement over every test image, [low, high]
    /// (`QuantModel::act_flip_probability`; [1, 1] for the exact variants).
    #[serde(default)]
    pub expected_agreement: Option<[f64; 2]>,
    /// The noise model's expected number of disagreements on the encrypted sample, [low, high],
    /// to set beside the measured `disagreements`.
    #[serde(default)]
    pub expected_disagreements: Option<[f64; 2]>,
    /// Over every accepted test image: hidden units whose pre-activation fell outside the
    /// calibrated bootstrap window (the table clamps them), and the images with at least one.
    #[serde(default)]
    pub hidden_units: usize,
    #[serde(default)]
    pub out_of_window_units: usize,
    #[serde(default)]
    pub out_of_window_images: usize,
    /// Of those, images with a unit whose read crosses into a neighbouring window, beyond the
    /// separator: the check rows refuse their results (docs/THREATS.md #27).
    #[serde(default)]
    pub crossed_images: usize,
    /// Results of the encrypted sample the decryptor refused (counted as disagreements).
    #[serde(default)]
    pub sample_refused: usize,
    /// Accepted test images with a reference score beyond what the decryptor accepts (its
    /// score limits; `noact`: twice the largest calibrated score): their results are refused.
    #[serde(default)]
    pub out_of_range_images: usize,
    /// With `--prune`: the units kept and the agreement with the unpruned model on the
    /// calibration inputs, and the same agreement on the test images.
    #[serde(default)]
    pub pruned: Option<PruneReport>,
    #[serde(default)]
    pub pruned_test_agreement: Option<f64>,
    /// Variant `act`: classes per bootstrap's table and the blind rotation's gadget levels.
    #[serde(default)]
    pub classes_per_bootstrap: Option<usize>,
    #[serde(default)]
    pub gadget_levels: Option<usize>,
}

/// One encrypted prediction that differs from the reference's, with the reference's margin
/// between the two classes and the sum of their stated score bounds.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Disagreement {
    /// Index in the test set.
    pub image: usize,
    pub reference_class: usize,
    pub encrypted_class: usize,
    pub reference_margin: i64,
    pub bound: f64,
}

/// Whether noise within `bound` (per score) cannot move the argmax of `scores`.
fn decided(scores: &[i64], bound: &[f64]) -> bool {
    let top = argmax(scores);
    scores
        .iter()
        .enumerate()
        .all(|(j, &s)| j == top || (scores[top] - s) as f64 > bound[top] + bound[j])
}

/// Features of every test input through the network's extractor, if any (plus the mean time
/// per input).
fn features(network: &Network, inputs: &TestInputs) -> Result<(Vec<Vec<f32>>, f64)> {
    let t = Instant::now();
    let f = match inputs {
        TestInputs::Images(images) => images
            .iter()
            .map(|im| network.image_features(im))
            .collect::<Result<Vec<_>, _>>()?,
        TestInputs::Vectors(vectors) => match network.extractor() {
            Some(e) => vectors
                .iter()
                .map(|v| e.run(v))
                .collect::<Result<Vec<_>, _>>()?,
            None => vectors.clone(),
        },
    };
    let n = f.len().max(1) as f64;
    Ok((f, t.elapsed().as_secs_f64() * 1e3 / n))
}

/// A network with its calibration and test-set features.
struct Loaded {
    path: PathBuf,
    network: Network,
    calibration: Vec<Vec<f32>>,
    feats: Vec<Vec<f32>>,
    extractor_ms: f64,
}

/// The integer reference over every image: its accuracy, how many images the quantiser
/// refused, and — when `noise` is given — each image's probability that the encrypted class
/// differs from the reference's (0 for refused images and for the exact variants).
struct ReferencePass {
    accuracy: f64,
    refused: usize,
    flip: Vec<FlipProbability>,
    out_of_window_units: usize,
    out_of_window_images: usize,
    crossed_images: usize,
    /// Images with a score beyond `limits`.
    out_of_range: usize,
}

fn reference_pass(
    q: &QuantModel,
    feats: &[Vec<f32>],
    labels: &[usize],
    noise: Option<&ParameterSet>,
    limits: &[f64],
) -> ReferencePass {
    let (mut correct, mut refused, mut flip) = (0, 0, Vec::new());
    let (mut out_of_window_units, mut out_of_window_images, mut out_of_range) = (0, 0, 0);
    let mut crossed_images = 0;
    for (f, &l) in feats.iter().zip(labels) {
        let p = match q.input.quantize(f) {
            Ok(xq) => {
                let r = q.reference(&xq);
                out_of_window_units += r.out_of_window;
                out_of_window_images += (r.out_of_window > 0) as usize;
                crossed_images += (r.crossed > 0) as usize;
                out_of_range += r
                    .scores
                    .iter()
                    .zip(limits)
                    .any(|(z, &limit)| z.unsigned_abs() as f64 > limit)
                    as usize;
                correct += (argmax(&r.scores) == l) as usize;
                noise.map(|params| q.act_flip_probability(&r, params))
            }
            Err(_) => {
                refused += 1;
                None
            }
        };
        if noise.is_some() {
            flip.push(p.unwrap_or_default());
        }
    }
    ReferencePass {
        accuracy: correct as f64 / feats.len().max(1) as f64,
        refused,
        flip,
        out_of_window_units,
        out_of_window_images,
        crossed_images,
        out_of_range,
    }
}

/// [low, high] sums of the flip probabilities of `images`.
fn expected_flips(flip: &[FlipProbability], images: impl Iterator<Item = usize>) -> [f64; 2] {
    images.fold([0.0, 0.0], |[low, high], i| {
        [low + flip[i].at_least, high + flip[i].at_most]
    })
}

/// Evaluate every case; `on_case` sees each report as it is done, `progress` counts the
/// encrypted inferences (the long part: seconds each for `act`).
pub fn run(
    opts: &EvalOptions,
    progress: &dyn Progress,
    on_case: &mut dyn FnMut(&CaseReport),
) -> Result<Vec<CaseReport>> {
    // Labels may be the class names the (first) model carries.
    let names = match opts.cases.first() {
        Some(c) => Network::load(&c.network, opts.encrypt_from.as_deref())?
            .head
            .labels
            .clone(),
        None => None,
    };
    let (inputs, labels) = opts.test.read(names.as_deref())?;
    let test_count = labels.len();
    progress.total(
        opts.cases
            .iter()
            .map(|c| c.encrypted.min(test_count) as u64)
            .sum(),
    );
    let keys: KeySet = keys::generate(opts.params);
    // `act`'s parameters: the gadget levels asked for, a bootstrapping key to match.
    let act_params = opts
        .params
        .with_pbs_levels(opts.act.gadget_levels)
        .ok_or_else(|| {
            BackendError::Accuracy(format!(
                "gadget levels go from 1 to {}, not {}",
                crate::crypto::params::MAX_PBS_LEVELS,
                opts.act.gadget_levels
            ))
        })?;
    let act_keys = EdgeKeys {
        public: keys.public.clone(),
        evaluation: Some(
            keys.evaluation
                .with_bootstrap_gadget(&keys.secret, &act_params),
        ),
    };
    let exact_keys = EdgeKeys {
        public: keys.public.clone(),
        evaluation: None,
    };
    let mut order: Vec<usize> = (0..test_count).collect();
    order.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(opts.seed));
    let mut reports = Vec::new();
    // Consecutive cases on the same network share its features.
    let mut loaded: Option<Loaded> = None;
    for case in &opts.cases {
        if loaded.as_ref().map(|l| &l.path) != Some(&case.network) {
            let network = Network::load(&case.network, opts.encrypt_from.as_deref())?;
            let calibration = network.read_inputs(&opts.calibration, opts.calibration_count)?;
            let (feats, extractor_ms) = features(&network, &inputs)?;
            loaded = Some(Loaded {
                path: case.network.clone(),
                network,
                calibration,
                feats,
                extractor_ms,
            });
        }
        let Loaded {
            network,
            calibration,
            feats,
            extractor_ms,
            ..
        } = loaded.as_ref().expect("loaded");
        let (pruned, pruned_test_agreement) = match opts.prune {
            Some(target) => {
                // Pruned as it is evaluated: the case's activation, none for noact.
                let evaluated = float_reference(
                    &Classifier {
                        activation: case.activation.or(network.head.activation),
                        ..network.head.clone()
                    },
                    case.variant,
                );
                let p = prune::to_agreement(&evaluated, calibration, target)?;
                let on_test =
                    prune::agreeing(&evaluated, &p.head, feats) as f64 / feats.len().max(1) as f64;
                (Some(p), Some(on_test))
            }
            None => (None, None),
        };
        let head = pruned.as_ref().map_or(&network.head, |p| &p.head);
        let float = float_reference(head, case.variant);
        let float_correct = feats
            .iter()
            .zip(&labels)
            .filter(|(f, &l)| argmax(&float.forward(f)) == l)
            .count();
        let (params, edge_keys) = match case.variant {
            Variant::Act => (act_params, &act_keys),
            _ => (opts.params, &exact_keys),
        };
        let q = match case.variant {
            Variant::Act => QuantModel::quantize_act(
                head,
                case.activation,
                calibration,
                &params,
                opts.act.classes_per_bootstrap,
            )?,
            v => QuantModel::quantize(head, v, case.activation, calibration, &params)?,
        };
        let act_map = match &q.hidden_map {
            crate::model::quant::HiddenMap::Window { map, .. } => Some(*map),
            _ => None,
        };
        progress.stage(&format!(
            "{} {}",
            case.variant.name(),
            case.network.display()
        ));
        let (enc, checks) = EncryptedModel::encrypt(&q, &keys.secret)?;
        let decoding = Decoding::new(&q, &params, keys.secret.key_id, &checks)?;
        let ReferencePass {
            accuracy: reference_accuracy,
            refused: reference_refused,
            flip,
            out_of_window_units,
            out_of_window_images,
            crossed_images,
            out_of_range,
        } = reference_pass(&q, feats, &labels, Some(&params), &decoding.score_limits);

        let mut engine = EdgeEngine::new(
            ModelInfo::of(&q, &params)?,
            params,
            keys.secret.key_id,
            edge_keys.clone(),
            &enc,
        )?;
        let sample = &order[..case.encrypted.min(order.len())];
        let bound = q.act_score_bound(&params);
        let (mut agree, mut correct, mut sample_ref_correct, mut ms) = (0, 0, 0, 0.0);
        let (mut decided_images, mut decided_agree, mut disagreements) = (0, 0, Vec::new());
        let mut sample_refused = 0;
        for &i in sample {
            let t = Instant::now();
            let result = engine.infer_plain(&feats[i])?;
            ms += t.elapsed().as_secs_f64() * 1e3;
            progress.advance(1);
            let class = match decrypt(&result, &decoding, &keys.secret) {
                Ok(d) => d.class,
                // An honest result the decryptor refuses (a read beyond its window's separator,
                // a score beyond the limits): counted as a disagreement, reported.
                Err(Refusal::Check { .. } | Refusal::OutOfRange { .. }) => {
                    sample_refused += 1;
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            let scores = q.reference(&q.input.quantize(&feats[i])?).scores;
            let reference = argmax(&scores);
            agree += (class == reference) as usize;
            correct += (class == labels[i]) as usize;
            sample_ref_correct += (reference == labels[i]) as usize;
            if decided(&scores, &bound) {
                decided_images += 1;
                decided_agree += (class == reference) as usize;
            }
            if class != reference {
                disagreements.push(Disagreement {
                    image: i,
                    reference_class: reference,
                    encrypted_class: class,
                    reference_margin: scores[reference] - scores[class],
                    bound: bound[reference] + bound[class],
                });
            }
        }
        let n = sample.len().max(1) as f64;
        let width_sweep = opts
            .widths
            .iter()
            .map(|&b| {
                let bits = BitWidths {
                    x: b,
                    w1: b,
                    a: if case.variant == Variant::Noact { 0 } else { b },
                    w2: b,
                };
                let q = QuantModel::quantize_with_bits(
                    head,
                    case.variant,
                    case.activation,
                    calibration,
                    &opts.params,
                    bits,
                )?;
                Ok((b, reference_pass(&q, feats, &labels, None, &[]).accuracy))
            })
            .collect::<Result<Vec<_>>>()?;
        let report = CaseReport {
            case: case.label.clone().unwrap_or_else(|| {
                let activation = case.activation.or(head.activation);
                match (case.variant, activation) {
                    (Variant::Act, Some(activation)) => {
                        let name = activation.name();
                        match act_map {
                            Some(map) if map.per_table < q.out_dim || params.pbs.level.0 > 1 => {
                                format!(
                                    "act ({name}, {} classes/bootstrap, {} gadget levels)",
                                    map.per_table, params.pbs.level.0
                                )
                            }
                            _ => format!("act ({name})"),
                        }
                    }
                    (v, _) => v.name().into(),
                }
            }),
            variant: case.variant.name().to_string(),
            test_images: test_count,
            float_accuracy: float_correct as f64 / test_count as f64,
            reference_accuracy,
            reference_refused,
            encrypted_images: sample.len(),
            encrypted_accuracy: correct as f64 / n,
            encrypted_agreement: agree as f64 / n,
            sample_reference_accuracy: sample_ref_correct as f64 / n,
            encrypted_ms_mean: ms / n,
            extractor_ms_mean: *extractor_ms,
            width_sweep,
            decided_images,
            decided_agreement: decided_agree as f64 / decided_images.max(1) as f64,
            disagreements,
            expected_agreement: {
                let [low, high] = expected_flips(&flip, 0..flip.len());
                let n = flip.len() as f64;
                Some([1.0 - high / n, 1.0 - low / n])
            },
            expected_disagreements: Some(expected_flips(&flip, sample.iter().copied())),
            hidden_units: q.hidden_dim,
            out_of_window_units,
            out_of_window_images,
            crossed_images,
            sample_refused,
            out_of_range_images: out_of_range,
            pruned: pruned.map(|p| p.report),
            pruned_test_agreement,
            classes_per_bootstrap: act_map.map(|m| m.per_table),
            gadget_levels: act_map.map(|_| params.pbs.level.0),
        };
        on_case(&report);
        reports.push(report);
    }
    Ok(reports)
}

#[cfg(test)]
mod tests {
    use super::decided;

    #[test]
    fn decided_needs_every_runner_up_beyond_both_bounds() {
        assert!(decided(&[10, 0, 3], &[3.0, 3.0, 3.0]));
        // 10 − 3 = 7 > 3 + 3 but not > 4 + 3.
        assert!(!decided(&[10, 0, 3], &[4.0, 3.0, 3.0]));
        assert!(!decided(&[5, 5], &[0.5, 0.5]));
    }
}
