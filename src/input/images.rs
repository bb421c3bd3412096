//! Grayscale images for the feature extractor: IDX files (the MNIST format, optionally
//! gzipped, as Debian's dataset-fashion-mnist ships them), binary or ASCII PGM, and PNG.

use super::{InputError, Result};
use crate::files::IoError;
use std::io::Read;
use std::path::Path;

/// An 8-bit grayscale image, row-major.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Image {
    pub width: usize,
    pub height: usize,
    pub pixels: Vec<u8>,
}

impl Image {
    /// Pixels as floats scaled by `scale` (the extractor's input).
    pub fn to_f32(&self, scale: f32) -> Vec<f32> {
        self.pixels.iter().map(|&p| p as f32 * scale).collect()
    }
}

fn bad(what: &str, why: impl std::fmt::Display) -> InputError {
    InputError::Image {
        what: what.to_string(),
        why: why.to_string(),
    }
}

/// The whole file, gunzipped if it starts with the gzip magic.
fn read_maybe_gz(path: &Path) -> Result<Vec<u8>> {
    let raw = std::fs::read(path).map_err(|e| IoError::new(path, e))?;
    if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .map_err(|e| bad(&path.display().to_string(), format_args!("gzip: {e}")))?;
        Ok(out)
    } else {
        Ok(raw)
    }
}

/// (dimensions, data) of an unsigned-byte IDX file.
fn idx(path: &Path) -> Result<(Vec<usize>, Vec<u8>)> {
    parse_idx(&read_maybe_gz(path)?, &path.display().to_string())
}

/// (dimensions, data) of the bytes of an unsigned-byte IDX file called `name`.
pub(crate) fn parse_idx(bytes: &[u8], name: &str) -> Result<(Vec<usize>, Vec<u8>)> {
    let name = name.to_string();
    if bytes.len() < 4 || bytes[0] != 0 || bytes[1] != 0 {
        return Err(bad(&name, "not an IDX file"));
    }
    if bytes[2] != 0x08 {
        return Err(bad(
            &name,
            format_args!("IDX type {:#x}, expected unsigned bytes", bytes[2]),
        ));
    }
    let ndim = bytes[3] as usize;
    let header = 4 + 4 * ndim;
    if bytes.len() < header {
        return Err(bad(&name, "truncated IDX header"));
    }
    let dims: Vec<usize> = (0..ndim)
        .map(|i| {
            u32::from_be_bytes(bytes[4 + 4 * i..8 + 4 * i].try_into().expect("4 bytes")) as usize
        })
        .collect();
    let count = dims.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
    if count != Some(bytes.len() - header) {
        return Err(bad(
            &name,
            format_args!("IDX of shape {dims:?} holds {} bytes", bytes.len() - header),
        ));
    }
    Ok((dims, bytes[header..].to_vec()))
}

/// All images of an IDX image file (shape [n, rows, cols]).
pub fn read_idx_images(path: &Path) -> Result<Vec<Image>> {
    let (dims, data) = idx(path)?;
    let [_, height, width] = dims[..] else {
        return Err(bad(
            &path.display().to_string(),
            format_args!("IDX shape {dims:?} is not [n, rows, cols]"),
        ));
    };
    if width == 0 || height == 0 {
        return Ok(Vec::new());
    }
    Ok(data
        .chunks_exact(width * height)
        .map(|c| Image {
            width,
            height,
            pixels: c.to_vec(),
        })
        .collect())
}

/// All labels of an IDX label file (shape [n]).
#[cfg(any(feature = "backend", test))]
pub(crate) fn read_idx_labels(path: &Path) -> Result<Vec<u8>> {
    let (dims, data) = idx(path)?;
    if dims.len() != 1 {
        return Err(bad(
            &path.display().to_string(),
            format_args!("IDX shape {dims:?} is not [n]"),
        ));
    }
    Ok(data)
}

/// Write images as an uncompressed IDX file (test subsets).
pub fn write_idx_images(path: &Path, images: &[Image]) -> Result<()> {
    let (h, w) = images.first().map_or((0, 0), |i| (i.height, i.width));
    let mut out = vec![0, 0, 0x08, 3];
    for d in [images.len(), h, w] {
        out.extend((d as u32).to_be_bytes());
    }
    for i in images {
        out.extend(&i.pixels);
    }
    std::fs::write(path, out).map_err(|e| IoError::new(path, e).into())
}

#[cfg(test)]
pub(crate) fn write_idx_labels(path: &Path, labels: &[u8]) -> Result<()> {
    let mut out = vec![0, 0, 0x08, 1];
    out.extend((labels.len() as u32).to_be_bytes());
    out.extend(labels);
    std::fs::write(path, out).map_err(|e| IoError::new(path, e).into())
}

/// A PGM (P5 binary or P2 ASCII) or PNG image, by content.
pub fn decode(bytes: &[u8], name: &str) -> Result<Image> {
    if bytes.starts_with(b"\x89PNG") {
        decode_png(bytes, name)
    } else if bytes.starts_with(b"P5") || bytes.starts_with(b"P2") {
        decode_pgm(bytes, name)
    } else {
        Err(bad(name, "neither PGM nor PNG"))
    }
}

fn decode_pgm(bytes: &[u8], name: &str) -> Result<Image> {
    // Header: magic, width, height, maxval, separated by whitespace; '#' starts a comment.
    let mut fields = Vec::new();
    let mut i = 2;
    while fields.len() < 3 {
        while i < bytes.len() && (bytes[i].is_ascii_whitespace() || bytes[i] == b'#') {
            if bytes[i] == b'#' {
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
            } else {
                i += 1;
            }
        }
        let start = i;
        while i < bytes.len() && bytes[i].is_ascii_digit() {
            i += 1;
        }
        let field: usize = std::str::from_utf8(&bytes[start..i])
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad(name, "bad PGM header"))?;
        fields.push(field);
    }
    let (width, height, maxval) = (fields[0], fields[1], fields[2]);
    if width == 0 || height == 0 || width > 8192 || height > 8192 || maxval == 0 || maxval > 255 {
        return Err(bad(
            name,
            format_args!("unsupported PGM {width}x{height}, maxval {maxval}"),
        ));
    }
    let rescale = |v: usize| ((v * 255 + maxval / 2) / maxval) as u8;
    let pixels: Vec<u8> = if bytes[1] == b'5' {
        let data = bytes
            .get(i + 1..i + 1 + width * height)
            .ok_or_else(|| bad(name, "truncated PGM"))?;
        data.iter().map(|&v| rescale(v as usize)).collect()
    } else {
        let text =
            std::str::from_utf8(&bytes[i..]).map_err(|_| bad(name, "ASCII PGM is not text"))?;
        let values: Vec<usize> = text
            .split_ascii_whitespace()
            .take(width * height)
            .map(|t| t.parse::<usize>().ok().filter(|&v| v <= maxval))
            .collect::<Option<_>>()
            .ok_or_else(|| bad(name, "bad PGM pixel"))?;
        if values.len() != width * height {
            return Err(bad(name, "truncated PGM"));
        }
        values.into_iter().map(rescale).collect()
    };
    Ok(Image {
        width,
        height,
        pixels,
    })
}

fn decode_png(bytes: &[u8], name: &str) -> Result<Image> {
    let mut decoder = png::Decoder::new(std::io::Cursor::new(bytes));
    decoder.set_transformations(png::Transformations::normalize_to_color8());
    let mut reader = decoder.read_info().map_err(|e| bad(name, e))?;
    let (width, height) = (reader.info().width as usize, reader.info().height as usize);
    if width > 8192 || height > 8192 {
        return Err(bad(
            name,
            format_args!("PNG of {width}x{height} is too large"),
        ));
    }
    let mut buf = vec![0; reader.output_buffer_size()];
    let frame = reader.next_frame(&mut buf).map_err(|e| bad(name, e))?;
    let data = &buf[..frame.buffer_size()];
    let luma = |r: u8, g: u8, b: u8| {
        ((299 * r as u32 + 587 * g as u32 + 114 * b as u32 + 500) / 1000) as u8
    };
    let pixels: Vec<u8> = match frame.color_type {
        png::ColorType::Grayscale => data.to_vec(),
        png::ColorType::GrayscaleAlpha => data.chunks_exact(2).map(|p| p[0]).collect(),
        png::ColorType::Rgb => data
            .chunks_exact(3)
            .map(|p| luma(p[0], p[1], p[2]))
            .collect(),
        png::ColorType::Rgba => data
            .chunks_exact(4)
            .map(|p| luma(p[0], p[1], p[2]))
            .collect(),
        other => return Err(bad(name, format_args!("PNG colour type {other:?}"))),
    };
    if pixels.len() != width * height {
        return Err(bad(name, "PNG pixel count does not match its size"));
    }
    Ok(Image {
        width,
        height,
        pixels,
    })
}

/// Encode as binary PGM.
pub fn encode_pgm(image: &Image) -> Vec<u8> {
    let mut out = format!("P5\n{} {}\n255\n", image.width, image.height).into_bytes();
    out.extend(&image.pixels);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Image {
        Image {
            width: 3,
            height: 2,
            pixels: vec![0, 10, 20, 30, 40, 255],
        }
    }

    #[test]
    fn formats_round_trip_and_garbage_is_refused() {
        let img = sample();
        assert_eq!(decode(&encode_pgm(&img), "a.pgm").unwrap(), img);
        let ascii = b"P2\n# comment\n3 2\n255\n0 10 20\n30 40 255\n";
        assert_eq!(decode(ascii, "b.pgm").unwrap(), img);
        let mut png_bytes = Vec::new();
        {
            let mut enc = png::Encoder::new(&mut png_bytes, 3, 2);
            enc.set_color(png::ColorType::Grayscale);
            enc.set_depth(png::BitDepth::Eight);
            let mut w = enc.write_header().unwrap();
            w.write_image_data(&img.pixels).unwrap();
        }
        assert_eq!(decode(&png_bytes, "c.png").unwrap(), img);
        assert!(decode(b"GIF89a", "d").is_err());
        assert!(decode(b"P5\n3 2\n255\n\x00\x01", "e").is_err(), "truncated");
        assert!(decode(&png_bytes[..20], "f").is_err(), "truncated PNG");

        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("imgs");
        write_idx_images(&p, &[img.clone(), img.clone()]).unwrap();
        assert_eq!(read_idx_images(&p).unwrap(), vec![img.clone(), img]);
        write_idx_labels(&dir.path().join("labels"), &[1, 2]).unwrap();
        assert_eq!(
            read_idx_labels(&dir.path().join("labels")).unwrap(),
            vec![1, 2]
        );
        assert!(read_idx_labels(&p).is_err(), "images are not labels");
        std::fs::write(dir.path().join("cut"), &std::fs::read(&p).unwrap()[..20]).unwrap();
        assert!(read_idx_images(&dir.path().join("cut")).is_err());
    }
}
