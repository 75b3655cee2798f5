"""What agent hosts need beyond the main job, driven by the Python `mcp` SDK:

- background runs (`start`, `logs`, `stop`) in both protocol eras;
- URL-mode elicitation that never carries a value: `declare_variable` sends the human to
  keyveil's local page (the test plays the human in a "browser": urllib with a cookie and an
  Origin header), the value goes from the page to the broker, and the MCP transcript never
  holds it; a form-mode-only client just gets where to enter it;
- a `run` cancelled while it waits for approval starts nothing, even if approved afterwards;
- a server started with a host's whitelist environment (no KEYVEIL_HOME, no XDG_*) finds the
  broker from HOME alone.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import shlex
import subprocess
import time
import urllib.parse
from typing import Any

import anyio
import pytest
from mcp import Client, StdioServerParameters
from mcp import types
from mcp.types import Implementation

from conftest import PASSPHRASE, Home
from test_mcp import call, connect, text

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize("era", ["2025-11-25", "2026-07-28"])
async def test_start_logs_and_stop_a_background_run(home: Home, era: str):
    script = 'echo "token: $API_TOKEN"; i=0; while true; do i=$((i+1)); echo "tick $i"; sleep 0.1; done'
    args = {"environment": "demo", "command": ["sh", "-c", script], "wait_seconds": 0}
    async with connect(home, era) as client:
        first = await call(client, "start", args)
        assert not first.is_error, text(first)
        assert first.structured_content["status"] == "pending_approval"
        home.approve(first.structured_content["request_id"], "--ttl", "10m")
        started = await call(client, "start", args)
        assert not started.is_error, text(started)
        run_id = started.structured_content["run_id"]
        assert started.structured_content["status"] == "started"

        seen, offset = "", 0
        deadline = time.monotonic() + 20
        while "tick 3" not in seen and time.monotonic() < deadline:
            r = await call(client, "logs", {"run_id": run_id, "from": offset})
            assert not r.is_error, text(r)
            out = r.structured_content
            assert out["from"] == offset and out["running"] is True
            seen += out["output"]
            offset = out["next"]
            await anyio.sleep(0.1)
        assert seen.startswith("token: [REDACTED:API_TOKEN]\ntick 1\n"), seen

        stopped = await call(client, "stop", {"run_id": run_id})
        assert stopped.structured_content["stopped"] is True, stopped.structured_content
        after = await call(client, "logs", {"run_id": run_id, "from": offset})
        assert after.structured_content["running"] is False
        assert after.structured_content["stopped"] is True
        assert after.structured_content["exit_code"] == 143
        status = json.loads(home.cli("status", "--json").stdout)
        assert status["live_runs"] == 0, status
        missing = await call(client, "logs", {"run_id": "r-000000000000"})
        assert missing.is_error and "no background run" in text(missing)
    home.assert_no_value_in_transcript()


def browser_sets_value(url: str, value: str) -> str:
    """What the human does on the page: open the link, read the form, type the value, submit."""
    u = urllib.parse.urlsplit(url)
    origin = f"http://{u.netloc}"

    def request(method: str, path: str, headers: dict[str, str], body: str | None = None):
        c = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
        c.request(method, path, body=body, headers={"Host": u.netloc, **headers})
        r = c.getresponse()
        data = r.read().decode()
        c.close()
        return r, data

    r, _ = request("GET", f"{u.path}?{u.query}", {})
    assert r.status == 303, r.status
    cookie = r.getheader("Set-Cookie").split(";")[0]
    r, page = request("GET", "/set", {"Cookie": cookie})
    assert r.status == 200, page
    csrf = re.search(r'name="csrf" value="([0-9a-f]+)"', page).group(1)
    body = urllib.parse.urlencode({"csrf": csrf, "value": value})
    r, done = request(
        "POST",
        "/set",
        {"Cookie": cookie, "Origin": origin, "Content-Type": "application/x-www-form-urlencoded"},
        body,
    )
    assert r.status == 200, done
    assert value not in done
    return done


async def test_url_elicitation_sends_the_human_to_the_local_page(home: Home):
    typed = "typed-in-the-browser-" + os.urandom(6).hex()
    seen: list[types.ElicitRequestURLParams] = []
    links: list[types.ElicitRequestURLParams] = []

    async def on_elicit(context, params):
        assert isinstance(params, types.ElicitRequestURLParams), params
        assert params.url.startswith("http://127.0.0.1:"), params.url
        if params.elicitation_id.startswith("keyveil-approve-"):
            # The approval page link for the pending run (the human approves in the terminal).
            links.append(params)
            return types.ElicitResult(action="decline")
        seen.append(params)
        await anyio.to_thread.run_sync(browser_sets_value, params.url, typed)
        return types.ElicitResult(action="accept")

    with anyio.fail_after(120):
        async with Client(
            home.server(),
            mode="legacy",
            client_info=Implementation(name="pytest-agent", version="1.0"),
            elicitation_callback=on_elicit,
            read_timeout_seconds=90,
        ) as client:
            r = await call(client, "declare_variable", {"environment": "demo", "name": "DB_PASSWORD", "source": "human"})
            assert not r.is_error, text(r)
            assert r.structured_content["status"] == "set", r.structured_content
            assert len(seen) == 1
            d = await call(client, "describe_environment", {"environment": "demo"})
            var = next(v for v in d.structured_content["variables"] if v["name"] == "DB_PASSWORD")
            assert var["set"] is True
            # The value reaches a granted command.
            args = {
                "environment": "demo",
                "command": ["sh", "-c", 'printf %s "$DB_PASSWORD" | sha256sum | cut -c1-16'],
                "wait_seconds": 0,
            }
            first = await call(client, "run", args)
            rid = first.structured_content["request_id"]
            assert first.structured_content["waiting"]["approval_link_sent"] is True
            home.approve(rid)
            done = await call(client, "run", args)
            # One approval-page link, for that request, carrying nothing but the one-time token.
            assert [p.elicitation_id for p in links] == [f"keyveil-approve-{rid}"]
            assert re.fullmatch(r"http://127\.0\.0\.1:\d+/login\?token=[0-9a-f]{64}", links[0].url), links[0].url
            assert done.structured_content["exit_code"] == 0, done.structured_content
            assert done.structured_content["stdout"].strip() == hashlib.sha256(typed.encode()).hexdigest()[:16]
    # The page's link went through the client (that is URL mode), never the value.
    assert typed.encode() not in home.transcript()
    home.assert_no_value_in_transcript()


def raw_session(home: Home, capabilities: dict[str, Any]) -> subprocess.Popen[bytes]:
    p = home.raw_server()
    init = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {"protocolVersion": "2025-11-25", "capabilities": capabilities, "clientInfo": {"name": "raw", "version": "1"}},
    }
    p.stdin.write((json.dumps(init) + "\n").encode())
    p.stdin.write(b'{"jsonrpc":"2.0","method":"notifications/initialized"}\n')
    p.stdin.flush()
    assert json.loads(p.stdout.readline())["id"] == 1
    return p


def test_a_form_only_client_is_told_where_to_enter_the_value(home: Home):
    p = raw_session(home, {"elicitation": {"form": {}}})
    try:
        req = {
            "jsonrpc": "2.0",
            "id": 2,
            "method": "tools/call",
            "params": {"name": "declare_variable", "arguments": {"environment": "demo", "name": "SMTP_PASSWORD"}},
        }
        p.stdin.write((json.dumps(req) + "\n").encode())
        p.stdin.flush()
        while True:
            msg = json.loads(p.stdout.readline())
            assert msg.get("method") != "elicitation/create", "a form-mode client must never be asked for a value"
            if msg.get("id") == 2:
                break
        result = msg["result"]
        assert result["structuredContent"]["status"] == "awaiting_value"
        hint = result["structuredContent"]["hint"]
        assert "keyveil set demo SMTP_PASSWORD" in hint, hint
        assert "http://" not in json.dumps(result), "no link goes to the model"
    finally:
        p.stdin.close()
        p.wait(timeout=10)


async def test_a_run_cancelled_while_waiting_starts_nothing(home: Home):
    marker = home.work / "ran"
    args = {"environment": "demo", "command": ["sh", "-c", f"touch {shlex.quote(str(marker))}"], "wait_seconds": 30}
    async with connect(home, "2025-11-25") as client:
        with anyio.move_on_after(1.5) as scope:
            await client.call_tool("run", args)
        assert scope.cancelled_caught
        # The SDK sends notifications/cancelled from a task of its own: give it a moment to
        # reach the server (an approval that beats the cancellation runs the command, as it
        # should).
        await anyio.sleep(1.0)
        pending = json.loads(home.cli("requests", "--json").stdout)
        assert pending, "the request is still there for the human"
        home.approve(pending[-1]["id"])
        await anyio.sleep(1.5)
        assert not marker.exists(), "a cancelled call must not run after a later approval"
        audit = home.cli("audit", "--json", "--limit", "50").stdout
        assert '"run_start"' not in audit
        ok = await call(client, "list_environments")
        assert not ok.is_error


def test_a_server_with_codex_whitelist_environment_finds_the_broker(home: Home, tmp_path):
    # A user with the default data directory: HOME only (plus what Codex passes), no
    # KEYVEIL_HOME, no XDG_* anywhere.
    h = tmp_path / "u"
    h.mkdir()
    env = {"HOME": str(h), "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8", "USER": "u", "SHELL": "/bin/sh", "TERM": "dumb"}
    run = lambda *a, stdin=None: subprocess.run([str(home.bin), *a], env=env, input=stdin, capture_output=True, text=True, timeout=60, start_new_session=True)
    try:
        assert run("init", "--passphrase-stdin", "--kdf-memory-kib", "19456", stdin=PASSPHRASE + "\n").returncode == 0
        assert run("env", "create", "demo").returncode == 0
        p = subprocess.Popen([str(home.bin), "mcp"], env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            lines = [
                {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "codex-mcp-client", "version": "0"}}},
                {"jsonrpc": "2.0", "method": "notifications/initialized"},
                {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "list_environments", "arguments": {}}},
            ]
            for m in lines:
                p.stdin.write((json.dumps(m) + "\n").encode())
            p.stdin.flush()
            json.loads(p.stdout.readline())
            reply = json.loads(p.stdout.readline())
            assert reply["id"] == 2
            names = [e["name"] for e in reply["result"]["structuredContent"]["environments"]]
            assert names == ["demo"], reply
        finally:
            p.stdin.close()
            p.wait(timeout=10)
    finally:
        run("daemon", "stop")


async def test_2026_url_client_gets_the_approval_link_as_input_required(home: Home):
    """2026-07-28 has no server-to-client requests: a pending `run` answers with an
    InputRequiredResult carrying the approval-page link; the SDK shows it (here: the test
    approves in the terminal, as the human would after opening it) and retries the call, which
    then completes. One model tool call, no polling."""
    links: list[types.ElicitRequestURLParams] = []

    async def on_elicit(context, params):
        assert isinstance(params, types.ElicitRequestURLParams), params
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+/login\?token=[0-9a-f]{64}", params.url), params.url
        assert "printf" not in params.message and "deploy-now" not in params.message
        links.append(params)
        rid = int(params.elicitation_id.removeprefix("keyveil-approve-"))
        await anyio.to_thread.run_sync(home.approve, rid)
        return types.ElicitResult(action="accept")

    args = {
        "environment": "demo",
        "command": ["sh", "-c", 'printf "token: %s\\n" "$API_TOKEN"'],
        "reason": "deploy-now",
        "wait_seconds": 30,
    }
    with anyio.fail_after(120):
        async with Client(
            home.server(),
            mode="auto",
            client_info=Implementation(name="pytest-agent", version="1.0"),
            elicitation_callback=on_elicit,
            read_timeout_seconds=90,
        ) as client:
            assert client.protocol_version == "2026-07-28"
            r = await call(client, "run", args)
            assert not r.is_error, text(r)
            assert r.structured_content["status"] == "completed", r.structured_content
            assert r.structured_content["stdout"] == "token: [REDACTED:API_TOKEN]\n"
    assert len(links) == 1, links
    home.assert_no_value_in_transcript()
