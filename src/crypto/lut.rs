//! Activation and second layer in one bootstrap (variant `act`).
//!
//! For hidden unit i the backend encrypts a lookup polynomial L_i under the bootstrap GLWE
//! key. It is cut into `out` windows of R = N / out coefficients; window j holds
//! Δ_out · W2[j, i] · act(t − zero) at coefficient j·R + t, t ∈ [0, R − S), and 0 on its last
//! S slots, the separator. Blind rotation by the unit's pre-activation phase
//! φ̃ = round(phase · 2N / q) ∈ [0, R) leaves L_i[j·R + φ̃] at coefficient j·R, i.e.
//! Δ_out · W2[j,i] · act(φ̃ − zero), for every class j at once, with fresh noise and without the
//! edge ever seeing W2. Summing the rotated accumulators over i, and one more encrypted
//! polynomial holding the biases Δ_out · b2[j] at j·R, gives the scores at coefficients j·R of
//! one GLWE.
//!
//! The outputs include secret check rows (docs/THREATS.md #27), exact combinations of the
//! classes' rows: every output of a unit reads its table at the same slot, so the relation
//! holds whatever that slot is — as long as no read crosses into a neighbouring window, which
//! would read another output's weights. The separator makes a read that the noise (or an input
//! a little beyond the calibrated range) takes past the window read 0 for every output alike,
//! and the biases sit apart from the tables so that such a read cannot drop them.
//!
//! Fewer classes per table buy accuracy with time: with c classes per table the windows are
//! R = N / c slots wide, so the same input noise (in slots) is a smaller share of each unit's
//! range, and each unit takes ⌈out / c⌉ tables, rotated by the same key-switched phase, summed
//! into one GLWE per group of c classes.
//!
//! The bootstrap rounds the phase to a slot (the integer reference models that rounding) and
//! adds key-switching and modulus-switching noise of σ slots (see
//! [`super::params::ParameterSet::pbs_input_std_slots`]). The table holds any function of the
//! slot (the model layer computes act on its grid, 1-Lipschitz in slots but for the square),
//! so an input error of e slots moves W2[j,i]·act by at most |W2[j,i]|·e.

#[cfg(any(feature = "backend", test))]
use super::encrypt_seeded_glwes;
use super::error::{CryptoError, Result};
use super::keys::{KsScalar, PreparedEvaluationKeys};
use super::keyswitch::{keyswitch_all, outputs_for};
#[cfg(any(feature = "backend", test))]
use super::params::GlweParams;
use super::raw::Bodies;
use super::{modulus, CompressionSeed};
use serde::{Deserialize, Serialize};
use tfhe::core_crypto::prelude::*;

/// Windows each result of variant `act` carries after its classes for the secret check
/// outputs (docs/THREATS.md #27): extra rows of the second layer, windows of the lookup tables
/// like the classes', so the board cannot tell them apart.
pub const ACT_CHECK_ROWS: usize = 4;

/// The windows' geometry: slot = round(phase · 2N / q), R = `window` slots per class,
/// `per_table` classes per lookup table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WindowMap {
    pub poly_size: usize,
    pub window: usize,
    pub per_table: usize,
}

/// Where one hidden unit's pre-activation y lands: phase Δ_h·y + offset(zero_slot), so y = 0
/// sits on `zero_slot` and the unit's calibrated range fills the window.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnitWindow {
    pub delta_h: u64,
    pub zero_slot: u32,
}

impl WindowMap {
    /// The geometry for `out` classes, `per_table` of them in each table (at least one, at most
    /// `out`).
    pub fn new(poly_size: usize, out: usize, per_table: usize) -> Self {
        let per_table = per_table.clamp(1, out.max(1));
        Self {
            poly_size,
            window: poly_size / per_table,
            per_table,
        }
    }

    /// Tables per hidden unit for `out` classes.
    pub fn groups(&self, out: usize) -> usize {
        out.div_ceil(self.per_table.max(1))
    }

    /// The classes of table group g: g·per_table up to `out`.
    #[cfg(any(feature = "backend", test))]
    pub(crate) fn group_classes(&self, g: usize, out: usize) -> std::ops::Range<usize> {
        g * self.per_table..((g + 1) * self.per_table).min(out)
    }

    fn log2_2n(&self) -> u32 {
        (2 * self.poly_size).trailing_zeros()
    }

    /// Noise-free slot of a phase (what the bootstrap computes, less its noise).
    pub fn slot(&self, phase: u64) -> u64 {
        let shift = 64 - self.log2_2n();
        (phase.wrapping_add(1 << (shift - 1)) >> shift) % (2 * self.poly_size as u64)
    }

    /// The phase offset that puts y = 0 on `zero_slot`.
    pub(crate) fn offset(&self, zero_slot: u32) -> u64 {
        (zero_slot as u64) << (64 - self.log2_2n())
    }

    /// Unit `u`'s noise-free slot at pre-activation y, in [0, 2N).
    fn unit_slot(&self, u: UnitWindow, y: i64) -> u64 {
        self.slot(
            (y as u64)
                .wrapping_mul(u.delta_h)
                .wrapping_add(self.offset(u.zero_slot)),
        )
    }

    /// Whether unit `u`'s noise-free read at pre-activation y, for some output, takes a
    /// nonzero value of another output's window: the result then breaks its check rows'
    /// relation and is refused. `outputs` counts the classes and check rows; `value(t)` is
    /// what a window holds at slot t (0 on its separator). A read that leaves the window into
    /// the separator, or into a neighbour's zeros (deep into a ReLU's negative side), reads
    /// 0 for every output alike and keeps the relation.
    pub(crate) fn crosses(
        &self,
        u: UnitWindow,
        y: i64,
        outputs: usize,
        value: impl Fn(usize) -> i64,
    ) -> bool {
        let slot = self.unit_slot(u, y) as usize;
        if slot < self.window {
            return false;
        }
        let (n, r, per_table) = (self.poly_size, self.window, self.per_table.max(1));
        // Tables hold `per_table` outputs, the last one the rest.
        let last = outputs - (self.groups(outputs) - 1) * per_table;
        [per_table.min(outputs), last].into_iter().any(|held| {
            (0..held).any(|w| {
                // Coefficient w·R of the table rotated by `slot` (negacyclic: the sign aside).
                let p = (w * r + slot) % (2 * n) % n;
                let (landed, t) = (p / r, p % r);
                landed != w && landed < held && value(t) != 0
            })
        })
    }

    /// The activation's argument for unit `u` at pre-activation y — its noise-free slot (kept
    /// inside the window, as the reference does) less the unit's zero — and whether the slot
    /// left the window.
    pub(crate) fn unit_offset(&self, u: UnitWindow, y: i64) -> (i64, bool) {
        let slot = self.unit_slot(u, y);
        let inside = slot.min(self.window as u64 - 1);
        (inside as i64 - u.zero_slot as i64, inside != slot)
    }
}

/// Ciphertexts [`bootstrap_seconds`] times (and the noise model's test takes a round).
const KS_BATCH: usize = 32;

/// Encrypted lookup polynomials, one per hidden unit and class group, unit-major, then one
/// bias polynomial per class group (seeded).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EncryptedLuts {
    pub map: WindowMap,
    pub zero_slots: Vec<u32>,
    pub hidden: usize,
    pub out_dim: usize,
    seed: CompressionSeed,
    bodies: Bodies,
}

#[cfg(any(feature = "backend", test))]
use super::params::TABLE_DROP_BITS as LUT_DROP_BITS;

impl EncryptedLuts {
    #[cfg(any(feature = "backend", test))]
    /// `value(i, t)` is hidden unit i's activation at slot t of its window; `w2` is out ×
    /// hidden (row-major), `b2` has `out` entries; all integers at the output scale, encoded
    /// with `delta_out`.
    #[allow(clippy::too_many_arguments)]
    pub fn encrypt(
        sk: &GlweSecretKeyOwned<u64>,
        glwe: GlweParams,
        map: WindowMap,
        zero_slots: &[u32],
        value: impl Fn(usize, usize) -> i64,
        w2: &[i64],
        b2: &[i64],
        out_dim: usize,
        hidden: usize,
        delta_out: u64,
    ) -> Self {
        let n = glwe.poly_size.0;
        assert_eq!(w2.len(), out_dim * hidden);
        assert!(map.window * map.per_table <= n);
        assert_eq!(zero_slots.len(), hidden);
        let groups = map.groups(out_dim);
        let mut plain = vec![0u64; (hidden + 1) * groups * n];
        let (tables, biases) = plain.split_at_mut(hidden * groups * n);
        for (k, lut) in tables.chunks_exact_mut(n).enumerate() {
            let (i, g) = (k / groups, k % groups);
            for (w, j) in map.group_classes(g, out_dim).enumerate() {
                for t in 0..map.window {
                    let v = w2[j * hidden + i] * value(i, t);
                    lut[w * map.window + t] = (v as u64).wrapping_mul(delta_out);
                }
            }
        }
        for (g, bias) in biases.chunks_exact_mut(n).enumerate() {
            for (w, j) in map.group_classes(g, out_dim).enumerate() {
                bias[w * map.window] = (b2[j] as u64).wrapping_mul(delta_out);
            }
        }
        let (seed, bodies) = encrypt_seeded_glwes(sk, glwe, plain);
        Self {
            map,
            zero_slots: zero_slots.to_vec(),
            hidden,
            out_dim,
            seed,
            bodies: Bodies::pack(&bodies, LUT_DROP_BITS),
        }
    }

    pub fn byte_len(&self) -> usize {
        self.bodies.byte_len()
    }

    pub fn prepare(&self) -> Result<PreparedLuts> {
        let n = self.map.poly_size;
        if !n.is_power_of_two()
            || self.out_dim == 0
            || self.map.per_table == 0
            || self.map.per_table > self.out_dim
            || self.map.window == 0
            || self.map.window * self.map.per_table > n
            || self.zero_slots.len() != self.hidden
            || self
                .zero_slots
                .iter()
                .any(|&z| z as usize >= self.map.window)
        {
            return Err(CryptoError::Shape("inconsistent lookup tables".into()));
        }
        let tables = |units: usize| {
            units
                .checked_mul(self.map.groups(self.out_dim))
                .and_then(|v| v.checked_mul(n))
        };
        if Some(self.bodies.len()) == tables(self.hidden) {
            return Err(CryptoError::Shape(
                "lookup tables made before act's check rows (no bias polynomial): protect the \
                 model again with this version"
                    .into(),
            ));
        }
        if Some(self.bodies.len()) != tables(self.hidden + 1) {
            return Err(CryptoError::Shape("inconsistent lookup tables".into()));
        }
        let bodies = self
            .bodies
            .unpack()
            .ok_or_else(|| CryptoError::Shape("inconsistent lookup tables".into()))?;
        let list = SeededGlweCiphertextList::from_container(
            bodies,
            GlweSize(2),
            PolynomialSize(n),
            self.seed.clone(),
            modulus(),
        )
        .decompress_into_glwe_ciphertext_list();
        Ok(PreparedLuts {
            map: self.map,
            out_dim: self.out_dim,
            luts: list,
        })
    }
}

/// Lookup tables expanded for use.
pub struct PreparedLuts {
    pub map: WindowMap,
    pub out_dim: usize,
    luts: GlweCiphertextListOwned<u64>,
}

impl PreparedLuts {
    /// Every lookup table GLWE, as its 2N words.
    pub fn ciphertexts(&self) -> impl Iterator<Item = &[u64]> {
        self.luts.as_ref().chunks_exact(2 * self.map.poly_size)
    }

    /// Bootstrap every hidden unit and sum: unit i's pre-activation is coefficient
    /// i % `rows_per_block` of block i / `rows_per_block`. Returns one GLWE per class group,
    /// class g·per_table + w of group g at coefficient w·window.
    pub fn evaluate(
        &self,
        blocks: &[GlweCiphertextOwned<u64>],
        rows_per_block: usize,
        keys: &PreparedEvaluationKeys,
    ) -> Vec<GlweCiphertextOwned<u64>> {
        let n = PolynomialSize(self.map.poly_size);
        let mut rotation = Rotation::new(n);
        let log_modulus = n.to_blind_rotation_input_modulus_log();
        let mut acc = GlweCiphertext::new(0u64, GlweSize(2), n, modulus());
        let groups = self.map.groups(self.out_dim);
        let luts: Vec<_> = self.luts.iter().collect();
        let (luts, biases) = luts.split_at(luts.len() - groups);
        // The biases first: the sums start from them.
        let mut sums: Vec<_> = biases
            .iter()
            .map(|b| GlweCiphertext::from_container(b.as_ref().to_vec(), n, modulus()))
            .collect();
        // Every unit's pre-activation extracted and key-switched in one pass over the key.
        let units = luts.len() / groups;
        let big: Vec<_> = (0..units)
            .map(|i| {
                let mut big = LweCiphertext::new(0u64, LweSize(n.0 + 1), modulus());
                extract_lwe_sample_from_glwe_ciphertext(
                    &blocks[i / rows_per_block],
                    &mut big,
                    MonomialDegree(i % rows_per_block),
                );
                big
            })
            .collect();
        let mut small = outputs_for(&keys.ksk, units);
        keyswitch_all(&keys.ksk, &big, &mut small);
        drop(big);
        for (small, unit_luts) in small.iter().zip(luts.chunks_exact(groups)) {
            let msed = lwe_ciphertext_modulus_switch(small.as_view(), log_modulus);
            for (sum, lut) in sums.iter_mut().zip(unit_luts) {
                acc.as_mut().copy_from_slice(lut.as_ref());
                rotation.rotate(&msed, &mut acc, &keys.bsk);
                glwe_ciphertext_add_assign(sum, &acc);
            }
        }
        sums
    }
}

/// Blind rotations at one polynomial size, with their FFT plan and scratch space.
struct Rotation {
    fft: Fft,
    buffers: ComputationBuffers,
}

impl Rotation {
    fn new(n: PolynomialSize) -> Self {
        let fft = Fft::new(n);
        let mut buffers = ComputationBuffers::new();
        buffers.resize(
            blind_rotate_assign_mem_optimized_requirement::<u64>(GlweSize(2), n, fft.as_view())
                .unaligned_bytes_required(),
        );
        Self { fft, buffers }
    }

    /// `acc` ← `acc` rotated by the switched LWE's phase.
    fn rotate(
        &mut self,
        msed: &LazyStandardModulusSwitchedLweCiphertext<KsScalar, usize, &[KsScalar]>,
        acc: &mut GlweCiphertextOwned<u64>,
        bsk: &FourierLweBootstrapKeyOwned,
    ) {
        blind_rotate_assign_mem_optimized(msed, acc, bsk, self.fft.as_view(), self.buffers.stack());
    }
}

/// What the bootstrap work costs on this machine, in seconds: the key-switching pass's part
/// that does not depend on the units (expanding the key's masks), each unit's share of it,
/// and one blind rotation (each unit takes one per class group). Measured on random inputs
/// (a zero mask would skip CMUXes), `rotations` of them.
pub(crate) fn bootstrap_seconds(
    keys: &PreparedEvaluationKeys,
    poly_size: usize,
    rotations: usize,
) -> BootstrapSeconds {
    let n = PolynomialSize(poly_size);
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut random = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut big = vec![LweCiphertext::new(0u64, LweSize(n.0 + 1), modulus()); KS_BATCH];
    for ct in &mut big {
        ct.as_mut().iter_mut().for_each(|w| *w = random());
    }
    let mut small = outputs_for(&keys.ksk, KS_BATCH);
    // One ciphertext and then all of them: the difference is the units' share.
    let t = std::time::Instant::now();
    keyswitch_all(&keys.ksk, &big[..1], &mut small[..1]);
    let one = t.elapsed().as_secs_f64();
    let t = std::time::Instant::now();
    keyswitch_all(&keys.ksk, &big, &mut small);
    let all = t.elapsed().as_secs_f64();
    let per_unit = ((all - one) / (KS_BATCH - 1) as f64).max(0.0);
    let mut rotation = Rotation::new(n);
    let log_modulus = n.to_blind_rotation_input_modulus_log();
    let mut acc = GlweCiphertext::new(0u64, GlweSize(2), n, modulus());
    let rotations = rotations.clamp(1, KS_BATCH);
    let t = std::time::Instant::now();
    for small in &small[..rotations] {
        let msed = lwe_ciphertext_modulus_switch(small.as_view(), log_modulus);
        rotation.rotate(&msed, &mut acc, &keys.bsk);
    }
    BootstrapSeconds {
        key_expansion: (one - per_unit).max(0.0),
        key_switch: per_unit,
        rotation: t.elapsed().as_secs_f64() / rotations as f64,
    }
}

/// [`bootstrap_seconds`]' measurements.
pub(crate) struct BootstrapSeconds {
    /// Once an inference: the key-switching key's masks expanded.
    pub key_expansion: f64,
    /// Per unit.
    pub key_switch: f64,
    /// Per unit and class group.
    pub rotation: f64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::keys;
    use crate::crypto::params::{ParameterSet, SecurityLevel};

    /// Lookup tables from before the check rows (no bias polynomials) are refused at load with
    /// a message that says to protect again; the new ones prepare, biases last.
    #[test]
    fn tables_without_their_bias_polynomials_say_to_protect_again() {
        let params = ParameterSet::for_level(SecurityLevel::L128);
        let set = keys::generate(params);
        let n = params.pbs_glwe.poly_size.0;
        let (hidden, out) = (3, 5);
        let map = WindowMap::new(n, out, 2);
        let luts = EncryptedLuts::encrypt(
            &set.secret.pbs,
            params.pbs_glwe,
            map,
            &[10; 3],
            |i, t| (i + t) as i64,
            &[1; 15],
            &[2; 5],
            out,
            hidden,
            1 << 40,
        );
        let prepared = luts.prepare().unwrap();
        assert_eq!(
            prepared.ciphertexts().count(),
            (hidden + 1) * map.groups(out)
        );
        let mut old = luts.clone();
        let bodies = old.bodies.unpack().unwrap();
        old.bodies = Bodies::pack(&bodies[..hidden * map.groups(out) * n], LUT_DROP_BITS);
        let err = old.prepare().err().unwrap().to_string();
        assert!(err.contains("protect the model again"), "{err}");
        old.bodies = Bodies::pack(&bodies[..n], LUT_DROP_BITS);
        let err = old.prepare().err().unwrap().to_string();
        assert!(err.contains("inconsistent lookup tables"), "{err}");
    }

    fn std(errors: &[f64]) -> f64 {
        (errors.iter().map(|e| e * e).sum::<f64>() / errors.len() as f64).sqrt()
    }

    /// The noise model against real bootstraps at the 128-bit set: the input noise after the
    /// engine's key switch and modulus switch (in slots), and one blind rotation's output noise
    /// (key, truncation and FFT), each from enough samples for a ±10 % estimate of its
    /// standard deviation (2,048 samples, and 1,200 or 400 rotations: relative standard errors
    /// 1.6 %, 2 % and 3.5 % for Gaussian noise; the output noise varies more than that from
    /// one key set to the next: 2^48.80–2^49.00 at 128 over six key sets with 400 rotations).
    #[test]
    #[cfg_attr(
        not(target_arch = "x86_64"),
        ignore = "thousands of bootstraps: ~15 min under qemu (CI's aarch64 step)"
    )]
    fn the_noise_model_matches_real_bootstraps_at_128() {
        noise_model_matches_real_bootstraps(SecurityLevel::L128, 1200);
    }

    /// 192 bootstraps at N = 4096, where the FFT term is four times heavier than at 2048: checks
    /// the term's shape, not only the weight fitted at 128.
    #[test]
    #[cfg_attr(
        not(target_arch = "x86_64"),
        ignore = "thousands of bootstraps: ~15 min under qemu (CI's aarch64 step)"
    )]
    fn the_noise_model_matches_real_bootstraps_at_192() {
        noise_model_matches_real_bootstraps(SecurityLevel::L192, 400);
    }

    /// Two gadget levels (the accuracy knob): a base the model chose, output noise ~2^8 lower,
    /// where the FFT and key terms weigh differently than with the shipped gadget.
    #[test]
    #[cfg_attr(
        not(target_arch = "x86_64"),
        ignore = "thousands of bootstraps: ~15 min under qemu (CI's aarch64 step)"
    )]
    fn the_noise_model_matches_real_bootstraps_with_two_gadget_levels() {
        noise_model_matches_real_bootstraps_with(
            ParameterSet::for_level(SecurityLevel::L128)
                .with_pbs_levels(2)
                .unwrap(),
            400,
        );
    }

    fn noise_model_matches_real_bootstraps(level: SecurityLevel, rotations: usize) {
        noise_model_matches_real_bootstraps_with(ParameterSet::for_level(level), rotations)
    }

    fn noise_model_matches_real_bootstraps_with(params: ParameterSet, rotations: usize) {
        let level = params.security;
        let set = keys::generate(params);
        let eval = set.evaluation.clone().into_prepared(&params).unwrap();
        let n = params.pbs_glwe.poly_size;
        let two_n = 2 * n.0 as u64;
        let slot = (1u128 << 64) / two_n as u128;
        let big_key = LweSecretKey::from_container(set.secret.pbs.as_ref());
        let small_bits: Vec<u64> = set.secret.lwe.as_ref().to_vec();
        let mut gen = crate::crypto::encryption_generator();
        let log_modulus = n.to_blind_rotation_input_modulus_log();

        // Input noise: sample-extracted-like LWEs under the bootstrap key at known slots.
        let mut input_errors = Vec::new();
        let mut switched = Vec::new();
        // 64 rounds of KS_BATCH ciphertexts, key-switched in one pass as the engine does.
        let slots: Vec<u64> = (0..64u64)
            .flat_map(|round| {
                (0..KS_BATCH as u64).map(move |i| (round * 37 + i * 101) % (two_n / 2))
            })
            .collect();
        let big: Vec<_> = slots
            .iter()
            .map(|&s| {
                let mut ct = LweCiphertext::new(0u64, LweSize(n.0 + 1), modulus());
                encrypt_lwe_ciphertext(
                    &big_key,
                    &mut ct,
                    Plaintext((s as u128 * slot) as u64),
                    crate::crypto::gaussian(params.pbs_glwe.log2_std),
                    &mut gen,
                );
                ct
            })
            .collect();
        let mut small = outputs_for(&eval.ksk, slots.len());
        keyswitch_all(&eval.ksk, &big, &mut small);
        for (small, &s) in small.into_iter().zip(&slots) {
            let msed =
                lwe_ciphertext_modulus_switch::<KsScalar, usize, _>(small.as_view(), log_modulus);
            let dot = msed
                .mask()
                .zip(&small_bits)
                .fold(0u64, |acc, (a, &b)| acc.wrapping_add(a as u64 * b));
            let phase = (msed.body() as u64).wrapping_sub(dot) % two_n;
            let err = (phase + two_n - s) % two_n;
            let err = if err > two_n / 2 {
                err as f64 - two_n as f64
            } else {
                err as f64
            };
            input_errors.push(err);
            if switched.len() < rotations {
                switched.push(small);
            }
        }
        let measured_in = std(&input_errors);
        let model_in = params.pbs_input_std_slots();
        assert!(
            (measured_in / model_in - 1.0).abs() < 0.1,
            "input noise: measured {measured_in:.3} slots, model {model_in:.3}"
        );

        // Output noise: blind rotations of a noiseless constant table (every coefficient V, so
        // coefficient 0 holds V for any rotation below N); what is left is the rotation's own.
        let mut rotation = Rotation::new(n);
        let v = 1u64 << 60;
        let table =
            GlweCiphertext::from_container([vec![0u64; n.0], vec![v; n.0]].concat(), n, modulus());
        let mut acc = table.clone();
        let mut extracted = LweCiphertext::new(0u64, LweSize(n.0 + 1), modulus());
        let mut output_errors = Vec::new();
        for small in &switched {
            let msed = lwe_ciphertext_modulus_switch(small.as_view(), log_modulus);
            acc.as_mut().copy_from_slice(table.as_ref());
            rotation.rotate(&msed, &mut acc, &eval.bsk);
            extract_lwe_sample_from_glwe_ciphertext(&acc, &mut extracted, MonomialDegree(0));
            let phase = decrypt_lwe_ciphertext(&big_key, &extracted).0;
            // +V for a rotation below N; −V when the input noise took slot 0 below zero.
            let err = phase.wrapping_sub(v) as i64;
            let err = if err.unsigned_abs() > v / 2 {
                phase.wrapping_add(v) as i64
            } else {
                err
            };
            output_errors.push(err as f64);
        }
        let measured_out = std(&output_errors);
        let model_out = params.pbs_output_variances().rotation().sqrt();
        let v = params.pbs_output_variances();
        eprintln!(
            "{level}: input {measured_in:.3} vs {model_in:.3} slots; output 2^{:.3} vs 2^{:.3} \
             (key 2^{:.2} trunc 2^{:.2} fft 2^{:.2} variances)",
            measured_out.log2(),
            model_out.log2(),
            v.key.log2(),
            v.truncation.log2(),
            v.fft.log2()
        );
        // A standard deviation from a few hundred samples is itself off by ~1/√(2·samples)
        // (3.5 % at 400; the output error is not quite Gaussian, so somewhat more): 10 % was
        // exceeded once in many runs by chance, 15 % (~0.2 bits) still tells a wrong model.
        assert!(
            (measured_out / model_out - 1.0).abs() < 0.15,
            "output noise: measured 2^{:.3}, model 2^{:.3}",
            measured_out.log2(),
            model_out.log2()
        );
    }
}
