//! End to end, open loop: an RSVP accepted by the gateway → the attendee's
//! confirmation accepted by the SMTP sink, and → the organizer's notification on their
//! SSE stream. Latencies run from each RSVP's *scheduled* send time.
//!
//! Every RSVP is a new (attendee, event) pair with status `going`, so each one causes
//! exactly one confirmation mail to that attendee naming that event (matched by envelope
//! recipient and the event's title in the subject) and one notification titled
//! "<attendee> is going to <event>" on the organizer's stream.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use http::{HeaderValue, Method};
use serde::Serialize;
use serde_json::json;
use tokio::task::JoinHandle;

use super::{Ctx, authority, bulk, event_body, id_of};
use crate::http::{Call, HttpClient, bearer};
use crate::load::{Latency, OpenLoop, Outcome, histogram, open_loop, record};
use crate::mesh::{BenchMesh, MeshSpec};
use crate::report::{Row, Target};
use crate::smtp::{Arrival, SmtpSink};
use crate::sse::SseClient;

/// Target p99 (ms) at the offered rate.
const P99_TARGET_MS: f64 = 50.0;
/// A ladder step is "sustained" when both p99s stay under this (ms).
const SUSTAINED_P99_MS: f64 = 100.0;
/// Most RSVPs in flight at once (beyond it, waiting counts in the latency).
const MAX_IN_FLIGHT: usize = 4096;
/// Event titles: this prefix and five digits.
const TITLE_PREFIX: &str = "bench-e2e-";

fn title(event: usize) -> String {
    format!("{TITLE_PREFIX}{event:05}")
}

struct Attendee {
    email: String,
    name: String,
    auth: HeaderValue,
}

/// Who RSVPs to what: pair `k` is attendee `k % U` on event `k / U`.
struct Plan {
    attendees: Vec<Attendee>,
    events: Vec<uuid::Uuid>,
}

impl Plan {
    fn pairs(&self) -> usize {
        self.attendees.len() * self.events.len()
    }

    fn pair(&self, k: usize) -> (&Attendee, uuid::Uuid, usize) {
        let u = self.attendees.len().max(1);
        let event = k / u;
        (&self.attendees[k % u], self.events[event], event)
    }
}

/// When each pair was scheduled, answered, mailed and streamed.
#[derive(Default)]
struct Timeline {
    scheduled: Vec<Option<Instant>>,
    accepted: Vec<bool>,
    mail: Vec<Option<Instant>>,
    sse: Vec<Option<Instant>>,
}

type Shared = Arc<Mutex<Timeline>>;

fn lock(t: &Shared) -> std::sync::MutexGuard<'_, Timeline> {
    t.lock().unwrap_or_else(|p| p.into_inner())
}

/// One rate's figures.
#[derive(Debug, Clone, Serialize)]
pub struct StepResult {
    pub offered_rate: f64,
    /// The first pair of the step (its RSVPs are pairs `first..first + rsvps`).
    pub first: usize,
    pub rsvps: u64,
    /// HTTP: from the scheduled time to the gateway's answer.
    pub http: Outcome,
    pub mail: Latency,
    pub mail_missing: u64,
    pub sse: Latency,
    pub sse_missing: u64,
}

impl StepResult {
    fn sustained(&self) -> bool {
        self.http.errors == 0
            && self.mail_missing == 0
            && self.sse_missing == 0
            && self.mail.p99_ms < SUSTAINED_P99_MS
            && self.sse.p99_ms < SUSTAINED_P99_MS
    }
}

pub async fn run(ctx: &mut Ctx) -> Result<()> {
    let sink = SmtpSink::start().await?;
    eprintln!("bench: e2e: starting auth + calendar + email + push + gateway");
    let spec = MeshSpec::new(
        &["auth", "calendar", "email", "push", "gateway"],
        ctx.settings.backend,
        &ctx.settings.bin_dir,
    )
    .with_env("auth", "AUTH_SIGNING_KEY_PEM", ctx.signer.pem())
    .with_env("email", "SMTP_URL", &sink.url());
    let mesh = BenchMesh::start(spec).await?;
    let result = body(ctx, &mesh, &sink).await;
    if result.is_err() {
        eprintln!("{}", mesh.log_tails(30));
    }
    mesh.shutdown().await;
    result
}

async fn body(ctx: &mut Ctx, mesh: &BenchMesh, sink: &SmtpSink) -> Result<()> {
    let s = ctx.settings.clone();
    let gateway = mesh.gateway_urls()[0].clone();
    let needed = s
        .ladder
        .iter()
        .map(|r| (r * s.ladder_step.as_secs_f64()).round() as usize + 1)
        .sum::<usize>()
        + (s.e2e_rate * s.e2e_duration.as_secs_f64()).round() as usize
        + 1;
    let run_id = &uuid::Uuid::new_v4().simple().to_string()[..8];

    // Users: registered for real (email and push need their addresses and names).
    eprintln!(
        "bench: e2e: registering {} attendees and {} organizers",
        s.e2e_users, s.e2e_organizers
    );
    let register = |prefix: &str, i: usize| {
        Call::with_json(
            Method::POST,
            "/v1/auth/register",
            None,
            &json!({
                "email": format!("{prefix}{i:05}-{run_id}@example.com"),
                "password": "bench password 123",
                "display_name": format!("{prefix}{i:05}"),
            }),
        )
    };
    let calls = (0..s.e2e_users).map(|i| register("bu", i)).collect();
    let registered = bulk(&ctx.http, &gateway, calls, 8).await?;
    let mut attendees = Vec::with_capacity(registered.len());
    for (i, user) in registered.iter().enumerate() {
        let id = id_of(user)?;
        attendees.push(Attendee {
            email: format!("bu{i:05}-{run_id}@example.com"),
            name: format!("bu{i:05}"),
            auth: bearer(&ctx.signer.user_token(id)?)?,
        });
    }
    let calls = (0..s.e2e_organizers.max(1))
        .map(|i| register("org", i))
        .collect();
    let organizers = bulk(&ctx.http, &gateway, calls, 8)
        .await?
        .iter()
        .map(|u| {
            let token = ctx.signer.user_token(id_of(u)?)?;
            Ok((bearer(&token)?, token))
        })
        .collect::<Result<Vec<_>>>()?;

    let n_events = needed.div_ceil(attendees.len().max(1));
    eprintln!("bench: e2e: creating {n_events} events for {needed} RSVPs");
    let calls = (0..n_events)
        .map(|j| {
            Call::with_json(
                Method::POST,
                "/v1/events",
                Some(&organizers[j % organizers.len()].0),
                &event_body(&title(j), j),
            )
        })
        .collect();
    let events = bulk(&ctx.http, &gateway, calls, 16)
        .await?
        .iter()
        .map(id_of)
        .collect::<Result<Vec<_>>>()?;
    let plan = Arc::new(Plan { attendees, events });

    eprintln!("bench: e2e: waiting for email and push to catch up");
    mesh.wait_consumers_idle(&["AUTH", "CALENDAR"], s.setup_timeout)
        .await?;

    // Match arrivals to pairs.
    let timeline: Shared = Arc::new(Mutex::new(Timeline {
        scheduled: vec![None; plan.pairs()],
        accepted: vec![false; plan.pairs()],
        mail: vec![None; plan.pairs()],
        sse: vec![None; plan.pairs()],
    }));
    let mut mail_keys = HashMap::with_capacity(plan.pairs());
    let mut sse_keys = HashMap::with_capacity(plan.pairs());
    for k in 0..plan.pairs() {
        let (a, _, event) = plan.pair(k);
        mail_keys.insert(format!("{}|{}", a.email, title(event)), k);
        sse_keys.insert(format!("{} is going to {}", a.name, title(event)), k);
    }
    let arrivals = sink.take_arrivals().context("the sink's arrivals")?;
    let mut tasks: Vec<JoinHandle<()>> = vec![tokio::spawn(match_mails(
        arrivals,
        mail_keys,
        timeline.clone(),
    ))];
    let sse_keys = Arc::new(sse_keys);
    for (_, token) in &organizers {
        let client =
            SseClient::connect(authority(&gateway), "/v1/notifications/stream", Some(token))
                .await
                .context("open an organizer's stream")?;
        tasks.push(tokio::spawn(match_stream(
            client,
            sse_keys.clone(),
            timeline.clone(),
        )));
    }

    let organizer_auth: Vec<HeaderValue> = organizers.iter().map(|(a, _)| a.clone()).collect();
    let result = measure(ctx, mesh, &gateway, &plan, &timeline, &organizer_auth).await;
    for task in tasks {
        task.abort();
    }
    result
}

async fn measure(
    ctx: &mut Ctx,
    mesh: &BenchMesh,
    gateway: &str,
    plan: &Arc<Plan>,
    timeline: &Shared,
    organizers: &[HeaderValue],
) -> Result<()> {
    let s = ctx.settings.clone();
    let mut next = 0usize;
    let mut best: Option<f64> = None;
    let mut steps = Vec::new();
    for &rate in &s.ladder {
        if let Err(err) = mesh
            .wait_consumers_idle(&["CALENDAR"], Duration::from_secs(120))
            .await
        {
            eprintln!("bench: e2e: subscribers still busy before {rate}/s: {err:#}");
        }
        eprintln!("bench: e2e: ladder step {rate}/s for {:?}", s.ladder_step);
        let r = step(
            &ctx.http,
            gateway,
            plan,
            timeline,
            next,
            rate,
            s.ladder_step,
            s.drain,
        )
        .await?;
        next += r.rsvps as usize;
        eprintln!(
            "bench:   {rate}/s: mail p99 {:.1} ms ({} missing), stream p99 {:.1} ms ({} missing), {} HTTP errors",
            r.mail.p99_ms, r.mail_missing, r.sse.p99_ms, r.sse_missing, r.http.errors
        );
        let sustained = r.sustained();
        steps.push(r);
        if !sustained {
            break;
        }
        best = Some(rate);
    }
    ctx.report.push(
        Row::new(
            "e2e",
            "highest rate with mail and stream p99 < 100 ms",
            best.unwrap_or(0.0),
            "RSVP/s",
        )
        .note(format!(
            "tried {}",
            steps
                .iter()
                .map(|r| format!("{}", r.offered_rate))
                .collect::<Vec<_>>()
                .join(", ")
        )),
    );

    if let Err(err) = mesh
        .wait_consumers_idle(&["CALENDAR"], Duration::from_secs(120))
        .await
    {
        eprintln!("bench: e2e: subscribers still busy before the main run: {err:#}");
    }
    eprintln!(
        "bench: e2e: main run at {}/s for {:?}",
        s.e2e_rate, s.e2e_duration
    );
    let main = step(
        &ctx.http,
        gateway,
        plan,
        timeline,
        next,
        s.e2e_rate,
        s.e2e_duration,
        s.drain,
    )
    .await?;
    if main.http.ok == 0 {
        bail!(
            "no RSVP accepted in the main run: {}",
            main.http.first_error.as_deref().unwrap_or("?")
        );
    }
    if main.mail.count == main.mail_missing || main.sse.count == main.sse_missing {
        bail!(
            "no mail or no stream event arrived in the main run ({} / {} missing of {})",
            main.mail_missing,
            main.sse_missing,
            main.http.ok
        );
    }
    if main.sse_missing > 0 {
        // Lost on the live path, or never created? Push's history tells.
        let missing: Vec<String> = {
            let t = lock(timeline);
            (main.first..main.first + main.rsvps as usize)
                .filter(|&k| t.accepted[k] && t.sse[k].is_none())
                .map(|k| {
                    let (a, _, event) = plan.pair(k);
                    format!("{} is going to {}", a.name, title(event))
                })
                .collect()
        };
        match history_titles(&ctx.http, gateway, organizers).await {
            Ok(history) => {
                let stored = missing.iter().filter(|t| history.contains(*t)).count();
                ctx.report.note(format!(
                    "e2e: of {} notifications that never reached an organizer's stream, {stored} are in push's history \
                     (created but not delivered live), {} are not (not created within the drain)",
                    missing.len(),
                    missing.len() - stored
                ));
            }
            Err(err) => ctx.report.note(format!(
                "e2e: could not read the organizers' history: {err:#}"
            )),
        }
    }
    let at = format!("at {}/s", s.e2e_rate);
    let missing = |n: u64| (n > 0).then(|| format!("{n} never arrived within the drain"));
    for (what, latency, lost) in [
        ("RSVP → attendee mail", &main.mail, main.mail_missing),
        ("RSVP → organizer stream", &main.sse, main.sse_missing),
    ] {
        ctx.report.push(Row::new(
            "e2e",
            &format!("{what} p50 {at}"),
            latency.p50_ms,
            "ms",
        ));
        let mut p99 = Row::new("e2e", &format!("{what} p99 {at}"), latency.p99_ms, "ms")
            .target(Target::Below(P99_TARGET_MS));
        if let Some(note) = missing(lost) {
            p99 = p99.note(note);
        }
        ctx.report.push(p99);
        ctx.report.push(Row::new(
            "e2e",
            &format!("{what} p99.9 {at}"),
            latency.p999_ms,
            "ms",
        ));
    }
    let mut http = Row::new(
        "e2e",
        &format!("RSVP answered p99 {at}"),
        main.http.latency.p99_ms,
        "ms",
    );
    if main.http.errors > 0 {
        http = http.note(format!(
            "{} errors: {}",
            main.http.errors,
            main.http.first_error.as_deref().unwrap_or("?")
        ));
    }
    ctx.report.push(http);
    ctx.report.detail(
        "e2e",
        json!({ "main": main, "ladder": steps, "highest_sustained": best }),
    );
    Ok(())
}

/// Offers `rate` RSVPs/s for `duration` from pair `first` on, then waits up to `drain`
/// for their mails and stream events.
#[allow(clippy::too_many_arguments)]
async fn step(
    http: &HttpClient,
    gateway: &str,
    plan: &Arc<Plan>,
    timeline: &Shared,
    first: usize,
    rate: f64,
    duration: Duration,
    drain: Duration,
) -> Result<StepResult> {
    let spec = OpenLoop {
        rate,
        duration,
        max_in_flight: MAX_IN_FLIGHT,
    };
    let count = usize::try_from(spec.count()).unwrap_or(usize::MAX);
    if first + count > plan.pairs() {
        bail!(
            "the plan holds {} pairs, {} needed",
            plan.pairs(),
            first + count
        );
    }
    let body = bytes::Bytes::from(json!({ "status": "going" }).to_string());
    let (http_c, base, plan_c, tl) = (
        http.clone(),
        gateway.to_owned(),
        plan.clone(),
        timeline.clone(),
    );
    let outcome = open_loop(&spec, move |i, due| {
        let k = first + i as usize;
        let (a, event, _) = plan_c.pair(k);
        let call = Call {
            method: Method::PUT,
            path: format!("/v1/events/{event}/rsvp"),
            auth: Some(a.auth.clone()),
            body: Some(body.clone()),
        };
        lock(&tl).scheduled[k] = Some(due);
        let (http, base, tl) = (http_c.clone(), base.clone(), tl.clone());
        async move {
            let (status, _) = http.send(&base, &call).await?;
            if status.is_success() {
                lock(&tl).accepted[k] = true;
            }
            Ok(status.is_success())
        }
    })
    .await;

    // Wait for what the accepted RSVPs should cause.
    let range = first..first + count;
    let deadline = Instant::now() + drain;
    loop {
        let complete = {
            let t = lock(timeline);
            range
                .clone()
                .filter(|&k| t.accepted[k])
                .all(|k| t.mail[k].is_some() && t.sse[k].is_some())
        };
        if complete || Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let cutoff = Instant::now();
    let t = lock(timeline);
    let (mut mail, mut sse) = (histogram(), histogram());
    let (mut mail_missing, mut sse_missing) = (0, 0);
    for k in range.filter(|&k| t.accepted[k]) {
        let Some(at) = t.scheduled[k] else { continue };
        // A missing arrival counts as arriving at the cutoff: a floor on its latency.
        for (arrived, hist, missing) in [
            (t.mail[k], &mut mail, &mut mail_missing),
            (t.sse[k], &mut sse, &mut sse_missing),
        ] {
            if arrived.is_none() {
                *missing += 1;
            }
            record(
                hist,
                arrived.unwrap_or(cutoff).saturating_duration_since(at),
            );
        }
    }
    Ok(StepResult {
        offered_rate: rate,
        first,
        rsvps: count as u64,
        http: outcome,
        mail: Latency::of(&mail),
        mail_missing,
        sse: Latency::of(&sse),
        sse_missing,
    })
}

/// Every notification title in the organizers' histories (`GET /v1/notifications`).
async fn history_titles(
    http: &HttpClient,
    gateway: &str,
    organizers: &[HeaderValue],
) -> Result<std::collections::HashSet<String>> {
    let mut titles = std::collections::HashSet::new();
    for auth in organizers {
        let mut cursor: Option<String> = None;
        loop {
            let path = match &cursor {
                Some(c) => format!("/v1/notifications?limit=200&cursor={c}"),
                None => "/v1/notifications?limit=200".to_owned(),
            };
            let page = http.json_ok(gateway, &Call::get(path, Some(auth))).await?;
            for item in page["items"].as_array().into_iter().flatten() {
                if let Some(t) = item["title"].as_str() {
                    titles.insert(t.to_owned());
                }
            }
            match page["next_cursor"].as_str() {
                Some(c) if !c.is_empty() => cursor = Some(c.to_owned()),
                _ => break,
            }
        }
    }
    Ok(titles)
}

/// Records the first confirmation mail of each pair.
async fn match_mails(
    mut arrivals: tokio::sync::mpsc::UnboundedReceiver<Arrival>,
    keys: HashMap<String, usize>,
    timeline: Shared,
) {
    while let Some(mail) = arrivals.recv().await {
        let Some(start) = mail.subject.find(TITLE_PREFIX) else {
            continue;
        };
        let Some(tag) = mail.subject.get(start..start + TITLE_PREFIX.len() + 5) else {
            continue;
        };
        for rcpt in &mail.rcpt {
            if let Some(&k) = keys.get(&format!("{rcpt}|{tag}")) {
                let mut t = lock(&timeline);
                if t.mail[k].is_none() {
                    t.mail[k] = Some(mail.at);
                }
            }
        }
    }
}

/// Records the first stream event of each pair on one organizer's stream.
async fn match_stream(mut client: SseClient, keys: Arc<HashMap<String, usize>>, timeline: Shared) {
    let mut unmatched = 0u64;
    let end = loop {
        let event = match client.next_event().await {
            Ok(Some(event)) => event,
            other => break other.map(|_| "closed by the server".to_owned()),
        };
        let at = Instant::now();
        if event.event != crate::clients::NOTIFICATION_EVENT {
            continue;
        }
        let Ok(data) = serde_json::from_str::<serde_json::Value>(&event.data) else {
            continue;
        };
        let Some(title) = data.get("title").and_then(|t| t.as_str()) else {
            continue;
        };
        if let Some(&k) = keys.get(title) {
            let mut t = lock(&timeline);
            if t.sse[k].is_none() {
                t.sse[k] = Some(at);
            }
        } else {
            unmatched += 1;
            if unmatched <= 3 {
                eprintln!("bench: e2e: a notification matching no RSVP: {title:?}");
            }
        }
    };
    // Streams stay open for the whole scenario: an end here loses events, so say so.
    match end {
        Ok(why) => eprintln!("bench: e2e: an organizer's stream ended: {why}"),
        Err(err) => eprintln!("bench: e2e: an organizer's stream failed: {err:#}"),
    }
}
