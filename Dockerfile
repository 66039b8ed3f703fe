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
# curl: the profile-guided build (benches/pgo.sh) trains an instrumented binary on the demo
# with curl (and merges the profile with llvm-profdata, which it installs with rustup).
RUN apt-get update \
    && apt-get install -y --no-install-recommends make curl \
    && rm -rf /var/lib/apt/lists/*
# Dependency-cache layer: install llvm-tools and compile every dependency (instrumented, as
# benches/pgo.sh's first build does) against stub sources, so that an edit under src/ rebuilds only certguard itself there.
# Cargo refuses a manifest whose targets have no source, so every [[bench]] that Cargo.toml
# declares gets a stub too. The second, profile-guided build depends on the training profile
# and so on the sources: it cannot be cached.
COPY Cargo.toml Cargo.lock ./
COPY benches/pgo.sh ./benches/
RUN mkdir -p src benches \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs \
    && awk '/^\[\[bench\]\]/ { b = 1; next } /^\[/ { b = 0 } b && $1 == "name" { gsub(/"/, "", $3); print $3 }' Cargo.toml \
       | while read -r bench; do echo 'fn main() {}' > "benches/$bench.rs"; done \
    && bash benches/pgo.sh generate \
    && rm -rf src benches
COPY src ./src
COPY benches ./benches
COPY config/certguard.yaml ./config/
# COPY keeps the files' modification times, which may be older than the stubs': touch the crate
# roots so cargo does not mistake the stub build for an up-to-date one. The training run uses a
# PKI it generates (`certguard dev-certs`); certs-dev/ never enters the build.
RUN touch src/main.rs src/lib.rs \
    && bash benches/pgo.sh /src/certguard \
    && ./certguard --version

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
COPY --from=build /src/certguard /usr/local/bin/certguard
# `certguard health` finds the admin listener through the config's admin.address.
ENV CERTGUARD_CONFIG=/etc/certguard/certguard.yaml
# Numeric, so that Kubernetes can verify runAsNonRoot without a user database lookup.
USER 65532:65532
EXPOSE 8443 9901
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["/usr/local/bin/certguard", "health"]
ENTRYPOINT ["/usr/local/bin/certguard"]
CMD ["run"]
