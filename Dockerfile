# certguard container image: multi-stage release build, small non-root runtime.
# The development PKI (certs-dev/) is deliberately NOT copied into the image: mount real
# certificates (e.g. a Kubernetes Secret) and a config at /etc/certguard/certguard.yaml.

FROM rust:1-slim-bookworm AS build
WORKDIR /src
RUN apt-get update && apt-get install -y --no-install-recommends cmake clang && rm -rf /var/lib/apt/lists/*
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY benches ./benches
RUN cargo build --release --locked --bin certguard

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/certguard /usr/local/bin/certguard
# `certguard health` finds the admin listener through the config's admin.address.
ENV CERTGUARD_CONFIG=/etc/certguard/certguard.yaml
USER nonroot:nonroot
EXPOSE 8443 9901
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["/usr/local/bin/certguard", "health"]
ENTRYPOINT ["/usr/local/bin/certguard"]
CMD ["run"]
