# syntax=docker/dockerfile:1
# Tributary: the `tributary` binary on a small Debian image with srt-live-transmit for SRT sessions.
#
#   docker build -t tributary .
#   docker run --rm -p 9600:9600 -e TRIBUTARY_ADMIN=0.0.0.0:9600 tributary /etc/tributary/pipelines/quickstart.yaml
#
# The build stage compiles the same workspace and lock file as CI. It needs no system packages:
# librdkafka, OpenSSL and zlib are built from source with the toolchain's cc, make and perl.

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src src
COPY plugins plugins
# Declared in Cargo.toml ([[bench]] targets, integration tests): the manifest needs them present.
COPY benches benches
COPY tests tests
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin tributary \
 && cp target/release/tributary /usr/local/bin/tributary

FROM debian:bookworm-slim
# srt-tools: srt-live-transmit for `srt_stats` sessions; curl: the health check.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl srt-tools \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --create-home --home-dir /var/lib/tributary tributary \
 && install -d -o tributary -g tributary /var/lib/tributary/state /var/lib/tributary/data
# ^ The compose file mounts named volumes on state/ and data/: a volume takes the owner of the
#   image's directory, so without these the non-root user could not write tokens or Parquet files.
COPY --from=build /usr/local/bin/tributary /usr/local/bin/tributary
COPY pipelines /etc/tributary/pipelines
USER tributary
WORKDIR /var/lib/tributary
# Every shipped pipeline reads its admin address (/health, /metrics) from TRIBUTARY_ADMIN.
ENV TRIBUTARY_ADMIN=0.0.0.0:9600
EXPOSE 9600
HEALTHCHECK --interval=15s --timeout=3s --start-period=30s --retries=3 \
  CMD curl -fsS http://127.0.0.1:9600/health || exit 1
ENTRYPOINT ["tributary", "run"]
CMD ["/etc/tributary/pipelines/quickstart.yaml"]
