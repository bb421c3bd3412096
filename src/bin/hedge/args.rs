//! Argument types shared by several subcommands.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

/// The registry file: as given, else registry.sqlite in the key directory, else in the
/// working directory.
pub fn registry(given: &Option<PathBuf>, keys: Option<&Path>) -> PathBuf {
    given
        .clone()
        .unwrap_or_else(|| keys.unwrap_or(Path::new(".")).join("registry.sqlite"))
}
use hedge::crypto::params::SecurityLevel;
use hedge::model::activation::Activation;

pub fn parse_security(s: &str) -> Result<SecurityLevel, String> {
    s.parse::<u32>()
        .ok()
        .and_then(SecurityLevel::from_bits)
        .ok_or_else(|| format!("security must be 128, 192 or 256, not {s}"))
}

/// `in,hidden,classes`.
pub fn parse_shape(s: &str) -> Result<(usize, usize, usize)> {
    let v: Vec<usize> = s
        .split(',')
        .map(|t| t.trim().parse::<usize>())
        .collect::<std::result::Result<_, _>>()
        .with_context(|| format!("shape {s:?}"))?;
    match v.as_slice() {
        [a, b, c] if *a > 0 && *b > 0 && *c > 1 => Ok((*a, *b, *c)),
        _ => bail!("shape must be in,hidden,classes (positive, at least 2 classes)"),
    }
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum ActivationArg {
    Relu,
    Square,
    Tanh,
    Sigmoid,
    Gelu,
    Softplus,
    /// No function: the bootstrap only refreshes (a model without an activation in act).
    Identity,
}

impl From<ActivationArg> for Activation {
    fn from(a: ActivationArg) -> Self {
        match a {
            ActivationArg::Relu => Activation::Relu,
            ActivationArg::Square => Activation::Square,
            ActivationArg::Tanh => Activation::Tanh,
            ActivationArg::Sigmoid => Activation::Sigmoid,
            ActivationArg::Gelu => Activation::Gelu,
            ActivationArg::Softplus => Activation::Softplus,
            ActivationArg::Identity => Activation::Identity,
        }
    }
}
