//! The edge bundle: everything the edge needs, nothing it must not have.
//!
//! Wire format (all integers little-endian):
//!
//! ```text
//! magic "HEDGEBDL" (8) | format version u16 | body length u64 | body (postcard) |
//! SHA-256(body) (32) | signer fingerprint (8) | Ed25519 signature (64)
//! ```
//! The signature covers every byte before it. Loading checks, in order: size, magic,
//! version, length, checksum, signer, signature — then decodes the body and checks that the
//! keys hash to the header's key id and the parameter set is a shipped one.
//!
//! [`EdgeBundle`] holds [`EdgeKeys`] (public and evaluation keys), the encrypted model and,
//! for a network split with `--encrypt-from`, the plaintext feature extractor (ONNX); it has no
//! field that could hold a secret key.

use crate::crypto::keys::{key_id, EdgeKeys, KeyId};
use crate::crypto::params::ParameterSet;
use crate::engine::{hex, EdgeEngine, EncryptedModel, ModelInfo};
use crate::error::{Error, Result};
use crate::model::split::Extractor;
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::path::Path;

pub const MAGIC: [u8; 8] = *b"HEDGEBDL";
/// 2: the optional plaintext feature extractor. 3: the key-switching key modulo 2^32.
pub const FORMAT_VERSION: u16 = 3;
const PREFIX: usize = 8 + 2 + 8;
const TRAILER: usize = 32 + 8 + 64;

/// Public facts about a bundle.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BundleHeader {
    pub params: ParameterSet,
    pub key_id: KeyId,
    pub model: ModelInfo,
    /// Unix seconds at protection time.
    pub created: u64,
    /// A free-form name for logs.
    pub name: String,
}

/// What ships to the edge.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EdgeBundle {
    pub header: BundleHeader,
    pub keys: EdgeKeys,
    pub model: EncryptedModel,
    /// Layers before the encrypted classifier, run in plaintext on the edge.
    pub extractor: Option<PlainExtractor>,
}

/// A plaintext feature extractor: public, like the paper's convolutional layers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PlainExtractor {
    /// ONNX model from the network's input to the classifier's input.
    pub onnx: Vec<u8>,
    /// Its input shape, e.g. [1, 1, 28, 28].
    pub input_shape: Vec<usize>,
    /// Raw 8-bit pixels are multiplied by this (1/255 for inputs in [0, 1]).
    pub pixel_scale: f32,
}

impl PlainExtractor {
    pub fn prepare(&self) -> Result<Extractor> {
        let mut extractor = Extractor::new(&self.onnx, &self.input_shape)?;
        extractor.pixel_scale = self.pixel_scale;
        Ok(extractor)
    }
}

/// The first 8 bytes of SHA-256 over a verifying key.
pub fn fingerprint(key: &VerifyingKey) -> [u8; 8] {
    let d = Sha256::digest(key.as_bytes());
    d[..8].try_into().expect("8 bytes")
}

/// A bundle's identity: SHA-256 over its signed bytes, shortened (for logs and results).
pub fn bundle_id(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes)[..8])
}

impl EdgeBundle {
    /// Serialise and sign.
    pub fn to_bytes(&self, signer: &SigningKey) -> Vec<u8> {
        let body = postcard::to_allocvec(self).expect("serialising to a Vec cannot fail");
        let mut out = Vec::with_capacity(PREFIX + body.len() + TRAILER);
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        out.extend_from_slice(&(body.len() as u64).to_le_bytes());
        out.extend_from_slice(&body);
        out.extend_from_slice(&Sha256::digest(&body));
        out.extend_from_slice(&fingerprint(&signer.verifying_key()));
        let signature = signer.sign(&out);
        out.extend_from_slice(&signature.to_bytes());
        out
    }

    /// Verify and decode a bundle signed by `trusted`.
    pub fn from_bytes(bytes: &[u8], trusted: &VerifyingKey) -> Result<Self> {
        let bad = |m: String| Err(Error::Bundle(m));
        if bytes.len() < PREFIX + TRAILER {
            return bad(format!(
                "truncated: {} bytes is shorter than any bundle",
                bytes.len()
            ));
        }
        if bytes[..8] != MAGIC {
            return bad("not a hedge bundle (bad magic)".into());
        }
        let version = u16::from_le_bytes([bytes[8], bytes[9]]);
        if version != FORMAT_VERSION {
            return bad(format!(
                "format version {version}, this build reads version {FORMAT_VERSION}"
            ));
        }
        let body_len = u64::from_le_bytes(bytes[10..18].try_into().expect("8 bytes"));
        let expected = (PREFIX as u64)
            .checked_add(body_len)
            .and_then(|v| v.checked_add(TRAILER as u64));
        match expected {
            Some(e) if e == bytes.len() as u64 => {}
            Some(e) if e > bytes.len() as u64 => {
                return bad(format!("truncated: {} of {e} bytes", bytes.len()));
            }
            _ => return bad("trailing bytes after the signature".into()),
        }
        let body_end = PREFIX + body_len as usize;
        let body = &bytes[PREFIX..body_end];
        if Sha256::digest(body)[..] != bytes[body_end..body_end + 32] {
            return bad("corrupted: checksum mismatch".into());
        }
        let signer = &bytes[body_end + 32..body_end + 40];
        if signer == [0u8; 8] {
            return bad("unsigned".into());
        }
        if signer != fingerprint(trusted) {
            return bad(format!(
                "signed by key {}, but the trusted signing key is {}",
                hex(signer),
                hex(&fingerprint(trusted))
            ));
        }
        let signature = Signature::from_bytes(bytes[body_end + 40..].try_into().expect("64 bytes"));
        trusted
            .verify(&bytes[..body_end + 40], &signature)
            .map_err(|_| {
                Error::Bundle("signature does not verify: the bundle was tampered with".into())
            })?;
        let bundle: EdgeBundle = postcard::from_bytes(body)
            .map_err(|e| Error::Bundle(format!("signed but undecodable body: {e}")))?;
        bundle.check()?;
        Ok(bundle)
    }

    pub fn load(path: &Path, trusted: &VerifyingKey) -> Result<(Self, Vec<u8>)> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        Ok((Self::from_bytes(&bytes, trusted)?, bytes))
    }

    fn check(&self) -> Result<()> {
        let p = self.header.params;
        if p != ParameterSet::for_level(p.security) || self.keys.public.params != p {
            return Err(Error::Bundle(format!(
                "parameter set does not match the shipped {}-bit set",
                p.security
            )));
        }
        if key_id(&self.keys.public) != self.header.key_id {
            return Err(Error::Bundle(
                "keys do not match the header's key id".into(),
            ));
        }
        if self.model.variant() != self.header.model.variant {
            return Err(Error::Bundle(
                "model and header disagree on the variant".into(),
            ));
        }
        Ok(())
    }

    /// Expand into a ready engine.
    pub fn engine(&self) -> Result<EdgeEngine> {
        EdgeEngine::new(
            self.header.model.clone(),
            self.header.params,
            self.header.key_id,
            &self.keys,
            &self.model,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::keys;
    use crate::crypto::params::SecurityLevel;
    use crate::model::quant::{QuantModel, Variant};
    use crate::model::synth;

    fn fixture() -> (Vec<u8>, SigningKey, keys::KeySet) {
        let params = ParameterSet::for_level(SecurityLevel::L128);
        let ks = keys::generate(params);
        let task = synth::Task::new(1, 16, 10);
        let model = synth::classifier(1, &task, 8, None);
        let calib: Vec<Vec<f32>> = task.samples(2, 20).into_iter().map(|s| s.0).collect();
        let q = QuantModel::quantize(&model, Variant::Last, None, &calib, &params).unwrap();
        let bundle = EdgeBundle {
            header: BundleHeader {
                params,
                key_id: ks.secret.key_id,
                model: ModelInfo::of(&q),
                created: 0,
                name: "test".into(),
            },
            keys: EdgeKeys {
                public: ks.public.clone(),
                evaluation: Some(ks.evaluation.clone()),
            },
            model: EncryptedModel::encrypt(&q, &ks.secret).unwrap(),
            extractor: None,
        };
        let signer = SigningKey::from_bytes(&[7u8; 32]);
        (bundle.to_bytes(&signer), signer, ks)
    }

    fn rejection(bytes: &[u8], key: &VerifyingKey) -> String {
        match EdgeBundle::from_bytes(bytes, key) {
            Ok(_) => panic!("accepted a bad bundle"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn round_trip_and_every_rejection() {
        let (bytes, signer, ks) = fixture();
        let key = signer.verifying_key();
        let b = EdgeBundle::from_bytes(&bytes, &key).unwrap();
        assert_eq!(b.header.key_id, ks.secret.key_id);
        b.engine().unwrap();

        assert!(rejection(&bytes[..bytes.len() - 1], &key).contains("truncated"));
        assert!(rejection(&bytes[..100], &key).contains("truncated"));
        assert!(rejection(&bytes[..10], &key).contains("truncated"));
        let mut corrupt = bytes.clone();
        corrupt[PREFIX + 50] ^= 1;
        assert!(rejection(&corrupt, &key).contains("checksum"));
        let mut wrong_version = bytes.clone();
        wrong_version[8] = 9;
        assert!(rejection(&wrong_version, &key).contains("version"));
        let mut magic = bytes.clone();
        magic[0] = b'X';
        assert!(rejection(&magic, &key).contains("magic"));
        let other = SigningKey::from_bytes(&[9u8; 32]).verifying_key();
        assert!(rejection(&bytes, &other).contains("signed by key"));
        let mut unsigned = bytes.clone();
        let n = unsigned.len();
        unsigned[n - 72..n - 64].fill(0);
        assert!(rejection(&unsigned, &key).contains("unsigned"));
        let mut forged = bytes.clone();
        forged[n - 1] ^= 1;
        assert!(rejection(&forged, &key).contains("signature"));
        // A re-computed checksum does not save a tampered body: the signature catches it.
        let mut tampered = bytes.clone();
        let body_len = n - PREFIX - TRAILER;
        tampered[PREFIX + 50] ^= 1;
        let sum = Sha256::digest(&tampered[PREFIX..PREFIX + body_len]);
        tampered[PREFIX + body_len..PREFIX + body_len + 32].copy_from_slice(&sum);
        assert!(rejection(&tampered, &key).contains("signature"));
    }

    #[test]
    fn bundle_bytes_contain_no_secret_key() {
        let (bytes, _, ks) = fixture();
        // Every secret key, in every encoding it exists in, must be absent: as the packed
        // bits the key file stores, and as the raw u64 coefficients tfhe holds.
        for window in [
            crate::crypto::keys::packed(&ks.secret.wide),
            crate::crypto::keys::packed(&ks.secret.pbs),
            crate::crypto::keys::packed_lwe(&ks.secret.lwe),
        ] {
            assert!(window.len() >= 64);
            assert!(
                !contains(&bytes, &window[..64]),
                "packed secret key bits found"
            );
        }
        let raw: Vec<u8> = ks.secret.lwe.as_ref()[..64]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        assert!(!contains(&bytes, &raw), "raw secret key words found");
    }

    // The edge types cannot carry a secret key: SecretKeys is neither serialisable nor
    // cloneable, so no serde type (EdgeBundle included) can embed it.
    static_assertions::assert_not_impl_any!(crate::crypto::keys::SecretKeys: serde::Serialize, Clone);

    fn contains(hay: &[u8], needle: &[u8]) -> bool {
        hay.windows(needle.len()).any(|w| w == needle)
    }
}
