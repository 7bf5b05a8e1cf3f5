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
use sqlx::{Postgres, QueryBuilder, Sqlite};

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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize, sqlx::FromRow)]
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct EventRow {
    pub seq: i64,
    #[serde(flatten)]
    #[sqlx(flatten)]
    pub event: StoredEvent,
}

/// A case as stored. `case_number` is digits only, so a caller can key it in.
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow)]
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
    /// Open311 requests may carry a position; phone cases do not.
    pub lat: Option<f64>,
    pub lon: Option<f64>,
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
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

const INSERT_HISTORY: &str = "INSERT INTO case_history (case_number, at_ms, action, by_whom, detail) VALUES ($1, $2, $3, $4, $5)";

/// Case numbers start here so they are always seven digits for the first nine million cases.
const FIRST_CASE_NUMBER: i64 = 1_000_000;

const CASE_COLUMNS: &str = "SELECT case_number, status, category, department, address, description, audio_path, call_ref, transcript, confidence, created_at_ms, updated_at_ms, lat, lon FROM cases";

/// Runs one body on whichever pool the store holds. sqlx's pools, rows and query builders are
/// typed per backend, so the body is written once and compiled for each; `|pool, Db|` also names
/// the backend's database type for `QueryBuilder::<Db>` and transactions.
macro_rules! on_pool {
    ($store:expr, |$pool:ident| $body:expr) => {
        match $store {
            Store::Sqlite($pool) => $body,
            Store::Postgres($pool) => $body,
        }
    };
    ($store:expr, |$pool:ident, $db:ident| $body:expr) => {
        match $store {
            Store::Sqlite($pool) => {
                type $db = Sqlite;
                $body
            }
            Store::Postgres($pool) => {
                type $db = Postgres;
                $body
            }
        }
    };
}

/// Inside the transaction that inserted case row `id`: gives it its number and writes the
/// `created` line of its history, so a case never exists without either. Evaluates to the number.
macro_rules! number_new_case {
    ($tx:ident, $db:ty, $id:expr, $now_ms:expr, $by:expr, $detail:expr) => {{
        let number = (FIRST_CASE_NUMBER + $id).to_string();
        sqlx::query::<$db>("UPDATE cases SET case_number = $1 WHERE id = $2")
            .bind(&number)
            .bind($id)
            .execute(&mut *$tx)
            .await?;
        sqlx::query::<$db>(INSERT_HISTORY)
            .bind(&number)
            .bind($now_ms)
            .bind("created")
            .bind($by)
            .bind($detail.to_string())
            .execute(&mut *$tx)
            .await?;
        number
    }};
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
        on_pool!(self, |pool, Db| {
            let mut tx = pool.begin().await?;
            for chunk in batch.chunks(ROWS_PER_STATEMENT) {
                let mut query = QueryBuilder::<Db>::new(INSERT_PREFIX);
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
        });
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
        Ok(on_pool!(self, |pool| sqlx::query_as(&sql)
            .bind(kind)
            .bind(from_ms)
            .bind(to_ms)
            .fetch_all(pool)
            .await?))
    }

    /// Events in log order, optionally only one call's, at most `limit` of the newest.
    pub async fn events(
        &self,
        call_ref: Option<&str>,
        limit: i64,
    ) -> Result<Vec<EventRow>, StoreError> {
        let mut events: Vec<EventRow> = on_pool!(self, |pool, Db| {
            let mut query = QueryBuilder::<Db>::new(SELECT_COLUMNS);
            if let Some(call_ref) = call_ref {
                query
                    .push(" WHERE call_ref = ")
                    .push_bind(call_ref.to_string());
            }
            query.push(" ORDER BY seq DESC LIMIT ").push_bind(limit);
            query.build_query_as().fetch_all(pool).await?
        });
        events.reverse();
        Ok(events)
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
        let number = on_pool!(self, |pool, Db| {
            let mut tx = pool.begin().await?;
            let id: i64 = sqlx::query_scalar::<Db, i64>(
                "INSERT INTO cases (case_number, status, audio_path, call_ref, created_at_ms, updated_at_ms) \
                 VALUES ($1, 'open', $2, $3, $4, $4) RETURNING id",
            )
            .bind(&placeholder)
            .bind(audio_path)
            .bind(call_ref)
            .bind(now_ms)
            .fetch_one(&mut *tx)
            .await?;
            let detail = serde_json::json!({ "call_ref": call_ref });
            let number = number_new_case!(tx, Db, id, now_ms, "phone", detail);
            tx.commit().await?;
            number
        });
        // After the commit, not inside it: the draft writer commits its row and then fills
        // cases, so one of the two always sees the other (see migrations/*/0003).
        let sql = format!("{FILL_CASE_FROM_DRAFT} AND case_number = $1");
        on_pool!(self, |pool| sqlx::query(&sql)
            .bind(&number)
            .bind(now_ms)
            .execute(pool)
            .await?
            .rows_affected());
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
        on_pool!(self, |pool| sqlx::query(sql)
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
            .execute(pool)
            .await?
            .rows_affected());
        Ok(())
    }

    /// Callbacks in `states` (e.g. waiting and dialing: the ones to put back in line at start).
    pub async fn callbacks_in(&self, states: &[&str]) -> Result<Vec<StoredCallback>, StoreError> {
        let sql = "SELECT call_ref, number, language, queue, attrs, priority, state, attempts, last_result, joined_at_ms, updated_at_ms FROM callbacks ORDER BY joined_at_ms";
        let all: Vec<StoredCallback> =
            on_pool!(self, |pool| sqlx::query_as(sql).fetch_all(pool).await?);
        Ok(all
            .into_iter()
            .filter(|c| states.contains(&c.state.as_str()))
            .collect())
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
        Ok(on_pool!(self, |pool| {
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
                .execute(pool)
                .await?;
            sqlx::query(&fill)
                .bind(&row.audio_path)
                .bind(now_ms)
                .execute(pool)
                .await?
                .rows_affected()
        }))
    }

    /// The case with this number, if any. The number is a bound parameter, never SQL text.
    pub async fn find_case(&self, number: &str) -> Result<Option<CaseRecord>, StoreError> {
        let sql = format!("{CASE_COLUMNS} WHERE case_number = $1");
        Ok(on_pool!(self, |pool| sqlx::query_as(&sql)
            .bind(number)
            .fetch_optional(pool)
            .await?))
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
        let affected = on_pool!(self, |pool| sqlx::query(sql)
            .bind(status)
            .bind(department)
            .bind(now_ms)
            .bind(number)
            .execute(pool)
            .await?
            .rows_affected());
        Ok(affected == 1)
    }

    /// Number of events per kind, for summaries and tests.
    pub async fn count_by_kind(&self) -> Result<Vec<(String, i64)>, StoreError> {
        let sql = "SELECT kind, COUNT(*) AS n FROM call_events GROUP BY kind ORDER BY kind";
        Ok(on_pool!(self, |pool| sqlx::query_as(sql)
            .fetch_all(pool)
            .await?))
    }

    pub async fn close(&self) {
        on_pool!(self, |pool| pool.close().await)
    }
}

/// Which cases to list. Every value reaches SQL as a bound parameter, never as text.
#[derive(Debug, Clone, Default)]
pub struct CaseFilter {
    /// Any of these case numbers (empty: all).
    pub numbers: Vec<String>,
    pub statuses: Vec<String>,
    pub categories: Vec<String>,
    pub departments: Vec<String>,
    /// Created at or after / before (Unix ms).
    pub created_from_ms: Option<i64>,
    pub created_before_ms: Option<i64>,
    pub limit: i64,
    pub offset: i64,
    /// Newest first (Open311) rather than oldest first (the cases page works oldest first).
    pub newest_first: bool,
}

/// One line of a case's history.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CaseHistoryRow {
    pub at_ms: i64,
    pub action: String,
    pub by: String,
    pub detail: serde_json::Value,
}

/// Open cases of one department, by age.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct DepartmentAges {
    /// None for cases not yet sorted into a department.
    pub department: Option<String>,
    pub open: i64,
    pub open_0_7_days: i64,
    pub open_8_30_days: i64,
    pub open_31_90_days: i64,
    pub open_over_90_days: i64,
}

/// A case that did not come from a call (Open311 `POST requests`).
#[derive(Debug, Clone, Default)]
pub struct NewCase {
    pub category: String,
    pub department: Option<String>,
    pub address: Option<String>,
    pub description: Option<String>,
    pub lat: Option<f64>,
    pub lon: Option<f64>,
}

/// One version of the queue rules applied through the API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct RulesVersion {
    pub version: i64,
    pub applied_by: String,
    pub applied_at_ms: i64,
    pub action: String,
    #[serde(skip_serializing)]
    pub queues_toml: String,
}

const DAY_MS: i64 = 86_400_000;

impl Store {
    /// Cases matching `filter` and how many match in all (ignoring limit and offset).
    pub async fn list_cases(
        &self,
        filter: &CaseFilter,
    ) -> Result<(i64, Vec<CaseRecord>), StoreError> {
        macro_rules! push_filter {
            ($query:expr) => {{
                let query = &mut $query;
                query.push(" WHERE 1 = 1");
                let lists: [(&str, &Vec<String>); 4] = [
                    ("case_number", &filter.numbers),
                    ("status", &filter.statuses),
                    ("category", &filter.categories),
                    ("department", &filter.departments),
                ];
                for (column, values) in lists {
                    if values.is_empty() {
                        continue;
                    }
                    query.push(" AND ").push(column).push(" IN (");
                    let mut list = query.separated(", ");
                    for value in values {
                        list.push_bind(value.clone());
                    }
                    query.push(")");
                }
                if let Some(from) = filter.created_from_ms {
                    query.push(" AND created_at_ms >= ").push_bind(from);
                }
                if let Some(before) = filter.created_before_ms {
                    query.push(" AND created_at_ms < ").push_bind(before);
                }
            }};
        }
        Ok(on_pool!(self, |pool, Db| {
            let mut count = QueryBuilder::<Db>::new("SELECT COUNT(*) AS n FROM cases");
            push_filter!(count);
            let total: i64 = count.build_query_scalar().fetch_one(pool).await?;
            let mut query = QueryBuilder::<Db>::new(CASE_COLUMNS);
            push_filter!(query);
            query.push(if filter.newest_first {
                " ORDER BY created_at_ms DESC, id DESC"
            } else {
                " ORDER BY created_at_ms, id"
            });
            query.push(" LIMIT ").push_bind(filter.limit.max(0));
            query.push(" OFFSET ").push_bind(filter.offset.max(0));
            let cases: Vec<CaseRecord> = query.build_query_as().fetch_all(pool).await?;
            (total, cases)
        }))
    }

    /// Open cases per department, by age at `now_ms`.
    pub async fn open_cases_by_department(
        &self,
        now_ms: i64,
    ) -> Result<Vec<DepartmentAges>, StoreError> {
        let sql = "SELECT department, COUNT(*) AS open, \
            SUM(CASE WHEN created_at_ms > $1 THEN 1 ELSE 0 END) AS open_0_7_days, \
            SUM(CASE WHEN created_at_ms <= $1 AND created_at_ms > $2 THEN 1 ELSE 0 END) AS open_8_30_days, \
            SUM(CASE WHEN created_at_ms <= $2 AND created_at_ms >= $3 THEN 1 ELSE 0 END) AS open_31_90_days, \
            SUM(CASE WHEN created_at_ms < $3 THEN 1 ELSE 0 END) AS open_over_90_days \
            FROM cases WHERE status = 'open' GROUP BY department ORDER BY department";
        // "More than 90 days": created before now - 90 days.
        let (d7, d30, d90) = (
            now_ms - 7 * DAY_MS,
            now_ms - 30 * DAY_MS,
            now_ms - 90 * DAY_MS,
        );
        Ok(on_pool!(self, |pool| sqlx::query_as(sql)
            .bind(d7)
            .bind(d30)
            .bind(d90)
            .fetch_all(pool)
            .await?))
    }

    /// Changes a case's status and/or department and records who did it, in one transaction.
    /// None when there is no such case. Fields equal to the current value record nothing.
    pub async fn change_case(
        &self,
        number: &str,
        status: Option<&str>,
        department: Option<&str>,
        by: &str,
        now_ms: i64,
    ) -> Result<Option<CaseRecord>, StoreError> {
        let select = format!("{CASE_COLUMNS} WHERE case_number = $1");
        on_pool!(self, |pool, Db| {
            let mut tx = pool.begin().await?;
            let current: Option<CaseRecord> = sqlx::query_as(&select)
                .bind(number)
                .fetch_optional(&mut *tx)
                .await?;
            let Some(current) = current else {
                return Ok(None);
            };
            let mut changes = Vec::new();
            if let Some(to) = status.filter(|s| *s != current.status) {
                changes.push(("status", current.status.clone(), to.to_string()));
            }
            if let Some(to) = department.filter(|d| Some(*d) != current.department.as_deref()) {
                changes.push((
                    "department",
                    current.department.clone().unwrap_or_default(),
                    to.to_string(),
                ));
            }
            if !changes.is_empty() {
                sqlx::query::<Db>(
                    "UPDATE cases SET status = COALESCE($1, status), department = COALESCE($2, department), updated_at_ms = $3 WHERE case_number = $4",
                )
                .bind(status)
                .bind(department)
                .bind(now_ms)
                .bind(number)
                .execute(&mut *tx)
                .await?;
                for (action, from, to) in &changes {
                    sqlx::query::<Db>(INSERT_HISTORY)
                        .bind(number)
                        .bind(now_ms)
                        .bind(*action)
                        .bind(by)
                        .bind(serde_json::json!({ "from": from, "to": to }).to_string())
                        .execute(&mut *tx)
                        .await?;
                }
            }
            tx.commit().await?;
        });
        self.find_case(number).await
    }

    /// A case's history, oldest first (empty for an unknown case).
    pub async fn case_history(&self, number: &str) -> Result<Vec<CaseHistoryRow>, StoreError> {
        let sql = "SELECT at_ms, action, by_whom, detail FROM case_history WHERE case_number = $1 ORDER BY at_ms, id";
        let rows: Vec<(i64, String, String, String)> = on_pool!(self, |pool| sqlx::query_as(sql)
            .bind(number)
            .fetch_all(pool)
            .await?);
        Ok(rows
            .into_iter()
            .map(|(at_ms, action, by, detail)| CaseHistoryRow {
                at_ms,
                action,
                by,
                detail: serde_json::from_str(&detail).unwrap_or(serde_json::Value::String(detail)),
            })
            .collect())
    }

    /// Stores an open case that came from outside a call (Open311), with its `created` history
    /// line, in one transaction.
    pub async fn create_case_from(
        &self,
        case: &NewCase,
        by: &str,
        now_ms: i64,
    ) -> Result<CaseRecord, StoreError> {
        let placeholder = format!("pending-{by}-{now_ms}-{}", rand::random::<u64>());
        let number = on_pool!(self, |pool, Db| {
            let mut tx = pool.begin().await?;
            let id: i64 = sqlx::query_scalar::<Db, i64>(
                "INSERT INTO cases (case_number, status, category, department, address, description, lat, lon, created_at_ms, updated_at_ms) \
                 VALUES ($1, 'open', $2, $3, $4, $5, $6, $7, $8, $8) RETURNING id",
            )
            .bind(&placeholder)
            .bind(&case.category)
            .bind(&case.department)
            .bind(&case.address)
            .bind(&case.description)
            .bind(case.lat)
            .bind(case.lon)
            .bind(now_ms)
            .fetch_one(&mut *tx)
            .await?;
            let detail = serde_json::json!({ "service_code": case.category });
            let number = number_new_case!(tx, Db, id, now_ms, by, detail);
            tx.commit().await?;
            number
        });
        self.find_case(&number)
            .await?
            .ok_or_else(|| StoreError::Database(sqlx::Error::RowNotFound))
    }

    /// Events in `[from_ms, to_ms)` in log order: only `kind` when given, else every kind but
    /// `exclude_kind`. For the CSV exports.
    pub async fn events_between(
        &self,
        kind: Option<&str>,
        exclude_kind: Option<&str>,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<Vec<EventRow>, StoreError> {
        Ok(on_pool!(self, |pool, Db| {
            let mut query = QueryBuilder::<Db>::new(SELECT_COLUMNS);
            query.push(" WHERE occurred_at_ms >= ").push_bind(from_ms);
            query.push(" AND occurred_at_ms < ").push_bind(to_ms);
            if let Some(kind) = kind {
                query.push(" AND kind = ").push_bind(kind.to_string());
            }
            if let Some(kind) = exclude_kind {
                query.push(" AND kind <> ").push_bind(kind.to_string());
            }
            query.push(" ORDER BY seq");
            query.build_query_as().fetch_all(pool).await?
        }))
    }

    /// Every rules version, oldest first.
    pub async fn rules_versions(&self) -> Result<Vec<RulesVersion>, StoreError> {
        let sql = "SELECT version, queues_toml, applied_by, applied_at_ms, action FROM rules_versions ORDER BY version";
        Ok(on_pool!(self, |pool| sqlx::query_as(sql)
            .fetch_all(pool)
            .await?))
    }

    /// Records a rules version and returns its number (one more than the last).
    pub async fn add_rules_version(
        &self,
        queues_toml: &str,
        by: &str,
        action: &str,
        now_ms: i64,
    ) -> Result<i64, StoreError> {
        Ok(on_pool!(self, |pool, Db| {
            let mut tx = pool.begin().await?;
            let last: Option<i64> =
                sqlx::query_scalar::<Db, Option<i64>>("SELECT MAX(version) FROM rules_versions")
                    .fetch_one(&mut *tx)
                    .await?;
            let version = last.unwrap_or(0) + 1;
            sqlx::query::<Db>(
                "INSERT INTO rules_versions (version, queues_toml, applied_by, applied_at_ms, action) VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(version)
            .bind(queues_toml)
            .bind(by)
            .bind(now_ms)
            .bind(action)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            version
        }))
    }
}
