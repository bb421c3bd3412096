//! The encrypted model as the backend protects it and the board loads it, the public facts
//! both sides need, and the result ciphertext the board publishes. No secret key here.

use crate::crypto::keys::KeyId;
use crate::crypto::linear::{EncryptedGgswRows, EncryptedMatrix};
use crate::crypto::lut::EncryptedLuts;
use crate::crypto::raw::U64s;
use crate::model::quant::{HiddenMap, InputQuant, QuantModel, Variant};
use serde::{Deserialize, Serialize};

/// The plaintext first layer of variant `last` (public, like the feature extractor).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PlainLayer {
    pub w: Vec<i64>,
    pub b: Vec<i64>,
    pub map: HiddenMap,
}

/// The encrypted part of a model, per variant.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum EncryptedModel {
    Last {
        first: PlainLayer,
        output: EncryptedMatrix,
    },
    Noact {
        first: EncryptedMatrix,
        second: EncryptedGgswRows,
    },
    Act {
        first: EncryptedMatrix,
        luts: EncryptedLuts,
    },
}

impl EncryptedModel {
    pub fn variant(&self) -> Variant {
        match self {
            Self::Last { .. } => Variant::Last,
            Self::Noact { .. } => Variant::Noact,
            Self::Act { .. } => Variant::Act,
        }
    }

    /// Bytes of encrypted weights and biases (keys and plaintext parts excluded).
    pub fn encrypted_bytes(&self) -> usize {
        match self {
            Self::Last { output, .. } => output.byte_len(),
            Self::Noact { first, second } => first.byte_len() + second.byte_len(),
            Self::Act { first, luts } => first.byte_len() + luts.byte_len(),
        }
    }
}

/// Public facts about a protected model that the edge and the decryptor need.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelInfo {
    pub variant: Variant,
    pub input: InputQuant,
    pub hidden_dim: usize,
    pub out_dim: usize,
    pub delta_out: u64,
    pub out_scale: f64,
}

impl ModelInfo {
    pub fn of(q: &QuantModel) -> Self {
        Self {
            variant: q.variant,
            input: q.input.clone(),
            hidden_dim: q.hidden_dim,
            out_dim: q.out_dim,
            delta_out: q.delta_out,
            out_scale: q.out_scale,
        }
    }
}

/// An encrypted inference result as it travels: the key it is under and the raw words of
/// each part. How to read it — which key, which coefficients, Δ, scale, what an honest result
/// looks like — is not in it: the backend takes all of that from its own record of the bundle
/// ([`Decoding`]), so a board cannot choose how its ciphertexts are decrypted.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ResultCiphertext {
    pub key_id: KeyId,
    pub parts: Vec<U64s>,
}

impl ResultCiphertext {
    /// Serialised size in bytes.
    pub fn byte_len(&self) -> usize {
        postcard::to_allocvec(self).map(|v| v.len()).unwrap_or(0)
    }
}

/// The plaintext first layer of `last`: a = map(W1·x + b1).
pub fn first_layer_hidden(l: &PlainLayer, xq: &[i64]) -> Vec<i64> {
    l.b.iter()
        .enumerate()
        .map(|(j, b)| {
            let y: i64 = l.w[j * xq.len()..(j + 1) * xq.len()]
                .iter()
                .zip(xq)
                .map(|(w, x)| w * x)
                .sum::<i64>()
                + b;
            l.map.apply(j, y).0
        })
        .collect()
}
