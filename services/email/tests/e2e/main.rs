//! End to end: real nats-server, real SMTP server (aiosmtpd), the email service
//! in-process, contract events published the way the outbox relays publish them.

mod helpers;
mod ordering;

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use contracts::api::ChannelPreferences;
use contracts::events::{EventMeta, RsvpStatus};
use email::compose::{Kind, message_id};
use helpers::*;
use integration::Backend;
use jiff::tz::TimeZone;

both_backends!(
    account_mails_carry_their_links,
    an_rsvp_sends_an_invitation_and_tells_the_organizer,
    a_republished_event_sends_no_second_mail,
    a_cancellation_reaches_every_attendee_once,
    a_time_change_updates_the_invitations,
    preferences_turn_a_kind_off,
    an_unknown_version_is_terminated,
    a_mail_waits_for_the_smtp_server,
    old_events_only_build_read_models,
    replicas_share_the_durables,
    one_replica_at_a_time_holds_a_mail,
);

async fn account_mails_carry_their_links(backend: Backend) -> Result<()> {
    let env = TestEnv::start(backend).await?;
    assert_eq!(http_status(env.app()?.port, "/healthz").await?, 200);
    let ann = User::new("Ann");
    let registered = ann.registered();
    publish(&env.js, &registered).await?;

    let mail = env
        .smtp
        .wait_for(&ann.email, WAIT, |m| {
            m.subject.as_deref().is_some_and(|s| s.contains("Welcome"))
        })
        .await?;
    let text = mail.text.clone().unwrap_or_default();
    let link = format!(
        "{BASE_URL}/v1/auth/verify-email?token={}",
        ann.verification_token
    );
    ensure!(text.contains(&link), "no verification link in {text}");
    ensure!(
        mail.html.as_deref().is_some_and(|h| h.contains(&link)),
        "no link in the HTML part"
    );
    let expected = message_id(
        &registered.meta.message_id.to_string(),
        &ann.email,
        Kind::Welcome,
    );
    assert_eq!(
        mail.message_id.as_deref(),
        Some(expected.trim_matches(['<', '>']))
    );
    assert_eq!(
        mail.list_unsubscribe, None,
        "account mails cannot be unsubscribed"
    );

    let reset = ann.password_reset("reset-token-1");
    publish(&env.js, &reset).await?;
    let mail = env
        .smtp
        .wait_for(&ann.email, WAIT, |m| {
            m.subject.as_deref().is_some_and(|s| s.contains("password"))
        })
        .await?;
    let text = mail.text.clone().unwrap_or_default();
    ensure!(
        text.contains(&format!("{BASE_URL}/reset-password?token=reset-token-1")),
        "{text}"
    );
    ensure!(
        text.contains(&format!("POST {BASE_URL}/v1/auth/password-reset/confirm")),
        "{text}"
    );
    assert_eq!(env.smtp.messages_to(&ann.email)?.len(), 2);
    Ok(())
}

async fn an_rsvp_sends_an_invitation_and_tells_the_organizer(backend: Backend) -> Result<()> {
    let env = TestEnv::start(backend).await?;
    let olga = User::new("Olga");
    let ann = User::new("Ann");
    publish(&env.js, &olga.registered()).await?;
    let seq = publish(&env.js, &ann.registered()).await?;
    wait_auth(&env.js, seq).await?;

    let mut event = Event::new(&olga);
    publish(&env.js, &event.created()).await?;
    let rsvp = event.rsvp(&ann, None, RsvpStatus::Going);
    publish(&env.js, &rsvp).await?;

    let mail = env
        .smtp
        .wait_for(&ann.email, WAIT, |m| {
            m.subject
                .as_deref()
                .is_some_and(|s| s.starts_with("You're going"))
        })
        .await?;
    let ics = mail
        .attachment("text/calendar")
        .context("no invitation attached")?;
    assert_eq!(ics.param("method").as_deref(), Some("REQUEST"));
    let text = ics.text();
    ensure!(
        !text.replace("\r\n", "").contains('\n'),
        "lines must end in CRLF: {text:?}"
    );
    ensure!(
        text.split("\r\n").all(|l| l.len() <= 75),
        "lines must be folded: {text:?}"
    );
    let lines = ics_lines(&text);
    let berlin = TimeZone::get("Europe/Berlin")?;
    let local = |ts: jiff::Timestamp| {
        ts.to_zoned(berlin.clone())
            .strftime("%Y%m%dT%H%M%S")
            .to_string()
    };
    assert_eq!(
        ics_value(&lines, "DTSTART;TZID=Europe/Berlin"),
        Some(local(event.snapshot.starts_at).as_str())
    );
    assert_eq!(
        ics_value(&lines, "DTSTART;TZID=Europe/Berlin"),
        Some("20300601T180000")
    );
    assert_eq!(
        ics_value(&lines, "DTEND;TZID=Europe/Berlin"),
        Some("20300601T200000")
    );
    assert_eq!(ics_value(&lines, "TZID"), Some("Europe/Berlin"));
    assert_eq!(ics_value(&lines, "METHOD"), Some("REQUEST"));
    let uid = format!("{}@mesh", event.snapshot.event_id);
    assert_eq!(ics_value(&lines, "UID"), Some(uid.as_str()));
    assert_eq!(ics_value(&lines, "SEQUENCE"), Some("2"));
    // As a calendar client reads it: the times in their zone are the event's instants.
    let invite = ics.invitation()?;
    assert_eq!(invite.method.as_deref(), Some("REQUEST"));
    assert_eq!(invite.uid, uid);
    assert_eq!(invite.sequence, Some(2));
    assert_eq!(invite.start_tzid.as_deref(), Some("Europe/Berlin"));
    assert_eq!(invite.end_tzid.as_deref(), Some("Europe/Berlin"));
    assert_eq!(invite.starts_at, event.snapshot.starts_at);
    assert_eq!(invite.ends_at, event.snapshot.ends_at);
    assert_eq!(invite.time_zones, vec!["Europe/Berlin".to_owned()]);
    let attendee = ics_name(&lines, "ATTENDEE").unwrap_or_default();
    ensure!(attendee.contains("PARTSTAT=ACCEPTED"), "{attendee}");
    assert_eq!(
        ics_value(&lines, "ORGANIZER"),
        Some(format!("mailto:{}", olga.email).as_str())
    );
    assert_eq!(
        mail.list_unsubscribe.as_deref(),
        Some(
            format!(
                "<{BASE_URL}/v1/unsubscribe?token={}&kind=rsvp_confirmation>",
                ann.unsubscribe_token
            )
            .as_str()
        )
    );
    assert_eq!(
        mail.list_unsubscribe_post.as_deref(),
        Some("List-Unsubscribe=One-Click")
    );

    let note = env
        .smtp
        .wait_for(&olga.email, WAIT, |m| {
            m.subject
                .as_deref()
                .is_some_and(|s| s.contains("answered going"))
        })
        .await?;
    let text = note.text.clone().unwrap_or_default();
    ensure!(
        text.contains("Ann answered going") && text.contains("1 going, 0 maybe, 0 declined"),
        "{text}"
    );
    ensure!(note.attachments.is_empty());

    // A later change of mind, delivered before an earlier one: the read model keeps the
    // newest, the mails of both still go out.
    let maybe = event.rsvp(&ann, Some(RsvpStatus::Going), RsvpStatus::Maybe);
    let declined = event.rsvp(&ann, Some(RsvpStatus::Maybe), RsvpStatus::Declined);
    publish(&env.js, &declined).await?;
    let seq = publish(&env.js, &maybe).await?;
    wait_calendar(&env.js, seq).await?;
    let row: (String, i64) = sqlx::query_as(
        "SELECT status, version FROM attendees WHERE event_id = $1 AND user_id = $2",
    )
    .bind(event.snapshot.event_id.to_string())
    .bind(ann.id.to_string())
    .fetch_one(&env.database()?.pool)
    .await?;
    assert_eq!(row, ("declined".to_owned(), 4));
    let decline = env
        .smtp
        .wait_for(&ann.email, WAIT, |m| {
            m.subject
                .as_deref()
                .is_some_and(|s| s.starts_with("You declined"))
        })
        .await?;
    let ics = decline.attachment("text/calendar").context("no ics")?;
    assert_eq!(ics.param("method").as_deref(), Some("CANCEL"));
    let lines = ics_lines(&ics.text());
    assert_eq!(ics_value(&lines, "UID"), Some(uid.as_str()));
    assert_eq!(ics_value(&lines, "SEQUENCE"), Some("4"));
    let invite = ics.invitation()?;
    assert_eq!(invite.method.as_deref(), Some("CANCEL"));
    assert_eq!(invite.uid, uid, "the same UID as the invitation");
    Ok(())
}

async fn a_republished_event_sends_no_second_mail(backend: Backend) -> Result<()> {
    let env = TestEnv::start(backend).await?;
    let ann = User::new("Ann");
    let registered = ann.registered();
    publish(&env.js, &registered).await?;
    env.smtp.wait_for(&ann.email, WAIT, |_| true).await?;

    // Same event, same Mesh-Message-Id, a new Nats-Msg-Id: the stream stores it again.
    let again = uuid::Uuid::now_v7().to_string();
    let seq = publish_with(&env.js, &registered, Some(&again), None).await?;
    wait_auth(&env.js, seq).await?;
    assert_eq!(env.smtp.messages_to(&ann.email)?.len(), 1);
    assert_eq!(sent_count(env.database()?).await?, 1);
    Ok(())
}

async fn a_cancellation_reaches_every_attendee_once(backend: Backend) -> Result<()> {
    let env = TestEnv::start(backend).await?;
    let olga = User::new("Olga");
    let ann = User::new("Ann");
    let bob = User::new("Bob");
    let cid = User::new("Cid");
    // Dan's UserRegistered arrives late: the mails to him wait for it.
    let dan = User::new("Dan");
    let mut seq = 0;
    for u in [&olga, &ann, &bob, &cid] {
        seq = publish(&env.js, &u.registered()).await?;
    }
    wait_auth(&env.js, seq).await?;

    let mut event = Event::new(&olga);
    publish(&env.js, &event.created()).await?;
    publish(&env.js, &event.rsvp(&ann, None, RsvpStatus::Going)).await?;
    publish(&env.js, &event.rsvp(&bob, None, RsvpStatus::Maybe)).await?;
    publish(&env.js, &event.rsvp(&cid, None, RsvpStatus::Declined)).await?;
    publish(&env.js, &event.rsvp(&dan, None, RsvpStatus::Going)).await?;
    // Every RSVP of a known attendee is mailed before the cancellation is published, so
    // the attendee read model is complete.
    for u in [&ann, &bob, &cid] {
        env.smtp.wait_for(&u.email, WAIT, |_| true).await?;
    }
    poll_until_ok(WAIT, "four attendee rows", || async {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM attendees WHERE event_id = $1")
            .bind(event.snapshot.event_id.to_string())
            .fetch_one(&env.database()?.pool)
            .await?;
        ensure!(n == 4, "{n} rows");
        Ok(())
    })
    .await?;

    let cancelled = event.cancelled();
    publish(&env.js, &cancelled).await?;
    let uid = format!("{}@mesh", event.snapshot.event_id);
    for u in [&ann, &bob] {
        let mail = env
            .smtp
            .wait_for(&u.email, WAIT, |m| {
                m.subject
                    .as_deref()
                    .is_some_and(|s| s.starts_with("Cancelled"))
            })
            .await?;
        let ics = mail.attachment("text/calendar").context("no ics")?;
        assert_eq!(ics.param("method").as_deref(), Some("CANCEL"));
        let lines = ics_lines(&ics.text());
        assert_eq!(ics_value(&lines, "METHOD"), Some("CANCEL"));
        assert_eq!(ics_value(&lines, "STATUS"), Some("CANCELLED"));
        assert_eq!(ics_value(&lines, "UID"), Some(uid.as_str()));
        assert_eq!(
            ics_value(&lines, "SEQUENCE"),
            Some(cancelled.meta.aggregate_version.to_string().as_str())
        );
        let invite = ics.invitation()?;
        assert_eq!(invite.method.as_deref(), Some("CANCEL"));
        assert_eq!(invite.status.as_deref(), Some("CANCELLED"));
        assert_eq!(invite.uid, uid);
        assert_eq!(invite.starts_at, cancelled.event.starts_at);
        assert_eq!(invite.ends_at, cancelled.event.ends_at);
        ensure!(
            mail.list_unsubscribe
                .as_deref()
                .is_some_and(|l| l.ends_with("&kind=event_changed>")),
            "{:?}",
            mail.list_unsubscribe
        );
    }

    // The cancellation is retried for Dan until he is known; then he gets it (and his
    // RSVP's retry, seeing the event cancelled since, no invitation to it), and the
    // others are not mailed again.
    let seq = publish(&env.js, &dan.registered()).await?;
    wait_auth(&env.js, seq).await?;
    env.smtp
        .wait_for(&dan.email, WAIT, |m| {
            m.subject
                .as_deref()
                .is_some_and(|s| s.starts_with("Cancelled"))
        })
        .await?;
    let info = consumer_info(
        &env.js,
        "CALENDAR",
        contracts::subjects::durables::EMAIL_CALENDAR,
    )
    .await?;
    wait_calendar(&env.js, info.delivered.stream_sequence).await?;
    let cancels = |email: &str| -> Result<usize> {
        Ok(env
            .smtp
            .messages_to(email)?
            .iter()
            .filter(|m| {
                m.subject
                    .as_deref()
                    .is_some_and(|s| s.starts_with("Cancelled"))
            })
            .count())
    };
    assert_eq!(cancels(&ann.email)?, 1);
    assert_eq!(cancels(&bob.email)?, 1);
    assert_eq!(cancels(&cid.email)?, 0, "declined attendees are not told");
    assert_eq!(cancels(&dan.email)?, 1);
    assert!(
        env.smtp.messages_to(&dan.email)?.iter().all(|m| !m
            .subject
            .as_deref()
            .is_some_and(|s| s.starts_with("You're going"))),
        "no invitation to a cancelled event"
    );
    let all = env.smtp.messages()?;
    let mut ids: Vec<_> = all.iter().filter_map(|m| m.message_id.clone()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), all.len(), "a mail was sent twice");
    assert_eq!(sent_count(env.database()?).await?, all.len());
    Ok(())
}

async fn a_time_change_updates_the_invitations(backend: Backend) -> Result<()> {
    let env = TestEnv::start(backend).await?;
    let olga = User::new("Olga");
    let ann = User::new("Ann");
    let bob = User::new("Bob");
    let mut seq = 0;
    for u in [&olga, &ann, &bob] {
        seq = publish(&env.js, &u.registered()).await?;
    }
    wait_auth(&env.js, seq).await?;
    let mut event = Event::new(&olga);
    publish(&env.js, &event.created()).await?;
    publish(&env.js, &event.rsvp(&ann, None, RsvpStatus::Going)).await?;
    let seq = publish(&env.js, &event.rsvp(&bob, None, RsvpStatus::Maybe)).await?;
    wait_calendar(&env.js, seq).await?;

    // A retitle tells nobody; a new time tells every going/maybe attendee.
    let seq = publish(&env.js, &event.updated(0)).await?;
    wait_calendar(&env.js, seq).await?;
    let before = env.smtp.messages()?.len();
    let moved = event.updated(24);
    publish(&env.js, &moved).await?;
    let uid = format!("{}@mesh", event.snapshot.event_id);
    for (u, partstat) in [(&ann, "ACCEPTED"), (&bob, "TENTATIVE")] {
        let mail = env
            .smtp
            .wait_for(&u.email, WAIT, |m| {
                m.subject
                    .as_deref()
                    .is_some_and(|s| s.starts_with("New time"))
            })
            .await?;
        let ics = mail.attachment("text/calendar").context("no ics")?;
        assert_eq!(ics.param("method").as_deref(), Some("REQUEST"));
        let lines = ics_lines(&ics.text());
        assert_eq!(ics_value(&lines, "UID"), Some(uid.as_str()));
        assert_eq!(
            ics_value(&lines, "SEQUENCE"),
            Some(moved.meta.aggregate_version.to_string().as_str())
        );
        assert_eq!(
            ics_value(&lines, "DTSTART;TZID=Europe/Berlin"),
            Some("20300602T180000")
        );
        let invite = ics.invitation()?;
        assert_eq!(invite.method.as_deref(), Some("REQUEST"));
        assert_eq!(invite.uid, uid);
        assert_eq!(invite.starts_at, moved.event.starts_at, "the new start");
        assert_eq!(invite.ends_at, moved.event.ends_at);
        let attendee = ics_name(&lines, "ATTENDEE").unwrap_or_default();
        ensure!(
            attendee.contains(&format!("PARTSTAT={partstat}")),
            "{attendee}"
        );
    }
    let info = consumer_info(
        &env.js,
        "CALENDAR",
        contracts::subjects::durables::EMAIL_CALENDAR,
    )
    .await?;
    wait_calendar(&env.js, info.delivered.stream_sequence).await?;
    assert_eq!(
        env.smtp.messages()?.len(),
        before + 2,
        "only the two attendees"
    );
    Ok(())
}

async fn preferences_turn_a_kind_off(backend: Backend) -> Result<()> {
    let env = TestEnv::start(backend).await?;
    let olga = User::new("Olga");
    let ann = User::new("Ann");
    publish(&env.js, &olga.registered()).await?;
    publish(&env.js, &ann.registered()).await?;
    let off = ChannelPreferences {
        rsvp_confirmation: false,
        ..ChannelPreferences::default()
    };
    let seq = publish(&env.js, &ann.preferences(1, off)).await?;
    wait_auth(&env.js, seq).await?;

    let mut event = Event::new(&olga);
    publish(&env.js, &event.created()).await?;
    let seq = publish(&env.js, &event.rsvp(&ann, None, RsvpStatus::Going)).await?;
    wait_calendar(&env.js, seq).await?;
    env.smtp
        .wait_for(&olga.email, WAIT, |m| {
            m.subject
                .as_deref()
                .is_some_and(|s| s.contains("answered going"))
        })
        .await?;
    let to_ann = env.smtp.messages_to(&ann.email)?;
    ensure!(
        to_ann.iter().all(|m| m.attachments.is_empty()),
        "an RSVP confirmation was sent despite the preference"
    );

    // An older preferences event changes nothing; a newer one turns it back on.
    let seq = publish(&env.js, &ann.preferences(0, ChannelPreferences::default())).await?;
    wait_auth(&env.js, seq).await?;
    let seq = publish(
        &env.js,
        &event.rsvp(&ann, Some(RsvpStatus::Going), RsvpStatus::Maybe),
    )
    .await?;
    wait_calendar(&env.js, seq).await?;
    let to_ann = env.smtp.messages_to(&ann.email)?;
    ensure!(
        to_ann.iter().all(|m| m.attachments.is_empty()),
        "old preferences won"
    );

    let seq = publish(&env.js, &ann.preferences(2, ChannelPreferences::default())).await?;
    wait_auth(&env.js, seq).await?;
    publish(
        &env.js,
        &event.rsvp(&ann, Some(RsvpStatus::Maybe), RsvpStatus::Going),
    )
    .await?;
    env.smtp
        .wait_for(&ann.email, WAIT, |m| {
            m.subject
                .as_deref()
                .is_some_and(|s| s.starts_with("You're going"))
        })
        .await?;
    Ok(())
}

async fn an_unknown_version_is_terminated(backend: Backend) -> Result<()> {
    let env = TestEnv::start(backend).await?;
    let ann = User::new("Ann");
    let future = publish_with(&env.js, &ann.registered(), None, Some(99)).await?;
    let garbage = publish_raw(
        &env.js,
        contracts::subjects::auth::USER_REGISTERED_V1,
        contracts::events::event_headers(&ann.registered()),
        b"\xc1 not msgpack".to_vec(),
        None,
        None,
    )
    .await?;
    ensure!(garbage > future);
    let info = wait_auth(&env.js, garbage).await?;
    assert_eq!(info.num_redelivered, 0, "a permanent failure was retried");
    // Still settled a moment later: nothing comes back on the backoff schedule.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let info = consumer_info(&env.js, "AUTH", contracts::subjects::durables::EMAIL_AUTH).await?;
    assert_eq!(info.num_redelivered, 0);
    assert_eq!(info.num_ack_pending, 0);
    assert!(env.smtp.messages()?.is_empty());

    // The consumer goes on with the next message.
    let bob = User::new("Bob");
    publish(&env.js, &bob.registered()).await?;
    env.smtp.wait_for(&bob.email, WAIT, |_| true).await?;
    Ok(())
}

async fn a_mail_waits_for_the_smtp_server(backend: Backend) -> Result<()> {
    let mut env = TestEnv::start(backend).await?;
    env.smtp.stop().await?;
    let ann = User::new("Ann");
    publish(&env.js, &ann.registered()).await?;
    // At least one failed attempt, retried on the backoff schedule.
    poll_until_ok(WAIT, "a redelivery", || async {
        let info =
            consumer_info(&env.js, "AUTH", contracts::subjects::durables::EMAIL_AUTH).await?;
        ensure!(
            info.num_redelivered >= 1,
            "{} redelivered",
            info.num_redelivered
        );
        Ok(())
    })
    .await?;
    assert_eq!(sent_count(env.database()?).await?, 0);

    env.smtp.start_again().await?;
    env.smtp.wait_for(&ann.email, WAIT, |_| true).await?;
    let info = consumer_info(&env.js, "AUTH", contracts::subjects::durables::EMAIL_AUTH).await?;
    wait_auth(&env.js, info.delivered.stream_sequence).await?;
    assert_eq!(env.smtp.messages_to(&ann.email)?.len(), 1);
    assert_eq!(sent_count(env.database()?).await?, 1);
    Ok(())
}

async fn old_events_only_build_read_models(backend: Backend) -> Result<()> {
    let env = TestEnv::start(backend).await?;
    let olga = User::new("Olga");
    let ann = User::new("Ann");
    let long_ago = jiff::Timestamp::now() - jiff::SignedDuration::from_hours(72);
    let mut seq = 0;
    for u in [&olga, &ann] {
        let mut old = u.registered();
        old.meta = EventMeta {
            occurred_at: long_ago,
            ..old.meta
        };
        seq = publish(&env.js, &old).await?;
    }
    wait_auth(&env.js, seq).await?;
    assert!(env.smtp.messages()?.is_empty(), "history was mailed");

    // The users are known from those old events: a fresh RSVP reaches them.
    let mut event = Event::new(&olga);
    publish(&env.js, &event.created()).await?;
    publish(&env.js, &event.rsvp(&ann, None, RsvpStatus::Going)).await?;
    env.smtp.wait_for(&ann.email, WAIT, |_| true).await?;
    env.smtp.wait_for(&olga.email, WAIT, |_| true).await?;
    Ok(())
}

async fn replicas_share_the_durables(backend: Backend) -> Result<()> {
    let mut env = TestEnv::start(backend).await?;
    let second = env.spawn_app().await?;
    let users: Vec<User> = (0..12).map(|i| User::new(&format!("U{i}"))).collect();
    for u in &users {
        publish(&env.js, &u.registered()).await?;
    }
    env.smtp.wait_for_count(users.len(), WAIT).await?;
    let info = consumer_info(&env.js, "AUTH", contracts::subjects::durables::EMAIL_AUTH).await?;
    wait_auth(&env.js, info.delivered.stream_sequence).await?;
    let mails = env.smtp.messages()?;
    assert_eq!(mails.len(), users.len(), "each mail exactly once");
    for u in &users {
        assert_eq!(env.smtp.messages_to(&u.email)?.len(), 1);
    }

    // Both replicas drain and stop cleanly.
    second.stop().await?;
    if let Some(app) = env.app.take() {
        app.stop().await?;
    }
    Ok(())
}

/// The lease that keeps two replicas from sending one mail at once: held by one holder
/// until it runs out or is given back; the holder may renew it; a crashed holder's
/// lease is taken over once it has run out; recording the mail sent gives the lease
/// back, and a sent mail's lease is not taken again by anyone.
async fn one_replica_at_a_time_holds_a_mail(backend: Backend) -> Result<()> {
    use email::store::{Claim, claim_mail, record_sent, release_mail};
    let env = TestEnv::start(backend).await?;
    let db = env.database()?;
    let id = "lease-test@mesh";
    let (now, later) = (1_000_000, 2_000_000);
    assert_eq!(claim_mail(db, id, "a", now, later).await?, Claim::Taken);
    assert_eq!(
        claim_mail(db, id, "b", now + 1, later + 1).await?,
        Claim::Held,
        "b waits while a's lease runs"
    );
    assert_eq!(
        claim_mail(db, id, "a", now + 2, later + 2).await?,
        Claim::Taken,
        "a renews its own lease"
    );
    release_mail(db, id, "b").await?;
    assert_eq!(
        claim_mail(db, id, "b", now + 3, later + 3).await?,
        Claim::Held,
        "only the holder gives a lease back"
    );
    assert_eq!(
        claim_mail(db, id, "b", later + 3, later + 1_000).await?,
        Claim::Taken,
        "a run-out lease is taken over"
    );
    release_mail(db, id, "b").await?;
    assert_eq!(
        claim_mail(db, id, "c", later + 4, later + 5).await?,
        Claim::Taken
    );

    record_sent(
        db,
        id,
        "source-1",
        "c@example.com",
        "rsvp_confirmation",
        "c",
    )
    .await?;
    let leases: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM mail_claims WHERE message_id_header = $1")
            .bind(id)
            .fetch_one(&db.pool)
            .await?;
    assert_eq!(leases, 0, "recording the mail sent gave the lease back");
    assert_eq!(
        claim_mail(db, id, "d", later + 6, later + 7).await?,
        Claim::Sent,
        "a sent mail is not leased again"
    );
    assert_eq!(
        claim_mail(db, id, "c", later + 8, later + 9).await?,
        Claim::Sent,
        "not even by its last holder"
    );
    let sent = email::store::sent_mails(db).await?;
    assert_eq!(sent.len(), 1, "the record went in once: {sent:?}");
    Ok(())
}

/// The real binary: no `SMTP_URL` means `.eml` files (path logged), and SIGTERM drains
/// and exits cleanly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_writes_eml_files_without_smtp_and_stops_on_sigterm() -> Result<()> {
    let nats = integration::NatsServer::start().await?;
    let js = nats.jetstream().await?;
    let dir = tempfile::tempdir()?;
    let mail_dir = dir.path().join("mail");
    let env: std::collections::HashMap<String, String> = [
        ("NATS_URL", nats.url()),
        (
            "DATABASE_URL",
            format!("sqlite://{}", dir.path().join("email.db").display()),
        ),
        ("EMAIL_FILE_DIR", mail_dir.display().to_string()),
        ("SMTP_URL", String::new()),
        ("PUBLIC_BASE_URL", BASE_URL.to_owned()),
        ("EMAIL_BACKOFF_MS", "300".to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    let mut service = integration::ServiceProcess::spawn_binary(
        std::path::PathBuf::from(env!("CARGO_BIN_EXE_mesh-email")),
        env,
    )?;
    service.wait_ready(WAIT).await?;

    // The service provisioned the streams itself (PROVISION defaults to on).
    let ann = User::new("Ann");
    publish(&js, &ann.registered()).await?;
    let file = integration::poll_until(WAIT, "an .eml file", || async {
        std::fs::read_dir(&mail_dir)
            .ok()?
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|x| x == "eml"))
    })
    .await?;
    let text = std::fs::read_to_string(&file)?;
    ensure!(text.contains(&ann.verification_token), "{text}");
    let name = file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    integration::poll_until(WAIT, "the file's path in the log", || async {
        service.log_text().contains(&name).then_some(())
    })
    .await?;

    let status = service.terminate().await?;
    ensure!(status.success(), "exit status {status}");
    ensure!(
        service.log_text().contains("email service stopped"),
        "{}",
        service.log_text()
    );
    Ok(())
}

/// SIGTERM while a mail is in flight (the SMTP server holds it at DATA): the binary keeps
/// running until the server accepts the mail, acknowledges the message, and only then
/// exits, cleanly. Restarted, it sends nothing again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_the_mail_in_flight() -> Result<()> {
    let nats = integration::NatsServer::start().await?;
    let js = nats.jetstream().await?;
    let smtp = integration::smtp::SmtpServer::start().await?;
    let dir = tempfile::tempdir()?;
    let env: std::collections::HashMap<String, String> = [
        ("NATS_URL", nats.url()),
        (
            "DATABASE_URL",
            format!("sqlite://{}", dir.path().join("email.db").display()),
        ),
        ("SMTP_URL", smtp.url()),
        // The held mail waits for the release, not for a client timeout.
        ("SMTP_TIMEOUT_MS", "30000".to_owned()),
        ("SHUTDOWN_GRACE_MS", "30000".to_owned()),
        ("PUBLIC_BASE_URL", BASE_URL.to_owned()),
        ("EMAIL_BACKOFF_MS", "5000".to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    let mut service = integration::ServiceProcess::spawn_binary(
        std::path::PathBuf::from(env!("CARGO_BIN_EXE_mesh-email")),
        env,
    )?;
    service.wait_ready(WAIT).await?;

    smtp.hold()?;
    let ann = User::new("Ann");
    let seq = publish(&js, &ann.registered()).await?;
    integration::poll_until(WAIT, "the welcome mail in flight", || async {
        (!smtp.held().is_empty()).then_some(())
    })
    .await?;

    let log = service.log_path().to_owned();
    let (status, released) =
        tokio::join!(service.terminate_within(Duration::from_secs(40)), async {
            // SIGTERM arrived and the service is draining, with the mail still held.
            integration::poll_until(WAIT, "the service to start draining", || async {
                std::fs::read_to_string(&log)
                    .ok()?
                    .contains("shutdown signal received, draining")
                    .then_some(())
            })
            .await?;
            ensure!(smtp.messages()?.is_empty(), "not accepted yet");
            ensure!(smtp.lost().is_empty(), "the mail in flight was abandoned");
            smtp.release()
        });
    released?;
    let status = status?;
    ensure!(status.success(), "exit status {status}");
    ensure!(
        smtp.lost().is_empty(),
        "the service hung up on its mail in flight"
    );
    assert_eq!(
        smtp.messages_to(&ann.email)?.len(),
        1,
        "delivered during the drain"
    );
    let info = consumer_info(&js, "AUTH", contracts::subjects::durables::EMAIL_AUTH).await?;
    assert_eq!(info.num_ack_pending, 0, "acknowledged before exit");
    assert_eq!(info.num_redelivered, 0);
    ensure!(
        info.ack_floor.stream_sequence >= seq,
        "ack floor {} < {seq}",
        info.ack_floor.stream_sequence
    );

    // Restarted: the next message is handled, the drained one is not mailed again.
    service.respawn()?;
    service.wait_ready(WAIT).await?;
    let bob = User::new("Bob");
    let next = publish(&js, &bob.registered()).await?;
    smtp.wait_for(&bob.email, WAIT, |_| true).await?;
    let info = wait_auth(&js, next).await?;
    assert_eq!(info.num_redelivered, 0);
    assert_eq!(smtp.messages_to(&ann.email)?.len(), 1, "nothing sent twice");
    assert_eq!(smtp.messages()?.len(), 2);
    let status = service.terminate().await?;
    ensure!(status.success(), "exit status {status}");
    Ok(())
}

/// A real SMTP server that requires STARTTLS (its certificate signed by a CA of its own,
/// trusted through `SMTP_TLS_CA_FILE`) and then AUTH with the credentials in `SMTP_URL`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starttls_with_credentials() -> Result<()> {
    let nats = integration::NatsServer::start().await?;
    let smtp = integration::smtp::SmtpServer::start_tls("mesh", "s3cret").await?;
    let dir = tempfile::tempdir()?;
    let db = integration::TestDb::create(Backend::Sqlite, dir.path(), "email").await?;
    let js = nats.jetstream().await?;
    runtime::nats::provision_streams(&js, contracts::subjects::ALL_STREAMS).await?;
    let env = TestEnv {
        nats,
        smtp,
        js,
        db,
        app: None,
        dir,
    };
    let mut config = env.config();
    ensure!(
        config.smtp_url.as_deref().is_some_and(
            |u| u.starts_with("smtp://mesh:s3cret@localhost:") && u.ends_with("?tls=required")
        ),
        "{:?}",
        config.smtp_url
    );
    config.smtp_tls_ca = env.smtp.ca_file().map(std::path::Path::to_path_buf);
    let app = spawn(config).await?;

    let ann = User::new("Ann");
    publish(&env.js, &ann.registered()).await?;
    let mail = env.smtp.wait_for(&ann.email, WAIT, |_| true).await?;
    ensure!(
        mail.subject
            .as_deref()
            .is_some_and(|s| s.contains("Welcome")),
        "{:?}",
        mail.subject
    );
    let log = env.smtp.log_text();
    ensure!(log.contains("AUTH OK mesh"), "logged in: {log}");
    ensure!(log.contains("DATA over TLS"), "sent over TLS: {log}");
    ensure!(!log.contains("AUTH FAILED"), "{log}");
    app.stop().await
}
