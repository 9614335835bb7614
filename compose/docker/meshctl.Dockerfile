# syntax=docker/dockerfile:1
# meshctl, the ops CLI (a client of the gateway's /v1/admin/… API), for running it
# inside the compose network: `docker compose --profile tools run --rm meshctl …`.
# Package `meshctl`, binary `meshctl`; no port, no health check: it runs and exits.
#
# The build context is the repository root (compose sets `context: ..`), by hand:
#   docker build -f compose/docker/meshctl.Dockerfile -t meshctl .

FROM rust:1-bookworm AS builder
WORKDIR /src
COPY . .
# Same cache mounts as the service images: one dependency build serves them all.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --locked --release -p meshctl --bin meshctl \
    && cp target/release/meshctl /usr/local/bin/meshctl

FROM debian:bookworm-slim
# ca-certificates: a gateway reached over HTTPS.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --gid 10001 mesh \
    && useradd --uid 10001 --gid 10001 --home-dir /var/lib/mesh --create-home \
        --shell /usr/sbin/nologin mesh
COPY --from=builder /usr/local/bin/meshctl /usr/local/bin/meshctl
WORKDIR /var/lib/mesh
# Credentials from `meshctl login` go to the home folder (a volume in compose).
ENV MESH_URL=http://gateway:8080 \
    MESHCTL_CONFIG=/var/lib/mesh/credentials.json
USER 10001:10001
ENTRYPOINT ["/usr/local/bin/meshctl"]
