//! The encrypted model as the backend protects it and the board loads it, the public facts
//! both sides need, and the result ciphertext the board publishes. No secret key here.

#[cfg(any(feature = "backend", test))]
use super::Result;
use crate::crypto::keys::{KeyId, KeyKind};
#[cfg(any(feature = "backend", test))]
use crate::crypto::linear::PackedLayout;
use crate::crypto::linear::{EncryptedGgswRows, EncryptedMatrix};
use crate::crypto::lut::{EncryptedLuts, ACT_CHECK_ROWS};
#[cfg(any(feature = "backend", test))]
use crate::crypto::params::ParameterSet;
use crate::crypto::raw::{pack_bits, unpack_bits, U64s, U8s};
use crate::crypto::switch::{self, switch_word};
#[cfg(any(feature = "backend", test))]
use crate::model::quant::QuantModel;
use crate::model::quant::{HiddenMap, InputQuant, Variant};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Bits of each secret check coefficient, and check rows per result of variant `last`: a
/// result changed in any way passes one row with probability at most 2^-CHECK_BITS, all of
/// them with at most 2^-(CHECK_BITS·CHECK_ROWS) = 2^-20 (docs/THREATS.md). Public: the bundle
/// carries the rows (encrypted); their coefficients are the backend's secret.
pub const CHECK_BITS: u32 = 5;
pub const CHECK_ROWS: usize = 4;

/// Check rows per result of variant `noact`, each a secret combination with coefficients in
/// {−1, 0, 1} verified on the phases (docs/THREATS.md #26): a changed result passes one row
/// with probability at most 1/3, all of them with at most 3^-13 = 2^-20.6. Three values, not
/// 2^5, because `noact`'s scores fill their torus: a row of K values is sound only for changes
/// below 2^64/(K − 1), and every bit of K would cost a bit of the noise margin.
pub const NOACT_CHECK_ROWS: usize = 13;

/// Check rows a result of `variant` carries after its classes (`act`'s are verified within a
/// noise tolerance: docs/THREATS.md #27).
pub fn check_rows(variant: Variant) -> usize {
    match variant {
        Variant::Last => CHECK_ROWS,
        Variant::Noact => NOACT_CHECK_ROWS,
        Variant::Act => ACT_CHECK_ROWS,
    }
}

/// log2 Δ of the check rows, from the classes' score limits alone (public): a check is verified
/// modulo M = 2^64/Δ, so M must keep r ↦ r·d injective on CHECK_BITS-bit r for every change d of
/// a class score that the range checks let through (0 < |d| ≤ 2·limit, so d has at most
/// ⌊log2(2·limit)⌋ factors of 2): M = 2^(⌊log2(2·limit)⌋ + CHECK_BITS + 1), one bit to spare.
/// `None` if that leaves Δ below 2^16 (no room for noise).
pub fn check_log2_delta(score_limits: &[f64]) -> Option<u32> {
    let limit = score_limits.iter().copied().fold(1.0, f64::max);
    let modulus_bits = (2.0 * limit).log2().floor() as u32 + CHECK_BITS + 1;
    64u32.checked_sub(modulus_bits).filter(|&l| l >= 16)
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
    /// What the board publishes: its result's parts and how they are cut for the wire.
    pub result: ResultShape,
}

impl ModelInfo {
    /// The public facts of `q` protected under `params` (with its variant's check rows).
    #[cfg(any(feature = "backend", test))]
    pub fn of(q: &QuantModel, params: &ParameterSet) -> Result<Self> {
        let check_rows = check_rows(q.variant);
        Ok(Self {
            variant: q.variant,
            input: q.input.clone(),
            hidden_dim: q.hidden_dim,
            out_dim: q.out_dim,
            delta_out: q.delta_out,
            out_scale: q.out_scale,
            result: ResultShape::of(q, params, check_rows)?,
        })
    }
}

/// The shape of one part of a result.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PartShape {
    /// A GLWE (k = 1); class scores (then check outputs) at these coefficients.
    Glwe { slots: Vec<u32> },
    /// An LWE of dimension N holding one class score.
    Lwe,
}

/// How a result is cut for the wire.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Wire {
    /// Every word as computed (the results of bundles made before format 8).
    #[default]
    Full,
    /// Modulus-switched from 2^64 to 2^(64 − drop_bits) (every word rounded to its high
    /// bits), and of each GLWE only the mask and the bodies a slot reads.
    Switched { drop_bits: u32 },
}

impl Wire {
    /// Bits each word keeps on the wire (0 for a corrupt record that drops more than 64,
    /// which the board refuses to load and the decryptor matches with no result).
    pub fn bits(self) -> u32 {
        match self {
            Wire::Full => 64,
            Wire::Switched { drop_bits } => 64u32.saturating_sub(drop_bits),
        }
    }
}

/// Everything about a model's results that is public: the key, the parts, the wire cut.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ResultShape {
    pub key: KeyKind,
    pub poly_size: u32,
    pub parts: Vec<PartShape>,
    pub wire: Wire,
}

impl ResultShape {
    /// The results of `q` under `params` with `check_rows` check outputs after the classes
    /// (`noact`: one LWE each, like a class).
    ///
    /// The modulus switch drops as many low bits as its budget allows: for the exact variants,
    /// with probability 1 − 2^-40 ([`switch::error_bound`]), 1/16 of the Δ/8 an honest score
    /// may err by, at the smallest Δ of any slot (for `last`, the check rows', which depends on
    /// the score limits alone: [`check_log2_delta`]); for `act`, what [`QuantModel::act_switch_drop_bits`] allows (the noise model
    /// counts it).
    #[cfg(any(feature = "backend", test))]
    pub fn of(q: &QuantModel, params: &ParameterSet, check_rows: usize) -> Result<Self> {
        let out = q.out_dim;
        let (key, poly_size, parts) = match &q.hidden_map {
            HiddenMap::Window { map, .. } => (
                KeyKind::Pbs,
                params.pbs_glwe.poly_size.0,
                (0..map.groups(out + check_rows))
                    .map(|g| PartShape::Glwe {
                        slots: (0..map.group_classes(g, out + check_rows).len() as u32)
                            .map(|w| w * map.window as u32)
                            .collect(),
                    })
                    .collect(),
            ),
            _ if q.variant == Variant::Noact => (
                KeyKind::Wide,
                params.wide.poly_size.0,
                vec![PartShape::Lwe; out + check_rows],
            ),
            _ => {
                let layout =
                    PackedLayout::new(params.wide.poly_size.0, out + check_rows, q.hidden_dim + 1)?;
                let parts = (0..layout.blocks())
                    .map(|b| PartShape::Glwe {
                        slots: (0..layout.rows_in(b) as u32).collect(),
                    })
                    .collect();
                (KeyKind::Wide, params.wide.poly_size.0, parts)
            }
        };
        let drop_bits = if q.variant == Variant::Act {
            q.act_switch_drop_bits(params)
        } else {
            let mut delta = q.delta_out as f64;
            // `noact`'s checks are at the classes' Δ.
            if q.variant == Variant::Last && check_rows > 0 {
                let log2 = check_log2_delta(&q.score_limits(params)).unwrap_or(16);
                delta = delta.min(2f64.powi(log2 as i32));
            }
            switch::drop_bits_within(delta / 8.0 / 16.0, switch::error_bound(poly_size))
        };
        Ok(Self {
            key,
            poly_size: poly_size as u32,
            parts,
            wire: Wire::Switched { drop_bits },
        })
    }

    /// Bytes of one result on the wire (its postcard form; the message adds ~120 bytes of
    /// provenance and signature).
    pub fn wire_bytes(&self) -> usize {
        let varint = |v: usize| (usize::BITS - v.max(1).leading_zeros()).div_ceil(7) as usize;
        let parts: usize = self
            .parts
            .iter()
            .map(|p| {
                let bytes = (self.part_words(p) * self.wire.bits() as usize).div_ceil(8);
                varint(bytes) + bytes
            })
            .sum();
        std::mem::size_of::<KeyId>() + 1 + varint(self.parts.len()) + parts
    }

    /// One line for people: size, parts, width and what the switch costs.
    pub fn describe(&self) -> String {
        let what = match self.wire {
            Wire::Full => "full 64-bit words".to_string(),
            Wire::Switched { drop_bits } => format!(
                "words of {} bits (modulus switch from 2^64: error σ 2^{:.1}, ≤ 2^{:.1} at \
                 probability 1 − 2^-{:.0})",
                self.wire.bits(),
                switch::error_std(self.poly_size as usize).log2() + drop_bits as f64,
                switch::error_bound(self.poly_size as usize).log2() + drop_bits as f64,
                switch::LOG2_FAILURE
            ),
        };
        format!(
            "{} bytes: {} {} part(s) of dimension {}, {what}",
            self.wire_bytes(),
            self.parts.len(),
            match self.parts.first() {
                Some(PartShape::Lwe) => "LWE",
                _ => "GLWE",
            },
            self.poly_size
        )
    }

    /// Words of a part as it travels.
    pub fn part_words(&self, part: &PartShape) -> usize {
        part_words(self.poly_size as usize, part, self.wire)
    }

    /// Cut one part as computed (full 64-bit words) for the wire.
    pub fn cut(&self, part: &PartShape, words: &[u64]) -> Vec<u64> {
        let n = self.poly_size as usize;
        let Wire::Switched { drop_bits } = self.wire else {
            return words.to_vec();
        };
        let kept: Vec<u64> = match part {
            PartShape::Glwe { slots } => words[..n]
                .iter()
                .copied()
                .chain(slots.iter().map(|&k| words[n + k as usize]))
                .collect(),
            PartShape::Lwe => words.to_vec(),
        };
        kept.into_iter()
            .map(|w| switch_word(w, drop_bits))
            .collect()
    }

    /// The inverse of [`Self::cut`] as far as it goes: a part's words as they travel back to
    /// full 64-bit words (each switched word w as w·2^drop, the bodies no slot reads zero) —
    /// for tests and diagnostics, and what a board would change before cutting again.
    pub fn uncut(&self, part: &PartShape, words: &[u64]) -> Vec<u64> {
        let n = self.poly_size as usize;
        let drop = match self.wire {
            Wire::Switched { drop_bits } => drop_bits,
            Wire::Full => 0,
        };
        let widen = |w: u64| if drop == 0 { w } else { w << drop };
        match (part, self.wire) {
            (PartShape::Glwe { slots }, Wire::Switched { .. }) => {
                let mut full: Vec<u64> = words[..n].iter().map(|&w| widen(w)).collect();
                full.resize(2 * n, 0);
                for (i, &k) in slots.iter().enumerate() {
                    full[n + k as usize] = widen(words[n + i]);
                }
                full
            }
            _ => words.iter().map(|&w| widen(w)).collect(),
        }
    }
}

/// Words of a part under `wire`: a GLWE's mask and its bodies (all, or the slots'), an LWE's
/// mask and body.
pub(crate) fn part_words(n: usize, part: &PartShape, wire: Wire) -> usize {
    match (part, wire) {
        (PartShape::Glwe { .. }, Wire::Full) => 2 * n,
        (PartShape::Glwe { slots }, Wire::Switched { .. }) => n + slots.len(),
        (PartShape::Lwe, _) => n + 1,
    }
}

/// An encrypted inference result as it travels: the key it is under, the bits its words keep
/// and the words of each part (packed at that width on the wire). How to read it — which key,
/// which coefficients, Δ, scale, what an honest result looks like — is not in it: the backend
/// takes all of that from its own record of the bundle ([`Decoding`]), so a board cannot
/// choose how its ciphertexts are decrypted.
#[derive(Clone, Debug, PartialEq)]
pub struct ResultCiphertext {
    pub key_id: KeyId,
    /// Each word is below 2^bits (64: as computed).
    pub bits: u32,
    pub parts: Vec<U64s>,
}

/// [`ResultCiphertext`]'s postcard form: each part a bit string of `bits`-bit words.
#[derive(Serialize, Deserialize)]
struct PackedResult {
    key_id: KeyId,
    bits: u8,
    parts: Vec<U8s>,
}

impl Serialize for ResultCiphertext {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        PackedResult {
            key_id: self.key_id,
            bits: self.bits as u8,
            parts: self
                .parts
                .iter()
                .map(|p| U8s(pack_bits(&p.0, self.bits)))
                .collect(),
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for ResultCiphertext {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let p = PackedResult::deserialize(d)?;
        let bits = p.bits as u32;
        let parts = p
            .parts
            .iter()
            .map(|b| unpack_bits(&b.0, bits).map(U64s))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| {
                serde::de::Error::custom(format!(
                    "result parts are not strings of {bits}-bit words"
                ))
            })?;
        Ok(Self {
            key_id: p.key_id,
            bits,
            parts,
        })
    }
}

impl ResultCiphertext {
    /// Serialised size in bytes.
    pub fn byte_len(&self) -> usize {
        postcard::to_allocvec(self).map(|v| v.len()).unwrap_or(0)
    }

    /// The bytes a board's signature hashes: the postcard form, less the width byte when the
    /// words are full — exactly what result messages of version 3 (before the width) hashed, so
    /// a result a board signed before an upgrade still verifies after it.
    pub(crate) fn signed_form(&self) -> Vec<u8> {
        let mut bytes = postcard::to_allocvec(self).expect("serialising to a Vec cannot fail");
        if self.bits == 64 {
            bytes.remove(self.key_id.len());
        }
        bytes
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    /// The check modulus keeps r ↦ r·d injective on CHECK_BITS-bit r for every change d the
    /// range checks let through (exhaustively, for a small limit), and one bit less than
    /// the formula's spare would not for some d (the bound is not loose by more than it says).
    #[test]
    fn check_rows_modulo_their_torus_tell_every_change() {
        for limit in [37.0, 1000.0] {
            let m = 1i64 << (64 - check_log2_delta(&[limit, 1.0]).unwrap());
            let collides = |m: i64| {
                (1..=(2.0 * limit) as i64)
                    .any(|d| (1..1i64 << CHECK_BITS).any(|diff| (diff * d).rem_euclid(m) == 0))
            };
            assert!(!collides(m), "limit {limit}: M = {m}");
            assert!(collides(m / 4), "limit {limit}: M/4 = {} suffices", m / 4);
        }
        assert_eq!(check_log2_delta(&[2f64.powi(45)]), None, "no room left");
    }

    #[test]
    fn a_cut_part_keeps_the_mask_and_the_read_bodies() {
        let shape = ResultShape {
            key: KeyKind::Wide,
            poly_size: 4,
            parts: vec![PartShape::Glwe { slots: vec![1, 3] }],
            wire: Wire::Switched { drop_bits: 60 },
        };
        let words: Vec<u64> = (0..8).map(|i| (i as u64) << 60 | 1 << 59).collect();
        // Each word rounds up to i + 1 (its half bit set), modulo 2^4.
        assert_eq!(shape.cut(&shape.parts[0], &words), vec![1, 2, 3, 4, 6, 8]);
        assert_eq!(shape.part_words(&shape.parts[0]), 6);
        let full = ResultShape {
            wire: Wire::Full,
            ..shape.clone()
        };
        assert_eq!(full.cut(&full.parts[0], &words), words);
        // Uncut: the kept words back at 2^64, the unread bodies zero; cut again, the same.
        let cut = shape.cut(&shape.parts[0], &words);
        let back = shape.uncut(&shape.parts[0], &cut);
        assert_eq!(
            back,
            vec![1 << 60, 2 << 60, 3 << 60, 4 << 60, 0, 6 << 60, 0, 8 << 60]
        );
        assert_eq!(shape.cut(&shape.parts[0], &back), cut);
        assert_eq!(full.uncut(&full.parts[0], &words), words);
    }

    /// `act`'s signed results fit a 4 KB message at 128 bits at the Fashion-MNIST head's hidden
    /// width and those pruning leaves it (512, 328, 262 units; the input width does not
    /// count): the switch takes up to half the accumulators' variance, and more than an eighth
    /// (one more bit dropped would take more than the half).
    #[test]
    #[cfg_attr(
        not(target_arch = "x86_64"),
        ignore = "the backend's rule, not the board's; 80 s of quantisation under qemu"
    )]
    fn act_results_fit_four_kilobytes_pruned_or_not() {
        use crate::crypto::params::SecurityLevel;
        use crate::model::{activation::Activation, synth};
        /// Provenance and signature with a device id of up to 32 bytes (about 140 bytes).
        const SIGNED_MESSAGE_OVERHEAD: usize = 160;
        let params = ParameterSet::for_level(SecurityLevel::L128);
        let task = synth::Task::new(3, 64, 10);
        let calibration: Vec<Vec<f32>> = task.samples(10, 20).into_iter().map(|s| s.0).collect();
        for hidden in [512, 328, 262] {
            let model = synth::classifier(3, &task, hidden, Some(Activation::Relu));
            let q =
                QuantModel::quantize(&model, Variant::Act, None, &calibration, &params).unwrap();
            let shape = ResultShape::of(&q, &params, ACT_CHECK_ROWS).unwrap();
            let bytes = shape.wire_bytes() + SIGNED_MESSAGE_OVERHEAD;
            assert!(bytes <= 4096, "{hidden} units: {bytes} bytes");
            let Wire::Switched { drop_bits } = shape.wire else {
                panic!("act results are switched");
            };
            let switch = switch::error_std(shape.poly_size as usize) * 2f64.powi(drop_bits as i32);
            let accumulators = params.pbs_output_std() * (hidden as f64).sqrt();
            let share = (switch / accumulators).powi(2);
            assert!((0.125..=0.5).contains(&share), "{hidden} units: {share}");
        }
    }
}
