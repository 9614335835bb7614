-- Auth context schema (SQLite). Ids are UUID strings, instants BIGINT microseconds.

CREATE TABLE users (
    id            TEXT PRIMARY KEY NOT NULL,
    email         TEXT NOT NULL,           -- trimmed and lowercased
    password_hash TEXT NOT NULL,           -- argon2id PHC string
    display_name  TEXT NOT NULL,
    role          TEXT NOT NULL,           -- user | admin
    created_at    BIGINT NOT NULL
);
CREATE UNIQUE INDEX users_email_key ON users (email);

CREATE TABLE refresh_tokens (
    id          TEXT PRIMARY KEY NOT NULL,
    user_id     TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    token_hash  TEXT NOT NULL,             -- hex sha256 of the token; the token itself is never stored
    family_id   TEXT NOT NULL,             -- shared by every token rotated from one login
    expires_at  BIGINT NOT NULL,
    revoked_at  BIGINT,
    created_at  BIGINT NOT NULL
);
CREATE UNIQUE INDEX refresh_tokens_token_hash_key ON refresh_tokens (token_hash);
CREATE INDEX refresh_tokens_family_idx ON refresh_tokens (family_id);
CREATE INDEX refresh_tokens_user_idx ON refresh_tokens (user_id);

CREATE TABLE signing_keys (
    kid         TEXT PRIMARY KEY NOT NULL, -- RFC 7638 thumbprint of the public key
    private_key BLOB NOT NULL,             -- PKCS#8 DER
    public_key  BLOB NOT NULL,             -- 32 raw Ed25519 bytes
    active_slot BIGINT UNIQUE,             -- 1 for the one key that signs, NULL otherwise
    created_at  BIGINT NOT NULL,
    retired_at  BIGINT                     -- retired keys leave the JWKS
);

CREATE TABLE outbox (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    message_id   TEXT NOT NULL UNIQUE,
    subject      TEXT NOT NULL,
    headers      TEXT NOT NULL,
    payload      BLOB NOT NULL,
    created_at   BIGINT NOT NULL,
    published_at BIGINT
);
CREATE INDEX outbox_unpublished_idx ON outbox (published_at, seq);
