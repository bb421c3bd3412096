//! Compact serde for large u64 arrays: raw little-endian bytes instead of postcard's varints
//! (a random u64 costs ~9.1 bytes as a varint and exactly 8 here).

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A vector of u64 that serialises as one byte string.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct U64s(pub Vec<u64>);

impl Serialize for U64s {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut bytes = Vec::with_capacity(self.0.len() * 8);
        for v in &self.0 {
            bytes.extend_from_slice(&v.to_le_bytes());
        }
        s.serialize_bytes(&bytes)
    }
}

impl<'de> Deserialize<'de> for U64s {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = U64s;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a byte string whose length is a multiple of 8")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<U64s, E> {
                if !v.len().is_multiple_of(8) {
                    return Err(E::custom("u64 array length is not a multiple of 8"));
                }
                Ok(U64s(
                    v.chunks_exact(8)
                        .map(|c| u64::from_le_bytes(c.try_into().expect("chunk of 8")))
                        .collect(),
                ))
            }
            fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<U64s, E> {
                self.visit_bytes(&v)
            }
        }
        d.deserialize_bytes(Visitor)
    }
}

impl U64s {
    pub fn byte_len(&self) -> usize {
        self.0.len() * 8
    }
}

/// Ciphertext bodies stored without their `drop_bits` lowest bits (rounded), when the noise
/// already swamps them: each stored value costs (64 − drop_bits)/8 bytes. The rounding adds a
/// uniform error of at most 2^(drop_bits−1) to each phase.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Bodies {
    drop_bits: u8,
    data: U8s,
}

/// Bytes with serde's compact byte-string encoding.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct U8s(pub Vec<u8>);

impl Serialize for U8s {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for U8s {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = U8s;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a byte string")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<U8s, E> {
                Ok(U8s(v.to_vec()))
            }
            fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<U8s, E> {
                Ok(U8s(v))
            }
        }
        d.deserialize_bytes(Visitor)
    }
}

impl Bodies {
    /// `drop_bits` must be a multiple of 8 below 64.
    #[cfg(any(feature = "backend", test))]
    pub(crate) fn pack(values: &[u64], drop_bits: u8) -> Self {
        assert!(drop_bits.is_multiple_of(8) && drop_bits < 64);
        let width = (64 - drop_bits as usize) / 8;
        let mut data = Vec::with_capacity(values.len() * width);
        for &v in values {
            let r = super::switch::switch_word(v, drop_bits.into());
            data.extend_from_slice(&r.to_le_bytes()[..width]);
        }
        Self {
            drop_bits,
            data: U8s(data),
        }
    }

    pub fn len(&self) -> usize {
        match self.width() {
            Some(w) => self.data.0.len() / w,
            None => 0,
        }
    }

    fn width(&self) -> Option<usize> {
        (self.drop_bits.is_multiple_of(8) && self.drop_bits < 64)
            .then(|| (64 - self.drop_bits as usize) / 8)
    }

    pub fn byte_len(&self) -> usize {
        self.data.0.len()
    }

    /// The values back, low bits zero; `None` if the encoding is inconsistent.
    pub(crate) fn unpack(&self) -> Option<Vec<u64>> {
        let w = self.width()?;
        if !self.data.0.len().is_multiple_of(w) {
            return None;
        }
        Some(
            self.data
                .0
                .chunks_exact(w)
                .map(|c| {
                    let mut b = [0u8; 8];
                    b[..w].copy_from_slice(c);
                    u64::from_le_bytes(b) << self.drop_bits
                })
                .collect(),
        )
    }
}

/// `words`, each below 2^`bits` (8 ≤ bits ≤ 64), as a little-endian bit string: word i
/// occupies bits [i·bits, (i+1)·bits); the last byte's unused high bits are zero.
pub(crate) fn pack_bits(words: &[u64], bits: u32) -> Vec<u8> {
    debug_assert!((8..=64).contains(&bits));
    let mut out = Vec::with_capacity((words.len() * bits as usize).div_ceil(8));
    let (mut acc, mut filled) = (0u128, 0u32);
    let mask = if bits == 64 {
        u64::MAX
    } else {
        (1u64 << bits) - 1
    };
    // Eight bytes at a time (a byte at a time was most of a decryption agent's time).
    for &w in words {
        acc |= ((w & mask) as u128) << filled;
        filled += bits;
        if filled >= 64 {
            out.extend_from_slice(&(acc as u64).to_le_bytes());
            acc >>= 64;
            filled -= 64;
        }
    }
    let tail = (filled as usize).div_ceil(8);
    out.extend_from_slice(&(acc as u64).to_le_bytes()[..tail]);
    out
}

/// The words of [`pack_bits`] back; `None` unless `bytes` is exactly such a string (bits in
/// 8..=64, fewer than 8 padding bits, all zero), so each word list has one encoding.
pub(crate) fn unpack_bits(bytes: &[u8], bits: u32) -> Option<Vec<u64>> {
    if !(8..=64).contains(&bits) {
        return None;
    }
    let count = bytes.len() * 8 / bits as usize;
    if (count * bits as usize).div_ceil(8) != bytes.len() {
        return None;
    }
    let mask = if bits == 64 {
        u64::MAX
    } else {
        (1u64 << bits) - 1
    };
    let bits = bits as usize;
    let out = (0..count)
        .map(|i| {
            let (byte, shift) = (i * bits / 8, (i * bits % 8) as u32);
            if shift as usize + bits <= 64 && byte + 8 <= bytes.len() {
                let window: [u8; 8] = bytes[byte..byte + 8].try_into().expect("8 bytes");
                return (u64::from_le_bytes(window) >> shift) & mask;
            }
            // Sixteen bytes from the word's first: enough for any width and offset.
            let mut window = [0u8; 16];
            let end = (byte + 16).min(bytes.len());
            window[..end - byte].copy_from_slice(&bytes[byte..end]);
            (u128::from_le_bytes(window) >> shift) as u64 & mask
        })
        .collect();
    // The padding: the last byte's bits above the last word.
    let used = (count * bits % 8) as u32;
    let padding_clear = used == 0 || bytes.last().is_none_or(|&b| b >> used == 0);
    padding_clear.then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bit_strings_round_trip_at_every_width() {
        for bits in 8..=64u32 {
            let mask = if bits == 64 {
                u64::MAX
            } else {
                (1u64 << bits) - 1
            };
            for len in [0usize, 1, 2, 7, 9, 64] {
                let words: Vec<u64> = (0..len as u64)
                    .map(|i| i.wrapping_mul(0x9e37_79b9_7f4a_7c15).rotate_left(bits) & mask)
                    .collect();
                let bytes = pack_bits(&words, bits);
                assert_eq!(bytes.len(), (len * bits as usize).div_ceil(8));
                assert_eq!(
                    unpack_bits(&bytes, bits),
                    Some(words),
                    "{bits} bits, {len} words"
                );
            }
        }
        // 64 bits: the same bytes as U64s.
        assert_eq!(
            pack_bits(&[1, u64::MAX], 64),
            [&1u64.to_le_bytes()[..], &[0xff; 8]].concat()
        );
    }

    #[test]
    fn bit_strings_have_one_encoding() {
        // Nonzero padding, a byte too many, a width out of range.
        assert_eq!(unpack_bits(&[0xff, 0xff], 12), None);
        assert_eq!(unpack_bits(&[0xff, 0x0f], 12), Some(vec![0xfff]));
        assert_eq!(unpack_bits(&[1, 0, 0], 16), None);
        assert_eq!(unpack_bits(&[1], 7), None);
        assert_eq!(unpack_bits(&[1; 9], 65), None);
    }

    #[test]
    fn bodies_round_to_the_kept_bits() {
        let v = vec![u64::MAX, 0, (5u64 << 24) + (1 << 23), 12345 << 24];
        let b = Bodies::pack(&v, 24);
        assert_eq!(b.byte_len(), 4 * 5);
        let back: Bodies = postcard::from_bytes(&postcard::to_allocvec(&b).unwrap()).unwrap();
        assert_eq!(back.unpack().unwrap(), vec![0, 0, 6 << 24, 12345 << 24]);
        assert_eq!(Bodies::pack(&v, 0).unpack().unwrap(), v);
    }

    #[test]
    fn round_trip_and_size() {
        let v = U64s(vec![u64::MAX, 0, 1 << 63, 12345]);
        let bytes = postcard::to_allocvec(&v).unwrap();
        assert_eq!(bytes.len(), 1 + 32);
        assert_eq!(postcard::from_bytes::<U64s>(&bytes).unwrap(), v);
    }

    #[test]
    fn rejects_ragged_length() {
        let bytes = postcard::to_allocvec(&serde_bytes_like(&[1, 2, 3])).unwrap();
        assert!(postcard::from_bytes::<U64s>(&bytes).is_err());
    }

    fn serde_bytes_like(b: &[u8]) -> impl Serialize + '_ {
        struct B<'a>(&'a [u8]);
        impl Serialize for B<'_> {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_bytes(self.0)
            }
        }
        B(b)
    }
}
