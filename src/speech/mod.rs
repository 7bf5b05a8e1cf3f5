//! Speech to case drafts: importing the Whisper model shipped on PyPI (CTranslate2 format) into
//! the ggml file whisper.cpp loads. Transcription itself and the case-draft extraction are the
//! rest of the speech issue; this module is pure (files in, files out, no clock).

pub mod model_import;
