//! Speech accuracy benchmark: the real imported Whisper model (never a mock) on the speech corpus
//! (tests/speech/: 36 utterances from espeak-ng, several voices, speeds and noise levels, through
//! an 8 kHz mu-law phone path); each transcript becomes a case draft, compared with its
//! expectation. Prints every transcript, word error rate, category and address accuracy, and
//! time per utterance. Issue targets: 90 % categories, 80 % addresses (see BENCHMARKS.md).
//!
//! Run: `scripts/fetch-model && cargo bench --bench speech` (the server's settings: greedy,
//! encoder window sized to the clip, street/category initial prompt). Variants:
//! `-- --beam 5` (beam search), `-- --full-window`, `-- --no-prompt`, `-- --threads 2` (ggml
//! threads; 1 by default, so the time per utterance compares across runs). Model:
//! `CIVICLINE_TEST_MODEL`.

use std::path::{Path, PathBuf};

use civicline::runtime::speech_corpus::evaluate;
use civicline::runtime::transcriber::DecodeSettings;
use civicline::speech::case_draft::{initial_prompt, Categories, StreetList};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let flag = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .and_then(|v| v.parse::<u32>().ok())
    };
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let categories = Categories::load(&root.join("routing-rules/categories.toml")).unwrap();
    let streets = StreetList::load(&root.join("routing-rules/streets.txt")).unwrap();
    let no_prompt = args.iter().any(|a| a == "--no-prompt");
    let settings = DecodeSettings {
        initial_prompt: if no_prompt {
            String::new()
        } else {
            initial_prompt(&categories, &streets)
        },
        beam_size: flag("--beam").unwrap_or(civicline::config::SpeechConfig::default().beam_size),
        audio_ctx_to_clip: !args.iter().any(|a| a == "--full-window"),
        threads: flag("--threads").unwrap_or(1) as usize,
        // Decoded on this thread, not in the server's pool: the priority does not apply.
        background_priority: false,
    };
    let model = std::env::var("CIVICLINE_TEST_MODEL")
        .map(PathBuf::from)
        .unwrap_or_else(|_| root.join("data/models/ggml-tiny.en.bin"));
    assert!(
        model.is_file(),
        "{} missing: run scripts/fetch-model",
        model.display()
    );
    let report = evaluate(root, &model, &settings).unwrap();
    println!("{}", report.lines.join("\n"));
    println!(
        "beam {}, {} window, initial prompt {}, {} ggml thread(s): {}",
        settings.beam_size.max(1),
        if settings.audio_ctx_to_clip {
            "clip-sized"
        } else {
            "30 s"
        },
        if no_prompt { "off" } else { "on" },
        settings.threads.max(1),
        report.summary()
    );
}
