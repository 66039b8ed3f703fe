# certguard container image: multi-stage release build, small non-root runtime.
# The development PKI (certs-dev/) is deliberately NOT copied into the image: mount real
# certificates (e.g. a Kubernetes Secret) and a config at /etc/certguard/certguard.yaml.
#
# Base images are pinned by version and can be overridden, e.g. to pin by digest:
#   docker build --build-arg RUNTIME_IMAGE=gcr.io/distroless/cc-debian12@sha256:... .
# The builder must be Debian bookworm based (or older) so that the binary's glibc needs are met
# by the bookworm-based runtime. tests/container/build-and-run.sh builds this file unchanged.
ARG RUST_IMAGE=docker.io/library/rust:1.95.0-slim-bookworm
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot

FROM ${RUST_IMAGE} AS build
WORKDIR /src
# make: the jemalloc allocator (tikv-jemalloc-sys) is built from its C sources with it.
RUN apt-get update \
    && apt-get install -y --no-install-recommends make \
    && rm -rf /var/lib/apt/lists/*
# Dependency-cache layer: compile every dependency against stub sources, so that an edit under
# src/ rebuilds only certguard itself. Cargo refuses a manifest whose targets have no source, so
# every [[bench]] that Cargo.toml declares gets a stub too.
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src benches \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs \
    && awk '/^\[\[bench\]\]/ { b = 1; next } /^\[/ { b = 0 } b && $1 == "name" { gsub(/"/, "", $3); print $3 }' Cargo.toml \
       | while read -r bench; do echo 'fn main() {}' > "benches/$bench.rs"; done \
    && cargo build --release --locked --bin certguard \
    && rm -rf src benches
COPY src ./src
COPY benches ./benches
# COPY keeps the files' modification times, which may be older than the stubs': touch the crate
# roots so cargo does not mistake the stub build for an up-to-date one.
RUN touch src/main.rs src/lib.rs \
    && cargo build --release --locked --bin certguard \
    && ./target/release/certguard --version

FROM ${RUNTIME_IMAGE}
ARG RUNTIME_IMAGE
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="certguard" \
      org.opencontainers.image.description="mTLS-terminating reverse proxy with identity-based policy enforcement" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="${RUNTIME_IMAGE}"
COPY --from=build /src/target/release/certguard /usr/local/bin/certguard
# `certguard health` finds the admin listener through the config's admin.address.
ENV CERTGUARD_CONFIG=/etc/certguard/certguard.yaml
# Numeric, so that Kubernetes can verify runAsNonRoot without a user database lookup.
USER 65532:65532
EXPOSE 8443 9901
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["/usr/local/bin/certguard", "health"]
ENTRYPOINT ["/usr/local/bin/certguard"]
CMD ["run"]
