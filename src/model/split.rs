//! Splitting a trained network at the start of its dense classifier head: the layers before
//! (the feature extractor, convolutions and pooling, which the paper treats as common
//! knowledge) stay plaintext ONNX and run on the edge with tract; the head (dense →
//! activation → dense) is what hedge quantises and encrypts.
//!
//! The split point is the input of the first dense layer of the trailing run of dense-head
//! operators, or the layer named by `--encrypt-from` (a node name, or the tensor it reads).

use super::error::{FeatureFault, ModelError, Result};
use super::onnx::{all_no_ops, classifier_from_graph, is_dense_op, is_head_op};
use super::Classifier;
use prost::Message;
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use tract_onnx::pb;
use tract_onnx::prelude::*;

fn err(msg: impl Into<String>) -> ModelError {
    ModelError::Import(msg.into())
}

/// A network cut in two.
pub struct Split {
    /// The plaintext feature extractor as ONNX, `None` when the network is only the head.
    pub extractor: Option<Vec<u8>>,
    pub head: Classifier,
    /// The tensor between them.
    pub point: String,
    /// When the cut was found, not named (`--encrypt-from`), and fell after a dense layer:
    /// that layer and what stopped the head (e.g. a Tanh), which will run in plaintext.
    pub plaintext_dense: Option<PlaintextDense>,
}

/// A dense layer the automatic cut left in the plaintext extractor.
#[derive(Clone, Debug, PartialEq)]
pub struct PlaintextDense {
    /// The dense node, as `"name" (Op)`.
    pub layer: String,
    /// The node after it that is not part of a head hedge encrypts.
    pub blocker: String,
}

pub fn split(bytes: &[u8], encrypt_from: Option<&str>) -> Result<Split> {
    let mut model =
        pb::ModelProto::decode(bytes).map_err(|e| err(format!("not an ONNX model: {e}")))?;
    if let Some(g) = model.graph.as_mut() {
        super::onnx::fuse_spelled_activations(g);
    }
    super::onnx::expand_leading_normalizers(&mut model);
    let graph = model
        .graph
        .clone()
        .ok_or_else(|| err("ONNX model has no graph"))?;
    let nodes = &graph.node;
    let is_dense = |n: &pb::NodeProto| is_dense_op(&n.op_type);
    let constants: HashSet<&str> = graph
        .initializer
        .iter()
        .map(|t| t.name.as_str())
        .chain(
            nodes
                .iter()
                .filter(|n| n.op_type == "Constant")
                .flat_map(|n| n.output.iter().map(String::as_str)),
        )
        .collect();
    // The tensor a dense layer reads (its input that is not a weight).
    let data_input = |n: &pb::NodeProto| {
        n.input
            .iter()
            .find(|i| !constants.contains(i.as_str()))
            .cloned()
    };
    let start = match encrypt_from {
        Some(name) => {
            let reads = |n: &pb::NodeProto| data_input(n).as_deref() == Some(name);
            match nodes
                .iter()
                .position(|n| is_dense(n) && (n.name == name || reads(n)))
            {
                Some(i) => i,
                None => {
                    // The name exists but is no dense layer's: say what it is and where the
                    // next dense layer starts.
                    let at = nodes.iter().position(|n| {
                        n.name == name || reads(n) || n.output.iter().any(|o| o == name)
                    });
                    let Some(at) = at else {
                        return Err(err(format!(
                            "--encrypt-from {name}: no such layer or tensor"
                        )));
                    };
                    let next = nodes[at..]
                        .iter()
                        .find(|n| is_dense(n))
                        .map(|n| format!(" (the next one is {:?})", n.name))
                        .unwrap_or_default();
                    return Err(err(format!(
                        "--encrypt-from {name}: that is node {:?} ({}) or its tensor, not a dense \
                         layer; the encrypted part must start at a dense layer (Gemm, MatMul or \
                         LinearClassifier){next}",
                        nodes[at].name, nodes[at].op_type
                    )));
                }
            }
        }
        None => {
            // The trailing run of head operators, then its first dense layer.
            let mut run_start = nodes.len();
            while run_start > 0 && is_head_op(&nodes[run_start - 1].op_type) {
                run_start -= 1;
            }
            let first = (run_start..nodes.len()).find(|&i| is_dense(&nodes[i]));
            match first {
                Some(i) => i,
                None => {
                    if let Some(n) = nodes[..run_start]
                        .last()
                        .filter(|n| not_dense(&n.op_type).is_some())
                    {
                        return Err(err(format!(
                            "node {:?} ({}) is {}: hedge encrypts dense classifiers only — \
                             linear models (LogisticRegression, LinearSVC, SGDClassifier) and \
                             MLPs (MLPClassifier, PyTorch, Keras); train and export one of those",
                            n.name,
                            n.op_type,
                            not_dense(&n.op_type).unwrap_or_default()
                        )));
                    }
                    let blocker = nodes[..run_start]
                        .last()
                        .map(|n| {
                            format!(
                                ": node {:?} ({}) is not part of a dense head",
                                n.name, n.op_type
                            )
                        })
                        .unwrap_or_default();
                    return Err(err(format!(
                        "no dense classifier head at the end of the network{blocker}; name where \
                         the encrypted part starts with --encrypt-from"
                    )));
                }
            }
        }
    };
    let input = super::onnx::graph_input(&graph)?;
    // Casts and reshapes before the first dense layer are not a feature extractor.
    let start = if encrypt_from.is_none() && all_no_ops(&nodes[..start]) {
        0
    } else {
        start
    };
    let point = if start == 0 {
        input.clone()
    } else {
        data_input(&nodes[start]).ok_or_else(|| err("dense layer without an input"))?
    };
    let head_graph = pb::GraphProto {
        node: nodes[start..].to_vec(),
        ..graph.clone()
    };
    let head = classifier_from_graph(&head_graph, &point)?;
    let graph_inputs: HashSet<&str> = graph.input.iter().map(|i| i.name.as_str()).collect();
    let extractor = if graph_inputs.contains(point.as_str()) {
        None
    } else {
        Some(extractor_bytes(&model, start, &point)?)
    };
    let describe = |n: &pb::NodeProto| format!("{:?} ({})", n.name, n.op_type);
    let plaintext_dense = match encrypt_from {
        Some(_) => None,
        None => nodes[..start]
            .iter()
            .rposition(is_dense)
            .map(|i| PlaintextDense {
                layer: describe(&nodes[i]),
                blocker: nodes[i + 1..start]
                    .iter()
                    .rfind(|n| !is_head_op(&n.op_type))
                    .map(describe)
                    .unwrap_or_else(|| "the cut".into()),
            }),
    };
    Ok(Split {
        extractor,
        head,
        point,
        plaintext_dense,
    })
}

/// What a classifier that is no dense network is, for the refusal's words.
fn not_dense(op: &str) -> Option<&'static str> {
    match op {
        "TreeEnsembleClassifier" | "TreeEnsembleRegressor" | "TreeEnsemble" => {
            Some("a tree ensemble (random forest, gradient boosting, decision tree)")
        }
        "SVMClassifier" | "SVMRegressor" => Some("a kernel support-vector machine"),
        "LabelEncoder" | "OneHotEncoder" | "CategoryMapper" | "Imputer" | "Binarizer" => {
            Some("categorical pre-processing hedge does not encrypt")
        }
        _ => None,
    }
}

/// The network up to (excluding) node `start`, with `point` as its only output.
fn extractor_bytes(model: &pb::ModelProto, start: usize, point: &str) -> Result<Vec<u8>> {
    let graph = model.graph.as_ref().expect("checked");
    let nodes = graph.node[..start].to_vec();
    let used: HashSet<&str> = nodes
        .iter()
        .flat_map(|n| n.input.iter().map(String::as_str))
        .collect();
    let initializer = graph
        .initializer
        .iter()
        .filter(|t| used.contains(t.name.as_str()))
        .cloned()
        .collect();
    let output = pb::ValueInfoProto {
        name: point.to_string(),
        ..Default::default()
    };
    let cut = pb::ModelProto {
        graph: Some(pb::GraphProto {
            node: nodes,
            initializer,
            output: vec![output],
            value_info: Vec::new(),
            ..graph.clone()
        }),
        ..model.clone()
    };
    Ok(cut.encode_to_vec())
}

/// A plaintext feature extractor: public, like the paper's convolutional layers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PlainExtractor {
    /// ONNX model from the network's input to the classifier's input.
    pub onnx: Vec<u8>,
    /// Its input shape, e.g. [1, 1, 28, 28].
    pub input_shape: Vec<usize>,
    /// Raw 8-bit pixels are multiplied by this (1/255 for inputs in [0, 1]).
    pub pixel_scale: f32,
}

impl PlainExtractor {
    pub fn prepare(&self) -> Result<Extractor> {
        let mut extractor = Extractor::new(&self.onnx, &self.input_shape)?;
        extractor.pixel_scale = self.pixel_scale;
        Ok(extractor)
    }
}

/// A feature extractor ready to run: ONNX through tract, optimised for one fixed input shape.
pub struct Extractor {
    plan: std::sync::Arc<TypedSimplePlan>,
    pub input_shape: Vec<usize>,
    pub out_dim: usize,
    /// 8-bit pixels are multiplied by this for [`Self::run_image`] (1 unless set).
    pub pixel_scale: f32,
}

/// The ONNX operator sets tract is tested against (tract-onnx's own range).
const TRACT_TESTED_OPSETS: std::ops::RangeInclusive<i64> = 9..=18;

/// Once per process: what it means that the extractor uses an operator set tract is not tested
/// against (the exporters' current default, 21, is one).
fn warn_untested_opset(onnx: &[u8]) {
    static SHOWN: std::sync::Once = std::sync::Once::new();
    let Ok(model) = pb::ModelProto::decode(onnx) else {
        return;
    };
    let version = model
        .opset_import
        .iter()
        .find(|o| o.domain.is_empty() || o.domain == "ai.onnx")
        .map_or(0, |o| o.version);
    if version != 0 && !TRACT_TESTED_OPSETS.contains(&version) {
        SHOWN.call_once(|| {
            log::warn!(
                "the feature extractor uses ONNX operator set {version}; tract, which runs it \
                 here and on the boards, is tested on sets {}–{}. It loaded it; to be sure it \
                 computes what your framework does, compare `hedge eval`'s float accuracy with \
                 the framework's, or export with opset {} (torch.onnx.export(…, \
                 opset_version={}), tf2onnx --opset {})",
                TRACT_TESTED_OPSETS.start(),
                TRACT_TESTED_OPSETS.end(),
                TRACT_TESTED_OPSETS.end(),
                TRACT_TESTED_OPSETS.end(),
                TRACT_TESTED_OPSETS.end()
            )
        });
    }
}

impl Extractor {
    /// `input_shape` as the model expects it, e.g. [1, 1, 28, 28].
    pub fn new(onnx: &[u8], input_shape: &[usize]) -> Result<Self> {
        warn_untested_opset(onnx);
        let bad = |e: TractError| err(format!("feature extractor: {e:#}"));
        let model = tract_onnx::onnx()
            .model_for_read(&mut &onnx[..])
            .map_err(bad)?
            .with_input_fact(0, f32::fact(input_shape).into())
            .map_err(bad)?
            .into_optimized()
            .map_err(bad)?;
        let out_dim = model
            .output_fact(0)
            .map_err(bad)?
            .shape
            .as_concrete()
            .map(|s| s.iter().product())
            .ok_or_else(|| err("feature extractor output has no fixed size"))?;
        Ok(Self {
            plan: model.into_runnable().map_err(bad)?,
            input_shape: input_shape.to_vec(),
            out_dim,
            pixel_scale: 1.0,
        })
    }

    /// Features of a grayscale image: its pixels scaled by `pixel_scale`.
    pub(crate) fn run_image(&self, image: &crate::input::images::Image) -> Result<Vec<f32>> {
        self.run(&image.to_f32(self.pixel_scale))
    }

    pub fn in_dim(&self) -> usize {
        self.input_shape.iter().product()
    }

    /// Features of one input (row-major, `in_dim` values).
    pub fn run(&self, input: &[f32]) -> Result<Vec<f32>> {
        if input.len() != self.in_dim() {
            return Err(FeatureFault::ExtractorInput {
                expected: self.in_dim(),
                shape: self.input_shape.clone(),
                got: input.len(),
            }
            .into());
        }
        if let Some(i) = input.iter().position(|v| !v.is_finite()) {
            return Err(FeatureFault::NotFinite {
                index: i,
                value: input[i],
            }
            .into());
        }
        let tensor = Tensor::from_shape(&self.input_shape, input)
            .map_err(|e| ModelError::Extractor(format!("input: {e:#}")))?;
        let out = self
            .plan
            .run(tvec!(tensor.into()))
            .map_err(|e| ModelError::Extractor(format!("{e:#}")))?;
        Ok(out[0]
            .to_plain_array_view::<f32>()
            .map_err(|e| ModelError::Extractor(format!("output: {e:#}")))?
            .iter()
            .copied()
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::activation::Activation;
    use crate::model::onnx::{int_attr, node, tensor, value_info};

    /// Conv(1→2, 3×3) → Relu → Flatten → Gemm(8→4) → activation → Gemm(4→3) on 1×1×4×4.
    fn tiny_cnn(square: bool) -> Vec<u8> {
        let w = |n: usize, k: f32| {
            (0..n)
                .map(|i| ((i as f32 * 0.37 + k).sin()) * 0.5)
                .collect::<Vec<_>>()
        };
        let mut nodes = vec![
            node("Conv", &["image", "cw", "cb"], "conv", vec![]),
            node("Relu", &["conv"], "crelu", vec![]),
            node("Flatten", &["crelu"], "flat", vec![int_attr("axis", 1)]),
            node(
                "Gemm",
                &["flat", "w0", "b0"],
                "dense0",
                vec![int_attr("transB", 1)],
            ),
        ];
        nodes.push(if square {
            node("Mul", &["dense0", "dense0"], "act", vec![])
        } else {
            node("Relu", &["dense0"], "act", vec![])
        });
        nodes.push(node(
            "Gemm",
            &["act", "w1", "b1"],
            "logits",
            vec![int_attr("transB", 1)],
        ));
        pb::ModelProto {
            ir_version: 8,
            opset_import: vec![pb::OperatorSetIdProto {
                domain: String::new(),
                version: 13,
            }],
            graph: Some(pb::GraphProto {
                node: nodes,
                initializer: vec![
                    tensor("cw", &[2, 1, 3, 3], &w(18, 0.1)),
                    tensor("cb", &[2], &w(2, 0.2)),
                    tensor("w0", &[4, 8], &w(32, 0.3)),
                    tensor("b0", &[4], &w(4, 0.4)),
                    tensor("w1", &[3, 4], &w(12, 0.5)),
                    tensor("b1", &[3], &w(3, 0.6)),
                ],
                input: vec![value_info("image", &[1, 1, 4, 4])],
                output: vec![value_info("logits", &[1, 3])],
                ..Default::default()
            }),
            ..Default::default()
        }
        .encode_to_vec()
    }

    #[test]
    fn extractor_then_head_equals_the_whole_network() {
        for square in [false, true] {
            let bytes = tiny_cnn(square);
            let cut = split(&bytes, None).unwrap();
            assert_eq!(cut.point, "flat");
            assert_eq!(
                cut.head.activation,
                Some(if square {
                    Activation::Square
                } else {
                    Activation::Relu
                })
            );
            let extractor = Extractor::new(cut.extractor.as_ref().unwrap(), &[1, 1, 4, 4]).unwrap();
            assert_eq!(extractor.out_dim, 8);
            let whole = Extractor::new(&bytes, &[1, 1, 4, 4]).unwrap();
            let x: Vec<f32> = (0..16).map(|i| (i as f32 * 0.61).cos()).collect();
            let split_logits = cut.head.forward(&extractor.run(&x).unwrap());
            for (a, b) in split_logits.iter().zip(whole.run(&x).unwrap()) {
                assert!((a - b).abs() < 1e-4, "{split_logits:?}");
            }
            // Naming the split explicitly: by node name or by the tensor it reads.
            assert_eq!(split(&bytes, Some("dense0")).unwrap().point, "flat");
            assert_eq!(split(&bytes, Some("flat")).unwrap().point, "flat");
            assert!(split(&bytes, Some("conv")).is_err(), "not a dense layer");
            assert!(split(&bytes, Some("nowhere")).is_err());
            assert!(extractor.run(&x[..15]).is_err());
            assert!(extractor.run(&[f32::NAN; 16]).is_err());
        }
        // A dense-only network has no extractor.
        let dense = crate::model::onnx::to_bytes(
            &crate::model::synth::classifier(
                1,
                &crate::model::synth::Task::new(1, 6, 3),
                4,
                Some(Activation::Relu),
            ),
            false,
        );
        assert!(split(&dense, None).unwrap().extractor.is_none());
    }

    /// A Normalizer in front (ai.onnx.ml, as skl2onnx writes scikit-learn's) is run by the
    /// extractor as x / max(‖x‖, 10⁻³⁰) — L1 (Σ|xᵢ|), L2, MAX (max|xᵢ|), at opset 17 (axes an
    /// attribute) and 18 (an input) — with a Scaler before it; a zero vector stays zero; the
    /// head is the dense layers, unchanged.
    #[test]
    fn a_leading_normalizer_runs_in_the_extractor() {
        let x = [3.0f32, -4.0, 0.0, 1.0];
        let (offset, scale) = ([1.0f32, 0.0, 0.0, 0.0], [1.0f32, 1.0, 2.0, 1.0]);
        let scaled: Vec<f32> = (0..4).map(|i| (x[i] - offset[i]) * scale[i]).collect();
        for opset in [17, 18] {
            for (norm, size) in [
                ("L1", scaled.iter().map(|v| v.abs()).sum::<f32>()),
                ("L2", scaled.iter().map(|v| v * v).sum::<f32>().sqrt()),
                ("MAX", scaled.iter().fold(0.0f32, |m, v| m.max(v.abs()))),
            ] {
                let floats = |name: &str, v: &[f32]| pb::AttributeProto {
                    name: name.into(),
                    r#type: pb::attribute_proto::AttributeType::Floats as i32,
                    floats: v.to_vec(),
                    ..Default::default()
                };
                let ml = |op: &str, i: &str, o: &str, attrs| pb::NodeProto {
                    domain: "ai.onnx.ml".into(),
                    ..node(op, &[i], o, attrs)
                };
                let norm_attr = pb::AttributeProto {
                    name: "norm".into(),
                    r#type: pb::attribute_proto::AttributeType::String as i32,
                    s: norm.as_bytes().to_vec(),
                    ..Default::default()
                };
                let model = pb::ModelProto {
                    ir_version: 8,
                    opset_import: vec![
                        pb::OperatorSetIdProto {
                            domain: String::new(),
                            version: opset,
                        },
                        pb::OperatorSetIdProto {
                            domain: "ai.onnx.ml".into(),
                            version: 1,
                        },
                    ],
                    graph: Some(pb::GraphProto {
                        node: vec![
                            ml(
                                "Scaler",
                                "x",
                                "s",
                                vec![floats("offset", &offset), floats("scale", &scale)],
                            ),
                            ml("Normalizer", "s", "n", vec![norm_attr]),
                            node("Gemm", &["n", "w", "b"], "y", vec![int_attr("transB", 1)]),
                        ],
                        initializer: vec![
                            tensor("w", &[2, 4], &[1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0]),
                            tensor("b", &[2], &[0.0, 0.5]),
                        ],
                        input: vec![value_info("x", &[1, 4])],
                        output: vec![value_info("y", &[1, 2])],
                        ..Default::default()
                    }),
                    ..Default::default()
                };
                let cut = split(&model.encode_to_vec(), None).unwrap();
                assert_eq!((cut.head.in_dim(), cut.head.out_dim()), (4, 2));
                assert_eq!(cut.head.output.b, vec![0.0, 0.5], "nothing folded");
                let extractor = Extractor::new(cut.extractor.as_ref().unwrap(), &[1, 4]).unwrap();
                let got = extractor.run(&x).unwrap();
                for (g, want) in got.iter().zip(scaled.iter().map(|v| v / size)) {
                    assert!((g - want).abs() < 1e-6, "{norm} opset {opset}: {got:?}");
                }
                let zero = extractor.run(&offset).unwrap();
                assert_eq!(zero, vec![0.0; 4], "{norm} opset {opset}: a zero vector");
            }
        }
    }
}
