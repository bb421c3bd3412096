use crate::args::parse_security;
use anyhow::Result;
use hedge::crypto::params::{ParameterSet, SecurityLevel};

#[derive(clap::Args)]
pub struct Args {
    #[arg(long, value_parser = parse_security, default_value = "128")]
    security: SecurityLevel,
    /// Hidden units of the bootstrapped variant, for the failure probability per inference.
    #[arg(long, default_value_t = 512)]
    hidden: usize,
}

pub fn run(a: Args) -> Result<()> {
    let shipped = ParameterSet::for_level(a.security);
    print!("{}", shipped.noise_report(a.hidden));
    print!(
        "{}",
        hedge::crypto::optimise::bootstrap_layer(&shipped).report()
    );
    Ok(())
}
