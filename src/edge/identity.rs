//! The board's identity: an Ed25519 key it signs every result with, so the backend can tell
//! its results from forgeries. Created on first start in the state directory (mode 0600, never
//! overwritten) or provisioned in its place; `hedged --print-identity` prints the public half
//! for `hedge device add`. The private half never leaves the board.

use super::error::EdgeError;
use crate::files::IoError;
use ed25519_dalek::SigningKey;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// The key at `path`, created if there is none. A key file that group or others can read is
/// refused (as ssh refuses one), with how to fix it.
pub fn load_or_create(path: &Path) -> Result<SigningKey, EdgeError> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) => {
            if !meta.file_type().is_file() {
                return Err(EdgeError::Settings(format!(
                    "{}: the identity key is not a regular file",
                    path.display()
                )));
            }
            if meta.permissions().mode() & 0o077 != 0 {
                return Err(EdgeError::Settings(format!(
                    "{}: the identity key is readable by others (mode {:o}); \
                     chmod 600 {}",
                    path.display(),
                    meta.permissions().mode() & 0o777,
                    path.display()
                )));
            }
            let bytes: [u8; 32] = crate::files::read(path)?.try_into().map_err(|_| {
                EdgeError::Settings(format!("{}: not a 32-byte identity key", path.display()))
            })?;
            Ok(SigningKey::from_bytes(&bytes))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                crate::files::create_dir_all(dir)?;
            }
            let key = SigningKey::generate(&mut rand::rngs::OsRng);
            // create_new: never replaces a file that appeared meanwhile, and does not follow a
            // symlink planted at the path.
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .map_err(|e| IoError::new(path, e))?;
            f.write_all(&key.to_bytes())
                .and_then(|_| f.sync_all())
                .map_err(|e| IoError::new(path, e))?;
            log::info!(
                "created the identity key {} (public key {})",
                path.display(),
                crate::hex::hex(key.verifying_key().as_bytes())
            );
            Ok(key)
        }
        Err(e) => Err(IoError::new(path, e).into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_once_private_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state/identity.key");
        let a = load_or_create(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let b = load_or_create(&path).unwrap();
        assert_eq!(a.to_bytes(), b.to_bytes());
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = load_or_create(&path).unwrap_err().to_string();
        assert!(e.contains("chmod 600"), "{e}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::write(&path, b"short").unwrap();
        assert!(load_or_create(&path).is_err());
    }
}
