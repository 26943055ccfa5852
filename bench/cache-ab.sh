#!/usr/bin/env bash
# Two gradient-server binaries side by side on the same paths, in one run, rounds alternating A and B: what a
# change to the cache costs or gains, measured on a shared machine where two separate runs would not compare.
# Prints, for each: RSS after start and after a 1 GiB push, public / Basic / Bearer narinfo requests/s (wrk,
# 2 threads x 16 connections over 300 narinfos), NAR MiB/s (8 parallel downloads of a 1 GiB NAR) with the peak
# RSS meanwhile; medians of ROUNDS rounds (default 3), and B's ratio to A. Printed, never asserted.
# Usage: bench/cache-ab.sh A-BINARY B-BINARY [ROUNDS]
#   e.g. bench/cache-ab.sh /tmp/gradient-server.main target/release/gradient-server 3
#   A_ENV / B_ENV: extra environment for A or B (`B_ENV="MALLOC_ARENA_MAX=1"`).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
. bench/lib.sh
[ $# -ge 2 ] || die "usage: bench/cache-ab.sh A-BINARY B-BINARY [ROUNDS]"
declare -A bin=([a]=$1 [b]=$2) envs=([a]=${A_ENV:-} [b]=${B_ENV:-})
rounds=${3:-3}
ensure_packages wrk nix-bin curl jq bc

export NIX_CONFIG=$'experimental-features = nix-command flakes\nsandbox = false\nsubstituters =\nnarinfo-cache-positive-ttl = 0\nnarinfo-cache-negative-ttl = 0'
work=$(mktemp -d /tmp/gradient-ab.XXXXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_for() { for _ in $(seq 1 200); do curl -fs "$1" >/dev/null && return 0; sleep 0.1; done; return 1; }
rss_of() { awk '/VmRSS/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }

say "building the benchmark paths (the same as bench/cache.sh's)"
bench_cache_paths "$work"
lhash=$(basename "$large" | cut -c1-32)

declare -A url pid key nar res
add() { res[$1]="${res[$1]:-} $2"; }
for s in a b; do
  say "starting $s (${bin[$s]})"
  port=$(free_port)
  # shellcheck disable=SC2086
  env ${envs[$s]} GRADIENT_BASE_DIR="$work/$s" GRADIENT_PORT=$port GRADIENT_LOG_LEVEL_DEFAULT=warn \
    "${bin[$s]}" >"$work/$s.log" 2>&1 &
  pid[$s]=$!; pids+=("${pid[$s]}")
  url[$s]="http://127.0.0.1:$port"
  wait_for "${url[$s]}/api/v1/health" || die "$s did not start: $(cat "$work/$s.log")"
  sleep 1
  add "start $s" "$(rss_of "${pid[$s]}")"
  api="${url[$s]}/api/v1"
  jwt=$(bench_sign_in "$api")
  key[$s]=$(bench_api_key "$api" "$jwt")
  for c in 'bench","public":true' 'private","public":false'; do
    curl -fs -X POST "$api/caches" -H "Authorization: Bearer ${key[$s]}" -H 'Content-Type: application/json' \
      -d "{\"name\":\"$c}" >/dev/null
  done
  echo "machine 127.0.0.1 login bench password ${key[$s]}" > "$work/netrc-$s"
  copy() { nix copy --to "$@" 2>>"$work/nix-copy.log" || die "nix copy failed: $(tail -n 5 "$work/nix-copy.log")"; }
  say "pushing to $s"
  copy "${url[$s]}/cache/bench?compression=none" --option netrc-file "$work/netrc-$s" "$large"
  add "push $s" "$(rss_of "${pid[$s]}")"
  copy "${url[$s]}/cache/bench?compression=none" --option netrc-file "$work/netrc-$s" "${small[@]}"
  copy "${url[$s]}/cache/private?compression=none" --option netrc-file "$work/netrc-$s" "$large" "${small[@]}"
  nar[$s]=$(curl -fs "${url[$s]}/cache/bench/$lhash.narinfo" | sed -n 's/^URL: //p')
  [ -n "${nar[$s]}" ] || die "$s does not serve the narinfo of $large"
done

rps() { # base path-prefix header
  local script="$work/wrk-$RANDOM.lua" out
  { echo 'local paths = {'
    for p in "${small[@]}"; do echo "  \"$2/$(basename "$p" | cut -c1-32).narinfo\","; done
    echo '}'
    echo 'local i = 0'
    echo 'request = function() i = i + 1; return wrk.format("GET", paths[i % #paths + 1]) end'
  } > "$script"
  out=$(wrk -t2 -c16 -d10s -s "$script" -H "$3" "$1")
  if grep -q 'Non-2xx' <<<"$out"; then echo "wrk on $1$2 got errors: $out" >&2; kill -TERM $$; fi
  awk '/Requests\/sec/ {print $2}' <<<"$out"
}
size_mib=$(echo "$(stat -c %s "$large") / 1048576" | bc -l)
nar_run() { # url pid server
  local peak=0 now t0 t1 dl=() p
  t0=$(date +%s.%N)
  for _ in $(seq 1 8); do curl -fs -o /dev/null "$1" & dl+=($!); done
  alive() { local p; for p in "${dl[@]}"; do kill -0 "$p" 2>/dev/null && return 0; done; return 1; }
  while alive; do
    now=$(rss_of "$2")
    if [ "$now" -gt "$peak" ]; then
      peak=$now
      cp "/proc/$2/smaps" "$work/peak-smaps-$3" 2>/dev/null || true
      # Its threads then: SQLite's connections are one thread each (sqlx-sqlite-worker-N).
      grep -l sqlx-sqlite /proc/"$2"/task/*/comm 2>/dev/null | wc -l >"$work/peak-sqlite-$3" || true
      awk '/^Threads/ {print $2}' "/proc/$2/status" >"$work/peak-threads-$3" 2>/dev/null || true
    fi
    sleep 0.05
  done
  for p in "${dl[@]}"; do wait "$p" || die "a download of $1 failed"; done
  t1=$(date +%s.%N)
  echo "$(echo "8 * ${size_mib} / ($t1 - $t0)" | bc -l) $peak"
}

for r in $(seq 1 "$rounds"); do
  order="a b"; [ $((r % 2)) -eq 0 ] && order="b a"
  for s in $order; do
    say "round $r/$rounds: $s"
    basic="Authorization: Basic $(printf 'bench:%s' "${key[$s]}" | base64 -w0)"
    add "rps $s" "$(rps "${url[$s]}" /cache/bench "X-Bench: 1")"
    add "basic $s" "$(rps "${url[$s]}" /cache/private "$basic")"
    add "bearer $s" "$(rps "${url[$s]}" /cache/private "Authorization: Bearer ${key[$s]}")"
    read -r mib peak < <(nar_run "${url[$s]}/cache/bench/${nar[$s]}" "${pid[$s]}" "$s")
    add "mib $s" "$mib"; add "peak $s" "$peak"
  done
done

median() { tr ' ' '\n' | grep . | sort -g | awk '{v[NR]=$1} END {print (NR%2) ? v[(NR+1)/2] : (v[NR/2]+v[NR/2+1])/2}'; }
m() { echo "${res[$1]:-}" | median; }
echo
echo "medians of $rounds rounds (A: ${bin[a]} ${envs[a]}; B: ${bin[b]} ${envs[b]}); $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg) at the end"
printf '%-30s %12s %12s %8s\n' "" A B "B/A"
row() { # label metric scale
  local a b
  a=$(echo "$(m "$2 a") / $3" | bc -l); b=$(echo "$(m "$2 b") / $3" | bc -l)
  printf '%-30s %12.1f %12.1f %8.3f\n' "$1" "$a" "$b" "$(echo "$b / $a" | bc -l)"
}
row "RSS after start, MB" start 1024
row "RSS after 1 GiB push, MB" push 1024
row "narinfo/s public" rps 1
row "narinfo/s private, Basic" basic 1
row "narinfo/s private, Bearer" bearer 1
row "NAR MiB/s (8 x 1 GiB)" mib 1
row "peak RSS serving, MB" peak 1024
for s in a b; do
  printf '%s: private costs Basic %+.1f %%, Bearer %+.1f %% over public\n' "$s" \
    "$(echo "($(m "rps $s") / $(m "basic $s") - 1) * 100" | bc -l)" \
    "$(echo "($(m "rps $s") / $(m "bearer $s") - 1) * 100" | bc -l)"
done
# Where the last peak's resident set was, from /proc/PID/smaps: the binary and libraries (file-backed), glibc's
# malloc (its main heap, and its other arenas: 64 MiB-aligned reservations), thread stacks, the rest (mimalloc).
smaps_breakdown() {
  python3 - "$1" <<'PY'
import re, sys
maps = []
for line in open(sys.argv[1]):
    if re.match(r'^[0-9a-f]+-[0-9a-f]+ ', line):
        f = line.split()
        a, b = (int(x, 16) for x in f[0].split('-'))
        maps.append({'a': a, 'b': b, 'perm': f[1], 'name': f[5] if len(f) > 5 else '', 'rss': 0})
    elif line.startswith('Rss:'):
        maps[-1]['rss'] = int(line.split()[1])
cats = {}
for i, m in enumerate(maps):
    nxt = maps[i + 1] if i + 1 < len(maps) else None
    prev = maps[i - 1] if i else None
    if m['name'].startswith('/'):
        c = 'files'
    elif m['name'] == '[heap]':
        c = 'glibc main heap'
    elif m['name']:
        c = m['name']
    elif m['a'] % (64 << 20) == 0 and nxt and nxt['a'] == m['b'] and nxt['perm'].startswith('---') \
            and nxt['b'] - m['a'] == 64 << 20:
        c = 'glibc arenas'
    elif prev and prev['b'] == m['a'] and prev['perm'].startswith('---') and prev['b'] - prev['a'] <= 8192:
        c = 'stacks'
    else:
        c = 'other anonymous (mimalloc)'
    cats[c] = cats.get(c, 0) + m['rss']
print(', '.join(f'{k} {v / 1024:.1f}' for k, v in sorted(cats.items(), key=lambda x: -x[1]) if v >= 100))
PY
}
for s in a b; do
  [ -f "$work/peak-smaps-$s" ] && echo "$s's last peak, MB: $(smaps_breakdown "$work/peak-smaps-$s");" \
    "threads $(cat "$work/peak-threads-$s" 2>/dev/null), of them SQLite connections $(cat "$work/peak-sqlite-$s" 2>/dev/null)"
done
