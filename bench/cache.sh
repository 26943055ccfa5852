#!/usr/bin/env bash
# Binary cache benchmark: Gradient against nginx (a static `nix copy --to file://` tree) and Harmonia (serving the
# local store), all three on the same paths in one run on this machine, ROUNDS rounds (default 2), medians.
# Prints narinfo requests/s (wrk, 2 threads x 16 connections over 300 narinfos), NAR MiB/s (8 parallel downloads of
# a 1 GiB NAR) and peak RSS while serving them, for each server, with Gradient's ratios against both; Gradient's RSS
# right after start and after a 1 GiB push; and what a private cache (HTTP Basic, Bearer) costs over a public one.
# Targets: ratios >= 1.0, Gradient's peak RSS <= 32 MB, private <= 10 % slower. Printed, never asserted.
#
# Harmonia is built once from ../shared/anchors/harmonia (or $HARMONIA_SRC), from a copy outside this repository,
# into ${XDG_CACHE_HOME:-~/.cache}/gradient-bench/harmonia-target, reused by later runs; when it cannot be built
# the run says so in one line and goes on without it.
# Usage: bench/cache.sh [ROUNDS]   (installs nginx, wrk and Nix with apt-get when missing; needs ~4 GiB of disk)
#        GRADIENT_SERVER=path/to/gradient-server bench/cache.sh   measures that binary instead of building one
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
. bench/lib.sh
rounds=${1:-2}

ensure_packages nginx-light wrk nix-bin curl jq bc
ensure_rust
# GRADIENT_SERVER: a gradient-server binary to measure instead of building this checkout's (to compare builds).
server_bin=${GRADIENT_SERVER:-}
if [ -z "$server_bin" ]; then
  say "building gradient-server (release)"
  cargo build --release --locked -p gradient-server >&2
  server_bin="${CARGO_TARGET_DIR:-target}/release/gradient-server"
fi

export NIX_CONFIG=$'experimental-features = nix-command flakes\nsandbox = false\nsubstituters =\nnarinfo-cache-positive-ttl = 0\nnarinfo-cache-negative-ttl = 0'
work=$(mktemp -d /tmp/gradient-bench.XXXXXX)
chmod 755 "$work"   # nginx's workers run as an unprivileged user
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_for() { for _ in $(seq 1 200); do curl -fs "$1" >/dev/null && return 0; sleep 0.1; done; return 1; }

# Harmonia: built from a copy of its source into a target directory kept between runs. Sets $harmonia to the
# binary, or leaves it empty with one line saying why.
harmonia=""
bench_cache="${XDG_CACHE_HOME:-$HOME/.cache}/gradient-bench"
harmonia_src="${HARMONIA_SRC:-../shared/anchors/harmonia}"
if [ ! -f "$harmonia_src/Cargo.toml" ]; then
  echo "Harmonia skipped: no source at $harmonia_src (set HARMONIA_SRC)" >&2
else
  say "building Harmonia (release, once; $bench_cache/harmonia-target)"
  mkdir -p "$bench_cache"
  rm -rf "$bench_cache/harmonia-src"
  cp -a "$harmonia_src" "$bench_cache/harmonia-src"   # mtimes kept: a rerun rebuilds nothing
  if (cd "$bench_cache/harmonia-src" && env -u CARGO_TARGET_DIR cargo build --release --locked -p harmonia-cache \
      --target-dir "$bench_cache/harmonia-target") >"$bench_cache/harmonia-build.log" 2>&1; then
    harmonia="$bench_cache/harmonia-target/release/harmonia-cache"
  else
    echo "Harmonia skipped: it did not build with $(rustc --version) (see $bench_cache/harmonia-build.log)" >&2
  fi
fi

say "building the benchmark paths (300 small ones for narinfos, a 1 GiB one for NARs)"
bench_cache_paths "$work"
lhash=$(basename "$large" | cut -c1-32)

rss_of() { # the resident set of these processes together, in KiB
  local total=0 kb
  for p in "$@"; do kb=$(awk '/VmRSS/ {print $2}' "/proc/$p/status" 2>/dev/null || echo 0); total=$((total + ${kb:-0})); done
  echo "$total"
}

say "starting Gradient"
gport=$(free_port)
GRADIENT_BASE_DIR="$work/gradient" GRADIENT_PORT=$gport GRADIENT_LOG_LEVEL_DEFAULT=warn \
  "$server_bin" >"$work/gradient.log" 2>&1 &
gpid=$!; pids+=($gpid)
g="http://127.0.0.1:$gport"
wait_for "$g/api/v1/health" || die "Gradient did not start (see its log below)"$'\n'"$(cat "$work/gradient.log")"
sleep 1
g_rss_start=$(rss_of "$gpid")
api="$g/api/v1"
jwt=$(bench_sign_in "$api")
key=$(bench_api_key "$api" "$jwt")
for c in 'bench","public":true' 'private","public":false'; do
  curl -fs -X POST "$api/caches" -H "Authorization: Bearer $key" -H 'Content-Type: application/json' \
    -d "{\"name\":\"$c}" >/dev/null
done
echo "machine 127.0.0.1 login bench password $key" > "$work/netrc"
basic="Authorization: Basic $(printf 'bench:%s' "$key" | base64 -w0)"
bearer="Authorization: Bearer $key"

say "pushing with nix copy (uncompressed NARs, as in the file:// tree)"
copy() { nix copy --to "$@" 2>>"$work/nix-copy.log" || die "nix copy failed: $(tail -n 5 "$work/nix-copy.log")"; }
copy "$g/cache/bench?compression=none" --option netrc-file "$work/netrc" "$large"
g_rss_push=$(rss_of "$gpid")
copy "$g/cache/bench?compression=none" --option netrc-file "$work/netrc" "${small[@]}"
copy "$g/cache/private?compression=none" --option netrc-file "$work/netrc" "$large" "${small[@]}"
copy "file://$work/tree?compression=none" "$large" "${small[@]}"

say "starting nginx on the file:// tree"
nport=$(free_port)
mkdir -p "$work/nginx"
cat > "$work/nginx/nginx.conf" <<CONF
worker_processes 2;
pid $work/nginx/nginx.pid;
error_log $work/nginx/error.log;
events { worker_connections 1024; }
http {
  access_log off;
  sendfile on;
  types { text/x-nix-narinfo narinfo; }
  server { listen 127.0.0.1:$nport; root $work/tree; location /cache/bench/ { alias $work/tree/; } }
}
CONF
nginx -c "$work/nginx/nginx.conf" -g 'daemon off;' &
npid=$!; pids+=($npid)
n="http://127.0.0.1:$nport"
wait_for "$n/cache/bench/nix-cache-info" || die "nginx did not start"

h=""
if [ -n "$harmonia" ]; then
  say "starting Harmonia on the local store (2 workers, signing, no compression)"
  nix-store --generate-binary-cache-key bench-harmonia-1 "$work/harmonia.secret" "$work/harmonia.pub"
  hport=$(free_port)
  cat > "$work/harmonia.toml" <<CONF
bind = "127.0.0.1:$hport"
workers = 2
enable_compression = false
sign_key_paths = [ "$work/harmonia.secret" ]
CONF
  CONFIG_FILE="$work/harmonia.toml" RUST_LOG=error "$harmonia" >"$work/harmonia.log" 2>&1 &
  hpid=$!; pids+=($hpid)
  if wait_for "http://127.0.0.1:$hport/nix-cache-info"; then
    h="http://127.0.0.1:$hport"
  else
    echo "Harmonia skipped: it did not start ($(tail -n 1 "$work/harmonia.log"))" >&2
  fi
fi

# Each server's URL prefix for a cache file, and its processes (nginx's master and workers).
prefix() { case $1 in nginx) echo "$n/cache/bench" ;; harmonia) echo "$h" ;; *) echo "$g/cache/${2:-bench}" ;; esac; }
procs() { case $1 in nginx) echo "$npid $(pgrep -P "$npid" | tr '\n' ' ')" ;; harmonia) echo "$hpid" ;; *) echo "$gpid" ;; esac; }
servers=(nginx gradient)
[ -n "$h" ] && servers=(nginx harmonia gradient)

# Every server must answer 200 with the same NAR bytes, or the comparison means nothing.
nar_url() { curl -fs -H "$bearer" "$(prefix "$1" "${3:-}")/$2.narinfo" | sed -n 's/^URL: //p'; }
declare -A lurl
for s in "${servers[@]}"; do
  lurl[$s]=$(nar_url "$s" "$lhash")
  [ -n "${lurl[$s]}" ] || die "$s does not serve the narinfo of $large"
done
lurl[private]=$(nar_url gradient "$lhash" private)
say "checking that every server serves the same 1 GiB NAR"
ref=$(curl -fs "$(prefix gradient)/${lurl[gradient]}" | sha256sum)
for s in "${servers[@]}"; do
  [ "$(curl -fs "$(prefix "$s")/${lurl[$s]}" | sha256sum)" = "$ref" ] || die "$s serves another NAR for $large"
done

# wrk cycles through the 300 narinfos (a Lua script per prefix).
narinfo_script() {
  { echo 'local paths = {'
    for p in "${small[@]}"; do echo "  \"$1/$(basename "$p" | cut -c1-32).narinfo\","; done
    echo '}'
    echo 'local i = 0'
    echo 'request = function() i = i + 1; return wrk.format("GET", paths[i % #paths + 1]) end'
  } > "$2"
}
rps() { # URL-base path-prefix [header]
  local script="$work/wrk-$RANDOM.lua"
  narinfo_script "$2" "$script"
  local out
  out=$(wrk -t2 -c16 -d10s -s "$script" -H "${3:-X-Bench: 1}" "$1")
  if grep -q 'Non-2xx' <<<"$out"; then echo "wrk on $1$2 got errors: $out" >&2; kill -TERM $$; fi
  awk '/Requests\/sec/ {print $2}' <<<"$out"
}
# 8 parallel downloads of the 1 GiB NAR: MiB/s over the whole, and the peak RSS of the server meanwhile.
nar_run() { # URL pids [header]
  local url=$1 procs=$2 hdr=${3:-X-Bench: 1} peak=0 now t0 t1 dl=()
  t0=$(date +%s.%N)
  for _ in $(seq 1 8); do curl -fs -o /dev/null -H "$hdr" "$url" & dl+=($!); done
  # shellcheck disable=SC2086
  # The downloads' own pids, not `jobs`: inside `$(...)` bash also lists the calling shell's jobs (the servers).
  alive() { local p; for p in "${dl[@]}"; do kill -0 "$p" 2>/dev/null && return 0; done; return 1; }
  while alive; do now=$(rss_of $procs); [ "$now" -gt "$peak" ] && peak=$now; sleep 0.05; done
  for p in "${dl[@]}"; do wait "$p" || die "a download of $url failed"; done
  t1=$(date +%s.%N)
  echo "$(echo "8 * ${size_mib} / ($t1 - $t0)" | bc -l) $peak"
}
size_mib=$(echo "$(curl -fsI "$(prefix gradient)/${lurl[gradient]}" | tr -d '\r' | awk 'tolower($1)=="content-length:" {print $2}') / 1048576" | bc -l)

declare -A res
add() { res[$1]="${res[$1]:-} $2"; }
for r in $(seq 1 "$rounds"); do
  for s in "${servers[@]}"; do
    say "round $r/$rounds: $s"
    base=$(prefix "$s"); host=${base%%/cache/*}; path=${base#"$host"}
    add "rps $s" "$(rps "$host" "$path")"
    read -r mib peak < <(nar_run "$base/${lurl[$s]}" "$(procs "$s")")
    add "mib $s" "$mib"; add "rss $s" "$peak"
  done
  say "round $r/$rounds: Gradient's private cache (Basic, Bearer)"
  add "rps basic" "$(rps "$g" /cache/private "$basic")"
  add "rps bearer" "$(rps "$g" /cache/private "$bearer")"
  read -r mib _ < <(nar_run "$(prefix gradient private)/${lurl[private]}" "$gpid" "$basic")
  add "mib basic" "$mib"
done

# Of Gradient's resident set, the part that is its binary's code and data mapped from the file (not its heap).
g_rss_file=$(awk '/RssFile/ {print $2}' "/proc/$gpid/status")

median() { tr ' ' '\n' | grep . | sort -g | awk '{v[NR]=$1} END {print (NR%2) ? v[(NR+1)/2] : (v[NR/2]+v[NR/2+1])/2}'; }
m() { echo "${res[$1]:-}" | median; }
ratio() { [ -n "$2" ] && [ "$2" != 0 ] && printf '%.2f' "$(echo "$1 / $2" | bc -l)" || echo "-"; }
mb() { printf '%.1f' "$(echo "$1 / 1024" | bc -l)"; }

echo
echo "medians of $rounds rounds; $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg) at the end"
printf '%-28s %10s %10s %10s %10s %12s\n' "" nginx Harmonia Gradient "G/nginx" "G/Harmonia"
for metric in rps mib; do
  label=$([ $metric = rps ] && echo "narinfo requests/s" || echo "NAR MiB/s (8 x 1 GiB)")
  gn=$(m "$metric gradient"); nn=$(m "$metric nginx"); hn=$(m "$metric harmonia")
  printf '%-28s %10.0f %10s %10.0f %10s %12s\n' "$label" "$nn" "${hn:+$(printf '%.0f' "$hn")}" "$gn" \
    "$(ratio "$gn" "$nn")" "$(ratio "$gn" "$hn")"
done
hr=$(m "rss harmonia")
printf '%-28s %10s %10s %10s %10s %12s\n' "peak RSS serving them, MB" "$(mb "$(m "rss nginx")")" \
  "${hr:+$(mb "$hr")}" "$(mb "$(m "rss gradient")")" "" "$(ratio "$(m "rss gradient")" "$hr")"
printf '%-28s %10s\n' "Gradient peak RSS per round" "$(for k in ${res["rss gradient"]}; do printf '%s ' "$(mb "$k")"; done)"
printf '%-28s %10s\n' "Gradient RSS after start, MB" "$(mb "$g_rss_start")"
printf '%-28s %10s\n' "Gradient RSS after 1 GiB push" "$(mb "$g_rss_push")"
printf '%-28s %10s  (of its RSS at the end: code and data mapped from its binary)\n' "Gradient RSS file-backed, MB" "$(mb "$g_rss_file")"
pub_rps=$(m "rps gradient"); pub_mib=$(m "mib gradient")
printf '%-28s %10.0f  (%+.1f %% against public)\n' "private narinfo/s, Basic" "$(m "rps basic")" \
  "$(echo "($pub_rps / $(m "rps basic") - 1) * 100" | bc -l)"
printf '%-28s %10.0f  (%+.1f %% against public)\n' "private narinfo/s, Bearer" "$(m "rps bearer")" \
  "$(echo "($pub_rps / $(m "rps bearer") - 1) * 100" | bc -l)"
printf '%-28s %10.0f  (%+.1f %% against public)\n' "private NAR MiB/s, Basic" "$(m "mib basic")" \
  "$(echo "($pub_mib / $(m "mib basic") - 1) * 100" | bc -l)"
[ -n "$h" ] || echo "(Harmonia not measured: see the line above about it)"
echo "targets: Gradient >= 1.0x nginx and Harmonia on both, peak RSS <= 32 MB, private costs <= 10 %"
