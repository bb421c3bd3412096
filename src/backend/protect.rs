//! Protection: quantise a classifier, encrypt it under the backend's keys and sign it into an
//! edge bundle.

use super::keys::BackendKeys;
use super::Result;
use crate::bundle::{BundleHeader, EdgeBundle};
use crate::crypto::keys::EdgeKeys;
use crate::crypto::lut::Activation;
use crate::engine::{EncryptedModel, ModelInfo};
use crate::model::quant::{QuantModel, Variant};
use crate::model::split::PlainExtractor;
use crate::model::Classifier;
use crate::progress::Progress;
use std::path::{Path, PathBuf};

/// Everything protection produced.
pub struct Protected {
    pub bundle: EdgeBundle,
    pub quant: QuantModel,
    pub bytes: Vec<u8>,
}

/// Quantise, encrypt and sign a classifier for one variant.
#[allow(clippy::too_many_arguments)]
pub fn protect(
    keys: &BackendKeys,
    model: &Classifier,
    variant: Variant,
    activation: Option<Activation>,
    calibration: &[Vec<f32>],
    name: &str,
    extractor: Option<PlainExtractor>,
    progress: &dyn Progress,
) -> Result<Protected> {
    let BackendKeys {
        secret,
        public,
        evaluation,
        signer,
    } = keys;
    progress.stage("quantising");
    let quant = QuantModel::quantize(model, variant, activation, calibration, &secret.params)?;
    progress.stage("encrypting the model");
    let bundle = EdgeBundle {
        header: BundleHeader {
            params: secret.params,
            key_id: secret.key_id,
            model: ModelInfo::of(&quant),
            created: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            name: name.to_string(),
        },
        keys: EdgeKeys {
            public: public.clone(),
            // Only the bootstrapping variant needs evaluation keys.
            evaluation: (variant == Variant::Act).then(|| evaluation.clone()),
        },
        model: EncryptedModel::encrypt(&quant, secret)?,
        extractor,
    };
    progress.stage("signing");
    let bytes = bundle.to_bytes(signer);
    Ok(Protected {
        bundle,
        quant,
        bytes,
    })
}

/// Where the bundle of a variant goes by default.
pub fn default_bundle_path(dir: &Path, variant: Variant) -> PathBuf {
    dir.join(format!("{}.bundle", variant.name()))
}
