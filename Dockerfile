# waterline: build with the Rust toolchain, run on a slim Debian.
FROM rust:1-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends \
        build-essential pkg-config zlib1g-dev libssl-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY dataflows ./dataflows
COPY benches ./benches
COPY tests ./tests
RUN cargo build --release --locked --bin waterline

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates zlib1g \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --home /app waterline
WORKDIR /app
COPY --from=build /src/target/release/waterline /usr/local/bin/waterline
COPY dataflows ./dataflows
COPY config ./config
USER waterline
ENTRYPOINT ["waterline"]
CMD ["run", "--dataflow", "dataflows/trades.toml", "--config", "config/docker.toml"]
