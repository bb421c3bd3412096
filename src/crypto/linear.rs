//! Encrypted linear layers.
//!
//! **Column packing.** A weight matrix W (out × in, the bias as one more column fed by a
//! constant 1) is cut into output blocks of at most N rows. Within a block, `c = N / rows`
//! columns share one GLWE: column s of the group sits at coefficient offset o_s = s·rows, so
//! coefficient o_s + j holds Δ·W[j, s]. With the feature polynomial
//! P_g(X) = Σ_s x_s · X^(−o_s), the product P_g · GLWE_g holds Σ_s x_s·W[j, s] at
//! coefficient j < rows; cross terms land at offsets that are non-zero multiples of `rows`
//! (or wrap negacyclically to N − …), never below `rows`.
//!
//! - Plaintext features: P_g is a cleartext polynomial with c monomials, so the product is c
//!   scaled rotations of the ciphertext (2N multiply-adds each): in·2N for the whole layer.
//! - Encrypted features: the edge encrypts P_g as a GGSW with the public key, and the external
//!   product GGSW(P_g) ⊡ GLWE_g computes the same polynomial product under encryption.
//!
//! Only the used prefix of each GLWE body is stored (c_g·rows coefficients): the dropped tail
//! decrypts to garbage that never reaches the coefficients below `rows`.
//!
//! **GGSW rows** (second layer of variant `noact`): for an input GLWE holding h_i at coefficient
//! i < in, P_j(X) = Σ_i W[j,i]·X^(T−i) with T = in − 1 makes coefficient T of GGSW(P_j) ⊡ GLWE(h)
//! equal to Σ_i W[j,i]·h_i; every other input coefficient t > T meets P_j at a negative
//! exponent, which wraps to degrees above T where P_j is zero, so the garbage never mixes in.

use super::error::{CryptoError, Result};
use super::ggsw::{ExactGgsw, FftEngine};
use super::keys::KeyKind;
use super::params::DecompParams;
#[cfg(any(feature = "backend", test))]
use super::params::GlweParams;
use super::pke::PreparedPublicKey;
use super::raw::{Bodies, U64s};
#[cfg(any(feature = "backend", test))]
use super::{encrypt_seeded_glwes, gaussian, OsSeeder, Seeder};
use super::{modulus, CompressionSeed};
use serde::{Deserialize, Serialize};
use tfhe::core_crypto::prelude::*;

/// How a matrix is packed into GLWEs (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackedLayout {
    pub poly_size: usize,
    pub out_dim: usize,
    /// Input width, counting the bias column.
    pub in_dim: usize,
    pub rows_per_block: usize,
    pub cols_per_glwe: usize,
}

impl PackedLayout {
    pub fn new(poly_size: usize, out_dim: usize, in_dim: usize) -> Result<Self> {
        if out_dim == 0 || in_dim == 0 {
            return Err(CryptoError::Unsupported("empty matrix".into()));
        }
        let rows_per_block = out_dim.min(poly_size);
        Ok(Self {
            poly_size,
            out_dim,
            in_dim,
            rows_per_block,
            cols_per_glwe: poly_size / rows_per_block,
        })
    }

    pub(crate) fn blocks(&self) -> usize {
        self.out_dim.div_ceil(self.rows_per_block)
    }

    pub fn groups(&self) -> usize {
        self.in_dim.div_ceil(self.cols_per_glwe)
    }

    fn cols_in(&self, g: usize) -> usize {
        (self.in_dim - g * self.cols_per_glwe).min(self.cols_per_glwe)
    }

    pub(crate) fn rows_in(&self, b: usize) -> usize {
        (self.out_dim - b * self.rows_per_block).min(self.rows_per_block)
    }

    /// Body coefficients stored for GLWE (b, g).
    fn used_len(&self, b: usize, g: usize) -> usize {
        (self.cols_in(g) - 1) * self.rows_per_block + self.rows_in(b)
    }

    fn stored_len(&self) -> usize {
        (0..self.blocks())
            .flat_map(|b| (0..self.groups()).map(move |g| (b, g)))
            .map(|(b, g)| self.used_len(b, g))
            .sum()
    }

    /// P_g(X) = Σ_s x_s X^(−o_s) for the features of group g, as torus integers.
    pub(crate) fn feature_polynomial(&self, g: usize, x: &[i64]) -> Vec<u64> {
        let n = self.poly_size;
        let mut p = vec![0u64; n];
        for s in 0..self.cols_in(g) {
            let v = x[g * self.cols_per_glwe + s] as u64;
            let o = s * self.rows_per_block;
            if o == 0 {
                p[0] = p[0].wrapping_add(v);
            } else {
                // X^(−o) = −X^(N−o) in Z[X]/(X^N + 1)
                p[n - o] = p[n - o].wrapping_sub(v);
            }
        }
        p
    }
}

/// A column-packed weight matrix encrypted under a GLWE secret key (seeded).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EncryptedMatrix {
    pub key: KeyKind,
    pub layout: PackedLayout,
    seed: CompressionSeed,
    bodies: Bodies,
}

impl EncryptedMatrix {
    #[cfg(any(feature = "backend", test))]
    /// Encrypt `w` (row-major, out × in with the bias as last column), row j scaled by
    /// `row_scale[j]` and its bias shifted by `row_offset[j]` (a phase shift for the bootstrap
    /// window); bodies are stored without their `drop_bits` low bits (see [`Bodies`]).
    #[allow(clippy::too_many_arguments)]
    pub fn encrypt(
        sk: &GlweSecretKeyOwned<u64>,
        key: KeyKind,
        glwe: GlweParams,
        w: &[i64],
        layout: PackedLayout,
        row_scale: &[u64],
        row_offset: &[u64],
        drop_bits: u8,
    ) -> Self {
        assert_eq!(w.len(), layout.out_dim * layout.in_dim);
        assert_eq!(row_scale.len(), layout.out_dim);
        assert_eq!(row_offset.len(), layout.out_dim);
        assert_eq!(sk.polynomial_size().0, layout.poly_size);
        let n = layout.poly_size;
        let count = layout.blocks() * layout.groups();
        let mut plain = vec![0u64; count * n];
        for b in 0..layout.blocks() {
            for g in 0..layout.groups() {
                let glwe_index = b * layout.groups() + g;
                let base = glwe_index * n;
                for s in 0..layout.cols_in(g) {
                    let col = g * layout.cols_per_glwe + s;
                    for j in 0..layout.rows_in(b) {
                        let row = b * layout.rows_per_block + j;
                        let offset = if col + 1 == layout.in_dim {
                            row_offset[row]
                        } else {
                            0
                        };
                        plain[base + s * layout.rows_per_block + j] = (w[row * layout.in_dim + col]
                            as u64)
                            .wrapping_mul(row_scale[row])
                            .wrapping_add(offset);
                    }
                }
            }
        }
        let (seed, full) = encrypt_seeded_glwes(sk, glwe, plain);
        let mut bodies = Vec::with_capacity(layout.stored_len());
        for b in 0..layout.blocks() {
            for g in 0..layout.groups() {
                let base = (b * layout.groups() + g) * n;
                bodies.extend_from_slice(&full[base..base + layout.used_len(b, g)]);
            }
        }
        Self {
            key,
            layout,
            seed,
            bodies: Bodies::pack(&bodies, drop_bits),
        }
    }

    pub fn byte_len(&self) -> usize {
        self.bodies.byte_len()
    }

    /// Expand the masks from the seed (done once, at load).
    pub fn prepare(&self) -> Result<PreparedMatrix> {
        let l = self.layout;
        if !l.poly_size.is_power_of_two()
            || l.rows_per_block != l.out_dim.min(l.poly_size)
            || l.cols_per_glwe != l.poly_size / l.rows_per_block
            || self.bodies.len() != l.stored_len()
        {
            return Err(CryptoError::Shape(format!(
                "encrypted matrix {}×{}: inconsistent layout or {} stored coefficients",
                l.out_dim,
                l.in_dim,
                self.bodies.len()
            )));
        }
        let bodies = self
            .bodies
            .unpack()
            .ok_or_else(|| CryptoError::Shape("encrypted matrix bodies are inconsistent".into()))?;
        let n = l.poly_size;
        let count = l.blocks() * l.groups();
        let mut full = vec![0u64; count * n];
        let mut at = 0;
        for b in 0..l.blocks() {
            for g in 0..l.groups() {
                let used = l.used_len(b, g);
                let base = (b * l.groups() + g) * n;
                full[base..base + used].copy_from_slice(&bodies[at..at + used]);
                at += used;
            }
        }
        let seeded = SeededGlweCiphertextList::from_container(
            full,
            GlweSize(2),
            PolynomialSize(n),
            self.seed.clone(),
            modulus(),
        );
        Ok(PreparedMatrix {
            layout: l,
            glwes: seeded
                .decompress_into_glwe_ciphertext_list()
                .into_container(),
        })
    }
}

/// An encrypted matrix with expanded masks, ready to multiply.
pub struct PreparedMatrix {
    pub layout: PackedLayout,
    glwes: Vec<u64>,
}

/// acc += v · X^(−o) · src, for one polynomial of size N.
fn add_scaled_rotated(acc: &mut [u64], src: &[u64], v: u64, o: usize) {
    let n = acc.len();
    let (acc_lo, acc_hi) = acc.split_at_mut(n - o);
    for (a, s) in acc_lo.iter_mut().zip(&src[o..]) {
        *a = a.wrapping_add(s.wrapping_mul(v));
    }
    for (a, s) in acc_hi.iter_mut().zip(&src[..o]) {
        *a = a.wrapping_sub(s.wrapping_mul(v));
    }
}

impl PreparedMatrix {
    /// Every GLWE of the matrix, as its 2N words.
    pub fn ciphertexts(&self) -> impl Iterator<Item = &[u64]> {
        self.glwes.chunks_exact(2 * self.layout.poly_size)
    }

    fn glwe(&self, b: usize, g: usize) -> GlweCiphertextView<'_, u64> {
        let n = self.layout.poly_size;
        let i = b * self.layout.groups() + g;
        GlweCiphertext::from_container(
            &self.glwes[i * 2 * n..(i + 1) * 2 * n],
            PolynomialSize(n),
            modulus(),
        )
    }

    /// W·x for cleartext x (its last entry is the bias input, normally 1): one GLWE per output
    /// block, output j of the block at coefficient j.
    pub fn mul_plain(&self, x: &[i64]) -> Vec<GlweCiphertextOwned<u64>> {
        let l = self.layout;
        assert_eq!(x.len(), l.in_dim);
        let n = l.poly_size;
        (0..l.blocks())
            .map(|b| {
                let mut acc = vec![0u64; 2 * n];
                for g in 0..l.groups() {
                    let src = self.glwe(b, g);
                    let src = src.as_ref();
                    for s in 0..l.cols_in(g) {
                        let v = x[g * l.cols_per_glwe + s] as u64;
                        if v == 0 {
                            continue;
                        }
                        let o = s * l.rows_per_block;
                        let (acc_mask, acc_body) = acc.split_at_mut(n);
                        add_scaled_rotated(acc_mask, &src[..n], v, o);
                        add_scaled_rotated(acc_body, &src[n..], v, o);
                    }
                }
                GlweCiphertext::from_container(acc, PolynomialSize(n), modulus())
            })
            .collect()
    }

    /// W·x for encrypted x given as one standard-domain GGSW per column group (see
    /// [`encrypt_features`]), e.g. received from a data source. Each group is brought to the
    /// Fourier domain when its turn comes and dropped after, so memory stays at one GGSW.
    pub(crate) fn mul_encrypted(
        &self,
        groups: &[U64s],
        decomp: DecompParams,
        engine: &mut FftEngine,
    ) -> Result<Vec<GlweCiphertextOwned<u64>>> {
        let l = self.layout;
        if groups.len() != l.groups() || engine.poly_size() != l.poly_size {
            return Err(CryptoError::Features(format!(
                "{} encrypted feature groups, the layer expects {} of size {}",
                groups.len(),
                l.groups(),
                l.poly_size
            )));
        }
        self.mul_group_by_group(engine, |g, engine| {
            ExactGgsw::from_standard(engine, &groups[g].0, decomp)
        })
    }
}

impl PreparedMatrix {
    /// W·x for features encrypted here, one column group at a time: each group's GGSW is
    /// made with the public key, multiplied in and dropped, so memory stays at one GGSW.
    pub fn mul_encrypting(
        &self,
        pk: &mut PreparedPublicKey,
        x: &[i64],
        decomp: DecompParams,
        engine: &mut FftEngine,
    ) -> Result<Vec<GlweCiphertextOwned<u64>>> {
        let l = self.layout;
        if x.len() != l.in_dim || pk.poly_size() != l.poly_size || engine.poly_size() != l.poly_size
        {
            return Err(CryptoError::Features(format!(
                "{} features for a layer of {} inputs",
                x.len(),
                l.in_dim
            )));
        }
        self.mul_group_by_group(engine, |g, _| {
            pk.encrypt_ggsw(&l.feature_polynomial(g, x), decomp)
        })
    }

    /// Σ_g GGSW_g ⊡ GLWE_{b,g} for every row block b, with GGSW_g made by `ggsw` when its
    /// group's turn comes (the external products are exact, so the order is free).
    fn mul_group_by_group(
        &self,
        engine: &mut FftEngine,
        mut ggsw: impl FnMut(usize, &mut FftEngine) -> Result<ExactGgsw>,
    ) -> Result<Vec<GlweCiphertextOwned<u64>>> {
        let n = self.layout.poly_size;
        let mut acc = vec![vec![0u64; 2 * n]; self.layout.blocks()];
        for g in 0..self.layout.groups() {
            let ggsw = ggsw(g, engine)?;
            for (b, acc) in acc.iter_mut().enumerate() {
                engine.add_external_product(acc, &ggsw, self.glwe(b, g).as_ref());
            }
        }
        Ok(acc
            .into_iter()
            .map(|a| GlweCiphertext::from_container(a, PolynomialSize(n), modulus()))
            .collect())
    }
}

/// Encrypt features for a packed layer: one public-key GGSW per column group, in the standard
/// domain (prepare with [`ExactGgsw::from_standard`]).
pub fn encrypt_features(
    pk: &mut PreparedPublicKey,
    layout: &PackedLayout,
    x: &[i64],
    decomp: DecompParams,
) -> Result<Vec<U64s>> {
    let mut groups = Vec::with_capacity(layout.groups());
    encrypt_features_each::<CryptoError>(pk, layout, x, decomp, |g| {
        groups.push(g);
        Ok(())
    })?;
    Ok(groups)
}

/// [`encrypt_features`] handing each group to `sink` as soon as it exists (a full
/// classifier's groups add up to hundreds of MB). Checks the input before the first group.
pub(crate) fn encrypt_features_each<E: From<CryptoError>>(
    pk: &mut PreparedPublicKey,
    layout: &PackedLayout,
    x: &[i64],
    decomp: DecompParams,
    mut sink: impl FnMut(U64s) -> Result<(), E>,
) -> Result<(), E> {
    if pk.poly_size() != layout.poly_size || x.len() != layout.in_dim {
        return Err(CryptoError::Features(format!(
            "{} features for a layer of {} inputs",
            x.len(),
            layout.in_dim
        ))
        .into());
    }
    for g in 0..layout.groups() {
        sink(U64s(
            pk.encrypt_ggsw_rows(&layout.feature_polynomial(g, x), decomp),
        ))?;
    }
    Ok(())
}

/// A second layer as one GGSW per output row, encrypted under the secret key (seeded), plus
/// its bias as seeded LWE ciphertexts under the same key.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EncryptedGgswRows {
    pub key: KeyKind,
    pub poly_size: usize,
    pub out_dim: usize,
    pub in_dim: usize,
    pub decomp: DecompParams,
    seed: CompressionSeed,
    rows: Bodies,
    bias_seed: CompressionSeed,
    bias: U64s,
}

/// Low bits dropped from stored GGSW rows: each row's phase errs by ≤ 2^7, times the digits
/// (≤ 2^10) over 2ℓN terms ≈ 2^24 — far below the second layer's noise with encrypted
/// features (≈ 2^33) and 14 bits under Δ with plaintext ones.
#[cfg(any(feature = "backend", test))]
const GGSW_ROW_DROP_BITS: u8 = 8;

impl EncryptedGgswRows {
    #[cfg(any(feature = "backend", test))]
    /// Encrypt W (out × in, row-major, unscaled integers) and the bias (scaled by `delta`).
    #[allow(clippy::too_many_arguments)]
    pub fn encrypt(
        sk: &GlweSecretKeyOwned<u64>,
        key: KeyKind,
        glwe: GlweParams,
        w: &[i64],
        bias: &[i64],
        out_dim: usize,
        in_dim: usize,
        decomp: DecompParams,
        delta: u64,
    ) -> Result<Self> {
        let n = glwe.poly_size.0;
        if in_dim > n {
            return Err(CryptoError::Unsupported(format!(
                "noact second layer with {in_dim} inputs exceeds polynomial size {n}"
            )));
        }
        assert_eq!(w.len(), out_dim * in_dim);
        let t = in_dim - 1;
        let levels = decomp.level.0;
        let key_poly = sk.as_ref();
        // Rows in tfhe GGSW order: per output row j, per stored level (least significant
        // first), a mask row (phase −s·M·f) then a body row (phase +M·f); f = q/B^level.
        let mut plain = Vec::with_capacity(out_dim * levels * 2 * n);
        for j in 0..out_dim {
            let mut m = vec![0u64; n];
            for i in 0..in_dim {
                m[t - i] = w[j * in_dim + i] as u64;
            }
            // s·M, exact (s binary, M sparse-ish): Σ_i M_i · X^i · s
            let mut sm = vec![0u64; n];
            for (e, &mi) in m.iter().enumerate() {
                if mi != 0 {
                    add_scaled_rotated_up(&mut sm, key_poly, mi, e);
                }
            }
            for level_index in 0..levels {
                let level = levels - level_index;
                let f = 1u64 << (64 - decomp.base_log.0 * level);
                plain.extend(sm.iter().map(|v| v.wrapping_mul(f).wrapping_neg()));
                plain.extend(m.iter().map(|v| v.wrapping_mul(f)));
            }
        }
        let (seed, rows) = encrypt_seeded_glwes(sk, glwe, plain);
        let mut seeder = OsSeeder;
        let lwe_key = sk.clone().into_lwe_secret_key();
        let mut bias_list = SeededLweCiphertextList::new(
            0u64,
            LweSize(n + 1),
            LweCiphertextCount(out_dim),
            CompressionSeed::from(seeder.seed()),
            modulus(),
        );
        encrypt_seeded_lwe_ciphertext_list(
            &lwe_key,
            &mut bias_list,
            &PlaintextList::from_container(
                bias.iter()
                    .map(|b| (*b as u64).wrapping_mul(delta))
                    .collect::<Vec<_>>(),
            ),
            gaussian(glwe.log2_std),
            &mut seeder,
        );
        Ok(Self {
            key,
            poly_size: n,
            out_dim,
            in_dim,
            decomp,
            seed,
            rows: Bodies::pack(&rows, GGSW_ROW_DROP_BITS),
            bias_seed: bias_list.compression_seed(),
            bias: U64s(bias_list.into_container()),
        })
    }

    pub fn byte_len(&self) -> usize {
        self.rows.byte_len() + self.bias.byte_len()
    }

    fn row_words(&self) -> Option<Vec<u64>> {
        self.rows.unpack()
    }

    pub fn prepare(&self) -> Result<PreparedGgswRows> {
        let n = self.poly_size;
        let levels = self.decomp.level.0;
        if !n.is_power_of_two()
            || self.in_dim == 0
            || self.in_dim > n
            || levels == 0
            || self.decomp.precision_bits() > 64
            || self.rows.len() != self.out_dim * levels * 2 * n
            || self.bias.0.len() != self.out_dim
        {
            return Err(CryptoError::Shape("inconsistent GGSW rows".into()));
        }
        let rows = self
            .row_words()
            .ok_or_else(|| CryptoError::Shape("inconsistent GGSW rows".into()))?;
        let glwes = SeededGlweCiphertextList::from_container(
            rows,
            GlweSize(2),
            PolynomialSize(n),
            self.seed.clone(),
            modulus(),
        )
        .decompress_into_glwe_ciphertext_list()
        .into_container();
        let per_ggsw = ExactGgsw::standard_words(n, self.decomp);
        let mut engine = FftEngine::new(n);
        let ggsws = glwes
            .chunks_exact(per_ggsw)
            .map(|chunk| ExactGgsw::from_standard(&mut engine, chunk, self.decomp))
            .collect::<Result<Vec<_>>>()?;
        let bias = SeededLweCiphertextList::from_container(
            self.bias.0.clone(),
            LweSize(n + 1),
            self.bias_seed.clone(),
            modulus(),
        )
        .decompress_into_lwe_ciphertext_list();
        Ok(PreparedGgswRows {
            in_dim: self.in_dim,
            ggsws,
            bias,
        })
    }
}

/// acc += v · X^e · src (negacyclic), for one polynomial.
#[cfg(any(feature = "backend", test))]
fn add_scaled_rotated_up(acc: &mut [u64], src: &[u64], v: u64, e: usize) {
    let n = acc.len();
    let (lo, hi) = acc.split_at_mut(e);
    // degrees e..n come from src[0..n−e]; degrees 0..e wrap from src[n−e..n] with a minus sign
    for (a, s) in hi.iter_mut().zip(&src[..n - e]) {
        *a = a.wrapping_add(s.wrapping_mul(v));
    }
    for (a, s) in lo.iter_mut().zip(&src[n - e..]) {
        *a = a.wrapping_sub(s.wrapping_mul(v));
    }
}

/// GGSW rows ready to apply.
pub struct PreparedGgswRows {
    in_dim: usize,
    ggsws: Vec<ExactGgsw>,
    bias: LweCiphertextListOwned<u64>,
}

impl PreparedGgswRows {
    /// Output rows (classes, then any check rows).
    pub fn rows(&self) -> usize {
        self.ggsws.len()
    }

    /// One LWE per output row: W·h + bias, from the GLWE holding h at coefficients 0..in.
    pub fn apply(
        &self,
        h: &GlweCiphertextOwned<u64>,
        engine: &mut FftEngine,
    ) -> Vec<LweCiphertextOwned<u64>> {
        let n = h.polynomial_size();
        // Every row reads the same digits of h: decomposed and transformed once.
        let Some(decomp) = self.ggsws.first().map(|g| g.decomp) else {
            return Vec::new();
        };
        let digits = engine.decompose(h.as_ref(), decomp);
        self.ggsws
            .iter()
            .zip(self.bias.iter())
            .map(|(ggsw, bias)| {
                let mut acc = vec![0u64; 2 * n.0];
                engine.add_external_product_decomposed(&mut acc, ggsw, &digits);
                let acc = GlweCiphertext::from_container(acc, n, modulus());
                let mut lwe = LweCiphertext::new(0u64, LweSize(n.0 + 1), modulus());
                extract_lwe_sample_from_glwe_ciphertext(
                    &acc,
                    &mut lwe,
                    MonomialDegree(self.in_dim - 1),
                );
                lwe_ciphertext_add_assign(&mut lwe, &bias);
                lwe
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::keys;
    use crate::crypto::params::{ParameterSet, SecurityLevel};
    use rand::{Rng, SeedableRng};

    fn decode(
        sk: &GlweSecretKeyOwned<u64>,
        ct: &GlweCiphertextOwned<u64>,
        delta: u64,
        k: usize,
    ) -> Vec<i64> {
        let mut out = PlaintextList::new(0u64, PlaintextCount(ct.polynomial_size().0));
        decrypt_glwe_ciphertext(sk, ct, &mut out);
        out.as_ref()[..k]
            .iter()
            .map(|&p| ((p as i64) as f64 / delta as f64).round() as i64)
            .collect()
    }

    fn reference(w: &[i64], x: &[i64], out: usize) -> Vec<i64> {
        (0..out)
            .map(|j| (0..x.len()).map(|i| w[j * x.len() + i] * x[i]).sum())
            .collect()
    }

    #[test]
    fn packed_layer_plain_and_encrypted_match_reference() {
        let p = ParameterSet::for_level(SecurityLevel::L128);
        let ks = keys::generate(p);
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        // 300 outputs, 37 inputs + bias: 2 output blocks? no: 300 < N, c = 13 columns per GLWE.
        for (out, inp) in [(300usize, 37usize), (10, 600), (5000, 3)] {
            let w: Vec<i64> = (0..out * (inp + 1))
                .map(|_| rng.gen_range(-127..=127))
                .collect();
            let mut x: Vec<i64> = (0..inp).map(|_| rng.gen_range(-128..=127)).collect();
            x.push(1);
            let layout = PackedLayout::new(p.wide.poly_size.0, out, inp + 1).unwrap();
            let delta = 1u64 << 40;
            let m = EncryptedMatrix::encrypt(
                &ks.secret.wide,
                KeyKind::Wide,
                p.wide,
                &w,
                layout,
                &vec![delta; out],
                &vec![0; out],
                0,
            );
            let m: EncryptedMatrix =
                postcard::from_bytes(&postcard::to_allocvec(&m).unwrap()).unwrap();
            let prepared = m.prepare().unwrap();
            let expected = reference(&w, &x, out);
            let got: Vec<i64> = prepared
                .mul_plain(&x)
                .iter()
                .enumerate()
                .flat_map(|(b, ct)| decode(&ks.secret.wide, ct, delta, layout.rows_in(b)))
                .collect();
            assert_eq!(got, expected, "plain {out}x{inp}");
            let mut pk = ks.public.wide.prepare().unwrap();
            let mut engine = FftEngine::new(layout.poly_size);
            let f = encrypt_features(&mut pk, &layout, &x, p.features_wide).unwrap();
            let got: Vec<i64> = prepared
                .mul_encrypted(&f, p.features_wide, &mut engine)
                .unwrap()
                .iter()
                .enumerate()
                .flat_map(|(b, ct)| decode(&ks.secret.wide, ct, delta, layout.rows_in(b)))
                .collect();
            assert_eq!(got, expected, "encrypted {out}x{inp}");
        }
    }

    #[test]
    fn ggsw_rows_compute_second_layer() {
        let p = ParameterSet::for_level(SecurityLevel::L128);
        let ks = keys::generate(p);
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(9);
        let (out, inp) = (10usize, 512usize);
        let w: Vec<i64> = (0..out * inp).map(|_| rng.gen_range(-31..=31)).collect();
        let bias: Vec<i64> = (0..out).map(|_| rng.gen_range(-1000..=1000)).collect();
        let h: Vec<i64> = (0..inp).map(|_| rng.gen_range(-5000..=5000)).collect();
        let delta = 1u64 << 30;
        // h at coefficients 0..512 with garbage above, as a packed layer leaves it.
        let n = p.wide.poly_size.0;
        let mut msg: Vec<u64> = (0..n).map(|_| rng.gen()).collect();
        for (i, v) in h.iter().enumerate() {
            msg[i] = (*v as u64).wrapping_mul(delta);
        }
        let mut gen = crate::crypto::encryption_generator();
        let mut ct = GlweCiphertext::new(0u64, GlweSize(2), PolynomialSize(n), modulus());
        encrypt_glwe_ciphertext(
            &ks.secret.wide,
            &mut ct,
            &PlaintextList::from_container(msg),
            gaussian(p.wide.log2_std),
            &mut gen,
        );
        let lwe_key = ks.secret.wide.clone().into_lwe_secret_key();
        let rows = EncryptedGgswRows::encrypt(
            &ks.secret.wide,
            KeyKind::Wide,
            p.wide,
            &w,
            &bias,
            out,
            inp,
            p.weights_ggsw,
            delta,
        )
        .unwrap();
        let lwes = rows.prepare().unwrap().apply(&ct, &mut FftEngine::new(n));
        for (j, lwe) in lwes.iter().enumerate() {
            let ph = decrypt_lwe_ciphertext(&lwe_key, lwe).0 as i64;
            let got = (ph as f64 / delta as f64).round() as i64;
            let want: i64 = (0..inp).map(|i| w[j * inp + i] * h[i]).sum::<i64>() + bias[j];
            assert_eq!(got, want, "row {j}");
        }
    }
}
