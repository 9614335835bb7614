//! NATS connection and JetStream provisioning.

use std::time::Duration;

use async_nats::jetstream::{self, stream};
use contracts::subjects::StreamSpec;

use crate::config::CommonConfig;

#[derive(Debug, thiserror::Error)]
pub enum NatsError {
    #[error(transparent)]
    Config(#[from] crate::ConfigError),
    #[error("cannot connect to NATS at {url}: {source}")]
    Connect {
        url: String,
        #[source]
        source: async_nats::ConnectError,
    },
    #[error("cannot provision stream {name}: {source}")]
    Stream {
        name: String,
        #[source]
        source: jetstream::context::CreateStreamError,
    },
    #[error("cannot provision key-value bucket {name}: {source}")]
    Bucket {
        name: String,
        #[source]
        source: jetstream::context::CreateKeyValueError,
    },
}

/// The default of `NATS_REQUEST_TIMEOUT_MS`.
pub const DEFAULT_REQUEST_TIMEOUT_MS: u64 = 10_000;

/// Connects with the service's name, retrying the first connect in the background so a
/// service can start (and serve `/healthz`) while NATS is still down; requests and
/// publishes wait for the connection.
///
/// Every request on the connection that sets no deadline of its own (JetStream API
/// calls, KV operations) gives up after `NATS_REQUEST_TIMEOUT_MS` (default 10000);
/// JetStream publish acks wait at most 5 s (the client's default); the gateway's
/// requests to services use `GATEWAY_REQUEST_TIMEOUT_MS`.
pub async fn connect(
    config: &CommonConfig,
    service: &str,
) -> Result<async_nats::Client, NatsError> {
    let request_timeout =
        crate::config::millis("NATS_REQUEST_TIMEOUT_MS", DEFAULT_REQUEST_TIMEOUT_MS)?;
    let mut options = async_nats::ConnectOptions::new()
        .name(format!("mesh-{service}"))
        .retry_on_initial_connect()
        .connection_timeout(Duration::from_secs(5))
        .request_timeout(Some(request_timeout.max(Duration::from_millis(1))))
        .event_callback(|event| async move {
            match event {
                async_nats::Event::Connected => tracing::info!("NATS connected"),
                async_nats::Event::Disconnected => tracing::warn!("NATS disconnected"),
                other => tracing::debug!(event = %other, "NATS event"),
            }
        });
    if let (Some(user), Some(password)) = (&config.nats_user, &config.nats_password) {
        options = options.user_and_password(user.clone(), password.clone());
    }
    // NATS_URL may list several servers, comma-separated (the nodes of a cluster):
    // the client connects to one of them and fails over to the others. async-nats
    // parses a single string as one URL, so the list is split here.
    let servers: Vec<&str> = config
        .nats_url
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    options
        .connect(servers)
        .await
        .map_err(|source| NatsError::Connect {
            url: config.nats_url.clone(),
            source,
        })
}

/// True while the client holds a live connection.
pub fn is_connected(client: &async_nats::Client) -> bool {
    client.connection_state() == async_nats::connection::State::Connected
}

/// Replicas of every stream and bucket the mesh provisions: `NATS_STREAM_REPLICAS`,
/// default 1 (a single server); 3 on a three-node JetStream cluster.
pub fn stream_replicas() -> usize {
    crate::config::parse("NATS_STREAM_REPLICAS", 1usize)
        .unwrap_or(1)
        .clamp(1, 5)
}

/// The JetStream configuration of a mesh stream: file storage, limits retention (so it
/// can be browsed and replayed), and an explicit duplicate window for outbox dedupe.
pub fn stream_config(spec: &StreamSpec) -> stream::Config {
    stream::Config {
        num_replicas: stream_replicas(),
        name: spec.name.to_owned(),
        description: Some(spec.description.to_owned()),
        subjects: spec.subjects.iter().map(|s| (*s).to_owned()).collect(),
        storage: stream::StorageType::File,
        retention: stream::RetentionPolicy::Limits,
        discard: stream::DiscardPolicy::Old,
        max_age: Duration::from_secs(spec.max_age_secs),
        duplicate_window: Duration::from_secs(spec.duplicate_window_secs),
        ..Default::default()
    }
}

/// How often provisioning a stream is tried before start-up gives up.
const PROVISION_ATTEMPTS: u32 = 6;

/// Creates or updates the given streams; safe to run at every start and from several
/// replicas at once.
pub async fn provision_streams(
    js: &jetstream::Context,
    specs: &[StreamSpec],
) -> Result<(), NatsError> {
    for spec in specs {
        // On a cluster, replicas creating the same replicated stream at once can see
        // their requests time out while the first one is applied: try a few times.
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            match js.create_or_update_stream(stream_config(spec)).await {
                Ok(_) => break,
                Err(source) if attempt >= PROVISION_ATTEMPTS => {
                    return Err(NatsError::Stream {
                        name: spec.name.to_owned(),
                        source,
                    });
                }
                Err(e) => {
                    tracing::warn!(stream = spec.name, attempt, error = %e, "stream provisioning failed; retrying");
                    tokio::time::sleep(Duration::from_millis(500 * u64::from(attempt))).await;
                }
            }
        }
        tracing::debug!(stream = spec.name, "stream provisioned");
    }
    Ok(())
}

/// Creates (or updates) a key-value bucket whose entries expire after `ttl`.
pub async fn provision_bucket(
    js: &jetstream::Context,
    name: &str,
    ttl: Duration,
) -> Result<jetstream::kv::Store, NatsError> {
    js.create_or_update_key_value(jetstream::kv::Config {
        bucket: name.to_owned(),
        max_age: ttl,
        history: 1,
        num_replicas: stream_replicas(),
        storage: stream::StorageType::File,
        ..Default::default()
    })
    .await
    .map_err(|source| NatsError::Bucket {
        name: name.to_owned(),
        source,
    })
}
