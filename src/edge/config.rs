//! hedged's configuration: a TOML file (see config/hedged.toml), overridden by CLI flags.

use super::publish::MqttConfig;
use super::queue::QueuePolicy;
use crate::bench::FeatureMode;
use crate::error::{Error, Result};
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// The daemon's settings.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The signed edge bundle.
    pub bundle: Option<PathBuf>,
    /// The backend's verifying key: the trust anchor for bundles.
    pub verifying_key: Option<PathBuf>,
    /// Feature vectors, one per line; "-" for stdin.
    pub input: Option<String>,
    /// "plain" or "enc" (features encrypted with the bundle's public key before inference).
    pub features: Option<FeatureMode>,
    /// Where result files go when no broker is configured.
    pub out_dir: Option<PathBuf>,
    /// Log filter (as RUST_LOG); RUST_LOG itself wins when set.
    pub log_level: Option<String>,
    /// This board's name in topics and results.
    pub device_id: Option<String>,
    /// Store-and-forward directory (systemd: StateDirectory).
    pub spool_dir: Option<PathBuf>,
    pub spool_max_files: Option<usize>,
    pub spool_max_bytes: Option<u64>,
    /// Vectors waiting for the scheduler, and what happens when that is full.
    pub queue_capacity: Option<usize>,
    pub queue_policy: Option<QueuePolicy>,
    /// Publish results to this broker (else write files to out_dir).
    pub mqtt: Option<MqttConfig>,
}

impl Config {
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        toml::from_str(&text).map_err(|e| Error::Malformed(format!("{}: {e}", path.display())))
    }

    /// Fill every unset field from `other` (CLI flags first, then the file).
    pub fn or(self, other: Config) -> Config {
        Config {
            bundle: self.bundle.or(other.bundle),
            verifying_key: self.verifying_key.or(other.verifying_key),
            input: self.input.or(other.input),
            features: self.features.or(other.features),
            out_dir: self.out_dir.or(other.out_dir),
            log_level: self.log_level.or(other.log_level),
            device_id: self.device_id.or(other.device_id),
            spool_dir: self.spool_dir.or(other.spool_dir),
            spool_max_files: self.spool_max_files.or(other.spool_max_files),
            spool_max_bytes: self.spool_max_bytes.or(other.spool_max_bytes),
            queue_capacity: self.queue_capacity.or(other.queue_capacity),
            queue_policy: self.queue_policy.or(other.queue_policy),
            mqtt: self.mqtt.or(other.mqtt),
        }
    }

    /// A required setting, or a clear error naming it.
    pub fn require<'a, T>(value: &'a Option<T>, name: &str) -> Result<&'a T> {
        value
            .as_ref()
            .ok_or_else(|| Error::Malformed(format!("{name} is not set (config file or --{name})")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_config_parses_and_flags_override() {
        let text =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/hedged.toml"))
                .unwrap();
        let file: Config = toml::from_str(&text).unwrap();
        assert_eq!(file.features, Some(FeatureMode::Plain));
        let flags = Config {
            features: Some(FeatureMode::Enc),
            ..Default::default()
        };
        let merged = flags.or(file.clone());
        assert_eq!(merged.features, Some(FeatureMode::Enc));
        assert_eq!(merged.bundle, file.bundle);
        assert!(toml::from_str::<Config>("bogus = 1").is_err());
    }
}
