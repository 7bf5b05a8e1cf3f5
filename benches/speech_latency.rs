//! Speech latency benchmark: the real model through the server's speech stage
//! (`runtime::speech::SpeechService`: whisper pool, draft, SQLite store), timed from the moment a
//! recording is handed over (end of speech) to its draft stored. Prints p50/p95 for a 10 s
//! utterance on an idle stage and throughput, for the default (1 worker with 2 ggml threads)
//! and for 1 and 2 workers of one thread each; the queue wait when 10 and 50 callers finish
//! speaking at once (default, and 2 workers x 1 thread); and what making a fresh whisper state
//! costs. Issue target: p95 under 1.5 s for a 10 s utterance idle.
//!
//! Run: `scripts/fetch-model && cargo bench --bench speech_latency` (about 5 minutes on 2 cores).
#![allow(clippy::disallowed_methods)] // a benchmark measures wall time

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use civicline::runtime::speech::{DraftStored, SpeechService, SpeechSettings};
use civicline::runtime::store::Store;
use civicline::runtime::transcriber::DecodeSettings;
use tokio::sync::mpsc;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// About 10 s of corpus speech (two reports back to back), as one 8 kHz WAV.
fn ten_second_clip(root: &Path, out: &Path) -> f64 {
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: 8000,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut samples: Vec<i16> = Vec::new();
    for id in ["pothole-2", "water_leak-3", "graffiti-3", "noise-3"] {
        let reader =
            hound::WavReader::open(root.join(format!("tests/speech/corpus/{id}.wav"))).unwrap();
        samples.extend(reader.into_samples::<i16>().map(Result::unwrap));
        if samples.len() >= 80_000 {
            break;
        }
    }
    samples.truncate(80_000);
    let mut writer = hound::WavWriter::create(out, spec).unwrap();
    for s in &samples {
        writer.write_sample(*s).unwrap();
    }
    writer.finalize().unwrap();
    samples.len() as f64 / 8000.0
}

struct Stage {
    service: SpeechService,
    stored: mpsc::UnboundedReceiver<DraftStored>,
    _answers: mpsc::Receiver<civicline::engine::Input>,
}

async fn stage(root: &Path, model: &Path, workers: usize, threads: usize, dir: &Path) -> Stage {
    let store = Store::connect(&format!(
        "sqlite://{}?mode=rwc",
        dir.join(format!("bench-{workers}x{threads}.db")).display()
    ))
    .await
    .unwrap();
    let (answers_tx, answers) = mpsc::channel(1024);
    let (observer, stored) = mpsc::unbounded_channel();
    let defaults = civicline::config::SpeechConfig::default();
    let service = SpeechService::start(
        &SpeechSettings {
            model: model.to_path_buf(),
            workers,
            queue: 64,
            categories: root.join("routing-rules/categories.toml"),
            streets: root.join("routing-rules/streets.txt"),
            min_confidence: defaults.min_confidence,
            decode: DecodeSettings {
                beam_size: defaults.beam_size,
                audio_ctx_to_clip: defaults.audio_ctx_to_clip,
                threads,
                background_priority: defaults.background_priority,
                ..Default::default()
            },
        },
        store,
        answers_tx,
        Some(observer),
    )
    .unwrap();
    assert_eq!(service.health().mode, "ok", "{:?}", service.health().reason);
    Stage {
        service,
        stored,
        _answers: answers,
    }
}

/// `callers` recordings handed over at once; returns (totals, queue waits, wall time).
async fn burst(
    stage: &mut Stage,
    clip: &Path,
    callers: usize,
) -> (Vec<Duration>, Vec<Duration>, Duration) {
    let started = Instant::now();
    for n in 0..callers {
        // Each caller has its own file (the drafts table is keyed by recording).
        let copy = clip.with_file_name(format!("caller-{n}-{}.wav", started.elapsed().as_nanos()));
        std::fs::copy(clip, &copy).unwrap();
        stage
            .service
            .submit(format!("bench-{n}"), copy.display().to_string());
    }
    let (mut totals, mut waits) = (Vec::new(), Vec::new());
    for _ in 0..callers {
        let done = stage.stored.recv().await.unwrap();
        totals.push(done.timings.total);
        waits.push(done.timings.queue_wait);
    }
    totals.sort();
    waits.sort();
    (totals, waits, started.elapsed())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let model = std::env::var("CIVICLINE_TEST_MODEL")
        .map(PathBuf::from)
        .unwrap_or_else(|_| root.join("data/models/ggml-tiny.en.bin"));
    assert!(
        model.is_file(),
        "{} missing: run scripts/fetch-model",
        model.display()
    );
    let dir = tempfile::tempdir().unwrap();
    let clip = dir.path().join("ten-seconds.wav");
    let seconds = ten_second_clip(root, &clip);
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;

    // The server's default (`[speech] workers = 1, threads = 2`), then one thread per worker.
    let default = civicline::config::SpeechConfig::default();
    let mut one = stage(root, &model, 1, default.threads, dir.path()).await;
    let label = format!("1 worker x {} threads", default.threads);
    idle_and_throughput(&mut one, &clip, &label, seconds).await;
    burst_waits(&mut one, &clip, &label).await;
    drop(one);
    // What a fresh whisper state per recording costs (runtime/transcriber.rs makes one per job).
    let context = civicline::runtime::transcriber::load_model(&model).unwrap();
    let mut creates: Vec<Duration> = (0..20)
        .map(|_| {
            let started = Instant::now();
            let state = context.create_state().unwrap();
            let took = started.elapsed();
            drop(state);
            took
        })
        .collect();
    creates.sort();
    println!(
        "fresh whisper state per recording: created in p50 {:.1} ms, max {:.1} ms (20 runs)",
        ms(percentile(&creates, 0.5)),
        ms(*creates.last().unwrap())
    );
    drop(context);
    let mut single = stage(root, &model, 1, 1, dir.path()).await;
    idle_and_throughput(&mut single, &clip, "1 worker x 1 thread", seconds).await;
    drop(single);
    let mut two = stage(root, &model, 2, 1, dir.path()).await;
    let (_, _, wall) = burst(&mut two, &clip, 6).await;
    println!(
        "throughput, 2 workers x 1 thread: {:.2} utterances/s ({:.1} s of speech per wall second)",
        6.0 / wall.as_secs_f64(),
        6.0 * seconds / wall.as_secs_f64()
    );
    burst_waits(&mut two, &clip, "2 workers x 1 thread").await;
}

/// End of speech to stored draft for one caller at a time (12 runs), then throughput for 6
/// callers at once.
async fn idle_and_throughput(stage: &mut Stage, clip: &Path, label: &str, seconds: f64) {
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let mut idle = Vec::new();
    for _ in 0..12 {
        let (totals, _, _) = burst(stage, clip, 1).await;
        idle.extend(totals);
    }
    idle.sort();
    println!(
        "idle, {label}, {seconds:.1} s utterance, 12 runs: end of speech -> stored draft p50 {:.0} ms, p95 {:.0} ms",
        ms(percentile(&idle, 0.5)),
        ms(percentile(&idle, 0.95))
    );
    let (_, _, wall) = burst(stage, clip, 6).await;
    println!(
        "throughput, {label}: {:.2} utterances/s ({:.1} s of speech per wall second)",
        6.0 / wall.as_secs_f64(),
        6.0 * seconds / wall.as_secs_f64()
    );
}

/// Queue wait and time to the stored draft when 10, then 50 callers finish speaking at once.
async fn burst_waits(stage: &mut Stage, clip: &Path, label: &str) {
    for callers in [10, 50] {
        let (totals, waits, _) = burst(stage, clip, callers).await;
        println!(
            "{callers} callers at once, {label}: queue wait p50 {:.1} s, p95 {:.1} s, max {:.1} s; stored draft p50 {:.1} s, p95 {:.1} s",
            percentile(&waits, 0.5).as_secs_f64(),
            percentile(&waits, 0.95).as_secs_f64(),
            waits.last().unwrap().as_secs_f64(),
            percentile(&totals, 0.5).as_secs_f64(),
            percentile(&totals, 0.95).as_secs_f64()
        );
    }
}
