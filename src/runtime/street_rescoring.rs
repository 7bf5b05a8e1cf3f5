//! Closed-vocabulary rescoring of street names. Whisper's free decode often hears a street's
//! suffix ("... Street") but not its name ("Gascan Street" for "Jackson Street"). After the free
//! decode, the one or two words before each suffix are scored again, on the same audio and with
//! the decoder's own likelihoods, against the city's street list; a listed street replaces what
//! was heard when it fits the sound nearly as well (within `bonus` nats, the prior that a caller
//! names a street of this city). The text matcher in `speech::case_draft` then reads the result
//! as before.
//!
//! Scoring is teacher forcing: the hypothesis up to the span stays as decoded, each candidate
//! span plus the token after it is fed one token at a time and its log-probabilities summed.
//! whisper.cpp keeps logits for the last token of a `decode` call only, so every scored token is
//! one call (about 2 ms for tiny.en); only the `candidates` streets whose first token the decoder
//! finds likeliest at the span are scored in full.

use whisper_rs::{WhisperContext, WhisperState, WhisperTokenId};

/// The street list, tokenized once per model.
pub struct StreetVocabulary {
    /// (name, its tokens with the leading space it has inside a sentence).
    streets: Vec<(String, Vec<WhisperTokenId>)>,
}

/// Words that end a street name in a transcript (lower case, punctuation stripped).
const SUFFIX_WORDS: &[&str] = &[
    "street",
    "streets",
    "avenue",
    "avenues",
    "road",
    "roads",
    "lane",
    "lanes",
    "drive",
    "boulevard",
    "way",
    "place",
    "court",
];

/// Words that are never part of a street's name: a span never starts with one.
const FUNCTION_WORDS: &[&str] = &[
    "a", "an", "and", "at", "by", "from", "in", "near", "of", "off", "on", "or", "the", "to",
    "corner", "front",
];

#[derive(Clone, Copy, Debug)]
pub struct RescoreSettings {
    /// Nats of log-likelihood a listed street may give up against the words heard.
    pub bonus: f32,
    /// Streets scored in full per span, chosen by the likelihood of their first token.
    pub candidates: usize,
    /// Score with the initial prompt before the transcript, as the free decode had it.
    pub with_prompt: bool,
}

impl StreetVocabulary {
    pub fn new(
        context: &WhisperContext,
        names: &[String],
    ) -> Result<Self, whisper_rs::WhisperError> {
        let mut streets = Vec::with_capacity(names.len());
        for name in names {
            let tokens = context.tokenize(&format!(" {name}"), 64)?;
            if !tokens.is_empty() {
                streets.push((name.clone(), tokens));
            }
        }
        Ok(StreetVocabulary { streets })
    }
}

/// A replacement made: the words heard, the street put in their place, and the margin in nats
/// (candidate minus heard; negative means the bonus carried it).
#[derive(Clone, Debug, PartialEq)]
pub struct Replacement {
    pub heard: String,
    pub street: String,
    pub margin: f32,
}

/// Rescores the street names in `tokens` (a segment's tokens as decoded, timestamps included)
/// on `state`, which must hold the encoder output of the same audio (right after `full`).
/// `prompt` is what preceded the segment in the decoder (previous-text marker, initial prompt,
/// start-of-transcript). Returns the tokens with replacements made, and the replacements.
pub fn rescore(
    context: &WhisperContext,
    state: &mut WhisperState,
    prompt: &[WhisperTokenId],
    tokens: &[WhisperTokenId],
    vocabulary: &StreetVocabulary,
    settings: RescoreSettings,
) -> Result<(Vec<WhisperTokenId>, Vec<Replacement>), whisper_rs::WhisperError> {
    let eot = context.token_eot();
    let text_of = |ids: &[WhisperTokenId]| -> String {
        let mut bytes = Vec::new();
        for &id in ids.iter().filter(|&&id| id < eot) {
            if let Ok(b) = context.token_to_bytes(id) {
                bytes.extend_from_slice(b);
            }
        }
        String::from_utf8_lossy(&bytes).into_owned()
    };
    let mut tokens = tokens.to_vec();
    let mut replacements = Vec::new();
    let mut cursor = 0;
    // Made at the first suffix: decoding the prompt is the largest single cost.
    let mut scorer: Option<Scorer> = None;
    let mut unused_state = Some(state);
    while let Some(anchor) = next_anchor(&tokens, cursor, &text_of, eot) {
        let scorer = match &mut scorer {
            Some(scorer) => scorer,
            None => {
                let state = unused_state
                    .take()
                    .ok_or(whisper_rs::WhisperError::GenericError(-1))?;
                scorer.insert(Scorer::new(state, prompt)?)
            }
        };
        let words = words_before(&tokens, anchor.start, &text_of, eot);
        let next = tokens.get(anchor.end).copied();
        let mut best: Option<(f32, usize, usize)> = None; // (margin, span start, street)
        for span_words in 1..=2.min(words.len()) {
            let span_start = words[words.len() - span_words];
            let first_word = text_of(&tokens[span_start..anchor.start]);
            let first_word = normalise(first_word.split_whitespace().next().unwrap_or(""));
            if span_words == 2 && FUNCTION_WORDS.contains(&first_word.as_str()) {
                continue;
            }
            if span_words == 1 && FUNCTION_WORDS.contains(&first_word.as_str()) {
                break;
            }
            let mut heard: Vec<WhisperTokenId> = tokens[span_start..anchor.end].to_vec();
            heard.extend(next);
            let prefix = &tokens[..span_start];
            let first_logprobs = scorer.logprobs_after(prefix)?;
            let heard_score = scorer.sequence(prefix, &first_logprobs, &heard)?;
            let mut ranked: Vec<(f32, usize)> = vocabulary
                .streets
                .iter()
                .enumerate()
                .map(|(i, (_, t))| (first_logprobs[t[0] as usize], i))
                .collect();
            ranked.sort_by(|a, b| b.0.total_cmp(&a.0));
            for &(_, street) in ranked.iter().take(settings.candidates) {
                let mut candidate = vocabulary.streets[street].1.clone();
                if candidate[..] == tokens[span_start..anchor.end] {
                    continue;
                }
                candidate.extend(next);
                let score = scorer.sequence(prefix, &first_logprobs, &candidate)?;
                let margin = score - heard_score;
                if margin + settings.bonus > 0.0 && best.is_none_or(|b| margin > b.0) {
                    best = Some((margin, span_start, street));
                }
            }
        }
        match best {
            Some((margin, span_start, street)) => {
                let (name, street_tokens) = &vocabulary.streets[street];
                replacements.push(Replacement {
                    heard: text_of(&tokens[span_start..anchor.end]).trim().to_string(),
                    street: name.clone(),
                    margin,
                });
                tokens.splice(span_start..anchor.end, street_tokens.iter().copied());
                cursor = span_start + street_tokens.len();
            }
            None => cursor = anchor.end,
        }
    }
    Ok((tokens, replacements))
}

/// A suffix word's tokens: `start..end`.
struct Anchor {
    start: usize,
    end: usize,
}

/// The first suffix word at or after `from`.
fn next_anchor(
    tokens: &[WhisperTokenId],
    from: usize,
    text_of: &impl Fn(&[WhisperTokenId]) -> String,
    eot: WhisperTokenId,
) -> Option<Anchor> {
    let starts = word_starts(tokens, text_of, eot);
    for (k, &start) in starts.iter().enumerate() {
        if start < from {
            continue;
        }
        let end = word_end(tokens, start, starts.get(k + 1).copied(), text_of, eot);
        let word = normalise(&text_of(&tokens[start..end]));
        if SUFFIX_WORDS.contains(&word.as_str()) {
            return Some(Anchor { start, end });
        }
    }
    None
}

/// Starts of the words (up to two) right before `before`, earliest first, all made of letters.
fn words_before(
    tokens: &[WhisperTokenId],
    before: usize,
    text_of: &impl Fn(&[WhisperTokenId]) -> String,
    eot: WhisperTokenId,
) -> Vec<usize> {
    let starts = word_starts(tokens, text_of, eot);
    let mut found = Vec::new();
    let mut end = before;
    for &start in starts.iter().rev().filter(|&&s| s < before) {
        let text = text_of(&tokens[start..end]);
        let word = text.trim();
        if word.is_empty()
            || !word
                .chars()
                .all(|c| c.is_alphabetic() || c == '-' || c == '\'')
        {
            break;
        }
        found.push(start);
        end = start;
        if found.len() == 2 {
            break;
        }
    }
    found.reverse();
    found
}

/// Indices of tokens that start a word: text tokens beginning with a space, and punctuation
/// tokens (which end the word before them).
fn word_starts(
    tokens: &[WhisperTokenId],
    text_of: &impl Fn(&[WhisperTokenId]) -> String,
    eot: WhisperTokenId,
) -> Vec<usize> {
    tokens
        .iter()
        .enumerate()
        .filter(|(_, &id)| id < eot)
        .filter(|(i, _)| {
            let text = text_of(&tokens[*i..*i + 1]);
            text.starts_with(' ') || text.chars().all(|c| c.is_ascii_punctuation())
        })
        .map(|(i, _)| i)
        .collect()
}

/// Where the word starting at `start` ends: before the next word start, punctuation or special
/// token.
fn word_end(
    tokens: &[WhisperTokenId],
    start: usize,
    next_start: Option<usize>,
    text_of: &impl Fn(&[WhisperTokenId]) -> String,
    eot: WhisperTokenId,
) -> usize {
    let limit = next_start.unwrap_or(tokens.len());
    let mut end = start + 1;
    while end < limit && tokens[end] < eot && !text_of(&tokens[end..end + 1]).starts_with(' ') {
        end += 1;
    }
    end
}

fn normalise(word: &str) -> String {
    word.trim()
        .trim_matches(|c: char| !c.is_alphanumeric())
        .to_lowercase()
}

/// Teacher-forced scoring on one state. The decoder's cache holds the prompt once; prefixes and
/// candidates are decoded at their positions after it (whisper.cpp drops cached positions from
/// `n_past` on at every call).
struct Scorer<'s> {
    state: &'s mut WhisperState,
    prompt_len: usize,
    prompt_last: WhisperTokenId,
    /// The segment tokens now in the cache after the prompt.
    cached: Vec<WhisperTokenId>,
}

impl<'s> Scorer<'s> {
    fn new(
        state: &'s mut WhisperState,
        prompt: &[WhisperTokenId],
    ) -> Result<Self, whisper_rs::WhisperError> {
        // The prompt always holds at least start-of-transcript.
        let (&prompt_last, _) = prompt
            .split_last()
            .ok_or(whisper_rs::WhisperError::GenericError(-1))?;
        state.decode(prompt, 0, 1)?;
        Ok(Scorer {
            state,
            prompt_len: prompt.len(),
            prompt_last,
            cached: Vec::new(),
        })
    }

    /// Log-probabilities of the next token after `prefix` (segment tokens after the prompt).
    fn logprobs_after(
        &mut self,
        prefix: &[WhisperTokenId],
    ) -> Result<Vec<f32>, whisper_rs::WhisperError> {
        let common = self
            .cached
            .iter()
            .zip(prefix)
            .take_while(|(a, b)| a == b)
            .count();
        // Keep one token back so the last one is decoded alone: only its logits come back.
        let keep = common.min(prefix.len().saturating_sub(1));
        if prefix.len() > keep + 1 {
            self.state
                .decode(&prefix[keep..prefix.len() - 1], self.prompt_len + keep, 1)?;
        }
        match prefix.last() {
            Some(&last) => self
                .state
                .decode(&[last], self.prompt_len + prefix.len() - 1, 1)?,
            None => self
                .state
                .decode(&[self.prompt_last], self.prompt_len - 1, 1)?,
        }
        self.cached = prefix.to_vec();
        Ok(log_softmax(self.state.get_logits()?))
    }

    /// Sum of log-probabilities of `sequence` after `prefix`, whose next-token
    /// log-probabilities are `first`.
    fn sequence(
        &mut self,
        prefix: &[WhisperTokenId],
        first: &[f32],
        sequence: &[WhisperTokenId],
    ) -> Result<f32, whisper_rs::WhisperError> {
        let mut total = 0.0;
        let mut logprobs = first.to_vec();
        for (i, &token) in sequence.iter().enumerate() {
            total += logprobs[token as usize];
            if i + 1 < sequence.len() {
                self.state
                    .decode(&[token], self.prompt_len + prefix.len() + i, 1)?;
                logprobs = log_softmax(self.state.get_logits()?);
            }
        }
        // The cache now holds part of this sequence after the prefix.
        self.cached = prefix.to_vec();
        Ok(total)
    }
}

fn log_softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f32 = logits.iter().map(|&l| (l - max).exp()).sum();
    let log_sum = max + sum.ln();
    logits.iter().map(|&l| l - log_sum).collect()
}
