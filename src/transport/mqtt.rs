//! Broker connection settings shared by hedged's publisher and the decryption agent: the
//! `[mqtt]` table of the config, with optional username/password and TLS (rustls with ring;
//! a CA file as trust anchor, optionally a client certificate for mutual TLS).

use super::message::MAX_PAYLOAD;
use super::{Result, TransportError};
use crate::files::IoError;
use rumqttc::{MqttOptions, TlsConfiguration, Transport};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MqttConfig {
    pub host: String,
    #[serde(default = "default_port")]
    pub port: u16,
    /// `{device}` is replaced by the device id.
    #[serde(default = "default_topic")]
    pub topic: String,
    pub client_id: Option<String>,
    pub username: Option<String>,
    /// The password itself, or (better, e.g. with systemd credentials) a file holding it.
    pub password: Option<String>,
    pub password_file: Option<PathBuf>,
    #[serde(default = "default_keep_alive")]
    pub keep_alive_s: u64,
    /// Connect over TLS.
    pub tls: Option<TlsConfig>,
    /// The backend's end-to-end acknowledgements arrive here (`{device}` replaced).
    #[serde(default = "default_ack_topic")]
    pub ack_topic: String,
    /// Keep each result spooled until the backend acknowledges it end to end (else only until
    /// the broker's PUBACK, trusting the broker to deliver).
    #[serde(default = "default_true")]
    pub end_to_end: bool,
    /// At most this many results wait for the backend's acknowledgement: a slow backend slows
    /// the board instead of overflowing the broker's queue for it.
    #[serde(default = "default_e2e_window")]
    pub e2e_window: usize,
    /// Unacknowledged results are sent again after this long (the wait doubles, up to 16×,
    /// while none comes).
    #[serde(default = "default_e2e_timeout")]
    pub e2e_timeout_s: u64,
    /// The board's retained status (`{device}` replaced): online, or offline by its last will.
    #[serde(default = "default_status_topic")]
    pub status_topic: String,
    /// Periodic metrics (`{device}` replaced).
    #[serde(default = "default_metrics_topic")]
    pub metrics_topic: String,
    /// Seconds between metrics messages; 0: none.
    #[serde(default = "default_metrics_interval")]
    pub metrics_interval_s: u64,
    /// Deployments (`{device}` replaced): `…/offer`, `…/get`, `…/data`, `…/state` below it.
    #[serde(default = "default_deploy_topic")]
    pub deploy_topic: String,
    /// Chunks of a deployment asked for and not yet come.
    #[serde(default = "default_deploy_window")]
    pub deploy_window: usize,
    /// Largest deployment payload a board accepts, in bytes.
    #[serde(default = "default_deploy_max_bytes")]
    pub deploy_max_bytes: u64,
    /// A chunk not come after this many seconds is asked for again.
    #[serde(default = "default_deploy_timeout")]
    pub deploy_timeout_s: u64,
    /// A deployed bundle whose first this-many inputs all fail is rolled back.
    #[serde(default = "default_rollback_after")]
    pub rollback_after_failures: u32,
}

/// `[mqtt.tls]`: PEM files.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// The CA certificate(s) the broker's certificate must chain to.
    pub ca_file: PathBuf,
    /// A client certificate and its key, for brokers that require mutual TLS.
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
}

fn default_port() -> u16 {
    1883
}

fn default_topic() -> String {
    "hedge/{device}/results".into()
}

fn default_status_topic() -> String {
    "hedge/{device}/status".into()
}

fn default_metrics_topic() -> String {
    "hedge/{device}/metrics".into()
}

fn default_metrics_interval() -> u64 {
    60
}

fn default_deploy_topic() -> String {
    "hedge/{device}/deploy".into()
}

fn default_deploy_window() -> usize {
    8
}

fn default_deploy_max_bytes() -> u64 {
    512 << 20
}

fn default_deploy_timeout() -> u64 {
    10
}

fn default_rollback_after() -> u32 {
    3
}

fn default_keep_alive() -> u64 {
    30
}

fn default_ack_topic() -> String {
    "hedge/{device}/acks".into()
}

fn default_true() -> bool {
    true
}

fn default_e2e_window() -> usize {
    256
}

fn default_e2e_timeout() -> u64 {
    30
}

impl MqttConfig {
    /// Plain TCP, no credentials, every other setting at its default.
    pub fn new(host: impl Into<String>, port: u16) -> Self {
        let mut table = toml::Table::new();
        table.insert("host".into(), host.into().into());
        table.insert("port".into(), i64::from(port).into());
        table
            .try_into()
            .expect("host and port are all a config needs")
    }

    pub(crate) fn ack_topic_for(&self, device: &str) -> String {
        self.ack_topic.replace("{device}", device)
    }

    /// `HOST:PORT`.
    pub fn parse_addr(addr: &str) -> Result<(String, u16)> {
        addr.rsplit_once(':')
            .and_then(|(h, p)| Some((h.to_string(), p.parse::<u16>().ok()?)))
            .filter(|(h, _)| !h.is_empty())
            .ok_or_else(|| {
                TransportError::Settings(format!("broker address {addr:?} is not HOST:PORT"))
            })
    }

    /// `deploy_topic/<leaf>` for `device` (offer, get, data, state).
    pub(crate) fn deploy_topic_for(&self, device: &str, leaf: &str) -> String {
        format!("{}/{leaf}", self.deploy_topic.replace("{device}", device))
    }

    pub(crate) fn topic_for(&self, device: &str) -> String {
        self.topic.replace("{device}", device)
    }

    /// rumqttc options; reads the password and TLS files, so a missing or bad file is an error
    /// at start-up rather than a silent connection failure later.
    pub(crate) fn options(&self, client_id: &str) -> Result<MqttOptions> {
        let mut o = MqttOptions::new(client_id, &self.host, self.port);
        o.set_keep_alive(Duration::from_secs(self.keep_alive_s.max(5)));
        // rumqttc's default 10 KB limit is far below a result ciphertext.
        o.set_max_packet_size(MAX_PAYLOAD + 1024, MAX_PAYLOAD + 1024);
        let password = match (&self.password, &self.password_file) {
            (Some(_), Some(_)) => {
                return Err(TransportError::Settings(
                    "mqtt: set password or password_file, not both".into(),
                ))
            }
            (Some(p), None) => Some(p.clone()),
            (None, Some(f)) => Some(
                std::fs::read_to_string(f)
                    .map_err(|e| IoError::new(f, e))?
                    .trim_end_matches(['\r', '\n'])
                    .to_string(),
            ),
            (None, None) => None,
        };
        match (&self.username, password) {
            (Some(u), p) => {
                o.set_credentials(u, p.unwrap_or_default());
            }
            (None, Some(_)) => {
                return Err(TransportError::Settings(
                    "mqtt: a password needs a username".into(),
                ))
            }
            (None, None) => {}
        }
        if let Some(tls) = &self.tls {
            o.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
                Arc::new(tls.client_config()?),
            )));
        }
        Ok(o)
    }
}

impl TlsConfig {
    fn client_config(&self) -> Result<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in read_certs(&self.ca_file)? {
            roots.add(cert).map_err(|e| {
                TransportError::Settings(format!("{}: {e}", self.ca_file.display()))
            })?;
        }
        let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| TransportError::Settings(format!("TLS: {e}")))?
        .with_root_certificates(roots);
        match (&self.client_cert, &self.client_key) {
            (None, None) => Ok(builder.with_no_client_auth()),
            (Some(cert), Some(key)) => {
                let key = PrivateKeyDer::from_pem_file(key)
                    .map_err(|e| TransportError::Settings(format!("{}: {e}", key.display())))?;
                builder
                    .with_client_auth_cert(read_certs(cert)?, key)
                    .map_err(|e| TransportError::Settings(format!("{}: {e}", cert.display())))
            }
            _ => Err(TransportError::Settings(
                "mqtt.tls: client_cert and client_key go together".into(),
            )),
        }
    }
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<std::result::Result<Vec<_>, _>>())
        .map_err(|e| TransportError::Settings(format!("{}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(TransportError::Settings(format!(
            "{}: no PEM certificate",
            path.display()
        )));
    }
    Ok(certs)
}

/// Credential and TLS flags, shared by `hedge decrypt --subscribe` and `hedged`.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct MqttArgs {
    #[arg(long)]
    pub username: Option<String>,
    /// Visible in the process list: prefer --password-file.
    #[arg(long)]
    pub password: Option<String>,
    #[arg(long)]
    pub password_file: Option<PathBuf>,
    /// Connect over TLS, trusting this CA (PEM).
    #[arg(long)]
    pub ca_file: Option<PathBuf>,
    /// Client certificate and key (PEM) for mutual TLS.
    #[arg(long, requires = "client_key")]
    pub client_cert: Option<PathBuf>,
    #[arg(long, requires = "client_cert")]
    pub client_key: Option<PathBuf>,
}

impl MqttArgs {
    /// The flags that were given, as `[mqtt]` keys (merged over the configuration file's).
    pub fn overrides(&self) -> toml::Table {
        let path = |p: &Option<PathBuf>| p.as_ref().map(|p| p.display().to_string());
        let table = |pairs: [(&str, Option<String>); 3]| -> toml::Table {
            pairs
                .into_iter()
                .filter_map(|(k, v)| Some((k.to_string(), v?.into())))
                .collect()
        };
        let mut mqtt = table([
            ("username", self.username.clone()),
            ("password", self.password.clone()),
            ("password_file", path(&self.password_file)),
        ]);
        let tls = table([
            ("ca_file", path(&self.ca_file)),
            ("client_cert", path(&self.client_cert)),
            ("client_key", path(&self.client_key)),
        ]);
        if !tls.is_empty() {
            mqtt.insert("tls".into(), tls.into());
        }
        mqtt
    }

    /// Settings for the broker at `addr` (HOST:PORT) with these flags.
    pub fn config_for(&self, addr: &str) -> Result<MqttConfig> {
        let (host, port) = MqttConfig::parse_addr(addr)?;
        let mut table = self.overrides();
        table.insert("host".into(), host.into());
        table.insert("port".into(), i64::from(port).into());
        table
            .try_into()
            .map_err(|e: toml::de::Error| TransportError::Settings(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_and_tls_files_are_checked_up_front() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = MqttConfig::new("localhost", 8883);
        c.password = Some("x".into());
        assert!(c.options("id").is_err(), "password without username");
        c.username = Some("u".into());
        c.password_file = Some(dir.path().join("missing"));
        assert!(c.options("id").is_err(), "both password and file");
        c.password = None;
        assert!(c.options("id").is_err(), "missing password file");
        std::fs::write(dir.path().join("pw"), "s3cret\n").unwrap();
        c.password_file = Some(dir.path().join("pw"));
        assert!(c.options("id").is_ok());
        let not_pem = dir.path().join("ca.pem");
        std::fs::write(&not_pem, "not a certificate").unwrap();
        c.tls = Some(TlsConfig {
            ca_file: not_pem,
            client_cert: None,
            client_key: None,
        });
        assert!(c.options("id").is_err(), "CA file without a certificate");
        assert_eq!(MqttConfig::parse_addr("h:1").unwrap(), ("h".into(), 1));
        assert!(MqttConfig::parse_addr(":1").is_err());
        assert!(MqttConfig::parse_addr("h").is_err());
    }

    #[test]
    fn flags_become_settings() {
        let args = MqttArgs {
            username: Some("board".into()),
            password_file: Some("/run/pw".into()),
            ca_file: Some("/etc/ca.pem".into()),
            ..Default::default()
        };
        let c = args.config_for("broker.example:8883").unwrap();
        assert_eq!((c.host.as_str(), c.port), ("broker.example", 8883));
        assert_eq!(c.username.as_deref(), Some("board"));
        assert_eq!(c.password_file, Some(PathBuf::from("/run/pw")));
        assert_eq!(c.tls.unwrap().ca_file, PathBuf::from("/etc/ca.pem"));
        assert_eq!(c.topic, "hedge/{device}/results", "defaults kept");
        let cert_without_ca = MqttArgs {
            client_cert: Some("c.pem".into()),
            client_key: Some("c.key".into()),
            ..Default::default()
        };
        let e = cert_without_ca.config_for("h:1").unwrap_err().to_string();
        assert!(e.contains("ca_file"), "{e}");
    }
}
