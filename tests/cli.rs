//! The binaries end to end on small shapes: keygen, synth, protect, inspect, hedged, decrypt,
//! and every refusal a user can run into.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn hedge(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_hedge"))
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run hedge")
}

fn hedged(args: &[&str], stdin: &str) -> Output {
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_hedged"))
        .args(args)
        .env("RUST_LOG", "warn")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run hedged");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "failed: {}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn refused(o: &Output, needle: &str) {
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "unexpectedly succeeded");
    assert!(err.contains(needle), "expected {needle:?} in: {err}");
    assert!(!err.contains("panicked"), "panicked: {err}");
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

struct Fixture {
    _dir: tempfile::TempDir,
    root: PathBuf,
    keys: PathBuf,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let keys = root.join("keys");
    ok(&hedge(&["keygen", "--security", "128", "--out", s(&keys)]));
    ok(&hedge(&[
        "synth",
        "--out",
        s(&root),
        "--shape",
        "48,16,10",
        "--test",
        "12",
        "--calibration",
        "60",
    ]));
    Fixture {
        _dir: dir,
        root,
        keys,
    }
}

/// `hedge protect` of `model` with `calibration` into `out`, and `extra` flags.
fn protect_with(
    f: &Fixture,
    model: &Path,
    calibration: &Path,
    variant: &str,
    out: &Path,
    extra: &[&str],
) -> Output {
    let mut args = vec![
        "protect",
        "--model",
        s(model),
        "--keys",
        s(&f.keys),
        "--variant",
        variant,
        "--calibration",
        s(calibration),
        "--out",
        s(out),
    ];
    args.extend_from_slice(extra);
    hedge(&args)
}

fn protect(f: &Fixture, variant: &str) -> PathBuf {
    let bundle = f.root.join(format!("{variant}.bundle"));
    let (model, calibration) = (f.root.join("model.onnx"), f.root.join("calibration.txt"));
    let mut args = vec![
        "protect",
        "--model",
        s(&model),
        "--keys",
        s(&f.keys),
        "--variant",
        variant,
        "--calibration",
        s(&calibration),
        "--out",
        s(&bundle),
    ];
    // The fixture's model has a ReLU: noact leaves it out, as asked.
    if variant == "noact" {
        args.push("--drop-activation");
    }
    ok(&hedge(&args));
    bundle
}

#[test]
fn keygen_keeps_secrets_private() {
    let f = fixture();
    for (name, mode) in [
        ("secret.key", 0o600),
        ("signing.key", 0o600),
        ("public.key", 0o644),
    ] {
        let m = std::fs::metadata(f.keys.join(name))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(m, mode, "{name}");
    }
}

#[test]
fn protect_run_decrypt_every_variant_and_mode() {
    use hedge::model::quant::{QuantModel, Variant};
    let f = fixture();
    let test: Vec<Vec<f32>> = hedge::input::vectors::read_samples(&f.root.join("test.txt"))
        .unwrap()
        .into_iter()
        .map(|s| s.values)
        .collect();
    let model = hedge::model::onnx::load(&f.root.join("model.onnx")).unwrap();
    let calibration: Vec<Vec<f32>> =
        hedge::input::vectors::read_samples(&f.root.join("calibration.txt"))
            .unwrap()
            .into_iter()
            .map(|s| s.values)
            .collect();
    let params =
        hedge::crypto::params::ParameterSet::for_level(hedge::crypto::params::SecurityLevel::L128);
    for (name, variant) in [
        ("last", Variant::Last),
        ("noact", Variant::Noact),
        ("act", Variant::Act),
    ] {
        let bundle = protect(&f, name);
        let summary = ok(&hedge(&["inspect", s(&bundle), "--keys", s(&f.keys)]));
        assert!(
            summary.contains(&format!("variant     {name}")),
            "{summary}"
        );
        // The integer reference: the same deterministic quantisation `hedge protect` did.
        let q = QuantModel::quantize(&model, variant, None, &calibration, &params).unwrap();
        let reference = |x: &[f32]| q.reference(&q.input.quantize(x).unwrap()).scores;
        let bound = q.act_score_bound(&params);
        let inputs: Vec<&Vec<f32>> = test
            .iter()
            .take(if variant == Variant::Act { 2 } else { 6 })
            .collect();
        let input: String = inputs
            .iter()
            .map(|x| hedge::input::vectors::format_sample(None, x) + "\n")
            .collect();
        for mode in ["plain", "enc"] {
            let out = f.root.join(format!("out-{name}-{mode}"));
            // Each output directory keeps its own board state (identity, sequence): a board.
            let device = format!("board-{name}-{mode}");
            ok(&hedged(
                &[
                    "--bundle",
                    s(&bundle),
                    "--verifying-key",
                    s(&f.keys.join("verifying.key")),
                    "--features",
                    mode,
                    "--out-dir",
                    s(&out),
                    "--device-id",
                    &device,
                ],
                &input,
            ));
            let mut files: Vec<String> = std::fs::read_dir(&out)
                .unwrap()
                .map(|e| e.unwrap().path().to_str().unwrap().to_string())
                .filter(|p| p.ends_with(".bin"))
                .collect();
            files.sort();
            assert_eq!(files.len(), inputs.len());
            let mut args = vec![
                "decrypt",
                "--keys",
                s(&f.keys),
                "--enrol",
                "--reveal",
                "scores",
            ];
            args.extend(files.iter().map(String::as_str));
            let decrypted = ok(&hedge(&args));
            for (d, x) in decrypted.lines().zip(&inputs) {
                let v: serde_json::Value = serde_json::from_str(d).unwrap();
                let z = reference(x);
                if variant == Variant::Act {
                    // Exact up to the stated bound (6σ per score).
                    for (j, got) in v["scores"].as_array().unwrap().iter().enumerate() {
                        let got = got.as_f64().unwrap() / q.out_scale;
                        assert!(
                            (got - z[j] as f64).abs() <= bound[j] + 1.0,
                            "{name}/{mode} score {j}"
                        );
                    }
                } else {
                    let want = hedge::model::argmax(&z) as u64;
                    assert_eq!(v["class"].as_u64(), Some(want), "{name}/{mode}");
                }
            }
        }
    }
}

/// The `act` accuracy knob end to end: a target chosen from the weighed settings, explicit
/// settings shown by protect and inspect, their bundle run by hedged and decrypted within the
/// bound of those settings, and settings that cannot be honoured refused.
#[test]
fn act_accuracy_is_bought_at_protect_and_shown_by_inspect() {
    use hedge::model::quant::QuantModel;
    let f = fixture();
    let (model_path, calibration) = (f.root.join("model.onnx"), f.root.join("calibration.txt"));
    let protect_act = |out: &str, extra: &[&str]| {
        let bundle = f.root.join(out);
        let mut args = vec![
            "protect",
            "--model",
            s(&model_path),
            "--keys",
            s(&f.keys),
            "--variant",
            "act",
            "--calibration",
            s(&calibration),
            "--out",
            s(&bundle),
        ];
        args.extend(extra);
        (hedge(&args), bundle)
    };
    let (o, _) = protect_act("cheapest.bundle", &["--act-agreement", "0"]);
    let text = ok(&o);
    assert!(text.contains("act settings weighed"), "{text}");
    assert!(
        text.contains(
            "act accuracy: 14 output(s) per bootstrap (classes, then check rows), 1 gadget \
             level(s): 16 bootstraps"
        ),
        "{text}"
    );
    let (o, bundle) = protect_act(
        "bought.bundle",
        &["--classes-per-bootstrap", "5", "--gadget-levels", "2"],
    );
    // 5 outputs a table: 3 tables a unit for 10 classes and 4 check rows.
    let line = "act accuracy: 5 output(s) per bootstrap (classes, then check rows), 2 gadget \
                level(s): 48 bootstraps";
    assert!(ok(&o).contains(line));
    let summary = ok(&hedge(&["inspect", s(&bundle), "--keys", s(&f.keys)]));
    assert!(summary.contains(line), "{summary}");
    assert!(summary.contains("expected agreement"), "{summary}");

    // The bundle runs and decrypts within the bound of its own settings.
    let model = hedge::model::onnx::load(&f.root.join("model.onnx")).unwrap();
    let read = |name: &str| -> Vec<Vec<f32>> {
        hedge::input::vectors::read_samples(&f.root.join(name))
            .unwrap()
            .into_iter()
            .map(|s| s.values)
            .collect()
    };
    let params =
        hedge::crypto::params::ParameterSet::for_level(hedge::crypto::params::SecurityLevel::L128)
            .with_pbs_levels(2)
            .unwrap();
    let q = QuantModel::quantize_act(&model, None, &read("calibration.txt"), &params, 5).unwrap();
    let bound = q.act_score_bound(&params);
    let test = read("test.txt");
    let input: String = test[..2]
        .iter()
        .map(|x| hedge::input::vectors::format_sample(None, x) + "\n")
        .collect();
    let out = f.root.join("out-bought");
    ok(&hedged(
        &[
            "--bundle",
            s(&bundle),
            "--verifying-key",
            s(&f.keys.join("verifying.key")),
            "--out-dir",
            s(&out),
            "--device-id",
            "board-bought",
        ],
        &input,
    ));
    let mut files: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().path().to_str().unwrap().to_string())
        .filter(|p| p.ends_with(".bin"))
        .collect();
    files.sort();
    assert_eq!(files.len(), 2);
    let mut args = vec![
        "decrypt",
        "--keys",
        s(&f.keys),
        "--enrol",
        "--reveal",
        "scores",
    ];
    args.extend(files.iter().map(String::as_str));
    let decrypted = ok(&hedge(&args));
    for (d, x) in decrypted.lines().zip(&test) {
        let v: serde_json::Value = serde_json::from_str(d).unwrap();
        let z = q.reference(&q.input.quantize(x).unwrap()).scores;
        for (j, got) in v["scores"].as_array().unwrap().iter().enumerate() {
            let got = got.as_f64().unwrap() / q.out_scale;
            assert!((got - z[j] as f64).abs() <= bound[j] + 1.0, "score {j}");
        }
    }

    let (o, _) = protect_act("x.bundle", &["--gadget-levels", "4"]);
    refused(&o, "gadget levels go from 1 to 3");
    let (o, _) = protect_act("x.bundle", &["--act-agreement", "1.5"]);
    refused(&o, "share in [0, 1]");
    let (o, _) = protect_act("x.bundle", &["--classes-per-bootstrap", "0"]);
    refused(&o, "at least 1");
    let o = hedge(&[
        "protect",
        "--model",
        s(&f.root.join("model.onnx")),
        "--keys",
        s(&f.keys),
        "--variant",
        "last",
        "--classes-per-bootstrap",
        "2",
        "--calibration",
        s(&f.root.join("calibration.txt")),
        "--out",
        s(&f.root.join("x.bundle")),
    ]);
    refused(&o, "apply to --variant act only");
}

/// `noact` on a model trained with a ReLU would silently compute another function: refused
/// with the flag that makes it explicit, which then works.
#[test]
fn a_silent_change_of_the_model_is_refused() {
    let f = fixture();
    let run = |variant: &str, extra: &[&str]| {
        let (model, calibration) = (f.root.join("model.onnx"), f.root.join("calibration.txt"));
        let out = f.root.join("x.bundle");
        let mut args = vec![
            "protect",
            "--model",
            s(&model),
            "--keys",
            s(&f.keys),
            "--variant",
            variant,
            "--calibration",
            s(&calibration),
            "--out",
            s(&out),
        ];
        args.extend(extra);
        hedge(&args)
    };
    // synth's model has a ReLU.
    refused(&run("noact", &[]), "pass --drop-activation");
    ok(&run("noact", &["--drop-activation"]));
    refused(&run("act", &["--drop-activation"]), "does not apply");
    refused(
        &run("noact", &["--activation", "relu"]),
        "--activation does not apply",
    );
}

#[test]
fn bad_bundles_are_refused_with_the_reason() {
    let f = fixture();
    let bundle = protect(&f, "last");
    let bytes = std::fs::read(&bundle).unwrap();
    let bad = f.root.join("bad.bundle");
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (bytes[..bytes.len() / 2].to_vec(), "truncated"),
        (
            {
                let mut b = bytes.clone();
                b[100] ^= 0x40;
                b
            },
            "checksum",
        ),
        (
            {
                let mut b = bytes.clone();
                b[8] ^= 1; // another format version
                b
            },
            "version",
        ),
        (b"garbage".to_vec(), "truncated"),
    ];
    for (content, reason) in cases {
        std::fs::write(&bad, content).unwrap();
        refused(&hedge(&["inspect", s(&bad), "--keys", s(&f.keys)]), reason);
        refused(
            &hedged(
                &[
                    "--bundle",
                    s(&bad),
                    "--verifying-key",
                    s(&f.keys.join("verifying.key")),
                    "--out-dir",
                    s(&f.root.join("o")),
                ],
                "",
            ),
            reason,
        );
    }
    // Signed by another backend.
    let other = f.root.join("other-keys");
    ok(&hedge(&["keygen", "--out", s(&other)]));
    refused(
        &hedge(&["inspect", s(&bundle), "--keys", s(&other)]),
        "signed by key",
    );
    // Results decrypted with the wrong secret key.
    let out = f.root.join("out");
    ok(&hedged(
        &[
            "--bundle",
            s(&bundle),
            "--verifying-key",
            s(&f.keys.join("verifying.key")),
            "--out-dir",
            s(&out),
        ],
        std::fs::read_to_string(f.root.join("test.txt"))
            .unwrap()
            .lines()
            .next()
            .unwrap(),
    ));
    let result = out.join("result-000001.bin");
    // Another backend's registry knows neither the board nor the bundle.
    refused(
        &hedge(&["decrypt", "--keys", s(&other), s(&result)]),
        "unknown device",
    );
    refused(
        &hedge(&["decrypt", "--keys", s(&other), "--enrol", s(&result)]),
        "unknown bundle",
    );
    // A corrupted result file.
    std::fs::write(f.root.join("junk.bin"), b"\x01garbage").unwrap();
    refused(
        &hedge(&["decrypt", "--keys", s(&f.keys), s(&f.root.join("junk.bin"))]),
        "undecodable result message",
    );
    // A model that is not ONNX.
    std::fs::write(f.root.join("junk.onnx"), b"nope").unwrap();
    refused(
        &hedge(&[
            "protect",
            "--model",
            s(&f.root.join("junk.onnx")),
            "--keys",
            s(&f.keys),
            "--variant",
            "last",
            "--calibration",
            s(&f.root.join("calibration.txt")),
            "--out",
            s(&f.root.join("x.bundle")),
        ]),
        "not an ONNX model",
    );
}

#[test]
fn bad_vectors_are_rejected_and_the_rest_processed() {
    let f = fixture();
    let bundle = protect(&f, "last");
    let test = std::fs::read_to_string(f.root.join("test.txt")).unwrap();
    let good = test.lines().next().unwrap();
    let values: Vec<&str> = good.split(':').nth(1).unwrap().split(',').collect();
    let short = values[..10].join(",");
    let nan = {
        let mut v = values.clone();
        v[3] = "NaN";
        v.join(",")
    };
    let huge = {
        let mut v = values.clone();
        v[0] = "1e30";
        v.join(",")
    };
    // Beyond what the bundle was calibrated on, within what it accepts: computed on the
    // clamped value, and said (issue 22: never silently wrong).
    let beyond = {
        let mut v = values.clone();
        let largest = values
            .iter()
            .map(|x| x.trim().parse::<f32>().unwrap().abs())
            .fold(0.0, f32::max);
        let far = (6.0 * largest).to_string();
        v[0] = &far;
        v.join(",")
    };
    let input = format!("{good}\n{short}\nhello world\n{nan}\n{huge}\n{good}\n{beyond}\n");
    let out = f.root.join("out");
    let o = hedged(
        &[
            "--bundle",
            s(&bundle),
            "--verifying-key",
            s(&f.keys.join("verifying.key")),
            "--out-dir",
            s(&out),
        ],
        &input,
    );
    ok(&o);
    let err = String::from_utf8_lossy(&o.stderr);
    for reason in [
        "line 2: 10 values, the bundle takes 48",
        "not a number",
        "NaN",
        "out of range",
        "1 feature(s) beyond the range the bundle was calibrated on",
    ] {
        assert!(err.contains(reason), "{reason} missing from {err}");
    }
    let results = std::fs::read_dir(&out)
        .unwrap()
        .filter(|e| e.as_ref().unwrap().path().extension() == Some("bin".as_ref()))
        .count();
    assert_eq!(results, 3);
}

/// Issue 22: a scikit-learn logistic regression on raw features spanning five orders of
/// magnitude (tests/data/raw-features, scripts/export_raw_logistic.py) agreed with its own
/// predict() on 40 % of inputs once protected, and protection said nothing. Now protection
/// measures the integer model against the float model on the calibration inputs and refuses,
/// naming the cause and the fix; nothing is written or recorded. The threshold is the user's
/// to lower knowingly. `last` takes the model as it comes: one scale per feature and wider
/// plaintext inputs, hidden values and W2, the widths and their cost printed, or widths set
/// with `--bits` within its noise budget; `noact`, whose 5-bit widths its noise budget fixes,
/// still refuses.
#[test]
fn a_model_that_would_be_silently_wrong_is_refused_at_protect() {
    let f = fixture();
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/raw-features");
    let (model, calibration) = (data.join("model.onnx"), data.join("calibration.txt"));
    let out = ok(&protect_with(
        &f,
        &model,
        &calibration,
        "last",
        &f.root.join("raw-wide-last.bundle"),
        &[],
    ));
    assert!(
        out.contains("inputs 10, W1 8, hidden 10, W2 12 bits — widened"),
        "{out}"
    );
    assert!(out.contains("costs 8 bits of noise margin"), "{out}");
    assert!(
        out.contains("agrees with the float model on 100.0 %"),
        "{out}"
    );
    // Widths set by hand are kept: the default ones are refused as before, others are taken
    // and printed "as set", and what the noise budget or the variant cannot take is refused.
    let set = |bits: &str, variant: &str| {
        protect_with(
            &f,
            &model,
            &calibration,
            variant,
            &f.root.join(format!("raw-bits-{variant}.bundle")),
            &["--bits", bits],
        )
    };
    refused(&set("8,8,8,8", "last"), "below --min-agreement 99.0 %");
    let out = ok(&set("12,8,10,12", "last"));
    assert!(
        out.contains("inputs 12, W1 8, hidden 10, W2 12 bits — as set (costs 8 bits"),
        "{out}"
    );
    refused(
        &set("8,8,14,14", "last"),
        "cost 18 bits of noise margin; at most 8",
    );
    refused(&set("8,8,8", "last"), "four widths");
    refused(&set("10,8,10,12", "noact"), "applies to --variant last");
    let bundle = f.root.join("raw-noact.bundle");
    let o = protect_with(&f, &model, &calibration, "noact", &bundle, &[]);
    refused(&o, "agrees with the float model on");
    refused(&o, "below --min-agreement 99.0 %");
    refused(&o, "orders of magnitude");
    refused(&o, "StandardScaler");
    assert!(!bundle.exists(), "a refused model writes no bundle");
    // Accepted knowingly: the agreement is printed.
    let lowered = ["--min-agreement", "0.2"];
    let out = ok(&protect_with(
        &f,
        &model,
        &calibration,
        "noact",
        &bundle,
        &lowered,
    ));
    assert!(
        out.contains("integer model agrees with the float model on"),
        "{out}"
    );
    // The synthetic model agrees (a near-tie or two in 60 inputs is within the interval).
    let (model, calibration) = (f.root.join("model.onnx"), f.root.join("calibration.txt"));
    let out = ok(&protect_with(
        &f,
        &model,
        &calibration,
        "last",
        &f.root.join("synth.bundle"),
        &[],
    ));
    assert!(out.contains("calibration inputs (95 % interval"), "{out}");
    let o = protect_with(
        &f,
        &model,
        &calibration,
        "last",
        &f.root.join("x.bundle"),
        &["--min-agreement", "1.5"],
    );
    refused(&o, "a fraction from 0 to 1");
}

/// Issue 22: an MLP with tanh — then an activation hedge did not evaluate encrypted — was
/// protected with `--variant noact` by moving its first layer and tanh into the plaintext
/// extractor, its hidden weights shipped in the clear although both layers were asked to be
/// encrypted. Now tanh is bootstrapped like ReLU (`act`), `noact` refuses to drop it unless
/// told, and with a function no model is trained with (Sin) the variants that encrypt both
/// layers refuse, naming where the cut falls and why; `last`, whose first layer runs in
/// plaintext by design, takes it.
#[test]
fn a_layer_is_never_moved_into_plaintext_quietly() {
    use prost::Message;
    let f = fixture();
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/pipelines");
    let (tanh, calibration) = (
        data.join("tanh-mlp.onnx"),
        data.join("tanh-mlp.calibration.txt"),
    );
    let mut model = tract_onnx::pb::ModelProto::decode(&std::fs::read(&tanh).unwrap()[..]).unwrap();
    let graph = model.graph.as_mut().unwrap();
    graph
        .node
        .iter_mut()
        .find(|n| n.op_type == "Tanh")
        .unwrap()
        .op_type = "Sin".into();
    let sin = f.root.join("sin-mlp.onnx");
    std::fs::write(&sin, model.encode_to_vec()).unwrap();
    let protect = |model: &Path, variant: &str, extra: &[&str]| {
        let bundle = f.root.join(format!(
            "{}-{variant}.bundle",
            model.file_stem().unwrap().to_string_lossy()
        ));
        (
            protect_with(&f, model, &calibration, variant, &bundle, extra),
            bundle,
        )
    };
    for (variant, extra) in [("noact", &["--drop-activation"][..]), ("act", &[][..])] {
        let (o, bundle) = protect(&sin, variant, extra);
        refused(&o, "encrypts both dense layers");
        refused(&o, "(Sin)");
        refused(&o, "would run in plaintext on the board");
        refused(&o, "--encrypt-from");
        assert!(!bundle.exists());
    }
    let (o, bundle) = protect(&sin, "last", &[]);
    let out = ok(&o);
    assert!(out.contains("integer model agrees"), "{out}");
    assert!(bundle.exists());
    // The tanh itself: bootstrapped, and dropped only when asked.
    let (o, bundle) = protect(&tanh, "noact", &[]);
    refused(&o, "the model has a tanh after its hidden layer");
    refused(&o, "--drop-activation");
    assert!(!bundle.exists());
    let (o, bundle) = protect(&tanh, "act", &[]);
    let out = ok(&o);
    assert!(out.contains("act accuracy"), "{out}");
    assert!(bundle.exists());
}

/// Issue 22's small things: a tree ensemble is refused saying what hedge encrypts and what to
/// export instead; `hedged --print-identity` needs only the state directory (a board prints
/// its identity before it has a bundle), and says what it needs without one.
#[test]
fn refusals_that_lead_somewhere_and_an_identity_without_a_bundle() {
    let f = fixture();
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/pipelines");
    let o = protect_with(
        &f,
        &data.join("random-forest.onnx"),
        &data.join("calibration.txt"),
        "last",
        &f.root.join("rf.bundle"),
        &[],
    );
    refused(
        &o,
        "is a tree ensemble (random forest, gradient boosting, decision tree): hedge encrypts \
         dense classifiers only",
    );
    let state = f.root.join("board-state");
    let first = ok(&hedged(&["--print-identity", "--spool-dir", s(&state)], ""));
    let again = ok(&hedged(&["--print-identity", "--spool-dir", s(&state)], ""));
    assert_eq!(first.trim().len(), 64, "{first}");
    assert_eq!(first, again, "made once, then read");
    refused(&hedged(&["--print-identity"], ""), "pass --spool-dir");
}

/// `--prune`: hidden units go while the model's classes stay the same on the share of
/// calibration inputs asked for; the bundle has the fewer units and its results decrypt to the
/// pruned model's classes. A share outside (0, 1] is refused with what it means.
#[test]
fn protect_prunes_hidden_units_to_an_agreement() {
    let f = fixture();
    let (model, calibration) = (f.root.join("model.onnx"), f.root.join("calibration.txt"));
    let bundle = f.root.join("pruned.bundle");
    let out = ok(&protect_with(
        &f,
        &model,
        &calibration,
        "act",
        &bundle,
        &["--prune", "0.95"],
    ));
    let line = out
        .lines()
        .find(|l| l.starts_with("pruned 16 → "))
        .unwrap_or_else(|| panic!("{out}"));
    let kept: usize = line["pruned 16 → ".len()..]
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(kept < 16, "{line}");
    assert!(line.contains("of 60 calibration inputs"), "{line}");
    let summary = ok(&hedge(&["inspect", s(&bundle), "--keys", s(&f.keys)]));
    assert!(
        summary.contains(&format!("shape       48 → {kept} → 10")),
        "{summary}"
    );
    refused(
        &protect_with(
            &f,
            &model,
            &calibration,
            "act",
            &bundle,
            &["--prune", "1.5"],
        ),
        "share of calibration inputs",
    );
}

/// `hedge bench` counts the bytes a board sends: its results are signed messages, as `hedged`
/// publishes them, and `result_bytes` is their length.
#[test]
fn bench_counts_signed_results() {
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("work");
    let out = ok(&hedge(&[
        "bench",
        "--quiet",
        "--shape",
        "64,16,10",
        "--variant",
        "last",
        "--features",
        "plain",
        "--inputs",
        "2",
        "--security",
        "128",
        "--json",
        "--work-dir",
        s(&work),
    ]));
    let cell: serde_json::Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    let result_bytes = cell["result_bytes"].as_u64().unwrap() as usize;
    let results = std::fs::read(work.join("results.bin")).unwrap();
    let (len, rest) = results.split_at(8);
    let len = u64::from_le_bytes(len.try_into().unwrap()) as usize;
    assert_eq!(len, result_bytes);
    let message = hedge::transport::message::ResultMessage::decode(&rest[..len]).unwrap();
    let board =
        ed25519_dalek::VerifyingKey::from_bytes(&message.signer().expect("signed")).unwrap();
    message.verify(&board).unwrap();
}
