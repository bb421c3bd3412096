//! ONNX import (and export, for fixtures) of a dense classifier head.
//!
//! Accepted graphs: an optional Flatten, then Dense → [Relu] → Dense, where each Dense is a
//! Gemm (alpha = beta = 1, transB 0 or 1, transA 0) or a MatMul followed by an Add of a
//! constant bias — the forms Keras (tf2onnx) and PyTorch (torch.onnx) export.

use super::error::{ModelError, Result};
use super::{Classifier, Dense};
use crate::crypto::lut::Activation;
use crate::files::IoError;
use prost::Message;
use std::collections::HashMap;
use std::path::Path;
use tract_onnx::pb;

const FLOAT: i32 = 1;

/// Read a classifier from an ONNX file.
pub fn load(path: &Path) -> Result<Classifier> {
    let bytes = std::fs::read(path).map_err(|e| IoError::new(path, e))?;
    from_bytes(&bytes)
}

fn err(msg: impl Into<String>) -> ModelError {
    ModelError::Import(msg.into())
}

fn tensor_f32(t: &pb::TensorProto) -> Result<(Vec<usize>, Vec<f32>)> {
    if t.data_type != FLOAT {
        return Err(err(format!("tensor {} is not float32", t.name)));
    }
    let dims: Vec<usize> = t.dims.iter().map(|&d| d as usize).collect();
    let count: usize = dims.iter().product();
    let data: Vec<f32> = if !t.raw_data.is_empty() {
        if t.raw_data.len() != count * 4 {
            return Err(err(format!("tensor {} has truncated data", t.name)));
        }
        t.raw_data
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
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

fn attr_i(node: &pb::NodeProto, name: &str, default: i64) -> i64 {
    node.attribute
        .iter()
        .find(|a| a.name == name)
        .map(|a| a.i)
        .unwrap_or(default)
}

fn attr_f(node: &pb::NodeProto, name: &str, default: f32) -> f32 {
    node.attribute
        .iter()
        .find(|a| a.name == name)
        .map(|a| a.f)
        .unwrap_or(default)
}

/// Parse an ONNX model held in memory.
pub fn from_bytes(bytes: &[u8]) -> Result<Classifier> {
    let model =
        pb::ModelProto::decode(bytes).map_err(|e| err(format!("not an ONNX model: {e}")))?;
    let graph = model.graph.ok_or_else(|| err("ONNX model has no graph"))?;
    classifier_from_graph(&graph)
}

/// The dense head in `graph`'s nodes (in order): dense → [Relu | Mul(x, x)] → dense.
pub(crate) fn classifier_from_graph(graph: &pb::GraphProto) -> Result<Classifier> {
    let mut consts: HashMap<String, (Vec<usize>, Vec<f32>)> = HashMap::new();
    for t in &graph.initializer {
        consts.insert(t.name.clone(), tensor_f32(t)?);
    }
    for n in graph.node.iter().filter(|n| n.op_type == "Constant") {
        if let (Some(a), Some(out)) = (
            n.attribute.iter().find(|a| a.name == "value"),
            n.output.first(),
        ) {
            if let Some(t) = &a.t {
                consts.insert(out.clone(), tensor_f32(t)?);
            }
        }
    }
    let weight = |name: &str| -> Result<&(Vec<usize>, Vec<f32>)> {
        consts
            .get(name)
            .ok_or_else(|| err(format!("{name} is not a constant initializer")))
    };

    let mut denses: Vec<Dense> = Vec::new();
    let mut activation: Option<Activation> = None;
    let mut pending_matmul: Option<(usize, usize, Vec<f32>)> = None;
    for node in graph.node.iter().filter(|n| n.op_type != "Constant") {
        match node.op_type.as_str() {
            "Flatten" | "Identity" | "Dropout" | "Softmax" => {}
            "Relu" => {
                if denses.len() != 1 || activation.is_some() {
                    return Err(err("Relu must sit between the two dense layers"));
                }
                activation = Some(Activation::Relu);
            }
            // x·x: the paper's square activation, as PyTorch and Keras export it.
            "Mul" if node.input.len() == 2 && node.input[0] == node.input[1] => {
                if denses.len() != 1 || activation.is_some() {
                    return Err(err("a square must sit between the two dense layers"));
                }
                activation = Some(Activation::Square);
            }
            "Gemm" => {
                if attr_i(node, "transA", 0) != 0
                    || attr_f(node, "alpha", 1.0) != 1.0
                    || attr_f(node, "beta", 1.0) != 1.0
                {
                    return Err(err("Gemm with transA or alpha/beta != 1 is not supported"));
                }
                let (dims, w) = weight(node.input.get(1).ok_or_else(|| err("Gemm without B"))?)?;
                if dims.len() != 2 {
                    return Err(err("Gemm weight is not a matrix"));
                }
                let trans_b = attr_i(node, "transB", 0) != 0;
                let (out_dim, in_dim) = if trans_b {
                    (dims[0], dims[1])
                } else {
                    (dims[1], dims[0])
                };
                let w = if trans_b {
                    w.clone()
                } else {
                    transpose(w, in_dim, out_dim)
                };
                let b = match node.input.get(2) {
                    Some(name) if !name.is_empty() => bias(weight(name)?, out_dim)?,
                    _ => vec![0.0; out_dim],
                };
                denses.push(Dense {
                    out_dim,
                    in_dim,
                    w,
                    b,
                });
            }
            "MatMul" => {
                let (dims, w) = weight(node.input.get(1).ok_or_else(|| err("MatMul without B"))?)?;
                if dims.len() != 2 {
                    return Err(err("MatMul weight is not a matrix"));
                }
                pending_matmul = Some((dims[1], dims[0], transpose(w, dims[0], dims[1])));
            }
            "Add" => {
                let (out_dim, in_dim, w) = pending_matmul
                    .take()
                    .ok_or_else(|| err("Add without a preceding MatMul"))?;
                let b_name = node
                    .input
                    .iter()
                    .find(|i| consts.contains_key(*i))
                    .ok_or_else(|| err("Add without a constant bias"))?;
                let b = bias(weight(b_name)?, out_dim)?;
                denses.push(Dense {
                    out_dim,
                    in_dim,
                    w,
                    b,
                });
            }
            other => return Err(err(format!("unsupported ONNX operator {other}"))),
        }
    }
    if let Some((out_dim, in_dim, w)) = pending_matmul {
        denses.push(Dense {
            out_dim,
            in_dim,
            w,
            b: vec![0.0; out_dim],
        });
    }
    if denses.len() != 2 {
        return Err(err(format!(
            "expected two dense layers (hidden and output), found {}",
            denses.len()
        )));
    }
    let output = denses.pop().expect("two layers");
    let hidden = denses.pop().expect("two layers");
    if output.in_dim != hidden.out_dim {
        return Err(err(format!(
            "layer widths do not chain: {} → {}",
            hidden.out_dim, output.in_dim
        )));
    }
    Ok(Classifier {
        hidden,
        activation,
        output,
    })
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
        match (k, model.activation) {
            (0, Some(Activation::Relu)) => {
                nodes.push(node("Relu", &[&current], "relu0", vec![]));
                current = "relu0".into();
            }
            (0, Some(Activation::Square)) => {
                nodes.push(node("Mul", &[&current, &current], "square0", vec![]));
                current = "square0".into();
            }
            _ => {}
        }
    }
    let model = pb::ModelProto {
        ir_version: 8,
        producer_name: "hedge".into(),
        opset_import: vec![pb::OperatorSetIdProto {
            domain: String::new(),
            version: 13,
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

    #[test]
    fn round_trip_gemm_and_matmul_forms() {
        let task = synth::Task::new(1, 20, 4);
        let m = synth::classifier(1, &task, 8, Some(Activation::Relu));
        for matmul in [false, true] {
            let back = from_bytes(&to_bytes(&m, matmul)).unwrap();
            assert_eq!(back, m);
        }
    }

    #[test]
    fn tract_runs_the_exported_model_like_we_do() {
        use tract_onnx::prelude::*;
        let task = synth::Task::new(2, 12, 3);
        let m = synth::classifier(2, &task, 6, Some(Activation::Relu));
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
            assert!((g - w).abs() < 1e-4, "{got:?} vs {want:?}");
        }
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
