//! The durable store: the call event log in SQLite (default) or PostgreSQL, through sqlx.
//! Both schemas live in `migrations/sqlite` and `migrations/postgres` and are applied at connect.
//! A batch of events is one transaction: it is committed whole or not at all.

use std::str::FromStr;
use std::time::Duration;

use serde::Serialize;
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{Postgres, QueryBuilder, Row, Sqlite};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("unsupported database URL {0:?} (use sqlite://PATH or postgres://...)")]
    UnsupportedUrl(String),
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("cannot create data directory {path}: {source}")]
    DataDir {
        path: String,
        source: std::io::Error,
    },
}

/// One event row as stored (wall-clock time already stamped).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct StoredEvent {
    pub occurred_at_ms: i64,
    pub call_ref: String,
    pub sip_call_id: String,
    pub kind: String,
    pub status_code: Option<i32>,
    pub reason: Option<String>,
    pub duration_ms: Option<i64>,
    pub caller: Option<String>,
    pub detail: Option<String>,
}

/// A stored event with its position in the log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EventRow {
    pub seq: i64,
    #[serde(flatten)]
    pub event: StoredEvent,
}

#[derive(Clone, Debug)]
pub enum Store {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// SQLite's limit on bound parameters is 32766 in current versions; 50 rows x 9 stays far below.
const ROWS_PER_STATEMENT: usize = 50;

const INSERT_PREFIX: &str = "INSERT INTO call_events (occurred_at_ms, call_ref, sip_call_id, kind, status_code, reason, duration_ms, caller, detail) ";
const SELECT_COLUMNS: &str = "SELECT seq, occurred_at_ms, call_ref, sip_call_id, kind, status_code, reason, duration_ms, caller, detail FROM call_events";

impl Store {
    /// Connects and applies migrations. `sqlite://path` creates the file (and its directory).
    pub async fn connect(url: &str) -> Result<Store, StoreError> {
        if url.starts_with("sqlite:") {
            let options = SqliteConnectOptions::from_str(url)?
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                // FULL: a committed event survives a power cut, not only a crash.
                .synchronous(SqliteSynchronous::Full)
                .busy_timeout(Duration::from_secs(5));
            if let Some(parent) = options.get_filename().parent() {
                if !parent.as_os_str().is_empty() {
                    std::fs::create_dir_all(parent).map_err(|source| StoreError::DataDir {
                        path: parent.display().to_string(),
                        source,
                    })?;
                }
            }
            let pool = SqlitePoolOptions::new()
                .max_connections(4)
                .connect_with(options)
                .await?;
            sqlx::migrate!("migrations/sqlite").run(&pool).await?;
            Ok(Store::Sqlite(pool))
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            let pool = PgPoolOptions::new()
                .max_connections(4)
                .acquire_timeout(Duration::from_secs(5))
                .connect(url)
                .await?;
            sqlx::migrate!("migrations/postgres").run(&pool).await?;
            Ok(Store::Postgres(pool))
        } else {
            Err(StoreError::UnsupportedUrl(url.to_string()))
        }
    }

    pub fn backend(&self) -> &'static str {
        match self {
            Store::Sqlite(_) => "sqlite",
            Store::Postgres(_) => "postgres",
        }
    }

    /// Appends a batch in one transaction.
    pub async fn append(&self, batch: &[StoredEvent]) -> Result<(), StoreError> {
        if batch.is_empty() {
            return Ok(());
        }
        // One body for both backends: only the pool and the placeholder syntax differ.
        macro_rules! append_in_transaction {
            ($pool:expr, $db:ty) => {{
                let mut tx = $pool.begin().await?;
                for chunk in batch.chunks(ROWS_PER_STATEMENT) {
                    let mut query = QueryBuilder::<$db>::new(INSERT_PREFIX);
                    query.push_values(chunk, |mut row, e| {
                        row.push_bind(e.occurred_at_ms)
                            .push_bind(&e.call_ref)
                            .push_bind(&e.sip_call_id)
                            .push_bind(&e.kind)
                            .push_bind(e.status_code)
                            .push_bind(&e.reason)
                            .push_bind(e.duration_ms)
                            .push_bind(&e.caller)
                            .push_bind(&e.detail);
                    });
                    query.build().execute(&mut *tx).await?;
                }
                tx.commit().await?;
            }};
        }
        match self {
            Store::Sqlite(pool) => append_in_transaction!(pool, Sqlite),
            Store::Postgres(pool) => append_in_transaction!(pool, Postgres),
        }
        Ok(())
    }

    /// Events in log order, optionally only one call's, at most `limit` of the newest.
    pub async fn events(
        &self,
        call_ref: Option<&str>,
        limit: i64,
    ) -> Result<Vec<EventRow>, StoreError> {
        macro_rules! fetch {
            ($pool:expr, $db:ty) => {{
                let mut query = QueryBuilder::<$db>::new(SELECT_COLUMNS);
                if let Some(call_ref) = call_ref {
                    query
                        .push(" WHERE call_ref = ")
                        .push_bind(call_ref.to_string());
                }
                query.push(" ORDER BY seq DESC LIMIT ").push_bind(limit);
                let rows = query.build().fetch_all($pool).await?;
                let mut events = rows
                    .into_iter()
                    .map(|r| -> Result<EventRow, sqlx::Error> {
                        Ok(EventRow {
                            seq: r.try_get("seq")?,
                            event: StoredEvent {
                                occurred_at_ms: r.try_get("occurred_at_ms")?,
                                call_ref: r.try_get("call_ref")?,
                                sip_call_id: r.try_get("sip_call_id")?,
                                kind: r.try_get("kind")?,
                                status_code: r.try_get("status_code")?,
                                reason: r.try_get("reason")?,
                                duration_ms: r.try_get("duration_ms")?,
                                caller: r.try_get("caller")?,
                                detail: r.try_get("detail")?,
                            },
                        })
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                events.reverse();
                Ok(events)
            }};
        }
        match self {
            Store::Sqlite(pool) => fetch!(pool, Sqlite),
            Store::Postgres(pool) => fetch!(pool, Postgres),
        }
    }

    /// Number of events per kind, for summaries and tests.
    pub async fn count_by_kind(&self) -> Result<Vec<(String, i64)>, StoreError> {
        let sql = "SELECT kind, COUNT(*) AS n FROM call_events GROUP BY kind ORDER BY kind";
        let rows = match self {
            Store::Sqlite(pool) => sqlx::query(sql)
                .fetch_all(pool)
                .await?
                .into_iter()
                .map(|r| Ok((r.try_get("kind")?, r.try_get("n")?)))
                .collect::<Result<Vec<_>, sqlx::Error>>()?,
            Store::Postgres(pool) => sqlx::query(sql)
                .fetch_all(pool)
                .await?
                .into_iter()
                .map(|r| Ok((r.try_get("kind")?, r.try_get("n")?)))
                .collect::<Result<Vec<_>, sqlx::Error>>()?,
        };
        Ok(rows)
    }

    pub async fn close(&self) {
        match self {
            Store::Sqlite(pool) => pool.close().await,
            Store::Postgres(pool) => pool.close().await,
        }
    }
}
