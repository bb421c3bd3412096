//! The classifier being protected: a float model (imported from ONNX or generated from a fixed
//! seed), the split of a trained network into plaintext extractor and classifier, its
//! quantisation and the plaintext integer reference. Nothing is encrypted here (quantisation
//! reads the parameter set only to size the bootstrap windows).

pub mod activation;
pub mod error;
pub mod network;
pub mod onnx;
#[cfg(feature = "backend")]
pub mod prune;
pub mod quant;
pub mod split;
pub mod synth;

pub use error::ModelError;

use crate::model::activation::Activation;
use serde::{Deserialize, Serialize};

/// A dense layer y = W·x + b, W row-major (out × in).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Dense {
    pub out_dim: usize,
    pub in_dim: usize,
    pub w: Vec<f32>,
    pub b: Vec<f32>,
}

impl Dense {
    /// The identity map on `dim` values: the hidden layer of an imported linear model.
    pub fn identity(dim: usize) -> Self {
        Self {
            out_dim: dim,
            in_dim: dim,
            w: (0..dim * dim)
                .map(|k| if k / dim == k % dim { 1.0 } else { 0.0 })
                .collect(),
            b: vec![0.0; dim],
        }
    }

    pub fn forward(&self, x: &[f32]) -> Vec<f32> {
        (0..self.out_dim)
            .map(|j| {
                let row = &self.w[j * self.in_dim..(j + 1) * self.in_dim];
                row.iter().zip(x).map(|(w, x)| w * x).sum::<f32>() + self.b[j]
            })
            .collect()
    }
}

/// The classifier head: dense → activation (or none) → dense. Softmax is dropped at inference.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Classifier {
    pub hidden: Dense,
    pub activation: Option<Activation>,
    pub output: Dense,
    /// The class names the exporter's post-processing carried, one per score.
    #[serde(default)]
    pub labels: Option<Vec<String>>,
}

impl Classifier {
    pub fn in_dim(&self) -> usize {
        self.hidden.in_dim
    }

    pub fn out_dim(&self) -> usize {
        self.output.out_dim
    }

    /// Hidden activations (after the activation, if any).
    pub(crate) fn hidden_activations(&self, x: &[f32]) -> Vec<f32> {
        let h = self.hidden.forward(x);
        match self.activation {
            None => h,
            Some(f) => h.into_iter().map(|v| f.eval(v as f64) as f32).collect(),
        }
    }

    pub fn forward(&self, x: &[f32]) -> Vec<f32> {
        self.output.forward(&self.hidden_activations(x))
    }

    /// float32 size of all weights and biases.
    #[cfg(feature = "backend")]
    pub(crate) fn float_bytes(&self) -> usize {
        4 * (self.hidden.w.len() + self.hidden.b.len() + self.output.w.len() + self.output.b.len())
    }
}

/// Index of the largest score (first one on ties).
pub fn argmax<T: PartialOrd + Copy>(v: &[T]) -> usize {
    let mut best = 0;
    for (i, x) in v.iter().enumerate() {
        if *x > v[best] {
            best = i;
        }
    }
    best
}
