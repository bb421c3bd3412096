//! The acquisition wire format, used on hedged's Unix socket and in frame files
//! (`hedge encrypt-features` writes them; `scripts/hedge-send` sends them).
//!
//! A stream is a sequence of frames. Each frame is a 4-byte big-endian payload length, then
//! the payload: one kind byte and its body.
//!
//! | kind | body |
//! |---|---|
//! | 1 | plaintext features: n little-endian f32 |
//! | 2 | encrypted features: version byte 1, postcard of [`EncryptedFeatures`] |
//! | 3 | a grayscale image for the bundle's feature extractor: u16 LE width, u16 LE height, width·height 8-bit pixels |
//!
//! A frame longer than the configured maximum cannot be skipped safely on a stream, so it ends
//! that stream (the socket client may reconnect); any other bad frame is rejected on its own.

use crate::engine::{EdgeEngine, EncryptedFeatures, EngineError};
use crate::files::IoError;
use crate::input::images::Image;
use crate::input::RejectKind;
use std::io::{Read, Write};
use thiserror::Error;

pub(crate) const KIND_PLAIN: u8 = 1;
pub(crate) const KIND_ENCRYPTED: u8 = 2;
pub(crate) const KIND_IMAGE: u8 = 3;
const ENCRYPTED_VERSION: u8 = 1;

/// One unit of work for the scheduler.
#[derive(Clone, Debug)]
pub enum Input {
    Plain(Vec<f32>),
    Encrypted(Box<EncryptedFeatures>),
    Image(Image),
}

#[derive(Debug, Error)]
pub enum FrameError {
    #[error("oversized frame: {len} bytes, the limit is {max}")]
    Oversized { len: u64, max: usize },
    #[error("truncated frame: the stream ended inside it")]
    Truncated,
    #[error("empty frame")]
    Empty,
    #[error("unknown frame kind {0}")]
    UnknownKind(u8),
    #[error("plaintext frame of {0} bytes is not a whole number of f32")]
    Ragged(usize),
    #[error("image frame of {len} bytes for {width}x{height} pixels")]
    BadImage {
        len: usize,
        width: usize,
        height: usize,
    },
    #[error("undecodable encrypted features: {0}")]
    Encrypted(String),
    #[error("read error: {0}")]
    Io(#[from] std::io::Error),
}

impl FrameError {
    /// Whether the stream can go on after this error (the frame boundary is still known).
    pub(crate) fn recoverable(&self) -> bool {
        matches!(
            self,
            FrameError::Empty
                | FrameError::UnknownKind(_)
                | FrameError::Ragged(_)
                | FrameError::BadImage { .. }
                | FrameError::Encrypted(_)
        )
    }

    /// What kind of rejected input this is (counted, and logged once per kind).
    pub fn kind(&self) -> RejectKind {
        match self {
            FrameError::Oversized { .. } => RejectKind::Oversized,
            FrameError::Truncated => RejectKind::Truncated,
            FrameError::Empty => RejectKind::EmptyFrame,
            FrameError::UnknownKind(_) => RejectKind::UnknownFrameKind,
            FrameError::Ragged(_) => RejectKind::Ragged,
            FrameError::BadImage { .. } => RejectKind::BadImage,
            FrameError::Encrypted(_) => RejectKind::BadCiphertext,
            FrameError::Io(_) => RejectKind::Io,
        }
    }
}

impl Input {
    /// Heap bytes it holds (what the acquisition queue's byte bound counts).
    pub fn weight(&self) -> usize {
        match self {
            Input::Plain(values) => values.len() * 4,
            Input::Encrypted(f) => f.byte_len(),
            Input::Image(im) => im.pixels.len(),
        }
    }
}

/// The frame of `x`'s encrypted features written to `w` without holding it whole (the same
/// bytes as `encode(&Input::Encrypted(..))`); returns its length. A vector the engine refuses
/// writes nothing.
pub fn write_encrypted(
    w: &mut dyn Write,
    engine: &mut EdgeEngine,
    x: &[f32],
) -> Result<usize, EngineError> {
    engine.check_features(x)?;
    let payload = 2 + engine.encrypted_features_len();
    let prefix = u32::try_from(payload).map_err(|_| {
        crate::crypto::error::CryptoError::Unsupported(format!(
            "an encrypted-features frame of {payload} bytes (frames hold at most 4 GiB)"
        ))
    })?;
    let io = |e| IoError::new("encrypted features output", e);
    w.write_all(&prefix.to_be_bytes()).map_err(io)?;
    w.write_all(&[KIND_ENCRYPTED, ENCRYPTED_VERSION])
        .map_err(io)?;
    engine.write_encrypted_features(x, w)?;
    Ok(4 + payload)
}

/// The whole frame (length prefix included) for `input`.
pub fn encode(input: &Input) -> Vec<u8> {
    let mut payload = Vec::new();
    match input {
        Input::Plain(values) => {
            payload.push(KIND_PLAIN);
            for v in values {
                payload.extend_from_slice(&v.to_le_bytes());
            }
        }
        Input::Encrypted(f) => {
            payload.push(KIND_ENCRYPTED);
            payload.push(ENCRYPTED_VERSION);
            payload.extend(postcard::to_allocvec(f).expect("serialising to a Vec cannot fail"));
        }
        Input::Image(im) => {
            payload.push(KIND_IMAGE);
            payload.extend((im.width as u16).to_le_bytes());
            payload.extend((im.height as u16).to_le_bytes());
            payload.extend(&im.pixels);
        }
    }
    let mut frame = (payload.len() as u32).to_be_bytes().to_vec();
    frame.extend(payload);
    frame
}

pub fn decode(payload: &[u8]) -> Result<Input, FrameError> {
    let (&kind, body) = payload.split_first().ok_or(FrameError::Empty)?;
    match kind {
        KIND_PLAIN => {
            if !body.len().is_multiple_of(4) {
                return Err(FrameError::Ragged(body.len()));
            }
            Ok(Input::Plain(
                body.chunks_exact(4)
                    .map(|c| f32::from_le_bytes(c.try_into().expect("chunk of 4")))
                    .collect(),
            ))
        }
        KIND_ENCRYPTED => match body.split_first() {
            Some((&ENCRYPTED_VERSION, rest)) => postcard::from_bytes(rest)
                .map(|f| Input::Encrypted(Box::new(f)))
                .map_err(|e| FrameError::Encrypted(e.to_string())),
            Some((v, _)) => Err(FrameError::Encrypted(format!("format version {v}"))),
            None => Err(FrameError::Encrypted("no format version".into())),
        },
        KIND_IMAGE => {
            let [w0, w1, h0, h1, pixels @ ..] = body else {
                return Err(FrameError::BadImage {
                    len: body.len(),
                    width: 0,
                    height: 0,
                });
            };
            let (width, height) = (
                u16::from_le_bytes([*w0, *w1]) as usize,
                u16::from_le_bytes([*h0, *h1]) as usize,
            );
            if pixels.len() != width * height || pixels.is_empty() {
                return Err(FrameError::BadImage {
                    len: pixels.len(),
                    width,
                    height,
                });
            }
            Ok(Input::Image(Image {
                width,
                height,
                pixels: pixels.to_vec(),
            }))
        }
        other => Err(FrameError::UnknownKind(other)),
    }
}

/// The next frame's payload; `None` at a clean end of stream.
pub(crate) fn read_frame(r: &mut impl Read, max: usize) -> Result<Option<Vec<u8>>, FrameError> {
    let mut header = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        match r.read(&mut header[got..]) {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => return Err(FrameError::Truncated),
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    let len = u32::from_be_bytes(header) as u64;
    if len > max as u64 {
        return Err(FrameError::Oversized { len, max });
    }
    let mut payload = vec![0u8; len as usize];
    r.read_exact(&mut payload).map_err(|e| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => FrameError::Truncated,
        _ => FrameError::Io(e),
    })?;
    Ok(Some(payload))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(bytes: &[u8], max: usize) -> Vec<Result<Input, FrameError>> {
        let mut r = bytes;
        let mut out = Vec::new();
        loop {
            match read_frame(&mut r, max) {
                Ok(None) => return out,
                Ok(Some(p)) => out.push(decode(&p)),
                Err(e) => {
                    let stop = !e.recoverable();
                    out.push(Err(e));
                    if stop {
                        return out;
                    }
                }
            }
        }
    }

    #[test]
    fn round_trip_and_rejections() {
        let mut stream = encode(&Input::Plain(vec![1.5, -2.0]));
        stream.extend([0, 0, 0, 0]); // empty
        stream.extend([0, 0, 0, 2, 9, 9]); // unknown kind
        stream.extend([0, 0, 0, 3, KIND_PLAIN, 1, 2]); // ragged
        stream.extend([0, 0, 0, 3, KIND_ENCRYPTED, 1, 0xff]); // garbage ciphertext
        stream.extend(encode(&Input::Plain(vec![3.0])));
        let image = Image {
            width: 2,
            height: 1,
            pixels: vec![7, 9],
        };
        stream.extend(encode(&Input::Image(image.clone())));
        stream.extend([0, 0, 0, 6, KIND_IMAGE, 2, 0, 2, 0, 1]); // 2x2 with one pixel
        let got = frames(&stream, 1 << 10);
        assert!(matches!(&got[0], Ok(Input::Plain(v)) if v == &[1.5, -2.0]));
        assert!(matches!(got[1], Err(FrameError::Empty)));
        assert!(matches!(got[2], Err(FrameError::UnknownKind(9))));
        assert!(matches!(got[3], Err(FrameError::Ragged(2))));
        assert!(matches!(got[4], Err(FrameError::Encrypted(_))));
        assert!(matches!(&got[5], Ok(Input::Plain(v)) if v == &[3.0]));
        assert!(matches!(&got[6], Ok(Input::Image(i)) if i == &image));
        assert!(matches!(got[7], Err(FrameError::BadImage { len: 1, .. })));
        assert_eq!(got.len(), 8);

        let mut big = encode(&Input::Plain(vec![0.0; 100]));
        big.extend(encode(&Input::Plain(vec![1.0])));
        let got = frames(&big, 64);
        assert!(matches!(
            got[..],
            [Err(FrameError::Oversized { len: 401, max: 64 })]
        ));
        let cut = encode(&Input::Plain(vec![1.0, 2.0]));
        assert!(matches!(
            frames(&cut[..7], 64)[..],
            [Err(FrameError::Truncated)]
        ));
        assert!(matches!(
            frames(&cut[..2], 64)[..],
            [Err(FrameError::Truncated)]
        ));
    }
}
