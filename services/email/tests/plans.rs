//! Every statement email runs while it handles accounts, RSVPs, a time change and a
//! cancellation (read models, ledger, leases, sent records) is planned by SQLite with
//! an index: no full table scan, no temporary sort. The statements are the ones sqlx
//! really ran, from its log (see `integration::plans`). Its own binary: the statement
//! log is the process's global tracing subscriber.

#[allow(dead_code, unused_imports)]
#[path = "e2e/helpers.rs"]
mod helpers;

use anyhow::Result;
use contracts::api::ChannelPreferences;
use contracts::events::RsvpStatus;
use helpers::*;
use integration::Backend;
use integration::plans::{StatementLog, require_indexed};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handling_statements_use_indexes() -> Result<()> {
    let log = StatementLog::install()?;
    let env = TestEnv::start(Backend::Sqlite).await?;
    log.clear();

    let olga = User::new("Olga");
    let guests: Vec<User> = ["Ann", "Bob", "Cid", "Dan"].map(User::new).into();
    let mut seq = 0;
    for u in std::iter::once(&olga).chain(&guests) {
        seq = publish(&env.js, &u.registered()).await?;
    }
    let quiet = ChannelPreferences {
        rsvp_confirmation: false,
        rsvp_received: true,
        event_changed: true,
    };
    seq = seq.max(publish(&env.js, &guests[3].preferences(2, quiet)).await?);
    wait_auth(&env.js, seq).await?;

    let mut event = Event::new(&olga);
    publish(&env.js, &event.created()).await?;
    for (guest, status) in guests.iter().zip([
        RsvpStatus::Going,
        RsvpStatus::Maybe,
        RsvpStatus::Declined,
        RsvpStatus::Going,
    ]) {
        publish(&env.js, &event.rsvp(guest, None, status)).await?;
    }
    env.smtp.wait_for(&guests[0].email, WAIT, |_| true).await?;
    publish(&env.js, &event.updated(2)).await?;
    let last = publish(&env.js, &event.cancelled()).await?;
    wait_calendar(&env.js, last).await?;

    require_indexed(
        &env.database()?.pool,
        &log,
        &[
            "processed_messages",
            "mail_claims",
            "sent_mails",
            "attendees",
        ],
        |_| false,
    )
    .await?;
    Ok(())
}
