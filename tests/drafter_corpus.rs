//! The drafter on the words the speech corpus actually says (tests/speech/corpus.toml): with a
//! perfect transcript every utterance must give its category and address. The model's own
//! transcripts are measured by tests/speech_model.rs and `cargo bench --bench speech`; this
//! keeps recognition errors apart from drafting errors, and needs no model.

use std::path::Path;

use civicline::speech::case_draft::{draft, Categories, StreetList};

#[derive(serde::Deserialize)]
struct Corpus {
    utterance: Vec<Utterance>,
}

#[derive(serde::Deserialize)]
#[allow(dead_code)] // the audio fields are for scripts/make-speech-corpus
struct Utterance {
    id: String,
    text: String,
    category: String,
    number: Option<u32>,
    street: Option<String>,
    cross_street: Option<String>,
    voice: String,
    speed: u32,
    noise_db: Option<f64>,
}

#[test]
fn every_spoken_sentence_drafts_to_its_category_and_address() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let categories = Categories::load(&root.join("routing-rules/categories.toml")).unwrap();
    let streets = StreetList::load(&root.join("routing-rules/streets.txt")).unwrap();
    let corpus: Corpus =
        toml::from_str(&std::fs::read_to_string(root.join("tests/speech/corpus.toml")).unwrap())
            .unwrap();
    assert!(corpus.utterance.len() >= 30);
    let mut wrong = Vec::new();
    for u in &corpus.utterance {
        let d = draft(&u.text, &categories, &streets);
        let category_right = d.category.as_deref() == Some(u.category.as_str());
        let address_right = match (&u.street, &d.address) {
            (Some(street), Some(a)) => {
                &a.street == street && (u.number.is_none() || a.number == u.number)
            }
            (None, None) => true,
            _ => false,
        };
        if !(category_right && address_right) {
            wrong.push(format!(
                "{}: {:?} -> {:?} {:?}",
                u.id,
                u.text,
                d.category,
                d.address.map(|a| a.display())
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}
