#!/usr/bin/env bash
# keyveil's whole test suite: Rust unit + integration tests, the approval page in headless
# Chromium (playwright-core from npm, Debian's /usr/bin/chromium), then the MCP tests driven by
# the Python `mcp` SDK (a real client nobody here wrote). Checks its prerequisites first
# (scripts/prereqs.sh), installs what it needs (a venv under .venv, tests/browser/node_modules)
# and is safe to re-run.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/keyveil-target}"

echo "== prerequisites (scripts/prereqs.sh)"
# Checked before a long build: each missing one is named with how to get it; as root on
# Debian/Ubuntu the needed ones are installed (as .ci/run does).
bash scripts/prereqs.sh

echo "== cargo build"
cargo build --workspace --locked --all-targets

echo "== cargo test"
# Every test binary runs even after one fails, so one run lists every failure.
cargo test --workspace --locked --no-fail-fast

echo "== browser end-to-end (approval page in headless Chromium, playwright-core)"
if [ ! -d tests/browser/node_modules/playwright-core ]; then
  npm ci --prefix tests/browser --no-audit --no-fund --loglevel=error
fi
KEYVEIL_BIN="$CARGO_TARGET_DIR/debug/keyveil" node tests/browser/approve.mjs

echo "== MCP client tests (Python mcp SDK)"
if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c "import mcp, pytest" 2>/dev/null; then
  python3 -m venv .venv
  .venv/bin/pip install --quiet --disable-pip-version-check -r tests/mcp/requirements.txt
fi
export KEYVEIL_BIN="$CARGO_TARGET_DIR/debug/keyveil"
.venv/bin/python -m pytest -q tests/mcp

echo "== MCP clients (MCP Inspector CLI, conformance suite through a stdio-to-HTTP bridge)"
KEYVEIL_BIN="$CARGO_TARGET_DIR/debug/keyveil" bash tests/clients/run.sh
