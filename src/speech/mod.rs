//! Speech to case drafts: importing the Whisper model shipped on PyPI (CTranslate2 format) into
//! the ggml file whisper.cpp loads, and turning a transcript into a case draft (category,
//! department, address, description). Pure; the whisper call itself will live in `runtime/`.

pub mod case_draft;
pub mod model_import;
