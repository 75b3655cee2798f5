#!/usr/bin/env bash
# Load bench: 200 concurrent MCP clients x 20 granted runs each against one broker (a bench, not a
# test; a few minutes on 2 cores). Builds the release binary (or uses $KEYVEIL_BIN), makes the
# Python venv with the `mcp` SDK if missing, runs scripts/bench-load.py and prints a Markdown
# block for docs/benchmarks.md. Extra arguments go to the driver: --clients N --runs M.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/keyveil-target}"
if [ -n "${KEYVEIL_BIN:-}" ]; then
  bin="$KEYVEIL_BIN"
else
  cargo build --release --locked -p keyveil
  bin="$CARGO_TARGET_DIR/release/keyveil"
fi
if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c "import mcp, anyio" 2>/dev/null; then
  python3 -m venv .venv
  .venv/bin/pip install --quiet --disable-pip-version-check -r tests/mcp/requirements.txt
fi
# 200 MCP servers, their broker connections and the runs' pipes.
ulimit -n 8192 2>/dev/null || true
exec .venv/bin/python scripts/bench-load.py --bin "$bin" "$@"
