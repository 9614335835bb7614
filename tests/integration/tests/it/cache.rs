//! The gateway's cache of calendar reads: repeated reads are answered by the gateway,
//! per caller; a write through one gateway is read back at once on that gateway, and
//! the calendar's own event makes every other gateway's copy stale within the event's
//! delivery time (far below the answers' max age); lists go stale on any event.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use integration::{Api, Fleet, NatsServer, poll_until_ok};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::on_each_backend;

fn x_cache(headers: &reqwest::header::HeaderMap) -> &str {
    headers
        .get("x-cache")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

/// GET `path`, asserting 200; returns the `X-Cache` value and the body.
async fn read(api: &Api, path: &str, token: &str) -> Result<(String, Value)> {
    let (status, headers, body) = api.get(path, Some(token)).await?;
    ensure!(status == StatusCode::OK, "GET {path}: {status} {body}");
    Ok((x_cache(&headers).to_owned(), body))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calendar_reads_are_cached_and_kept_fresh_by_events() -> Result<()> {
    on_each_backend(|backend| async move {
        let nats = NatsServer::start().await?;
        let fleet = Fleet::builder(backend, nats.url())
            .service("auth", 1)
            .service("calendar", 1)
            .service("gateway", 2)
            .start()
            .await?;
        let one = Api::new(fleet.process("gateway#1")?.url(""));
        let two = Api::new(fleet.process("gateway#2")?.url(""));
        let (_, ada) = one.new_user("Ada").await?;
        let (_, bob) = one.new_user("Bob").await?;

        let event = json!({
            "title": "Cache party", "starts_at": "2031-03-01T18:00:00+01:00",
            "ends_at": "2031-03-01T20:00:00+01:00", "time_zone": "Europe/Berlin",
            "location": "here", "capacity": 5
        });
        let (status, _, created) = one.post("/v1/events", Some(&ada.access), &event).await?;
        ensure!(status == StatusCode::CREATED, "create: {status} {created}");
        let id = created["id"].as_str().context("event id")?.to_owned();
        let path = format!("/v1/events/{id}");

        // The first read of each caller goes to the calendar, the next is the cache's.
        // The cache follows the calendar's events from its first cacheable request on,
        // so poll until an answer is stored.
        for gateway in [&one, &two] {
            for token in [&ada.access, &bob.access] {
                poll_until_ok(Duration::from_secs(10), "a cached answer", || async {
                    let (cache, _) = read(gateway, &path, token).await?;
                    ensure!(cache == "hit", "X-Cache: {cache}");
                    Ok(())
                })
                .await?;
            }
        }
        let (_, bob_before) = read(&one, &path, &bob.access).await?;
        assert_eq!(bob_before["my_rsvp"], Value::Null);

        // Bob RSVPs through gateway 1: gateway 1 answers his next read with it at once.
        let (status, _, _) = one
            .put(
                &format!("{path}/rsvp"),
                Some(&bob.access),
                &json!({"status": "going"}),
            )
            .await?;
        ensure!(status == StatusCode::OK, "rsvp: {status}");
        let (cache, bob_after) = read(&one, &path, &bob.access).await?;
        assert_eq!(
            cache, "miss",
            "a write through this gateway makes the read stale"
        );
        assert_eq!(bob_after["my_rsvp"], "going");
        assert_eq!(bob_after["counts"]["going"], 1);

        // Gateway 2 saw no write: the calendar's RsvpChanged makes its copies stale,
        // well before their 60 s max age.
        poll_until_ok(
            Duration::from_secs(5),
            "gateway 2 sees the RSVP",
            || async {
                let (_, body) = read(&two, &path, &bob.access).await?;
                ensure!(body["my_rsvp"] == "going", "still {}", body["my_rsvp"]);
                Ok(())
            },
        )
        .await?;
        // Ada's own copy on gateway 2 shows the new count too, and no RSVP of hers.
        let (_, ada_view) = read(&two, &path, &ada.access).await?;
        assert_eq!(ada_view["counts"]["going"], 1);
        assert_eq!(ada_view["my_rsvp"], Value::Null);

        // Lists: cached per caller, stale after any calendar event.
        let list = "/v1/events?limit=50";
        poll_until_ok(Duration::from_secs(10), "a cached list", || async {
            let (cache, _) = read(&two, list, &ada.access).await?;
            ensure!(cache == "hit", "X-Cache: {cache}");
            Ok(())
        })
        .await?;
        let other = json!({
            "title": "Second party", "starts_at": "2031-03-02T18:00:00+01:00",
            "ends_at": "2031-03-02T20:00:00+01:00", "time_zone": "Europe/Berlin",
            "location": "there", "capacity": 5
        });
        let (status, _, _) = one.post("/v1/events", Some(&bob.access), &other).await?;
        ensure!(status == StatusCode::CREATED);
        poll_until_ok(
            Duration::from_secs(5),
            "gateway 2's list shows the new event",
            || async {
                let (_, body) = read(&two, list, &ada.access).await?;
                let titles: Vec<&str> = body["items"]
                    .as_array()
                    .map(|items| items.iter().filter_map(|i| i["title"].as_str()).collect())
                    .unwrap_or_default();
                ensure!(titles.contains(&"Second party"), "titles {titles:?}");
                Ok(())
            },
        )
        .await?;

        // Cache-Control: no-cache goes to the calendar.
        let (_, headers, _) = two
            .request_with_headers(
                reqwest::Method::GET,
                &path,
                Some(&ada.access),
                None,
                &[("cache-control", "no-cache")],
            )
            .await?;
        assert_eq!(x_cache(&headers), "miss");
        fleet.shutdown().await
    })
    .await
}
