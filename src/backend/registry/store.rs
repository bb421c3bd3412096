//! The registry's storage, behind one interface: SQL written once (`$1` placeholders, the
//! subset SQLite and PostgreSQL share), run by an embedded SQLite file (the default) or a
//! PostgreSQL server (several backend hosts sharing one registry).

use super::super::{BackendError, Result};

/// A value in or out of a statement: the registry stores integers, text and (deployment
/// payloads) bytes.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Null,
    Int(i64),
    Text(String),
    Bytes(Vec<u8>),
}

impl From<i64> for Value {
    fn from(v: i64) -> Self {
        Value::Int(v)
    }
}

impl From<u64> for Value {
    fn from(v: u64) -> Self {
        Value::Int(v as i64)
    }
}

impl From<u32> for Value {
    fn from(v: u32) -> Self {
        Value::Int(v.into())
    }
}

impl From<usize> for Value {
    fn from(v: usize) -> Self {
        Value::Int(v as i64)
    }
}

impl From<bool> for Value {
    fn from(v: bool) -> Self {
        Value::Int(v.into())
    }
}

impl From<&str> for Value {
    fn from(v: &str) -> Self {
        Value::Text(v.to_string())
    }
}

impl From<String> for Value {
    fn from(v: String) -> Self {
        Value::Text(v)
    }
}

impl From<&String> for Value {
    fn from(v: &String) -> Self {
        Value::Text(v.clone())
    }
}

impl From<&[u8]> for Value {
    fn from(v: &[u8]) -> Self {
        Value::Bytes(v.to_vec())
    }
}

impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(v: Option<T>) -> Self {
        v.map_or(Value::Null, Into::into)
    }
}

/// Parameters: `params![a, b]` → `[Value::from(a), Value::from(b)]`.
macro_rules! params {
    ($($v:expr),* $(,)?) => { &[$($crate::backend::registry::store::Value::from($v)),*] };
}
pub(crate) use params;

/// One result row.
#[derive(Debug)]
pub struct Row(pub Vec<Value>);

fn column_error(i: usize, want: &str, got: &Value) -> BackendError {
    BackendError::Registry(format!("column {i}: expected {want}, found {got:?}"))
}

impl Row {
    pub(crate) fn opt_int(&self, i: usize) -> Result<Option<i64>> {
        match self.0.get(i) {
            Some(Value::Int(v)) => Ok(Some(*v)),
            Some(Value::Null) => Ok(None),
            other => Err(column_error(i, "an integer", other.unwrap_or(&Value::Null))),
        }
    }

    pub(crate) fn int(&self, i: usize) -> Result<i64> {
        self.opt_int(i)?
            .ok_or_else(|| column_error(i, "an integer", &Value::Null))
    }

    pub(crate) fn uint(&self, i: usize) -> Result<u64> {
        Ok(self.int(i)? as u64)
    }

    pub(crate) fn opt_text(&self, i: usize) -> Result<Option<String>> {
        match self.0.get(i) {
            Some(Value::Text(v)) => Ok(Some(v.clone())),
            Some(Value::Null) => Ok(None),
            other => Err(column_error(i, "text", other.unwrap_or(&Value::Null))),
        }
    }

    pub fn text(&self, i: usize) -> Result<String> {
        self.opt_text(i)?
            .ok_or_else(|| column_error(i, "text", &Value::Null))
    }

    pub(crate) fn bytes(&self, i: usize) -> Result<&[u8]> {
        match self.0.get(i) {
            Some(Value::Bytes(v)) => Ok(v),
            other => Err(column_error(i, "bytes", other.unwrap_or(&Value::Null))),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

/// What the registry needs of a database. One connection; statements run in the order
/// given; `begin_exclusive` … `commit` make a transaction that no other writer interleaves
/// with (SQLite: `BEGIN IMMEDIATE`; PostgreSQL: rows read with `FOR UPDATE` are locked).
pub trait Store: Send {
    fn dialect(&self) -> Dialect;
    /// Rows changed.
    fn execute(&self, sql: &str, params: &[Value]) -> Result<u64>;
    fn query(&self, sql: &str, params: &[Value]) -> Result<Vec<Row>>;
    /// Statements without parameters (schema, transaction control).
    fn batch(&self, sql: &str) -> Result<()>;
    /// The schema version, and setting it (inside the migration's transaction).
    fn schema_version(&self) -> Result<usize>;
    fn set_schema_version(&self, version: usize) -> Result<()>;
    /// Start the migration's transaction (serialised between processes).
    fn begin_migration(&self) -> Result<()>;
    fn begin_exclusive(&self) -> Result<()>;
}

/// An open transaction: rolled back when dropped uncommitted.
pub(crate) struct Tx<'a> {
    store: &'a dyn Store,
    open: bool,
}

impl<'a> Tx<'a> {
    pub(crate) fn exclusive(store: &'a dyn Store) -> Result<Self> {
        store.begin_exclusive()?;
        Ok(Self { store, open: true })
    }

    pub(crate) fn migration(store: &'a dyn Store) -> Result<Self> {
        store.begin_migration()?;
        Ok(Self { store, open: true })
    }

    pub(crate) fn commit(mut self) -> Result<()> {
        self.open = false;
        self.store.batch("COMMIT")
    }
}

impl Drop for Tx<'_> {
    fn drop(&mut self) {
        if self.open {
            let _ = self.store.batch("ROLLBACK");
        }
    }
}

/// The PostgreSQL form of the SQLite schema (one source for both).
pub(crate) fn postgres_schema(sqlite: &str) -> String {
    sqlite
        .replace("INTEGER PRIMARY KEY AUTOINCREMENT", "BIGSERIAL PRIMARY KEY")
        .replace("INTEGER", "BIGINT")
        .replace(" WITHOUT ROWID", "")
        .replace(" BLOB", " BYTEA")
}
