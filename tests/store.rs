//! The event store and its writer, against SQLite and PostgreSQL alike (the same test bodies
//! run on both), plus the writer's failure handling with a sink that fails on purpose.
//!
//! PostgreSQL comes from `CIVICLINE_TEST_POSTGRES_URL` (scripts/test starts a local server and
//! sets it); each test creates its own database so tests never see each other's rows.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use civicline::runtime::event_log::{EventLog, EventLogConfig, EventLogError, EventSink};
use civicline::runtime::store::{Store, StoreError, StoredEvent};
use sqlx::Connection;

fn event(n: usize, call: &str, kind: &str) -> StoredEvent {
    StoredEvent {
        occurred_at_ms: 1_790_000_000_000 + n as i64,
        call_ref: call.to_string(),
        sip_call_id: format!("{call}@test"),
        kind: kind.to_string(),
        status_code: (kind == "rejected").then_some(488),
        reason: (kind == "ended").then(|| "caller_hangup".to_string()),
        duration_ms: Some(n as i64),
        caller: Some("5551234567".into()),
        detail: Some("{\"codec\":\"Pcmu\"}".into()),
    }
}

/// A fresh, empty database URL for one test.
async fn database_url(backend: &str) -> (String, Option<tempfile::TempDir>) {
    match backend {
        "sqlite" => {
            let dir = tempfile::tempdir().unwrap();
            let url = format!(
                "sqlite://{}?mode=rwc",
                dir.path().join("events.db").display()
            );
            (url, Some(dir))
        }
        _ => {
            let admin = std::env::var("CIVICLINE_TEST_POSTGRES_URL").expect(
                "CIVICLINE_TEST_POSTGRES_URL is not set: run the tests with scripts/test, which starts PostgreSQL",
            );
            let name = format!("civicline_test_{:016x}", rand::random::<u64>());
            let mut conn = sqlx::PgConnection::connect(&admin)
                .await
                .unwrap_or_else(|e| panic!("PostgreSQL reachable at {admin:?}: {e}"));
            sqlx::query(&format!("CREATE DATABASE {name}"))
                .execute(&mut conn)
                .await
                .unwrap();
            let base = admin.rsplit_once('/').unwrap().0;
            (format!("{base}/{name}"), None)
        }
    }
}

async fn append_and_read_back_in_order(backend: &str) {
    let (url, _dir) = database_url(backend).await;
    let store = Store::connect(&url).await.unwrap();
    assert_eq!(store.backend(), backend);
    let batch = vec![
        event(1, "c-1", "received"),
        event(2, "c-2", "received"),
        event(3, "c-1", "ended"),
    ];
    store.append(&batch).await.unwrap();
    let all = store.events(None, 100).await.unwrap();
    assert_eq!(
        all.iter().map(|r| r.event.clone()).collect::<Vec<_>>(),
        batch
    );
    assert!(all.windows(2).all(|w| w[0].seq < w[1].seq));
    let one = store.events(Some("c-1"), 100).await.unwrap();
    assert_eq!(one.len(), 2);
    assert_eq!(one[1].event.reason.as_deref(), Some("caller_hangup"));
    // `limit` keeps the newest, still returned oldest first.
    let newest = store.events(None, 2).await.unwrap();
    assert_eq!(
        newest
            .iter()
            .map(|r| r.event.occurred_at_ms)
            .collect::<Vec<_>>(),
        vec![1_790_000_000_002, 1_790_000_000_003]
    );
    assert_eq!(
        store.count_by_kind().await.unwrap(),
        vec![("ended".to_string(), 1), ("received".to_string(), 2)]
    );
    // Hostile text is data, never SQL.
    store
        .append(&[event(4, "x'); DROP TABLE call_events; --", "received")])
        .await
        .unwrap();
    assert_eq!(store.events(None, 100).await.unwrap().len(), 4);
    store.close().await;
}

async fn a_restart_loses_nothing(backend: &str) {
    let (url, _dir) = database_url(backend).await;
    let store = Store::connect(&url).await.unwrap();
    let batch: Vec<StoredEvent> = (0..1200)
        .map(|n| event(n, &format!("c-{}", n / 3), "received"))
        .collect();
    store.append(&batch).await.unwrap();
    store.close().await;
    // Connecting again re-runs migrations (a no-op) and finds every row.
    let again = Store::connect(&url).await.unwrap();
    let rows = again.events(None, 10_000).await.unwrap();
    assert_eq!(rows.len(), 1200);
    assert_eq!(rows.last().unwrap().event, batch[1199]);
    again.close().await;
}

async fn writer_commits_everything_it_acknowledges(backend: &str) {
    let (url, _dir) = database_url(backend).await;
    let store = Store::connect(&url).await.unwrap();
    let (log, task) = EventLog::spawn(
        store.clone(),
        EventLogConfig {
            max_batch: 64,
            ..EventLogConfig::default()
        },
    );
    let mut last = 0;
    for n in 0..500 {
        last = log.append(event(n, &format!("c-{n}"), "received"));
    }
    log.committed(last).await;
    // Acknowledged means committed: the rows are readable now, before the writer stops.
    assert_eq!(store.events(None, 10_000).await.unwrap().len(), 500);
    let health = log.health();
    assert_eq!(
        (health.submitted, health.committed, health.failed_attempts),
        (500, 500, 0)
    );
    log.close();
    task.join().await.unwrap();
    store.close().await;
}

async fn cases_get_unique_numbers_and_are_found_again(backend: &str) {
    let (url, _dir) = database_url(backend).await;
    let store = Store::connect(&url).await.unwrap();
    let first = store
        .create_case(
            "call-1",
            Some("data/recordings/call-1-1.wav"),
            1_790_000_000_000,
        )
        .await
        .unwrap();
    let second = store
        .create_case("call-2", None, 1_790_000_001_000)
        .await
        .unwrap();
    assert_eq!(first.case_number, "1000001");
    assert_eq!(second.case_number, "1000002");
    assert!(
        first.case_number.bytes().all(|b| b.is_ascii_digit()),
        "keyable on a phone"
    );
    assert_eq!(first.status, "open");
    let found = store.find_case("1000001").await.unwrap().unwrap();
    assert_eq!(found, first);
    assert_eq!(
        found.audio_path.as_deref(),
        Some("data/recordings/call-1-1.wav")
    );
    assert!(store.find_case("999").await.unwrap().is_none());
    assert!(
        store.find_case("1' OR '1'='1").await.unwrap().is_none(),
        "bound, never SQL text"
    );
    assert!(store
        .update_case("1000002", "closed", Some("Water"), 1_790_000_002_000)
        .await
        .unwrap());
    let closed = store.find_case("1000002").await.unwrap().unwrap();
    assert_eq!(
        (closed.status.as_str(), closed.department.as_deref()),
        ("closed", Some("Water"))
    );
    assert!(!store.update_case("42", "closed", None, 0).await.unwrap());
    store.close().await;
}

/// The API's queries on both backends: filters as bound lists, ages, history written with
/// each change, cases from outside a call, rules versions, event ranges.
async fn api_queries_agree_on_both_backends(backend: &str) {
    use civicline::runtime::store::{CaseFilter, NewCase};
    let (url, _dir) = database_url(backend).await;
    let store = Store::connect(&url).await.unwrap();
    let now = 1_790_000_000_000i64;
    let day = 86_400_000;
    let old = store
        .create_case("c-old", None, now - 100 * day)
        .await
        .unwrap();
    let web = store
        .create_case_from(
            &NewCase {
                category: "pothole".into(),
                department: Some("Streets".into()),
                address: Some("1 Main St".into()),
                description: None,
                lat: Some(41.5),
                lon: Some(-87.5),
            },
            "open311:web",
            now - day,
        )
        .await
        .unwrap();
    assert_eq!(web.lat, Some(41.5));
    let changed = store
        .change_case(
            &old.case_number,
            Some("closed"),
            Some("Water"),
            "token:alice",
            now,
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (changed.status.as_str(), changed.department.as_deref()),
        ("closed", Some("Water"))
    );
    assert!(store
        .change_case("42", Some("closed"), None, "x", now)
        .await
        .unwrap()
        .is_none());
    let history = store.case_history(&old.case_number).await.unwrap();
    let actions: Vec<&str> = history.iter().map(|h| h.action.as_str()).collect();
    assert_eq!(actions, ["created", "status", "department"]);
    assert_eq!(history[1].by, "token:alice");
    assert_eq!(
        store.case_history(&web.case_number).await.unwrap()[0].by,
        "open311:web"
    );

    let filter = |f: CaseFilter| CaseFilter { limit: 100, ..f };
    let (total, cases) = store
        .list_cases(&filter(CaseFilter::default()))
        .await
        .unwrap();
    assert_eq!((total, cases.len()), (2, 2));
    let (total, _) = store
        .list_cases(&filter(CaseFilter {
            statuses: vec!["open".into(), "closed".into()],
            departments: vec!["Water".into(), "' OR 1=1 --".into()],
            ..CaseFilter::default()
        }))
        .await
        .unwrap();
    assert_eq!(total, 1);
    let (total, cases) = store
        .list_cases(&filter(CaseFilter {
            created_before_ms: Some(now - 90 * day),
            ..CaseFilter::default()
        }))
        .await
        .unwrap();
    assert_eq!(
        (total, cases[0].case_number.as_str()),
        (1, old.case_number.as_str())
    );
    let (total, cases) = store
        .list_cases(&CaseFilter {
            limit: 1,
            offset: 1,
            newest_first: true,
            ..CaseFilter::default()
        })
        .await
        .unwrap();
    assert_eq!((total, cases.len()), (2, 1));
    assert_eq!(
        cases[0].case_number, old.case_number,
        "newest first, second page"
    );

    store
        .change_case(&old.case_number, Some("open"), None, "x", now)
        .await
        .unwrap();
    let ages = store.open_cases_by_department(now).await.unwrap();
    let water = ages
        .iter()
        .find(|d| d.department.as_deref() == Some("Water"))
        .unwrap();
    assert_eq!((water.open, water.open_over_90_days), (1, 1));
    let streets = ages
        .iter()
        .find(|d| d.department.as_deref() == Some("Streets"))
        .unwrap();
    assert_eq!((streets.open, streets.open_0_7_days), (1, 1));

    assert!(store.rules_versions().await.unwrap().is_empty());
    assert_eq!(
        store
            .add_rules_version("a", "file", "original", now)
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        store
            .add_rules_version("b", "token:alice", "apply", now)
            .await
            .unwrap(),
        2
    );
    let versions = store.rules_versions().await.unwrap();
    assert_eq!(versions[1].queues_toml, "b");

    store
        .append(&[
            event(1, "c1", "received"),
            event(2, "c1", "queue"),
            event(3, "c1", "ended"),
        ])
        .await
        .unwrap();
    let from = 1_790_000_000_000;
    let calls = store
        .events_between(None, Some("queue"), from, from + 3)
        .await
        .unwrap();
    assert_eq!(
        calls.len(),
        1,
        "the end is exclusive and queue events are left out"
    );
    let queue = store
        .events_between(Some("queue"), None, from, from + 10)
        .await
        .unwrap();
    assert_eq!(queue.len(), 1);
    store.close().await;
}

macro_rules! both_backends {
    ($($name:ident),*) => {
        mod sqlite {
            $(#[tokio::test] async fn $name() { super::$name("sqlite").await })*
        }
        mod postgres {
            $(#[tokio::test] async fn $name() { super::$name("postgres").await })*
        }
    };
}

both_backends!(
    api_queries_agree_on_both_backends,
    append_and_read_back_in_order,
    a_restart_loses_nothing,
    writer_commits_everything_it_acknowledges,
    cases_get_unique_numbers_and_are_found_again
);

/// A sink that fails its first `failures` appends, then keeps what it is given.
#[derive(Clone, Default)]
struct FlakySink {
    failures: Arc<AtomicUsize>,
    kept: Arc<Mutex<Vec<StoredEvent>>>,
}

impl EventSink for FlakySink {
    async fn append(&self, batch: &[StoredEvent]) -> Result<(), StoreError> {
        if self.failures.load(Ordering::SeqCst) > 0 {
            self.failures.fetch_sub(1, Ordering::SeqCst);
            return Err(StoreError::UnsupportedUrl("simulated outage".into()));
        }
        self.kept.lock().unwrap().extend_from_slice(batch);
        Ok(())
    }
}

#[tokio::test(start_paused = true)]
async fn outage_keeps_events_in_order_and_reports_degraded() {
    let sink = FlakySink::default();
    sink.failures.store(5, Ordering::SeqCst);
    let (log, task) = EventLog::spawn(sink.clone(), EventLogConfig::default());
    let first = log.append(event(0, "a", "received"));
    // Let the writer fail a few times (paused clock: the backoff sleeps advance instantly).
    tokio::time::sleep(Duration::from_millis(120)).await;
    let health = log.health();
    assert!(health.failed_attempts >= 2, "{health:?}");
    assert_eq!(health.committed, 0);
    assert!(health
        .last_error
        .as_deref()
        .unwrap()
        .contains("simulated outage"));
    for n in 1..10 {
        log.append(event(n, "a", "received"));
    }
    log.committed(first).await;
    log.flush().await;
    let kept = sink.kept.lock().unwrap().clone();
    assert_eq!(
        kept.iter().map(|e| e.occurred_at_ms).collect::<Vec<_>>(),
        (0..10).map(|n| 1_790_000_000_000 + n).collect::<Vec<_>>()
    );
    assert_eq!(
        log.health().last_error,
        None,
        "healthy again after a commit"
    );
    log.close();
    task.join().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn store_still_down_at_close_saves_events_to_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let sink = FlakySink::default();
    sink.failures.store(usize::MAX, Ordering::SeqCst);
    let (log, task) = EventLog::spawn(
        sink,
        EventLogConfig {
            fallback_dir: dir.path().to_path_buf(),
            close_deadline: Duration::from_secs(2),
            ..EventLogConfig::default()
        },
    );
    for n in 0..7 {
        log.append(event(n, "b", "received"));
    }
    log.close();
    match task.join().await {
        Err(EventLogError::SavedToFile { count, path, .. }) => {
            assert_eq!(count, 7);
            let lines: Vec<StoredEvent> = std::fs::read_to_string(path)
                .unwrap()
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect();
            assert_eq!(lines.len(), 7);
            assert_eq!(lines[6], event(6, "b", "received"));
        }
        other => panic!("expected the events saved to a file, got {other:?}"),
    }
}
