use crate::args::parse_security;
use crate::progress::{Shown, Ui};
use anyhow::{Context, Result};
use hedge::backend::keys;
use hedge::backend::registry::Registry;
use hedge::crypto::params::{ParameterSet, SecurityLevel};
use hedge::hex::hex;
use std::path::{Path, PathBuf};

#[derive(clap::Args)]
pub struct Args {
    /// Security level (default 128; with --rotate, the current key set's).
    #[arg(long, value_parser = parse_security)]
    security: Option<SecurityLevel>,
    /// The key directory to create (with --rotate: the existing one).
    #[arg(long)]
    pub out: PathBuf,
    /// Replace the key set in --out with a new one: the current set moves to
    /// retired/<key id>/ and its results still decrypt; the signing key (the boards' trust
    /// anchor) stays. Then protect the model again and deploy it to move the boards over.
    #[arg(long)]
    rotate: bool,
}

pub fn run(a: Args, registry: &Path, ui: &Ui) -> Result<()> {
    if a.rotate {
        return rotate(a, registry, ui);
    }
    let security = a.security.unwrap_or(SecurityLevel::L128);
    let params = ParameterSet::for_level(security);
    let t = std::time::Instant::now();
    let spinner = Shown(ui.spinner("generating keys"));
    let set = keys::keygen(params, &a.out, &spinner)
        .with_context(|| format!("writing keys to {}", a.out.display()))?;
    spinner.0.finish_and_clear();
    keys::record(&set, &a.out, registry)?;
    println!(
        "keys for {}-bit security in {} (key id {}, {:.1} s)",
        security,
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

fn rotate(a: Args, registry: &Path, ui: &Ui) -> Result<()> {
    let current = keys::load_secret(&a.out)
        .with_context(|| format!("rotating the key set in {}", a.out.display()))?;
    let security = a.security.unwrap_or(current.params.security);
    drop(current);
    let spinner = Shown(ui.spinner("rotating keys"));
    let (old, set) = keys::rotate(
        &a.out,
        ParameterSet::for_level(security),
        registry,
        &spinner,
    )
    .with_context(|| format!("rotating the key set in {}", a.out.display()))?;
    spinner.0.finish_and_clear();
    println!(
        "new key set {} ({security}-bit) in {}; {} retired to {}",
        hex(&set.secret.key_id),
        a.out.display(),
        hex(&old),
        a.out.join(keys::RETIRED).join(hex(&old)).display()
    );
    for u in Registry::open(registry)?.key_set_use()? {
        println!(
            "  key set {} ({}-bit): {} results accepted, {} refused",
            u.id, u.security, u.accepted, u.refused
        );
    }
    println!(
        "next: hedge protect --keys {} …, then hedge deploy --bundle NEW --group G (or --device)",
        a.out.display()
    );
    Ok(())
}
