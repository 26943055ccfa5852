#!/usr/bin/env bash
# CI loop benchmark: Gradient (server + one co-located worker) from the trigger until every build of a flake is
# done and cached, against a plain `nix build` of the same flake on the same machine. Prints every figure with
# its target (issue #12); never asserts.
#
#   wide    300 trivial independent derivations + one aggregate, at build slots 100, 2 and 1 (ratio <= 1.2)
#   one     a one-derivation flake                                   (Gradient <= nix build + 1 s)
#   chain   100 derivations, each depending on the one before         (ratio <= 1.5)
#   eval1, eval2   a flake of 300 attributes, each costly to evaluate: the evaluation time (trigger until the
#           builds are planned) with GRADIENT_EVAL_WORKERS=1 and 2 (no target; printed only)
#
# Each scenario alternates plain and Gradient for ROUNDS rounds (default 3), each on a flake new to both, and
# compares the medians: one plain `nix build` alone varies by 20 % on a busy machine. `bench/scale.sh` measures
# the size figures (10,000 derivations, RSS, PostgreSQL).
# Usage: bench/ci.sh [ROUNDS] [SCENARIO...]   (scenarios: wide wide2 wide1 one chain eval1 eval2; default all)
# GRADIENT_BENCH_BIN=DIR runs the binaries in DIR instead of a release build. BENCH_LOGS=DIR keeps the server's log
# and each Gradient round's worker log there, with when each round was triggered (`rounds.txt`, seconds since
# the epoch); BENCH_LOG_LEVEL sets both programs' GRADIENT_LOG_LEVEL_DEFAULT (default: server warn, worker info;
# `debug` times each batch of reports the server records and each dispatch round).
# Installs what is missing with apt-get.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
. bench/lib.sh

ensure_packages nix-bin git curl jq bc
ensure_rust
if [ -n "${GRADIENT_BENCH_BIN:-}" ]; then
  # Binaries built elsewhere (say a debug build, to compare two changes on a machine where a release build is
  # too costly): the figures then say nothing about the targets.
  bin=$GRADIENT_BENCH_BIN
else
  say "building gradient-server and gradient-worker (release)"
  cargo build --release --locked -p gradient-server -p gradient-worker >&2
  bin="${CARGO_TARGET_DIR:-target}/release"
fi

export NIX_CONFIG=$'experimental-features = nix-command flakes\nsandbox = false\nsubstituters =\nnarinfo-cache-positive-ttl = 0\nnarinfo-cache-negative-ttl = 0'
work=$(mktemp -d /tmp/gradient-ci-bench.XXXXXX)
server_pid=""
worker_pid=""
cleanup() {
  kill $server_pid $worker_pid 2>/dev/null || true
  # Wait for them to exit: a server still writing a NAR would make the removal fail (and the script exit 1).
  wait $server_pid $worker_pid 2>/dev/null || true
  if [ -n "${BENCH_LOGS:-}" ]; then
    mkdir -p "$BENCH_LOGS"
    cp "$work/server.log" "$BENCH_LOGS/server.log" || true
  fi
  rm -rf "$work" || true
}
trap cleanup EXIT

rounds=${1:-3}
shift || true
scenarios=("$@")
[ ${#scenarios[@]} -gt 0 ] || scenarios=(wide wide2 wide1 one chain eval1 eval2)

# The flake of a shape (wide, one, chain); NONCE makes its derivations new for each build.
write_flake() {
  local dir=$1 shape=$2 nonce=$3 body
  case "$shape" in
    wide) body='
    leaf = i: derivation {
      name = "leaf-${toString i}"; inherit system; builder = "/bin/sh"; inherit nonce;
      args = [ "-c" "echo ${toString i} > $out" ];
    };
    leaves = builtins.genList leaf 300;
    top = derivation {
      name = "all"; inherit system; builder = "/bin/sh"; inherit nonce leaves;
      args = [ "-c" "echo $leaves > $out" ];
    };' ;;
    one) body='
    top = derivation {
      name = "one"; inherit system; builder = "/bin/sh"; inherit nonce;
      args = [ "-c" "echo one > $out" ];
    };' ;;
    chain) body='
    link = i: derivation {
      name = "link-${toString i}"; inherit system; builder = "/bin/sh"; inherit nonce;
      prev = if i == 0 then "" else link (i - 1);
      args = [ "-c" "echo ${toString i} $prev > $out" ];
    };
    top = link 99;' ;;
    attrs) body='
    # Each attribute costs a little evaluation (a sum over 20,000 numbers) before its derivation exists.
    cost = i: builtins.foldl'"'"' (a: b: a + b) i (builtins.genList (x: x) 20000);
    attr = i: derivation {
      name = "attr-${toString i}"; inherit system; builder = "/bin/sh"; inherit nonce;
      args = [ "-c" "echo ${toString (cost i)} > $out" ];
    };
    many = builtins.listToAttrs (builtins.genList (i: { name = "a${toString i}"; value = attr i; }) 300);' ;;
  esac
  mkdir -p "$dir"
  cat > "$dir/flake.nix" <<NIX
{
  outputs = { self }: let
    system = "x86_64-linux";
    nonce = "$nonce";
$body
  in {
    packages.\${system} = $( [ "$shape" = attrs ] && echo 'many' || echo '{ all = top; }' );
  };
}
NIX
  [ -d "$dir/.git" ] || git -C "$dir" init -q -b main
  git -C "$dir" add flake.nix
  git -C "$dir" -c user.name=bench -c user.email=bench@example.com commit -q -m "bench $nonce"
}

builds_of() { case "$1" in wide) echo 301 ;; one) echo 1 ;; chain) echo 100 ;; attrs) echo 300 ;; esac; }

say "starting Gradient with a co-located worker"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
worker_id=$(cat /proc/sys/kernel/random/uuid)
head -c 48 /dev/urandom | base64 -w0 > "$work/token"
echo "*:$(cat "$work/token")" > "$work/peers"
GRADIENT_BASE_DIR="$work/server" GRADIENT_PORT=$port GRADIENT_LOG_LEVEL_DEFAULT=${BENCH_LOG_LEVEL:-warn} GRADIENT_ALLOW_LOCAL_REPOSITORIES=true \
GRADIENT_LOCAL_WORKER_ID=$worker_id GRADIENT_LOCAL_WORKER_TOKEN_FILE="$work/token" \
  "$bin/gradient-server" >"$work/server.log" 2>&1 &
server_pid=$!
api="http://127.0.0.1:$port/api/v1"
for _ in $(seq 1 100); do curl -fs "$api/health" >/dev/null && break; sleep 0.1; done
jwt=$(bench_sign_in "$api")
auth=(-H "Authorization: Bearer $jwt" -H 'Content-Type: application/json')
curl -fs -X POST "$api/orgs" "${auth[@]}" -d '{"name":"bench"}' >/dev/null
curl -fs -X POST "$api/caches" "${auth[@]}" -d '{"name":"bench"}' >/dev/null
curl -fs -X PUT "$api/orgs/bench/push-cache/bench" "${auth[@]}" >/dev/null
for shape in wide one chain attrs; do
  write_flake "$work/repo-$shape" "$shape" "gradient-0-$RANDOM"
  curl -fs -X POST "$api/projects/bench" "${auth[@]}" \
    -d "{\"name\":\"$shape\",\"repository\":\"file://$work/repo-$shape\",\"wildcard\":\"packages.*.*\"}" >/dev/null
done

# (Re)starts the worker with SLOTS build slots (and EVAL evaluator processes, default 1).
start_worker() {
  local slots=$1 eval_workers=${2:-1}
  if [ -n "$worker_pid" ]; then
    kill "$worker_pid" 2>/dev/null || true
    wait "$worker_pid" 2>/dev/null || true
  fi
  GRADIENT_SERVER_URL="ws://127.0.0.1:$port/proto" GRADIENT_WORKER_ID=$worker_id GRADIENT_PEERS_FILE="$work/peers" \
  GRADIENT_STATE_DIR="$work/worker" GRADIENT_CAPABILITIES_FETCH=true GRADIENT_CAPABILITIES_EVAL=true \
  GRADIENT_CAPABILITIES_BUILD=true GRADIENT_LOG_LEVEL_DEFAULT=${BENCH_LOG_LEVEL:-info} GRADIENT_MAX_CONCURRENT_BUILDS=$slots \
  GRADIENT_EVAL_WORKERS=$eval_workers \
    "$bin/gradient-worker" >>"$work/worker.log" 2>&1 &
  worker_pid=$!
  # Connected when the server shows the registration connected.
  for _ in $(seq 1 100); do
    curl -fs "$api/orgs/bench/workers" "${auth[@]}" | jq -e '.message[0].connected' >/dev/null && return 0
    sleep 0.1
  done
  die "the worker did not connect"
}

# Waiting for an evaluation polls 20 times a second without starting a process: `curl | jq` each time took about
# 12 % of the 2 cores' CPU during a Gradient round (and none during a plain one). `nap` sleeps on a pipe this
# shell holds both ends of; `poll_status` asks over bash's own TCP (HTTP/1.0: a body without chunks).
exec {nap_fd}<> <(:)
nap() { read -r -t "$1" -u "$nap_fd" _ || true; }
# Sets STATUS to the status of evaluation $1 of project $2, from the project's list of evaluations (its object's
# first `status`: a manual evaluation's `pull_request` is null), or to nothing when the server did not answer.
poll_status() {
  local fd resp
  STATUS=""
  exec {fd}<>"/dev/tcp/127.0.0.1/$port" || return 0
  printf 'GET /api/v1/projects/bench/%s/evaluations HTTP/1.0\r\nHost: 127.0.0.1\r\nAuthorization: Bearer %s\r\n\r\n' \
    "$2" "$jwt" >&"$fd"
  IFS= read -r -N 4000000 -u "$fd" resp || true
  exec {fd}>&-
  case "$resp" in *"\"id\":\"$1\""*) ;; *) return 0 ;; esac
  resp=${resp#*\"id\":\"$1\"}
  resp=${resp#*\"status\":\"}
  STATUS=${resp%%\"*}
  case "$STATUS" in Queued|Fetching|Evaluating|Building|Completed|Failed|Aborted) ;; *) STATUS="" ;; esac
}
# Dies once the server is gone or an evaluation has shown no status for 60 s (a poll answered nothing usable).
unanswered=0
check_answered() {
  if [ -n "$STATUS" ]; then unanswered=0; return; fi
  kill -0 "$server_pid" 2>/dev/null || die "the server exited"
  unanswered=$((unanswered + 1))
  [ "$unanswered" -lt 1200 ] || die "no status for 60 s"
}

# CPU seconds (user + system) this shell's waited-for children have used so far.
children_cpu() { awk '{ printf "%.2f", ($16 + $17) / 100 }' /proc/$$/stat; }
# CPU seconds of a process and of its waited-for children (for the worker: its Nix processes and their builders).
process_cpu() { awk '{ printf "%.2f", ($14 + $15 + $16 + $17) / 100 }' /proc/"$1"/stat; }

median() { printf '%s\n' "$@" | sort -g | awk '{v[NR]=$1} END {print (NR % 2) ? v[(NR+1)/2] : (v[NR/2] + v[NR/2+1]) / 2}'; }

# Runs ROUNDS alternating rounds of SHAPE; prints one line per round and sets PLAIN and GRADIENT (medians).
measure() {
  local shape=$1 label=$2 want plain_times=() gradient_times=()
  want=$(builds_of "$shape")
  for round in $(seq 1 "$rounds"); do
    write_flake "$work/plain-$shape-$round" "$shape" "plain-$label-$round-$RANDOM-$RANDOM"
    local start
    start=$(date +%s.%N)
    local plain_cpu
    plain_cpu=$(children_cpu)
    nix build --no-link "git+file://$work/plain-$shape-$round#all" >&2
    plain_times+=("$(echo "$(date +%s.%N) - $start" | bc -l)")
    plain_cpu=$(echo "$(children_cpu) - $plain_cpu" | bc -l)

    write_flake "$work/repo-$shape" "$shape" "gradient-$label-$round-$RANDOM-$RANDOM"
    local commit id status server_cpu worker_cpu builds
    commit=$(git -C "$work/repo-$shape" rev-parse HEAD)
    server_cpu=$(process_cpu "$server_pid")
    worker_cpu=$(process_cpu "$worker_pid")
    : > "$work/worker.log"
    start=$(date +%s.%N)
    id=$(curl -fs -X POST "$api/projects/bench/$shape/evaluate" "${auth[@]}" -d "{\"commit\":\"$commit\"}" | jq -r .message.id)
    while :; do
      # The project's list of evaluations, not the evaluation with its builds: reading hundreds of builds 20
      # times a second cost the server more CPU than the CI loop itself (on the same 2 cores).
      poll_status "$id" "$shape"
      check_answered
      case "$STATUS" in Completed) break ;; Failed|Aborted)
          curl -fs "$api/evals/$id" "${auth[@]}" | jq -r '.message.evaluation.errors[]?.message' >&2
          tail -20 "$work/worker.log" >&2
          die "$label round $round: the evaluation ended $STATUS" ;; esac
      nap 0.05
    done
    gradient_times+=("$(echo "$(date +%s.%N) - $start" | bc -l)")
    if [ -n "${BENCH_LOGS:-}" ]; then
      mkdir -p "$BENCH_LOGS"
      cp "$work/worker.log" "$BENCH_LOGS/worker-$label-$round.log"
      echo "$label $round $start ${gradient_times[-1]}" >> "$BENCH_LOGS/rounds.txt"
    fi
    builds=$(curl -fs "$api/evals/$id" "${auth[@]}" | jq '[.message.builds[] | select(.status == "Completed")] | length')
    [ "$builds" = "$want" ] || die "$label round $round: $builds of $want builds completed"
    # CPU seconds as well as wall time: on a machine others share, the CPU each side used varies much less.
    printf '  %-7s round %s: plain %6.2f s (CPU %.2f s), Gradient %6.2f s (CPU: server %.2f s, worker with its Nix %.2f s; %s batches)\n' \
      "$label" "$round" "${plain_times[-1]}" "$plain_cpu" "${gradient_times[-1]}" \
      "$(echo "$(process_cpu "$server_pid") - $server_cpu" | bc -l)" \
      "$(echo "$(process_cpu "$worker_pid") - $worker_cpu" | bc -l)" \
      "$(grep -c 'batch of' "$work/worker.log" || true)" >&2
  done
  PLAIN=$(median "${plain_times[@]}")
  GRADIENT=$(median "${gradient_times[@]}")
}

# Runs ROUNDS evaluations of the attrs flake; sets EVAL (median seconds from the trigger until the evaluation
# leaves Evaluating, its builds planned).
measure_eval() {
  local label=$1 times=() commit id status start
  for round in $(seq 1 "$rounds"); do
    write_flake "$work/repo-attrs" attrs "gradient-$label-$round-$RANDOM-$RANDOM"
    commit=$(git -C "$work/repo-attrs" rev-parse HEAD)
    : > "$work/worker.log"
    start=$(date +%s.%N)
    id=$(curl -fs -X POST "$api/projects/bench/attrs/evaluate" "${auth[@]}" -d "{\"commit\":\"$commit\"}" | jq -r .message.id)
    while :; do
      poll_status "$id" attrs
      check_answered
      case "$STATUS" in Building|Completed) break ;; Failed|Aborted) die "$label round $round: $STATUS" ;; *) nap 0.05 ;; esac
    done
    times+=("$(echo "$(date +%s.%N) - $start" | bc -l)")
    printf '  %-7s round %s: evaluated in %6.2f s\n' "$label" "$round" "${times[-1]}" >&2
    if [ -n "${BENCH_LOGS:-}" ]; then
      mkdir -p "$BENCH_LOGS"
      cp "$work/worker.log" "$BENCH_LOGS/worker-$label-$round.log"
      echo "$label $round $start ${times[-1]}" >> "$BENCH_LOGS/rounds.txt"
    fi
    # Its builds are not measured: stop them before the next round, and wait (10 s at most) until the worker's
    # Nix runs have stopped, so that the next round's evaluation does not share the machine with them.
    curl -fs -X POST "$api/evals/$id" "${auth[@]}" -d '{"method":"abort"}' >/dev/null || true
    for _ in $(seq 1 200); do
      pgrep -P "$worker_pid" -f 'nix-store' >/dev/null || break
      sleep 0.05
    done
  done
  EVAL=$(median "${times[@]}")
}

results=()
for scenario in "${scenarios[@]}"; do
  case "$scenario" in
    eval1|eval2)
      n=${scenario#eval}
      say "$scenario: evaluating 300 attributes with $n evaluator process(es), $rounds rounds"
      start_worker 100 "$n"
      measure_eval "$scenario"
      results+=("$(printf '%-8s %5s %6s %10s %10.2f   evaluation only, %s eval worker(s)' "$scenario" 300 100 - "$EVAL" "$n")")
      continue ;;
  esac
  case "$scenario" in
    wide) slots=100 shape=wide ;;
    wide2) slots=2 shape=wide ;;
    wide1) slots=1 shape=wide ;;
    one) slots=100 shape=one ;;
    chain) slots=100 shape=chain ;;
    *) die "unknown scenario $scenario (wide wide2 wide1 one chain eval1 eval2)" ;;
  esac
  say "$scenario: $(builds_of "$shape") builds, $slots build slots, $rounds rounds"
  start_worker "$slots"
  measure "$shape" "$scenario"
  case "$scenario" in
    one) target=$(printf 'Gradient - plain = %.2f s (target <= 1 s)' "$(echo "$GRADIENT - $PLAIN" | bc -l)") ;;
    chain) target=$(printf 'ratio %.2f (target <= 1.5)' "$(echo "$GRADIENT / $PLAIN" | bc -l)") ;;
    *) target=$(printf 'ratio %.2f (target <= 1.2)' "$(echo "$GRADIENT / $PLAIN" | bc -l)") ;;
  esac
  results+=("$(printf '%-8s %5s %6s %10.2f %10.2f   %s' "$scenario" "$(builds_of "$shape")" "$slots" "$PLAIN" "$GRADIENT" "$target")")
done

printf '\nmedians of %s rounds (seconds)\n' "$rounds"
printf '%-8s %5s %6s %10s %10s\n' scenario builds slots "nix build" Gradient
printf '%s\n' "${results[@]}"
