//! The decryption agent's JSON-lines file, never holding a torn or uncommitted line. Each
//! batch's lines are written and synced, then their results committed in the registry
//! together with where the file then ends (`Registry::accept_all`, keyed by host and path);
//! a crash between the two leaves bytes past the committed end — a torn line, or whole lines
//! whose results were not accepted and will be written again when the broker redelivers
//! them — and [`open`] cuts them off before the agent starts. Synced before the commit, the
//! file never ends before what the registry says was written.

use super::registry::Registry;
use super::Result;
use crate::files::IoError;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

/// What [`open`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Repair {
    /// The file ends where the registry says.
    Clean,
    /// Bytes written after the last commit were removed (`lines` of them whole lines).
    Uncommitted { bytes: u64, lines: usize },
    /// A file the registry has no record of ended in a partial line, removed.
    TornLine { bytes: u64 },
    /// The file is shorter than the registry's record (rotated or truncated by someone):
    /// kept as it is, the record starts over from its end.
    Shorter { recorded: u64, found: u64 },
}

/// An agent's output, open for appending, with its name in the registry and its end.
pub struct AgentOutput {
    pub file: File,
    /// The registry's key: the file's canonical path.
    pub name: String,
    pub end: u64,
}

/// Open (creating) `path` for appending, cut back to its last committed end.
pub fn open(path: &Path, registry: &Registry) -> Result<(AgentOutput, Repair)> {
    let io = |e| IoError::new(path, e);
    let mut file = OpenOptions::new()
        .create(true)
        .read(true)
        .append(true)
        .open(path)
        .map_err(io)?;
    // Agents on several hosts may share a PostgreSQL registry and use the same path: the
    // record is per host and file.
    let host = nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_default();
    let name = format!("{host}:{}", path.canonicalize().map_err(io)?.display());
    let len = file.metadata().map_err(io)?.len();
    let (end, repair) = match registry.output_end(&name)? {
        Some(recorded) if recorded == len => (len, Repair::Clean),
        Some(recorded) if recorded < len => {
            let lines = newlines_from(&mut file, recorded).map_err(io)?;
            (
                recorded,
                Repair::Uncommitted {
                    bytes: len - recorded,
                    lines,
                },
            )
        }
        // Rotated, or a power loss took more than the last commit (the output is synced
        // before each commit, so only if the disk lied): keep whole lines.
        Some(recorded) => (
            last_line_end(&mut file, len).map_err(io)?,
            Repair::Shorter {
                recorded,
                found: len,
            },
        ),
        None => {
            // Cut back to the last newline: only a crash leaves a partial line.
            let keep = last_line_end(&mut file, len).map_err(io)?;
            let repair = if keep == len {
                Repair::Clean
            } else {
                Repair::TornLine { bytes: len - keep }
            };
            (keep, repair)
        }
    };
    if end < len {
        file.set_len(end).map_err(io)?;
        file.sync_all().map_err(io)?;
    }
    registry.set_output_end(&name, end)?;
    Ok((AgentOutput { file, name, end }, repair))
}

/// Newlines from `from` to the end, read a block at a time.
fn newlines_from(file: &mut File, from: u64) -> std::io::Result<usize> {
    file.seek(SeekFrom::Start(from))?;
    let mut block = vec![0u8; 64 << 10];
    let mut lines = 0;
    loop {
        let n = file.read(&mut block)?;
        if n == 0 {
            return Ok(lines);
        }
        lines += block[..n].iter().filter(|&&b| b == b'\n').count();
    }
}

/// The offset just after the last newline of the file's first `len` bytes (0 if none).
fn last_line_end(file: &mut File, len: u64) -> std::io::Result<u64> {
    let mut at = len;
    let mut block = vec![0u8; 64 << 10];
    while at > 0 {
        let from = at.saturating_sub(block.len() as u64);
        let n = (at - from) as usize;
        file.seek(SeekFrom::Start(from))?;
        file.read_exact(&mut block[..n])?;
        if let Some(i) = block[..n].iter().rposition(|&b| b == b'\n') {
            return Ok(from + i as u64 + 1);
        }
        at = from;
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_crash_between_writing_and_committing_is_cut_off() {
        let dir = tempfile::tempdir().unwrap();
        let registry = Registry::open(&dir.path().join("r.sqlite")).unwrap();
        let path = dir.path().join("out.jsonl");
        // A file from before outputs were recorded, ending in a torn line.
        std::fs::write(&path, "{\"seq\":1}\n{\"seq\":2}\n{\"se").unwrap();
        let (out, repair) = open(&path, &registry).unwrap();
        assert_eq!(repair, Repair::TornLine { bytes: 4 });
        assert_eq!(out.end, 20);
        drop(out);
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "{\"seq\":1}\n{\"seq\":2}\n"
        );
        // Whole lines written after the last commit (the agent killed before committing).
        std::fs::write(&path, "{\"seq\":1}\n{\"seq\":2}\n{\"seq\":3}\n{\"s").unwrap();
        let (out, repair) = open(&path, &registry).unwrap();
        assert_eq!(
            repair,
            Repair::Uncommitted {
                bytes: 13,
                lines: 1
            }
        );
        assert_eq!(out.end, 20);
        drop(out);
        let (_, repair) = open(&path, &registry).unwrap();
        assert_eq!(repair, Repair::Clean);
        // Shorter than recorded and ending mid-line: whole lines kept.
        std::fs::write(&path, "{\"seq\":1}\n{\"s").unwrap();
        let (out, repair) = open(&path, &registry).unwrap();
        assert_eq!(
            repair,
            Repair::Shorter {
                recorded: 20,
                found: 13
            }
        );
        assert_eq!(out.end, 10);
        drop(out);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "{\"seq\":1}\n");
        // Rotated under the agent: kept, the record follows the file.
        std::fs::write(&path, "").unwrap();
        let (out, repair) = open(&path, &registry).unwrap();
        assert_eq!(
            repair,
            Repair::Shorter {
                recorded: 10,
                found: 0
            }
        );
        assert_eq!(out.end, 0);
        assert_eq!(registry.output_end(&out.name).unwrap(), Some(0));
    }
}
