#!/usr/bin/env bash
# Load benchmark for certguard: requests/s, latency percentiles and CPU per request through
# certguard (mTLS) against two baselines measured in the same run and printed as ratios: the
# same echo upstream reached directly (plain HTTP), and nginx doing the same mTLS termination
# and proxying (client certificate required, CRLs, keep-alive upstream pool, X-Forwarded-*, an
# access log when certguard has one); plus certguard's peak RSS (VmHWM).
#
# Everything runs on 127.0.0.1, every phase is bounded in time, and every process this script
# starts is stopped on exit. What it needs and does not find, it installs (oha with cargo, jq
# and curl with apt-get), as .ci/run does.
#
# Usage: benches/load.sh   (from any directory; about 30 s once built, plus a few minutes the
#        first time for `cargo install oha`, which needs rustc 1.88 or newer)
#
# Reading it: "ratio certguard / direct" below 1 for req/s and above 1 for latency and CPU
# mean certguard costs that much more than serving the request directly. "cpu ms/1k req" is
# the CPU time (user + system, all threads) of the process under load per 1000 requests: the
# echo upstream's in the direct phase, certguard's alone (not the upstream's) in the proxy
# phase. oha, certguard and the echo upstream share the machine's CPUs, so req/s is bounded by
# all three; CPU per request is the steadier figure. Memory: certguard's peak RSS against the
# echo process's, which is the same binary serving plain HTTP.
# Settings (environment):
#   DURATION=10        seconds per measured keep-alive phase
#   WARMUP=2           seconds of unmeasured load before each phase (0 = none)
#   CONNECTIONS=32     concurrent connections
#   HTTP2=0            1 = HTTP/2 (h2 via ALPN to certguard and nginx, h2c prior knowledge direct)
#   NGINX=1            0 = skip the nginx baseline (installed with apt-get when missing)
#   HANDSHAKES=2000    requests of the new-connection-per-request pair (0 = skip that pair)
#   ROUTES=50          routes in the generated policy; requests match the last one
#   ACCESS_LOG=true    certguard's per-request audit log, written to a file in the temp dir
#                      (about 0.5 KB per request; removed on exit unless KEEP_TMP=1)
#   WORKERS=auto       certguard runtime.worker_threads
#   RESULTS=           a directory to copy oha's JSON reports and the summary into
#   KEEP_TMP=0         1 = keep the temp dir (configs, PKI, logs) for inspection
#   CERTGUARD_BIN=     use this binary instead of building target/release/certguard
#   OHA=               use this oha binary instead of the one on PATH / installing it
set -euo pipefail

OHA_VERSION=1.16.0

DURATION=${DURATION:-10}
WARMUP=${WARMUP:-2}
CONNECTIONS=${CONNECTIONS:-32}
HTTP2=${HTTP2:-0}
NGINX=${NGINX:-1}
HANDSHAKES=${HANDSHAKES:-2000}
ROUTES=${ROUTES:-50}
ACCESS_LOG=${ACCESS_LOG:-true}
WORKERS=${WORKERS:-auto}
RESULTS=${RESULTS:-}
KEEP_TMP=${KEEP_TMP:-0}

PIDS=()
USED_PORTS=()
WARNINGS=()
TMP=

log() { printf '[load] %s\n' "$*" >&2; }
die() {
  printf '[load] error: %s\n' "$*" >&2
  exit 1
}

cleanup() {
  local pid deadline
  for pid in "${PIDS[@]}"; do
    kill -TERM "$pid" 2>/dev/null || true
  done
  deadline=$((SECONDS + 10))
  for pid in "${PIDS[@]}"; do
    while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do
      sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  PIDS=()
  if [[ -n "$TMP" && -d "$TMP" ]]; then
    if [[ "$KEEP_TMP" == 1 ]]; then
      log "kept $TMP"
    else
      rm -rf "$TMP"
    fi
  fi
}

check_settings() {
  local name
  for name in DURATION WARMUP CONNECTIONS HANDSHAKES ROUTES; do
    [[ "${!name}" =~ ^[0-9]+$ ]] || die "$name must be a whole number (got '${!name}')"
  done
  ((DURATION >= 1 && DURATION <= 300)) || die "DURATION must be 1..300 seconds"
  ((WARMUP <= 60)) || die "WARMUP must be at most 60 seconds"
  ((CONNECTIONS >= 1 && CONNECTIONS <= 1000)) || die "CONNECTIONS must be 1..1000"
  ((HANDSHAKES <= 100000)) || die "HANDSHAKES must be at most 100000"
  ((ROUTES >= 1 && ROUTES <= 1000)) || die "ROUTES must be 1..1000"
  [[ "$HTTP2" == 0 || "$HTTP2" == 1 ]] || die "HTTP2 must be 0 or 1"
  [[ "$NGINX" == 0 || "$NGINX" == 1 ]] || die "NGINX must be 0 or 1"
  [[ "$ACCESS_LOG" == true || "$ACCESS_LOG" == false ]] || die "ACCESS_LOG must be true or false"
  [[ "$WORKERS" == auto || "$WORKERS" =~ ^[1-9][0-9]*$ ]] || die "WORKERS must be auto or a number"
}

# --- tools -----------------------------------------------------------------------------------

oha_supports_client_certs() {
  [[ -x "$1" ]] && "$1" --help 2>/dev/null | grep -q -- '--cert'
}

# oha (crates.io) is the load generator: it speaks HTTP/1.1 and HTTP/2 over rustls, presents a
# client certificate (--cert/--key, which wrk, hey and h2load cannot), and reports JSON with
# latency percentiles. Installed once with cargo, pinned to a version.
ensure_tools() {
  local apt=() sudo=
  command -v jq >/dev/null 2>&1 || apt+=(jq)
  command -v curl >/dev/null 2>&1 || apt+=(curl)
  command -v pgrep >/dev/null 2>&1 || apt+=(procps)
  if [[ "$NGINX" == 1 ]] && ! command -v nginx >/dev/null 2>&1 && [[ ! -x /usr/sbin/nginx ]]; then
    apt+=(nginx)
  fi
  if ((${#apt[@]} > 0)); then
    log "installing ${apt[*]} with apt-get"
    [[ "$(id -u)" == 0 ]] || sudo=sudo
    $sudo apt-get update -qq
    $sudo apt-get install -y -qq --no-install-recommends "${apt[@]}" >/dev/null
  fi

  local cargo_bin="${CARGO_HOME:-$HOME/.cargo}/bin"
  if [[ -z "${OHA:-}" ]]; then
    OHA=$(command -v oha 2>/dev/null || echo "$cargo_bin/oha")
  fi
  if ! oha_supports_client_certs "$OHA"; then
    log "installing oha $OHA_VERSION with cargo install (a few minutes, once)"
    # Its own build directory, not this project's target dir.
    env -u CARGO_TARGET_DIR cargo install --locked --quiet oha --version "$OHA_VERSION"
    OHA="$cargo_bin/oha"
    oha_supports_client_certs "$OHA" || die "oha at $OHA does not support --cert/--key"
  fi
}

build_certguard() {
  if [[ -n "${CERTGUARD_BIN:-}" ]]; then
    BIN=$CERTGUARD_BIN
  else
    log "cargo build --release"
    cargo build --release --quiet
    BIN="${CARGO_TARGET_DIR:-target}/release/certguard"
  fi
  [[ -x "$BIN" ]] || die "no certguard binary at $BIN"
  BIN=$(cd "$(dirname "$BIN")" && pwd)/$(basename "$BIN")
}

# --- processes and ports ---------------------------------------------------------------------

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# pick_port VAR: a loopback port nobody listens on (and not already picked), below the
# ephemeral range so that no client socket of this benchmark can be holding it. There is a small
# race with other programs; then certguard fails to bind and says so.
pick_port() {
  local low=32768 p _
  if [[ -r /proc/sys/net/ipv4/ip_local_port_range ]]; then
    read -r low _ </proc/sys/net/ipv4/ip_local_port_range
  fi
  ((low > 12000)) || low=61000
  for _ in $(seq 1 200); do
    p=$((10000 + RANDOM % (low - 10000)))
    if [[ " ${USED_PORTS[*]} " != *" $p "* ]] && ! port_in_use "$p"; then
      USED_PORTS+=("$p")
      printf -v "$1" '%s' "$p"
      return 0
    fi
  done
  die "no free loopback port found"
}

# start_bg VAR LOGFILE CMD...: start CMD in the background, remember its pid for cleanup.
start_bg() {
  local var=$1 logfile=$2
  shift 2
  "$@" >"$logfile" 2>&1 &
  PIDS+=("$!")
  printf -v "$var" '%s' "$!"
}

# wait_ready PID LOGFILE WHAT CMD...: until CMD succeeds, at most 30 s, while PID lives.
wait_ready() {
  local pid=$1 logfile=$2 what=$3 deadline=$((SECONDS + 30))
  shift 3
  until "$@" >/dev/null 2>&1; do
    if ! kill -0 "$pid" 2>/dev/null; then
      tail -n 20 "$logfile" >&2 || true
      die "$what exited before it was ready (log above)"
    fi
    if ((SECONDS >= deadline)); then
      tail -n 20 "$logfile" >&2 || true
      die "$what not ready after 30 s (log above)"
    fi
    sleep 0.2
  done
}

# utime + stime of PID in clock ticks (/proc/PID/stat fields 14 and 15, counted after the
# parenthesised command name, which may contain spaces).
cpu_ticks() {
  local stat
  stat=$(<"/proc/$1/stat")
  stat=${stat##*) }
  # shellcheck disable=SC2086 # split the fields on purpose
  set -- $stat
  echo $((${12} + ${13}))
}

status_kib() { awk -v k="$2:" '$1 == k { print $2 }' "/proc/$1/status"; }

# cpu_ticks_tree PID: cpu_ticks of PID plus its children (nginx's master and its workers).
cpu_ticks_tree() {
  local total child
  total=$(cpu_ticks "$1")
  for child in $(pgrep -P "$1" || true); do
    total=$((total + $(cpu_ticks "$child" 2>/dev/null || echo 0)))
  done
  echo "$total"
}

# rss_tree_kib PID FIELD: FIELD (VmHWM, VmRSS) summed over PID and its children.
rss_tree_kib() {
  local total child
  total=$(status_kib "$1" "$2")
  for child in $(pgrep -P "$1" || true); do
    total=$((total + $(status_kib "$child" "$2" 2>/dev/null || echo 0)))
  done
  echo "$total"
}

# --- configuration ---------------------------------------------------------------------------

write_configs() {
  local pki=$TMP/pki i
  {
    echo "# Hosts the echo upstream (certguard demo binds it on every upstream address)."
    echo "listen:"
    echo "  address: \"127.0.0.1:$ECHO_SIDE_LISTEN\""
    echo "  cert: $pki/server.crt"
    echo "  key: $pki/server.key"
    echo "trust:"
    echo "  internal:"
    echo "    ca: $pki/ca.crt"
    echo "routes:"
    echo "  - name: all"
    echo "    upstream: echo"
    echo "    allow:"
    echo "      - authenticated: true"
    echo "upstreams:"
    echo "  echo:"
    echo "    url: http://127.0.0.1:$ECHO_PORT"
    echo "admin:"
    echo "  address: \"127.0.0.1:$ECHO_SIDE_ADMIN\""
    echo "reload:"
    echo "  watch: false"
    echo "logging:"
    echo "  level: warn"
    echo "  access_log: false"
  } >"$TMP/echo.yaml"

  {
    echo "# The proxy under test: $ROUTES routes, requests match the last one."
    echo "listen:"
    echo "  address: \"127.0.0.1:$PROXY_PORT\""
    echo "  cert: $pki/server.crt"
    echo "  key: $pki/server.key"
    echo "trust:"
    echo "  internal:"
    echo "    ca: $pki/ca.crt"
    echo "    crl: [$pki/intermediate.crl, $pki/ca.crl]"
    echo "routes:"
    for ((i = 1; i < ROUTES; i++)); do
      echo "  - name: svc$i"
      echo "    path_prefix: /svc$i"
      echo "    upstream: echo"
      echo "    allow:"
      echo "      - trust: internal"
      echo "        spiffe_id: \"spiffe://dev.local/ns/svc$i/*\""
    done
    echo "  - name: api"
    echo "    path_prefix: /"
    echo "    upstream: echo"
    echo "    allow:"
    echo "      - trust: internal"
    echo "        spiffe_id: \"spiffe://dev.local/ns/default/sa/alice\""
    echo "upstreams:"
    echo "  echo:"
    echo "    url: http://127.0.0.1:$ECHO_PORT"
    echo "admin:"
    echo "  address: \"127.0.0.1:$PROXY_ADMIN\""
    echo "reload:"
    echo "  watch: false"
    echo "logging:"
    echo "  format: json"
    echo "  level: info"
    echo "  access_log: $ACCESS_LOG"
    if [[ "$WORKERS" != auto ]]; then
      echo "runtime:"
      echo "  worker_threads: $WORKERS"
    fi
  } >"$TMP/certguard.yaml"
}

# nginx doing what certguard does, as far as nginx can: mTLS with the same PKI and CRLs (nginx
# wants them in one file), no session resumption, the same worker count, a keep-alive pool to
# the same echo upstream, X-Forwarded-* and an XFCC-like header, and an access log exactly when
# certguard writes one. It has no per-route identity policy: one location, one DN check, and
# its client fingerprint variable is SHA-1 where certguard's XFCC Hash is SHA-256.
write_nginx_config() {
  local pki=$TMP/pki listen_opts="ssl" access_log=off
  [[ "$HTTP2" != 1 ]] || listen_opts="ssl http2"
  # Buffered, as certguard's log writer batches lines too.
  [[ "$ACCESS_LOG" != true ]] || access_log="$TMP/nginx-access.log combined buffer=64k flush=1s"
  cat "$pki/intermediate.crl" "$pki/ca.crl" >"$TMP/nginx-crls.pem"
  cat >"$TMP/nginx.conf" <<NGINX
worker_processes $WORKERS;
pid $TMP/nginx.pid;
error_log $TMP/nginx-error.log warn;
daemon off;
events { worker_connections 4096; }
http {
  access_log $access_log;
  client_body_temp_path $TMP/nginx-body;
  proxy_temp_path $TMP/nginx-proxy;
  fastcgi_temp_path $TMP/nginx-fastcgi;
  uwsgi_temp_path $TMP/nginx-uwsgi;
  scgi_temp_path $TMP/nginx-scgi;
  upstream echo {
    server 127.0.0.1:$ECHO_PORT;
    keepalive 64;
  }
  map \$ssl_client_s_dn \$cg_denied {
    default 1;
    "~CN=alice" 0;
  }
  server {
    listen 127.0.0.1:$NGINX_PORT $listen_opts;
    ssl_certificate $pki/server.crt;
    ssl_certificate_key $pki/server.key;
    ssl_client_certificate $pki/ca.crt;
    ssl_verify_client on;
    ssl_verify_depth 3;
    ssl_crl $TMP/nginx-crls.pem;
    ssl_session_cache off;
    ssl_session_tickets off;
    keepalive_requests 1000000;
    location / {
      if (\$cg_denied) { return 403; }
      proxy_pass http://echo;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host \$host;
      proxy_set_header X-Forwarded-For \$remote_addr;
      proxy_set_header X-Forwarded-Proto https;
      proxy_set_header X-Forwarded-Client-Cert "Hash=\$ssl_client_fingerprint;Subject=\\"\$ssl_client_s_dn\\"";
    }
  }
}
NGINX
}

# --- measurement -----------------------------------------------------------------------------

run_oha() {
  # A hard stop well past any phase's planned length, so a hung phase cannot hang the script.
  timeout --kill-after=5 "$((DURATION * 3 + WARMUP + 60))" \
    "$OHA" --no-tui --output-format json "$@"
}

# measure NAME PID URL WARM RUN OHA-ARGS...: an unmeasured warm-up of length WARM, then a
# measured oha run of length RUN (each "-z 10s -w" or "-n 1000", split on purpose) whose JSON
# goes to $TMP/NAME.json; the CPU time PID spent during it goes to $TMP/NAME.cpu (clock ticks).
measure() {
  local name=$1 pid=$2 url=$3 warm=$4 run=$5 before after
  shift 5
  log "phase $name: oha $run $* $url"
  if [[ -n "$warm" ]]; then
    # shellcheck disable=SC2086
    run_oha $warm "$@" "$url" >/dev/null || die "oha failed in the warm-up of phase $name"
  fi
  before=$(cpu_ticks_tree "$pid")
  # shellcheck disable=SC2086
  run_oha $run "$@" "$url" >"$TMP/$name.json" || die "oha failed in phase $name"
  after=$(cpu_ticks_tree "$pid")
  echo $((after - before)) >"$TMP/$name.cpu"
  check_phase "$name"
}

# Every response must be a 200: a proxy answering 403 or 502 quickly would look fast. Transport
# errors (resets, failed handshakes) void the phase above 1% of requests and are reported below.
check_phase() {
  local f=$TMP/$1.json ok bad errors
  ok=$(jq '.statusCodeDistribution["200"] // 0' "$f")
  bad=$(jq '[.statusCodeDistribution | to_entries[] | select(.key != "200") | .value] | add // 0' "$f")
  errors=$(jq '[.errorDistribution | to_entries[] | .value] | add // 0' "$f")
  if [[ "$bad" != 0 ]] || ((errors * 100 > ok)); then
    jq -c '{statusCodeDistribution, errorDistribution}' "$f" >&2
    die "phase $1: $ok responses 200, $bad others, $errors errors; the figures would be meaningless"
  fi
  if [[ "$errors" != 0 ]]; then
    WARNINGS+=("phase $1: $errors transport errors next to $ok responses: $(jq -c .errorDistribution "$f")")
  fi
}

# phase_row NAME: "rps p50_ms p95_ms p99_ms requests cpu_ms_per_1k_requests"
phase_row() {
  local f=$TMP/$1.json ticks hz
  ticks=$(<"$TMP/$1.cpu")
  hz=$(getconf CLK_TCK)
  jq -r --argjson ticks "$ticks" --argjson hz "$hz" '
    ([.statusCodeDistribution[]] | add // 0) as $n
    | [ .summary.requestsPerSec,
        .latencyPercentiles.p50 * 1000,
        .latencyPercentiles.p95 * 1000,
        .latencyPercentiles.p99 * 1000,
        $n,
        (if $n > 0 then $ticks / $hz * 1000 / $n * 1000 else 0 end) ]
    | @tsv' "$f"
}

print_table() { # TITLE DIRECT_PHASE NGINX_PHASE(or -) PROXY_PHASE
  local title=$1 d n=- p
  d=$(phase_row "$2")
  [[ "$3" == - ]] || n=$(phase_row "$3")
  p=$(phase_row "$4")
  printf '\n%s\n' "$title"
  printf '%-28s %10s %9s %9s %9s %9s %13s\n' "" "req/s" "p50 ms" "p95 ms" "p99 ms" "requests" "cpu ms/1k req"
  awk -F'\t' -v d="$d" -v n="$n" -v p="$p" 'BEGIN {
    split(d, a, "\t"); split(p, b, "\t")
    row("direct (plain HTTP)", a)
    if (n != "-") { split(n, c, "\t"); row("nginx (mTLS)", c) }
    row("certguard (mTLS)", b)
    ratio("ratio certguard / direct", b, a)
    if (n != "-") ratio("ratio certguard / nginx", b, c)
  }
  function row(name, x) {
    printf "%-28s %10.0f %9.3f %9.3f %9.3f %9d %13.1f\n", name, x[1], x[2], x[3], x[4], x[5], x[6]
  }
  function ratio(name, x, y) {
    printf "%-28s %9.2fx %8.2fx %8.2fx %8.2fx %9s %12.2fx\n", name, q(x[1], y[1]), q(x[2], y[2]), q(x[3], y[3]), q(x[4], y[4]), "", q(x[6], y[6])
  }
  function q(x, y) { return y > 0 ? x / y : 0 }'
}

main() {
  check_settings
  # Paths given relative to where the script was started, before moving to the repository.
  [[ -z "$RESULTS" || "$RESULTS" == /* ]] || RESULTS=$PWD/$RESULTS
  [[ -z "${CERTGUARD_BIN:-}" || "$CERTGUARD_BIN" == /* ]] || CERTGUARD_BIN=$PWD/$CERTGUARD_BIN
  cd "$(dirname "$0")/.."
  ensure_tools
  build_certguard

  TMP=$(mktemp -d "${TMPDIR:-/tmp}/certguard-load.XXXXXX")
  trap cleanup EXIT
  trap 'exit 130' INT TERM

  pick_port PROXY_PORT
  pick_port PROXY_ADMIN
  pick_port ECHO_PORT
  pick_port ECHO_SIDE_LISTEN
  pick_port ECHO_SIDE_ADMIN
  pick_port NGINX_PORT

  "$BIN" dev-certs --out "$TMP/pki" >/dev/null
  local pki=$TMP/pki
  write_configs

  # The echo upstream runs in its own certguard demo process (whose own proxy listener stays
  # idle), so the process under test does only proxy work and its RSS is the proxy's alone.
  local echo_pid proxy_pid
  start_bg echo_pid "$TMP/echo.log" "$BIN" demo -c "$TMP/echo.yaml"
  wait_ready "$echo_pid" "$TMP/echo.log" "echo upstream" \
    curl -fsS -o /dev/null "http://127.0.0.1:$ECHO_PORT/"

  start_bg proxy_pid "$TMP/certguard.log" "$BIN" run -c "$TMP/certguard.yaml"
  wait_ready "$proxy_pid" "$TMP/certguard.log" "certguard" \
    "$BIN" health --admin "127.0.0.1:$PROXY_ADMIN"

  local nginx_pid='' nginx_url="https://127.0.0.1:$NGINX_PORT/bench/hello"
  if [[ "$NGINX" == 1 ]]; then
    local nginx_bin
    nginx_bin=$(command -v nginx || echo /usr/sbin/nginx)
    write_nginx_config
    start_bg nginx_pid "$TMP/nginx.log" "$nginx_bin" -p "$TMP" -c "$TMP/nginx.conf"
    wait_ready "$nginx_pid" "$TMP/nginx.log" "nginx" \
      curl -fsS -o /dev/null --cacert "$pki/ca.crt" --cert "$pki/alice.crt" --key "$pki/alice.key" "$nginx_url"
  fi

  local direct_url="http://127.0.0.1:$ECHO_PORT/bench/hello"
  local proxy_url="https://127.0.0.1:$PROXY_PORT/bench/hello"
  local client=(--cacert "$pki/ca.crt" --cert "$pki/alice.crt" --key "$pki/alice.key")
  local code
  code=$(curl -sS -o /dev/null -w '%{http_code}' --cacert "$pki/ca.crt" \
    --cert "$pki/alice.crt" --key "$pki/alice.key" "$proxy_url") || true
  [[ "$code" == 200 ]] || die "a request through certguard got '$code', not 200 (see $TMP/certguard.log)"
  local idle_rss
  idle_rss=$(status_kib "$proxy_pid" VmRSS)

  # -w: at the deadline, let requests in flight finish instead of counting them as errors.
  local run="-z ${DURATION}s -w" warm='' common=(-c "$CONNECTIONS")
  ((WARMUP == 0)) || warm="-z ${WARMUP}s -w"
  local proto="HTTP/1.1 keep-alive"
  if [[ "$HTTP2" == 1 ]]; then
    common+=(--http2)
    proto="HTTP/2"
  fi
  measure direct "$echo_pid" "$direct_url" "$warm" "$run" "${common[@]}"
  if [[ -n "$nginx_pid" ]]; then
    measure nginx "$nginx_pid" "$nginx_url" "$warm" "$run" "${common[@]}" "${client[@]}"
  fi
  measure proxy "$proxy_pid" "$proxy_url" "$warm" "$run" "${common[@]}" "${client[@]}"
  if ((HANDSHAKES > 0)); then
    # HTTP/1.1 with one connection (and for certguard one full mTLS handshake) per request;
    # bounded by count, not time, so that fast plain-HTTP connects cannot exhaust ports. oha
    # offers TLS session resumption; certguard's default (session_resumption: false) declines
    # it, so every one of these is a full handshake with client-certificate verification.
    local hs=(-c "$CONNECTIONS" --disable-keepalive) hs_warm=''
    ((WARMUP == 0)) || hs_warm="-n $((HANDSHAKES / 5 + 1))"
    measure direct_newconn "$echo_pid" "$direct_url" "$hs_warm" "-n $HANDSHAKES" "${hs[@]}"
    if [[ -n "$nginx_pid" ]]; then
      measure nginx_newconn "$nginx_pid" "$nginx_url" "$hs_warm" "-n $HANDSHAKES" "${hs[@]}" "${client[@]}"
    fi
    measure proxy_newconn "$proxy_pid" "$proxy_url" "$hs_warm" "-n $HANDSHAKES" "${hs[@]}" "${client[@]}"
  fi

  local peak_rss echo_peak
  peak_rss=$(status_kib "$proxy_pid" VmHWM)
  echo_peak=$(status_kib "$echo_pid" VmHWM)

  {
    printf '\ncertguard load benchmark: %s, %s connections, %ss per phase (+%ss warm-up), %s routes, access log %s, %s CPUs, %s\n' \
      "$proto" "$CONNECTIONS" "$DURATION" "$WARMUP" "$ROUTES" "$ACCESS_LOG" "$(nproc)" "$("$OHA" --version)"
    local n=- nn=-
    [[ -z "$nginx_pid" ]] || { n=nginx; nn=nginx_newconn; }
    print_table "Keep-alive connections (the steady state):" direct "$n" proxy
    if ((HANDSHAKES > 0)); then
      print_table "A new connection per request ($HANDSHAKES requests; certguard and nginx: one mTLS handshake each):" \
        direct_newconn "$nn" proxy_newconn
    fi
    printf '\nMemory of the certguard process: %d KiB idle after start, %d KiB peak (VmHWM); ' \
      "$idle_rss" "$peak_rss"
    awk -v a="$peak_rss" -v b="$echo_peak" 'BEGIN {
      printf "the echo process (same binary, plain HTTP) peaked at %d KiB: ratio %.2fx\n", b, (b > 0 ? a / b : 0) }'
    if [[ -n "$nginx_pid" ]]; then
      awk -v a="$peak_rss" -v b="$(rss_tree_kib "$nginx_pid" VmHWM)" 'BEGIN {
        printf "nginx (master + workers) peaked at %d KiB: certguard / nginx %.2fx\n", b, (b > 0 ? a / b : 0) }'
    fi
    local w
    for w in "${WARNINGS[@]}"; do
      printf 'warning: %s\n' "$w"
    done
  } | tee "$TMP/summary.txt"

  if [[ -n "$RESULTS" ]]; then
    mkdir -p "$RESULTS"
    cp "$TMP"/*.json "$TMP/summary.txt" "$RESULTS"/
    log "results copied to $RESULTS"
  fi
}

# Sourcing the file (for testing its functions) does not run it.
if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
  main "$@"
fi
