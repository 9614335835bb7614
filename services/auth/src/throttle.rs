//! Brute-force protection for login: failed attempts are counted per account and per
//! client address in auth's own database, so every replica sees the same counts.
//!
//! Each key (`account:<sha256 of the normalized email>`, `address:<ip>`; IPv6 by /64,
//! since one client holds a whole /64) has a fixed window. An attempt is *reserved*
//! before the password is checked (so a burst of parallel guesses cannot slip past the
//! limit while the first ones are being hashed) and stays counted if it fails. Once a
//! key holds `max` attempts in its window, the next attempt locks it: refused with
//! `login_throttled` and `Retry-After` for the lockout, which starts at
//! `AUTH_LOGIN_LOCKOUT_SECS` and doubles with each lockout in a row, up to
//! `AUTH_LOGIN_LOCKOUT_MAX_SECS`. While locked, attempts are refused without being
//! counted or checked, so hammering neither extends the lockout nor tests passwords.
//! A whole window without reaching the limit forgets earlier lockouts.
//!
//! A victim is never locked out for good: a lockout is bounded, and a successful login
//! or a password reset clears the account's count. Unknown accounts are counted and
//! locked exactly like existing ones, so the limit does not tell who has an account.
//! A successful login gives its reserved attempt back to the address, so many users
//! behind one NAT only add up their failures.

use std::net::IpAddr;
use std::time::Duration;

use runtime::db::{Backend, Database, to_micros};
use sha2::{Digest, Sha256};
use sqlx::Row;

/// The limits, from `AUTH_LOGIN_*`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ThrottlePolicy {
    /// Failed logins per account per window; 0 turns the account limit off.
    pub account_max: u32,
    /// Failed logins per client address per window; 0 turns the address limit off.
    pub address_max: u32,
    pub window: Duration,
    /// The first lockout; each further lockout in a row doubles it.
    pub lockout: Duration,
    /// The longest lockout.
    pub lockout_max: Duration,
}

impl Default for ThrottlePolicy {
    fn default() -> Self {
        ThrottlePolicy {
            account_max: 5,
            address_max: 20,
            window: Duration::from_secs(900),
            lockout: Duration::from_secs(60),
            lockout_max: Duration::from_secs(900),
        }
    }
}

impl ThrottlePolicy {
    /// The lockout after `lockouts` earlier ones in a row.
    fn lockout_after(&self, lockouts: i64) -> Duration {
        let doublings = u32::try_from(lockouts.clamp(0, 32)).unwrap_or(32);
        self.lockout
            .checked_mul(1u32 << doublings.min(31))
            .unwrap_or(self.lockout_max)
            .min(self.lockout_max)
    }

    /// How long a row must be kept: a row idle longer than this has no effect any more.
    pub fn retention(&self) -> Duration {
        self.window + self.lockout_max
    }
}

/// One counter: its key and its limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThrottleKey {
    pub key: String,
    pub max: u32,
}

const ACCOUNT_PREFIX: &str = "account:";

/// The account key of a (normalized) email: hashed, so the table does not collect the
/// addresses people typed, existing or not.
pub fn account_key(normalized_email: &str) -> String {
    format!(
        "{ACCOUNT_PREFIX}{}",
        hex::encode(Sha256::digest(normalized_email.as_bytes()))
    )
}

/// The address key: IPv4 as is, IPv6 by its /64 network.
pub fn address_key(ip: IpAddr) -> String {
    match ip.to_canonical() {
        IpAddr::V4(v4) => format!("address:{v4}"),
        IpAddr::V6(v6) => {
            let s = v6.segments();
            format!("address:{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
        }
    }
}

/// The stored state of one key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct State {
    attempts: i64,
    window_start: i64,
    locked_until: i64,
    lockouts: i64,
}

/// What one attempt does to one key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// Counted; the new state.
    Allow(State),
    /// Refused for this many microseconds; the state to store (a new lock) if changed.
    Refuse { wait_us: i64, new: Option<State> },
}

/// The pure rule: what an attempt at `now` (µs) does to a key in `state`.
fn step(policy: &ThrottlePolicy, max: u32, state: State, now: i64) -> Step {
    if state.locked_until > now {
        return Step::Refuse {
            wait_us: state.locked_until - now,
            new: None,
        };
    }
    let window = micros(policy.window);
    let mut next = state;
    if state.window_start.saturating_add(window) <= now {
        // A whole window without reaching the limit: start afresh.
        next = State {
            attempts: 0,
            window_start: now,
            locked_until: 0,
            lockouts: 0,
        };
    }
    if next.attempts >= i64::from(max) {
        let lockout = micros(policy.lockout_after(next.lockouts));
        let until = now.saturating_add(lockout);
        // The next window starts when the lockout ends; filling it again locks longer.
        let locked = State {
            attempts: 0,
            window_start: until,
            locked_until: until,
            lockouts: next.lockouts + 1,
        };
        return Step::Refuse {
            wait_us: lockout,
            new: Some(locked),
        };
    }
    next.attempts += 1;
    Step::Allow(next)
}

fn micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

/// Whether a login may go ahead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// An attempt is reserved on every key; report the outcome with
    /// [`LoginThrottle::succeeded`] (a failure needs nothing: it stays counted).
    Allowed,
    /// Refused: retry after this many seconds (rounded up, at least 1).
    Refused { retry_after_secs: u64 },
}

/// The login counters in auth's database.
#[derive(Clone, Debug)]
pub struct LoginThrottle {
    db: Database,
    policy: ThrottlePolicy,
}

const ENSURE_ROW: &str = "INSERT INTO login_throttle \
     (key, attempts, window_start, locked_until, lockouts, updated_at) \
     VALUES ($1, 0, $2, 0, 0, $2) ON CONFLICT (key) DO NOTHING";
const READ_ROW_SQLITE: &str = "SELECT attempts, window_start, locked_until, lockouts \
     FROM login_throttle WHERE key = $1";
// SQLite's write transaction already holds the database's write lock; PostgreSQL needs
// the row locked so two replicas cannot both take the last attempt.
const READ_ROW_POSTGRES: &str = "SELECT attempts, window_start, locked_until, lockouts \
     FROM login_throttle WHERE key = $1 FOR UPDATE";
const WRITE_ROW: &str = "UPDATE login_throttle SET attempts = $2, window_start = $3, \
     locked_until = $4, lockouts = $5, updated_at = $6 WHERE key = $1";

impl LoginThrottle {
    pub fn new(db: Database, policy: ThrottlePolicy) -> LoginThrottle {
        LoginThrottle { db, policy }
    }

    pub fn policy(&self) -> &ThrottlePolicy {
        &self.policy
    }

    /// The keys of a login for `normalized_email` from `client_ip`, each with its limit
    /// (limits set to 0 are left out). Always in this order (account, then address), so
    /// row locks are taken in one order and concurrent logins cannot deadlock.
    pub fn keys(&self, normalized_email: &str, client_ip: Option<IpAddr>) -> Vec<ThrottleKey> {
        let mut keys = Vec::with_capacity(2);
        if self.policy.account_max > 0 {
            keys.push(ThrottleKey {
                key: account_key(normalized_email),
                max: self.policy.account_max,
            });
        }
        if let Some(ip) = client_ip
            && self.policy.address_max > 0
        {
            keys.push(ThrottleKey {
                key: address_key(ip),
                max: self.policy.address_max,
            });
        }
        keys
    }

    /// Reserves one attempt on every key, or refuses when any of them is locked or full
    /// (then nothing is reserved; a key that just filled up is locked).
    pub async fn begin(&self, keys: &[ThrottleKey]) -> Result<Admission, sqlx::Error> {
        if keys.is_empty() {
            return Ok(Admission::Allowed);
        }
        let now = to_micros(jiff::Timestamp::now());
        let read = match self.db.backend {
            Backend::Sqlite => READ_ROW_SQLITE,
            Backend::Postgres => READ_ROW_POSTGRES,
        };
        let mut tx = self.db.begin_write().await?;
        let mut steps = Vec::with_capacity(keys.len());
        for key in keys {
            sqlx::query(ENSURE_ROW)
                .bind(&key.key)
                .bind(now)
                .execute(&mut *tx)
                .await?;
            let row = sqlx::query(read).bind(&key.key).fetch_one(&mut *tx).await?;
            let state = State {
                attempts: row.try_get("attempts")?,
                window_start: row.try_get("window_start")?,
                locked_until: row.try_get("locked_until")?,
                lockouts: row.try_get("lockouts")?,
            };
            steps.push((key, step(&self.policy, key.max, state, now)));
        }
        let refused_for = steps
            .iter()
            .filter_map(|(_, s)| match s {
                Step::Refuse { wait_us, .. } => Some(*wait_us),
                Step::Allow(_) => None,
            })
            .max();
        for (key, step) in &steps {
            let new = match (step, refused_for) {
                // Refused elsewhere: this key's attempt is not spent.
                (Step::Allow(_), Some(_)) => None,
                (Step::Allow(new), None) => Some(*new),
                (Step::Refuse { new, .. }, _) => *new,
            };
            if let Some(new) = new {
                sqlx::query(WRITE_ROW)
                    .bind(&key.key)
                    .bind(new.attempts)
                    .bind(new.window_start)
                    .bind(new.locked_until)
                    .bind(new.lockouts)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
            }
        }
        tx.commit().await?;
        Ok(match refused_for {
            None => Admission::Allowed,
            Some(wait_us) => {
                let wait = u64::try_from(wait_us).unwrap_or(0);
                // Round up: a client retrying after exactly Retry-After must get in.
                let secs = wait.div_ceil(1_000_000).max(1);
                for (key, step) in &steps {
                    if let Step::Refuse { new: Some(_), .. } = step {
                        // The hashed key only: never the email.
                        tracing::warn!(key = %key.key, lockout_secs = secs, "login throttled: too many failed attempts");
                    }
                }
                Admission::Refused {
                    retry_after_secs: secs,
                }
            }
        })
    }

    /// After a successful login: the account starts afresh, the address gets its
    /// reserved attempt back.
    pub async fn succeeded(&self, keys: &[ThrottleKey]) -> Result<(), sqlx::Error> {
        if keys.is_empty() {
            return Ok(());
        }
        let mut tx = self.db.begin_write().await?;
        for key in keys {
            let sql = if key.key.starts_with(ACCOUNT_PREFIX) {
                "DELETE FROM login_throttle WHERE key = $1"
            } else {
                "UPDATE login_throttle SET attempts = attempts - 1 WHERE key = $1 AND attempts > 0"
            };
            sqlx::query(sql).bind(&key.key).execute(&mut *tx).await?;
        }
        tx.commit().await
    }

    /// Forgets rows that no longer affect anything (idle for a window plus the longest
    /// lockout). Returns how many went.
    pub async fn forget_idle(&self) -> Result<u64, sqlx::Error> {
        let cutoff = to_micros(jiff::Timestamp::now()) - micros(self.policy.retention());
        Ok(
            sqlx::query("DELETE FROM login_throttle WHERE updated_at < $1 AND locked_until < $1")
                .bind(cutoff)
                .execute(self.db.writer())
                .await?
                .rows_affected(),
        )
    }
}

/// Clears the account's count inside a caller's transaction (a password reset: whoever
/// read the mail is the owner).
pub async fn clear_account<'e, E>(executor: E, normalized_email: &str) -> Result<(), sqlx::Error>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    sqlx::query("DELETE FROM login_throttle WHERE key = $1")
        .bind(account_key(normalized_email))
        .execute(executor)
        .await
        .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = 1_000_000;

    fn policy() -> ThrottlePolicy {
        ThrottlePolicy {
            account_max: 3,
            address_max: 10,
            window: Duration::from_secs(100),
            lockout: Duration::from_secs(10),
            lockout_max: Duration::from_secs(35),
        }
    }

    fn fresh(now: i64) -> State {
        State {
            attempts: 0,
            window_start: now,
            locked_until: 0,
            lockouts: 0,
        }
    }

    /// Runs attempts at the given seconds; true for each allowed one.
    fn run(times: &[i64]) -> (Vec<bool>, State) {
        let p = policy();
        let mut state = fresh(0);
        let mut allowed = Vec::new();
        for t in times {
            match step(&p, 3, state, t * S) {
                Step::Allow(next) => {
                    state = next;
                    allowed.push(true);
                }
                Step::Refuse { new, .. } => {
                    if let Some(new) = new {
                        state = new;
                    }
                    allowed.push(false);
                }
            }
        }
        (allowed, state)
    }

    #[test]
    fn the_limit_then_a_lockout_that_hammering_does_not_extend() {
        let (allowed, state) = run(&[1, 2, 3, 4, 5, 6, 13]);
        // Three attempts, the fourth locks for 10 s (until 14), refusals in between
        // change nothing, and at 13 it is still locked.
        assert_eq!(allowed, [true, true, true, false, false, false, false]);
        assert_eq!(state.locked_until, 14 * S);
        assert_eq!(state.lockouts, 1);
    }

    #[test]
    fn lockouts_in_a_row_double_up_to_the_cap() {
        let p = policy();
        assert_eq!(p.lockout_after(0), Duration::from_secs(10));
        assert_eq!(p.lockout_after(1), Duration::from_secs(20));
        assert_eq!(p.lockout_after(2), Duration::from_secs(35));
        assert_eq!(p.lockout_after(60), Duration::from_secs(35));
        // Lock at 4 (until 14), fill again at once: 20 s (until 37), again: 35 s.
        let (allowed, state) = run(&[1, 2, 3, 4, 14, 15, 16, 17]);
        assert_eq!(allowed, [true, true, true, false, true, true, true, false]);
        assert_eq!((state.locked_until, state.lockouts), (37 * S, 2));
        let (_, state) = run(&[1, 2, 3, 4, 14, 15, 16, 17, 37, 38, 39, 40]);
        assert_eq!((state.locked_until, state.lockouts), (75 * S, 3));
    }

    #[test]
    fn a_quiet_window_forgets_everything() {
        // Two attempts, then nothing for a whole window: the count starts again.
        let (allowed, state) = run(&[1, 2, 150, 151, 152]);
        assert_eq!(allowed, [true, true, true, true, true]);
        assert_eq!((state.attempts, state.window_start), (3, 150 * S));
        // After a lockout, a quiet window also forgets the lockout count.
        let (_, state) = run(&[1, 2, 3, 4, 200]);
        assert_eq!((state.lockouts, state.attempts), (0, 1));
    }

    #[test]
    fn keys_hide_emails_and_group_ipv6_by_64() {
        let a = account_key("ada@example.com");
        assert!(a.starts_with("account:") && !a.contains("ada"));
        assert_eq!(a.len(), "account:".len() + 64);
        assert_eq!(
            address_key("203.0.113.7".parse().expect("ip")),
            "address:203.0.113.7"
        );
        assert_eq!(
            address_key("2001:db8:1:2:aaaa::1".parse().expect("ip")),
            address_key("2001:db8:1:2:bbbb::9".parse().expect("ip")),
        );
        assert_eq!(
            address_key("2001:db8:1:2::1".parse().expect("ip")),
            "address:2001:db8:1:2::/64"
        );
        assert_eq!(
            address_key("::ffff:10.0.0.1".parse().expect("ip")),
            "address:10.0.0.1"
        );
    }
}
