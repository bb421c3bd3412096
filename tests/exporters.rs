//! Models as the common ML tools export them (tests/data/exporters, made by
//! scripts/export_models.py, which names the exporter versions): each imports as it comes, its
//! float head reproduces the exporter's own runtime, and every variant that applies runs
//! encrypted and agrees with the integer reference and with the exporter's predictions.

use hedge::crypto::keys;
use hedge::crypto::params::{ParameterSet, SecurityLevel};
use hedge::engine::{decrypt, Decoding, EdgeEngine, EncryptedModel, ModelInfo};
use hedge::model::activation::Activation;
use hedge::model::network::Network;
use hedge::model::quant::{QuantModel, Variant};
use hedge::model::{argmax, Classifier};
use std::path::{Path, PathBuf};

fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/exporters")
        .join(name)
}

fn vectors(name: &str) -> Vec<(Option<usize>, Vec<f32>)> {
    hedge::input::vectors::read_samples(&data(name))
        .unwrap()
        .into_iter()
        .map(|s| (s.label, s.values))
        .collect()
}

fn softmax(v: &[f32]) -> Vec<f32> {
    let max = v.iter().copied().fold(f32::MIN, f32::max);
    let e: Vec<f32> = v.iter().map(|x| (x - max).exp()).collect();
    let sum: f32 = e.iter().sum();
    e.iter().map(|x| x / sum).collect()
}

struct Reference {
    labels: Option<Vec<String>>,
    /// The exporter's predicted class per input, as an index.
    predicted: Vec<usize>,
    scores: Vec<Vec<f32>>,
}

fn reference(model: &str) -> Reference {
    let all: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(data("reference.json")).unwrap()).unwrap();
    let r = &all[model];
    let labels: Option<Vec<String>> = r["labels"]
        .as_array()
        .map(|a| a.iter().map(|l| l.as_str().unwrap().to_string()).collect());
    let predicted = r["predicted"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| match (p.as_u64(), &labels) {
            (Some(i), _) => i as usize,
            (None, Some(l)) => l.iter().position(|x| x == p.as_str().unwrap()).unwrap(),
            (None, None) => panic!("{model}: a named prediction without labels"),
        })
        .collect();
    let scores = r["scores"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| {
            row.as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap() as f32)
                .collect()
        })
        .collect();
    Reference {
        labels,
        predicted,
        scores,
    }
}

/// The float head against the exporter's runtime: the same class on every input, and the
/// same probabilities where the exporter's output is a softmax.
fn check_float(model: &str, head: &Classifier, r: &Reference, softmax_out: bool) {
    for (i, (_, x)) in vectors("inputs.txt").iter().enumerate() {
        let scores = head.forward(x);
        assert_eq!(argmax(&scores), r.predicted[i], "{model}: input {i}");
        if softmax_out {
            for (got, want) in softmax(&scores).iter().zip(&r.scores[i]) {
                assert!(
                    (got - want).abs() < 1e-4,
                    "{model}: input {i}: {got} vs {want}"
                );
            }
        }
    }
}

/// `head` quantised on `calibration`, encrypted, with its engine and decoding.
fn encrypted(
    set: &keys::KeySet,
    head: &Classifier,
    variant: Variant,
    calibration: &[Vec<f32>],
) -> (QuantModel, EdgeEngine, Decoding) {
    let params = set.secret.params;
    let q = QuantModel::quantize(head, variant, None, calibration, &params).unwrap();
    let (enc, checks) = EncryptedModel::encrypt(&q, &set.secret).unwrap();
    let edge_keys = keys::EdgeKeys {
        public: set.public.clone(),
        evaluation: (variant == Variant::Act).then(|| set.evaluation.clone()),
    };
    let engine = EdgeEngine::new(
        ModelInfo::of(&q, &params).unwrap(),
        params,
        set.secret.key_id,
        edge_keys,
        &enc,
    )
    .unwrap();
    let decoding = Decoding::new(&q, &params, set.secret.key_id, &checks).unwrap();
    (q, engine, decoding)
}

/// Encrypted inference of `variant` on the first `count` inputs: agreement with the integer
/// reference and with the exporter's predictions.
fn encrypted_agreement(
    set: &keys::KeySet,
    head: &Classifier,
    variant: Variant,
    r: &Reference,
    count: usize,
) -> (f64, f64) {
    let calibration: Vec<Vec<f32>> = vectors("calibration.txt")
        .into_iter()
        .map(|v| v.1)
        .collect();
    let (q, mut engine, decoding) = encrypted(set, head, variant, &calibration);
    let (mut with_reference, mut with_exporter) = (0, 0);
    let inputs = vectors("inputs.txt");
    for (i, (_, x)) in inputs.iter().take(count).enumerate() {
        let class = decrypt(&engine.infer_plain(x).unwrap(), &decoding, &set.secret)
            .unwrap()
            .class;
        let reference = argmax(&q.reference(&q.input.quantize(x).unwrap()).scores);
        with_reference += (class == reference) as usize;
        with_exporter += (class == r.predicted[i]) as usize;
    }
    let n = count.min(inputs.len()) as f64;
    (with_reference as f64 / n, with_exporter as f64 / n)
}

#[test]
fn exported_models_import_as_they_come_and_run_encrypted() {
    let set = keys::generate(ParameterSet::for_level(SecurityLevel::L128));
    // (file, variants that apply, whether the exporter's output is a softmax)
    let cases: &[(&str, &[Variant], bool)] = &[
        ("torch-mlp", &[Variant::Last, Variant::Act], true),
        ("torch-mlp-dynamo", &[Variant::Last], true),
        ("keras-mlp", &[Variant::Last, Variant::Act], true),
        ("sklearn-mlp-relu", &[Variant::Last, Variant::Act], true),
        ("sklearn-mlp-relu-nozipmap", &[Variant::Last], true),
        (
            "sklearn-mlp-identity",
            &[Variant::Last, Variant::Noact],
            true,
        ),
        ("sklearn-logistic", &[Variant::Last, Variant::Noact], true),
        // One score row for two classes: imported as (−s, s).
        ("sklearn-logistic-binary", &[Variant::Last], false),
        ("sklearn-linearsvc", &[Variant::Last, Variant::Noact], false),
        ("sklearn-sgd", &[Variant::Last], false),
    ];
    for &(model, variants, softmax_out) in cases {
        let network = Network::load(&data(&format!("{model}.onnx")), None)
            .unwrap_or_else(|e| panic!("{model}: {e}"));
        assert!(
            network.extractor.is_none(),
            "{model}: leading casts and reshapes are no feature extractor"
        );
        let head = &network.head;
        let r = reference(model);
        assert_eq!(
            (head.in_dim(), head.out_dim()),
            (16, r.scores[0].len()),
            "{model}"
        );
        assert_eq!(
            head.labels, r.labels,
            "{model}: the labels the export carries"
        );
        check_float(model, head, &r, softmax_out);
        for &variant in variants {
            let count = if variant == Variant::Act { 12 } else { 60 };
            let (reference, exporter) = encrypted_agreement(&set, head, variant, &r, count);
            let exact = variant != Variant::Act;
            assert!(
                if exact {
                    reference == 1.0
                } else {
                    reference >= 0.9
                },
                "{model} {variant:?}: {reference} agreement with the integer reference"
            );
            assert!(
                exporter >= 0.9,
                "{model} {variant:?}: {exporter} agreement with the exporter"
            );
            eprintln!(
                "{model:>26} {:>5}: reference {:.3}, exporter {:.3}",
                variant.name(),
                reference,
                exporter
            );
        }
    }
}

/// What cannot be imported is refused with the node's name and operator and what to do.
#[test]
fn unsupported_graphs_are_refused_naming_the_node() {
    use prost::Message;
    use tract_onnx::pb;
    let bytes = std::fs::read(data("torch-mlp.onnx")).unwrap();
    let mut model = pb::ModelProto::decode(&bytes[..]).unwrap();
    let graph = model.graph.as_mut().unwrap();
    // A Sin between the layers instead of the ReLU: univariate, but no activation a model
    // is trained with.
    let relu = graph.node.iter_mut().find(|n| n.op_type == "Relu").unwrap();
    relu.op_type = "Sin".into();
    let e = hedge::model::onnx::from_bytes(&model.encode_to_vec())
        .unwrap_err()
        .to_string();
    assert!(e.contains("node \"/0/0.1/Relu\" (Sin)"), "{e}");
    assert!(
        e.contains("dense → (ReLU | square | tanh | sigmoid | GELU"),
        "{e}"
    );
    // A TopK after the scores.
    let mut model = pb::ModelProto::decode(&bytes[..]).unwrap();
    let graph = model.graph.as_mut().unwrap();
    let softmax = graph
        .node
        .iter_mut()
        .find(|n| n.op_type == "Softmax")
        .unwrap();
    softmax.op_type = "Hardmax2".into();
    let e = hedge::model::onnx::from_bytes(&model.encode_to_vec())
        .unwrap_err()
        .to_string();
    assert!(e.contains("(Hardmax2)"), "{e}");
    assert!(e.contains("export the classifier with its scores"), "{e}");
}

fn run(bin: &str, args: &[&str]) -> std::process::Output {
    std::process::Command::new(bin).args(args).output().unwrap()
}

fn ok(o: std::process::Output) -> String {
    assert!(
        o.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A scikit-learn export through the real binaries: protected as it comes (no extractor for
/// its leading Cast), run by hedged on labelled vector lines, decrypted with the class names
/// its post-processing carried (or the vendor's own `--labels`); `--encrypt-from` names a
/// tensor of the graph, and a node that is no dense layer is refused saying which one is.
#[test]
fn a_scikit_learn_export_end_to_end_with_its_labels() {
    let (hedge, hedged) = (env!("CARGO_BIN_EXE_hedge"), env!("CARGO_BIN_EXE_hedged"));
    let dir = tempfile::tempdir().unwrap();
    let p = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    let model = data("sklearn-mlp-relu.onnx");
    let (model, calibration) = (model.to_str().unwrap(), data("calibration.txt"));
    let calibration = calibration.to_str().unwrap();
    ok(run(hedge, &["keygen", "--out", &p("keys")]));
    let protect = |extra: &[&str]| {
        let mut args = vec![
            "protect",
            "--model",
            model,
            "--keys",
            &p("keys"),
            "--variant",
            "last",
            "--calibration",
            calibration,
            "--out",
            &p("b.bundle"),
        ]
        .into_iter()
        .map(String::from)
        .collect::<Vec<_>>();
        args.extend(extra.iter().map(|s| s.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run(hedge, &args)
    };
    let decrypt_labels = |out: &str| -> Vec<String> {
        let inputs: String = std::fs::read_to_string(data("inputs.txt"))
            .unwrap()
            .lines()
            .take(6)
            .map(|l| format!("{l}\n"))
            .collect();
        std::fs::write(p("in.txt"), inputs).unwrap();
        ok(run(
            hedged,
            &[
                "--bundle",
                &p("b.bundle"),
                "--verifying-key",
                &p("keys/verifying.key"),
                "--out-dir",
                &p(out),
                "--input",
                &p("in.txt"),
                "--device-id",
                out,
            ],
        ));
        let mut files: Vec<String> = std::fs::read_dir(p(out))
            .unwrap()
            .map(|e| e.unwrap().path().to_str().unwrap().to_string())
            .filter(|f| f.ends_with(".bin"))
            .collect();
        files.sort();
        // File mode writes to --output, with the fields subscribe mode prints.
        let (keys, lines) = (p("keys"), p(&format!("{out}.jsonl")));
        let mut args = vec!["decrypt", "--keys", &keys, "--enrol", "--output", &lines];
        args.extend(files.iter().map(String::as_str));
        assert_eq!(ok(run(hedge, &args)), "", "the lines go to --output");
        std::fs::read_to_string(&lines)
            .unwrap()
            .lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                for field in [
                    "device",
                    "bundle",
                    "seq",
                    "timestamp_ms",
                    "infer_ms",
                    "extract_ms",
                    "class",
                ] {
                    assert!(!v[field].is_null(), "{field} missing from {l}");
                }
                v["label"].as_str().unwrap_or("(none)").to_string()
            })
            .collect()
    };
    let r = reference("sklearn-mlp-relu");
    let names = r.labels.clone().unwrap();
    let want: Vec<String> = r.predicted[..6].iter().map(|&i| names[i].clone()).collect();

    ok(protect(&[]));
    let info = ok(run(
        hedge,
        &["inspect", &p("b.bundle"), "--keys", &p("keys")],
    ));
    assert!(info.contains("extractor   none"), "{info}");
    assert_eq!(decrypt_labels("out1"), want);

    // The vendor's own names.
    let mine: Vec<String> = ["a", "b", "c", "d"].map(String::from).to_vec();
    std::fs::write(p("labels.txt"), mine.join("\n")).unwrap();
    ok(protect(&["--labels", &p("labels.txt")]));
    let got = decrypt_labels("out2");
    let want_mine: Vec<String> = r.predicted[..6].iter().map(|&i| mine[i].clone()).collect();
    assert_eq!(got, want_mine);
    std::fs::write(p("labels.txt"), "a\nb\n").unwrap();
    let o = protect(&["--labels", &p("labels.txt")]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("2 labels for a model of 4 classes"));

    // hedge eval on the labelled vectors: the float model's accuracy is the exporter's.
    let eval = |test: &str| -> serde_json::Value {
        let args = [
            "eval",
            "--model",
            model,
            "--test",
            test,
            "--calibration",
            calibration,
            "--variant",
            "last",
            "--encrypted",
            "20",
            "--widths",
            "--json",
        ];
        let report = ok(run(hedge, &args));
        serde_json::from_str(report.lines().next().unwrap()).unwrap()
    };
    let v = eval(data("inputs.txt").to_str().unwrap());

    let truth: Vec<usize> = vectors("inputs.txt")
        .iter()
        .map(|(l, _)| l.unwrap())
        .collect();
    let exporter_accuracy = truth
        .iter()
        .zip(&r.predicted)
        .filter(|(t, p)| t == p)
        .count() as f64
        / truth.len() as f64;
    assert_eq!(v["test_images"], 60);
    assert!((v["float_accuracy"].as_f64().unwrap() - exporter_accuracy).abs() < 1e-9);
    assert_eq!(v["encrypted_agreement"], 1.0);
    // The same test set labelled with the class names the model carries: the same report.
    let named: String = std::fs::read_to_string(data("inputs.txt"))
        .unwrap()
        .lines()
        .map(|l| match l.split_once(':') {
            Some((i, rest)) => format!("{}:{rest}\n", names[i.trim().parse::<usize>().unwrap()]),
            None => format!("{l}\n"),
        })
        .collect();
    std::fs::write(p("named.txt"), named).unwrap();
    let w = eval(&p("named.txt"));
    assert_eq!(w["float_accuracy"], v["float_accuracy"], "names as labels");

    // --encrypt-from: a tensor the second layer reads works (the first layer and its ReLU
    // then run in plaintext); the Add's output feeds the ReLU, not a dense layer.
    ok(protect(&["--encrypt-from", "next_activations"]));
    let o = protect(&["--encrypt-from", "add_result"]);
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        e.contains("not a dense layer") && e.contains("the next one is \"MatMul1\""),
        "{e}"
    );
    // An extractor at an operator set tract is not tested against (PyTorch's export, opset
    // 20): one warning that says what it means and what to do, not tract's on every parse.
    let o = run(
        hedge,
        &[
            "protect",
            "--model",
            data("torch-mlp.onnx").to_str().unwrap(),
            "--keys",
            &p("keys"),
            "--variant",
            "last",
            "--calibration",
            calibration,
            "--encrypt-from",
            "/0/0.2/Gemm",
            "--out",
            &p("torch.bundle"),
        ],
    );
    ok(o.clone());
    let e = String::from_utf8_lossy(&o.stderr);
    assert_eq!(e.matches("uses ONNX operator set 20").count(), 1, "{e}");
    assert!(e.contains("opset_version=18"), "{e}");
    assert!(!e.contains("tract is only tested"), "{e}");
}

/// Issue 22: the logistic regression on raw breast-cancer features (30 features from 0.001 to
/// 3,234, no scaler), as a new user exports it, runs encrypted in `last` and agrees with
/// scikit-learn's own predict() on its 100 held-out inputs but for those beyond the calibration
/// range or near-ties — it agreed on 40 % before.
#[test]
fn a_linear_model_on_raw_features_runs_as_it_comes() {
    for level in [SecurityLevel::L128, SecurityLevel::L256] {
        raw_logistic_regression(level);
    }
}

fn raw_logistic_regression(level: SecurityLevel) {
    let set = keys::generate(ParameterSet::for_level(level));
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/raw-features");
    let read = |name: &str| -> Vec<(Option<usize>, Vec<f32>)> {
        hedge::input::vectors::read_samples(&dir.join(name))
            .unwrap()
            .into_iter()
            .map(|s| (s.label, s.values))
            .collect()
    };
    let calibration: Vec<Vec<f32>> = read("calibration.txt").into_iter().map(|v| v.1).collect();
    let head = Network::load(&dir.join("model.onnx"), None).unwrap().head;
    let (q, mut engine, decoding) = encrypted(&set, &head, Variant::Last, &calibration);
    assert_eq!(q.bits, hedge::model::quant::LAST_WIDE_BITS);
    let inputs = read("inputs.txt");
    let beyond = beyond_calibration(&calibration);
    let (mut agree, mut clamped, mut margin) = (0, 0, f64::MAX);
    for (label, x) in &inputs {
        let d = decrypt(&engine.infer_plain(x).unwrap(), &decoding, &set.secret).unwrap();
        margin = margin.min(d.noise_margin_bits);
        let beyond = beyond(x);
        if Some(d.class) == *label {
            agree += 1;
        } else {
            assert!(
                beyond || near_tie(&head, x),
                "an unexplained disagreement: {:?}",
                head.forward(x)
            );
            clamped += beyond as usize;
        }
    }
    eprintln!(
        "raw logistic regression, last, {level:?}: {agree}/{} agree with predict() ({clamped} \
         of the others beyond the calibration range), noise margin ≥ {margin:.1} bits",
        inputs.len()
    );
    assert!(agree >= 99, "{agree}/100");
    assert!(margin > 4.0, "{margin}");
}

/// Whether an input has a feature beyond what the calibration inputs cover, with the quarter
/// of headroom each side the quantiser keeps: the board clamps it.
fn beyond_calibration(calibration: &[Vec<f32>]) -> impl Fn(&[f32]) -> bool + '_ {
    let dim = calibration.first().map_or(0, Vec::len);
    let (lo, hi): (Vec<f32>, Vec<f32>) = (0..dim)
        .map(|i| {
            calibration
                .iter()
                .map(|c| c[i])
                .fold((f32::MAX, f32::MIN), |(l, h), v| (l.min(v), h.max(v)))
        })
        .unzip();
    move |x: &[f32]| {
        x.iter()
            .enumerate()
            .any(|(i, &v)| (v - (lo[i] + hi[i]) / 2.0).abs() > 1.25 * (hi[i] - lo[i]) / 2.0)
    }
}

/// Whether the float model's two best scores are within 0.1 of each other.
fn near_tie(head: &Classifier, x: &[f32]) -> bool {
    let mut f = head.forward(x);
    f.sort_by(|a, b| b.total_cmp(a));
    f[0] - f[1] < 0.1
}

fn pipeline_vectors(name: &str) -> Vec<(Option<usize>, Vec<f32>)> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/pipelines")
        .join(name);
    hedge::input::vectors::read_samples(&path)
        .unwrap()
        .into_iter()
        .map(|s| (s.label, s.values))
        .collect()
}

/// PyTorch's nn.GELU() below opset 20 is five nodes (x·(1 + erf(x/√2))·½), Keras' tanh form
/// through tf2onnx eight: they import as the Gelu operator does — the same head, both layers
/// encrypted — where before the split stopped at the Erf (or the Pow) and left the first
/// layer and its activation in the plaintext extractor.
#[test]
fn a_decomposed_gelu_imports_as_the_gelu_operator() {
    let load = |m: &str| {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/data/pipelines")
            .join(m);
        Network::load(&path, None).unwrap_or_else(|e| panic!("{m}: {e}"))
    };
    let (decomposed, operator) = (load("torch-gelu-mlp.onnx"), load("gelu-mlp.onnx"));
    assert!(decomposed.extractor.is_none(), "both layers in the head");
    assert_eq!(decomposed.head.activation, Some(Activation::Gelu));
    for (_, x) in pipeline_vectors("torch-gelu-mlp.inputs.txt") {
        assert_eq!(decomposed.head.forward(&x), operator.head.forward(&x));
    }
    // Keras' gelu(approximate=True) as tf2onnx writes it: Mul ½, Pow 3, Mul, Add, Mul, Tanh,
    // Add, Mul.
    let keras = load("keras-gelu-tanh.onnx");
    assert!(keras.extractor.is_none(), "both layers in the head");
    assert_eq!(keras.head.activation, Some(Activation::GeluTanh));
}

/// Issue 22: models with their pre-processing, as users export them
/// (tests/data/pipelines, scripts/export_pipelines.py, on scikit-learn's wine data whose
/// features run from 0.1 to 1,680): Pipeline(StandardScaler, LogisticRegression) (Scaler and
/// LinearClassifier), Pipeline(StandardScaler, MLPClassifier) (Scaler), the same exported from
/// float64 arrays (Sub, Div, float64 weights), Dense → BatchNormalization → ReLU → Dense, and
/// MLPs with tanh and logistic (scikit-learn pipelines), leaky ReLU and GELU (opset 20)
/// activations, Keras' own exports, and a Normalizer in front (L2, MAX, L1). Each imports
/// unedited — the linear pre-processing folded into the first layer, no extractor; a
/// Normalizer (not linear) in a plaintext extractor of standard operators, the encrypted head
/// unchanged — and runs encrypted in every variant that applies, agreeing with the exporter's
/// own predictions on all of its 60 held-out inputs but at most three explained ones (`act`:
/// 8 inputs, within its expected agreement).
#[test]
fn models_with_their_preprocessing_import_and_run_encrypted() {
    let set = keys::generate(ParameterSet::for_level(SecurityLevel::L128));
    let calibration: Vec<Vec<f32>> = pipeline_vectors("calibration.txt")
        .into_iter()
        .map(|v| v.1)
        .collect();
    let cases: &[(&str, &[Variant])] = &[
        ("scaler-logistic", &[Variant::Last, Variant::Noact]),
        ("scaler-mlp", &[Variant::Last, Variant::Act]),
        ("float64-scaler-mlp", &[Variant::Last, Variant::Act]),
        ("dense-batchnorm", &[Variant::Last, Variant::Act]),
        // Any univariate activation (issue 22 part 4).
        ("scaler-mlp-tanh", &[Variant::Last, Variant::Act]),
        ("scaler-mlp-logistic", &[Variant::Last, Variant::Act]),
        ("leaky-mlp", &[Variant::Last, Variant::Act]),
        ("gelu-mlp", &[Variant::Last, Variant::Act]),
        // GELU as PyTorch writes it below opset 20: Div, Erf, Add, Mul, Mul.
        ("torch-gelu-mlp", &[Variant::Last, Variant::Act]),
        // Keras through tf2onnx (scripts/export_keras_pipelines.py): a Normalization layer
        // (Sub, Mul), Dense → BatchNormalization (a Mul and an Add) → ReLU → Dense, and GELU's
        // tanh form in eight nodes.
        ("keras-batchnorm", &[Variant::Last, Variant::Act]),
        ("keras-gelu-tanh", &[Variant::Last, Variant::Act]),
        // A Normalizer in front: each input divided by its own norm, in the extractor.
        ("normalizer-logistic", &[Variant::Last, Variant::Noact]),
        ("scaler-normalizer-mlp", &[Variant::Last, Variant::Act]),
        ("normalizer-l1-mlp", &[Variant::Last, Variant::Act]),
    ];
    for &(model, variants) in cases {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/data/pipelines")
            .join(format!("{model}.onnx"));
        let network = Network::load(&path, None).unwrap_or_else(|e| panic!("{model}: {e}"));
        assert_eq!(
            network.extractor.is_some(),
            model.contains("normalizer"),
            "{model}: linear pre-processing folded, a Normalizer extracted"
        );
        let head = &network.head;
        assert_eq!(head.in_dim(), 13, "{model}");
        // The head's inputs: through the extractor where there is one.
        let features = |x: Vec<f32>| match network.extractor() {
            Some(e) => e.run(&x).unwrap(),
            None => x,
        };
        let calibration: Vec<Vec<f32>> = calibration.iter().cloned().map(features).collect();
        let inputs: Vec<(Option<usize>, Vec<f32>)> =
            pipeline_vectors(&format!("{model}.inputs.txt"))
                .into_iter()
                .map(|(label, x)| (label, features(x)))
                .collect();
        let float_agree = inputs
            .iter()
            .filter(|(label, x)| Some(argmax(&head.forward(x))) == *label)
            .count();
        assert!(
            float_agree + 1 >= inputs.len(),
            "{model}: the float head agrees with the exporter on {float_agree} of {}",
            inputs.len()
        );
        // Why an input may disagree: a feature beyond what the calibration inputs cover (it
        // is clamped), or a near-tie of the float scores.
        let beyond = beyond_calibration(&calibration);
        let explained = |x: &[f32]| beyond(x) || near_tie(head, x);
        for &variant in variants {
            let (_, mut engine, decoding) = encrypted(&set, head, variant, &calibration);
            let count = if variant == Variant::Act {
                8
            } else {
                inputs.len()
            };
            let disagree: Vec<&Vec<f32>> = inputs
                .iter()
                .take(count)
                .filter(|(label, x)| {
                    let r = engine.infer_plain(x).unwrap();
                    Some(decrypt(&r, &decoding, &set.secret).unwrap().class) != *label
                })
                .map(|(_, x)| x)
                .collect();
            let unexplained = disagree.iter().filter(|x| !explained(x)).count();
            eprintln!(
                "{model:>20} {:>5}: {}/{count} agree with the exporter ({unexplained} of the \
                 others neither beyond the calibration range nor a near-tie)",
                variant.name(),
                count - disagree.len()
            );
            // Exact variants: every disagreement explained, and at most 3 in 60 (wine's
            // held-out inputs run to 2.2× the calibration range, and hold near-ties with logit
            // margins of 0.001 to 0.06 that 8-bit — noact: 5-bit — weights may turn). act:
            // within its expected agreement on 8 inputs.
            match variant {
                Variant::Act => assert!(disagree.len() <= 1, "{model} act: {disagree:?}"),
                _ => assert!(
                    unexplained == 0 && disagree.len() <= 3,
                    "{model} {variant:?}: {} disagree, {unexplained} unexplained",
                    disagree.len()
                ),
            }
        }
    }
}
