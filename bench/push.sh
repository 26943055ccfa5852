#!/usr/bin/env bash
# Push benchmark: what `POST /cache/{cache}/import` costs the server per small store path. Builds N tiny paths
# (N outputs of `echo i > $out`, and their N .drv files), then, ROUNDS times, imports them into a fresh cache as
# the worker does (one `nix-store --export` stream) and prints milliseconds per path for the outputs and for the
# .drv files, with the medians. Printed, never asserted.
# Usage: bench/push.sh [ROUNDS] [N]   (defaults 3 and 300)
#        GRADIENT_SERVER=path/to/gradient-server bench/push.sh   measures that binary (default: this checkout's
#        release build; GRADIENT_PUSH_DEBUG=1 builds and measures the debug one instead)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
. bench/lib.sh
rounds=${1:-3}
n=${2:-300}

ensure_packages nix-bin curl jq python3 bc
ensure_rust
server_bin=${GRADIENT_SERVER:-}
if [ -z "$server_bin" ]; then
  profile=release; flag=--release
  [ -n "${GRADIENT_PUSH_DEBUG:-}" ] && { profile=debug; flag=; }
  say "building gradient-server ($profile)"
  cargo build $flag --locked -p gradient-server >&2
  server_bin="${CARGO_TARGET_DIR:-target}/$profile/gradient-server"
fi

export NIX_CONFIG=$'experimental-features = nix-command flakes\nsandbox = false\nsubstituters ='
work=$(mktemp -d /tmp/gradient-push-bench.XXXXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_for() { for _ in $(seq 1 300); do curl -fs "$1" >/dev/null && return 0; sleep 0.1; done; return 1; }

say "building $n small paths"
cat > "$work/paths.nix" <<NIX
builtins.genList (i: derivation {
  name = "gradient-push-bench-\${toString i}";
  system = builtins.currentSystem;
  builder = "/bin/sh";
  args = [ "-c" "echo \${toString i} > \$out" ];
}) $n
NIX
nix-build --no-out-link --max-jobs 4 "$work/paths.nix" >"$work/outs" 2>"$work/nix-build.log" \
  || die "$(tail -n 20 "$work/nix-build.log")"
mapfile -t outs <"$work/outs"
nix-store --query --deriver "${outs[@]}" >"$work/drvs"
mapfile -t drvs <"$work/drvs"
nix-store --export "${outs[@]}" >"$work/outs.export" 2>/dev/null
nix-store --export "${drvs[@]}" >"$work/drvs.export" 2>/dev/null

say "starting Gradient ($server_bin)"
gport=$(free_port)
GRADIENT_BASE_DIR="$work/gradient" GRADIENT_PORT=$gport GRADIENT_LOG_LEVEL_DEFAULT=warn \
  "$server_bin" >"$work/gradient.log" 2>&1 &
pids+=($!)
g="http://127.0.0.1:$gport"
wait_for "$g/api/v1/health" || die "Gradient did not start (see its log below)"$'\n'"$(cat "$work/gradient.log")"
api="$g/api/v1"
jwt=$(bench_sign_in "$api")
key=$(bench_api_key "$api" "$jwt")

# Milliseconds per path of one import of FILE (COUNT paths) into a new cache NAME.
push() {
  local name=$1 file=$2 count=$3 t0 t1 answer
  curl -fs -X POST "$api/caches" -H "Authorization: Bearer $key" -H 'Content-Type: application/json' \
    -d "{\"name\":\"$name\",\"public\":false}" >/dev/null
  t0=$(date +%s%N)
  answer=$(curl -fsS -X POST "$g/cache/$name/import" -H "Authorization: Bearer $key" \
    -H 'Content-Type: application/octet-stream' --data-binary "@$file") || die "import into $name failed"
  t1=$(date +%s%N)
  [ "$answer" = "imported $count" ] || die "import into $name answered '$answer', not 'imported $count'"
  echo "scale=2; ($t1 - $t0) / 1000000 / $count" | bc
}
median() { sort -n | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }

o=(); d=()
for r in $(seq 1 "$rounds"); do
  o+=("$(push "outs$r" "$work/outs.export" "$n")")
  d+=("$(push "drvs$r" "$work/drvs.export" "$n")")
  echo "round $r: outputs ${o[-1]} ms/path, .drv files ${d[-1]} ms/path"
done
echo "median of $rounds: outputs $(printf '%s\n' "${o[@]}" | median) ms/path, .drv files $(printf '%s\n' "${d[@]}" | median) ms/path ($n paths each, one import stream)"
