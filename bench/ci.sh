#!/usr/bin/env bash
# CI loop benchmark: from the trigger until every build of a flake with 300 trivial independent derivations
# plus one aggregate is done and cached, on Gradient (server + one co-located worker), against a plain
# `nix build` of the same flake on the same machine. Prints both times and their ratio (target <= 1.2).
# The two alternate for ROUNDS rounds (default 5), each on a flake new to both, and the medians are compared:
# one plain `nix build` alone varies by 20 % on a busy machine.
# Usage: bench/ci.sh [ROUNDS]   (installs what is missing with apt-get)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

ensure_packages nix-bin git curl jq bc
ensure_rust
say "building gradient-server and gradient-worker (release)"
cargo build --release --locked -p gradient-server -p gradient-worker >&2
bin="${CARGO_TARGET_DIR:-target}/release"

export NIX_CONFIG=$'experimental-features = nix-command flakes\nsandbox = false\nsubstituters =\nnarinfo-cache-positive-ttl = 0\nnarinfo-cache-negative-ttl = 0'
work=$(mktemp -d /tmp/gradient-ci-bench.XXXXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

# The flake; NONCE makes its derivations new for each build, so every round does the same work.
write_flake() {
  local dir=$1 nonce=$2
  mkdir -p "$dir"
  cat > "$dir/flake.nix" <<NIX
{
  outputs = { self }: let
    system = "x86_64-linux";
    leaf = i: derivation {
      name = "leaf-\${toString i}"; inherit system; builder = "/bin/sh"; nonce = "$nonce";
      args = [ "-c" "echo \${toString i} > \$out" ];
    };
    leaves = builtins.genList leaf 300;
  in {
    packages.\${system}.all = derivation {
      name = "all"; inherit system; builder = "/bin/sh"; nonce = "$nonce"; inherit leaves;
      args = [ "-c" "echo \$leaves > \$out" ];
    };
  };
}
NIX
  [ -d "$dir/.git" ] || git -C "$dir" init -q -b main
  git -C "$dir" add flake.nix
  git -C "$dir" -c user.name=bench -c user.email=bench@example.com commit -q -m "bench $nonce"
}

rounds=${1:-5}
write_flake "$work/gradient-repo" "gradient-0-$RANDOM"

say "starting Gradient with a co-located worker"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
worker_id=$(cat /proc/sys/kernel/random/uuid)
head -c 48 /dev/urandom | base64 -w0 > "$work/token"
echo "*:$(cat "$work/token")" > "$work/peers"
GRADIENT_BASE_DIR="$work/server" GRADIENT_PORT=$port GRADIENT_LOG_LEVEL_DEFAULT=warn GRADIENT_ALLOW_LOCAL_REPOSITORIES=true \
GRADIENT_LOCAL_WORKER_ID=$worker_id GRADIENT_LOCAL_WORKER_TOKEN_FILE="$work/token" \
  "$bin/gradient-server" >"$work/server.log" 2>&1 &
pids+=($!)
api="http://127.0.0.1:$port/api/v1"
for _ in $(seq 1 100); do curl -fs "$api/health" >/dev/null && break; sleep 0.1; done
curl -fs -X POST "$api/auth/basic/register" -H 'Content-Type: application/json' \
  -d '{"username":"bench","name":"Bench","email":"bench@example.com","password":"benchmark1"}' >/dev/null
jwt=$(curl -fs -X POST "$api/auth/basic/login" -H 'Content-Type: application/json' \
  -d '{"loginname":"bench","password":"benchmark1"}' | jq -r .message)
auth=(-H "Authorization: Bearer $jwt" -H 'Content-Type: application/json')
curl -fs -X POST "$api/orgs" "${auth[@]}" -d '{"name":"bench"}' >/dev/null
curl -fs -X POST "$api/caches" "${auth[@]}" -d '{"name":"bench"}' >/dev/null
curl -fs -X PUT "$api/orgs/bench/push-cache/bench" "${auth[@]}" >/dev/null
curl -fs -X POST "$api/projects/bench" "${auth[@]}" \
  -d "{\"name\":\"bench\",\"repository\":\"file://$work/gradient-repo\",\"wildcard\":\"packages.*.*\"}" >/dev/null
GRADIENT_SERVER_URL="ws://127.0.0.1:$port/proto" GRADIENT_WORKER_ID=$worker_id GRADIENT_PEERS_FILE="$work/peers" \
GRADIENT_STATE_DIR="$work/worker" GRADIENT_CAPABILITIES_FETCH=true GRADIENT_CAPABILITIES_EVAL=true \
GRADIENT_CAPABILITIES_BUILD=true GRADIENT_LOG_LEVEL_DEFAULT=info \
  "$bin/gradient-worker" >>"$work/worker.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 100); do
  curl -fs "$api/orgs/bench/workers" "${auth[@]}" | jq -e '.message[0].connected' >/dev/null && break
  sleep 0.1
done

plain_times=()
gradient_times=()
for round in $(seq 1 "$rounds"); do
  say "round $round of $rounds: plain nix build"
  write_flake "$work/plain-$round" "plain-$round-$RANDOM-$RANDOM"
  start=$(date +%s.%N)
  nix build --no-link "git+file://$work/plain-$round#all" >&2
  plain_times+=("$(echo "$(date +%s.%N) - $start" | bc -l)")

  say "round $round of $rounds: Gradient, trigger → every build done and cached"
  write_flake "$work/gradient-repo" "gradient-$round-$RANDOM-$RANDOM"
  commit=$(git -C "$work/gradient-repo" rev-parse HEAD)
  server_cpu=$(awk '{print $14+$15}' /proc/"${pids[0]}"/stat)
  start=$(date +%s.%N)
  id=$(curl -fs -X POST "$api/projects/bench/bench/evaluate" "${auth[@]}" -d "{\"commit\":\"$commit\"}" | jq -r .message.id)
  while :; do
    status=$(curl -fs "$api/evals/$id" "${auth[@]}" | jq -r .message.evaluation.status)
    case "$status" in Completed) break ;; Failed|Aborted)
        curl -fs "$api/evals/$id" "${auth[@]}" | jq -r '.message.evaluation.errors[]?.message' >&2
        failed=$(curl -fs "$api/evals/$id/builds" "${auth[@]}" | jq -r '[.message[] | select(.status != "Completed")][0].id // empty')
        [ -n "$failed" ] && curl -fs "$api/builds/$failed/log" "${auth[@]}" | tail -20 >&2
        tail -20 "$work/worker.log" >&2
        die "the evaluation ended $status" ;; esac
    sleep 0.1
  done
  gradient_times+=("$(echo "$(date +%s.%N) - $start" | bc -l)")
  builds=$(curl -fs "$api/evals/$id" "${auth[@]}" | jq '[.message.builds[] | select(.status == "Completed")] | length')
  [ "$builds" = 301 ] || die "round $round: $builds of 301 builds completed"

  # Where the time went: the server's CPU, the worker's batches, and when the evaluation took each status.
  printf '  server CPU %.2f s; %s builds completed and cached\n' \
    "$(echo "($(awk '{print $14+$15}' /proc/"${pids[0]}"/stat) - $server_cpu) / 100" | bc -l)" "$builds" >&2
  grep -oE '(batch of|evaluated|pushed).*' "$work/worker.log" | sed 's/^/  /' >&2 || true
  : > "$work/worker.log"
  curl -fs "$api/evals/$id" "${auth[@]}" | jq -r '.message.evaluation.transitions[] | "  \(.at)  \(.status)"' >&2
  printf '  round %s: plain %.2f s, Gradient %.2f s, ratio %.2f\n' "$round" "${plain_times[-1]}" \
    "${gradient_times[-1]}" "$(echo "${gradient_times[-1]} / ${plain_times[-1]}" | bc -l)" >&2
done

median() { printf '%s\n' "$@" | sort -g | awk '{v[NR]=$1} END {print (NR % 2) ? v[(NR+1)/2] : (v[NR/2] + v[NR/2+1]) / 2}'; }
plain=$(median "${plain_times[@]}")
gradient=$(median "${gradient_times[@]}")
printf '\n%-44s %10s\n' "median of $rounds rounds" "seconds"
printf '%-44s %10.2f\n' "plain nix build (301 derivations)" "$plain"
printf '%-44s %10.2f   (301 builds completed and cached)\n' "Gradient, trigger to done" "$gradient"
printf '%-44s %10.2f   (target <= 1.2)\n' "ratio" "$(echo "$gradient / $plain" | bc -l)"
