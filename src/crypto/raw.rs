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
            let r = if drop_bits == 0 {
                v
            } else {
                v.wrapping_add(1 << (drop_bits - 1)) >> drop_bits
            };
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

#[cfg(test)]
mod tests {
    use super::*;

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
