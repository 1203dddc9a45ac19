# Both warren binaries in a small image, run as a non-root user.
FROM rust:1.88-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p producer -p worker

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /nonexistent warren
COPY --from=build /src/target/release/producer /src/target/release/worker /usr/local/bin/
USER warren
CMD ["worker"]
