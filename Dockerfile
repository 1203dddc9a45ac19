# Both warren binaries in a small image, run as a non-root user.
FROM rust:1.88-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p producer -p worker

FROM debian:bookworm-slim
# /downloads belongs to the user: a named volume mounted there starts with
# that owner, so workers and the producer can write downloads into it.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /nonexistent warren \
    && mkdir /downloads \
    && chown 10001:10001 /downloads
COPY --from=build /src/target/release/producer /src/target/release/worker /usr/local/bin/
# Numeric, so that orchestrators (Kubernetes runAsNonRoot) can verify it.
USER 10001
CMD ["worker"]
