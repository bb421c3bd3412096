//! Lower-case hexadecimal for key ids, identity keys and fingerprints in messages and paths.

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
