//! The speech corpus evaluation shared by the accuracy test (tests/speech_model.rs) and the
//! benchmark (benches/speech.rs): every utterance of tests/speech/corpus.toml through the real
//! model with the server's decode settings, turned into a draft and compared with what was said.

use std::path::Path;
use std::time::{Duration, Instant};

use serde::Deserialize;

use super::transcriber::{transcribe_file, DecodeSettings};
use crate::speech::case_draft::{draft, Categories, StreetList};

#[derive(Deserialize)]
struct Corpus {
    utterance: Vec<Utterance>,
}

#[derive(Deserialize)]
struct Utterance {
    id: String,
    text: String,
    category: String,
    number: Option<u32>,
    street: Option<String>,
}

/// The outcome over the corpus.
pub struct CorpusReport {
    /// One line per utterance: id, verdicts, transcript, draft.
    pub lines: Vec<String>,
    pub utterances: usize,
    pub category_right: usize,
    pub address_right: usize,
    /// Words said, and word errors (substitutions, deletions, insertions) in the transcripts.
    pub words: usize,
    pub word_errors: usize,
    pub elapsed: Duration,
}

impl CorpusReport {
    pub fn word_error_rate(&self) -> f64 {
        self.word_errors as f64 / self.words.max(1) as f64
    }
    pub fn summary(&self) -> String {
        let pct = |n: usize| 100.0 * n as f64 / self.utterances.max(1) as f64;
        format!(
            "utterances {}; word error rate {:.1} %; category {}/{} ({:.0} %); address {}/{} ({:.0} %); {:.2} s per utterance",
            self.utterances,
            100.0 * self.word_error_rate(),
            self.category_right,
            self.utterances,
            pct(self.category_right),
            self.address_right,
            self.utterances,
            pct(self.address_right),
            self.elapsed.as_secs_f64() / self.utterances.max(1) as f64
        )
    }
}

/// Words for WER: lowercase letters and digits, punctuation dropped.
fn normal_words(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric() && c != '\'')
        .filter(|w| !w.is_empty())
        .map(|w| w.to_lowercase().replace('\'', ""))
        .collect()
}

/// Word-level edit distance.
pub fn word_errors(reference: &[String], heard: &[String]) -> usize {
    let mut row: Vec<usize> = (0..=heard.len()).collect();
    for (i, r) in reference.iter().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, h) in heard.iter().enumerate() {
            let substitution = diagonal + usize::from(r != h);
            diagonal = row[j + 1];
            row[j + 1] = substitution.min(row[j] + 1).min(row[j + 1] + 1);
        }
    }
    row[heard.len()]
}

/// Runs the corpus under `root` (the repository) through `model`.
pub fn evaluate(
    root: &Path,
    model: &Path,
    settings: &DecodeSettings,
) -> anyhow::Result<CorpusReport> {
    let corpus: Corpus = toml::from_str(&std::fs::read_to_string(
        root.join("tests/speech/corpus.toml"),
    )?)?;
    let categories = Categories::load(&root.join("routing-rules/categories.toml"))?;
    let streets = StreetList::load(&root.join("routing-rules/streets.txt"))?;
    whisper_rs::install_logging_hooks();
    let context = super::transcriber::load_model(model)?;
    let mut report = CorpusReport {
        lines: Vec::new(),
        utterances: corpus.utterance.len(),
        category_right: 0,
        address_right: 0,
        words: 0,
        word_errors: 0,
        elapsed: Duration::ZERO,
    };
    #[allow(clippy::disallowed_methods)] // timing the decoder is the point
    let started = Instant::now();
    for u in &corpus.utterance {
        let wav = root
            .join("tests/speech/corpus")
            .join(format!("{}.wav", u.id));
        let text = transcribe_file(&context, &wav, settings)?;
        let d = draft(&text, &categories, &streets);
        let category_right = d.category.as_deref() == Some(u.category.as_str());
        let address_right = match (&u.street, &d.address) {
            (Some(street), Some(a)) => {
                &a.street == street && (u.number.is_none() || a.number == u.number)
            }
            (None, None) => true,
            _ => false,
        };
        let said = normal_words(&u.text);
        report.words += said.len();
        report.word_errors += word_errors(&said, &normal_words(&text));
        report.category_right += usize::from(category_right);
        report.address_right += usize::from(address_right);
        report.lines.push(format!(
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
            d.address.map(|a| a.display())
        ));
    }
    report.elapsed = started.elapsed();
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn word_errors_count_edits() {
        let w = |s: &str| normal_words(s);
        assert_eq!(word_errors(&w("a big pothole"), &w("A big pothole.")), 0);
        assert_eq!(word_errors(&w("a big pothole"), &w("a pothole")), 1);
        assert_eq!(word_errors(&w("a big pothole"), &w("the big pot hole")), 3);
        assert_eq!(word_errors(&w("one"), &w("")), 1);
    }
}
