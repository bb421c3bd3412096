use crate::args::parse_security;
use crate::progress::{Shown, Ui};
use anyhow::{Context, Result};
use hedge::backend::keys;
use hedge::crypto::params::{ParameterSet, SecurityLevel};
use hedge::engine::hex;
use std::path::{Path, PathBuf};

#[derive(clap::Args)]
pub struct Args {
    #[arg(long, value_parser = parse_security, default_value = "128")]
    security: SecurityLevel,
    #[arg(long)]
    pub out: PathBuf,
}

pub fn run(a: Args, registry: &Path, ui: &Ui) -> Result<()> {
    let params = ParameterSet::for_level(a.security);
    let t = std::time::Instant::now();
    let spinner = Shown(ui.spinner("generating keys"));
    let set = keys::keygen(params, &a.out, &spinner)
        .with_context(|| format!("writing keys to {}", a.out.display()))?;
    spinner.0.finish_and_clear();
    keys::record(&set, &a.out, registry)?;
    println!(
        "keys for {}-bit security in {} (key id {}, {:.1} s)",
        a.security,
        a.out.display(),
        hex(&set.secret.key_id),
        t.elapsed().as_secs_f64()
    );
    println!(
        "  backend only: {}, {}",
        keys::SECRET_KEY,
        keys::SIGNING_KEY
    );
    println!(
        "  for the edge: {}, {}, {} (trust anchor)",
        keys::PUBLIC_KEY,
        keys::EVALUATION_KEY,
        keys::VERIFYING_KEY
    );
    Ok(())
}
