-- Calendar events and RSVPs, plus the transactional outbox (see runtime::outbox).
-- Ids are UUID strings, instants BIGINT microseconds since the epoch.

CREATE TABLE events (
    id           TEXT PRIMARY KEY NOT NULL,
    organizer_id TEXT NOT NULL,
    title        TEXT NOT NULL,
    description  TEXT NOT NULL,
    starts_at    BIGINT NOT NULL,
    ends_at      BIGINT NOT NULL,
    time_zone    TEXT NOT NULL,
    location     TEXT NOT NULL,
    capacity     BIGINT NOT NULL,
    status       TEXT NOT NULL,
    going        BIGINT NOT NULL DEFAULT 0,
    maybe        BIGINT NOT NULL DEFAULT 0,
    declined     BIGINT NOT NULL DEFAULT 0,
    version      BIGINT NOT NULL,
    created_at   BIGINT NOT NULL,
    updated_at   BIGINT NOT NULL,
    -- Last line of defence against overbooking; the service never relies on it.
    CHECK (going >= 0 AND maybe >= 0 AND declined >= 0 AND going <= capacity)
);
-- Keyset paging orders by (starts_at, id).
CREATE INDEX events_starts_at ON events (starts_at, id);
CREATE INDEX events_organizer ON events (organizer_id, starts_at);

CREATE TABLE rsvps (
    event_id   TEXT NOT NULL REFERENCES events (id),
    user_id    TEXT NOT NULL,
    status     TEXT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (event_id, user_id)
);
CREATE INDEX rsvps_user ON rsvps (user_id);

CREATE TABLE outbox (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    message_id   TEXT NOT NULL UNIQUE,
    subject      TEXT NOT NULL,
    headers      TEXT NOT NULL,
    payload      BLOB NOT NULL,
    created_at   BIGINT NOT NULL,
    published_at BIGINT
);
CREATE INDEX outbox_unpublished ON outbox (seq) WHERE published_at IS NULL;
