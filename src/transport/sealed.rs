//! Backend-signed messages (acknowledgements, deployment offers): a version byte, a postcard
//! body, and the backend's Ed25519 signature (the bundle-signing key every board already
//! trusts) over a per-kind domain separator and everything before it — so a signature made
//! for one kind of message can never pass for another.

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SealError {
    #[error("{0} bytes is too large")]
    Oversized(usize),
    #[error("version {found}, expected {expected}")]
    Version { found: u8, expected: u8 },
    #[error("undecodable: {0}")]
    Undecodable(String),
    #[error("the signature does not verify (not from the backend)")]
    BadSignature,
}

/// `version | body | signature(domain | version | body)`.
pub(crate) fn seal(domain: &[u8], version: u8, body: &[u8], backend: &SigningKey) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + body.len() + 64);
    out.push(version);
    out.extend_from_slice(body);
    let signature = backend.sign(&[domain, &out].concat());
    out.extend_from_slice(&signature.to_bytes());
    out
}

/// The body of a sealed message, once its size, version and signature check.
pub fn open<'a>(
    domain: &[u8],
    version: u8,
    bytes: &'a [u8],
    max_bytes: usize,
    backend: &VerifyingKey,
) -> Result<&'a [u8], SealError> {
    if bytes.len() > max_bytes {
        return Err(SealError::Oversized(bytes.len()));
    }
    if bytes.len() < 1 + 64 {
        return Err(SealError::Undecodable("too short".into()));
    }
    let (signed, signature) = bytes.split_at(bytes.len() - 64);
    if signed[0] != version {
        return Err(SealError::Version {
            found: signed[0],
            expected: version,
        });
    }
    let signature = Signature::from_bytes(signature.try_into().expect("64 bytes"));
    backend
        .verify_strict(&[domain, signed].concat(), &signature)
        .map_err(|_| SealError::BadSignature)?;
    Ok(&signed[1..])
}
