# syntax=docker/dockerfile:1
# waterline's container image: built with the Rust toolchain, run on a slim Debian as a
# non-root user. The binary is /app/waterline; dataflows/ and config/ are beside it.
#
#   docker build -t waterline .
#   docker run --rm waterline --help
#   docker run --rm waterline run --dataflow dataflows/trades.toml --config config/prod.toml
#
# docker-compose.yml uses this image with a broker and the trade generator.

# --- build -------------------------------------------------------------------------------
FROM rust:1-bookworm AS build
# librdkafka is compiled from source by the rdkafka crate: C toolchain, make, pkg-config, zlib.
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential pkg-config zlib1g-dev libssl-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
# benches/ is listed in Cargo.toml, so Cargo wants it present even to build the binary;
# the demo embeds dataflows/trades.toml (include_str!).
COPY benches ./benches
COPY dataflows ./dataflows
COPY src ./src
# The caches keep downloaded crates and compiled dependencies between builds (BuildKit).
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin waterline \
    && cp target/release/waterline /usr/local/bin/waterline

# --- run ---------------------------------------------------------------------------------
FROM debian:bookworm-slim
# The binary links libc, libgcc_s, libm and zlib (all in the base image) and OpenSSL
# (libssl3, for TLS and SCRAM); CA certificates are for brokers reached over TLS.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates libssl3 \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --user-group --home-dir /app --shell /usr/sbin/nologin waterline
WORKDIR /app
COPY --from=build /usr/local/bin/waterline /app/waterline
COPY dataflows ./dataflows
COPY config ./config
ENV PATH=/app:$PATH
USER waterline
ENTRYPOINT ["waterline"]
CMD ["--help"]
