use crate::args::parse_shape;
use anyhow::{Context, Result};
use hedge::files::write_atomic;
use hedge::input::vectors::format_sample;
use hedge::model::activation::Activation;
use hedge::model::{onnx, synth};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    #[arg(long)]
    out: PathBuf,
    /// in,hidden,classes
    #[arg(long, default_value = "2304,512,10")]
    shape: String,
    /// Drop the hidden activation (the paper's no-activation model).
    #[arg(long)]
    no_activation: bool,
    #[arg(long, default_value_t = 200)]
    calibration: usize,
    #[arg(long, default_value_t = 100)]
    test: usize,
    #[arg(long, default_value_t = 42)]
    seed: u64,
}

pub fn run(a: Args) -> Result<()> {
    let (i, h, c) = parse_shape(&a.shape)?;
    hedge::files::create_dir_all(&a.out)?;
    let task = synth::Task::new(a.seed, i, c);
    let act = (!a.no_activation).then_some(Activation::Relu);
    let model = synth::classifier(a.seed, &task, h, act);
    write_atomic(
        &a.out.join("model.onnx"),
        &onnx::to_bytes(&model, false),
        0o644,
    )?;
    for (name, stream, count) in [
        ("calibration.txt", synth::CALIBRATION_STREAM, a.calibration),
        ("test.txt", synth::BENCH_STREAM, a.test),
    ] {
        let text: String = task
            .samples(a.seed + stream, count)
            .iter()
            .map(|(x, l)| format_sample(Some(*l), x) + "\n")
            .collect();
        write_atomic(&a.out.join(name), text.as_bytes(), 0o644)
            .with_context(|| format!("writing {name}"))?;
    }
    println!(
        "wrote model.onnx ({i}→{h}→{c}), calibration.txt, test.txt to {}",
        a.out.display()
    );
    Ok(())
}
