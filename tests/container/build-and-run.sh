#!/usr/bin/env bash
# Build the committed Dockerfile unchanged and run the image's binary as the image's user.
#
# For a fresh Debian (bookworm) machine with root, a Rust toolchain and no Docker engine and no
# registry to pull base images from. It:
#   1. installs debootstrap, buildah, podman, curl, python3 and jq with apt-get if missing;
#   2. makes local stand-ins for the two images the Dockerfile's FROM lines name (by exactly
#      those names, read from the Dockerfile's ARG defaults):
#        - the runtime (distroless cc-debian12): a debootstrap --variant=minbase bookworm root
#          file system without a shell, imported with `podman import`;
#        - the builder (rust:<version>-slim-bookworm): the same root file system plus gcc,
#          libc6-dev and ca-certificates, and this machine's Rust toolchain where the official
#          image has it (/usr/local/cargo/bin on the PATH);
#   3. builds the Dockerfile with `buildah build --isolation chroot --pull=never`, then again
#      after a source edit, checking that the dependency layer comes from the cache;
#   4. checks the image config (numeric USER 65532:65532, ports, HEALTHCHECK, OCI labels) and
#      runs the image's entrypoint as uid/gid 65532 in a chroot of the image (`buildah from` +
#      `buildah mount` + `chroot --userspec`, with /proc mounted and the config and PKI
#      bind-mounted read-only at /etc/certguard as a Secret would be): `--version`, `check`,
#      `run` with an upstream on the host and curl through it with and without a client
#      certificate, `health`, a scrape of /metrics, SIGTERM and a clean exit;
#   5. prints the image size and how long each step took.
#
# Environment: WORK (default /var/tmp/certguard-container) keeps the root file systems between
# runs, and the stand-in images are kept in the local image store (so their cached layers stay
# valid); FRESH=1 removes all of it and starts from nothing. Takes about 15 minutes on 2 cores the first time (see
# README, "Deploying").
set -euo pipefail
cd "$(dirname "$0")/../.."
REPO=$PWD

if [ "$(id -u)" != 0 ]; then
  echo "build-and-run.sh needs root (debootstrap, chroot, mount)" >&2
  exit 2
fi

START=$(date +%s)
STEP_START=$START
step() {
  local now
  now=$(date +%s)
  echo "--- [$((now - START))s total, previous step $((now - STEP_START))s] $*"
  STEP_START=$now
}
fail() {
  echo "FAIL: $*" >&2
  exit 1
}

WORK=${WORK:-/var/tmp/certguard-container}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
IMAGE=localhost/certguard:container-test
mkdir -p "$WORK"

# ---------------------------------------------------------------------------------------------
step "installing tools"
need=()
for tool in debootstrap:debootstrap buildah:buildah podman:podman curl:curl python3:python3 jq:jq; do
  command -v "${tool%%:*}" >/dev/null 2>&1 || need+=("${tool#*:}")
done
if [ "${#need[@]}" -gt 0 ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
buildah --version

# The names the Dockerfile builds from, and its version label.
arg_default() { sed -n "s/^ARG $1=//p" Dockerfile | head -n1; }
RUST_IMAGE=$(arg_default RUST_IMAGE)
RUNTIME_IMAGE=$(arg_default RUNTIME_IMAGE)
LABEL_VERSION=$(arg_default VERSION)
CRATE_VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)
[ -n "$RUST_IMAGE" ] && [ -n "$RUNTIME_IMAGE" ] || fail "no RUST_IMAGE/RUNTIME_IMAGE ARG in the Dockerfile"
[ "$LABEL_VERSION" = "$CRATE_VERSION" ] ||
  fail "Dockerfile ARG VERSION=$LABEL_VERSION differs from Cargo.toml's $CRATE_VERSION"
echo "builder image: $RUST_IMAGE"
echo "runtime image: $RUNTIME_IMAGE"
if [ "${FRESH:-0}" = 1 ]; then
  buildah rm --all >/dev/null 2>&1 || true
  buildah rmi -f "$IMAGE" "$RUST_IMAGE" "$RUNTIME_IMAGE" >/dev/null 2>&1 || true
  buildah rmi --prune >/dev/null 2>&1 || true
  rm -rf "$WORK"
  mkdir -p "$WORK"
fi

# Everything mounted or started below is undone on exit, whatever happens.
MOUNTS=()
PIDS=()
CONTAINERS=()
cleanup() {
  local i pid
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  # A process still running in the image's root would keep it mounted.
  for pid in "${PIDS[@]}"; do
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  done
  for ((i = ${#MOUNTS[@]} - 1; i >= 0; i--)); do umount "${MOUNTS[$i]}" 2>/dev/null || true; done
  for c in "${CONTAINERS[@]}"; do buildah rm "$c" >/dev/null 2>&1 || true; done
}
trap cleanup EXIT

# ---------------------------------------------------------------------------------------------
step "base root file system (debootstrap --variant=minbase bookworm)"
BASE=$WORK/rootfs-base
if [ ! -e "$BASE/.complete" ]; then
  rm -rf "$BASE"
  debootstrap --variant=minbase bookworm "$BASE" "$MIRROR" >"$WORK/debootstrap.log" 2>&1 ||
    { tail -n 30 "$WORK/debootstrap.log"; fail "debootstrap"; }
  rm -rf "$BASE"/var/cache/apt/archives/*.deb "$BASE"/var/lib/apt/lists/*
  touch "$BASE/.complete"
fi

# The stand-ins are kept between runs (a new import would invalidate every cached layer);
# FRESH=1 makes them again.
step "runtime stand-in: $RUNTIME_IMAGE"
if ! podman image exists "$RUNTIME_IMAGE"; then
  # Like distroless: no shell, so a RUN in the runtime stage would fail here as it would there.
  tar -C "$BASE" --exclude=./.complete --exclude=./usr/bin/sh --exclude=./usr/bin/bash \
    --exclude=./usr/bin/dash --exclude=./usr/bin/rbash -c . |
    podman import - "$RUNTIME_IMAGE" >/dev/null
fi

step "builder stand-in: $RUST_IMAGE"
BUILDER=$WORK/rootfs-builder
make_builder() {
  if [ ! -e "$BUILDER/.complete" ]; then
    rm -rf "$BUILDER"
    cp -a "$BASE" "$BUILDER"
    rm -f "$BUILDER/.complete"
    mount -t proc proc "$BUILDER/proc"
    MOUNTS+=("$BUILDER/proc")
    cp /etc/resolv.conf "$BUILDER/etc/resolv.conf"
    chroot "$BUILDER" apt-get update -qq
    # What the official rust:*-slim image installs besides the toolchain.
    DEBIAN_FRONTEND=noninteractive chroot "$BUILDER" apt-get install -y -qq --no-install-recommends \
      ca-certificates gcc libc6-dev >/dev/null
    chroot "$BUILDER" apt-get clean
    rm -rf "$BUILDER"/var/lib/apt/lists/*
    umount "$BUILDER/proc"
    unset 'MOUNTS[-1]'
    touch "$BUILDER/.complete"
  fi
  # This machine's toolchain, where the official image keeps it. Its version should be the one
  # the image name promises; a different one still builds (the crate's MSRV is much older), so it
  # is only reported.
  # With llvm-tools (llvm-profdata), which the official image's rustup would fetch for
  # benches/pgo.sh: the stand-in has no rustup.
  rustup component add llvm-tools >/dev/null 2>&1 ||
    echo "WARNING: rustup component add llvm-tools failed; the image's PGO build will fail"
  SYSROOT=$(rustc --print sysroot)
  want_version=$(echo "$RUST_IMAGE" | sed -n 's/.*rust:\([0-9][0-9.]*\)-.*/\1/p')
  have_version=$(rustc --version | awk '{print $2}')
  if [ "$want_version" != "$have_version" ]; then
    echo "WARNING: the stand-in for $RUST_IMAGE carries this machine's rustc $have_version"
  fi
  # Certificate authorities this machine added to its trust store (a TLS-intercepting egress
  # proxy, a company CA): without them cargo cannot reach crates.io from inside the build, as
  # in any such network. The official image would need the same.
  if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
    mkdir -p "$BUILDER/usr/local/share/ca-certificates"
    cp /usr/local/share/ca-certificates/*.crt "$BUILDER/usr/local/share/ca-certificates/"
    chroot "$BUILDER" update-ca-certificates >/dev/null 2>&1
  fi
  # Documentation (share/doc) is most of a toolchain's size and not needed to build.
  rm -rf "$BUILDER/usr/local/rust" "$BUILDER/usr/local/cargo"
  mkdir -p "$BUILDER/usr/local/rust" "$BUILDER/usr/local/cargo/bin"
  tar -C "$SYSROOT" --exclude=./share/doc -c . | tar -C "$BUILDER/usr/local/rust" -x
  for tool in cargo rustc rustdoc; do
    ln -s "/usr/local/rust/bin/$tool" "$BUILDER/usr/local/cargo/bin/$tool"
  done
  podman rmi -f "$RUST_IMAGE" >/dev/null 2>&1 || true
  tar -C "$BUILDER" --exclude=./.complete -c . |
    podman import \
      --change 'ENV PATH=/usr/local/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
      --change 'ENV CARGO_HOME=/usr/local/cargo' \
      --change 'ENV RUSTUP_HOME=/usr/local/rustup' \
      - "$RUST_IMAGE" >/dev/null
}
podman image exists "$RUST_IMAGE" || make_builder

# ---------------------------------------------------------------------------------------------
step "building the Dockerfile (buildah, chroot isolation, no pulls)"
buildah rmi -f "$IMAGE" >/dev/null 2>&1 || true
build() {
  # --format docker: the OCI image format has no HEALTHCHECK. --layers: cache each step.
  buildah build --isolation chroot --pull=never --format docker --layers \
    -t "$2" -f "$1/Dockerfile" "$1"
}
build "$REPO" "$IMAGE" >"$WORK/build-1.log" 2>&1 || { tail -n 40 "$WORK/build-1.log"; fail "buildah build"; }
grep -E 'STEP [0-9]+/[0-9]+: RUN|Finished|Using cache' "$WORK/build-1.log" | cut -c1-120 || true

step "rebuilding after a source edit (the dependency layer must come from the cache)"
EDITED=$WORK/context
rm -rf "$EDITED"
mkdir -p "$EDITED"
# The build context as buildah sees it (.dockerignore applied by buildah itself).
cp -a Dockerfile .dockerignore Cargo.toml Cargo.lock src benches config "$EDITED/"
# A different edit every run, so that no earlier run's layers match it.
echo "// edited by tests/container/build-and-run.sh at $(date +%s.%N)" >>"$EDITED/src/main.rs"
build "$EDITED" "$IMAGE-edited" >"$WORK/build-2.log" 2>&1 || { tail -n 40 "$WORK/build-2.log"; fail "second build"; }
rm -rf "$EDITED"
buildah rmi "$IMAGE-edited" >/dev/null
# The stub build of the (instrumented) dependencies is a RUN of the builder stage: it must be
# cached, and the instrumented build that follows compiles certguard only. The profile-guided
# build after the training compiles everything again: its input, the profile, changed.
grep -q -- '--> Using cache' "$WORK/build-2.log" || fail "no cached layer in the second build"
awk '/benches\/pgo.sh generate/ && !seen++ {getline; print; exit}' \
  "$WORK/build-2.log" | grep -q 'Using cache' || fail "the dependency layer was rebuilt"
compiled=$(awk '/pgo: instrumented build/ {f = 1} /pgo: training/ {f = 0} f && /^ *Compiling /' "$WORK/build-2.log" | wc -l)
[ "$compiled" = 1 ] || { grep '^ *Compiling ' "$WORK/build-2.log" | head; fail "$compiled crates compiled in the instrumented build after a source edit, expected 1"; }
grep -q 'pgo: optimized build' "$WORK/build-2.log" || fail "no profile-guided build in the second build"
echo "second build: dependency layer cached, 1 crate compiled before the training"

# ---------------------------------------------------------------------------------------------
step "image configuration"
config=$(buildah inspect --type image "$IMAGE" | jq '.Docker.config')
user=$(jq -r '.User' <<<"$config")
[ "$user" = "65532:65532" ] || fail "USER is '$user', expected 65532:65532"
jq -e '.ExposedPorts | has("8443/tcp") and has("9901/tcp")' <<<"$config" >/dev/null ||
  fail "EXPOSE 8443 9901 missing"
jq -e '.Healthcheck.Test == ["CMD", "/usr/local/bin/certguard", "health"]' <<<"$config" >/dev/null ||
  fail "HEALTHCHECK missing: $(jq -c .Healthcheck <<<"$config")"
for label in title description version revision licenses base.name; do
  jq -e --arg l "org.opencontainers.image.$label" '.Labels[$l] | length > 0' <<<"$config" >/dev/null ||
    fail "OCI label org.opencontainers.image.$label missing"
done
jq -e --arg v "$CRATE_VERSION" '.Labels["org.opencontainers.image.version"] == $v' <<<"$config" >/dev/null ||
  fail "version label differs from Cargo.toml"
mapfile -t ENTRYPOINT < <(jq -r '.Entrypoint[]' <<<"$config")
mapfile -t CMD < <(jq -r '.Cmd[]' <<<"$config")
mapfile -t ENVIRONMENT < <(jq -r '.Env[]' <<<"$config")
echo "user $user, entrypoint ${ENTRYPOINT[*]}, cmd ${CMD[*]}, env ${ENVIRONMENT[*]}"
[ "${CMD[*]}" = run ] || fail "CMD is '${CMD[*]}', expected run"

# ---------------------------------------------------------------------------------------------
step "running the image's binary as 65532:65532"
ctr=$(buildah from --pull=never "$IMAGE")
CONTAINERS+=("$ctr")
ROOT=$(buildah mount "$ctr") # unmounted by `buildah rm` in cleanup
mount -t proc proc "$ROOT/proc"
MOUNTS+=("$ROOT/proc")
# Run the image's entrypoint with its environment and user, in its root file system.
in_image() {
  env -i "${ENVIRONMENT[@]}" chroot --userspec="$user" "$ROOT" "${ENTRYPOINT[@]}" "$@"
}

version=$(in_image --version)
echo "$version"
[ "$version" = "certguard $CRATE_VERSION" ] || fail "--version printed '$version'"
[ "$(stat -c %u "$ROOT/usr/local/bin/certguard")" = 0 ] || fail "the binary should be owned by root"
if env -i chroot --userspec="$user" "$ROOT" /bin/sh -c true 2>/dev/null; then
  fail "the runtime image has a shell"
fi

# A development PKI made by the image's own binary, then laid out like a mounted Secret and
# ConfigMap under /etc/certguard, read-only, with the keys readable by group 65532 only.
rm -rf "$ROOT/tmp/pki"
in_image dev-certs --out /tmp/pki >/dev/null
CONF=$WORK/etc-certguard
rm -rf "$CONF"
mkdir -p "$CONF/tls"
mv "$ROOT"/tmp/pki/* "$CONF/tls/"
rm -rf "$ROOT/tmp/pki"
chown -R 0:65532 "$CONF"
chmod 0440 "$CONF"/tls/*.key
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
LISTEN=$(free_port)
ADMIN=$(free_port)
UPSTREAM=$(free_port)
cat >"$CONF/certguard.yaml" <<EOF
listen:
  address: "127.0.0.1:$LISTEN"
  cert: /etc/certguard/tls/server.crt
  key: /etc/certguard/tls/server.key
trust:
  internal:
    ca: /etc/certguard/tls/ca.crt
    crl: [/etc/certguard/tls/intermediate.crl, /etc/certguard/tls/ca.crl]
routes:
  - name: files
    path_prefix: /
    upstream: app
    allow:
      - trust: internal
        cn: alice
upstreams:
  app:
    url: http://127.0.0.1:$UPSTREAM
admin:
  address: "127.0.0.1:$ADMIN"
EOF
mkdir -p "$ROOT/etc/certguard"
mount --bind "$CONF" "$ROOT/etc/certguard"
MOUNTS+=("$ROOT/etc/certguard")
mount -o remount,bind,ro "$ROOT/etc/certguard"

in_image check >"$WORK/check.out" || { cat "$WORK/check.out"; fail "check"; }
grep -q internal "$WORK/check.out" || { cat "$WORK/check.out"; fail "check printed no trust source"; }
echo "check: ok"

# The upstream runs on the host, outside the image.
UPSTREAM_DIR=$WORK/upstream
rm -rf "$UPSTREAM_DIR"
mkdir -p "$UPSTREAM_DIR"
echo "hello from the host" >"$UPSTREAM_DIR/hello"
python3 -m http.server --bind 127.0.0.1 --directory "$UPSTREAM_DIR" "$UPSTREAM" >"$WORK/upstream.log" 2>&1 &
PIDS+=($!)

# Not through in_image: $! must be certguard itself (env and chroot exec it), not a subshell.
env -i "${ENVIRONMENT[@]}" chroot --userspec="$user" "$ROOT" "${ENTRYPOINT[@]}" "${CMD[@]}" \
  >"$WORK/run.log" 2>&1 &
RUN_PID=$!
PIDS+=("$RUN_PID")
# `health` exits 1 until the admin listener answers ready: poll it, with a deadline.
deadline=$(($(date +%s) + 30))
until in_image health >/dev/null 2>&1; do
  kill -0 "$RUN_PID" 2>/dev/null || { cat "$WORK/run.log"; fail "run exited"; }
  [ "$(date +%s)" -lt "$deadline" ] || { cat "$WORK/run.log"; fail "not ready within 30s"; }
  sleep 0.2
done
in_image health || fail "health"
echo "health: exit 0"
# The upstream may still be starting.
deadline=$(($(date +%s) + 30))
until curl -fs -o /dev/null "http://127.0.0.1:$UPSTREAM/hello"; do
  [ "$(date +%s)" -lt "$deadline" ] || fail "upstream not up"
  sleep 0.2
done

tls=(--cacert "$CONF/tls/ca.crt" --resolve "localhost:$LISTEN:127.0.0.1" -sS)
url="https://localhost:$LISTEN/hello"
body=$(curl "${tls[@]}" --cert "$CONF/tls/alice.crt" --key "$CONF/tls/alice.key" -w '\n%{http_code}' "$url")
[ "$(tail -n1 <<<"$body")" = 200 ] || fail "alice: $body"
[ "$(head -n1 <<<"$body")" = "hello from the host" ] || fail "alice got '$body'"
echo "curl with alice's certificate: 200 '$(head -n1 <<<"$body")'"
code=$(curl "${tls[@]}" --cert "$CONF/tls/bob.crt" --key "$CONF/tls/bob.key" -o /dev/null -w '%{http_code}' "$url")
[ "$code" = 403 ] || fail "bob: $code"
echo "curl with bob's certificate: 403"
rc=0
curl "${tls[@]}" -o /dev/null "$url" 2>"$WORK/nocert.err" || rc=$?
[ "$rc" != 0 ] || fail "a request without a client certificate succeeded"
# 35: handshake failure; 55/56: the server's alert and close arrive as a send or receive
# fails (TLS 1.3). Why it failed is checked in the metrics below (no_client_cert).
case $rc in
  35 | 55 | 56) ;;
  *) cat "$WORK/nocert.err"; fail "curl without a certificate exited $rc, expected a TLS failure" ;;
esac
echo "curl without a certificate: handshake refused (curl exit $rc)"

metrics=$(curl -fsS "http://127.0.0.1:$ADMIN/metrics")
check_metric() {
  grep -qx "$1" <<<"$metrics" || fail "no '$1' in /metrics"
}
check_metric "certguard_build_info{version=\"$CRATE_VERSION\"} 1"
check_metric 'certguard_tls_handshakes_total{outcome="no_client_cert",trust="none"} 1'
check_metric 'certguard_requests_total{code="200",decision="allowed",reason="ok",route="files"} 1'
grep -q '^process_resident_memory_bytes [1-9]' <<<"$metrics" || fail "no process metrics (is /proc readable?)"
echo "metrics: build_info, handshakes, requests and process_* present"

kill -TERM "$RUN_PID"
rc=0
wait "$RUN_PID" || rc=$?
[ "$rc" = 0 ] || { tail -n 20 "$WORK/run.log"; fail "run exited $rc after SIGTERM"; }
echo "run: exit 0 after SIGTERM"

# ---------------------------------------------------------------------------------------------
step "image size"
size=$(podman image inspect --format '{{.Size}}' "$IMAGE")
base=$(podman image inspect --format '{{.Size}}' "$RUNTIME_IMAGE")
binary=$(stat -c %s "$ROOT/usr/local/bin/certguard")
mb() { awk -v b="$1" 'BEGIN { printf "%.1f MB", b / 1000000 }'; }
echo "image: $(mb "$size") = runtime stand-in $(mb "$base") + certguard layer $(mb $((size - base)))" \
  "(binary $(mb "$binary"))"
step "done: all container checks passed"
