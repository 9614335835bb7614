//! Deliveries reordered (concurrent handlers, retries) and late replays: what is mailed
//! does not depend on the order in which events are handled.

use anyhow::{Context, Result, ensure};
use contracts::api::NotificationKind;
use contracts::events::{EventMeta, RsvpStatus};
use contracts::subjects::durables;
use email::compose::{Kind, message_id};
use integration::Backend;
use integration::smtp::ReceivedMail;

use crate::both_backends;
use crate::helpers::*;

both_backends!(
    delivery_order_does_not_change_what_is_mailed,
    a_late_replay_is_still_mailed,
);

/// The mails to `email` that carry an invitation (welcome mails do not).
fn invitations(env: &TestEnv, email: &str) -> Result<Vec<ReceivedMail>> {
    Ok(env
        .smtp
        .messages_to(email)?
        .into_iter()
        .filter(|m| m.attachment("text/calendar").is_some())
        .collect())
}

async fn delivery_order_does_not_change_what_is_mailed(backend: Backend) -> Result<()> {
    let env = TestEnv::start(backend).await?;
    let (olga, ann, bob, cid) = (
        User::new("Olga"),
        User::new("Ann"),
        User::new("Bob"),
        User::new("Cid"),
    );
    let mut seq = 0;
    for u in [&olga, &ann, &bob, &cid] {
        seq = publish(&env.js, &u.registered()).await?;
    }
    wait_auth(&env.js, seq).await?;

    // Answers given before the cancellation, handled after it (published out of order on
    // purpose): the attendees get the cancellation, never an invitation to a cancelled
    // event, and the organizer still hears of each answer.
    let mut event = Event::new(&olga);
    let created = event.created();
    let ann_going = event.rsvp(&ann, None, RsvpStatus::Going);
    let bob_maybe = event.rsvp(&bob, None, RsvpStatus::Maybe);
    let cancelled = event.cancelled();
    publish(&env.js, &created).await?;
    let seq = publish(&env.js, &cancelled).await?;
    wait_calendar(&env.js, seq).await?;
    publish(&env.js, &bob_maybe).await?;
    let seq = publish(&env.js, &ann_going).await?;
    wait_calendar(&env.js, seq).await?;
    let uid = format!("{}@mesh", event.snapshot.event_id);
    for u in [&ann, &bob] {
        let mails = invitations(&env, &u.email)?;
        ensure!(mails.len() == 1, "{}: {} invitations", u.name, mails.len());
        let mail = &mails[0];
        ensure!(
            mail.subject
                .as_deref()
                .is_some_and(|s| s.starts_with("Cancelled")),
            "{:?}",
            mail.subject
        );
        let ics = mail.attachment("text/calendar").context("ics")?;
        assert_eq!(ics.param("method").as_deref(), Some("CANCEL"));
        let lines = ics_lines(&ics.text());
        assert_eq!(ics_value(&lines, "METHOD"), Some("CANCEL"));
        assert_eq!(ics_value(&lines, "UID"), Some(uid.as_str()));
        assert_eq!(
            ics_value(&lines, "SEQUENCE"),
            Some(cancelled.meta.aggregate_version.to_string().as_str())
        );
        let invite = ics.invitation()?;
        assert_eq!(invite.method.as_deref(), Some("CANCEL"));
        assert_eq!(invite.uid, uid);
        // The cancellation's own Message-ID: had its handler known the attendee, the
        // same mail would have gone out once.
        let expected = message_id(
            &cancelled.meta.message_id.to_string(),
            &u.email,
            Kind::Notification(NotificationKind::EventChanged),
        );
        assert_eq!(
            mail.message_id.as_deref(),
            Some(expected.trim_matches(['<', '>']))
        );
    }
    let notices = env
        .smtp
        .messages_to(&olga.email)?
        .into_iter()
        .filter(|m| {
            m.subject
                .as_deref()
                .is_some_and(|s| s.contains(" answered "))
        })
        .count();
    assert_eq!(notices, 2, "the organizer hears of both answers");

    // A time change handled before an earlier answer: the confirmation carries the new
    // time (the change's own mail did not know this attendee).
    let mut event = Event::new(&olga);
    let created = event.created();
    let cid_going = event.rsvp(&cid, None, RsvpStatus::Going);
    let moved = event.updated(24);
    publish(&env.js, &created).await?;
    let seq = publish(&env.js, &moved).await?;
    wait_calendar(&env.js, seq).await?;
    let seq = publish(&env.js, &cid_going).await?;
    wait_calendar(&env.js, seq).await?;
    let mails = invitations(&env, &cid.email)?;
    ensure!(mails.len() == 1, "Cid: {} invitations", mails.len());
    let mail = &mails[0];
    ensure!(
        mail.subject
            .as_deref()
            .is_some_and(|s| s.starts_with("You're going")),
        "{:?}",
        mail.subject
    );
    let ics = mail.attachment("text/calendar").context("ics")?;
    let lines = ics_lines(&ics.text());
    assert_eq!(ics_value(&lines, "METHOD"), Some("REQUEST"));
    assert_eq!(
        ics_value(&lines, "DTSTART;TZID=Europe/Berlin"),
        Some("20300602T180000"),
        "the new time"
    );
    assert_eq!(
        ics_value(&lines, "SEQUENCE"),
        Some(moved.meta.aggregate_version.to_string().as_str())
    );
    let invite = ics.invitation()?;
    assert_eq!(invite.starts_at, moved.event.starts_at, "the new start");
    assert_eq!(invite.ends_at, moved.event.ends_at);
    let text = mail.text.clone().unwrap_or_default();
    ensure!(
        text.contains("2 June 2030"),
        "the body shows the new day: {text}"
    );

    // Nothing went out twice.
    let all = env.smtp.messages()?;
    let mut ids: Vec<_> = all.iter().filter_map(|m| m.message_id.clone()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), all.len(), "a mail was sent twice");
    Ok(())
}

async fn a_late_replay_is_still_mailed(backend: Backend) -> Result<()> {
    let env = TestEnv::start(backend).await?;
    let long_ago = jiff::Timestamp::now() - jiff::SignedDuration::from_hours(72);
    let old = |u: &User| {
        let mut e = u.registered();
        e.meta = EventMeta {
            occurred_at: long_ago,
            ..e.meta
        };
        e
    };
    // Read models only: too old to mail.
    let ann = User::new("Ann");
    let seq = publish(&env.js, &old(&ann)).await?;
    wait_auth(&env.js, seq).await?;
    assert!(env.smtp.messages()?.is_empty(), "history was mailed");

    // Bob's registration failed back then and was parked; days later an operator
    // replays it from the hospital: the welcome mail goes out now.
    let bob = User::new("Bob");
    let registered = old(&bob);
    let seq = publish_replay(
        &env.js,
        "AUTH",
        durables::EMAIL_AUTH,
        &registered,
        "park:email-auth:AUTH:3",
    )
    .await?;
    let mail = env.smtp.wait_for(&bob.email, WAIT, |_| true).await?;
    ensure!(
        mail.subject
            .as_deref()
            .is_some_and(|s| s.contains("Welcome")),
        "{:?}",
        mail.subject
    );
    wait_auth(&env.js, seq).await?;
    assert_eq!(env.smtp.messages()?.len(), 1, "only the replay was mailed");
    Ok(())
}
