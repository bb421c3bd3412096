//! Activation and second layer in one bootstrap (variant `act`).
//!
//! For hidden unit i the backend encrypts a lookup polynomial L_i under the bootstrap GLWE
//! key. It is cut into `out` windows of R = N / out coefficients; window j holds
//! Δ_out · W2[j, i] · act(t − zero) at coefficient j·R + t, t ∈ [0, R) (unit 0's windows also
//! carry the bias Δ_out · b2[j] at every t). Blind rotation by the unit's pre-activation phase
//! φ̃ = round(phase · 2N / q) ∈ [0, R) leaves L_i[j·R + φ̃] at coefficient j·R, i.e.
//! Δ_out · W2[j,i] · act(φ̃ − zero), for every class j at once, with fresh noise and without the
//! edge ever seeing W2. Summing the rotated accumulators over i gives the scores at
//! coefficients j·R of one GLWE.
//!
//! The bootstrap rounds the phase to a slot (the integer reference models that rounding) and
//! adds key-switching and modulus-switching noise of σ slots (see
//! [`super::params::ParameterSet::pbs_input_std_slots`]). ReLU is 1-Lipschitz, so an input
//! error of e slots moves W2[j,i]·relu by at most |W2[j,i]|·e.

use super::error::{CryptoError, Result};
use super::keys::{KsScalar, PreparedEvaluationKeys};
use super::keyswitch::keyswitch_batch;
use super::params::GlweParams;
use super::raw::Bodies;
use super::{encrypt_seeded_glwes, modulus, CompressionSeed};
use serde::{Deserialize, Serialize};
use tfhe::core_crypto::prelude::*;

/// The activation evaluated in the bootstrap.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Activation {
    Relu,
    /// The paper's square activation, for comparison.
    Square,
}

impl Activation {
    pub fn apply(self, v: i64) -> i64 {
        match self {
            Self::Relu => v.max(0),
            Self::Square => v * v,
        }
    }
}

/// The windows' geometry: slot = round(phase · 2N / q), R = `window` slots per class.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WindowMap {
    pub poly_size: usize,
    pub window: usize,
}

/// Where one hidden unit's pre-activation y lands: phase Δ_h·y + offset(zero_slot), so y = 0
/// sits on `zero_slot` and the unit's calibrated range fills the window.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnitWindow {
    pub delta_h: u64,
    pub zero_slot: u32,
}

impl WindowMap {
    fn log2_2n(&self) -> u32 {
        (2 * self.poly_size).trailing_zeros()
    }

    /// Noise-free slot of a phase (what the bootstrap computes, less its noise).
    pub fn slot(&self, phase: u64) -> u64 {
        let shift = 64 - self.log2_2n();
        (phase.wrapping_add(1 << (shift - 1)) >> shift) % (2 * self.poly_size as u64)
    }

    /// The phase offset that puts y = 0 on `zero_slot`.
    pub fn offset(&self, zero_slot: u32) -> u64 {
        (zero_slot as u64) << (64 - self.log2_2n())
    }

    /// The activation's argument for unit `u` at pre-activation y — its noise-free slot (kept
    /// inside the window, as the reference does) less the unit's zero — and whether the slot
    /// left the window.
    pub fn unit_offset(&self, u: UnitWindow, y: i64) -> (i64, bool) {
        let slot = self.slot(
            (y as u64)
                .wrapping_mul(u.delta_h)
                .wrapping_add(self.offset(u.zero_slot)),
        );
        let inside = slot.min(self.window as u64 - 1);
        (inside as i64 - u.zero_slot as i64, inside != slot)
    }
}

/// Hidden units key-switched together (one pass over the key-switching key per batch; the
/// batch's ciphertexts, 16 KB in and 3.5 KB out each, stay in cache).
const KS_BATCH: usize = 32;

/// Encrypted lookup polynomials, one per hidden unit (seeded).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EncryptedLuts {
    pub map: WindowMap,
    pub zero_slots: Vec<u32>,
    pub activation: Activation,
    pub hidden: usize,
    pub out_dim: usize,
    seed: CompressionSeed,
    bodies: Bodies,
}

/// Low body bits dropped from stored lookup tables: a rounding error of 2^39 per table is
/// far below one bootstrap's output noise (2^48.6 at 128 bits, 2^49.4 at 192, 2^49.7 at 256).
const LUT_DROP_BITS: u8 = 40;

impl EncryptedLuts {
    /// `w2` is out × hidden (row-major), `b2` has `out` entries; both integers at the output
    /// scale, encoded with `delta_out`.
    #[allow(clippy::too_many_arguments)]
    pub fn encrypt(
        sk: &GlweSecretKeyOwned<u64>,
        glwe: GlweParams,
        map: WindowMap,
        zero_slots: &[u32],
        activation: Activation,
        w2: &[i64],
        b2: &[i64],
        out_dim: usize,
        hidden: usize,
        delta_out: u64,
    ) -> Self {
        let n = glwe.poly_size;
        assert_eq!(w2.len(), out_dim * hidden);
        assert!(map.window * out_dim <= n);
        assert_eq!(zero_slots.len(), hidden);
        let mut plain = vec![0u64; hidden * n];
        for i in 0..hidden {
            let lut = &mut plain[i * n..(i + 1) * n];
            for j in 0..out_dim {
                let bias = if i == 0 { b2[j] } else { 0 };
                for t in 0..map.window {
                    let a = activation.apply(t as i64 - zero_slots[i] as i64);
                    let v = w2[j * hidden + i] * a + bias;
                    lut[j * map.window + t] = (v as u64).wrapping_mul(delta_out);
                }
            }
        }
        let (seed, bodies) = encrypt_seeded_glwes(sk, glwe, plain);
        Self {
            map,
            zero_slots: zero_slots.to_vec(),
            activation,
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
            || self.map.window * self.out_dim > n
            || self.zero_slots.len() != self.hidden
            || self
                .zero_slots
                .iter()
                .any(|&z| z as usize >= self.map.window)
            || self.bodies.len() != self.hidden * n
        {
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
    /// Bootstrap every hidden unit and sum: `hidden` yields, per unit, the GLWE block and the
    /// coefficient holding its pre-activation. Returns one GLWE with class j at j·window.
    pub fn evaluate(
        &self,
        blocks: &[GlweCiphertextOwned<u64>],
        rows_per_block: usize,
        keys: &PreparedEvaluationKeys,
    ) -> GlweCiphertextOwned<u64> {
        let n = PolynomialSize(self.map.poly_size);
        let fft = Fft::new(n);
        let mut buffers = ComputationBuffers::new();
        buffers.resize(
            blind_rotate_assign_mem_optimized_requirement::<u64>(GlweSize(2), n, fft.as_view())
                .unaligned_bytes_required(),
        );
        let log_modulus = n.to_blind_rotation_input_modulus_log();
        let mut big = vec![LweCiphertext::new(0u64, LweSize(n.0 + 1), modulus()); KS_BATCH];
        let mut small = vec![
            LweCiphertext::new(
                0 as KsScalar,
                keys.ksk.output_lwe_size(),
                CiphertextModulus::new_native(),
            );
            KS_BATCH
        ];
        let mut acc = GlweCiphertext::new(0u64, GlweSize(2), n, modulus());
        let mut sum = GlweCiphertext::new(0u64, GlweSize(2), n, modulus());
        let luts: Vec<_> = self.luts.iter().collect();
        for (batch, batch_luts) in luts.chunks(KS_BATCH).enumerate() {
            let count = batch_luts.len();
            for (k, big) in big[..count].iter_mut().enumerate() {
                let i = batch * KS_BATCH + k;
                extract_lwe_sample_from_glwe_ciphertext(
                    &blocks[i / rows_per_block],
                    big,
                    MonomialDegree(i % rows_per_block),
                );
            }
            keyswitch_batch(&keys.ksk, &big[..count], &mut small[..count]);
            for (small, lut) in small.iter().zip(batch_luts) {
                let msed = lwe_ciphertext_modulus_switch(small.as_view(), log_modulus);
                acc.as_mut().copy_from_slice(lut.as_ref());
                blind_rotate_assign_mem_optimized(
                    &msed,
                    &mut acc,
                    &keys.bsk,
                    fft.as_view(),
                    buffers.stack(),
                );
                glwe_ciphertext_add_assign(&mut sum, &acc);
            }
        }
        sum
    }
}
