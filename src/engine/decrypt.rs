//! Backend only: how to read a protected model's results (its [`Decoding`], kept in the
//! registry), the secret check outputs, and the decryption that refuses anything but an honest
//! result of that model (feature `backend`; never in the boards' build).

use super::model::{
    check_log2_delta, check_rows, part_words, EncryptedModel, PartShape, ResultCiphertext,
    ResultShape, Wire, CHECK_BITS,
};
use super::{EngineError, Result};
use crate::crypto::keys::{KeyId, KeyKind, SecretKeys};
use crate::crypto::params::ParameterSet;
use crate::hex::hex;
use crate::model::quant::{QuantModel, Variant};
use serde::{Deserialize, Serialize};
use tfhe::core_crypto::prelude::*;

impl EncryptedModel {
    /// Fingerprints of the masks of its GLWEs (weights and lookup tables), sorted, as they
    /// would arrive cut by `wire`.
    #[cfg(feature = "backend")]
    pub(crate) fn mask_fingerprints(&self, wire: Wire) -> Result<Vec<u64>> {
        use crate::crypto::switch::switch_word;
        let drop = 64 - wire.bits();
        let fingerprint = |glwe: &[u64]| {
            let mask = &glwe[..glwe.len() / 2];
            mask_fingerprint(mask.iter().map(|&w| switch_word(w, drop)), drop)
        };
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
}

/// Secret check outputs of a protected model: extra output rows, each a secret random
/// combination Σ_c r_c·(row c) of the class rows (weights and bias) plus a secret offset ρ
/// on the bias column, encrypted like them. The board cannot compute the rows' values without
/// r and ρ; an honest result satisfies check_k = Σ_c r_{k,c}·score_c + ρ_k. The offset pins the
/// bias input to 1: the bundle's weight ciphertexts on their own (bias 0), sums and
/// differences of results (bias 2, 0) fail it. Kept in the backend's registry ([`Decoding`])
/// only: the bundle carries the encrypted rows, never r or ρ.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ResultChecks {
    /// One coefficient per class and check row: in [0, 2^CHECK_BITS) ([`CheckMethod::Modular`])
    /// or {−1, 0, 1} ([`CheckMethod::Phase`]).
    pub rows: Vec<Vec<i64>>,
    /// log2 Δ of each check row ([`CheckMethod::Modular`]; the classes' Δ otherwise).
    pub log2_deltas: Vec<u32>,
    /// ρ of each check row.
    #[serde(default)]
    pub offsets: Vec<i64>,
    #[serde(default)]
    pub method: CheckMethod,
    /// [`CheckMethod::Tolerance`]: how far from 0 (modulo 2^64) each row's phase combination
    /// may lie, from the model's output noise (set by [`Decoding::new`]).
    #[serde(default)]
    pub tolerances: Vec<u64>,
}

/// How a result's check rows are verified.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum CheckMethod {
    /// `last`: each check decoded at a power-of-two Δ of its own, whose torus holds the
    /// combination's range, and equal to Σ r·scores + ρ modulo that torus (coefficients of
    /// CHECK_BITS bits; 2^-5 a row).
    #[default]
    Modular,
    /// `noact`: at the classes' Δ, whose torus the scores fill, and with the first layer's
    /// noise times ‖r·W2‖ in each check row — too much to decode one on its own. The phases
    /// are compared instead: check_k − Σ_c r_{k,c}·class_c − Δ·ρ_k cancels every noise the rows
    /// share (the first layer's, the decomposition's: the external product is exact and
    /// linear in the row) and must lie within Δ/8 of 0 modulo 2^64. Sound with coefficients in
    /// {−1, 0, 1} for every score change the range check lets through (1/3 a row:
    /// [`phase_check_limit`]).
    Phase,
    /// `act`: the phases combined as for [`Self::Phase`] — the bootstraps' input noise
    /// cancels (every table of a unit is read at the same slot, and a check window holds the
    /// exact combination of the class windows) — but each slot keeps its own bootstrap output
    /// noise, so the combination must lie within [`ACT_CHECK_SIGMAS`] of its standard
    /// deviation, σ_out·√(1 + ‖r‖²), of 0. Refuses forgeries (a fresh encryption passes a row
    /// with probability 2·tolerance/2^64) and changes beyond the tolerance; changes within it
    /// pass (docs/THREATS.md #27).
    Tolerance,
}

/// Standard deviations of its output noise an `act` check row may lie off: an honest result
/// fails a row with probability about 2^-49.
pub const ACT_CHECK_SIGMAS: f64 = 8.0;

/// The largest |score| a result verified by [`CheckMethod::Phase`] may decode to at `delta`.
/// A change that moves a class by d ≠ 0 moves its phase by δ with 3Δ/4 ≤ |δ| ≤ Δ(2L + ¼)
/// (both phases within Δ/8 of their grid, both scores within ±L); the three values r·δ of a
/// coefficient r ∈ {−1, 0, 1} lie ≥ 3Δ/4 apart modulo 2^64 as long as 2|δ| < 2^64 − Δ/4,
/// so at most one of them meets the Δ/8 tolerance: 4L + ¾ < M = 2^64/Δ.
pub fn phase_check_limit(delta: u64) -> f64 {
    let modulus = 2f64.powi(64) / delta as f64;
    ((modulus - 1.0) / 4.0).floor()
}

impl ResultChecks {
    /// Fresh checks for `q` (none for the variants that do not carry them yet).
    pub(crate) fn draw(
        q: &QuantModel,
        params: &ParameterSet,
        rng: &mut (impl rand::RngCore + rand::CryptoRng),
    ) -> Result<Self> {
        use rand::Rng;
        let mut checks = Self::default();
        match q.variant {
            Variant::Last => {}
            Variant::Noact => {
                // ρ up to a quarter of the classes' torus: ±Δ·ρ (bias 0 or 2) stays far from 0
                // modulo 2^64.
                let quarter = (phase_check_limit(q.delta_out) as i64).max(2);
                for _ in 0..check_rows(Variant::Noact) {
                    checks
                        .rows
                        .push((0..q.out_dim).map(|_| rng.gen_range(-1..=1)).collect());
                    checks.offsets.push(rng.gen_range(1..quarter));
                }
                checks.method = CheckMethod::Phase;
                return Ok(checks);
            }
            Variant::Act => {
                // ρ anywhere on the classes' torus: a forger cannot aim at it.
                let modulus = (2f64.powi(64) / q.delta_out as f64).min(i64::MAX as f64) as i64;
                while checks.rows.len() < check_rows(Variant::Act) {
                    let r: Vec<i64> = (0..q.out_dim).map(|_| rng.gen_range(-1..=1)).collect();
                    if r.iter().all(|&c| c == 0) {
                        continue;
                    }
                    checks.rows.push(r);
                    checks.offsets.push(rng.gen_range(0..modulus.max(1)));
                }
                checks.method = CheckMethod::Tolerance;
                return Ok(checks);
            }
        }
        let limits = q.score_limits(params);
        let log2_delta = check_log2_delta(&limits).ok_or_else(|| {
            EngineError::Malformed(
                "model: its scores are too large to leave room for check outputs".into(),
            )
        })?;
        while checks.rows.len() < check_rows(Variant::Last) {
            let r: Vec<i64> = (0..q.out_dim)
                .map(|_| rng.gen_range(0..1i64 << CHECK_BITS))
                .collect();
            if r.iter().all(|&c| c == 0) {
                continue;
            }
            let offset = rng.gen_range(0..1i64 << (CHECK_BITS - 1)) * 2 + 1;
            checks.rows.push(r);
            checks.log2_deltas.push(log2_delta);
            checks.offsets.push(offset);
        }
        Ok(checks)
    }

    /// Δ of each check row.
    pub(crate) fn deltas(&self) -> impl Iterator<Item = u64> + '_ {
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
        match self.method {
            CheckMethod::Modular => CHECK_BITS * self.rows.len() as u32,
            CheckMethod::Phase => (self.rows.len() as f64 * 3f64.log2()).floor() as u32,
            // A fresh encryption's row lands within ±t of its target with probability 2t/2^64.
            CheckMethod::Tolerance => self
                .tolerances
                .iter()
                .map(|&t| 63.0 - (t.max(1) as f64).log2())
                .sum::<f64>()
                .floor()
                .max(0.0) as u32,
        }
    }

    /// Every check row holds for this result (its classes' phases and decoded scores at
    /// `delta`, its check rows' phases), as [`Self::method`] says; the smallest margin of the
    /// rows (bits beyond half their Δ, infinite without rows), or the first row that fails.
    fn verify(
        &self,
        classes: &[u64],
        checks: &[u64],
        scores: &[i64],
        delta: u64,
    ) -> Result<f64, Refusal> {
        let margin = |half: f64, error: u64| half.log2() - (error.max(1) as f64).log2();
        let mut least = f64::INFINITY;
        for (row, &p) in checks.iter().enumerate() {
            let row_margin = match self.method {
                CheckMethod::Phase => {
                    let d = self
                        .phase_row(row, classes, p, delta, delta / 8)
                        .ok_or(Refusal::Check { row })?;
                    margin(delta as f64 / 2.0, d)
                }
                // Within the output noise's tolerance; not a decoding margin (the classes'
                // errors are `act`'s noise margin), so it does not lower it.
                CheckMethod::Tolerance => {
                    let limit = *self.tolerances.get(row).ok_or(Refusal::Check { row })?;
                    self.phase_row(row, classes, p, delta, limit)
                        .ok_or(Refusal::Check { row })?;
                    f64::INFINITY
                }
                // Exact: on its grid, and equal to its secret combination of the scores modulo
                // its torus, M = 2^64/Δ (sound for every change the range checks let through:
                // check_log2_delta; records from before kept both sides within a quarter of M,
                // where equal modulo M is equal).
                CheckMethod::Modular => {
                    let log2 = *self.log2_deltas.get(row).ok_or(Refusal::Check { row })?;
                    let check_delta = 1u64 << log2;
                    let z = decode(p, check_delta);
                    let e = grid_error(p, z, check_delta);
                    let modulus = 1i128 << (64 - log2);
                    if e > check_delta / 8
                        || (z as i128 - self.expected(row, scores)) % modulus != 0
                    {
                        return Err(Refusal::Check { row });
                    }
                    margin(check_delta as f64 / 2.0, e)
                }
            };
            least = least.min(row_margin);
        }
        Ok(least)
    }

    /// Row `k` of [`CheckMethod::Phase`] or [`CheckMethod::Tolerance`] holds for these phases
    /// (classes', then the row's): the distance of check − Σ r·class − Δ·ρ from 0 modulo 2^64
    /// if within `limit`.
    fn phase_row(
        &self,
        k: usize,
        classes: &[u64],
        check: u64,
        delta: u64,
        limit: u64,
    ) -> Option<u64> {
        let combined = self.rows[k]
            .iter()
            .zip(classes)
            .fold(0u64, |acc, (&r, &p)| {
                acc.wrapping_add((r as u64).wrapping_mul(p))
            });
        let offset = (self.offset(k) as u64).wrapping_mul(delta);
        let d = (check.wrapping_sub(combined).wrapping_sub(offset) as i64).unsigned_abs();
        (d <= limit).then_some(d)
    }
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
    /// How the board cuts its results for the wire (full words in records made before).
    #[serde(default)]
    pub wire: Wire,
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
        let shape = ResultShape::of(q, params, checks.rows.len())?;
        let mut score_limits = q.score_limits(params);
        let mut checks = checks.clone();
        match checks.method {
            CheckMethod::Phase => {
                let limit = phase_check_limit(q.delta_out);
                score_limits.iter_mut().for_each(|l| *l = l.min(limit));
            }
            CheckMethod::Tolerance => {
                // The output noise at the bundle's own gadget (act's accuracy knob), in phase.
                let sigma = q.act_output_noise(params) * q.delta_out as f64;
                checks.tolerances = checks
                    .rows
                    .iter()
                    .map(|r| {
                        let norm2 = r.iter().map(|&c| (c * c) as f64).sum::<f64>();
                        (ACT_CHECK_SIGMAS * sigma * (1.0 + norm2).sqrt()).min(2f64.powi(62)) as u64
                    })
                    .collect();
            }
            CheckMethod::Modular => {}
        }
        Ok(Self {
            key_id,
            key: shape.key,
            poly_size: shape.poly_size,
            delta_out: q.delta_out,
            out_scale: q.out_scale,
            parts: shape.parts,
            exact: q.variant != Variant::Act,
            score_limits,
            own_masks: Vec::new(),
            labels: None,
            checks,
            wire: shape.wire,
        })
    }

    /// Results are verifiable only with their check outputs: a record made before them cannot
    /// tell a crafted result from an honest one.
    fn verifiable(&self) -> bool {
        !self.checks.rows.is_empty()
    }

    /// The same, refusing the GLWEs of `model` (the bundle's) as results.
    #[cfg(feature = "backend")]
    pub(crate) fn refusing(mut self, model: &EncryptedModel) -> Result<Self> {
        self.own_masks = model.mask_fingerprints(self.wire)?;
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
        part_words(self.poly_size as usize, part, self.wire)
    }
}

/// Why a result is refused before anything of it is revealed.
#[derive(Clone, Debug, thiserror::Error, PartialEq)]
pub enum Refusal {
    #[error("encrypted under key {found}, the bundle's key is {expected}")]
    WrongKey { found: String, expected: String },
    #[error("the secret key loaded is {loaded}, the bundle's key is {expected}")]
    SecretKey { loaded: String, expected: String },
    #[error("words of {found} bits, the bundle's results have {expected}")]
    Bits { found: u32, expected: u32 },
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
            Refusal::Bits { .. } | Refusal::PartCount { .. } | Refusal::PartSize { .. } => "shape",
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
/// The mask's words are taken at modulus 2^64 (a switched word w as w·2^drop), so a mask cut
/// for the wire and the same mask switched by the backend agree.
fn mask_fingerprint(mask: impl IntoIterator<Item = u64>, drop: u32) -> u64 {
    mask.into_iter().fold(0x9e37_79b9_7f4a_7c15, |h: u64, w| {
        (h ^ (w << drop))
            .wrapping_mul(0x0100_0000_01b3)
            .rotate_left(29)
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
    // Widths below 8 bits come from no honest result (nor from the wire's decoder).
    if result.bits != decoding.wire.bits() || !(8..=64).contains(&result.bits) {
        return Err(Refusal::Bits {
            found: result.bits,
            expected: decoding.wire.bits(),
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
    // A switched word w stands for w·2^drop: the phase computed from the words as they came
    // is the switched phase, and shifted it is the phase at modulus 2^64 (2^(64 − drop)
    // divides 2^64), so everything after compares at the one scale.
    let drop = 64 - decoding.wire.bits();
    let mut phases = Vec::new();
    for (data, shape) in result.parts.iter().zip(&decoding.parts) {
        let words = &data.0;
        match shape {
            PartShape::Glwe { slots } => {
                // Only the class slots: the body less one coefficient of mask·s each.
                let (mask, body) = words.split_at(n);
                phases.extend(slots.iter().enumerate().map(|(i, &k)| {
                    let k = k as usize;
                    let at = match decoding.wire {
                        Wire::Full => k,
                        Wire::Switched { .. } => i,
                    };
                    body[at].wrapping_sub(negacyclic_coefficient(mask, sk.as_ref(), k)) << drop
                }));
            }
            PartShape::Lwe => {
                let ct = LweCiphertext::from_container(&words[..], crate::crypto::modulus());
                let lwe_key = LweSecretKey::from_container(sk.as_ref());
                phases.push(decrypt_lwe_ciphertext(&lwe_key, &ct).0 << drop);
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
                .binary_search(&mask_fingerprint(
                    mask.iter().copied(),
                    64 - decoding.wire.bits(),
                ))
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
    let scores: Vec<i64> = class_phases.iter().map(|&p| decode(p, delta)).collect();
    let errors: Vec<u64> = class_phases
        .iter()
        .zip(&scores)
        .map(|(&p, &z)| grid_error(p, z, delta))
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
    let margin = (delta as f64 / 2.0).log2()
        - (errors.iter().copied().max().unwrap_or(0).max(1) as f64).log2();
    let margin = margin.min(
        decoding
            .checks
            .verify(class_phases, check_phases, &scores, delta)?,
    );
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

/// |phase − Δ·z| modulo 2^64: how far a phase lies from the grid point of z.
fn grid_error(phase: u64, z: i64, delta: u64) -> u64 {
    (phase.wrapping_sub((z as u64).wrapping_mul(delta)) as i64).unsigned_abs()
}

/// Nearest integer z with Δ·z ≈ phase (signed).
pub fn decode(phase: u64, delta: u64) -> i64 {
    ((phase as i64) as f64 / delta as f64).round() as i64
}
