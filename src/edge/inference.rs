//! The running model: a verified bundle expanded into its engine and extractor, and the
//! feature mode, turning one input into an encrypted result.

use super::deploy::installed::BundleRef;
use super::error::EdgeError;
use super::settings::Reloadable;
use super::state::State;
use crate::engine::{EdgeEngine, EngineError, FeatureMode, ResultCiphertext};
use crate::model::error::FeatureFault;
use crate::model::split::Extractor;
use crate::model::ModelError;
use crate::transport::frame::Input;
use ed25519_dalek::VerifyingKey;
use std::time::{Duration, Instant};

pub(crate) struct Inference {
    engine: EdgeEngine,
    /// The bundle's epoch (anti-rollback).
    pub epoch: u64,
    /// The plaintext feature extractor, for bundles split from a CNN.
    extractor: Option<Extractor>,
    pub bundle_id: String,
    /// Where the bundle came from (the configuration, or a deployment).
    pub source: BundleRef,
    features: FeatureMode,
}

/// One inference's output.
pub(crate) struct Inferred {
    pub result: ResultCiphertext,
    /// Time in the plaintext extractor, and in the encrypted part.
    pub extract: Duration,
    pub infer: Duration,
    /// Features beyond the calibrated range, clamped (plaintext features only: the board
    /// never sees encrypted ones).
    pub clamped: usize,
}

impl Inference {
    /// Verify and expand `source` against the board's trust anchor `trusted`; a bundle older
    /// than the newest the board accepted is refused before it is expanded (the expansion is
    /// the test load).
    pub fn load(
        source: &BundleRef,
        trusted: &VerifyingKey,
        settings: &Reloadable,
        state: &State,
    ) -> Result<Self, EdgeError> {
        let file_error = |e| EdgeError::BundleFile {
            path: source.file.display().to_string(),
            cause: e,
        };
        let opened = source.open(trusted).map_err(file_error)?;
        let epoch = opened.bundle.header.epoch;
        state.check_epoch(epoch)?;
        let ready = opened.ready().map_err(file_error)?;
        Ok(Self {
            engine: ready.engine,
            epoch,
            extractor: ready.extractor,
            bundle_id: ready.id,
            source: source.clone(),
            features: settings.features,
        })
    }

    /// Values in one vector line for this bundle: the extractor's input, else the features.
    pub(crate) fn line_width(&self) -> usize {
        self.extractor
            .as_ref()
            .map_or(self.engine.info.input.dim, |e| e.in_dim())
    }

    pub(crate) fn describe(&self) -> String {
        format!(
            "bundle {} (epoch {}, {} variant, {}-bit, {} features{})",
            self.bundle_id,
            self.epoch,
            self.engine.info.variant.name(),
            self.engine.params.security,
            match self.features {
                FeatureMode::Plain => "plaintext",
                FeatureMode::Enc => "encrypted",
            },
            match &self.extractor {
                Some(e) => format!(", plaintext extractor {:?} → {}", e.input_shape, e.out_dim),
                None => String::new(),
            }
        )
    }

    /// The encrypted result of one input; an error is the input's fault (it is rejected).
    pub fn infer(&mut self, input: &Input) -> Result<Inferred, EngineError> {
        let started = Instant::now();
        let extracted;
        let features: &[f32] = match (input, &self.extractor) {
            (Input::Encrypted(f), _) => {
                let result = self.engine.infer_encrypted(f)?;
                return Ok(Inferred {
                    result,
                    extract: Duration::ZERO,
                    infer: started.elapsed(),
                    clamped: 0,
                });
            }
            (Input::Plain(x), None) => x,
            (Input::Plain(x), Some(e)) => {
                extracted = e.run(x)?;
                &extracted
            }
            (Input::Image(image), Some(e)) => {
                extracted = e.run_image(image)?;
                &extracted
            }
            (Input::Image(_), None) => {
                return Err(ModelError::from(FeatureFault::NoExtractor).into())
            }
        };
        let extract = started.elapsed();
        let result = match self.features {
            FeatureMode::Plain => self.engine.infer_plain(features),
            FeatureMode::Enc => self.engine.infer_encrypting(features),
        }?;
        Ok(Inferred {
            result,
            extract,
            infer: started.elapsed() - extract,
            clamped: self.engine.info.input.clamped(features),
        })
    }
}
