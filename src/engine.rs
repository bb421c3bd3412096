//! Encrypted inference: the encrypted model (built by the backend, run by the edge), the
//! edge-side engine and the result ciphertext it publishes.
//!
//! Single-threaded by design: no rayon pool is ever touched on the inference path, and every
//! buffer is sized by the model, so memory is bounded.

use crate::crypto::error::CryptoError;
use crate::crypto::ggsw::{ExactGgsw, FftEngine};
use crate::crypto::keys::{EdgeKeys, KeyId, KeyKind, PreparedEvaluationKeys, SecretKeys};
use crate::crypto::linear::{
    encrypt_features, encrypt_features_each, EncryptedGgswRows, EncryptedMatrix, PackedLayout,
    PreparedGgswRows, PreparedMatrix,
};
use crate::crypto::lut::{EncryptedLuts, PreparedLuts};
use crate::crypto::params::ParameterSet;
use crate::crypto::pke::PreparedPublicKey;
use crate::crypto::raw::U64s;
use crate::files::IoError;
use crate::model::quant::{HiddenMap, InputQuant, QuantModel, Variant};
use crate::model::ModelError;
use serde::{Deserialize, Serialize};
use std::io::Write;
use tfhe::core_crypto::prelude::*;

/// The engine's errors: inputs it refuses, keys that do not match, models or results whose
/// parts do not fit together.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("key mismatch: {0}")]
    KeyMismatch(String),
    /// An encrypted model or result whose parts do not fit together.
    #[error("malformed {0}")]
    Malformed(String),
    /// Encrypted features that do not fit this engine.
    #[error("bad encrypted features: {0}")]
    Features(String),
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Io(#[from] IoError),
}

impl EngineError {
    /// A short name for counting rejected inputs by kind.
    pub fn kind(&self) -> &'static str {
        match self {
            EngineError::KeyMismatch(_) => "key mismatch",
            EngineError::Malformed(_) => "malformed",
            EngineError::Features(_) | EngineError::Crypto(CryptoError::Features(_)) => {
                "bad encrypted features"
            }
            EngineError::Crypto(_) => "bad ciphertext",
            EngineError::Model(e) => e.kind(),
            EngineError::Io(_) => "io",
        }
    }
}

pub type Result<T, E = EngineError> = std::result::Result<T, E>;

/// Where the features come from: plaintext on the edge (only the model is secret), or
/// encrypted with the bundle's public key before inference (`enc`: on the edge, inside the
/// inference, or at a data source that sends encrypted frames).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum FeatureMode {
    #[default]
    Plain,
    Enc,
}

impl FeatureMode {
    pub fn name(self) -> &'static str {
        match self {
            Self::Plain => "plain",
            Self::Enc => "enc",
        }
    }
}

/// The plaintext first layer of variant `last` (public, like the feature extractor).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PlainLayer {
    pub w: Vec<i64>,
    pub b: Vec<i64>,
    pub map: HiddenMap,
}

/// The encrypted part of a model, per variant.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum EncryptedModel {
    Last {
        first: PlainLayer,
        output: EncryptedMatrix,
    },
    Noact {
        first: EncryptedMatrix,
        second: EncryptedGgswRows,
    },
    Act {
        first: EncryptedMatrix,
        luts: EncryptedLuts,
    },
}

impl EncryptedModel {
    pub fn variant(&self) -> Variant {
        match self {
            Self::Last { .. } => Variant::Last,
            Self::Noact { .. } => Variant::Noact,
            Self::Act { .. } => Variant::Act,
        }
    }

    /// Bytes of encrypted weights and biases (keys and plaintext parts excluded).
    pub fn encrypted_bytes(&self) -> usize {
        match self {
            Self::Last { output, .. } => output.byte_len(),
            Self::Noact { first, second } => first.byte_len() + second.byte_len(),
            Self::Act { first, luts } => first.byte_len() + luts.byte_len(),
        }
    }

    /// Fingerprints of the masks of its GLWEs (weights and lookup tables), sorted.
    pub fn mask_fingerprints(&self) -> Result<Vec<u64>> {
        let fingerprint = |glwe: &[u64]| mask_fingerprint(&glwe[..glwe.len() / 2]);
        let first = match self {
            Self::Last { output, .. } => output,
            Self::Noact { first, .. } | Self::Act { first, .. } => first,
        };
        let mut out: Vec<u64> = first.prepare()?.ciphertexts().map(fingerprint).collect();
        if let Self::Act { luts, .. } = self {
            out.extend(luts.prepare()?.ciphertexts().map(fingerprint));
        }
        out.sort_unstable();
        out.dedup();
        Ok(out)
    }

    /// Encrypt a quantised model under `keys` (backend side), with fresh secret check outputs
    /// for the variants that carry them: the checks go to the registry's [`Decoding`], never
    /// into the bundle.
    pub fn encrypt(q: &QuantModel, keys: &SecretKeys) -> Result<(Self, ResultChecks)> {
        let checks = ResultChecks::draw(q, &keys.params, &mut rand::rngs::OsRng)?;
        Ok((Self::encrypt_with(q, keys, &checks)?, checks))
    }

    /// [`Self::encrypt`] with the given checks.
    pub fn encrypt_with(q: &QuantModel, keys: &SecretKeys, checks: &ResultChecks) -> Result<Self> {
        let p = keys.params;
        let (hidden, out) = (q.hidden_dim, q.out_dim);
        if q.variant != Variant::Last && !checks.rows.is_empty() {
            return Err(CryptoError::Unsupported(format!(
                "check outputs for variant {}",
                q.variant.name()
            ))
            .into());
        }
        Ok(match q.variant {
            Variant::Last => {
                let rows = out + checks.rows.len();
                let layout = PackedLayout::new(p.wide.poly_size, rows, hidden + 1)?;
                let mut weights = q.w2_with_bias();
                weights.extend(checks.combine(&weights[..out * (hidden + 1)], hidden + 1));
                let mut scales = vec![q.delta_out; out];
                scales.extend(checks.deltas());
                Self::Last {
                    first: PlainLayer {
                        w: q.w1.clone(),
                        b: q.b1.clone(),
                        map: q.hidden_map.clone(),
                    },
                    output: EncryptedMatrix::encrypt(
                        &keys.wide,
                        KeyKind::Wide,
                        p.wide,
                        &weights,
                        layout,
                        &scales,
                        &vec![0; layout.out_dim],
                        WIDE_DROP_BITS,
                    ),
                }
            }
            Variant::Noact => {
                let layout = PackedLayout::new(p.wide.poly_size, hidden, q.input.dim + 1)?;
                if layout.blocks() != 1 {
                    return Err(CryptoError::Unsupported(format!(
                        "noact needs the hidden width ({hidden}) to fit one polynomial ({})",
                        p.wide.poly_size
                    ))
                    .into());
                }
                Self::Noact {
                    first: EncryptedMatrix::encrypt(
                        &keys.wide,
                        KeyKind::Wide,
                        p.wide,
                        &q.w1_with_bias(),
                        layout,
                        &vec![q.delta_out; layout.out_dim],
                        &vec![0; layout.out_dim],
                        WIDE_DROP_BITS,
                    ),
                    second: EncryptedGgswRows::encrypt(
                        &keys.wide,
                        KeyKind::Wide,
                        p.wide,
                        &q.w2,
                        &q.b2,
                        out,
                        hidden,
                        p.weights_ggsw,
                        q.delta_out,
                    )?,
                }
            }
            Variant::Act => {
                let HiddenMap::Window {
                    map,
                    units,
                    activation,
                } = &q.hidden_map
                else {
                    return Err(ModelError::Quantisation(
                        "act model without a bootstrap window".into(),
                    )
                    .into());
                };
                let layout = PackedLayout::new(p.pbs_glwe.poly_size, hidden, q.input.dim + 1)?;
                Self::Act {
                    first: EncryptedMatrix::encrypt(
                        &keys.pbs,
                        KeyKind::Pbs,
                        p.pbs_glwe,
                        &q.w1_with_bias(),
                        layout,
                        &units.iter().map(|u| u.delta_h).collect::<Vec<_>>(),
                        &units
                            .iter()
                            .map(|u| map.offset(u.zero_slot))
                            .collect::<Vec<_>>(),
                        // Noise after this layer is ~2^26 and the bootstrap reads 2^52-wide
                        // slots: 24 dropped bits add ≲ 2^23·‖x‖ ≈ 2^37.
                        24,
                    ),
                    luts: EncryptedLuts::encrypt(
                        &keys.pbs,
                        p.pbs_glwe,
                        *map,
                        &units.iter().map(|u| u.zero_slot).collect::<Vec<_>>(),
                        *activation,
                        &q.w2,
                        &q.b2,
                        out,
                        hidden,
                        q.delta_out,
                    ),
                }
            }
        })
    }
}

/// Bits of each secret check coefficient, and check rows per result of variant `last`: a
/// result changed in any way passes one row with probability at most 2^-CHECK_BITS, all of
/// them with at most 2^-(CHECK_BITS·CHECK_ROWS) = 2^-20 (docs/THREATS.md).
pub const CHECK_BITS: u32 = 5;
pub const CHECK_ROWS: usize = 4;

/// Secret check outputs of a protected model: extra output rows, each a secret random
/// combination Σ_c r_c·(row c) of the class rows (weights and bias) plus a secret odd offset ρ
/// on the bias column, encrypted like them and encoded at a power-of-two Δ of their own so
/// that the combination's whole range fits. The board cannot compute the rows' values without
/// r and ρ; an honest result satisfies check_k = Σ_c r_{k,c}·score_c + ρ_k exactly. The offset
/// pins the bias input to 1: the bundle's weight ciphertexts on their own (bias 0), sums and
/// differences of results (bias 2, 0) fail it. Kept in the backend's registry ([`Decoding`])
/// only: the bundle carries the encrypted rows, never r or ρ.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ResultChecks {
    /// One coefficient per class and check row, each in [0, 2^CHECK_BITS).
    pub rows: Vec<Vec<i64>>,
    /// log2 Δ of each check row.
    pub log2_deltas: Vec<u32>,
    /// ρ of each check row: odd, in [1, 2^CHECK_BITS).
    #[serde(default)]
    pub offsets: Vec<i64>,
}

impl ResultChecks {
    /// Fresh checks for `q` (none for the variants that do not carry them yet).
    pub fn draw(
        q: &QuantModel,
        params: &ParameterSet,
        rng: &mut (impl rand::RngCore + rand::CryptoRng),
    ) -> Result<Self> {
        use rand::Rng;
        let mut checks = Self::default();
        if q.variant != Variant::Last {
            return Ok(checks);
        }
        let limits = q.score_limits(params);
        while checks.rows.len() < CHECK_ROWS {
            let r: Vec<i64> = (0..q.out_dim)
                .map(|_| rng.gen_range(0..1i64 << CHECK_BITS))
                .collect();
            if r.iter().all(|&c| c == 0) {
                continue;
            }
            let offset = rng.gen_range(0..1i64 << (CHECK_BITS - 1)) * 2 + 1;
            let bound: f64 = r
                .iter()
                .zip(&limits)
                .map(|(&c, &l)| c as f64 * l)
                .sum::<f64>()
                + offset as f64;
            // Δ·bound ≤ 2^62, as for the classes: a quarter of the torus each side.
            let log2_delta = (62.0 - bound.log2()).floor().min(62.0);
            if log2_delta < 16.0 {
                return Err(EngineError::Malformed(format!(
                    "model: scores of up to 2^{:.0} leave no room for check outputs",
                    bound.log2()
                )));
            }
            checks.rows.push(r);
            checks.log2_deltas.push(log2_delta as u32);
            checks.offsets.push(offset);
        }
        Ok(checks)
    }

    /// Δ of each check row.
    pub fn deltas(&self) -> impl Iterator<Item = u64> + '_ {
        self.log2_deltas.iter().map(|&l| 1u64 << l)
    }

    /// The check rows of a matrix whose rows are the classes' (row-major, `cols` wide, the
    /// bias last).
    pub fn combine(&self, class_rows: &[i64], cols: usize) -> Vec<i64> {
        let mut out = vec![0i64; self.rows.len() * cols];
        for (k, r) in self.rows.iter().enumerate() {
            let row = &mut out[k * cols..(k + 1) * cols];
            for (&rc, class) in r.iter().zip(class_rows.chunks_exact(cols)) {
                for (o, &w) in row.iter_mut().zip(class) {
                    *o += rc * w;
                }
            }
            row[cols - 1] += self.offset(k);
        }
        out
    }

    /// What check row `k` must decrypt to for these class scores.
    pub fn expected(&self, k: usize, scores: &[i64]) -> i128 {
        self.rows[k]
            .iter()
            .zip(scores)
            .map(|(&c, &s)| c as i128 * s as i128)
            .sum::<i128>()
            + self.offset(k) as i128
    }

    fn offset(&self, k: usize) -> i64 {
        self.offsets.get(k).copied().unwrap_or(0)
    }

    /// −log2 of the largest probability that a changed result passes every row.
    pub fn strength_bits(&self) -> u32 {
        CHECK_BITS * self.rows.len() as u32
    }
}

/// Public facts about a protected model that the edge and the decryptor need.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelInfo {
    pub variant: Variant,
    pub input: InputQuant,
    pub hidden_dim: usize,
    pub out_dim: usize,
    pub delta_out: u64,
    pub out_scale: f64,
}

impl ModelInfo {
    pub fn of(q: &QuantModel) -> Self {
        Self {
            variant: q.variant,
            input: q.input.clone(),
            hidden_dim: q.hidden_dim,
            out_dim: q.out_dim,
            delta_out: q.delta_out,
            out_scale: q.out_scale,
        }
    }
}

/// An encrypted inference result as it travels: the key it is under and the raw words of
/// each part. How to read it — which key, which coefficients, Δ, scale, what an honest result
/// looks like — is not in it: the backend takes all of that from its own record of the bundle
/// ([`Decoding`]), so a board cannot choose how its ciphertexts are decrypted.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ResultCiphertext {
    pub key_id: KeyId,
    pub parts: Vec<U64s>,
}

impl ResultCiphertext {
    /// Serialised size in bytes.
    pub fn byte_len(&self) -> usize {
        postcard::to_allocvec(self).map(|v| v.len()).unwrap_or(0)
    }
}

/// The shape of one part of a result.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PartShape {
    /// A GLWE (k = 1); class scores at these coefficients.
    Glwe { slots: Vec<u32> },
    /// An LWE of dimension N holding one class score.
    Lwe,
}

/// How to read the results of one protected model: recorded by the backend when it protects
/// the model, never taken from a result.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Decoding {
    pub key_id: KeyId,
    pub key: KeyKind,
    pub poly_size: u32,
    pub delta_out: u64,
    pub out_scale: f64,
    pub parts: Vec<PartShape>,
    /// Exact variants decode every score exactly: an honest phase lies within Δ/8 of Δ·z
    /// (measured noise margins are 3–23 bits beyond Δ/2, docs/PERFORMANCE.md).
    pub exact: bool,
    /// |score| each class can reach ([`QuantModel::score_limits`]).
    pub score_limits: Vec<f64>,
    /// Fingerprints of the masks of the bundle's own GLWEs (weights, lookup tables), sorted:
    /// one of them submitted as a result would decrypt to model weights.
    #[serde(default)]
    pub own_masks: Vec<u64>,
    /// The class names, one per class, when the model's export carried them (or the vendor
    /// named them): kept by the backend only, a board never sees them.
    #[serde(default)]
    pub labels: Option<Vec<String>>,
    /// The secret check outputs, read after the classes (none in records made before them).
    #[serde(default)]
    pub checks: ResultChecks,
}

impl Decoding {
    /// The decoding of `q`'s results under `params` and the key set `key_id`, with the checks
    /// its model was encrypted with.
    pub fn new(
        q: &QuantModel,
        params: &ParameterSet,
        key_id: KeyId,
        checks: &ResultChecks,
    ) -> Result<Self> {
        let out = q.out_dim;
        let (key, poly_size, parts) = match &q.hidden_map {
            HiddenMap::Window { map, .. } => (
                KeyKind::Pbs,
                params.pbs_glwe.poly_size,
                (0..map.groups(out))
                    .map(|g| PartShape::Glwe {
                        slots: (0..map.group_classes(g, out).len() as u32)
                            .map(|w| w * map.window as u32)
                            .collect(),
                    })
                    .collect(),
            ),
            _ if q.variant == Variant::Noact => (
                KeyKind::Wide,
                params.wide.poly_size,
                vec![PartShape::Lwe; out],
            ),
            _ => {
                let rows = out + checks.rows.len();
                let layout = PackedLayout::new(params.wide.poly_size, rows, q.hidden_dim + 1)?;
                let parts = (0..layout.blocks())
                    .map(|b| PartShape::Glwe {
                        slots: (0..layout.rows_in(b) as u32).collect(),
                    })
                    .collect();
                (KeyKind::Wide, params.wide.poly_size, parts)
            }
        };
        Ok(Self {
            key_id,
            key,
            poly_size: poly_size as u32,
            delta_out: q.delta_out,
            out_scale: q.out_scale,
            parts,
            exact: q.variant != Variant::Act,
            score_limits: q.score_limits(params),
            own_masks: Vec::new(),
            labels: None,
            checks: checks.clone(),
        })
    }

    /// Variant `last` is verifiable only with its check outputs: a record made before them
    /// cannot tell a crafted result from an honest one.
    fn verifiable(&self) -> bool {
        let last = self.key == KeyKind::Wide
            && self
                .parts
                .iter()
                .all(|p| matches!(p, PartShape::Glwe { .. }));
        !last || !self.checks.rows.is_empty()
    }

    /// The same, refusing the GLWEs of `model` (the bundle's) as results.
    pub fn refusing(mut self, model: &EncryptedModel) -> Result<Self> {
        self.own_masks = model.mask_fingerprints()?;
        Ok(self)
    }

    /// The same, naming the classes (one label per class).
    pub fn labelled(mut self, labels: Option<Vec<String>>) -> Result<Self> {
        if let Some(l) = &labels {
            if l.len() != self.score_limits.len() {
                return Err(EngineError::Malformed(format!(
                    "{} labels for {} classes",
                    l.len(),
                    self.score_limits.len()
                )));
            }
        }
        self.labels = labels;
        Ok(self)
    }

    /// Words of each part's ciphertext.
    fn part_words(&self, part: &PartShape) -> usize {
        let n = self.poly_size as usize;
        match part {
            PartShape::Glwe { .. } => 2 * n,
            PartShape::Lwe => n + 1,
        }
    }
}

/// Why a result is refused before anything of it is revealed.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum Refusal {
    #[error("encrypted under key {found}, the bundle's key is {expected}")]
    WrongKey { found: String, expected: String },
    #[error("the secret key loaded is {loaded}, the bundle's key is {expected}")]
    SecretKey { loaded: String, expected: String },
    #[error("{found} parts, the bundle's results have {expected}")]
    PartCount { found: usize, expected: usize },
    #[error("part {part} has {found} words, expected {expected}")]
    PartSize {
        part: usize,
        found: usize,
        expected: usize,
    },
    #[error("part {part} has a trivial or structured mask (not a computed ciphertext)")]
    Mask { part: usize },
    #[error("part {part} is one of the bundle's own ciphertexts, not a result")]
    BundleCiphertext { part: usize },
    #[error("score {class} lies 2^{log2_error:.1} off its grid, beyond an honest result's noise")]
    Noise { class: usize, log2_error: f64 },
    #[error("score {class} is outside what the model can produce")]
    OutOfRange { class: usize },
    /// Every class scores the same (a zero phase, e.g. an encryption of zero or a low gadget
    /// row of encrypted features): no decision to reveal, and no honest model output.
    #[error("every class scores the same: not a model output")]
    Degenerate,
    /// A check output disagrees with the scores: the result was changed or forged.
    #[error("check output {row} disagrees with the scores: not computed from this bundle")]
    Check { row: usize },
    #[error(
        "results of this bundle cannot be verified (protected before check outputs): protect \
         the model again (hedge protect) and deploy the new bundle"
    )]
    Unverifiable,
}

impl Refusal {
    /// A short name for counting refusals by kind.
    pub fn kind(&self) -> &'static str {
        match self {
            Refusal::WrongKey { .. } => "wrong key",
            Refusal::SecretKey { .. } => "secret key",
            Refusal::PartCount { .. } | Refusal::PartSize { .. } => "shape",
            Refusal::Mask { .. } | Refusal::BundleCiphertext { .. } => "mask",
            Refusal::Noise { .. } => "noise",
            Refusal::OutOfRange { .. } | Refusal::Degenerate => "range",
            Refusal::Check { .. } => "check",
            Refusal::Unverifiable => "unverifiable",
        }
    }
}

/// Decrypted scores.
#[derive(Clone, Debug, PartialEq)]
pub struct Decrypted {
    /// The raw phases, one per class (diagnostics only: they carry the noise).
    pub phases: Vec<u64>,
    /// round(phase / Δ_out): the integer scores.
    pub scores: Vec<i64>,
    /// scores · out_scale.
    pub float_scores: Vec<f32>,
    pub class: usize,
    /// log2(Δ/2) − log2(max |phase − Δ·score|): how much more noise exact decoding tolerates.
    pub noise_margin_bits: f64,
}

/// A short fingerprint of a GLWE's mask (its first N words): enough to recognise a verbatim
/// copy of one of the bundle's ciphertexts (a re-randomised copy is a chosen-input query like
/// any other, which no check can tell apart: docs/THREATS.md). Not a cryptographic hash: an
/// honest mask is uniform, and one pass keeps the check off the decryption's cost.
fn mask_fingerprint(mask: &[u64]) -> u64 {
    mask.iter().fold(0x9e37_79b9_7f4a_7c15, |h: u64, &w| {
        (h ^ w).wrapping_mul(0x0100_0000_01b3).rotate_left(29)
    })
}

/// Coefficient `k` of mask·s in Z[X]/(X^N + 1) modulo 2^64: N multiply-adds for the one
/// coefficient a class slot needs, instead of the whole product.
fn negacyclic_coefficient(mask: &[u64], s: &[u64], k: usize) -> u64 {
    // (a·s)_k = Σ_{i<=k} a_i s_{k−i} − Σ_{i>k} a_i s_{N+k−i}
    let low = mask[..=k]
        .iter()
        .zip(s[..=k].iter().rev())
        .fold(0u64, |acc, (&a, &b)| acc.wrapping_add(a.wrapping_mul(b)));
    let high = mask[k + 1..]
        .iter()
        .zip(s[k + 1..].iter().rev())
        .fold(0u64, |acc, (&a, &b)| acc.wrapping_add(a.wrapping_mul(b)));
    low.wrapping_sub(high)
}

/// A ciphertext's mask looks computed: a fresh or computed mask is uniform modulo 2^64, where a
/// zero word or two equal neighbours each have probability 2^-64. Zero, constant, monomial and
/// other sparse hand-made masks are not (one pass, no allocation).
fn mask_is_plausible(mask: &[u64]) -> bool {
    let repeats = mask.windows(2).filter(|w| w[0] == w[1]).count();
    let zeros = mask.iter().filter(|&&w| w == 0).count();
    (repeats + zeros) * 4 < mask.len()
}

/// The result has the shape of `decoding`'s results under the loaded key.
fn check_shape(
    result: &ResultCiphertext,
    decoding: &Decoding,
    keys: &SecretKeys,
) -> Result<(), Refusal> {
    if keys.key_id != decoding.key_id {
        return Err(Refusal::SecretKey {
            loaded: hex(&keys.key_id),
            expected: hex(&decoding.key_id),
        });
    }
    if result.key_id != decoding.key_id {
        return Err(Refusal::WrongKey {
            found: hex(&result.key_id),
            expected: hex(&decoding.key_id),
        });
    }
    if result.parts.len() != decoding.parts.len() {
        return Err(Refusal::PartCount {
            found: result.parts.len(),
            expected: decoding.parts.len(),
        });
    }
    let n = decoding.poly_size as usize;
    for (i, (data, shape)) in result.parts.iter().zip(&decoding.parts).enumerate() {
        let expected = decoding.part_words(shape);
        if data.0.len() != expected || keys.key(decoding.key).polynomial_size().0 != n {
            return Err(Refusal::PartSize {
                part: i,
                found: data.0.len(),
                expected,
            });
        }
    }
    Ok(())
}

/// The phases of the class slots (shape checked first). No plausibility checks: for the
/// vendor's diagnostics and benchmarks, never for results from the boards ([`decrypt`]).
pub fn phases(
    result: &ResultCiphertext,
    decoding: &Decoding,
    keys: &SecretKeys,
) -> Result<Vec<u64>, Refusal> {
    check_shape(result, decoding, keys)?;
    let sk = keys.key(decoding.key);
    let n = decoding.poly_size as usize;
    let mut phases = Vec::new();
    for (data, shape) in result.parts.iter().zip(&decoding.parts) {
        match shape {
            PartShape::Glwe { slots } => {
                // Only the class slots: the body less one coefficient of mask·s each.
                let (mask, body) = data.0.split_at(n);
                phases.extend(slots.iter().map(|&k| {
                    let k = k as usize;
                    body[k].wrapping_sub(negacyclic_coefficient(mask, sk.as_ref(), k))
                }));
            }
            PartShape::Lwe => {
                let ct = LweCiphertext::from_container(data.0.as_slice(), crate::crypto::modulus());
                let lwe_key = LweSecretKey::from_container(sk.as_ref());
                phases.push(decrypt_lwe_ciphertext(&lwe_key, &ct).0);
            }
        }
    }
    Ok(phases)
}

/// Decrypt a result as `decoding` says, after checking that it has the shape and the look of
/// an honest result of that model; nothing is revealed of a refused one.
pub fn decrypt(
    result: &ResultCiphertext,
    decoding: &Decoding,
    keys: &SecretKeys,
) -> Result<Decrypted, Refusal> {
    check_shape(result, decoding, keys)?;
    let n = decoding.poly_size as usize;
    for (i, (data, shape)) in result.parts.iter().zip(&decoding.parts).enumerate() {
        let mask = &data.0[..n];
        if !mask_is_plausible(mask) {
            return Err(Refusal::Mask { part: i });
        }
        if matches!(shape, PartShape::Glwe { .. })
            && decoding
                .own_masks
                .binary_search(&mask_fingerprint(mask))
                .is_ok()
        {
            return Err(Refusal::BundleCiphertext { part: i });
        }
    }
    if !decoding.verifiable() {
        return Err(Refusal::Unverifiable);
    }
    let phases = phases(result, decoding, keys)?;
    let classes = decoding.score_limits.len();
    if phases.len() != classes + decoding.checks.rows.len() {
        return Err(Refusal::PartCount {
            found: phases.len(),
            expected: classes + decoding.checks.rows.len(),
        });
    }
    let (class_phases, check_phases) = phases.split_at(classes);
    let delta = decoding.delta_out;
    let error = |p: u64, z: i64, delta: u64| {
        (p.wrapping_sub((z as u64).wrapping_mul(delta)) as i64).unsigned_abs()
    };
    let scores: Vec<i64> = class_phases.iter().map(|&p| decode(p, delta)).collect();
    let errors: Vec<u64> = class_phases
        .iter()
        .zip(&scores)
        .map(|(&p, &z)| error(p, z, delta))
        .collect();
    for (class, (&z, &limit)) in scores.iter().zip(&decoding.score_limits).enumerate() {
        if decoding.exact && errors[class] > delta / 8 {
            return Err(Refusal::Noise {
                class,
                log2_error: (errors[class] as f64).log2(),
            });
        }
        if z.unsigned_abs() as f64 > limit {
            return Err(Refusal::OutOfRange { class });
        }
    }
    // Each check is exact: on its grid, and equal to its secret combination of the scores
    // (both sides within a quarter of its torus, so equal as integers iff equal modulo it).
    let mut margin = (delta as f64 / 2.0).log2()
        - (errors.iter().copied().max().unwrap_or(0).max(1) as f64).log2();
    let checks = &decoding.checks;
    for (row, (&p, check_delta)) in check_phases.iter().zip(checks.deltas()).enumerate() {
        let z = decode(p, check_delta);
        let e = error(p, z, check_delta);
        if e > check_delta / 8 || z as i128 != checks.expected(row, &scores) {
            return Err(Refusal::Check { row });
        }
        margin = margin.min((check_delta as f64 / 2.0).log2() - (e.max(1) as f64).log2());
    }
    if scores.windows(2).all(|w| w[0] == w[1]) {
        return Err(Refusal::Degenerate);
    }
    let float_scores: Vec<f32> = scores
        .iter()
        .map(|&z| (z as f64 * decoding.out_scale) as f32)
        .collect();
    Ok(Decrypted {
        class: crate::model::argmax(&scores),
        noise_margin_bits: margin,
        phases: class_phases.to_vec(),
        scores,
        float_scores,
    })
}

/// Nearest integer z with Δ·z ≈ phase (signed).
pub fn decode(phase: u64, delta: u64) -> i64 {
    ((phase as i64) as f64 / delta as f64).round() as i64
}

/// Bytes of `value`'s postcard encoding (a length prefix's, for the streamed writer).
fn postcard_len(value: &usize) -> usize {
    postcard::to_allocvec(value)
        .expect("serialising to a Vec cannot fail")
        .len()
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Features encrypted with the public key for the encrypted-features mode, as they travel
/// from a data source to the edge: one standard-domain GGSW per column group of the encrypted
/// layer's input (for `last`, the plaintext first layer's output), and the id of the key they
/// were encrypted under.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EncryptedFeatures {
    pub key_id: KeyId,
    pub decomp: crate::crypto::params::DecompParams,
    groups: Vec<U64s>,
}

impl EncryptedFeatures {
    pub fn byte_len(&self) -> usize {
        self.groups.iter().map(U64s::byte_len).sum()
    }

    /// The GGSWs, one per column group, in the standard domain.
    pub fn groups(&self) -> &[U64s] {
        &self.groups
    }
}

enum Prepared {
    Last {
        first: PlainLayer,
        output: PreparedMatrix,
    },
    Noact {
        first: PreparedMatrix,
        second: PreparedGgswRows,
    },
    Act {
        first: PreparedMatrix,
        luts: PreparedLuts,
        eval: PreparedEvaluationKeys,
    },
}

impl Prepared {
    /// The encrypted layer the (quantised) features enter.
    fn first_matrix(&self) -> &PreparedMatrix {
        match self {
            Prepared::Last { output, .. } => output,
            Prepared::Noact { first, .. } | Prepared::Act { first, .. } => first,
        }
    }
}

/// The edge's inference engine: an encrypted model expanded in memory.
pub struct EdgeEngine {
    pub info: ModelInfo,
    pub params: ParameterSet,
    key_id: KeyId,
    prepared: Prepared,
    public_key: PreparedPublicKey,
    fft: FftEngine,
}

impl EdgeEngine {
    pub fn new(
        info: ModelInfo,
        params: ParameterSet,
        key_id: KeyId,
        keys: &EdgeKeys,
        model: &EncryptedModel,
    ) -> Result<Self> {
        if model.variant() != info.variant {
            return Err(EngineError::Malformed(
                "model: it disagrees with its header on the variant".into(),
            ));
        }
        let (prepared, key) = match model {
            EncryptedModel::Last { first, output } => {
                check_plain_layer(first, info.hidden_dim, info.input.dim)?;
                (
                    Prepared::Last {
                        first: first.clone(),
                        output: output.prepare()?,
                    },
                    output.key,
                )
            }
            EncryptedModel::Noact { first, second } => (
                Prepared::Noact {
                    first: first.prepare()?,
                    second: second.prepare()?,
                },
                first.key,
            ),
            EncryptedModel::Act { first, luts } => {
                let eval = keys
                    .evaluation
                    .as_ref()
                    .ok_or_else(|| {
                        EngineError::Malformed("model: act without evaluation keys".into())
                    })?
                    .prepare(&params)?;
                (
                    Prepared::Act {
                        first: first.prepare()?,
                        luts: luts.prepare()?,
                        eval,
                    },
                    first.key,
                )
            }
        };
        let public_key = keys.public.key(key).prepare()?;
        let fft = FftEngine::new(public_key.poly_size());
        Ok(Self {
            info,
            params,
            key_id,
            prepared,
            public_key,
            fft,
        })
    }

    /// Variant `act`: what the bootstraps of one inference take on this machine, in seconds,
    /// from a few measured key switches and blind rotations (the first layer and the sample
    /// extractions, a few per cent, are left out); `None` for the exact variants.
    pub fn bootstrap_seconds_per_inference(&self) -> Option<f64> {
        let Prepared::Act { luts, eval, .. } = &self.prepared else {
            return None;
        };
        let (key_switch, rotation) =
            crate::crypto::lut::bootstrap_seconds(eval, luts.map.poly_size, 8);
        let groups = luts.map.groups(luts.out_dim) as f64;
        Some(self.info.hidden_dim as f64 * (key_switch + groups * rotation))
    }

    fn encrypted_layer_input(&self, x: &[f32]) -> Result<Vec<i64>> {
        let xq = self.info.input.quantize(x)?;
        let mut input = match &self.prepared {
            Prepared::Last { first, .. } => first_layer_hidden(first, &xq),
            _ => xq,
        };
        input.push(1); // bias column
        Ok(input)
    }

    fn first_layout(&self) -> PackedLayout {
        self.prepared.first_matrix().layout
    }

    /// Encrypt a feature vector with the public key (the encrypted-features mode).
    pub fn encrypt_features(&mut self, x: &[f32]) -> Result<EncryptedFeatures> {
        let input = self.encrypted_layer_input(x)?;
        let decomp = self.features_decomp();
        let layout = self.first_layout();
        Ok(EncryptedFeatures {
            key_id: self.key_id,
            decomp,
            groups: encrypt_features(&mut self.public_key, &layout, &input, decomp)?,
        })
    }

    /// Whether `x` is a feature vector this engine accepts (what every inference checks first).
    pub fn check_features(&self, x: &[f32]) -> Result<()> {
        self.encrypted_layer_input(x).map(|_| ())
    }

    /// The postcard size of [`Self::encrypt_features`]' output, known before encrypting.
    pub fn encrypted_features_len(&self) -> usize {
        let layout = self.first_layout();
        let group_bytes = 8 * ExactGgsw::standard_words(layout.poly_size, self.features_decomp());
        self.encrypted_features_head().len()
            + layout.groups() * (postcard_len(&group_bytes) + group_bytes)
    }

    /// The postcard encoding of [`EncryptedFeatures`] up to its groups: key id, decomposition,
    /// group count (a struct is its fields in order; a sequence is its length, then the items).
    fn encrypted_features_head(&self) -> Vec<u8> {
        let mut head = postcard::to_allocvec(&(self.key_id, self.features_decomp()))
            .expect("serialising to a Vec cannot fail");
        head.extend(
            postcard::to_allocvec(&self.first_layout().groups())
                .expect("serialising to a Vec cannot fail"),
        );
        head
    }

    /// [`Self::encrypt_features`] written to `w` as postcard — the same bytes — one group at a
    /// time, so the hundreds of MB of a full classifier's features are never held whole.
    pub fn write_encrypted_features(&mut self, x: &[f32], w: &mut dyn Write) -> Result<()> {
        let input = self.encrypted_layer_input(x)?;
        let io = |e| EngineError::Io(IoError::new("encrypted features output", e));
        w.write_all(&self.encrypted_features_head()).map_err(io)?;
        let (decomp, layout) = (self.features_decomp(), self.first_layout());
        encrypt_features_each(&mut self.public_key, &layout, &input, decomp, |group| {
            let bytes = postcard::to_allocvec(&group).expect("serialising to a Vec cannot fail");
            w.write_all(&bytes).map_err(io)
        })
    }

    /// Inference on plaintext features (only the model is secret).
    pub fn infer_plain(&mut self, x: &[f32]) -> Result<ResultCiphertext> {
        let input = self.encrypted_layer_input(x)?;
        let blocks = self.prepared.first_matrix().mul_plain(&input);
        Ok(self.finish(blocks))
    }

    /// Inference on features encrypted with the public key inside this process, streamed group
    /// by group (bounded memory); the cost of encrypting is part of the inference.
    pub fn infer_encrypting(&mut self, x: &[f32]) -> Result<ResultCiphertext> {
        let input = self.encrypted_layer_input(x)?;
        let decomp = self.features_decomp();
        let blocks = self.prepared.first_matrix().mul_encrypting(
            &mut self.public_key,
            &input,
            decomp,
            &mut self.fft,
        )?;
        Ok(self.finish(blocks))
    }

    fn features_decomp(&self) -> crate::crypto::params::DecompParams {
        match &self.prepared {
            Prepared::Act { .. } => self.params.features_pbs,
            _ => self.params.features_wide,
        }
    }

    /// Inference on encrypted features (from [`Self::encrypt_features`], here or at a data
    /// source holding the same bundle).
    pub fn infer_encrypted(&mut self, f: &EncryptedFeatures) -> Result<ResultCiphertext> {
        if f.key_id != self.key_id {
            return Err(EngineError::KeyMismatch(format!(
                "features encrypted under key {}, this bundle's key is {}",
                hex(&f.key_id),
                hex(&self.key_id)
            )));
        }
        if f.decomp != self.features_decomp() {
            return Err(EngineError::Features(
                "another decomposition than this bundle's".into(),
            ));
        }
        let blocks = self
            .prepared
            .first_matrix()
            .mul_encrypted(&f.groups, f.decomp, &mut self.fft)
            .map_err(|e| match e {
                CryptoError::Shape(m) | CryptoError::Features(m) => EngineError::Features(m),
                e => e.into(),
            })?;
        Ok(self.finish(blocks))
    }

    /// From the first encrypted layer's output to the published result (its parts in the
    /// order [`Decoding::new`] describes them).
    fn finish(&mut self, blocks: Vec<GlweCiphertextOwned<u64>>) -> ResultCiphertext {
        let parts = match &self.prepared {
            Prepared::Last { .. } => blocks
                .into_iter()
                .map(|ct| U64s(ct.into_container()))
                .collect(),
            Prepared::Noact { second, .. } => second
                .apply(&blocks[0], &mut self.fft)
                .into_iter()
                .map(|l| U64s(l.into_container()))
                .collect(),
            Prepared::Act { first, luts, eval } => luts
                .evaluate(&blocks, first.layout.rows_per_block, eval)
                .into_iter()
                .map(|sum| U64s(sum.into_container()))
                .collect(),
        };
        ResultCiphertext {
            key_id: self.key_id,
            parts,
        }
    }
}

fn check_plain_layer(l: &PlainLayer, hidden: usize, in_dim: usize) -> Result<()> {
    if l.w.len() != hidden * in_dim || l.b.len() != hidden {
        return Err(EngineError::Malformed(
            "model: the plaintext first layer has the wrong shape".into(),
        ));
    }
    Ok(())
}

/// Low bits dropped from stored wide-layer bodies: an error of ≤ 2^7 per weight, ≈ 2^16 after
/// the first layer, against noise ≈ 2^26 (encrypted features) and a Δ of 2^35+.
const WIDE_DROP_BITS: u8 = 8;

/// The plaintext first layer of `last`: a = map(W1·x + b1).
pub fn first_layer_hidden(l: &PlainLayer, xq: &[i64]) -> Vec<i64> {
    l.b.iter()
        .enumerate()
        .map(|(j, b)| {
            let y: i64 = l.w[j * xq.len()..(j + 1) * xq.len()]
                .iter()
                .zip(xq)
                .map(|(w, x)| w * x)
                .sum::<i64>()
                + b;
            l.map.apply(j, y).0
        })
        .collect()
}
