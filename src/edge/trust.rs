//! The board's one trust anchor: the backend's verifying key. Bundles (configured, reloaded or
//! deployed), deployment offers and end-to-end acknowledgements are all checked against the
//! same key, read at start and replaced only by a SIGHUP whose bundle verifies under the new
//! key — so the three can never disagree on whom the board trusts.

use super::error::EdgeError;
use ed25519_dalek::VerifyingKey;
use std::path::Path;
use std::sync::{Arc, RwLock};

#[derive(Clone, Debug)]
pub(crate) struct TrustAnchor(Arc<RwLock<VerifyingKey>>);

impl TrustAnchor {
    pub fn new(key: VerifyingKey) -> Self {
        Self(Arc::new(RwLock::new(key)))
    }

    /// The key file named by the settings (`verifying_key`).
    pub fn read(path: &Path) -> Result<VerifyingKey, EdgeError> {
        crate::bundle::load_verifying_key(path).map_err(|e| EdgeError::BundleFile {
            path: path.display().to_string(),
            cause: e,
        })
    }

    /// The key trusted now.
    pub fn key(&self) -> VerifyingKey {
        *self.0.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Trust `key` from now on (a reload whose bundle verified under it).
    pub fn replace(&self, key: VerifyingKey) {
        let mut k = self.0.write().unwrap_or_else(|p| p.into_inner());
        if *k != key {
            log::warn!(
                "the backend's verifying key changed: {} now",
                crate::hex::hex(key.as_bytes())
            );
        }
        *k = key;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::SigningKey;

    #[test]
    fn clones_share_one_key() {
        let old = SigningKey::from_bytes(&[1; 32]).verifying_key();
        let new = SigningKey::from_bytes(&[2; 32]).verifying_key();
        let anchor = TrustAnchor::new(old);
        let publisher_copy = anchor.clone();
        anchor.replace(new);
        assert_eq!(publisher_copy.key(), new);
    }
}
