-- The cancellation of an event, kept beside its snapshot: an RSVP handled after the
-- cancellation (deliveries run concurrently and retries reorder them) but given before
-- it sends its attendee the cancellation instead of an invitation, under the same
-- Message-ID the cancellation's own mail to them has (so at most one goes out).
ALTER TABLE events ADD COLUMN cancel_message_id TEXT;
ALTER TABLE events ADD COLUMN cancel_version BIGINT;
ALTER TABLE events ADD COLUMN cancelled_at BIGINT;
