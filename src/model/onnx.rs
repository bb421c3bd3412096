//! ONNX import (and export, for fixtures) of a dense classifier head.
//!
//! The importer follows the data path from the classifier's input to its scores and accepts
//! what the common exporters write (PyTorch's `torch.onnx.export`, Keras through tf2onnx,
//! scikit-learn through skl2onnx):
//!
//! - before the first dense layer, no-op casts and reshapes (Cast, Reshape, Flatten, Identity,
//!   Dropout, Squeeze, Unsqueeze), and linear pre-processing — ai.onnx.ml's Scaler
//!   (scikit-learn's StandardScaler, MinMaxScaler), Sub, Div, Mul and Add by constants (a
//!   scalar or one per feature), BatchNormalization — folded into the first dense layer, so
//!   that the encrypted part keeps its shape (a Normalizer in front, which is not linear,
//!   is rewritten into standard operators for the plaintext extractor:
//!   [`expand_leading_normalizers`]);
//! - one or two dense layers: Gemm (any transA/transB, alpha and beta folded in), MatMul with a
//!   constant weight on either side followed or not by an Add of a constant bias (either order),
//!   or ai.onnx.ml's LinearClassifier (scikit-learn's linear models); one layer (a linear
//!   model) is imported with an identity hidden layer;
//! - after a dense layer, a BatchNormalization (Keras' Dense → BatchNormalization), folded in;
//! - between two layers, the activation: Relu, Tanh, Sigmoid, Gelu (either form, or spelled
//!   in elementwise nodes as PyTorch below opset 20 and tf2onnx write it, recognised by its
//!   values), LeakyRelu, Elu, Softplus, or the square (Mul(x, x) or Pow(x, 2));
//! - after the last layer, the classifier's post-processing, which preserves the argmax and is
//!   dropped for the encrypted head: Softmax, LogSoftmax, Sigmoid, Normalizer (L1, L2), ArgMax,
//!   ArrayFeatureExtractor and ZipMap (the class labels they carry are kept), Cast, Reshape,
//!   Identity, Flatten.
//!
//! Tensors may be float32 or float64 (what scikit-learn exports from float64 arrays): float64
//! weights are converted, with a note when that changes them beyond float32's precision.
//!
//! Anything else on the data path is refused with the node's name and operator and what to do.

use super::activation::{Activation, Alpha};
use super::error::{ModelError, Result};
use super::{Classifier, Dense};
use crate::files::IoError;
use prost::Message;
use std::collections::{HashMap, HashSet};
use std::path::Path;
use tract_onnx::pb;

const FLOAT: i32 = 1;
const STRING: i32 = 8;
const INT64: i32 = 7;
const DOUBLE: i32 = 11;

/// Linear pre-processing of the features, folded into the first dense layer.
const PRE_OPS: &[&str] = &["Scaler", "Sub", "Div", "Mul", "Add", "BatchNormalization"];

/// No-ops on a feature vector: before the first layer, between the layers, or after the last.
const NO_OPS: &[&str] = &[
    "Cast",
    "Reshape",
    "Flatten",
    "Identity",
    "Dropout",
    "Squeeze",
    "Unsqueeze",
];

/// Post-processing of the scores that keeps their argmax (and label look-ups).
const POST_OPS: &[&str] = &[
    "Softmax",
    "LogSoftmax",
    "Sigmoid",
    "Normalizer",
    "ArgMax",
    "ArrayFeatureExtractor",
    "ZipMap",
];

/// The widest linear model (one dense layer) imported: its identity hidden layer holds the
/// square of this many weights (64 MB at 4096).
const MAX_LINEAR_INPUTS: usize = 4096;

/// Every operator the importer understands (the split's vocabulary for a classifier head).
pub(crate) fn is_head_op(op: &str) -> bool {
    NO_OPS.contains(&op)
        || POST_OPS.contains(&op)
        || PRE_OPS.contains(&op)
        || is_dense_op(op)
        || is_activation_op(op)
        || matches!(op, "Pow" | "Constant")
}

/// Univariate activations between two dense layers (Sigmoid too, where a layer follows; the
/// square is a Mul or Pow).
const ACTIVATION_OPS: &[&str] = &["Relu", "Tanh", "LeakyRelu", "Gelu", "Elu", "Softplus"];

fn is_activation_op(op: &str) -> bool {
    ACTIVATION_OPS.contains(&op)
}

/// Operators that start a dense layer.
pub(crate) fn is_dense_op(op: &str) -> bool {
    matches!(op, "Gemm" | "MatMul" | "LinearClassifier")
}

/// Whether every node of `nodes` is a no-op on a feature vector, a constant or linear
/// pre-processing the importer folds into the first layer: such a prefix is not a feature
/// extractor.
pub(crate) fn all_no_ops(nodes: &[pb::NodeProto]) -> bool {
    nodes.iter().all(|n| {
        let op = n.op_type.as_str();
        NO_OPS.contains(&op) || PRE_OPS.contains(&op) || op == "Constant"
    })
}

/// Read a classifier from an ONNX file.
pub fn load(path: &Path) -> Result<Classifier> {
    from_bytes(&read_model(path)?)
}

/// Class labels from the model's metadata (`metadata_props` key `labels` or `classes`: a JSON
/// array of strings, or names separated by commas or new lines), if it has them.
pub(crate) fn metadata_labels(bytes: &[u8]) -> Option<Vec<String>> {
    let model = pb::ModelProto::decode(bytes).ok()?;
    let value = model
        .metadata_props
        .iter()
        .find(|p| p.key == "labels" || p.key == "classes")?
        .value
        .clone();
    let labels = serde_json::from_str::<Vec<String>>(&value).unwrap_or_else(|_| {
        value
            .split([',', '\n'])
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(String::from)
            .collect()
    });
    (!labels.is_empty()).then_some(labels)
}

/// An ONNX file as one self-contained model: tensors the exporter wrote to an external data
/// file beside it (PyTorch's default exporter does) are read into the model. The data file
/// must be a plain file name in the model's directory.
pub(crate) fn read_model(path: &Path) -> Result<Vec<u8>> {
    let bytes = std::fs::read(path).map_err(|e| IoError::new(path, e))?;
    let mut model =
        pb::ModelProto::decode(&bytes[..]).map_err(|e| err(format!("not an ONNX model: {e}")))?;
    let Some(graph) = model.graph.as_mut() else {
        return Ok(bytes);
    };
    const EXTERNAL: i32 = 1;
    if !graph
        .initializer
        .iter()
        .any(|t| t.data_location == Some(EXTERNAL))
    {
        return Ok(bytes);
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut files: HashMap<String, Vec<u8>> = HashMap::new();
    for t in graph
        .initializer
        .iter_mut()
        .filter(|t| t.data_location == Some(EXTERNAL))
    {
        let entry = |key: &str| {
            t.external_data
                .iter()
                .find(|e| e.key == key)
                .map(|e| e.value.clone())
        };
        let location = entry("location").ok_or_else(|| {
            err(format!(
                "tensor {}: external data without a location",
                t.name
            ))
        })?;
        let plain_name = Path::new(&location)
            .file_name()
            .is_some_and(|f| f == location.as_str());
        if !plain_name {
            return Err(err(format!(
                "tensor {}: external data {location:?} is not a file name beside the model",
                t.name
            )));
        }
        let number = |key: &str| -> Result<Option<usize>> {
            entry(key)
                .map(|v| {
                    v.parse::<usize>()
                        .map_err(|_| err(format!("tensor {}: bad external {key} {v:?}", t.name)))
                })
                .transpose()
        };
        let (offset, length) = (number("offset")?.unwrap_or(0), number("length")?);
        if !files.contains_key(&location) {
            let file = dir.join(&location);
            let data = std::fs::read(&file).map_err(|e| IoError::new(&file, e))?;
            files.insert(location.clone(), data);
        }
        let data = &files[&location];
        let end = match length {
            Some(l) => offset.checked_add(l),
            None => Some(data.len()),
        }
        .filter(|&end| end <= data.len() && offset <= end)
        .ok_or_else(|| {
            err(format!(
                "tensor {}: external data beyond {location}",
                t.name
            ))
        })?;
        t.raw_data = data[offset..end].to_vec();
        t.external_data.clear();
        t.data_location = None;
    }
    Ok(model.encode_to_vec())
}

fn err(msg: impl Into<String>) -> ModelError {
    ModelError::Import(msg.into())
}

fn tensor_f32(t: &pb::TensorProto) -> Result<(Vec<usize>, Vec<f32>)> {
    if t.data_type != FLOAT && t.data_type != DOUBLE {
        return Err(err(format!("tensor {} is not float32 or float64", t.name)));
    }
    let width = if t.data_type == DOUBLE { 8 } else { 4 };
    let dims: Vec<usize> = t
        .dims
        .iter()
        .map(|&d| usize::try_from(d))
        .collect::<std::result::Result<_, _>>()
        .map_err(|_| err(format!("tensor {} has a negative dimension", t.name)))?;
    // A crafted shape must not wrap around to the length of the data it holds.
    let count = dims
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| {
            err(format!(
                "tensor {} has an impossible shape {dims:?}",
                t.name
            ))
        })?;
    let data: Vec<f32> = if !t.raw_data.is_empty() {
        if Some(t.raw_data.len()) != count.checked_mul(width) {
            return Err(err(format!("tensor {} has truncated data", t.name)));
        }
        if width == 8 {
            doubles(
                &t.name,
                t.raw_data
                    .chunks_exact(8)
                    .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes"))),
            )
        } else {
            t.raw_data
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect()
        }
    } else if width == 8 {
        doubles(&t.name, t.double_data.iter().copied())
    } else {
        t.float_data.clone()
    };
    if data.len() != count {
        return Err(err(format!(
            "tensor {} holds {} values for shape {:?}",
            t.name,
            data.len(),
            dims
        )));
    }
    if data.iter().any(|v| !v.is_finite()) {
        return Err(err(format!("tensor {} holds NaN or infinity", t.name)));
    }
    Ok((dims, data))
}

/// float64 values as float32, noting once per tensor when the conversion loses more than
/// float32's own rounding (values beyond its range, or below its normal range).
fn doubles(name: &str, values: impl Iterator<Item = f64>) -> Vec<f32> {
    let mut lossy = false;
    let out = values
        .map(|v| {
            let f = v as f32;
            lossy |= v.is_finite()
                && (f.is_infinite() || (v != 0.0 && (f as f64 - v).abs() > 1e-6 * v.abs()));
            f
        })
        .collect();
    if lossy {
        log::warn!("tensor {name}: float64 values converted to float32 lose precision");
    }
    out
}

/// A string or int64 tensor as labels (a classifier's class table).
fn tensor_labels(t: &pb::TensorProto) -> Option<Vec<String>> {
    match t.data_type {
        STRING => Some(
            t.string_data
                .iter()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .collect(),
        ),
        INT64 if !t.raw_data.is_empty() => Some(
            t.raw_data
                .chunks_exact(8)
                .map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes")).to_string())
                .collect(),
        ),
        INT64 => Some(t.int64_data.iter().map(i64::to_string).collect()),
        _ => None,
    }
}

fn attr<'a>(node: &'a pb::NodeProto, name: &str) -> Option<&'a pb::AttributeProto> {
    node.attribute.iter().find(|a| a.name == name)
}

fn attr_i(node: &pb::NodeProto, name: &str, default: i64) -> i64 {
    attr(node, name).map(|a| a.i).unwrap_or(default)
}

fn attr_f(node: &pb::NodeProto, name: &str, default: f32) -> f32 {
    attr(node, name).map(|a| a.f).unwrap_or(default)
}

fn attr_s(node: &pb::NodeProto, name: &str) -> Option<String> {
    attr(node, name).map(|a| String::from_utf8_lossy(&a.s).into_owned())
}

/// Class labels an attribute lists (strings or integers), if any.
fn attr_labels(node: &pb::NodeProto, strings: &str, ints: &str) -> Option<Vec<String>> {
    if let Some(a) = attr(node, strings).filter(|a| !a.strings.is_empty()) {
        return Some(
            a.strings
                .iter()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .collect(),
        );
    }
    attr(node, ints)
        .filter(|a| !a.ints.is_empty())
        .map(|a| a.ints.iter().map(i64::to_string).collect())
}

/// The single value of a scalar constant (an initializer or a Constant node's), if `name` is
/// one.
fn scalar_constant(graph: &pb::GraphProto, name: &str) -> Option<f32> {
    let from_tensor = |t: &pb::TensorProto| match tensor_f32(t) {
        Ok((_, v)) if v.len() == 1 => Some(v[0]),
        _ => None,
    };
    graph
        .initializer
        .iter()
        .find(|t| t.name == name)
        .and_then(from_tensor)
        .or_else(|| {
            graph
                .node
                .iter()
                .filter(|n| {
                    n.op_type == "Constant" && n.output.first().map(String::as_str) == Some(name)
                })
                .find_map(|n| {
                    attr(n, "value")
                        .and_then(|a| a.t.as_ref())
                        .and_then(from_tensor)
                })
        })
}

/// Elementwise operators an exporter spells an activation with where its operator set has
/// none (GELU below opset 20, in either form).
const SPELLING_OPS: &[&str] = &[
    "Mul",
    "Add",
    "Sub",
    "Div",
    "Pow",
    "Tanh",
    "Erf",
    "Exp",
    "Sqrt",
    "Neg",
    "Reciprocal",
];

/// The most nodes a spelled activation is looked for in (GELU's tanh form takes eight).
const MAX_SPELLING: usize = 24;

/// The activations recognised by their values (those with a constant are not guessed).
const SPELLED: [Activation; 5] = [
    Activation::Gelu,
    Activation::GeluTanh,
    Activation::Tanh,
    Activation::Sigmoid,
    Activation::Softplus,
];

/// Activations as exporters spell them where the operator set has no operator for them:
/// GELU below opset 20 as PyTorch writes it (x·(1 + erf(x/√2))·½ in five nodes, or its tanh
/// form ½·x·(1 + tanh(√(2/π)·(x + 0.044715·x³))) in eight), and as tf2onnx writes Keras'
/// `gelu` in either form. A chain of elementwise nodes that reads one tensor and scalar
/// constants only, and whose values are read only at its end, becomes that activation's one
/// node, so the split sees an activation (not a node it cannot encrypt) and the importer reads
/// it. The chain is recognised by what it computes, not by its nodes' order: evaluated at 65
/// points of [−8, 8] it must match one of [`SPELLED`] within 10⁻⁵ (GELU's two forms differ by
/// up to 2·10⁻⁴); anything else is left as it is.
pub(crate) fn fuse_spelled_activations(graph: &mut pb::GraphProto) {
    while let Some(found) = find_spelled(graph) {
        let node = &mut graph.node[found.last];
        let (op, attribute) = activation_node(found.activation);
        node.op_type = op.into();
        node.input = vec![found.input];
        node.attribute = attribute;
        node.domain.clear();
        let mut at = 0;
        graph.node.retain(|_| {
            at += 1;
            !found.gone.contains(&(at - 1))
        });
    }
}

/// The ONNX operator and attributes that compute `f` on one input (the square is Mul, its
/// input given twice).
fn activation_node(f: Activation) -> (&'static str, Vec<pb::AttributeProto>) {
    match f {
        Activation::Relu => ("Relu", vec![]),
        Activation::Square => ("Mul", vec![]),
        Activation::Tanh => ("Tanh", vec![]),
        Activation::Sigmoid => ("Sigmoid", vec![]),
        Activation::Softplus => ("Softplus", vec![]),
        Activation::Gelu => ("Gelu", vec![]),
        Activation::GeluTanh => ("Gelu", vec![string_attr("approximate", "tanh")]),
        Activation::LeakyRelu(a) => ("LeakyRelu", vec![float_attr("alpha", a.get())]),
        Activation::Elu(a) => ("Elu", vec![float_attr("alpha", a.get())]),
        Activation::Identity => ("Identity", vec![]),
    }
}

/// A spelled activation in a graph: the nodes it takes, the one that becomes it, its input.
struct Spelling {
    gone: Vec<usize>,
    last: usize,
    input: String,
    activation: Activation,
}

fn find_spelled(graph: &pb::GraphProto) -> Option<Spelling> {
    let nodes = &graph.node;
    let mut readers: HashMap<&str, Vec<usize>> = HashMap::new();
    for (at, n) in nodes.iter().enumerate() {
        for i in &n.input {
            readers.entry(i.as_str()).or_default().push(at);
        }
    }
    let graph_outputs: HashSet<&str> = graph.output.iter().map(|o| o.name.as_str()).collect();
    let mut scalars: HashMap<String, Option<f64>> = HashMap::new();
    let mut scalar = |name: &str| -> Option<f64> {
        *scalars
            .entry(name.to_string())
            .or_insert_with(|| scalar_constant(graph, name).map(f64::from))
    };
    let spelling = |n: &pb::NodeProto| SPELLING_OPS.contains(&n.op_type.as_str());
    for root in nodes.iter().filter_map(|n| n.output.first()) {
        // The elementwise nodes computed from `root` and scalar constants alone.
        let mut known: HashSet<&str> = HashSet::from([root.as_str()]);
        let mut region: Vec<usize> = Vec::new();
        let mut work = vec![root.as_str()];
        while let Some(t) = work.pop() {
            for &r in readers.get(t).map(Vec::as_slice).unwrap_or_default() {
                let n = &nodes[r];
                if region.contains(&r)
                    || !spelling(n)
                    || !n
                        .input
                        .iter()
                        .all(|i| known.contains(i.as_str()) || scalar(i).is_some())
                {
                    continue;
                }
                region.push(r);
                for o in &n.output {
                    known.insert(o);
                    work.push(o);
                }
            }
            if region.len() > MAX_SPELLING {
                break;
            }
        }
        if region.len() < 2 || region.len() > MAX_SPELLING {
            continue;
        }
        region.sort_unstable();
        // The latest node first: the longest chain that is one of the activations.
        for &last in region.iter().rev() {
            let chain = ancestors(nodes, &region, last);
            let sealed = chain.iter().filter(|&&c| c != last).all(|&c| {
                nodes[c].output.iter().all(|o| {
                    !graph_outputs.contains(o.as_str())
                        && readers
                            .get(o.as_str())
                            .is_none_or(|rs| rs.iter().all(|r| chain.contains(r)))
                })
            });
            if chain.len() < 2 || !sealed {
                continue;
            }
            let mut values = |x: f64| evaluate(nodes, &chain, root, x, &mut scalar);
            let sample: Vec<(f64, f64)> = (0..=64)
                .map(|k| -8.0 + k as f64 * 0.25)
                .filter_map(|x| Some((x, values(x)?)))
                .collect();
            if sample.len() != 65 {
                continue;
            }
            let activation = SPELLED.into_iter().find(|f| {
                sample
                    .iter()
                    .all(|&(x, y)| (y - f.eval(x)).abs() <= 1e-5 * f.eval(x).abs().max(1.0))
            });
            if let Some(activation) = activation {
                return Some(Spelling {
                    gone: chain.into_iter().filter(|&c| c != last).collect(),
                    last,
                    input: root.clone(),
                    activation,
                });
            }
        }
    }
    None
}

/// The nodes of `region` that `last` depends on, itself included, in graph order.
fn ancestors(nodes: &[pb::NodeProto], region: &[usize], last: usize) -> Vec<usize> {
    let mut chain = vec![last];
    let mut work = vec![last];
    while let Some(at) = work.pop() {
        for i in &nodes[at].input {
            if let Some(&p) = region
                .iter()
                .find(|&&r| nodes[r].output.iter().any(|o| o == i))
            {
                if !chain.contains(&p) {
                    chain.push(p);
                    work.push(p);
                }
            }
        }
    }
    chain.sort_unstable();
    chain
}

/// The value `chain` (in graph order) gives its last node for `root` = x, if every node is
/// defined there.
fn evaluate(
    nodes: &[pb::NodeProto],
    chain: &[usize],
    root: &str,
    x: f64,
    scalar: &mut impl FnMut(&str) -> Option<f64>,
) -> Option<f64> {
    let mut values: HashMap<&str, f64> = HashMap::from([(root, x)]);
    let mut last = None;
    for &at in chain {
        let n = &nodes[at];
        let args: Vec<f64> = n
            .input
            .iter()
            .map(|i| values.get(i.as_str()).copied().or_else(|| scalar(i)))
            .collect::<Option<_>>()?;
        let y = match (n.op_type.as_str(), args.as_slice()) {
            ("Mul", [a, b]) => a * b,
            ("Add", [a, b]) => a + b,
            ("Sub", [a, b]) => a - b,
            ("Div", [a, b]) => a / b,
            ("Pow", [a, b]) => libm::pow(*a, *b),
            ("Tanh", [a]) => libm::tanh(*a),
            ("Erf", [a]) => libm::erf(*a),
            ("Exp", [a]) => libm::exp(*a),
            ("Sqrt", [a]) => libm::sqrt(*a),
            ("Neg", [a]) => -a,
            ("Reciprocal", [a]) => 1.0 / a,
            _ => return None,
        };
        if !y.is_finite() {
            return None;
        }
        values.insert(n.output.first()?, y);
        last = Some(y);
    }
    last
}

/// The smallest norm a [`expand_leading_normalizers`] divides by (ONNX's reference): a zero
/// vector stays zero, as in scikit-learn.
const MIN_NORM: f32 = 1e-30;

/// ai.onnx.ml's `Normalizer` in front of the first dense layer (scikit-learn's
/// `Pipeline(Normalizer(), …)`) scales each input by its own norm: not linear, so it cannot be
/// folded into the first layer. It becomes the standard operators that compute it — x /
/// max(‖x‖, 10⁻³⁰) with ReduceL1 (L1: Σ|xᵢ|), ReduceL2 (L2) or ReduceMax of Abs (MAX: max|xᵢ|),
/// as ONNX's reference and scikit-learn define them — which the split leaves in the plaintext
/// extractor, run by tract on the board (or by `hedge encrypt-features` at the data source)
/// before the input is quantised. A Normalizer after a dense layer is post-processing and
/// stays. Unknown norms are left for the importer to refuse.
pub(crate) fn expand_leading_normalizers(model: &mut pb::ModelProto) {
    let opset = model
        .opset_import
        .iter()
        .find(|o| o.domain.is_empty() || o.domain == "ai.onnx")
        .map_or(1, |o| o.version);
    let Some(graph) = model.graph.as_mut() else {
        return;
    };
    let double = graph.input.iter().any(|i| {
        matches!(
            i.r#type.as_ref().and_then(|t| t.value.as_ref()),
            Some(pb::type_proto::Value::TensorType(t)) if t.elem_type == DOUBLE
        )
    });
    let mut first_dense = graph
        .node
        .iter()
        .position(|n| is_dense_op(&n.op_type))
        .unwrap_or(graph.node.len());
    let normalizer = |n: &pb::NodeProto| {
        n.op_type == "Normalizer"
            && matches!(attr_s(n, "norm").as_deref(), Some("L1" | "L2" | "MAX"))
    };
    if !graph.node[..first_dense].iter().any(normalizer) {
        return;
    }
    let mut at = 0;
    while at < first_dense.min(graph.node.len()) {
        let n = &graph.node[at];
        let (Some(x), Some(y)) = (n.input.first().cloned(), n.output.first().cloned()) else {
            at += 1;
            continue;
        };
        let name = |what: &str| format!("{y}/hedge_{what}");
        // A Scaler before it would land in the extractor too, where tract has no Scaler:
        // (x − offset)·scale as Sub and Mul (which fold into the first layer where they can).
        if n.op_type == "Scaler" && !double {
            let floats = |a: &str| attr(n, a).map(|a| a.floats.clone()).unwrap_or_default();
            let (offset, scale) = (floats("offset"), floats("scale"));
            let mut nodes = Vec::new();
            let mut current = x;
            for (op, what, values) in [("Sub", "offset", offset), ("Mul", "scale", scale)] {
                if values.is_empty() {
                    continue;
                }
                graph
                    .initializer
                    .push(tensor(&name(what), &[values.len()], &values));
                let out = name(&format!("{what}ed"));
                nodes.push(node(op, &[&current, &name(what)], &out, vec![]));
                current = out;
            }
            nodes.push(node("Identity", &[&current], &y, vec![]));
            let added = nodes.len();
            graph.node.splice(at..=at, nodes);
            at += added;
            first_dense += added - 1;
            continue;
        }
        if !normalizer(n) {
            at += 1;
            continue;
        }
        let norm = attr_s(n, "norm").unwrap_or_default();
        let reduce = |op: &str, input: &str, output: &str| {
            // The last axis, kept for the division's broadcast; an input from opset 18 on.
            let mut r = node(op, &[input], output, vec![int_attr("keepdims", 1)]);
            if opset >= 18 {
                r.input.push(name("axes"));
            } else {
                r.attribute.push(pb::AttributeProto {
                    name: "axes".into(),
                    r#type: pb::attribute_proto::AttributeType::Ints as i32,
                    ints: vec![-1],
                    ..Default::default()
                });
            }
            r
        };
        let mut nodes = match norm.as_str() {
            "L1" => vec![reduce("ReduceL1", &x, &name("norm"))],
            "L2" => vec![reduce("ReduceL2", &x, &name("norm"))],
            _ => vec![
                node("Abs", &[&x], &name("abs"), vec![]),
                reduce("ReduceMax", &name("abs"), &name("norm")),
            ],
        };
        nodes.push(node(
            "Max",
            &[&name("norm"), &name("min")],
            &name("floor"),
            vec![],
        ));
        nodes.push(node("Div", &[&x, &name("floor")], &y, vec![]));
        let mut min = tensor(&name("min"), &[], &[MIN_NORM]);
        if double {
            min.data_type = DOUBLE;
            min.raw_data = f64::from(MIN_NORM).to_le_bytes().to_vec();
        }
        graph.initializer.push(min);
        if opset >= 18 {
            graph.initializer.push(pb::TensorProto {
                name: name("axes"),
                dims: vec![1],
                data_type: INT64,
                raw_data: (-1i64).to_le_bytes().to_vec(),
                ..Default::default()
            });
        }
        let added = nodes.len();
        graph.node.splice(at..=at, nodes);
        at += added;
        first_dense += added - 1;
    }
}

/// Parse an ONNX model held in memory.
pub fn from_bytes(bytes: &[u8]) -> Result<Classifier> {
    let model =
        pb::ModelProto::decode(bytes).map_err(|e| err(format!("not an ONNX model: {e}")))?;
    let mut graph = model.graph.ok_or_else(|| err("ONNX model has no graph"))?;
    fuse_spelled_activations(&mut graph);
    let input = graph_input(&graph)?;
    classifier_from_graph(&graph, &input)
}

/// The graph's one input that is not an initializer.
pub(crate) fn graph_input(graph: &pb::GraphProto) -> Result<String> {
    let initializers: HashSet<&str> = graph.initializer.iter().map(|t| t.name.as_str()).collect();
    let inputs: Vec<&str> = graph
        .input
        .iter()
        .map(|i| i.name.as_str())
        .filter(|n| !initializers.contains(n))
        .collect();
    match inputs.as_slice() {
        [one] => Ok(one.to_string()),
        [] => Err(err("the network has no input")),
        many => Err(err(format!(
            "the network has {} inputs ({}); hedge takes one feature vector",
            many.len(),
            many.join(", ")
        ))),
    }
}

/// Where on the data path a refused node sits, for the advice in its error.
fn advice(layers: usize, post: bool) -> &'static str {
    match (layers, post || layers >= 2) {
        (0, _) => {
            "hedge encrypts the dense head: compute this before hedge (as part of the features) \
             or keep it in the plaintext extractor by starting the encrypted part later with \
             --encrypt-from"
        }
        (_, true) => {
            "after the scores hedge keeps only argmax-preserving post-processing: export the \
             classifier with its scores or probabilities as the output"
        }
        _ => {
            "hedge encrypts dense → (ReLU | square | tanh | sigmoid | GELU | leaky ReLU | ELU | \
             softplus | none) → dense"
        }
    }
}

/// A dense layer being assembled: a weight without its bias yet, and the tensor it writes.
struct Pending {
    dense: Dense,
    output: String,
}

/// The dense head on the data path from `input` through `graph`'s nodes (in order).
pub(crate) fn classifier_from_graph(graph: &pb::GraphProto, input: &str) -> Result<Classifier> {
    let mut consts: HashMap<String, (Vec<usize>, Vec<f32>)> = HashMap::new();
    let mut label_tables: HashMap<String, Vec<String>> = HashMap::new();
    let mut add_const = |t: &pb::TensorProto, name: &str| -> Result<()> {
        if t.data_type == FLOAT || t.data_type == DOUBLE {
            consts.insert(name.to_string(), tensor_f32(t)?);
        } else if let Some(labels) = tensor_labels(t) {
            label_tables.insert(name.to_string(), labels);
        }
        Ok(())
    };
    for t in &graph.initializer {
        add_const(t, &t.name)?;
    }
    for n in graph.node.iter().filter(|n| n.op_type == "Constant") {
        if let (Some(t), Some(out)) = (
            attr(n, "value").and_then(|a| a.t.as_ref()),
            n.output.first(),
        ) {
            add_const(t, out)?;
        }
    }
    let weight = |name: &str| -> Option<&(Vec<usize>, Vec<f32>)> { consts.get(name) };

    let mut data: HashSet<String> = HashSet::from([input.to_string()]);
    let mut layers: Vec<Dense> = Vec::new();
    let mut activation: Option<Activation> = None;
    let mut pending: Option<Pending> = None;
    // The last tensor a finished layer wrote (a later Add of a constant is its bias).
    let mut last_output: Option<String> = None;
    let mut post = false;
    let mut labels: Option<Vec<String>> = None;
    // Linear pre-processing before the first layer, folded in at the end: x ↦ s⊙x + t.
    let mut pre: Vec<Affine> = Vec::new();
    for (at, node) in graph.node.iter().enumerate() {
        let op = node.op_type.as_str();
        if op == "Constant" || !node.input.iter().any(|i| data.contains(i)) {
            continue; // off the data path: constants, shape arithmetic
        }
        let (depth, after_scores) = (layers.len() + pending.is_some() as usize, post);
        let refuse = |why: &str| {
            err(format!(
                "node {:?} ({op}) {why}; {}",
                node.name,
                advice(depth, after_scores)
            ))
        };
        let on_path_input = node
            .input
            .iter()
            .find(|i| data.contains(*i))
            .cloned()
            .unwrap_or_default();
        let other_const = || {
            node.input
                .iter()
                .filter(|i| !data.contains(*i))
                .find_map(|i| weight(i).map(|w| (i.clone(), w)))
        };
        // A dense layer may not follow post-processing of the scores.
        if post && (is_dense_op(op) || is_activation_op(op) || matches!(op, "Add" | "Mul" | "Pow"))
        {
            return Err(refuse("follows the scores' post-processing"));
        }
        let square = op == "Mul" && node.input.len() == 2 && node.input[0] == node.input[1];
        let before_layers = layers.is_empty() && pending.is_none() && activation.is_none();
        if PRE_OPS.contains(&op) && !square && before_layers {
            let step = affine(node, op, &on_path_input, &weight).map_err(|why| refuse(&why))?;
            pre.push(step);
            data.extend(node.output.iter().cloned());
            continue;
        }
        // A scale or shift of a dense layer's outputs (a BatchNormalization, or what tf2onnx
        // makes of one) is part of that layer; an Add of a constant is its bias (below).
        let of_layer = match &pending {
            Some(p) => p.output == on_path_input,
            None => last_output.as_deref() == Some(on_path_input.as_str()),
        };
        if matches!(op, "Mul" | "Div" | "Sub" | "BatchNormalization") && !square && of_layer {
            let step = affine(node, op, &on_path_input, &weight).map_err(|why| refuse(&why))?;
            let (target, output) = match &mut pending {
                Some(p) => (&mut p.dense, &mut p.output),
                None => (
                    layers.last_mut().expect("a layer wrote last_output"),
                    last_output.as_mut().expect("checked above"),
                ),
            };
            step.fold_after(target).map_err(|why| refuse(&why))?;
            *output = node.output.first().cloned().unwrap_or_default();
            data.extend(node.output.iter().cloned());
            continue;
        }
        // A Sigmoid with a dense layer after it is the hidden activation; after the last
        // layer, post-processing.
        let sigmoid_activation = op == "Sigmoid"
            && activation.is_none()
            && graph.node[at + 1..].iter().any(|n| is_dense_op(&n.op_type));
        match op {
            "Gemm" => {
                finish(&mut pending, &mut layers, &mut last_output);
                if node.input.first() != Some(&on_path_input) {
                    return Err(refuse("takes its weight from the data path"));
                }
                let (dims, w) = node
                    .input
                    .get(1)
                    .and_then(|n| weight(n))
                    .ok_or_else(|| refuse("has no constant weight"))?;
                if dims.len() != 2 {
                    return Err(refuse("has a weight that is not a matrix"));
                }
                let (alpha, beta) = (attr_f(node, "alpha", 1.0), attr_f(node, "beta", 1.0));
                // transA transposes the input: for one feature vector the values are the same.
                let trans_b = attr_i(node, "transB", 0) != 0;
                let (out_dim, in_dim) = if trans_b {
                    (dims[0], dims[1])
                } else {
                    (dims[1], dims[0])
                };
                let w: Vec<f32> = if trans_b {
                    w.clone()
                } else {
                    transpose(w, in_dim, out_dim)
                };
                let b = match node.input.get(2) {
                    Some(name) if !name.is_empty() => {
                        let t = weight(name)
                            .ok_or_else(|| refuse("has a bias that is not a constant"))?;
                        bias(t, out_dim)?
                    }
                    _ => vec![0.0; out_dim],
                };
                layers.push(Dense {
                    out_dim,
                    in_dim,
                    w: w.iter().map(|v| v * alpha).collect(),
                    b: b.iter().map(|v| v * beta).collect(),
                });
                last_output = node.output.first().cloned();
            }
            "MatMul" => {
                finish(&mut pending, &mut layers, &mut last_output);
                let (name, (dims, w)) =
                    other_const().ok_or_else(|| refuse("multiplies by no constant weight"))?;
                if dims.len() != 2 {
                    return Err(refuse("has a weight that is not a matrix"));
                }
                // x·W (W: in × out) or W·x (W: out × in).
                let dense = if node.input.get(1) == Some(&name) {
                    Dense {
                        out_dim: dims[1],
                        in_dim: dims[0],
                        w: transpose(w, dims[0], dims[1]),
                        b: vec![0.0; dims[1]],
                    }
                } else {
                    Dense {
                        out_dim: dims[0],
                        in_dim: dims[1],
                        w: w.clone(),
                        b: vec![0.0; dims[0]],
                    }
                };
                pending = Some(Pending {
                    dense,
                    output: node.output.first().cloned().unwrap_or_default(),
                });
            }
            "Add" => {
                let (_, t) = other_const().ok_or_else(|| refuse("adds no constant bias"))?;
                let target = match &mut pending {
                    Some(p) if p.output == on_path_input => &mut p.dense,
                    _ if last_output.as_deref() == Some(on_path_input.as_str()) => {
                        layers.last_mut().expect("a layer wrote last_output")
                    }
                    _ => {
                        return Err(refuse(
                            "adds to something that is not a dense layer's output",
                        ))
                    }
                };
                let b = bias(t, target.out_dim)?;
                target.b.iter_mut().zip(&b).for_each(|(x, y)| *x += y);
                if let Some(p) = pending.take() {
                    layers.push(p.dense);
                }
                last_output = node.output.first().cloned();
            }
            _ if is_activation_op(op) || matches!(op, "Mul" | "Pow") || sigmoid_activation => {
                finish(&mut pending, &mut layers, &mut last_output);
                // An activation's constant comes from the file like a weight.
                let alpha = |default| match attr_f(node, "alpha", default) {
                    a if a.is_finite() => Ok(Alpha::new(a)),
                    _ => Err(refuse("holds NaN or infinity")),
                };
                let found = match op {
                    "Relu" => Activation::Relu,
                    "Tanh" => Activation::Tanh,
                    "Sigmoid" => Activation::Sigmoid,
                    "Softplus" => Activation::Softplus,
                    "LeakyRelu" => Activation::LeakyRelu(alpha(0.01)?),
                    "Elu" => Activation::Elu(alpha(1.0)?),
                    "Gelu" => match attr_s(node, "approximate").as_deref() {
                        None | Some("none") => Activation::Gelu,
                        Some("tanh") => Activation::GeluTanh,
                        Some(_) => return Err(refuse("has an approximation hedge does not know")),
                    },
                    "Mul" if node.input.len() == 2 && node.input[0] == node.input[1] => {
                        Activation::Square
                    }
                    "Pow"
                        if node
                            .input
                            .get(1)
                            .and_then(|e| weight(e))
                            .is_some_and(|(_, v)| v.len() == 1 && v[0] == 2.0) =>
                    {
                        Activation::Square
                    }
                    _ => return Err(refuse("is not an activation hedge evaluates")),
                };
                if layers.len() != 1 || activation.is_some() {
                    return Err(refuse("is not between the two dense layers"));
                }
                activation = Some(found);
                last_output = None;
            }
            "LinearClassifier" => {
                finish(&mut pending, &mut layers, &mut last_output);
                let coefficients = attr(node, "coefficients")
                    .map(|a| a.floats.clone())
                    .unwrap_or_default();
                let intercepts = attr(node, "intercepts")
                    .map(|a| a.floats.clone())
                    .unwrap_or_default();
                let classes = attr_labels(node, "classlabels_strings", "classlabels_ints")
                    .ok_or_else(|| refuse("lists no class labels"))?;
                let rows = intercepts.len().max(1);
                if coefficients.is_empty() || !coefficients.len().is_multiple_of(rows) {
                    return Err(refuse("has coefficients that do not fit its intercepts"));
                }
                let in_dim = coefficients.len() / rows;
                let (w, b) = if rows == 1 && classes.len() == 2 {
                    // Binary: one score s for the second class; scores (−s, s) keep the rule.
                    let neg: Vec<f32> = coefficients.iter().map(|v| -v).collect();
                    let b0 = intercepts.first().copied().unwrap_or(0.0);
                    ([neg, coefficients].concat(), vec![-b0, b0])
                } else if rows == classes.len() {
                    // Intercepts are optional (zero).
                    let b = if intercepts.is_empty() {
                        vec![0.0; rows]
                    } else {
                        intercepts
                    };
                    (coefficients, b)
                } else {
                    return Err(refuse("has a score count that does not match its labels"));
                };
                if w.iter().chain(&b).any(|v| !v.is_finite()) {
                    return Err(refuse("holds NaN or infinity"));
                }
                layers.push(Dense {
                    out_dim: classes.len(),
                    in_dim,
                    w,
                    b,
                });
                labels = Some(classes);
                post = true; // its outputs are the label and the (transformed) scores
            }
            "Normalizer" => {
                let norm = attr_s(node, "norm").unwrap_or_default();
                if !matches!(norm.as_str(), "L1" | "L2") || layers.is_empty() && pending.is_none() {
                    return Err(refuse("does not keep the scores' order"));
                }
                finish(&mut pending, &mut layers, &mut last_output);
                post = true;
            }
            _ if POST_OPS.contains(&op) => {
                finish(&mut pending, &mut layers, &mut last_output);
                if layers.is_empty() {
                    return Err(refuse("comes before any dense layer"));
                }
                post = true;
                let found = match op {
                    "ArrayFeatureExtractor" => node
                        .input
                        .first()
                        .and_then(|t| label_tables.get(t))
                        .cloned(),
                    "ZipMap" => attr_labels(node, "classlabels_strings", "classlabels_int64s"),
                    _ => None,
                };
                if found.is_some() {
                    labels = found;
                }
            }
            _ if NO_OPS.contains(&op) => {
                // A Cast to anything but a float type would change the values (float64 is
                // computed in float32, as its weights are).
                let to = attr_i(node, "to", FLOAT as i64);
                if op == "Cast" && !post && to != FLOAT as i64 && to != DOUBLE as i64 {
                    return Err(refuse("casts the features to a type that is not a float"));
                }
                if last_output.as_deref() == Some(on_path_input.as_str()) {
                    last_output = node.output.first().cloned();
                }
            }
            _ => {
                return Err(refuse(
                    "is not part of a dense classifier hedge can encrypt",
                ))
            }
        }
        data.extend(node.output.iter().cloned());
    }
    finish(&mut pending, &mut layers, &mut last_output);
    if let Some(first) = layers.first_mut() {
        for step in pre.iter().rev() {
            step.fold_before(first)?;
        }
    }
    let (hidden, output) = match layers.len() {
        0 => return Err(err("no dense layer (Gemm, MatMul or LinearClassifier) on the path from the input to the scores")),
        1 => {
            // The identity hidden layer holds in_dim² weights.
            if layers[0].in_dim > MAX_LINEAR_INPUTS {
                return Err(err(format!(
                    "a linear model of {} inputs: hedge encrypts it with an identity hidden layer, \
                     for at most {MAX_LINEAR_INPUTS} inputs",
                    layers[0].in_dim
                )));
            }
            if activation.is_some() {
                return Err(err("an activation after the only dense layer: hedge needs a dense layer after it"));
            }
            let output = layers.pop().expect("one layer");
            (Dense::identity(output.in_dim), output)
        }
        2 => {
            let output = layers.pop().expect("two layers");
            (layers.pop().expect("two layers"), output)
        }
        n => {
            return Err(err(format!(
                "{n} dense layers: hedge encrypts one or two (dense → activation → dense); keep \
                 the earlier ones in the plaintext extractor with --encrypt-from"
            )))
        }
    };
    if output.in_dim != hidden.out_dim {
        return Err(err(format!(
            "layer widths do not chain: {} → {}",
            hidden.out_dim, output.in_dim
        )));
    }
    if let Some(l) = &labels {
        if l.len() != output.out_dim {
            return Err(err(format!(
                "{} class labels for {} scores",
                l.len(),
                output.out_dim
            )));
        }
    }
    Ok(Classifier {
        hidden,
        activation,
        output,
        labels,
    })
}

/// y = s⊙x + t on a feature vector (s, t: one value for all, or one per feature).
#[derive(Clone, Debug, PartialEq)]
struct Affine {
    s: Vec<f32>,
    t: Vec<f32>,
}

impl Affine {
    fn at(v: &[f32], i: usize) -> f32 {
        if v.len() == 1 {
            v[0]
        } else {
            v[i]
        }
    }

    fn fits(&self, dim: usize, what: &str) -> Result<()> {
        for v in [&self.s, &self.t] {
            if v.len() != 1 && v.len() != dim {
                return Err(err(format!(
                    "{what}: {} values for {dim} features",
                    v.len()
                )));
            }
        }
        Ok(())
    }

    /// Into the layer that reads its output: W·(s⊙x + t) + b = (W·diag s)·x + (W·t + b).
    fn fold_before(&self, d: &mut Dense) -> Result<()> {
        self.fits(d.in_dim, "pre-processing before the first layer")?;
        for j in 0..d.out_dim {
            let row = &mut d.w[j * d.in_dim..(j + 1) * d.in_dim];
            let mut shift = 0f32;
            for (i, w) in row.iter_mut().enumerate() {
                shift += *w * Self::at(&self.t, i);
                *w *= Self::at(&self.s, i);
            }
            d.b[j] += shift;
        }
        check_finite(d)
    }

    /// Into the layer whose output it scales: s⊙(W·x + b) + t.
    fn fold_after(&self, d: &mut Dense) -> std::result::Result<(), String> {
        self.fits(d.out_dim, "scaling of a layer's outputs")
            .map_err(|e| e.to_string())?;
        for j in 0..d.out_dim {
            let s = Self::at(&self.s, j);
            d.w[j * d.in_dim..(j + 1) * d.in_dim]
                .iter_mut()
                .for_each(|w| *w *= s);
            d.b[j] = d.b[j] * s + Self::at(&self.t, j);
        }
        check_finite(d).map_err(|e| e.to_string())
    }
}

fn check_finite(d: &Dense) -> Result<()> {
    if d.w.iter().chain(&d.b).all(|v| v.is_finite()) {
        Ok(())
    } else {
        Err(err("folding the pre-processing made a weight infinite"))
    }
}

/// A constant tensor: its shape and values.
type Constant = (Vec<usize>, Vec<f32>);

/// The affine map a linear pre-processing node applies to the data path's `x`.
fn affine<'a>(
    node: &pb::NodeProto,
    op: &str,
    x: &str,
    weight: &dyn Fn(&str) -> Option<&'a Constant>,
) -> std::result::Result<Affine, String> {
    let constant = |i: usize| -> std::result::Result<Vec<f32>, String> {
        node.input
            .get(i)
            .and_then(|n| weight(n))
            .map(|t| t.1.clone())
            .ok_or_else(|| format!("input {i} is not a constant"))
    };
    // Which operand is the data path, and the other (constant) one.
    let x_first = node.input.first().map(String::as_str) == Some(x);
    let other = || constant(if x_first { 1 } else { 0 });
    let one = vec![1.0];
    let zero = vec![0.0];
    let a = match op {
        "Scaler" => {
            let floats = |name: &str| {
                attr(node, name)
                    .map(|a| a.floats.clone())
                    .unwrap_or_default()
            };
            let (offset, scale) = (floats("offset"), floats("scale"));
            let scale = if scale.is_empty() { one } else { scale };
            let offset = if offset.is_empty() { zero } else { offset };
            if offset.len() != 1 && scale.len() != 1 && offset.len() != scale.len() {
                return Err("has offsets and scales of different lengths".into());
            }
            let n = offset.len().max(scale.len());
            // (x − offset)·scale
            let s: Vec<f32> = (0..n).map(|i| Affine::at(&scale, i)).collect();
            let t = (0..n)
                .map(|i| -Affine::at(&offset, i) * Affine::at(&scale, i))
                .collect();
            Affine { s, t }
        }
        "Add" => Affine {
            s: one,
            t: other()?,
        },
        "Sub" if x_first => Affine {
            s: one,
            t: other()?.iter().map(|c| -c).collect(),
        },
        "Sub" => Affine {
            s: vec![-1.0],
            t: other()?,
        },
        "Mul" => Affine {
            s: other()?,
            t: zero,
        },
        "Div" if x_first => {
            let c = other()?;
            if c.contains(&0.0) {
                return Err("divides by zero".into());
            }
            Affine {
                s: c.iter().map(|c| 1.0 / c).collect(),
                t: zero,
            }
        }
        "Div" => return Err("divides by the features (not a linear map)".into()),
        "BatchNormalization" => {
            if !x_first || node.input.len() < 5 {
                return Err("does not normalise the data path with constant statistics".into());
            }
            let (gamma, beta, mean, var) = (constant(1)?, constant(2)?, constant(3)?, constant(4)?);
            let eps = attr_f(node, "epsilon", 1e-5);
            let n = gamma.len();
            if [beta.len(), mean.len(), var.len()] != [n; 3] {
                return Err("has statistics of different lengths".into());
            }
            let k: Vec<f32> = (0..n).map(|i| gamma[i] / (var[i] + eps).sqrt()).collect();
            Affine {
                t: (0..n).map(|i| beta[i] - mean[i] * k[i]).collect(),
                s: k,
            }
        }
        _ => return Err("is not linear pre-processing".into()),
    };
    if a.s.iter().chain(&a.t).any(|v| !v.is_finite()) {
        return Err("holds NaN or infinity".into());
    }
    Ok(a)
}

/// A MatMul waiting for its bias is a layer without one when the path moves on.
fn finish(pending: &mut Option<Pending>, layers: &mut Vec<Dense>, last: &mut Option<String>) {
    if let Some(p) = pending.take() {
        *last = Some(p.output);
        layers.push(p.dense);
    }
}

fn bias(t: &(Vec<usize>, Vec<f32>), out_dim: usize) -> Result<Vec<f32>> {
    if t.1.len() != out_dim {
        return Err(err(format!(
            "bias of {} values for {out_dim} outputs",
            t.1.len()
        )));
    }
    Ok(t.1.clone())
}

/// (rows × cols) row-major → (cols × rows) row-major.
fn transpose(m: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0.0; m.len()];
    for r in 0..rows {
        for c in 0..cols {
            out[c * rows + r] = m[r * cols + c];
        }
    }
    out
}

pub(crate) fn tensor(name: &str, dims: &[usize], data: &[f32]) -> pb::TensorProto {
    pb::TensorProto {
        name: name.into(),
        dims: dims.iter().map(|&d| d as i64).collect(),
        data_type: FLOAT,
        raw_data: data.iter().flat_map(|v| v.to_le_bytes()).collect(),
        ..Default::default()
    }
}

pub(crate) fn value_info(name: &str, dims: &[usize]) -> pb::ValueInfoProto {
    use pb::tensor_shape_proto::{dimension::Value, Dimension};
    pb::ValueInfoProto {
        name: name.into(),
        r#type: Some(pb::TypeProto {
            value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                elem_type: FLOAT,
                shape: Some(pb::TensorShapeProto {
                    dim: dims
                        .iter()
                        .map(|&d| Dimension {
                            value: Some(Value::DimValue(d as i64)),
                            ..Default::default()
                        })
                        .collect(),
                }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

pub(crate) fn node(
    op: &str,
    inputs: &[&str],
    output: &str,
    attrs: Vec<pb::AttributeProto>,
) -> pb::NodeProto {
    pb::NodeProto {
        op_type: op.into(),
        name: output.into(),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: vec![output.into()],
        attribute: attrs,
        ..Default::default()
    }
}

fn float_attr(name: &str, v: f64) -> pb::AttributeProto {
    pb::AttributeProto {
        name: name.into(),
        r#type: pb::attribute_proto::AttributeType::Float as i32,
        f: v as f32,
        ..Default::default()
    }
}

fn string_attr(name: &str, v: &str) -> pb::AttributeProto {
    pb::AttributeProto {
        name: name.into(),
        r#type: pb::attribute_proto::AttributeType::String as i32,
        s: v.as_bytes().to_vec(),
        ..Default::default()
    }
}

pub(crate) fn int_attr(name: &str, v: i64) -> pb::AttributeProto {
    pb::AttributeProto {
        name: name.into(),
        r#type: pb::attribute_proto::AttributeType::Int as i32,
        i: v,
        ..Default::default()
    }
}

/// Serialise a classifier as ONNX: Gemm(transB=1) → [Relu] → Gemm, or, with `matmul`, the
/// MatMul + Add form.
pub fn to_bytes(model: &Classifier, matmul: bool) -> Vec<u8> {
    let mut nodes = Vec::new();
    let mut inits = Vec::new();
    let mut current = "input".to_string();
    for (k, layer) in [&model.hidden, &model.output].into_iter().enumerate() {
        let (wn, bn, out) = (format!("W{k}"), format!("B{k}"), format!("dense{k}"));
        inits.push(tensor(&bn, &[layer.out_dim], &layer.b));
        if matmul {
            inits.push(tensor(
                &wn,
                &[layer.in_dim, layer.out_dim],
                &transpose(&layer.w, layer.out_dim, layer.in_dim),
            ));
            let mm = format!("matmul{k}");
            nodes.push(node("MatMul", &[&current, &wn], &mm, vec![]));
            nodes.push(node("Add", &[&mm, &bn], &out, vec![]));
        } else {
            inits.push(tensor(&wn, &[layer.out_dim, layer.in_dim], &layer.w));
            nodes.push(node(
                "Gemm",
                &[&current, &wn, &bn],
                &out,
                vec![int_attr("transB", 1)],
            ));
        }
        current = out;
        if let (0, Some(f)) = (k, model.activation) {
            let (op, attrs) = activation_node(f);
            let inputs = if matches!(f, Activation::Square) {
                vec![current.as_str(), current.as_str()]
            } else {
                vec![current.as_str()]
            };
            nodes.push(node(op, &inputs, "act0", attrs));
            current = "act0".into();
        }
    }
    let model = pb::ModelProto {
        ir_version: 8,
        producer_name: "hedge".into(),
        opset_import: vec![pb::OperatorSetIdProto {
            domain: String::new(),
            // Gelu is an operator from opset 20 on.
            version: if matches!(
                model.activation,
                Some(Activation::Gelu | Activation::GeluTanh)
            ) {
                20
            } else {
                13
            },
        }],
        graph: Some(pb::GraphProto {
            name: "classifier".into(),
            node: nodes,
            initializer: inits,
            input: vec![value_info("input", &[1, model.in_dim()])],
            output: vec![value_info(&current, &[1, model.out_dim()])],
            ..Default::default()
        }),
        ..Default::default()
    };
    model.encode_to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::synth;

    use crate::model::activation::{Alpha, EACH};

    /// The five-node GELU, in TorchScript's order, torch.export's and by hand (½·x first, 1/√2
    /// as a Mul, as tf2onnx writes Keras' `gelu`), is one Gelu node; a chain with another
    /// constant (1 + erf(x/2)) is left alone.
    #[test]
    fn decomposed_gelu_chains_become_one_node() {
        let graph = |nodes: Vec<pb::NodeProto>, c: [f32; 3]| pb::GraphProto {
            node: nodes,
            initializer: vec![
                tensor("c", &[], &[c[0]]),
                tensor("one", &[], &[c[1]]),
                tensor("half", &[], &[c[2]]),
            ],
            ..Default::default()
        };
        let torch = vec![
            node("Relu", &["x"], "h", vec![]),
            node("Div", &["h", "c"], "d", vec![]),
            node("Erf", &["d"], "e", vec![]),
            node("Add", &["e", "one"], "a", vec![]),
            node("Mul", &["h", "a"], "m", vec![]),
            node("Mul", &["m", "half"], "y", vec![]),
            node("Relu", &["y"], "z", vec![]),
        ];
        let other = vec![
            node("Relu", &["x"], "h", vec![]),
            node("Mul", &["c", "h"], "d", vec![]),
            node("Mul", &["half", "h"], "hh", vec![]),
            node("Erf", &["d"], "e", vec![]),
            node("Add", &["one", "e"], "a", vec![]),
            node("Mul", &["a", "hh"], "y", vec![]),
            node("Relu", &["y"], "z", vec![]),
        ];
        // torch.export (onnxscript's torchlib): ½·(1 + erf), then ·x.
        let export = vec![
            node("Relu", &["x"], "h", vec![]),
            node("Div", &["h", "c"], "d", vec![]),
            node("Erf", &["d"], "e", vec![]),
            node("Add", &["e", "one"], "a", vec![]),
            node("Mul", &["half", "a"], "m", vec![]),
            node("Mul", &["h", "m"], "y", vec![]),
            node("Relu", &["y"], "z", vec![]),
        ];
        let sqrt2 = std::f32::consts::SQRT_2;
        for (nodes, c) in [
            (torch.clone(), sqrt2),
            (other, 1.0 / sqrt2),
            (export, sqrt2),
        ] {
            let mut g = graph(nodes, [c, 1.0, 0.5]);
            fuse_spelled_activations(&mut g);
            let ops: Vec<(&str, &[String], &str)> = g
                .node
                .iter()
                .map(|n| (n.op_type.as_str(), &n.input[..], n.output[0].as_str()))
                .collect();
            assert_eq!(ops.len(), 3, "{ops:?}");
            assert_eq!(ops[1], ("Gelu", &["h".to_string()][..], "y"));
            assert_eq!(ops[2].0, "Relu");
        }
        let mut g = graph(torch, [2.0, 1.0, 0.5]);
        fuse_spelled_activations(&mut g);
        assert_eq!(g.node.len(), 7, "not a GELU: left alone");
    }

    /// GELU's tanh form in eight nodes, as TorchScript writes `nn.GELU(approximate="tanh")`
    /// below opset 20 (x·x·x, constants first) and as tf2onnx writes Keras'
    /// `gelu(approximate=True)` (Pow 3, ½·x first), is one Gelu node with approximate="tanh";
    /// a tanh form with another constant (0.05 for 0.044715) is left alone, and so is a chain
    /// whose middle value is read elsewhere.
    #[test]
    fn gelu_tanh_chains_become_one_node() {
        let graph = |nodes: Vec<pb::NodeProto>, kappa: f32| pb::GraphProto {
            node: nodes,
            initializer: vec![
                tensor("beta", &[], &[(2.0 / std::f32::consts::PI).sqrt()]),
                tensor("kappa", &[], &[kappa]),
                tensor("one", &[], &[1.0]),
                tensor("half", &[], &[0.5]),
                tensor("three", &[], &[3.0]),
            ],
            output: vec![value_info("z", &[1, 4])],
            ..Default::default()
        };
        let torch = vec![
            node("Relu", &["x"], "h", vec![]),
            node("Mul", &["h", "h"], "sq", vec![]),
            node("Mul", &["h", "sq"], "cube", vec![]),
            node("Mul", &["kappa", "cube"], "kc", vec![]),
            node("Add", &["h", "kc"], "s", vec![]),
            node("Mul", &["beta", "s"], "inner", vec![]),
            node("Tanh", &["inner"], "t", vec![]),
            node("Add", &["one", "t"], "a", vec![]),
            node("Mul", &["h", "a"], "m", vec![]),
            node("Mul", &["half", "m"], "y", vec![]),
            node("Relu", &["y"], "z", vec![]),
        ];
        let keras = vec![
            node("Relu", &["x"], "h", vec![]),
            node("Mul", &["half", "h"], "hh", vec![]),
            node("Pow", &["h", "three"], "cube", vec![]),
            node("Mul", &["kappa", "cube"], "kc", vec![]),
            node("Add", &["h", "kc"], "s", vec![]),
            node("Mul", &["beta", "s"], "inner", vec![]),
            node("Tanh", &["inner"], "t", vec![]),
            node("Add", &["one", "t"], "a", vec![]),
            node("Mul", &["hh", "a"], "y", vec![]),
            node("Relu", &["y"], "z", vec![]),
        ];
        for nodes in [torch.clone(), keras] {
            let mut g = graph(nodes, 0.044715);
            fuse_spelled_activations(&mut g);
            let ops: Vec<(&str, &[String], &str)> = g
                .node
                .iter()
                .map(|n| (n.op_type.as_str(), &n.input[..], n.output[0].as_str()))
                .collect();
            assert_eq!(ops.len(), 3, "{ops:?}");
            assert_eq!(ops[1], ("Gelu", &["h".to_string()][..], "y"));
            assert_eq!(attr_s(&g.node[1], "approximate").as_deref(), Some("tanh"));
        }
        let mut g = graph(torch.clone(), 0.05);
        fuse_spelled_activations(&mut g);
        assert_eq!(g.node.len(), 11, "not a GELU: left alone");
        // The tanh's output also feeds the graph's output: taking the chain would lose it.
        let mut read_elsewhere = torch;
        read_elsewhere.push(node("Add", &["z", "t"], "w", vec![]));
        let mut g = graph(read_elsewhere, 0.044715);
        g.output = vec![value_info("w", &[1, 4])];
        fuse_spelled_activations(&mut g);
        assert_eq!(
            g.node.len(),
            12,
            "a middle value read elsewhere: left alone"
        );
    }

    /// The erf form is GELU and the tanh form GELU's tanh form, not each other: they differ
    /// by more than the recognition's tolerance.
    #[test]
    fn the_two_gelu_forms_are_told_apart() {
        let gap = (0..=64)
            .map(|k| -8.0 + k as f64 * 0.25)
            .map(|x| (Activation::Gelu.eval(x) - Activation::GeluTanh.eval(x)).abs())
            .fold(0.0, f64::max);
        assert!(gap > 1e-4, "{gap}");
    }

    #[test]
    fn round_trip_gemm_and_matmul_forms() {
        let task = synth::Task::new(1, 20, 4);
        // The identity is no operator: it imports as no activation.
        for f in EACH.into_iter().filter(|&f| f != Activation::Identity) {
            let m = synth::classifier(1, &task, 8, Some(f));
            for matmul in [false, true] {
                let back = from_bytes(&to_bytes(&m, matmul)).unwrap();
                assert_eq!(back, m, "{f:?}");
            }
        }
    }

    /// An activation's constant from the file is checked like a weight.
    #[test]
    fn a_non_finite_activation_constant_is_refused() {
        let task = synth::Task::new(1, 20, 4);
        let m = synth::classifier(1, &task, 8, Some(Activation::LeakyRelu(Alpha::new(0.1))));
        let mut model = pb::ModelProto::decode(&to_bytes(&m, false)[..]).unwrap();
        let graph = model.graph.as_mut().unwrap();
        let leaky = graph
            .node
            .iter_mut()
            .find(|n| n.op_type == "LeakyRelu")
            .unwrap();
        leaky.attribute[0].f = f32::NAN;
        let e = from_bytes(&model.encode_to_vec()).unwrap_err().to_string();
        assert!(e.contains("(LeakyRelu) holds NaN or infinity"), "{e}");
    }

    /// A Sigmoid is the hidden activation where a dense layer follows it, and the scores'
    /// post-processing after the last layer.
    #[test]
    fn a_sigmoid_is_an_activation_between_layers_and_post_processing_after() {
        let task = synth::Task::new(1, 20, 4);
        let m = synth::classifier(1, &task, 8, Some(Activation::Sigmoid));
        let mut model = pb::ModelProto::decode(&to_bytes(&m, false)[..]).unwrap();
        let graph = model.graph.as_mut().unwrap();
        let out = graph.output[0].name.clone();
        graph
            .node
            .push(node("Sigmoid", &[&out], "probabilities", vec![]));
        graph.output[0].name = "probabilities".into();
        let back = from_bytes(&model.encode_to_vec()).unwrap();
        assert_eq!(back.activation, Some(Activation::Sigmoid));
        assert_eq!(back, m);
    }

    /// tract (another implementation of every operator) computes what our float model does,
    /// for every activation opset 13 has (Gelu is newer than tract's operator set).
    #[test]
    fn tract_runs_the_exported_model_like_we_do() {
        for f in EACH.into_iter().filter(|f| {
            !matches!(
                f,
                Activation::Gelu | Activation::GeluTanh | Activation::Identity
            )
        }) {
            tract_agrees(f);
        }
    }

    fn tract_agrees(f: Activation) {
        use tract_onnx::prelude::*;
        let task = synth::Task::new(2, 12, 3);
        let m = synth::classifier(2, &task, 6, Some(f));
        let bytes = to_bytes(&m, false);
        let plan = tract_onnx::onnx()
            .model_for_read(&mut &bytes[..])
            .unwrap()
            .into_optimized()
            .unwrap()
            .into_runnable()
            .unwrap();
        let (x, _) = &task.samples(5, 1)[0];
        let input = tract_ndarray::Array2::from_shape_vec((1, 12), x.clone()).unwrap();
        let out = plan.run(tvec!(Tensor::from(input).into())).unwrap();
        let got = out[0]
            .to_plain_array_view::<f32>()
            .unwrap()
            .iter()
            .copied()
            .collect::<Vec<_>>();
        let want = m.forward(x);
        for (g, w) in got.iter().zip(&want) {
            assert!((g - w).abs() < 1e-4, "{f:?}: {got:?} vs {want:?}");
        }
    }

    fn floats_attr(name: &str, v: &[f32]) -> pb::AttributeProto {
        pb::AttributeProto {
            name: name.into(),
            r#type: pb::attribute_proto::AttributeType::Floats as i32,
            floats: v.to_vec(),
            ..Default::default()
        }
    }

    /// ai.onnx.ml's LinearClassifier with one score row for two labels (the binary form):
    /// imported as scores (−s, s), with its labels and an identity hidden layer.
    #[test]
    fn a_binary_linear_classifier_scores_both_classes() {
        let mut node = node("LinearClassifier", &["x"], "label", vec![]);
        node.output.push("scores".into());
        node.attribute = vec![
            floats_attr("coefficients", &[1.0, -2.0, 0.5]),
            floats_attr("intercepts", &[0.25]),
            pb::AttributeProto {
                name: "classlabels_strings".into(),
                r#type: pb::attribute_proto::AttributeType::Strings as i32,
                strings: vec![b"no".to_vec(), b"yes".to_vec()],
                ..Default::default()
            },
        ];
        let graph = pb::GraphProto {
            node: vec![node],
            input: vec![value_info("x", &[1, 3])],
            ..Default::default()
        };
        let c = classifier_from_graph(&graph, "x").unwrap();
        assert_eq!(c.labels, Some(vec!["no".to_string(), "yes".to_string()]));
        assert_eq!(c.hidden, Dense::identity(3));
        let s = c.forward(&[1.0, 0.0, 2.0]); // 1 + 1 + 0.25 = 2.25
        assert_eq!(s, vec![-2.25, 2.25]);
    }

    /// Gemm with transA, alpha and beta, and a MatMul whose Add names the bias first: the
    /// same function as the plain forms.
    #[test]
    fn gemm_attributes_and_either_add_order_fold_in() {
        let task = synth::Task::new(3, 5, 3);
        let m = synth::classifier(3, &task, 4, Some(Activation::Relu));
        let mut model = pb::ModelProto::decode(&to_bytes(&m, false)[..]).unwrap();
        let graph = model.graph.as_mut().unwrap();
        // Layer 0: alpha 2 on halved weights, beta 4 on quartered biases, transA 1.
        for t in graph.initializer.iter_mut() {
            let (scale, name) = match t.name.as_str() {
                "W0" => (0.5f32, "W0"),
                "B0" => (0.25, "B0"),
                _ => continue,
            };
            let (dims, v) = tensor_f32(t).unwrap();
            let v: Vec<f32> = v.iter().map(|x| x * scale).collect();
            *t = tensor(name, &dims, &v);
        }
        let gemm = graph.node.iter_mut().find(|n| n.name == "dense0").unwrap();
        gemm.attribute.push(int_attr("transA", 1));
        gemm.attribute.push(pb::AttributeProto {
            name: "alpha".into(),
            r#type: pb::attribute_proto::AttributeType::Float as i32,
            f: 2.0,
            ..Default::default()
        });
        gemm.attribute.push(pb::AttributeProto {
            name: "beta".into(),
            r#type: pb::attribute_proto::AttributeType::Float as i32,
            f: 4.0,
            ..Default::default()
        });
        let back = from_bytes(&model.encode_to_vec()).unwrap();
        let x = &task.samples(4, 1)[0].0;
        for (g, w) in back.forward(x).iter().zip(m.forward(x)) {
            assert!((g - w).abs() < 1e-5);
        }
        // MatMul form with the Adds' inputs swapped: bias first.
        let mut model = pb::ModelProto::decode(&to_bytes(&m, true)[..]).unwrap();
        for n in model.graph.as_mut().unwrap().node.iter_mut() {
            if n.op_type == "Add" {
                n.input.swap(0, 1);
            }
        }
        assert_eq!(from_bytes(&model.encode_to_vec()).unwrap(), m);
    }

    /// Labels from the model's metadata, as a JSON array or a list.
    #[test]
    fn labels_come_from_metadata_too() {
        let task = synth::Task::new(1, 4, 2);
        let m = synth::classifier(1, &task, 3, None);
        let mut model = pb::ModelProto::decode(&to_bytes(&m, false)[..]).unwrap();
        assert_eq!(metadata_labels(&model.encode_to_vec()), None);
        for value in [r#"["cat", "dog"]"#, "cat, dog", "cat\ndog\n"] {
            model.metadata_props = vec![pb::StringStringEntryProto {
                key: "labels".into(),
                value: value.into(),
            }];
            assert_eq!(
                metadata_labels(&model.encode_to_vec()),
                Some(vec!["cat".to_string(), "dog".to_string()]),
                "{value}"
            );
        }
    }

    /// External data must sit beside the model: a path elsewhere is refused, not read.
    #[test]
    fn external_data_is_read_only_from_beside_the_model() {
        let dir = tempfile::tempdir().unwrap();
        let task = synth::Task::new(1, 4, 2);
        let m = synth::classifier(1, &task, 3, None);
        let mut model = pb::ModelProto::decode(&to_bytes(&m, false)[..]).unwrap();
        let graph = model.graph.as_mut().unwrap();
        let weight = graph
            .initializer
            .iter_mut()
            .find(|t| t.name == "W0")
            .unwrap();
        std::fs::write(dir.path().join("w.data"), &weight.raw_data).unwrap();
        let length = weight.raw_data.len().to_string();
        weight.raw_data.clear();
        weight.data_location = Some(1);
        let entry = |k: &str, v: &str| pb::StringStringEntryProto {
            key: k.into(),
            value: v.into(),
        };
        weight.external_data = vec![entry("location", "w.data"), entry("length", &length)];
        let path = dir.path().join("m.onnx");
        std::fs::write(&path, model.encode_to_vec()).unwrap();
        assert_eq!(load(&path).unwrap(), m);
        let graph = model.graph.as_mut().unwrap();
        let weight = graph
            .initializer
            .iter_mut()
            .find(|t| t.name == "W0")
            .unwrap();
        weight.external_data[0] = entry("location", "../etc/passwd");
        std::fs::write(&path, model.encode_to_vec()).unwrap();
        let e = load(&path).unwrap_err().to_string();
        assert!(e.contains("not a file name beside the model"), "{e}");
    }

    /// A shape whose product wraps around 2^64 to the (empty) data's length: refused, where a
    /// wrapping product accepted a 2^32 × 2^32 weight with no values (found by fuzzing).
    #[test]
    fn a_wrapping_tensor_shape_is_refused() {
        let mut t = tensor("W", &[1, 1], &[]);
        t.dims = vec![1 << 32, 1 << 32];
        assert!(tensor_f32(&t)
            .unwrap_err()
            .to_string()
            .contains("impossible shape"));
        t.dims = vec![-1, 0];
        assert!(tensor_f32(&t).unwrap_err().to_string().contains("negative"));
    }

    #[test]
    fn rejects_garbage_and_unsupported_graphs() {
        assert!(from_bytes(b"not a model at all").is_err());
        let task = synth::Task::new(1, 20, 4);
        let m = synth::classifier(1, &task, 8, None);
        let mut bytes = to_bytes(&m, false);
        bytes.truncate(bytes.len() / 2);
        assert!(from_bytes(&bytes).is_err());
    }
}
