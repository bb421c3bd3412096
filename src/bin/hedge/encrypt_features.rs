use anyhow::{Context, Result};
use hedge::backend::keys;
use std::io::Write;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// The edge bundle the features are for (its public key, input scaling and, for the
    /// `last` variant, the plaintext first layer).
    #[arg(long)]
    bundle: PathBuf,
    #[arg(long)]
    keys: Option<PathBuf>,
    #[arg(long)]
    verifying_key: Option<PathBuf>,
    /// Vectors, one per line ("-": stdin), or an IDX image file for a bundle with a
    /// feature extractor.
    #[arg(long, default_value = "-")]
    input: String,
    /// Frames go here ("-": stdout).
    #[arg(long, default_value = "-")]
    out: String,
}

pub fn run(a: Args) -> Result<()> {
    let trusted = keys::trusted_key(a.verifying_key.as_deref(), a.keys.as_deref())?;
    let ready = hedge::bundle::open(&a.bundle, &trusted)
        .and_then(|b| b.ready())
        .with_context(|| format!("{} rejected", a.bundle.display()))?;
    let mut engine = ready.engine;
    // Model inputs (IDX images, or vectors one per line), through the plaintext extractor
    // when the bundle has one.
    let inputs = hedge::model::network::read_inputs(
        std::path::Path::new(&a.input),
        ready.extractor.as_ref(),
        usize::MAX,
    )
    .with_context(|| format!("reading {}", a.input))?;
    let mut writer: Box<dyn Write> = if a.out == "-" {
        Box::new(std::io::stdout().lock())
    } else {
        Box::new(std::io::BufWriter::new(
            std::fs::File::create(&a.out).with_context(|| a.out.clone())?,
        ))
    };
    let (mut count, mut bytes) = (0usize, 0usize);
    for (i, x) in inputs.iter().enumerate() {
        // Streamed: a full classifier's frame is hundreds of MB.
        bytes += hedge::transport::frame::write_encrypted(&mut writer, &mut engine, x)
            .with_context(|| format!("{}: input {}", a.input, i + 1))?;
        count += 1;
    }
    writer.flush().context("writing frames")?;
    log::info!(
        "{count} vector(s) encrypted, {} bytes per frame",
        bytes.checked_div(count).unwrap_or(0)
    );
    Ok(())
}
