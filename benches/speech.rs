//! Speech accuracy benchmark: the real imported Whisper model (never a mock) on the speech corpus
//! (tests/speech/: 36 utterances from espeak-ng, several voices, speeds and noise levels, through
//! an 8 kHz mu-law phone path); each transcript becomes a case draft, compared with its
//! expectation. Prints every transcript, category and address accuracy, and time per utterance.
//! Issue targets: 90 % categories, 80 % addresses (not met yet: see BENCHMARKS.md).
//!
//! Run: `scripts/fetch-model && cargo bench --bench speech` (`-- --no-prompt` decodes without the
//! street/category initial prompt). The model path can be set with `CIVICLINE_TEST_MODEL`.
#![allow(clippy::disallowed_methods)] // a benchmark measures wall time

use std::path::{Path, PathBuf};

use civicline::runtime::transcriber::{transcribe_file, DecodeSettings};
use civicline::speech::case_draft::{draft, initial_prompt, Categories, StreetList};
use serde::Deserialize;

#[derive(Deserialize)]
struct Corpus {
    utterance: Vec<Utterance>,
}

#[derive(Deserialize)]
struct Utterance {
    id: String,
    category: String,
    number: Option<u32>,
    street: Option<String>,
}

fn model() -> PathBuf {
    let path = std::env::var("CIVICLINE_TEST_MODEL")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("data/models/ggml-tiny.en.bin")
        });
    assert!(
        path.is_file(),
        "{} missing: run scripts/fetch-model (scripts/test does)",
        path.display()
    );
    path
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let no_prompt = args.iter().any(|a| a == "--no-prompt");
    let flag = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .and_then(|v| v.parse::<u32>().ok())
    };
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let corpus: Corpus =
        toml::from_str(&std::fs::read_to_string(root.join("tests/speech/corpus.toml")).unwrap())
            .unwrap();
    assert!(corpus.utterance.len() >= 30);
    let categories = Categories::load(&root.join("routing-rules/categories.toml")).unwrap();
    let streets = StreetList::load(&root.join("routing-rules/streets.txt")).unwrap();
    let settings = DecodeSettings {
        initial_prompt: if no_prompt {
            String::new()
        } else {
            initial_prompt(&categories, &streets)
        },
        beam_size: flag("--beam").unwrap_or(0),
        audio_ctx_to_clip: args.iter().any(|a| a == "--audio-ctx"),
    };
    let model = model();
    let context = whisper_rs::WhisperContext::new_with_params(
        model.to_str().unwrap(),
        whisper_rs::WhisperContextParameters::default(),
    )
    .unwrap();
    let mut state = context.create_state().unwrap();
    let (mut category_ok, mut address_ok) = (0, 0);
    let mut report = Vec::new();
    let started = std::time::Instant::now();
    for u in &corpus.utterance {
        let wav = root
            .join("tests/speech/corpus")
            .join(format!("{}.wav", u.id));
        let text = transcribe_file(&mut state, &wav, &settings).unwrap();
        let d = draft(&text, &categories, &streets);
        let category_right = d.category.as_deref() == Some(u.category.as_str());
        let address_right = match (&u.street, &d.address) {
            (Some(street), Some(a)) => {
                &a.street == street && (u.number.is_none() || a.number == u.number)
            }
            (None, None) => true,
            _ => false,
        };
        category_ok += usize::from(category_right);
        address_ok += usize::from(address_right);
        report.push(format!(
            "{:<22} {} {} {:?} -> {:?} {:?}",
            u.id,
            if category_right { "cat ok " } else { "CAT BAD" },
            if address_right {
                "addr ok "
            } else {
                "ADDR BAD"
            },
            text,
            d.category,
            d.address.map(|a| (a.number, a.street))
        ));
    }
    let n = corpus.utterance.len();
    let summary = format!(
        "initial prompt: {}; category {category_ok}/{n} ({:.0} %), address {address_ok}/{n} ({:.0} %), {:.2} s per utterance on one thread",
        if no_prompt { "off" } else { "on" },
        category_ok as f64 * 100.0 / n as f64,
        address_ok as f64 * 100.0 / n as f64,
        started.elapsed().as_secs_f64() / n as f64
    );
    println!("{}\n{summary}", report.join("\n"));
}
