//! Test support (feature `test-support`): a synthetic classifier protected in memory — the
//! quantised model, its encryption, the backend's decoding and the board's engine — for the
//! tests, the benches and the fuzz entry points, which all need one.

use super::{Decoding, EdgeEngine, EncryptedModel, ModelInfo};
use crate::crypto::keys::{EdgeKeys, KeySet};
use crate::crypto::params::ParameterSet;
use crate::model::activation::Activation;
use crate::model::quant::{QuantModel, Variant};
use crate::model::synth;

/// A synthetic task and the calibration vectors its models are quantised on.
pub struct Task {
    pub task: synth::Task,
    pub calibration: Vec<Vec<f32>>,
    /// The hidden width of [`Self::model`]'s classifiers.
    pub hidden: usize,
    seed: u64,
}

impl Task {
    /// The tests' small shape: 48 → 24 → 10, seed 5, 100 calibration vectors.
    pub fn small() -> Self {
        let task = synth::Task::new(5, 48, 10);
        let calibration = task.samples(20, 100).into_iter().map(|s| s.0).collect();
        Self {
            task,
            calibration,
            hidden: 24,
            seed: 5,
        }
    }

    /// The paper's shape, as `hedge bench` builds it: 2304 → 512 → 10, seed 42.
    pub fn paper() -> Self {
        let task = synth::Task::new(42, 2304, 10);
        let calibration = task
            .samples(42 + synth::CALIBRATION_STREAM, 200)
            .into_iter()
            .map(|s| s.0)
            .collect();
        Self {
            task,
            calibration,
            hidden: 512,
            seed: 42,
        }
    }

    /// The fixed-seed classifier for `variant` (ReLU unless `noact`), quantised.
    pub fn model(&self, variant: Variant, params: &ParameterSet) -> QuantModel {
        let activation = (variant != Variant::Noact).then_some(Activation::Relu);
        self.quantised(variant, activation, params, usize::MAX)
    }

    /// A classifier with `activation`, quantised for `variant` (`act` with `per_table`
    /// classes per bootstrap).
    pub fn quantised(
        &self,
        variant: Variant,
        activation: Option<Activation>,
        params: &ParameterSet,
        per_table: usize,
    ) -> QuantModel {
        let model = synth::classifier(self.seed, &self.task, self.hidden, activation);
        match variant {
            Variant::Act => {
                QuantModel::quantize_act(&model, None, &self.calibration, params, per_table)
            }
            _ => QuantModel::quantize(&model, variant, None, &self.calibration, params),
        }
        .expect("the synthetic model quantises")
    }
}

/// A quantised model protected under `keys` for `params` (which may take more bootstrap
/// gadget levels than the keys' own set): what the bundle and the registry would hold.
pub struct Protected {
    pub q: QuantModel,
    pub encrypted: EncryptedModel,
    pub decoding: Decoding,
    pub engine: EdgeEngine,
}

impl Protected {
    pub fn new(keys: &KeySet, params: ParameterSet, q: QuantModel) -> Self {
        let (encrypted, checks) = EncryptedModel::encrypt(&q, &keys.secret).expect("encrypts");
        let decoding = Decoding::new(&q, &params, keys.secret.key_id, &checks)
            .and_then(|d| d.refusing(&encrypted))
            .expect("a decoding");
        let edge_keys = EdgeKeys {
            public: keys.public.clone(),
            evaluation: (q.variant == Variant::Act)
                .then(|| keys.evaluation.with_bootstrap_gadget(&keys.secret, &params)),
        };
        let engine = EdgeEngine::new(
            ModelInfo::of(&q, &params).expect("a result shape"),
            params,
            keys.secret.key_id,
            edge_keys,
            &encrypted,
        )
        .expect("the engine loads");
        Self {
            q,
            encrypted,
            decoding,
            engine,
        }
    }
}
