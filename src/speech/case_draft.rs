//! Case drafts from a caller's transcript, in pure code: the problem's category and department
//! (`routing-rules/categories.toml`), the place (house number and a street from
//! `routing-rules/streets.txt`), the cleaned text and a confidence in 0..1. Speech-to-text
//! errors ("PowerCave" for "Park Avenue", "part hole" for "pothole") are survived by fuzzy
//! matching on letters with spaces removed, on a rough phonetic key of the consonants and, for
//! streets, on a weighted edit distance between rough sounds ("Merch Street" is nearly "Birch
//! Street": vowels and sounds that differ in one feature cost less). Keywords also match with
//! a plural "s" either way and, when long, with their first letters swallowed ("ray painted").

use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

#[derive(Debug, thiserror::Error)]
pub enum RulesError {
    #[error("{path}:{line}: {reason}")]
    Invalid {
        path: PathBuf,
        line: usize,
        reason: String,
    },
}

/// What a keyword counts; a hint counts half.
const KEYWORD_WEIGHT: f64 = 1.0;
const HINT_WEIGHT: f64 = 0.5;
/// Below this score no category is chosen (one hint alone is just enough).
const MIN_CATEGORY_SCORE: f64 = 0.5;
/// A category score at or above this is full strength.
const FULL_CATEGORY_SCORE: f64 = 1.3;
/// A street right after a house number is accepted from this similarity.
const ANCHORED_MIN: f64 = 0.72;
/// A street with no house number needs more: this similarity, and a suffix word or a
/// preposition before it ("on", "at", "of" ...).
const FREE_MIN: f64 = 0.85;
/// ... or this one when the street's own suffix is heard after it ("Ashe Street").
const FREE_MIN_SUFFIXED: f64 = 0.75;
/// The second street of a crossing ("X and Y").
const CROSS_MIN: f64 = 0.8;
/// The most words a street name is looked for in (more if a name is longer).
const MAX_STREET_WORDS: usize = 6;
/// Similarities below this are taken as 0 (every threshold is above it).
const SIMILARITY_FLOOR: f64 = 0.6;
/// Longest initial prompt, in characters (about 175 Whisper tokens).
const PROMPT_MAX_CHARS: usize = 700;

/// Street suffixes: the spelled-out word first, then the abbreviations a transcript may show.
const SUFFIXES: &[&[&str]] = &[
    &["street", "st", "str"],
    &["avenue", "ave", "av"],
    &["boulevard", "blvd", "boul"],
    &["road", "rd"],
    &["drive", "dr"],
    &["lane", "ln"],
    &["court", "ct"],
    &["place", "pl"],
    &["way"],
    &["parkway", "pkwy"],
    &["terrace", "ter"],
    &["circle", "cir"],
    &["highway", "hwy"],
    &["square", "sq"],
    &["trail", "trl"],
];

/// Words no street name starts with: a window starting with one is not a street.
const NOT_A_START: &[&str] = &[
    "a", "an", "the", "on", "at", "of", "in", "to", "and", "or", "is", "it", "by", "for", "from",
    "near", "down", "up", "over", "off", "my", "our", "this", "that", "there", "am", "pm",
    "oclock", "minutes", "hours", "days", "weeks", "months", "years", "times",
];

/// Words after which a street name may stand without a suffix ("on Elm", "corner of Elm").
const LOCATIVES: &[&str] = &[
    "on", "at", "of", "near", "along", "off", "by", "onto", "from", "to", "and", "across",
    "between",
];

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CategoriesFile {
    #[serde(default, rename = "category")]
    categories: Vec<CategoryFile>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CategoryFile {
    id: Spanned<String>,
    name_en: Spanned<String>,
    name_es: Spanned<String>,
    department: Spanned<String>,
    weight: Option<Spanned<f64>>,
    keywords: Spanned<Vec<Spanned<String>>>,
    #[serde(default)]
    hints: Vec<Spanned<String>>,
}

/// Letters of one or more words joined without spaces, their count, their phonetic key and
/// their sounds (`sounds`) with the sounds' weighted length.
#[derive(Debug, Clone, PartialEq)]
struct Form {
    letters: String,
    chars: usize,
    key: String,
    sounds: Vec<u8>,
    sounds_len: f64,
}

impl Form {
    fn new(letters: String) -> Form {
        let key = phonetic_key(&letters);
        let sounds = sounds(&letters);
        Form {
            chars: letters.chars().count(),
            sounds_len: sounds.iter().map(|&s| sound_weight(s)).sum(),
            sounds,
            letters,
            key,
        }
    }
}

/// A keyword or hint: its letters joined, the same with each word's plural "s" dropped (`stem`),
/// how many letters and words, and what it counts.
#[derive(Debug, Clone)]
struct Phrase {
    letters: String,
    stem: String,
    chars: usize,
    words: usize,
    weight: f64,
}

#[derive(Debug, Clone)]
struct Category {
    id: String,
    name_en: String,
    name_es: String,
    department: String,
    weight: f64,
    /// The first keyword as written, for the recognizer's prompt.
    lead: String,
    phrases: Vec<Phrase>,
}

/// The validated categories of `categories.toml`, in file order.
#[derive(Debug, Clone)]
pub struct Categories {
    list: Vec<Category>,
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

impl Categories {
    pub fn load(path: &Path) -> Result<Self, RulesError> {
        let text = std::fs::read_to_string(path).map_err(|e| RulesError::Invalid {
            path: path.to_path_buf(),
            line: 0,
            reason: format!("cannot read: {e}"),
        })?;
        Categories::parse(&text, path)
    }

    pub fn parse(text: &str, path: &Path) -> Result<Self, RulesError> {
        let err = |offset: usize, reason: String| RulesError::Invalid {
            path: path.to_path_buf(),
            line: line_of(text, offset),
            reason,
        };
        let file: CategoriesFile = toml::from_str(text).map_err(|e| {
            let offset = e.span().map(|s| s.start).unwrap_or(0);
            err(offset, e.message().to_string())
        })?;
        if file.categories.is_empty() {
            return Err(err(0, "no [[category]] table".into()));
        }
        let mut list: Vec<Category> = Vec::new();
        for c in file.categories {
            let id = c.id.get_ref();
            if id.is_empty()
                || !id
                    .chars()
                    .all(|ch| ch.is_ascii_lowercase() || ch.is_ascii_digit() || ch == '_')
            {
                return Err(err(
                    c.id.span().start,
                    format!("category id {id:?} must be lowercase letters, digits and `_`"),
                ));
            }
            if list.iter().any(|known| known.id == *id) {
                return Err(err(
                    c.id.span().start,
                    format!("duplicate category id {id:?}"),
                ));
            }
            for (key, value) in [
                ("name_en", &c.name_en),
                ("name_es", &c.name_es),
                ("department", &c.department),
            ] {
                if value.get_ref().trim().is_empty() {
                    return Err(err(value.span().start, format!("{key} is empty")));
                }
            }
            let weight = match &c.weight {
                Some(w) if !(w.get_ref().is_finite() && *w.get_ref() > 0.0) => {
                    return Err(err(
                        w.span().start,
                        format!("weight {} must be a positive number", w.get_ref()),
                    ));
                }
                Some(w) => *w.get_ref(),
                None => 1.0,
            };
            if c.keywords.get_ref().is_empty() {
                return Err(err(
                    c.keywords.span().start,
                    format!("category {id:?} has an empty keyword list"),
                ));
            }
            let mut phrases: Vec<Phrase> = Vec::new();
            let mut seen: Vec<&str> = Vec::new();
            let all = c
                .keywords
                .get_ref()
                .iter()
                .map(|k| (k, KEYWORD_WEIGHT))
                .chain(c.hints.iter().map(|k| (k, HINT_WEIGHT)));
            for (word, weight) in all {
                let raw = word.get_ref().as_str();
                let at = word.span().start;
                if raw.trim().is_empty() {
                    return Err(err(at, "empty keyword".into()));
                }
                if raw != raw.trim() || raw.contains("  ") {
                    return Err(err(at, format!("keyword {raw:?} has stray spaces")));
                }
                if raw != raw.to_lowercase() {
                    return Err(err(at, format!("keyword {raw:?} must be lowercase")));
                }
                if !raw
                    .chars()
                    .all(|ch| ch.is_alphanumeric() || ch == ' ' || ch == '\'')
                {
                    return Err(err(
                        at,
                        format!("keyword {raw:?} may hold only letters, digits, spaces and '"),
                    ));
                }
                if seen.contains(&raw) {
                    return Err(err(at, format!("duplicate keyword {raw:?} in {id:?}")));
                }
                seen.push(raw);
                let words = tokens(raw);
                let letters = words.concat();
                phrases.push(Phrase {
                    chars: letters.chars().count(),
                    stem: stem_of(&words),
                    letters,
                    words: words.len(),
                    weight,
                });
            }
            list.push(Category {
                id: id.clone(),
                name_en: c.name_en.get_ref().trim().to_string(),
                name_es: c.name_es.get_ref().trim().to_string(),
                department: c.department.get_ref().trim().to_string(),
                weight,
                lead: c.keywords.get_ref()[0].get_ref().clone(),
                phrases,
            });
        }
        Ok(Categories { list })
    }

    /// Category ids in file order.
    pub fn ids(&self) -> Vec<&str> {
        self.list.iter().map(|c| c.id.as_str()).collect()
    }

    /// The department that owns a category.
    pub fn department(&self, id: &str) -> Option<&str> {
        self.get(id).map(|c| c.department.as_str())
    }

    /// A category's display name: `language` "es" gives Spanish, anything else English.
    pub fn name(&self, id: &str, language: &str) -> Option<&str> {
        self.get(id).map(|c| match language {
            "es" => c.name_es.as_str(),
            _ => c.name_en.as_str(),
        })
    }

    fn get(&self, id: &str) -> Option<&Category> {
        self.list.iter().find(|c| c.id == id)
    }
}

#[derive(Debug, Clone)]
struct Street {
    /// Base names: "park"; "martinlutherkingjr", "martinlutherking", "mlk"; "5th", "fifth".
    bases: Vec<Form>,
    /// Index into `SUFFIXES`; `None` for a name like "Broadway".
    suffix: Option<usize>,
    /// Each base joined with each spelling of the suffix: "parkavenue", "parkave" ...
    full: Vec<Form>,
}

/// The city's street names (`streets.txt`), in file order.
#[derive(Debug, Clone)]
pub struct StreetList {
    names: Vec<String>,
    streets: Vec<Street>,
    /// The most words a street is looked for in: 6, or one more than the longest name.
    max_words: usize,
    /// First words of names that are also in `NOT_A_START` ("The Strand"): allowed after all.
    leading_stop_words: Vec<String>,
}

impl StreetList {
    /// One name per line; blank lines and lines starting with `#` are skipped, and so is a
    /// repeated name.
    pub fn parse(text: &str) -> Self {
        let mut names: Vec<String> = Vec::new();
        let mut streets = Vec::new();
        let mut max_words = MAX_STREET_WORDS;
        let mut leading_stop_words = Vec::new();
        for line in text.lines() {
            let name = line.split_whitespace().collect::<Vec<_>>().join(" ");
            if name.is_empty()
                || name.starts_with('#')
                || names.iter().any(|n| n.eq_ignore_ascii_case(&name))
            {
                continue;
            }
            let words = tokens(&name);
            let Some(street) = Street::new(&words) else {
                continue;
            };
            max_words = max_words.max(words.len() + 1);
            if NOT_A_START.contains(&words[0].as_str()) && !leading_stop_words.contains(&words[0]) {
                leading_stop_words.push(words[0].clone());
            }
            names.push(name);
            streets.push(street);
        }
        StreetList {
            names,
            streets,
            max_words,
            leading_stop_words,
        }
    }

    pub fn load(path: &Path) -> Result<Self, RulesError> {
        let text = std::fs::read_to_string(path).map_err(|e| RulesError::Invalid {
            path: path.to_path_buf(),
            line: 0,
            reason: format!("cannot read: {e}"),
        })?;
        Ok(StreetList::parse(&text))
    }

    /// Canonical names, in file order.
    pub fn names(&self) -> &[String] {
        &self.names
    }
}

impl Street {
    /// From a name's words (`tokens`).
    fn new(words: &[String]) -> Option<Street> {
        if words.is_empty() {
            return None;
        }
        let (base, suffix) = match words.split_last() {
            Some((last, rest)) if !rest.is_empty() => match suffix_exact(last) {
                Some(k) => (rest.to_vec(), Some(k)),
                None => (words.to_vec(), None),
            },
            _ => (words.to_vec(), None),
        };
        let mut bases = vec![base.concat()];
        let plain: Vec<&String> = base
            .iter()
            .filter(|w| !matches!(w.as_str(), "jr" | "junior" | "sr" | "senior"))
            .collect();
        if plain.len() < base.len() {
            bases.push(plain.iter().map(|w| w.as_str()).collect());
        }
        if plain.len() >= 3 {
            bases.push(plain.iter().filter_map(|w| w.chars().next()).collect());
        }
        if let [only] = base.as_slice() {
            if let Some(word) = ordinal_word_of(only) {
                bases.push(word);
            }
        }
        let bases: Vec<Form> = bases.into_iter().map(Form::new).collect();
        let full = match suffix {
            Some(k) => bases
                .iter()
                .flat_map(|b| {
                    SUFFIXES[k]
                        .iter()
                        .map(move |s| Form::new(format!("{}{s}", b.letters)))
                })
                .collect(),
            None => Vec::new(),
        };
        Some(Street {
            bases,
            suffix,
            full,
        })
    }
}

/// A street matched in a transcript.
#[derive(Debug, Clone, PartialEq)]
pub struct Address {
    pub number: Option<u32>,
    /// Canonical name from the street list.
    pub street: String,
    /// Similarity of the heard words to the street name, 0..1.
    pub score: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct CaseDraft {
    /// Category id, `None` when nothing in the transcript points at one.
    pub category: Option<String>,
    pub department: Option<String>,
    pub address: Option<Address>,
    /// The transcript, cleaned; a crossing's two streets are named after it.
    pub description: String,
    /// 0..1: how far the draft can be trusted without a person reading it.
    pub confidence: f64,
}

impl Address {
    /// "125 Main Street", or the street alone.
    pub fn display(&self) -> String {
        match self.number {
            Some(n) => format!("{n} {}", self.street),
            None => self.street.clone(),
        }
    }
}

/// What the call flow makes of a draft: a category it is sure of, words a person should read,
/// or nothing worth filing. Silence and noise come back from Whisper as nothing, a bracketed
/// annotation ("[BLANK_AUDIO]", "(static)") or a couple of stray words; a draft with neither
/// category nor address and fewer than three words is treated as empty.
pub fn outcome(
    transcript: &str,
    draft: &CaseDraft,
    min_confidence: f64,
) -> crate::ivr::DraftOutcome {
    use crate::ivr::DraftOutcome;
    let spoken = strip_annotations(transcript);
    let words = spoken
        .split(|c: char| !c.is_alphanumeric() && c != '\'')
        .filter(|w| !w.is_empty())
        .count();
    match &draft.category {
        Some(category) if draft.confidence >= min_confidence => DraftOutcome::Understood {
            category: category.clone(),
        },
        None if draft.address.is_none() && words < 3 => DraftOutcome::Empty,
        _ => DraftOutcome::LowConfidence,
    }
}

/// Drafts a case from a transcript.
pub fn draft(transcript: &str, categories: &Categories, streets: &StreetList) -> CaseDraft {
    let clean = clean_text(transcript);
    let words = tokens(&clean);

    let (category, category_confidence) = match classify(&words, categories) {
        Some((c, confidence)) => (Some(c), confidence),
        None => (None, 0.0),
    };
    let place = locate(&words, streets);

    let mut description = clean;
    let mut address_confidence = 0.0;
    let address = place.map(|p| {
        let first = streets.names[p.street].clone();
        if let Some(second) = p.cross {
            description.push_str(&format!(
                " (cross streets: {first} and {})",
                streets.names[second]
            ));
        }
        address_confidence = p.score * if p.number.is_some() { 1.0 } else { 0.85 };
        Address {
            number: p.number,
            street: first,
            score: p.score,
        }
    });
    let confidence = (0.65 * category_confidence + 0.35 * address_confidence).clamp(0.0, 1.0);
    CaseDraft {
        department: category.map(|c| categories.list[c].department.clone()),
        category: category.map(|c| categories.list[c].id.clone()),
        address,
        description,
        confidence,
    }
}

/// Picks the best category: its index and a confidence from its score and its lead.
fn classify(words: &[String], categories: &Categories) -> Option<(usize, f64)> {
    let longest = categories
        .list
        .iter()
        .flat_map(|c| &c.phrases)
        .map(|p| p.words)
        .max()
        .unwrap_or(1);
    let windows = windows(words, longest + 1);
    let mut best: Option<(usize, f64)> = None;
    let mut runner_up = 0.0_f64;
    for (i, category) in categories.list.iter().enumerate() {
        let score = category_score(category, &windows);
        match best {
            Some((_, top)) if score <= top => runner_up = runner_up.max(score),
            _ => {
                if let Some((_, top)) = best {
                    runner_up = runner_up.max(top);
                }
                best = Some((i, score));
            }
        }
    }
    let (index, top) = best?;
    if top < MIN_CATEGORY_SCORE {
        return None;
    }
    let strength = (top / FULL_CATEGORY_SCORE).min(1.0);
    let margin = (top - runner_up) / top;
    Some((index, strength * (0.5 + 0.5 * margin)))
}

struct Window {
    start: usize,
    len: usize,
    letters: String,
    stem: String,
    chars: usize,
}

/// Every run of 1..=`max` consecutive words, joined.
fn windows(words: &[String], max: usize) -> Vec<Window> {
    let mut out = Vec::new();
    for start in 0..words.len() {
        for len in 1..=max.min(words.len() - start) {
            let letters = words[start..start + len].concat();
            out.push(Window {
                start,
                len,
                chars: letters.chars().count(),
                stem: stem_of(&words[start..start + len]),
                letters,
            });
        }
    }
    out
}

/// Words joined with a plural "s" dropped from each ("wheelchairs" -> "wheelchair", "months"
/// -> "month"): a caller says one or many as it happens, and neither changes the problem. Only
/// words of four letters or more, and not "ss" ("mattress") nor "us"/"is" ("bus", "this").
fn stem_of(words: &[String]) -> String {
    words
        .iter()
        .map(|w| {
            let plural = w.len() >= 4
                && w.ends_with('s')
                && !w.ends_with("ss")
                && !w.ends_with("us")
                && !w.ends_with("is");
            if plural {
                &w[..w.len() - 1]
            } else {
                w.as_str()
            }
        })
        .collect()
}

/// The best match's score counts in full, the next three (not overlapping it) 0.3 each.
fn category_score(category: &Category, windows: &[Window]) -> f64 {
    let mut hits: Vec<(f64, usize, usize)> = category
        .phrases
        .iter()
        .filter_map(|p| {
            phrase_match(p, windows).map(|(s, start, len)| {
                (
                    s * p.weight * (1.0 + 0.1 * (p.words as f64 - 1.0)),
                    start,
                    start + len,
                )
            })
        })
        .collect();
    hits.sort_by(|a, b| b.0.total_cmp(&a.0));
    let mut taken: Vec<(usize, usize)> = Vec::new();
    let mut total = 0.0;
    for (score, start, end) in hits {
        if taken.iter().any(|&(s, e)| start < e && s < end) {
            continue;
        }
        total += if taken.is_empty() { score } else { 0.3 * score };
        taken.push((start, end));
        if taken.len() == 4 {
            break;
        }
    }
    total * category.weight
}

/// The best place a phrase is heard: (similarity, first word, words).
fn phrase_match(phrase: &Phrase, windows: &[Window]) -> Option<(f64, usize, usize)> {
    let len = phrase.chars;
    let allowed = match len {
        0..=5 => 0,
        6..=8 => 1,
        9..=12 => 2,
        _ => 3,
    };
    let mut best: Option<(f64, usize, usize)> = None;
    for w in windows {
        if w.len + 1 < phrase.words || w.len > phrase.words + 1 {
            continue;
        }
        // Fuzzy only with the first letter right: "parking" is not "barking".
        let score = if w.letters == phrase.letters || w.stem == phrase.stem {
            1.0
        } else if let Some(s) = clipped_start(w, phrase, allowed) {
            s
        } else if allowed == 0
            || w.chars.abs_diff(len) > allowed
            || w.letters.chars().next() != phrase.letters.chars().next()
        {
            0.0
        } else {
            let d = strsim::levenshtein(&w.letters, &phrase.letters);
            if d <= allowed {
                0.95 * (1.0 - d as f64 / len as f64)
            } else {
                0.0
            }
        };
        if score > 0.0 && best.is_none_or(|(b, _, _)| score > b) {
            best = Some((score, w.start, w.len));
        }
    }
    best
}

/// A long phrase heard without its first sounds ("ray painted" for "spray painted"): the start
/// of a phrase is often swallowed or merged into the word before. Only phrases of ten letters or
/// more, with just the phrase's first one or two letters missing and the rest exact, so that
/// the first-letter rule still guards short words.
fn clipped_start(w: &Window, phrase: &Phrase, allowed: usize) -> Option<f64> {
    if phrase.chars < 10 || w.len + 1 < phrase.words || w.len > phrase.words {
        return None;
    }
    let missing = phrase.chars.checked_sub(w.chars)?;
    if !(1..=allowed.min(2)).contains(&missing) || !phrase.letters.ends_with(&w.letters) {
        return None;
    }
    Some(0.95 * (1.0 - missing as f64 / phrase.chars as f64))
}

struct Place {
    number: Option<u32>,
    street: usize,
    score: f64,
    cross: Option<usize>,
}

/// A street heard in words `start..end`.
#[derive(Clone, Copy)]
struct Hit {
    street: usize,
    score: f64,
    start: usize,
    end: usize,
}

/// Finds the address: a street right after a house number first, else a street named alone;
/// with a second street when they are said as a crossing ("Elm and 5th").
fn locate(words: &[String], streets: &StreetList) -> Option<Place> {
    if streets.streets.is_empty() || words.is_empty() {
        return None;
    }
    let refs: Vec<&str> = words.iter().map(String::as_str).collect();
    let windows = street_windows(words, streets);
    let mut anchored: Option<(u32, Hit)> = None;
    let mut i = 0;
    while i < words.len() {
        let Some((number, used)) = parse_house_number(&refs[i..]) else {
            i += 1;
            continue;
        };
        let mut at = i + used;
        if refs
            .get(at)
            .is_some_and(|w| matches!(*w, "block" | "blocks"))
        {
            at += 1;
            if refs.get(at) == Some(&"of") {
                at += 1;
            }
        }
        let here = windows.iter().filter(|w| w.start == at);
        if let Some(hit) = best_street(here, streets, None, |_, _| ANCHORED_MIN) {
            if anchored.is_none_or(|(_, a)| hit.score > a.score) {
                anchored = Some((number, hit));
            }
        }
        i += used;
    }
    let (number, mut hit) = match anchored {
        Some((number, hit)) => (Some(number), hit),
        None => {
            let candidates = windows.iter().filter(|w| {
                w.suffix.is_some() || (w.start > 0 && LOCATIVES.contains(&refs[w.start - 1]))
            });
            let min = |w: &StreetWindow, street: &Street| match &w.suffix {
                Some((_, kind)) if street.suffix == Some(*kind) => FREE_MIN_SUFFIXED,
                _ => FREE_MIN,
            };
            (None, best_street(candidates, streets, None, min)?)
        }
    };
    let mut cross = None;
    if refs.get(hit.end) == Some(&"and") {
        let next = windows.iter().filter(|w| w.start == hit.end + 1);
        cross = best_street(next, streets, Some(hit.street), |_, _| CROSS_MIN).map(|h| h.street);
    }
    // "State and Main Street": the street before the "and" is the first one.
    if cross.is_none() && number.is_none() && hit.start >= 2 && refs[hit.start - 1] == "and" {
        let before = windows.iter().filter(|w| w.end == hit.start - 1);
        if let Some(first) = best_street(before, streets, Some(hit.street), |_, _| CROSS_MIN) {
            cross = Some(hit.street);
            hit = first;
        }
    }
    Some(Place {
        number,
        street: hit.street,
        score: hit.score,
        cross,
    })
}

struct StreetWindow {
    start: usize,
    end: usize,
    /// All the words joined.
    form: Form,
    /// When the last word is a street suffix: the words before it, and which suffix.
    suffix: Option<(Form, usize)>,
}

fn street_windows(words: &[String], streets: &StreetList) -> Vec<StreetWindow> {
    let mut out = Vec::new();
    for start in 0..words.len() {
        if NOT_A_START.contains(&words[start].as_str())
            && !streets.leading_stop_words.contains(&words[start])
        {
            continue;
        }
        for len in 1..=streets.max_words.min(words.len() - start) {
            let end = start + len;
            let suffix = if len >= 2 {
                suffix_fuzzy(&words[end - 1])
                    .map(|k| (Form::new(words[start..end - 1].concat()), k))
            } else {
                None
            };
            out.push(StreetWindow {
                start,
                end,
                form: Form::new(words[start..end].concat()),
                suffix,
            });
        }
    }
    out
}

/// The best street for any of the windows that scores at least `min` for it. Ties go to the
/// earlier window, then the earlier street.
fn best_street<'a>(
    windows: impl Iterator<Item = &'a StreetWindow>,
    streets: &StreetList,
    except: Option<usize>,
    min: impl Fn(&StreetWindow, &Street) -> f64,
) -> Option<Hit> {
    let mut best: Option<Hit> = None;
    for w in windows {
        for (i, street) in streets.streets.iter().enumerate() {
            if Some(i) == except {
                continue;
            }
            let score = street_score(w, street);
            if score > 0.0 && score >= min(w, street) && best.is_none_or(|b| score > b.score) {
                best = Some(Hit {
                    street: i,
                    score,
                    start: w.start,
                    end: w.end,
                });
            }
        }
    }
    best
}

fn street_score(w: &StreetWindow, street: &Street) -> f64 {
    let mut best: f64 = 0.0;
    if let Some((rest, kind)) = &w.suffix {
        let factor = if street.suffix == Some(*kind) {
            1.0
        } else {
            0.8
        };
        for b in &street.bases {
            best = best.max(similarity(rest, b) * factor);
        }
    }
    // No suffix heard ("on Elm"): a little less sure, unless the street has none.
    let factor = if street.suffix.is_none() { 1.0 } else { 0.9 };
    for b in &street.bases {
        best = best.max(similarity(&w.form, b) * factor);
    }
    // Suffix run into the name ("PowerCave", "mainstreet"); only without a suffix word, or a
    // shared "street" would make any two streets alike.
    if w.suffix.is_none() {
        for f in &street.full {
            best = best.max(similarity(&w.form, f));
        }
    }
    best
}

/// Similarity of two joined forms in 0..1: normalised edit distance on the letters, or (at
/// most 0.9) on the phonetic keys when those start alike and the letters are not far apart.
/// Below `SIMILARITY_FLOOR` it is 0: no threshold is that low, so it need not be computed.
fn similarity(a: &Form, b: &Form) -> f64 {
    if a.letters == b.letters {
        return 1.0;
    }
    if a.chars == 0 || b.chars == 0 {
        return 0.0;
    }
    let letters_bound = length_bound(a.chars, b.chars);
    // The key alone would join too much ("parkit", "birchst"; "question", "station"): it
    // counts only when long enough and the letters are not far apart either.
    let keyed = letters_bound >= 0.5
        && a.key.len() >= 4
        && b.key.len() >= 4
        && a.key.as_bytes()[0] == b.key.as_bytes()[0];
    let key_bound = if keyed {
        0.9 * length_bound(a.key.len(), b.key.len())
    } else {
        0.0
    };
    if letters_bound.max(key_bound) < SIMILARITY_FLOOR {
        return 0.0;
    }
    let letters = strsim::normalized_levenshtein(&a.letters, &b.letters);
    let mut best = letters;
    if keyed && letters >= 0.5 && key_bound >= SIMILARITY_FLOOR {
        best = best.max(0.9 * strsim::normalized_levenshtein(&a.key, &b.key));
    }
    // Sounds: "Maine" is "Main", "Merch" is nearly "Birch" (m and b are both said with the
    // lips). Only when the first sounds are alike and the letters are not far apart, for the
    // same reason as the key.
    if letters_bound >= 0.5 && sounds_alike_at_start(&a.sounds, &b.sounds) {
        let bound = 1.0 - (a.sounds_len - b.sounds_len).abs() / a.sounds_len.max(b.sounds_len);
        if bound > best && bound >= SIMILARITY_FLOOR {
            // Spelt differently is never a certain match, however alike it sounds.
            best = best.max(sound_similarity(a, b).min(0.95));
        }
    }
    if best < SIMILARITY_FLOOR {
        0.0
    } else {
        best
    }
}

/// Upper bound of the normalised Levenshtein similarity from the lengths alone.
fn length_bound(a: usize, b: usize) -> f64 {
    1.0 - a.abs_diff(b) as f64 / a.max(b) as f64
}

/// A rough phonetic key: letters that sound alike share a class (Soundex's), vowels, `h`, `w`
/// and `y` after the first letter are dropped, repeats collapse, digits stay. "powercave" and
/// "parkave" both give "PRKP".
fn phonetic_key(letters: &str) -> String {
    let mut out = String::new();
    let mut last = None;
    for (i, c) in letters.chars().enumerate() {
        let class = match c {
            'a' | 'e' | 'i' | 'o' | 'u' | 'y' => (i == 0).then_some('A'),
            'h' | 'w' => (i == 0).then_some('H'),
            'b' | 'f' | 'p' | 'v' => Some('P'),
            'c' | 'g' | 'j' | 'k' | 'q' | 's' | 'x' | 'z' => Some('K'),
            'd' | 't' => Some('T'),
            'l' => Some('L'),
            'm' | 'n' => Some('N'),
            'r' => Some('R'),
            d if d.is_ascii_digit() => Some(d),
            _ => None,
        };
        if let Some(k) = class {
            if last != Some(k) {
                out.push(k);
            }
            last = Some(k);
        }
    }
    out
}

/// The cost of hearing one sound for another: 0 for the same, 1 for unrelated ones.
const SOUND_UNRELATED: f64 = 1.0;
/// Two vowels: the least reliable part of a word on a phone line, and unstressed ones blur.
const SOUND_VOWELS: f64 = 0.25;
/// Two consonants that differ in one feature (voice, nasality, place nearby): recognisers mix
/// them up far more often than others.
const SOUND_CONFUSABLE: f64 = 0.5;
/// Consonant pairs that differ in one articulatory feature. Symbols are those of `sounds`:
/// `c` is "ch", `x` is "sh", `q` is "th".
const CONFUSABLE: &[[u8; 2]] = &[
    *b"pb", *b"td", *b"kg", *b"fv", *b"sz", *b"cj", // voiced and voiceless
    *b"mn", *b"mb", *b"nd", // a nasal and a stop said at the same place
    *b"bv", *b"pf", *b"wv", // lips
    *b"sq", *b"fq", *b"tq", *b"dq", // "th"
    *b"xs", *b"xc", *b"kc", *b"gj", *b"zj", // hissing and hushing sounds
    *b"lr", // liquids
];

fn is_vowel_sound(s: u8) -> bool {
    matches!(s, b'a' | b'e' | b'i' | b'o' | b'u')
}

/// How much a sound weighs in a word: a vowel half a consonant, as in the edit costs.
fn sound_weight(s: u8) -> f64 {
    if is_vowel_sound(s) {
        0.5
    } else {
        1.0
    }
}

fn substitution_cost(a: u8, b: u8) -> f64 {
    if a == b {
        0.0
    } else if is_vowel_sound(a) && is_vowel_sound(b) {
        SOUND_VOWELS
    } else if CONFUSABLE.contains(&[a, b]) || CONFUSABLE.contains(&[b, a]) {
        SOUND_CONFUSABLE
    } else {
        SOUND_UNRELATED
    }
}

/// English spelling to rough sounds (a small Metaphone): "ck", "ph", "sh", "ch", "th", soft
/// "c" and "g", silent "gh", "kn", "wr" and final "e" are resolved; vowel runs keep their first
/// vowel, "y" is a vowel unless one follows, "h" and "w" after a vowel are dropped, repeats
/// collapse. A form with a digit has no sounds: numbers are matched on their letters ("400" is
/// not "4th", "7th" is not "4th"). "jackson" -> "jakson", "maine" -> "man", "phillips" ->
/// "filips"; `q` stands for "th".
fn sounds(letters: &str) -> Vec<u8> {
    if letters.bytes().any(|c| c.is_ascii_digit()) {
        return Vec::new();
    }
    let b: Vec<u8> = letters.bytes().filter(u8::is_ascii_lowercase).collect();
    let at = |i: usize| b.get(i).copied().unwrap_or(0);
    let vowel = |c: u8| matches!(c, b'a' | b'e' | b'i' | b'o' | b'u' | b'y');
    let soft = |c: u8| matches!(c, b'e' | b'i' | b'y');
    let mut out: Vec<u8> = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let (c, next) = (b[i], at(i + 1));
        let prev_vowel = i > 0 && vowel(b[i - 1]);
        let (sound, used): (&[u8], usize) = match (c, next) {
            (b'c', b'k') | (b'c', b'q') => (b"k", 2),
            (b'c', b'h') => (b"c", 2),
            (b'c', n) if soft(n) => (b"s", 1),
            (b'c', _) | (b'q', _) => (b"k", 1),
            (b'p', b'h') => (b"f", 2),
            (b's', b'h') => (b"x", 2),
            (b't', b'h') => (b"q", 2),
            (b't', b'c') if at(i + 2) == b'h' => (b"", 1),
            (b'd', b'g') if soft(at(i + 2)) => (b"j", 2),
            (b'g', b'h') if i > 0 => (b"", 2),
            (b'g', n) if soft(n) && i > 0 => (b"j", 1),
            (b'k', b'n') | (b'g', b'n') if i == 0 => (b"", 1),
            (b'w', b'r') if i == 0 => (b"", 1),
            (b'x', _) => (b"ks", 1),
            (b'e', _) if i + 1 == b.len() && i >= 3 && !prev_vowel => (b"", 1),
            (b'y', n) if !vowel(n) => (b"i", 1),
            (b'h', _) | (b'w', _) if prev_vowel => (b"", 1),
            (c, _) if vowel(c) && prev_vowel => (b"", 1),
            _ => (std::slice::from_ref(&b[i]), 1),
        };
        for &s in sound {
            if out.last() != Some(&s) {
                out.push(s);
            }
        }
        i += used;
    }
    out
}

/// Whether two words start alike enough to be the same name misheard: the same or confusable
/// first sounds, or both starting with a vowel.
fn sounds_alike_at_start(a: &[u8], b: &[u8]) -> bool {
    match (a.first(), b.first()) {
        (Some(&x), Some(&y)) => substitution_cost(x, y) <= SOUND_CONFUSABLE,
        _ => false,
    }
}

/// 1 minus the weighted edit distance of the sounds (vowels count half, confusable consonants
/// half, a swap of neighbours one) over the longer weighted length.
fn sound_similarity(a: &Form, b: &Form) -> f64 {
    let (x, y) = (&a.sounds, &b.sounds);
    let longest = a.sounds_len.max(b.sounds_len);
    if longest == 0.0 {
        return 0.0;
    }
    // Optimal string alignment distance, three rows.
    let mut before: Vec<f64> = Vec::new();
    let mut above: Vec<f64> = std::iter::once(0.0)
        .chain(y.iter().scan(0.0, |sum, &s| {
            *sum += sound_weight(s);
            Some(*sum)
        }))
        .collect();
    for i in 1..=x.len() {
        let mut row = vec![above[0] + sound_weight(x[i - 1]); y.len() + 1];
        for j in 1..=y.len() {
            let mut d = (above[j] + sound_weight(x[i - 1]))
                .min(row[j - 1] + sound_weight(y[j - 1]))
                .min(above[j - 1] + substitution_cost(x[i - 1], y[j - 1]));
            if i > 1 && j > 1 && x[i - 1] == y[j - 2] && x[i - 2] == y[j - 1] {
                d = d.min(before[j - 2] + 1.0);
            }
            row[j] = d;
        }
        before = std::mem::replace(&mut above, row);
    }
    (1.0 - above[y.len()] / longest).max(0.0)
}

fn suffix_exact(word: &str) -> Option<usize> {
    SUFFIXES.iter().position(|s| s.contains(&word))
}

/// A suffix word, allowing one wrong letter in the spelled-out ones ("streat", "avenu").
fn suffix_fuzzy(word: &str) -> Option<usize> {
    suffix_exact(word).or_else(|| {
        if word.len() < 5 {
            return None;
        }
        SUFFIXES
            .iter()
            .position(|s| s[0].len() >= 5 && strsim::levenshtein(word, s[0]) <= 1)
    })
}

const UNITS: [&str; 10] = [
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
];
const TEENS: [&str; 10] = [
    "ten",
    "eleven",
    "twelve",
    "thirteen",
    "fourteen",
    "fifteen",
    "sixteen",
    "seventeen",
    "eighteen",
    "nineteen",
];
const TENS: [&str; 10] = [
    "", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety",
];
const ORDINAL_UNITS: [&str; 10] = [
    "", "first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth", "ninth",
];
const ORDINAL_TEENS: [&str; 10] = [
    "tenth",
    "eleventh",
    "twelfth",
    "thirteenth",
    "fourteenth",
    "fifteenth",
    "sixteenth",
    "seventeenth",
    "eighteenth",
    "nineteenth",
];
const ORDINAL_TENS: [&str; 10] = [
    "",
    "",
    "twentieth",
    "thirtieth",
    "fortieth",
    "fiftieth",
    "sixtieth",
    "seventieth",
    "eightieth",
    "ninetieth",
];

/// "5th" -> "fifth", "21st" -> "twentyfirst" (1..=99).
fn ordinal_word_of(word: &str) -> Option<String> {
    let digits = word.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let tail = &word[digits.len()..];
    if !matches!(tail, "st" | "nd" | "rd" | "th") {
        return None;
    }
    let n: usize = digits.parse().ok()?;
    Some(match n {
        1..=9 => ORDINAL_UNITS[n].to_string(),
        10..=19 => ORDINAL_TEENS[n - 10].to_string(),
        20..=99 if n % 10 == 0 => ORDINAL_TENS[n / 10].to_string(),
        21..=99 => format!("{}{}", TENS[n / 10], ORDINAL_UNITS[n % 10]),
        _ => return None,
    })
}

fn unit(word: &str) -> Option<u32> {
    UNITS[1..]
        .iter()
        .position(|u| *u == word)
        .map(|i| i as u32 + 1)
}

fn teen(word: &str) -> Option<u32> {
    TEENS.iter().position(|t| *t == word).map(|i| i as u32 + 10)
}

fn tens(word: &str) -> Option<u32> {
    if word == "fourty" {
        return Some(40);
    }
    TENS[2..]
        .iter()
        .position(|t| *t == word)
        .map(|i| (i as u32 + 2) * 10)
}

fn is_zero(word: &str) -> bool {
    matches!(word, "oh" | "o" | "zero")
}

/// Lowercase letters and digits of a word: "125," -> "125", "Twelve" -> "twelve".
fn bare(word: &str) -> String {
    word.chars()
        .filter(|c| c.is_alphanumeric())
        .flat_map(char::to_lowercase)
        .collect()
}

/// A house number at the start of `words` and how many words it took: digits ("125", "1,250",
/// "12 05"), or number words, said in full ("one hundred twenty five", "two thousand",
/// "twelve hundred") or in groups ("one twenty five" = 125, "twelve oh five" = 1205,
/// "nineteen twenty" = 1920, "one two five" = 125), or both ("one 25"). At most five digits;
/// zero is no number.
pub fn parse_house_number(words: &[&str]) -> Option<(u32, usize)> {
    let first = bare(words.first()?);
    if !first.is_empty() && first.chars().all(|c| c.is_ascii_digit()) {
        if first.len() > 5 {
            return None;
        }
        // "12 05": a number said in two groups, written as two.
        if first.len() <= 2 {
            if let Some(next) = words.get(1).map(|w| bare(w)) {
                if next.len() == 2 && next.chars().all(|c| c.is_ascii_digit()) {
                    let n: u32 = format!("{first}{next}").parse().ok()?;
                    return (n > 0).then_some((n, 2));
                }
            }
        }
        let n: u32 = first.parse().ok()?;
        return (n > 0).then_some((n, 1));
    }
    let words: Vec<String> = words.iter().take(8).map(|w| bare(w)).collect();
    // "one 25": Whisper writes the first group of "one twenty five" as a word and the second
    // as digits.
    if let (Some(lead), Some(rest)) = (
        unit(&words[0])
            .or_else(|| teen(&words[0]))
            .or_else(|| tens(&words[0])),
        words.get(1),
    ) {
        if rest.len() == 2 && rest.chars().all(|c| c.is_ascii_digit()) && lead > 0 {
            let n = lead * 100 + rest.parse::<u32>().ok()?;
            return Some((n, 2));
        }
    }
    let full = number_in_full(&words);
    let grouped = number_in_groups(&words);
    match (full, grouped) {
        (Some(f), Some(g)) if g.1 > f.1 => Some(g),
        (Some(f), _) => Some(f),
        (None, g) => g,
    }
}

/// "one hundred (and) twenty five", "twenty five hundred", "two thousand three hundred":
/// only when a "hundred" or "thousand" is said.
fn number_in_full(words: &[String]) -> Option<(u32, usize)> {
    #[derive(Clone, Copy, PartialEq)]
    enum Last {
        Start,
        Unit,
        Teen,
        Tens,
        Scale,
        And,
    }
    let mut total = 0u32;
    let mut current = 0u32;
    let mut last = Last::Start;
    let mut scaled = false;
    let mut thousands = false;
    let mut used = 0;
    // How many words made the number, not counting a trailing "and".
    let mut taken = 0;
    while let Some(w) = words.get(used) {
        let w = w.as_str();
        if let Some(v) = unit(w) {
            if !matches!(last, Last::Start | Last::Tens | Last::Scale | Last::And) {
                break;
            }
            current += v;
            last = Last::Unit;
        } else if let Some(v) = teen(w).or_else(|| tens(w)) {
            if !matches!(last, Last::Start | Last::Scale | Last::And) {
                break;
            }
            current += v;
            last = if v < 20 { Last::Teen } else { Last::Tens };
        } else if w == "hundred" {
            if !matches!(last, Last::Unit | Last::Teen | Last::Tens) || current >= 100 {
                break;
            }
            current *= 100;
            last = Last::Scale;
            scaled = true;
        } else if w == "thousand" {
            if last == Last::Start || last == Last::And || thousands || current >= 100 {
                break;
            }
            total += current * 1000;
            current = 0;
            last = Last::Scale;
            scaled = true;
            thousands = true;
        } else if w == "and" && last == Last::Scale {
            last = Last::And;
            used += 1;
            continue;
        } else {
            break;
        }
        used += 1;
        taken = used;
    }
    let n = total + current;
    (scaled && n > 0 && n < 100_000).then_some((n, taken))
}

/// Numbers said in groups of one or two digits: "one twenty five", "twelve oh five".
fn number_in_groups(words: &[String]) -> Option<(u32, usize)> {
    let mut digits = String::new();
    let mut used = 0;
    while let Some(w) = words.get(used) {
        let w = w.as_str();
        let next_unit = words.get(used + 1).and_then(|n| unit(n));
        let (group, took) = if let Some(t) = tens(w) {
            match next_unit {
                Some(u) => ((t + u).to_string(), 2),
                None => (t.to_string(), 1),
            }
        } else if let Some(t) = teen(w) {
            (t.to_string(), 1)
        } else if let Some(u) = unit(w) {
            (u.to_string(), 1)
        } else if is_zero(w) && !digits.is_empty() {
            match next_unit {
                Some(u) => (format!("0{u}"), 2),
                None if w == "zero" => ("0".to_string(), 1),
                None => break,
            }
        } else {
            break;
        };
        if digits.len() + group.len() > 5 {
            break;
        }
        digits.push_str(&group);
        used += took;
    }
    let n: u32 = digits.parse().ok()?;
    (n > 0).then_some((n, used))
}

/// Drops bracketed annotations ("[BLANK_AUDIO]", "(music)"), trims, collapses spaces and
/// capitalises the first letter.
fn clean_text(text: &str) -> String {
    let kept = strip_annotations(text);
    let joined = kept.split_whitespace().collect::<Vec<_>>().join(" ");
    let mut chars = joined.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// Drops what Whisper writes about the audio rather than the words: "[BLANK_AUDIO]", and short
/// parenthesised notes such as "(static)" or "(upbeat music)". A long parenthesised stretch is
/// speech Whisper chose to wrap (it sometimes wraps a whole noisy utterance), so its words stay.
fn strip_annotations(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut kept = String::with_capacity(text.len());
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let close = match c {
            '[' => Some(']'),
            '(' => Some(')'),
            _ => None,
        };
        if let Some(close) = close {
            let end = chars[i + 1..]
                .iter()
                .position(|&d| d == close)
                .map(|p| i + 1 + p)
                .unwrap_or(chars.len());
            let inner: String = chars[i + 1..end].iter().collect();
            if c == '(' && inner.split_whitespace().count() > 3 {
                kept.push(' ');
                kept.push_str(&inner);
                kept.push(' ');
            }
            i = end + 1;
            continue;
        }
        kept.push(c);
        i += 1;
    }
    kept
}

/// Lowercase words of letters and digits: apostrophes vanish ("wasn't" -> "wasnt"), a comma
/// inside a number too ("1,250"), "&" is "and", anything else separates.
fn tokens(text: &str) -> Vec<String> {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    for (i, &c) in chars.iter().enumerate() {
        let digit_around = |d: isize| {
            i.checked_add_signed(d)
                .and_then(|j| chars.get(j))
                .is_some_and(|c| c.is_ascii_digit())
        };
        match c {
            '\'' | '\u{2019}' | '\u{2018}' => {}
            ',' if digit_around(-1) && digit_around(1) => {}
            '&' => out.push_str(" and "),
            c if c.is_alphanumeric() => out.extend(c.to_lowercase()),
            _ => out.push(' '),
        }
    }
    out.split_whitespace().map(str::to_string).collect()
}

/// A short Whisper initial prompt naming the problems (each category's first keyword) and the
/// first streets of the list, so that recognition leans to them; at most `PROMPT_MAX_CHARS`
/// characters. Numbered streets ("5th Avenue") are left out: they are recognised as it is.
pub fn initial_prompt(categories: &Categories, streets: &StreetList) -> String {
    let mut out = String::from("City 311 report:");
    let fits = |out: &String, piece: &str| out.len() + piece.len() < PROMPT_MAX_CHARS;
    for (i, c) in categories.list.iter().enumerate() {
        let piece = if i == 0 {
            format!(" {}", c.lead)
        } else {
            format!(", {}", c.lead)
        };
        if !fits(&out, &piece) {
            break;
        }
        out.push_str(&piece);
    }
    out.push('.');
    let numbered = |s: &Street| {
        s.bases
            .iter()
            .any(|b| b.letters.starts_with(|c: char| c.is_ascii_digit()))
    };
    let mut listed = 0;
    for (name, street) in streets.names.iter().zip(&streets.streets) {
        if numbered(street) {
            continue;
        }
        let piece = if listed == 0 {
            format!(" Streets: {name}")
        } else {
            format!(", {name}")
        };
        if !fits(&out, &piece) {
            break;
        }
        out.push_str(&piece);
        listed += 1;
    }
    if listed > 0 {
        out.push('.');
    }
    out
}

#[cfg(test)]
mod outcome_tests {
    use super::*;
    use crate::ivr::DraftOutcome;

    fn rules() -> (Categories, StreetList) {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        (
            Categories::load(&root.join("routing-rules/categories.toml")).unwrap(),
            StreetList::load(&root.join("routing-rules/streets.txt")).unwrap(),
        )
    }

    fn outcome_of(text: &str) -> DraftOutcome {
        let (categories, streets) = rules();
        outcome(text, &draft(text, &categories, &streets), 0.5)
    }

    #[test]
    fn silence_noise_and_stray_words_are_empty() {
        for text in [
            "",
            "[BLANK_AUDIO]",
            "(static)",
            " (upbeat music) ",
            "Thank you.",
        ] {
            assert_eq!(outcome_of(text), DraftOutcome::Empty, "{text:?}");
        }
    }

    #[test]
    fn a_clear_report_is_understood_and_an_unclear_one_goes_to_a_person() {
        assert_eq!(
            outcome_of("There is a big pothole in front of 125 Main Street."),
            DraftOutcome::Understood {
                category: "pothole".into()
            }
        );
        assert_eq!(
            outcome_of("I am calling about the thing at my neighbour's place again."),
            DraftOutcome::LowConfidence
        );
    }

    #[test]
    fn a_whole_utterance_in_parentheses_keeps_its_words() {
        let (categories, streets) = rules();
        let text = "(There is a large pothole in front of one 25 main street)";
        let d = draft(text, &categories, &streets);
        assert_eq!(d.category.as_deref(), Some("pothole"));
        assert_eq!(
            d.address.map(|a| a.display()).as_deref(),
            Some("125 Main Street")
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CATEGORIES: &str = include_str!("../../routing-rules/categories.toml");
    const STREETS: &str = include_str!("../../routing-rules/streets.txt");

    fn rules() -> (Categories, StreetList) {
        let categories = Categories::parse(CATEGORIES, Path::new("categories.toml")).unwrap();
        (categories, StreetList::parse(STREETS))
    }

    /// (transcript, category, house number, street)
    const CASES: &[(&str, &str, Option<u32>, &str)] = &[
        // Clean transcripts.
        (
            "There's a large pothole in front of 125 Main Street.",
            "pothole",
            Some(125),
            "Main Street",
        ),
        (
            "Someone spray painted graffiti all over the wall at 40 Park Avenue.",
            "graffiti",
            Some(40),
            "Park Avenue",
        ),
        (
            "The street light in front of 2210 Elm Street has been out for a week.",
            "streetlight_out",
            Some(2210),
            "Elm Street",
        ),
        (
            "My trash wasn't picked up this week at twelve oh five Maple Avenue.",
            "missed_pickup",
            Some(1205),
            "Maple Avenue",
        ),
        (
            "Somebody dumped a mattress and old couches in the alley behind 310 Market Street.",
            "illegal_dumping",
            Some(310),
            "Market Street",
        ),
        (
            "Loud music from a party every night at four oh four Washington Avenue.",
            "noise",
            Some(404),
            "Washington Avenue",
        ),
        (
            "There's an abandoned car with no plates that hasn't moved in three weeks in front \
             of 77 Oak Street.",
            "abandoned_vehicle",
            Some(77),
            "Oak Street",
        ),
        (
            "Water main break, water is gushing out of the street at 500 Jefferson Street.",
            "water_leak",
            Some(500),
            "Jefferson Street",
        ),
        (
            "A tree fell down and is blocking Sycamore Street.",
            "tree_down",
            None,
            "Sycamore Street",
        ),
        (
            "I'm seeing rats everywhere in the alley behind 18 Walnut Street.",
            "rodents",
            Some(18),
            "Walnut Street",
        ),
        (
            "The sidewalk is cracked and uneven in front of 901 Highland Avenue, my mother \
             tripped.",
            "sidewalk_damage",
            Some(901),
            "Highland Avenue",
        ),
        (
            "The traffic light at Main Street and 3rd Avenue is stuck on red.",
            "traffic_signal_out",
            None,
            "Main Street",
        ),
        (
            "Nobody picked up our garbage on Tuesday at nineteen twenty Summit Avenue.",
            "missed_pickup",
            Some(1920),
            "Summit Avenue",
        ),
        (
            "Tree branches down on the wires at 14 Dogwood Dr.",
            "tree_down",
            Some(14),
            "Dogwood Drive",
        ),
        (
            "There's a water leak coming from the fire hydrant at 1,500 Madison St.",
            "water_leak",
            Some(1500),
            "Madison Street",
        ),
        (
            "Graffiti on the bridge at two thousand River Road.",
            "graffiti",
            Some(2000),
            "River Road",
        ),
        // Whisper tiny.en style errors.
        (
            "large part for Winfront of one twenty five Main Street",
            "pothole",
            Some(125),
            "Main Street",
        ),
        (
            " Someone spray painted graffiti all over the wall at 40 PowerCave.",
            "graffiti",
            Some(40),
            "Park Avenue",
        ),
        (
            "There's a pot hole at thirty three twelfth avenue.",
            "pothole",
            Some(33),
            "12th Avenue",
        ),
        (
            "Pot holes all over Cleaveland Ave, my car is damaged.",
            "pothole",
            None,
            "Cleveland Avenue",
        ),
        (
            "a band and car parked on Park Avenue for two months",
            "abandoned_vehicle",
            None,
            "Park Avenue",
        ),
        (
            "Big three down on Martin Luther King Boulevard after the storm.",
            "tree_down",
            None,
            "Martin Luther King Jr Boulevard",
        ),
        (
            "There are row dents running around the yard at sixty two Chestnut Streat.",
            "rodents",
            Some(62),
            "Chestnut Street",
        ),
        (
            "The side walk is all broken up near one hundred twenty five Elmwood Ave.",
            "sidewalk_damage",
            Some(125),
            "Elmwood Avenue",
        ),
        (
            "The traffic lied at Washington and Lincoln is flashing.",
            "traffic_signal_out",
            None,
            "Washington Avenue",
        ),
        (
            "Streetlight out at the corner of Jackson and Monroe.",
            "streetlight_out",
            None,
            "Jackson Street",
        ),
        (
            "Dogs barking all night on the corner of Elm and Fifth.",
            "noise",
            None,
            "Elm Street",
        ),
        (
            "There's a couch and a bunch of trash bags dumped on 7th Avenue.",
            "illegal_dumping",
            None,
            "7th Avenue",
        ),
        (
            "The recycling was missed again at 88 Lincoln Ave.",
            "missed_pickup",
            Some(88),
            "Lincoln Avenue",
        ),
        (
            "Water bubbling up from the street at 12 05 Harrison Street.",
            "water_leak",
            Some(1205),
            "Harrison Street",
        ),
        (
            "Hi, I'd like to report a pothole on MLK Boulevard near the gas station.",
            "pothole",
            None,
            "Martin Luther King Jr Boulevard",
        ),
        (
            "The street light on Ashe Street is out.",
            "streetlight_out",
            None,
            "Ash Street",
        ),
        (
            "The rats are in the garbage cans behind 44 Elm.",
            "rodents",
            Some(44),
            "Elm Street",
        ),
        (
            "Someone's been dumping trash at the end of Stone Street.",
            "illegal_dumping",
            None,
            "Stone Street",
        ),
        (
            "There's a pothole at 125 Maine Street.",
            "pothole",
            Some(125),
            "Main Street",
        ),
        (
            "Theres graphitti on the wall of the school at 500 Collage Avenue.",
            "graffiti",
            Some(500),
            "College Avenue",
        ),
        (
            "Steam light out at 40 Oak Street",
            "streetlight_out",
            Some(40),
            "Oak Street",
        ),
        (
            "There's a dog barking since 6 a.m. at 4 Juniper Road",
            "noise",
            Some(4),
            "Juniper Road",
        ),
        (
            "The walk signal at 8th Avenue and Pine Street doesn't work.",
            "traffic_signal_out",
            None,
            "8th Avenue",
        ),
    ];

    #[test]
    fn transcripts_become_drafts() {
        let (categories, streets) = rules();
        let mut failures = Vec::new();
        for &(text, category, number, street) in CASES {
            let d = draft(text, &categories, &streets);
            let got = (
                d.category.as_deref(),
                d.address.as_ref().and_then(|a| a.number),
                d.address.as_ref().map(|a| a.street.as_str()),
            );
            if got != (Some(category), number, Some(street)) {
                failures.push(format!("{text:?}: {d:?}"));
            }
            assert!((0.0..=1.0).contains(&d.confidence), "{d:?}");
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }

    #[test]
    fn every_category_is_covered() {
        let (categories, _) = rules();
        for id in categories.ids() {
            assert!(
                CASES.iter().any(|c| c.1 == id),
                "no transcript for category {id}"
            );
        }
    }

    #[test]
    fn draft_fills_department_and_confidence() {
        let (categories, streets) = rules();
        let d = draft(
            "large part for Winfront of one twenty five Main Street",
            &categories,
            &streets,
        );
        assert_eq!(d.category.as_deref(), Some("pothole"));
        assert_eq!(d.department.as_deref(), Some("Streets & Sanitation"));
        assert_eq!(
            d.description,
            "Large part for Winfront of one twenty five Main Street"
        );
        assert!(d.confidence > 0.6, "{d:?}");
        let d = draft(
            "Someone spray painted graffiti all over the wall at 40 PowerCave.",
            &categories,
            &streets,
        );
        let a = d.address.unwrap();
        assert_eq!((a.number, a.street.as_str()), (Some(40), "Park Avenue"));
        assert!(a.score >= ANCHORED_MIN && a.score < 1.0, "{a:?}");
        let d = draft(
            "Loud music from a party at 9 Oak Street",
            &categories,
            &streets,
        );
        assert_eq!(d.department.as_deref(), Some("Police"));
        assert!(d.confidence > 0.8, "{d:?}");
    }

    #[test]
    fn crossings_name_both_streets() {
        let (categories, streets) = rules();
        let d = draft(
            "Dogs barking all night on the corner of Elm and Fifth.",
            &categories,
            &streets,
        );
        assert_eq!(
            d.description,
            "Dogs barking all night on the corner of Elm and Fifth. \
             (cross streets: Elm Street and 5th Avenue)"
        );
        let d = draft(
            "The traffic light at Main Street and 3rd Avenue is stuck on red.",
            &categories,
            &streets,
        );
        assert!(
            d.description
                .ends_with("(cross streets: Main Street and 3rd Avenue)"),
            "{}",
            d.description
        );
        // The street before the "and" comes first.
        for (text, first, second) in [
            (
                "The pothole at State and Main Streets.",
                "State Street",
                "Main Street",
            ),
            (
                "It's in the alley between Oak and Elm.",
                "Oak Street",
                "Elm Street",
            ),
        ] {
            let d = draft(text, &categories, &streets);
            let a = d.address.as_ref().unwrap();
            assert_eq!((a.number, a.street.as_str()), (None, first), "{d:?}");
            assert!(
                d.description
                    .ends_with(&format!("(cross streets: {first} and {second})")),
                "{d:?}"
            );
        }
    }

    #[test]
    fn silence_and_nonsense_give_nothing() {
        let (categories, streets) = rules();
        for text in [
            "",
            "   ",
            "thank you",
            " Thank you.",
            "you",
            " you",
            "Thanks for watching!",
            "[BLANK_AUDIO]",
            "(upbeat music)",
            "Okay. Bye.",
        ] {
            let d = draft(text, &categories, &streets);
            assert_eq!(d.category, None, "{text:?}: {d:?}");
            assert_eq!(d.department, None, "{text:?}: {d:?}");
            assert_eq!(d.address, None, "{text:?}: {d:?}");
            assert!(d.confidence < 0.2, "{text:?}: {d:?}");
        }
        assert_eq!(draft("", &categories, &streets).description, "");
        assert_eq!(
            draft(" thank you ", &categories, &streets).description,
            "Thank you"
        );
        assert_eq!(
            draft("[BLANK_AUDIO] pothole  on elm", &categories, &streets).description,
            "Pothole on elm"
        );
    }

    #[test]
    fn a_problem_without_a_place_has_no_address() {
        let (categories, streets) = rules();
        for (text, category) in [
            (
                "There is a huge pothole near the park, it popped my tire.",
                "pothole",
            ),
            (
                "The streetlight in front of my house is out.",
                "streetlight_out",
            ),
            (
                "I want to report a car that's been parked in front of my house for three weeks",
                "abandoned_vehicle",
            ),
            ("On my way home I saw a tree down.", "tree_down"),
            ("The back road is flooded.", "water_leak"),
            (
                "Someone dumped a couch at the end of my block.",
                "illegal_dumping",
            ),
            (
                "There's trash on a side street and nobody picked it up",
                "missed_pickup",
            ),
        ] {
            let d = draft(text, &categories, &streets);
            assert_eq!(d.category.as_deref(), Some(category), "{text:?}: {d:?}");
            assert_eq!(d.address, None, "{text:?}: {d:?}");
        }
    }

    #[test]
    fn ordinary_words_before_street_are_not_streets() {
        let (categories, streets) = rules();
        for text in [
            "It's on the next street over.",
            "It's a one way street.",
            "It's on the main road.",
            "The cable is out on my street.",
            "This is a busy street with lots of traffic.",
            "Call me back at 555 1234.",
            "My number is five five five one two three four.",
            "It's been 3 days.",
        ] {
            let d = draft(text, &categories, &streets);
            assert_eq!(d.address, None, "{text:?}: {d:?}");
        }
    }

    #[test]
    fn misheard_street_names_match_by_sound() {
        let (categories, streets) = rules();
        for (text, street) in [
            (
                "A dog has been barking all night across from the On-Merch Street.",
                "Birch Street",
            ),
            ("Potholes on Maine Street.", "Main Street"),
            ("Graffiti on the wall of Collage Avenue.", "College Avenue"),
            (
                "People keep dumping at the corner of Marlickett Street.",
                "Market Street",
            ),
        ] {
            let d = draft(text, &categories, &streets);
            let a = d.address.as_ref().expect(text);
            assert_eq!(a.street, street, "{text:?}: {d:?}");
            // Heard differently from how it is spelt: never a full-strength match.
            assert!(a.score < 0.96, "{text:?}: {d:?}");
        }
        let s = |w: &str| String::from_utf8(sounds(w)).unwrap();
        assert_eq!(s("jackson"), "jakson");
        assert_eq!(s("maine"), "man");
        assert_eq!(s("phillips"), "filips");
        assert_eq!(s("birch"), "birc");
        assert_eq!(s("smith"), "smiq");
        // Numbered streets go by their letters only: "7th" is not "4th", "400" is not "4th".
        assert_eq!(s("7th"), "");
        assert_eq!(s("400"), "");
    }

    #[test]
    fn sounds_do_not_invent_streets() {
        let (categories, streets) = rules();
        for text in [
            "I was on hold for an hour.",
            "It happened on Monday, on my way to work.",
            "We were on time and on budget.",
            "The house is on fire.",
            "I'm calling on behalf of my mother.",
            "It depends on money, honestly.",
            "He lives across from the church.",
            "The kids were walking on the grass.",
            "I'm on the phone with the bank.",
            "We met at Mercy Hospital.",
            "The bus was late again on Tuesday.",
            "It's on Marsh Street.",
            "It's on Mason Street.",
            "It's on Ocean Avenue.",
            "It's on Bush Street.",
            "Spray painted tags at 400 well known streets.",
        ] {
            let d = draft(text, &categories, &streets);
            assert_eq!(d.address, None, "{text:?}: {d:?}");
        }
        // A numbered street is still told from the others by its number.
        let d = draft("Trash dumped on 7th Avenue.", &categories, &streets);
        assert_eq!(d.address.map(|a| a.street).as_deref(), Some("7th Avenue"));
    }

    #[test]
    fn plurals_and_swallowed_starts_still_count() {
        let (categories, streets) = rules();
        for (text, category) in [
            // "wheelchair" is a hint: its plural counts the same.
            (
                "It's a problem for people in wheelchairs.",
                "sidewalk_damage",
            ),
            // "spray painted" with its "sp" lost; "we're heated" is close to "heaved" but the
            // whole phrase is the better evidence.
            (
                "Some once ray painted, we're heated all over the wall.",
                "graffiti",
            ),
            ("Street lamps out all along the block.", "streetlight_out"),
        ] {
            let d = draft(text, &categories, &streets);
            assert_eq!(d.category.as_deref(), Some(category), "{text:?}: {d:?}");
        }
        let stem = |w: &[&str]| stem_of(&w.iter().map(|w| w.to_string()).collect::<Vec<_>>());
        assert_eq!(stem(&["wheelchairs"]), "wheelchair");
        assert_eq!(stem(&["pot", "holes"]), "pothole");
        for kept in ["mattress", "bus", "this", "gas", "tennis"] {
            assert_eq!(stem(&[kept]), kept);
        }
    }

    #[test]
    fn unrelated_talk_is_never_a_confident_draft() {
        let (categories, streets) = rules();
        for text in [
            "The weather is lovely today and my garden looks great.",
            "I need to renew my library card.",
            "Can you tell me when the office opens?",
            "Please call me back tomorrow morning.",
            "My grandmother lives in Ohio.",
            "She painted her nails and went to the mall.",
            "The pharmacy on the corner sells paint.",
            "The light went on again at midnight.",
            "I'm at work and I'm stressed.",
            "There is a problem at the top of the hill.",
        ] {
            let d = draft(text, &categories, &streets);
            assert!(d.confidence < 0.4, "{text:?}: {d:?}");
            assert_eq!(d.address, None, "{text:?}: {d:?}");
        }
    }

    #[test]
    fn a_place_without_a_problem_has_low_confidence() {
        let (categories, streets) = rules();
        let d = draft("I live at 42 Oak Street.", &categories, &streets);
        assert_eq!(d.category, None);
        let a = d.address.as_ref().unwrap();
        assert_eq!((a.number, a.street.as_str()), (Some(42), "Oak Street"));
        assert!(d.confidence < 0.4, "{d:?}");
    }

    #[test]
    fn house_numbers_in_digits_and_words() {
        let cases: &[(&str, Option<(u32, usize)>)] = &[
            ("125 main street", Some((125, 1))),
            ("125, main", Some((125, 1))),
            ("1,250 main", Some((1250, 1))),
            ("12 05 main", Some((1205, 2))),
            ("one twenty five main street", Some((125, 3))),
            ("one hundred twenty five main", Some((125, 4))),
            ("one hundred and twenty five main", Some((125, 5))),
            ("one hundred and main", Some((100, 2))),
            ("twelve oh five park", Some((1205, 3))),
            ("twelve zero five", Some((1205, 3))),
            ("four oh four", Some((404, 3))),
            ("two thousand river road", Some((2000, 2))),
            ("two thousand three hundred forty", Some((2340, 5))),
            ("twelve hundred", Some((1200, 2))),
            ("twenty five hundred oak", Some((2500, 3))),
            ("nineteen twenty summit", Some((1920, 2))),
            ("one two five", Some((125, 3))),
            ("forty two", Some((42, 2))),
            ("Seven", Some((7, 1))),
            ("twenty one fifty", Some((2150, 3))),
            ("thirty three twelfth avenue", Some((33, 2))),
            ("main street", None),
            ("oh five", None),
            ("0", None),
            ("zero", None),
            ("5551234567", None),
            ("", None),
        ];
        for (text, want) in cases {
            let words: Vec<&str> = text.split_whitespace().collect();
            assert_eq!(parse_house_number(&words), *want, "{text:?}");
        }
    }

    #[test]
    fn shipped_rules_load() {
        let (categories, streets) = rules();
        let ids = categories.ids();
        assert_eq!(ids.len(), 12, "{ids:?}");
        assert_eq!(categories.department("noise"), Some("Police"));
        assert_eq!(categories.department("rodents"), Some("Health"));
        assert_eq!(categories.department("tree_down"), Some("Parks & Forestry"));
        assert_eq!(categories.department("water_leak"), Some("Water"));
        assert_eq!(categories.department("nope"), None);
        assert_eq!(categories.name("pothole", "es"), Some("Bache"));
        assert_eq!(categories.name("pothole", "en"), Some("Pothole"));
        assert!(streets.names().len() >= 140, "{}", streets.names().len());
        assert_eq!(streets.names()[0], "Main Street");
        assert!(streets
            .names()
            .iter()
            .any(|n| n == "Martin Luther King Jr Boulevard"));
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("routing-rules");
        assert_eq!(
            Categories::load(&dir.join("categories.toml"))
                .unwrap()
                .ids(),
            ids
        );
        assert_eq!(
            StreetList::load(&dir.join("streets.txt")).unwrap().names(),
            streets.names()
        );
        let e = StreetList::load(&dir.join("missing.txt")).unwrap_err();
        assert!(e.to_string().contains("missing.txt:0: cannot read"), "{e}");
    }

    #[test]
    fn street_list_skips_comments_blanks_and_repeats() {
        let list = StreetList::parse("# header\n\n  Main   Street \nmain street\nBroadway\n");
        assert_eq!(list.names(), ["Main Street", "Broadway"]);
        // A name may start with a word that usually starts no street.
        let list = StreetList::parse("The Strand\nElm Street\n");
        let (categories, _) = rules();
        let d = draft("Graffiti at 12 The Strand", &categories, &list);
        assert_eq!(
            d.address.map(|a| (a.number, a.street)),
            Some((Some(12), "The Strand".to_string()))
        );
        assert!(StreetList::parse("").names().is_empty());
    }

    fn invalid(text: &str) -> (usize, String) {
        match Categories::parse(text, Path::new("categories.toml")) {
            Err(RulesError::Invalid { path, line, reason }) => {
                assert_eq!(path, Path::new("categories.toml"));
                (line, reason)
            }
            Ok(_) => panic!("accepted:\n{text}"),
        }
    }

    const SMALL: &str = "\
# test rules
[[category]]
id = \"pothole\"
name_en = \"Pothole\"
name_es = \"Bache\"
department = \"Streets & Sanitation\"
keywords = [\"pothole\", \"pot hole\"]

[[category]]
id = \"noise\"
name_en = \"Noise\"
name_es = \"Ruido\"
department = \"Police\"
weight = 1.5
keywords = [\"noise\"]
hints = [\"loud\"]
";

    #[test]
    fn broken_rules_are_refused_with_line_and_reason() {
        let ok = Categories::parse(SMALL, Path::new("c.toml")).unwrap();
        assert_eq!(ok.ids(), ["pothole", "noise"]);

        let (line, reason) = invalid(&SMALL.replace("weight = 1.5", "colour = \"red\""));
        assert_eq!(line, 14, "{reason}");
        assert!(reason.contains("unknown field `colour`"), "{reason}");

        let (line, reason) = invalid(&SMALL.replace("id = \"noise\"", "id = \"pothole\""));
        assert_eq!(line, 10, "{reason}");
        assert!(
            reason.contains("duplicate category id \"pothole\""),
            "{reason}"
        );

        let (line, reason) = invalid(&SMALL.replace("keywords = [\"noise\"]", "keywords = []"));
        assert_eq!(line, 15, "{reason}");
        assert!(reason.contains("empty keyword list"), "{reason}");

        let (line, reason) = invalid(&SMALL.replace("\"pot hole\"", "\"Pot Hole\""));
        assert_eq!(line, 7, "{reason}");
        assert!(reason.contains("lowercase"), "{reason}");

        let (line, reason) = invalid(&SMALL.replace("hints = [\"loud\"]", "hints = [\"\"]"));
        assert_eq!(line, 16, "{reason}");
        assert!(reason.contains("empty keyword"), "{reason}");

        let (line, reason) = invalid(&SMALL.replace("department = \"Police\"\n", ""));
        assert!(reason.contains("department"), "{line}: {reason}");

        let (line, reason) = invalid(&SMALL.replace("weight = 1.5", "weight = -1"));
        assert_eq!(line, 14, "{reason}");
        assert!(reason.contains("positive"), "{reason}");

        let (line, reason) = invalid("# nothing here\n");
        assert_eq!(line, 1, "{reason}");
        let (line, _) = invalid("[[category]]\nid = \"x\"\nkeywords = [\n");
        assert!(line >= 3, "{line}");

        let e = Categories::parse(
            &SMALL.replace("keywords = [\"noise\"]", "keywords = []"),
            Path::new("c.toml"),
        )
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("c.toml:15: "), "{e}");
    }

    #[test]
    fn initial_prompt_is_short_and_names_streets_and_problems() {
        let (categories, streets) = rules();
        let p = initial_prompt(&categories, &streets);
        assert!(p.len() < 800, "{} chars: {p}", p.len());
        // Roughly 4 characters a token.
        assert!(p.len() / 4 <= 200, "{p}");
        for word in [
            "pothole",
            "graffiti",
            "Main Street",
            "Park Avenue",
            "Martin Luther King Jr Boulevard",
        ] {
            assert!(p.contains(word), "{word} missing: {p}");
        }
        assert!(p.ends_with('.'), "{p}");
    }

    #[test]
    fn phonetic_key_merges_misheard_streets() {
        assert_eq!(phonetic_key("powercave"), phonetic_key("parkave"));
        assert_eq!(ordinal_word_of("21st").as_deref(), Some("twentyfirst"));
        assert_eq!(ordinal_word_of("12th").as_deref(), Some("twelfth"));
        assert_eq!(ordinal_word_of("main"), None);
        assert_eq!(
            tokens("Wasn't it 1,250 Main St. & Elm?"),
            ["wasnt", "it", "1250", "main", "st", "and", "elm"]
        );
    }
}
