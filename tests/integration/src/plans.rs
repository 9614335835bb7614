//! Query plans of the statements a service really runs: a service's tests drive its hot
//! paths with [`StatementLog`] installed, then [`unindexed`] asks SQLite for the plan of
//! every distinct statement seen (`EXPLAIN QUERY PLAN`) and returns those that read a
//! whole table or sort their rows in a temporary b-tree; [`require_indexed`] is the
//! whole check a test makes.
//!
//! The statements come from sqlx's own log (`sqlx::query` events at DEBUG carry the SQL
//! text; `runtime::telemetry::queries` times the same events), so a query added later
//! is checked without anyone listing it. Parameters stay
//! unbound (NULL): SQLite plans from the SQL text and the indexes, not from values.
//! PostgreSQL is left out: version 15 cannot plan a statement with unbound parameters
//! (`EXPLAIN (GENERIC_PLAN)` came in 16), and with NULLs it plans a constant-false
//! filter instead.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result, ensure};
use sqlx::Row;
use tracing::field::{Field, Visit};
use tracing_subscriber::layer::{Context as LayerContext, SubscriberExt};

/// The SQL texts sqlx ran in this process since [`StatementLog::install`].
#[derive(Clone, Default)]
pub struct StatementLog {
    seen: Arc<Mutex<BTreeSet<String>>>,
}

impl StatementLog {
    /// Installs the log as this test binary's global subscriber: keep the test that
    /// uses it in a binary of its own. Fails when a subscriber is already installed.
    pub fn install() -> Result<Self> {
        let log = StatementLog::default();
        let subscriber = tracing_subscriber::registry().with(log.clone());
        tracing::subscriber::set_global_default(subscriber)
            .context("a global tracing subscriber is already installed")?;
        Ok(log)
    }

    /// Forgets what was seen so far (e.g. the migrations at start-up).
    pub fn clear(&self) {
        self.seen.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }

    /// The distinct statements seen, whitespace collapsed.
    pub fn statements(&self) -> Vec<String> {
        self.seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .cloned()
            .collect()
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for StatementLog {
    fn on_event(&self, event: &tracing::Event<'_>, _ctx: LayerContext<'_, S>) {
        if event.metadata().target() != runtime::telemetry::queries::SQLX_QUERY {
            return;
        }
        let mut fields = QueryFields::default();
        event.record(&mut fields);
        // A short statement is its own summary and comes without `db.statement`.
        let sql = if fields.statement.trim().is_empty() {
            fields.summary
        } else {
            fields.statement
        };
        let sql = sql.split_whitespace().collect::<Vec<_>>().join(" ");
        if !sql.is_empty() {
            self.seen
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(sql);
        }
    }
}

#[derive(Default)]
struct QueryFields {
    summary: String,
    statement: String,
}

impl Visit for QueryFields {
    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "summary" => self.summary = value.to_owned(),
            "db.statement" => self.statement = value.to_owned(),
            _ => {}
        }
    }

    /// sqlx records both fields as strings ([`Visit::record_str`]); should that change,
    /// the tests' `must_log` check fails rather than passing on an empty log.
    fn record_debug(&mut self, _field: &Field, _value: &dyn std::fmt::Debug) {}
}

/// One statement whose plan reads a whole table or sorts in a temporary b-tree.
#[derive(Debug, Clone)]
pub struct Unindexed {
    pub sql: String,
    /// The plan's steps, as SQLite words them.
    pub plan: Vec<String>,
}

impl std::fmt::Display for Unindexed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}\n    {}", self.sql, self.plan.join("\n    "))
    }
}

/// Checks what `log` caught: a statement containing each of `must_log` was run (so the
/// test really drove those paths), and no statement reads a whole table or sorts in a
/// temporary b-tree, except those `accepted` (whose reason the caller states).
pub async fn require_indexed(
    pool: &sqlx::AnyPool,
    log: &StatementLog,
    must_log: &[&str],
    accepted: impl Fn(&str) -> bool,
) -> Result<()> {
    let statements = log.statements();
    for expected in must_log {
        ensure!(
            statements.iter().any(|s| s.contains(expected)),
            "no statement with {expected:?} was logged; the log caught: {statements:#?}"
        );
    }
    let bad: Vec<Unindexed> = unindexed(pool, &statements)
        .await?
        .into_iter()
        .filter(|u| !accepted(&u.sql))
        .collect();
    ensure!(
        bad.is_empty(),
        "{} of {} statements read a whole table or sort in a temporary b-tree:\n{}",
        bad.len(),
        statements.len(),
        bad.iter()
            .map(|u| u.to_string())
            .collect::<Vec<_>>()
            .join("\n")
    );
    Ok(())
}

/// The statements among `statements` that SQLite would run with a full table scan or
/// a temporary sort. Only data statements are planned (SELECT, INSERT, UPDATE, DELETE,
/// WITH); `PRAGMA`, `BEGIN` and the like are skipped.
pub async fn unindexed(pool: &sqlx::AnyPool, statements: &[String]) -> Result<Vec<Unindexed>> {
    let mut found = Vec::new();
    for sql in statements {
        let verb = sql
            .split_whitespace()
            .next()
            .unwrap_or("")
            .to_ascii_uppercase();
        if !matches!(
            verb.as_str(),
            "SELECT" | "INSERT" | "UPDATE" | "DELETE" | "WITH"
        ) {
            continue;
        }
        let plan = plan_of(pool, sql).await?;
        if plan.iter().any(|step| is_unindexed(step)) {
            found.push(Unindexed {
                sql: sql.clone(),
                plan,
            });
        }
    }
    Ok(found)
}

/// `EXPLAIN QUERY PLAN` of one statement (several `;`-separated ones are planned one
/// by one), one line per step.
async fn plan_of(pool: &sqlx::AnyPool, sql: &str) -> Result<Vec<String>> {
    let mut plan = Vec::new();
    for one in sql.split(';').map(str::trim).filter(|s| !s.is_empty()) {
        let explain = format!("EXPLAIN QUERY PLAN {one}");
        let rows = sqlx::query(sqlx::AssertSqlSafe(explain))
            .fetch_all(pool)
            .await
            .with_context(|| format!("planning {one}"))?;
        for row in rows {
            plan.push(row.try_get::<String, _>("detail")?);
        }
    }
    Ok(plan)
}

/// A step that reads every row of a table (`SCAN t`, without an index) or sorts in a
/// temporary b-tree. `SCAN t USING INDEX …` walks an index in order (a partial index,
/// or a LIMIT that stops early) and is accepted.
fn is_unindexed(step: &str) -> bool {
    if step.contains("USE TEMP B-TREE") {
        return true;
    }
    let Some(rest) = step.strip_prefix("SCAN ") else {
        return false;
    };
    // `SCAN CONSTANT ROW` and `SCAN 7-ROW VALUES CLAUSE` read the statement's own values.
    !(rest.starts_with("CONSTANT ROW")
        || rest.ends_with("VALUES CLAUSE")
        || rest.contains(" USING "))
}

#[cfg(test)]
mod tests {
    use super::is_unindexed;

    #[test]
    fn plan_steps_are_sorted_into_indexed_and_not() {
        assert!(is_unindexed("SCAN events"));
        assert!(is_unindexed("SCAN e"));
        assert!(is_unindexed("USE TEMP B-TREE FOR ORDER BY"));
        assert!(!is_unindexed("SCAN e USING INDEX events_starts_at"));
        assert!(!is_unindexed(
            "SCAN outbox USING COVERING INDEX outbox_unpublished"
        ));
        assert!(!is_unindexed(
            "SEARCH r USING PRIMARY KEY (event_id=? AND user_id=?)"
        ));
        assert!(!is_unindexed("SCAN CONSTANT ROW"));
        assert!(!is_unindexed("SCAN 63-ROW VALUES CLAUSE"));
        assert!(!is_unindexed("CORRELATED SCALAR SUBQUERY 1"));
    }
}
