//! Deployment over MQTT: what the backend offers a board, how the board asks for chunks, the
//! chunks, and what the board reports.
//!
//! Topics (under `deploy_topic`, default `hedge/<device>/deploy`):
//! - `…/offer` — retained, backend → board: a sealed [`Offer`] (signed by the backend's key:
//!   the bundle's size, SHA-256, and one SHA-256 per chunk), so a board that was offline
//!   receives it on its return, and nothing but the backend can start or cancel a deployment;
//! - `…/get` — board → backend, QoS 0: a [`ChunkRequest`] (the board asks again when a chunk
//!   does not come, so requests need no acknowledgement — and they stay out of the packet
//!   ids that number the board's results);
//! - `…/data` — backend → board, QoS 1: one [`Chunk`]; unsigned, as its digest is in the offer;
//! - `…/state` — retained, board → anyone, QoS 0: a [`Report`] as JSON (advisory, like health).

use super::sealed::{open, seal, SealError};
use ed25519_dalek::{SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};

pub(crate) const OFFER_VERSION: u8 = 1;
pub(crate) const OFFER_DOMAIN: &[u8] = b"hedge offer v1\0";
/// 32 bytes per chunk digest: room for 30,000 chunks (7.5 GB at 256 KB).
pub(crate) const MAX_OFFER_BYTES: usize = 1 << 20;
/// A chunk message: its bytes and a few of framing.
pub(crate) const MAX_CHUNK_BYTES: u32 = 4 << 20;
pub(crate) const MIN_CHUNK_BYTES: u32 = 1 << 10;

/// What a board fetches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Payload {
    /// A whole signed bundle (keys and model).
    Bundle,
    /// A signed model update ([`crate::bundle::ModelUpdate`]) under a key set the board holds.
    ModelUpdate,
}

impl Payload {
    pub fn name(self) -> &'static str {
        match self {
            Payload::Bundle => "bundle",
            Payload::ModelUpdate => "model-update",
        }
    }
}

/// A deployment offered to one board (or its cancellation).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Offer {
    pub deployment: u64,
    pub device_id: String,
    /// The bundle the board will run (its id in results).
    pub bundle_id: String,
    pub payload: Payload,
    pub epoch: u64,
    pub size: u64,
    pub chunk_size: u32,
    /// SHA-256 of each chunk, in order.
    pub chunks: Vec<[u8; 32]>,
    /// SHA-256 of the whole payload.
    pub digest: [u8; 32],
    /// The backend withdrew it: stop, and drop what was fetched.
    pub cancelled: bool,
    pub issued_ms: u64,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum OfferError {
    #[error("offer rejected: {0}")]
    Sealed(#[from] SealError),
    #[error("offer for device {0}, not this one")]
    OtherDevice(String),
    #[error("offer rejected: {0}")]
    Inconsistent(String),
}

impl Offer {
    pub fn encode(&self, backend: &SigningKey) -> Vec<u8> {
        let body = postcard::to_allocvec(self).expect("serialising to a Vec cannot fail");
        seal(OFFER_DOMAIN, OFFER_VERSION, &body, backend)
    }

    /// Verify and decode an offer meant for `device`, and check that its sizes agree.
    pub fn decode(bytes: &[u8], backend: &VerifyingKey, device: &str) -> Result<Self, OfferError> {
        let body = open(OFFER_DOMAIN, OFFER_VERSION, bytes, MAX_OFFER_BYTES, backend)?;
        let offer: Offer =
            postcard::from_bytes(body).map_err(|e| SealError::Undecodable(e.to_string()))?;
        if offer.device_id != device {
            return Err(OfferError::OtherDevice(offer.device_id));
        }
        if !(MIN_CHUNK_BYTES..=MAX_CHUNK_BYTES).contains(&offer.chunk_size) {
            return Err(OfferError::Inconsistent(format!(
                "chunk size {} outside {MIN_CHUNK_BYTES}..={MAX_CHUNK_BYTES}",
                offer.chunk_size
            )));
        }
        if offer.chunk_count() != offer.chunks.len() as u64 {
            return Err(OfferError::Inconsistent(format!(
                "{} bytes in chunks of {} need {} digests, the offer has {}",
                offer.size,
                offer.chunk_size,
                offer.chunk_count(),
                offer.chunks.len()
            )));
        }
        Ok(offer)
    }

    pub(crate) fn chunk_count(&self) -> u64 {
        self.size.div_ceil(self.chunk_size as u64)
    }

    /// Bytes of chunk `index` (the last may be short).
    pub(crate) fn chunk_len(&self, index: u32) -> usize {
        let start = index as u64 * self.chunk_size as u64;
        (self.size.saturating_sub(start)).min(self.chunk_size as u64) as usize
    }
}

/// Chunks `first..first + count` of a deployment, please.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ChunkRequest {
    pub deployment: u64,
    pub first: u32,
    pub count: u32,
}

impl ChunkRequest {
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_allocvec(self).expect("serialising to a Vec cannot fail")
    }

    #[cfg(any(feature = "backend", test))]
    pub fn decode(bytes: &[u8]) -> Result<Self, String> {
        if bytes.len() > 64 {
            return Err(format!("{} bytes", bytes.len()));
        }
        postcard::from_bytes(bytes).map_err(|e| e.to_string())
    }
}

/// One chunk of a deployment's payload.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Chunk {
    pub deployment: u64,
    pub index: u32,
    pub bytes: Vec<u8>,
}

impl Chunk {
    #[cfg(any(feature = "backend", test))]
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_allocvec(self).expect("serialising to a Vec cannot fail")
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, String> {
        if bytes.len() > MAX_CHUNK_BYTES as usize + 32 {
            return Err(format!("{} bytes", bytes.len()));
        }
        postcard::from_bytes(bytes).map_err(|e| e.to_string())
    }
}

/// Where a deployment stands on one board.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeployState {
    Offered,
    Downloading,
    Verifying,
    Active,
    RolledBack,
    Failed,
    Cancelled,
}

impl DeployState {
    pub fn name(self) -> &'static str {
        match self {
            DeployState::Offered => "offered",
            DeployState::Downloading => "downloading",
            DeployState::Verifying => "verifying",
            DeployState::Active => "active",
            DeployState::RolledBack => "rolled_back",
            DeployState::Failed => "failed",
            DeployState::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        serde_json::from_value(serde_json::Value::String(s.into())).ok()
    }

    /// Nothing more will happen to the deployment on this board.
    pub(crate) fn is_final(self) -> bool {
        matches!(
            self,
            DeployState::Active
                | DeployState::RolledBack
                | DeployState::Failed
                | DeployState::Cancelled
        )
    }
}

/// What a board says about a deployment (JSON on `…/state`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub device: String,
    pub deployment: u64,
    pub state: DeployState,
    /// Bytes fetched so far, of `total`.
    pub received: u64,
    pub total: u64,
    /// The bundle the board runs now.
    pub running: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub at_ms: u64,
}

impl Report {
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("serialising to a Vec cannot fail")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offer() -> Offer {
        Offer {
            deployment: 7,
            device_id: "board-1".into(),
            bundle_id: "aa".into(),
            payload: Payload::Bundle,
            epoch: 3,
            size: 5000,
            chunk_size: 2048,
            chunks: vec![[1; 32]; 3],
            digest: [2; 32],
            cancelled: false,
            issued_ms: 1,
        }
    }

    #[test]
    fn only_the_backend_offers_and_only_consistent_offers() {
        let backend = SigningKey::from_bytes(&[4; 32]);
        let key = backend.verifying_key();
        let o = offer();
        assert_eq!(
            Offer::decode(&o.encode(&backend), &key, "board-1"),
            Ok(o.clone())
        );
        assert_eq!(o.chunk_len(2), 5000 - 4096);
        assert_eq!(
            Offer::decode(&o.encode(&backend), &key, "board-2"),
            Err(OfferError::OtherDevice("board-1".into()))
        );
        let other = SigningKey::from_bytes(&[5; 32]);
        assert_eq!(
            Offer::decode(&o.encode(&other), &key, "board-1"),
            Err(OfferError::Sealed(SealError::BadSignature))
        );
        // An acknowledgement's signature is no offer's.
        let as_ack = crate::transport::sealed::seal(
            crate::transport::ack::DOMAIN,
            OFFER_VERSION,
            &postcard::to_allocvec(&o).unwrap(),
            &backend,
        );
        assert!(Offer::decode(&as_ack, &key, "board-1").is_err());
        let short = Offer {
            chunks: vec![[1; 32]; 2],
            ..o.clone()
        };
        assert!(matches!(
            Offer::decode(&short.encode(&backend), &key, "board-1"),
            Err(OfferError::Inconsistent(_))
        ));
        let tiny = Offer {
            chunk_size: 10,
            ..o
        };
        assert!(matches!(
            Offer::decode(&tiny.encode(&backend), &key, "board-1"),
            Err(OfferError::Inconsistent(_))
        ));
    }

    #[test]
    fn requests_chunks_and_reports_round_trip() {
        let r = ChunkRequest {
            deployment: 1,
            first: 4,
            count: 8,
        };
        assert_eq!(ChunkRequest::decode(&r.encode()), Ok(r));
        assert!(ChunkRequest::decode(&[0xff; 100]).is_err());
        let c = Chunk {
            deployment: 1,
            index: 2,
            bytes: vec![9; 3000],
        };
        assert_eq!(Chunk::decode(&c.encode()), Ok(c));
        assert_eq!(
            DeployState::parse("rolled_back"),
            Some(DeployState::RolledBack)
        );
        assert_eq!(DeployState::parse("bogus"), None);
        let report = Report {
            device: "b".into(),
            deployment: 1,
            state: DeployState::Downloading,
            received: 10,
            total: 20,
            running: "aa".into(),
            reason: None,
            at_ms: 5,
        };
        let json: serde_json::Value = serde_json::from_slice(&report.encode()).unwrap();
        assert_eq!(json["state"], "downloading");
    }
}
