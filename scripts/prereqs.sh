#!/usr/bin/env bash
# What keyveil's tests need, checked before anything is built (scripts/test.sh runs this first).
#
#   bash scripts/prereqs.sh            check; as root, install what is needed and missing (apt)
#   bash scripts/prereqs.sh --check    check only: list what is missing and how to get it
#   bash scripts/prereqs.sh --install  install what is missing (root; what .ci/run does), then
#                                      start PostgreSQL and Redis for the dynamic-credential tests
#
# Needed: cargo, setsid (util-linux), coreutils (sha256sum, base64, od), python3 with venv,
# Chromium at /usr/bin/chromium, node and npm (the browser test; the MCP client tests fetch their
# own Node 22 from npm). Optional (their tests skip with a message, except under CI): PostgreSQL on
# 127.0.0.1:5432 and Redis on 127.0.0.1:6379, root for `ip netns` (the MCP conformance suite), go
# (golang-go: the egress proxy's Go client, `tests/it/egress_go.rs`; installed like the others).
# Exit status: 0 when everything needed is there, 1 otherwise.
set -uo pipefail
cd "$(dirname "$0")/.."
mode="${1:-auto}"
case "$mode" in
  auto) [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null && mode=needed || mode=check ;;
  --check) mode=check ;;
  --install) mode=install ;;
  *) echo "usage: bash scripts/prereqs.sh [--check|--install]" >&2; exit 2 ;;
esac

apt_get() {
  if [ -z "${_apt_updated:-}" ]; then apt-get update -qq; _apt_updated=1; fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

missing=0
need() { # need NAME HOW-TO-GET TEST-COMMAND...
  local name="$1" how="$2"; shift 2
  if "$@" >/dev/null 2>&1; then return 0; fi
  echo "missing: $name"
  echo "  get it: $how"
  missing=1
}
optional() { # optional NAME WHAT-SKIPS HOW-TO-GET TEST-COMMAND...
  local name="$1" what="$2" how="$3"; shift 3
  if "$@" >/dev/null 2>&1; then return 0; fi
  echo "optional, not found: $name ($what)"
  echo "  get it: $how"
}

chromium_ok() { [ -x /usr/bin/chromium ]; }
venv_ok() { python3 -c "import venv, ensurepip"; }
node_ok() { command -v node && command -v npm; }
pg_ok() { command -v pg_isready && pg_isready -q -h 127.0.0.1 -p 5432 && psql -h 127.0.0.1 -U postgres -d test -XAtqc 'select 1'; }
redis_ok() { command -v redis-cli && [ "$(redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null)" = PONG ]; }
netns_ok() { [ "$(id -u)" = 0 ] && command -v ip && ip netns list; }

if [ "$mode" = install ] || [ "$mode" = needed ]; then
  # What the tests need, for a fresh Debian machine as root.
  for t in sha256sum base64 od python3; do command -v "$t" >/dev/null || { echo "installing: coreutils python3"; apt_get coreutils python3 python3-venv; break; }; done
  command -v setsid >/dev/null || { echo "installing: util-linux"; apt_get util-linux; }
  venv_ok 2>/dev/null || { echo "installing: python3-venv"; apt_get python3-venv; }
  chromium_ok || { echo "installing: chromium"; apt_get chromium; }
  command -v ip >/dev/null || { echo "installing: iproute2"; apt_get iproute2; }
  node_ok >/dev/null || { echo "installing: nodejs npm"; apt_get nodejs npm; }
  command -v go >/dev/null || { echo "installing: golang-go"; apt_get golang-go; }
fi
if [ "$mode" = install ]; then
  # Servers of the dynamic-credential tests: PostgreSQL (trust auth on 127.0.0.1:5432, database
  # `test`) and Redis (127.0.0.1:6379), installed, configured and started when missing.
  command -v pg_ctlcluster >/dev/null || { echo "installing: postgresql"; apt_get postgresql postgresql-client; }
  if ! pg_isready -q -h 127.0.0.1; then
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | sort -V | tail -1)" main start || true
    for _ in $(seq 50); do pg_isready -q -h 127.0.0.1 && break; sleep 0.2; done
  fi
  if ! psql -h 127.0.0.1 -U postgres -d test -XAtqc 'select 1' >/dev/null 2>&1; then
    pgv=$(ls /etc/postgresql | sort -V | tail -1)
    hba=/etc/postgresql/$pgv/main/pg_hba.conf
    grep -q '^host all all 127.0.0.1/32 trust' "$hba" || sed -i -e '1i host all all 127.0.0.1/32 trust' -e '1i host all all ::1/128 trust' "$hba"
    pg_ctlcluster --skip-systemctl-redirect "$pgv" main reload || true
    su postgres -c "psql -XAtqc \"select 1 from pg_database where datname = 'test'\"" | grep -q 1 || su postgres -c "createdb test"
  fi
  command -v redis-server >/dev/null || { echo "installing: redis"; apt_get redis-server redis-tools; }
  redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 || redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no >/dev/null
fi

need "cargo (Rust 1.89 or newer)" "https://rustup.rs (curl --proto '=https' -sSf https://sh.rustup.rs | sh)" command -v cargo
need "setsid (util-linux: keeps test processes off your terminal)" "sudo apt-get install util-linux" command -v setsid
need "sha256sum, base64, od (coreutils)" "sudo apt-get install coreutils" sh -c 'command -v sha256sum && command -v base64 && command -v od'
need "python3 with venv (the MCP tests' virtualenv)" "sudo apt-get install python3 python3-venv" venv_ok
need "Chromium at /usr/bin/chromium (the approval page's browser test)" "sudo apt-get install chromium" chromium_ok
need "node and npm (the browser test's playwright-core; ~385 MB of node_modules on first run)" "sudo apt-get install nodejs npm" node_ok
optional "PostgreSQL on 127.0.0.1:5432, trust auth, database test" "the dynamic PostgreSQL tests skip" "as root: bash scripts/prereqs.sh --install" pg_ok
optional "Redis on 127.0.0.1:6379" "the dynamic Redis tests skip" "sudo apt-get install redis-server && redis-server --daemonize yes --bind 127.0.0.1" redis_ok
optional "go (Debian: golang-go)" "the egress proxy's Go client test skips (fails under CI=true)" "sudo apt-get install golang-go" command -v go
optional "root and ip netns" "the MCP conformance suite skips" "run the tests as root (a container is fine), with iproute2 installed" netns_ok

if [ "$missing" = 1 ]; then
  if [ "$(id -u)" = 0 ]; then
    echo "hint: bash scripts/prereqs.sh --install installs all of it (Debian/Ubuntu)"
  else
    echo "hint: install the above, or run bash scripts/prereqs.sh --install as root (Debian/Ubuntu)"
  fi
  exit 1
fi
echo "prerequisites: everything the tests need is here"
exit 0
