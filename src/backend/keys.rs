//! The backend's key directory:
//! - `secret.key`      decryption keys (mode 0600, backend only)
//! - `signing.key`     Ed25519 bundle-signing key (mode 0600, backend only)
//! - `public.key`      public encryption keys
//! - `evaluation.key`  bootstrapping and key-switching keys
//! - `verifying.key`   Ed25519 verifying key: the edge's trust anchor for bundles

use super::{BackendError, Result};
use crate::bundle::load_verifying_key;
use crate::crypto::keys::{self, EvaluationKeys, KeySet, PublicKeys, SecretKeys};
use crate::crypto::params::ParameterSet;
use crate::files::{create_dir_all, write_atomic};
use crate::progress::Progress;
use ed25519_dalek::{SigningKey, VerifyingKey};
use serde::{de::DeserializeOwned, Serialize};
use std::path::Path;

pub const SECRET_KEY: &str = "secret.key";
pub const SIGNING_KEY: &str = "signing.key";
pub const PUBLIC_KEY: &str = "public.key";
pub const EVALUATION_KEY: &str = "evaluation.key";
pub const VERIFYING_KEY: &str = "verifying.key";

fn read(path: &Path) -> Result<Vec<u8>> {
    Ok(crate::files::read(path)?)
}

fn decode<T: DeserializeOwned>(path: &Path) -> Result<T> {
    postcard::from_bytes(&read(path)?)
        .map_err(|e| BackendError::KeyFile(format!("{}: {e}", path.display())))
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
            return Err(BackendError::KeyFile(format!(
                "{}: public.key and secret.key come from different key generations",
                dir.display()
            )));
        }
        Ok(keys)
    }
}

/// Generate and write a key directory.
pub fn keygen(params: ParameterSet, dir: &Path, progress: &dyn Progress) -> Result<BackendKeys> {
    create_dir_all(dir)?;
    progress.stage("generating the secret, public and evaluation keys");
    let KeySet {
        secret,
        public,
        evaluation,
    } = keys::generate(params);
    progress.stage("writing the key directory");
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

/// Record a key set in the registry: its id, level and where its secret key lives (the key
/// itself stays in its 0600 file).
pub fn record(keys: &BackendKeys, dir: &Path, registry: &Path) -> Result<()> {
    let secret_key = std::fs::canonicalize(dir.join(SECRET_KEY))
        .map_err(|e| crate::files::IoError::new(dir.join(SECRET_KEY), e))?;
    super::registry::Registry::open(registry)?.add_key_set(&super::registry::KeySetRecord {
        id: keys.secret.key_id,
        security: keys.secret.params.security.bits(),
        secret_key,
    })
}

pub fn load_secret(dir: &Path) -> Result<SecretKeys> {
    let path = dir.join(SECRET_KEY);
    SecretKeys::from_bytes(&read(&path)?)
        .map_err(|e| BackendError::KeyFile(format!("{}: {e}", path.display())))
}

pub fn load_public(dir: &Path) -> Result<PublicKeys> {
    decode(&dir.join(PUBLIC_KEY))
}

pub fn load_evaluation(dir: &Path) -> Result<EvaluationKeys> {
    decode(&dir.join(EVALUATION_KEY))
}

pub fn load_signing(dir: &Path) -> Result<SigningKey> {
    let path = dir.join(SIGNING_KEY);
    let bytes: [u8; 32] = read(&path)?.try_into().map_err(|_| {
        BackendError::KeyFile(format!("{}: not a 32-byte signing key", path.display()))
    })?;
    Ok(SigningKey::from_bytes(&bytes))
}

/// The verifying key to trust: an explicit file, else the key directory's.
pub fn trusted_key(verifying: Option<&Path>, keys: Option<&Path>) -> Result<VerifyingKey> {
    match (verifying, keys) {
        (Some(v), _) => Ok(load_verifying_key(v)?),
        (None, Some(k)) => Ok(load_verifying_key(&k.join(VERIFYING_KEY))?),
        (None, None) => Err(BackendError::KeyFile(
            "no verifying key: pass --verifying-key or --keys".into(),
        )),
    }
}
