//! The backend registry — the paper's "Trained and Protected DNN Database": key sets (where
//! their secret key lives, never the key itself), protected bundles with everything needed to
//! decrypt their results, and devices with their identity keys, replay state and standing.
//!
//! Its storage ([`store`]): one SQLite file by default, created on first use, or a PostgreSQL
//! server (`postgres://…`) for agents on several hosts; the same SQL runs on both. The schema
//! is versioned and migrated forward on open. Several decryption agents may share the
//! registry: acceptance of a (device, sequence) is one exclusive transaction, so two agents
//! can never both accept the same result, even when the broker redelivers it to the other one.
//!
//! Replay: each device's highest accepted sequence number and every accepted number within
//! [`REPLAY_WINDOW`] below it are kept; a number seen before, or older than the window, is
//! refused. The window lets genuine results that arrive out of order after an outage in (a
//! board has at most its publish windows in flight), and bounds the table.

use super::{BackendError, Result};
use crate::crypto::keys::KeyId;
use crate::engine::Decoding;
use crate::hex::hex;
use crate::model::quant::Variant;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use store::{params, Dialect, Row, Store, Tx};

#[cfg(any(feature = "test-support", test))]
pub mod conformance;
pub mod postgres;
pub mod sqlite;
pub mod store;

/// Accepted sequence numbers kept below a device's highest.
pub(crate) const REPLAY_WINDOW: u64 = 65_536;

/// Schema migrations, in order: `MIGRATIONS[v]` takes version v to v + 1.
const MIGRATIONS: &[&str] = &[
    // 1: key sets, bundles, devices, accepted results.
    "CREATE TABLE key_sets (
        id TEXT PRIMARY KEY,
        security INTEGER NOT NULL,
        secret_key TEXT NOT NULL,
        created_ms INTEGER NOT NULL
    );
    CREATE TABLE bundles (
        id TEXT PRIMARY KEY,
        key_id TEXT NOT NULL REFERENCES key_sets(id),
        name TEXT NOT NULL,
        variant TEXT NOT NULL,
        input_dim INTEGER NOT NULL,
        hidden_dim INTEGER NOT NULL,
        out_dim INTEGER NOT NULL,
        epoch INTEGER NOT NULL,
        decoding TEXT NOT NULL,
        created_ms INTEGER NOT NULL
    );
    CREATE TABLE devices (
        id TEXT PRIMARY KEY,
        identity_key TEXT NOT NULL,
        state TEXT NOT NULL,
        refused INTEGER NOT NULL DEFAULT 0,
        high_water INTEGER NOT NULL DEFAULT 0,
        accepted INTEGER NOT NULL DEFAULT 0,
        last_seen_ms INTEGER NOT NULL DEFAULT 0,
        enrolled_ms INTEGER NOT NULL
    );
    CREATE TABLE accepted (
        device TEXT NOT NULL REFERENCES devices(id),
        seq INTEGER NOT NULL,
        PRIMARY KEY (device, seq)
    ) WITHOUT ROWID;",
    // 2: the boards' health as they last reported it (status and metrics topics).
    "CREATE TABLE health (
        device TEXT PRIMARY KEY,
        online INTEGER NOT NULL,
        version TEXT,
        bundle TEXT,
        epoch INTEGER,
        started_ms INTEGER,
        status_ms INTEGER NOT NULL,
        metrics TEXT,
        metrics_ms INTEGER
    );",
    // 3: device groups, deployments and where each target stands.
    "ALTER TABLE devices ADD COLUMN grp TEXT;
    CREATE TABLE deployments (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        bundle TEXT NOT NULL,
        epoch INTEGER NOT NULL,
        file TEXT NOT NULL,
        update_file TEXT,
        chunk_size INTEGER NOT NULL,
        created_ms INTEGER NOT NULL,
        cancelled INTEGER NOT NULL DEFAULT 0
    );
    CREATE TABLE deployment_targets (
        deployment INTEGER NOT NULL REFERENCES deployments(id),
        device TEXT NOT NULL,
        payload TEXT NOT NULL,
        size INTEGER NOT NULL,
        state TEXT NOT NULL,
        received INTEGER NOT NULL DEFAULT 0,
        reason TEXT,
        running TEXT,
        updated_ms INTEGER NOT NULL,
        PRIMARY KEY (deployment, device)
    );",
    // 4: the query budget — accepted and refused results per key set, refusals per device
    //    over its life — and results withheld from quarantined devices (acknowledged like any
    //    other, decrypted once an operator clears the device).
    "ALTER TABLE key_sets ADD COLUMN accepted INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE key_sets ADD COLUMN refused INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE devices ADD COLUMN refused_total INTEGER NOT NULL DEFAULT 0;
    CREATE TABLE withheld (
        device TEXT NOT NULL REFERENCES devices(id),
        seq INTEGER NOT NULL,
        payload TEXT NOT NULL,
        received_ms INTEGER NOT NULL,
        PRIMARY KEY (device, seq)
    );",
    // 5: where each agent's output file ends with everything committed (a line written and
    //    not committed — the agent killed in between — is removed when it starts again).
    "CREATE TABLE outputs (
        path TEXT PRIMARY KEY,
        committed_end INTEGER NOT NULL
    );",
    // 6: deployment payloads in the registry, chunk by chunk as the boards ask for them, so
    //    that any deployment agent on any host serves them (`deployments.file` and
    //    `update_file`, where earlier builds kept them, are no longer read).
    "CREATE TABLE deployment_chunks (
        deployment INTEGER NOT NULL REFERENCES deployments(id),
        payload TEXT NOT NULL,
        idx INTEGER NOT NULL,
        bytes BLOB NOT NULL,
        PRIMARY KEY (deployment, payload, idx)
    );",
];

/// Results kept per quarantined device; beyond, its results are left unacknowledged (the
/// board keeps them) so that a quarantined board cannot fill the registry.
pub(crate) const MAX_WITHHELD: u64 = 1_000;

/// A deployment as the backend made it.
#[derive(Clone, Debug, PartialEq)]
pub struct DeploymentRecord {
    pub id: u64,
    pub bundle: String,
    pub epoch: u64,
    pub chunk_size: u32,
    pub created_ms: u64,
    pub cancelled: bool,
}

/// One board's part in a deployment, as it last reported it.
#[derive(Clone, Debug, PartialEq)]
pub struct TargetRecord {
    pub deployment: u64,
    pub device: String,
    /// "bundle" or "model-update".
    pub payload: String,
    pub size: u64,
    pub state: String,
    pub received: u64,
    pub reason: Option<String>,
    /// The bundle the board said it runs.
    pub running: Option<String>,
    pub updated_ms: u64,
}

/// A board's health as it last reported it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct HealthRecord {
    pub device: String,
    pub online: bool,
    pub version: Option<String>,
    pub bundle: Option<String>,
    pub epoch: Option<u64>,
    pub started_ms: Option<u64>,
    /// When the backend received its last status (ms since the epoch).
    pub status_ms: u64,
    /// Its latest metrics (JSON) and when they came.
    pub metrics: Option<String>,
    pub metrics_ms: Option<u64>,
}

/// A key set: its id, level and where its secret key file is.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct KeySetRecord {
    pub id: KeyId,
    pub security: u32,
    pub secret_key: PathBuf,
}

/// How many results a key set has answered: the query budget a rotation resets
/// (docs/THREATS.md).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeySetUse {
    pub id: String,
    pub security: u32,
    pub accepted: u64,
    pub refused: u64,
}

/// A protected bundle, as the backend recorded it.
#[derive(Clone, Debug, PartialEq)]
pub struct BundleRecord {
    /// [`crate::bundle::bundle_id`] of its bytes.
    pub id: String,
    pub name: String,
    pub variant: Variant,
    pub input_dim: usize,
    pub hidden_dim: usize,
    pub out_dim: usize,
    pub epoch: u64,
    pub decoding: Decoding,
}

/// A device's standing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceState {
    Active,
    /// Too many refused results: nothing of it is decrypted until an operator clears it.
    Quarantined,
    /// Permanently refused.
    Revoked,
}

impl DeviceState {
    fn name(self) -> &'static str {
        match self {
            DeviceState::Active => "active",
            DeviceState::Quarantined => "quarantined",
            DeviceState::Revoked => "revoked",
        }
    }

    fn parse(s: &str) -> Result<Self> {
        match s {
            "active" => Ok(DeviceState::Active),
            "quarantined" => Ok(DeviceState::Quarantined),
            "revoked" => Ok(DeviceState::Revoked),
            other => Err(BackendError::Registry(format!(
                "unknown device state {other}"
            ))),
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct DeviceRecord {
    pub id: String,
    /// Ed25519 public key the device signs its results with.
    pub identity_key: [u8; 32],
    pub state: DeviceState,
    /// Refused results that carried the device's valid signature.
    pub refused: u64,
    pub high_water: u64,
    pub accepted: u64,
    pub last_seen_ms: u64,
    /// Refused results over the device's life (`refused` restarts when it is cleared).
    pub refused_total: u64,
}

/// One result to accept ([`Registry::accept_all`]).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Accept<'a> {
    pub device: &'a str,
    pub seq: u64,
    /// The key set of the bundle it came from (its query budget), when known.
    pub key_set: Option<&'a KeyId>,
}

/// What [`Registry::accept`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Acceptance {
    /// First time: record and reveal.
    New,
    /// Accepted before (a redelivery or a replay).
    Seen,
    /// Older than the replay window: cannot be told from a replay.
    TooOld,
}

pub struct Registry {
    store: Box<dyn Store>,
    path: PathBuf,
}

/// A PostgreSQL URL rather than a file.
pub(crate) fn is_postgres(location: &Path) -> bool {
    let l = location.to_string_lossy();
    l.starts_with("postgres://") || l.starts_with("postgresql://")
}

fn key_from_hex(s: &str) -> Result<[u8; 32]> {
    let bytes = (0..s.len())
        .step_by(2)
        .map(|i| s.get(i..i + 2).and_then(|b| u8::from_str_radix(b, 16).ok()))
        .collect::<Option<Vec<u8>>>();
    bytes
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| BackendError::Registry(format!("{s:?} is not a 32-byte hex key")))
}

fn parse_device(r: &Row) -> Result<DeviceRecord> {
    Ok(DeviceRecord {
        id: r.text(0)?,
        identity_key: key_from_hex(&r.text(1)?)?,
        state: DeviceState::parse(&r.text(2)?)?,
        refused: r.uint(3)?,
        high_water: r.uint(4)?,
        accepted: r.uint(5)?,
        last_seen_ms: r.uint(6)?,
        refused_total: r.uint(7)?,
    })
}

fn parse_target(r: &Row) -> Result<TargetRecord> {
    Ok(TargetRecord {
        deployment: r.uint(0)?,
        device: r.text(1)?,
        payload: r.text(2)?,
        size: r.uint(3)?,
        state: r.text(4)?,
        received: r.uint(5)?,
        reason: r.opt_text(6)?,
        running: r.opt_text(7)?,
        updated_ms: r.uint(8)?,
    })
}

impl Registry {
    /// Open (creating and migrating as needed) the registry at `location`: a SQLite file, or
    /// a PostgreSQL URL (`postgres://user@host:port/database`).
    pub fn open(location: &Path) -> Result<Self> {
        let store: Box<dyn Store> = if is_postgres(location) {
            Box::new(postgres::Postgres::connect(&location.to_string_lossy())?)
        } else {
            Box::new(sqlite::Sqlite::open(location)?)
        };
        let registry = Self {
            store,
            path: location.to_path_buf(),
        };
        registry.migrate()?;
        Ok(registry)
    }

    /// Where it is (a file, or the PostgreSQL URL).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The storage, for what the registry's methods do not cover (tests, diagnostics).
    pub fn store(&self) -> &dyn Store {
        self.store.as_ref()
    }

    fn migrate(&self) -> Result<()> {
        let tx = Tx::migration(self.store())?;
        let version = self.store.schema_version()?;
        if version > MIGRATIONS.len() {
            return Err(BackendError::Registry(format!(
                "{}: schema version {version} is newer than this build's {} (upgrade hedge)",
                self.path.display(),
                MIGRATIONS.len()
            )));
        }
        for (v, migration) in MIGRATIONS.iter().enumerate().skip(version) {
            match self.store.dialect() {
                Dialect::Sqlite => self.store.batch(migration)?,
                Dialect::Postgres => self.store.batch(&store::postgres_schema(migration))?,
            }
            self.store.set_schema_version(v + 1)?;
        }
        tx.commit()
    }

    fn one(&self, sql: &str, params: &[store::Value]) -> Result<Option<Row>> {
        Ok(self.store.query(sql, params)?.into_iter().next())
    }

    pub(crate) fn add_key_set(&self, k: &KeySetRecord) -> Result<()> {
        self.store.execute(
            "INSERT INTO key_sets (id, security, secret_key, created_ms) VALUES ($1, $2, $3, $4)
             ON CONFLICT(id) DO UPDATE SET secret_key = excluded.secret_key",
            params![
                hex(&k.id),
                k.security,
                k.secret_key.display().to_string(),
                now_ms()
            ],
        )?;
        Ok(())
    }

    pub(crate) fn key_set(&self, id: &KeyId) -> Result<Option<KeySetRecord>> {
        self.one(
            "SELECT security, secret_key FROM key_sets WHERE id = $1",
            params![hex(id)],
        )?
        .map(|r| {
            Ok(KeySetRecord {
                id: *id,
                security: r.int(0)? as u32,
                secret_key: PathBuf::from(r.text(1)?),
            })
        })
        .transpose()
    }

    /// Every key set with the results it answered, oldest first.
    pub fn key_set_use(&self) -> Result<Vec<KeySetUse>> {
        self.store
            .query(
                "SELECT id, security, accepted, refused FROM key_sets ORDER BY created_ms, id",
                &[],
            )?
            .iter()
            .map(|r| {
                Ok(KeySetUse {
                    id: r.text(0)?,
                    security: r.int(1)? as u32,
                    accepted: r.uint(2)?,
                    refused: r.uint(3)?,
                })
            })
            .collect()
    }

    /// Record a protected bundle (its key set must be recorded).
    pub(crate) fn add_bundle(&self, b: &BundleRecord) -> Result<()> {
        let decoding = serde_json::to_string(&b.decoding).expect("a decoding serialises to JSON");
        self.store.execute(
            "INSERT INTO bundles (id, key_id, name, variant, input_dim, hidden_dim, out_dim,
                 epoch, decoding, created_ms)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
            params![
                b.id.as_str(),
                hex(&b.decoding.key_id),
                b.name.as_str(),
                b.variant.name(),
                b.input_dim,
                b.hidden_dim,
                b.out_dim,
                b.epoch,
                decoding,
                now_ms()
            ],
        )?;
        Ok(())
    }

    pub fn bundle(&self, id: &str) -> Result<Option<BundleRecord>> {
        let Some(r) = self.one(
            "SELECT name, variant, input_dim, hidden_dim, out_dim, epoch, decoding
             FROM bundles WHERE id = $1",
            params![id],
        )?
        else {
            return Ok(None);
        };
        let variant = r.text(1)?;
        Ok(Some(BundleRecord {
            id: id.to_string(),
            name: r.text(0)?,
            variant: Variant::from_name(&variant)
                .ok_or_else(|| BackendError::Registry(format!("bundle {id}: variant {variant}")))?,
            input_dim: r.uint(2)? as usize,
            hidden_dim: r.uint(3)? as usize,
            out_dim: r.uint(4)? as usize,
            epoch: r.uint(5)?,
            decoding: serde_json::from_str(&r.text(6)?)
                .map_err(|e| BackendError::Registry(format!("bundle {id}: {e}")))?,
        }))
    }

    /// The highest epoch recorded (0 if none).
    pub(crate) fn latest_epoch(&self) -> Result<u64> {
        match self.one("SELECT COALESCE(MAX(epoch), 0) FROM bundles", &[])? {
            Some(r) => r.uint(0),
            None => Ok(0),
        }
    }

    /// Enrol a device with its identity key. Re-adding the same key is harmless; another key
    /// under a known id is refused (revoke the device first).
    pub fn add_device(&self, id: &str, key: &[u8; 32]) -> Result<()> {
        self.insert_device(id, key)
    }

    /// [`Self::add_device`] for many, in one transaction (a fleet enrolled at once: one
    /// commit, not one per board).
    pub fn add_devices(&self, devices: &[(String, [u8; 32])]) -> Result<()> {
        let tx = Tx::exclusive(self.store())?;
        for (id, key) in devices {
            self.insert_device(id, key)?;
        }
        tx.commit()
    }

    fn insert_device(&self, id: &str, key: &[u8; 32]) -> Result<()> {
        if let Some(d) = self.device(id)? {
            if d.identity_key != *key {
                return Err(BackendError::Registry(format!(
                    "device {id} is enrolled with another identity key"
                )));
            }
            return Ok(());
        }
        self.store.execute(
            "INSERT INTO devices (id, identity_key, state, enrolled_ms) VALUES ($1, $2, $3, $4)",
            params![id, hex(key), DeviceState::Active.name(), now_ms()],
        )?;
        Ok(())
    }

    const DEVICE_COLUMNS: &'static str =
        "id, identity_key, state, refused, high_water, accepted, last_seen_ms, refused_total";

    pub fn device(&self, id: &str) -> Result<Option<DeviceRecord>> {
        self.one(
            &format!("SELECT {} FROM devices WHERE id = $1", Self::DEVICE_COLUMNS),
            params![id],
        )?
        .map(|r| parse_device(&r))
        .transpose()
    }

    pub fn devices(&self) -> Result<Vec<DeviceRecord>> {
        self.store
            .query(
                &format!("SELECT {} FROM devices ORDER BY id", Self::DEVICE_COLUMNS),
                &[],
            )?
            .iter()
            .map(parse_device)
            .collect()
    }

    fn set_state(&self, id: &str, state: DeviceState, reset_refused: bool) -> Result<()> {
        let changed = self.store.execute(
            "UPDATE devices SET state = $2,
                 refused = CASE WHEN $3 = 1 THEN 0 ELSE refused END
             WHERE id = $1",
            params![id, state.name(), reset_refused],
        )?;
        if changed == 0 {
            return Err(BackendError::Registry(format!("no device {id}")));
        }
        Ok(())
    }

    /// Record a board's status (its metrics are kept).
    pub(crate) fn record_status(&self, h: &HealthRecord) -> Result<()> {
        self.store.execute(
            "INSERT INTO health (device, online, version, bundle, epoch, started_ms, status_ms)
             VALUES ($1, $2, $3, $4, $5, $6, $7)
             ON CONFLICT(device) DO UPDATE SET online = $2,
                 version = COALESCE($3, health.version), bundle = COALESCE($4, health.bundle),
                 epoch = COALESCE($5, health.epoch),
                 started_ms = COALESCE($6, health.started_ms), status_ms = $7",
            params![
                h.device.as_str(),
                h.online,
                h.version.clone(),
                h.bundle.clone(),
                h.epoch,
                h.started_ms,
                h.status_ms
            ],
        )?;
        Ok(())
    }

    /// Record a board's latest metrics (JSON); a board seen only by its metrics is online.
    pub(crate) fn record_metrics(&self, device: &str, metrics: &str, at_ms: u64) -> Result<()> {
        self.store.execute(
            "INSERT INTO health (device, online, status_ms, metrics, metrics_ms)
             VALUES ($1, 1, $3, $2, $3)
             ON CONFLICT(device) DO UPDATE SET metrics = $2, metrics_ms = $3",
            params![device, metrics, at_ms],
        )?;
        Ok(())
    }

    /// Every board's health, by device id.
    pub fn health(&self) -> Result<Vec<HealthRecord>> {
        self.store
            .query(
                "SELECT device, online, version, bundle, epoch, started_ms, status_ms, metrics,
                        metrics_ms FROM health ORDER BY device",
                &[],
            )?
            .iter()
            .map(|r| {
                Ok(HealthRecord {
                    device: r.text(0)?,
                    online: r.int(1)? != 0,
                    version: r.opt_text(2)?,
                    bundle: r.opt_text(3)?,
                    epoch: r.opt_int(4)?.map(|v| v as u64),
                    started_ms: r.opt_int(5)?.map(|v| v as u64),
                    status_ms: r.uint(6)?,
                    metrics: r.opt_text(7)?,
                    metrics_ms: r.opt_int(8)?.map(|v| v as u64),
                })
            })
            .collect()
    }

    /// Put an enrolled device in a group (deployments can target groups).
    pub fn set_group(&self, device: &str, group: &str) -> Result<()> {
        let n = self.store.execute(
            "UPDATE devices SET grp = $2 WHERE id = $1",
            params![device, group],
        )?;
        if n == 0 {
            return Err(BackendError::Registry(format!("no device {device}")));
        }
        Ok(())
    }

    /// The devices of a group (none revoked), by id.
    pub fn group(&self, group: &str) -> Result<Vec<String>> {
        self.store
            .query(
                "SELECT id FROM devices WHERE grp = $1 AND state != 'revoked' ORDER BY id",
                params![group],
            )?
            .iter()
            .map(|r| r.text(0))
            .collect()
    }

    /// The key set a recorded bundle was made under.
    pub(crate) fn bundle_key_id(&self, bundle: &str) -> Result<Option<String>> {
        self.one("SELECT key_id FROM bundles WHERE id = $1", params![bundle])?
            .map(|r| r.text(0))
            .transpose()
    }

    /// A new deployment of `bundle`, its payloads (name, bytes) stored in `chunk_size` pieces
    /// for the deployment agents to serve, and its targets (device, payload name, size) — all
    /// in one transaction: a deployment that fails part-way leaves nothing behind.
    pub(crate) fn add_deployment(
        &self,
        bundle: &str,
        epoch: u64,
        chunk_size: u32,
        payloads: &[(&str, &[u8])],
        targets: &[(&str, &str, u64)],
    ) -> Result<u64> {
        let tx = Tx::exclusive(self.store())?;
        let deployment = self
            .one(
                "INSERT INTO deployments (bundle, epoch, file, chunk_size, created_ms)
                 VALUES ($1, $2, '', $3, $4) RETURNING id",
                params![bundle, epoch, chunk_size, now_ms()],
            )?
            .ok_or_else(|| BackendError::Registry("no deployment id returned".into()))?
            .uint(0)?;
        for &(payload, bytes) in payloads {
            for (idx, chunk) in bytes.chunks(chunk_size as usize).enumerate() {
                self.store.execute(
                    "INSERT INTO deployment_chunks (deployment, payload, idx, bytes)
                     VALUES ($1, $2, $3, $4)",
                    params![deployment, payload, idx, chunk],
                )?;
            }
        }
        for &(device, payload, size) in targets {
            self.store.execute(
                "INSERT INTO deployment_targets (deployment, device, payload, size, state,
                 updated_ms) VALUES ($1, $2, $3, $4, 'offered', $5)",
                params![deployment, device, payload, size, now_ms()],
            )?;
        }
        tx.commit()?;
        Ok(deployment)
    }

    /// Chunks `first..last` of a deployment's payload that are stored, with their indices, in
    /// one query (fewer past the payload's end; none if the deployment was made by a build
    /// that kept payloads in files).
    pub(crate) fn deployment_chunks(
        &self,
        deployment: u64,
        payload: &str,
        first: u32,
        last: u32,
    ) -> Result<Vec<(u32, Vec<u8>)>> {
        self.store
            .query(
                "SELECT idx, bytes FROM deployment_chunks
                 WHERE deployment = $1 AND payload = $2 AND idx >= $3 AND idx < $4
                 ORDER BY idx",
                params![deployment, payload, first, last],
            )?
            .iter()
            .map(|r| Ok((r.uint(0)? as u32, r.bytes(1)?.to_vec())))
            .collect()
    }

    pub fn deployment(&self, id: u64) -> Result<Option<DeploymentRecord>> {
        self.one(
            "SELECT id, bundle, epoch, chunk_size, created_ms, cancelled
             FROM deployments WHERE id = $1",
            params![id],
        )?
        .map(|r| {
            Ok(DeploymentRecord {
                id: r.uint(0)?,
                bundle: r.text(1)?,
                epoch: r.uint(2)?,
                chunk_size: r.uint(3)? as u32,
                created_ms: r.uint(4)?,
                cancelled: r.int(5)? != 0,
            })
        })
        .transpose()
    }

    /// The newest deployment that targets `device` (0: none).
    pub(crate) fn latest_deployment_for(&self, device: &str) -> Result<u64> {
        match self.one(
            "SELECT COALESCE(MAX(deployment), 0) FROM deployment_targets WHERE device = $1",
            params![device],
        )? {
            Some(r) => r.uint(0),
            None => Ok(0),
        }
    }

    pub(crate) fn cancel_deployment(&self, id: u64) -> Result<()> {
        self.store.execute(
            "UPDATE deployments SET cancelled = 1 WHERE id = $1",
            params![id],
        )?;
        Ok(())
    }

    /// Targets of one deployment, or of all (newest deployment first).
    const TARGET_COLUMNS: &'static str = "SELECT deployment, device, payload, size, state, \
                                           received, reason, running, updated_ms FROM \
                                           deployment_targets";

    /// One board's row of a deployment, if it is a target.
    pub(crate) fn target(&self, deployment: u64, device: &str) -> Result<Option<TargetRecord>> {
        self.one(
            &format!(
                "{} WHERE deployment = $1 AND device = $2",
                Self::TARGET_COLUMNS
            ),
            params![deployment, device],
        )?
        .map(|r| parse_target(&r))
        .transpose()
    }

    pub fn targets(&self, deployment: Option<u64>) -> Result<Vec<TargetRecord>> {
        const COLUMNS: &str = Registry::TARGET_COLUMNS;
        let rows = match deployment {
            Some(d) => self.store.query(
                &format!("{COLUMNS} WHERE deployment = $1 ORDER BY device"),
                params![d],
            )?,
            None => self
                .store
                .query(&format!("{COLUMNS} ORDER BY deployment DESC, device"), &[])?,
        };
        rows.iter().map(parse_target).collect()
    }

    /// What a board reported; false if it is no target of that deployment.
    pub(crate) fn record_target_state(
        &self,
        deployment: u64,
        device: &str,
        state: &str,
        received: u64,
        reason: Option<&str>,
        running: &str,
    ) -> Result<bool> {
        let n = self.store.execute(
            "UPDATE deployment_targets SET state = $3, received = $4, reason = $5,
             running = $6, updated_ms = $7 WHERE deployment = $1 AND device = $2",
            params![
                deployment,
                device,
                state,
                received,
                reason,
                running,
                now_ms()
            ],
        )?;
        Ok(n > 0)
    }

    /// An operator clears a quarantined device: it is active again, its count reset.
    pub fn clear(&self, id: &str) -> Result<()> {
        self.set_state(id, DeviceState::Active, true)
    }

    pub fn revoke(&self, id: &str) -> Result<()> {
        self.set_state(id, DeviceState::Revoked, false)
    }

    /// Count a refused result against a device (it carried the device's valid signature);
    /// at `limit` refusals the device is quarantined. Returns its state after.
    pub fn refused(&self, id: &str, limit: u64) -> Result<DeviceState> {
        self.refused_under(id, limit, None)
    }

    /// [`Self::refused`], counted against the key set of the bundle it named, if known.
    pub(crate) fn refused_under(
        &self,
        id: &str,
        limit: u64,
        key_set: Option<&KeyId>,
    ) -> Result<DeviceState> {
        let tx = Tx::exclusive(self.store())?;
        self.store.execute(
            "UPDATE devices SET refused = refused + 1, refused_total = refused_total + 1,
                 state = CASE WHEN state = 'active' AND refused + 1 >= $2
                              THEN 'quarantined' ELSE state END
             WHERE id = $1",
            params![id, limit],
        )?;
        if let Some(k) = key_set {
            self.store.execute(
                "UPDATE key_sets SET refused = refused + 1 WHERE id = $1",
                params![hex(k)],
            )?;
        }
        tx.commit()?;
        Ok(self
            .device(id)?
            .map(|d| d.state)
            .unwrap_or(DeviceState::Revoked))
    }

    /// Accept (device, seq) once, and run `record` (writing the decrypted result out) inside
    /// the same transaction: if it fails, or the process dies before the commit, nothing is
    /// accepted and the redelivered result is taken again. `record` runs only for a new one.
    pub fn accept(
        &mut self,
        device: &str,
        seq: u64,
        record: impl FnOnce() -> Result<()>,
    ) -> Result<Acceptance> {
        let item = Accept {
            device,
            seq,
            key_set: None,
        };
        let accepted = self.accept_all(&[item], None, |a| {
            if a[0] == Acceptance::New {
                record()?;
            }
            Ok(0)
        })?;
        Ok(accepted[0])
    }

    /// Accept each item once, all in one transaction (group commit: one commit, one sync, for
    /// a batch of results), counting each new one against its key set. `record` gets what
    /// became of each item, in order, writes out the new ones and returns how many bytes it
    /// appended to `output` (its name and its end before); the output's new end is recorded
    /// in the same transaction. If `record` fails, or the process dies before the commit,
    /// nothing is accepted and the redelivered results are taken again.
    ///
    /// Devices are locked in sorted order, so agents sharing a PostgreSQL registry cannot
    /// deadlock on each other's batches.
    pub(crate) fn accept_all(
        &mut self,
        items: &[Accept<'_>],
        output: Option<(&str, u64)>,
        record: impl FnOnce(&[Acceptance]) -> Result<u64>,
    ) -> Result<Vec<Acceptance>> {
        let tx = Tx::exclusive(self.store())?;
        let mut order: Vec<usize> = (0..items.len()).collect();
        order.sort_by_key(|&i| (items[i].device, items[i].seq));
        let mut accepted = vec![Acceptance::Seen; items.len()];
        let mut per_key_set: BTreeMap<&KeyId, u64> = BTreeMap::new();
        for i in order {
            accepted[i] = self.accept_one(&items[i])?;
            if let (Acceptance::New, Some(k)) = (accepted[i], items[i].key_set) {
                *per_key_set.entry(k).or_default() += 1;
            }
        }
        // The key sets' counters last, once each: a lock taken after them could close a
        // cycle with another agent's batch (PostgreSQL aborts one as a deadlock).
        for (k, n) in per_key_set {
            self.store.execute(
                "UPDATE key_sets SET accepted = accepted + $2 WHERE id = $1",
                params![hex(k), n],
            )?;
        }
        let appended = record(&accepted)?;
        if let Some((name, end)) = output {
            if appended > 0 {
                self.set_output_end(name, end + appended)?;
            }
        }
        tx.commit()?;
        Ok(accepted)
    }

    /// One item of [`Self::accept_all`], inside its transaction.
    fn accept_one(&self, item: &Accept<'_>) -> Result<Acceptance> {
        let Accept { device, seq, .. } = *item;
        // PostgreSQL: the device's row stays locked until the commit (SQLite's transaction
        // already excludes every other writer).
        let lock = match self.store.dialect() {
            Dialect::Sqlite => "",
            Dialect::Postgres => " FOR UPDATE",
        };
        let high_water = self
            .one(
                &format!("SELECT high_water FROM devices WHERE id = $1{lock}"),
                params![device],
            )?
            .ok_or_else(|| BackendError::Registry(format!("no device {device}")))?
            .uint(0)?;
        if seq.saturating_add(REPLAY_WINDOW) <= high_water {
            return Ok(Acceptance::TooOld);
        }
        let inserted = self.store.execute(
            "INSERT INTO accepted (device, seq) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            params![device, seq],
        )?;
        if inserted == 0 {
            return Ok(Acceptance::Seen);
        }
        let new_high = high_water.max(seq);
        self.store.execute(
            "UPDATE devices SET high_water = $2, accepted = accepted + 1, last_seen_ms = $3
             WHERE id = $1",
            params![device, new_high, now_ms()],
        )?;
        if new_high > high_water {
            self.store.execute(
                "DELETE FROM accepted WHERE device = $1 AND seq + $2 <= $3",
                params![device, REPLAY_WINDOW, new_high],
            )?;
        }
        Ok(Acceptance::New)
    }

    /// Where the agent output `name` ends with everything committed, if it was used before.
    pub fn output_end(&self, name: &str) -> Result<Option<u64>> {
        self.one(
            "SELECT committed_end FROM outputs WHERE path = $1",
            params![name],
        )?
        .map(|r| r.uint(0))
        .transpose()
    }

    pub fn set_output_end(&self, name: &str, end: u64) -> Result<()> {
        self.store.execute(
            "INSERT INTO outputs (path, committed_end) VALUES ($1, $2)
             ON CONFLICT (path) DO UPDATE SET committed_end = excluded.committed_end",
            params![name, end],
        )?;
        Ok(())
    }

    /// Keep a quarantined device's result to decrypt once it is cleared. False if the device
    /// already has [`MAX_WITHHELD`] waiting (the result is then not kept).
    pub(crate) fn withhold(&self, device: &str, seq: u64, payload: &[u8]) -> Result<bool> {
        let tx = Tx::exclusive(self.store())?;
        let waiting = self
            .one(
                "SELECT COUNT(*) FROM withheld WHERE device = $1",
                params![device],
            )?
            .map(|r| r.uint(0))
            .transpose()?
            .unwrap_or(0);
        if waiting >= MAX_WITHHELD {
            return Ok(false);
        }
        self.store.execute(
            "INSERT INTO withheld (device, seq, payload, received_ms) VALUES ($1, $2, $3, $4)
             ON CONFLICT DO NOTHING",
            params![device, seq, hex(payload), now_ms()],
        )?;
        tx.commit()?;
        Ok(true)
    }

    /// Up to `limit` withheld results of devices that are active again: (device, seq,
    /// message bytes), oldest first.
    pub fn released(&self, limit: u64) -> Result<Vec<(String, u64, Vec<u8>)>> {
        self.store
            .query(
                "SELECT w.device, w.seq, w.payload FROM withheld w
                 JOIN devices d ON d.id = w.device
                 WHERE d.state = 'active' ORDER BY w.received_ms, w.device, w.seq LIMIT $1",
                params![limit],
            )?
            .iter()
            .map(|r| {
                let bytes = unhex(&r.text(2)?)
                    .ok_or_else(|| BackendError::Registry("a withheld result is not hex".into()))?;
                Ok((r.text(0)?, r.uint(1)?, bytes))
            })
            .collect()
    }

    /// Withheld results waiting, per device.
    pub fn withheld_count(&self, device: &str) -> Result<u64> {
        Ok(self
            .one(
                "SELECT COUNT(*) FROM withheld WHERE device = $1",
                params![device],
            )?
            .map(|r| r.uint(0))
            .transpose()?
            .unwrap_or(0))
    }

    /// A withheld result has been handled (decrypted, refused or found a duplicate).
    pub(crate) fn forget_withheld(&self, device: &str, seq: u64) -> Result<()> {
        self.store.execute(
            "DELETE FROM withheld WHERE device = $1 AND seq = $2",
            params![device, seq],
        )?;
        Ok(())
    }
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

fn now_ms() -> i64 {
    crate::transport::message::now_ms() as i64
}

#[cfg(test)]
mod tests {
    use super::conformance;

    fn fresh() -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("registry.sqlite");
        (dir, path)
    }

    #[test]
    fn records_survive_reopening_and_migrations_are_versioned() {
        let (_d, p) = fresh();
        conformance::records_survive_reopening_and_migrations_are_versioned(&p);
    }

    #[test]
    fn each_result_is_accepted_once_within_the_window() {
        let (_d, p) = fresh();
        conformance::each_result_is_accepted_once_within_the_window(&p);
    }

    #[test]
    fn refusals_quarantine_until_cleared() {
        let (_d, p) = fresh();
        conformance::refusals_quarantine_until_cleared(&p);
    }

    #[test]
    fn two_agents_never_both_accept_a_result() {
        let (_d, p) = fresh();
        conformance::two_agents_never_both_accept_a_result(&p);
    }

    #[test]
    fn fleet_and_deployments_are_recorded() {
        let (_d, p) = fresh();
        conformance::fleet_and_deployments_are_recorded(&p);
    }
}
