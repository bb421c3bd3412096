//! The backend's key directory:
//! - `secret.key`      decryption keys (mode 0600, backend only)
//! - `signing.key`     Ed25519 bundle-signing key (mode 0600, backend only)
//! - `public.key`      public encryption keys
//! - `evaluation.key`  bootstrapping and key-switching keys
//! - `verifying.key`   Ed25519 verifying key: the edge's trust anchor for bundles
//! - `retired/<key id>/` key sets replaced by [`rotate`]: their results still decrypt

use super::{BackendError, Result};
use crate::bundle::load_verifying_key;
use crate::crypto::keys::{self, EvaluationKeys, KeySet, PublicKeys, SecretKeys};
use crate::crypto::params::ParameterSet;
use crate::files::write_atomic;
use crate::progress::Progress;
use ed25519_dalek::{SigningKey, VerifyingKey};
use serde::{de::DeserializeOwned, Serialize};
use std::path::Path;

pub const SECRET_KEY: &str = "secret.key";
pub const SIGNING_KEY: &str = "signing.key";
pub const PUBLIC_KEY: &str = "public.key";
pub const EVALUATION_KEY: &str = "evaluation.key";
pub const VERIFYING_KEY: &str = "verifying.key";
/// Where [`rotate`] moves the key sets it replaces.
pub const RETIRED: &str = "retired";
/// Where [`rotate`] writes the new key set before it takes the current one's place.
const NEXT: &str = "next";
/// The files of one key set (the signing key is the backend's, not a key set's).
const KEY_SET_FILES: [&str; 3] = [SECRET_KEY, PUBLIC_KEY, EVALUATION_KEY];

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

/// Refuse a secret file that group or others can reach (as ssh does), saying how to fix it.
fn check_private(path: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    for (what, p, fix) in [
        ("file", path, "600"),
        ("directory", path.parent().unwrap_or(Path::new(".")), "700"),
    ] {
        let meta = std::fs::metadata(p).map_err(|e| crate::files::IoError::new(p, e))?;
        let mode = meta.permissions().mode() & 0o777;
        // A directory others may traverse but not list or change is fine.
        let open = if what == "file" { 0o077 } else { 0o066 };
        if mode & open != 0 {
            return Err(BackendError::KeyFile(format!(
                "{}: the secret key's {what} {} is readable by group or others (mode {mode:o}); \
                 chmod {fix} {}",
                path.display(),
                p.display(),
                p.display()
            )));
        }
    }
    Ok(())
}

/// Write a secret file: a new file (never an existing one, never through a symlink), 0600,
/// synced.
fn write_secret(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits())
        .open(path)
        .map_err(|e| crate::files::IoError::new(path, e))?;
    f.write_all(bytes)
        .and_then(|_| f.sync_all())
        .map_err(|e| crate::files::IoError::new(path, e))?;
    Ok(())
}

/// Generate and write a key directory (mode 0700; keys are never overwritten).
pub fn keygen(params: ParameterSet, dir: &Path, progress: &dyn Progress) -> Result<BackendKeys> {
    use std::os::unix::fs::DirBuilderExt;
    if dir.join(SECRET_KEY).exists() || dir.join(SIGNING_KEY).exists() {
        return Err(BackendError::KeyFile(format!(
            "{}: keys exist already (keygen never overwrites keys: choose another directory)",
            dir.display()
        )));
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| crate::files::IoError::new(dir, e))?;
    // An existing directory keeps its owner but not a mode others can enter.
    std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))
        .map_err(|e| crate::files::IoError::new(dir, e))?;
    progress.stage("generating the secret, public and evaluation keys");
    let KeySet {
        secret,
        public,
        evaluation,
    } = keys::generate(params);
    progress.stage("writing the key directory");
    let signer = SigningKey::generate(&mut rand::rngs::OsRng);
    write_secret(
        &dir.join(SECRET_KEY),
        &zeroize::Zeroizing::new(secret.to_bytes()),
    )?;
    write_secret(&dir.join(SIGNING_KEY), signer.to_bytes().as_ref())?;
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
    record_secret(&keys.secret, dir, registry)
}

fn record_secret(secret: &SecretKeys, dir: &Path, registry: &Path) -> Result<()> {
    let secret_key = std::fs::canonicalize(dir.join(SECRET_KEY))
        .map_err(|e| crate::files::IoError::new(dir.join(SECRET_KEY), e))?;
    super::registry::Registry::open(registry)?.add_key_set(&super::registry::KeySetRecord {
        id: secret.key_id,
        security: secret.params.security.bits(),
        secret_key,
    })
}

fn private_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| crate::files::IoError::new(dir, e).into())
}

fn rename(from: &Path, to: &Path) -> Result<()> {
    std::fs::rename(from, to).map_err(|e| crate::files::IoError::new(from, e).into())
}

/// Key rotation: a new key set (at `params`) takes the place of the one in `dir`, which moves
/// to `dir/retired/<key id>/` with the registry pointing there, so that its results still
/// decrypt. The bundle-signing key stays (it is the boards' trust anchor): bundles protected
/// from now on use the new keys, and a deployment moves boards to them. Returns the retired
/// key set's id and the new keys.
pub fn rotate(
    dir: &Path,
    params: ParameterSet,
    registry: &Path,
    progress: &dyn Progress,
) -> Result<(keys::KeyId, BackendKeys)> {
    let current = BackendKeys::load(dir)?;
    let next = dir.join(NEXT);
    if next.exists() {
        return Err(BackendError::KeyFile(format!(
            "{}: an earlier rotation was interrupted; move its files away (or delete it: it \
             holds only keys no bundle uses yet) and rotate again",
            next.display()
        )));
    }
    // The new set, complete and synced, beside the current one.
    private_dir(&next)?;
    progress.stage("generating the new secret, public and evaluation keys");
    let KeySet {
        secret,
        public,
        evaluation,
    } = keys::generate(params);
    write_secret(
        &next.join(SECRET_KEY),
        &zeroize::Zeroizing::new(secret.to_bytes()),
    )?;
    write_atomic(&next.join(PUBLIC_KEY), &encode(&public), 0o644)?;
    write_atomic(&next.join(EVALUATION_KEY), &encode(&evaluation), 0o644)?;
    // The current set retired, the registry told where its secret key went.
    progress.stage("retiring the current key set");
    let old_id = current.secret.key_id;
    let retired = dir.join(RETIRED).join(crate::hex::hex(&old_id));
    private_dir(&retired)?;
    for f in KEY_SET_FILES {
        rename(&dir.join(f), &retired.join(f))?;
    }
    record_secret(&current.secret, &retired, registry)?;
    // The new set in its place.
    for f in KEY_SET_FILES {
        rename(&next.join(f), &dir.join(f))?;
    }
    std::fs::remove_dir(&next).map_err(|e| crate::files::IoError::new(&next, e))?;
    let keys = BackendKeys {
        secret,
        public,
        evaluation,
        signer: current.signer,
    };
    record(&keys, dir, registry)?;
    Ok((old_id, keys))
}

pub fn load_secret(dir: &Path) -> Result<SecretKeys> {
    let path = dir.join(SECRET_KEY);
    check_private(&path)?;
    SecretKeys::from_bytes(&zeroize::Zeroizing::new(read(&path)?))
        .map_err(|e| BackendError::KeyFile(format!("{}: {e}", path.display())))
}

/// For the process that holds secret keys: no core dumps or ptrace by other users
/// (PR_SET_DUMPABLE 0), and the keys' pages locked in memory so they never reach swap (where
/// RLIMIT_MEMLOCK allows; a refusal is logged, not fatal).
pub fn harden(keys: &SecretKeys) {
    if let Err(e) = nix::sys::prctl::set_dumpable(false) {
        log::warn!("cannot mark the process non-dumpable: {e}");
    }
    for words in keys.words() {
        let Some(ptr) = std::ptr::NonNull::new(words.as_ptr() as *mut std::ffi::c_void) else {
            continue;
        };
        // SAFETY: the range is a live allocation of the key; mlock only pins its pages.
        if let Err(e) = unsafe { nix::sys::mman::mlock(ptr, std::mem::size_of_val(words)) } {
            log::warn!("cannot lock the secret key in memory: {e}");
            return;
        }
    }
}

pub fn load_public(dir: &Path) -> Result<PublicKeys> {
    decode(&dir.join(PUBLIC_KEY))
}

pub(crate) fn load_evaluation(dir: &Path) -> Result<EvaluationKeys> {
    decode(&dir.join(EVALUATION_KEY))
}

pub fn load_signing(dir: &Path) -> Result<SigningKey> {
    let path = dir.join(SIGNING_KEY);
    check_private(&path)?;
    let raw = zeroize::Zeroizing::new(read(&path)?);
    let bytes: [u8; 32] = raw.as_slice().try_into().map_err(|_| {
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn keys_are_private_and_never_overwritten() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("keys");
        let params = ParameterSet::for_level(crate::crypto::params::SecurityLevel::L128);
        keygen(params, &dir, &crate::progress::Silent).unwrap();
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&dir.join(SECRET_KEY)), 0o600);
        assert_eq!(mode(&dir.join(SIGNING_KEY)), 0o600);
        BackendKeys::load(&dir).unwrap();
        let again = keygen(params, &dir, &crate::progress::Silent)
            .err()
            .unwrap();
        assert!(again.to_string().contains("never overwrites"), "{again}");
        // A secret readable by others is refused, with the fix.
        std::fs::set_permissions(dir.join(SECRET_KEY), PermissionsExt::from_mode(0o644)).unwrap();
        let e = load_secret(&dir).err().unwrap().to_string();
        assert!(e.contains("chmod 600"), "{e}");
        std::fs::set_permissions(dir.join(SECRET_KEY), PermissionsExt::from_mode(0o600)).unwrap();
        std::fs::set_permissions(&dir, PermissionsExt::from_mode(0o755)).unwrap();
        let e = load_signing(&dir).err().unwrap().to_string();
        assert!(e.contains("chmod 700"), "{e}");
        std::fs::set_permissions(&dir, PermissionsExt::from_mode(0o711)).unwrap();
        load_signing(&dir).unwrap();
        // A symlink planted where a secret would go is not followed.
        let planted = root.path().join("planted");
        std::fs::create_dir(&planted).unwrap();
        std::os::unix::fs::symlink(root.path().join("elsewhere"), planted.join(SECRET_KEY))
            .unwrap();
        assert!(keygen(params, &planted, &crate::progress::Silent).is_err());
        assert!(!root.path().join("elsewhere").exists());
    }

    #[test]
    fn rotation_retires_the_key_set_and_keeps_the_signer() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("keys");
        let registry = root.path().join("registry.sqlite");
        let params = ParameterSet::for_level(crate::crypto::params::SecurityLevel::L128);
        let first = keygen(params, &dir, &crate::progress::Silent).unwrap();
        record(&first, &dir, &registry).unwrap();
        let (old, next) = rotate(&dir, params, &registry, &crate::progress::Silent).unwrap();
        assert_eq!(old, first.secret.key_id);
        assert_ne!(next.secret.key_id, old);
        assert_eq!(next.signer.to_bytes(), first.signer.to_bytes());
        let loaded = BackendKeys::load(&dir).unwrap();
        assert_eq!(loaded.secret.key_id, next.secret.key_id);
        let retired = dir.join(RETIRED).join(crate::hex::hex(&old));
        assert_eq!(mode(&retired), 0o700);
        assert_eq!(mode(&retired.join(SECRET_KEY)), 0o600);
        assert_eq!(load_secret(&retired).unwrap().key_id, old);
        // The registry finds both secret keys.
        let r = crate::backend::registry::Registry::open(&registry).unwrap();
        let set = r.key_set(&old).unwrap().unwrap();
        assert_eq!(
            set.secret_key,
            std::fs::canonicalize(retired.join(SECRET_KEY)).unwrap()
        );
        assert!(r.key_set(&next.secret.key_id).unwrap().is_some());
        // An interrupted rotation is not run over.
        std::fs::create_dir(dir.join(NEXT)).unwrap();
        let e = rotate(&dir, params, &registry, &crate::progress::Silent)
            .err()
            .unwrap();
        assert!(e.to_string().contains("interrupted"), "{e}");
    }
}
