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
use civicline::speech::case_draft::{Categories, StreetList};

/// The server's decode settings: its defaults and the initial prompt from the city's data.
fn server_settings(root: &Path) -> DecodeSettings {
    let categories = Categories::load(&root.join("routing-rules/categories.toml")).unwrap();
    let streets = StreetList::load(&root.join("routing-rules/streets.txt")).unwrap();
    // One ggml thread: tests run side by side on two cores.
    let speech = civicline::config::SpeechConfig {
        threads: 1,
        ..Default::default()
    };
    DecodeSettings::for_server(&speech, &categories, &streets)
}

#[test]
fn corpus_categories_and_addresses_with_the_real_model() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let model = common::speech_model();
    let settings = server_settings(root);
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

/// A transcript depends on the recording alone, not on what was decoded before it: with one
/// whisper state reused and the encoder window sized to each clip, the same words came back
/// differently after a longer clip (the leak BENCHMARKS.md's speech section describes).
#[test]
fn a_transcript_does_not_depend_on_the_clip_before_it() {
    use civicline::runtime::transcriber::{load_model, transcribe_file};
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let context = load_model(&common::speech_model()).unwrap();
    let settings = server_settings(root);
    let corpus = root.join("tests/speech/corpus");
    // Pairs that came back differently after each other with a reused state.
    let clips = [
        "abandoned_vehicle-2",
        "abandoned_vehicle-3",
        "rodents-2",
        "rodents-3",
    ];
    let alone: Vec<String> = clips
        .iter()
        .map(|c| transcribe_file(&context, &corpus.join(format!("{c}.wav")), &settings).unwrap())
        .collect();
    // The same clips again, each after a different predecessor (reverse order).
    for (i, clip) in clips.iter().enumerate().rev() {
        let again =
            transcribe_file(&context, &corpus.join(format!("{clip}.wav")), &settings).unwrap();
        assert_eq!(again, alone[i], "{clip}");
    }
}

/// `civicline model transcribe` prints the transcript and the draft the server would make.
#[test]
fn the_transcribe_command_prints_transcript_and_draft() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let config = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        config.path(),
        format!(
            "[speech]\nmodel = {:?}\nthreads = 1\nbackground_priority = false\n",
            common::speech_model()
        ),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_civicline"))
        .current_dir(root)
        .args(["model", "transcribe", "--config"])
        .arg(config.path())
        .arg("tests/media/speech_pothole.wav")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("transcript: "), "{text}");
    assert!(
        text.contains("category pothole, address 125 Main Street"),
        "{text}"
    );
}
