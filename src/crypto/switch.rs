//! Modulus switching of published results from 2^64 to 2^(64 − d): the rounding, and the
//! phase error it adds under a binary key — a tail bound for the exact variants, a standard
//! deviation for the noisy one (docs/CRYPTO.md, "Results on the wire").

/// The most low bits a switch drops: words keep at least 12 bits, so a computed mask still
/// looks uniform to the decryptor's plausibility check (a zero word has probability 2^-12).
pub const MAX_DROP_BITS: u32 = 52;

/// The failure probability the tail bound is for: [`error_bound`] is exceeded with probability
/// at most 2^-LOG2_FAILURE per slot.
pub const LOG2_FAILURE: f64 = 40.0;

/// `w` modulo 2^64 switched to modulo 2^(64 − drop_bits): rounded to the nearest.
pub fn switch_word(w: u64, drop_bits: u32) -> u64 {
    if drop_bits == 0 {
        w
    } else {
        w.wrapping_add(1 << (drop_bits - 1)) >> drop_bits
    }
}

/// A bound on the phase error of a switch of a ciphertext of dimension `d` (a GLWE slot or an
/// LWE under a binary key), in units of the new modulus, exceeded with probability at most
/// 2^-[`LOG2_FAILURE`]: the error is the body's rounding less Σ e_i·s_i, d + 1 independent
/// terms each within an interval of width 1, so Hoeffding's inequality gives
/// P(|error| ≥ t) ≤ 2·exp(−2t²/(d + 1)).
pub fn error_bound(d: usize) -> f64 {
    ((d as f64 + 1.0) / 2.0 * (LOG2_FAILURE + 1.0) * std::f64::consts::LN_2).sqrt()
}

/// The standard deviation of that error for a uniform binary key (about d/2 ones), in units of
/// the new modulus: each rounding is uniform on a unit interval (variance 1/12).
pub fn error_std(d: usize) -> f64 {
    ((d as f64 / 2.0 + 1.0) / 12.0).sqrt()
}

/// The low bits a switch may drop so that its error stays within `budget` (2^64 scale) at the
/// error scale `per_unit` (one of the two above), clamped to [0, MAX_DROP_BITS].
pub fn drop_bits_within(budget: f64, per_unit: f64) -> u32 {
    (budget / per_unit)
        .log2()
        .floor()
        .clamp(0.0, MAX_DROP_BITS as f64) as u32
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// The switch's error on random ciphertexts under a binary key: never beyond the bound
    /// (2^-40 tail), and spread as its variance (weight + 1)/12 says.
    #[test]
    fn the_switch_errs_within_its_bound_and_spread() {
        let mut rng = rand_chacha::ChaCha12Rng::seed_from_u64(7);
        let (d, drop) = (1024usize, 20u32);
        let key: Vec<u64> = (0..d).map(|_| rng.gen_range(0..2)).collect();
        let bound = error_bound(d);
        let (mut worst, mut sum_sq) = (0f64, 0f64);
        let trials = 2000;
        let phase = |mask: &[u64], body: u64| {
            mask.iter()
                .zip(&key)
                .fold(body, |p, (a, s)| p.wrapping_sub(a.wrapping_mul(*s)))
        };
        for _ in 0..trials {
            let mask: Vec<u64> = (0..d).map(|_| rng.gen()).collect();
            let body: u64 = rng.gen();
            let before = phase(&mask, body);
            let switched: Vec<u64> = mask.iter().map(|&w| switch_word(w, drop)).collect();
            let after = phase(&switched, switch_word(body, drop)) << drop;
            // The error in units of the new modulus.
            let e = after.wrapping_sub(before) as i64 as f64 / (1u64 << drop) as f64;
            worst = worst.max(e.abs());
            sum_sq += e * e;
        }
        let weight = key.iter().sum::<u64>() as f64;
        let expected = (weight + 1.0) / 12.0;
        let variance = sum_sq / trials as f64;
        assert!(worst < bound, "{worst} ≥ {bound}");
        assert!(
            (variance / expected - 1.0).abs() < 0.1,
            "variance {variance}, expected {expected}"
        );
        assert!((error_std(d).powi(2) / expected - 1.0).abs() < 0.1);
    }

    #[test]
    fn words_round_to_the_nearest_and_wrap() {
        assert_eq!(switch_word(3 << 20 | 1 << 19, 20), 4);
        assert_eq!(switch_word(3 << 20 | ((1 << 19) - 1), 20), 3);
        assert_eq!(switch_word(u64::MAX, 20), 0, "2^44 ≡ 0");
        assert_eq!(switch_word(12345, 0), 12345);
        assert_eq!(drop_bits_within(2f64.powi(40), 1.0), 40);
        assert_eq!(drop_bits_within(2f64.powi(60), 1.0), MAX_DROP_BITS);
        assert_eq!(drop_bits_within(0.5, 1.0), 0);
    }
}
