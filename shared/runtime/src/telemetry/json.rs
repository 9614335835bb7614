//! JSON log lines that carry the OpenTelemetry trace and span ids (`LOG_FORMAT=json`).
//!
//! The shape is tracing-subscriber's own JSON format (`timestamp`, `level`, `target`,
//! `fields`, `span` with the current span's name and fields) plus `trace_id` and
//! `span_id` on every line emitted inside a span, so a log search by the trace id a
//! problem body or a dead letter names finds every line of that request in every service.

use std::fmt;

use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_opentelemetry::OtelData;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

/// The event formatter; pair it with `JsonFields`, so span fields are stored as JSON.
pub struct JsonWithTrace;

impl<S, N> FormatEvent<S, N> for JsonWithTrace
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        let mut line = Map::new();
        line.insert(
            "timestamp".into(),
            Value::String(jiff::Timestamp::now().to_string()),
        );
        line.insert("level".into(), Value::String(meta.level().to_string()));
        let mut fields = FieldsToJson(Map::new());
        event.record(&mut fields);
        line.insert("fields".into(), Value::Object(fields.0));
        line.insert("target".into(), Value::String(meta.target().to_owned()));
        // The event's span: its explicit parent, else the current one.
        if let Some(span) = ctx.parent_span() {
            let mut current = Map::new();
            if let Some(formatted) = span.extensions().get::<FormattedFields<N>>()
                && let Ok(Value::Object(map)) = serde_json::from_str::<Value>(formatted)
            {
                current = map;
            }
            current.insert("name".into(), Value::String(span.name().to_owned()));
            line.insert("span".into(), Value::Object(current));
            // The nearest span that has an OpenTelemetry context (every span the tracer
            // sees once it has been entered).
            let ids = span.scope().find_map(|s| {
                let ext = s.extensions();
                let data = ext.get::<OtelData>()?;
                let trace_id = data.trace_id()?;
                let span_id = data.span_id()?;
                (trace_id != opentelemetry::TraceId::INVALID)
                    .then(|| (trace_id.to_string(), span_id.to_string()))
            });
            if let Some((trace_id, span_id)) = ids {
                line.insert("trace_id".into(), Value::String(trace_id));
                line.insert("span_id".into(), Value::String(span_id));
            }
        }
        let text = serde_json::to_string(&Value::Object(line)).map_err(|_| fmt::Error)?;
        writeln!(writer, "{text}")
    }
}

/// Collects an event's fields as JSON values.
struct FieldsToJson(Map<String, Value>);

impl Visit for FieldsToJson {
    fn record_f64(&mut self, field: &Field, value: f64) {
        let v = serde_json::Number::from_f64(value)
            .map(Value::Number)
            .unwrap_or_else(|| Value::String(value.to_string()));
        self.0.insert(field.name().to_owned(), v);
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().to_owned(), Value::from(value));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().to_owned(), Value::from(value));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().to_owned(), Value::Bool(value));
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.0
            .insert(field.name().to_owned(), Value::String(value.to_owned()));
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.0
            .insert(field.name().to_owned(), Value::String(value.to_string()));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0
            .insert(field.name().to_owned(), Value::String(format!("{value:?}")));
    }
}
