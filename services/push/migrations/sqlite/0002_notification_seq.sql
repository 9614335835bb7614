-- Each user's notifications numbered 1, 2, 3, … in commit order: the stream's resume
-- point. Ids (UUIDv7) are made before the storing transaction commits, and those
-- transactions run concurrently, so a lower id can become visible after a higher one;
-- `seq` is taken from the user's row below, whose lock the storing transaction holds
-- until it commits, so a lower seq is always visible first.

CREATE TABLE notification_sequences (
    user_id  TEXT PRIMARY KEY NOT NULL,
    last_seq BIGINT NOT NULL
);

-- Set on every row (nullable only because SQLite cannot add a NOT NULL column without
-- a default).
ALTER TABLE notifications ADD COLUMN seq BIGINT;

-- Number the existing history in id order.
UPDATE notifications SET seq = numbered.n
    FROM (SELECT id, ROW_NUMBER() OVER (PARTITION BY user_id ORDER BY id) AS n
          FROM notifications) AS numbered
    WHERE notifications.id = numbered.id;
INSERT INTO notification_sequences (user_id, last_seq)
    SELECT user_id, MAX(seq) FROM notifications GROUP BY user_id;

CREATE UNIQUE INDEX notifications_user_seq ON notifications (user_id, seq);
