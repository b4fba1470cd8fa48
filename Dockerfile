# syntax=docker/dockerfile:1
# deriver container image. Build: docker build -t deriver .   (docker-compose.yml does it for you)

# ---- build ------------------------------------------------------------------------------------
FROM rust:1-bookworm AS builder
RUN apt-get update \
 && apt-get install -y --no-install-recommends libpq-dev libssl-dev pkg-config \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# The cache mounts keep the crates.io registry and compiled dependencies between builds; the
# binary is copied out of the cached target/ so that it lands in the image layer.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked \
 && cp target/release/deriver /usr/local/bin/deriver

# ---- runtime ----------------------------------------------------------------------------------
FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends libpq5 libssl3 ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --user-group --home-dir /var/lib/deriver --shell /usr/sbin/nologin deriver \
 && mkdir -p /var/lib/deriver /etc/deriver \
 && chown deriver:deriver /var/lib/deriver
COPY --from=builder /usr/local/bin/deriver /usr/local/bin/deriver
COPY pipelines/ /etc/deriver/pipelines/
COPY migrations/ /etc/deriver/migrations/

# Configuration comes from the environment (DERIVER__<SECTION>__<KEY>); pass at least
# DERIVER__POSTGRES__URL (and DERIVER__REDIS__URL when a pipeline writes to Redis), or mount a
# file and add --config. To use your own pipelines, mount them over /etc/deriver/pipelines.
ENV DERIVER__PIPELINES__DIR=/etc/deriver/pipelines \
    DERIVER__INDEX__DIR=/var/lib/deriver/index \
    DERIVER__HTTP__LISTEN=0.0.0.0:7700

WORKDIR /var/lib/deriver
USER deriver
# Search index generations live here: keep it on a volume so restarts do not rebuild them.
VOLUME /var/lib/deriver
EXPOSE 7700
# No HEALTHCHECK: the slim image has no HTTP client. Probe GET http://<container>:7700/healthz
# from the orchestrator (it answers without the bearer token), or use `deriver status`.
ENTRYPOINT ["deriver"]
CMD ["run"]
