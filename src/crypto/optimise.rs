//! A parameter optimiser for the bootstrapped layer (variant `act`), as Zama's optimiser does
//! for its own sets: the small LWE dimension n (its noise the least the security line
//! allows), the blind rotation's gadget and the key switch's gadget that need the least work,
//! with every keyed instance at least its curve's margin above the line and a bootstrap no
//! noisier than the shipped set's, at its input (the failure probability per bootstrap, which
//! the window guard sets in input σ) and at its output (what `act`'s agreement model counts).
//!
//! The accumulator's ring (N and its noise) stays the shipped one: it sets how many classes a
//! bootstrap carries and the window's slots, so another N is another table layout, not the
//! same bootstrap cheaper. Work is counted in operations, not timed: per CMUX, (ℓ + 1)
//! forward and inverse FFTs of 2 polynomials (k = 1) of N points, N·log2 N each, and 4ℓ·N
//! products; per key switch, N·ℓ_ks·(n + 1) multiply-adds. `hedge params` prints the choice
//! beside the shipped set.

use super::params::{DecompParams, LweDimension, ParameterSet, MAX_PBS_LEVELS};

/// Largest small LWE dimension searched.
const MAX_LWE_DIM: usize = 3000;
/// The key-switching key lives modulo 2^32: its digits cover at most 32 bits.
const KS_MAX_PRECISION: usize = 32;
/// The most key-switch levels searched.
const KS_MAX_LEVELS: usize = 8;

/// The optimiser's choice for a shipped set.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Choice {
    /// The shipped set with the chosen n, its noise, and both gadgets.
    pub params: ParameterSet,
    /// Estimated work of one bootstrap (key switch and blind rotation), in operations.
    pub work: f64,
    /// The shipped set's, counted the same way.
    pub shipped_work: f64,
}

/// Operations of one bootstrap under `p`: the key switch and n CMUXes.
pub fn bootstrap_work(p: &ParameterSet) -> f64 {
    let big_n = p.pbs_glwe.poly_size.0 as f64;
    let n = p.lwe_dim.0 as f64;
    let levels = p.pbs.level.0 as f64;
    let cmux = 2.0 * (levels + 1.0) * big_n * big_n.log2() + 4.0 * levels * big_n;
    let key_switch = big_n * p.ks.level.0 as f64 * (n + 1.0);
    n * cmux + key_switch
}

/// The least noise (log2 σ on the 2^64 scale, to 0.01) that keeps dimension `dim` at its
/// curve's margin above `shipped`'s security line.
fn least_secure_log2_std(shipped: &ParameterSet, dim: usize) -> f64 {
    let curve = shipped.security.curve();
    let log2_std = 64.0 + shipped.security.line(dim) + curve.margin_bits;
    ((log2_std * 100.0).ceil() / 100.0).max(2.0)
}

/// The cheapest bootstrap that is as secure and no noisier than `shipped`'s (module docs);
/// the shipped set itself if nothing cheaper is found.
pub fn bootstrap_layer(shipped: &ParameterSet) -> Choice {
    let input_limit = shipped.pbs_input_std_slots();
    let output_limit = shipped.pbs_output_std();
    let shipped_work = bootstrap_work(shipped);
    let min_dim = shipped.security.curve().min_dim;
    let mut best = Choice {
        params: *shipped,
        work: shipped_work,
        shipped_work,
    };
    for n in min_dim..=MAX_LWE_DIM {
        let base = ParameterSet {
            lwe_dim: LweDimension(n),
            lwe_log2_std: least_secure_log2_std(shipped, n),
            ..*shipped
        };
        // The blind rotation: the fewest levels (work grows with them) whose best base keeps
        // the output noise within the limit. The output noise grows with n, so once one level
        // count's best base fails at every count, larger n cannot do better for this part.
        let rotation = fewest_levels(
            MAX_PBS_LEVELS,
            64,
            |pbs| ParameterSet { pbs, ..base },
            ParameterSet::pbs_output_std,
            output_limit,
        );
        let Some(rotation) = rotation else {
            break;
        };
        // The key switch: the fewest levels whose best base keeps the input noise within the
        // limit.
        let switched = fewest_levels(
            KS_MAX_LEVELS,
            KS_MAX_PRECISION,
            |ks| ParameterSet { ks, ..rotation },
            ParameterSet::pbs_input_std_slots,
            input_limit,
        );
        let Some(candidate) = switched else {
            continue;
        };
        let work = bootstrap_work(&candidate);
        if work < best.work {
            best = Choice {
                params: candidate,
                work,
                shipped_work,
            };
        }
    }
    best
}

/// A gadget search: for 1..=`max_levels` levels in turn, every base that keeps the levels
/// within `precision` bits, the set `with` makes of it; the first level count with a set whose
/// `noise` stays within `limit` gives its least noisy one (work grows with the levels).
fn fewest_levels(
    max_levels: usize,
    precision: usize,
    with: impl Fn(DecompParams) -> ParameterSet,
    noise: impl Fn(&ParameterSet) -> f64,
    limit: f64,
) -> Option<ParameterSet> {
    (1..=max_levels).find_map(|levels| {
        (1..=precision / levels)
            .map(|b| with(DecompParams::new(b, levels)))
            .filter(|p| noise(p) <= limit)
            .min_by(|a, b| noise(a).total_cmp(&noise(b)))
    })
}

impl Choice {
    /// What `hedge params` prints.
    pub fn report(&self) -> String {
        let p = &self.params;
        format!(
            "  optimiser (bootstrapped layer; same ring N {}, input noise <= the shipped set's, \
             output noise <= the shipped set's, every instance at its margin):\n    \
             n {} at log2(σ/q) {:.2}, blind rotation {}×2^{}, key switch {}×2^{}: input σ \
             {:.2} slots, output σ 2^{:.2}; estimated work {:.2}× the shipped set's{}\n",
            p.pbs_glwe.poly_size.0,
            p.lwe_dim.0,
            p.lwe_log2_std - 64.0,
            p.pbs.level.0,
            p.pbs.base_log.0,
            p.ks.level.0,
            p.ks.base_log.0,
            p.pbs_input_std_slots(),
            p.pbs_output_std().log2(),
            self.work / self.shipped_work,
            if self.work < self.shipped_work {
                ""
            } else {
                " (the shipped set is the optimum)"
            }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::params::SecurityLevel;

    /// For every level the choice keeps every keyed instance at its margin above the line,
    /// is no noisier than the shipped set at the bootstrap's input and output, and needs no
    /// more work; a set with a worse n (the shipped n + 200 at its least noise) is beaten.
    #[test]
    fn the_choice_is_secure_no_noisier_and_no_dearer() {
        for level in SecurityLevel::ALL {
            let shipped = ParameterSet::for_level(level);
            let c = bootstrap_layer(&shipped);
            let p = c.params;
            assert!(p.is_secure(), "{level}: {p:?}");
            assert_eq!(p.pbs_glwe, shipped.pbs_glwe);
            assert!(p.pbs_input_std_slots() <= shipped.pbs_input_std_slots());
            assert!(p.pbs_output_std() <= shipped.pbs_output_std());
            assert!(c.work <= c.shipped_work, "{level}: {}", c.report());
            assert!(p.ks.precision_bits() <= KS_MAX_PRECISION);
            let worse = ParameterSet {
                lwe_dim: LweDimension(shipped.lwe_dim.0 + 200),
                ..shipped
            };
            assert!(bootstrap_work(&worse) > c.work);
            assert!(c.report().contains("estimated work"));
        }
    }

    /// Work counts: more levels or a larger n cost more, in proportion.
    #[test]
    fn work_grows_with_levels_and_dimension() {
        let p = ParameterSet::for_level(SecurityLevel::L128);
        let two = p.with_pbs_levels(2).unwrap();
        assert!(bootstrap_work(&two) > 1.4 * bootstrap_work(&p));
        let bigger = ParameterSet {
            lwe_dim: LweDimension(2 * p.lwe_dim.0),
            ..p
        };
        let ratio = bootstrap_work(&bigger) / bootstrap_work(&p);
        assert!((ratio - 2.0).abs() < 0.01, "{ratio}");
    }
}
