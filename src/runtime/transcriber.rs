//! Transcription: whisper.cpp through whisper-rs, off the tokio threads. The model is loaded once;
//! a fixed pool of worker threads each owns its own whisper state and takes jobs from one
//! bounded queue, so a burst of callers waits in line instead of piling up threads, and a
//! full queue is refused at once (the recording is kept; the case simply stays untranscribed).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc as std_mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use rubato::Resampler;
use whisper_rs::{FullParams, SamplingStrategy, WhisperContext, WhisperContextParameters};

#[derive(Debug, thiserror::Error)]
pub enum TranscribeError {
    #[error("speech model {path}: {reason}")]
    Model { path: PathBuf, reason: String },
    #[error("recording {path}: {reason}")]
    Audio { path: PathBuf, reason: String },
    #[error("whisper: {0}")]
    Whisper(String),
}

/// Counters for /healthz.
#[derive(Debug, Default)]
pub struct TranscribeStats {
    pub done: AtomicU64,
    pub failed: AtomicU64,
    pub refused_queue_full: AtomicU64,
    /// Seconds per whisper call (Prometheus `civicline_transcription_seconds`).
    pub latency: super::api::prometheus::Histogram,
}

pub struct Job {
    pub call_ref: String,
    pub path: PathBuf,
    /// When the recording was handed over (end of speech), for queue wait and latency.
    pub queued_at: Instant,
}

/// What a worker hands back.
pub struct Transcript {
    pub call_ref: String,
    pub path: PathBuf,
    pub result: Result<String, TranscribeError>,
    /// Time in the queue before a worker took it.
    pub waited: Duration,
    /// Time a worker spent on it.
    pub elapsed: Duration,
    pub queued_at: Instant,
}

pub struct Transcriber {
    jobs: std_mpsc::SyncSender<Job>,
    pub stats: Arc<TranscribeStats>,
}

/// Decoding settings chosen for short phone utterances (see ARCHITECTURE.md).
#[derive(Clone, Debug, Default)]
pub struct DecodeSettings {
    pub initial_prompt: String,
    /// Beam search width; 0 or 1 decodes greedily.
    pub beam_size: u32,
    /// Size the encoder's window to the clip instead of Whisper's fixed 30 s.
    pub audio_ctx_to_clip: bool,
    /// ggml threads for one recording (0 counts as 1).
    pub threads: usize,
    /// The pool's workers run at background priority (`lower_thread_priority`).
    pub background_priority: bool,
}

impl DecodeSettings {
    /// The server's decoding for a `[speech]` section: its beam and window settings, and the
    /// initial prompt made from the city's categories and streets.
    pub fn for_server(
        speech: &crate::config::SpeechConfig,
        categories: &crate::speech::case_draft::Categories,
        streets: &crate::speech::case_draft::StreetList,
    ) -> DecodeSettings {
        DecodeSettings {
            initial_prompt: crate::speech::case_draft::initial_prompt(categories, streets),
            beam_size: speech.beam_size,
            audio_ctx_to_clip: speech.audio_ctx_to_clip,
            threads: speech.threads,
            background_priority: speech.background_priority,
        }
    }
}

impl Transcriber {
    /// Loads the model and starts `workers` threads; `done` is called on a worker thread.
    pub fn start(
        model: &Path,
        workers: usize,
        queue: usize,
        settings: DecodeSettings,
        stats: Arc<TranscribeStats>,
        done: impl Fn(Transcript) + Send + Sync + 'static,
    ) -> Result<Transcriber, TranscribeError> {
        let context = load_model(model)?;
        let (jobs, receiver) = std_mpsc::sync_channel::<Job>(queue.max(1));
        let receiver = Arc::new(Mutex::new(receiver));
        let done = Arc::new(done);
        for n in 0..workers.max(1) {
            let context = context.clone();
            let receiver = receiver.clone();
            let stats = stats.clone();
            let done = done.clone();
            let settings = settings.clone();
            std::thread::Builder::new()
                .name(format!("whisper-{n}"))
                .spawn(move || {
                    if settings.background_priority {
                        lower_thread_priority();
                    }
                    loop {
                        let job = match receiver.lock() {
                            Ok(guard) => guard.recv(),
                            Err(_) => return,
                        };
                        let Ok(job) = job else { return };
                        let started = Instant::now();
                        let result = transcribe_file(&context, &job.path, &settings);
                        stats.latency.observe(started.elapsed().as_secs_f64());
                        match &result {
                            Ok(_) => stats.done.fetch_add(1, Ordering::Relaxed),
                            Err(_) => stats.failed.fetch_add(1, Ordering::Relaxed),
                        };
                        done(Transcript {
                            call_ref: job.call_ref,
                            path: job.path,
                            result,
                            waited: started.saturating_duration_since(job.queued_at),
                            elapsed: started.elapsed(),
                            queued_at: job.queued_at,
                        });
                    }
                })
                .map_err(|e| TranscribeError::Whisper(e.to_string()))?;
        }
        Ok(Transcriber { jobs, stats })
    }

    /// Queues a job; false (and counted) when the queue is full.
    pub fn submit(&self, job: Job) -> bool {
        match self.jobs.try_send(job) {
            Ok(()) => true,
            Err(_) => {
                self.stats
                    .refused_queue_full
                    .fetch_add(1, Ordering::Relaxed);
                false
            }
        }
    }
}

/// Transcription threads run under Linux's SCHED_IDLE policy: any call-handling thread that
/// wakes takes the CPU from them at once. A decode keeps its cores busy for most of a second;
/// at equal priority the tokio threads that pace RTP queued behind it (two ggml threads on two
/// cores: p99 deviation of the 20 ms packet gaps from 1.1 to 4.0 ms at 100 calls), and a nice
/// value of 10 did not help (3.8 ms); BENCHMARKS.md, "RTP pacing while transcribing". On a
/// machine with nothing else to do the policy costs nothing.
///
/// Lowers the calling thread; on Linux the policy belongs to the thread, and the threads ggml
/// starts for a decode inherit it. Best effort: where it is refused the thread stays as it was.
pub fn lower_thread_priority() {
    #[cfg(target_os = "linux")]
    {
        let param = libc::sched_param { sched_priority: 0 };
        // SAFETY: `pid = 0` is the calling thread; `param` is a live sched_param.
        let rc = unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) };
        if rc != 0 {
            tracing::debug!(error = %std::io::Error::last_os_error(), "could not lower transcription priority");
        }
    }
}

/// Loads and checks a ggml model (the server's pool and `civicline model transcribe` share it).
pub fn load_model(path: &Path) -> Result<Arc<WhisperContext>, TranscribeError> {
    let model_error = |reason: String| TranscribeError::Model {
        path: path.to_path_buf(),
        reason,
    };
    if !path.is_file() {
        return Err(model_error("not found (run scripts/fetch-model)".into()));
    }
    // Check the file ourselves first: whisper.cpp aborts the process on some corrupt files.
    crate::speech::model_import::verify(path).map_err(|e| model_error(e.to_string()))?;
    let path_text = path
        .to_str()
        .ok_or_else(|| model_error("path is not UTF-8".into()))?;
    // whisper.cpp prints every load and decode step (and the prompt, token by token) to stderr
    // unless told otherwise: route it through `tracing`, where it is filtered like our own logs.
    whisper_rs::install_logging_hooks();
    let context = WhisperContext::new_with_params(path_text, WhisperContextParameters::default())
        .map_err(|e| model_error(e.to_string()))?;
    Ok(Arc::new(context))
}

/// Reads an 8 kHz recording, resamples it to 16 kHz and transcribes it.
/// Transcribes one recording on a fresh whisper state. A state reused across clips is not
/// independent of them: with the encoder window sized to each clip, the same recording came
/// back as its words after one clip and as "[Music]" after another (measured with
/// `civicline model transcribe`; the session-4 note in BENCHMARKS.md). A state costs about
/// 2 ms to make (p50 in the speech_latency bench) against 0.8 s to decode, so every job gets
/// its own and a result depends on the recording alone.
pub fn transcribe_file(
    context: &WhisperContext,
    path: &Path,
    settings: &DecodeSettings,
) -> Result<String, TranscribeError> {
    let audio_error = |reason: String| TranscribeError::Audio {
        path: path.to_path_buf(),
        reason,
    };
    let reader = hound::WavReader::open(path).map_err(|e| audio_error(e.to_string()))?;
    let rate = reader.spec().sample_rate;
    let samples: Vec<f32> = reader
        .into_samples::<i16>()
        .map(|s| s.map(|v| v as f32 / 32768.0))
        .collect::<Result<_, _>>()
        .map_err(|e| audio_error(e.to_string()))?;
    let audio = if rate == 16_000 {
        samples
    } else {
        resample(&samples, rate as usize).map_err(audio_error)?
    };
    let audio = trim_leading_silence(&audio, 16_000);
    let strategy = if settings.beam_size > 1 {
        SamplingStrategy::BeamSearch {
            beam_size: settings.beam_size as i32,
            patience: -1.0,
        }
    } else {
        SamplingStrategy::Greedy { best_of: 1 }
    };
    let mut params = FullParams::new(strategy);
    if settings.audio_ctx_to_clip {
        // The encoder sees 1500 frames for 30 s (50 per second); a short clip needs fewer,
        // and the cost falls with them. A margin keeps the last words; margins from 0.5 to 2 s
        // scored alike on the speech corpus (25-26 categories and 14-15 addresses of 36, fresh
        // states, BENCHMARKS.md), so the smallest, the fastest, is used.
        let seconds = audio.len() as f64 / 16_000.0;
        let frames = ((seconds + 0.5) * 50.0).ceil() as i32;
        params.set_audio_ctx(frames.clamp(64, 1500));
    }
    // `[speech] threads` per worker; the pool's workers give parallelism between recordings.
    params.set_n_threads(settings.threads.max(1) as i32);
    params.set_language(Some("en"));
    params.set_single_segment(true);
    params.set_no_context(true);
    params.set_print_progress(false);
    params.set_print_realtime(false);
    params.set_print_special(false);
    params.set_print_timestamps(false);
    params.set_suppress_blank(true);
    if !settings.initial_prompt.is_empty() {
        params.set_initial_prompt(&settings.initial_prompt);
    }
    let mut state = context
        .create_state()
        .map_err(|e| TranscribeError::Whisper(e.to_string()))?;
    state
        .full(params, audio)
        .map_err(|e| TranscribeError::Whisper(e.to_string()))?;
    let mut text = String::new();
    for i in 0..state.full_n_segments() {
        if let Some(segment) = state.get_segment(i) {
            text.push_str(&segment.to_str_lossy().unwrap_or_default());
        }
    }
    Ok(text.trim().to_string())
}

/// How much quiet to keep before the first loud frame.
const LEAD_IN_S: f64 = 0.3;

/// Drops the quiet before the caller starts speaking, keeping `LEAD_IN_S`. A call's recording
/// starts at the tone, and the caller may take a second or two to begin: tiny.en heard a
/// recording with 0.9 s of leading silence as "[Music]" and the same words with 0.3 s as "Park
/// hole in front of 1 25 Main Street" (tests/speech_calls.rs). "Loud" is relative to the
/// loudest 10 ms frame (35 dB below it, and never below -55 dBFS), so line noise under the
/// speech is not mistaken for it and a steady noise floor is kept whole. The recording on disk
/// keeps everything.
pub fn trim_leading_silence(samples: &[f32], rate: usize) -> &[f32] {
    let frame = (rate / 100).max(1);
    let rms =
        |chunk: &[f32]| (chunk.iter().map(|s| s * s).sum::<f32>() / chunk.len() as f32).sqrt();
    let loudest = samples.chunks(frame).map(rms).fold(0.0f32, f32::max);
    let threshold = (loudest * 10f32.powf(-35.0 / 20.0)).max(10f32.powf(-55.0 / 20.0));
    let Some(first) = samples.chunks(frame).position(|c| rms(c) >= threshold) else {
        return samples;
    };
    let keep = (LEAD_IN_S * rate as f64) as usize;
    &samples[(first * frame).saturating_sub(keep)..]
}

fn resample(samples: &[f32], rate: usize) -> Result<Vec<f32>, String> {
    const CHUNK: usize = 1024;
    let mut resampler =
        rubato::FftFixedIn::<f32>::new(rate, 16_000, CHUNK, 1, 1).map_err(|e| e.to_string())?;
    let mut out = Vec::with_capacity(samples.len() * 16_000 / rate + CHUNK * 4);
    for chunk in samples.chunks(CHUNK) {
        let mut block = chunk.to_vec();
        block.resize(CHUNK, 0.0);
        let processed = resampler
            .process(&[block], None)
            .map_err(|e| e.to_string())?;
        if let Some(channel) = processed.first() {
            out.extend_from_slice(channel);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tone(seconds: f64, amplitude: f32) -> Vec<f32> {
        (0..(seconds * 16_000.0) as usize)
            .map(|i| amplitude * (i as f32 * 0.2).sin())
            .collect()
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_transcription_thread_runs_below_the_media_threads() {
        // SAFETY: `pid = 0` is the calling thread.
        let policy_of_this_thread = || unsafe { libc::sched_getscheduler(0) };
        let (before, after) = std::thread::spawn(move || {
            let before = policy_of_this_thread();
            lower_thread_priority();
            (before, policy_of_this_thread())
        })
        .join()
        .unwrap();
        assert_eq!(before, libc::SCHED_OTHER);
        assert_eq!(after, libc::SCHED_IDLE);
        // Only that thread: the policy is per thread on Linux.
        assert_eq!(policy_of_this_thread(), libc::SCHED_OTHER);
    }

    #[test]
    fn leading_silence_is_cut_to_the_lead_in() {
        let mut audio = vec![0.0; 32_000];
        audio.extend(tone(1.0, 0.3));
        audio.extend(vec![0.0; 8_000]);
        let trimmed = trim_leading_silence(&audio, 16_000);
        assert_eq!(trimmed.len(), 4_800 + 16_000 + 8_000);
        assert!(trimmed[..4_800].iter().all(|s| *s == 0.0));
    }

    #[test]
    fn a_noise_floor_under_the_speech_is_not_trimmed_and_silence_alone_is_kept() {
        // Noise 25 dB under the speech is "loud" (within 35 dB): nothing is cut.
        let mut audio = tone(2.0, 0.3 * 10f32.powf(-25.0 / 20.0));
        audio.extend(tone(1.0, 0.3));
        assert_eq!(trim_leading_silence(&audio, 16_000).len(), audio.len());
        let quiet = vec![0.0; 16_000];
        assert_eq!(trim_leading_silence(&quiet, 16_000).len(), quiet.len());
        // A clip that starts loud loses nothing.
        let loud = tone(1.0, 0.3);
        assert_eq!(trim_leading_silence(&loud, 16_000).len(), loud.len());
    }
}
