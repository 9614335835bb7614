//! The history use cases behind the request/reply endpoints: list, mark read, since.

use contracts::api::{Notification, NotificationPage, NotificationsSince};
use jiff::Timestamp;
use runtime::db::Database;
use uuid::Uuid;

use crate::domain::{self, Cursor, ListQuery, RequestError};
use crate::store::{self, StoreError};

/// Why a use case failed: a refused request (answered with its code) or the
/// infrastructure (500).
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error(transparent)]
    Request(#[from] RequestError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<sqlx::Error> for ServiceError {
    fn from(e: sqlx::Error) -> Self {
        ServiceError::Store(StoreError::Db(e))
    }
}

pub type Result<T, E = ServiceError> = std::result::Result<T, E>;

/// A user's notification history over one database.
#[derive(Clone, Debug)]
pub struct Notifications {
    db: Database,
}

impl Notifications {
    pub fn new(db: Database) -> Self {
        Notifications { db }
    }

    /// One page, newest first, with the user's unread count over all pages.
    pub async fn list(&self, user: Uuid, q: &ListQuery) -> Result<NotificationPage> {
        let mut conn = self.db.pool.acquire().await?;
        let mut rows = store::list(&mut conn, user, q).await?;
        let more = rows.len() > q.limit as usize;
        rows.truncate(q.limit as usize);
        let next_cursor = match rows.last() {
            Some(last) if more => Some(Cursor { id: last.id }.encode()),
            _ => None,
        };
        let unread = store::unread_count(&mut conn, user).await?;
        Ok(NotificationPage {
            items: rows.iter().map(|r| r.to_api()).collect(),
            next_cursor,
            unread,
        })
    }

    /// Marks one of the user's notifications read; repeating it changes nothing.
    pub async fn mark_read(&self, user: Uuid, id: Uuid) -> Result<Notification> {
        let mut conn = self.db.writer().acquire().await?;
        let now = runtime::db::from_micros(runtime::db::to_micros(Timestamp::now()));
        let row = store::mark_read(&mut conn, user, id, now)
            .await?
            .ok_or(RequestError::NotFound)?;
        Ok(row.to_api())
    }

    /// What a stream missed, oldest first (see [`NotificationsSince`] for which).
    pub async fn since(&self, user: Uuid, q: &NotificationsSince) -> Result<Vec<Notification>> {
        let mut conn = self.db.pool.acquire().await?;
        let limit = domain::since_limit(q.limit);
        let rows = if q.newest {
            store::newest(&mut conn, user).await?.into_iter().collect()
        } else if let Some(after_seq) = q.after_seq {
            store::since_seq(&mut conn, user, after_seq, limit).await?
        } else {
            store::since(&mut conn, user, q.after, limit).await?
        };
        Ok(rows.iter().map(|r| r.to_api()).collect())
    }
}
