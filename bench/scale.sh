#!/usr/bin/env bash
# Scale benchmark: Gradient (server + one co-located worker) on flakes of N independent trivial derivations plus
# a 100-long chain and an aggregate over all of them, for N = 300, 3,000 and 10,000 (or the sizes given), on
# SQLite and on PostgreSQL. Prints, per database and size, the time from the trigger until everything is built
# and cached, the time per derivation (it should grow at most linearly: the per-derivation figure should stay
# flat), and the server's peak resident memory (goal <= 300 MB at 10,000). Never asserts.
# Usage: bench/scale.sh [SIZE...]   (installs what is missing with apt-get; PostgreSQL is started as in tests)
# BENCH_PROFILE=dev uses unoptimized binaries (a machine where a release build is too costly; figures are then
# slower than release ones, and only comparable with each other); BENCH_DATABASES="sqlite" or "postgres" runs
# one database only; BENCH_LOGS=DIR keeps each run's server and worker logs there, with the server's memory
# sampled once a second; BENCH_BIN=DIR runs the gradient-server and gradient-worker found there instead of
# building them (e.g. a non-LTO release build, or another branch's for an A/B run side by side);
# BENCH_HEAPTRACK=DIR records the server's allocations with heaptrack (what it held at its peak; the server's mimalloc
# replaces malloc itself (its `override` feature), so this needs a server built without that feature).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
. bench/lib.sh

ensure_packages nix-bin git curl jq bc postgresql
[ -z "${BENCH_HEAPTRACK:-}" ] || ensure_packages heaptrack
ensure_rust
profile=${BENCH_PROFILE:-release}
if [ -n "${BENCH_BIN:-}" ]; then
  bin=$(cd "$BENCH_BIN" && pwd)
else
  say "building gradient-server and gradient-worker ($profile)"
  cargo build --profile "$profile" --locked -p gradient-server -p gradient-worker >&2
  bin="${CARGO_TARGET_DIR:-target}/$([ "$profile" = dev ] && echo debug || echo "$profile")"
fi
read -r -a databases <<<"${BENCH_DATABASES:-sqlite postgres}"
admin_url=""
case " ${databases[*]} " in *" postgres "*) admin_url=$(ensure_postgres) ;; esac

export NIX_CONFIG=$'experimental-features = nix-command flakes\nsandbox = false\nsubstituters =\nnarinfo-cache-positive-ttl = 0\nnarinfo-cache-negative-ttl = 0'
work=$(mktemp -d /tmp/gradient-scale-bench.XXXXXX)
server_pid=""
server_proc=""
worker_pid=""
sampler_pid=""
db=""
cleanup() {
  kill $server_proc $worker_pid $sampler_pid 2>/dev/null || true
  wait $server_pid 2>/dev/null || true
  [ -z "$db" ] || psql "$admin_url" -qc "DROP DATABASE IF EXISTS $db" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

sizes=("$@")
[ ${#sizes[@]} -gt 0 ] || sizes=(300 3000 10000)

write_flake() {
  local dir=$1 n=$2 nonce=$3
  mkdir -p "$dir"
  cat > "$dir/flake.nix" <<NIX
{
  outputs = { self }: let
    system = "x86_64-linux";
    nonce = "$nonce";
    leaf = i: derivation {
      name = "leaf-\${toString i}"; inherit system nonce; builder = "/bin/sh";
      args = [ "-c" "echo \${toString i} > \$out" ];
    };
    link = i: derivation {
      name = "link-\${toString i}"; inherit system nonce; builder = "/bin/sh";
      prev = if i == 0 then "" else link (i - 1);
      args = [ "-c" "echo \${toString i} \$prev > \$out" ];
    };
    # The aggregate lists its inputs in a file, not its environment: 10,000 paths exceed the argument limit.
    leaves = builtins.genList leaf $n;
  in {
    packages.\${system}.all = derivation {
      name = "all"; inherit system nonce; builder = "/bin/sh";
      inputs = leaves ++ [ (link 99) ]; passAsFile = [ "inputs" ];
      args = [ "-c" "read -r all < \$inputsPath; echo \"\$all\" > \$out" ];
    };
  };
}
NIX
  [ -d "$dir/.git" ] || git -C "$dir" init -q -b main
  git -C "$dir" add flake.nix
  git -C "$dir" -c user.name=bench -c user.email=bench@example.com commit -q -m "bench $nonce"
}

# Starts a server on DATABASE (sqlite or postgres) with its worker; sets api and auth.
start() {
  local database=$1 n=$2 url=() profiler=()
  # BENCH_HEAPTRACK=DIR records the server's allocations with heaptrack into DIR/heaptrack-DATABASE-N.*.zst
  # (`heaptrack_print -p 0 -a 0 -T 0 -n 40 -f FILE` shows what was held at the peak; the peak RSS printed is
  # then heaptrack's too).
  if [ -n "${BENCH_HEAPTRACK:-}" ]; then
    mkdir -p "$BENCH_HEAPTRACK"
    profiler=(heaptrack -o "$BENCH_HEAPTRACK/heaptrack-$database-$n")
  fi
  kill $server_proc $worker_pid 2>/dev/null || true
  wait $server_pid $worker_pid 2>/dev/null || true
  rm -rf "$work/server" "$work/worker"
  if [ "$database" = postgres ]; then
    [ -z "$db" ] || psql "$admin_url" -qc "DROP DATABASE IF EXISTS $db" >/dev/null
    db="gradient_bench_$RANDOM"
    psql "$admin_url" -qc "CREATE DATABASE $db" >/dev/null
    url=(GRADIENT_DATABASE_URL="postgres:///$db?host=/var/run/postgresql&user=$(id -un)")
  fi
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  worker_id=$(cat /proc/sys/kernel/random/uuid)
  head -c 48 /dev/urandom | base64 -w0 > "$work/token"
  echo "*:$(cat "$work/token")" > "$work/peers"
  env "${url[@]}" GRADIENT_BASE_DIR="$work/server" GRADIENT_PORT=$port GRADIENT_LOG_LEVEL_DEFAULT=warn \
    GRADIENT_ALLOW_LOCAL_REPOSITORIES=true GRADIENT_LOCAL_WORKER_ID=$worker_id \
    GRADIENT_LOCAL_WORKER_TOKEN_FILE="$work/token" "${profiler[@]}" "$bin/gradient-server" >"$work/server.log" 2>&1 &
  server_pid=$!
  server_proc=$server_pid
  if [ ${#profiler[@]} -gt 0 ]; then
    for _ in $(seq 1 100); do
      server_proc=$(pgrep -P "$server_pid" -x gradient-server) && break
      sleep 0.1
    done
  fi
  api="http://127.0.0.1:$port/api/v1"
  for _ in $(seq 1 100); do curl -fs "$api/health" >/dev/null && break; sleep 0.1; done
  jwt=$(bench_sign_in "$api")
  auth=(-H "Authorization: Bearer $jwt" -H 'Content-Type: application/json')
  curl -fs -X POST "$api/orgs" "${auth[@]}" -d '{"name":"bench"}' >/dev/null
  curl -fs -X POST "$api/caches" "${auth[@]}" -d '{"name":"bench"}' >/dev/null
  curl -fs -X PUT "$api/orgs/bench/push-cache/bench" "${auth[@]}" >/dev/null
  GRADIENT_SERVER_URL="ws://127.0.0.1:$port/proto" GRADIENT_WORKER_ID=$worker_id GRADIENT_PEERS_FILE="$work/peers" \
  GRADIENT_STATE_DIR="$work/worker" GRADIENT_CAPABILITIES_FETCH=true GRADIENT_CAPABILITIES_EVAL=true \
  GRADIENT_CAPABILITIES_BUILD=true GRADIENT_LOG_LEVEL_DEFAULT=warn \
    "$bin/gradient-worker" >"$work/worker.log" 2>&1 &
  worker_pid=$!
  chmod 600 "$work/peers"
  for _ in $(seq 1 100); do
    curl -fs "$api/orgs/bench/workers" "${auth[@]}" | jq -e '.message[0].connected' >/dev/null && return 0
    sleep 0.1
  done
  die "the worker did not connect"
}

# With BENCH_LOGS, the server's memory once a second (MB: resident, anonymous, file-backed, shared; threads;
# the SQLite write-ahead log's size) goes to DIR/memory-DATABASE-N.tsv, to see what grows and when.
sample_memory() {
  local out=$1
  printf 'seconds\trss\tanon\tfile\tshmem\tthreads\twal\n' >"$out"
  local t0 ; t0=$(date +%s)
  while kill -0 "$server_proc" 2>/dev/null; do
    awk -v t=$(($(date +%s) - t0)) -v wal=$(stat -c %s "$work/server/gradient.db-wal" 2>/dev/null || echo 0) '
      /^VmRSS/ {r=$2} /^RssAnon/ {a=$2} /^RssFile/ {f=$2} /^RssShmem/ {s=$2} /^Threads/ {n=$2}
      END {printf "%d\t%.0f\t%.0f\t%.0f\t%.0f\t%d\t%.0f\n", t, r/1024, a/1024, f/1024, s/1024, n, wal/1048576}' \
      /proc/"$server_proc"/status >>"$out" 2>/dev/null || break
    sleep 1
  done
}

rss_peak_mb() { awk '/VmHWM/ {printf "%.0f", $2 / 1024}' /proc/"$server_proc"/status; }

results=()
for database in "${databases[@]}"; do
  for n in "${sizes[@]}"; do
    say "$database: $n independent derivations + a 100-long chain + an aggregate"
    start "$database" "$n"
    write_flake "$work/repo-$database-$n" "$n" "scale-$database-$n-$RANDOM"
    curl -fs -X POST "$api/projects/bench" "${auth[@]}" \
      -d "{\"name\":\"s$n\",\"repository\":\"file://$work/repo-$database-$n\",\"wildcard\":\"packages.*.*\"}" >/dev/null
    commit=$(git -C "$work/repo-$database-$n" rev-parse HEAD)
    total=$((n + 101))
    if [ -n "${BENCH_LOGS:-}" ]; then
      mkdir -p "$BENCH_LOGS"
      sample_memory "$BENCH_LOGS/memory-$database-$n.tsv" &
      sampler_pid=$!
    fi
    start_at=$(date +%s.%N)
    id=$(curl -fs -X POST "$api/projects/bench/s$n/evaluate" "${auth[@]}" -d "{\"commit\":\"$commit\"}" | jq -r .message.id)
    while :; do
      status=$(curl -fs "$api/evals/$id" "${auth[@]}" | jq -r .message.evaluation.status)
      case "$status" in Completed) break ;; Failed|Aborted)
          curl -fs "$api/evals/$id" "${auth[@]}" | jq -r '.message.evaluation.errors[]?.message' >&2
          failed=$(curl -fs "$api/evals/$id/builds" "${auth[@]}" | jq -r '[.message[] | select(.status == "Failed")][0].id // empty')
          [ -z "$failed" ] || curl -fs "$api/builds/$failed/log" "${auth[@]}" | jq -r .message.text 2>/dev/null | tail -n 20 >&2
          tail -n 20 "$work/worker.log" "$work/server.log" >&2
          die "$database $n: the evaluation ended $status" ;; esac
      sleep 0.5
    done
    seconds=$(echo "$(date +%s.%N) - $start_at" | bc -l)
    done_builds=$(curl -fs "$api/evals/$id/builds" "${auth[@]}" | jq '[.message[] | select(.status == "Completed")] | length')
    results+=("$(printf '%-9s %7s %9.1f %12.2f %10s %8s' "$database" "$total" "$seconds" \
      "$(echo "$seconds * 1000 / $total" | bc -l)" "$(rss_peak_mb)" "$done_builds")")
    printf '  %s\n' "${results[-1]}" >&2
    [ -z "$sampler_pid" ] || { kill "$sampler_pid" 2>/dev/null || true; sampler_pid=""; }
    if [ -n "${BENCH_LOGS:-}" ]; then
      mkdir -p "$BENCH_LOGS"
      cp "$work/server.log" "$BENCH_LOGS/server-$database-$n.log"
      cp "$work/worker.log" "$BENCH_LOGS/worker-$database-$n.log"
    fi
  done
done

printf '\n%-9s %7s %9s %12s %10s %8s\n' database builds seconds "ms/build" "RSS MB" completed
printf '%s\n' "${results[@]}"
echo "(goals: ms/build flat or falling with size; server peak RSS <= 300 MB at 10,000)"
