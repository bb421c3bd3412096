//! Feature-vector files: one vector per line, values separated by commas or whitespace;
//! blank lines and lines starting with `#` are skipped. An optional `label:` prefix
//! (`3: 0.1, 0.2, …`) carries the true class.

use super::{InputError, Result};
use crate::files::IoError;
use std::path::Path;

/// A vector with its optional label.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub label: Option<usize>,
    pub values: Vec<f32>,
}

/// Parse one line; `None` for blank or comment lines.
pub fn parse_line(line: &str) -> Result<Option<Sample>> {
    parse_line_named(line, None)
}

/// [`parse_line`], taking a label that is one of `names` (a model's class names) as its
/// index.
pub(crate) fn parse_line_named(line: &str, names: Option<&[String]>) -> Result<Option<Sample>> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return Ok(None);
    }
    let (label, rest) = match line.split_once(':') {
        Some((l, r)) => (
            Some({
                let l = l.trim();
                l.parse::<usize>()
                    .ok()
                    .or_else(|| names.and_then(|n| n.iter().position(|x| x == l)))
                    .ok_or_else(|| InputError::BadLabel(l.to_string()))?
            }),
            r,
        ),
        None => (None, line),
    };
    let values = rest
        .split(|c: char| c == ',' || c.is_whitespace())
        .filter(|t| !t.is_empty())
        .map(|t| {
            t.parse::<f32>()
                .map_err(|_| InputError::NotANumber(t.to_string()))
        })
        .collect::<Result<Vec<_>>>()?;
    if values.is_empty() {
        return Err(InputError::EmptyVector);
    }
    Ok(Some(Sample { label, values }))
}

/// Read a whole file of vectors (`-`: stdin); errors name the line.
pub fn read_samples(path: &Path) -> Result<Vec<Sample>> {
    read_samples_named(path, None)
}

/// [`read_samples`] with labels that may be a model's class names.
pub(crate) fn read_samples_named(path: &Path, names: Option<&[String]>) -> Result<Vec<Sample>> {
    let text = if path == Path::new("-") {
        std::io::read_to_string(std::io::stdin()).map_err(|e| IoError::new("stdin", e))?
    } else {
        std::fs::read_to_string(path).map_err(|e| IoError::new(path, e))?
    };
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        match parse_line_named(line, names) {
            Ok(Some(s)) => out.push(s),
            Ok(None) => {}
            Err(e) => {
                return Err(InputError::Line {
                    file: path.display().to_string(),
                    line: i + 1,
                    cause: Box::new(e),
                })
            }
        }
    }
    Ok(out)
}

/// Format a vector as one line.
pub fn format_sample(label: Option<usize>, values: &[f32]) -> String {
    let body = values
        .iter()
        .map(|v| format!("{v}"))
        .collect::<Vec<_>>()
        .join(",");
    match label {
        Some(l) => format!("{l}: {body}"),
        None => body,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_rejects() {
        assert_eq!(
            parse_line("2: 1, 2.5 3").unwrap(),
            Some(Sample {
                label: Some(2),
                values: vec![1.0, 2.5, 3.0]
            })
        );
        assert_eq!(parse_line("  # note").unwrap(), None);
        assert!(parse_line("1,x,3").is_err());
        assert!(parse_line("a: 1").is_err());
        assert!(parse_line("3:").is_err());
        let s = format_sample(Some(1), &[0.5, 2.0]);
        assert_eq!(parse_line(&s).unwrap().unwrap().values, vec![0.5, 2.0]);
    }
}
