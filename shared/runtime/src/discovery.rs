//! NATS service discovery: which service instances run, with their endpoints and
//! metadata (see [`crate::routes`] for the route declarations in it).
//!
//! Discovery is scatter-gather: one request to `$SRV.INFO` with a fresh inbox, answered
//! by every running instance of every service; replies are collected for a short window,
//! since nobody knows how many instances there are.

use std::time::Duration;

use async_nats::service::Info;
use futures::StreamExt;

/// The subject every service instance answers with its [`Info`].
pub const INFO_SUBJECT: &str = "$SRV.INFO";

#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    #[error("cannot subscribe to the discovery inbox: {0}")]
    Subscribe(#[source] async_nats::SubscribeError),
    #[error("cannot publish the discovery request: {0}")]
    Publish(#[source] async_nats::PublishError),
}

/// Every instance that answers `$SRV.INFO` within `window` (at once when no service
/// runs at all). Replies that are not a service info are skipped (logged at debug).
pub async fn instances(
    client: &async_nats::Client,
    window: Duration,
) -> Result<Vec<Info>, DiscoveryError> {
    let inbox = client.new_inbox();
    let mut replies = client
        .subscribe(inbox.clone())
        .await
        .map_err(DiscoveryError::Subscribe)?;
    client
        .publish_with_reply(INFO_SUBJECT, inbox, bytes::Bytes::new())
        .await
        .map_err(DiscoveryError::Publish)?;
    let mut found = Vec::new();
    let deadline = tokio::time::Instant::now() + window;
    while let Ok(Some(message)) = tokio::time::timeout_at(deadline, replies.next()).await {
        // The server's "no responders" status: no instance of anything subscribes.
        if message.status == Some(async_nats::StatusCode::NO_RESPONDERS) {
            break;
        }
        match serde_json::from_slice::<Info>(&message.payload) {
            Ok(info) => found.push(info),
            Err(e) => tracing::debug!(error = %e, "not a service info reply"),
        }
    }
    // Late replies go nowhere once the subscription is gone.
    if let Err(e) = replies.unsubscribe().await {
        tracing::debug!(error = %e, "discovery inbox unsubscribe");
    }
    Ok(found)
}
