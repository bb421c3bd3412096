//! RLWE public-key encryption (Lyubashevsky–Peikert–Regev) of GLWE and GGSW ciphertexts.
//!
//! The public key is one RLWE encryption of zero, pk = (a, b = a·s + e). Encrypting a
//! polynomial M draws a ternary polynomial u and Gaussian e₁, e₂ and returns
//! (u·a + e₁, u·b + e₂ + M), whose phase is u·e + e₂ − e₁·s + M. Hiding u is an RLWE
//! instance of the same dimension and noise as the key itself (with a ternary secret), so the public key and its
//! ciphertexts inherit the key's security level (see [`super::params`]).
//!
//! A GGSW row is such an encryption of zero with M·q/B^l added to one component
//! (mask row: phase −s·M·q/B^l; body row: +M·q/B^l), which is tfhe's GGSW layout.
//!
//! Products u·a and u·b must be exact modulo 2^64 (the wide shape's noise is only 2^2), so the
//! 64-bit operand is split into two 32-bit limbs, each multiplied by the ternary u in a 53-bit
//! float FFT (|coefficient| <= 2^32·N <= 2^45: exact after rounding), then recombined.

use super::error::{CryptoError, Result};
use super::ggsw::{ExactGgsw, FftEngine, FourierPoly};
use super::params::{DecompParams, GlweParams};
use super::raw::U64s;
#[cfg(any(feature = "backend", test))]
use super::{gaussian, OsSeeder, Seeder};
use super::{modulus, CompressionSeed};
use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha12Rng;
use serde::{Deserialize, Serialize};
use tfhe::core_crypto::prelude::*;

/// Limbs of the public key's polynomials: u is ternary, so a 32-bit limb times u stays exact.
const PK_LIMB_BITS: u32 = 32;
const PK_LIMBS: usize = 2;

/// A public encryption key, stored seeded: the mask a is expanded from the seed.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PublicKey {
    pub glwe: GlweParams,
    seed: CompressionSeed,
    body: U64s,
}

impl PublicKey {
    #[cfg(any(feature = "backend", test))]
    /// Encrypt zero under `sk` (backend side, at key generation).
    pub fn generate(sk: &GlweSecretKeyOwned<u64>, glwe: GlweParams) -> Self {
        let n = glwe.poly_size;
        let mut seeder = OsSeeder;
        let mut ct = SeededGlweCiphertext::new(
            0u64,
            GlweSize(2),
            n,
            CompressionSeed::from(seeder.seed()),
            modulus(),
        );
        let zero = PlaintextList::new(0u64, PlaintextCount(n.0));
        encrypt_seeded_glwe_ciphertext(sk, &mut ct, &zero, gaussian(glwe.log2_std), &mut seeder);
        let seed = ct.compression_seed();
        Self {
            glwe,
            seed,
            body: U64s(ct.into_container()),
        }
    }

    pub fn byte_len(&self) -> usize {
        self.body.byte_len() + 32
    }

    /// Expand the mask and precompute the limb FFTs the encryptions need.
    pub fn prepare(&self) -> Result<PreparedPublicKey> {
        let n = self.glwe.poly_size.0;
        if self.body.0.len() != n || !n.is_power_of_two() || n < 256 {
            return Err(CryptoError::Shape(format!(
                "public key body has {} coefficients for polynomial size {n}",
                self.body.0.len()
            )));
        }
        let seeded = SeededGlweCiphertext::from_container(
            self.body.0.clone(),
            GlweSize(2),
            self.seed.clone(),
            modulus(),
        );
        let ct = seeded.decompress_into_glwe_ciphertext();
        let mut engine = FftEngine::new(n);
        let mask = ct.get_mask();
        let mut a = engine.forward_split(
            mask.as_polynomial_list().get(0).as_ref(),
            PK_LIMB_BITS,
            PK_LIMBS,
        );
        let mut b = engine.forward_split(
            ct.get_body().as_polynomial().as_ref(),
            PK_LIMB_BITS,
            PK_LIMBS,
        );
        a.iter_mut()
            .chain(b.iter_mut())
            .for_each(FftEngine::scale_for_backward);
        Ok(PreparedPublicKey {
            glwe: self.glwe,
            engine,
            a,
            b,
            rng: ChaCha12Rng::from_entropy(),
        })
    }
}

/// A public key ready to encrypt: expanded mask and limb FFTs.
pub struct PreparedPublicKey {
    pub glwe: GlweParams,
    engine: FftEngine,
    a: Vec<FourierPoly>,
    b: Vec<FourierPoly>,
    rng: ChaCha12Rng,
}

impl PreparedPublicKey {
    pub fn poly_size(&self) -> usize {
        self.glwe.poly_size.0
    }

    /// A fresh RLWE encryption of zero: (u·a + e₁, u·b + e₂).
    fn encrypt_zero(&mut self, out: &mut [u64]) {
        let n = self.glwe.poly_size.0;
        // Ternary u = b₁ − b₂ (centred binomial, η = 1): variance ½ like a binary u, but mean
        // zero. A binary u's mean ½ times the key's fixed noise e, summed over a GGSW's rows
        // against the digits' mean −½, adds a coherent ramp of ≈ ℓN·e (measured: a 2^22.5 floor
        // per external product at N = 4096, against 2^18.4 from the digits).
        let mut u = vec![0u64; n];
        let (mut w1, mut w2) = (0u64, 0u64);
        for (i, c) in u.iter_mut().enumerate() {
            if i % 64 == 0 {
                w1 = self.rng.next_u64();
                w2 = self.rng.next_u64();
            }
            let k = i % 64;
            *c = ((w1 >> k) & 1).wrapping_sub((w2 >> k) & 1);
        }
        let fu = self.engine.forward_integer(&u);
        out.fill(0);
        for (component, key) in [(0usize, &self.a), (1, &self.b)] {
            for (l, limb) in key.iter().enumerate() {
                let mut prod = self
                    .engine
                    .multiply_accumulate(std::iter::once((&fu, limb)));
                self.engine.add_backward_integer(
                    &mut out[component * n..(component + 1) * n],
                    &mut prod,
                    l as u32 * PK_LIMB_BITS,
                );
            }
        }
        add_noise(out, self.glwe.log2_std, &mut self.rng);
    }

    /// Encrypt a polynomial (coefficients already scaled onto the torus) as a GLWE.
    pub fn encrypt_glwe(&mut self, message: &[u64]) -> GlweCiphertextOwned<u64> {
        let n = self.glwe.poly_size.0;
        let mut ct = GlweCiphertext::new(0u64, GlweSize(2), PolynomialSize(n), modulus());
        self.encrypt_zero(ct.as_mut());
        for (b, m) in ct.as_mut()[n..].iter_mut().zip(message) {
            *b = b.wrapping_add(*m);
        }
        ct
    }

    /// Encrypt an integer polynomial M as a GGSW ready for exact external products:
    /// GGSW(M) ⊡ GLWE(P) = GLWE(M·P).
    pub fn encrypt_ggsw(&mut self, message: &[u64], decomp: DecompParams) -> Result<ExactGgsw> {
        let rows = self.encrypt_ggsw_rows(message, decomp);
        ExactGgsw::from_standard(&mut self.engine, &rows, decomp)
    }

    /// The same GGSW in the standard domain (rows of mask+body GLWEs, tfhe order): the form
    /// that travels from a data source to the edge.
    pub(crate) fn encrypt_ggsw_rows(&mut self, message: &[u64], decomp: DecompParams) -> Vec<u64> {
        let n = self.glwe.poly_size.0;
        let mut rows = vec![0u64; ExactGgsw::standard_words(n, decomp)];
        for (r, row) in rows.chunks_exact_mut(2 * n).enumerate() {
            // tfhe stores the least significant level first; row r = level_index*2 + component.
            let (level_index, component) = (r / 2, r % 2);
            let shift = 64 - decomp.base_log.0 * (decomp.level.0 - level_index);
            self.encrypt_zero(row);
            // Add M·q/B^l to one component: the mask row's phase becomes −s·M·q/B^l and the
            // body row's +M·q/B^l, tfhe's layout.
            for (d, m) in row[component * n..(component + 1) * n]
                .iter_mut()
                .zip(message)
            {
                *d = d.wrapping_add(m.wrapping_shl(shift as u32));
            }
        }
        rows
    }
}

/// Add noise of standard deviation 2^log2_std to every coefficient. For σ <= 16 a centred
/// binomial with 2σ² coin pairs (variance σ², as in Kyber) is exact and fast; larger σ use a
/// rounded Gaussian.
fn add_noise(out: &mut [u64], log2_std: f64, rng: &mut ChaCha12Rng) {
    let sigma = 2f64.powf(log2_std);
    let pairs = (2.0 * sigma * sigma).round() as u32;
    let binomial = (sigma * sigma * 2.0 - pairs as f64).abs() < 1e-9;
    if binomial && pairs <= 32 {
        // Both coin sets from one word: half the random bytes (the usual case, σ = 4).
        // Bulk generation: the generator's per-call overhead exceeds its cost per byte.
        let mask = (1u64 << pairs) - 1;
        let mut words = [0u64; 256];
        let arch = pulp::Arch::new();
        for chunk in out.chunks_mut(words.len()) {
            let words = &mut words[..chunk.len()];
            rng.fill(words);
            arch.dispatch(AddBinomial {
                out: chunk,
                words,
                mask,
            });
        }
    } else if binomial && pairs <= 512 {
        let words = (pairs as usize).div_ceil(64);
        for t in out.iter_mut() {
            let mut v = 0i64;
            let mut left = pairs;
            for _ in 0..words {
                let take = left.min(64);
                let mask = if take == 64 {
                    u64::MAX
                } else {
                    (1u64 << take) - 1
                };
                v += (rng.next_u64() & mask).count_ones() as i64
                    - (rng.next_u64() & mask).count_ones() as i64;
                left -= take;
            }
            *t = t.wrapping_add(v as u64);
        }
    } else {
        for t in out.iter_mut() {
            *t = t.wrapping_add(sample_gaussian(rng, sigma) as u64);
        }
    }
}

/// out += popcount(word & mask) − popcount((word >> 32) & mask), compiled for the CPU it runs
/// on (pulp dispatch): the x86-64 baseline has no popcount instruction, and its software
/// replacement made noise sampling half of a feature encryption.
struct AddBinomial<'a> {
    out: &'a mut [u64],
    words: &'a [u64],
    mask: u64,
}

impl pulp::WithSimd for AddBinomial<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, _simd: S) {
        let mask = self.mask;
        for (t, &r) in self.out.iter_mut().zip(self.words) {
            let v = (r & mask).count_ones() as i64 - ((r >> 32) & mask).count_ones() as i64;
            *t = t.wrapping_add(v as u64);
        }
    }
}

/// A rounded Gaussian sample (Box–Muller) of standard deviation `sigma`.
pub(crate) fn sample_gaussian(rng: &mut impl Rng, sigma: f64) -> i64 {
    let u1: f64 = rng.gen::<f64>().max(f64::MIN_POSITIVE);
    let u2: f64 = rng.gen();
    let z = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
    (z * sigma).round() as i64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::params::{ParameterSet, SecurityLevel};

    fn key(n: usize) -> GlweSecretKeyOwned<u64> {
        let mut gen = SecretRandomGenerator::<DefaultRandomGenerator>::new(OsSeeder.seed());
        GlweSecretKey::generate_new_binary(GlweDimension(1), PolynomialSize(n), &mut gen)
    }

    fn phase(sk: &GlweSecretKeyOwned<u64>, ct: &GlweCiphertextOwned<u64>) -> Vec<u64> {
        let mut out = PlaintextList::new(0u64, PlaintextCount(ct.polynomial_size().0));
        decrypt_glwe_ciphertext(sk, ct, &mut out);
        out.into_container()
    }

    #[test]
    fn public_key_glwe_decrypts_with_small_noise() {
        let params = ParameterSet::for_level(SecurityLevel::L128).wide;
        let sk = key(params.poly_size.0);
        let pk = PublicKey::generate(&sk, params);
        let mut pk = postcard::from_bytes::<PublicKey>(&postcard::to_allocvec(&pk).unwrap())
            .unwrap()
            .prepare()
            .unwrap();
        let msg: Vec<u64> = (0..params.poly_size.0 as u64)
            .map(|i| (i % 7) << 40)
            .collect();
        let ct = pk.encrypt_glwe(&msg);
        let worst = phase(&sk, &ct)
            .iter()
            .zip(&msg)
            .map(|(p, m)| p.wrapping_sub(*m) as i64)
            .map(i64::unsigned_abs)
            .max()
            .unwrap();
        // Noise ≈ sqrt(N)·σ ≈ 2^8; a wrong product would be ~2^63.
        assert!(worst < 1 << 14, "noise {worst}");
    }

    #[test]
    fn public_key_ggsw_external_product_multiplies() {
        let params = ParameterSet::for_level(SecurityLevel::L128);
        let glwe = params.wide;
        let n = glwe.poly_size.0;
        let sk = key(n);
        let mut pk = PublicKey::generate(&sk, glwe).prepare().unwrap();
        // M = 3 − 2·X^5, P = Δ·(1 + X)
        let mut m = vec![0u64; n];
        m[0] = 3;
        m[5] = (-2i64) as u64;
        let delta = 1u64 << 40;
        let mut p = vec![0u64; n];
        p[0] = delta;
        p[1] = delta;
        let mut gen = crate::crypto::encryption_generator();
        let mut glwe_p = GlweCiphertext::new(0u64, GlweSize(2), PolynomialSize(n), modulus());
        encrypt_glwe_ciphertext(
            &sk,
            &mut glwe_p,
            &PlaintextList::from_container(p),
            gaussian(glwe.log2_std),
            &mut gen,
        );
        let ggsw = pk.encrypt_ggsw(&m, params.features_wide).unwrap();
        let mut out = GlweCiphertext::new(0u64, GlweSize(2), PolynomialSize(n), modulus());
        FftEngine::new(n).add_external_product(out.as_mut(), &ggsw, glwe_p.as_ref());
        let ph = phase(&sk, &out);
        let decoded: Vec<i64> = ph
            .iter()
            .map(|&x| ((x as i64) as f64 / delta as f64).round() as i64)
            .collect();
        let mut expected = vec![0i64; n];
        expected[0] = 3;
        expected[1] = 3;
        expected[5] = -2;
        expected[6] = -2;
        assert_eq!(decoded, expected);
    }
}
