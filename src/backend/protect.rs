//! Protection: quantise a classifier, encrypt it under the backend's keys and sign it into an
//! edge bundle.

use super::keys::BackendKeys;
use super::registry::{BundleRecord, Registry};
use super::BackendError;
use super::Result;
use crate::bundle::{BundleHeader, EdgeBundle};
use crate::crypto::keys::EdgeKeys;
use crate::crypto::lut::WindowMap;
use crate::crypto::lut::ACT_CHECK_ROWS;
use crate::crypto::params::{ParameterSet, MAX_PBS_LEVELS};
use crate::engine::{Decoding, EncryptedModel, ModelInfo, ResultChecks};
use crate::model::activation::Activation;
use crate::model::quant::{BitWidths, QuantModel, Variant, LAST_WIDE_BITS};
use crate::model::split::PlainExtractor;
use crate::model::Classifier;
use crate::progress::Progress;
use std::path::{Path, PathBuf};

/// Everything protection produced.
pub struct Protected {
    pub bundle: EdgeBundle,
    pub quant: QuantModel,
    pub bytes: Vec<u8>,
    /// Variant `act`: the setting used and what it expects.
    pub act: Option<ActCandidate>,
    /// The class names the registry records for the decryptor (never shipped to a board).
    pub labels: Option<Vec<String>>,
    /// The secret check outputs the model was encrypted with (registry only, like the labels).
    pub checks: ResultChecks,
    /// How often the integer model agrees with the float model on the calibration inputs.
    pub agreement: Agreement,
}

/// The integer model's agreement with the float model it approximates (argmax on the
/// calibration inputs), and — when it is not total — what loses the precision.
#[derive(Clone, Debug, PartialEq)]
pub struct Agreement {
    pub agree: usize,
    pub total: usize,
    /// Why inputs disagree and what to do, when some do.
    pub diagnosis: Option<String>,
}

impl Agreement {
    pub fn fraction(&self) -> f64 {
        self.agree as f64 / self.total.max(1) as f64
    }

    /// The 95 % Wilson score interval of the agreement the calibration inputs stand for.
    pub fn interval(&self) -> (f64, f64) {
        let (n, p, z2) = (self.total.max(1) as f64, self.fraction(), 1.96f64 * 1.96);
        let centre = p + z2 / (2.0 * n);
        let half = 1.96 * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt();
        let scale = 1.0 + z2 / n;
        ((centre - half) / scale, ((centre + half) / scale).min(1.0))
    }

    /// Refuse a model whose integer form agrees with its float form on less than `min` of its
    /// inputs, as the calibration set shows at 95 % confidence (a near-tie or two in a small
    /// set is not enough): protecting it would make a classifier that is silently wrong.
    pub fn require(&self, min: f64) -> Result<()> {
        let (low, high) = self.interval();
        if high + 1e-12 >= min {
            return Ok(());
        }
        Err(BackendError::Agreement(format!(
            "the integer model agrees with the float model on {:.1} % of {} calibration inputs \
             (95 % interval {:.1}–{:.1} %), below --min-agreement {:.1} %. {}",
            100.0 * self.fraction(),
            self.total,
            100.0 * low,
            100.0 * high,
            100.0 * min,
            self.diagnosis.as_deref().unwrap_or("")
        )))
    }
}

/// Measure the agreement and, when it is not total, find the cause: inputs whose scales span
/// orders of magnitude under one shared scale, or widths too narrow for the model.
fn agreement(
    model: &Classifier,
    q: &QuantModel,
    calibration: &[Vec<f32>],
    params: &ParameterSet,
) -> Agreement {
    let total = calibration.len();
    let agree = q.agreement_with(model, calibration);
    if agree == total {
        return Agreement {
            agree,
            total,
            diagnosis: None,
        };
    }
    let wide = crate::model::quant::BitWidths {
        x: 16,
        w1: 16,
        a: 16,
        w2: 16,
    };
    let at_16 = QuantModel::quantize_with_bits(model, q.variant, None, calibration, params, wide)
        .ok()
        .map(|w| w.agreement_with(model, calibration) as f64 / total as f64);
    // Per feature, the largest |value| seen.
    let mut max = vec![0f32; q.input.dim];
    for x in calibration {
        for (m, v) in max.iter_mut().zip(x) {
            *m = m.max(v.abs());
        }
    }
    let used: Vec<(usize, f32)> = max
        .iter()
        .copied()
        .enumerate()
        .filter(|m| m.1 > 0.0)
        .collect();
    let hi = used.iter().copied().max_by(|a, b| a.1.total_cmp(&b.1));
    let lo = used.iter().copied().min_by(|a, b| a.1.total_cmp(&b.1));
    let span = match (hi, lo) {
        (Some(h), Some(l)) => (h.1 / l.1).log10(),
        _ => 0.0,
    };
    let wider = at_16
        .map(|f| {
            format!(
                " (at 16 bits the integer model would agree on {:.1} %)",
                100.0 * f
            )
        })
        .unwrap_or_default();
    let diagnosis = match (hi, lo) {
        (Some(h), Some(l)) if span >= 2.0 => format!(
            "Cause: the inputs span {span:.1} orders of magnitude (feature {} reaches {}, \
             feature {} only {}) and share one {}-bit scale, so the small ones quantise to \
             nothing{wider}. Fix: standardise the features before the model — export it with \
             its scaler (e.g. scikit-learn's Pipeline(StandardScaler(), …)) or scale them at \
             the data source — then protect again.",
            h.0, h.1, l.0, l.1, q.bits.x
        ),
        _ => format!(
            "Cause: {}-bit inputs and weights lose what separates some classes{wider}. Fix: \
             check the calibration inputs are the model's own (same preprocessing as in \
             training), standardise the features, or retrain with weight decay.",
            q.bits.x
        ),
    };
    Agreement {
        agree,
        total,
        diagnosis: Some(diagnosis),
    }
}

/// How variant `act` spends its bootstraps: classes per lookup table (fewer: wider windows,
/// less input noise per unit of pre-activation, ⌈classes / it⌉ bootstraps per hidden unit)
/// and gadget levels of the blind rotation (more: less output noise, that many times the work
/// per bootstrap).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ActSettings {
    /// `usize::MAX`: every class in one table (the default).
    pub classes_per_bootstrap: usize,
    pub gadget_levels: usize,
}

impl Default for ActSettings {
    fn default() -> Self {
        Self {
            classes_per_bootstrap: usize::MAX,
            gadget_levels: 1,
        }
    }
}

/// One setting of variant `act` weighed by the noise model on the calibration inputs.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ActCandidate {
    /// Classes per table as used (at most the class count).
    pub classes_per_bootstrap: usize,
    pub gadget_levels: usize,
    /// Blind rotations per inference.
    pub bootstraps: usize,
    /// Work relative to the default (one table per unit, one level): tables × levels.
    pub relative_cost: f64,
    /// Expected agreement with the integer reference, [low, high].
    pub expected_agreement: [f64; 2],
}

impl ActCandidate {
    /// The setting of a model mapped through `map` with `levels` gadget levels.
    pub fn new(
        map: &WindowMap,
        out: usize,
        hidden: usize,
        levels: usize,
        expected_agreement: [f64; 2],
    ) -> Self {
        let groups = map.groups(out + ACT_CHECK_ROWS);
        Self {
            classes_per_bootstrap: map.per_table,
            gadget_levels: levels,
            bootstraps: groups * hidden,
            relative_cost: (groups * levels) as f64,
            expected_agreement,
        }
    }
}

/// Every setting worth weighing for `model` (distinct table counts × gadget levels), cheapest
/// first, each with its expected agreement on `calibration`.
pub fn act_candidates(
    model: &Classifier,
    activation: Option<Activation>,
    calibration: &[Vec<f32>],
    params: &ParameterSet,
) -> Result<Vec<ActCandidate>> {
    let out = model.out_dim();
    // Tables hold the classes' windows and then the check outputs'.
    let outputs = out + ACT_CHECK_ROWS;
    let mut per_table: Vec<usize> = (1..=outputs)
        .map(|groups| outputs.div_ceil(groups))
        .collect();
    per_table.dedup();
    let mut candidates = Vec::new();
    for c in per_table {
        let q = match QuantModel::quantize_act(model, activation, calibration, params, c) {
            Ok(q) => q,
            // Too many classes for one table's windows: fewer will do.
            Err(crate::model::ModelError::Quantisation(_)) if c > 1 => continue,
            Err(e) => return Err(e.into()),
        };
        let references = reference_sample(&q, calibration);
        for levels in 1..=MAX_PBS_LEVELS {
            let p = params
                .with_pbs_levels(levels)
                .expect("levels within 1..=MAX_PBS_LEVELS");
            candidates.push(ActCandidate::new(
                &window_map(&q),
                out,
                q.hidden_dim,
                levels,
                q.expected_agreement(&references, &p),
            ));
        }
    }
    candidates.sort_by(|a, b| {
        a.relative_cost
            .total_cmp(&b.relative_cost)
            .then(b.expected_agreement[0].total_cmp(&a.expected_agreement[0]))
    });
    Ok(candidates)
}

/// The bootstrap windows of a model quantised for `act`.
fn window_map(q: &QuantModel) -> WindowMap {
    match q.hidden_map {
        crate::model::quant::HiddenMap::Window { map, .. } => map,
        _ => unreachable!("quantize_act maps through bootstrap windows"),
    }
}

/// The integer reference of every calibration input the quantiser accepts.
fn reference_sample(
    q: &QuantModel,
    calibration: &[Vec<f32>],
) -> Vec<crate::model::quant::Reference> {
    calibration
        .iter()
        .filter_map(|x| q.input.quantize(x).ok())
        .map(|x| q.reference(&x))
        .collect()
}

/// The cheapest candidate whose expected agreement with the integer reference (the noise
/// model's lower bound over the calibration inputs) reaches `target`.
pub fn choose_act(candidates: &[ActCandidate], target: f64) -> Result<ActSettings> {
    if !(0.0..=1.0).contains(&target) {
        return Err(BackendError::Accuracy(format!(
            "an agreement target is a share in [0, 1], not {target}"
        )));
    }
    if let Some(c) = candidates
        .iter()
        .find(|c| c.expected_agreement[0] >= target)
    {
        return Ok(ActSettings {
            classes_per_bootstrap: c.classes_per_bootstrap,
            gadget_levels: c.gadget_levels,
        });
    }
    let best = candidates
        .iter()
        .max_by(|a, b| a.expected_agreement[0].total_cmp(&b.expected_agreement[0]));
    Err(BackendError::Accuracy(match best {
        Some(b) => format!(
            "no setting reaches an expected agreement of {:.2} % on these calibration inputs; \
             the best, {} output(s) per bootstrap with {} gadget level(s) ({}× the default's \
             work), expects {:.2}–{:.2} %",
            100.0 * target,
            b.classes_per_bootstrap,
            b.gadget_levels,
            b.relative_cost,
            100.0 * b.expected_agreement[0],
            100.0 * b.expected_agreement[1]
        ),
        None => "the model leaves no setting to choose from".into(),
    }))
}

/// The hidden activation protection uses: the trained one unless the vendor says otherwise.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum HiddenActivation {
    #[default]
    AsTrained,
    /// `--activation`: this one instead (or where the model has none).
    Use(Activation),
    /// `--drop-activation`: none, although the model has one.
    Drop,
}

/// The activation `variant` will evaluate for `model`, refusing a change of the vendor's model
/// that was not asked for: `noact` would silently drop a trained activation, `act` needs one.
pub fn hidden_activation(
    model: &Classifier,
    variant: Variant,
    choice: HiddenActivation,
) -> Result<Option<Activation>> {
    let trained = model.activation;
    let name = |a: Activation| format!("a {}", a.name());
    match (variant, choice, trained) {
        (Variant::Noact, HiddenActivation::AsTrained, Some(a)) => {
            Err(BackendError::ModelChange(format!(
                "the model has {} after its hidden layer; --variant noact would drop it and \
                 change what the model computes (pass --drop-activation to do so knowingly, or \
                 use --variant act or last)",
                name(a)
            )))
        }
        (Variant::Noact, HiddenActivation::Use(_), _) => Err(BackendError::ModelChange(
            "--variant noact evaluates no activation: --activation does not apply".into(),
        )),
        (Variant::Act, HiddenActivation::AsTrained, None) => Err(BackendError::ModelChange(
            "the model has no activation after its hidden layer; --variant act bootstraps one: \
             pass --activation (relu, identity, …) to add it knowingly, or use --variant noact"
                .into(),
        )),
        (Variant::Act, HiddenActivation::Drop, _) => Err(BackendError::ModelChange(
            "--variant act evaluates an activation: --drop-activation does not apply (use \
             --variant noact)"
                .into(),
        )),
        (_, HiddenActivation::Use(a), _) => Ok(Some(a)),
        (_, HiddenActivation::Drop, _) => Ok(None),
        (_, HiddenActivation::AsTrained, a) => Ok(a),
    }
}

/// Quantise, encrypt and sign a classifier for one variant (`act` with `settings`).
#[allow(clippy::too_many_arguments)]
pub fn protect(
    keys: &BackendKeys,
    model: &Classifier,
    variant: Variant,
    activation: HiddenActivation,
    settings: ActSettings,
    calibration: &[Vec<f32>],
    name: &str,
    extractor: Option<PlainExtractor>,
    epoch: u64,
    widths: Option<BitWidths>,
    progress: &dyn Progress,
) -> Result<Protected> {
    let BackendKeys {
        secret,
        public,
        evaluation,
        signer,
    } = keys;
    progress.stage("quantising");
    // The model as it will be evaluated: the quantiser takes its activation from it.
    let model = &Classifier {
        activation: hidden_activation(model, variant, activation)?,
        ..model.clone()
    };
    let activation = model.activation;
    let (quant, params, act) = if variant == Variant::Act {
        let params = secret
            .params
            .with_pbs_levels(settings.gadget_levels)
            .ok_or_else(|| {
                BackendError::Accuracy(format!(
                    "gadget levels go from 1 to {MAX_PBS_LEVELS}, not {}",
                    settings.gadget_levels
                ))
            })?;
        if settings.classes_per_bootstrap == 0 {
            return Err(BackendError::Accuracy(
                "classes per bootstrap must be at least 1".into(),
            ));
        }
        let q = QuantModel::quantize_act(
            model,
            activation,
            calibration,
            &params,
            settings.classes_per_bootstrap,
        )?;
        let candidate = ActCandidate::new(
            &window_map(&q),
            q.out_dim,
            q.hidden_dim,
            settings.gadget_levels,
            q.expected_agreement(&reference_sample(&q, calibration), &params),
        );
        (q, params, Some(candidate))
    } else {
        let q = match widths {
            Some(bits) => {
                check_widths(variant, bits)?;
                QuantModel::quantize_with_bits(
                    model,
                    variant,
                    activation,
                    calibration,
                    &secret.params,
                    bits,
                )?
            }
            None => QuantModel::quantize(model, variant, activation, calibration, &secret.params)?,
        };
        (q, secret.params, None)
    };
    let agreement = agreement(model, &quant, calibration, &params);
    progress.stage("encrypting the model");
    // Only the bootstrapping variant needs evaluation keys; another gadget, another
    // bootstrapping key under the same secret keys.
    let evaluation = act.map(|_| evaluation.with_bootstrap_gadget(secret, &params));
    let (encrypted, checks) = EncryptedModel::encrypt(&quant, secret)?;
    let bundle = EdgeBundle {
        header: BundleHeader {
            params,
            key_id: secret.key_id,
            model: ModelInfo::of(&quant, &params)?,
            created: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            name: name.to_string(),
            epoch,
            expected_agreement: act.map(|a| a.expected_agreement),
        },
        keys: EdgeKeys {
            public: public.clone(),
            evaluation,
        },
        model: encrypted,
        extractor,
    };
    progress.stage("signing");
    let bytes = bundle.to_bytes(signer);
    Ok(Protected {
        bundle,
        quant,
        bytes,
        act,
        labels: model.labels.clone(),
        checks,
        agreement,
    })
}

/// Widths a vendor sets (`--bits`): `last` only — the plaintext side's widths are free, the
/// hidden values' and W2's cost noise margin, at most what [`LAST_WIDE_BITS`] costs (tested at
/// every security level).
fn check_widths(variant: Variant, bits: BitWidths) -> Result<()> {
    if variant != Variant::Last {
        return Err(BackendError::Widths(format!(
            "--variant {}'s widths are fixed by its noise budget; --bits applies to --variant last",
            variant.name()
        )));
    }
    let widths = [bits.x, bits.w1, bits.a, bits.w2];
    if widths.iter().any(|b| !(2..=16).contains(b)) {
        return Err(BackendError::Widths(format!(
            "{widths:?}: each width is 2 to 16 bits"
        )));
    }
    let base = BitWidths::for_variant(variant);
    let (cost, most) = (bits.margin_cost(&base), LAST_WIDE_BITS.margin_cost(&base));
    if cost > most {
        return Err(BackendError::Widths(format!(
            "hidden values of {} bits and W2 of {} cost {cost} bits of noise margin; at most \
             {most} keep every result decryptable at every security level (e.g. --bits {},{},{},{})",
            bits.a,
            bits.w2,
            LAST_WIDE_BITS.x,
            LAST_WIDE_BITS.w1,
            LAST_WIDE_BITS.a,
            LAST_WIDE_BITS.w2
        )));
    }
    Ok(())
}

/// The epoch for the next bundle: one above every bundle the registry recorded.
pub fn next_epoch(registry: &Path) -> Result<u64> {
    Ok(Registry::open(registry)?.latest_epoch()? + 1)
}

/// Record a protected bundle in the registry, with everything decrypting its results needs
/// (and its key set, if the registry does not know it yet).
pub fn record(p: &Protected, keys: &BackendKeys, keys_dir: &Path, registry: &Path) -> Result<()> {
    super::keys::record(keys, keys_dir, registry)?;
    let r = Registry::open(registry)?;
    let header = &p.bundle.header;
    r.add_bundle(&BundleRecord {
        id: crate::bundle::bundle_id(&p.bytes),
        name: header.name.clone(),
        variant: header.model.variant,
        input_dim: header.model.input.dim,
        hidden_dim: header.model.hidden_dim,
        out_dim: header.model.out_dim,
        epoch: header.epoch,
        decoding: Decoding::new(&p.quant, &header.params, header.key_id, &p.checks)?
            .refusing(&p.bundle.model)?
            .labelled(p.labels.clone())?,
    })?;
    Ok(())
}

/// Where the bundle of a variant goes by default.
pub fn default_bundle_path(dir: &Path, variant: Variant) -> PathBuf {
    dir.join(format!("{}.bundle", variant.name()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::params::SecurityLevel;
    use crate::model::synth;

    fn candidate(c: usize, levels: usize, low: f64) -> ActCandidate {
        ActCandidate {
            classes_per_bootstrap: c,
            gadget_levels: levels,
            bootstraps: 10usize.div_ceil(c) * 64,
            relative_cost: (10usize.div_ceil(c) * levels) as f64,
            expected_agreement: [low, low + 0.001],
        }
    }

    #[test]
    fn the_cheapest_setting_that_reaches_the_target_is_chosen() {
        let candidates = [
            candidate(10, 1, 0.980),
            candidate(10, 2, 0.985),
            candidate(5, 1, 0.990),
            candidate(5, 2, 0.996),
            candidate(1, 3, 0.999),
        ];
        let chosen = |t| choose_act(&candidates, t).unwrap();
        assert_eq!(
            chosen(0.0),
            ActSettings {
                classes_per_bootstrap: 10,
                gadget_levels: 1
            }
        );
        assert_eq!(chosen(0.99).classes_per_bootstrap, 5);
        assert_eq!(chosen(0.995).gadget_levels, 2);
        let err = choose_act(&candidates, 0.9995).unwrap_err().to_string();
        assert!(
            err.contains("the best, 1 output(s) per bootstrap with 3"),
            "{err}"
        );
        assert!(err.contains("99.90–100.00 %"), "{err}");
        assert!(choose_act(&candidates, 1.5).is_err());
        assert!(choose_act(&candidates, f64::NAN).is_err());
    }

    /// What protection evaluates is the trained model unless a flag says otherwise.
    #[test]
    fn a_change_of_the_model_must_be_asked_for() {
        use HiddenActivation::*;
        let task = synth::Task::new(1, 12, 3);
        let relu = synth::classifier(1, &task, 6, Some(Activation::Relu));
        let none = synth::classifier(1, &task, 6, None);
        let msg = |r: Result<Option<Activation>>| r.unwrap_err().to_string();
        assert!(
            msg(hidden_activation(&relu, Variant::Noact, AsTrained)).contains("--drop-activation")
        );
        assert!(msg(hidden_activation(&none, Variant::Act, AsTrained))
            .contains("pass --activation (relu, identity"));
        assert!(hidden_activation(&none, Variant::Act, Drop).is_err());
        assert!(hidden_activation(&relu, Variant::Noact, Use(Activation::Relu)).is_err());
        assert_eq!(
            hidden_activation(&relu, Variant::Noact, Drop).unwrap(),
            None
        );
        assert_eq!(
            hidden_activation(&none, Variant::Noact, AsTrained).unwrap(),
            None
        );
        assert_eq!(
            hidden_activation(&relu, Variant::Act, AsTrained).unwrap(),
            Some(Activation::Relu)
        );
        assert_eq!(
            hidden_activation(&none, Variant::Act, Use(Activation::Square)).unwrap(),
            Some(Activation::Square)
        );
        assert_eq!(
            hidden_activation(&relu, Variant::Last, AsTrained).unwrap(),
            Some(Activation::Relu)
        );
        assert_eq!(hidden_activation(&relu, Variant::Last, Drop).unwrap(), None);
    }

    /// On a real model the noise model ranks the knobs as the physics says: fewer outputs per
    /// table (10 classes and the check rows) or more gadget levels never expect less agreement.
    #[test]
    fn fewer_classes_per_table_and_more_levels_expect_no_less_agreement() {
        let params = ParameterSet::for_level(SecurityLevel::L128);
        let task = synth::Task::new(5, 48, 10);
        let model = synth::classifier(5, &task, 64, Some(Activation::Relu));
        let calib: Vec<Vec<f32>> = task.samples(20, 300).into_iter().map(|s| s.0).collect();
        let candidates = act_candidates(&model, None, &calib, &params).unwrap();
        let per_tables: Vec<usize> = {
            let mut v: Vec<usize> = candidates.iter().map(|c| c.classes_per_bootstrap).collect();
            v.sort_unstable();
            v.dedup();
            v
        };
        assert_eq!(ACT_CHECK_ROWS, 4);
        assert_eq!(per_tables, [1, 2, 3, 4, 5, 7, 14]);
        assert_eq!(candidates.len(), per_tables.len() * MAX_PBS_LEVELS);
        assert_eq!(
            (
                candidates[0].classes_per_bootstrap,
                candidates[0].gadget_levels
            ),
            (14, 1),
            "the default is the cheapest"
        );
        let find = |c, l| {
            candidates
                .iter()
                .find(|x| x.classes_per_bootstrap == c && x.gadget_levels == l)
                .unwrap()
                .expected_agreement[0]
        };
        for l in 1..=MAX_PBS_LEVELS {
            for w in per_tables.windows(2) {
                assert!(find(w[0], l) >= find(w[1], l) - 1e-4, "{w:?} at {l} levels");
            }
        }
        for c in &per_tables {
            for l in 1..MAX_PBS_LEVELS {
                assert!(
                    find(*c, l + 1) >= find(*c, l) - 1e-4,
                    "{c} classes, {l} levels"
                );
            }
        }
    }
}
