-- Failed-login throttling and signing-key rotation (PostgreSQL). Instants are BIGINT
-- microseconds.

-- One row per throttled key, shared by every auth replica: `account:<sha256 hex of the
-- normalized email>` (never the email itself) or `address:<IPv4, or IPv6 /64>`.
CREATE TABLE login_throttle (
    key          TEXT PRIMARY KEY NOT NULL,
    attempts     BIGINT NOT NULL,          -- failed or in-flight attempts in the window
    window_start BIGINT NOT NULL,
    locked_until BIGINT NOT NULL,          -- 0 when never locked
    lockouts     BIGINT NOT NULL,          -- lockouts in a row, for the doubling backoff
    updated_at   BIGINT NOT NULL
);
CREATE INDEX login_throttle_updated_idx ON login_throttle (updated_at);

-- When a key that is no longer the active one last signed a token (set when it is
-- demoted, and refreshed by any replica still signing with it). It stays in the JWKS
-- until every token it signed has expired.
ALTER TABLE signing_keys ADD COLUMN last_signed_at BIGINT;
