#!/usr/bin/env bash
# Soak test for certguard (not run in CI): MINUTES of mixed traffic against one certguard
# process while its CRL and its policy are reloaded every few seconds, recording the process's
# RSS and open file descriptors over time. It fails when
#   - any allowed request fails (oha keep-alive HTTP/1.1, HTTP/2, a new connection per request,
#     slow uploads: every one must be a 200),
#   - any denied request gets through (bob on an alice-only route must get 403; revoked,
#     expired, self-signed and certificate-less clients must fail the handshake),
#   - any reload fails, or fewer reloads happened than were asked for,
#   - RSS ever exceeds RSS_MAX_MIB, or grows by more than RSS_GROWTH_MIB between the second
#     and the last quarter of the run (the first quarter is warm-up: allocator pools, pooled
#     upstream connections, the inventory filling),
#   - open fds ever exceed FD_MAX, or are not back within FD_SLACK of their idle count within
#     240 s of the end of the traffic (idle client connections time out after 5 s, pooled
#     upstream connections after their 90 to 100 s pool idle timeout),
#   - an idle TLS client is not cut within idle_timeout (5 s) + 3 s,
#   - certguard_connections_active is not back to 0 at the end.
#
# Traffic, all at once, on 127.0.0.1 only:
#   allowed   alice, HTTP/1.1 keep-alive (oha, RATE_H1 req/s), HTTP/2 (oha, RATE_H2 req/s),
#             a new connection and full mTLS handshake per request (oha, RATE_NEWCONN req/s)
#   denied    bob on an alice-only route (curl, HTTP/1.1 and HTTP/2 alternately): 403
#   handshake revoked (listed in the CRL), expired, self-signed (rogue), no certificate (curl)
#   slow      alice uploading 64 KiB at 16 KiB/s (curl --limit-rate, 4 s per request), and
#             TLS clients (python3's ssl, 4 at a time) that handshake and then send nothing
#   reloads   every RELOAD_EVERY s: a freshly signed CRL for the intermediate (openssl ca: new
#             CRL number and dates, `revoked` listed) and the policy toggled between two
#             versions (a route that admits bob, or not), then SIGHUP
#
# Usage: MINUTES=10 benches/soak.sh   (builds target/release/certguard unless CERTGUARD_BIN is
#        set; installs oha with cargo, as benches/load.sh does, and openssl, python3, jq and
#        curl with apt-get). Takes MINUTES plus up to 3 minutes to settle and judge.
# Settings (environment):
#   MINUTES=10  RELOAD_EVERY=3  SAMPLE_EVERY=10
#   RATE_H1=150  RATE_H2=100  RATE_NEWCONN=15     requests per second of the oha clients
#   RSS_MAX_MIB=256  RSS_GROWTH_MIB=32  FD_MAX=1024  FD_SLACK=8
#   RESULTS=   a directory to copy samples.csv, the oha reports and summary.txt into
#   KEEP_TMP=0 1 = keep the temp dir (configs, PKI, logs)
set -euo pipefail

MINUTES=${MINUTES:-10}
RELOAD_EVERY=${RELOAD_EVERY:-3}
SAMPLE_EVERY=${SAMPLE_EVERY:-10}
RATE_H1=${RATE_H1:-150}
RATE_H2=${RATE_H2:-100}
RATE_NEWCONN=${RATE_NEWCONN:-15}
RSS_MAX_MIB=${RSS_MAX_MIB:-256}
RSS_GROWTH_MIB=${RSS_GROWTH_MIB:-32}
FD_MAX=${FD_MAX:-1024}
FD_SLACK=${FD_SLACK:-8}
SOAK_RESULTS=${RESULTS:-}

# Helpers shared with the load benchmark: ports, background processes and their cleanup,
# /proc readers, oha and the release build. Sourcing it runs nothing.
# shellcheck source=benches/load.sh
source "$(dirname "$0")/load.sh"

log() { printf '[soak] %s\n' "$*" >&2; }
die() {
  printf '[soak] error: %s\n' "$*" >&2
  exit 1
}

check_soak_settings() {
  local name
  for name in MINUTES RELOAD_EVERY SAMPLE_EVERY RATE_H1 RATE_H2 RATE_NEWCONN RSS_MAX_MIB \
    RSS_GROWTH_MIB FD_MAX FD_SLACK; do
    [[ "${!name}" =~ ^[0-9]+$ ]] || die "$name must be a whole number (got '${!name}')"
  done
  ((MINUTES >= 1 && MINUTES <= 720)) || die "MINUTES must be 1..720"
  ((RELOAD_EVERY >= 1)) || die "RELOAD_EVERY must be at least 1"
  ((SAMPLE_EVERY >= 1)) || die "SAMPLE_EVERY must be at least 1"
  ((RATE_H1 >= 1 && RATE_H2 >= 1 && RATE_NEWCONN >= 1)) || die "rates must be at least 1"
}

ensure_soak_tools() {
  local apt=() sudo=
  command -v openssl >/dev/null 2>&1 || apt+=(openssl)
  command -v python3 >/dev/null 2>&1 || apt+=(python3)
  if ((${#apt[@]} > 0)); then
    [[ "$(id -u)" == 0 ]] || sudo=sudo
    $sudo apt-get update -qq
    $sudo apt-get install -y -qq --no-install-recommends "${apt[@]}" >/dev/null
  fi
  ensure_tools
}

# --- configuration and reloads ---------------------------------------------------------------

# The echo upstream: a certguard demo process, which binds its echo server on every upstream
# address of its config (its own proxy listener stays idle).
write_echo_config() {
  local pki=$TMP/pki
  cat >"$TMP/echo.yaml" <<YAML
listen:
  address: "127.0.0.1:$ECHO_SIDE_LISTEN"
  cert: $pki/server.crt
  key: $pki/server.key
trust:
  internal:
    ca: $pki/ca.crt
routes:
  - name: all
    upstream: echo
    allow:
      - authenticated: true
upstreams:
  echo:
    url: http://127.0.0.1:$ECHO_PORT
admin:
  address: "127.0.0.1:$ECHO_SIDE_ADMIN"
reload:
  watch: false
logging:
  level: warn
  access_log: false
YAML
}

# write_policy VARIANT: the proxy config; variant 1 lets bob use /toggle, variant 0 does not.
write_policy() {
  local pki=$TMP/pki bob_toggle=
  [[ "$1" == 0 ]] || bob_toggle=$'\n      - cn: bob'
  cat >"$TMP/certguard.yaml.tmp" <<YAML
# certguard soak: policy variant $1
listen:
  address: "127.0.0.1:$PROXY_PORT"
  cert: $pki/server.crt
  key: $pki/server.key
  handshake_timeout: 5s
  header_read_timeout: 10s
  idle_timeout: 5s
trust:
  internal:
    ca: $pki/ca.crt
    crl: [$TMP/intermediate.crl, $pki/ca.crl]
routes:
  - name: admin
    path_prefix: /admin
    upstream: echo
    allow:
      - cn: alice
  - name: toggle
    path_prefix: /toggle
    upstream: echo
    allow:
      - cn: alice$bob_toggle
  - name: api
    path_prefix: /
    upstream: echo
    allow:
      - trust: internal
        spiffe_id: "spiffe://dev.local/ns/default/sa/alice"
upstreams:
  echo:
    url: http://127.0.0.1:$ECHO_PORT
admin:
  address: "127.0.0.1:$PROXY_ADMIN"
reload:
  watch: false
logging:
  level: warn
  access_log: false
YAML
  mv "$TMP/certguard.yaml.tmp" "$TMP/certguard.yaml"
}

# A tiny openssl CA database for the dev intermediate, with `revoked` on it, so that every
# reload gets a freshly signed CRL (new number, new dates) of the same content.
setup_crl_ca() {
  mkdir -p "$TMP/ca"
  : >"$TMP/ca/index.txt"
  echo 1000 >"$TMP/ca/crlnumber"
  cat >"$TMP/ca/openssl.cnf" <<CNF
[ ca ]
default_ca = soak
[ soak ]
database = $TMP/ca/index.txt
crlnumber = $TMP/ca/crlnumber
default_md = sha256
default_crl_days = 1
[ crl_ext ]
authorityKeyIdentifier = keyid:always
CNF
  openssl ca -batch -config "$TMP/ca/openssl.cnf" -keyfile "$TMP/pki/intermediate.key" \
    -cert "$TMP/pki/intermediate.crt" -revoke "$TMP/pki/revoked.crt" >/dev/null 2>&1 ||
    die "openssl ca -revoke failed"
  new_crl
}

# Sign a new intermediate CRL and put it in place atomically.
new_crl() {
  openssl ca -batch -config "$TMP/ca/openssl.cnf" -keyfile "$TMP/pki/intermediate.key" \
    -cert "$TMP/pki/intermediate.crt" -gencrl -crlexts crl_ext \
    -out "$TMP/intermediate.crl.tmp" >/dev/null 2>&1 || return 1
  mv "$TMP/intermediate.crl.tmp" "$TMP/intermediate.crl"
}

reloader() { # END
  local n=0
  while ((SECONDS < $1)); do
    sleep "$RELOAD_EVERY"
    ((SECONDS < $1)) || break
    n=$((n + 1))
    new_crl || echo "crl" >>"$TMP/reloader.errors"
    write_policy $((n % 2))
    kill -HUP "$PROXY_PID"
    echo "$n" >"$TMP/reloads.requested"
  done
}

# --- traffic ---------------------------------------------------------------------------------

# curl as WHO (a dev PKI name, or "none"), printing only the HTTP status (000 = no response).
cg_curl() {
  local who=$1 pki=$TMP/pki
  shift
  local id=()
  [[ "$who" == none ]] || id=(--cert "$pki/$who.crt" --key "$pki/$who.key")
  curl -sS -o /dev/null -w '%{http_code}' --max-time 20 --cacert "$pki/ca.crt" "${id[@]}" \
    "$@" 2>/dev/null || true
}

# count FILE: append one line (a status code or "fail") for later tallies.
denied_worker() { # END
  local i=0 code
  while ((SECONDS < $1)); do
    i=$((i + 1))
    if ((i % 2)); then
      code=$(cg_curl bob "https://127.0.0.1:$PROXY_PORT/admin/x")
    else
      code=$(cg_curl bob --http2 "https://127.0.0.1:$PROXY_PORT/admin/x")
    fi
    echo "$code" >>"$TMP/denied.codes"
    sleep 0.2
  done
}

handshake_worker() { # END
  local i=0 who code
  local whos=(revoked expired rogue none)
  while ((SECONDS < $1)); do
    who=${whos[$((i % 4))]}
    i=$((i + 1))
    code=$(cg_curl "$who" "https://127.0.0.1:$PROXY_PORT/api/x")
    echo "$who $code" >>"$TMP/handshake.codes"
    sleep 0.1
  done
}

slow_upload_worker() { # END ID
  local code
  while ((SECONDS < $1)); do
    code=$(cg_curl alice --limit-rate 16k -X POST --data-binary "@$TMP/upload.bin" \
      "https://127.0.0.1:$PROXY_PORT/upload/$2")
    echo "$code" >>"$TMP/slow.codes"
  done
}

# TLS clients that complete the handshake and then send nothing, 4 at a time: each must be
# cut by certguard within idle_timeout (5 s) + 3 s. One line per client: "cut SECONDS" or
# "open" (still open after 15 s) or "error ...".
idle_worker() { # END
  while ((SECONDS < $1)); do
    python3 - "$TMP/pki" "$PROXY_PORT" >>"$TMP/idle.codes" 2>&1 <<'PY' || echo "error python" >>"$TMP/idle.codes"
import socket, ssl, sys, threading, time
pki, port = sys.argv[1], int(sys.argv[2])
ctx = ssl.create_default_context(cafile=pki + "/ca.crt")
ctx.load_cert_chain(pki + "/alice.crt", pki + "/alice.key")
results = []
def idle():
    try:
        t = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=15),
                            server_hostname="localhost")
        start = time.monotonic()
        while t.recv(4096):
            pass
        results.append("cut %.1f" % (time.monotonic() - start))
    except socket.timeout:
        results.append("open")
    except (OSError, ssl.SSLError) as e:
        results.append("error %s" % type(e).__name__)
threads = [threading.Thread(target=idle) for _ in range(4)]
for th in threads: th.start()
for th in threads: th.join()
# One writer: lines printed from several threads could interleave.
print("\n".join(results))
PY
  done
}

# --- measurement -----------------------------------------------------------------------------

fd_count() { find "/proc/$1/fd" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l; }

metric_value() { # NAME LABEL-FILTER (a grep -F string, may be empty)
  curl -fsS "http://127.0.0.1:$PROXY_ADMIN/metrics" 2>/dev/null |
    awk -v n="$1" -v f="$2" '$1 == n || index($1, n "{") == 1 { if (f == "" || index($1, f)) s += $2 } END { printf "%d\n", s }'
}

sample() { # LABEL
  printf '%s,%d,%d,%d,%d\n' "$1" "$((SECONDS - START))" "$(status_kib "$PROXY_PID" VmRSS)" \
    "$(fd_count "$PROXY_PID")" "$(metric_value certguard_connections_active '')" >>"$TMP/samples.csv"
}

sampler() { # END
  while ((SECONDS < $1)); do
    sleep "$SAMPLE_EVERY"
    kill -0 "$PROXY_PID" 2>/dev/null || return 0
    sample run
  done
}

tally() { # FILE PATTERN: lines of FILE matching the extended regex PATTERN
  [[ -f "$1" ]] || { echo 0; return; }
  grep -cE "$2" "$1" || true
}

oha_ok() { jq '.statusCodeDistribution["200"] // 0' "$1"; }
# Failures: non-200 responses and transport errors, except oha's own "aborted due to deadline"
# (HTTP/2 requests oha cancels itself when -z runs out; -w only waits for HTTP/1.1 ones).
oha_bad() {
  jq '([.statusCodeDistribution | to_entries[] | select(.key != "200") | .value] | add // 0)
      + ([.errorDistribution | to_entries[] | select(.key != "aborted due to deadline")
          | .value] | add // 0)' "$1"
}
oha_aborted() { jq '.errorDistribution["aborted due to deadline"] // 0' "$1"; }

main() {
  check_soak_settings
  [[ -z "$SOAK_RESULTS" || "$SOAK_RESULTS" == /* ]] || SOAK_RESULTS=$PWD/$SOAK_RESULTS
  [[ -z "${CERTGUARD_BIN:-}" || "$CERTGUARD_BIN" == /* ]] || CERTGUARD_BIN=$PWD/$CERTGUARD_BIN
  cd "$(dirname "$0")/.."
  ensure_soak_tools
  build_certguard

  TMP=$(mktemp -d "${TMPDIR:-/tmp}/certguard-soak.XXXXXX")
  trap cleanup EXIT
  trap 'exit 130' INT TERM

  pick_port PROXY_PORT
  pick_port PROXY_ADMIN
  pick_port ECHO_PORT
  pick_port ECHO_SIDE_LISTEN
  pick_port ECHO_SIDE_ADMIN
  "$BIN" dev-certs --out "$TMP/pki" >/dev/null
  head -c 65536 /dev/urandom >"$TMP/upload.bin"
  setup_crl_ca
  write_echo_config
  write_policy 0

  local echo_pid
  start_bg echo_pid "$TMP/echo.log" "$BIN" demo -c "$TMP/echo.yaml"
  wait_ready "$echo_pid" "$TMP/echo.log" "echo upstream" \
    curl -fsS -o /dev/null "http://127.0.0.1:$ECHO_PORT/"
  start_bg PROXY_PID "$TMP/certguard.log" "$BIN" run -c "$TMP/certguard.yaml"
  wait_ready "$PROXY_PID" "$TMP/certguard.log" "certguard" \
    "$BIN" health --admin "127.0.0.1:$PROXY_ADMIN"
  local code
  code=$(cg_curl alice "https://127.0.0.1:$PROXY_PORT/api/hello")
  [[ "$code" == 200 ]] || die "alice got '$code', not 200 (see $TMP/certguard.log)"

  echo "phase,seconds,rss_kib,fds,connections_active" >"$TMP/samples.csv"
  START=$SECONDS
  sample idle
  local idle_fds end=$((SECONDS + MINUTES * 60)) pids=() p
  idle_fds=$(fd_count "$PROXY_PID")
  log "soaking for $MINUTES min (pid $PROXY_PID, idle: $(status_kib "$PROXY_PID" VmRSS) KiB RSS, $idle_fds fds)"

  local base="https://127.0.0.1:$PROXY_PORT"
  local id=(--cacert "$TMP/pki/ca.crt" --cert "$TMP/pki/alice.crt" --key "$TMP/pki/alice.key")
  local z="${MINUTES}m"
  # -w: at the deadline, requests in flight finish instead of counting as errors.
  "$OHA" --no-tui --output-format json -z "$z" -w -c 8 -q "$RATE_H1" "${id[@]}" \
    "$base/api/h1" >"$TMP/oha-h1.json" 2>"$TMP/oha-h1.err" &
  pids+=("$!")
  "$OHA" --no-tui --output-format json -z "$z" -w -c 2 -p 8 --http2 -q "$RATE_H2" "${id[@]}" \
    "$base/toggle/h2" >"$TMP/oha-h2.json" 2>"$TMP/oha-h2.err" &
  pids+=("$!")
  "$OHA" --no-tui --output-format json -z "$z" -w -c 4 --disable-keepalive -q "$RATE_NEWCONN" \
    "${id[@]}" "$base/api/newconn" >"$TMP/oha-newconn.json" 2>"$TMP/oha-newconn.err" &
  pids+=("$!")
  denied_worker "$end" &
  pids+=("$!")
  handshake_worker "$end" &
  pids+=("$!")
  slow_upload_worker "$end" 1 &
  pids+=("$!")
  slow_upload_worker "$end" 2 &
  pids+=("$!")
  idle_worker "$end" &
  pids+=("$!")
  reloader "$end" &
  pids+=("$!")
  sampler "$end" &
  pids+=("$!")
  PIDS+=("${pids[@]}")
  for p in "${pids[@]}"; do
    wait "$p" || true
  done

  # Let idle and half-closed connections time out (idle_timeout is 5 s), and the pooled
  # upstream connections too (the pool closes idle ones after 90 to 100 s): after that the process
  # must be back to its idle fd count (within FD_SLACK), or something leaked.
  local settle=$((SECONDS + 240)) active settled=-1 end_fds
  while ((SECONDS < settle)); do
    active=$(metric_value certguard_connections_active '')
    end_fds=$(fd_count "$PROXY_PID")
    if ((active == 0 && end_fds <= idle_fds + FD_SLACK)); then
      settled=$((SECONDS - end))
      break
    fi
    sleep 2
  done
  sample end
  local end_active
  end_fds=$(fd_count "$PROXY_PID")
  end_active=$(metric_value certguard_connections_active '')

  # --- verdict -------------------------------------------------------------------------------
  local failures=() f ok bad
  local h1_ok h2_ok nc_ok h1_bad h2_bad nc_bad
  for f in h1 h2 newconn; do
    [[ -s "$TMP/oha-$f.json" ]] || die "oha ($f) wrote no report: $(cat "$TMP/oha-$f.err")"
  done
  h1_ok=$(oha_ok "$TMP/oha-h1.json") h1_bad=$(oha_bad "$TMP/oha-h1.json")
  h2_ok=$(oha_ok "$TMP/oha-h2.json") h2_bad=$(oha_bad "$TMP/oha-h2.json")
  nc_ok=$(oha_ok "$TMP/oha-newconn.json") nc_bad=$(oha_bad "$TMP/oha-newconn.json")
  for f in h1 h2 newconn; do
    bad=$(oha_bad "$TMP/oha-$f.json")
    ((bad == 0)) || failures+=("allowed $f: $bad failed: $(jq -c '{statusCodeDistribution, errorDistribution}' "$TMP/oha-$f.json")")
  done
  local slow_ok slow_bad
  slow_ok=$(tally "$TMP/slow.codes" '^200$')
  slow_bad=$(tally "$TMP/slow.codes" '^([^2]|2[^0]|20[^0])')
  ((slow_bad == 0)) || failures+=("slow uploads: $slow_bad of $((slow_ok + slow_bad)) not 200: $(sort "$TMP/slow.codes" | uniq -c | tr '\n' ' ')")
  ((slow_ok > 0)) || failures+=("no slow upload completed")
  local denied_ok denied_bad
  denied_ok=$(tally "$TMP/denied.codes" '^403$')
  denied_bad=$(tally "$TMP/denied.codes" '^([^4]|4[^0]|40[^3])')
  ((denied_bad == 0)) || failures+=("denied: $denied_bad of $((denied_ok + denied_bad)) not 403: $(sort "$TMP/denied.codes" | uniq -c | tr '\n' ' ')")
  local hs_ok hs_bad
  hs_ok=$(tally "$TMP/handshake.codes" ' 000$')
  hs_bad=$(tally "$TMP/handshake.codes" ' [1-9][0-9][0-9]$')
  ((hs_bad == 0)) || failures+=("handshake-failing clients got an HTTP response $hs_bad times: $(grep -v ' 000$' "$TMP/handshake.codes" | sort | uniq -c | tr '\n' ' ')")
  local idle_ok idle_bad
  idle_ok=$(awk '$1 == "cut" && $2 <= 8 { n++ } END { print n + 0 }' "$TMP/idle.codes")
  idle_bad=$(awk '!($1 == "cut" && $2 <= 8) { n++ } END { print n + 0 }' "$TMP/idle.codes")
  ((idle_bad == 0)) || failures+=("idle TLS clients: $idle_bad of $((idle_ok + idle_bad)) not cut within 8 s: $(awk '!($1 == "cut" && $2 <= 8)' "$TMP/idle.codes" | sort | uniq -c | head -5 | tr '\n' ' ')")
  ((idle_ok > 0)) || failures+=("no idle TLS client was cut")

  local requested reload_ok reload_failed
  requested=$(cat "$TMP/reloads.requested" 2>/dev/null || echo 0)
  reload_ok=$(metric_value certguard_reloads_total 'result="success"')
  reload_failed=$(metric_value certguard_reloads_total 'result="failure"')
  ((reload_failed == 0)) || failures+=("$reload_failed reloads failed (see $TMP/certguard.log)")
  # SIGHUPs that arrive during a reload may be merged; most must have led to one.
  ((reload_ok * 10 >= requested * 9)) || failures+=("only $reload_ok reloads for $requested SIGHUPs")
  [[ ! -s "$TMP/reloader.errors" ]] || failures+=("openssl could not sign $(wc -l <"$TMP/reloader.errors") CRLs")

  # Memory and fds over the run.
  local stats
  stats=$(awk -F, -v dur="$((MINUTES * 60))" '
    NR == 1 || $1 != "run" { next }
    { t = $2; rss = $3; fds = $4
      if (rss > peak) peak = rss; if (fds > fdpeak) fdpeak = fds
      if (t >= dur / 4 && t < dur / 2 && rss > q2) q2 = rss
      if (t >= dur * 3 / 4 && rss > q4) q4 = rss }
    END { printf "%d %d %d %d\n", peak, fdpeak, q2, q4 }' "$TMP/samples.csv")
  local peak_rss peak_fds q2_rss q4_rss idle_rss end_rss
  read -r peak_rss peak_fds q2_rss q4_rss <<<"$stats"
  idle_rss=$(awk -F, '$1 == "idle" { print $3 }' "$TMP/samples.csv")
  end_rss=$(awk -F, '$1 == "end" { print $3 }' "$TMP/samples.csv")
  ((peak_rss <= RSS_MAX_MIB * 1024)) || failures+=("RSS peaked at $peak_rss KiB > $RSS_MAX_MIB MiB")
  if ((q2_rss > 0 && q4_rss > 0)); then
    ((q4_rss - q2_rss <= RSS_GROWTH_MIB * 1024)) ||
      failures+=("RSS grew from $q2_rss KiB (2nd quarter peak) to $q4_rss KiB (last quarter peak): more than $RSS_GROWTH_MIB MiB")
  fi
  ((peak_fds <= FD_MAX)) || failures+=("open fds peaked at $peak_fds > $FD_MAX")
  ((end_fds <= idle_fds + FD_SLACK)) || failures+=("open fds: $end_fds 240 s after the traffic vs $idle_fds idle (slack $FD_SLACK)")
  ((end_active == 0)) || failures+=("certguard_connections_active is $end_active at the end")
  kill -0 "$PROXY_PID" 2>/dev/null || failures+=("certguard exited during the soak")

  {
    printf '\ncertguard soak: %s min, reloads every %s s (CRL re-signed + policy toggled + SIGHUP), %s CPUs\n' \
      "$MINUTES" "$RELOAD_EVERY" "$(nproc)"
    printf '  allowed HTTP/1.1 keep-alive   %8d ok %6d failed\n' "$h1_ok" "$h1_bad"
    printf '  allowed HTTP/2                %8d ok %6d failed\n' "$h2_ok" "$h2_bad"
    printf '  allowed new conn per request  %8d ok %6d failed\n' "$nc_ok" "$nc_bad"
    printf '  allowed slow uploads (64 KiB) %8d ok %6d failed\n' "$slow_ok" "$slow_bad"
    printf '  denied (403 expected)         %8d ok %6d wrong\n' "$denied_ok" "$denied_bad"
    printf '  handshake must fail           %8d ok %6d wrong\n' "$hs_ok" "$hs_bad"
    printf '  idle TLS clients cut (<= 8 s) %8d ok %6d wrong\n' "$idle_ok" "$idle_bad"
    printf '  oha deadline aborts (HTTP/2, not counted as failures): %d\n' "$(oha_aborted "$TMP/oha-h2.json")"
    printf '  reloads: %d requested, %d succeeded, %d failed\n' "$requested" "$reload_ok" "$reload_failed"
    printf '  RSS KiB: idle %d, peak %d, 2nd-quarter peak %d, last-quarter peak %d, end %d (bounds: %d MiB max, +%d MiB growth)\n' \
      "$idle_rss" "$peak_rss" "$q2_rss" "$q4_rss" "$end_rss" "$RSS_MAX_MIB" "$RSS_GROWTH_MIB"
    printf '  open fds: idle %d, peak %d, end %d, back within slack %s s after the traffic (bounds: %d max, end <= idle + %d)\n' \
      "$idle_fds" "$peak_fds" "$end_fds" "$settled" "$FD_MAX" "$FD_SLACK"
    printf '  connections_active at the end: %d\n' "$end_active"
    if ((${#failures[@]} == 0)); then
      printf 'PASS\n'
    else
      for f in "${failures[@]}"; do
        printf 'FAIL: %s\n' "$f"
      done
    fi
  } | tee "$TMP/summary.txt"

  if [[ -n "$SOAK_RESULTS" ]]; then
    mkdir -p "$SOAK_RESULTS"
    cp "$TMP"/samples.csv "$TMP"/oha-*.json "$TMP/summary.txt" "$SOAK_RESULTS"/
    log "results copied to $SOAK_RESULTS"
  fi
  ((${#failures[@]} == 0))
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
  main "$@"
fi
