-- 0001_init.sql - distilld's first schema: jobs, their metrics, checkpoints
-- and the event log. Applied by server/db.c at start-up inside the migration
-- transaction that also sets user_version. Released migrations are never
-- edited: change the schema with a new NNNN_name.sql file.

CREATE TABLE jobs (
    id              TEXT PRIMARY KEY NOT NULL,           -- "j" + 16 hex digits
    -- creation order, for listing and claiming (ids are random); MAX(seq) + 1
    seq             INTEGER NOT NULL UNIQUE,
    kind            TEXT NOT NULL CHECK (kind IN ('train', 'distill')),
    state           TEXT NOT NULL CHECK (state IN ('queued', 'running', 'paused',
                                                   'succeeded', 'failed', 'canceled')),
    spec            TEXT NOT NULL,                       -- the resolved job spec, JSON
    step            INTEGER NOT NULL DEFAULT 0,
    total_steps     INTEGER NOT NULL DEFAULT 0,
    checkpoint_step INTEGER NOT NULL DEFAULT -1,         -- -1: no checkpoint yet
    checkpoint_path TEXT NOT NULL DEFAULT '',
    error           TEXT NOT NULL DEFAULT '',            -- why a job failed
    request         TEXT NOT NULL DEFAULT '' CHECK (request IN ('', 'pause', 'cancel')),
    created_at      REAL NOT NULL,                       -- unix seconds
    updated_at      REAL NOT NULL
);
CREATE INDEX jobs_by_state ON jobs (state, seq);  -- claim the oldest queued; list one state

-- A metric point is stored once: a resumed run recomputing a step is ignored.
-- value is NULL when the point was NaN (SQLite stores NaN as NULL).
CREATE TABLE metrics (
    job_id TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    name   TEXT NOT NULL,
    step   INTEGER NOT NULL,
    value  REAL,
    time   REAL NOT NULL,
    PRIMARY KEY (job_id, name, step)
) WITHOUT ROWID;
CREATE INDEX metrics_by_step ON metrics (job_id, step, name);  -- pages ordered by (step, name)

CREATE TABLE checkpoints (
    job_id     TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    step       INTEGER NOT NULL,
    path       TEXT NOT NULL,
    created_at REAL NOT NULL,
    PRIMARY KEY (job_id, step)
) WITHOUT ROWID;

-- AUTOINCREMENT: an id is never reused, even after a delete, so an SSE
-- client's Last-Event-ID always means the same place in the stream.
CREATE TABLE events (
    id     INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    type   TEXT NOT NULL CHECK (type IN ('state', 'log', 'metric', 'eval')),
    step   INTEGER NOT NULL DEFAULT -1,                  -- training step of metric/eval events
    data   TEXT NOT NULL,                                -- a JSON object
    time   REAL NOT NULL
);
CREATE INDEX events_by_job ON events (job_id, id);
-- one metric/eval event per step, whatever a resumed run appends again
CREATE UNIQUE INDEX events_once_per_step ON events (job_id, type, step) WHERE step >= 0;
