//! The speech stage of a call: recordings go to the whisper pool, transcripts become case drafts
//! (pure code in `speech::case_draft`), drafts are stored (keyed by the recording, so the draft
//! and the case meet in whichever order they arrive), and only then does the engine hear the
//! verdict. A missing or corrupt model is not fatal: the stage runs in a reported degraded mode
//! that answers every recording "unavailable", so speech callers go to agents.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::sync::mpsc;

use super::store::{DraftRow, Store};
use super::transcriber::{DecodeSettings, Job, TranscribeStats, Transcriber, Transcript};
use crate::engine::Input;
use crate::ivr::DraftOutcome;
use crate::speech::case_draft::{self, Categories, StreetList};

/// Settings of the speech stage (the `[speech]` config section, resolved).
#[derive(Debug, Clone)]
pub struct SpeechSettings {
    pub model: PathBuf,
    pub workers: usize,
    pub queue: usize,
    pub categories: PathBuf,
    pub streets: PathBuf,
    pub min_confidence: f64,
    pub decode: DecodeSettings,
}

/// What /healthz says about speech.
#[derive(Debug, Clone)]
pub struct SpeechHealth {
    /// `ok`; `degraded` when the configured model could not be loaded; `off` when none is
    /// configured.
    pub mode: &'static str,
    pub reason: Option<String>,
    pub workers: usize,
    pub stats: Arc<TranscribeStats>,
}

/// Timings of one recording through the stage, for the log and the benchmark.
#[derive(Debug, Clone)]
pub struct DraftTimings {
    pub queue_wait: Duration,
    pub transcribe: Duration,
    /// From the moment the recording was handed over (end of speech) to the draft stored.
    pub total: Duration,
}

/// Reported after each recording is stored (tests and benchmarks listen).
#[derive(Debug, Clone)]
pub struct DraftStored {
    pub call_ref: String,
    pub audio_path: String,
    pub outcome: DraftOutcome,
    pub timings: DraftTimings,
    pub transcript: Option<String>,
}

pub struct SpeechService {
    transcriber: Option<Transcriber>,
    health: SpeechHealth,
    answers: mpsc::Sender<Input>,
}

impl SpeechService {
    /// Loads the street list and categories (errors are fatal: they are the city's data) and the
    /// model (errors are reported and the stage runs degraded).
    pub fn start(
        settings: &SpeechSettings,
        store: Store,
        answers: mpsc::Sender<Input>,
        observer: Option<mpsc::UnboundedSender<DraftStored>>,
    ) -> anyhow::Result<SpeechService> {
        let categories = Arc::new(Categories::load(&settings.categories)?);
        let streets = Arc::new(StreetList::load(&settings.streets)?);
        let mut decode = settings.decode.clone();
        if decode.initial_prompt.is_empty() {
            decode.initial_prompt = case_draft::initial_prompt(&categories, &streets);
        }
        let (done_tx, done_rx) = mpsc::unbounded_channel::<Transcript>();
        let stats = Arc::new(TranscribeStats::default());
        let (transcriber, mode, reason) = if settings.model.as_os_str().is_empty() {
            tracing::info!(
                "speech recognition off (no model configured): speech callers go to agents"
            );
            (None, "off", Some("no speech model configured".to_string()))
        } else {
            match Transcriber::start(
                &settings.model,
                settings.workers,
                settings.queue,
                decode,
                stats.clone(),
                move |t| {
                    let _ = done_tx.send(t);
                },
            ) {
                Ok(t) => (Some(t), "ok", None),
                Err(error) => {
                    tracing::error!(%error, "speech recognition unavailable: running degraded, speech callers go to agents");
                    (None, "degraded", Some(error.to_string()))
                }
            }
        };
        tokio::spawn(drafts_task(
            done_rx,
            store,
            answers.clone(),
            categories,
            streets,
            settings.min_confidence,
            observer,
        ));
        Ok(SpeechService {
            transcriber,
            health: SpeechHealth {
                mode,
                reason,
                workers: settings.workers,
                stats,
            },
            answers,
        })
    }

    pub fn health(&self) -> SpeechHealth {
        self.health.clone()
    }

    /// Hands a recording over. When it cannot be transcribed (degraded mode, queue full) the
    /// engine hears "unavailable" at once; the recording stays on disk either way.
    pub fn submit(&self, call_ref: String, audio_path: String) {
        let refused = match &self.transcriber {
            Some(t) => !t.submit(Job {
                call_ref: call_ref.clone(),
                path: PathBuf::from(&audio_path),
                queued_at: std::time::Instant::now(),
            }),
            None => true,
        };
        if refused {
            let reason = if self.transcriber.is_some() {
                "queue_full"
            } else {
                "degraded"
            };
            let answers = self.answers.clone();
            tokio::spawn(async move {
                let _ = answers
                    .send(Input::Transcript {
                        call_ref,
                        detail: Some(json!({ "path": audio_path, "error": reason }).to_string()),
                        audio_path,
                        outcome: DraftOutcome::Unavailable,
                    })
                    .await;
            });
        }
    }
}

async fn drafts_task(
    mut done: mpsc::UnboundedReceiver<Transcript>,
    store: Store,
    answers: mpsc::Sender<Input>,
    categories: Arc<Categories>,
    streets: Arc<StreetList>,
    min_confidence: f64,
    observer: Option<mpsc::UnboundedSender<DraftStored>>,
) {
    while let Some(transcript) = done.recv().await {
        let audio_path = transcript.path.display().to_string();
        let (outcome, detail, text) = match &transcript.result {
            Err(error) => {
                tracing::error!(%error, path = %audio_path, "transcription failed; the recording is kept");
                (
                    DraftOutcome::Unavailable,
                    json!({ "path": audio_path, "error": error.to_string() }),
                    None,
                )
            }
            Ok(text) => {
                let draft = case_draft::draft(text, &categories, &streets);
                let outcome = case_draft::outcome(text, &draft, min_confidence);
                let row = DraftRow {
                    audio_path: audio_path.clone(),
                    call_ref: transcript.call_ref.clone(),
                    transcript: text.clone(),
                    category: draft.category.clone(),
                    department: draft.department.clone(),
                    address: draft.address.as_ref().map(|a| a.display()),
                    description: draft.description.clone(),
                    confidence: draft.confidence,
                    outcome: outcome_name(&outcome).into(),
                };
                save_draft(&store, &row, &transcript.path).await;
                tracing::debug!(path = %audio_path, category = ?draft.category, confidence = draft.confidence, "draft stored");
                (
                    outcome,
                    json!({
                        "path": audio_path,
                        "category": draft.category,
                        "confidence": (draft.confidence * 100.0).round() / 100.0,
                        "has_address": draft.address.is_some(),
                    }),
                    Some(text.clone()),
                )
            }
        };
        let timings = DraftTimings {
            queue_wait: transcript.waited,
            transcribe: transcript.elapsed,
            total: transcript.queued_at.elapsed(),
        };
        let mut detail = detail;
        detail["queue_wait_ms"] = json!(timings.queue_wait.as_millis() as u64);
        detail["transcribe_ms"] = json!(timings.transcribe.as_millis() as u64);
        detail["total_ms"] = json!(timings.total.as_millis() as u64);
        if let Some(observer) = &observer {
            let _ = observer.send(DraftStored {
                call_ref: transcript.call_ref.clone(),
                audio_path: audio_path.clone(),
                outcome: outcome.clone(),
                timings,
                transcript: text,
            });
        }
        let _ = answers
            .send(Input::Transcript {
                call_ref: transcript.call_ref,
                audio_path,
                outcome,
                detail: Some(detail.to_string()),
            })
            .await;
    }
}

pub fn outcome_name(outcome: &DraftOutcome) -> &'static str {
    match outcome {
        DraftOutcome::Understood { .. } => "understood",
        DraftOutcome::LowConfidence => "low_confidence",
        DraftOutcome::Empty => "empty",
        DraftOutcome::Unavailable => "unavailable",
    }
}

/// Stores a draft with a few tries; if the database stays down, the draft goes to a file beside
/// the recording, so the words are never lost (the recording itself is already on disk).
async fn save_draft(store: &Store, row: &DraftRow, recording: &Path) {
    let mut last_error = None;
    for attempt in 0..3u64 {
        match store.save_draft(row, super::unix_ms_now()).await {
            Ok(_) => return,
            Err(error) => {
                tracing::error!(%error, attempt, "storing a case draft failed");
                last_error = Some(error);
                tokio::time::sleep(Duration::from_millis(200 * (attempt + 1))).await;
            }
        }
    }
    let fallback = recording.with_extension("draft.json");
    let text = serde_json::to_string_pretty(row).unwrap_or_default();
    match std::fs::write(&fallback, text) {
        Ok(()) => {
            tracing::error!(path = %fallback.display(), error = ?last_error, "case draft saved to a file instead of the database")
        }
        Err(error) => tracing::error!(%error, "case draft could not be saved anywhere"),
    }
}
