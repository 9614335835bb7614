//! What each domain event tells whom: stored in history, sent live, once.

use anyhow::Result;
use contracts::api::{ChannelPreferences, NotificationKind};
use contracts::events::RsvpStatus;
use contracts::subjects::headers as h;
use jiff::{SignedDuration, Timestamp};

use crate::both_backends;
use crate::helpers::*;

both_backends!(
    an_rsvp_reaches_history_and_the_live_stream,
    a_redelivered_event_notifies_once,
    a_cancellation_tells_everyone_going_or_maybe,
    a_new_time_tells_attendees_and_other_edits_do_not,
    preferences_switch_a_kind_off,
    old_events_only_feed_the_read_models,
    delivery_order_does_not_change_who_is_told,
);

async fn an_rsvp_reaches_history_and_the_live_stream(backend: Backend) -> Result<()> {
    let nats = NatsServer::start().await?;
    let db = TestDb::new(backend).await?;
    let app = TestApp::spawn(&nats, &db).await?;
    let (organizer, ada) = (id(), id());
    let mut organizer_live = app.live(organizer).await?;
    let mut ada_live = app.live(ada).await?;

    app.publish(&registered(ada, "Ada")).await?;
    app.wait_auth().await?;
    let mut ev = EventFixture::new(organizer);
    app.publish(&ev.created()).await?;
    app.publish(&ev.rsvp(ada, RsvpStatus::Going)).await?;

    let live = organizer_live.next().await?;
    let n = &live.notification;
    assert_eq!(n.kind, NotificationKind::RsvpReceived);
    assert_eq!(n.title, "Ada is going to Rust meetup");
    assert_eq!(n.event_id, Some(ev.id()));
    assert_eq!(n.read_at, None);
    let id_text = n.id.to_string();
    assert_eq!(live.header(h::MESSAGE_ID), Some(id_text.as_str()));

    let page = app.history(organizer).await?;
    assert_eq!(
        page.items,
        vec![n.clone()],
        "history holds what was sent live"
    );
    assert_eq!(page.unread, 1);
    assert_eq!(page.next_cursor, None);

    let confirmation = ada_live.next().await?.notification;
    assert_eq!(confirmation.kind, NotificationKind::RsvpConfirmation);
    assert_eq!(confirmation.title, "You're going to Rust meetup");
    assert_eq!(app.history(ada).await?.items, vec![confirmation]);

    app.wait_calendar().await?;
    organizer_live.expect_silence().await?;
    app.stop().await
}

async fn a_redelivered_event_notifies_once(backend: Backend) -> Result<()> {
    let nats = NatsServer::start().await?;
    let db = TestDb::new(backend).await?;
    let app = TestApp::spawn(&nats, &db).await?;
    let (organizer, attendee) = (id(), id());
    let mut live = app.live(organizer).await?;
    let mut ev = EventFixture::new(organizer);
    app.publish(&ev.created()).await?;
    let rsvp = ev.rsvp(attendee, RsvpStatus::Maybe);
    app.publish(&rsvp).await?;
    let first = live.next().await?.notification;
    assert_eq!(first.title, "Someone might go to Rust meetup");

    // The same event again under a new Nats-Msg-Id: the stream stores it, push must not
    // act on it twice.
    app.republish(&rsvp).await?;
    app.wait_calendar().await?;
    live.expect_silence().await?;
    assert_eq!(app.history(organizer).await?.items, vec![first.clone()]);
    assert_eq!(app.history(attendee).await?.items.len(), 1);

    // Even with the ledger and the attendee's version forgotten, the notification's own
    // key (source message, user, kind) holds.
    for table in ["processed_messages", "attendees"] {
        sqlx::query(sqlx::AssertSqlSafe(format!("DELETE FROM {table}")))
            .execute(&app.db.pool)
            .await?;
    }
    app.republish(&rsvp).await?;
    app.wait_calendar().await?;
    live.expect_silence().await?;
    assert_eq!(app.history(organizer).await?.items, vec![first]);
    assert_eq!(app.count("notifications").await?, 2);
    app.stop().await
}

async fn a_cancellation_tells_everyone_going_or_maybe(backend: Backend) -> Result<()> {
    let nats = NatsServer::start().await?;
    let db = TestDb::new(backend).await?;
    let app = TestApp::spawn(&nats, &db).await?;
    let organizer = id();
    let (going, maybe, declined, changed_mind) = (id(), id(), id(), id());
    let mut ev = EventFixture::new(organizer);
    app.publish(&ev.created()).await?;
    app.publish(&ev.rsvp(going, RsvpStatus::Going)).await?;
    app.publish(&ev.rsvp(maybe, RsvpStatus::Maybe)).await?;
    app.publish(&ev.rsvp(declined, RsvpStatus::Declined))
        .await?;
    app.publish(&ev.rsvp(changed_mind, RsvpStatus::Going))
        .await?;
    app.publish(&ev.rsvp(changed_mind, RsvpStatus::Declined))
        .await?;
    // The organizer attends too, but made the change and is not told about it.
    app.publish(&ev.rsvp(organizer, RsvpStatus::Going)).await?;
    app.wait_calendar().await?;

    let mut going_live = app.live(going).await?;
    let mut maybe_live = app.live(maybe).await?;
    let mut declined_live = app.live(declined).await?;
    let mut changed_live = app.live(changed_mind).await?;
    let mut organizer_live = app.live(organizer).await?;
    app.publish(&ev.cancelled()).await?;

    for live in [&mut going_live, &mut maybe_live] {
        let n = live.next().await?.notification;
        assert_eq!(n.kind, NotificationKind::EventChanged);
        assert_eq!(n.title, "Rust meetup was cancelled");
        assert_eq!(n.event_id, Some(ev.id()));
    }
    app.wait_calendar().await?;
    for live in [
        &mut going_live,
        &mut maybe_live,
        &mut declined_live,
        &mut changed_live,
        &mut organizer_live,
    ] {
        live.expect_silence().await?;
    }
    for (who, changed) in [
        (going, 1),
        (maybe, 1),
        (declined, 0),
        (changed_mind, 0),
        (organizer, 0),
    ] {
        let items = app.history(who).await?.items;
        assert_eq!(
            of_kind(&items, NotificationKind::EventChanged).len(),
            changed,
            "{who}: {:?}",
            kinds(&items)
        );
    }
    app.stop().await
}

async fn a_new_time_tells_attendees_and_other_edits_do_not(backend: Backend) -> Result<()> {
    let nats = NatsServer::start().await?;
    let db = TestDb::new(backend).await?;
    let app = TestApp::spawn(&nats, &db).await?;
    let (organizer, attendee, declined) = (id(), id(), id());
    let mut ev = EventFixture::new(organizer);
    app.publish(&ev.created()).await?;
    app.publish(&ev.rsvp(attendee, RsvpStatus::Going)).await?;
    app.publish(&ev.rsvp(declined, RsvpStatus::Declined))
        .await?;
    app.wait_calendar().await?;
    let mut live = app.live(attendee).await?;

    app.publish(&ev.retitled("Rust & Wasm meetup")).await?;
    app.publish(&ev.moved(SignedDuration::from_hours(1)))
        .await?;
    let n = live.next().await?.notification;
    assert_eq!(n.kind, NotificationKind::EventChanged);
    assert_eq!(n.title, "Rust & Wasm meetup has a new time");
    app.wait_calendar().await?;
    live.expect_silence().await?;
    let declined_items = app.history(declined).await?.items;
    assert_eq!(
        kinds(&declined_items),
        vec![NotificationKind::RsvpConfirmation]
    );
    assert!(
        of_kind(
            &app.history(organizer).await?.items,
            NotificationKind::EventChanged
        )
        .is_empty()
    );
    app.stop().await
}

async fn preferences_switch_a_kind_off(backend: Backend) -> Result<()> {
    let nats = NatsServer::start().await?;
    let db = TestDb::new(backend).await?;
    let app = TestApp::spawn(&nats, &db).await?;
    let (organizer, first, second, third) = (id(), id(), id(), id());
    let quiet = ChannelPreferences {
        rsvp_received: false,
        ..ChannelPreferences::default()
    };
    app.publish(&preferences(organizer, 1, quiet)).await?;
    app.wait_auth().await?;

    let mut ev = EventFixture::new(organizer);
    app.publish(&ev.created()).await?;
    app.publish(&ev.rsvp(first, RsvpStatus::Going)).await?;
    app.wait_calendar().await?;
    assert!(app.history(organizer).await?.items.is_empty());
    assert_eq!(
        kinds(&app.history(first).await?.items),
        vec![NotificationKind::RsvpConfirmation],
        "the attendee's own kind is still on"
    );

    // On again (version 2); a late copy of version 1 does not switch it back off.
    app.publish(&preferences(organizer, 2, ChannelPreferences::default()))
        .await?;
    app.wait_auth().await?;
    app.publish(&preferences(organizer, 1, quiet)).await?;
    app.wait_auth().await?;
    app.publish(&ev.rsvp(second, RsvpStatus::Going)).await?;
    let items = app.wait_history(organizer, 1).await?;
    assert_eq!(kinds(&items), vec![NotificationKind::RsvpReceived]);

    // Off for the attendee's confirmation only.
    let no_confirmation = ChannelPreferences {
        rsvp_confirmation: false,
        ..ChannelPreferences::default()
    };
    app.publish(&preferences(third, 1, no_confirmation)).await?;
    app.wait_auth().await?;
    app.publish(&ev.rsvp(third, RsvpStatus::Maybe)).await?;
    app.wait_history(organizer, 2).await?;
    app.wait_calendar().await?;
    assert!(app.history(third).await?.items.is_empty());
    app.stop().await
}

async fn old_events_only_feed_the_read_models(backend: Backend) -> Result<()> {
    let nats = NatsServer::start().await?;
    let db = TestDb::new(backend).await?;
    let app = TestApp::spawn(&nats, &db).await?;
    let (organizer, attendee) = (id(), id());
    let two_days_ago = Timestamp::now() - SignedDuration::from_hours(48);
    let mut ev = EventFixture::new(organizer);
    let mut created = ev.created();
    created.meta = meta_at(ev.id(), created.meta.aggregate_version, two_days_ago);
    let mut rsvp = ev.rsvp(attendee, RsvpStatus::Going);
    rsvp.meta = meta_at(ev.id(), rsvp.meta.aggregate_version, two_days_ago);
    app.publish(&created).await?;
    app.publish(&rsvp).await?;
    app.wait_calendar().await?;
    assert_eq!(
        app.count("notifications").await?,
        0,
        "a replay tells no one"
    );
    assert_eq!(
        app.count("attendees").await?,
        1,
        "but builds the read model"
    );

    // The hospital's replay of an old event that failed back then notifies however
    // late: an operator asked for it.
    let late = id();
    let mut replayed = ev.rsvp(late, RsvpStatus::Going);
    replayed.meta = meta_at(ev.id(), replayed.meta.aggregate_version, two_days_ago);
    app.publish_replay(
        "CALENDAR",
        CALENDAR_DURABLE,
        &replayed,
        "park:push-calendar:CALENDAR:7",
    )
    .await?;
    let items = app.wait_history(organizer, 1).await?;
    assert_eq!(kinds(&items), vec![NotificationKind::RsvpReceived]);
    let items = app.wait_history(late, 1).await?;
    assert_eq!(kinds(&items), vec![NotificationKind::RsvpConfirmation]);

    let mut live = app.live(attendee).await?;
    app.publish(&ev.cancelled()).await?;
    let n = live.next().await?.notification;
    assert_eq!(n.title, "Rust meetup was cancelled");
    app.stop().await
}

async fn delivery_order_does_not_change_who_is_told(backend: Backend) -> Result<()> {
    let nats = NatsServer::start().await?;
    let db = TestDb::new(backend).await?;
    let app = TestApp::spawn(&nats, &db).await?;

    // RSVPs given before the cancellation but handled after it still tell their
    // attendees (the events are published out of order on purpose).
    let (organizer, a, b) = (id(), id(), id());
    let mut ev = EventFixture::new(organizer);
    let created = ev.created();
    let rsvp_a = ev.rsvp(a, RsvpStatus::Going);
    let rsvp_b = ev.rsvp(b, RsvpStatus::Maybe);
    let cancelled = ev.cancelled();
    app.publish(&created).await?;
    app.publish(&cancelled).await?;
    app.wait_calendar().await?;
    app.publish(&rsvp_b).await?;
    app.publish(&rsvp_a).await?;
    app.wait_calendar().await?;
    for who in [a, b] {
        let items = app.history(who).await?.items;
        assert_eq!(
            of_kind(&items, NotificationKind::EventChanged).len(),
            1,
            "{:?}",
            kinds(&items)
        );
    }
    assert_eq!(app.history(organizer).await?.items.len(), 2);

    // A newer answer handled first supersedes an older one handled later.
    let (organizer, c) = (id(), id());
    let mut ev = EventFixture::new(organizer);
    let created = ev.created();
    let going = ev.rsvp(c, RsvpStatus::Going);
    let declined = ev.rsvp(c, RsvpStatus::Declined);
    app.publish(&created).await?;
    app.publish(&declined).await?;
    app.wait_calendar().await?;
    app.publish(&going).await?;
    app.wait_calendar().await?;
    let items = app.history(organizer).await?.items;
    assert_eq!(items.len(), 1);
    assert_eq!(items[0].title, "Someone can't go to Rust meetup");
    let items = app.history(c).await?.items;
    assert_eq!(items.len(), 1);
    assert_eq!(items[0].title, "You declined Rust meetup");
    app.stop().await
}
