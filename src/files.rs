//! File helpers shared by the edge and the backend: atomic writes and I/O errors that name
//! their path.

use std::io::Write;
use std::path::Path;

/// An I/O failure on a named path (or on a named thing that is not a path: "output", …).
#[derive(Debug, thiserror::Error)]
// The cause is part of the message (logs print errors with `{}`), so it is not also exposed as
// `source()`, which would print it twice in an error chain.
#[error("I/O error on {path}: {cause}")]
pub struct IoError {
    pub path: String,
    pub cause: std::io::Error,
}

impl IoError {
    pub fn new(path: impl AsRef<Path>, cause: std::io::Error) -> Self {
        Self {
            path: path.as_ref().display().to_string(),
            cause,
        }
    }

    pub fn kind(&self) -> std::io::ErrorKind {
        self.cause.kind()
    }
}

/// Read a whole file.
pub fn read(path: &Path) -> Result<Vec<u8>, IoError> {
    std::fs::read(path).map_err(|e| IoError::new(path, e))
}

/// Write a file atomically (temporary file, fsync, rename, fsync of the directory), with
/// `mode` on Unix. A full disk or any other failure leaves the previous file untouched.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), IoError> {
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
        sync_dir(dir);
        Ok(())
    })();
    result.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        IoError::new(path, e)
    })
}

/// fsync a directory, so that a rename in it survives a power loss (best effort: some file
/// systems refuse to sync a directory).
pub(crate) fn sync_dir(dir: &Path) {
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = nix::unistd::fsync(&d);
    }
}

/// Create a directory and its parents.
pub fn create_dir_all(dir: &Path) -> Result<(), IoError> {
    std::fs::create_dir_all(dir).map_err(|e| IoError::new(dir, e))
}
