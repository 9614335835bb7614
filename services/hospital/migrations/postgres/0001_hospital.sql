-- The message hospital: the dead-letter index, bulk jobs and the audit trail.
-- Ids are UUID strings, instants BIGINT microseconds since the epoch.
-- Id columns use the "C" collation so keyset paging compares them bytewise.

-- One row per parked message (per park id: re-indexing the DLQ stream is idempotent).
-- status: parked | replaying (claimed by a running replay job, shown as parked) |
-- replayed | discarded. Purged rows are deleted.
CREATE TABLE dead_letters (
    id               TEXT COLLATE "C" PRIMARY KEY NOT NULL, -- UUIDv7
    park_id          TEXT NOT NULL,
    dlq_sequence     BIGINT NOT NULL,
    status           TEXT NOT NULL,
    replays          BIGINT NOT NULL,
    fingerprint      TEXT NOT NULL,
    service          TEXT NOT NULL,
    durable          TEXT NOT NULL,
    stream           TEXT NOT NULL,
    subject          TEXT NOT NULL,
    stream_sequence  BIGINT NOT NULL,
    message_id       TEXT,
    message_type     TEXT,
    schema_version   BIGINT,
    error_kind       TEXT NOT NULL,
    error            TEXT NOT NULL,
    deliveries       BIGINT NOT NULL,
    first_failure_at BIGINT NOT NULL,
    last_failure_at  BIGINT NOT NULL,
    trace_id         TEXT,
    replay_of        TEXT,
    headers          TEXT NOT NULL, -- JSON array of [name, value]
    payload          BYTEA NOT NULL,
    parked_at        BIGINT NOT NULL,
    indexed_at       BIGINT NOT NULL,
    updated_at       BIGINT NOT NULL,
    claim_job        TEXT,          -- the replay job holding a 'replaying' claim
    action_audit_id  TEXT,          -- the audit entry of the action that changed status
    CONSTRAINT dead_letters_park_id UNIQUE (park_id)
);
CREATE INDEX dead_letters_page ON dead_letters (parked_at, id);
CREATE INDEX dead_letters_durable ON dead_letters (durable, parked_at);
CREATE INDEX dead_letters_status ON dead_letters (status, parked_at);
CREATE INDEX dead_letters_group ON dead_letters (durable, fingerprint, parked_at);
CREATE INDEX dead_letters_fingerprint ON dead_letters (fingerprint);
CREATE INDEX dead_letters_message_id ON dead_letters (message_id);
CREATE INDEX dead_letters_trace_id ON dead_letters (trace_id);
CREATE INDEX dead_letters_claim ON dead_letters (claim_job);

-- Bulk actions (replay, discard, purge) and their progress.
CREATE TABLE jobs (
    id           TEXT COLLATE "C" PRIMARY KEY NOT NULL, -- UUIDv7: id order is creation order
    kind         TEXT NOT NULL,
    status       TEXT NOT NULL,
    total        BIGINT NOT NULL,
    done         BIGINT NOT NULL,
    skipped      BIGINT NOT NULL,
    failed       BIGINT NOT NULL,
    rate_per_sec BIGINT,
    actor        TEXT NOT NULL,
    reason       TEXT NOT NULL,
    selection    TEXT NOT NULL, -- JSON
    audit_id     TEXT NOT NULL,
    error        TEXT,
    created_at   BIGINT NOT NULL,
    heartbeat_at BIGINT NOT NULL, -- a running job's last sign of life
    finished_at  BIGINT
);
CREATE INDEX jobs_status ON jobs (status);

-- Every ops action, dry runs included.
CREATE TABLE audit (
    id        TEXT COLLATE "C" PRIMARY KEY NOT NULL, -- UUIDv7
    at        BIGINT NOT NULL,
    actor     TEXT NOT NULL,
    action    TEXT NOT NULL,
    target    TEXT NOT NULL,
    target_id TEXT, -- the dead letter, when the action names exactly one
    count     BIGINT NOT NULL,
    reason    TEXT NOT NULL,
    detail    TEXT NOT NULL -- JSON
);
CREATE INDEX audit_target ON audit (target_id);
