//! The result message the edge publishes (MQTT payload and spool file).
//!
//! Wire format: one version byte (1), then the postcard encoding of [`ResultMessage`]. postcard
//! is not self-describing, so any change of the struct takes a new version byte.

use crate::engine::ResultCiphertext;
use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};

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

    pub fn decode(bytes: &[u8]) -> Result<Self> {
        if bytes.len() > MAX_PAYLOAD {
            return Err(Error::Malformed(format!(
                "payload of {} bytes exceeds {MAX_PAYLOAD}",
                bytes.len()
            )));
        }
        let malformed = |e: postcard::Error| Error::Malformed(format!("result message: {e}"));
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
            Some((v, _)) => Err(Error::Malformed(format!(
                "result message version {v}, expected {MESSAGE_VERSION}"
            ))),
            None => Err(Error::Malformed("empty result message".into())),
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
