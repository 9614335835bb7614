-- Email verification, unsubscribe links, notification preferences and password
-- resets (PostgreSQL). Ids are UUID strings, instants BIGINT microseconds.

-- Increases with every change of the account (verification, password reset, role),
-- so events about a user carry an increasing aggregate version.
ALTER TABLE users ADD COLUMN version BIGINT NOT NULL DEFAULT 1;
ALTER TABLE users ADD COLUMN email_verified_at BIGINT;
-- A capability for the user's notification preferences only (the one-click unsubscribe
-- link in mails), so it is stored as is. NULL for accounts created before this migration.
ALTER TABLE users ADD COLUMN unsubscribe_token TEXT;
CREATE UNIQUE INDEX users_unsubscribe_token_key ON users (unsubscribe_token);

-- Single-use tokens of the welcome mail's verification link.
CREATE TABLE email_verifications (
    token_hash  TEXT PRIMARY KEY NOT NULL, -- hex sha256 of the token; the token itself is never stored
    user_id     TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    expires_at  BIGINT NOT NULL,
    used_at     BIGINT,
    created_at  BIGINT NOT NULL
);
CREATE INDEX email_verifications_user_idx ON email_verifications (user_id);

-- Single-use tokens of password reset mails. A new request spends the older ones.
CREATE TABLE password_resets (
    token_hash  TEXT PRIMARY KEY NOT NULL, -- hex sha256 of the token
    user_id     TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    expires_at  BIGINT NOT NULL,
    used_at     BIGINT,                    -- set when used or superseded
    created_at  BIGINT NOT NULL
);
CREATE INDEX password_resets_user_idx ON password_resets (user_id);

-- Notification preferences; no row means the defaults (everything on), version 0.
CREATE TABLE preferences (
    user_id     TEXT PRIMARY KEY NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    settings    TEXT NOT NULL,             -- JSON of api::Preferences: absent kinds read as on
    version     BIGINT NOT NULL,           -- 1 for the first change, +1 per change
    updated_at  BIGINT NOT NULL
);
