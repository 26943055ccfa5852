#!/usr/bin/env bash
# Binary cache benchmark: Gradient against nginx serving a `nix copy --to file://` tree of the same paths,
# in one run on this machine. Prints narinfo requests/s, NAR MiB/s and their ratios, and Gradient's peak
# RSS while serving 8 concurrent downloads of a 1 GiB NAR. Targets: ratios >= 0.8, RSS <= 64 MB.
# Usage: bench/cache.sh   (installs nginx, wrk and Nix with apt-get when missing; needs ~3 GiB of disk)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

ensure_packages nginx-light wrk nix-bin curl jq bc
ensure_rust
say "building gradient-server (release)"
cargo build --release --locked -p gradient-server >&2

export NIX_CONFIG=$'experimental-features = nix-command flakes\nsandbox = false\nsubstituters =\nnarinfo-cache-positive-ttl = 0\nnarinfo-cache-negative-ttl = 0'
work=$(mktemp -d /tmp/gradient-bench.XXXXXX)
chmod 755 "$work"   # nginx's workers run as an unprivileged user
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

say "building the benchmark paths (a 64 MiB path for throughput, a 1 GiB one for memory)"
cat > "$work/paths.nix" <<'NIX'
let
  mk = name: size: derivation {
    inherit name;
    system = builtins.currentSystem;
    builder = "/bin/sh";
    args = [ "-c" "/usr/bin/head -c ${size} /dev/urandom > $out" ];
  };
in { medium = mk "gradient-bench-64m" "64M"; large = mk "gradient-bench-1g" "1G"; }
NIX
medium=$(nix-build --no-out-link "$work/paths.nix" -A medium)
large=$(nix-build --no-out-link "$work/paths.nix" -A large)

say "starting Gradient"
gport=$(free_port)
GRADIENT_BASE_DIR="$work/gradient" GRADIENT_PORT=$gport GRADIENT_LOG_LEVEL_DEFAULT=warn \
  "${CARGO_TARGET_DIR:-target}/release/gradient-server" >"$work/gradient.log" 2>&1 &
gpid=$!; pids+=($gpid)
g="http://127.0.0.1:$gport"
for _ in $(seq 1 100); do curl -fs "$g/api/v1/health" >/dev/null && break; sleep 0.1; done
api="$g/api/v1"
curl -fs -X POST "$api/auth/basic/register" -H 'Content-Type: application/json' \
  -d '{"username":"bench","name":"Bench","email":"bench@example.com","password":"benchmark1"}' >/dev/null
jwt=$(curl -fs -X POST "$api/auth/basic/login" -H 'Content-Type: application/json' \
  -d '{"loginname":"bench","password":"benchmark1"}' | jq -r .message)
key=$(curl -fs -X POST "$api/user/keys" -H "Authorization: Bearer $jwt" -H 'Content-Type: application/json' \
  -d '{"name":"bench"}' | jq -r .message.key)
curl -fs -X POST "$api/caches" -H "Authorization: Bearer $key" -H 'Content-Type: application/json' \
  -d '{"name":"bench","public":true}' >/dev/null
echo "machine 127.0.0.1 login bench password $key" > "$work/netrc"

say "pushing with nix copy (uncompressed NARs, as in the file:// tree)"
nix copy --to "$g/cache/bench?compression=none" --option netrc-file "$work/netrc" "$medium" "$large"
nix copy --to "file://$work/tree?compression=none" "$medium" "$large"

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
pids+=($!)
n="http://127.0.0.1:$nport"
for _ in $(seq 1 100); do curl -fs "$n/cache/bench/nix-cache-info" >/dev/null && break; sleep 0.1; done

hash=$(basename "$medium" | cut -c1-32)
nar_url=$(curl -fs "$g/cache/bench/$hash.narinfo" | sed -n 's/^URL: //p')
[ -n "$nar_url" ] || die "Gradient does not serve the narinfo"
# Both servers must answer 200 with the same bytes, or the comparison means nothing.
for u in "$hash.narinfo" "$nar_url"; do
  for s in "$g" "$n"; do
    code=$(curl -s -o /dev/null -w '%{http_code}' "$s/cache/bench/$u")
    [ "$code" = 200 ] || die "$s/cache/bench/$u answers $code"
  done
done
cmp <(curl -fs "$g/cache/bench/$nar_url") <(curl -fs "$n/cache/bench/$nar_url") || die "the NARs differ"

# wrk: 2 threads, 32 connections, 10 s. Requests/s and bytes/s from its summary.
rps() { wrk -t2 -c32 -d10s "$1" | awk '/Requests\/sec/ {print $2}'; }
mibps() {
  wrk -t2 -c8 -d10s "$1" | awk '/Transfer\/sec/ {
    v=$2; u=substr(v, length(v)-1); n=substr(v, 1, length(v)-2);
    if (u=="GB") n*=1024; else if (u=="KB") n/=1024; else if (u!="MB") n/=1048576; print n }'
}
say "measuring narinfo requests/s"
g_rps=$(rps "$g/cache/bench/$hash.narinfo"); n_rps=$(rps "$n/cache/bench/$hash.narinfo")
say "measuring NAR MiB/s (64 MiB NAR)"
g_mib=$(mibps "$g/cache/bench/$nar_url"); n_mib=$(mibps "$n/cache/bench/$nar_url")

say "peak RSS while serving 8 concurrent downloads of the 1 GiB NAR"
lhash=$(basename "$large" | cut -c1-32)
lurl=$(curl -fs "$g/cache/bench/$lhash.narinfo" | sed -n 's/^URL: //p')
idle_kb=$(awk '/VmRSS/ {print $2}' "/proc/$gpid/status")
dl=()
for _ in $(seq 1 8); do curl -fs -o /dev/null "$g/cache/bench/$lurl" & dl+=($!); done
# Sample the resident set while the downloads run; the peak of those samples is what serving costs.
rss_kb=$idle_kb
while kill -0 "${dl[0]}" 2>/dev/null || jobs -r | grep -q curl; do
  now=$(awk '/VmRSS/ {print $2}' "/proc/$gpid/status")
  [ "$now" -gt "$rss_kb" ] && rss_kb=$now
  sleep 0.05
done
for p in "${dl[@]}"; do wait "$p"; done

printf '\n%-22s %12s %12s %8s\n' "" "Gradient" "nginx" "ratio"
printf '%-22s %12.0f %12.0f %8.2f\n' "narinfo requests/s" "$g_rps" "$n_rps" "$(echo "$g_rps / $n_rps" | bc -l)"
printf '%-22s %12.0f %12.0f %8.2f\n' "NAR MiB/s" "$g_mib" "$n_mib" "$(echo "$g_mib / $n_mib" | bc -l)"
printf '%-22s %12.1f %12s\n' "RSS before, MB" "$(echo "$idle_kb / 1024" | bc -l)" "-"
printf '%-22s %12.1f %12s\n' "peak RSS, 8x1GiB, MB" "$(echo "$rss_kb / 1024" | bc -l)" "-"
echo "targets: both ratios >= 0.8, peak RSS <= 64 MB"
