-- Each case's history: created (by phone or Open311), status and department changes (by the
-- API token's name). Written in the same transaction as the change it records.
CREATE TABLE case_history (
    id             BIGSERIAL PRIMARY KEY,
    case_number    TEXT    NOT NULL,
    at_ms          BIGINT  NOT NULL,
    action         TEXT    NOT NULL,   -- created | status | department
    by_whom        TEXT    NOT NULL,   -- phone | open311:<key name> | token:<name>
    detail         TEXT    NOT NULL    -- JSON object
);
CREATE INDEX case_history_case ON case_history (case_number);
CREATE INDEX cases_created ON cases (created_at_ms);
-- Queue rules applied through the HTTP API, every version kept for rollback.
CREATE TABLE rules_versions (
    version        BIGINT  PRIMARY KEY,
    queues_toml    TEXT    NOT NULL,
    applied_by     TEXT    NOT NULL,
    applied_at_ms  BIGINT  NOT NULL,
    action         TEXT    NOT NULL    -- original | apply | rollback:<n>
);
-- Where an Open311 request says it is (phone cases have only a spoken address).
ALTER TABLE cases ADD COLUMN lat DOUBLE PRECISION;
ALTER TABLE cases ADD COLUMN lon DOUBLE PRECISION;
