# Shared helpers for scripts/quickstart and scripts/test. Sourced, not run.

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# Installs the Debian packages that are missing (runs apt-get only when something is).
ensure_packages() {
  local missing=()
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  say "installing ${missing[*]}"
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
}

ensure_rust() {
  command -v cargo >/dev/null 2>&1 || [ -x "$HOME/.cargo/bin/cargo" ] \
    || die "cargo is missing: install Rust (https://rustup.rs) and run this again"
  command -v cargo >/dev/null 2>&1 || export PATH="$HOME/.cargo/bin:$PATH"
}

# Node and npm (Debian's nodejs 20 carries npm on some machines; Debian's npm package otherwise), the UI's locked
# dependencies (npm ci), then the UI itself: the API client is generated from openapi/gradient.json and
# type-checked, and web/dist is what gradient-server serves at /.
ensure_web() {
  ensure_packages nodejs
  command -v npm >/dev/null 2>&1 || ensure_packages npm
  say "building the web UI (web/dist)"
  (cd web && npm ci --no-audit --no-fund --loglevel=error && npm run build --silent) >&2
}

# The OpenID Provider of the OIDC end-to-end tests (tests/e2e/oidc.rs): oidc-provider from npm, its locked version
# (tests/oidc-provider/package-lock.json). Prints the path of the provider script on stdout, and nothing else there.
ensure_oidc_provider() {
  ensure_packages nodejs >&2
  command -v npm >/dev/null 2>&1 || ensure_packages npm >&2
  (cd tests/oidc-provider && npm ci --no-audit --no-fund --loglevel=error) >&2 \
    || die "could not install oidc-provider from npm (tests/oidc-provider)"
  echo "$PWD/tests/oidc-provider/provider.mjs"
}

# Debian's chromium, for the browser tests (driven by playwright-core; no browser is ever downloaded).
ensure_chromium() {
  ensure_packages chromium fonts-dejavu-core
}

# Starts the distribution's PostgreSQL cluster and makes the current user a superuser on it.
# Prints the admin URL (unix socket) on stdout, and nothing else there.
ensure_postgres() {
  ensure_packages postgresql
  local ver
  ver=$(ls /etc/postgresql 2>/dev/null | sort -V | tail -n 1)
  [ -n "$ver" ] || die "no PostgreSQL cluster found under /etc/postgresql"
  pg_ctlcluster "$ver" main start >&2 2>/dev/null || true
  for _ in $(seq 1 50); do
    pg_isready -q -h /var/run/postgresql && break
    sleep 0.2
  done
  pg_isready -q -h /var/run/postgresql || die "PostgreSQL $ver did not start"
  local me
  me=$(id -un)
  if ! su postgres -c "psql -tAc \"SELECT 1 FROM pg_roles WHERE rolname='$me'\"" | grep -q 1; then
    su postgres -c "createuser -s $me" >&2
  fi
  echo "postgres:///postgres?host=/var/run/postgresql&user=$me"
}

# Where test tools installed by these scripts live (a Python venv for moto and schemathesis) and their state (PID files, logs).
GRADIENT_TEST_CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/gradient-test"
MOTO_PID_FILE="$GRADIENT_TEST_CACHE/moto.pid"

# Installs moto (an S3-compatible server for tests) into a venv, starts it on a free loopback port in the
# background and prints its endpoint (e.g. http://127.0.0.1:41234) on stdout, and nothing else there.
# Its PID goes to $MOTO_PID_FILE; stop it with stop_moto. A server left by an earlier run is stopped first.
ensure_moto() {
  ensure_packages python3 python3-venv curl >&2
  local python=/usr/bin/python3 venv="$GRADIENT_TEST_CACHE/venv"
  [ -x "$python" ] || python=$(command -v python3) || die "python3 is missing"
  mkdir -p "$GRADIENT_TEST_CACHE"
  if [ ! -x "$venv/bin/moto_server" ]; then
    say "installing moto into $venv"
    rm -rf "$venv"
    "$python" -m venv "$venv" >&2 || die "could not create a Python venv in $venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check 'moto[server]' >&2 \
      || die "could not install moto[server] from PyPI"
  fi
  stop_moto
  local port
  port=$("$python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  local log="$GRADIENT_TEST_CACHE/moto.log"
  # Its output goes to the log: a command substitution around this function waits for stdout to close.
  nohup "$venv/bin/moto_server" -H 127.0.0.1 -p "$port" >"$log" 2>&1 </dev/null &
  echo $! >"$MOTO_PID_FILE"
  local endpoint="http://127.0.0.1:$port"
  for _ in $(seq 1 100); do
    curl -s -o /dev/null "$endpoint/" && { echo "$endpoint"; return 0; }
    kill -0 "$(cat "$MOTO_PID_FILE")" 2>/dev/null || break
    sleep 0.2
  done
  cat "$log" >&2
  stop_moto
  die "moto did not start on $endpoint (log above)"
}

# The schemathesis release the API fuzzing test (tests/e2e/fuzz.rs) runs; it supports Python 3.9 and newer.
SCHEMATHESIS_VERSION=4.32.5

# Installs schemathesis (API fuzzing from the OpenAPI document) into the test venv and prints the path of its
# `st` command on stdout, and nothing else there.
ensure_schemathesis() {
  ensure_packages python3 python3-venv >&2
  local python=/usr/bin/python3 venv="$GRADIENT_TEST_CACHE/venv"
  [ -x "$python" ] || python=$(command -v python3) || die "python3 is missing"
  mkdir -p "$GRADIENT_TEST_CACHE"
  if [ ! -x "$venv/bin/pip" ]; then
    "$python" -m venv "$venv" >&2 || die "could not create a Python venv in $venv"
  fi
  if ! "$venv/bin/st" --version 2>/dev/null | grep -qF "version $SCHEMATHESIS_VERSION"; then
    say "installing schemathesis $SCHEMATHESIS_VERSION into $venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION" >&2 \
      || die "could not install schemathesis from PyPI"
  fi
  echo "$venv/bin/st"
}

# The aiosmtpd release the email end-to-end tests (tests/e2e/email.rs) run as their SMTP server.
AIOSMTPD_VERSION=1.4.6

# Installs aiosmtpd (a real SMTP server the email tests start on loopback) into the test venv and prints the path
# of the venv's python on stdout, and nothing else there.
ensure_aiosmtpd() {
  ensure_packages python3 python3-venv >&2
  local python=/usr/bin/python3 venv="$GRADIENT_TEST_CACHE/venv"
  [ -x "$python" ] || python=$(command -v python3) || die "python3 is missing"
  mkdir -p "$GRADIENT_TEST_CACHE"
  if [ ! -x "$venv/bin/pip" ]; then
    "$python" -m venv "$venv" >&2 || die "could not create a Python venv in $venv"
  fi
  if ! "$venv/bin/python" -c "import importlib.metadata as m, sys; sys.exit(m.version('aiosmtpd') != '$AIOSMTPD_VERSION')" 2>/dev/null; then
    say "installing aiosmtpd $AIOSMTPD_VERSION into $venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check "aiosmtpd==$AIOSMTPD_VERSION" >&2 \
      || die "could not install aiosmtpd from PyPI"
  fi
  echo "$venv/bin/python"
}

# Stops the moto server ensure_moto started, if it is still running.
stop_moto() {
  [ -f "$MOTO_PID_FILE" ] || return 0
  local pid
  pid=$(cat "$MOTO_PID_FILE")
  # Only a process that is still that moto server: the PID may have been reused since.
  if [ -n "$pid" ] && grep -q moto_server "/proc/$pid/cmdline" 2>/dev/null; then
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 25); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.2
    done
  fi
  rm -f "$MOTO_PID_FILE"
}
