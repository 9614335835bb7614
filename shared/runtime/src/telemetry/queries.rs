//! Database statement latency per use case, taken from sqlx's own statement events.
//!
//! sqlx reports every statement it runs as a `sqlx::query` event with its elapsed time
//! (also on SQLite, whose worker thread enters the caller's span). This layer turns
//! those events into the `mesh_db_query_duration_seconds` histogram, labelled with the
//! use case the statement ran for — the request endpoint, the consumer's durable, the
//! outbox relay — found on the enclosing spans, and the statement's kind (`select`,
//! `insert`, `commit`, …). No service has to time its queries itself.

use std::fmt;

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id};
use tracing::{Event, Metadata, Subscriber};
use tracing_subscriber::layer::{Context, Layer};
use tracing_subscriber::registry::LookupSpan;

use super::names;

/// The target of sqlx's statement events.
pub const SQLX_QUERY: &str = "sqlx::query";

/// Name of the span the relay opens around one round (see [`crate::outbox`]).
pub const RELAY_SPAN: &str = "outbox.relay";

/// Name of a span a writer opens around work it does for many requests at once (e.g.
/// the calendar's RSVP batches); its `operation` field names the use case.
pub const BATCH_SPAN: &str = "db.batch";

/// The layer; install it with [`QueryInterest`] as its filter.
pub struct QueryMetrics;

/// The layer's filter. It depends on the callsite only, so its answer is cached per
/// callsite and a disabled `debug!` elsewhere costs nothing at run time.
pub struct QueryInterest;

impl<S> tracing_subscriber::layer::Filter<S> for QueryInterest {
    fn enabled(&self, meta: &Metadata<'_>, _: &Context<'_, S>) -> bool {
        interest(meta)
    }

    fn callsite_enabled(&self, meta: &'static Metadata<'static>) -> tracing::subscriber::Interest {
        if interest(meta) {
            tracing::subscriber::Interest::always()
        } else {
            tracing::subscriber::Interest::never()
        }
    }

    // The relay's round span is at TRACE (so it is never exported as a span at the
    // usual log levels); the per-callsite answer above keeps other TRACE sites free.
    fn max_level_hint(&self) -> Option<tracing::level_filters::LevelFilter> {
        Some(tracing::level_filters::LevelFilter::TRACE)
    }
}

/// The use case a span stands for, kept in its extensions.
struct Operation(String);

/// What the layer needs to see: sqlx's statement events, and the spans that name use
/// cases (request, consumer and relay spans live in this crate; INFO spans of the
/// services may enclose them).
pub fn interest(meta: &Metadata<'_>) -> bool {
    if meta.is_event() {
        meta.target() == SQLX_QUERY
    } else {
        *meta.level() <= tracing::Level::INFO || meta.target().starts_with("runtime")
    }
}

impl<S> Layer<S> for QueryMetrics
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let name = attrs.metadata().name();
        let operation = match name {
            "rpc.server" | "consume" | BATCH_SPAN => {
                let mut fields = SpanFields::default();
                attrs.record(&mut fields);
                match name {
                    "rpc.server" => fields.otel_name,
                    "consume" => fields.durable,
                    _ => fields.operation,
                }
            }
            RELAY_SPAN => Some(RELAY_SPAN.to_owned()),
            _ => None,
        };
        if let (Some(operation), Some(span)) = (operation, ctx.span(id)) {
            span.extensions_mut().insert(Operation(operation));
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        if event.metadata().target() != SQLX_QUERY {
            return;
        }
        let mut fields = QueryFields::default();
        event.record(&mut fields);
        let Some(elapsed) = fields.elapsed_secs else {
            return;
        };
        let operation = ctx
            .event_scope(event)
            .and_then(|scope| {
                scope
                    .into_iter()
                    .find_map(|span| span.extensions().get::<Operation>().map(|o| o.0.clone()))
            })
            .unwrap_or_else(|| "other".to_owned());
        metrics::histogram!(
            names::DB_QUERY_DURATION,
            "operation" => operation,
            "statement" => statement_kind(&fields.summary),
        )
        .record(elapsed);
    }
}

/// The first keyword of a statement, from a closed list (label values stay few).
pub fn statement_kind(summary: &str) -> &'static str {
    let first = summary
        .split_whitespace()
        .next()
        .unwrap_or("")
        .to_ascii_lowercase();
    match first.as_str() {
        "select" => "select",
        "insert" => "insert",
        "update" => "update",
        "delete" => "delete",
        "begin" => "begin",
        "commit" => "commit",
        "rollback" => "rollback",
        "with" => "with",
        "pragma" => "pragma",
        _ => "other",
    }
}

#[derive(Default)]
struct SpanFields {
    otel_name: Option<String>,
    durable: Option<String>,
    operation: Option<String>,
}

impl Visit for SpanFields {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.set(field, value.to_owned());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.set(field, format!("{value:?}"));
    }
}

impl SpanFields {
    fn set(&mut self, field: &Field, value: String) {
        match field.name() {
            "otel.name" => self.otel_name = Some(value),
            "durable" => self.durable = Some(value),
            "operation" => self.operation = Some(value),
            _ => {}
        }
    }
}

#[derive(Default)]
struct QueryFields {
    summary: String,
    elapsed_secs: Option<f64>,
}

impl Visit for QueryFields {
    fn record_f64(&mut self, field: &Field, value: f64) {
        if field.name() == "elapsed_secs" {
            self.elapsed_secs = Some(value);
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "summary" {
            self.summary = value.to_owned();
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if field.name() == "summary" {
            self.summary = format!("{value:?}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_are_sorted_into_a_few_kinds() {
        assert_eq!(statement_kind("SELECT seq, subject FROM …"), "select");
        assert_eq!(statement_kind("  insert INTO outbox"), "insert");
        assert_eq!(statement_kind("BEGIN IMMEDIATE"), "begin");
        assert_eq!(statement_kind("VACUUM"), "other");
        assert_eq!(statement_kind(""), "other");
    }
}
