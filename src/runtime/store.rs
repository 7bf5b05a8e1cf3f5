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

/// A case as stored. `case_number` is digits only, so a caller can key it in.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CaseRecord {
    pub case_number: String,
    pub status: String,
    pub category: Option<String>,
    pub department: Option<String>,
    pub address: Option<String>,
    pub description: Option<String>,
    pub audio_path: Option<String>,
    pub call_ref: Option<String>,
    pub transcript: Option<String>,
    pub confidence: Option<f64>,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

/// A case draft as stored in `transcripts` (one per recording).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DraftRow {
    pub audio_path: String,
    pub call_ref: String,
    pub transcript: String,
    pub category: Option<String>,
    pub department: Option<String>,
    pub address: Option<String>,
    pub description: String,
    pub confidence: f64,
    pub outcome: String,
}

/// A callback as stored (`migrations/*/0010_callbacks.sql`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StoredCallback {
    pub call_ref: String,
    pub number: String,
    pub language: String,
    pub queue: Option<String>,
    /// The caller's routing attributes as JSON.
    pub attrs: String,
    pub priority: i32,
    pub state: String,
    pub attempts: i32,
    pub last_result: Option<String>,
    pub joined_at_ms: i64,
    pub updated_at_ms: i64,
}

/// Copies a recording's draft into its case(s); `$1` is the case number or the audio path.
const FILL_CASE_FROM_DRAFT: &str = "UPDATE cases SET \
    category = (SELECT t.category FROM transcripts t WHERE t.audio_path = cases.audio_path), \
    department = (SELECT t.department FROM transcripts t WHERE t.audio_path = cases.audio_path), \
    address = (SELECT t.address FROM transcripts t WHERE t.audio_path = cases.audio_path), \
    description = (SELECT t.description FROM transcripts t WHERE t.audio_path = cases.audio_path), \
    transcript = (SELECT t.transcript FROM transcripts t WHERE t.audio_path = cases.audio_path), \
    confidence = (SELECT t.confidence FROM transcripts t WHERE t.audio_path = cases.audio_path), \
    updated_at_ms = $2 \
    WHERE EXISTS (SELECT 1 FROM transcripts t WHERE t.audio_path = cases.audio_path)";

/// Case numbers start here so they are always seven digits for the first nine million cases.
const FIRST_CASE_NUMBER: i64 = 1_000_000;

const CASE_COLUMNS: &str = "SELECT case_number, status, category, department, address, description, audio_path, call_ref, transcript, confidence, created_at_ms, updated_at_ms FROM cases";

/// A `StoredEvent` from a row of `SELECT_COLUMNS` (a macro: the row types of the two backends
/// share no trait that names these columns' types without a wall of bounds).
macro_rules! stored_event {
    ($r:expr) => {
        StoredEvent {
            occurred_at_ms: $r.try_get("occurred_at_ms")?,
            call_ref: $r.try_get("call_ref")?,
            sip_call_id: $r.try_get("sip_call_id")?,
            kind: $r.try_get("kind")?,
            status_code: $r.try_get("status_code")?,
            reason: $r.try_get("reason")?,
            duration_ms: $r.try_get("duration_ms")?,
            caller: $r.try_get("caller")?,
            detail: $r.try_get("detail")?,
        }
    };
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

    /// Every event of one kind recorded in `[from_ms, to_ms)`, in log order (for reports).
    pub async fn events_of_kind(
        &self,
        kind: &str,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let sql = format!(
            "{SELECT_COLUMNS} WHERE kind = $1 AND occurred_at_ms >= $2 AND occurred_at_ms < $3 ORDER BY seq"
        );
        macro_rules! fetch {
            ($pool:expr) => {{
                sqlx::query(&sql)
                    .bind(kind)
                    .bind(from_ms)
                    .bind(to_ms)
                    .fetch_all($pool)
                    .await?
                    .into_iter()
                    .map(|r| -> Result<StoredEvent, sqlx::Error> { Ok(stored_event!(r)) })
                    .collect::<Result<Vec<_>, _>>()?
            }};
        }
        Ok(match self {
            Store::Sqlite(pool) => fetch!(pool),
            Store::Postgres(pool) => fetch!(pool),
        })
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
                            event: stored_event!(r),
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

    /// Stores a new open case for a call's recording and gives it its number, in one transaction.
    pub async fn create_case(
        &self,
        call_ref: &str,
        audio_path: Option<&str>,
        now_ms: i64,
    ) -> Result<CaseRecord, StoreError> {
        // The number comes from the row id, so it is unique and never reused; a unique
        // placeholder holds the NOT NULL UNIQUE column until the id is known.
        let placeholder = format!("pending-{call_ref}-{now_ms}-{}", rand::random::<u64>());
        macro_rules! create {
            ($pool:expr, $db:ty) => {{
                let mut tx = $pool.begin().await?;
                let id: i64 = sqlx::query_scalar::<$db, i64>(
                    "INSERT INTO cases (case_number, status, audio_path, call_ref, created_at_ms, updated_at_ms) \
                     VALUES ($1, 'open', $2, $3, $4, $4) RETURNING id",
                )
                .bind(&placeholder)
                .bind(audio_path)
                .bind(call_ref)
                .bind(now_ms)
                .fetch_one(&mut *tx)
                .await?;
                let number = (FIRST_CASE_NUMBER + id).to_string();
                sqlx::query::<$db>("UPDATE cases SET case_number = $1 WHERE id = $2")
                    .bind(&number)
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                number
            }};
        }
        let number = match self {
            Store::Sqlite(pool) => create!(pool, Sqlite),
            Store::Postgres(pool) => create!(pool, Postgres),
        };
        // After the commit, not inside it: the draft writer commits its row and then fills
        // cases, so one of the two always sees the other (see migrations/*/0003).
        let sql = format!("{FILL_CASE_FROM_DRAFT} AND case_number = $1");
        match self {
            Store::Sqlite(pool) => {
                sqlx::query(&sql)
                    .bind(&number)
                    .bind(now_ms)
                    .execute(pool)
                    .await?;
            }
            Store::Postgres(pool) => {
                sqlx::query(&sql)
                    .bind(&number)
                    .bind(now_ms)
                    .execute(pool)
                    .await?;
            }
        }
        self.find_case(&number)
            .await?
            .ok_or_else(|| StoreError::Database(sqlx::Error::RowNotFound))
    }

    /// Stores a callback's state, replacing the row it had.
    pub async fn upsert_callback(&self, row: &StoredCallback) -> Result<(), StoreError> {
        let sql = "INSERT INTO callbacks (call_ref, number, language, queue, attrs, priority, state, attempts, last_result, joined_at_ms, updated_at_ms) \
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) \
            ON CONFLICT (call_ref) DO UPDATE SET number = excluded.number, language = excluded.language, \
            queue = excluded.queue, attrs = excluded.attrs, priority = excluded.priority, state = excluded.state, \
            attempts = excluded.attempts, last_result = excluded.last_result, \
            joined_at_ms = excluded.joined_at_ms, updated_at_ms = excluded.updated_at_ms";
        macro_rules! upsert {
            ($pool:expr) => {{
                sqlx::query(sql)
                    .bind(&row.call_ref)
                    .bind(&row.number)
                    .bind(&row.language)
                    .bind(&row.queue)
                    .bind(&row.attrs)
                    .bind(row.priority)
                    .bind(&row.state)
                    .bind(row.attempts)
                    .bind(&row.last_result)
                    .bind(row.joined_at_ms)
                    .bind(row.updated_at_ms)
                    .execute($pool)
                    .await?;
            }};
        }
        match self {
            Store::Sqlite(pool) => upsert!(pool),
            Store::Postgres(pool) => upsert!(pool),
        };
        Ok(())
    }

    /// Callbacks in `states` (e.g. waiting and dialing: the ones to put back in line at start).
    pub async fn callbacks_in(&self, states: &[&str]) -> Result<Vec<StoredCallback>, StoreError> {
        let sql = "SELECT call_ref, number, language, queue, attrs, priority, state, attempts, last_result, joined_at_ms, updated_at_ms FROM callbacks ORDER BY joined_at_ms";
        macro_rules! fetch {
            ($pool:expr) => {{
                let rows = sqlx::query(sql).fetch_all($pool).await?;
                let mut out = Vec::new();
                for r in rows {
                    let state: String = r.try_get("state")?;
                    if !states.contains(&state.as_str()) {
                        continue;
                    }
                    out.push(StoredCallback {
                        call_ref: r.try_get("call_ref")?,
                        number: r.try_get("number")?,
                        language: r.try_get("language")?,
                        queue: r.try_get("queue")?,
                        attrs: r.try_get("attrs")?,
                        priority: r.try_get("priority")?,
                        state,
                        attempts: r.try_get("attempts")?,
                        last_result: r.try_get("last_result")?,
                        joined_at_ms: r.try_get("joined_at_ms")?,
                        updated_at_ms: r.try_get("updated_at_ms")?,
                    });
                }
                out
            }};
        }
        Ok(match self {
            Store::Sqlite(pool) => fetch!(pool),
            Store::Postgres(pool) => fetch!(pool),
        })
    }

    /// Stores (or replaces) a recording's draft, then fills the case made from that recording
    /// if it exists already. Returns how many cases were filled.
    pub async fn save_draft(&self, row: &DraftRow, now_ms: i64) -> Result<u64, StoreError> {
        let upsert = "INSERT INTO transcripts (audio_path, call_ref, transcript, category, department, address, description, confidence, outcome, created_at_ms) \
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
            ON CONFLICT (audio_path) DO UPDATE SET transcript = excluded.transcript, category = excluded.category, \
            department = excluded.department, address = excluded.address, description = excluded.description, \
            confidence = excluded.confidence, outcome = excluded.outcome";
        let fill = format!("{FILL_CASE_FROM_DRAFT} AND audio_path = $1");
        macro_rules! save {
            ($pool:expr) => {{
                sqlx::query(upsert)
                    .bind(&row.audio_path)
                    .bind(&row.call_ref)
                    .bind(&row.transcript)
                    .bind(&row.category)
                    .bind(&row.department)
                    .bind(&row.address)
                    .bind(&row.description)
                    .bind(row.confidence)
                    .bind(&row.outcome)
                    .bind(now_ms)
                    .execute($pool)
                    .await?;
                sqlx::query(&fill)
                    .bind(&row.audio_path)
                    .bind(now_ms)
                    .execute($pool)
                    .await?
                    .rows_affected()
            }};
        }
        Ok(match self {
            Store::Sqlite(pool) => save!(pool),
            Store::Postgres(pool) => save!(pool),
        })
    }

    /// The case with this number, if any. The number is a bound parameter, never SQL text.
    pub async fn find_case(&self, number: &str) -> Result<Option<CaseRecord>, StoreError> {
        macro_rules! find {
            ($pool:expr, $db:ty) => {{
                let row = sqlx::query::<$db>(&format!("{CASE_COLUMNS} WHERE case_number = $1"))
                    .bind(number)
                    .fetch_optional($pool)
                    .await?;
                match row {
                    None => None,
                    Some(r) => Some(CaseRecord {
                        case_number: r.try_get("case_number")?,
                        status: r.try_get("status")?,
                        category: r.try_get("category")?,
                        department: r.try_get("department")?,
                        address: r.try_get("address")?,
                        description: r.try_get("description")?,
                        audio_path: r.try_get("audio_path")?,
                        call_ref: r.try_get("call_ref")?,
                        transcript: r.try_get("transcript")?,
                        confidence: r.try_get("confidence")?,
                        created_at_ms: r.try_get("created_at_ms")?,
                        updated_at_ms: r.try_get("updated_at_ms")?,
                    }),
                }
            }};
        }
        Ok(match self {
            Store::Sqlite(pool) => find!(pool, Sqlite),
            Store::Postgres(pool) => find!(pool, Postgres),
        })
    }

    /// Sets a case's status (open, closed) and its department; false when there is no such case.
    pub async fn update_case(
        &self,
        number: &str,
        status: &str,
        department: Option<&str>,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let sql = "UPDATE cases SET status = $1, department = COALESCE($2, department), updated_at_ms = $3 WHERE case_number = $4";
        let affected = match self {
            Store::Sqlite(pool) => sqlx::query(sql)
                .bind(status)
                .bind(department)
                .bind(now_ms)
                .bind(number)
                .execute(pool)
                .await?
                .rows_affected(),
            Store::Postgres(pool) => sqlx::query(sql)
                .bind(status)
                .bind(department)
                .bind(now_ms)
                .bind(number)
                .execute(pool)
                .await?
                .rows_affected(),
        };
        Ok(affected == 1)
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
