# syntax=docker/dockerfile:1
# The push service (notification history and live notifications).
# Package `push`, binary `mesh-push`, HTTP on :8084.
#
# The build context is the repository root (compose sets `context: ..`), by hand:
#   docker build -f compose/docker/push.Dockerfile -t mesh-push .
# push.Dockerfile.dockerignore beside this file keeps target/, .git and .mesh out of
# that context (BuildKit prefers a Dockerfile's own ignore file to the root's).

FROM rust:1-bookworm AS builder
WORKDIR /src
COPY . .
# Registry and target dir are cache mounts with the same ids in every mesh image, so the
# workspace's dependencies compile once for all of them (locked: one build at a time
# writes the shared target dir). A cache mount is not part of the image, so the binary
# is copied out in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --locked --release -p push --bin mesh-push \
    && cp target/release/mesh-push /usr/local/bin/mesh-push

FROM debian:bookworm-slim
# ca-certificates: verified TLS to SMTP, PostgreSQL or an OTLP collector. Nothing else:
# the health probe is plain bash (see healthz.sh).
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --gid 10001 mesh \
    && useradd --uid 10001 --gid 10001 --home-dir /var/lib/mesh --create-home \
        --shell /usr/sbin/nologin mesh
COPY --chmod=0755 compose/docker/healthz.sh /usr/local/bin/healthz
COPY --from=builder /usr/local/bin/mesh-push /usr/local/bin/mesh-push
# The service's relative defaults (e.g. sqlite://.mesh/data/…) land in its own home.
WORKDIR /var/lib/mesh
# Listen on every interface of the container, not on the loopback-only default.
ENV HTTP_ADDR=0.0.0.0:8084
EXPOSE 8084
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 CMD ["healthz", "/healthz"]
USER 10001:10001
ENTRYPOINT ["/usr/local/bin/mesh-push"]
