//! hedged's settings, resolved once: the TOML file (config/hedged.toml) with the command
//! line's overrides on top, every default in [`File`], every value typed. Whatever is wrong
//! (an unknown key or input scheme, a missing bundle, neither broker nor output directory) is
//! found here, before a bundle is loaded.
//!
//! What a SIGHUP may change is a type of its own ([`Reloadable`]); a reload that changes
//! anything in [`StartUp`] keeps the old value and says which setting needs a restart.

use super::error::EdgeError;
use super::queue::QueuePolicy;
use super::source::Source;
use crate::engine::FeatureMode;
use crate::transport::mqtt::MqttConfig;
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Applied by a SIGHUP reload, between two inferences.
#[derive(Clone, Debug, PartialEq)]
pub struct Reloadable {
    /// The signed edge bundle.
    pub bundle: PathBuf,
    /// The backend's verifying key: the trust anchor for bundles.
    pub verifying_key: PathBuf,
    pub features: FeatureMode,
}

/// Taken at start-up only.
#[derive(Clone, Debug, PartialEq)]
pub struct StartUp {
    pub input: Source,
    /// Largest frame (or line) a source accepts, in bytes.
    pub max_frame_bytes: usize,
    pub log_level: String,
    /// This board's name in topics and results.
    pub device_id: String,
    /// The board's own state: identity key, sequence numbers (and the spool by default).
    pub state_dir: PathBuf,
    /// The key results are signed with ([`super::identity`]).
    pub identity_key: PathBuf,
    pub queue: QueueSettings,
    pub sink: SinkSettings,
    /// The systemd watchdog is fed while an inference runs for at most this long.
    pub watchdog_max_inference: Duration,
}

#[derive(Clone, Debug, PartialEq)]
pub struct QueueSettings {
    pub capacity: usize,
    pub max_bytes: usize,
    pub policy: QueuePolicy,
}

/// Where results go.
#[derive(Clone, Debug, PartialEq)]
pub enum SinkSettings {
    /// Result files in a directory (no broker configured).
    Files { out_dir: PathBuf },
    /// Spooled, then published to the broker.
    Broker {
        mqtt: Box<MqttConfig>,
        spool: SpoolSettings,
    },
}

#[derive(Clone, Debug, PartialEq)]
pub struct SpoolSettings {
    pub dir: PathBuf,
    pub max_files: usize,
    pub max_bytes: u64,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    pub reloadable: Reloadable,
    pub start_up: StartUp,
}

/// Default `max_frame_bytes`: plaintext vectors and encrypted features of the `last` variant
/// fit; a full classifier's encrypted features need more (`hedge encrypt-features` prints
/// their size).
pub(crate) const DEFAULT_MAX_FRAME: usize = 64 << 20;

/// The configuration file as written, with every default. Flat, as users write it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    bundle: Option<PathBuf>,
    verifying_key: Option<PathBuf>,
    #[serde(default)]
    input: Source,
    #[serde(default = "defaults::max_frame_bytes")]
    max_frame_bytes: usize,
    #[serde(default)]
    features: FeatureMode,
    out_dir: Option<PathBuf>,
    #[serde(default = "defaults::log_level")]
    log_level: String,
    #[serde(default = "defaults::device_id")]
    device_id: String,
    spool_dir: Option<PathBuf>,
    state_dir: Option<PathBuf>,
    identity_key: Option<PathBuf>,
    #[serde(default = "defaults::spool_max_files")]
    spool_max_files: usize,
    #[serde(default = "defaults::spool_max_bytes")]
    spool_max_bytes: u64,
    #[serde(default = "defaults::queue_capacity")]
    queue_capacity: usize,
    /// Four largest default frames.
    #[serde(default = "defaults::queue_max_bytes")]
    queue_max_bytes: usize,
    #[serde(default)]
    queue_policy: QueuePolicy,
    #[serde(default = "defaults::watchdog_max_inference_s")]
    watchdog_max_inference_s: u64,
    mqtt: Option<MqttConfig>,
}

mod defaults {
    pub fn max_frame_bytes() -> usize {
        super::DEFAULT_MAX_FRAME
    }
    pub fn log_level() -> String {
        "info".into()
    }
    pub fn device_id() -> String {
        "edge".into()
    }
    pub(crate) fn spool_max_files() -> usize {
        10_000
    }
    pub(crate) fn spool_max_bytes() -> u64 {
        1 << 30
    }
    pub(crate) fn queue_capacity() -> usize {
        64
    }
    pub(crate) fn queue_max_bytes() -> usize {
        4 * super::DEFAULT_MAX_FRAME
    }
    pub(crate) fn watchdog_max_inference_s() -> u64 {
        600
    }
}

impl Settings {
    /// The file at `path` (if any) under `overrides` (a TOML table of the same keys, from the
    /// command line).
    pub fn load(path: Option<&Path>, overrides: toml::Table) -> Result<Self, EdgeError> {
        Self::file(path, overrides)?.resolve()
    }

    /// Where the board's identity key lives, from the same settings but needing only the
    /// state directory (identity_key, state_dir, spool_dir or out_dir): for
    /// `hedged --print-identity` on a board that has no bundle yet.
    pub fn identity_key_path(
        path: Option<&Path>,
        overrides: toml::Table,
    ) -> Result<PathBuf, EdgeError> {
        let f = Self::file(path, overrides)?;
        f.identity_key
            .or_else(|| f.state_dir.map(|d| d.join("identity.key")))
            .or_else(|| f.spool_dir.map(|d| d.join("identity.key")))
            .or_else(|| f.out_dir.map(|d| d.join(".hedged").join("identity.key")))
            .ok_or_else(|| {
                EdgeError::Settings(
                    "no state directory: pass --spool-dir (or set state_dir, spool_dir or \
                     out_dir in the config)"
                        .into(),
                )
            })
    }

    fn file(path: Option<&Path>, overrides: toml::Table) -> Result<File, EdgeError> {
        let mut table = match path {
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .map_err(|e| EdgeError::Io(crate::files::IoError::new(p, e)))?;
                text.parse::<toml::Table>()
                    .map_err(|e| EdgeError::Settings(format!("{}: {e}", p.display())))?
            }
            None => toml::Table::new(),
        };
        merge(&mut table, overrides);
        File::deserialize(table).map_err(|e| {
            let origin = path.map_or("settings".to_string(), |p| p.display().to_string());
            EdgeError::Settings(format!("{origin}: {e}"))
        })
    }

    /// Settings from the text of a configuration file alone.
    pub fn parse(text: &str) -> Result<Self, EdgeError> {
        let table = text
            .parse::<toml::Table>()
            .map_err(|e| EdgeError::Settings(e.to_string()))?;
        File::deserialize(table)
            .map_err(|e| EdgeError::Settings(e.to_string()))?
            .resolve()
    }

    /// Start-up settings that differ in `new` (they take effect only on a restart).
    pub(crate) fn restart_only_changes(&self, new: &Settings) -> Vec<&'static str> {
        let (a, b) = (&self.start_up, &new.start_up);
        [
            ("input", a.input != b.input),
            ("max_frame_bytes", a.max_frame_bytes != b.max_frame_bytes),
            ("log_level", a.log_level != b.log_level),
            ("device_id", a.device_id != b.device_id),
            (
                "state_dir, identity_key",
                a.state_dir != b.state_dir || a.identity_key != b.identity_key,
            ),
            ("queue", a.queue != b.queue),
            ("output (out_dir, spool, mqtt)", a.sink != b.sink),
            (
                "watchdog_max_inference_s",
                a.watchdog_max_inference != b.watchdog_max_inference,
            ),
        ]
        .into_iter()
        .filter_map(|(name, changed)| changed.then_some(name))
        .collect()
    }
}

impl File {
    fn resolve(self) -> Result<Settings, EdgeError> {
        let required = |v: Option<PathBuf>, name: &str| {
            v.ok_or_else(|| {
                EdgeError::Settings(format!(
                    "{name} is not set (config file or --{})",
                    name.replace('_', "-")
                ))
            })
        };
        let spool_dir = self.spool_dir.clone();
        let sink = match (self.mqtt, self.out_dir) {
            (Some(mqtt), _) => SinkSettings::Broker {
                mqtt: Box::new(mqtt),
                spool: SpoolSettings {
                    dir: required(spool_dir, "spool_dir")?,
                    max_files: self.spool_max_files.max(1),
                    max_bytes: self.spool_max_bytes,
                },
            },
            (None, Some(out_dir)) => SinkSettings::Files { out_dir },
            (None, None) => {
                return Err(EdgeError::Settings(
                    "no output: configure a broker ([mqtt] or --broker) or an out_dir \
                     (--out-dir)"
                        .into(),
                ))
            }
        };
        let state_dir = match (self.state_dir, &sink) {
            (Some(dir), _) => dir,
            (None, SinkSettings::Broker { spool, .. }) => spool.dir.clone(),
            // Hidden, so that `hedge decrypt OUT/*` takes only results.
            (None, SinkSettings::Files { out_dir }) => out_dir.join(".hedged"),
        };
        let identity_key = self
            .identity_key
            .unwrap_or_else(|| state_dir.join("identity.key"));
        Ok(Settings {
            reloadable: Reloadable {
                bundle: required(self.bundle, "bundle")?,
                verifying_key: required(self.verifying_key, "verifying_key")?,
                features: self.features,
            },
            start_up: StartUp {
                input: self.input,
                max_frame_bytes: self.max_frame_bytes,
                log_level: self.log_level,
                device_id: self.device_id,
                state_dir,
                identity_key,
                queue: QueueSettings {
                    capacity: self.queue_capacity.max(1),
                    max_bytes: self.queue_max_bytes,
                    policy: self.queue_policy,
                },
                sink,
                watchdog_max_inference: Duration::from_secs(self.watchdog_max_inference_s),
            },
        })
    }
}

/// `over` on top of `base`, tables merged key by key.
fn merge(base: &mut toml::Table, over: toml::Table) {
    for (key, value) in over {
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o),
            (_, v) => {
                base.insert(key, v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example() -> PathBuf {
        PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/config/hedged.toml"))
    }

    fn table(text: &str) -> toml::Table {
        text.parse().unwrap()
    }

    #[test]
    fn example_config_resolves_and_flags_override() {
        let s = Settings::load(Some(&example()), toml::Table::new()).unwrap();
        assert_eq!(s.reloadable.features, FeatureMode::Plain);
        assert_eq!(s.start_up.queue.max_bytes, 4 * DEFAULT_MAX_FRAME);
        assert!(matches!(s.start_up.input, Source::Socket(_)));
        let SinkSettings::Broker { mqtt, .. } = &s.start_up.sink else {
            panic!("the example publishes to a broker");
        };
        assert_eq!(mqtt.host, "localhost");
        let o = Settings::load(
            Some(&example()),
            table("features = \"enc\"\ndevice_id = \"elsewhere\"\n[mqtt]\nport = 8883"),
        )
        .unwrap();
        assert_eq!(o.reloadable.features, FeatureMode::Enc);
        let SinkSettings::Broker { mqtt, .. } = &o.start_up.sink else {
            panic!()
        };
        assert_eq!((mqtt.host.as_str(), mqtt.port), ("localhost", 8883));
        assert_eq!(
            s.restart_only_changes(&o),
            vec!["device_id", "output (out_dir, spool, mqtt)"]
        );
    }

    #[test]
    fn the_commented_out_options_are_valid_keys() {
        let text = std::fs::read_to_string(example()).unwrap();
        let uncommented: String = text
            .lines()
            .map(|l| match l.strip_prefix("# ") {
                Some(rest) if rest.starts_with('[') || rest.contains(" = \"") => rest,
                _ => l,
            })
            .collect::<Vec<_>>()
            .join("\n");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("full.toml");
        std::fs::write(&path, uncommented).unwrap();
        let s = Settings::load(Some(&path), toml::Table::new()).unwrap();
        let SinkSettings::Broker { mqtt, .. } = s.start_up.sink else {
            panic!()
        };
        assert_eq!(mqtt.username.as_deref(), Some("hedge"));
        assert!(mqtt.tls.unwrap().client_key.is_some());
    }

    #[test]
    fn mistakes_are_found_before_anything_is_loaded() {
        let refused = |text: &str| match Settings::load(None, table(text)) {
            Ok(_) => panic!("accepted {text:?}"),
            Err(e) => e.to_string(),
        };
        let base = "bundle = \"b\"\nverifying_key = \"k\"\nout_dir = \"o\"\n";
        assert!(Settings::load(None, table(base)).is_ok());
        assert!(refused("bogus = 1").contains("bogus"));
        assert!(refused(&format!("{base}input = \"unx:/run/s\"")).contains("unx:"));
        assert!(refused("verifying_key = \"k\"\nout_dir = \"o\"").contains("bundle is not set"));
        assert!(refused("bundle = \"b\"\nverifying_key = \"k\"").contains("no output"));
        let no_spool = "bundle = \"b\"\nverifying_key = \"k\"\n[mqtt]\nhost = \"h\"";
        assert!(refused(no_spool).contains("spool_dir is not set"));
        assert!(refused(&format!("{base}queue_policy = \"sometimes\"")).contains("sometimes"));
    }
}
