# Both warren binaries in one small image, run as a non-root user. The
# compose file's worker and producer services both use it (warren:local).
FROM rust:1.88-bookworm AS build
WORKDIR /src
# Stripped, without debug info: the image carries only what runs.
ENV CARGO_PROFILE_RELEASE_STRIP=symbols \
    CARGO_PROFILE_RELEASE_DEBUG=false

# The dependencies first, in a layer of their own: only a change to a
# manifest or to Cargo.lock builds them again. Cargo needs every workspace
# member's manifest, and a target in each, to read the workspace; the
# members' sources are empty stand-ins at this point.
COPY Cargo.toml Cargo.lock ./
COPY warren/Cargo.toml warren/
COPY producer/Cargo.toml producer/
COPY worker/Cargo.toml worker/
COPY tests/Cargo.toml tests/
COPY testkit/Cargo.toml testkit/
COPY bench/Cargo.toml bench/
RUN for member in warren producer worker testkit bench; do \
        mkdir -p "$member/src" && : > "$member/src/lib.rs"; \
    done \
    && for member in producer worker bench; do \
        echo 'fn main() {}' > "$member/src/main.rs"; \
    done \
    && mkdir -p tests/e2e && : > tests/e2e/main.rs \
    && cargo build --release --locked -p producer -p worker

# Then the sources of the three crates the binaries are made of. Their
# files may be older than the stand-ins just built: touch them, or cargo
# would keep the stand-ins.
COPY warren/src warren/src
COPY producer/src producer/src
COPY worker/src worker/src
RUN find warren/src producer/src worker/src -name '*.rs' -exec touch {} + \
    && cargo build --release --locked -p producer -p worker

FROM debian:bookworm-slim
# User and group 10001, outside the ranges a host's own users get: the
# binaries run as warren and /downloads belongs to it, so a named volume
# mounted there starts with that owner and workers and the producer can
# write downloads into it.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --gid 10001 warren \
    && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin warren \
    && mkdir /downloads \
    && chown 10001:10001 /downloads
COPY --from=build /src/target/release/producer /src/target/release/worker /usr/local/bin/
# Numeric, so that orchestrators (Kubernetes runAsNonRoot) can verify it.
USER 10001:10001
CMD ["worker"]
