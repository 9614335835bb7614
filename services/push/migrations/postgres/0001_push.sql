-- Push: the users' notification history, the read models it is rendered from, and the
-- consumers' processed-message ledger (see runtime::consumer::ledger).
-- Ids are UUID strings, instants BIGINT microseconds since the epoch, booleans BIGINT.
-- Id columns use the "C" collation so keyset paging compares them bytewise, whatever
-- the locale (UUIDv7 strings then sort in creation order).

CREATE TABLE notifications (
    id                TEXT COLLATE "C" PRIMARY KEY NOT NULL, -- UUIDv7: id order is creation order
    user_id           TEXT COLLATE "C" NOT NULL,
    kind              TEXT NOT NULL,
    title             TEXT NOT NULL,
    body              TEXT NOT NULL,
    event_id          TEXT,
    source_message_id TEXT NOT NULL,
    created_at        BIGINT NOT NULL,
    read_at           BIGINT,
    -- The idempotency key: one domain event tells one user one thing once.
    CONSTRAINT notifications_source UNIQUE (source_message_id, user_id, kind)
);
CREATE INDEX notifications_user ON notifications (user_id, id);
CREATE INDEX notifications_unread ON notifications (user_id) WHERE read_at IS NULL;

-- Latest snapshot of each calendar event, plus its cancellation and last time change,
-- so an RSVP handled after them (deliveries run concurrently) still tells its attendee.
CREATE TABLE events (
    id                     TEXT PRIMARY KEY NOT NULL,
    organizer_id           TEXT NOT NULL,
    title                  TEXT NOT NULL,
    starts_at              BIGINT NOT NULL,
    ends_at                BIGINT NOT NULL,
    time_zone              TEXT NOT NULL,
    location               TEXT NOT NULL,
    status                 TEXT NOT NULL,
    version                BIGINT NOT NULL,
    cancel_message_id      TEXT,
    cancel_version         BIGINT,
    cancelled_at           BIGINT,
    time_change_message_id TEXT,
    time_change_version    BIGINT,
    time_changed_at        BIGINT
);

-- Each attendee's latest answer; version = the event's version at that RSVP.
CREATE TABLE attendees (
    event_id TEXT NOT NULL,
    user_id  TEXT NOT NULL,
    status   TEXT NOT NULL,
    version  BIGINT NOT NULL,
    PRIMARY KEY (event_id, user_id)
);

-- The push channel of each user's preferences (absent: everything on).
CREATE TABLE preferences (
    user_id           TEXT PRIMARY KEY NOT NULL,
    rsvp_confirmation BIGINT NOT NULL,
    rsvp_received     BIGINT NOT NULL,
    event_changed     BIGINT NOT NULL,
    version           BIGINT NOT NULL
);

CREATE TABLE users (
    user_id      TEXT PRIMARY KEY NOT NULL,
    display_name TEXT NOT NULL,
    version      BIGINT NOT NULL
);

CREATE TABLE processed_messages (
    consumer     TEXT NOT NULL,
    message_id   TEXT NOT NULL,
    processed_at BIGINT NOT NULL,
    PRIMARY KEY (consumer, message_id)
);
