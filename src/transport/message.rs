//! The one result format: what hedged publishes, spools and writes as result files, and what
//! `hedge decrypt` reads from the broker or from files (and `hedge bench` from its edge child).
//!
//! Wire format: one version byte, then the postcard encoding of [`ResultMessage`]. postcard
//! is not self-describing, so any change of the struct takes a new version byte; older
//! versions still decode (a spool written before an upgrade is published after it, signed by
//! the upgraded daemon).
//!
//! - 4: the ciphertext's width: each part a string of `bits`-bit words (the board switches
//!   results to the bits their scores need; docs/CRYPTO.md).
//! - 3: the board's Ed25519 signature over the provenance and the ciphertext's hash; the
//!   ciphertext carries only its key id and raw parts (how to read them is the backend's
//!   record, not the board's say).
//! - 2: `extract_us`. 1: the first.

use crate::crypto::keys::{KeyId, KeyKind};
use crate::crypto::raw::U64s;
use crate::engine::ResultCiphertext;
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub(crate) const MESSAGE_VERSION: u8 = 4;

/// Largest payload a decryptor accepts (a 256-bit `noact` result is ~640 KB).
pub(crate) const MAX_PAYLOAD: usize = 4 << 20;

/// What a signature covers, after this domain separator.
const SIGNED_DOMAIN: &[u8] = b"hedge result v3\0";

/// Why a result message does not decode or verify.
#[derive(Clone, Debug, thiserror::Error, PartialEq)]
pub enum MessageError {
    #[error("result message of {len} bytes exceeds {MAX_PAYLOAD}")]
    Oversized { len: usize },
    #[error("empty result message")]
    Empty,
    #[error("result message version {found}, expected {MESSAGE_VERSION}")]
    Version { found: u8 },
    #[error("undecodable result message: {0}")]
    Undecodable(String),
    #[error("unsigned result message (from a board before version 3, or forged)")]
    Unsigned,
    #[error("signed by key {found}, not the device's key {expected}")]
    WrongSigner { found: String, expected: String },
    #[error("the signature does not verify: the message was altered or forged")]
    BadSignature,
}

impl MessageError {
    pub fn kind(&self) -> &'static str {
        match self {
            MessageError::Oversized { .. } => "oversized",
            MessageError::Empty | MessageError::Undecodable(_) => "undecodable",
            MessageError::Version { .. } => "version",
            MessageError::Unsigned => "unsigned",
            MessageError::WrongSigner { .. } => "wrong signer",
            MessageError::BadSignature => "bad signature",
        }
    }
}

/// The board that made a result, and its signature.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Signed {
    /// The board's identity (Ed25519 public key).
    pub key: [u8; 32],
    pub signature: Signature,
}

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
    /// `None` only for a message an older hedged spooled, until it is signed.
    pub signed: Option<Signed>,
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
            Some((3, body)) => postcard::from_bytes::<legacy::MessageV3>(body)
                .map(Into::into)
                .map_err(malformed),
            Some((2, body)) => postcard::from_bytes::<legacy::MessageV2>(body)
                .map(Into::into)
                .map_err(malformed),
            Some((1, body)) => postcard::from_bytes::<legacy::MessageV1>(body)
                .map(Into::into)
                .map_err(malformed),
            Some((&found, _)) => Err(MessageError::Version { found }),
            None => Err(MessageError::Empty),
        }
    }

    /// The bytes the signature covers: the provenance and a hash of the ciphertext.
    fn signed_bytes(&self) -> Vec<u8> {
        let digest: [u8; 32] = Sha256::digest(self.result.signed_form()).into();
        let mut out = SIGNED_DOMAIN.to_vec();
        out.extend(
            postcard::to_allocvec(&(
                &self.device_id,
                &self.bundle_id,
                self.seq,
                self.timestamp_ms,
                self.infer_us,
                self.extract_us,
                digest,
            ))
            .expect("serialising to a Vec cannot fail"),
        );
        out
    }

    /// Sign as the board whose identity is `key`.
    pub fn sign(&mut self, key: &SigningKey) {
        self.signed = None;
        let signature = key.sign(&self.signed_bytes());
        self.signed = Some(Signed {
            key: key.verifying_key().to_bytes(),
            signature,
        });
    }

    /// The board's key the message claims to be signed by.
    pub fn signer(&self) -> Option<[u8; 32]> {
        self.signed.as_ref().map(|s| s.key)
    }

    /// Check that `device` signed exactly this message.
    pub fn verify(&self, device: &VerifyingKey) -> Result<(), MessageError> {
        let signed = self.signed.as_ref().ok_or(MessageError::Unsigned)?;
        if signed.key != device.to_bytes() {
            return Err(MessageError::WrongSigner {
                found: crate::hex::hex(&signed.key),
                expected: crate::hex::hex(device.as_bytes()),
            });
        }
        device
            .verify_strict(&self.signed_bytes(), &signed.signature)
            .map_err(|_| MessageError::BadSignature)
    }
}

/// Messages older hedged versions spooled: still read, so an upgrade loses nothing.
mod legacy {
    use super::*;

    /// Version 3: full 64-bit words, no width.
    #[derive(Deserialize)]
    #[cfg_attr(test, derive(Serialize))]
    pub(crate) struct ResultV3 {
        pub key_id: KeyId,
        pub parts: Vec<U64s>,
    }

    /// What versions 2 and 3 carried before the result (postcard writes a nested struct as
    /// its fields in order, so this reads the same bytes as the fields in place).
    #[derive(Deserialize)]
    #[cfg_attr(test, derive(Serialize))]
    pub(crate) struct Provenance {
        pub device_id: String,
        pub bundle_id: String,
        pub seq: u64,
        pub timestamp_ms: u64,
        pub infer_us: u64,
        pub extract_us: u64,
    }

    impl Provenance {
        fn with(self, result: ResultCiphertext, signed: Option<Signed>) -> ResultMessage {
            ResultMessage {
                device_id: self.device_id,
                bundle_id: self.bundle_id,
                seq: self.seq,
                timestamp_ms: self.timestamp_ms,
                infer_us: self.infer_us,
                extract_us: self.extract_us,
                result,
                signed,
            }
        }
    }

    #[derive(Deserialize)]
    #[cfg_attr(test, derive(Serialize))]
    pub(crate) struct MessageV3 {
        pub provenance: Provenance,
        pub result: ResultV3,
        pub signed: Option<Signed>,
    }

    impl From<MessageV3> for ResultMessage {
        fn from(m: MessageV3) -> Self {
            let result = ResultCiphertext {
                key_id: m.result.key_id,
                bits: 64,
                parts: m.result.parts,
            };
            m.provenance.with(result, m.signed)
        }
    }

    /// Version 1 and 2 results carried their own decoding parameters (ignored now).
    #[derive(Deserialize)]
    #[cfg_attr(test, derive(Serialize))]
    #[allow(dead_code)] // what version 2 carried: read to be skipped
    pub(crate) struct ResultV2 {
        pub key_id: KeyId,
        pub key: KeyKind,
        pub poly_size: u32,
        pub delta_out: u64,
        pub out_scale: f64,
        pub parts: Vec<PartV2>,
    }

    #[derive(Deserialize)]
    #[cfg_attr(test, derive(Serialize))]
    #[allow(dead_code)] // the slots were version 2's own decoding: skipped
    pub(crate) enum PartV2 {
        Glwe { data: U64s, slots: Vec<u32> },
        Lwe { data: U64s },
    }

    impl From<ResultV2> for ResultCiphertext {
        fn from(r: ResultV2) -> Self {
            ResultCiphertext {
                key_id: r.key_id,
                bits: 64,
                parts: r
                    .parts
                    .into_iter()
                    .map(|p| match p {
                        PartV2::Glwe { data, .. } | PartV2::Lwe { data } => data,
                    })
                    .collect(),
            }
        }
    }

    #[derive(Deserialize)]
    #[cfg_attr(test, derive(Serialize))]
    pub(crate) struct MessageV2 {
        pub provenance: Provenance,
        pub result: ResultV2,
    }

    impl From<MessageV2> for ResultMessage {
        fn from(m: MessageV2) -> Self {
            m.provenance.with(m.result.into(), None)
        }
    }

    /// Version 1, before `extract_us`.
    #[derive(Deserialize)]
    #[cfg_attr(test, derive(Serialize))]
    pub(crate) struct MessageV1 {
        pub device_id: String,
        pub bundle_id: String,
        pub seq: u64,
        pub timestamp_ms: u64,
        pub infer_us: u64,
        pub result: ResultV2,
    }

    impl From<MessageV1> for ResultMessage {
        fn from(m: MessageV1) -> Self {
            MessageV2 {
                provenance: Provenance {
                    device_id: m.device_id,
                    bundle_id: m.bundle_id,
                    seq: m.seq,
                    timestamp_ms: m.timestamp_ms,
                    infer_us: m.infer_us,
                    extract_us: 0,
                },
                result: m.result,
            }
            .into()
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
    use super::legacy::*;
    use super::*;

    fn message() -> ResultMessage {
        ResultMessage {
            device_id: "board-1".into(),
            bundle_id: "0011223344556677".into(),
            seq: 42,
            timestamp_ms: 1_700_000_000_000,
            infer_us: 1234,
            extract_us: 56,
            result: ResultCiphertext {
                key_id: [3; 16],
                bits: 64,
                parts: vec![U64s(vec![1, 2, 3, 4, 5])],
            },
            signed: None,
        }
    }

    fn provenance(m: &ResultMessage) -> Provenance {
        Provenance {
            device_id: m.device_id.clone(),
            bundle_id: m.bundle_id.clone(),
            seq: m.seq,
            timestamp_ms: m.timestamp_ms,
            infer_us: m.infer_us,
            extract_us: m.extract_us,
        }
    }

    fn legacy_result() -> ResultV2 {
        ResultV2 {
            key_id: [3; 16],
            key: KeyKind::Wide,
            poly_size: 4,
            delta_out: 1 << 40,
            out_scale: 0.5,
            parts: vec![PartV2::Lwe {
                data: U64s(vec![1, 2, 3, 4, 5]),
            }],
        }
    }

    #[test]
    fn round_trip_signed_and_every_forgery_refused() {
        let board = SigningKey::from_bytes(&[1; 32]);
        let other = SigningKey::from_bytes(&[2; 32]);
        let mut m = message();
        assert_eq!(
            m.verify(&board.verifying_key()),
            Err(MessageError::Unsigned)
        );
        m.sign(&board);
        let back = ResultMessage::decode(&m.encode()).unwrap();
        assert_eq!(back, m);
        back.verify(&board.verifying_key()).unwrap();
        assert!(matches!(
            back.verify(&other.verifying_key()),
            Err(MessageError::WrongSigner { .. })
        ));
        // Any change to what is signed breaks the signature: provenance or ciphertext.
        for change in [
            (|m: &mut ResultMessage| m.seq += 1) as fn(&mut ResultMessage),
            |m| m.device_id = "board-2".into(),
            |m| m.bundle_id = "ffffffffffffffff".into(),
            |m| m.timestamp_ms += 1,
            |m| m.result.parts[0].0[0] ^= 1,
        ] {
            let mut forged = m.clone();
            change(&mut forged);
            assert_eq!(
                forged.verify(&board.verifying_key()),
                Err(MessageError::BadSignature)
            );
        }
        // Re-signing with another key under the board's name is caught by the key check.
        let mut resigned = m.clone();
        resigned.sign(&other);
        assert!(matches!(
            resigned.verify(&board.verifying_key()),
            Err(MessageError::WrongSigner { .. })
        ));
    }

    #[test]
    fn old_spool_entries_decode_unsigned() {
        let m = message();
        // A nested struct is its fields in place: the flat messages older daemons wrote.
        assert_eq!(
            postcard::to_allocvec(&provenance(&m)).unwrap(),
            postcard::to_allocvec(&(
                &m.device_id,
                &m.bundle_id,
                m.seq,
                m.timestamp_ms,
                m.infer_us,
                m.extract_us
            ))
            .unwrap()
        );
        let v2 = MessageV2 {
            provenance: provenance(&m),
            result: legacy_result(),
        };
        let mut bytes = vec![2u8];
        bytes.extend(postcard::to_allocvec(&v2).unwrap());
        assert_eq!(ResultMessage::decode(&bytes).unwrap(), m);
        // Version 1, before `extract_us`.
        let v1 = MessageV1 {
            device_id: m.device_id.clone(),
            bundle_id: m.bundle_id.clone(),
            seq: m.seq,
            timestamp_ms: m.timestamp_ms,
            infer_us: m.infer_us,
            result: legacy_result(),
        };
        let mut bytes = vec![1u8];
        bytes.extend(postcard::to_allocvec(&v1).unwrap());
        assert_eq!(
            ResultMessage::decode(&bytes).unwrap(),
            ResultMessage {
                extract_us: 0,
                ..m.clone()
            }
        );
    }

    #[test]
    fn a_version_3_message_signed_before_an_upgrade_verifies_after_it() {
        let board = SigningKey::from_bytes(&[1; 32]);
        let m = message();
        // Signed as version 3 did: the hash of the width-less result.
        let v3 = ResultV3 {
            key_id: m.result.key_id,
            parts: m.result.parts.clone(),
        };
        let digest: [u8; 32] = Sha256::digest(postcard::to_allocvec(&v3).unwrap()).into();
        let mut signed = SIGNED_DOMAIN.to_vec();
        signed.extend(
            postcard::to_allocvec(&(
                &m.device_id,
                &m.bundle_id,
                m.seq,
                m.timestamp_ms,
                m.infer_us,
                m.extract_us,
                digest,
            ))
            .unwrap(),
        );
        let old = MessageV3 {
            provenance: provenance(&m),
            result: v3,
            signed: Some(Signed {
                key: board.verifying_key().to_bytes(),
                signature: board.sign(&signed),
            }),
        };
        let mut bytes = vec![3u8];
        bytes.extend(postcard::to_allocvec(&old).unwrap());
        let back = ResultMessage::decode(&bytes).unwrap();
        assert_eq!(back.result, m.result);
        back.verify(&board.verifying_key()).unwrap();
    }

    #[test]
    fn switched_results_travel_packed_and_their_width_is_signed() {
        let board = SigningKey::from_bytes(&[1; 32]);
        let mut m = message();
        m.result.bits = 20;
        m.result.parts = vec![U64s(vec![0xf_ffff, 0, 12345])];
        m.sign(&board);
        // Key id, width, part count, length, 3 words of 20 bits in 8 bytes (not 24).
        let packed = postcard::to_allocvec(&m.result).unwrap();
        assert_eq!(packed.len(), 16 + 1 + 1 + 1 + 8);
        let back = ResultMessage::decode(&m.encode()).unwrap();
        assert_eq!(back, m);
        back.verify(&board.verifying_key()).unwrap();
        let mut wider = m.clone();
        wider.result.bits = 21;
        assert_eq!(
            wider.verify(&board.verifying_key()),
            Err(MessageError::BadSignature)
        );
        // Nonzero padding (one string, one encoding), a width out of range: undecodable.
        let mut bad = packed.clone();
        *bad.last_mut().unwrap() |= 0xf0;
        assert!(postcard::from_bytes::<ResultCiphertext>(&bad).is_err());
        let mut bad = packed;
        bad[16] = 7;
        assert!(postcard::from_bytes::<ResultCiphertext>(&bad).is_err());
    }

    #[test]
    fn every_refusal_is_typed() {
        assert_eq!(ResultMessage::decode(&[]), Err(MessageError::Empty));
        assert_eq!(
            ResultMessage::decode(&[9, 1, 2]),
            Err(MessageError::Version { found: 9 })
        );
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
