use anyhow::{bail, Context, Result};
use hedge::backend::keys;
use hedge::hex::hex;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    bundle: PathBuf,
    /// Key directory holding verifying.key (and public.key to check the key id).
    #[arg(long)]
    keys: Option<PathBuf>,
    #[arg(long)]
    verifying_key: Option<PathBuf>,
}

pub fn run(a: Args) -> Result<()> {
    let trusted = keys::trusted_key(a.verifying_key.as_deref(), a.keys.as_deref())?;
    let opened = hedge::bundle::open(&a.bundle, &trusted)
        .with_context(|| format!("{} rejected", a.bundle.display()))?;
    let b = &opened.bundle;
    if let Some(k) = &a.keys {
        if let Ok(public) = keys::load_public(k) {
            if hedge::crypto::keys::key_id(&public) != b.header.key_id {
                bail!(
                    "{} was encrypted for other keys than {}",
                    a.bundle.display(),
                    k.display()
                );
            }
        }
    }
    let m = &b.header.model;
    println!("bundle      {} (id {})", a.bundle.display(), opened.id);
    println!(
        "verified    signature ok, checksum ok, format v{}",
        hedge::bundle::FORMAT_VERSION
    );
    println!("name        {} (epoch {})", b.header.name, b.header.epoch);
    println!("variant     {}", m.variant.name());
    println!(
        "shape       {} → {} → {}",
        m.input.dim, m.hidden_dim, m.out_dim
    );
    println!(
        "security    {}-bit (key id {})",
        b.header.params.security,
        hex(&b.header.key_id)
    );
    println!("bundle      {} bytes", opened.len);
    println!("weights     {} bytes encrypted", b.model.encrypted_bytes());
    println!("results     {}", m.result.describe());
    match &b.extractor {
        Some(e) => println!(
            "extractor   plaintext ONNX, {} bytes, input {:?}, pixels ×{}",
            e.onnx.len(),
            e.input_shape,
            e.pixel_scale
        ),
        None => println!("extractor   none (the bundle takes feature vectors)"),
    }
    println!(
        "keys        public {} bytes, evaluation {} bytes",
        b.keys.public.wide.byte_len() + b.keys.public.pbs.byte_len(),
        b.keys
            .evaluation
            .as_ref()
            .map(|e| e.byte_len())
            .unwrap_or(0)
    );
    if let hedge::engine::EncryptedModel::Act { luts, .. } = &b.model {
        let act = hedge::backend::protect::ActCandidate::new(
            &luts.map,
            m.out_dim,
            m.hidden_dim,
            b.header.params.pbs.level.0,
            b.header.expected_agreement.unwrap_or([f64::NAN; 2]),
        );
        let seconds = b.engine()?.bootstrap_seconds_per_inference();
        println!("{}", crate::protect::act_summary(&act, seconds));
    }
    Ok(())
}
