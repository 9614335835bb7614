//! A cache of GET answers, kept fresh by the owning service's own domain events.
//!
//! A service marks a GET route cacheable in its route declaration
//! (`runtime::routes::CachePolicy`): which domain events make its answers stale
//! (`invalidated_by`, e.g. `calendar.>`), which path parameter names the aggregate an
//! answer shows (`aggregate_param`), and the longest an answer may be served. The
//! gateway then answers repeated reads itself, without a round trip to the service.
//!
//! Staleness is tracked with *generations*, not by finding entries to delete: each
//! subject filter has a generation bumped by every event on it, and one per aggregate
//! bumped by that aggregate's events (`Mesh-Aggregate-Id`). An answer remembers the
//! generation its read started under, taken *before* the request is forwarded, and is
//! served only while that generation is still current; an event that arrives while the
//! read is in flight therefore makes the answer stale before it is even stored. The
//! generation also includes the NATS connection count: a reconnect may have lost events
//! (core NATS keeps nothing for an absent subscriber), so every older answer is stale.
//!
//! - Answers are cached per caller: a response may show the caller's own data (the
//!   viewer's RSVP), and authentication and rate limits run before the lookup.
//! - A successful write through this gateway to a service bumps that service's
//!   generations at once (each path parameter as an aggregate, and every filter's
//!   "any event" generation), so a client reads its own writes here without waiting for
//!   the event; other replicas catch up when the event arrives (milliseconds).
//! - An aggregate's generation is forgotten once it is older than the longest age any
//!   answer may reach: every answer read before that bump has expired by then.
//! - A request with `Cache-Control: no-cache` skips the lookup (and refreshes the entry).
//!
//! Responses say `X-Cache: hit` or `miss` on cacheable routes.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, Uri, header};
use futures::StreamExt;
use uuid::Uuid;

use crate::idempotency::StoredResponse;
use crate::routes::Route;

/// Response header saying whether the answer came from the cache.
pub const X_CACHE: &str = "x-cache";

/// Settings of the cache.
#[derive(Debug, Clone)]
pub struct CacheOptions {
    /// Total size of cached bodies and keys; 0 turns the cache off.
    pub max_bytes: u64,
    /// Upper bound on any route's `max_age_secs`.
    pub max_age: Duration,
}

/// The cache shared by every request of one gateway.
pub struct ResponseCache {
    client: async_nats::Client,
    entries: Option<moka::sync::Cache<String, Arc<Entry>>>,
    max_age: Duration,
    /// Generations per subject filter, created when a route first uses the filter.
    filters: Mutex<HashMap<String, Arc<Filter>>>,
    /// The source of every generation: strictly increasing, so a forgotten and re-made
    /// generation never equals an old one.
    counter: Arc<AtomicU64>,
}

impl std::fmt::Debug for ResponseCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseCache")
            .field("enabled", &self.entries.is_some())
            .field("max_age", &self.max_age)
            .finish_non_exhaustive()
    }
}

struct Entry {
    response: StoredResponse,
    stamp: Stamp,
    expires: Instant,
}

/// What an answer was read under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    generation: u64,
    connects: u64,
}

/// The generations of one subject filter.
struct Filter {
    /// Bumped by every event on the filter (answers without an aggregate: lists).
    any: AtomicU64,
    /// Bumped by the events of one aggregate, with when.
    aggregates: Mutex<HashMap<Uuid, (u64, Instant)>>,
    /// Set once the subscription is registered with the server; nothing is cached for
    /// the filter before, since an event could be missed.
    live: std::sync::atomic::AtomicBool,
}

/// A cacheable request: where its answer is stored, and under which generation its read
/// started.
#[derive(Debug)]
pub struct Slot {
    key: String,
    stamp: Stamp,
    max_age: Duration,
    /// When the read started: the answer expires `max_age` after it, not after it was
    /// stored (see [`Filter::forget_older_than`]).
    started: Instant,
    /// False when the filter is not subscribed yet: forward, do not store.
    storable: bool,
}

impl ResponseCache {
    pub fn new(client: async_nats::Client, options: &CacheOptions) -> Self {
        let entries = (options.max_bytes > 0).then(|| {
            moka::sync::Cache::builder()
                .max_capacity(options.max_bytes)
                .weigher(|key: &String, entry: &Arc<Entry>| {
                    let size = key.len() + entry.response.body.len() + 128;
                    u32::try_from(size).unwrap_or(u32::MAX)
                })
                .time_to_live(options.max_age)
                .build()
        });
        ResponseCache {
            client,
            entries,
            max_age: options.max_age,
            filters: Mutex::new(HashMap::new()),
            counter: Arc::new(AtomicU64::new(1)),
        }
    }

    /// The slot of a GET on a cacheable route, or `None` when the answer is not cached.
    /// Call it before forwarding: it takes the generation the read starts under.
    pub fn slot(
        self: &Arc<Self>,
        route: &Route,
        params: &BTreeMap<String, String>,
        uri: &Uri,
        caller: Option<Uuid>,
    ) -> Option<Slot> {
        self.entries.as_ref()?;
        let policy = route.cache.as_ref()?;
        let filter = self.filter(&policy.invalidated_by);
        let generation = match &policy.aggregate_param {
            None => filter.any.load(Ordering::Acquire),
            Some(param) => {
                // An id that is not a UUID names no aggregate the events can name.
                let id = params.get(param).and_then(|v| Uuid::parse_str(v).ok())?;
                filter.aggregate(id)
            }
        };
        let caller = caller.map(|c| c.to_string()).unwrap_or_default();
        Some(Slot {
            key: format!("{}\n{}\n{caller}", route.subject, uri),
            stamp: Stamp {
                generation,
                connects: self.connects(),
            },
            max_age: Duration::from_secs(u64::from(policy.max_age_secs)).min(self.max_age),
            started: Instant::now(),
            storable: filter.live.load(Ordering::Acquire),
        })
    }

    /// The stored answer, if it is still fresh and the request allows it.
    pub fn get(&self, slot: &Slot, headers: &HeaderMap) -> Option<StoredResponse> {
        let entries = self.entries.as_ref()?;
        let no_cache = headers
            .get_all(header::CACHE_CONTROL)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| v.to_ascii_lowercase().contains("no-cache"));
        if no_cache {
            return None;
        }
        let entry = entries.get(&slot.key)?;
        (entry.stamp == slot.stamp && entry.expires > Instant::now())
            .then(|| entry.response.clone())
    }

    /// Stores a successful answer read under `slot`'s generation.
    pub fn put(&self, slot: Slot, response: &StoredResponse) {
        let Some(entries) = &self.entries else {
            return;
        };
        if !slot.storable || response.status != 200 {
            return;
        }
        entries.insert(
            slot.key,
            Arc::new(Entry {
                response: response.clone(),
                stamp: slot.stamp,
                expires: slot.started + slot.max_age,
            }),
        );
    }

    /// A write through this gateway succeeded: whatever `service`'s cached answers
    /// show may have changed. Bumps the aggregates named by the path parameters and the
    /// "any event" generation of every filter the service's routes use.
    pub fn wrote<'a>(
        self: &Arc<Self>,
        service: &str,
        routes: impl Iterator<Item = &'a Route>,
        params: &BTreeMap<String, String>,
    ) {
        if self.entries.is_none() {
            return;
        }
        let ids: Vec<Uuid> = params
            .values()
            .filter_map(|v| Uuid::parse_str(v).ok())
            .collect();
        let mut done: Vec<&str> = Vec::new();
        for route in routes.filter(|r| r.service == service) {
            let Some(policy) = &route.cache else {
                continue;
            };
            if done.contains(&policy.invalidated_by.as_str()) {
                continue;
            }
            done.push(&policy.invalidated_by);
            let filter = self.filter(&policy.invalidated_by);
            filter.bump(&self.counter, &ids);
        }
    }

    fn connects(&self) -> u64 {
        self.client.statistics().connects.load(Ordering::Relaxed)
    }

    /// The filter's generations; the first use subscribes to its events.
    fn filter(self: &Arc<Self>, subject: &str) -> Arc<Filter> {
        let mut filters = self.filters.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(f) = filters.get(subject) {
            return f.clone();
        }
        let filter = Arc::new(Filter {
            any: AtomicU64::new(self.counter.fetch_add(1, Ordering::AcqRel)),
            aggregates: Mutex::new(HashMap::new()),
            live: std::sync::atomic::AtomicBool::new(false),
        });
        filters.insert(subject.to_owned(), filter.clone());
        tokio::spawn(listen(
            self.client.clone(),
            subject.to_owned(),
            filter.clone(),
            self.counter.clone(),
            self.max_age,
        ));
        filter
    }
}

impl Filter {
    /// The aggregate's current generation (the filter's creation value when no event of
    /// it is remembered).
    fn aggregate(&self, id: Uuid) -> u64 {
        let aggregates = self.aggregates.lock().unwrap_or_else(|p| p.into_inner());
        aggregates.get(&id).map(|(g, _)| *g).unwrap_or(0)
    }

    fn bump(&self, counter: &AtomicU64, ids: &[Uuid]) {
        let generation = counter.fetch_add(1, Ordering::AcqRel) + 1;
        if !ids.is_empty() {
            let now = Instant::now();
            let mut aggregates = self.aggregates.lock().unwrap_or_else(|p| p.into_inner());
            for id in ids {
                aggregates.insert(*id, (generation, now));
            }
        }
        self.any.store(generation, Ordering::Release);
    }

    /// Forgets aggregate generations older than any answer may live: every answer
    /// read before such a bump has expired, so reading 0 again cannot revive one.
    fn forget_older_than(&self, age: Duration) {
        let now = Instant::now();
        let mut aggregates = self.aggregates.lock().unwrap_or_else(|p| p.into_inner());
        aggregates.retain(|_, (_, at)| now.duration_since(*at) <= age);
    }
}

/// Follows the filter's events for as long as the gateway runs.
async fn listen(
    client: async_nats::Client,
    subject: String,
    filter: Arc<Filter>,
    counter: Arc<AtomicU64>,
    max_age: Duration,
) {
    let mut backoff = Duration::from_millis(200);
    loop {
        match client.subscribe(subject.clone()).await {
            Ok(mut events) => {
                // The SUB must be registered before an answer is cached, or an event
                // published in between would be missed.
                if client.flush().await.is_ok() {
                    filter.live.store(true, Ordering::Release);
                    tracing::debug!(%subject, "cache follows events");
                }
                let mut sweep = tokio::time::interval(max_age);
                loop {
                    tokio::select! {
                        message = events.next() => {
                            let Some(message) = message else { break };
                            let id = message
                                .headers
                                .as_ref()
                                .and_then(|h| h.get(contracts::subjects::headers::AGGREGATE_ID))
                                .and_then(|v| Uuid::parse_str(v.as_str()).ok());
                            filter.bump(&counter, id.as_slice());
                        }
                        _ = sweep.tick() => filter.forget_older_than(max_age + Duration::from_secs(1)),
                    }
                }
                filter.live.store(false, Ordering::Release);
                // Whatever was cached may have missed events while unsubscribed.
                filter.bump(&counter, &[]);
                tracing::warn!(%subject, "cache lost its event subscription; resubscribing");
            }
            Err(e) => {
                tracing::warn!(%subject, error = %e, "cache cannot follow events; not caching");
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(10));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter() -> Filter {
        Filter {
            any: AtomicU64::new(1),
            aggregates: Mutex::new(HashMap::new()),
            live: std::sync::atomic::AtomicBool::new(true),
        }
    }

    #[test]
    fn an_event_moves_its_aggregate_and_the_filter_but_not_others() {
        let counter = AtomicU64::new(10);
        let f = filter();
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        let (a0, b0, any0) = (
            f.aggregate(a),
            f.aggregate(b),
            f.any.load(Ordering::Acquire),
        );
        f.bump(&counter, &[a]);
        assert_ne!(f.aggregate(a), a0);
        assert_eq!(f.aggregate(b), b0);
        assert_ne!(f.any.load(Ordering::Acquire), any0);
        let a1 = f.aggregate(a);
        f.bump(&counter, &[]);
        assert_eq!(
            f.aggregate(a),
            a1,
            "an event without an aggregate moves lists only"
        );
    }

    #[test]
    fn forgotten_generations_never_come_back_equal() {
        let counter = AtomicU64::new(10);
        let f = filter();
        let a = Uuid::now_v7();
        f.bump(&counter, &[a]);
        let bumped = f.aggregate(a);
        f.forget_older_than(Duration::ZERO);
        assert_eq!(f.aggregate(a), 0);
        f.bump(&counter, &[a]);
        assert!(f.aggregate(a) > bumped);
    }
}
