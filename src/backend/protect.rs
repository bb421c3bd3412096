//! Protection: quantise a classifier, encrypt it under the backend's keys and sign it into an
//! edge bundle.

use super::keys::BackendKeys;
use super::registry::{BundleRecord, Registry};
use super::Result;
use crate::bundle::{BundleHeader, EdgeBundle};
use crate::crypto::keys::EdgeKeys;
use crate::crypto::lut::Activation;
use crate::engine::{Decoding, EncryptedModel, ModelInfo};
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
    epoch: u64,
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
            epoch,
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

/// The epoch for the next bundle: one above every bundle the registry recorded.
pub fn next_epoch(registry: &Path) -> Result<u64> {
    Ok(Registry::open(registry)?.latest_epoch()? + 1)
}

/// Record a protected bundle in the registry, with everything decrypting its results needs
/// (and its key set, if the registry does not know it yet).
pub fn record(p: &Protected, keys: &BackendKeys, keys_dir: &Path, registry: &Path) -> Result<()> {
    super::keys::record(keys, keys_dir, registry)?;
    let r = Registry::open(registry)?;
    let header = &p.bundle.header;
    r.add_bundle(&BundleRecord {
        id: crate::bundle::bundle_id(&p.bytes),
        name: header.name.clone(),
        variant: header.model.variant,
        input_dim: header.model.input.dim,
        hidden_dim: header.model.hidden_dim,
        out_dim: header.model.out_dim,
        epoch: header.epoch,
        decoding: Decoding::new(&p.quant, &header.params, header.key_id)?
            .refusing(&p.bundle.model)?,
    })?;
    Ok(())
}

/// Where the bundle of a variant goes by default.
pub fn default_bundle_path(dir: &Path, variant: Variant) -> PathBuf {
    dir.join(format!("{}.bundle", variant.name()))
}
