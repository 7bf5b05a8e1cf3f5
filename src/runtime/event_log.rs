//! The event log writer: one task that group-commits events to the store, so the engine never
//! waits on disk and the database sees one transaction per batch, not per event.
//!
//! Nothing is dropped. A failed batch is retried with backoff, keeping its order, while new events
//! queue behind it; `health()` reports the backlog and the last error. If the store is still
//! failing when the log is closed, the unsaved events are written to a JSON-lines file in the data
//! directory and the error is returned. An event counts as acknowledged only once committed:
//! `committed()` and `flush()` wait for that.

use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use super::store::{Store, StoreError, StoredEvent};

/// Where batches go. `Store` is the real one; tests use a sink that fails on purpose.
pub trait EventSink: Send + Sync + 'static {
    fn append(&self, batch: &[StoredEvent]) -> impl Future<Output = Result<(), StoreError>> + Send;
}

impl EventSink for Store {
    fn append(&self, batch: &[StoredEvent]) -> impl Future<Output = Result<(), StoreError>> + Send {
        Store::append(self, batch)
    }
}

/// Log health for `/healthz`.
#[derive(Debug, Clone, Default, serde::Serialize, PartialEq, Eq)]
pub struct LogHealth {
    pub submitted: u64,
    pub committed: u64,
    pub failed_attempts: u64,
    pub last_error: Option<String>,
}

impl LogHealth {
    pub fn backlog(&self) -> u64 {
        self.submitted - self.committed
    }
}

#[derive(Debug)]
struct Shared {
    submitted: AtomicU64,
    failed_attempts: AtomicU64,
    last_error: Mutex<Option<String>>,
}

#[derive(Debug, thiserror::Error)]
pub enum EventLogError {
    #[error("{count} events could not be committed ({last_error}); they were saved to {path}")]
    SavedToFile {
        count: usize,
        last_error: String,
        path: PathBuf,
    },
    #[error("{count} events could not be committed ({last_error}) nor saved to {path}: {io}")]
    Lost {
        count: usize,
        last_error: String,
        path: PathBuf,
        io: std::io::Error,
    },
}

/// Tuning for the writer.
#[derive(Debug, Clone)]
pub struct EventLogConfig {
    pub max_batch: usize,
    pub first_backoff: Duration,
    pub max_backoff: Duration,
    /// After close, how long to keep retrying a failing store before saving to file.
    pub close_deadline: Duration,
    /// Where unsaved events go if the store never comes back before close.
    pub fallback_dir: PathBuf,
}

impl Default for EventLogConfig {
    fn default() -> Self {
        EventLogConfig {
            max_batch: 512,
            first_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(5),
            close_deadline: Duration::from_secs(5),
            fallback_dir: PathBuf::from("data"),
        }
    }
}

enum Command {
    Append(StoredEvent),
    /// Commit what is queued, then stop (handles may still exist, e.g. in an HTTP handler).
    Close,
}

/// Handle to the writer task. Cloning shares the same log.
#[derive(Clone)]
pub struct EventLog {
    sender: mpsc::UnboundedSender<Command>,
    shared: Arc<Shared>,
    committed: watch::Receiver<u64>,
}

pub struct EventLogTask {
    handle: JoinHandle<Result<(), EventLogError>>,
}

impl EventLogTask {
    /// Waits for the writer to finish (after every handle was dropped or `close` was called).
    pub async fn join(self) -> Result<(), EventLogError> {
        match self.handle.await {
            Ok(result) => result,
            Err(join) => std::panic::resume_unwind(join.into_panic()),
        }
    }
}

impl EventLog {
    pub fn spawn<S: EventSink>(sink: S, config: EventLogConfig) -> (EventLog, EventLogTask) {
        let (sender, receiver) = mpsc::unbounded_channel();
        let (committed_tx, committed) = watch::channel(0u64);
        let shared = Arc::new(Shared {
            submitted: AtomicU64::new(0),
            failed_attempts: AtomicU64::new(0),
            last_error: Mutex::new(None),
        });
        let handle = tokio::spawn(writer(sink, config, receiver, committed_tx, shared.clone()));
        (
            EventLog {
                sender,
                shared,
                committed,
            },
            EventLogTask { handle },
        )
    }

    /// Queues one event; returns its ticket (position in submission order, from 1).
    pub fn append(&self, event: StoredEvent) -> u64 {
        let ticket = self.shared.submitted.fetch_add(1, Ordering::SeqCst) + 1;
        if self.sender.send(Command::Append(event)).is_err() {
            // The writer is gone only after close; callers close the log last, so this is a bug.
            tracing::error!(ticket, "event appended after the event log was closed");
        }
        ticket
    }

    /// Waits until the event with `ticket` is committed.
    pub async fn committed(&self, ticket: u64) {
        let mut rx = self.committed.clone();
        let _ = rx.wait_for(|c| *c >= ticket).await;
    }

    /// Waits until everything appended so far is committed.
    pub async fn flush(&self) {
        let ticket = self.shared.submitted.load(Ordering::SeqCst);
        self.committed(ticket).await;
    }

    /// Asks the writer to commit everything queued and stop; `EventLogTask::join` waits for it.
    pub fn close(&self) {
        let _ = self.sender.send(Command::Close);
    }

    pub fn health(&self) -> LogHealth {
        LogHealth {
            submitted: self.shared.submitted.load(Ordering::SeqCst),
            committed: *self.committed.borrow(),
            failed_attempts: self.shared.failed_attempts.load(Ordering::SeqCst),
            last_error: self.shared.last_error.lock().ok().and_then(|e| e.clone()),
        }
    }
}

async fn writer<S: EventSink>(
    sink: S,
    config: EventLogConfig,
    mut receiver: mpsc::UnboundedReceiver<Command>,
    committed_tx: watch::Sender<u64>,
    shared: Arc<Shared>,
) -> Result<(), EventLogError> {
    let mut batch: Vec<StoredEvent> = Vec::with_capacity(config.max_batch);
    let mut committed = 0u64;
    let mut closing_since: Option<tokio::time::Instant> = None;
    let mut close_requested = false;
    loop {
        if batch.is_empty() {
            if close_requested {
                return Ok(());
            }
            match receiver.recv().await {
                Some(Command::Append(event)) => batch.push(event),
                Some(Command::Close) => {
                    close_requested = true;
                    continue;
                }
                None => return Ok(()),
            }
        }
        while batch.len() < config.max_batch {
            match receiver.try_recv() {
                Ok(Command::Append(event)) => batch.push(event),
                Ok(Command::Close) => close_requested = true,
                Err(_) => break,
            }
        }
        let mut backoff = config.first_backoff;
        loop {
            match sink.append(&batch).await {
                Ok(()) => {
                    committed += batch.len() as u64;
                    let _ = committed_tx.send(committed);
                    batch.clear();
                    if let Ok(mut last) = shared.last_error.lock() {
                        *last = None;
                    }
                    break;
                }
                Err(error) => {
                    shared.failed_attempts.fetch_add(1, Ordering::SeqCst);
                    let text = error.to_string();
                    tracing::error!(events = batch.len(), error = %text, "event log commit failed; retrying");
                    if let Ok(mut last) = shared.last_error.lock() {
                        *last = Some(text.clone());
                    }
                    // Closed by every handle: give the store a bounded time, then save to file.
                    if close_requested || receiver.is_closed() || closing_since.is_some() {
                        let since = *closing_since.get_or_insert_with(tokio::time::Instant::now);
                        if since.elapsed() >= config.close_deadline {
                            while let Ok(command) = receiver.try_recv() {
                                if let Command::Append(event) = command {
                                    batch.push(event);
                                }
                            }
                            return Err(save_to_file(&config.fallback_dir, &batch, text));
                        }
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(config.max_backoff);
                }
            }
        }
    }
}

fn save_to_file(
    dir: &std::path::Path,
    events: &[StoredEvent],
    last_error: String,
) -> EventLogError {
    let path = dir.join(format!("unsaved-events-{}.jsonl", std::process::id()));
    let write = || -> std::io::Result<()> {
        use std::io::Write;
        std::fs::create_dir_all(dir)?;
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)?;
        for event in events {
            let line = serde_json::to_string(event).map_err(std::io::Error::other)?;
            writeln!(file, "{line}")?;
        }
        file.sync_all()
    };
    match write() {
        Ok(()) => {
            tracing::error!(count = events.len(), path = %path.display(), "store unavailable at shutdown; events saved to file");
            EventLogError::SavedToFile {
                count: events.len(),
                last_error,
                path,
            }
        }
        Err(io) => EventLogError::Lost {
            count: events.len(),
            last_error,
            path,
            io,
        },
    }
}
