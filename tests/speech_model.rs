//! The real imported Whisper model (never a mock) on the 36-utterance corpus of
//! tests/speech/ (scripts/make-speech-corpus: espeak-ng, five voices, several speeds and noise
//! levels, through an 8 kHz mu-law phone path), with the server's decode settings: category and
//! address of every draft against what was said. The targets (90 % category, 80 %
//! address) are NOT met by tiny.en on this corpus (BENCHMARKS.md has the figures); this test
//! holds the line at what is measured, so a regression in the importer, the decoder settings or
//! the drafter fails it.

mod common;

use std::path::Path;

use civicline::runtime::speech_corpus::evaluate;
use civicline::runtime::transcriber::DecodeSettings;
use civicline::speech::case_draft::{initial_prompt, Categories, StreetList};

#[test]
fn corpus_categories_and_addresses_with_the_real_model() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let model = common::speech_model();
    let categories = Categories::load(&root.join("routing-rules/categories.toml")).unwrap();
    let streets = StreetList::load(&root.join("routing-rules/streets.txt")).unwrap();
    let defaults = civicline::config::SpeechConfig::default();
    let settings = DecodeSettings {
        initial_prompt: initial_prompt(&categories, &streets),
        beam_size: defaults.beam_size,
        audio_ctx_to_clip: defaults.audio_ctx_to_clip,
    };
    let report = evaluate(root, &model, &settings).unwrap();
    println!("{}\n{}", report.lines.join("\n"), report.summary());
    assert!(report.utterances >= 30);
    // Floors a little under the measured figures (see BENCHMARKS.md), so a real regression
    // fails and decoder noise between machines does not.
    assert!(
        report.category_right * 100 >= report.utterances * 60,
        "{}",
        report.summary()
    );
    assert!(
        report.address_right * 100 >= report.utterances * 35,
        "{}",
        report.summary()
    );
    assert!(report.word_error_rate() < 0.95, "{}", report.summary());
}
