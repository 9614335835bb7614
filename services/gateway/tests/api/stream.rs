//! The live notification stream: SSE over core NATS, resume with `Last-Event-ID`,
//! tickets for browsers, several replicas, and shutdown.

use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use contracts::api::Notification;
use contracts::rpc::RpcReply;
use contracts::subjects::buckets;
use contracts::subjects::push;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;
use uuid::Uuid;

use crate::helpers::{
    SseReader, TestApp, assert_problem, notification, notification_seq, publish_live, spawn_app,
    spawn_app_with, stub,
};

const STREAM: &str = "/v1/notifications/stream";
const TICKET: &str = "/v1/notifications/stream/ticket";

/// Opens a stream for `user` with a bearer token.
async fn open(app: &TestApp, user: Uuid) -> SseReader {
    SseReader::new(app.get(STREAM, user).send().await.expect("send")).await
}

/// A user's stored notifications as push holds them (in `seq` order); tests append to
/// it before publishing live, as push commits before it publishes.
type Stored = Arc<Mutex<Vec<Notification>>>;

/// A `since` stub answering from `stored` as push would (newest; after a seq; after an
/// id); each request first waits for a permit from `gate`.
async fn since_stub(app: &TestApp, stored: Stored, gate: Arc<Semaphore>) -> crate::helpers::Stub {
    stub(&app.nats, push::RPC_NOTIFICATIONS_SINCE, move |request| {
        let stored = stored.clone();
        let gate = gate.clone();
        async move {
            gate.acquire().await.expect("gate").forget();
            let limit = request.body["limit"].as_u64().expect("limit") as usize;
            let stored = stored.lock().expect("lock").clone();
            let page: Vec<Notification> = if request.body["newest"] == true {
                stored.last().cloned().into_iter().collect()
            } else if let Some(after) = request.body["after_seq"].as_u64() {
                stored
                    .into_iter()
                    .filter(|n| n.seq.is_some_and(|s| s > after))
                    .take(limit)
                    .collect()
            } else {
                let after: Uuid = request.body["after"]
                    .as_str()
                    .and_then(|s| s.parse().ok())
                    .expect("after is a UUID");
                let mut by_id: Vec<Notification> =
                    stored.into_iter().filter(|n| n.id > after).collect();
                by_id.sort_by_key(|n| n.id);
                by_id.truncate(limit);
                by_id
            };
            Some(RpcReply::ok(serde_json::to_value(page).expect("json")))
        }
    })
    .await
}

/// `n` notifications numbered `first..`, as push stores them.
fn numbered(first: u64, n: u64) -> Vec<Notification> {
    (first..first + n)
        .map(|seq| notification_seq(&format!("n{seq}"), seq))
        .collect()
}

fn seq_of(event: &crate::helpers::SseEvent) -> u64 {
    event
        .id
        .as_deref()
        .and_then(|id| id.parse().ok())
        .unwrap_or_else(|| panic!("event id is a seq: {event:?}"))
}

#[tokio::test]
async fn a_notification_reaches_its_user_only() {
    let app = spawn_app().await;
    let alice = Uuid::now_v7();
    let bob = Uuid::now_v7();
    let mut alice_stream = open(&app, alice).await;
    let mut bob_stream = open(&app, bob).await;

    // Bob's goes first: had it leaked, it would be the first event Alice sees.
    let for_bob = notification("for bob");
    let for_alice = notification("for alice");
    publish_live(&app.nats, bob, &for_bob).await;
    publish_live(&app.nats, alice, &for_alice).await;

    let event = alice_stream.next_event().await;
    assert_eq!(event.id, Some(for_alice.id.to_string()));
    assert_eq!(event.event.as_deref(), Some("notification"));
    assert_eq!(event.notification(), for_alice);
    let raw: Value = serde_json::from_str(&event.data).expect("json");
    assert_eq!(raw["title"], "for alice");
    assert_eq!(bob_stream.next_event().await.notification(), for_bob);
    alice_stream.assert_quiet(Duration::from_millis(300)).await;
    bob_stream.assert_quiet(Duration::from_millis(100)).await;
}

/// Push handles deliveries concurrently, so a newer notification can be published live
/// before an older one: the stream fetches the gap and sends both in `seq` order, once.
/// So a client that stops after any event and resumes from its id misses nothing.
#[tokio::test]
async fn live_notifications_out_of_order_go_out_in_seq_order_once() {
    let app = spawn_app().await;
    let alice = Uuid::now_v7();
    let stored: Stored = Arc::new(Mutex::new(numbered(1, 2)));
    let since = since_stub(&app, stored.clone(), Arc::new(Semaphore::new(100))).await;
    let mut stream = open(&app, alice).await;
    // The stream starts after the newest stored (2) and asked what came after it.
    since.wait_for(2).await;
    let seen = since.seen();
    assert_eq!(seen[0].request.body["newest"], true);
    assert_eq!(seen[1].request.body["after_seq"], 2);

    // 3, 4 and 5 are committed; 5 and 4 are published live before 3, and 4 twice.
    let later = numbered(3, 3);
    stored.lock().unwrap().extend(later.iter().cloned());
    for n in [&later[2], &later[1], &later[0], &later[1]] {
        publish_live(&app.nats, alice, n).await;
    }
    for expected in &later {
        let event = stream.next_event().await;
        assert_eq!(seq_of(&event), expected.seq.unwrap());
        assert_eq!(event.notification(), *expected);
    }
    stream.assert_quiet(Duration::from_millis(300)).await;
    // One fetch filled the gap before 5.
    assert_eq!(since.count(), 3);
    assert_eq!(since.seen()[2].request.body["after_seq"], 2);

    // A live one whose gap push cannot fill (the fetch brings nothing) still goes out.
    let lost = notification_seq("seven", 7);
    publish_live(&app.nats, alice, &lost).await;
    assert_eq!(seq_of(&stream.next_event().await), 7);
}

/// The newest notification is read before subscribing, and what was stored between
/// that read and the subscription comes from the backlog (its live message went out
/// before the subscription existed).
#[tokio::test]
async fn a_new_stream_gets_what_was_stored_while_it_opened() {
    let app = spawn_app().await;
    let user = Uuid::now_v7();
    let stored: Stored = Arc::new(Mutex::new(numbered(1, 3)));
    let racing = notification_seq("stored while opening", 4);
    let store = stored.clone();
    let first = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let _since = stub(&app.nats, push::RPC_NOTIFICATIONS_SINCE, move |request| {
        let store = store.clone();
        let racing = racing.clone();
        let first = first.clone();
        async move {
            let items = store.lock().unwrap().clone();
            let page: Vec<Notification> = if request.body["newest"] == true {
                items.last().cloned().into_iter().collect()
            } else {
                let after = request.body["after_seq"].as_u64().expect("after_seq");
                items
                    .into_iter()
                    .filter(|n| n.seq.is_some_and(|s| s > after))
                    .collect()
            };
            // Right after the newest was read, 4 commits (and is never seen live).
            if first.swap(false, std::sync::atomic::Ordering::SeqCst) {
                store.lock().unwrap().push(racing);
            }
            Some(RpcReply::ok(serde_json::to_value(page).expect("json")))
        }
    })
    .await;
    let mut stream = open(&app, user).await;
    let event = stream.next_event().await;
    assert_eq!(seq_of(&event), 4, "1 to 3 were there before: not sent");
    stream.assert_quiet(Duration::from_millis(300)).await;
}

/// A push older than `seq`: notifications without it are sent by id, each once, in the
/// order they arrive.
#[tokio::test]
async fn live_notifications_without_seq_all_arrive_once() {
    let app = spawn_app().await;
    let alice = Uuid::now_v7();
    let mut stream = open(&app, alice).await;
    let older = notification("older");
    let newer = notification("newer");
    assert!(older.id < newer.id);
    publish_live(&app.nats, alice, &newer).await;
    publish_live(&app.nats, alice, &older).await;
    publish_live(&app.nats, alice, &newer).await;
    assert_eq!(stream.next_event().await.notification(), newer);
    assert_eq!(stream.next_event().await.notification(), older);
    stream.assert_quiet(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn every_replica_delivers_to_its_own_clients() {
    let app = spawn_app().await;
    let replica = app.spawn_replica().await;
    let user = Uuid::now_v7();
    let mut on_first = open(&app, user).await;
    let on_second = app
        .http
        .get(replica.url(STREAM))
        .bearer_auth(app.token(user))
        .send()
        .await
        .expect("send");
    let mut on_second = SseReader::new(on_second).await;

    let n = notification("to both");
    publish_live(&app.nats, user, &n).await;

    assert_eq!(on_first.next_event().await.notification(), n);
    assert_eq!(on_second.next_event().await.notification(), n);
}

#[tokio::test]
async fn reconnecting_gets_the_missed_ones_then_live_without_duplicates() {
    let app = spawn_app().await;
    let user = Uuid::now_v7();
    let all = numbered(1, 4);
    let (seen_before, missed) = (&all[0], &all[1..]);
    let stored: Stored = Arc::new(Mutex::new(all.clone()));
    // The stub holds its answer until the test lets it go.
    let gate = Arc::new(Semaphore::new(0));
    let since = since_stub(&app, stored.clone(), gate.clone()).await;

    let response = app
        .get(STREAM, user)
        .header("last-event-id", "1")
        .send()
        .await
        .expect("send");
    let mut stream = SseReader::new(response).await;
    since.wait_for(1).await;
    let request = &since.seen()[0].request;
    assert_eq!(request.caller.as_ref().map(|c| c.user_id), Some(user));
    assert_eq!(request.body["after_seq"], 1);
    assert_eq!(request.body["limit"], 500);

    // While the backlog is being fetched, the last missed one is also published live
    // (overlap), and so is a new one (stored first, as push does).
    publish_live(&app.nats, user, &missed[2]).await;
    let fresh = notification_seq("new while fetching", 5);
    stored.lock().unwrap().push(fresh.clone());
    publish_live(&app.nats, user, &fresh).await;
    gate.add_permits(1);

    let mut got = Vec::new();
    for _ in 0..4 {
        got.push(stream.next_event().await.notification());
    }
    let mut expected = missed.to_vec();
    expected.push(fresh);
    assert_eq!(got, expected);
    assert!(!got.contains(seen_before));

    let later = notification_seq("later", 6);
    stored.lock().unwrap().push(later.clone());
    publish_live(&app.nats, user, &later).await;
    let event = stream.next_event().await;
    assert_eq!(event.id.as_deref(), Some("6"));
    stream.assert_quiet(Duration::from_millis(300)).await;
    assert_eq!(since.count(), 1, "one page was enough");
}

/// A client that last saw an event of a stream from before `seq` resumes by that id.
#[tokio::test]
async fn an_old_notification_id_still_resumes() {
    let app = spawn_app().await;
    let user = Uuid::now_v7();
    let all = numbered(1, 3);
    let stored: Stored = Arc::new(Mutex::new(all.clone()));
    let since = since_stub(&app, stored.clone(), Arc::new(Semaphore::new(10))).await;
    let response = app
        .get(STREAM, user)
        .header("last-event-id", all[0].id.to_string())
        .send()
        .await
        .expect("send");
    let mut stream = SseReader::new(response).await;
    for expected in &all[1..] {
        let event = stream.next_event().await;
        assert_eq!(event.notification(), *expected);
        assert_eq!(seq_of(&event), expected.seq.unwrap(), "new ids from now on");
    }
    let seen = since.seen();
    assert_eq!(seen[0].request.body["newest"], true);
    assert_eq!(seen[1].request.body["after"], all[0].id.to_string());
    assert_eq!(seen[1].request.body.get("after_seq"), None);
    // Then live by seq: a repeat of 3 is skipped, 4 goes out.
    let next = notification_seq("next", 4);
    stored.lock().unwrap().push(next.clone());
    publish_live(&app.nats, user, &all[2]).await;
    publish_live(&app.nats, user, &next).await;
    assert_eq!(stream.next_event().await.notification(), next);
    stream.assert_quiet(Duration::from_millis(200)).await;
}

#[tokio::test]
async fn a_long_backlog_is_paged() {
    let app = spawn_app().await;
    let user = Uuid::now_v7();
    let all = numbered(1, 521);
    let stored: Stored = Arc::new(Mutex::new(all.clone()));
    let since = since_stub(&app, stored, Arc::new(Semaphore::new(10))).await;

    // The query parameter works like the header.
    let response = app
        .get(&format!("{STREAM}?last_event_id=1"), user)
        .send()
        .await
        .expect("send");
    let mut stream = SseReader::new(response).await;
    for expected in &all[1..] {
        let event = stream.next_event().await;
        assert_eq!(event.id, expected.seq.map(|s| s.to_string()));
    }
    stream.assert_quiet(Duration::from_millis(200)).await;
    let seen = since.seen();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[1].request.body["after_seq"], 501);
}

#[tokio::test]
async fn without_push_the_stream_opens_live_only_with_a_warning() {
    let app = spawn_app().await;
    let user = Uuid::now_v7();
    let response = app
        .get(STREAM, user)
        .header("last-event-id", "5")
        .send()
        .await
        .expect("send");
    let mut stream = SseReader::new(response).await;

    let warning = stream.next_event().await;
    assert_eq!(warning.event.as_deref(), Some("warning"));
    assert!(!warning.data.is_empty());
    let n = notification("live");
    publish_live(&app.nats, user, &n).await;
    assert_eq!(stream.next_event().await.notification(), n);
}

#[tokio::test]
async fn a_last_event_id_must_be_a_seq_or_a_notification_id() {
    let app = spawn_app().await;
    let response = app
        .get(STREAM, Uuid::now_v7())
        .header("last-event-id", "forty-two")
        .send()
        .await
        .expect("send");
    assert_problem(response, 400, "bad_request").await;
}

#[tokio::test]
async fn a_ticket_opens_one_stream_once() {
    let app = spawn_app().await;
    let user = Uuid::now_v7();

    let response = app.post(TICKET, user).send().await.expect("send");
    assert_eq!(response.status(), 201);
    assert_eq!(response.headers()["cache-control"], "no-store");
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["expires_in"], 60);
    let ticket = body["ticket"].as_str().expect("ticket").to_owned();
    assert_eq!(ticket.len(), 43);

    // Not a credential anywhere else.
    let elsewhere = app
        .http
        .get(app.url(&format!("/v1/me?ticket={ticket}")))
        .send()
        .await
        .expect("send");
    assert_problem(elsewhere, 401, "unauthorized").await;

    let url = app.url(&format!("{STREAM}?ticket={ticket}"));
    let mut stream = SseReader::new(app.http.get(&url).send().await.expect("send")).await;
    let n = notification("via ticket");
    publish_live(&app.nats, user, &n).await;
    assert_eq!(stream.next_event().await.notification(), n);

    let again = app.http.get(&url).send().await.expect("send");
    assert_problem(again, 401, "unauthorized").await;
}

#[tokio::test]
async fn a_ticket_works_on_any_replica_but_only_once_under_a_race() {
    let app = spawn_app().await;
    let replica = app.spawn_replica().await;
    let user = Uuid::now_v7();
    let ticket = |response: Value| response["ticket"].as_str().expect("ticket").to_owned();

    // Issued by one replica, spent on the other.
    let issued = app.post(TICKET, user).send().await.expect("send");
    let t = ticket(issued.json().await.expect("json"));
    let on_replica = app
        .http
        .get(replica.url(&format!("{STREAM}?ticket={t}")))
        .send()
        .await
        .expect("send");
    assert_eq!(on_replica.status(), 200);
    drop(on_replica);

    // Two replicas racing with one ticket: exactly one stream opens.
    for _ in 0..5 {
        let issued = app.post(TICKET, user).send().await.expect("send");
        let t = ticket(issued.json().await.expect("json"));
        let a = app
            .http
            .get(app.url(&format!("{STREAM}?ticket={t}")))
            .send();
        let b = app
            .http
            .get(replica.url(&format!("{STREAM}?ticket={t}")))
            .send();
        let (a, b) = tokio::join!(a, b);
        let mut statuses = [
            a.expect("send").status().as_u16(),
            b.expect("send").status().as_u16(),
        ];
        statuses.sort_unstable();
        assert_eq!(statuses, [200, 401]);
    }
}

#[tokio::test]
async fn an_expired_ticket_is_refused_even_before_the_bucket_drops_it() {
    let app = spawn_app_with(|c| c.sse_ticket_ttl = Duration::from_secs(30)).await;
    let issued: Value = app
        .post(TICKET, Uuid::now_v7())
        .send()
        .await
        .expect("send")
        .json()
        .await
        .expect("json");
    assert_eq!(issued["expires_in"], 30);

    // Records written as the gateway writes them, one past its expiry (which the bucket
    // has not purged, its max age being 30 s), one still valid.
    let kv = async_nats::jetstream::new(app.nats.clone())
        .get_key_value(buckets::SSE_TICKETS)
        .await
        .expect("bucket");
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64;
    let user = Uuid::now_v7();
    let mut urls = Vec::new();
    for (name, expires_at_ms) in [("expired", now_ms - 1_000), ("valid", now_ms + 30_000)] {
        let ticket = format!("{name:_<43}");
        let record = json!({"user_id": user, "role": "user", "expires_at_ms": expires_at_ms});
        kv.put(
            hex::encode(Sha256::digest(ticket.as_bytes())),
            serde_json::to_vec(&record).expect("json").into(),
        )
        .await
        .expect("put");
        urls.push(app.url(&format!("{STREAM}?ticket={ticket}")));
    }

    let expired = app.http.get(&urls[0]).send().await.expect("send");
    assert_problem(expired, 401, "unauthorized").await;
    let valid = app.http.get(&urls[1]).send().await.expect("send");
    assert_eq!(valid.status(), 200);
}

#[tokio::test]
async fn missing_or_invalid_credentials_are_401() {
    let app = spawn_app().await;
    let no_auth = app.http.get(app.url(STREAM)).send().await.expect("send");
    assert_eq!(no_auth.headers()["www-authenticate"], "Bearer");
    assert_problem(no_auth, 401, "unauthorized").await;

    let bad_token = app
        .http
        .get(app.url(STREAM))
        .bearer_auth("not.a.token")
        .send()
        .await
        .expect("send");
    assert_problem(bad_token, 401, "unauthorized").await;

    let expired = app
        .http
        .get(app.url(STREAM))
        .bearer_auth(app.signer.token(Uuid::now_v7(), contracts::Role::User, -60))
        .send()
        .await
        .expect("send");
    assert_problem(expired, 401, "unauthorized").await;

    for ticket in ["nope", &"A".repeat(43)] {
        let response = app
            .http
            .get(app.url(&format!("{STREAM}?ticket={ticket}")))
            .send()
            .await
            .expect("send");
        assert_problem(response, 401, "unauthorized").await;
    }

    let no_ticket_auth = app.http.post(app.url(TICKET)).send().await.expect("send");
    assert_problem(no_ticket_auth, 401, "unauthorized").await;
    let wrong_method = app.post(STREAM, Uuid::now_v7()).send().await.expect("send");
    assert_problem(wrong_method, 405, "method_not_allowed").await;
}

#[tokio::test]
async fn connecting_counts_against_the_rate_limit() {
    let app = spawn_app_with(|c| {
        c.rate_limit_user_per_sec = NonZeroU32::MIN;
        c.rate_limit_user_burst = NonZeroU32::MIN;
    })
    .await;
    let user = Uuid::now_v7();
    let _first = open(&app, user).await;
    let second = app.get(STREAM, user).send().await.expect("send");
    assert_problem(second, 429, "rate_limited").await;
}

#[tokio::test]
async fn streams_outlive_the_request_timeout_and_get_keep_alives() {
    let app = spawn_app_with(|c| {
        c.http_timeout = Duration::from_millis(300);
        c.sse_keepalive = Duration::from_secs(1);
    })
    .await;
    let user = Uuid::now_v7();
    let mut stream = open(&app, user).await;
    let opened = Instant::now();

    // Nothing to say for over a second: only keep-alive comments arrive.
    stream.assert_quiet(Duration::from_millis(1300)).await;
    assert!(stream.comments >= 1, "a keep-alive comment arrived");
    assert!(opened.elapsed() > Duration::from_secs(1));

    let n = notification("still open");
    publish_live(&app.nats, user, &n).await;
    assert_eq!(stream.next_event().await.notification(), n);
}

#[tokio::test]
async fn shutdown_ends_open_streams() {
    let mut app = spawn_app_with(|c| c.common.shutdown_grace = Duration::from_secs(30)).await;
    let user = Uuid::now_v7();
    let mut streams = Vec::new();
    for _ in 0..3 {
        streams.push(open(&app, user).await);
    }
    let n = notification("before shutdown");
    publish_live(&app.nats, user, &n).await;
    for s in &mut streams {
        assert_eq!(s.next_event().await.notification(), n);
    }

    let started = Instant::now();
    assert!(app.stop().await, "the gateway stopped");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "stopping took {:?} with streams open",
        started.elapsed()
    );
    for s in &mut streams {
        assert!(s.wait_end(Duration::from_secs(2)).await, "stream ended");
    }
}

#[tokio::test]
async fn a_nats_reconnect_ends_streams_so_clients_resume() {
    let mut app = spawn_app().await;
    let user = Uuid::now_v7();
    let mut stream = open(&app, user).await;

    app.restart_nats().await;

    // Whatever push published during the gap is lost to this subscription: the stream
    // ends so that EventSource reconnects with Last-Event-ID.
    assert!(
        stream.wait_end(Duration::from_secs(10)).await,
        "stream ended"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut again = loop {
        let response = app.get(STREAM, user).send().await.expect("send");
        if response.status() == 200 {
            break SseReader::new(response).await;
        }
        assert!(Instant::now() < deadline, "no stream after the reconnect");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let n = notification("after the reconnect");
    publish_live(&app.nats, user, &n).await;
    assert_eq!(again.next_event().await.notification(), n);
}

/// Reads from `socket` until `done` holds for what was read (or fails at the deadline);
/// `None` when the peer closed first.
async fn read_until(
    socket: &mut tokio::net::TcpStream,
    read: &mut Vec<u8>,
    done: impl Fn(&[u8]) -> bool,
) -> Option<()> {
    use tokio::io::AsyncReadExt;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done(read) {
        let mut buf = [0u8; 4096];
        let left = deadline.saturating_duration_since(Instant::now());
        let n = tokio::time::timeout(left, socket.read(&mut buf))
            .await
            .expect("nothing arrived before the deadline")
            .expect("read");
        if n == 0 {
            return None;
        }
        read.extend_from_slice(&buf[..n]);
    }
    Some(())
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w.eq_ignore_ascii_case(needle.as_bytes()))
}

/// Reads until the peer closes; false if it does not within the deadline.
async fn closes(socket: &mut tokio::net::TcpStream) -> bool {
    use tokio::io::AsyncReadExt;
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, socket.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => {}
        }
    }
}

fn stream_request(token: Option<&str>) -> String {
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    format!("GET {STREAM} HTTP/1.1\r\nHost: gw\r\n{auth}Accept: text/event-stream\r\n\r\n")
}

/// Reads a response head (and whatever came with it) and checks it is a 200.
async fn read_ok_head(socket: &mut tokio::net::TcpStream) -> Vec<u8> {
    let mut read = Vec::new();
    read_until(socket, &mut read, |r| contains(r, "\r\n\r\n"))
        .await
        .expect("a response head");
    assert!(
        read.starts_with(b"HTTP/1.1 200 OK\r\n"),
        "{}",
        String::from_utf8_lossy(&read)
    );
    read
}

/// A new connection to the gateway on which `request` was sent.
async fn send_on_new_connection(app: &TestApp, request: &[u8]) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let addr = app.base.trim_start_matches("http://");
    let mut socket = tokio::net::TcpStream::connect(addr).await.expect("connect");
    socket.write_all(request).await.expect("write");
    socket
}

/// What `EventSource` does: a fresh connection whose first request is the stream. The
/// gateway answers it with its own HTTP/1 writer (no hyper buffers for an idle stream):
/// the same headers, chunked events, and the connection is released when the client
/// leaves.
#[tokio::test]
async fn a_stream_on_a_fresh_connection_is_served_and_released_when_the_client_leaves() {
    use tokio::io::AsyncWriteExt;
    let app = spawn_app().await;
    let user = Uuid::now_v7();
    let mut socket =
        send_on_new_connection(&app, stream_request(Some(&app.token(user))).as_bytes()).await;
    let mut read = read_ok_head(&mut socket).await;
    for header in [
        "content-type: text/event-stream",
        "transfer-encoding: chunked",
        "connection: close",
        "x-request-id: ",
        "date: ",
    ] {
        assert!(
            contains(&read, header),
            "no {header:?} in {}",
            String::from_utf8_lossy(&read)
        );
    }
    // Registered before the head was sent: a notification published now arrives.
    let n = notification("over the lean path");
    publish_live(&app.nats, user, &n).await;
    let id = n.id.to_string();
    read_until(&mut socket, &mut read, |r| {
        contains(r, &id) && contains(r, "\n\n")
    })
    .await
    .expect("the notification");
    let text = String::from_utf8_lossy(&read);
    assert!(text.contains("event: notification"), "{text}");
    assert!(text.contains("over the lean path"), "{text}");
    // The client leaves (closes its side): the gateway ends the stream and closes.
    socket.shutdown().await.expect("shutdown");
    assert!(closes(&mut socket).await, "the gateway kept the connection");
}

/// Refusals on that path are whole problem+json answers, and the connection closes.
#[tokio::test]
async fn a_refused_stream_on_a_fresh_connection_is_a_complete_problem_answer() {
    let app = spawn_app().await;
    let mut socket = send_on_new_connection(&app, stream_request(None).as_bytes()).await;
    let mut read = Vec::new();
    assert!(
        read_until(&mut socket, &mut read, |r| contains(
            r,
            "\"code\":\"unauthorized\""
        ))
        .await
        .is_some(),
        "{}",
        String::from_utf8_lossy(&read)
    );
    assert!(read.starts_with(b"HTTP/1.1 401 Unauthorized\r\n"));
    assert!(contains(&read, "content-type: application/problem+json"));
    assert!(contains(&read, "content-length: "));
    assert!(closes(&mut socket).await, "the gateway kept the connection");
}

/// A stream asked for on a connection that already served a request is hyper's, as
/// any request: it works the same.
#[tokio::test]
async fn a_stream_later_on_a_kept_alive_connection_works_too() {
    use tokio::io::AsyncWriteExt;
    let app = spawn_app().await;
    let user = Uuid::now_v7();
    let mut socket =
        send_on_new_connection(&app, b"GET /healthz HTTP/1.1\r\nHost: gw\r\n\r\n").await;
    let mut read = read_ok_head(&mut socket).await;
    assert!(!contains(&read, "connection: close"));
    // The health body is short: wait for all of it before the next request.
    tokio::time::sleep(Duration::from_millis(100)).await;
    socket
        .write_all(stream_request(Some(&app.token(user))).as_bytes())
        .await
        .expect("write");
    read.clear();
    read_until(&mut socket, &mut read, |r| contains(r, "text/event-stream"))
        .await
        .expect("stream head");
    let n = notification("over hyper");
    publish_live(&app.nats, user, &n).await;
    let id = n.id.to_string();
    read_until(&mut socket, &mut read, |r| contains(r, &id))
        .await
        .expect("the notification");
}
