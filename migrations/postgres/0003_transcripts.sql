-- Case drafts from speech recognition, keyed by the recording they came from. A draft and its
-- case are written independently (whichever is ready first) and joined by audio_path: the
-- case creator fills the case from this table after its insert, and the draft writer fills any
-- case with this recording after its own, so neither order loses the draft.
CREATE TABLE transcripts (
    audio_path     TEXT    PRIMARY KEY,
    call_ref       TEXT    NOT NULL,
    transcript     TEXT    NOT NULL,
    category       TEXT,
    department     TEXT,
    address        TEXT,
    description    TEXT,
    confidence     DOUBLE PRECISION NOT NULL,
    outcome        TEXT    NOT NULL,   -- understood | low_confidence | empty
    created_at_ms  BIGINT  NOT NULL
);
CREATE INDEX cases_audio_path ON cases (audio_path);
