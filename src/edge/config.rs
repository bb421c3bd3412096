//! hedged's configuration: a TOML file (see config/hedged.toml), overridden by CLI flags.

use super::mqtt::MqttConfig;
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
    /// The data source: "-" (stdin lines), a file of lines, "frames:PATH" or "unix:PATH"
    /// (see [`super::source`]).
    pub input: Option<String>,
    /// Largest frame (or line) a source accepts, in bytes.
    pub max_frame_bytes: Option<usize>,
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
    /// Vectors waiting for the scheduler (count and bytes), and what happens when that is full.
    pub queue_capacity: Option<usize>,
    pub queue_max_bytes: Option<usize>,
    pub queue_policy: Option<QueuePolicy>,
    /// The systemd watchdog is fed while an inference runs for at most this long.
    pub watchdog_max_inference_s: Option<u64>,
    /// Publish results to this broker (else write files to out_dir).
    pub mqtt: Option<MqttConfig>,
}

/// Default `max_frame_bytes`: plaintext vectors and encrypted features of the `last` variant
/// fit; a full classifier's encrypted features need more (`hedge encrypt-features` prints
/// their size).
pub const DEFAULT_MAX_FRAME: usize = 64 << 20;

/// Default `queue_max_bytes`: four largest default frames.
pub const DEFAULT_QUEUE_BYTES: usize = 256 << 20;

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
            max_frame_bytes: self.max_frame_bytes.or(other.max_frame_bytes),
            features: self.features.or(other.features),
            out_dir: self.out_dir.or(other.out_dir),
            log_level: self.log_level.or(other.log_level),
            device_id: self.device_id.or(other.device_id),
            spool_dir: self.spool_dir.or(other.spool_dir),
            spool_max_files: self.spool_max_files.or(other.spool_max_files),
            spool_max_bytes: self.spool_max_bytes.or(other.spool_max_bytes),
            queue_capacity: self.queue_capacity.or(other.queue_capacity),
            queue_max_bytes: self.queue_max_bytes.or(other.queue_max_bytes),
            queue_policy: self.queue_policy.or(other.queue_policy),
            watchdog_max_inference_s: self
                .watchdog_max_inference_s
                .or(other.watchdog_max_inference_s),
            mqtt: self.mqtt.or(other.mqtt),
        }
    }

    /// Settings that differ from `new` but only take effect on a restart (a SIGHUP reload
    /// applies the bundle, the verifying key and the feature mode).
    pub fn restart_only_changes(&self, new: &Config) -> Vec<&'static str> {
        let mut changed = Vec::new();
        macro_rules! check {
            ($($field:ident),*) => {$(
                if self.$field != new.$field {
                    changed.push(stringify!($field));
                }
            )*};
        }
        check!(
            input,
            max_frame_bytes,
            out_dir,
            log_level,
            device_id,
            spool_dir,
            spool_max_files,
            spool_max_bytes,
            queue_capacity,
            queue_max_bytes,
            queue_policy,
            watchdog_max_inference_s,
            mqtt
        );
        changed
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
        assert_eq!(file.queue_max_bytes, Some(DEFAULT_QUEUE_BYTES));
        let flags = Config {
            features: Some(FeatureMode::Enc),
            ..Default::default()
        };
        let merged = flags.or(file.clone());
        assert_eq!(merged.features, Some(FeatureMode::Enc));
        assert_eq!(merged.bundle, file.bundle);
        assert!(toml::from_str::<Config>("bogus = 1").is_err());
        // The commented-out [mqtt] options are valid keys too.
        let uncommented: String = text
            .lines()
            .map(|l| match l.strip_prefix("# ") {
                Some(rest) if rest.starts_with('[') || rest.contains(" = \"") => rest,
                _ => l,
            })
            .collect::<Vec<_>>()
            .join("\n");
        let full: Config = toml::from_str(&uncommented).unwrap();
        let mqtt = full.mqtt.unwrap();
        assert_eq!(mqtt.username.as_deref(), Some("hedge"));
        assert!(mqtt.tls.unwrap().client_key.is_some());
        let mut moved = merged.clone();
        moved.features = Some(FeatureMode::Plain);
        moved.device_id = Some("elsewhere".into());
        assert_eq!(merged.restart_only_changes(&moved), vec!["device_id"]);
    }
}
