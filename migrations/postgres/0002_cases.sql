-- 311 cases. A case is stored the moment the caller's report is recorded; the transcript,
-- category and address are filled in when transcription finishes. case_number is what the
-- caller hears and keys in later.
CREATE TABLE cases (
    id             BIGSERIAL PRIMARY KEY,
    case_number    TEXT    NOT NULL UNIQUE,
    status         TEXT    NOT NULL,   -- open | closed
    category       TEXT,
    department     TEXT,
    address        TEXT,
    description    TEXT,
    transcript     TEXT,
    confidence     DOUBLE PRECISION,
    audio_path     TEXT,
    call_ref       TEXT,
    created_at_ms  BIGINT  NOT NULL,
    updated_at_ms  BIGINT  NOT NULL
);
CREATE INDEX cases_status ON cases (status);
