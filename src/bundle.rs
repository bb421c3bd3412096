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
use crate::engine::{EdgeEngine, EncryptedModel, EngineError, ModelInfo};
use crate::files::IoError;
use crate::hex::hex;
use crate::model::split::{Extractor, PlainExtractor};
use crate::model::ModelError;
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::path::Path;

pub(crate) const MAGIC: [u8; 8] = *b"HEDGEBDL";
/// 2: the optional plaintext feature extractor. 3: the key-switching key modulo 2^32.
/// 4: the epoch (anti-rollback) and the parameter sets of 2026-12 (today's security fits).
/// 5: `act`'s accuracy settings (class groups per unit, gadget levels) and expected agreement.
/// 6: per-unit activation steps. 7: any activation. 8: the result shape (modulus switch, cut).
pub const FORMAT_VERSION: u16 = 8;
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
    /// Increases with every bundle the backend protects: a board refuses a bundle older than
    /// the newest it accepted (anti-rollback).
    pub epoch: u64,
    /// Variant `act`: the noise model's agreement with the integer reference over the
    /// calibration inputs at protection time, [low, high].
    pub expected_agreement: Option<[f64; 2]>,
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

/// The first 8 bytes of SHA-256 over a verifying key.
pub(crate) fn fingerprint(key: &VerifyingKey) -> [u8; 8] {
    let d = Sha256::digest(key.as_bytes());
    d[..8].try_into().expect("8 bytes")
}

/// A bundle's identity: SHA-256 over its signed bytes, shortened (for logs and results).
pub fn bundle_id(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes)[..8])
}

/// Why a bundle is refused.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("bundle rejected: truncated ({len} bytes, {expected} expected)")]
    Truncated { len: u64, expected: u64 },
    #[error("bundle rejected: not a hedge bundle (bad magic)")]
    BadMagic,
    #[error(
        "bundle rejected: format version {found}, this build reads version {FORMAT_VERSION} \
         (made by an older hedge: protect the model again, with keys from this version's \
         hedge keygen)"
    )]
    Version { found: u16 },
    #[error("bundle rejected: trailing bytes after the signature")]
    TrailingBytes,
    #[error("bundle rejected: corrupted (checksum mismatch)")]
    Checksum,
    #[error("bundle rejected: unsigned")]
    Unsigned,
    #[error("bundle rejected: signed by key {signer}, but the trusted signing key is {trusted}")]
    WrongSigner { signer: String, trusted: String },
    #[error("bundle rejected: the signature does not verify (the bundle was tampered with)")]
    BadSignature,
    #[error("bundle rejected: signed but undecodable body: {0}")]
    Undecodable(String),
    /// Signed and decodable, but its parts do not agree (keys, parameters, variant).
    #[error("bundle rejected: {0}")]
    Inconsistent(String),
    #[error("not a verifying key: {0}")]
    VerifyingKey(String),
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Io(#[from] IoError),
}

/// A bundle file around `body` (the postcard encoding of an [`EdgeBundle`]), signed.
pub(crate) fn sign_body(body: &[u8], signer: &SigningKey) -> Vec<u8> {
    frame(MAGIC, body, signer)
}

/// `magic | version | length | body | checksum | signer | signature`.
fn frame(magic: [u8; 8], body: &[u8], signer: &SigningKey) -> Vec<u8> {
    let mut out = Vec::with_capacity(PREFIX + body.len() + TRAILER);
    out.extend_from_slice(&magic);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&(body.len() as u64).to_le_bytes());
    out.extend_from_slice(body);
    out.extend_from_slice(&Sha256::digest(body));
    out.extend_from_slice(&fingerprint(&signer.verifying_key()));
    let signature = signer.sign(&out);
    out.extend_from_slice(&signature.to_bytes());
    out
}

/// The body of a framed file, once size, magic, version, length, checksum, signer and
/// signature check, in that order.
fn unframe<'a>(
    magic: [u8; 8],
    bytes: &'a [u8],
    trusted: &VerifyingKey,
) -> Result<&'a [u8], BundleError> {
    if bytes.len() < PREFIX + TRAILER {
        return Err(BundleError::Truncated {
            len: bytes.len() as u64,
            expected: (PREFIX + TRAILER) as u64,
        });
    }
    if bytes[..8] != magic {
        return Err(BundleError::BadMagic);
    }
    let version = u16::from_le_bytes([bytes[8], bytes[9]]);
    if version != FORMAT_VERSION {
        return Err(BundleError::Version { found: version });
    }
    let body_len = u64::from_le_bytes(bytes[10..18].try_into().expect("8 bytes"));
    let expected = (PREFIX as u64)
        .checked_add(body_len)
        .and_then(|v| v.checked_add(TRAILER as u64));
    match expected {
        Some(e) if e == bytes.len() as u64 => {}
        Some(e) if e > bytes.len() as u64 => {
            return Err(BundleError::Truncated {
                len: bytes.len() as u64,
                expected: e,
            });
        }
        _ => return Err(BundleError::TrailingBytes),
    }
    let body_end = PREFIX + body_len as usize;
    let body = &bytes[PREFIX..body_end];
    if Sha256::digest(body)[..] != bytes[body_end..body_end + 32] {
        return Err(BundleError::Checksum);
    }
    let signer = &bytes[body_end + 32..body_end + 40];
    if signer == [0u8; 8] {
        return Err(BundleError::Unsigned);
    }
    if signer != fingerprint(trusted) {
        return Err(BundleError::WrongSigner {
            signer: hex(signer),
            trusted: hex(&fingerprint(trusted)),
        });
    }
    let signature = Signature::from_bytes(bytes[body_end + 40..].try_into().expect("64 bytes"));
    trusted
        .verify_strict(&bytes[..body_end + 40], &signature)
        .map_err(|_| BundleError::BadSignature)?;
    Ok(body)
}

impl EdgeBundle {
    /// Serialise and sign.
    pub fn to_bytes(&self, signer: &SigningKey) -> Vec<u8> {
        let body = postcard::to_allocvec(self).expect("serialising to a Vec cannot fail");
        sign_body(&body, signer)
    }

    /// Verify and decode a bundle signed by `trusted`.
    pub fn from_bytes(bytes: &[u8], trusted: &VerifyingKey) -> Result<Self, BundleError> {
        let body = unframe(MAGIC, bytes, trusted)?;
        let bundle: EdgeBundle =
            postcard::from_bytes(body).map_err(|e| BundleError::Undecodable(e.to_string()))?;
        bundle.check()?;
        Ok(bundle)
    }

    fn check(&self) -> Result<(), BundleError> {
        let p = self.header.params;
        // The bootstrap's gadget may be one of the allowed levels (act's accuracy knob); the
        // keys are the key set's, at the shipped set.
        if !p.is_shipped()
            || (p.pbs.level.0 != 1 && self.model.variant() != crate::model::quant::Variant::Act)
            || self.keys.public.params != ParameterSet::for_level(p.security)
        {
            return Err(BundleError::Inconsistent(format!(
                "parameter set does not match the shipped {}-bit set",
                p.security
            )));
        }
        if key_id(&self.keys.public) != self.header.key_id {
            return Err(BundleError::Inconsistent(
                "keys do not match the header's key id".into(),
            ));
        }
        if self.model.variant() != self.header.model.variant {
            return Err(BundleError::Inconsistent(
                "model and header disagree on the variant".into(),
            ));
        }
        Ok(())
    }

    /// Expand into a ready engine.
    pub fn engine(&self) -> Result<EdgeEngine, BundleError> {
        Ok(EdgeEngine::new(
            self.header.model.clone(),
            self.header.params,
            self.header.key_id,
            self.keys.clone(),
            &self.model,
        )?)
    }

    /// [`Self::engine`], giving up the bundle: its seeded keys are freed as they are expanded,
    /// so the load's peak holds one form of each key (what the board does).
    pub fn into_engine(self) -> Result<EdgeEngine, BundleError> {
        Ok(EdgeEngine::new(
            self.header.model,
            self.header.params,
            self.header.key_id,
            self.keys,
            &self.model,
        )?)
    }
}

/// Magic of a model update: a bundle without its keys.
pub(crate) const UPDATE_MAGIC: [u8; 8] = *b"HEDGEUPD";

/// Keys once, models many: a bundle's header, encrypted model and extractor, to run under
/// the keys of a bundle the board already holds (same key set, same parameters). Framed and
/// signed like a bundle, under its own magic, so neither can pass for the other.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct ModelUpdate {
    /// The id of the full bundle it was cut from: results name it, and the registry knows it.
    pub bundle_id: String,
    pub header: BundleHeader,
    pub model: EncryptedModel,
    pub extractor: Option<PlainExtractor>,
}

impl ModelUpdate {
    /// The update carrying `bundle` (whose signed bytes have id `bundle_id`).
    #[cfg(any(feature = "backend", test))]
    pub fn of(bundle: EdgeBundle, bundle_id: String) -> Self {
        Self {
            bundle_id,
            header: bundle.header,
            model: bundle.model,
            extractor: bundle.extractor,
        }
    }

    #[cfg(any(feature = "backend", test))]
    pub fn to_bytes(&self, signer: &SigningKey) -> Vec<u8> {
        let body = postcard::to_allocvec(self).expect("serialising to a Vec cannot fail");
        frame(UPDATE_MAGIC, &body, signer)
    }

    pub fn from_bytes(bytes: &[u8], trusted: &VerifyingKey) -> Result<Self, BundleError> {
        let body = unframe(UPDATE_MAGIC, bytes, trusted)?;
        postcard::from_bytes(body).map_err(|e| BundleError::Undecodable(e.to_string()))
    }

    /// The full bundle: this model under `base`'s keys, if they are the ones it was made for.
    pub(crate) fn compose(self, base: EdgeBundle) -> Result<EdgeBundle, BundleError> {
        if base.header.key_id != self.header.key_id || base.header.params != self.header.params {
            return Err(BundleError::Inconsistent(format!(
                "the model update needs key set {} with its {}-bit parameters (gadget level {}); \
                 the board holds {} ({}-bit, level {}): deploy the full bundle",
                hex(&self.header.key_id),
                self.header.params.security,
                self.header.params.pbs.level.0,
                hex(&base.header.key_id),
                base.header.params.security,
                base.header.params.pbs.level.0,
            )));
        }
        let bundle = EdgeBundle {
            header: self.header,
            keys: base.keys,
            model: self.model,
            extractor: self.extractor,
        };
        bundle.check()?;
        Ok(bundle)
    }
}

/// A verified bundle, as read from its file.
pub struct Opened {
    pub bundle: EdgeBundle,
    /// Its identity in logs and results ([`bundle_id`]).
    pub id: String,
    /// Its size in bytes.
    pub len: usize,
}

/// What the edge runs: the bundle expanded.
pub struct Ready {
    pub engine: EdgeEngine,
    /// The plaintext feature extractor, for bundles split from a CNN.
    pub extractor: Option<Extractor>,
    pub id: String,
}

/// Read a bundle file and verify it against `trusted`.
pub fn open(path: &Path, trusted: &VerifyingKey) -> Result<Opened, BundleError> {
    let bytes = crate::files::read(path)?;
    let bundle = EdgeBundle::from_bytes(&bytes, trusted)?;
    Ok(Opened {
        bundle,
        id: bundle_id(&bytes),
        len: bytes.len(),
    })
}

/// Read a model update and the bundle whose keys it runs under, both verified against
/// `trusted`, as the bundle they make.
pub(crate) fn open_update(
    update: &Path,
    base: &Path,
    trusted: &VerifyingKey,
) -> Result<Opened, BundleError> {
    let bytes = crate::files::read(update)?;
    let update = ModelUpdate::from_bytes(&bytes, trusted)?;
    let base = open(base, trusted)?;
    Ok(Opened {
        id: update.bundle_id.clone(),
        bundle: update.compose(base.bundle)?,
        len: bytes.len(),
    })
}

/// [`open`] with the trust anchor read from its file.
pub fn open_verified(path: &Path, verifying_key: &Path) -> Result<Opened, BundleError> {
    open(path, &load_verifying_key(verifying_key)?)
}

impl Opened {
    /// Expand the engine and the extractor.
    pub fn ready(self) -> Result<Ready, BundleError> {
        let extractor = self
            .bundle
            .extractor
            .as_ref()
            .map(|e| e.prepare())
            .transpose()?;
        Ok(Ready {
            engine: self.bundle.into_engine()?,
            extractor,
            id: self.id,
        })
    }
}

/// Read a verifying key file (32 raw bytes): the edge's trust anchor for bundles.
pub fn load_verifying_key(path: &Path) -> Result<VerifyingKey, BundleError> {
    let bytes: [u8; 32] = crate::files::read(path)?
        .try_into()
        .map_err(|_| BundleError::VerifyingKey(format!("{}: not a 32-byte key", path.display())))?;
    VerifyingKey::from_bytes(&bytes)
        .map_err(|_| BundleError::VerifyingKey(format!("{}: invalid key", path.display())))
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
                model: ModelInfo::of(&q, &params).unwrap(),
                created: 0,
                name: "test".into(),
                epoch: 1,
                expected_agreement: None,
            },
            keys: EdgeKeys {
                public: ks.public.clone(),
                evaluation: Some(ks.evaluation.clone()),
            },
            model: EncryptedModel::encrypt(&q, &ks.secret).unwrap().0,
            extractor: None,
        };
        let signer = SigningKey::from_bytes(&[7u8; 32]);
        (bundle.to_bytes(&signer), signer, ks)
    }

    fn rejection(bytes: &[u8], key: &VerifyingKey) -> BundleError {
        match EdgeBundle::from_bytes(bytes, key) {
            Ok(_) => panic!("accepted a bad bundle"),
            Err(e) => e,
        }
    }

    #[test]
    fn a_model_update_runs_only_under_the_keys_it_was_made_for() {
        let (bytes, signer, _) = fixture();
        let key = signer.verifying_key();
        let full = EdgeBundle::from_bytes(&bytes, &key).unwrap();
        let update = ModelUpdate::of(full.clone(), bundle_id(&bytes));
        let update_bytes = update.to_bytes(&signer);
        // No keys: a fraction of the bundle.
        assert!(
            update_bytes.len() * 2 < bytes.len(),
            "{} vs {}",
            update_bytes.len(),
            bytes.len()
        );
        // Neither passes for the other.
        assert!(matches!(
            EdgeBundle::from_bytes(&update_bytes, &key),
            Err(BundleError::BadMagic)
        ));
        assert!(matches!(
            ModelUpdate::from_bytes(&bytes, &key),
            Err(BundleError::BadMagic)
        ));
        let other = SigningKey::from_bytes(&[9u8; 32]);
        assert!(matches!(
            ModelUpdate::from_bytes(&update.to_bytes(&other), &key),
            Err(BundleError::WrongSigner { .. })
        ));
        let composed = ModelUpdate::from_bytes(&update_bytes, &key)
            .unwrap()
            .compose(full.clone())
            .unwrap();
        composed.engine().unwrap();
        // Under another key set: refused, naming what to do.
        let (other_bytes, _, _) = fixture();
        let other_base = EdgeBundle::from_bytes(&other_bytes, &key).unwrap();
        let e = update.compose(other_base).err().unwrap().to_string();
        assert!(e.contains("deploy the full bundle"), "{e}");
    }

    #[test]
    fn round_trip_and_every_rejection() {
        use BundleError::*;
        let (bytes, signer, ks) = fixture();
        let key = signer.verifying_key();
        let b = EdgeBundle::from_bytes(&bytes, &key).unwrap();
        assert_eq!(b.header.key_id, ks.secret.key_id);
        b.engine().unwrap();

        let n = bytes.len();
        assert!(matches!(rejection(&bytes[..n - 1], &key), Truncated { .. }));
        assert!(matches!(rejection(&bytes[..100], &key), Truncated { .. }));
        assert!(matches!(rejection(&bytes[..10], &key), Truncated { .. }));
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(matches!(rejection(&longer, &key), TrailingBytes));
        let mut corrupt = bytes.clone();
        corrupt[PREFIX + 50] ^= 1;
        assert!(matches!(rejection(&corrupt, &key), Checksum));
        let mut wrong_version = bytes.clone();
        wrong_version[8] = 9;
        assert!(matches!(
            rejection(&wrong_version, &key),
            Version { found: 9 }
        ));
        let mut magic = bytes.clone();
        magic[0] = b'X';
        assert!(matches!(rejection(&magic, &key), BadMagic));
        let other = SigningKey::from_bytes(&[9u8; 32]).verifying_key();
        let e = rejection(&bytes, &other);
        assert!(matches!(e, WrongSigner { .. }));
        assert!(e.to_string().contains("signed by key"), "{e}");
        let mut unsigned = bytes.clone();
        unsigned[n - 72..n - 64].fill(0);
        assert!(matches!(rejection(&unsigned, &key), Unsigned));
        let mut forged = bytes.clone();
        forged[n - 1] ^= 1;
        assert!(matches!(rejection(&forged, &key), BadSignature));
        // A re-computed checksum does not save a tampered body: the signature catches it.
        let mut tampered = bytes.clone();
        let body_len = n - PREFIX - TRAILER;
        tampered[PREFIX + 50] ^= 1;
        let sum = Sha256::digest(&tampered[PREFIX..PREFIX + body_len]);
        tampered[PREFIX + body_len..PREFIX + body_len + 32].copy_from_slice(&sum);
        assert!(matches!(rejection(&tampered, &key), BadSignature));
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
