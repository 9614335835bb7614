//! The public HTTP API of the mesh. The gateway owns no database: it verifies access
//! tokens against a cached JWKS, validates and rate-limits requests, applies
//! `Idempotency-Key`, and forwards each request over NATS request/reply to the service
//! that owns it, turning the reply into JSON or problem+json.
//!
//! - [`routes`]: the route table (data), matched by one generic handler in [`proxy`];
//! - [`discovery`]: the live table, built by [`catalog`] from the routes the services
//!   declare in their NATS discovery metadata (`$SRV.INFO`), refreshed periodically and
//!   when a request matches nothing, remembered in the shared bucket `gateway_routes`;
//! - [`auth`]: the JWKS cache and token checks; [`ratelimit`]: per-user and per-IP limits;
//!   [`client_addr`]: the client's address (the peer, or `X-Forwarded-For` from a
//!   trusted proxy);
//! - [`idempotency`]: records in the shared JetStream KV bucket `gateway_idempotency`;
//! - [`stream`]: the live notification stream (Server-Sent Events fed by a core-NATS
//!   subscription per stream) and [`tickets`], the single-use tickets in the shared
//!   bucket `gateway_sse_tickets` that let a browser open it;
//! - [`error`]: the one error type and its problem+json mapping;
//! - [`openapi`]: `/openapi.json`, generated from the discovered table (with the schemas
//!   the services publish) and the native routes;
//! - [`console`]: the web console at `/console` (embedded static files) and its
//!   cookie session, accepted on the admin routes (`/v1/admin/…`) only;
//! - [`server`]: the HTTP middleware stack, with [`http_metrics`] around it;
//!   [`Application`]: startup and shutdown.
//!
//! Architecture invariant: its only state is the idempotency, ticket and route buckets
//! (shared by every replica), the JWKS cache, the discovered route table, the in-memory
//! rate-limit buckets and the open notification streams. It knows no service's routes at
//! build time: a team ships a new endpoint by deploying only its own service.

pub mod accept;
pub mod auth;
pub mod cache;
pub mod catalog;
pub mod client_addr;
pub mod config;
pub mod console;
pub mod discovery;
pub mod error;
#[cfg(test)]
mod fixture;
pub mod http_metrics;
pub mod idempotency;
pub mod live;
pub mod openapi;
pub mod proxy;
pub mod ratelimit;
pub mod routes;
pub mod server;
pub mod stream;
pub mod tickets;

use std::sync::Arc;
use std::time::Duration;

use contracts::subjects::buckets;
use runtime::health::Readiness;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use config::Config;
pub use error::ApiError;
pub use routes::{AuthRule, Route, RouteTable};

use discovery::{Directory, DiscoveryOptions};

use auth::KeyStore;
use cache::{CacheOptions, ResponseCache};
use idempotency::Idempotency;
use live::LiveHub;
use proxy::Gateway;
use ratelimit::RateLimits;
use stream::StreamOptions;
use tickets::Tickets;

/// The service name used for NATS and health reports.
pub const SERVICE: &str = "gateway";

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error(transparent)]
    Nats(#[from] runtime::nats::NatsError),
    #[error("cannot listen on {addr}")]
    Bind {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("HTTP server failed")]
    Serve(#[source] std::io::Error),
}

/// A built gateway: listening, not yet serving.
pub struct Application {
    listener: TcpListener,
    port: u16,
    router: axum::Router,
    gateway: Arc<Gateway>,
    config: Config,
}

impl Application {
    /// Connects to NATS (retrying in the background if it is down), binds the HTTP
    /// listener and assembles the router. Nothing is served until
    /// [`Application::run_until_stopped`].
    pub async fn build(config: Config) -> Result<Self, StartupError> {
        let client = runtime::nats::connect(&config.common, SERVICE).await?;
        let listener = TcpListener::bind(&config.common.http_addr)
            .await
            .map_err(|source| StartupError::Bind {
                addr: config.common.http_addr.clone(),
                source,
            })?;
        let port = listener
            .local_addr()
            .map_err(|source| StartupError::Bind {
                addr: config.common.http_addr.clone(),
                source,
            })?
            .port();

        let keys = Arc::new(KeyStore::new(
            client.clone(),
            config.request_timeout,
            config.jwt_leeway_secs,
        ));
        let directory = Arc::new(Directory::new(
            client.clone(),
            config.route_prefixes.clone(),
            DiscoveryOptions {
                interval: config.discovery_interval,
                window: config.discovery_window,
                on_miss: config.discovery_on_miss,
            },
        ));
        let gateway = Arc::new(Gateway {
            directory: directory.clone(),
            client: client.clone(),
            keys: keys.clone(),
            limits: Arc::new(RateLimits::new(
                config.rate_limit_user_per_sec,
                config.rate_limit_user_burst,
                config.rate_limit_ip_per_sec,
                config.rate_limit_ip_burst,
            )),
            idempotency: Arc::new(Idempotency::new(config.idempotency_abandon_after)),
            tickets: Arc::new(Tickets::new(config.sse_ticket_ttl)),
            streams: StreamOptions::new(config.sse_keepalive),
            live: Arc::new(LiveHub::default()),
            cache: Arc::new(ResponseCache::new(
                client.clone(),
                &CacheOptions {
                    max_bytes: config.cache_max_bytes,
                    max_age: config.cache_max_age,
                },
            )),
            request_timeout: config.request_timeout,
            max_body_bytes: config.max_body_bytes,
            trusted_proxies: config.trusted_proxies.clone(),
        });

        let idem = gateway.idempotency.clone();
        let tickets = gateway.tickets.clone();
        let readiness = Readiness::new(SERVICE, env!("CARGO_PKG_VERSION"))
            .nats(client)
            .check("jwks", move || {
                let ok = keys.is_loaded();
                async move {
                    if ok {
                        Ok(())
                    } else {
                        Err("no key set loaded yet".to_owned())
                    }
                }
            })
            .check("idempotency_store", move || {
                let ok = idem.is_ready();
                async move {
                    if ok {
                        Ok(())
                    } else {
                        Err("bucket not ready yet".to_owned())
                    }
                }
            })
            .check("stream_ticket_store", move || {
                let ok = tickets.is_ready();
                async move {
                    if ok {
                        Ok(())
                    } else {
                        Err("bucket not ready yet".to_owned())
                    }
                }
            })
            .check("routes", move || {
                let ok = directory.is_ready();
                async move {
                    if ok {
                        Ok(())
                    } else {
                        Err("services not discovered yet".to_owned())
                    }
                }
            });
        let router = server::router(
            gateway.clone(),
            readiness,
            &server::HttpOptions {
                http_timeout: config.http_timeout,
                cors_origins: config.cors_origins.clone(),
                cookie_secure: config.cookie_secure,
            },
        );
        Ok(Application {
            listener,
            port,
            router,
            gateway,
            config,
        })
    }

    /// The port the HTTP listener is bound to.
    pub fn http_port(&self) -> u16 {
        self.port
    }

    /// Serves until `cancel`, then stops accepting, ends every notification stream, lets
    /// in-flight requests finish (for at most `SHUTDOWN_GRACE_MS`) and stops the
    /// background tasks.
    pub async fn run_until_stopped(self, cancel: CancellationToken) -> Result<(), StartupError> {
        let Application {
            listener,
            port,
            router,
            gateway,
            config,
        } = self;
        // Background work stops after the HTTP server: in-flight requests still verify
        // tokens and write idempotency records while draining.
        let background = CancellationToken::new();
        tokio::spawn(
            gateway
                .keys
                .clone()
                .run(config.jwks_refresh, background.clone()),
        );
        tokio::spawn(gateway.limits.clone().run_cleaner(background.clone()));
        tokio::spawn(
            gateway
                .live
                .clone()
                .run(gateway.client.clone(), background.clone()),
        );
        tokio::spawn(stream::watch_reconnects(
            gateway.clone(),
            background.clone(),
        ));
        tokio::spawn(gateway.directory.clone().run(background.clone()));
        tokio::spawn(provision_buckets(
            gateway.clone(),
            config.clone(),
            background.clone(),
        ));
        http_metrics::init();
        tracing::info!(port, "gateway listening");

        let shutdown = cancel.clone();
        let streams = gateway.streams.shutdown.clone();
        let server = accept::serve(listener, router, async move {
            shutdown.cancelled().await;
            // An open stream is a response that never finishes on its own: end them all,
            // or the graceful shutdown would wait for the whole grace period.
            streams.cancel();
        });
        let grace = config.common.shutdown_grace;
        let result = tokio::select! {
            r = server => r.map_err(StartupError::Serve),
            _ = async { cancel.cancelled().await; tokio::time::sleep(grace).await } => {
                tracing::warn!("in-flight requests did not finish within the shutdown grace");
                Ok(())
            }
        };
        gateway.streams.shutdown.cancel();
        background.cancel();
        if let Err(e) = gateway.client.drain().await {
            tracing::debug!(error = %e, "NATS drain");
        }
        tracing::info!("gateway stopped");
        result
    }
}

/// Creates (or, with `PROVISION=off`, looks up) the idempotency, stream-ticket and route
/// buckets, retrying until JetStream answers; the routes needing one get 503 until then
/// (discovery works without its bucket, it only cannot remember).
async fn provision_buckets(gateway: Arc<Gateway>, config: Config, cancel: CancellationToken) {
    let js = async_nats::jetstream::new(gateway.client.clone());
    // Each store is handed over as soon as it is ready, independently of the other.
    let idempotency = async {
        let store = open_bucket(&js, &config, buckets::IDEMPOTENCY, config.idempotency_ttl).await;
        gateway.idempotency.set_store(store);
    };
    let tickets = async {
        let store = open_bucket(&js, &config, buckets::SSE_TICKETS, config.sse_ticket_ttl).await;
        gateway.tickets.set_store(store);
    };
    let routes = async {
        // Kept until deleted: a record changes only when its service's routes do, so an
        // age limit would forget routes that are merely stable.
        let store = open_bucket(&js, &config, buckets::ROUTES, Duration::ZERO).await;
        gateway.directory.set_store(store);
    };
    tokio::select! {
        _ = cancel.cancelled() => {}
        _ = futures::future::join3(idempotency, tickets, routes) => {}
    }
}

async fn open_bucket(
    js: &async_nats::jetstream::Context,
    config: &Config,
    name: &'static str,
    ttl: Duration,
) -> async_nats::jetstream::kv::Store {
    let mut backoff = Duration::from_millis(100);
    loop {
        let result = if config.common.provision {
            runtime::nats::provision_bucket(js, name, ttl)
                .await
                .map_err(|e| e.to_string())
        } else {
            js.get_key_value(name).await.map_err(|e| e.to_string())
        };
        match result {
            Ok(store) => {
                tracing::debug!(bucket = name, "bucket ready");
                return store;
            }
            Err(e) => tracing::warn!(bucket = name, error = %e, "bucket not available, retrying"),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}
