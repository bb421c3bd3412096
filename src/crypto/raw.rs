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
                if v.len() % 8 != 0 {
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

#[cfg(test)]
mod tests {
    use super::*;

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
