use crate::args::ActivationArg;
use crate::progress::{Shown, Ui};
use anyhow::{Context, Result};
use hedge::backend::keys::BackendKeys;
use hedge::backend::protect::{self, ActSettings};
use hedge::model::network::Network;
use hedge::model::quant::{BitWidths, Variant};
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
    /// Evaluate this activation instead of the model's own (variants act and last): the
    /// paper's square for comparison, or an activation a model without one lacks (identity:
    /// none, only refreshed by the bootstrap).
    #[arg(long, value_enum, conflicts_with = "drop_activation")]
    activation: Option<ActivationArg>,
    /// Leave out the model's hidden activation (variant noact on a model trained with one):
    /// the encrypted classifier then computes another function than the trained model.
    #[arg(long)]
    drop_activation: bool,
    /// Variant act: the cheapest setting whose expected agreement with the integer reference
    /// on the calibration inputs (the noise model's lower bound) reaches this share, e.g.
    /// 0.99; prints every setting weighed.
    #[arg(long, conflicts_with_all = ["classes_per_bootstrap", "gadget_levels"])]
    act_agreement: Option<f64>,
    /// Variant act: outputs in each bootstrap's lookup table, the classes and then 4 secret
    /// check rows (default: all). Fewer buy agreement with time: ⌈outputs / this⌉ bootstraps
    /// per hidden unit.
    #[arg(long)]
    classes_per_bootstrap: Option<usize>,
    /// Variant act: digits of the blind rotation's gadget, 1 to 3 (default 1). More buy
    /// agreement with time: each level is one more external product per step.
    #[arg(long)]
    gadget_levels: Option<usize>,
    /// Class names, one per line in class order (default: those the model's export carries).
    /// The backend's registry keeps them for the decryptor; the bundle does not carry them.
    #[arg(long)]
    labels: Option<PathBuf>,
    #[arg(long)]
    out: PathBuf,
    #[arg(long, default_value = "model")]
    name: String,
    /// Refuse the model if its integer form agrees with the float model (argmax) on less than
    /// this fraction of the calibration inputs: it would be silently wrong.
    #[arg(long, default_value = "0.99")]
    min_agreement: f64,
    /// Variant last: quantisation widths in bits, inputs,W1,hidden,W2 (default 8,8,8,8, widened
    /// to 10,8,10,12 when that agrees better). The hidden values and W2 cost noise margin.
    #[arg(long, value_parser = parse_bits)]
    bits: Option<BitWidths>,
    /// Remove hidden units while the model's classes stay the same on at least this share of
    /// the calibration inputs (e.g. 0.995): each unit removed is one bootstrap less per class
    /// group in act, and less work in every variant. Prints what it kept.
    #[arg(long)]
    prune: Option<f64>,
}

fn parse_bits(s: &str) -> std::result::Result<BitWidths, String> {
    let v: Vec<u32> = s
        .split(',')
        .map(|t| t.trim().parse::<u32>())
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| format!("{s:?}: {e}"))?;
    match v.as_slice() {
        &[x, w1, a, w2] => Ok(BitWidths { x, w1, a, w2 }),
        _ => Err(format!(
            "{s:?}: four widths, inputs,W1,hidden,W2 (e.g. 10,8,10,12)"
        )),
    }
}

pub fn run(a: Args, registry: &Path, ui: &Ui) -> Result<()> {
    if !(0.0..=1.0).contains(&a.min_agreement) {
        anyhow::bail!(
            "--min-agreement is a fraction from 0 to 1, not {}",
            a.min_agreement
        );
    }
    let mut network = Network::load(&a.model, a.encrypt_from.as_deref())
        .with_context(|| format!("importing {}", a.model.display()))?;
    if let Some(path) = &a.labels {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading labels from {}", path.display()))?;
        let labels: Vec<String> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(String::from)
            .collect();
        if labels.len() != network.head.out_dim() {
            anyhow::bail!(
                "{}: {} labels for a model of {} classes",
                path.display(),
                labels.len(),
                network.head.out_dim()
            );
        }
        network.head.labels = Some(labels);
    }
    let activation = match (a.activation, a.drop_activation) {
        (Some(act), _) => protect::HiddenActivation::Use(act.into()),
        (None, true) => protect::HiddenActivation::Drop,
        (None, false) => protect::HiddenActivation::AsTrained,
    };
    // Both layers encrypted, as asked, or refused: never a layer moved into plaintext quietly.
    if let (Some(p), Variant::Noact | Variant::Act) = (&network.plaintext_dense, a.variant) {
        anyhow::bail!(
            "--variant {} encrypts both dense layers, but the encrypted part can only start \
             after {}: the dense layer {} before it would run in plaintext on the board, its \
             weights in the clear. hedge encrypts dense → (a univariate activation: ReLU, \
             square, tanh, sigmoid, GELU, leaky ReLU, ELU, softplus | none) → dense: retrain \
             with one of those, use --variant last (its first layer runs in plaintext by \
             design), or name the cut knowingly with --encrypt-from",
            a.variant.name(),
            p.blocker,
            p.layer
        );
    }
    // A change of the vendor's model is refused before anything is read or encrypted.
    let evaluated = protect::hidden_activation(&network.head, a.variant, activation)?;
    let calib = network
        .read_inputs(&a.calibration, a.calibration_count)
        .with_context(|| format!("calibration from {}", a.calibration.display()))?;
    // Pruned as it will be evaluated (its activation settled above).
    let (head, activation) = match a.prune {
        Some(target) => {
            let evaluated = hedge::model::Classifier {
                activation: evaluated,
                ..network.head.clone()
            };
            let p = hedge::model::prune::to_agreement(&evaluated, &calib, target)?;
            let r = &p.report;
            println!(
                "pruned {} → {} hidden units: classes as the model's own on {} of {} \
                 calibration inputs ({:.2} %)",
                r.units_before,
                r.units_after,
                r.agreeing,
                r.inputs,
                100.0 * r.agreement()
            );
            (p.head, protect::HiddenActivation::AsTrained)
        }
        None => (network.head.clone(), activation),
    };
    let keys = BackendKeys::load(&a.keys)
        .with_context(|| format!("loading keys from {}", a.keys.display()))?;
    let t = std::time::Instant::now();
    let spinner = Shown(ui.spinner("protecting"));
    let epoch = protect::next_epoch(registry)?;
    let act_options =
        a.act_agreement.is_some() || a.classes_per_bootstrap.is_some() || a.gadget_levels.is_some();
    if act_options && a.variant != Variant::Act {
        anyhow::bail!(
            "--act-agreement, --classes-per-bootstrap and --gadget-levels apply to --variant act only"
        );
    }
    let settings = match a.act_agreement {
        Some(target) => {
            let candidates =
                protect::act_candidates(&head, evaluated, &calib, &keys.secret.params)?;
            spinner.0.suspend(|| print_candidates(&candidates, target));
            protect::choose_act(&candidates, target)?
        }
        None => ActSettings {
            classes_per_bootstrap: a.classes_per_bootstrap.unwrap_or(usize::MAX),
            gadget_levels: a.gadget_levels.unwrap_or(1),
        },
    };
    let p = protect::protect(
        &keys,
        &head,
        a.variant,
        activation,
        settings,
        &calib,
        &a.name,
        network.extractor.map(|(plain, _)| plain),
        epoch,
        a.bits,
        &spinner,
    )?;
    spinner.0.finish_and_clear();
    p.agreement.require(a.min_agreement)?;
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
    println!("each result: {}", p.bundle.header.model.result.describe());
    let (low, high) = p.agreement.interval();
    println!(
        "integer model agrees with the float model on {:.1} % of {} calibration inputs (95 % \
         interval {:.1}–{:.1} %, --min-agreement {:.1} %)",
        100.0 * p.agreement.fraction(),
        p.agreement.total,
        100.0 * low,
        100.0 * high,
        100.0 * a.min_agreement
    );
    let (bits, base) = (
        p.quant.bits,
        hedge::model::quant::BitWidths::for_variant(a.variant),
    );
    if bits != base {
        let why = if a.bits.is_some() {
            "as set"
        } else {
            "widened: the features' magnitudes differ"
        };
        println!(
            "widths: inputs {}, W1 {}, hidden {}, W2 {} bits — {why} (costs {} bits of noise \
             margin)",
            bits.x,
            bits.w1,
            bits.a,
            bits.w2,
            bits.margin_cost(&base)
        );
    }
    if let Some(act) = &p.act {
        let seconds = p.bundle.engine()?.bootstrap_seconds_per_inference();
        println!("{}", act_summary(act, seconds));
    }
    Ok(())
}

/// One line on what an `act` bundle's setting costs and expects.
pub fn act_summary(act: &protect::ActCandidate, seconds: Option<f64>) -> String {
    format!(
        "act accuracy: {} output(s) per bootstrap (classes, then check rows), {} gadget \
         level(s): {} bootstraps per \
         inference{}; expected agreement with the integer reference {:.2}–{:.2} %",
        act.classes_per_bootstrap,
        act.gadget_levels,
        act.bootstraps,
        seconds
            .map(|s| format!(", ≈ {s:.1} s on this machine"))
            .unwrap_or_default(),
        100.0 * act.expected_agreement[0],
        100.0 * act.expected_agreement[1]
    )
}

fn print_candidates(candidates: &[protect::ActCandidate], target: f64) {
    println!(
        "act settings weighed on the calibration inputs (target {:.2} %):",
        100.0 * target
    );
    println!("  outputs/bootstrap  gadget levels  bootstraps  work ×  expected agreement");
    for c in candidates {
        println!(
            "  {:>17}  {:>13}  {:>10}  {:>6}  {:.2}–{:.2} %{}",
            c.classes_per_bootstrap,
            c.gadget_levels,
            c.bootstraps,
            c.relative_cost,
            100.0 * c.expected_agreement[0],
            100.0 * c.expected_agreement[1],
            if c.expected_agreement[0] >= target {
                "  reaches"
            } else {
                ""
            }
        );
    }
}
