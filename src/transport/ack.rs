//! End-to-end acknowledgements: the backend tells a board which of its results it has durably
//! received, so the board keeps a result until then — "nothing lost" no longer rests on the
//! broker's queues and persistence.
//!
//! An acknowledgement says *received*, never what became of a result: recorded, refused or
//! withheld all look the same, so a board that crafts results learns nothing from them about
//! the checks (and so about the secret key) — refusals go to the operators only
//! (docs/THREATS.md, "the refusal oracle").
//!
//! Wire format: version byte 2, the postcard encoding of [`Ack`], then the backend's Ed25519
//! signature (64 bytes, the bundle-signing key the board already trusts) over a domain
//! separator and everything before it. A board acts only on acknowledgements that verify and
//! name it: a forged one could otherwise make it drop results the backend never received.

use super::sealed::{open, seal, SealError};
use ed25519_dalek::{SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};

pub(crate) const ACK_VERSION: u8 = 2;
pub(crate) const DOMAIN: &[u8] = b"hedge ack v2\0";
/// Far more than a publish window's worth of ranges.
pub(crate) const MAX_ACK_BYTES: usize = 64 << 10;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Ack {
    pub device_id: String,
    /// Inclusive sequence ranges the backend has durably received, whatever became of them.
    pub received: Vec<(u64, u64)>,
    pub issued_ms: u64,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum AckError {
    #[error("acknowledgement rejected: {0}")]
    Sealed(#[from] SealError),
    #[error("acknowledgement for device {0}, not this one")]
    OtherDevice(String),
}

/// Consecutive numbers of `seqs` (in any order, repeats allowed) as inclusive ranges.
#[cfg(any(feature = "backend", test))]
pub(crate) fn ranges(seqs: impl IntoIterator<Item = u64>) -> Vec<(u64, u64)> {
    let mut sorted: Vec<u64> = seqs.into_iter().collect();
    sorted.sort_unstable();
    sorted.dedup();
    let mut out: Vec<(u64, u64)> = Vec::new();
    for s in sorted {
        match out.last_mut() {
            Some((_, hi)) if *hi + 1 == s => *hi = s,
            _ => out.push((s, s)),
        }
    }
    out
}

impl Ack {
    pub fn encode(&self, backend: &SigningKey) -> Vec<u8> {
        seal(
            DOMAIN,
            ACK_VERSION,
            &postcard::to_allocvec(self).expect("serialising to a Vec cannot fail"),
            backend,
        )
    }

    /// Verify and decode an acknowledgement meant for `device`.
    pub fn decode(bytes: &[u8], backend: &VerifyingKey, device: &str) -> Result<Ack, AckError> {
        let body = open(DOMAIN, ACK_VERSION, bytes, MAX_ACK_BYTES, backend)?;
        let ack: Ack =
            postcard::from_bytes(body).map_err(|e| SealError::Undecodable(e.to_string()))?;
        if ack.device_id != device {
            return Err(AckError::OtherDevice(ack.device_id));
        }
        Ok(ack)
    }

    /// Every sequence number it covers.
    pub fn seqs(&self) -> impl Iterator<Item = u64> + '_ {
        self.received
            .iter()
            .flat_map(|&(lo, hi)| lo..=hi.min(lo.saturating_add(1 << 20)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_compress_runs() {
        assert_eq!(
            ranges([5, 1, 2, 3, 3, 9, 10]),
            vec![(1, 3), (5, 5), (9, 10)]
        );
        assert!(ranges([]).is_empty());
    }

    #[test]
    fn only_the_backend_can_acknowledge_and_only_for_its_device() {
        let backend = SigningKey::from_bytes(&[4; 32]);
        let ack = Ack {
            device_id: "board-1".into(),
            received: vec![(1, 3), (5, 5), (7, 7)],
            issued_ms: 1,
        };
        let bytes = ack.encode(&backend);
        let back = Ack::decode(&bytes, &backend.verifying_key(), "board-1").unwrap();
        assert_eq!(back, ack);
        assert_eq!(back.seqs().collect::<Vec<_>>(), [1, 2, 3, 5, 7]);
        assert_eq!(
            Ack::decode(&bytes, &backend.verifying_key(), "board-2"),
            Err(AckError::OtherDevice("board-1".into()))
        );
        let other = SigningKey::from_bytes(&[5; 32]);
        let forged = ack.encode(&other);
        assert_eq!(
            Ack::decode(&forged, &backend.verifying_key(), "board-1"),
            Err(AckError::Sealed(SealError::BadSignature))
        );
        let mut altered = bytes.clone();
        altered[3] ^= 1;
        assert_eq!(
            Ack::decode(&altered, &backend.verifying_key(), "board-1"),
            Err(AckError::Sealed(SealError::BadSignature))
        );
        assert!(Ack::decode(&[1, 2], &backend.verifying_key(), "board-1").is_err());
        assert!(Ack::decode(&vec![1; MAX_ACK_BYTES + 1], &backend.verifying_key(), "b").is_err());
    }
}
