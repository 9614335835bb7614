//! Hospital end-to-end tests: the hospital in-process against a real nats-server (own
//! port and store) and a fresh database; messages are parked for real by test
//! subscribers running `runtime::consumer` on the CALENDAR stream, or published as
//! `ParkedMessage`s onto `dlq.<durable>` (the same contract) when thousands are needed.
//! Requests go over NATS exactly as the gateway sends them.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod helpers;

mod admin;
mod bulk;
mod dead_letters;
mod edit;
mod replay;
mod search;
mod ward;
