#!/usr/bin/env bash
# Run every certguard fuzz target (or those named as arguments) for a bounded time each, with
# libFuzzer through cargo-fuzz. Not part of CI (too slow); see the README, "Reliability".
#
#   tests/fuzz/run.sh                     # every target, FUZZ_SECONDS (default 60) each
#   FUZZ_SECONDS=300 tests/fuzz/run.sh crl  # one target for 5 minutes
#
# Needs cargo-fuzz (`cargo install cargo-fuzz --locked`) and a toolchain that takes
# `-Zsanitizer`: the nightly toolchain when rustup has one (AddressSanitizer, the default),
# else the stable toolchain with RUSTC_BOOTSTRAP=1 and no sanitizer (FUZZ_SANITIZER=none);
# set FUZZ_TOOLCHAIN / FUZZ_SANITIZER to choose. The corpus grows in tests/fuzz/corpus/<target>
# (seeded from config/, certs-dev/ and a few hand-written inputs), crashes land in
# tests/fuzz/artifacts/<target>/; both are git-ignored. Exit status: non-zero if any target found a
# crash (the artifacts are listed), each target still gets its run.
#
# Settings (environment):
#   FUZZ_SECONDS=60     seconds per target (libFuzzer -max_total_time)
#   FUZZ_JOBS=1         parallel fuzzing processes per target (-fork)
#   FUZZ_TOOLCHAIN=     rustup toolchain (default: nightly if installed, else stable)
#   FUZZ_SANITIZER=     address | none (default: address on nightly, none on stable)
#   FUZZ_RSS_MB=2048    libFuzzer -rss_limit_mb
set -euo pipefail

cd "$(dirname "$0")"
FUZZ_SECONDS=${FUZZ_SECONDS:-60}
FUZZ_JOBS=${FUZZ_JOBS:-1}
FUZZ_RSS_MB=${FUZZ_RSS_MB:-2048}
[[ "$FUZZ_SECONDS" =~ ^[0-9]+$ && "$FUZZ_SECONDS" -ge 1 ]] || {
  echo "FUZZ_SECONDS must be a positive number" >&2
  exit 2
}
[[ "$FUZZ_JOBS" =~ ^[1-9][0-9]*$ ]] || {
  echo "FUZZ_JOBS must be a positive number" >&2
  exit 2
}

log() { printf '[fuzz] %s\n' "$*" >&2; }

command -v cargo-fuzz >/dev/null 2>&1 || {
  log "cargo-fuzz is missing: cargo install cargo-fuzz --locked"
  exit 2
}

if [[ -z "${FUZZ_TOOLCHAIN:-}" ]]; then
  if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
    FUZZ_TOOLCHAIN=nightly
  else
    FUZZ_TOOLCHAIN=stable
  fi
fi
if [[ "$FUZZ_TOOLCHAIN" == nightly* ]]; then
  FUZZ_SANITIZER=${FUZZ_SANITIZER:-address}
else
  # cargo-fuzz passes -Z flags to rustc; the stable compiler accepts them with
  # RUSTC_BOOTSTRAP=1. Without the sanitizer runtime only panics and aborts are caught.
  export RUSTC_BOOTSTRAP=1
  FUZZ_SANITIZER=${FUZZ_SANITIZER:-none}
fi
log "toolchain $FUZZ_TOOLCHAIN, sanitizer $FUZZ_SANITIZER, ${FUZZ_SECONDS}s per target"

# --- seeds -----------------------------------------------------------------------------------

pem_to_der() { sed '/-----/d' "$1" | base64 -d; }

seed() {
  local c=corpus f n
  mkdir -p "$c"/{config,identity_der,normalize,framing,crl,pin}
  for f in ../../config/certguard.yaml ../../config/kubernetes/*.yaml; do
    [[ -f "$f" ]] && cp "$f" "$c/config/seed-$(basename "$f")"
  done
  for f in ../../certs-dev/*.crt; do
    n=$(basename "$f" .crt)
    cp "$f" "$c/pin/seed-$n.pem"
    pem_to_der "$f" >"$c/identity_der/seed-$n.der"
  done
  for f in ../../certs-dev/*.crl; do
    n=$(basename "$f" .crl)
    cp "$f" "$c/crl/seed-$n.pem"
    pem_to_der "$f" >"$c/crl/seed-$n.der"
  done
  printf '3f:a2:00:11' >"$c/pin/seed-sha256.txt"
  printf 'AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=' >"$c/pin/seed-spki.txt"
  # normalize: the first byte picks the method.
  printf '\x00/a/./b/../c//d%%2e%%2E/%%41?x=1' >"$c/normalize/seed-dots"
  printf '\x00/public/..;/admin' >"$c/normalize/seed-params"
  printf '\x01*' >"$c/normalize/seed-options"
  printf '\x00/caf%%c3%%a9/{x}|y' >"$c/normalize/seed-escapes"
  # framing: the first byte seeds the cut points.
  printf '\x05GET / HTTP/1.1\r\nHost: a\r\n\r\nGET /b HTTP/1.1\r\nHost: a\r\n\r\n' \
    >"$c/framing/seed-pipelined"
  printf '\x03POST /u HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n0\r\nX-T: 1\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n' \
    >"$c/framing/seed-chunked"
  printf '\x07POST /u HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n' \
    >"$c/framing/seed-smuggle"
  printf '\x01POST /u HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\n\r\nbodyGET / HTTP/1.1\r\n\r\n' \
    >"$c/framing/seed-length"
}
seed

# --- run -------------------------------------------------------------------------------------

targets=("$@")
if ((${#targets[@]} == 0)); then
  mapfile -t targets < <(cargo "+$FUZZ_TOOLCHAIN" fuzz list --fuzz-dir "$PWD")
fi

log "building ${targets[*]}"
cargo "+$FUZZ_TOOLCHAIN" fuzz build --fuzz-dir "$PWD" --sanitizer "$FUZZ_SANITIZER" >/dev/null

crashed=()
summary=()
for t in "${targets[@]}"; do
  args=(-max_total_time="$FUZZ_SECONDS" -rss_limit_mb="$FUZZ_RSS_MB" -timeout=10
    -print_final_stats=1)
  [[ ! -f "dicts/$t.dict" ]] || args+=(-dict="dicts/$t.dict")
  ((FUZZ_JOBS == 1)) || args+=(-fork="$FUZZ_JOBS" -ignore_crashes=1)
  log "target $t"
  mkdir -p "artifacts/$t"
  before=$(find "artifacts/$t" -type f | wc -l)
  status=0
  cargo "+$FUZZ_TOOLCHAIN" fuzz run --fuzz-dir "$PWD" --sanitizer "$FUZZ_SANITIZER" "$t" "corpus/$t" -- \
    "${args[@]}" 2>"corpus/.$t.log" || status=$?
  runs=$(awk '/stat::number_of_executed_units:/ {s += $2} END {print s + 0}' "corpus/.$t.log")
  cov=$(awk '/ cov: / {for (i = 1; i < NF; i++) if ($i == "cov:") c = $(i + 1)} END {print c}' \
    "corpus/.$t.log")
  files=$(find "corpus/$t" -type f | wc -l)
  after=$(find "artifacts/$t" -type f | wc -l)
  summary+=("$(printf '%-14s %10s runs  cov %-6s corpus %-6s exit %s' "$t" "$runs" "${cov:-?}" "$files" "$status")")
  if ((status != 0 || after > before)); then
    crashed+=("$t")
    tail -n 30 "corpus/.$t.log" >&2
  fi
done

printf '\n'
printf '%s\n' "${summary[@]}"
if ((${#crashed[@]} > 0)); then
  printf '\ncrashes in: %s\n' "${crashed[*]}"
  for t in "${crashed[@]}"; do
    find "artifacts/$t" -type f
  done
  exit 1
fi
printf '\nno crash in %d target(s)\n' "${#targets[@]}"
