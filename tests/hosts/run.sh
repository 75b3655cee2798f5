#!/usr/bin/env bash
# Real agent hosts from npm (pinned in package.json / package-lock.json: Claude Code, Codex CLI,
# Gemini CLI, Copilot CLI, OpenCode), each configured with `keyveil setup HOST` and nothing else of keyveil's, driven by
# a scripted model on loopback (model.py: Anthropic Messages, OpenAI Responses, Gemini
# streamGenerateContent):
#
#   list_environments -> describe_environment -> run (pending_approval) -> the human approves
#   (`keyveil approve ID --passphrase-stdin`) -> run (completed, redacted) -> final answer
#
# then every request the host sent to the model, the host's output and every file under the
# test HOME are searched for the value in every encoding the redactor knows. A second run with
# `keyveil setup HOST --host-prompts` must NOT complete (headless hosts refuse or drop a tool
# they would have to ask about): the permission setup writes is what makes the first one work
# (not for OpenCode, whose default already lets MCP tools run; its `permission` entry keeps that
# under a stricter default of the user's). Copilot CLI has no per-user permission setting keyveil
# could write (its permissions.allow is for organisations): it runs with `--allow-tool=keyveil`,
# the way its documentation gives for `-p`, and the second run is without that flag.
#
# The model endpoint and a dummy key are given to the host on its command line / environment;
# Gemini CLI also needs the folder trusted (what a user answers in its trust dialog), written to
# ~/.gemini/trustedFolders.json. When the npm registry cannot be reached, this says so and skips.
#
# Usage: KEYVEIL_BIN=target/debug/keyveil bash tests/hosts/run.sh [HOST[-project]...]
# (default: every host; HOST-project uses `keyveil setup HOST --project` in the project directory)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
bin="${KEYVEIL_BIN:-${CARGO_TARGET_DIR:-$repo/target}/debug/keyveil}"
bin="$(readlink -f "$bin")"
[ -x "$bin" ] || { echo "no keyveil binary at $bin (build it or set KEYVEIL_BIN)"; exit 1; }
hosts=("$@")
[ ${#hosts[@]} -gt 0 ] || hosts=(claude claude-project codex gemini gemini-project copilot opencode opencode-project)

if [ "$(uname -s)-$(uname -m)" != "Linux-x86_64" ]; then
  echo "skipped: the pinned host CLIs are installed for Linux x86_64 here"
  exit 0
fi
if [ ! -x "$here/node_modules/.bin/claude" ] || [ ! -x "$here/node_modules/.bin/codex" ] ||
  [ ! -x "$here/node_modules/.bin/gemini" ] || [ ! -x "$here/node_modules/.bin/opencode" ] ||
  [ ! -x "$here/node_modules/.bin/copilot" ]; then
  if ! timeout 20 npm ping --prefix "$here" >/dev/null 2>&1; then
    echo "SKIPPED (not passed): the npm registry cannot be reached, so the real host CLIs cannot be installed"
    exit 0
  fi
  # `npm install --no-save`, not `npm ci`: the lock file records only the platform packages the
  # registry here serves (opencode-ai's darwin/musl/windows optional packages are missing), and
  # `npm ci` refuses such a lock; package.json pins every host CLI to an exact version.
  npm install --prefix "$here" --no-save --no-audit --no-fund --loglevel=error
fi
version() { node -p "require('$here/node_modules/$1/package.json').version"; }
echo "claude-code $(version @anthropic-ai/claude-code), codex $(version @openai/codex), gemini-cli $(version @google/gemini-cli), copilot $(version @github/copilot), opencode $(version opencode-ai)"

work="$(mktemp -d /tmp/kvhost-XXXXXX)"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for d in "$work"/*/home; do HOME="$d" "$bin" daemon stop >/dev/null 2>&1 || true; done
  rm -rf "$work"
}
trap cleanup EXIT
pass="correct horse battery staple"
passed=0
failed=0
ok() { echo "ok   $1"; passed=$((passed + 1)); }
bad() { echo "FAIL $1"; failed=$((failed + 1)); }

# Searches FILES... for the value in every encoding keyveil's redactor knows; prints the hits.
leaks() {
  python3 - "$@" <<'PY'
import base64, binascii, os, sys, urllib.parse
value = open(sys.argv[1]).read().strip().encode()
needles = {value, binascii.hexlify(value), binascii.hexlify(value).upper(),
           urllib.parse.quote(value, safe="").encode()}
for i in range(3):  # base64 of the value at each alignment inside a longer text
    for enc in (base64.b64encode, base64.urlsafe_b64encode):
        e = enc(b"x" * i + value).rstrip(b"=")
        needles.add(e[(4 * i + 2) // 3:-2])
paths = []
for p in sys.argv[2:]:
    if os.path.isdir(p):
        for root, _, files in os.walk(p):
            paths += [os.path.join(root, f) for f in files]
    else:
        paths.append(p)
for p in paths:
    try:
        data = open(p, "rb").read()
    except OSError:
        continue
    for n in needles:
        if n and n in data:
            print(f"{p}: {n[:12]!r}...")
PY
}

# The human: approves each request keyveil shows, with the passphrase on stdin.
approver() {
  local home="$1" log="$2"
  while true; do
    id="$(HOME="$home" "$bin" requests --json 2>/dev/null | python3 -c 'import json,sys; d=json.load(sys.stdin); print(d[-1]["id"] if d else "")' 2>/dev/null || true)"
    if [ -n "$id" ]; then
      echo "$pass" | HOME="$home" setsid -w "$bin" approve "$id" --passphrase-stdin >>"$log" 2>&1 || true
    fi
    sleep 0.3
  done
}

# Runs HOST's CLI in its project directory against the model at PORT; output to OUT.
drive() {
  local host="$1" home="$2" port="$3" out="$4" allow="${5:-yes}"
  local prompt="Run the demo command with keyveil and tell me what it printed."
  local cli="$here/node_modules/.bin/${host%-project}"
  (
    cd "$home/proj"
    export HOME="$home" PATH="$here/node_modules/.bin:/usr/local/bin:/usr/bin:/bin" NO_COLOR=1
    unset KEYVEIL_HOME
    case "${host%-project}" in
      claude)
        ANTHROPIC_BASE_URL="http://127.0.0.1:$port" ANTHROPIC_API_KEY=sk-test-dummy \
          CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1 DISABLE_AUTOUPDATER=1 \
          timeout 120 "$cli" -p "$prompt" --model claude-sonnet-4-5 ;;
      codex)
        MOCK_KEY=sk-test-dummy timeout 120 "$cli" exec --skip-git-repo-check \
          -c model_provider=mock \
          -c "model_providers.mock={name=\"mock\", base_url=\"http://127.0.0.1:$port/v1\", wire_api=\"responses\", env_key=\"MOCK_KEY\"}" \
          -m scripted "$prompt" </dev/null ;;
      gemini)
        GOOGLE_GENAI_USE_VERTEXAI=true GOOGLE_API_KEY=test-dummy \
          GOOGLE_VERTEX_BASE_URL="http://127.0.0.1:$port" \
          timeout 120 "$cli" -p "$prompt" -m gemini-2.5-flash </dev/null ;;
      copilot)
        # Its own BYOK provider settings, offline: no GitHub sign-in.
        flags=()
        [ "$allow" = yes ] && flags=(--allow-tool=keyveil)
        COPILOT_OFFLINE=true COPILOT_PROVIDER_TYPE=anthropic COPILOT_PROVIDER_BASE_URL="http://127.0.0.1:$port" \
          COPILOT_PROVIDER_API_KEY=sk-test-dummy COPILOT_MODEL=claude-sonnet-4-5 \
          timeout 120 "$cli" -p "$prompt" "${flags[@]}" </dev/null ;;
      opencode)
        # The model provider comes from the environment, not from a file setup writes.
        OPENCODE_CONFIG_CONTENT="{\"provider\":{\"anthropic\":{\"options\":{\"baseURL\":\"http://127.0.0.1:$port/v1\",\"apiKey\":\"sk-test-dummy\"}}}}" \
          timeout 120 "$cli" run -m anthropic/claude-sonnet-4-5 "$prompt" </dev/null ;;
    esac
  ) >"$out" 2>&1 || true
}

for host in "${hosts[@]}"; do
  t0=$(date +%s)
  w="$work/$host"
  home="$w/home"
  mkdir -p "$home/proj"
  value="hostval-$(head -c 18 /dev/urandom | base64 | tr '+/' '-_')"
  printf %s "$value" >"$w/value"
  # The vault in the default place under HOME, as a user has it.
  echo "$pass" | HOME="$home" setsid -w "$bin" init --passphrase-stdin --kdf-memory-kib 19456 >/dev/null
  HOME="$home" setsid -w "$bin" env create demo --description "host test" >/dev/null
  printf %s "$value" | HOME="$home" setsid -w "$bin" set demo API_TOKEN --from-stdin >/dev/null
  # HOST-project: the project's files (`setup HOST --project`) instead of the user's.
  scope=()
  [ "$host" != "${host%-project}" ] && scope=(--project)
  (cd "$home/proj" && HOME="$home" "$bin" setup "${host%-project}" "${scope[@]}" >"$w/setup.out")
  if [ "${host%-project}" = gemini ]; then
    mkdir -p "$home/.gemini"
    printf '{"%s": "TRUST_FOLDER"}\n' "$home/proj" >"$home/.gemini/trustedFolders.json"
  fi
  python3 "$here/model.py" "$w/port" "$w/requests.jsonl" 2>"$w/model.err" &
  pids+=($!)
  for _ in $(seq 100); do [ -s "$w/port" ] && break; sleep 0.05; done
  port="$(cat "$w/port")"
  approver "$home" "$w/approve.log" &
  approver_pid=$!
  pids+=("$approver_pid")

  drive "$host" "$home" "$port" "$w/host.out"
  kill "$approver_pid" 2>/dev/null || true
  if grep -q 'FINAL-ANSWER' "$w/host.out" && grep -q 'completed' "$w/host.out" &&
    grep -q 'token: \[REDACTED:API_TOKEN\]' "$w/host.out"; then
    ok "$host: list -> describe -> run -> approve -> run completed, redacted, final answer ($(($(date +%s) - t0)) s)"
  else
    bad "$host: the flow did not complete: $(tail -c 600 "$w/host.out")"
  fi
  if grep -q 'pending_approval' "$w/requests.jsonl"; then
    ok "$host: the model saw pending_approval before the human approved"
  else
    bad "$host: no pending_approval reached the model"
  fi
  hits="$(leaks "$w/value" "$w/requests.jsonl" "$w/host.out" "$home")"
  if [ -z "$hits" ] && [ -s "$w/requests.jsonl" ]; then
    ok "$host: the value is in no request to the model ($(wc -l <"$w/requests.jsonl") requests), no host output, no file under HOME ($(find "$home" -type f | wc -l) files)"
  else
    bad "$host: the value leaked: $hits"
  fi

  if [ "${host%-project}" = opencode ]; then
    HOME="$home" "$bin" daemon stop >/dev/null 2>&1 || true
    continue
  fi
  # Without the permission (the host's own prompts kept), a headless host does not complete.
  (cd "$home/proj" && HOME="$home" "$bin" setup "${host%-project}" "${scope[@]}" --host-prompts >/dev/null)
  : >"$w/requests.jsonl"
  drive "$host" "$home" "$port" "$w/host2.out" no
  # (Claude Code and Codex refuse the call, Gemini CLI drops the tools from the model's list.)
  if [ -s "$w/requests.jsonl" ] && ! grep -q 'list_environments' "$w/requests.jsonl"; then
    echo "FINAL-ANSWER: (keyveil's tools were not in any request's tool list)" >>"$w/host2.out"
  fi
  if [ -s "$w/requests.jsonl" ] && ! grep -q 'REDACTED:API_TOKEN' "$w/host2.out" "$w/requests.jsonl"; then
    ok "$host: $( [ "$host" = copilot ] && echo "without --allow-tool" || echo "with --host-prompts (no permission)"), the headless host does not run keyveil's run: $(grep -o 'FINAL-ANSWER: .\{1,90\}\|MCP tool call requires approval.\{0,40\}\|NO-KEYVEIL-TOOLS' "$w/host2.out" | head -1 | tr -d '\\')"
  else
    bad "$host: with --host-prompts: $(tail -c 400 "$w/host2.out")"
  fi
  HOME="$home" "$bin" daemon stop >/dev/null 2>&1 || true
done

echo "hosts: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
