//! The registry in an embedded SQLite file (rusqlite): the default, one host.

use super::super::{BackendError, Result};
use super::store::{Dialect, Row, Store, Value};
use rusqlite::types::ValueRef;
use rusqlite::Connection;
use std::path::Path;

pub(crate) struct Sqlite {
    conn: Connection,
}

fn sql(e: rusqlite::Error) -> BackendError {
    BackendError::Registry(e.to_string())
}

/// `$1` → `?1` (SQLite's numbered parameters; the registry's SQL has no `$` elsewhere).
fn numbered(sql: &str) -> String {
    sql.replace('$', "?")
}

fn to_sqlite(v: &Value) -> rusqlite::types::Value {
    match v {
        Value::Null => rusqlite::types::Value::Null,
        Value::Int(i) => rusqlite::types::Value::Integer(*i),
        Value::Text(t) => rusqlite::types::Value::Text(t.clone()),
        Value::Bytes(b) => rusqlite::types::Value::Blob(b.clone()),
    }
}

impl Sqlite {
    pub fn open(path: &Path) -> Result<Self> {
        let conn = Connection::open(path)
            .map_err(|e| BackendError::Registry(format!("{}: {e}", path.display())))?;
        conn.busy_timeout(std::time::Duration::from_secs(10))
            .map_err(sql)?;
        // WAL: readers do not block the writer. FULL: each commit is synced before it returns,
        // so what the agent acknowledges survives a power loss too (with NORMAL the last
        // commits could vanish while the output file, synced before them, kept their lines —
        // and the output repair at start-up would then cut acknowledged lines). Agents commit
        // a batch at a time, so this is one sync per batch.
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(sql)?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(sql)?;
        conn.pragma_update(None, "foreign_keys", "ON")
            .map_err(sql)?;
        Ok(Self { conn })
    }
}

impl Store for Sqlite {
    fn dialect(&self) -> Dialect {
        Dialect::Sqlite
    }

    fn execute(&self, query: &str, params: &[Value]) -> Result<u64> {
        let params: Vec<rusqlite::types::Value> = params.iter().map(to_sqlite).collect();
        self.conn
            .execute(&numbered(query), rusqlite::params_from_iter(params))
            .map(|n| n as u64)
            .map_err(sql)
    }

    fn query(&self, query: &str, params: &[Value]) -> Result<Vec<Row>> {
        let params: Vec<rusqlite::types::Value> = params.iter().map(to_sqlite).collect();
        let mut stmt = self.conn.prepare(&numbered(query)).map_err(sql)?;
        let columns = stmt.column_count();
        let rows = stmt
            .query_map(rusqlite::params_from_iter(params), |r| {
                (0..columns)
                    .map(|i| {
                        Ok(match r.get_ref(i)? {
                            ValueRef::Null => Value::Null,
                            ValueRef::Integer(v) => Value::Int(v),
                            ValueRef::Text(t) => Value::Text(String::from_utf8_lossy(t).into()),
                            ValueRef::Real(f) => Value::Int(f as i64),
                            ValueRef::Blob(b) => Value::Bytes(b.to_vec()),
                        })
                    })
                    .collect::<rusqlite::Result<Vec<Value>>>()
                    .map(Row)
            })
            .map_err(sql)?
            .collect::<rusqlite::Result<Vec<Row>>>()
            .map_err(sql)?;
        Ok(rows)
    }

    fn batch(&self, query: &str) -> Result<()> {
        self.conn.execute_batch(query).map_err(sql)
    }

    fn schema_version(&self) -> Result<usize> {
        self.conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(sql)
    }

    fn set_schema_version(&self, version: usize) -> Result<()> {
        self.conn
            .pragma_update(None, "user_version", version)
            .map_err(sql)
    }

    fn begin_migration(&self) -> Result<()> {
        self.begin_exclusive()
    }

    fn begin_exclusive(&self) -> Result<()> {
        self.batch("BEGIN IMMEDIATE")
    }
}
