//! Exact external products GGSW(M) ⊡ GLWE(P) = GLWE(M·P).
//!
//! tfhe's external product converts the GGSW to 53-bit floats, which adds an error of roughly
//! 2^(base_log + 23) per product (measured: 2^38.9 at base 2^16, 2^29 at base 2^3, N = 4096).
//! That is far above the 2^2 noise of our wide linear layers, so here each GGSW coefficient is
//! split into three 22-bit limbs and every product is computed exactly in the FFT: a digit
//! (|d| <= 2^(b−1)) times a limb (< 2^22), summed over 2ℓN terms, stays below 2^48 — within
//! the 53-bit mantissa with room for rounding — and the limbs are recombined modulo 2^64.
//!
//! Layout and signs follow tfhe: for each level l (factor f = q/B^l) the mask row has phase
//! −s·M·f and the body row +M·f, so Σ_l D_mask,l·row_mask,l + D_body,l·row_body,l has phase
//! M·(b − a·s).

use super::error::{CryptoError, Result};
use super::params::DecompParams;
use tfhe::core_crypto::fft_impl::fft64::math::polynomial::FourierPolynomial;
use tfhe::core_crypto::fft_impl::fft64::ABox;
use tfhe::core_crypto::prelude::*;

pub(crate) const LIMB_BITS: u32 = 22;
const LIMBS: usize = 3;

pub(crate) type FourierPoly = FourierPolynomial<ABox<[c64]>>;

/// FFT plan and scratch for one polynomial size.
pub struct FftEngine {
    n: usize,
    fft: Fft,
    buffers: ComputationBuffers,
    /// Standard-domain scratch: one limb on the way in, one shifted product on the way out.
    scratch: Vec<u64>,
}

impl FftEngine {
    pub fn new(n: usize) -> Self {
        let fft = Fft::new(PolynomialSize(n));
        let mut buffers = ComputationBuffers::new();
        buffers.resize(
            fft.as_view()
                .forward_scratch()
                .or(fft.as_view().backward_scratch())
                .unaligned_bytes_required(),
        );
        Self {
            n,
            fft,
            buffers,
            scratch: vec![0; n],
        }
    }

    pub fn poly_size(&self) -> usize {
        self.n
    }

    /// Forward FFT of a polynomial whose coefficients are small signed integers.
    pub(crate) fn forward_integer(&mut self, poly: &[u64]) -> FourierPoly {
        transform_integer(&self.fft, &mut self.buffers, poly)
    }

    /// The three 22-bit limbs of a full 64-bit polynomial, each transformed.
    pub(crate) fn forward_limbs(&mut self, poly: &[u64]) -> Vec<FourierPoly> {
        self.forward_split(poly, LIMB_BITS, LIMBS)
    }

    /// `count` limbs of `bits` bits (least significant first), each transformed.
    pub(crate) fn forward_split(
        &mut self,
        poly: &[u64],
        bits: u32,
        count: usize,
    ) -> Vec<FourierPoly> {
        (0..count)
            .map(|l| {
                let shift = l as u32 * bits;
                for (s, &c) in self.scratch.iter_mut().zip(poly) {
                    *s = (c >> shift) & ((1 << bits) - 1);
                }
                transform_integer(&self.fft, &mut self.buffers, &self.scratch)
            })
            .collect()
    }

    /// Scale a transform by 2^-64, as [`Self::add_backward_integer`] expects (exact: a power
    /// of two). Operands used many times are scaled once, products otherwise.
    pub(crate) fn scale_for_backward(f: &mut FourierPoly) {
        let scale = 2f64.powi(-64);
        for c in f.data.iter_mut() {
            *c *= scale;
        }
    }

    /// out += 2^shift · (integer polynomial whose transform, scaled by 2^-64, is `f`), exactly;
    /// `f` is consumed as scratch. With the 2^-64 scale tfhe's (vectorised) torus conversion
    /// returns the integer itself modulo 2^64.
    pub(crate) fn add_backward_integer(
        &mut self,
        out: &mut [u64],
        f: &mut FourierPoly,
        shift: u32,
    ) {
        let Self {
            fft,
            buffers,
            scratch,
            ..
        } = self;
        if shift == 0 {
            fft.as_view().add_backward_in_place_as_torus(
                Polynomial::from_container(out),
                f.as_mut_view(),
                buffers.stack(),
            );
            return;
        }
        scratch.fill(0);
        fft.as_view().add_backward_in_place_as_torus(
            Polynomial::from_container(scratch.as_mut_slice()),
            f.as_mut_view(),
            buffers.stack(),
        );
        for (o, t) in out.iter_mut().zip(scratch.iter()) {
            *o = o.wrapping_add(t.wrapping_shl(shift));
        }
    }

    /// Σ_i lhs_i ⊙ rhs_i in the Fourier domain, into a fresh polynomial.
    pub(crate) fn multiply_accumulate<'a>(
        &self,
        pairs: impl Iterator<Item = (&'a FourierPoly, &'a FourierPoly)>,
    ) -> FourierPoly {
        let mut acc = FourierPolynomial::new(PolynomialSize(self.n));
        for (a, b) in pairs {
            for ((o, x), y) in acc.data.iter_mut().zip(a.data.iter()).zip(b.data.iter()) {
                *o += *x * *y;
            }
        }
        acc
    }

    /// out += GGSW ⊡ glwe, exactly. `glwe` holds mask then body, N coefficients each.
    pub fn add_external_product(&mut self, out: &mut [u64], ggsw: &ExactGgsw, glwe: &[u64]) {
        let digits = self.decompose(glwe, ggsw.decomp);
        self.add_external_product_decomposed(out, ggsw, &digits);
    }

    /// The transformed gadget digits of `glwe` (mask then body, N coefficients each): where
    /// every external product with it starts, so several GGSWs (a layer's rows) share them.
    pub fn decompose(&mut self, glwe: &[u64], d: DecompParams) -> DecomposedGlwe {
        let n = self.n;
        assert_eq!(glwe.len(), 2 * n);
        // Digits of mask and body, per level; row index = level_index*2 + component, tfhe order.
        let mut ffts: Vec<FourierPoly> = Vec::with_capacity(2 * d.level.0);
        let digits = decompose(glwe, d);
        for level_index in 0..d.level.0 {
            for component in 0..2 {
                let level = d.level.0 - level_index;
                let poly = &digits[(level - 1) * 2 * n + component * n..][..n];
                ffts.push(self.forward_integer(poly));
            }
        }
        DecomposedGlwe { decomp: d, ffts }
    }

    /// out += GGSW ⊡ (the GLWE `digits` came from), exactly.
    pub fn add_external_product_decomposed(
        &mut self,
        out: &mut [u64],
        ggsw: &ExactGgsw,
        digits: &DecomposedGlwe,
    ) {
        let n = self.n;
        assert_eq!(ggsw.n, n);
        assert_eq!(out.len(), 2 * n);
        assert_eq!(
            digits.decomp, ggsw.decomp,
            "digits of the GGSW's own gadget"
        );
        for out_component in 0..2 {
            for limb in 0..LIMBS {
                let mut acc = self.multiply_accumulate(
                    digits
                        .ffts
                        .iter()
                        .zip(ggsw.rows.iter())
                        .map(|(df, row)| (df, &row[out_component * LIMBS + limb])),
                );
                Self::scale_for_backward(&mut acc);
                self.add_backward_integer(
                    &mut out[out_component * n..(out_component + 1) * n],
                    &mut acc,
                    limb as u32 * LIMB_BITS,
                );
            }
        }
    }
}

/// A GLWE's balanced gadget digits, each transformed (tfhe's row order).
pub struct DecomposedGlwe {
    decomp: DecompParams,
    ffts: Vec<FourierPoly>,
}

/// Forward FFT of an integer polynomial (apart from [`FftEngine`] so that a polynomial in the
/// engine's own scratch can be transformed).
fn transform_integer(fft: &Fft, buffers: &mut ComputationBuffers, poly: &[u64]) -> FourierPoly {
    let mut f = FourierPolynomial::new(fft.as_view().polynomial_size());
    fft.as_view().forward_as_integer(
        f.as_mut_view(),
        Polynomial::from_container(poly),
        buffers.stack(),
    );
    f
}

/// Balanced gadget decomposition of every coefficient: returns `level` blocks (level 1 = most
/// significant first) of 2N signed digits stored as u64.
fn decompose(glwe: &[u64], d: DecompParams) -> Vec<u64> {
    let len = glwe.len();
    let bits = d.precision_bits() as u32;
    let b = d.base_log.0 as u32;
    let mut out = vec![0u64; d.level.0 * len];
    for (i, &v) in glwe.iter().enumerate() {
        // Round to the closest multiple of 2^(64 − bits), keep the top `bits` bits.
        let mut rest = if bits >= 64 {
            v
        } else {
            (v >> (64 - bits)) + ((v >> (63 - bits)) & 1)
        };
        let mut carry_level = d.level.0;
        while carry_level >= 1 {
            let mut digit = (rest & ((1 << b) - 1)) as i64;
            rest >>= b;
            if digit >= 1 << (b - 1) {
                digit -= 1 << b;
                rest += 1;
            }
            out[(carry_level - 1) * len + i] = digit as u64;
            carry_level -= 1;
        }
    }
    out
}

/// A GGSW ciphertext prepared for exact external products: per row (tfhe order), per output
/// component, three limb transforms.
pub struct ExactGgsw {
    n: usize,
    pub decomp: DecompParams,
    rows: Vec<Vec<FourierPoly>>,
}

impl ExactGgsw {
    /// Words of a standard-domain GGSW: `level` × (mask, body) rows of two polynomials each.
    pub(crate) fn standard_words(poly_size: usize, decomp: DecompParams) -> usize {
        decomp.level.0 * 2 * 2 * poly_size
    }

    /// From a standard-domain GGSW (rows of mask+body GLWEs in tfhe order).
    pub fn from_standard(
        engine: &mut FftEngine,
        rows: &[u64],
        decomp: DecompParams,
    ) -> Result<Self> {
        let n = engine.poly_size();
        if rows.len() != Self::standard_words(n, decomp)
            || decomp.base_log.0 == 0
            || decomp.base_log.0 > 16
            || decomp.precision_bits() > 64
        {
            return Err(CryptoError::Shape(format!(
                "GGSW of {} words does not fit decomposition {}x{} at N = {n}",
                rows.len(),
                decomp.base_log.0,
                decomp.level.0
            )));
        }
        let rows = rows
            .chunks_exact(2 * n)
            .map(|row| {
                let mut limbs = engine.forward_limbs(&row[..n]);
                limbs.extend(engine.forward_limbs(&row[n..]));
                limbs
            })
            .collect();
        Ok(Self { n, decomp, rows })
    }

    pub fn poly_size(&self) -> usize {
        self.n
    }
}
