use crate::args::parse_security;
use crate::progress::{Shown, Ui};
use anyhow::Result;
use hedge::crypto::params::{ParameterSet, SecurityLevel};
use hedge::model::quant::Variant;
use hedge::report::eval::{self, Case, CaseReport, EvalOptions, TestSet};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// The network with its hidden ReLU (variants last and act).
    #[arg(long)]
    model: PathBuf,
    /// The same network trained without the hidden activation (variant noact).
    #[arg(long)]
    noact_model: Option<PathBuf>,
    /// The same network trained with a square activation (an extra act case).
    #[arg(long)]
    square_model: Option<PathBuf>,
    /// A directory with the Fashion-MNIST IDX files (train-* for calibration, t10k-* for test).
    #[arg(long, default_value = "/usr/share/datasets/fashion-mnist")]
    data: PathBuf,
    /// Override the test images / labels / calibration images of --data.
    #[arg(long, conflicts_with = "test")]
    test_images: Option<PathBuf>,
    #[arg(long, conflicts_with = "test")]
    test_labels: Option<PathBuf>,
    /// A labelled test set of vectors instead of IDX images: one `label: v1,v2,…` per line,
    /// the label a class index (with --calibration, vectors one per line).
    #[arg(long)]
    test: Option<PathBuf>,
    #[arg(long)]
    calibration: Option<PathBuf>,
    #[arg(long, default_value_t = 1000)]
    calibration_count: usize,
    #[arg(long, value_enum, num_args = 1.., value_delimiter = ',')]
    variant: Vec<Variant>,
    /// Encrypted inferences per linear variant, and per act case.
    #[arg(long, default_value_t = 1000)]
    encrypted: usize,
    #[arg(long, default_value_t = 200)]
    encrypted_act: usize,
    #[arg(long, value_parser = parse_security, default_value = "128")]
    security: SecurityLevel,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Quantisation widths for the reference sweep.
    #[arg(long, num_args = 0.., value_delimiter = ',', default_value = "3,4,5,6,8,10")]
    widths: Vec<u32>,
    #[arg(long)]
    encrypt_from: Option<String>,
    /// Variant act: outputs (classes, then check rows) in each bootstrap's lookup table
    /// (default: all), as `hedge protect`.
    #[arg(long)]
    classes_per_bootstrap: Option<usize>,
    /// Variant act: the blind rotation's gadget levels, 1 to 3, as `hedge protect`.
    #[arg(long, default_value_t = 1)]
    gadget_levels: usize,
    /// Prune hidden units first, to this agreement with the model's own classes on the
    /// calibration inputs (as `hedge protect --prune`); reports it on the test images too.
    #[arg(long)]
    prune: Option<f64>,
    /// Write the accuracy plot here.
    #[arg(long)]
    plot: Option<PathBuf>,
    /// One JSON object per case instead of the table.
    #[arg(long)]
    json: bool,
}

/// The cases to evaluate: each variant on its network, plus the square network's act case.
fn cases(a: &Args) -> Vec<Case> {
    let variants = if a.variant.is_empty() {
        Variant::ALL.to_vec()
    } else {
        a.variant.clone()
    };
    let mut cases = Vec::new();
    for v in variants {
        let (network, count) = match v {
            Variant::Last => (a.model.clone(), a.encrypted),
            Variant::Noact => (
                a.noact_model.clone().unwrap_or_else(|| a.model.clone()),
                a.encrypted,
            ),
            Variant::Act => (a.model.clone(), a.encrypted_act),
        };
        let case = |network| Case {
            label: None,
            network,
            variant: v,
            activation: None,
            encrypted: count,
        };
        cases.push(case(network));
        if v == Variant::Act {
            if let Some(square) = &a.square_model {
                cases.push(case(square.clone()));
            }
        }
    }
    cases
}

pub fn run(a: Args, ui: &Ui) -> Result<()> {
    let in_data = |stem: &str| {
        let plain = a.data.join(stem);
        if plain.exists() {
            plain
        } else {
            a.data.join(format!("{stem}.gz"))
        }
    };
    let opts = EvalOptions {
        cases: cases(&a),
        test: match &a.test {
            Some(vectors) => TestSet::Vectors(vectors.clone()),
            None => TestSet::Idx {
                images: a
                    .test_images
                    .clone()
                    .unwrap_or_else(|| in_data("t10k-images-idx3-ubyte")),
                labels: a
                    .test_labels
                    .clone()
                    .unwrap_or_else(|| in_data("t10k-labels-idx1-ubyte")),
            },
        },
        calibration: a
            .calibration
            .clone()
            .unwrap_or_else(|| in_data("train-images-idx3-ubyte")),
        calibration_count: a.calibration_count,
        params: ParameterSet::for_level(a.security),
        seed: a.seed,
        widths: a.widths.clone(),
        encrypt_from: a.encrypt_from.clone(),
        act: hedge::backend::protect::ActSettings {
            classes_per_bootstrap: a.classes_per_bootstrap.unwrap_or(usize::MAX),
            gadget_levels: a.gadget_levels,
        },
        prune: a.prune,
    };
    if !a.json {
        println!(
            "{:<14} {:>7} {:>9} {:>9} {:>10} {:>9} {:>9} {:>10} {:>10}",
            "case",
            "images",
            "float",
            "integer",
            "encrypted",
            "sample",
            "agree",
            "enc ms",
            "extract ms"
        );
    }
    let bar = Shown(ui.bar(0, "encrypted inferences"));
    let reports = eval::run(&opts, &bar, &mut |r| {
        bar.0.suspend(|| {
            if a.json {
                println!("{}", serde_json::to_string(r).expect("serialisable"));
            } else {
                print_case(r);
            }
        })
    })?;
    bar.0.finish_and_clear();
    if let Some(path) = &a.plot {
        hedge::report::plot::accuracy(&reports, path)?;
        log::info!("plot written to {}", path.display());
    }
    Ok(())
}

fn print_case(r: &CaseReport) {
    println!(
        "{:<14} {:>7} {:>8.2}% {:>8.2}% {:>9.2}% {:>9} {:>8.1}% {:>10.1} {:>10.2}",
        r.case,
        r.test_images,
        100.0 * r.float_accuracy,
        100.0 * r.reference_accuracy,
        100.0 * r.encrypted_accuracy,
        r.encrypted_images,
        100.0 * r.encrypted_agreement,
        r.encrypted_ms_mean,
        r.extractor_ms_mean
    );
    println!(
        "    beyond the noise bounds: {} of {} sampled images, {:.1}% agree",
        r.decided_images,
        r.encrypted_images,
        100.0 * r.decided_agreement
    );
    if r.sample_refused > 0 {
        println!(
            "    refused by the decryptor: {} of {} sampled results (honest results beyond what \
             the checks accept; counted as disagreements)",
            r.sample_refused, r.encrypted_images
        );
    }
    if let (Some([all_low, all_high]), Some([low, high])) =
        (r.expected_agreement, r.expected_disagreements)
    {
        println!(
            "    noise model: expected agreement {:.2}–{:.2}% on all {} images, \
             {:.2}–{:.2} disagreements on the sample (measured {})",
            100.0 * all_low,
            100.0 * all_high,
            r.test_images,
            low,
            high,
            r.disagreements.len()
        );
    }
    if r.variant == "act" {
        let accepted = (r.test_images - r.reference_refused).max(1);
        println!(
            "    outside the calibrated window: {} pre-activations of {} images ({:.2e} per \
             bootstrap); {} images with at least one ({:.3}%), {} of them refused by the check \
             rows (a read beyond the window's separator takes another output's weights: \
             calibrate on inputs that cover these)",
            r.out_of_window_units,
            accepted,
            r.out_of_window_units as f64 / (accepted as f64 * r.hidden_units.max(1) as f64),
            r.out_of_window_images,
            100.0 * r.out_of_window_images as f64 / accepted as f64,
            r.crossed_images,
        );
    }
    if let (Some(p), Some(test)) = (&r.pruned, r.pruned_test_agreement) {
        println!(
            "    pruned {} → {} hidden units: classes as the unpruned model's on {:.2} % of {} \
             calibration inputs and {:.2} % of the test images",
            p.units_before,
            p.units_after,
            100.0 * p.agreement(),
            p.inputs,
            100.0 * test
        );
    }
    if r.out_of_range_images > 0 {
        println!(
            "    {} test images score beyond what the decryptor accepts (refused): protect \
             with calibration data that covers them",
            r.out_of_range_images
        );
    }
    for d in &r.disagreements {
        println!(
            "    image {}: reference class {}, encrypted {}; reference margin {} \
             within the bound {:.0}: {}",
            d.image,
            d.reference_class,
            d.encrypted_class,
            d.reference_margin,
            d.bound,
            (d.reference_margin as f64) <= d.bound
        );
    }
}
