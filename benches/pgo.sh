#!/usr/bin/env bash
# Profile-guided release build of certguard (the build that benches/load.sh measures and the
# Dockerfile ships).
#
#   bash benches/pgo.sh [OUTPUT]
#
# 1. builds an instrumented release binary (-Cprofile-generate) in $TARGET/pgo-generate;
# 2. trains it on the demo: `certguard dev-certs` writes a fresh PKI, config/certguard.yaml is
#    copied with that PKI and free ports, and curl sends it HTTP/1.1 keep-alive, HTTP/2,
#    new-connection, POST, pinned-certificate and 403 traffic, first with the default runtime
#    and the access log on, then with `runtime.single_thread` and the access log off; the
#    status codes are counted, so a training run that fails or is refused stops the build;
# 3. merges the profiles with the toolchain's own llvm-profdata (rustup component llvm-tools,
#    installed here when missing) and builds the release binary with -Cprofile-use in
#    $TARGET/pgo-use; OUTPUT, when given, receives a copy.
#
# The training workload is the demo's, not the benchmark's: other routes, other certificates,
# no knowledge of benches/load.sh. `bash benches/pgo.sh generate` does step 1 only (and
# installs llvm-tools): the Dockerfile's dependency-cache layer. Needs curl (with HTTP/2) and make (jemalloc); takes two
# release builds, about 8 minutes on 2 cores. TARGET is $CARGO_TARGET_DIR or ./target.
set -euo pipefail
# OUTPUT is relative to where the script was started, before moving to the repository.
case "${1:-}" in "" | generate | /*) ;; *) set -- "$PWD/$1" ;; esac
cd "$(dirname "$0")/.."
REPO=$PWD
TARGET=${CARGO_TARGET_DIR:-$REPO/target}
case "$TARGET" in /*) ;; *) TARGET=$REPO/$TARGET ;; esac
RAW=$TARGET/pgo-profile/raw
PROFDATA=$TARGET/pgo-profile/merged.profdata
BASE_RUSTFLAGS=${RUSTFLAGS:-}
unset CARGO_TARGET_DIR RUSTFLAGS

log() { printf 'pgo: %s\n' "$*" >&2; }
die() { printf 'pgo: %s\n' "$*" >&2; exit 1; }

build_generate() {
  log "instrumented build in $TARGET/pgo-generate"
  RUSTFLAGS="$BASE_RUSTFLAGS -Cprofile-generate=$RAW" CARGO_TARGET_DIR=$TARGET/pgo-generate \
    cargo build --release --locked --bin certguard
}

# llvm-profdata must be the one of rustc's own LLVM (the profile format follows it).
sysroot=$(rustc --print sysroot)
host=$(rustc -vV | sed -n 's/^host: //p')
LLVM_PROFDATA=$sysroot/lib/rustlib/$host/bin/llvm-profdata
if [ ! -x "$LLVM_PROFDATA" ]; then
  log "installing the llvm-tools component (llvm-profdata)"
  rustup component add llvm-tools >&2 || die "cannot install llvm-tools: rustup component add llvm-tools"
fi
[ -x "$LLVM_PROFDATA" ] || die "no llvm-profdata at $LLVM_PROFDATA"

if [ "${1:-}" = generate ]; then
  build_generate
  exit 0
fi
OUTPUT=${1:-}
command -v curl >/dev/null || die "curl is needed for the training run"
curl --version | grep -qw HTTP2 || die "this curl has no HTTP/2"

build_generate
BIN=$TARGET/pgo-generate/release/certguard
rm -rf "$RAW" "$PROFDATA"
WORK=$(mktemp -d)
PID=
cleanup() {
  if [ -n "$PID" ]; then kill "$PID" 2>/dev/null || true; fi
  rm -rf "$WORK"
}
trap cleanup EXIT

# Three free loopback ports: the listener, the admin endpoint and the demo's echo upstream.
free_port() {
  local p
  for p in $(shuf -i 20000-60000 -n 50); do
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
      echo "$p"
      return
    fi
  done
  die "no free port"
}
LISTEN=$(free_port) ADMIN=$(free_port) UPSTREAM=$(free_port)
[ "$LISTEN" != "$ADMIN" ] && [ "$ADMIN" != "$UPSTREAM" ] && [ "$LISTEN" != "$UPSTREAM" ] ||
  die "port clash, run again"

LLVM_PROFILE_FILE="$WORK/dev-certs.profraw" "$BIN" dev-certs --out "$WORK/pki" >/dev/null
PKI=$WORK/pki
sed -e "s#\.\./certs-dev/#$PKI/#g" \
    -e "s#127\.0\.0\.1:8443#127.0.0.1:$LISTEN#" \
    -e "s#127\.0\.0\.1:9901#127.0.0.1:$ADMIN#" \
    -e "s#127\.0\.0\.1:9000#127.0.0.1:$UPSTREAM#" \
    config/certguard.yaml >"$WORK/default.yaml"
grep -q "127.0.0.1:$LISTEN" "$WORK/default.yaml" && grep -q "127.0.0.1:$UPSTREAM" "$WORK/default.yaml" ||
  die "config/certguard.yaml no longer has the demo addresses this script rewrites"
sed -e 's#^logging:#logging:\n  access_log: false#' "$WORK/default.yaml" >"$WORK/lean.yaml"
printf 'runtime:\n  single_thread: true\n' >>"$WORK/lean.yaml"
grep -q "access_log: false" "$WORK/lean.yaml" || die "cannot turn the access log off in the copy"
head -c 20000 /dev/urandom | base64 -w 0 >"$WORK/body"

URL=https://localhost:$LISTEN
as() { echo --cacert "$PKI/ca.crt" --cert "$PKI/$1.crt" --key "$PKI/$1.key"; }
# expect N CODE CURL-ARGS...: at least N responses with status CODE.
expect() {
  local want=$1 code=$2 got
  shift 2
  got=$(curl -sS -w '\nCODE=%{http_code}\n' "$@" 2>>"$WORK/curl.err" | grep -c "^CODE=$code\$" || true)
  [ "$got" -ge "$want" ] || die "training: $got of $want responses were $code (curl $*; $(tail -3 "$WORK/curl.err"))"
}

train() {
  local config=$1
  log "training with $(basename "$config")"
  LLVM_PROFILE_FILE="$RAW/certguard-%p-%m.profraw" "$BIN" demo -c "$config" >"$WORK/demo.log" 2>&1 &
  PID=$!
  for _ in $(seq 100); do
    curl -fsS -o /dev/null "http://127.0.0.1:$ADMIN/readyz" 2>/dev/null && break
    sleep 0.1
  done
  curl -fsS -o /dev/null "http://127.0.0.1:$ADMIN/readyz" || die "the instrumented proxy did not start: $(tail -5 "$WORK/demo.log")"
  # shellcheck disable=SC2046
  {
    expect 3000 200 $(as alice) "$URL/api/hello?n=[1-3000]"
    expect 3000 200 $(as alice) --http2 --parallel --parallel-max 16 "$URL/api/items/[1-3000]"
    expect 300 200 $(as alice) -X POST -H 'Content-Type: application/octet-stream' \
      --data-binary "@$WORK/body" "$URL/api/upload?n=[1-300]"
    expect 300 200 $(as alice) --http2 --parallel -X PUT --data-binary "@$WORK/body" "$URL/api/upload/[1-300]"
    expect 300 200 $(as alice) -H 'Connection: close' "$URL/api/new-connection?n=[1-300]"
    for n in $(seq 50); do expect 1 200 $(as alice) --http2 "$URL/api/h2-new-connection/$n"; done
    expect 1000 403 $(as bob) "$URL/api/denied?n=[1-1000]"
    expect 1000 403 $(as bob) --http2 --parallel "$URL/api/denied/[1-1000]"
    expect 500 200 $(as bob) "$URL/status?n=[1-500]"
    expect 500 200 $(as ci-runner) "$URL/deploy/[1-500]"
    expect 10 200 "http://127.0.0.1:$ADMIN/metrics?n=[1-10]"
  }
  kill -TERM "$PID"
  wait "$PID" || die "the instrumented proxy exited with $?"
  PID=
}
train "$WORK/default.yaml"
train "$WORK/lean.yaml"

ls "$RAW"/*.profraw >/dev/null 2>&1 || die "the training run wrote no profile"
"$LLVM_PROFDATA" merge -o "$PROFDATA" "$RAW"
log "optimized build in $TARGET/pgo-use"
RUSTFLAGS="$BASE_RUSTFLAGS -Cprofile-use=$PROFDATA" CARGO_TARGET_DIR=$TARGET/pgo-use \
  cargo build --release --locked --bin certguard
if [ -n "$OUTPUT" ]; then
  cp "$TARGET/pgo-use/release/certguard" "$OUTPUT"
fi
echo "$TARGET/pgo-use/release/certguard"
