use crate::args::ActivationArg;
use crate::progress::{Shown, Ui};
use anyhow::{Context, Result};
use hedge::backend::{keys::BackendKeys, protect};
use hedge::model::network::Network;
use hedge::model::quant::Variant;
use std::path::{Path, PathBuf};

#[derive(clap::Args)]
pub struct Args {
    #[arg(long)]
    model: PathBuf,
    #[arg(long)]
    pub keys: PathBuf,
    #[arg(long, value_enum)]
    variant: Variant,
    /// Calibration inputs for the quantisation: vectors, one per line, or an IDX image file
    /// (a CNN's images go through its feature extractor).
    #[arg(long)]
    calibration: PathBuf,
    /// Use at most this many calibration inputs.
    #[arg(long, default_value = "1000")]
    calibration_count: usize,
    /// Where the encrypted classifier starts: the first dense layer of its head (a node
    /// name, or the tensor it reads). Layers before it ship in plaintext and run on the
    /// edge with tract. Default: the start of the trailing dense layers.
    #[arg(long)]
    encrypt_from: Option<String>,
    /// Override the model's activation (variant act): the paper's square, for comparison.
    #[arg(long, value_enum)]
    activation: Option<ActivationArg>,
    #[arg(long)]
    out: PathBuf,
    #[arg(long, default_value = "model")]
    name: String,
}

pub fn run(a: Args, registry: &Path, ui: &Ui) -> Result<()> {
    let network = Network::load(&a.model, a.encrypt_from.as_deref())
        .with_context(|| format!("importing {}", a.model.display()))?;
    let calib = network
        .read_inputs(&a.calibration, a.calibration_count)
        .with_context(|| format!("calibration from {}", a.calibration.display()))?;
    let keys = BackendKeys::load(&a.keys)
        .with_context(|| format!("loading keys from {}", a.keys.display()))?;
    let t = std::time::Instant::now();
    let spinner = Shown(ui.spinner("protecting"));
    let epoch = protect::next_epoch(registry)?;
    let p = protect::protect(
        &keys,
        &network.head,
        a.variant,
        a.activation.map(Into::into),
        &calib,
        &a.name,
        network.extractor.map(|(plain, _)| plain),
        epoch,
        &spinner,
    )?;
    spinner.0.finish_and_clear();
    protect::record(&p, &keys, &a.keys, registry)?;
    hedge::files::write_atomic(&a.out, &p.bytes, 0o644)
        .with_context(|| format!("writing {}", a.out.display()))?;
    println!(
        "protected {} ({:?}, epoch {epoch}) into {}: {} bytes, encrypted weights {} bytes, {:.1} s",
        a.model.display(),
        a.variant,
        a.out.display(),
        p.bytes.len(),
        p.bundle.model.encrypted_bytes(),
        t.elapsed().as_secs_f64()
    );
    Ok(())
}
