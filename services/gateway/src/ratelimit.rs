//! Per-user and per-address rate limits (GCRA, in memory per gateway replica).
//!
//! Authenticated routes are limited per user id, public routes per client IP. Keys
//! whose bucket is full again are dropped every [`RETAIN_EVERY`], so the state stays
//! bounded by the callers active in the last moments, not by everyone ever seen.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::error::ApiError;

/// How often idle keys are forgotten.
pub const RETAIN_EVERY: Duration = Duration::from_secs(30);

/// Whom a request is counted against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateKey {
    User(Uuid),
    Ip(IpAddr),
}

pub struct RateLimits {
    users: DefaultKeyedRateLimiter<Uuid>,
    ips: DefaultKeyedRateLimiter<IpAddr>,
    clock: DefaultClock,
}

impl std::fmt::Debug for RateLimits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimits")
            .field("users", &self.users.len())
            .field("ips", &self.ips.len())
            .finish()
    }
}

impl RateLimits {
    pub fn new(
        user_per_sec: NonZeroU32,
        user_burst: NonZeroU32,
        ip_per_sec: NonZeroU32,
        ip_burst: NonZeroU32,
    ) -> Self {
        RateLimits {
            users: RateLimiter::keyed(Quota::per_second(user_per_sec).allow_burst(user_burst)),
            ips: RateLimiter::keyed(Quota::per_second(ip_per_sec).allow_burst(ip_burst)),
            clock: DefaultClock::default(),
        }
    }

    /// Counts one request; `RateLimited` with the seconds to wait when over the limit.
    pub fn check(&self, key: RateKey) -> Result<(), ApiError> {
        let outcome = match key {
            RateKey::User(id) => self.users.check_key(&id),
            RateKey::Ip(ip) => self.ips.check_key(&ip),
        };
        outcome.map_err(|not_until| {
            let wait = not_until.wait_time_from(self.clock.now());
            // Round up: `Retry-After: 0` would invite an immediate, refused retry.
            let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            ApiError::RateLimited {
                retry_after_secs: secs.max(1),
            }
        })
    }

    /// Forgets keys that are back to a full bucket.
    pub fn retain_recent(&self) {
        self.users.retain_recent();
        self.ips.retain_recent();
        self.users.shrink_to_fit();
        self.ips.shrink_to_fit();
    }

    /// The number of keys held (for tests and debugging).
    pub fn len(&self) -> usize {
        self.users.len() + self.ips.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Runs [`RateLimits::retain_recent`] every [`RETAIN_EVERY`] until `cancel`.
    pub async fn run_cleaner(self: std::sync::Arc<Self>, cancel: CancellationToken) {
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tokio::time::sleep(RETAIN_EVERY) => self.retain_recent(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use contracts::ErrorCode;

    fn nz(n: u32) -> NonZeroU32 {
        NonZeroU32::new(n).expect("non-zero")
    }

    #[test]
    fn burst_then_limited_with_retry_after() {
        let limits = RateLimits::new(nz(1), nz(2), nz(1), nz(1));
        let user = RateKey::User(Uuid::now_v7());
        assert!(limits.check(user).is_ok());
        assert!(limits.check(user).is_ok());
        match limits.check(user) {
            Err(err @ ApiError::RateLimited { retry_after_secs }) => {
                assert_eq!(err.code(), ErrorCode::RateLimited);
                assert!((1..=2).contains(&retry_after_secs));
            }
            other => panic!("expected rate limited, got {other:?}"),
        }
        // Another user and an address have their own buckets.
        assert!(limits.check(RateKey::User(Uuid::now_v7())).is_ok());
        let ip = RateKey::Ip(IpAddr::from([127, 0, 0, 1]));
        assert!(limits.check(ip).is_ok());
        assert!(limits.check(ip).is_err());
    }

    #[test]
    fn idle_keys_are_forgotten() {
        let limits = RateLimits::new(nz(1000), nz(1), nz(1000), nz(1));
        for i in 0..50u8 {
            let _ = limits.check(RateKey::Ip(IpAddr::from([10, 0, 0, i])));
        }
        assert_eq!(limits.len(), 50);
        std::thread::sleep(Duration::from_millis(20));
        limits.retain_recent();
        assert!(limits.is_empty());
    }
}
