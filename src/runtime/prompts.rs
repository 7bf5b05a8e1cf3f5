//! The prompt store: every WAV under `prompts/` loaded once at start-up with hound, checked
//! (8 kHz, mono, 16-bit), and kept as shared sample buffers that all calls play from. A missing
//! or unreadable prompt stops start-up with its file name; nothing is read from disk mid-call.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum PromptError {
    #[error("prompt {path}: {reason}")]
    Bad { path: PathBuf, reason: String },
    #[error("prompt {id:?} for language {language:?} not found under {dir}")]
    Missing {
        id: String,
        language: String,
        dir: PathBuf,
    },
}

/// Samples of every prompt, by language (`common` holds language-neutral ones).
#[derive(Debug, Default, Clone)]
pub struct PromptStore {
    by_language: HashMap<String, HashMap<String, Arc<[i16]>>>,
}

impl PromptStore {
    /// Loads `<dir>/<language>/*.wav` for each language and `<dir>/common/*.wav`.
    pub fn load(dir: &Path, languages: &[String]) -> Result<PromptStore, PromptError> {
        let mut store = PromptStore::default();
        let mut folders: Vec<String> = languages.to_vec();
        folders.push("common".into());
        for folder in folders {
            let path = dir.join(&folder);
            let Ok(entries) = std::fs::read_dir(&path) else {
                continue;
            };
            let mut prompts = HashMap::new();
            for entry in entries.flatten() {
                let file = entry.path();
                if file.extension().and_then(|e| e.to_str()) != Some("wav") {
                    continue;
                }
                let id = file
                    .file_stem()
                    .and_then(|s| s.to_str())
                    .unwrap_or_default()
                    .to_string();
                prompts.insert(id, read_wav(&file)?);
            }
            store.by_language.insert(folder, prompts);
        }
        Ok(store)
    }

    /// The samples for `id` in `language`, falling back to `common`.
    pub fn get(&self, language: &str, id: &str) -> Option<Arc<[i16]>> {
        self.by_language
            .get(language)
            .and_then(|p| p.get(id))
            .or_else(|| self.by_language.get("common").and_then(|p| p.get(id)))
            .cloned()
    }

    pub fn contains(&self, language: &str, id: &str) -> bool {
        self.get(language, id).is_some()
    }

    /// Checks that every id exists for every language; the first gap is the error.
    pub fn require(
        &self,
        dir: &Path,
        languages: &[String],
        ids: &[&str],
    ) -> Result<(), PromptError> {
        for language in languages {
            for id in ids {
                if !self.contains(language, id) {
                    return Err(PromptError::Missing {
                        id: id.to_string(),
                        language: language.clone(),
                        dir: dir.to_path_buf(),
                    });
                }
            }
        }
        Ok(())
    }

    /// Every prompt: (language folder, id, samples).
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str, Arc<[i16]>)> + '_ {
        self.by_language.iter().flat_map(|(language, prompts)| {
            prompts
                .iter()
                .map(move |(id, samples)| (language.as_str(), id.as_str(), samples.clone()))
        })
    }

    pub fn len(&self) -> usize {
        self.by_language.values().map(HashMap::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn read_wav(path: &Path) -> Result<Arc<[i16]>, PromptError> {
    let bad = |reason: String| PromptError::Bad {
        path: path.to_path_buf(),
        reason,
    };
    let reader = hound::WavReader::open(path).map_err(|e| bad(e.to_string()))?;
    let spec = reader.spec();
    if spec.sample_rate != 8000 || spec.channels != 1 || spec.bits_per_sample != 16 {
        return Err(bad(format!(
            "must be 8000 Hz mono 16-bit, is {} Hz {} channel(s) {}-bit (run scripts/make-prompts)",
            spec.sample_rate, spec.channels, spec.bits_per_sample
        )));
    }
    let samples = reader
        .into_samples::<i16>()
        .collect::<Result<Vec<i16>, _>>()
        .map_err(|e| bad(e.to_string()))?;
    Ok(samples.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bundled_prompts_load_and_bad_files_are_named() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("prompts");
        let languages = vec!["en".to_string(), "es".to_string()];
        let store = PromptStore::load(&dir, &languages).unwrap();
        assert!(store.len() > 100);
        assert!(
            store.get("es", "main_menu").unwrap().len() > 8000,
            "over a second of audio"
        );
        assert!(
            store.get("en", "tone").is_some(),
            "common prompts are shared"
        );
        let missing = store
            .require(&dir, &languages, &["no_such_prompt"])
            .unwrap_err();
        assert!(missing.to_string().contains("no_such_prompt"));

        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(tmp.path().join("en")).unwrap();
        std::fs::write(tmp.path().join("en/broken.wav"), b"not a wav").unwrap();
        let err = PromptStore::load(tmp.path(), &languages)
            .unwrap_err()
            .to_string();
        assert!(err.contains("broken.wav"), "{err}");
    }
}
