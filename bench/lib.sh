# Shared by the benchmarks; sourced after scripts/lib.sh (which has `die`).

# bench_sign_in API: registers the user "bench" on a fresh server (API: its `/api/v1` URL) and prints a session
# token for it.
bench_sign_in() {
  curl -fs -X POST "$1/auth/basic/register" -H 'Content-Type: application/json' \
    -d '{"username":"bench","name":"Bench","email":"bench@example.com","password":"benchmark1"}' >/dev/null || return 1
  curl -fs -X POST "$1/auth/basic/login" -H 'Content-Type: application/json' \
    -d '{"loginname":"bench","password":"benchmark1"}' | jq -r .message
}

# bench_api_key API TOKEN: a new API key of the signed-in user.
bench_api_key() {
  curl -fs -X POST "$1/user/keys" -H "Authorization: Bearer $2" -H 'Content-Type: application/json' \
    -d '{"name":"bench"}' | jq -r .message.key
}

# bench_cache_paths DIR: builds the cache benchmarks' paths in the local store (a 1 GiB one and 300 small ones;
# later runs find them built) and sets `large` (its store path) and `small` (an array of store paths). DIR: a
# scratch directory for the expression and the build logs.
bench_cache_paths() {
  cat > "$1/paths.nix" <<'NIX'
let
  mk = name: script: derivation {
    inherit name;
    system = builtins.currentSystem;
    builder = "/bin/sh";
    args = [ "-c" script ];
  };
in {
  large = mk "gradient-bench-1g" "/usr/bin/head -c 1G /dev/urandom > $out";
  small = builtins.genList (i: mk "gradient-bench-small-${toString i}" "echo ${toString i} > $out") 300;
}
NIX
  large=$(nix-build --no-out-link "$1/paths.nix" -A large 2>"$1/nix-build.log") || die "$(cat "$1/nix-build.log")"
  nix-build --no-out-link --max-jobs 4 "$1/paths.nix" -A small >"$1/small" 2>>"$1/nix-build.log" \
    || die "$(tail -n 20 "$1/nix-build.log")"
  mapfile -t small <"$1/small"
}
