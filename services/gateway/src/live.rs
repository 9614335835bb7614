//! The live notifications of every user, received once per gateway and handed to the
//! streams open here.
//!
//! Push publishes each new notification on `push.live.<user>`. The gateway holds one
//! subscription to all of them (`push.live.*`) and keeps, per user, the channels of the
//! streams open for them. A subscription per stream would cost a NATS subscriber (with
//! its channel of full messages, several KiB) for every idle connection; here an idle
//! stream costs a small channel and a map entry. The price is that every gateway
//! receives every user's notifications, also of users it holds no stream for: one
//! message per notification per gateway replica, which core NATS fans out cheaply.
//!
//! A stream whose channel is full (a client not reading) is marked lagged and later
//! fetches what it missed from push, like after a gap in the numbers (see
//! [`crate::stream`]); the hub never waits for one stream.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::Client;
use async_nats::client::RequestErrorKind;
use bytes::Bytes;
use contracts::subjects::push;
use futures::StreamExt;
use futures::channel::mpsc;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Live notifications a stream may have waiting before it counts as lagged.
pub const STREAM_BUFFER: usize = 32;

/// The live notifications of this gateway's open streams.
#[derive(Debug)]
pub struct LiveHub {
    streams: Mutex<HashMap<Uuid, Vec<Registration>>>,
    next_id: AtomicU64,
    /// True while the subscription is in place on the server.
    subscribed: watch::Sender<bool>,
}

#[derive(Debug)]
struct Registration {
    id: u64,
    sender: mpsc::Sender<Bytes>,
    lagged: Arc<AtomicBool>,
}

/// One stream's live notifications (encoded); unregisters when dropped.
#[derive(Debug)]
pub struct LiveFeed {
    hub: Arc<LiveHub>,
    user: Uuid,
    id: u64,
    receiver: mpsc::Receiver<Bytes>,
    lagged: Arc<AtomicBool>,
}

impl LiveFeed {
    /// The next live notification; `None` once the hub ended this stream (the
    /// subscription was lost, so what follows would have gaps).
    pub async fn next(&mut self) -> Option<Bytes> {
        self.receiver.next().await
    }

    /// Whether live notifications were dropped since the last call, because the stream
    /// did not take them fast enough.
    pub fn take_lagged(&self) -> bool {
        self.lagged.swap(false, Ordering::AcqRel)
    }
}

impl Drop for LiveFeed {
    fn drop(&mut self) {
        self.hub.unregister(self.user, self.id);
    }
}

impl Default for LiveHub {
    fn default() -> Self {
        LiveHub {
            streams: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
            subscribed: watch::Sender::new(false),
        }
    }
}

impl LiveHub {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, Vec<Registration>>> {
        match self.streams.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Waits (at most `timeout`) until the subscription is in place: a stream opened
    /// before would miss what is published meanwhile. False if it is not.
    pub async fn wait_subscribed(&self, timeout: Duration) -> bool {
        let mut rx = self.subscribed.subscribe();
        tokio::time::timeout(timeout, rx.wait_for(|s| *s))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Starts delivering `user`'s live notifications to a new feed. Effective at once:
    /// anything the hub receives from now on reaches it.
    pub fn register(self: &Arc<Self>, user: Uuid) -> LiveFeed {
        let (sender, receiver) = mpsc::channel(STREAM_BUFFER);
        let lagged = Arc::new(AtomicBool::new(false));
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.lock().entry(user).or_default().push(Registration {
            id,
            sender,
            lagged: lagged.clone(),
        });
        LiveFeed {
            hub: self.clone(),
            user,
            id,
            receiver,
            lagged,
        }
    }

    fn unregister(&self, user: Uuid, id: u64) {
        let mut streams = self.lock();
        if let Some(list) = streams.get_mut(&user) {
            list.retain(|r| r.id != id);
            if list.is_empty() {
                streams.remove(&user);
            }
        }
    }

    /// Streams registered now.
    pub fn len(&self) -> usize {
        self.lock().values().map(Vec::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Hands one live message to the streams of its user.
    fn dispatch(&self, subject: &str, payload: Bytes) {
        let Some(user) = subject
            .strip_prefix(push::LIVE_PREFIX)
            .and_then(|u| Uuid::try_parse(u).ok())
        else {
            tracing::warn!(subject, "live notification on a subject naming no user");
            return;
        };
        let mut streams = self.lock();
        let Some(list) = streams.get_mut(&user) else {
            return;
        };
        list.retain_mut(|r| match r.sender.try_send(payload.clone()) {
            Ok(()) => true,
            Err(e) if e.is_full() => {
                r.lagged.store(true, Ordering::Release);
                true
            }
            // The stream is gone; its feed's drop is unregistering it.
            Err(_) => false,
        });
        if list.is_empty() {
            streams.remove(&user);
        }
    }

    /// Ends every registered stream: their channels close, so each ends and its client
    /// resumes with `Last-Event-ID`.
    fn end_all(&self) {
        self.lock().clear();
    }

    /// Holds the subscription until `cancel`, resubscribing if it is lost (and then
    /// ending the streams, which may have missed messages meanwhile).
    pub async fn run(self: Arc<Self>, client: Client, cancel: CancellationToken) {
        let mut backoff = Duration::from_millis(100);
        loop {
            let subscription = tokio::select! {
                _ = cancel.cancelled() => return,
                s = client.subscribe(push::LIVE_WILDCARD) => s,
            };
            let mut subscription = match subscription {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot subscribe to live notifications; retrying");
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    continue;
                }
            };
            if !sync_with_server(&client, &cancel).await {
                return;
            }
            backoff = Duration::from_millis(100);
            self.subscribed.send_replace(true);
            tracing::debug!("subscribed to live notifications");
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    message = subscription.next() => match message {
                        Some(m) => self.dispatch(m.subject.as_str(), m.payload),
                        None => break,
                    },
                }
            }
            self.subscribed.send_replace(false);
            tracing::warn!("live notification subscription ended; resubscribing");
            self.end_all();
        }
    }
}

/// Returns once the server has handled the `SUB` just sent on this connection: a
/// request to a subject nobody listens on comes back "no responders" only after the
/// server processed the earlier commands. Retries until then; false on `cancel`.
async fn sync_with_server(client: &Client, cancel: &CancellationToken) -> bool {
    loop {
        let request = async_nats::Request::new()
            .payload(Bytes::new())
            .timeout(Some(Duration::from_secs(2)));
        let outcome = tokio::select! {
            _ = cancel.cancelled() => return false,
            r = client.send_request(client.new_inbox(), request) => r,
        };
        match outcome {
            Err(e) if e.kind() == RequestErrorKind::NoResponders => return true,
            Ok(_) => return true,
            Err(e) => {
                tracing::debug!(error = %e, "live subscription sync failed; retrying");
                tokio::select! {
                    _ = cancel.cancelled() => return false,
                    _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subject(user: Uuid) -> String {
        push::live_subject(&user)
    }

    #[tokio::test]
    async fn a_message_reaches_every_stream_of_its_user_and_no_other() {
        let hub = Arc::new(LiveHub::default());
        let (ada, bob) = (Uuid::now_v7(), Uuid::now_v7());
        let mut ada1 = hub.register(ada);
        let mut ada2 = hub.register(ada);
        let mut bob1 = hub.register(bob);
        hub.dispatch(&subject(ada), Bytes::from_static(b"x"));
        assert_eq!(ada1.next().await.as_deref(), Some(&b"x"[..]));
        assert_eq!(ada2.next().await.as_deref(), Some(&b"x"[..]));
        assert!(bob1.receiver.try_recv().is_err(), "bob got ada's message");
        assert_eq!(hub.len(), 3);
        drop(ada1);
        drop(bob1);
        assert_eq!(hub.len(), 1);
        drop(ada2);
        assert!(hub.is_empty());
        assert!(hub.lock().is_empty(), "no empty user entries are left");
    }

    #[tokio::test]
    async fn a_stream_that_does_not_read_is_marked_lagged_and_others_go_on() {
        let hub = Arc::new(LiveHub::default());
        let user = Uuid::now_v7();
        let slow = hub.register(user);
        let mut fast = hub.register(user);
        for i in 0..STREAM_BUFFER * 2 {
            hub.dispatch(&subject(user), Bytes::from(i.to_string()));
            assert_eq!(fast.next().await, Some(Bytes::from(i.to_string())));
        }
        assert!(slow.take_lagged());
        assert!(!slow.take_lagged(), "the flag resets when taken");
        assert!(!fast.take_lagged());
    }

    #[tokio::test]
    async fn ending_all_closes_every_feed_and_foreign_subjects_are_ignored() {
        let hub = Arc::new(LiveHub::default());
        let user = Uuid::now_v7();
        let mut feed = hub.register(user);
        hub.dispatch("push.live.not-a-user", Bytes::from_static(b"x"));
        hub.dispatch("elsewhere", Bytes::from_static(b"x"));
        hub.end_all();
        assert_eq!(feed.next().await, None);
        drop(feed);
        assert!(hub.is_empty());
    }
}
