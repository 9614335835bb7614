//! The live route table: discovered from the services (`$SRV.INFO`), remembered in the
//! `gateway_routes` bucket, refreshed in the background and on demand.
//!
//! One round: load the stored table (once, when the bucket is there), ask every service
//! instance for its declarations, fold them into the [`Catalog`], publish the new
//! [`Snapshot`] (table and OpenAPI document), and store the services whose record
//! changed. Rounds run every `GATEWAY_DISCOVERY_INTERVAL_SECS`, and when a request
//! matches no route (at most once per `GATEWAY_DISCOVERY_ON_MISS_MS`): a route deployed a
//! moment ago is served on its first request.
//!
//! The store is why a restarted gateway knows the routes of services whose instances are
//! momentarily gone: it forwards them, and answers 503 with `Retry-After` while nothing
//! answers, instead of 404. Each gateway replica writes only what changed, one key per
//! service.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use async_nats::jetstream::kv;
use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::{Mutex, watch};
use tokio_util::sync::CancellationToken;

use crate::catalog::{Catalog, KnownService, RoutePrefixes};
use crate::openapi;
use crate::routes::RouteTable;

/// How long the first round waits for the route bucket, so it loads the stored table
/// before discovering (the bucket is normally there within milliseconds).
const STORE_WAIT: Duration = Duration::from_secs(2);

/// The interval between rounds while no route is known at all (the gateway started
/// before every service), if shorter than the configured one.
const EMPTY_INTERVAL: Duration = Duration::from_secs(1);

/// What requests are matched against and documented with; replaced as a whole.
#[derive(Debug)]
pub struct Snapshot {
    pub table: RouteTable,
    /// `/openapi.json`.
    pub openapi: Bytes,
}

impl Snapshot {
    fn new(table: RouteTable, schemas: &runtime::routes::Schemas) -> Self {
        let doc = openapi::document(&table, schemas);
        let openapi = serde_json::to_vec(&doc).unwrap_or_else(|e| {
            // A JSON value always serializes; keep serving something valid regardless.
            tracing::error!(error = %e, "cannot render the OpenAPI document");
            b"{}".to_vec()
        });
        Snapshot {
            table,
            openapi: openapi.into(),
        }
    }
}

/// Settings of discovery.
#[derive(Debug, Clone)]
pub struct DiscoveryOptions {
    pub interval: Duration,
    pub window: Duration,
    /// Minimum time between two rounds triggered by unmatched requests; zero: never.
    pub on_miss: Duration,
}

/// The round state, behind one lock: rounds never overlap.
struct Rounds {
    catalog: Catalog,
    /// When the last round started.
    last_started: Option<Instant>,
    /// When the last round triggered by an unmatched request started.
    last_on_miss: Option<Instant>,
    /// Whether the stored table has been loaded.
    loaded: bool,
    /// What the bucket holds per service, so only changes are written.
    stored: BTreeMap<String, Vec<u8>>,
}

/// The gateway's routes, shared by every request.
pub struct Directory {
    client: async_nats::Client,
    options: DiscoveryOptions,
    current: RwLock<Arc<Snapshot>>,
    rounds: Mutex<Rounds>,
    store: watch::Sender<Option<kv::Store>>,
    ready: AtomicBool,
}

impl std::fmt::Debug for Directory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Directory")
            .field("routes", &self.snapshot().table.len())
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl Directory {
    /// An empty directory; routes appear with the first round.
    pub fn new(
        client: async_nats::Client,
        prefixes: RoutePrefixes,
        options: DiscoveryOptions,
    ) -> Self {
        let mut catalog = Catalog::new(prefixes);
        let built = catalog.build();
        Directory {
            client,
            options,
            current: RwLock::new(Arc::new(Snapshot::new(built.table, &built.schemas))),
            rounds: Mutex::new(Rounds {
                catalog,
                last_started: None,
                last_on_miss: None,
                loaded: false,
                stored: BTreeMap::new(),
            }),
            store: watch::channel(None).0,
            ready: AtomicBool::new(false),
        }
    }

    /// The current table and document.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        match self.current.read() {
            Ok(s) => s.clone(),
            // A panicking writer cannot leave a half-written Arc behind.
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// True once a round has discovered the services.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// Hands over the `gateway_routes` bucket once it exists.
    pub fn set_store(&self, store: kv::Store) {
        self.store.send_replace(Some(store));
    }

    /// Runs rounds every interval until `cancel`.
    pub async fn run(self: Arc<Self>, cancel: CancellationToken) {
        // The first round loads the stored table first, if the bucket comes in time.
        let mut store = self.store.subscribe();
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::timeout(STORE_WAIT, store.wait_for(Option::is_some)) => {}
        }
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = self.refresh() => {}
            }
            let interval = if self.snapshot().table.is_empty() {
                self.options.interval.min(EMPTY_INTERVAL)
            } else {
                self.options.interval
            };
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(interval) => {}
            }
        }
    }

    /// One round now (after the one running, if any).
    pub async fn refresh(&self) {
        let mut rounds = self.rounds.lock().await;
        self.round(&mut rounds).await;
    }

    /// Called when a request that arrived at `arrived` matched no route: runs a round
    /// unless one started since the request arrived (it waits for that one instead) or
    /// the last round triggered this way started less than `on_miss` ago. The caller
    /// matches again afterwards.
    pub async fn refresh_on_miss(&self, arrived: Instant) {
        if self.options.on_miss.is_zero() {
            return;
        }
        let mut rounds = self.rounds.lock().await;
        let due = rounds.last_started.is_none_or(|t| t < arrived)
            && rounds
                .last_on_miss
                .is_none_or(|t| t.elapsed() >= self.options.on_miss);
        if due {
            rounds.last_on_miss = Some(Instant::now());
            self.round(&mut rounds).await;
        }
    }

    async fn round(&self, rounds: &mut Rounds) {
        rounds.last_started = Some(Instant::now());
        let store = self.store.borrow().clone();
        if let Some(store) = &store
            && !rounds.loaded
        {
            match load(store).await {
                Ok(records) => {
                    for (raw, service) in records {
                        rounds.stored.insert(service.name.clone(), raw);
                        rounds.catalog.remember(service);
                    }
                    rounds.loaded = true;
                }
                Err(e) => tracing::warn!(error = %e, "cannot load the stored routes, retrying"),
            }
        }
        let discovered =
            match runtime::discovery::instances(&self.client, self.options.window).await {
                Ok(instances) => {
                    let changed = rounds.catalog.observe(&instances);
                    if !changed.is_empty() {
                        tracing::info!(services = ?changed, "service routes changed");
                    }
                    true
                }
                Err(e) => {
                    tracing::warn!(error = %e, "service discovery failed");
                    false
                }
            };
        let built = rounds.catalog.build();
        let snapshot = Arc::new(Snapshot::new(built.table, &built.schemas));
        match self.current.write() {
            Ok(mut current) => *current = snapshot,
            Err(poisoned) => *poisoned.into_inner() = snapshot,
        }
        if let Some(store) = &store {
            persist(store, rounds).await;
        }
        if discovered {
            self.ready.store(true, Ordering::Release);
        }
    }
}

/// Every record in the bucket, with its stored bytes. Unreadable entries are skipped.
async fn load(store: &kv::Store) -> Result<Vec<(Vec<u8>, KnownService)>, async_nats::Error> {
    let mut keys = store.keys().await?;
    let mut records = Vec::new();
    while let Some(key) = keys.next().await {
        let key = key?;
        let Some(raw) = store.get(&key).await? else {
            continue;
        };
        match serde_json::from_slice::<KnownService>(&raw) {
            Ok(service) if service.name == key => records.push((raw.to_vec(), service)),
            Ok(_) => tracing::warn!(key, "stored routes under the wrong key, ignored"),
            Err(e) => tracing::warn!(key, error = %e, "unreadable stored routes, ignored"),
        }
    }
    Ok(records)
}

/// Writes the services whose record differs from the stored one. A failed write is tried
/// again next round.
async fn persist(store: &kv::Store, rounds: &mut Rounds) {
    let mut writes = Vec::new();
    for service in rounds.catalog.services() {
        let Ok(raw) = serde_json::to_vec(service) else {
            continue;
        };
        if rounds.stored.get(&service.name) != Some(&raw) {
            writes.push((service.name.clone(), raw));
        }
    }
    for (name, raw) in writes {
        match store.put(&name, raw.clone().into()).await {
            Ok(_) => {
                rounds.stored.insert(name, raw);
            }
            Err(e) => tracing::warn!(service = %name, error = %e, "cannot store routes"),
        }
    }
}
