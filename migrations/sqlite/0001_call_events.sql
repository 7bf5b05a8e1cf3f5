-- The append-only call event log. Every metric is derived from these rows.
CREATE TABLE call_events (
    seq            INTEGER PRIMARY KEY AUTOINCREMENT,
    occurred_at_ms BIGINT  NOT NULL,   -- wall-clock time of the engine decision, Unix milliseconds
    call_ref       TEXT    NOT NULL,   -- civicline's call reference, unique across restarts
    sip_call_id    TEXT    NOT NULL,
    kind           TEXT    NOT NULL,   -- received | answered | rejected | cancelled | ended | failed
    status_code    INTEGER,
    reason         TEXT,
    duration_ms    BIGINT,             -- answered: INVITE to answer; ended: talk time
    caller         TEXT,
    detail         TEXT                -- JSON object
);
CREATE INDEX call_events_call_ref ON call_events (call_ref);
CREATE INDEX call_events_time ON call_events (occurred_at_ms);
