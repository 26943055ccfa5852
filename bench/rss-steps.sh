#!/usr/bin/env bash
# Where the server's memory goes, step by step: starts a gradient-server and prints its resident set (RSS), the
# anonymous part of it (heap and stacks; the rest is mostly its binary's pages) and its threads (each SQLite
# connection is one) after each step of bench/cache.sh's scenario: start, a sign-in (argon2), a 1 GiB push, 300 small
# pushes, 10 s of narinfo load (wrk, 2 threads x 16 connections), then the peak while 8 downloads of the 1 GiB NAR
# run. After the small pushes it also names the threads. One run, no comparison, no target: to find what to change.
# Usage: bench/rss-steps.sh [SERVER]   (SERVER: a gradient-server binary; default: this checkout's release build)
#        Environment such as MIMALLOC_PURGE_DELAY reaches the server.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
. bench/lib.sh
ensure_packages wrk nix-bin curl jq bc
server_bin=${1:-}
if [ -z "$server_bin" ]; then
  ensure_rust
  say "building gradient-server (release)"
  cargo build --release --locked -p gradient-server >&2
  server_bin="${CARGO_TARGET_DIR:-target}/release/gradient-server"
fi
export NIX_CONFIG=$'experimental-features = nix-command flakes\nsandbox = false\nsubstituters =\nnarinfo-cache-positive-ttl = 0\nnarinfo-cache-negative-ttl = 0'
work=$(mktemp -d /tmp/gradient-rss.XXXXXX)
gpid=""
cleanup() { [ -n "$gpid" ] && kill "$gpid" 2>/dev/null; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

say "building the paths (a 1 GiB one, 300 small ones)"
bench_cache_paths "$work"

step() { # NAME: one line of figures for the server now
  awk -v step="$1" '/VmRSS/ {r=$2} /RssAnon/ {a=$2} /Threads/ {t=$2}
    END {printf "%-22s RSS %6.1f MB  anonymous %6.1f MB  threads %3d\n", step, r/1024, a/1024, t}' "/proc/$gpid/status"
}

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
GRADIENT_BASE_DIR="$work/gradient" GRADIENT_PORT=$port GRADIENT_LOG_LEVEL_DEFAULT=warn "$server_bin" >"$work/log" 2>&1 &
gpid=$!
g="http://127.0.0.1:$port"; api="$g/api/v1"
for _ in $(seq 1 200); do curl -fs "$api/health" >/dev/null && break; sleep 0.1; done
curl -fs "$api/health" >/dev/null || die "the server did not start: $(cat "$work/log")"
sleep 1
step "after start"
jwt=$(bench_sign_in "$api")
key=$(bench_api_key "$api" "$jwt")
curl -fs -X POST "$api/caches" -H "Authorization: Bearer $key" -H 'Content-Type: application/json' \
  -d '{"name":"bench","public":true}' >/dev/null
echo "machine 127.0.0.1 login bench password $key" > "$work/netrc"
step "after a sign-in"
copy() { nix copy --quiet --to "$g/cache/bench?compression=none" --option netrc-file "$work/netrc" "$@" 2>>"$work/copy.log" \
  || die "nix copy failed: $(tail -n 5 "$work/copy.log")"; }
copy "$large"
step "after a 1 GiB push"
copy "${small[@]}"
step "after 300 small pushes"
echo "  threads by name: $(sed 's/[0-9]*$//' /proc/"$gpid"/task/*/comm | sort | uniq -c | awk '{printf "%s %s, ", $1, $2}')"
{ echo 'local paths = {'
  for p in "${small[@]}"; do echo "  \"/cache/bench/$(basename "$p" | cut -c1-32).narinfo\","; done
  echo '}'
  echo 'local i = 0'
  echo 'request = function() i = i + 1; return wrk.format("GET", paths[i % #paths + 1]) end'
} > "$work/narinfos.lua"
wrk -t2 -c16 -d10s -s "$work/narinfos.lua" "$g" >"$work/wrk.txt"
step "after narinfo load"
url=$(curl -fs "$g/cache/bench/$(basename "$large" | cut -c1-32).narinfo" | sed -n 's/^URL: //p')
peak=0; dl=()
for _ in $(seq 1 8); do curl -fs -o /dev/null "$g/cache/bench/$url" & dl+=($!); done
alive() { local p; for p in "${dl[@]}"; do kill -0 "$p" 2>/dev/null && return 0; done; return 1; }
while alive; do now=$(awk '/VmRSS/ {print $2}' "/proc/$gpid/status"); [ "$now" -gt "$peak" ] && peak=$now; sleep 0.05; done
for p in "${dl[@]}"; do wait "$p" || die "a download failed"; done
printf '%-22s RSS %6.1f MB (peak)\n' "8 downloads of 1 GiB" "$(echo "$peak / 1024" | bc -l)"
step "after the downloads"
