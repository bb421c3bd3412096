//! The one result format: what hedged publishes, spools and writes as result files, and what
//! `hedge decrypt` reads from the broker or from files (and `hedge bench` from its edge child).
//!
//! Wire format: one version byte, then the postcard encoding of [`ResultMessage`]. postcard
//! is not self-describing, so any change of the struct takes a new version byte; older
//! versions still decode (a spool written before an upgrade is published after it).

use crate::engine::ResultCiphertext;
use serde::{Deserialize, Serialize};

/// Why a result message does not decode.
#[derive(Debug, thiserror::Error)]
pub enum MessageError {
    #[error("result message of {len} bytes exceeds {MAX_PAYLOAD}")]
    Oversized { len: usize },
    #[error("empty result message")]
    Empty,
    #[error("result message version {found}, expected {MESSAGE_VERSION}")]
    Version { found: u8 },
    #[error("undecodable result message: {0}")]
    Undecodable(String),
}

/// 2: `extract_us`.
pub const MESSAGE_VERSION: u8 = 2;

/// Largest payload a decryptor accepts (a 256-bit `noact` result is ~640 KB).
pub const MAX_PAYLOAD: usize = 4 << 20;

/// One encrypted inference result with its provenance.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ResultMessage {
    pub device_id: String,
    /// Short id of the bundle that produced it (see [`crate::bundle::bundle_id`]).
    pub bundle_id: String,
    /// Monotonically increasing per device, across restarts.
    pub seq: u64,
    /// Unix milliseconds when the inference finished.
    pub timestamp_ms: u64,
    /// How long the encrypted inference took on the edge (µs), extraction excluded.
    pub infer_us: u64,
    /// How long the plaintext feature extractor took (µs; 0 without one).
    pub extract_us: u64,
    pub result: ResultCiphertext,
}

/// Version 1 of the message, before `extract_us`.
#[derive(Deserialize)]
#[cfg_attr(test, derive(Serialize))]
struct MessageV1 {
    device_id: String,
    bundle_id: String,
    seq: u64,
    timestamp_ms: u64,
    infer_us: u64,
    result: ResultCiphertext,
}

impl ResultMessage {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![MESSAGE_VERSION];
        out.extend(postcard::to_allocvec(self).expect("serialising to a Vec cannot fail"));
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, MessageError> {
        if bytes.len() > MAX_PAYLOAD {
            return Err(MessageError::Oversized { len: bytes.len() });
        }
        let malformed = |e: postcard::Error| MessageError::Undecodable(e.to_string());
        match bytes.split_first() {
            Some((&MESSAGE_VERSION, body)) => postcard::from_bytes(body).map_err(malformed),
            // Spooled by an older hedged: no extractor timing.
            Some((1, body)) => postcard::from_bytes::<MessageV1>(body)
                .map(|m| ResultMessage {
                    device_id: m.device_id,
                    bundle_id: m.bundle_id,
                    seq: m.seq,
                    timestamp_ms: m.timestamp_ms,
                    infer_us: m.infer_us,
                    extract_us: 0,
                    result: m.result,
                })
                .map_err(malformed),
            Some((&found, _)) => Err(MessageError::Version { found }),
            None => Err(MessageError::Empty),
        }
    }
}

/// Unix milliseconds now.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::keys::KeyKind;
    use crate::engine::ResultPart;

    fn result() -> ResultCiphertext {
        ResultCiphertext {
            key_id: [3; 16],
            key: KeyKind::Wide,
            poly_size: 4,
            delta_out: 1 << 40,
            out_scale: 0.5,
            parts: vec![ResultPart::Lwe {
                data: crate::crypto::raw::U64s(vec![1, 2, 3, 4, 5]),
            }],
        }
    }

    #[test]
    fn round_trip_and_a_version_1_spool_entry() {
        let m = ResultMessage {
            device_id: "board-1".into(),
            bundle_id: "0011223344556677".into(),
            seq: 42,
            timestamp_ms: 1_700_000_000_000,
            infer_us: 1234,
            extract_us: 56,
            result: result(),
        };
        assert_eq!(ResultMessage::decode(&m.encode()).unwrap(), m);
        // What hedged spooled before `extract_us` existed.
        let v1 = MessageV1 {
            device_id: m.device_id.clone(),
            bundle_id: m.bundle_id.clone(),
            seq: m.seq,
            timestamp_ms: m.timestamp_ms,
            infer_us: m.infer_us,
            result: m.result.clone(),
        };
        let mut bytes = vec![1u8];
        bytes.extend(postcard::to_allocvec(&v1).unwrap());
        let old = ResultMessage::decode(&bytes).unwrap();
        assert_eq!(
            old,
            ResultMessage {
                extract_us: 0,
                ..m.clone()
            }
        );
    }

    #[test]
    fn every_refusal_is_typed() {
        assert!(matches!(
            ResultMessage::decode(&[]),
            Err(MessageError::Empty)
        ));
        assert!(matches!(
            ResultMessage::decode(&[9, 1, 2]),
            Err(MessageError::Version { found: 9 })
        ));
        assert!(matches!(
            ResultMessage::decode(&[MESSAGE_VERSION, 0xff, 0xff]),
            Err(MessageError::Undecodable(_))
        ));
        assert!(matches!(
            ResultMessage::decode(&vec![MESSAGE_VERSION; MAX_PAYLOAD + 1]),
            Err(MessageError::Oversized { .. })
        ));
    }
}
