//! Backend tasks: the key directory, protection (quantise + encrypt + sign) and the result
//! file format.
//!
//! Key directory:
//! - `secret.key`      decryption keys (mode 0600, backend only)
//! - `signing.key`     Ed25519 bundle-signing key (mode 0600, backend only)
//! - `public.key`      public encryption keys
//! - `evaluation.key`  bootstrapping and key-switching keys
//! - `verifying.key`   Ed25519 verifying key: the edge's trust anchor for bundles

use crate::bundle::{BundleHeader, EdgeBundle};
use crate::crypto::keys::{self, EdgeKeys, EvaluationKeys, KeySet, PublicKeys, SecretKeys};
use crate::crypto::lut::Activation;
use crate::crypto::params::ParameterSet;
use crate::engine::{EncryptedModel, ModelInfo, ResultCiphertext};
use crate::error::{Error, Result};
use crate::model::quant::{QuantModel, Variant};
use crate::model::Classifier;
use ed25519_dalek::{SigningKey, VerifyingKey};
use serde::{de::DeserializeOwned, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};

pub const SECRET_KEY: &str = "secret.key";
pub const SIGNING_KEY: &str = "signing.key";
pub const PUBLIC_KEY: &str = "public.key";
pub const EVALUATION_KEY: &str = "evaluation.key";
pub const VERIFYING_KEY: &str = "verifying.key";

/// Write a file atomically (temporary file, fsync, rename), with `mode` on Unix. A full disk or
/// any other failure leaves the previous file untouched.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.tmp{}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("file"),
        std::process::id()
    ));
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    result.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::io(path, e)
    })
}

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| Error::io(path, e))
}

fn decode<T: DeserializeOwned>(path: &Path) -> Result<T> {
    postcard::from_bytes(&read(path)?)
        .map_err(|e| Error::Malformed(format!("{}: {e}", path.display())))
}

fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    postcard::to_allocvec(v).expect("serialising to a Vec cannot fail")
}

/// Everything the backend holds: all keys plus the bundle-signing key.
pub struct BackendKeys {
    pub secret: SecretKeys,
    pub public: PublicKeys,
    pub evaluation: EvaluationKeys,
    pub signer: SigningKey,
}

impl BackendKeys {
    /// Load a key directory, checking that its parts belong together.
    pub fn load(dir: &Path) -> Result<Self> {
        let keys = Self {
            secret: load_secret(dir)?,
            public: load_public(dir)?,
            evaluation: load_evaluation(dir)?,
            signer: load_signing(dir)?,
        };
        if keys::key_id(&keys.public) != keys.secret.key_id {
            return Err(Error::KeyMismatch(format!(
                "{}: public.key and secret.key come from different key generations",
                dir.display()
            )));
        }
        Ok(keys)
    }
}

/// Generate and write a key directory.
pub fn keygen(params: ParameterSet, dir: &Path) -> Result<BackendKeys> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let KeySet {
        secret,
        public,
        evaluation,
    } = keys::generate(params);
    let signer = SigningKey::generate(&mut rand::rngs::OsRng);
    write_atomic(&dir.join(SECRET_KEY), &secret.to_bytes(), 0o600)?;
    write_atomic(&dir.join(SIGNING_KEY), &signer.to_bytes(), 0o600)?;
    write_atomic(&dir.join(PUBLIC_KEY), &encode(&public), 0o644)?;
    write_atomic(&dir.join(EVALUATION_KEY), &encode(&evaluation), 0o644)?;
    write_atomic(
        &dir.join(VERIFYING_KEY),
        signer.verifying_key().as_bytes(),
        0o644,
    )?;
    Ok(BackendKeys {
        secret,
        public,
        evaluation,
        signer,
    })
}

pub fn load_secret(dir: &Path) -> Result<SecretKeys> {
    SecretKeys::from_bytes(&read(&dir.join(SECRET_KEY))?)
}

pub fn load_public(dir: &Path) -> Result<PublicKeys> {
    decode(&dir.join(PUBLIC_KEY))
}

pub fn load_evaluation(dir: &Path) -> Result<EvaluationKeys> {
    decode(&dir.join(EVALUATION_KEY))
}

pub fn load_signing(dir: &Path) -> Result<SigningKey> {
    let path = dir.join(SIGNING_KEY);
    let bytes: [u8; 32] = read(&path)?
        .try_into()
        .map_err(|_| Error::Malformed(format!("{}: not a 32-byte signing key", path.display())))?;
    Ok(SigningKey::from_bytes(&bytes))
}

/// Read a verifying key file (32 raw bytes).
pub fn load_verifying(path: &Path) -> Result<VerifyingKey> {
    let bytes: [u8; 32] = read(path)?.try_into().map_err(|_| {
        Error::Malformed(format!("{}: not a 32-byte verifying key", path.display()))
    })?;
    VerifyingKey::from_bytes(&bytes)
        .map_err(|_| Error::Malformed(format!("{}: invalid verifying key", path.display())))
}

/// The verifying key to trust: an explicit file, else the key directory's.
pub fn trusted_key(verifying: Option<&Path>, keys: Option<&Path>) -> Result<VerifyingKey> {
    match (verifying, keys) {
        (Some(v), _) => load_verifying(v),
        (None, Some(k)) => load_verifying(&k.join(VERIFYING_KEY)),
        (None, None) => Err(Error::Malformed(
            "no verifying key: pass --verifying-key or --keys".into(),
        )),
    }
}

/// Everything protection produced.
pub struct Protected {
    pub bundle: EdgeBundle,
    pub quant: QuantModel,
    pub bytes: Vec<u8>,
}

/// Quantise, encrypt and sign a classifier for one variant.
pub fn protect(
    keys: &BackendKeys,
    model: &Classifier,
    variant: Variant,
    activation: Option<Activation>,
    calibration: &[Vec<f32>],
    name: &str,
    extractor: Option<crate::bundle::PlainExtractor>,
) -> Result<Protected> {
    let BackendKeys {
        secret,
        public,
        evaluation,
        signer,
    } = keys;
    let quant = QuantModel::quantize(model, variant, activation, calibration, &secret.params)?;
    let bundle = EdgeBundle {
        header: BundleHeader {
            params: secret.params,
            key_id: secret.key_id,
            model: ModelInfo::of(&quant),
            created: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            name: name.to_string(),
        },
        keys: EdgeKeys {
            public: public.clone(),
            // Only the bootstrapping variant needs evaluation keys.
            evaluation: (variant == Variant::Act).then(|| evaluation.clone()),
        },
        model: EncryptedModel::encrypt(&quant, secret)?,
        extractor,
    };
    let bytes = bundle.to_bytes(signer);
    Ok(Protected {
        bundle,
        quant,
        bytes,
    })
}

/// Result files and MQTT payloads: a version byte, then the postcard result.
pub const RESULT_VERSION: u8 = 1;

pub fn encode_result(r: &ResultCiphertext) -> Vec<u8> {
    let mut out = vec![RESULT_VERSION];
    out.extend(encode(r));
    out
}

pub fn decode_result(bytes: &[u8]) -> Result<ResultCiphertext> {
    match bytes.split_first() {
        Some((&RESULT_VERSION, body)) => {
            postcard::from_bytes(body).map_err(|e| Error::Malformed(format!("result payload: {e}")))
        }
        Some((v, _)) => Err(Error::Malformed(format!(
            "result format version {v}, expected {RESULT_VERSION}"
        ))),
        None => Err(Error::Malformed("empty result payload".into())),
    }
}

/// Where the bundle of a variant goes by default.
pub fn default_bundle_path(dir: &Path, variant: Variant) -> PathBuf {
    dir.join(format!("{}.bundle", variant.name()))
}
