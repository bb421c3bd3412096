//! Fixed-point quantisation and the plaintext integer reference.
//!
//! Bit widths (symmetric per-tensor scales from max |value|; inputs from a calibration set):
//!
//! | variant | features x | W1 | hidden a | W2 | where the hidden layer runs |
//! |---|---|---|---|---|---|
//! | last  | 8 | 8 | 8 (requantised, plaintext) | 8 | plaintext on the edge |
//! | noact | 6 | 6 | y itself (no rescaling)      | 6 | encrypted, no bootstrap |
//! | act   | 8 | 8 | one bootstrap slot (window of N/out slots) | 8 | encrypted + bootstrap |
//!
//! `noact` is narrower because nothing rescales between its two encrypted layers: the score
//! z = W2·(W1·x + b1) + b2 and the noise of the encrypted-features path (≈ 2^26 · ‖W2 row‖)
//! must share 64 bits; 6 bits each keep ≥ 6 bits of margin (measured, `hedge bench`).
//!
//! The reference computes exactly what the encrypted path computes: the same integers, the
//! same bias terms and, for `act`, the same rounding of the bootstrap's modulus switch (what
//! the bootstrap adds on top is its noise, bounded in docs/CRYPTO.md).

use super::activation::Activation;
use super::error::{FeatureFault, ModelError, Result};
use super::{Classifier, Dense};
use crate::crypto::lut::{UnitWindow, WindowMap, ACT_CHECK_ROWS};
use crate::crypto::params::ParameterSet;
use serde::{Deserialize, Serialize};

/// The paper's three variants.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
pub enum Variant {
    /// Only the last dense layer is encrypted.
    Last,
    /// Both dense layers encrypted, no activation between them.
    Noact,
    /// Both dense layers encrypted, activation by bootstrapping.
    Act,
}

impl Variant {
    pub const ALL: [Variant; 3] = [Variant::Last, Variant::Noact, Variant::Act];

    pub fn name(self) -> &'static str {
        match self {
            Self::Last => "last",
            Self::Noact => "noact",
            Self::Act => "act",
        }
    }

    #[cfg(feature = "backend")]
    pub(crate) fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|v| v.name() == name)
    }
}

/// The float classifier a variant computes an approximation of: `noact` drops the activation.
pub(crate) fn float_reference(model: &Classifier, variant: Variant) -> Classifier {
    match variant {
        Variant::Noact => Classifier {
            activation: None,
            ..model.clone()
        },
        _ => model.clone(),
    }
}

/// Bit widths (signed weights use bits−1 magnitude bits).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BitWidths {
    pub x: u32,
    pub w1: u32,
    pub a: u32,
    pub w2: u32,
}

impl BitWidths {
    /// For `last`: the bits of noise margin these widths cost against `base`. The noise grows
    /// with the plaintext hidden values and Δ_out shrinks with the largest score (hidden value
    /// × W2), so 2 bits per hidden bit and 1 per W2 bit.
    pub fn margin_cost(&self, base: &BitWidths) -> u32 {
        2 * self.a.saturating_sub(base.a) + self.w2.saturating_sub(base.w2)
    }

    pub fn for_variant(v: Variant) -> Self {
        match v {
            Variant::Last | Variant::Act => Self {
                x: 8,
                w1: 8,
                a: 8,
                w2: 8,
            },
            Variant::Noact => Self {
                x: 5,
                w1: 5,
                a: 0,
                w2: 5,
            },
        }
    }
}

/// Input quantisation: x_q = round((x − offset_i) / scale_i), clamped to the width. One
/// shared scale (offsets 0) serves features of one range; features whose ranges differ by
/// orders of magnitude (raw tabular data, or a scaler folded into the first layer) get one
/// scale and offset each, absorbed by the first layer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InputQuant {
    pub dim: usize,
    pub scales: Vec<f32>,
    pub offsets: Vec<f32>,
    pub min_q: i64,
    pub max_q: i64,
    /// Values beyond ±limit are refused as out of range rather than clamped.
    pub limit: f32,
}

/// How [`InputQuant`] scales the features.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum InputScaling {
    /// One scale for every feature, from the largest |value|.
    Shared,
    /// A scale and an offset per feature, from its own range.
    PerFeature,
}

impl InputQuant {
    /// The quantisation of `calibration`'s features at `bits`.
    fn calibrate(calibration: &[Vec<f32>], dim: usize, bits: u32, scaling: InputScaling) -> Self {
        const FEATURE_HEADROOM: f32 = 1.25;
        let all = calibration.iter().flatten();
        let max_abs = all
            .clone()
            .fold(0f32, |m, v| m.max(v.abs()))
            .max(f32::MIN_POSITIVE);
        let limit = 16.0 * max_abs;
        match scaling {
            InputScaling::Shared => {
                let signed = all.clone().any(|v| *v < 0.0);
                let (min_q, max_q) = if signed {
                    (-((1 << (bits - 1)) - 1), (1 << (bits - 1)) - 1)
                } else {
                    (0, (1 << bits) - 1)
                };
                Self {
                    dim,
                    scales: vec![max_abs / max_q as f32; dim],
                    offsets: vec![0.0; dim],
                    min_q,
                    max_q,
                    limit,
                }
            }
            InputScaling::PerFeature => {
                let max_q = (1i64 << (bits - 1)) - 1;
                let (mut lo, mut hi) = (vec![f32::INFINITY; dim], vec![f32::NEG_INFINITY; dim]);
                for x in calibration {
                    for (i, &v) in x.iter().enumerate() {
                        lo[i] = lo[i].min(v);
                        hi[i] = hi[i].max(v);
                    }
                }
                let offsets: Vec<f32> = lo.iter().zip(&hi).map(|(l, h)| (l + h) / 2.0).collect();
                // A calibration set is a sample: a quarter more than its range on each side
                // (a third of a bit) keeps held-out inputs from being clamped.
                let scales = lo
                    .iter()
                    .zip(&hi)
                    .map(|(l, h)| {
                        (FEATURE_HEADROOM * (h - l) / 2.0 / max_q as f32).max(max_abs * 1e-7)
                    })
                    .collect();
                Self {
                    dim,
                    scales,
                    offsets,
                    min_q: -max_q,
                    max_q,
                    limit,
                }
            }
        }
    }
}

impl InputQuant {
    /// How many features of `x` lie beyond the calibrated range and are clamped to it when
    /// quantised (0 for a vector [`Self::quantize`] refuses): such an input is computed, but
    /// on values other than its own, so its class may differ from the float model's.
    pub fn clamped(&self, x: &[f32]) -> usize {
        x.iter()
            .zip(self.scales.iter().zip(&self.offsets))
            .filter(|(v, (s, o))| {
                let q = ((**v - **o) / **s).round();
                q.is_finite() && (q < self.min_q as f32 || q > self.max_q as f32)
            })
            .count()
    }

    pub fn quantize(&self, x: &[f32]) -> Result<Vec<i64>> {
        if x.len() != self.dim {
            return Err(FeatureFault::WrongLength {
                expected: self.dim,
                got: x.len(),
            }
            .into());
        }
        x.iter()
            .enumerate()
            .map(|(i, &v)| {
                if !v.is_finite() {
                    return Err(FeatureFault::NotFinite { index: i, value: v }.into());
                }
                if v.abs() > self.limit {
                    return Err(FeatureFault::OutOfRange {
                        index: i,
                        value: v,
                        limit: self.limit,
                    }
                    .into());
                }
                let (Some(s), Some(o)) = (self.scales.get(i), self.offsets.get(i)) else {
                    return Err(ModelError::Quantisation(format!(
                        "the input quantisation has no scale for feature {i}"
                    )));
                };
                Ok((((v - o) / s).round() as i64).clamp(self.min_q, self.max_q))
            })
            .collect()
    }
}

/// How the hidden pre-activation y becomes the second layer's input a. `steps[i]` is the real
/// value one integer step of unit i's input stands for (its pre-activation y for `last`, its
/// bootstrap slot for `act`): the grid the activation is computed on (see
/// [`super::activation`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum HiddenMap {
    /// `last`: plaintext a = clamp(round(act(y)·mult), lo, hi).
    Requant {
        activation: Option<Activation>,
        steps: Vec<f64>,
        mult: f64,
        lo: i64,
        hi: i64,
    },
    /// `noact`: a = y.
    Identity,
    /// `act`: unit i's phase is Δ_h,i·y + offset(zero_i); a = round(act(slot − zero_i)).
    Window {
        map: WindowMap,
        units: Vec<UnitWindow>,
        steps: Vec<f64>,
        activation: Activation,
        /// Zero slots closing every window (docs/THREATS.md #27): a read that leaves its
        /// window by up to this many slots gets 0 for every output of the unit alike, which
        /// keeps the check rows' relation; further, it reads the neighbouring window.
        #[serde(default)]
        separator: usize,
    },
}

impl HiddenMap {
    /// Hidden unit i's second-layer input from its pre-activation y, and whether y left its
    /// bootstrap window.
    pub fn apply(&self, i: usize, y: i64) -> (i64, bool) {
        match self {
            HiddenMap::Identity => (y, false),
            HiddenMap::Requant {
                activation,
                steps,
                mult,
                lo,
                hi,
            } => {
                let v = match activation {
                    None => y as f64,
                    Some(f) => f.on_grid(y, steps.get(i).copied().unwrap_or(1.0)),
                };
                (((v * mult).round() as i64).clamp(*lo, *hi), false)
            }
            HiddenMap::Window {
                map,
                units,
                separator,
                ..
            } => {
                let (offset, outside) = map.unit_offset(units[i], y);
                let slot = offset + units[i].zero_slot as i64;
                let value = self.table_value(i, slot as usize);
                let separated = slot as usize >= map.window - separator;
                (value, outside || separated)
            }
        }
    }

    /// `act`: whether unit i's read at pre-activation y takes another output's weights
    /// ([`WindowMap::crosses`]; `outputs` counts the classes and check rows).
    pub(crate) fn crosses(&self, i: usize, y: i64, outputs: usize) -> bool {
        match self {
            HiddenMap::Window { map, units, .. } => {
                map.crosses(units[i], y, outputs, |t| self.table_value(i, t))
            }
            _ => false,
        }
    }

    /// `act`: what unit i's lookup table holds at slot t of each window: the activation on the
    /// calibrated range and its guards, 0 on the separator.
    pub(crate) fn table_value(&self, i: usize, t: usize) -> i64 {
        match self {
            HiddenMap::Window {
                map,
                units,
                separator,
                ..
            } if t < map.window - separator => {
                self.window_value(i, t as i64 - units[i].zero_slot as i64)
            }
            _ => 0,
        }
    }

    /// `act`: unit i's input to the second layer at signed slot offset d from its zero.
    pub(crate) fn window_value(&self, i: usize, d: i64) -> i64 {
        self.window_value_exact(i, d).round() as i64
    }

    /// [`Self::window_value`] before rounding (for slopes).
    fn window_value_exact(&self, i: usize, d: i64) -> f64 {
        match self {
            HiddenMap::Window {
                steps, activation, ..
            } => activation.on_grid(d, steps.get(i).copied().unwrap_or(1.0)),
            _ => d as f64,
        }
    }
}

/// A quantised classifier: integer weights, the hidden map and the output encoding.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct QuantModel {
    pub variant: Variant,
    pub bits: BitWidths,
    pub input: InputQuant,
    pub hidden_dim: usize,
    pub out_dim: usize,
    /// hidden × in, row-major; b1 at scale s_x·s_w1.
    pub w1: Vec<i64>,
    pub b1: Vec<i64>,
    pub hidden_map: HiddenMap,
    /// out × hidden, row-major; b2 at scale s_a·s_w2.
    pub w2: Vec<i64>,
    pub b2: Vec<i64>,
    /// float score = z · out_scale.
    pub out_scale: f64,
    /// Scores are encoded as Δ_out · z in the result.
    pub delta_out: u64,
    pub z_bound: i64,
}

/// What the integer reference computes for one input.
#[derive(Clone, Debug, PartialEq)]
pub struct Reference {
    pub scores: Vec<i64>,
    /// The first layer's output y, before the hidden map.
    pub pre_activation: Vec<i64>,
    pub hidden: Vec<i64>,
    /// Hidden units whose pre-activation left the bootstrap window (act only).
    pub out_of_window: usize,
    /// Of those, units whose read takes another output's weights (act only): the check rows
    /// refuse the result ([`crate::crypto::lut::WindowMap::crosses`]).
    pub crossed: usize,
}

/// Bounds on the probability that noise changes an input's class.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct FlipProbability {
    pub at_least: f64,
    pub at_most: f64,
}

/// Φ(x), the standard normal distribution function.
fn normal_cdf(x: f64) -> f64 {
    0.5 * libm::erfc(-x / std::f64::consts::SQRT_2)
}

fn symmetric_scale(values: &[f32], bits: u32) -> f32 {
    let max = values
        .iter()
        .fold(0f32, |m, v| m.max(v.abs()))
        .max(f32::MIN_POSITIVE);
    max / ((1i64 << (bits - 1)) - 1) as f32
}

/// `last`'s widths when 8 bits lose agreement (features of different magnitudes): the
/// plaintext inputs cost nothing, the hidden values and W2 cost noise margin (see
/// [`BitWidths::margin_cost`]: 8 of its 16–23 bits, docs/CRYPTO.md).
pub const LAST_WIDE_BITS: BitWidths = BitWidths {
    x: 10,
    w1: 8,
    a: 10,
    w2: 12,
};

/// Whether `last` may take [`LAST_WIDE_BITS`] when its own widths lose agreement (not when the
/// vendor set them).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Widen {
    IfShort,
    Never,
}

/// The scale of each hidden unit's integer pre-activation.
enum UnitScales {
    One(f64),
    Each(Vec<f64>),
}

impl UnitScales {
    fn of(&self, i: usize) -> f64 {
        match self {
            Self::One(s) => *s,
            Self::Each(s) => s[i],
        }
    }
}

/// A dense layer quantised row by row (each output its own weight scale), for inputs already
/// at scale 1: (weights, biases, the scale of each output).
fn quantize_rows(d: &Dense, bits: u32) -> (Vec<i64>, Vec<i64>, Vec<f64>) {
    let (mut w, mut b, mut scales) = (Vec::new(), Vec::new(), Vec::new());
    for j in 0..d.out_dim {
        let row = &d.w[j * d.in_dim..(j + 1) * d.in_dim];
        let s = symmetric_scale(row, bits) as f64;
        w.extend(row.iter().map(|v| (*v as f64 / s).round() as i64));
        b.push((d.b[j] as f64 / s).round() as i64);
        scales.push(s);
    }
    (w, b, scales)
}

fn quantize_dense(d: &Dense, bits: u32, in_scale: f64) -> (Vec<i64>, Vec<i64>, f64) {
    let s = symmetric_scale(&d.w, bits) as f64;
    let w = d.w.iter().map(|v| (*v as f64 / s).round() as i64).collect();
    let b =
        d.b.iter()
            .map(|v| (*v as f64 / (s * in_scale)).round() as i64)
            .collect();
    (w, b, s)
}

fn matvec(w: &[i64], b: &[i64], x: &[i64]) -> Vec<i64> {
    b.iter()
        .enumerate()
        .map(|(j, bj)| {
            w[j * x.len()..(j + 1) * x.len()]
                .iter()
                .zip(x)
                .map(|(w, x)| w * x)
                .sum::<i64>()
                + bj
        })
        .collect()
}

impl QuantModel {
    /// Quantise `model` for `variant` with a calibration set.
    pub fn quantize(
        model: &Classifier,
        variant: Variant,
        activation: Option<Activation>,
        calibration: &[Vec<f32>],
        params: &ParameterSet,
    ) -> Result<Self> {
        let bits = BitWidths::for_variant(variant);
        Self::quantize_scaled(
            model,
            variant,
            activation,
            calibration,
            params,
            bits,
            usize::MAX,
            Widen::IfShort,
        )
    }

    /// One shared input scale unless it loses agreement with the float model on the
    /// calibration inputs (below 99 %) and one scale per feature does better; for `last` with
    /// `widen`, then [`LAST_WIDE_BITS`] if it still loses and that does better.
    #[allow(clippy::too_many_arguments)]
    fn quantize_scaled(
        model: &Classifier,
        variant: Variant,
        activation: Option<Activation>,
        calibration: &[Vec<f32>],
        params: &ParameterSet,
        bits: BitWidths,
        per_table: usize,
        widen: Widen,
    ) -> Result<Self> {
        let float = float_reference(
            &Classifier {
                activation: activation.or(model.activation),
                ..model.clone()
            },
            variant,
        );
        let agree = |q: &QuantModel| q.agreement_with(&float, calibration);
        let enough = |n: usize| n as f64 >= 0.99 * calibration.len() as f64;
        let scaled = |bits: BitWidths| -> Result<(Self, usize)> {
            let quantize = |scaling| {
                Self::quantize_full(
                    model,
                    variant,
                    activation,
                    calibration,
                    params,
                    bits,
                    per_table,
                    scaling,
                )
            };
            let shared = quantize(InputScaling::Shared)?;
            let shared_agree = agree(&shared);
            if enough(shared_agree) {
                return Ok((shared, shared_agree));
            }
            Ok(match quantize(InputScaling::PerFeature) {
                Ok(per) => match agree(&per) {
                    n if n > shared_agree => (per, n),
                    _ => (shared, shared_agree),
                },
                Err(_) => (shared, shared_agree),
            })
        };
        let (q, n) = scaled(bits)?;
        if widen == Widen::Never || variant != Variant::Last || enough(n) {
            return Ok(q);
        }
        // Across features of different magnitudes the second layer's columns carry the input
        // scales (W2[j,i]·s_i), which 8 bits leave few levels, and the hidden values their
        // offsets. Measured on raw breast-cancer features (tests/data/raw-features, 100
        // held-out inputs): 8/8/8/8 bits 194 of 200 calibration inputs, W2 at 12 bits 199 but
        // 97 held out, with 10-bit inputs and hidden values 200 and 100.
        let (wide, wide_n) = scaled(LAST_WIDE_BITS)?;
        Ok(if wide_n > n { wide } else { q })
    }

    /// Variant `act` with `per_table` outputs in each bootstrap's lookup table (all of them
    /// when it is at least their count; the outputs are the classes and then the
    /// [`ACT_CHECK_ROWS`] check rows): fewer outputs per table, wider windows, less input noise
    /// per unit of the pre-activation, and ⌈outputs / per_table⌉ bootstraps per unit.
    pub fn quantize_act(
        model: &Classifier,
        activation: Option<Activation>,
        calibration: &[Vec<f32>],
        params: &ParameterSet,
        per_table: usize,
    ) -> Result<Self> {
        let bits = BitWidths::for_variant(Variant::Act);
        Self::quantize_scaled(
            model,
            Variant::Act,
            activation,
            calibration,
            params,
            bits,
            per_table,
            Widen::Never,
        )
    }

    /// As [`Self::quantize`] with the widths given, kept as they are: `last` with `--bits`
    /// (checked against its noise budget by the backend), and accuracy studies of the integer
    /// reference.
    pub fn quantize_with_bits(
        model: &Classifier,
        variant: Variant,
        activation: Option<Activation>,
        calibration: &[Vec<f32>],
        params: &ParameterSet,
        bits: BitWidths,
    ) -> Result<Self> {
        Self::quantize_scaled(
            model,
            variant,
            activation,
            calibration,
            params,
            bits,
            usize::MAX,
            Widen::Never,
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn quantize_full(
        model: &Classifier,
        variant: Variant,
        activation: Option<Activation>,
        calibration: &[Vec<f32>],
        params: &ParameterSet,
        bits: BitWidths,
        per_table: usize,
        scaling: InputScaling,
    ) -> Result<Self> {
        if calibration.is_empty() {
            return Err(ModelError::Quantisation("empty calibration set".into()));
        }
        let activation = activation.or(model.activation);
        let in_dim = model.in_dim();
        let (hidden_dim, out_dim) = (model.hidden.out_dim, model.out_dim());
        if let Some(x) = calibration.iter().find(|x| x.len() != in_dim) {
            return Err(ModelError::Quantisation(format!(
                "calibration vector of {} values for a model of {in_dim} inputs",
                x.len()
            )));
        }
        // Inputs
        let all: Vec<f32> = calibration.iter().flatten().copied().collect();
        if all.iter().any(|v| !v.is_finite()) {
            return Err(ModelError::Quantisation(
                "calibration set holds NaN or infinity".into(),
            ));
        }
        let input = InputQuant::calibrate(calibration, in_dim, bits.x, scaling);
        let xq: Vec<Vec<i64>> = calibration
            .iter()
            .map(|x| input.quantize(x))
            .collect::<Result<_>>()?;
        // First layer: it absorbs per-feature scales and offsets,
        // W1·x + b1 = (W1·diag s)·x_q + (b1 + W1·o).
        // s_h: the real value one step of each unit's pre-activation stands for (one for all
        // with a shared input scale; per unit otherwise, each row its own weight scale).
        let (w1, b1, s_h) = match scaling {
            InputScaling::Shared => {
                let scale = input.scales[0] as f64;
                let (w1, b1, s_w1) = quantize_dense(&model.hidden, bits.w1, scale);
                (w1, b1, UnitScales::One(scale * s_w1))
            }
            InputScaling::PerFeature => {
                let d = &model.hidden;
                let mut folded = d.clone();
                for j in 0..d.out_dim {
                    let row = &mut folded.w[j * in_dim..(j + 1) * in_dim];
                    let mut shift = 0f32;
                    for (i, w) in row.iter_mut().enumerate() {
                        shift += *w * input.offsets[i];
                        *w *= input.scales[i];
                    }
                    folded.b[j] += shift;
                }
                let (w1, b1, scales) = quantize_rows(&folded, bits.w1);
                (w1, b1, UnitScales::Each(scales))
            }
        };
        let ys: Vec<Vec<i64>> = xq.iter().map(|x| matvec(&w1, &b1, x)).collect();
        // Per-unit scales of the hidden activations, when they differ by unit (act).
        let mut hidden_scales: Option<Vec<f64>> = None;
        let (hidden_map, s_a) = match variant {
            Variant::Noact => {
                if activation.is_some() && model.activation.is_some() {
                    log::warn!("variant noact drops the model's activation");
                }
                match &s_h {
                    UnitScales::One(s) => (HiddenMap::Identity, *s),
                    UnitScales::Each(s) => {
                        hidden_scales = Some(s.clone());
                        (HiddenMap::Identity, 1.0)
                    }
                }
            }
            Variant::Last => {
                let steps: Vec<f64> = (0..hidden_dim).map(|i| s_h.of(i)).collect();
                let act_f = |i: usize, y: i64| match activation {
                    None => y as f64,
                    Some(f) => f.on_grid(y, steps[i]),
                };
                let max = ys
                    .iter()
                    .flat_map(|y| y.iter().enumerate().map(|(i, &y)| act_f(i, y).abs()))
                    .fold(0f64, f64::max)
                    .max(1.0);
                // An unsigned range where the values are never negative: one more bit.
                let unsigned = activation.is_some_and(Activation::nonnegative);
                let hi = (1i64 << (bits.a - 1)) - 1;
                let hi = if unsigned { 2 * hi + 1 } else { hi };
                let lo = if unsigned { 0 } else { -hi };
                let mult = hi as f64 / max;
                let s_a_of = |s: f64| activation.map_or(s, |f| f.out_step(s)) / mult;
                let s_a = match &s_h {
                    UnitScales::One(s) => s_a_of(*s),
                    UnitScales::Each(s) => {
                        hidden_scales = Some(s.iter().map(|&s| s_a_of(s)).collect());
                        1.0
                    }
                };
                (
                    HiddenMap::Requant {
                        activation,
                        steps,
                        mult,
                        lo,
                        hi,
                    },
                    s_a,
                )
            }
            Variant::Act => {
                let activation = activation.ok_or_else(|| {
                    ModelError::Quantisation(
                        "variant act needs an activation (the model has none: pass --activation, e.g. relu or identity)"
                            .into(),
                    )
                })?;
                let n = params.pbs_glwe.poly_size.0;
                // The classes' windows, then the check outputs' (crypto::lut::ACT_CHECK_ROWS).
                let map = WindowMap::new(n, out_dim + ACT_CHECK_ROWS, per_table);
                let window = map.window;
                let guard = (crate::crypto::params::WINDOW_GUARD_SIGMAS
                    * params.pbs_input_std_slots())
                .ceil() as usize;
                // The separator, as wide as a guard: a read the noise takes past the guard
                // reads 0 everywhere.
                let separator = guard;
                if window < 3 * guard + 16 {
                    return Err(ModelError::Quantisation(format!(
                        "{} outputs per bootstrap (classes and check rows) leave windows of \
                         {window} slots: too narrow (pass --classes-per-bootstrap with fewer)",
                        map.per_table
                    )));
                }
                let two_n = 2.0 * n as f64;
                // Per unit: its calibrated range (×1.1, always containing 0) fills the window
                // between the guards, the separator after them.
                let mut units = Vec::with_capacity(hidden_dim);
                let mut steps = Vec::with_capacity(hidden_dim);
                let mut unit_scale = Vec::with_capacity(hidden_dim);
                for i in 0..hidden_dim {
                    let lo = ys.iter().map(|y| y[i]).min().unwrap_or(0).min(-1) as f64 * 1.1;
                    let hi = ys.iter().map(|y| y[i]).max().unwrap_or(0).max(1) as f64 * 1.1;
                    let slots_per_unit = (window - separator - 2 * guard) as f64 / (hi - lo);
                    let zero_slot = (guard as f64 - lo * slots_per_unit).round() as u32;
                    let delta_h = (slots_per_unit * 2f64.powi(64) / two_n).round().max(1.0) as u64;
                    let s_eff = delta_h as f64 * two_n / 2f64.powi(64);
                    units.push(UnitWindow { delta_h, zero_slot });
                    // The real value one slot stands for, and one step of a.
                    let slot = s_h.of(i) / s_eff;
                    steps.push(slot);
                    unit_scale.push(activation.out_step(slot));
                }
                hidden_scales = Some(unit_scale);
                (
                    HiddenMap::Window {
                        map,
                        units,
                        steps,
                        activation,
                        separator,
                    },
                    1.0,
                )
            }
        };
        // Second layer: per-unit scales fold into the weights (W2[j,i]·s_i), one tensor scale.
        let output = match &hidden_scales {
            Some(scales) => Dense {
                w: model
                    .output
                    .w
                    .iter()
                    .enumerate()
                    .map(|(k, w)| (*w as f64 * scales[k % hidden_dim]) as f32)
                    .collect(),
                ..model.output.clone()
            },
            None => model.output.clone(),
        };
        // f(0), which the activation's grid leaves out (sigmoid's ½), reaches the scores
        // through the bias.
        let mut output = output;
        let evaluated = activation.filter(|_| variant != Variant::Noact);
        if let Some(f0) = evaluated.map(Activation::at_zero).filter(|&v| v != 0.0) {
            for (j, b) in output.b.iter_mut().enumerate() {
                let row = &model.output.w[j * hidden_dim..(j + 1) * hidden_dim];
                *b += (row.iter().map(|&w| w as f64).sum::<f64>() * f0) as f32;
            }
        }
        let (w2, b2, s_w2) = quantize_dense(&output, bits.w2, s_a);
        let mut q = QuantModel {
            variant,
            bits,
            input,
            hidden_dim,
            out_dim,
            w1,
            b1,
            hidden_map,
            w2,
            b2,
            out_scale: s_a * s_w2,
            delta_out: 1,
            z_bound: 1,
        };
        // Output encoding: a guaranteed bound where the hidden input is bounded (last), a
        // calibrated one with a 2× margin otherwise.
        q.z_bound = match variant {
            Variant::Last => {
                let amax = match q.hidden_map {
                    HiddenMap::Requant { lo, hi, .. } => lo.abs().max(hi),
                    _ => unreachable!(),
                };
                (0..out_dim)
                    .map(|j| {
                        q.w2_row(j).iter().map(|w| w.abs()).sum::<i64>() * amax + q.b2[j].abs()
                    })
                    .max()
                    .unwrap_or(1)
            }
            _ => {
                2 * xq
                    .iter()
                    .map(|x| {
                        q.reference(x)
                            .scores
                            .iter()
                            .map(|z| z.abs())
                            .max()
                            .unwrap_or(0)
                    })
                    .max()
                    .unwrap_or(1)
            }
        }
        .max(1);
        q.delta_out = (1u64 << 62) / q.z_bound as u64;
        Ok(q)
    }

    /// On how many of `inputs` this integer model's class is `float`'s.
    pub(crate) fn agreement_with(&self, float: &Classifier, inputs: &[Vec<f32>]) -> usize {
        inputs
            .iter()
            .filter(|x| {
                self.input.quantize(x).is_ok_and(|xq| {
                    super::argmax(&self.reference(&xq).scores) == super::argmax(&float.forward(x))
                })
            })
            .count()
    }

    /// The plaintext integer reference for a quantised input.
    pub fn reference(&self, xq: &[i64]) -> Reference {
        let y = matvec(&self.w1, &self.b1, xq);
        let (mut out_of_window, mut crossed) = (0, 0);
        let hidden: Vec<i64> = y
            .iter()
            .enumerate()
            .map(|(i, &y)| {
                let (a, outside) = self.hidden_map.apply(i, y);
                out_of_window += outside as usize;
                crossed += self.hidden_map.crosses(i, y, self.out_dim + ACT_CHECK_ROWS) as usize;
                a
            })
            .collect();
        Reference {
            scores: matvec(&self.w2, &self.b2, &hidden),
            pre_activation: y,
            hidden,
            out_of_window,
            crossed,
        }
    }

    /// Per class, the largest |score| a result of this model can decrypt to: what the weights
    /// can produce from any accepted input (`last`: the requantised hidden range; `act`: every
    /// slot of the bootstrap windows, plus the stated noise bound), or for `noact`, whose
    /// hidden layer is unbounded, what Δ_out can represent. The backend refuses results beyond
    /// it.
    #[cfg(any(feature = "backend", test))]
    pub(crate) fn score_limits(&self, params: &ParameterSet) -> Vec<f64> {
        let weighted = |j: usize, hidden_max: &dyn Fn(usize) -> i64| -> f64 {
            let row = self.w2_row(j);
            (row.iter()
                .enumerate()
                .map(|(i, w)| w.abs() * hidden_max(i))
                .sum::<i64>()
                + self.b2[j].abs()) as f64
        };
        match &self.hidden_map {
            HiddenMap::Requant { lo, hi, .. } => {
                let amax = lo.abs().max(*hi);
                (0..self.out_dim).map(|j| weighted(j, &|_| amax)).collect()
            }
            HiddenMap::Window { map, units, .. } => {
                // Every slot of the window: a saturating or non-monotone function may peak
                // inside it.
                let largest = |i: usize| {
                    let zero = units[i].zero_slot as i64;
                    (0..map.window as i64)
                        .map(|t| self.hidden_map.window_value(i, t - zero).abs())
                        .max()
                        .unwrap_or(0)
                };
                let largest: Vec<i64> = (0..self.hidden_dim).map(largest).collect();
                let noise = self.act_score_bound(params);
                (0..self.out_dim)
                    .map(|j| weighted(j, &|i| largest[i]) + noise[j])
                    .collect()
            }
            HiddenMap::Identity => vec![2.0 * self.z_bound as f64; self.out_dim],
        }
    }

    /// For `act`: a bound on |decrypted − reference| per score, exceeded with probability
    /// 2^-28.9 (6σ). A bootstrap input error of e slots moves act(t) by ≤ slope·|e|, the
    /// slope being the largest step of the activation's table (1 for every function on its
    /// grid but the square, ≈ 2·window for the square), so score j errs by Σ_i W2[j,i]·e_i,
    /// σ = slope·σ_slots·‖W2[j]‖₂, plus the bootstrap output noise of `hidden` summed
    /// accumulators divided by Δ_out.
    pub fn act_score_bound(&self, params: &ParameterSet) -> Vec<f64> {
        let HiddenMap::Window { map, ref units, .. } = self.hidden_map else {
            return vec![0.5; self.out_dim];
        };
        let slope = (0..self.hidden_dim)
            .flat_map(|i| {
                let zero = units[i].zero_slot as i64;
                (0..map.window as i64 - 1).map(move |t| {
                    (self.hidden_map.window_value(i, t + 1 - zero)
                        - self.hidden_map.window_value(i, t - zero))
                    .abs()
                })
            })
            .max()
            .unwrap_or(1)
            .max(1) as f64;
        let sigma_in = params.pbs_input_std_slots() * slope;
        let out_noise = self.act_output_noise(params);
        (0..self.out_dim)
            .map(|j| {
                let norm = self
                    .w2_row(j)
                    .iter()
                    .map(|w| (w * w) as f64)
                    .sum::<f64>()
                    .sqrt();
                6.0 * (sigma_in * sigma_in * norm * norm + out_noise * out_noise).sqrt()
            })
            .collect()
    }

    /// For `act`: the probability that the bootstrap's noise gives this input another class than
    /// the reference's (0 for the exact variants). Same noise model as [`Self::act_score_bound`],
    /// but per pair of classes and with the noise the two scores share: unit i's input error
    /// e_i ~ N(0, σ²) slots moves every score through the same δ_i = act(d_i + e_i) − act(d_i),
    /// so the margin between the reference class t and class b moves by
    /// Σ_i (W2[t,i] − W2[b,i])·δ_i, plus each score's own output noise. Var δ_i is taken as
    /// Φ(d_i/σ)·σ² for ReLU (the chance of being on its linear side; exact far from 0, σ²/2 at 0)
    /// and (f'(d_i)·σ)² for the others (2·d_i for the square), to first order, f' the table's
    /// slope at d_i. The class changes if any runner-up
    /// overtakes: at least as likely as the likeliest pair, at most their sum (union bound).
    pub fn act_flip_probability(
        &self,
        reference: &Reference,
        params: &ParameterSet,
    ) -> FlipProbability {
        self.flip_probability_with(
            reference,
            params.pbs_input_std_slots(),
            self.act_output_noise(params),
        )
    }

    /// For `act`: the noise model's agreement with the integer reference over `references`
    /// (e.g. the calibration inputs'), [low, high] from the flip probabilities' two bounds;
    /// [1, 1] for the exact variants.
    pub fn expected_agreement(&self, references: &[Reference], params: &ParameterSet) -> [f64; 2] {
        if references.is_empty() {
            return [1.0, 1.0];
        }
        let (sigma, out) = (params.pbs_input_std_slots(), self.act_output_noise(params));
        let (low, high) = references
            .iter()
            .map(|r| self.flip_probability_with(r, sigma, out))
            .fold((0.0, 0.0), |(l, h), p| (l + p.at_most, h + p.at_least));
        let n = references.len() as f64;
        [1.0 - low / n, 1.0 - high / n]
    }

    /// For `act`: the noise each score gets after the bootstraps, in score units: the
    /// bootstrap output noise of `hidden` summed accumulators, and the modulus switch of the
    /// published result ([`Self::act_switch_drop_bits`]), divided by Δ_out.
    pub fn act_output_noise(&self, params: &ParameterSet) -> f64 {
        let accumulators = self.act_accumulator_noise(params);
        let switch = crate::crypto::switch::error_std(params.pbs_glwe.poly_size.0)
            * 2f64.powi(self.act_switch_drop_bits(params) as i32);
        (accumulators * accumulators + switch * switch).sqrt() / self.delta_out as f64
    }

    /// For `act`: the low bits the published result drops. The switch's error (a standard
    /// deviation: `act` is not exact, what counts is the variance it adds) may add half the
    /// accumulators' variance, which grows their noise by at most 22 % in standard deviation
    /// — a small part of a score's noise, most of which comes from the bootstraps' inputs, and
    /// counted in the noise model, its score bound, the check rows' tolerance and the expected
    /// agreement. (A quarter, the rule before, cost a pruned head a 16th bit a word: 4,144
    /// bytes a result instead of 3,887, for noise already below the unpruned head's.)
    pub fn act_switch_drop_bits(&self, params: &ParameterSet) -> u32 {
        crate::crypto::switch::drop_bits_within(
            self.act_accumulator_noise(params) / std::f64::consts::SQRT_2,
            crate::crypto::switch::error_std(params.pbs_glwe.poly_size.0),
        )
    }

    /// The bootstrap output noise of `hidden` accumulators summed (2^64 scale).
    fn act_accumulator_noise(&self, params: &ParameterSet) -> f64 {
        params.pbs_output_std() * (self.hidden_dim as f64).sqrt()
    }

    /// Row j of W2 (the weights into output j).
    pub(crate) fn w2_row(&self, j: usize) -> &[i64] {
        &self.w2[j * self.hidden_dim..(j + 1) * self.hidden_dim]
    }

    /// [`Self::act_flip_probability`] for a bootstrap input noise of `sigma` slots and an output
    /// noise of `out_noise` score units per score (to weigh other parameter choices).
    pub fn flip_probability_with(
        &self,
        reference: &Reference,
        sigma: f64,
        out_noise: f64,
    ) -> FlipProbability {
        let HiddenMap::Window {
            map,
            ref units,
            activation,
            ..
        } = self.hidden_map
        else {
            return FlipProbability::default();
        };
        // Var δ_i per unit, from the signed slot offset d_i = t_i − zero_i: for ReLU the chance
        // of being on its linear side, for the others the table's slope there, to first order.
        let unit_var: Vec<f64> = reference
            .pre_activation
            .iter()
            .zip(units)
            .enumerate()
            .map(|(i, (&y, &u))| {
                let d = map.unit_offset(u, y).0;
                match activation {
                    Activation::Relu => normal_cdf(d as f64 / sigma) * sigma * sigma,
                    _ => {
                        let slope = (self.hidden_map.window_value_exact(i, d + 1)
                            - self.hidden_map.window_value_exact(i, d - 1))
                            / 2.0;
                        (slope * sigma).powi(2)
                    }
                }
            })
            .collect();
        let scores = &reference.scores;
        let top = crate::model::argmax(scores);
        let pairs = (0..self.out_dim).filter(|&b| b != top).map(|b| {
            let var = self
                .w2_row(top)
                .iter()
                .zip(self.w2_row(b))
                .zip(&unit_var)
                .map(|((wt, wb), v)| ((wt - wb) as f64).powi(2) * v)
                .sum::<f64>()
                + 2.0 * out_noise * out_noise;
            let margin = (scores[top] - scores[b]) as f64;
            normal_cdf(-margin / var.sqrt().max(f64::MIN_POSITIVE))
        });
        let (most, sum) = pairs.fold((0f64, 0f64), |(m, s), p| (m.max(p), s + p));
        FlipProbability {
            at_least: most,
            at_most: sum.min(1.0),
        }
    }

    /// First layer with the bias as last column (row-major hidden × (in + 1)).
    #[cfg(any(feature = "backend", test))]
    pub(crate) fn w1_with_bias(&self) -> Vec<i64> {
        with_bias(&self.w1, &self.b1, self.input.dim)
    }

    #[cfg(any(feature = "backend", test))]
    pub(crate) fn w2_with_bias(&self) -> Vec<i64> {
        with_bias(&self.w2, &self.b2, self.hidden_dim)
    }
}

#[cfg(any(feature = "backend", test))]
fn with_bias(w: &[i64], b: &[i64], in_dim: usize) -> Vec<i64> {
    let mut out = Vec::with_capacity(w.len() + b.len());
    for (j, bj) in b.iter().enumerate() {
        out.extend_from_slice(&w[j * in_dim..(j + 1) * in_dim]);
        out.push(*bj);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::crypto::params::SecurityLevel;
    use crate::model::{argmax, synth};

    #[test]
    fn inputs_beyond_the_calibrated_range_are_counted() {
        let q = InputQuant {
            dim: 3,
            scales: vec![1.0, 0.5, 2.0],
            offsets: vec![0.0, 1.0, 0.0],
            min_q: -127,
            max_q: 127,
            limit: 1e6,
        };
        assert_eq!(q.clamped(&[127.0, 64.0, -254.0]), 0, "the edges are inside");
        assert_eq!(q.clamped(&[128.0, 64.0, -256.0]), 2);
        assert_eq!(
            q.quantize(&[128.0, 64.0, -256.0]).unwrap(),
            vec![127, 126, -127]
        );
    }

    #[test]
    fn quantised_reference_agrees_with_float_model() {
        let task = synth::Task::new(3, 96, 10);
        let model = synth::classifier(3, &task, 64, Some(Activation::Relu));
        let calib: Vec<Vec<f32>> = task.samples(10, 200).into_iter().map(|s| s.0).collect();
        let params = ParameterSet::for_level(SecurityLevel::L128);
        for variant in Variant::ALL {
            let q = QuantModel::quantize(&model, variant, None, &calib, &params).unwrap();
            let test = task.samples(11, 300);
            let float_model = float_reference(&model, variant);
            let agree = test
                .iter()
                .filter(|(x, _)| {
                    let r = q.reference(&q.input.quantize(x).unwrap());
                    argmax(&r.scores) == argmax(&float_model.forward(x))
                })
                .count();
            assert!(agree >= 285, "{variant:?}: {agree}/300");
        }
    }

    /// The flip probability's bounds against a Monte-Carlo run of its own noise model (Gaussian
    /// input error rounded to slots, through ReLU and W2, plus output noise), at two noise
    /// levels: the simulated flips lie between the bounds (10 % statistical slack).
    #[test]
    fn flip_probability_bounds_simulated_noise() {
        use rand::{Rng, SeedableRng};
        let task = synth::Task::new(5, 48, 10);
        let model = synth::classifier(5, &task, 64, Some(Activation::Relu));
        let calib: Vec<Vec<f32>> = task.samples(12, 200).into_iter().map(|s| s.0).collect();
        let params = ParameterSet::for_level(SecurityLevel::L128);
        let q = QuantModel::quantize(&model, Variant::Act, None, &calib, &params).unwrap();
        let HiddenMap::Window { map, ref units, .. } = q.hidden_map else {
            unreachable!()
        };
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let mut gauss = |s: f64| {
            let (u, v): (f64, f64) = (rng.gen_range(1e-12..1.0), rng.gen());
            s * (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
        };
        let inputs = task.samples(13, 100);
        for (sigma, out_noise) in [(8.0, 600.0), (12.0, 1000.0)] {
            let (mut low, mut high, mut flips, trials) = (0.0, 0.0, 0usize, 400);
            for (x, _) in &inputs {
                let r = q.reference(&q.input.quantize(x).unwrap());
                let top = argmax(&r.scores);
                let p = q.flip_probability_with(&r, sigma, out_noise);
                low += trials as f64 * p.at_least;
                high += trials as f64 * p.at_most;
                let d: Vec<f64> = r
                    .pre_activation
                    .iter()
                    .zip(units)
                    .map(|(&y, &u)| map.unit_offset(u, y).0 as f64)
                    .collect();
                for _ in 0..trials {
                    let a: Vec<f64> = d
                        .iter()
                        .map(|&d| (d + gauss(sigma).round()).max(0.0))
                        .collect();
                    let scores: Vec<f64> = (0..q.out_dim)
                        .map(|j| {
                            let z: f64 = q
                                .w2_row(j)
                                .iter()
                                .zip(&a)
                                .map(|(&w, &a)| w as f64 * a)
                                .sum();
                            z + q.b2[j] as f64 + gauss(out_noise)
                        })
                        .collect();
                    flips += (argmax(&scores) != top) as usize;
                }
            }
            let flips = flips as f64;
            assert!(
                flips > 200.0,
                "σ {sigma}: too few flips to compare: {flips}"
            );
            assert!(
                0.9 * low <= flips && flips <= 1.1 * high && low < high,
                "σ {sigma}: {low:.0} ≤ {flips} ≤ {high:.0}"
            );
        }
        // Exact variants never flip; no noise, no flips (these inputs have no exact ties).
        let exact = QuantModel::quantize(&model, Variant::Noact, None, &calib, &params).unwrap();
        let r = exact.reference(&exact.input.quantize(&calib[0]).unwrap());
        assert_eq!(exact.act_flip_probability(&r, &params).at_most, 0.0);
        let r = q.reference(&q.input.quantize(&calib[0]).unwrap());
        assert!(q.flip_probability_with(&r, 1e-9, 1e-9).at_most < 1e-12);
    }

    #[test]
    fn bad_features_are_refused_clearly() {
        let q = InputQuant {
            dim: 3,
            scales: vec![0.1; 3],
            offsets: vec![0.0; 3],
            min_q: 0,
            max_q: 255,
            limit: 100.0,
        };
        assert!(matches!(
            q.quantize(&[1.0, 2.0]),
            Err(ModelError::Features(_))
        ));
        assert!(matches!(
            q.quantize(&[1.0, f32::NAN, 0.0]),
            Err(ModelError::Features(_))
        ));
        assert!(matches!(
            q.quantize(&[1.0, 1e9, 0.0]),
            Err(ModelError::Features(_))
        ));
        assert_eq!(q.quantize(&[0.1, 30.0, -1.0]).unwrap(), vec![1, 255, 0]);
    }
}
