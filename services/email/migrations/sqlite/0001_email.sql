-- The email subscriber's own state: read models rebuilt from the AUTH and CALENDAR
-- streams, the processed-message ledger, and one row per mail the SMTP server accepted.
-- Ids are UUID strings, instants BIGINT microseconds, booleans BIGINT 0/1. Every read
-- model row keeps the aggregate version it reflects, so an older (redelivered or
-- reordered) event never overwrites a newer state.

CREATE TABLE users (
    user_id           TEXT PRIMARY KEY NOT NULL,
    email             TEXT NOT NULL,
    display_name      TEXT NOT NULL,
    unsubscribe_token TEXT,
    version           BIGINT NOT NULL
);

-- Email channel only; a user without a row gets every kind (the default is on).
CREATE TABLE preferences (
    user_id           TEXT PRIMARY KEY NOT NULL,
    rsvp_confirmation BIGINT NOT NULL,
    rsvp_received     BIGINT NOT NULL,
    event_changed     BIGINT NOT NULL,
    version           BIGINT NOT NULL
);

CREATE TABLE events (
    event_id     TEXT PRIMARY KEY NOT NULL,
    organizer_id TEXT NOT NULL,
    title        TEXT NOT NULL,
    description  TEXT NOT NULL,
    starts_at    BIGINT NOT NULL,
    ends_at      BIGINT NOT NULL,
    time_zone    TEXT NOT NULL,
    location     TEXT NOT NULL,
    capacity     BIGINT NOT NULL,
    status       TEXT NOT NULL,
    going        BIGINT NOT NULL,
    maybe        BIGINT NOT NULL,
    declined     BIGINT NOT NULL,
    version      BIGINT NOT NULL
);

-- `version`: the event's aggregate version of the RSVP that set `status`.
CREATE TABLE attendees (
    event_id TEXT NOT NULL,
    user_id  TEXT NOT NULL,
    status   TEXT NOT NULL,
    version  BIGINT NOT NULL,
    PRIMARY KEY (event_id, user_id)
);

-- See runtime::consumer::ledger.
CREATE TABLE processed_messages (
    consumer     TEXT NOT NULL,
    message_id   TEXT NOT NULL,
    processed_at BIGINT NOT NULL,
    PRIMARY KEY (consumer, message_id)
);

-- One row per mail accepted by the SMTP server (or written by the file transport),
-- keyed by its deterministic Message-ID header.
CREATE TABLE sent_mails (
    message_id_header TEXT PRIMARY KEY NOT NULL,
    source_message_id TEXT NOT NULL,
    recipient         TEXT NOT NULL,
    kind              TEXT NOT NULL,
    sent_at           BIGINT NOT NULL
);
CREATE INDEX sent_mails_source ON sent_mails (source_message_id);
