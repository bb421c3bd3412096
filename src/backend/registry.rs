//! The backend registry — the paper's "Trained and Protected DNN Database": key sets (where
//! their secret key lives, never the key itself), protected bundles with everything needed to
//! decrypt their results, and devices with their identity keys, replay state and standing.
//!
//! One SQLite file, created on first use; the schema is versioned (`PRAGMA user_version`) and
//! migrated forward on open. Several decryption agents may share the file: acceptance of a
//! (device, sequence) is one `BEGIN IMMEDIATE` transaction, so two agents can never both
//! accept the same result, even when the broker redelivers it to the other one.
//!
//! Replay: each device's highest accepted sequence number and every accepted number within
//! [`REPLAY_WINDOW`] below it are kept; a number seen before, or older than the window, is
//! refused. The window lets genuine results that arrive out of order after an outage in (a
//! board has at most its publish windows in flight), and bounds the table.

use super::{BackendError, Result};
use crate::crypto::keys::KeyId;
use crate::engine::{hex, Decoding};
use crate::model::quant::Variant;
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use std::path::{Path, PathBuf};

/// Accepted sequence numbers kept below a device's highest.
pub const REPLAY_WINDOW: u64 = 65_536;

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
];

/// A deployment as the backend made it.
#[derive(Clone, Debug, PartialEq)]
pub struct DeploymentRecord {
    pub id: u64,
    pub bundle: String,
    pub epoch: u64,
    /// The signed bundle, and the model update cut from it (if a target takes one).
    pub file: PathBuf,
    pub update_file: Option<PathBuf>,
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
pub struct KeySetRecord {
    pub id: KeyId,
    pub security: u32,
    pub secret_key: PathBuf,
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
    conn: Connection,
    path: PathBuf,
}

fn sql(e: rusqlite::Error) -> BackendError {
    BackendError::Registry(e.to_string())
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

impl Registry {
    /// Open (creating and migrating as needed) the registry at `path`.
    pub fn open(path: &Path) -> Result<Self> {
        let conn = Connection::open(path)
            .map_err(|e| BackendError::Registry(format!("{}: {e}", path.display())))?;
        conn.busy_timeout(std::time::Duration::from_secs(10))
            .map_err(sql)?;
        // WAL: readers do not block the writer; NORMAL sync is durable across a process crash
        // (a power loss may lose the last transactions, which the boards then resend).
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(sql)?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(sql)?;
        conn.pragma_update(None, "foreign_keys", "ON")
            .map_err(sql)?;
        let mut registry = Self {
            conn,
            path: path.to_path_buf(),
        };
        registry.migrate()?;
        Ok(registry)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn migrate(&mut self) -> Result<()> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(sql)?;
        let version: usize = tx
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(sql)?;
        if version > MIGRATIONS.len() {
            return Err(BackendError::Registry(format!(
                "{}: schema version {version} is newer than this build's {} (upgrade hedge)",
                self.path.display(),
                MIGRATIONS.len()
            )));
        }
        for (v, migration) in MIGRATIONS.iter().enumerate().skip(version) {
            tx.execute_batch(migration).map_err(sql)?;
            tx.pragma_update(None, "user_version", v + 1).map_err(sql)?;
        }
        tx.commit().map_err(sql)
    }

    pub fn add_key_set(&self, k: &KeySetRecord) -> Result<()> {
        self.conn
            .execute(
                "INSERT INTO key_sets (id, security, secret_key, created_ms) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT(id) DO UPDATE SET secret_key = excluded.secret_key",
                params![
                    hex(&k.id),
                    k.security,
                    k.secret_key.display().to_string(),
                    now_ms()
                ],
            )
            .map_err(sql)?;
        Ok(())
    }

    pub fn key_set(&self, id: &KeyId) -> Result<Option<KeySetRecord>> {
        self.conn
            .query_row(
                "SELECT security, secret_key FROM key_sets WHERE id = ?1",
                [hex(id)],
                |r| {
                    Ok(KeySetRecord {
                        id: *id,
                        security: r.get(0)?,
                        secret_key: PathBuf::from(r.get::<_, String>(1)?),
                    })
                },
            )
            .optional()
            .map_err(sql)
    }

    /// Record a protected bundle (its key set must be recorded).
    pub fn add_bundle(&self, b: &BundleRecord) -> Result<()> {
        let decoding = serde_json::to_string(&b.decoding).expect("a decoding serialises to JSON");
        self.conn
            .execute(
                "INSERT INTO bundles (id, key_id, name, variant, input_dim, hidden_dim, out_dim,
                     epoch, decoding, created_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                params![
                    b.id,
                    hex(&b.decoding.key_id),
                    b.name,
                    b.variant.name(),
                    b.input_dim as i64,
                    b.hidden_dim as i64,
                    b.out_dim as i64,
                    b.epoch as i64,
                    decoding,
                    now_ms()
                ],
            )
            .map_err(sql)?;
        Ok(())
    }

    pub fn bundle(&self, id: &str) -> Result<Option<BundleRecord>> {
        self.conn
            .query_row(
                "SELECT name, variant, input_dim, hidden_dim, out_dim, epoch, decoding
                 FROM bundles WHERE id = ?1",
                [id],
                |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, i64>(2)?,
                        r.get::<_, i64>(3)?,
                        r.get::<_, i64>(4)?,
                        r.get::<_, i64>(5)?,
                        r.get::<_, String>(6)?,
                    ))
                },
            )
            .optional()
            .map_err(sql)?
            .map(|(name, variant, i, h, o, epoch, decoding)| {
                Ok(BundleRecord {
                    id: id.to_string(),
                    name,
                    variant: Variant::from_name(&variant).ok_or_else(|| {
                        BackendError::Registry(format!("bundle {id}: variant {variant}"))
                    })?,
                    input_dim: i as usize,
                    hidden_dim: h as usize,
                    out_dim: o as usize,
                    epoch: epoch as u64,
                    decoding: serde_json::from_str(&decoding)
                        .map_err(|e| BackendError::Registry(format!("bundle {id}: {e}")))?,
                })
            })
            .transpose()
    }

    /// The highest epoch recorded (0 if none).
    pub fn latest_epoch(&self) -> Result<u64> {
        self.conn
            .query_row("SELECT COALESCE(MAX(epoch), 0) FROM bundles", [], |r| {
                r.get::<_, i64>(0)
            })
            .map(|e| e as u64)
            .map_err(sql)
    }

    /// Enrol a device with its identity key. Re-adding the same key is harmless; another key
    /// under a known id is refused (revoke the device first).
    pub fn add_device(&self, id: &str, key: &[u8; 32]) -> Result<()> {
        if let Some(d) = self.device(id)? {
            if d.identity_key != *key {
                return Err(BackendError::Registry(format!(
                    "device {id} is enrolled with another identity key"
                )));
            }
            return Ok(());
        }
        self.conn
            .execute(
                "INSERT INTO devices (id, identity_key, state, enrolled_ms) VALUES (?1, ?2, ?3, ?4)",
                params![id, hex(key), DeviceState::Active.name(), now_ms()],
            )
            .map_err(sql)?;
        Ok(())
    }

    fn device_row(r: &rusqlite::Row) -> rusqlite::Result<(String, String, String, [i64; 4])> {
        Ok((
            r.get(0)?,
            r.get(1)?,
            r.get(2)?,
            [r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?],
        ))
    }

    fn device_record(row: (String, String, String, [i64; 4])) -> Result<DeviceRecord> {
        let (id, key, state, [refused, high_water, accepted, last_seen]) = row;
        Ok(DeviceRecord {
            identity_key: key_from_hex(&key)?,
            state: DeviceState::parse(&state)?,
            id,
            refused: refused as u64,
            high_water: high_water as u64,
            accepted: accepted as u64,
            last_seen_ms: last_seen as u64,
        })
    }

    const DEVICE_COLUMNS: &'static str =
        "id, identity_key, state, refused, high_water, accepted, last_seen_ms";

    pub fn device(&self, id: &str) -> Result<Option<DeviceRecord>> {
        self.conn
            .query_row(
                &format!("SELECT {} FROM devices WHERE id = ?1", Self::DEVICE_COLUMNS),
                [id],
                Self::device_row,
            )
            .optional()
            .map_err(sql)?
            .map(Self::device_record)
            .transpose()
    }

    pub fn devices(&self) -> Result<Vec<DeviceRecord>> {
        let mut stmt = self
            .conn
            .prepare(&format!(
                "SELECT {} FROM devices ORDER BY id",
                Self::DEVICE_COLUMNS
            ))
            .map_err(sql)?;
        let rows = stmt
            .query_map([], Self::device_row)
            .map_err(sql)?
            .collect::<rusqlite::Result<Vec<_>>>()
            .map_err(sql)?;
        rows.into_iter().map(Self::device_record).collect()
    }

    fn set_state(&self, id: &str, state: DeviceState, reset_refused: bool) -> Result<()> {
        let changed = self
            .conn
            .execute(
                "UPDATE devices SET state = ?2,
                     refused = CASE WHEN ?3 THEN 0 ELSE refused END
                 WHERE id = ?1",
                params![id, state.name(), reset_refused],
            )
            .map_err(sql)?;
        if changed == 0 {
            return Err(BackendError::Registry(format!("no device {id}")));
        }
        Ok(())
    }

    /// Record a board's status (its metrics are kept).
    pub fn record_status(&self, h: &HealthRecord) -> Result<()> {
        self.conn
            .execute(
                "INSERT INTO health (device, online, version, bundle, epoch, started_ms, status_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                 ON CONFLICT(device) DO UPDATE SET online = ?2,
                     version = COALESCE(?3, version), bundle = COALESCE(?4, bundle),
                     epoch = COALESCE(?5, epoch), started_ms = COALESCE(?6, started_ms),
                     status_ms = ?7",
                params![
                    h.device,
                    h.online,
                    h.version,
                    h.bundle,
                    h.epoch.map(|e| e as i64),
                    h.started_ms.map(|e| e as i64),
                    h.status_ms as i64
                ],
            )
            .map_err(sql)?;
        Ok(())
    }

    /// Record a board's latest metrics (JSON); a board seen only by its metrics is online.
    pub fn record_metrics(&self, device: &str, metrics: &str, at_ms: u64) -> Result<()> {
        self.conn
            .execute(
                "INSERT INTO health (device, online, status_ms, metrics, metrics_ms)
                 VALUES (?1, 1, ?3, ?2, ?3)
                 ON CONFLICT(device) DO UPDATE SET metrics = ?2, metrics_ms = ?3",
                params![device, metrics, at_ms as i64],
            )
            .map_err(sql)?;
        Ok(())
    }

    /// Every board's health, by device id.
    pub fn health(&self) -> Result<Vec<HealthRecord>> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT device, online, version, bundle, epoch, started_ms, status_ms, metrics,
                        metrics_ms FROM health ORDER BY device",
            )
            .map_err(sql)?;
        let rows = stmt
            .query_map([], |r| {
                Ok(HealthRecord {
                    device: r.get(0)?,
                    online: r.get(1)?,
                    version: r.get(2)?,
                    bundle: r.get(3)?,
                    epoch: r.get::<_, Option<i64>>(4)?.map(|v| v as u64),
                    started_ms: r.get::<_, Option<i64>>(5)?.map(|v| v as u64),
                    status_ms: r.get::<_, i64>(6)? as u64,
                    metrics: r.get(7)?,
                    metrics_ms: r.get::<_, Option<i64>>(8)?.map(|v| v as u64),
                })
            })
            .map_err(sql)?
            .collect::<rusqlite::Result<Vec<_>>>()
            .map_err(sql)?;
        Ok(rows)
    }

    /// Put an enrolled device in a group (deployments can target groups).
    pub fn set_group(&self, device: &str, group: &str) -> Result<()> {
        let n = self
            .conn
            .execute(
                "UPDATE devices SET grp = ?2 WHERE id = ?1",
                params![device, group],
            )
            .map_err(sql)?;
        if n == 0 {
            return Err(BackendError::Registry(format!("no device {device}")));
        }
        Ok(())
    }

    /// The devices of a group (none revoked), by id.
    pub fn group(&self, group: &str) -> Result<Vec<String>> {
        let mut stmt = self
            .conn
            .prepare("SELECT id FROM devices WHERE grp = ?1 AND state != 'revoked' ORDER BY id")
            .map_err(sql)?;
        let rows = stmt
            .query_map([group], |r| r.get(0))
            .map_err(sql)?
            .collect::<rusqlite::Result<Vec<String>>>()
            .map_err(sql)?;
        Ok(rows)
    }

    /// The key set a recorded bundle was made under.
    pub fn bundle_key_id(&self, bundle: &str) -> Result<Option<String>> {
        self.conn
            .query_row("SELECT key_id FROM bundles WHERE id = ?1", [bundle], |r| {
                r.get(0)
            })
            .optional()
            .map_err(sql)
    }

    /// A new deployment of `bundle`; its files are named once its id is known.
    pub fn add_deployment(&self, bundle: &str, epoch: u64, chunk_size: u32) -> Result<u64> {
        self.conn
            .execute(
                "INSERT INTO deployments (bundle, epoch, file, chunk_size, created_ms)
                 VALUES (?1, ?2, '', ?3, ?4)",
                params![bundle, epoch as i64, chunk_size, now_ms()],
            )
            .map_err(sql)?;
        Ok(self.conn.last_insert_rowid() as u64)
    }

    pub fn set_deployment_files(&self, id: u64, file: &Path, update: Option<&Path>) -> Result<()> {
        self.conn
            .execute(
                "UPDATE deployments SET file = ?2, update_file = ?3 WHERE id = ?1",
                params![
                    id as i64,
                    file.to_string_lossy(),
                    update.map(|u| u.to_string_lossy().into_owned())
                ],
            )
            .map_err(sql)?;
        Ok(())
    }

    pub fn add_target(
        &self,
        deployment: u64,
        device: &str,
        payload: &str,
        size: u64,
    ) -> Result<()> {
        self.conn
            .execute(
                "INSERT INTO deployment_targets (deployment, device, payload, size, state,
                 updated_ms) VALUES (?1, ?2, ?3, ?4, 'offered', ?5)",
                params![deployment as i64, device, payload, size as i64, now_ms()],
            )
            .map_err(sql)?;
        Ok(())
    }

    pub fn deployment(&self, id: u64) -> Result<Option<DeploymentRecord>> {
        self.conn
            .query_row(
                "SELECT id, bundle, epoch, file, update_file, chunk_size, created_ms, cancelled
                 FROM deployments WHERE id = ?1",
                [id as i64],
                |r| {
                    Ok(DeploymentRecord {
                        id: r.get::<_, i64>(0)? as u64,
                        bundle: r.get(1)?,
                        epoch: r.get::<_, i64>(2)? as u64,
                        file: PathBuf::from(r.get::<_, String>(3)?),
                        update_file: r.get::<_, Option<String>>(4)?.map(PathBuf::from),
                        chunk_size: r.get(5)?,
                        created_ms: r.get::<_, i64>(6)? as u64,
                        cancelled: r.get(7)?,
                    })
                },
            )
            .optional()
            .map_err(sql)
    }

    pub fn cancel_deployment(&self, id: u64) -> Result<()> {
        self.conn
            .execute(
                "UPDATE deployments SET cancelled = 1 WHERE id = ?1",
                [id as i64],
            )
            .map_err(sql)?;
        Ok(())
    }

    /// Targets of one deployment, or of all (newest deployment first).
    pub fn targets(&self, deployment: Option<u64>) -> Result<Vec<TargetRecord>> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT deployment, device, payload, size, state, received, reason, running,
                        updated_ms FROM deployment_targets
                 WHERE ?1 IS NULL OR deployment = ?1 ORDER BY deployment DESC, device",
            )
            .map_err(sql)?;
        let rows = stmt
            .query_map([deployment.map(|d| d as i64)], |r| {
                Ok(TargetRecord {
                    deployment: r.get::<_, i64>(0)? as u64,
                    device: r.get(1)?,
                    payload: r.get(2)?,
                    size: r.get::<_, i64>(3)? as u64,
                    state: r.get(4)?,
                    received: r.get::<_, i64>(5)? as u64,
                    reason: r.get(6)?,
                    running: r.get(7)?,
                    updated_ms: r.get::<_, i64>(8)? as u64,
                })
            })
            .map_err(sql)?
            .collect::<rusqlite::Result<Vec<_>>>()
            .map_err(sql)?;
        Ok(rows)
    }

    /// What a board reported; false if it is no target of that deployment.
    pub fn record_target_state(
        &self,
        deployment: u64,
        device: &str,
        state: &str,
        received: u64,
        reason: Option<&str>,
        running: &str,
    ) -> Result<bool> {
        let n = self
            .conn
            .execute(
                "UPDATE deployment_targets SET state = ?3, received = ?4, reason = ?5,
                 running = ?6, updated_ms = ?7 WHERE deployment = ?1 AND device = ?2",
                params![
                    deployment as i64,
                    device,
                    state,
                    received as i64,
                    reason,
                    running,
                    now_ms()
                ],
            )
            .map_err(sql)?;
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
        self.conn
            .execute(
                "UPDATE devices SET refused = refused + 1,
                     state = CASE WHEN state = 'active' AND refused + 1 >= ?2
                                  THEN 'quarantined' ELSE state END
                 WHERE id = ?1",
                params![id, limit as i64],
            )
            .map_err(sql)?;
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
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(sql)?;
        let high_water: i64 = tx
            .query_row(
                "SELECT high_water FROM devices WHERE id = ?1",
                [device],
                |r| r.get(0),
            )
            .optional()
            .map_err(sql)?
            .ok_or_else(|| BackendError::Registry(format!("no device {device}")))?;
        let high_water = high_water as u64;
        if seq.saturating_add(REPLAY_WINDOW) <= high_water {
            return Ok(Acceptance::TooOld);
        }
        let inserted = tx
            .execute(
                "INSERT OR IGNORE INTO accepted (device, seq) VALUES (?1, ?2)",
                params![device, seq as i64],
            )
            .map_err(sql)?;
        if inserted == 0 {
            return Ok(Acceptance::Seen);
        }
        let new_high = high_water.max(seq);
        tx.execute(
            "UPDATE devices SET high_water = ?2, accepted = accepted + 1, last_seen_ms = ?3
             WHERE id = ?1",
            params![device, new_high as i64, now_ms()],
        )
        .map_err(sql)?;
        if new_high > high_water {
            tx.execute(
                "DELETE FROM accepted WHERE device = ?1 AND seq + ?2 <= ?3",
                params![device, REPLAY_WINDOW as i64, new_high as i64],
            )
            .map_err(sql)?;
        }
        record()?;
        tx.commit().map_err(sql)?;
        Ok(Acceptance::New)
    }
}

fn now_ms() -> i64 {
    crate::transport::message::now_ms() as i64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::keys::KeyKind;
    use crate::engine::PartShape;

    fn decoding() -> Decoding {
        Decoding {
            key_id: [7; 16],
            key: KeyKind::Wide,
            poly_size: 4096,
            delta_out: 1 << 40,
            out_scale: 0.25,
            parts: vec![PartShape::Lwe; 10],
            exact: true,
            score_limits: vec![1000.0; 10],
            own_masks: vec![1, 2, 3],
            labels: Some((0..10).map(|i| format!("class {i}")).collect()),
        }
    }

    #[test]
    fn records_survive_reopening_and_migrations_are_versioned() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("registry.sqlite");
        {
            let r = Registry::open(&path).unwrap();
            r.add_key_set(&KeySetRecord {
                id: [7; 16],
                security: 128,
                secret_key: "/keys/secret.key".into(),
            })
            .unwrap();
            r.add_bundle(&BundleRecord {
                id: "00112233aabbccdd".into(),
                name: "model".into(),
                variant: Variant::Noact,
                input_dim: 48,
                hidden_dim: 16,
                out_dim: 10,
                epoch: 3,
                decoding: decoding(),
            })
            .unwrap();
            r.add_device("board-1", &[9; 32]).unwrap();
        }
        let r = Registry::open(&path).unwrap();
        let version: usize = r
            .conn
            .query_row("PRAGMA user_version", [], |row| row.get(0))
            .unwrap();
        assert_eq!(version, MIGRATIONS.len());
        assert_eq!(r.key_set(&[7; 16]).unwrap().unwrap().security, 128);
        let b = r.bundle("00112233aabbccdd").unwrap().unwrap();
        assert_eq!(
            (b.variant, b.epoch, b.decoding),
            (Variant::Noact, 3, decoding())
        );
        assert_eq!(r.latest_epoch().unwrap(), 3);
        assert!(r.bundle("ffffffffffffffff").unwrap().is_none());
        assert_eq!(r.devices().unwrap()[0].identity_key, [9; 32]);
        r.add_device("board-1", &[9; 32]).unwrap();
        assert!(r.add_device("board-1", &[8; 32]).is_err(), "another key");
        // A newer schema than this build knows is refused, not misread.
        r.conn
            .pragma_update(None, "user_version", MIGRATIONS.len() + 1)
            .unwrap();
        drop(r);
        assert!(Registry::open(&path).is_err());
    }

    #[test]
    fn each_result_is_accepted_once_within_the_window() {
        let dir = tempfile::tempdir().unwrap();
        let mut r = Registry::open(&dir.path().join("r.sqlite")).unwrap();
        r.add_device("d", &[1; 32]).unwrap();
        let ok = || Ok(());
        assert_eq!(r.accept("d", 5, ok).unwrap(), Acceptance::New);
        assert_eq!(r.accept("d", 5, ok).unwrap(), Acceptance::Seen);
        // Late but within the window: accepted once.
        assert_eq!(r.accept("d", 2, ok).unwrap(), Acceptance::New);
        assert_eq!(r.accept("d", 2, ok).unwrap(), Acceptance::Seen);
        let far = 5 + REPLAY_WINDOW + 10;
        assert_eq!(r.accept("d", far, ok).unwrap(), Acceptance::New);
        assert_eq!(r.accept("d", 5, ok).unwrap(), Acceptance::TooOld);
        assert_eq!(r.accept("d", far - 1, ok).unwrap(), Acceptance::New);
        // The window keeps the table bounded.
        let kept: i64 = r
            .conn
            .query_row("SELECT COUNT(*) FROM accepted", [], |row| row.get(0))
            .unwrap();
        assert_eq!(kept, 2);
        // A record that fails leaves the result unaccepted (it is taken again).
        let failing = || Err(BackendError::Data("disk full".into()));
        assert!(r.accept("d", far + 1, failing).is_err());
        assert_eq!(r.accept("d", far + 1, ok).unwrap(), Acceptance::New);
        let d = r.device("d").unwrap().unwrap();
        assert_eq!((d.high_water, d.accepted), (far + 1, 5));
        assert!(r.accept("nobody", 1, ok).is_err());
    }

    #[test]
    fn refusals_quarantine_until_cleared() {
        let dir = tempfile::tempdir().unwrap();
        let r = Registry::open(&dir.path().join("r.sqlite")).unwrap();
        r.add_device("d", &[1; 32]).unwrap();
        assert_eq!(r.refused("d", 3).unwrap(), DeviceState::Active);
        assert_eq!(r.refused("d", 3).unwrap(), DeviceState::Active);
        assert_eq!(r.refused("d", 3).unwrap(), DeviceState::Quarantined);
        r.clear("d").unwrap();
        let d = r.device("d").unwrap().unwrap();
        assert_eq!((d.state, d.refused), (DeviceState::Active, 0));
        r.revoke("d").unwrap();
        assert_eq!(r.refused("d", 1).unwrap(), DeviceState::Revoked);
        assert!(r.clear("nobody").is_err());
    }

    #[test]
    fn two_agents_never_both_accept_a_result() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.sqlite");
        Registry::open(&path)
            .unwrap()
            .add_device("d", &[1; 32])
            .unwrap();
        let counts: Vec<usize> = std::thread::scope(|s| {
            let agents: Vec<_> = (0..2)
                .map(|_| {
                    let path = path.clone();
                    s.spawn(move || {
                        let mut r = Registry::open(&path).unwrap();
                        (1..=300)
                            .filter(|&seq| {
                                r.accept("d", seq, || Ok(())).unwrap() == Acceptance::New
                            })
                            .count()
                    })
                })
                .collect();
            agents.into_iter().map(|a| a.join().unwrap()).collect()
        });
        assert_eq!(counts.iter().sum::<usize>(), 300, "{counts:?}");
    }
}
