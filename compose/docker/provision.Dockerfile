# syntax=docker/dockerfile:1
# mesh-provision, the provisioning identity: a one-shot job that creates or updates every
# stream and key-value bucket, then exits (compose's `provision` service; the services
# wait for it to complete and run with PROVISION=off). No port: it runs and exits.
# Package `provision`, binary `mesh-provision`.
#
# The build context is the repository root (compose sets `context: ..`), by hand:
#   docker build -f compose/docker/provision.Dockerfile -t mesh-provision .

FROM rust:1-bookworm AS builder
WORKDIR /src
COPY . .
# Same cache mounts as the service images: one dependency build serves them all.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --locked --release -p provision --bin mesh-provision \
    && cp target/release/mesh-provision /usr/local/bin/mesh-provision

FROM debian:bookworm-slim
# ca-certificates: NATS over TLS or an OTLP collector.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --gid 10001 mesh \
    && useradd --uid 10001 --gid 10001 --home-dir /var/lib/mesh --create-home \
        --shell /usr/sbin/nologin mesh
COPY --from=builder /usr/local/bin/mesh-provision /usr/local/bin/mesh-provision
WORKDIR /var/lib/mesh
USER 10001:10001
ENTRYPOINT ["/usr/local/bin/mesh-provision"]
