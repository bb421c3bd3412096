//! A trained network as hedge uses it: the plaintext feature extractor (if the network has
//! layers before its dense head) and the dense head, split by [`crate::model::split`].

use super::error::{ModelError, Result};
use crate::input::images::{read_idx_images, Image};
use crate::input::vectors::read_samples;
use crate::model::split::{split, Extractor, PlainExtractor};
use crate::model::Classifier;
use prost::Message;
use std::path::Path;
use tract_onnx::pb;

/// The most values one input may have (a 4096×4096 image).
const MAX_INPUT_VALUES: usize = 1 << 24;

/// Raw 8-bit pixels become inputs in [0, 1].
pub(crate) const PIXEL_SCALE: f32 = 1.0 / 255.0;

pub struct Network {
    pub head: Classifier,
    /// What ships in the bundle, and the same prepared to run here.
    pub extractor: Option<(PlainExtractor, Extractor)>,
    /// A dense layer the automatic cut put in the plaintext extractor (its weights would ship
    /// in the clear): refused for the variants that encrypt both layers.
    pub plaintext_dense: Option<super::split::PlaintextDense>,
}

impl Network {
    pub fn load(path: &Path, encrypt_from: Option<&str>) -> Result<Self> {
        let bytes = super::onnx::read_model(path)?;
        let mut cut = split(&bytes, encrypt_from)?;
        if cut.head.labels.is_none() {
            if let Some(labels) = super::onnx::metadata_labels(&bytes) {
                if labels.len() != cut.head.out_dim() {
                    return Err(ModelError::Import(format!(
                        "the model's metadata names {} labels for {} classes",
                        labels.len(),
                        cut.head.out_dim()
                    )));
                }
                cut.head.labels = Some(labels);
            }
        }
        let extractor = match cut.extractor {
            None => None,
            Some(onnx) => {
                let plain = PlainExtractor {
                    onnx,
                    input_shape: input_shape(&bytes)?,
                    pixel_scale: PIXEL_SCALE,
                };
                let prepared = plain.prepare()?;
                if prepared.out_dim != cut.head.in_dim() {
                    return Err(ModelError::Import(format!(
                        "the extractor yields {} features, the classifier takes {}",
                        prepared.out_dim,
                        cut.head.in_dim()
                    )));
                }
                Some((plain, prepared))
            }
        };
        Ok(Self {
            head: cut.head,
            extractor,
            plaintext_dense: cut.plaintext_dense,
        })
    }

    /// The prepared extractor, if the network has one.
    pub fn extractor(&self) -> Option<&Extractor> {
        self.extractor.as_ref().map(|(_, e)| e)
    }

    pub fn image_features(&self, image: &Image) -> Result<Vec<f32>> {
        image_features(self.extractor(), image)
    }

    pub fn read_inputs(&self, path: &Path, limit: usize) -> Result<Vec<Vec<f32>>> {
        read_inputs(path, self.extractor(), limit)
    }
}

/// The classifier's input for an image: through the extractor, which a network without one
/// cannot take.
pub fn image_features(extractor: Option<&Extractor>, image: &Image) -> Result<Vec<f32>> {
    extractor
        .ok_or(ModelError::Features(
            super::error::FeatureFault::NoExtractor,
        ))?
        .run_image(image)
}

/// Classifier inputs from a file of model inputs (at most `limit`): IDX images through the
/// extractor, or vectors one per line (`-`: stdin), through the extractor when there is one.
pub fn read_inputs(
    path: &Path,
    extractor: Option<&Extractor>,
    limit: usize,
) -> Result<Vec<Vec<f32>>> {
    if is_idx(path) {
        read_idx_images(path)?
            .iter()
            .take(limit)
            .map(|im| image_features(extractor, im))
            .collect()
    } else {
        read_samples(path)?
            .into_iter()
            .take(limit)
            .map(|s| match extractor {
                Some(e) => e.run(&s.values),
                None => Ok(s.values),
            })
            .collect()
    }
}

/// Whether `path` holds an IDX file (possibly gzipped).
pub(crate) fn is_idx(path: &Path) -> bool {
    let name = path.to_string_lossy();
    name.ends_with("-ubyte") || name.ends_with("-ubyte.gz") || name.ends_with(".idx")
}

/// The network's input shape, a symbolic batch taken as 1.
fn input_shape(bytes: &[u8]) -> Result<Vec<usize>> {
    let model = pb::ModelProto::decode(bytes)
        .map_err(|e| ModelError::Import(format!("not an ONNX model: {e}")))?;
    let graph = model.graph.unwrap_or_default();
    let initializers: std::collections::HashSet<&str> =
        graph.initializer.iter().map(|t| t.name.as_str()).collect();
    let input = graph
        .input
        .iter()
        .find(|i| !initializers.contains(i.name.as_str()))
        .ok_or_else(|| ModelError::Import("the network has no input".into()))?;
    let dims = match input.r#type.as_ref().and_then(|t| t.value.as_ref()) {
        Some(pb::type_proto::Value::TensorType(t)) => {
            t.shape.as_ref().map(|s| s.dim.clone()).unwrap_or_default()
        }
        _ => Vec::new(),
    };
    if dims.is_empty() {
        return Err(ModelError::Import(format!(
            "input {} has no shape",
            input.name
        )));
    }
    let shape: Vec<usize> = dims
        .iter()
        .enumerate()
        .map(|(i, d)| match d.value {
            Some(pb::tensor_shape_proto::dimension::Value::DimValue(v)) if v > 0 => v as usize,
            _ if i == 0 => 1, // a symbolic batch
            _ => 0,
        })
        .collect();
    if shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .is_none_or(|n| n > MAX_INPUT_VALUES)
    {
        return Err(ModelError::Import(format!(
            "input {} has shape {shape:?}: more values than hedge takes ({MAX_INPUT_VALUES})",
            input.name
        )));
    }
    if shape.contains(&0) {
        return Err(ModelError::Import(format!(
            "input {} has a symbolic dimension",
            input.name
        )));
    }
    Ok(shape)
}
