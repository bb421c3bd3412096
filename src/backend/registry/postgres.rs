//! The registry on a PostgreSQL server: the scale-out store, shared by decryption and
//! deployment agents on several hosts (`--registry postgres://user@host/db`).
//!
//! Acceptance of a result locks its device's row (`SELECT … FOR UPDATE`) for the
//! transaction, and `accepted`'s primary key makes a second insert of one (device, sequence)
//! a no-op: two agents can never both accept it.

use super::super::{BackendError, Result};
use super::store::{Dialect, Row, Store, Value};
use crate::files::IoError;
use postgres::types::{ToSql, Type};
use postgres::{Client, NoTls, Statement};
use std::collections::HashMap;
use std::sync::{mpsc, Mutex};

/// The client lives on a thread of its own: `postgres::Client` drives its own runtime and
/// must not be called from inside another (the agents run on tokio), so every call is handed
/// over and waited for.
pub struct Postgres {
    jobs: Mutex<mpsc::Sender<Job>>,
}

type Job = Box<dyn FnOnce(&mut Session) + Send>;

/// The connection and its prepared statements: the registry runs a few dozen statements
/// over and over, and preparing each anew costs a round trip and a parse on the server.
struct Session {
    client: Client,
    statements: HashMap<String, Statement>,
}

fn sql(e: postgres::Error) -> BackendError {
    BackendError::Registry(format!("postgres: {e}"))
}

/// Typed as the server expects the parameter (integers are BIGINT in the schema).
fn param(v: &Value, ty: &Type) -> Result<Box<dyn ToSql + Sync>> {
    Ok(match (v, ty) {
        (Value::Int(i), t) if *t == Type::INT8 => Box::new(*i),
        (Value::Int(i), t) if *t == Type::INT4 => Box::new(*i as i32),
        (Value::Int(i), t) if *t == Type::BOOL => Box::new(*i != 0),
        (Value::Text(s), t) if *t == Type::TEXT || *t == Type::VARCHAR => Box::new(s.clone()),
        (Value::Bytes(b), t) if *t == Type::BYTEA => Box::new(b.clone()),
        (Value::Null, t) if *t == Type::INT8 => Box::new(None::<i64>),
        (Value::Null, t) if *t == Type::INT4 => Box::new(None::<i32>),
        (Value::Null, t) if *t == Type::BOOL => Box::new(None::<bool>),
        (Value::Null, _) => Box::new(None::<String>),
        (v, t) => {
            return Err(BackendError::Registry(format!(
                "postgres: a {v:?} for a parameter of type {t}"
            )))
        }
    })
}

fn column(row: &postgres::Row, i: usize) -> Result<Value> {
    let ty = row.columns()[i].type_().clone();
    let v = if ty == Type::INT8 {
        row.try_get::<_, Option<i64>>(i).map(|v| v.map(Value::Int))
    } else if ty == Type::INT4 {
        row.try_get::<_, Option<i32>>(i)
            .map(|v| v.map(|v| Value::Int(v.into())))
    } else if ty == Type::BOOL {
        row.try_get::<_, Option<bool>>(i)
            .map(|v| v.map(|v| Value::Int(v.into())))
    } else if ty == Type::BYTEA {
        row.try_get::<_, Option<Vec<u8>>>(i)
            .map(|v| v.map(Value::Bytes))
    } else {
        row.try_get::<_, Option<String>>(i)
            .map(|v| v.map(Value::Text))
    };
    Ok(v.map_err(sql)?.unwrap_or(Value::Null))
}

/// Prepare `query`, type its parameters, and run `f` on them.
fn prepared<T>(
    session: &mut Session,
    query: &str,
    params: &[Value],
    f: impl FnOnce(&mut Client, &Statement, &[&(dyn ToSql + Sync)]) -> Result<T>,
) -> Result<T> {
    let stmt = match session.statements.get(query) {
        Some(stmt) => stmt.clone(),
        None => {
            let stmt = session.client.prepare(query).map_err(sql)?;
            session.statements.insert(query.to_string(), stmt.clone());
            stmt
        }
    };
    if stmt.params().len() != params.len() {
        return Err(BackendError::Registry(format!(
            "postgres: {} parameter(s) given, the statement takes {}",
            params.len(),
            stmt.params().len()
        )));
    }
    let boxed = params
        .iter()
        .zip(stmt.params())
        .map(|(v, t)| param(v, t))
        .collect::<Result<Vec<_>>>()?;
    let refs: Vec<&(dyn ToSql + Sync)> = boxed.iter().map(|b| b.as_ref()).collect();
    f(&mut session.client, &stmt, &refs)
}

impl Postgres {
    pub fn connect(url: &str) -> Result<Self> {
        let (jobs, rx) = mpsc::channel::<Job>();
        let (ready_tx, ready) = mpsc::channel();
        let url = url.to_string();
        std::thread::Builder::new()
            .name("postgres".into())
            .spawn(move || {
                match Client::connect(&url, NoTls).and_then(|mut c| {
                    // NOTICEs ("already exists, skipping") are not worth a log line.
                    c.batch_execute("SET client_min_messages = warning")
                        .map(|_| c)
                }) {
                    Ok(client) => {
                        let _ = ready_tx.send(Ok(()));
                        let mut session = Session {
                            client,
                            statements: HashMap::new(),
                        };
                        for job in rx {
                            job(&mut session);
                        }
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(sql(e)));
                    }
                }
            })
            .map_err(|e| IoError::new("postgres thread", e))?;
        ready
            .recv()
            .map_err(|_| BackendError::Registry("postgres: the client thread ended".into()))??;
        Ok(Self {
            jobs: Mutex::new(jobs),
        })
    }

    /// Run `f` on the client's thread and wait for it.
    fn with<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Session) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let (tx, rx) = mpsc::channel();
        let job: Job = Box::new(move |client| {
            let _ = tx.send(f(client));
        });
        self.jobs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .send(job)
            .map_err(|_| BackendError::Registry("postgres: the client thread ended".into()))?;
        rx.recv()
            .map_err(|_| BackendError::Registry("postgres: the client thread ended".into()))?
    }
}

impl Store for Postgres {
    fn dialect(&self) -> Dialect {
        Dialect::Postgres
    }

    fn execute(&self, query: &str, params: &[Value]) -> Result<u64> {
        let (query, params) = (query.to_string(), params.to_vec());
        self.with(move |c| {
            prepared(c, &query, &params, |c, stmt, p| {
                c.execute(stmt, p).map_err(sql)
            })
        })
    }

    fn query(&self, query: &str, params: &[Value]) -> Result<Vec<Row>> {
        let (query, params) = (query.to_string(), params.to_vec());
        self.with(move |c| {
            prepared(c, &query, &params, |c, stmt, p| {
                c.query(stmt, p)
                    .map_err(sql)?
                    .iter()
                    .map(|r| {
                        (0..r.len())
                            .map(|i| column(r, i))
                            .collect::<Result<_>>()
                            .map(Row)
                    })
                    .collect()
            })
        })
    }

    fn batch(&self, query: &str) -> Result<()> {
        let query = query.to_string();
        self.with(move |s| s.client.batch_execute(&query).map_err(sql))
    }

    fn schema_version(&self) -> Result<usize> {
        let rows = self.query("SELECT COALESCE(MAX(version), 0) FROM schema_version", &[])?;
        Ok(rows[0].int(0)? as usize)
    }

    fn set_schema_version(&self, version: usize) -> Result<()> {
        self.batch(&format!(
            "DELETE FROM schema_version; INSERT INTO schema_version (version) VALUES ({version})"
        ))
    }

    /// Agents starting together migrate one after the other (an advisory lock).
    fn begin_migration(&self) -> Result<()> {
        self.batch(
            "BEGIN; SELECT pg_advisory_xact_lock(7355608);
             CREATE TABLE IF NOT EXISTS schema_version (version BIGINT NOT NULL);",
        )
    }

    fn begin_exclusive(&self) -> Result<()> {
        self.batch("BEGIN")
    }
}
