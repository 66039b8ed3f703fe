#!/usr/bin/env bash
# Side-by-side load benchmark: certguard against nginx and HAProxy doing the same work, each
# proxy pinned to ONE core, the load generator and a cheap upstream pinned to another, every
# figure reported as a ratio against nginx and HAProxy measured in the same run.
#
# The same work for the three proxies: mTLS with the dev PKI (ECDSA P-256, a root and an
# intermediate, client certificate required, both CRLs), an identity rule on the path (/bench/
# only for alice, /deny/ only for bob), a keep-alive pool to the upstream, an identity header
# (XFCC-like) and X-Forwarded-*, no session resumption, no access log (ACCESS_LOG=true gives
# certguard and nginx one). nginx 1.22 `worker_processes 1`; HAProxy 2.6 `nbthread 1`;
# certguard `runtime.worker_threads: 1` with `single_thread: true`; each started under `taskset -c $PROXY_CPU`, so all of
# its threads share that one core. The upstream is a second nginx (`return 200`), pinned with
# oha and the Python client to `$LOAD_CPU`.
#
# Scenarios (SCENARIOS, in this order in each repetition; proxies in a rotating order):
#   keepalive     HTTP/1.1 keep-alive, CONNECTIONS connections: requests per proxy-CPU-second
#                 and requests/s (the load generator's core is usually the limit)
#   keepalive_h2  the same over HTTP/2 (ALPN h2), H2_CONNECTIONS x H2_STREAMS streams
#   handshake     a new connection and a full mTLS handshake per request (HANDSHAKES of them):
#                 handshakes/s and handshakes per proxy-CPU-second. The proxies verify the
#                 client's chain and CRLs as always; oha does not verify theirs (--insecure,
#                 unless HANDSHAKE_CLIENT_VERIFY=true): verifying a chain costs the client about
#                 what the proxy's side costs, so with it the load generator's core, not the
#                 proxy, set certguard's rate (nginx's and HAProxy's rates do not change)
#   forbidden     keep-alive requests that the identity rule refuses: 403s/s, and per CPU-second
#   idle          a plain Python `ssl` client (no TCP_NODELAY, as Python sets none) opens
#                 OPEN_CONNS connections one after the other, one request each, and holds them
#                 open: the seconds it took, then the proxy's RSS growth per idle connection
#                 (each proxy is restarted first, so its heap is fresh)
#   p99           steady load at RATE req/s (oha -q, latency corrected): p99 latency
#   instructions  not in the default list: certguard alone under valgrind's callgrind, the
#                 user-space instructions per keep-alive request, HTTP/1.1 and HTTP/2
#                 (instructions over 2 x INSTR_REQUESTS requests minus those over
#                 INSTR_REQUESTS, so neither the warm-up, the handshakes nor the start count).
#                 Unlike CPU time it hardly moves between runs, so it shows a change of 1 % that
#                 the timed scenarios cannot; it does not count system calls or cache misses.
# Every response must have the expected status (200, or 403 in `forbidden`), else the run stops.
#
# Figures are medians over REPS interleaved repetitions; ratios are taken per repetition
# (certguard / nginx, certguard / HAProxy in that repetition) and their median is reported.
#
# Usage: benches/load.sh          full run (3 repetitions, about 15 minutes once built)
#        QUICK=1 benches/load.sh  one repetition of `keepalive`, short phases (about a minute);
#                                 QUICK=1 SCENARIOS=idle benches/load.sh for another scenario
# What it needs and does not find it installs: nginx, haproxy, jq, curl and python3 with
# apt-get, oha with cargo (a few minutes, once; rustc 1.88 or newer).
# Settings (environment):
#   QUICK=0           1 = REPS=1, DURATION=3, WARMUP=1, HANDSHAKES=1000, OPEN_CONNS=300 and
#                     SCENARIOS=keepalive, unless set explicitly
#   SCENARIOS="keepalive keepalive_h2 handshake forbidden idle p99"
#   PROXIES="nginx haproxy certguard"   (certguard is always measured)
#   REPS=3            interleaved repetitions
#   DURATION=10       seconds per measured timed phase
#   WARMUP=2          seconds of unmeasured load before each timed phase (0 = none)
#   CONNECTIONS=32    HTTP/1.1 connections (keepalive, forbidden, handshake concurrency, p99)
#   H2_CONNECTIONS=8 H2_STREAMS=4   HTTP/2 connections and parallel streams on each
#   HANDSHAKES=4000   connections (one request each) per handshake phase
#   HANDSHAKE_CLIENT_VERIFY=false   true = oha verifies the proxy's certificate in `handshake`
#   OPEN_CONNS=2000   connections the Python client opens and holds in `idle`
#   RATE=2000         requests/s of the p99 phase
#   INSTR_REQUESTS=2000   requests per measured step of `instructions`
#   ROUTES=50         routes in certguard's policy (requests match the last one)
#   ACCESS_LOG=false  certguard's audit log and nginx's access log, to files in the temp dir
#   WORKERS=1         certguard runtime.worker_threads, nginx worker_processes, HAProxy nbthread
#   SINGLE_THREAD=true   certguard runtime.single_thread (one-thread scheduler; WORKERS=1 only)
#   PROXY_CPU=0 LOAD_CPU=1   the cores (taskset); pinning is skipped on a 1-CPU machine
#   RESULTS=          a directory to copy results.tsv, oha's JSON reports and summary.txt into
#   KEEP_TMP=0        1 = keep the temp dir (configs, PKI, logs) for inspection
#   PGO=1             build certguard with benches/pgo.sh (profile-guided, trained on the demo,
#                     as the Dockerfile builds it); 0 = a plain `cargo build --release`
#   CERTGUARD_BIN=    use this binary instead of building one
#   OHA=              use this oha binary instead of the one on PATH / installing it
set -euo pipefail

OHA_VERSION=1.16.0
# Every proxy is told to prefer AES-128-GCM, as certguard does by default.
TLS13_SUITES=TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256

QUICK=${QUICK:-0}
if [[ "$QUICK" == 1 ]]; then
  REPS=${REPS:-1}
  DURATION=${DURATION:-3}
  WARMUP=${WARMUP:-1}
  HANDSHAKES=${HANDSHAKES:-1000}
  OPEN_CONNS=${OPEN_CONNS:-300}
  SCENARIOS=${SCENARIOS:-keepalive}
fi
SCENARIOS=${SCENARIOS:-keepalive keepalive_h2 handshake forbidden idle p99}
PROXIES=${PROXIES:-nginx haproxy certguard}
REPS=${REPS:-3}
DURATION=${DURATION:-10}
WARMUP=${WARMUP:-2}
CONNECTIONS=${CONNECTIONS:-32}
H2_CONNECTIONS=${H2_CONNECTIONS:-8}
H2_STREAMS=${H2_STREAMS:-4}
HANDSHAKES=${HANDSHAKES:-4000}
HANDSHAKE_CLIENT_VERIFY=${HANDSHAKE_CLIENT_VERIFY:-false}
OPEN_CONNS=${OPEN_CONNS:-2000}
RATE=${RATE:-2000}
INSTR_REQUESTS=${INSTR_REQUESTS:-2000}
ROUTES=${ROUTES:-50}
ACCESS_LOG=${ACCESS_LOG:-false}
PGO=${PGO:-1}
WORKERS=${WORKERS:-1}
SINGLE_THREAD=${SINGLE_THREAD:-true}
PROXY_CPU=${PROXY_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
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

# Also used by benches/soak.sh, which sources this file.
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
  local name s p
  for name in REPS DURATION WARMUP CONNECTIONS H2_CONNECTIONS H2_STREAMS HANDSHAKES OPEN_CONNS \
    RATE ROUTES WORKERS PROXY_CPU LOAD_CPU; do
    [[ "${!name}" =~ ^[0-9]+$ ]] || die "$name must be a whole number (got '${!name}')"
  done
  ((REPS >= 1 && REPS <= 20)) || die "REPS must be 1..20"
  ((DURATION >= 1 && DURATION <= 300)) || die "DURATION must be 1..300 seconds"
  ((WARMUP <= 60)) || die "WARMUP must be at most 60 seconds"
  ((CONNECTIONS >= 1 && CONNECTIONS <= 1000)) || die "CONNECTIONS must be 1..1000"
  ((H2_CONNECTIONS >= 1 && H2_CONNECTIONS <= 100)) || die "H2_CONNECTIONS must be 1..100"
  ((H2_STREAMS >= 1 && H2_STREAMS <= 100)) || die "H2_STREAMS must be 1..100"
  ((HANDSHAKES >= 10 && HANDSHAKES <= 100000)) || die "HANDSHAKES must be 10..100000"
  ((OPEN_CONNS >= 10 && OPEN_CONNS <= 10000)) || die "OPEN_CONNS must be 10..10000"
  ((RATE >= 10 && RATE <= 100000)) || die "RATE must be 10..100000"
  ((INSTR_REQUESTS >= 100 && INSTR_REQUESTS <= 100000)) || die "INSTR_REQUESTS must be 100..100000"
  ((ROUTES >= 2 && ROUTES <= 100000)) || die "ROUTES must be 2..100000"
  ((WORKERS >= 1 && WORKERS <= 64)) || die "WORKERS must be 1..64"
  [[ "$ACCESS_LOG" == true || "$ACCESS_LOG" == false ]] || die "ACCESS_LOG must be true or false"
  [[ "$PGO" == 0 || "$PGO" == 1 ]] || die "PGO must be 0 or 1"
  [[ "$HANDSHAKE_CLIENT_VERIFY" == true || "$HANDSHAKE_CLIENT_VERIFY" == false ]] ||
    die "HANDSHAKE_CLIENT_VERIFY must be true or false"
  for s in $SCENARIOS; do
    [[ " keepalive keepalive_h2 handshake forbidden idle p99 instructions " == *" $s "* ]] ||
      die "unknown scenario '$s' in SCENARIOS"
  done
  for p in $PROXIES; do
    [[ " nginx haproxy certguard " == *" $p "* ]] || die "unknown proxy '$p' in PROXIES"
  done
  [[ " $PROXIES " == *" certguard "* ]] || PROXIES="$PROXIES certguard"
}

# --- tools -----------------------------------------------------------------------------------

oha_supports_client_certs() {
  [[ -x "$1" ]] && "$1" --help 2>/dev/null | grep -q -- '--cert'
}

# Installs jq, curl, procps and whatever `EXTRA_APT` names (commands from Debian packages of
# the same name) with apt-get, and oha with cargo. oha (crates.io) is the load generator: it
# speaks HTTP/1.1 and HTTP/2 over rustls, presents a client certificate (--cert/--key, which
# wrk, hey and h2load cannot), and reports JSON with latency percentiles.
ensure_tools() {
  local apt=() sudo= tool
  command -v jq >/dev/null 2>&1 || apt+=(jq)
  command -v curl >/dev/null 2>&1 || apt+=(curl)
  command -v pgrep >/dev/null 2>&1 || apt+=(procps)
  for tool in ${EXTRA_APT:-}; do
    command -v "$tool" >/dev/null 2>&1 || [[ -x "/usr/sbin/$tool" ]] || apt+=("$tool")
  done
  if ((${#apt[@]} > 0)); then
    log "installing ${apt[*]} with apt-get"
    [[ "$(id -u)" == 0 ]] || sudo=sudo
    $sudo apt-get update -qq
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${apt[@]}" >/dev/null
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
    BUILD_KIND="given ($CERTGUARD_BIN)"
  elif [[ "$PGO" == 1 ]]; then
    log "profile-guided build: benches/pgo.sh (two release builds and a training run)"
    BIN=$(bash benches/pgo.sh | tail -1) || die "benches/pgo.sh failed"
    BUILD_KIND="profile-guided release build (benches/pgo.sh, trained on the demo)"
  else
    log "cargo build --release"
    cargo build --release --quiet
    BIN="${CARGO_TARGET_DIR:-target}/release/certguard"
    BUILD_KIND="plain release build (PGO=0)"
  fi
  [[ -x "$BIN" ]] || die "no certguard binary at $BIN"
  BIN=$(cd "$(dirname "$BIN")" && pwd)/$(basename "$BIN")
}

# --- processes and ports ---------------------------------------------------------------------

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# pick_port VAR: a loopback port nobody listens on (and not already picked), below the
# ephemeral range so that no client socket of this benchmark can be holding it. There is a small
# race with other programs; then a server fails to bind and says so.
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

# stop_bg PID: TERM, then KILL after 10 s; forget it.
stop_bg() {
  local pid=$1 deadline=$((SECONDS + 10)) keep=() p
  kill -TERM "$pid" 2>/dev/null || true
  while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do
    sleep 0.1
  done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  for p in "${PIDS[@]}"; do
    [[ "$p" == "$pid" ]] || keep+=("$p")
  done
  PIDS=("${keep[@]}")
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

# The taskset prefixes: PROXY_PIN for the proxies, LOAD_PIN for oha, the upstream and the
# Python client (empty arrays when pinning is off). Prefixes, not a wrapper function, so that
# the pid of a background process is the pinned program's own.
PROXY_PIN=()
LOAD_PIN=()

# --- configuration ---------------------------------------------------------------------------

# The upstream: nginx answering 200 with a short body, as cheap as an upstream gets.
write_upstream_config() {
  mkdir -p "$TMP/upstream"
  cat >"$TMP/upstream/nginx.conf" <<NGINX
worker_processes 1;
worker_rlimit_nofile 19000;
pid $TMP/upstream/nginx.pid;
error_log $TMP/upstream/error.log warn;
daemon off;
events { worker_connections 8192; }
http {
  access_log off;
  default_type text/plain;
  keepalive_requests 1000000;
  keepalive_timeout 300s;
  client_body_temp_path $TMP/upstream/body;
  proxy_temp_path $TMP/upstream/proxy;
  fastcgi_temp_path $TMP/upstream/fastcgi;
  uwsgi_temp_path $TMP/upstream/uwsgi;
  scgi_temp_path $TMP/upstream/scgi;
  server {
    listen 127.0.0.1:$UP_PORT;
    location / { return 200 "hello\n"; }
  }
}
NGINX
}

write_certguard_config() {
  local pki=$TMP/pki i
  {
    echo "# The proxy under test: $ROUTES routes, /bench/ requests match the last one."
    echo "listen:"
    echo "  address: \"127.0.0.1:$CERTGUARD_PORT\""
    echo "  cert: $pki/server.crt"
    echo "  key: $pki/server.key"
    echo "  idle_timeout: 300s"
    echo "trust:"
    echo "  internal:"
    echo "    ca: $pki/ca.crt"
    echo "    crl: [$pki/intermediate.crl, $pki/ca.crl]"
    echo "routes:"
    for ((i = 1; i <= ROUTES - 2; i++)); do
      echo "  - name: svc$i"
      echo "    path_prefix: /svc$i"
      echo "    upstream: up"
      echo "    allow:"
      echo "      - trust: internal"
      echo "        spiffe_id: \"spiffe://dev.local/ns/svc$i/*\""
    done
    echo "  - name: deny"
    echo "    path_prefix: /deny"
    echo "    upstream: up"
    echo "    allow:"
    echo "      - trust: internal"
    echo "        spiffe_id: \"spiffe://dev.local/ns/default/sa/bob\""
    echo "  - name: bench"
    echo "    path_prefix: /bench"
    echo "    upstream: up"
    echo "    allow:"
    echo "      - trust: internal"
    echo "        spiffe_id: \"spiffe://dev.local/ns/default/sa/alice\""
    echo "upstreams:"
    echo "  up:"
    echo "    url: http://127.0.0.1:$UP_PORT"
    echo "admin:"
    echo "  address: \"127.0.0.1:$CERTGUARD_ADMIN\""
    echo "reload:"
    echo "  watch: false"
    echo "logging:"
    echo "  format: json"
    echo "  level: info"
    echo "  access_log: $ACCESS_LOG"
    echo "runtime:"
    echo "  worker_threads: $WORKERS"
    if [ "$WORKERS" = 1 ]; then
        echo "  single_thread: $SINGLE_THREAD"
    fi
  } >"$TMP/certguard.yaml"
}

# nginx doing what certguard does, as far as nginx can: mTLS with the same PKI and CRLs (nginx
# wants them in one file), no session resumption, a keep-alive pool to the upstream,
# X-Forwarded-* and an XFCC-like header, the identity rule as a map on the subject DN. Its
# client fingerprint variable is SHA-1 where certguard's XFCC Hash is SHA-256.
write_nginx_config() {
  local pki=$TMP/pki access_log=off
  [[ "$ACCESS_LOG" != true ]] || access_log="$TMP/nginx/access.log combined buffer=64k flush=1s"
  mkdir -p "$TMP/nginx"
  cat >"$TMP/nginx/nginx.conf" <<NGINX
worker_processes $WORKERS;
worker_rlimit_nofile 19000;
pid $TMP/nginx/nginx.pid;
error_log $TMP/nginx/error.log warn;
daemon off;
events { worker_connections 9000; }
http {
  access_log $access_log;
  keepalive_requests 1000000;
  keepalive_timeout 300s;
  client_body_temp_path $TMP/nginx/body;
  proxy_temp_path $TMP/nginx/proxy;
  fastcgi_temp_path $TMP/nginx/fastcgi;
  uwsgi_temp_path $TMP/nginx/uwsgi;
  scgi_temp_path $TMP/nginx/scgi;
  upstream up {
    server 127.0.0.1:$UP_PORT;
    keepalive 64;
  }
  map \$ssl_client_s_dn \$cg_alice {
    default 0;
    "~(^|,)CN=alice(,|\$)" 1;
  }
  map \$ssl_client_s_dn \$cg_bob {
    default 0;
    "~(^|,)CN=bob(,|\$)" 1;
  }
  server {
    listen 127.0.0.1:$NGINX_PORT ssl http2;
    ssl_certificate $pki/server.crt;
    ssl_certificate_key $pki/server.key;
    ssl_client_certificate $pki/ca.crt;
    ssl_verify_client on;
    ssl_verify_depth 3;
    ssl_crl $TMP/crls.pem;
    ssl_session_cache off;
    ssl_session_tickets off;
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_prefer_server_ciphers on;
    ssl_conf_command Ciphersuites $TLS13_SUITES;
    proxy_http_version 1.1;
    proxy_set_header Connection "";
    proxy_set_header Host \$host;
    proxy_set_header X-Forwarded-For \$remote_addr;
    proxy_set_header X-Forwarded-Proto https;
    proxy_set_header X-Forwarded-Client-Cert "Hash=\$ssl_client_fingerprint;Subject=\\"\$ssl_client_s_dn\\"";
    location /bench/ {
      if (\$cg_alice = 0) { return 403; }
      proxy_pass http://up;
    }
    location /deny/ {
      if (\$cg_bob = 0) { return 403; }
      proxy_pass http://up;
    }
  }
}
NGINX
}

# HAProxy likewise: `nbthread`, no TLS tickets and no session cache, `http-reuse always` for a
# shared keep-alive pool to the upstream, the identity rule on the certificate's CN.
write_haproxy_config() {
  local pki=$TMP/pki
  mkdir -p "$TMP/haproxy"
  cat "$pki/server.crt" "$pki/server.key" >"$TMP/haproxy/server.pem"
  cat >"$TMP/haproxy/haproxy.cfg" <<HAPROXY
global
  nbthread $WORKERS
  maxconn 9000
  tune.ssl.cachesize 0
  ssl-default-bind-ciphersuites $TLS13_SUITES
defaults
  mode http
  timeout connect 5s
  timeout client 300s
  timeout server 60s
  timeout http-keep-alive 300s
  http-reuse always
frontend fe
  bind 127.0.0.1:$HAPROXY_PORT ssl crt $TMP/haproxy/server.pem ca-file $pki/ca.crt verify required crl-file $TMP/crls.pem no-tls-tickets alpn h2,http/1.1
  acl alice ssl_c_s_dn(CN) -m str alice
  acl bob ssl_c_s_dn(CN) -m str bob
  http-request deny deny_status 403 if { path_beg /bench/ } !alice
  http-request deny deny_status 403 if { path_beg /deny/ } !bob
  option forwardfor
  http-request set-header X-Forwarded-Proto https
  http-request set-header X-Forwarded-Client-Cert "Hash=%[ssl_c_sha1,hex];Subject=\"%[ssl_c_s_dn]\""
  default_backend up
backend up
  server up 127.0.0.1:$UP_PORT
HAPROXY
  if [[ "$ACCESS_LOG" == true ]]; then
    WARNINGS+=("ACCESS_LOG=true: HAProxy logs nothing (it only logs to syslog)")
  fi
}

# The Python client of the `idle` scenario: N connections one after the other, one request
# each, kept open; prints the seconds it took, then holds them until RELEASE exists.
write_python_client() {
  cat >"$TMP/open_conns.py" <<'PYTHON'
import os, socket, ssl, sys, time

host, port, ca, cert, key, n, path, release = sys.argv[1:9]
nodelay = len(sys.argv) > 9 and sys.argv[9] == "nodelay"
ctx = ssl.create_default_context(cafile=ca)
ctx.load_cert_chain(cert, key)
request = f"GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode()


def read_response(t):
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = t.recv(65536)
        if not chunk:
            raise SystemExit(f"connection closed before a response head: {buf!r}")
        buf += chunk
    head, _, body = buf.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = lines[0].split(" ")[1]
    if status != "200":
        raise SystemExit(f"status {status}, not 200")
    headers = {k.strip().lower(): v.strip() for k, _, v in (l.partition(":") for l in lines[1:])}
    if "content-length" in headers:
        want = int(headers["content-length"])
        while len(body) < want:
            chunk = t.recv(65536)
            if not chunk:
                raise SystemExit("connection closed in a response body")
            body += chunk
    else:
        while not body.endswith(b"0\r\n\r\n"):
            chunk = t.recv(65536)
            if not chunk:
                raise SystemExit("connection closed in a chunked response body")
            body += chunk


held = []
started = time.monotonic()
for _ in range(int(n)):
    s = socket.create_connection((host, int(port)))
    if nodelay:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    t = ctx.wrap_socket(s, server_hostname="localhost")
    t.sendall(request)
    read_response(t)
    held.append(t)
print(f"{time.monotonic() - started:.3f}", flush=True)
deadline = time.monotonic() + 600
while not os.path.exists(release) and time.monotonic() < deadline:
    time.sleep(0.05)
for t in held:
    t.close()
PYTHON
}

# --- the proxies -----------------------------------------------------------------------------

declare -A PID_OF=() PORT_OF=()

proxy_url() { echo "https://127.0.0.1:${PORT_OF[$1]}$2"; }

client_args() { echo "--cacert $TMP/pki/ca.crt --cert $TMP/pki/$1.crt --key $TMP/pki/$1.key"; }

# start_proxy NAME [WRAPPER...]: start it pinned to the proxy core, under WRAPPER (a command
# and its arguments, such as valgrind) if given, and wait until alice gets a 200.
start_proxy() {
  local name=$1 pid logfile=$TMP/$1.log
  shift
  case $name in
    nginx) start_bg pid "$logfile" "${PROXY_PIN[@]}" "$@" "$NGINX_BIN" -p "$TMP/nginx" -c "$TMP/nginx/nginx.conf" ;;
    haproxy) start_bg pid "$logfile" "${PROXY_PIN[@]}" "$@" "$HAPROXY_BIN" -db -f "$TMP/haproxy/haproxy.cfg" ;;
    certguard) start_bg pid "$logfile" "${PROXY_PIN[@]}" "$@" "$BIN" run -c "$TMP/certguard.yaml" ;;
  esac
  PID_OF[$name]=$pid
  # shellcheck disable=SC2046 # the client arguments split on purpose
  wait_ready "$pid" "$logfile" "$name" \
    curl -fsS -o /dev/null $(client_args alice) "$(proxy_url "$name" /bench/ready)"
}

# The TLS 1.3 cipher suite each proxy picks for a client that prefers AES-256 (OpenSSL's and
# rustls' default order, so oha's): the same for all, or the comparison is not of the same work.
# (nginx 1.22 enables TLS 1.3 only when told to: `ssl_protocols` above.)
declare -A SUITE_OF=()
check_suites() {
  local p suite first=
  if ! command -v openssl >/dev/null 2>&1; then
    WARNINGS+=("no openssl command: the negotiated cipher suites were not checked")
    return 0
  fi
  for p in $PROXIES; do
    suite=$(openssl s_client -connect "127.0.0.1:${PORT_OF[$p]}" -tls1_3 \
      -ciphersuites TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256:TLS_AES_128_GCM_SHA256 \
      -cert "$TMP/pki/alice.crt" -key "$TMP/pki/alice.key" -CAfile "$TMP/pki/ca.crt" \
      </dev/null 2>/dev/null | sed -n 's/.*Cipher is \([A-Z0-9_]*\).*/\1/p' | head -n 1) || true
    SUITE_OF[$p]=${suite:-unknown}
    first=${first:-${SUITE_OF[$p]}}
    [[ "${SUITE_OF[$p]}" == "$first" ]] ||
      WARNINGS+=("cipher suites differ: $p negotiates ${SUITE_OF[$p]}, not $first")
  done
}

stop_proxy() {
  stop_bg "${PID_OF[$1]}"
  PID_OF[$1]=
}

# --- measurement -----------------------------------------------------------------------------

run_oha() {
  # A hard stop well past any phase's planned length, so a hung phase cannot hang the script.
  timeout --kill-after=5 "$((DURATION * 3 + WARMUP + 120))" \
    "${LOAD_PIN[@]}" "$OHA" --no-tui --output-format json "$@"
}

# Every response must be EXPECT: a proxy answering 403 or 502 quickly would look fast. Transport
# errors (resets, failed handshakes) void the phase above 1% of requests and are reported below.
check_phase() {
  local f=$TMP/$1.json expect=$2 ok bad errors
  ok=$(jq --arg c "$expect" '.statusCodeDistribution[$c] // 0' "$f")
  bad=$(jq --arg c "$expect" '[.statusCodeDistribution | to_entries[] | select(.key != $c) | .value] | add // 0' "$f")
  # On HTTP/2 oha cuts the streams in flight at the deadline (it ignores -w): not errors.
  errors=$(jq '[.errorDistribution | to_entries[] | select(.key != "aborted due to deadline") | .value] | add // 0' "$f")
  if [[ "$bad" != 0 || "$ok" == 0 ]] || ((errors * 100 > ok)); then
    jq -c '{statusCodeDistribution, errorDistribution}' "$f" >&2
    die "phase $1: $ok responses $expect, $bad others, $errors errors; the figures would be meaningless"
  fi
  if [[ "$errors" != 0 ]]; then
    WARNINGS+=("phase $1: $errors transport errors next to $ok responses: $(jq -c .errorDistribution "$f")")
  fi
}

# record REP SCENARIO PROXY METRIC VALUE
record() { printf '%s\t%s\t%s\t%s\t%s\n' "$@" >>"$TMP/results.tsv"; }

# oha_phase REP SCENARIO PROXY EXPECT WARM RUN OHA-ARGS...: an unmeasured warm-up WARM (oha
# arguments, or empty), then a measured oha run RUN; records requests/s, requests per
# proxy-CPU-second and p99 latency.
oha_phase() {
  local rep=$1 scenario=$2 proxy=$3 expect=$4 warm=$5 run=$6 pid before after name hz
  shift 6
  name="$scenario-$proxy-$rep"
  pid=${PID_OF[$proxy]}
  log "rep $rep $scenario $proxy: oha $run $*"
  if [[ -n "$warm" ]]; then
    # shellcheck disable=SC2086
    run_oha $warm "$@" >/dev/null || die "oha failed in the warm-up of $name"
  fi
  before=$(cpu_ticks_tree "$pid")
  # shellcheck disable=SC2086
  run_oha $run "$@" >"$TMP/$name.json" || die "oha failed in $name"
  after=$(cpu_ticks_tree "$pid")
  check_phase "$name" "$expect"
  hz=$(getconf CLK_TCK)
  jq -r --argjson ticks "$((after - before))" --argjson hz "$hz" \
    --arg rep "$rep" --arg s "$scenario" --arg p "$proxy" '
    ([.statusCodeDistribution[]] | add // 0) as $n
    | [[$rep, $s, $p, "rps", .summary.requestsPerSec],
       [$rep, $s, $p, "per_cpu_s", (if $ticks > 0 then $n / ($ticks / $hz) else 0 end)],
       [$rep, $s, $p, "p99_ms", .latencyPercentiles.p99 * 1000]][]
    | @tsv' "$TMP/$name.json" >>"$TMP/results.tsv"
}

# idle_phase REP PROXY: restart the proxy (a fresh heap), then the Python client opens
# OPEN_CONNS connections one by one and holds them; records the seconds and RSS per connection.
idle_phase() {
  local rep=$1 proxy=$2 pid py before after secs release=$TMP/release-$1-$2 out=$TMP/idle-$2-$1.out
  stop_proxy "$proxy"
  start_proxy "$proxy"
  pid=${PID_OF[$proxy]}
  sleep 1
  before=$(rss_tree_kib "$pid" VmRSS)
  log "rep $rep idle $proxy: $OPEN_CONNS connections from Python ssl (no TCP_NODELAY)"
  "${LOAD_PIN[@]}" python3 "$TMP/open_conns.py" 127.0.0.1 "${PORT_OF[$proxy]}" "$TMP/pki/ca.crt" \
    "$TMP/pki/alice.crt" "$TMP/pki/alice.key" "$OPEN_CONNS" /bench/idle "$release" \
    >"$out" 2>"$out.err" &
  py=$!
  local deadline=$((SECONDS + 900))
  until [[ -s "$out" ]]; do
    if ! kill -0 "$py" 2>/dev/null; then
      cat "$out.err" >&2
      die "the Python client failed against $proxy (above)"
    fi
    ((SECONDS < deadline)) || die "the Python client did not finish against $proxy in 900 s"
    sleep 0.2
  done
  secs=$(head -n 1 "$out")
  sleep 1
  after=$(rss_tree_kib "$pid" VmRSS)
  touch "$release"
  wait "$py" || die "the Python client failed against $proxy"
  record "$rep" idle "$proxy" open_s "$secs"
  record "$rep" idle "$proxy" rss_kb_per_conn "$(awk -v a="$after" -v b="$before" -v n="$OPEN_CONNS" \
    'BEGIN { printf "%.2f", (a - b) * 1.024 / n }')"
}

# instructions_phase REP: certguard restarted under callgrind (instrumentation off until the
# warm-up is done); per protocol, the instructions of INSTR_REQUESTS and of 2 x INSTR_REQUESTS
# requests on fresh oha connections, each dumped on its own; their difference over
# INSTR_REQUESTS is what one more request costs. Then certguard is restarted as before.
instructions_phase() {
  local rep=$1 pid out=$TMP/callgrind.$1 proto n a b dump=0
  local -a alice args
  read -r -a alice <<<"$(client_args alice)"
  stop_proxy certguard
  start_proxy certguard valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$out"
  pid=${PID_OF[certguard]}
  for proto in h1 h2; do
    args=(-c 8)
    [[ "$proto" == h1 ]] || args=(--http2 -c 4 -p 4)
    run_oha -n 300 "${args[@]}" "${alice[@]}" "$(proxy_url certguard /bench/hello)" >/dev/null ||
      die "oha failed in the callgrind warm-up"
    for n in "$INSTR_REQUESTS" "$((2 * INSTR_REQUESTS))"; do
      callgrind_control -i on "$pid" >/dev/null
      run_oha -n "$n" "${args[@]}" "${alice[@]}" "$(proxy_url certguard /bench/hello)" \
        >"$TMP/instructions-$proto-$n-$rep.json" || die "oha failed under callgrind"
      callgrind_control -i off "$pid" >/dev/null
      callgrind_control -d "instructions-$proto-$n" "$pid" >/dev/null
      check_phase "instructions-$proto-$n-$rep" 200
    done
  done
  stop_proxy certguard
  # One dump per step, numbered in order: .1 and .2 for HTTP/1.1, .3 and .4 for HTTP/2.
  for proto in h1 h2; do
    a=$(awk '/^totals:/ { print $2 }' "$out.$((dump + 1))")
    b=$(awk '/^totals:/ { print $2 }' "$out.$((dump + 2))")
    dump=$((dump + 2))
    [[ -n "$a" && -n "$b" ]] || die "callgrind wrote no totals for $proto to $out.*"
    record "$rep" instructions certguard "${proto}_per_request" "$(((b - a) / INSTR_REQUESTS))"
  done
  start_proxy certguard
}

# run_scenario REP SCENARIO PROXY
run_scenario() {
  local rep=$1 scenario=$2 proxy=$3 warm='' run="-z ${DURATION}s -w"
  local ok_url forbidden_url
  ok_url=$(proxy_url "$proxy" /bench/hello)
  forbidden_url=$(proxy_url "$proxy" /deny/hello)
  local -a alice
  read -r -a alice <<<"$(client_args alice)"
  ((WARMUP == 0)) || warm="-z ${WARMUP}s -w"
  case $scenario in
    keepalive)
      oha_phase "$rep" "$scenario" "$proxy" 200 "$warm" "$run" -c "$CONNECTIONS" "${alice[@]}" "$ok_url" ;;
    keepalive_h2)
      # -w is ignored on HTTP/2: oha waits for the streams in flight anyway.
      oha_phase "$rep" "$scenario" "$proxy" 200 "${warm% -w}" "-z ${DURATION}s" --http2 \
        -c "$H2_CONNECTIONS" -p "$H2_STREAMS" "${alice[@]}" "$ok_url" ;;
    handshake)
      # One connection per request; the clients offer resumption, the proxies decline it.
      # The proxy's work is the same either way; --insecure only spares the load generator
      # the chain verification (see HANDSHAKE_CLIENT_VERIFY above).
      local -a verify=(--insecure)
      [[ "$HANDSHAKE_CLIENT_VERIFY" == true ]] && verify=()
      oha_phase "$rep" "$scenario" "$proxy" 200 "$([[ "$WARMUP" == 0 ]] || echo "-n $((HANDSHAKES / 10))")" \
        "-n $HANDSHAKES" -c "$CONNECTIONS" --disable-keepalive "${verify[@]}" "${alice[@]}" "$ok_url" ;;
    forbidden)
      oha_phase "$rep" "$scenario" "$proxy" 403 "$warm" "$run" -c "$CONNECTIONS" "${alice[@]}" "$forbidden_url" ;;
    idle)
      idle_phase "$rep" "$proxy" ;;
    p99)
      oha_phase "$rep" "$scenario" "$proxy" 200 "$warm" "$run" -q "$RATE" --latency-correction \
        -c "$CONNECTIONS" "${alice[@]}" "$ok_url" ;;
    instructions)
      [[ "$proxy" != certguard ]] || instructions_phase "$rep" ;;
  esac
}

# The table: medians per proxy, medians of per-repetition ratios, the issue's targets.
summarize() {
  python3 - "$TMP/results.tsv" "$PROXIES" <<'PYTHON'
import statistics, sys
from collections import defaultdict

path, proxies = sys.argv[1], sys.argv[2].split()
values = defaultdict(dict)  # (scenario, metric) -> {(rep, proxy): value}
for line in open(path):
    rep, scenario, proxy, metric, value = line.rstrip("\n").split("\t")
    values[(scenario, metric)][(rep, proxy)] = float(value)

# (scenario, metric, label, format, target: (kind, against, factor))
rows = [
    ("keepalive", "per_cpu_s", "HTTP/1.1 keep-alive requests per proxy-CPU-second", "{:,.0f}", ("ge", ["nginx:1.1", "haproxy:1.0"])),
    ("keepalive", "rps", "HTTP/1.1 keep-alive req/s", "{:,.0f}", None),
    ("keepalive_h2", "per_cpu_s", "HTTP/2 keep-alive requests per proxy-CPU-second", "{:,.0f}", ("ge", ["nginx:1.1", "haproxy:1.0"])),
    ("keepalive_h2", "rps", "HTTP/2 keep-alive req/s", "{:,.0f}", None),
    ("handshake", "rps", "full mTLS handshakes/s (new connection per request)", "{:,.0f}", ("ge", ["nginx:3.0"])),
    ("handshake", "per_cpu_s", "full mTLS handshakes per proxy-CPU-second", "{:,.0f}", None),
    ("forbidden", "rps", "403 answered by the proxy, req/s", "{:,.0f}", ("ge", ["nginx:1.1"])),
    ("forbidden", "per_cpu_s", "403 per proxy-CPU-second", "{:,.0f}", None),
    ("idle", "rss_kb_per_conn", "RSS per idle mTLS connection, KB", "{:.1f}", ("abs_le", 20.0)),
    ("idle", "open_s", "time to open the connections, one request each, Python ssl, s", "{:.1f}", ("le", ["nginx:1.2"])),
    ("p99", "p99_ms", "p99 latency at a steady rate, ms", "{:.2f}", ("le", ["nginx:1.0"])),
    ("instructions", "h1_per_request", "user-space instructions per HTTP/1.1 request (callgrind)", "{:,.0f}", None),
    ("instructions", "h2_per_request", "user-space instructions per HTTP/2 request (callgrind)", "{:,.0f}", None),
]
cols = [p for p in ("nginx", "haproxy") if p in proxies]
header = ["figure"] + cols + ["certguard"] + [f"certguard / {c}" for c in cols] + ["target", "met"]
print("| " + " | ".join(header) + " |")
print("|" + "---|" * len(header))
for scenario, metric, label, fmt, target in rows:
    v = values.get((scenario, metric))
    if not v:
        continue
    reps = sorted({r for r, _ in v})
    med = {}
    for p in cols + ["certguard"]:
        xs = [v[(r, p)] for r in reps if (r, p) in v]
        med[p] = statistics.median(xs) if xs else None
    ratio = {}
    for c in cols:
        xs = [v[(r, "certguard")] / v[(r, c)] for r in reps if (r, c) in v and (r, "certguard") in v and v[(r, c)] > 0]
        ratio[c] = statistics.median(xs) if xs else None
    cells = [label] + [fmt.format(med[p]) if med[p] is not None else "-" for p in cols + ["certguard"]]
    cells += [f"{ratio[c]:.2f}" if ratio[c] is not None else "-" for c in cols]
    text, met = "", ""
    if target:
        kind, spec = target
        if kind == "abs_le":
            text = f"<= {spec:g}"
            met = "yes" if med["certguard"] is not None and med["certguard"] <= spec else "no"
        else:
            parts, oks = [], []
            for s in spec:
                who, factor = s.split(":")
                factor = float(factor)
                parts.append(f"{'>=' if kind == 'ge' else '<='} {factor:g}x {who}")
                if who in ratio and ratio[who] is not None:
                    oks.append(ratio[who] >= factor if kind == "ge" else ratio[who] <= factor)
            text = ", ".join(parts)
            met = ("yes" if all(oks) else "no") if oks else "-"
    print("| " + " | ".join(cells + [text, met]) + " |")
PYTHON
}

main() {
  check_settings
  # Paths given relative to where the script was started, before moving to the repository.
  [[ -z "$RESULTS" || "$RESULTS" == /* ]] || RESULTS=$PWD/$RESULTS
  [[ -z "${CERTGUARD_BIN:-}" || "$CERTGUARD_BIN" == /* ]] || CERTGUARD_BIN=$PWD/$CERTGUARD_BIN
  cd "$(dirname "$0")/.."
  EXTRA_APT="nginx python3 openssl"
  [[ " $PROXIES " != *" haproxy "* ]] || EXTRA_APT+=" haproxy"
  [[ " $SCENARIOS " != *" instructions "* ]] || EXTRA_APT+=" valgrind"
  ensure_tools
  build_certguard
  NGINX_BIN=$(command -v nginx || echo /usr/sbin/nginx)
  HAPROXY_BIN=$(command -v haproxy || echo /usr/sbin/haproxy)

  PIN=1
  if (($(nproc) < 2)) || ! command -v taskset >/dev/null 2>&1; then
    PIN=0
    WARNINGS+=("pinning skipped: $(nproc) CPU(s) or no taskset; proxy and load share the cores")
  else
    PROXY_PIN=(taskset -c "$PROXY_CPU")
    LOAD_PIN=(taskset -c "$LOAD_CPU")
  fi
  # 2,000 held connections need as many descriptors in the client and each proxy.
  ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

  TMP=$(mktemp -d "${TMPDIR:-/tmp}/certguard-load.XXXXXX")
  trap cleanup EXIT
  trap 'exit 130' INT TERM

  pick_port UP_PORT
  pick_port CERTGUARD_PORT
  pick_port CERTGUARD_ADMIN
  pick_port NGINX_PORT
  pick_port HAPROXY_PORT
  PORT_OF=([certguard]=$CERTGUARD_PORT [nginx]=$NGINX_PORT [haproxy]=$HAPROXY_PORT)

  "$BIN" dev-certs --out "$TMP/pki" >/dev/null
  cat "$TMP/pki/intermediate.crl" "$TMP/pki/ca.crl" >"$TMP/crls.pem"
  write_upstream_config
  write_certguard_config
  write_nginx_config
  write_haproxy_config
  write_python_client

  local up_pid
  start_bg up_pid "$TMP/upstream.log" "${LOAD_PIN[@]}" "$NGINX_BIN" -p "$TMP/upstream" -c "$TMP/upstream/nginx.conf"
  wait_ready "$up_pid" "$TMP/upstream.log" "the upstream" curl -fsS -o /dev/null "http://127.0.0.1:$UP_PORT/"
  local p
  for p in $PROXIES; do
    start_proxy "$p"
  done
  # The identity rule works in each: bob is refused on /bench/, alice on /deny/.
  local code
  for p in $PROXIES; do
    # shellcheck disable=SC2046
    code=$(curl -sS -o /dev/null -w '%{http_code}' $(client_args bob) "$(proxy_url "$p" /bench/x)") || true
    [[ "$code" == 403 ]] || die "$p answered bob on /bench/ with '$code', not 403"
    # shellcheck disable=SC2046
    code=$(curl -sS -o /dev/null -w '%{http_code}' $(client_args alice) "$(proxy_url "$p" /deny/x)") || true
    [[ "$code" == 403 ]] || die "$p answered alice on /deny/ with '$code', not 403"
  done
  check_suites

  local load_before load_after rep s order=() i n
  read -r load_before _ </proc/loadavg
  : >"$TMP/results.tsv"
  read -r -a order <<<"$PROXIES"
  n=${#order[@]}
  for ((rep = 1; rep <= REPS; rep++)); do
    for s in $SCENARIOS; do
      # Rotate the order per repetition so that no proxy always runs first or last.
      for ((i = 0; i < n; i++)); do
        run_scenario "$rep" "$s" "${order[$(((i + rep - 1) % n))]}"
      done
    done
    log "repetition $rep done; load average $(cut -d' ' -f1-3 </proc/loadavg)"
  done
  read -r load_after _ </proc/loadavg

  {
    printf '\ncertguard, nginx %s and HAProxy %s, side by side: %s repetition(s), medians; ratios are medians of per-repetition ratios\n' \
      "$("$NGINX_BIN" -v 2>&1 | sed 's/.*nginx\///')" "$("$HAPROXY_BIN" -v 2>/dev/null | awk 'NR == 1 { print $3 }')" "$REPS"
    printf 'proxy core %s, load generator and upstream core %s (pinning %s); %s CPUs; %s; load average %s before, %s after\n' \
      "$PROXY_CPU" "$LOAD_CPU" "$([[ "$PIN" == 1 ]] && echo on || echo OFF)" "$(nproc)" "$("$OHA" --version)" "$load_before" "$load_after"
    printf 'certguard binary: %s\n' "$BUILD_KIND"
    printf 'TLS 1.3 suite each proxy picks for a client preferring AES-256:'
    for p in $PROXIES; do printf ' %s %s;' "$p" "${SUITE_OF[$p]:-unchecked}"; done
    printf ' key exchange: certguard X25519MLKEM768 (oha offers it), nginx and HAProxy X25519 (OpenSSL 3.0 has no ML-KEM)\n'
    printf 'HTTP/1.1: %s connections; HTTP/2: %s x %s streams; %ss phases (+%ss warm-up); %s handshakes (oha verifies the proxy certificate: %s); %s idle connections; p99 at %s req/s; %s routes; access log %s\n\n' \
      "$CONNECTIONS" "$H2_CONNECTIONS" "$H2_STREAMS" "$DURATION" "$WARMUP" "$HANDSHAKES" "$HANDSHAKE_CLIENT_VERIFY" "$OPEN_CONNS" "$RATE" "$ROUTES" "$ACCESS_LOG"
    summarize
    local w
    for w in "${WARNINGS[@]}"; do
      printf 'warning: %s\n' "$w"
    done
  } | tee "$TMP/summary.txt"

  if [[ -n "$RESULTS" ]]; then
    mkdir -p "$RESULTS"
    cp "$TMP"/*.json "$TMP/results.tsv" "$TMP/summary.txt" "$RESULTS"/ 2>/dev/null || true
    log "results copied to $RESULTS"
  fi
}

# Sourcing the file (for its functions, as benches/soak.sh does) does not run it.
if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
  main "$@"
fi
