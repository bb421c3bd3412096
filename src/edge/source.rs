//! The data-stream acquisition side of hedged: sources of feature vectors, each read on its
//! own thread and handed to the scheduler through the bounded queue.
//!
//! Source specs (config `input`, flag `--input`):
//! - `-`: stdin, one vector per line (see [`crate::input::vectors`]);
//! - `PATH`: a file of such lines, replayed once;
//! - `frames:PATH`: a file of frames ([`crate::transport::frame`]), e.g. from
//!   `hedge encrypt-features`;
//! - `unix:PATH`: a Unix stream socket hedged listens on; every connection sends frames.
//!   Connections are served concurrently (up to [`MAX_CONNECTIONS`]); the socket never ends
//!   the input. Access is governed by the socket directory's permissions.
//! - `idx:PATH`: an IDX image file (MNIST format, optionally gzipped), replayed once;
//! - `watch:DIR`: PGM or PNG images dropped into DIR (write elsewhere and rename in; a file is
//!   taken once it is half a second old). Each is moved to DIR/done/ once queued, or to
//!   DIR/rejected/ if it is not a readable image. Never ends the input.
//!
//! A spec with another `scheme:` prefix is refused (write `./PATH` for a file whose name has
//! a colon), so a typo such as `unx:` does not become a file name.
//!
//! Bad input (unparsable lines, bad frames) is rejected and counted; the first rejection of
//! each kind is logged. Nothing a source reads stops the daemon.

use super::error::EdgeError;
use super::queue::BoundedQueue;
use crate::files::IoError;
use crate::input::images::{self, read_idx_images};
use crate::input::vectors::parse_line;
use crate::input::RejectKind;
use crate::transport::frame::{self, FrameError, Input};
use std::collections::HashMap;
use std::io::{BufRead, Read};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// Socket connections served at once; more are refused (and logged).
pub(crate) const MAX_CONNECTIONS: usize = 16;

#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(try_from = "String")]
pub enum Source {
    #[default]
    Stdin,
    Lines(PathBuf),
    Frames(PathBuf),
    Socket(PathBuf),
    Idx(PathBuf),
    Watch(PathBuf),
}

/// Every scheme a source spec may start with (hedged --help lists them too).
pub const SCHEMES: &str = "unix:PATH, frames:PATH, idx:PATH, watch:DIR, a file of vector lines, \
     or - for stdin";

impl std::str::FromStr for Source {
    type Err = String;

    fn from_str(spec: &str) -> Result<Self, String> {
        if spec == "-" {
            return Ok(Source::Stdin);
        }
        let Some((scheme, rest)) = spec.split_once(':') else {
            return Ok(Source::Lines(spec.into()));
        };
        let path = PathBuf::from(rest);
        match scheme {
            "unix" => Ok(Source::Socket(path)),
            "frames" => Ok(Source::Frames(path)),
            "idx" => Ok(Source::Idx(path)),
            "watch" => Ok(Source::Watch(path)),
            // Not a scheme: a path with a colon further on (`./a:b`, `/data/x:y`).
            s if s.is_empty() || !s.chars().all(|c| c.is_ascii_alphanumeric()) => {
                Ok(Source::Lines(spec.into()))
            }
            other => Err(format!(
                "input {spec:?}: unknown scheme \"{other}:\" (expected {SCHEMES}; \
                 ./{spec} for a file of that name)"
            )),
        }
    }
}

impl TryFrom<String> for Source {
    type Error = String;

    fn try_from(spec: String) -> Result<Self, String> {
        spec.parse()
    }
}

/// Rejected inputs: counted, the first of each kind logged. Also carries the width of a
/// vector line the running bundle takes, so that a line of another width is refused where its
/// line number is known.
#[derive(Default)]
pub struct Rejects {
    count: AtomicU64,
    /// Rejections per kind; the first of a kind is logged.
    logged: Mutex<HashMap<RejectKind, u64>>,
    /// 0: not known yet.
    line_width: std::sync::atomic::AtomicUsize,
}

impl Rejects {
    /// The running bundle takes vector lines of `width` values (set at start and on reload).
    pub(crate) fn expect_line_width(&self, width: usize) {
        self.line_width.store(width, Ordering::Relaxed);
    }

    fn line_width(&self) -> Option<usize> {
        Some(self.line_width.load(Ordering::Relaxed)).filter(|&w| w > 0)
    }

    pub(crate) fn reject(&self, kind: RejectKind, what: impl std::fmt::Display) {
        self.count.fetch_add(1, Ordering::Relaxed);
        let first = {
            let mut kinds = self.logged.lock().unwrap_or_else(|p| p.into_inner());
            let n = kinds.entry(kind).or_insert(0);
            *n += 1;
            *n == 1
        };
        if first {
            log::warn!("rejected {what} (further rejections of this kind are only counted)");
        }
    }

    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// Rejections of `kind` so far.
    pub(crate) fn of_kind(&self, kind: RejectKind) -> u64 {
        self.logged
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&kind)
            .copied()
            .unwrap_or(0)
    }

    /// Rejections so far, by kind.
    pub(crate) fn by_kind(&self) -> HashMap<RejectKind, u64> {
        self.logged
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// A running source; dropping it removes the socket file of a socket source.
pub struct Acquisition {
    socket: Option<PathBuf>,
}

impl Drop for Acquisition {
    fn drop(&mut self) {
        if let Some(path) = &self.socket {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Open `source` (errors here are start-up errors) and start reading it on its own thread.
/// File and stdin sources close the queue at their end; a socket source never does.
pub fn start(
    source: &Source,
    queue: Arc<BoundedQueue<Input>>,
    rejects: Arc<Rejects>,
    max_frame: usize,
) -> Result<Acquisition, EdgeError> {
    let spawn = |f: Box<dyn FnOnce() + Send>| {
        std::thread::Builder::new()
            .name("acquire".into())
            .spawn(f)
            .map(|_| ())
            .map_err(|e| EdgeError::Io(IoError::new("acquisition thread", e)))
    };
    match source {
        Source::Stdin => {
            spawn(Box::new(move || {
                read_lines(std::io::stdin().lock(), &queue, &rejects, max_frame);
                queue.close();
            }))?;
            Ok(Acquisition { socket: None })
        }
        Source::Lines(path) => {
            let file = std::fs::File::open(path).map_err(|e| IoError::new(path, e))?;
            spawn(Box::new(move || {
                read_lines(std::io::BufReader::new(file), &queue, &rejects, max_frame);
                queue.close();
            }))?;
            Ok(Acquisition { socket: None })
        }
        Source::Frames(path) => {
            let file = std::fs::File::open(path).map_err(|e| IoError::new(path, e))?;
            let name = path.display().to_string();
            spawn(Box::new(move || {
                read_frames(
                    std::io::BufReader::new(file),
                    &name,
                    &queue,
                    &rejects,
                    max_frame,
                );
                queue.close();
            }))?;
            Ok(Acquisition { socket: None })
        }
        Source::Idx(path) => {
            let images = read_idx_images(path).map_err(|e| EdgeError::Source(e.to_string()))?;
            log::info!(
                "replaying {} image(s) from {}",
                images.len(),
                path.display()
            );
            spawn(Box::new(move || {
                for image in images {
                    if !queue.push(Input::Image(image)) {
                        break;
                    }
                }
                queue.close();
            }))?;
            Ok(Acquisition { socket: None })
        }
        Source::Watch(dir) => {
            for sub in ["done", "rejected"] {
                crate::files::create_dir_all(&dir.join(sub))?;
            }
            log::info!("watching {} for PGM/PNG images", dir.display());
            let dir = dir.clone();
            spawn(Box::new(move || watch(&dir, &queue, &rejects)))?;
            Ok(Acquisition { socket: None })
        }
        Source::Socket(path) => {
            let listener = bind(path)?;
            log::info!("listening for frames on {}", path.display());
            spawn(Box::new(move || serve(listener, queue, rejects, max_frame)))?;
            Ok(Acquisition {
                socket: Some(path.clone()),
            })
        }
    }
}

/// Poll `dir` for image files, oldest name first.
fn watch(dir: &Path, queue: &BoundedQueue<Input>, rejects: &Rejects) {
    let settle = std::time::Duration::from_millis(500);
    loop {
        let mut ready: Vec<PathBuf> = match std::fs::read_dir(dir) {
            Ok(entries) => entries
                .filter_map(|e| e.ok())
                .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
                .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
                .filter(|e| {
                    e.metadata()
                        .and_then(|m| m.modified())
                        .is_ok_and(|t| t.elapsed().is_ok_and(|age| age >= settle))
                })
                .map(|e| e.path())
                .collect(),
            Err(e) => {
                log::warn!("{}: {e}", dir.display());
                Vec::new()
            }
        };
        ready.sort();
        for path in ready {
            let name = path.file_name().map(|n| n.to_owned()).unwrap_or_default();
            let decoded = crate::files::read(&path)
                .map_err(Into::into)
                .and_then(|bytes| images::decode(&bytes, &name.to_string_lossy()));
            match decoded {
                Ok(image) => {
                    move_or_remove(&path, &dir.join("done").join(&name));
                    if !queue.push(Input::Image(image)) {
                        return;
                    }
                }
                Err(e) => {
                    rejects.reject(
                        RejectKind::BadImageFile,
                        format_args!("{}: {e}", path.display()),
                    );
                    move_or_remove(&path, &dir.join("rejected").join(&name));
                }
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// Move a handled file out of the watched directory, or delete it, so it is taken only once.
fn move_or_remove(from: &Path, to: &Path) {
    if let Err(e) = std::fs::rename(from, to) {
        log::warn!(
            "cannot move {} to {}: {e}; removing it",
            from.display(),
            to.display()
        );
        if let Err(e) = std::fs::remove_file(from) {
            log::error!("cannot remove {} either: {e}", from.display());
        }
    }
}

/// Bind the socket, replacing a stale socket file but nothing else.
fn bind(path: &Path) -> Result<UnixListener, EdgeError> {
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(EdgeError::Source(format!(
                "{} exists and is not a socket",
                path.display()
            )));
        }
        if UnixStream::connect(path).is_ok() {
            return Err(EdgeError::Source(format!(
                "{} is in use by another process",
                path.display()
            )));
        }
        std::fs::remove_file(path).map_err(|e| IoError::new(path, e))?;
    }
    Ok(UnixListener::bind(path).map_err(|e| IoError::new(path, e))?)
}

fn serve(
    listener: UnixListener,
    queue: Arc<BoundedQueue<Input>>,
    rejects: Arc<Rejects>,
    max_frame: usize,
) {
    let open = Arc::new(AtomicUsize::new(0));
    let mut next_id = 0u64;
    for stream in listener.incoming() {
        let stream = match stream {
            Ok(s) => s,
            Err(e) => {
                log::warn!("socket accept: {e}");
                std::thread::sleep(std::time::Duration::from_millis(100));
                continue;
            }
        };
        if open.load(Ordering::Relaxed) >= MAX_CONNECTIONS {
            rejects.reject(
                RejectKind::ConnectionLimit,
                format_args!("a connection: {MAX_CONNECTIONS} are open already"),
            );
            continue;
        }
        next_id += 1;
        let name = format!("socket connection {next_id}");
        let (queue, rejects, open) = (queue.clone(), rejects.clone(), open.clone());
        open.fetch_add(1, Ordering::Relaxed);
        let spawned = std::thread::Builder::new()
            .name(format!("conn-{next_id}"))
            .spawn(move || {
                log::debug!("{name} opened");
                let n = read_frames(
                    std::io::BufReader::new(stream),
                    &name,
                    &queue,
                    &rejects,
                    max_frame,
                );
                log::debug!("{name} closed after {n} frame(s)");
                open.fetch_sub(1, Ordering::Relaxed);
            });
        if let Err(e) = spawned {
            log::warn!("cannot serve a connection: {e}");
        }
    }
}

/// Queue every good frame; returns how many frames were read.
fn read_frames(
    mut r: impl Read,
    name: &str,
    queue: &BoundedQueue<Input>,
    rejects: &Rejects,
    max_frame: usize,
) -> u64 {
    let mut n = 0;
    loop {
        match frame::read_frame(&mut r, max_frame)
            .and_then(|p| p.map(|p| frame::decode(&p)).transpose())
        {
            Ok(None) => return n,
            Ok(Some(input)) => {
                n += 1;
                if !queue.push(input) {
                    return n;
                }
            }
            Err(e) => {
                n += 1;
                let fatal = !e.recoverable();
                if !matches!(e, FrameError::Io(_)) {
                    rejects.reject(e.kind(), format_args!("a frame from {name}: {e}"));
                }
                if fatal {
                    if let FrameError::Io(e) = &e {
                        log::warn!("{name}: {e}");
                    } else {
                        log::warn!("{name}: closing the stream after an unskippable frame");
                    }
                    return n;
                }
            }
        }
    }
}

/// Queue every good line; overlong lines and invalid UTF-8 are rejected like bad numbers.
fn read_lines(
    mut r: impl BufRead,
    queue: &BoundedQueue<Input>,
    rejects: &Rejects,
    max_line: usize,
) {
    let mut buf = Vec::new();
    for number in 1.. {
        buf.clear();
        let read = (&mut r)
            .take(max_line as u64 + 1)
            .read_until(b'\n', &mut buf);
        match read {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) => {
                log::warn!("input: {e}");
                return;
            }
        }
        if buf.len() > max_line && buf.last() != Some(&b'\n') {
            rejects.reject(
                RejectKind::Oversized,
                format_args!("line {number}: longer than {max_line} bytes"),
            );
            // Skip the rest of the line.
            loop {
                buf.clear();
                match (&mut r).take(1 << 16).read_until(b'\n', &mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(_) if buf.last() == Some(&b'\n') => break,
                    Ok(_) => {}
                }
            }
            continue;
        }
        let Ok(line) = std::str::from_utf8(&buf) else {
            rejects.reject(
                RejectKind::NotUtf8,
                format_args!("line {number}: not UTF-8 text"),
            );
            continue;
        };
        match parse_line(line) {
            Ok(Some(sample))
                if rejects
                    .line_width()
                    .is_some_and(|w| w != sample.values.len()) =>
            {
                rejects.reject(
                    RejectKind::Width,
                    format_args!(
                        "line {number}: {} values, the bundle takes {}",
                        sample.values.len(),
                        rejects.line_width().unwrap_or(0)
                    ),
                );
            }
            Ok(Some(sample)) => {
                if !queue.push(Input::Plain(sample.values)) {
                    return;
                }
            }
            Ok(None) => {}
            Err(e) => rejects.reject(e.kind(), format_args!("line {number}: {e}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::edge::queue::{Pop, QueuePolicy};
    use std::io::Write;
    use std::time::Duration;

    fn drain(queue: &BoundedQueue<Input>) -> Vec<Vec<f32>> {
        let mut out = Vec::new();
        loop {
            match queue.pop(Duration::from_secs(5)) {
                Pop::Item(Input::Plain(v)) => out.push(v),
                Pop::Item(other) => panic!("unexpected {other:?}"),
                Pop::Empty => panic!("source stalled"),
                Pop::Closed => return out,
            }
        }
    }

    #[test]
    fn source_specs_parse_and_typos_are_refused() {
        let p = |s: &str| s.parse::<Source>();
        assert_eq!(p("-"), Ok(Source::Stdin));
        assert_eq!(p("unix:/run/s"), Ok(Source::Socket("/run/s".into())));
        assert_eq!(p("frames:f"), Ok(Source::Frames("f".into())));
        assert_eq!(p("idx:i.gz"), Ok(Source::Idx("i.gz".into())));
        assert_eq!(p("watch:/d"), Ok(Source::Watch("/d".into())));
        assert_eq!(p("vectors.txt"), Ok(Source::Lines("vectors.txt".into())));
        assert_eq!(p("./a:b"), Ok(Source::Lines("./a:b".into())));
        assert_eq!(p("/data/x:y"), Ok(Source::Lines("/data/x:y".into())));
        let e = p("unx:/run/s").unwrap_err();
        assert!(
            e.contains("unknown scheme \"unx:\"") && e.contains("unix:PATH"),
            "{e}"
        );
    }

    #[test]
    fn lines_with_garbage_keep_going() {
        let queue = BoundedQueue::new(16, usize::MAX, QueuePolicy::Block);
        let rejects = Rejects::default();
        let text = b"1,2\n\xff\xfe\nx,y\n# comment\n".to_vec();
        let mut text = text;
        text.extend(vec![b'9'; 100]);
        text.extend(b"\n3,4\n5");
        read_lines(&text[..], &queue, &rejects, 64);
        queue.close();
        assert_eq!(
            drain(&queue),
            vec![vec![1.0, 2.0], vec![3.0, 4.0], vec![5.0]]
        );
        assert_eq!(rejects.count(), 3);
    }

    #[test]
    fn a_line_of_the_wrong_width_is_refused_with_its_number() {
        let queue = BoundedQueue::new(16, usize::MAX, QueuePolicy::Block);
        let rejects = Rejects::default();
        rejects.expect_line_width(2);
        read_lines(&b"1,2\n1,2,3\n\n4\n5,6\n"[..], &queue, &rejects, 64);
        queue.close();
        assert_eq!(drain(&queue), vec![vec![1.0, 2.0], vec![5.0, 6.0]]);
        assert_eq!(rejects.count(), 2);
        // Counted, and logged once for the kind.
        assert_eq!(rejects.of_kind(RejectKind::Width), 2);
    }

    #[test]
    fn socket_serves_frames_and_survives_bad_ones() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("in.sock");
        std::fs::write(dir.path().join("file"), "x").unwrap();
        let queue = Arc::new(BoundedQueue::new(16, usize::MAX, QueuePolicy::Block));
        let rejects = Arc::new(Rejects::default());
        assert!(start(
            &Source::Socket(dir.path().join("file")),
            queue.clone(),
            rejects.clone(),
            64
        )
        .is_err());
        let acq = start(
            &Source::Socket(path.clone()),
            queue.clone(),
            rejects.clone(),
            64,
        )
        .unwrap();
        assert!(
            start(
                &Source::Socket(path.clone()),
                queue.clone(),
                rejects.clone(),
                64
            )
            .is_err(),
            "socket in use"
        );
        // An oversized frame ends its connection; the next connection is served.
        let mut c = UnixStream::connect(&path).unwrap();
        c.write_all(&frame::encode(&Input::Plain(vec![1.0])))
            .unwrap();
        c.write_all(&[0, 0, 0, 1, 7]).unwrap();
        c.write_all(&frame::encode(&Input::Plain(vec![0.0; 100])))
            .unwrap();
        drop(c);
        let mut c = UnixStream::connect(&path).unwrap();
        c.write_all(&frame::encode(&Input::Plain(vec![2.0])))
            .unwrap();
        drop(c);
        let mut got = Vec::new();
        while got.len() < 2 {
            match queue.pop(Duration::from_secs(5)) {
                Pop::Item(Input::Plain(v)) => got.push(v),
                other => panic!("{other:?}"),
            }
        }
        got.sort_by(|a, b| a[0].total_cmp(&b[0]));
        assert_eq!(got, vec![vec![1.0], vec![2.0]]);
        // Each connection has its own thread: the first one may still be
        // rejecting its bad frames after both good ones have been popped.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while rejects.count() < 2 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(rejects.count(), 2);
        drop(acq);
        assert!(!path.exists(), "socket removed");
    }
}
