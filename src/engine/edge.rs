//! What the board runs: the inference engine an encrypted model expands into, and the
//! encrypted features a data source or the board makes with the bundle's public key.

use super::model::{
    check_rows, first_layer_hidden, EncryptedModel, ModelInfo, PartShape, PlainLayer,
    ResultCiphertext,
};
use super::{EngineError, Result};
use crate::crypto::error::CryptoError;
use crate::crypto::ggsw::{ExactGgsw, FftEngine};
use crate::crypto::keys::{EdgeKeys, KeyId, KeyKind, PreparedEvaluationKeys};
use crate::crypto::linear::{
    encrypt_features, encrypt_features_each, PackedLayout, PreparedGgswRows, PreparedMatrix,
};
use crate::crypto::lut::PreparedLuts;
use crate::crypto::params::ParameterSet;
use crate::crypto::pke::PreparedPublicKey;
use crate::crypto::raw::U64s;
use crate::files::IoError;
use crate::hex::hex;
use crate::model::quant::HiddenMap;
use serde::{Deserialize, Serialize};
use std::io::Write;
use tfhe::core_crypto::prelude::*;

/// Bytes of `value`'s postcard encoding (a length prefix's, for the streamed writer).
fn postcard_len(value: &usize) -> usize {
    postcard::to_allocvec(value)
        .expect("serialising to a Vec cannot fail")
        .len()
}

/// Features encrypted with the public key for the encrypted-features mode, as they travel
/// from a data source to the edge: one standard-domain GGSW per column group of the encrypted
/// layer's input (for `last`, the plaintext first layer's output), and the id of the key they
/// were encrypted under.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EncryptedFeatures {
    pub key_id: KeyId,
    pub decomp: crate::crypto::params::DecompParams,
    groups: Vec<U64s>,
}

impl EncryptedFeatures {
    pub fn byte_len(&self) -> usize {
        self.groups.iter().map(U64s::byte_len).sum()
    }

    /// The GGSWs, one per column group, in the standard domain.
    pub fn groups(&self) -> &[U64s] {
        &self.groups
    }
}

enum Prepared {
    Last {
        first: PlainLayer,
        output: PreparedMatrix,
    },
    Noact {
        first: PreparedMatrix,
        second: PreparedGgswRows,
    },
    Act {
        first: PreparedMatrix,
        luts: PreparedLuts,
        eval: PreparedEvaluationKeys,
    },
}

impl Prepared {
    /// The encrypted layer the (quantised) features enter.
    fn first_matrix(&self) -> &PreparedMatrix {
        match self {
            Prepared::Last { output, .. } => output,
            Prepared::Noact { first, .. } | Prepared::Act { first, .. } => first,
        }
    }
}

/// The edge's inference engine: an encrypted model expanded in memory.
pub struct EdgeEngine {
    pub info: ModelInfo,
    pub params: ParameterSet,
    key_id: KeyId,
    prepared: Prepared,
    public_key: PreparedPublicKey,
    fft: FftEngine,
}

impl EdgeEngine {
    pub fn new(
        info: ModelInfo,
        params: ParameterSet,
        key_id: KeyId,
        keys: EdgeKeys,
        model: &EncryptedModel,
    ) -> Result<Self> {
        if model.variant() != info.variant {
            return Err(EngineError::Malformed(
                "model: it disagrees with its header on the variant".into(),
            ));
        }
        let (prepared, key) = match model {
            EncryptedModel::Last { first, output } => {
                check_plain_layer(first, info.hidden_dim, info.input.dim)?;
                (
                    Prepared::Last {
                        first: first.clone(),
                        output: output.prepare()?,
                    },
                    output.key,
                )
            }
            EncryptedModel::Noact { first, second } => (
                Prepared::Noact {
                    first: first.prepare()?,
                    second: second.prepare()?,
                },
                first.key,
            ),
            EncryptedModel::Act { first, luts } => {
                // The evaluation keys first, while nothing else is expanded: their seeded form
                // is freed as they are (the load's peak at 192 and 256 bits).
                let eval = keys
                    .evaluation
                    .ok_or_else(|| {
                        EngineError::Malformed("model: act without evaluation keys".into())
                    })?
                    .into_prepared(&params)?;
                (
                    Prepared::Act {
                        first: first.prepare()?,
                        luts: luts.prepare()?,
                        eval,
                    },
                    first.key,
                )
            }
        };
        let public_key = keys.public.key(key).prepare()?;
        check_result_shape(&info, &prepared, key, public_key.poly_size())?;
        let fft = FftEngine::new(public_key.poly_size());
        Ok(Self {
            info,
            params,
            key_id,
            prepared,
            public_key,
            fft,
        })
    }

    /// Variant `act`: what the bootstraps of one inference take on this machine, in seconds,
    /// from a few measured key switches and blind rotations (the first layer and the sample
    /// extractions, a few per cent, are left out); `None` for the exact variants.
    pub fn bootstrap_seconds_per_inference(&self) -> Option<f64> {
        let Prepared::Act { luts, eval, .. } = &self.prepared else {
            return None;
        };
        let t = crate::crypto::lut::bootstrap_seconds(eval, luts.map.poly_size, 8);
        let groups = luts.map.groups(luts.out_dim) as f64;
        Some(t.key_expansion + self.info.hidden_dim as f64 * (t.key_switch + groups * t.rotation))
    }

    fn encrypted_layer_input(&self, x: &[f32]) -> Result<Vec<i64>> {
        let xq = self.info.input.quantize(x)?;
        let mut input = match &self.prepared {
            Prepared::Last { first, .. } => first_layer_hidden(first, &xq),
            _ => xq,
        };
        input.push(1); // bias column
        Ok(input)
    }

    fn first_layout(&self) -> PackedLayout {
        self.prepared.first_matrix().layout
    }

    /// Encrypt a feature vector with the public key (the encrypted-features mode).
    pub fn encrypt_features(&mut self, x: &[f32]) -> Result<EncryptedFeatures> {
        let input = self.encrypted_layer_input(x)?;
        let decomp = self.features_decomp();
        let layout = self.first_layout();
        Ok(EncryptedFeatures {
            key_id: self.key_id,
            decomp,
            groups: encrypt_features(&mut self.public_key, &layout, &input, decomp)?,
        })
    }

    /// Whether `x` is a feature vector this engine accepts (what every inference checks first).
    pub(crate) fn check_features(&self, x: &[f32]) -> Result<()> {
        self.encrypted_layer_input(x).map(|_| ())
    }

    /// The postcard size of [`Self::encrypt_features`]' output, known before encrypting.
    pub(crate) fn encrypted_features_len(&self) -> usize {
        let layout = self.first_layout();
        let group_bytes = 8 * ExactGgsw::standard_words(layout.poly_size, self.features_decomp());
        self.encrypted_features_head().len()
            + layout.groups() * (postcard_len(&group_bytes) + group_bytes)
    }

    /// The postcard encoding of [`EncryptedFeatures`] up to its groups: key id, decomposition,
    /// group count (a struct is its fields in order; a sequence is its length, then the items).
    fn encrypted_features_head(&self) -> Vec<u8> {
        let mut head = postcard::to_allocvec(&(self.key_id, self.features_decomp()))
            .expect("serialising to a Vec cannot fail");
        head.extend(
            postcard::to_allocvec(&self.first_layout().groups())
                .expect("serialising to a Vec cannot fail"),
        );
        head
    }

    /// [`Self::encrypt_features`] written to `w` as postcard — the same bytes — one group at a
    /// time, so the hundreds of MB of a full classifier's features are never held whole.
    pub(crate) fn write_encrypted_features(&mut self, x: &[f32], w: &mut dyn Write) -> Result<()> {
        let input = self.encrypted_layer_input(x)?;
        let io = |e| EngineError::Io(IoError::new("encrypted features output", e));
        w.write_all(&self.encrypted_features_head()).map_err(io)?;
        let (decomp, layout) = (self.features_decomp(), self.first_layout());
        encrypt_features_each(&mut self.public_key, &layout, &input, decomp, |group| {
            let bytes = postcard::to_allocvec(&group).expect("serialising to a Vec cannot fail");
            w.write_all(&bytes).map_err(io)
        })
    }

    /// Inference on plaintext features (only the model is secret).
    pub fn infer_plain(&mut self, x: &[f32]) -> Result<ResultCiphertext> {
        let input = self.encrypted_layer_input(x)?;
        let blocks = self.prepared.first_matrix().mul_plain(&input);
        Ok(self.finish(blocks))
    }

    /// Inference on features encrypted with the public key inside this process, streamed group
    /// by group (bounded memory); the cost of encrypting is part of the inference.
    pub fn infer_encrypting(&mut self, x: &[f32]) -> Result<ResultCiphertext> {
        let input = self.encrypted_layer_input(x)?;
        let decomp = self.features_decomp();
        let blocks = self.prepared.first_matrix().mul_encrypting(
            &mut self.public_key,
            &input,
            decomp,
            &mut self.fft,
        )?;
        Ok(self.finish(blocks))
    }

    fn features_decomp(&self) -> crate::crypto::params::DecompParams {
        match &self.prepared {
            Prepared::Act { .. } => self.params.features_pbs,
            _ => self.params.features_wide,
        }
    }

    /// Inference on encrypted features (from [`Self::encrypt_features`], here or at a data
    /// source holding the same bundle).
    pub fn infer_encrypted(&mut self, f: &EncryptedFeatures) -> Result<ResultCiphertext> {
        if f.key_id != self.key_id {
            return Err(EngineError::KeyMismatch(format!(
                "features encrypted under key {}, this bundle's key is {}",
                hex(&f.key_id),
                hex(&self.key_id)
            )));
        }
        if f.decomp != self.features_decomp() {
            return Err(EngineError::Features(
                "another decomposition than this bundle's".into(),
            ));
        }
        let blocks = self
            .prepared
            .first_matrix()
            .mul_encrypted(&f.groups, f.decomp, &mut self.fft)
            .map_err(|e| match e {
                CryptoError::Shape(m) | CryptoError::Features(m) => EngineError::Features(m),
                e => e.into(),
            })?;
        Ok(self.finish(blocks))
    }

    /// From the first encrypted layer's output to the published result (its parts in the
    /// order [`Decoding::new`] describes them).
    fn finish(&mut self, blocks: Vec<GlweCiphertextOwned<u64>>) -> ResultCiphertext {
        let parts: Vec<U64s> = match &self.prepared {
            Prepared::Last { .. } => blocks
                .into_iter()
                .map(|ct| U64s(ct.into_container()))
                .collect(),
            Prepared::Noact { second, .. } => second
                .apply(&blocks[0], &mut self.fft)
                .into_iter()
                .map(|l| U64s(l.into_container()))
                .collect(),
            Prepared::Act { first, luts, eval } => luts
                .evaluate(&blocks, first.layout.rows_per_block, eval)
                .into_iter()
                .map(|sum| U64s(sum.into_container()))
                .collect(),
        };
        let shape = &self.info.result;
        ResultCiphertext {
            key_id: self.key_id,
            bits: shape.wire.bits(),
            parts: parts
                .iter()
                .zip(&shape.parts)
                .map(|(words, part)| U64s(shape.cut(part, &words.0)))
                .collect(),
        }
    }
}

/// The bundle's result shape is what this engine computes: its key, its parts, slots inside
/// the polynomial, a modulus switch that leaves words of at least 12 bits.
fn check_result_shape(info: &ModelInfo, prepared: &Prepared, key: KeyKind, n: usize) -> Result<()> {
    let shape = &info.result;
    let (parts, glwe) = match prepared {
        Prepared::Last { output, .. } => (output.layout.blocks(), true),
        Prepared::Noact { second, .. } => (second.rows(), false),
        Prepared::Act { luts, .. } => (luts.map.groups(luts.out_dim), true),
    };
    let outputs_fit = match prepared {
        Prepared::Act { luts, .. } => luts.out_dim == info.out_dim + check_rows(info.variant),
        _ => true,
    };
    let fits = outputs_fit
        && shape.key == key
        && shape.poly_size as usize == n
        && shape.parts.len() == parts
        && shape.wire.bits() >= 64 - crate::crypto::switch::MAX_DROP_BITS
        && shape.parts.iter().all(|p| match p {
            PartShape::Glwe { slots } => glwe && slots.iter().all(|&k| (k as usize) < n),
            PartShape::Lwe => !glwe,
        });
    if !fits {
        return Err(EngineError::Malformed(
            "model: its result shape does not fit its layers".into(),
        ));
    }
    Ok(())
}

fn check_plain_layer(l: &PlainLayer, hidden: usize, in_dim: usize) -> Result<()> {
    let steps_fit = match &l.map {
        HiddenMap::Requant { steps, .. } => {
            steps.len() == hidden && steps.iter().all(|s| s.is_finite() && *s > 0.0)
        }
        _ => true,
    };
    if l.w.len() != hidden * in_dim || l.b.len() != hidden || !steps_fit {
        return Err(EngineError::Malformed(
            "model: the plaintext first layer has the wrong shape".into(),
        ));
    }
    Ok(())
}
