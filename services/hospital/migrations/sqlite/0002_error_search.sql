-- Fast filtered pages of dead letters (see `store::list`).

-- One durable's page in (parked_at, id) order straight from the index: with only
-- (durable, parked_at), rows parked in the same microsecond (a burst) were all read and
-- sorted by id before the first page could be sent.
DROP INDEX dead_letters_durable;
CREATE INDEX dead_letters_durable ON dead_letters (durable, parked_at, id);

-- A trigram index of the error text for the substring filter. External content: the
-- text stays in dead_letters, rows are matched by rowid, and triggers keep the index
-- in step. The filter still tests `LOWER(error) LIKE` on every hit, so the index only
-- narrows the candidates down. (dead_letters has no INTEGER PRIMARY KEY, so a VACUUM
-- may renumber its rowids: after one, run
-- `INSERT INTO dead_letter_errors(dead_letter_errors) VALUES ('rebuild')`.)
CREATE VIRTUAL TABLE dead_letter_errors USING fts5(
    error,
    content = 'dead_letters',
    content_rowid = 'rowid',
    tokenize = 'trigram'
);
CREATE TRIGGER dead_letter_errors_insert AFTER INSERT ON dead_letters BEGIN
    INSERT INTO dead_letter_errors (rowid, error) VALUES (new.rowid, new.error);
END;
CREATE TRIGGER dead_letter_errors_delete AFTER DELETE ON dead_letters BEGIN
    INSERT INTO dead_letter_errors (dead_letter_errors, rowid, error)
    VALUES ('delete', old.rowid, old.error);
END;
CREATE TRIGGER dead_letter_errors_update AFTER UPDATE OF error ON dead_letters BEGIN
    INSERT INTO dead_letter_errors (dead_letter_errors, rowid, error)
    VALUES ('delete', old.rowid, old.error);
    INSERT INTO dead_letter_errors (rowid, error) VALUES (new.rowid, new.error);
END;
-- The dead letters indexed before this migration.
INSERT INTO dead_letter_errors (dead_letter_errors) VALUES ('rebuild');
