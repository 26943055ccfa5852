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
