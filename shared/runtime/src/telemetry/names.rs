//! The name of every metric the mesh exports, in one place: the code records them by
//! these constants, [`describe`] gives each its `# HELP` line, and the README's
//! "Observing the mesh" lists them.
//!
//! Prometheus conventions: `mesh_` prefix, units in the name (`_seconds`), `_total` on
//! counters, low-cardinality labels only (route templates, endpoint subjects, durable
//! names, error codes; never a user id or a raw path).

/// Every service: `{service, version}`, always 1.
pub const BUILD_INFO: &str = "mesh_build_info";

/// Gateway: HTTP requests by `route` (template, or `unmatched`), `method`, `status`.
pub const GATEWAY_REQUESTS: &str = "mesh_gateway_requests_total";
/// Gateway: time to the response headers by `route`, `method` (histogram).
pub const GATEWAY_REQUEST_DURATION: &str = "mesh_gateway_request_duration_seconds";
/// Gateway: requests being answered now.
pub const GATEWAY_IN_FLIGHT: &str = "mesh_gateway_requests_in_flight";
/// Gateway: open notification streams (SSE).
pub const GATEWAY_SSE_STREAMS: &str = "mesh_gateway_sse_streams_open";
/// Gateway: answers 401, 403, 429 and 503 by `status` and `reason`.
pub const GATEWAY_REJECTIONS: &str = "mesh_gateway_rejections_total";

/// Request/reply endpoints: requests by `endpoint` (subject).
pub const RPC_REQUESTS: &str = "mesh_rpc_requests_total";
/// Request/reply endpoints: error replies by `endpoint` and `code`.
pub const RPC_ERRORS: &str = "mesh_rpc_errors_total";
/// Request/reply endpoints: handling time by `endpoint` (histogram).
pub const RPC_DURATION: &str = "mesh_rpc_request_duration_seconds";

/// Consumers: settled messages by `durable` and `outcome` (`handled`, `retried`).
pub const CONSUMER_MESSAGES: &str = "mesh_consumer_messages_total";
/// Consumers: handler time by `durable` (histogram).
pub const CONSUMER_HANDLE_DURATION: &str = "mesh_consumer_handle_duration_seconds";
/// Consumers: deliveries that were not the first of their message, by `durable`.
pub const CONSUMER_REDELIVERIES: &str = "mesh_consumer_redeliveries_total";
/// Consumers: messages parked in the hospital by `durable` and `kind`.
pub const DLQ_PARKED: &str = "mesh_dlq_parked_total";
/// Consumers: parks the `DLQ` stream refused (full), by `durable`.
pub const DLQ_PARK_REFUSED: &str = "mesh_dlq_park_refused_total";

/// Hospital (from the durables' state): messages not yet delivered, by `durable`, `stream`.
pub const CONSUMER_PENDING: &str = "mesh_consumer_pending";
/// Hospital: delivered, not yet acknowledged, by `durable`, `stream`.
pub const CONSUMER_ACK_PENDING: &str = "mesh_consumer_ack_pending";
/// Hospital: messages the server redelivered and that are still unacknowledged.
pub const CONSUMER_REDELIVERED: &str = "mesh_consumer_redelivered";
/// Hospital: 1 while a durable is paused.
pub const CONSUMER_PAUSED: &str = "mesh_consumer_paused";
/// Hospital: dead letters still parked, by `durable`, `stream`.
pub const DLQ_DEPTH: &str = "mesh_dlq_depth";
/// Hospital: messages in the `DLQ` stream.
pub const DLQ_STREAM_MESSAGES: &str = "mesh_dlq_stream_messages";
/// Hospital: bytes in the `DLQ` stream.
pub const DLQ_STREAM_BYTES: &str = "mesh_dlq_stream_bytes";

/// Outbox (auth, calendar): rows not yet published.
pub const OUTBOX_BACKLOG: &str = "mesh_outbox_backlog";
/// Outbox: age of the oldest unpublished row (0 when none).
pub const OUTBOX_OLDEST_AGE: &str = "mesh_outbox_oldest_age_seconds";
/// Outbox: rows the relay published (acknowledged by the stream).
pub const OUTBOX_PUBLISHED: &str = "mesh_outbox_published_total";
/// Outbox: relay rounds that failed (NATS or database trouble; retried).
pub const OUTBOX_RELAY_FAILURES: &str = "mesh_outbox_relay_failures_total";

/// Databases: pool connections by `state` (`idle`, `in_use`).
pub const DB_POOL_CONNECTIONS: &str = "mesh_db_pool_connections";
/// Databases: the pool's limit.
pub const DB_POOL_MAX: &str = "mesh_db_pool_max_connections";
/// Databases: statement time by `operation` (the use case: endpoint, durable, relay) and
/// `statement` (`select`, `insert`, `update`, `delete`, `begin`, `commit`, …).
pub const DB_QUERY_DURATION: &str = "mesh_db_query_duration_seconds";

/// Email: time to hand one mail over, by `transport` (`smtp`, `file`) (histogram).
pub const EMAIL_SEND_DURATION: &str = "mesh_email_send_duration_seconds";
/// Email: mails handed over, by `transport`.
pub const EMAIL_SENT: &str = "mesh_email_sent_total";
/// Email: failed hand-overs by `transport` and `kind` (`permanent`, `transient`,
/// `timeout`, `connection`, `tls`, `file`).
pub const EMAIL_SEND_FAILURES: &str = "mesh_email_send_failures_total";

/// Push: notifications delivered by `channel` (`history`: stored; `live`: published to
/// the gateways) and `outcome` (`ok`, `failed`).
pub const PUSH_DELIVERIES: &str = "mesh_push_deliveries_total";

/// Gives every metric its `# HELP` text (once per process; the recorder keeps them).
pub fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_gauge!(BUILD_INFO, "Service name and version (always 1)");

    describe_counter!(
        GATEWAY_REQUESTS,
        "HTTP requests by route template, method and status"
    );
    describe_histogram!(
        GATEWAY_REQUEST_DURATION,
        Unit::Seconds,
        "Time to the response headers by route template and method"
    );
    describe_gauge!(GATEWAY_IN_FLIGHT, "HTTP requests being answered");
    describe_gauge!(GATEWAY_SSE_STREAMS, "Open notification streams (SSE)");
    describe_counter!(
        GATEWAY_REJECTIONS,
        "Requests answered 401, 403, 429 or 503, by status and reason"
    );

    describe_counter!(RPC_REQUESTS, "Requests handled by endpoint subject");
    describe_counter!(
        RPC_ERRORS,
        "Error replies by endpoint subject and error code"
    );
    describe_histogram!(
        RPC_DURATION,
        Unit::Seconds,
        "Request handling time by endpoint subject"
    );

    describe_counter!(
        CONSUMER_MESSAGES,
        "Messages settled by durable and outcome (handled, retried)"
    );
    describe_histogram!(
        CONSUMER_HANDLE_DURATION,
        Unit::Seconds,
        "Handler time per delivery by durable"
    );
    describe_counter!(
        CONSUMER_REDELIVERIES,
        "Deliveries that were not a message's first, by durable"
    );
    describe_counter!(
        DLQ_PARKED,
        "Messages parked in the hospital by durable and kind"
    );
    describe_counter!(
        DLQ_PARK_REFUSED,
        "Parks the DLQ stream refused (it is full), by durable"
    );
    describe_gauge!(
        CONSUMER_PENDING,
        "Messages not yet delivered (lag), by durable"
    );
    describe_gauge!(
        CONSUMER_ACK_PENDING,
        "Messages delivered, not acknowledged, by durable"
    );
    describe_gauge!(
        CONSUMER_REDELIVERED,
        "Redelivered messages not yet acknowledged, by durable"
    );
    describe_gauge!(CONSUMER_PAUSED, "1 while the durable is paused");
    describe_gauge!(DLQ_DEPTH, "Dead letters still parked, by durable");
    describe_gauge!(DLQ_STREAM_MESSAGES, "Messages in the DLQ stream");
    describe_gauge!(DLQ_STREAM_BYTES, Unit::Bytes, "Bytes in the DLQ stream");

    describe_gauge!(OUTBOX_BACKLOG, "Outbox rows not yet published");
    describe_gauge!(
        OUTBOX_OLDEST_AGE,
        Unit::Seconds,
        "Age of the oldest unpublished outbox row (0 when none)"
    );
    describe_counter!(OUTBOX_PUBLISHED, "Outbox rows published and acknowledged");
    describe_counter!(OUTBOX_RELAY_FAILURES, "Outbox relay rounds that failed");

    describe_gauge!(DB_POOL_CONNECTIONS, "Database pool connections by state");
    describe_gauge!(DB_POOL_MAX, "Database pool size limit");
    describe_histogram!(
        DB_QUERY_DURATION,
        Unit::Seconds,
        "Database statement time by operation (use case) and statement kind"
    );

    describe_histogram!(
        EMAIL_SEND_DURATION,
        Unit::Seconds,
        "Time to hand one mail over, by transport"
    );
    describe_counter!(EMAIL_SENT, "Mails handed over, by transport");
    describe_counter!(
        EMAIL_SEND_FAILURES,
        "Mails not handed over, by transport and failure kind"
    );

    describe_counter!(
        PUSH_DELIVERIES,
        "Notifications delivered by channel (history, live) and outcome"
    );
}

/// Histogram buckets for every `_seconds` histogram: 1 ms to 30 s.
pub const SECONDS_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
