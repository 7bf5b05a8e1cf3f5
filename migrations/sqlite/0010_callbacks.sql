-- Callbacks that keep a resident's place in line after they hang up: one row per callback,
-- replaced on every change, so pending ones (waiting, dialing) are put back in line at their
-- original join time when the server starts again. `number` is the full number to call (the
-- only place it is kept in full; events and logs show the last four digits).
-- Numbered 0010 so that migrations added alongside (0004..0009) keep their own order.
CREATE TABLE callbacks (
    call_ref       TEXT    PRIMARY KEY,  -- the original call's reference (the router's call id)
    number         TEXT    NOT NULL,
    language       TEXT    NOT NULL,
    queue          TEXT,
    attrs          TEXT    NOT NULL,     -- the caller's routing attributes, JSON
    priority       INTEGER NOT NULL,
    state          TEXT    NOT NULL,     -- waiting | dialing | connected | completed | failed
    attempts       INTEGER NOT NULL,
    last_result    TEXT,
    joined_at_ms   BIGINT  NOT NULL,     -- the original join, Unix milliseconds
    updated_at_ms  BIGINT  NOT NULL
);
CREATE INDEX callbacks_state ON callbacks (state);
