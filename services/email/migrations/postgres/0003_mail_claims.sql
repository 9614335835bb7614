-- A lease on one mail while a replica sends it. Replicas of email share the durable,
-- and a message whose ack wait ran out while its handler was still at the SMTP server
-- is delivered to another replica: without the lease both would send. The second one
-- finds the lease held and retries later, when the mail is in sent_mails. A lease left
-- by a crashed replica expires (SMTP timeout plus a margin) and is taken over.
CREATE TABLE mail_claims (
    message_id_header TEXT PRIMARY KEY NOT NULL,
    holder            TEXT NOT NULL,
    expires_at        BIGINT NOT NULL
);
