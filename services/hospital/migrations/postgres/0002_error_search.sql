-- Fast filtered pages of dead letters (see `store::list`).

-- One durable's page in (parked_at, id) order straight from the index: with only
-- (durable, parked_at), rows parked in the same microsecond (a burst) were all read and
-- sorted by id before the first page could be sent.
DROP INDEX dead_letters_durable;
CREATE INDEX dead_letters_durable ON dead_letters (durable, parked_at, id);

-- A trigram index of the lower-cased error text, which the substring filter
-- `LOWER(error) LIKE '%…%'` uses for texts of 3 characters or more when the planner
-- expects few matches. pg_trgm is a trusted extension (PostgreSQL 13+): the database
-- owner may create it without superuser rights.
CREATE EXTENSION IF NOT EXISTS pg_trgm;
CREATE INDEX dead_letters_error_trgm ON dead_letters USING gin (LOWER(error) gin_trgm_ops);
