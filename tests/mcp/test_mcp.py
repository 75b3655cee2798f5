"""End-to-end tests of `keyveil mcp` with a real MCP client nobody here wrote (the official
Python SDK, `mcp` on PyPI), in both protocol eras.

- 2025 era: the `initialize` handshake. The SDK's legacy mode offers 2025-11-25; 2025-06-18 (what
  several hosts still send) is driven by pinning the version the SDK offers.
- 2026-07-28 era: the SDK's `auto` mode probes `server/discover` and then sends every request
  with its own `_meta` (no handshake).
- Raw JSON-RPC lines check the negotiation itself for every version, and a 2026-07-28 request
  sent with no discover at all.

The human's steps go through the CLI (`keyveil approve ID --passphrase-stdin`). Every test that
talks MCP records its whole stdio transcript and checks that it holds neither the secret value
nor its hex or base64 forms.
"""

from __future__ import annotations

import hashlib
import json
import queue
import secrets
import statistics
import subprocess
import threading
import time
from contextlib import asynccontextmanager
from typing import Any

import anyio
import mcp.client.session
import pytest
from mcp import Client
from mcp.types import Implementation

from conftest import PASSPHRASE, Home, encodings

pytestmark = pytest.mark.anyio

SCRIPT = 'echo "token sha256: $(printf %s "$API_TOKEN" | sha256sum | cut -c1-16)"; echo "token: $API_TOKEN"'
RUN_ARGS: dict[str, Any] = {"environment": "demo", "command": ["sh", "-c", SCRIPT], "wait_seconds": 0}
TOOLS = {
    "list_environments",
    "describe_environment",
    "create_environment",
    "declare_variable",
    "run",
    "request_access",
    "access_status",
    "list_grants",
    "revoke_grant",
    "audit_log",
    "start",
    "logs",
    "stop",
}
ERAS = ["2025-11-25", "2025-06-18", "2026-07-28"]


@asynccontextmanager
async def connect(home: Home, era: str, monkeypatch: pytest.MonkeyPatch | None = None):
    """An SDK client on `keyveil mcp`, speaking `era`."""
    if era == "2026-07-28":
        mode = "auto"  # server/discover, then per-request _meta
    else:
        mode = "legacy"  # initialize handshake
        if monkeypatch is not None:
            monkeypatch.setattr(mcp.client.session, "LATEST_HANDSHAKE_VERSION", era)
    # One deadline around the whole session (cancel scopes must nest with the client's own
    # task groups, so the deadline wraps the `async with`, not its halves).
    with anyio.fail_after(240):
        async with Client(
            home.server(),
            mode=mode,
            client_info=Implementation(name="pytest-agent", version="1.0"),
            read_timeout_seconds=90,
        ) as client:
            assert client.protocol_version == era
            yield client


def text(result) -> str:
    return "\n".join(c.text for c in result.content if getattr(c, "type", "") == "text")


async def call(client: Client, tool: str, args: dict[str, Any] | None = None, timeout: float = 90):
    with anyio.fail_after(timeout):
        return await client.call_tool(tool, args or {})


@pytest.mark.parametrize("era", ERAS)
async def test_the_main_job(home: Home, era: str, monkeypatch: pytest.MonkeyPatch):
    async with connect(home, era, monkeypatch) as client:
        listed = await call(client, "list_environments")
        assert not listed.is_error, text(listed)
        envs = {e["name"]: e for e in listed.structured_content["environments"]}
        assert envs["demo"]["variables"] == ["API_TOKEN"]

        first = await call(client, "run", RUN_ARGS)
        assert not first.is_error, text(first)
        s = first.structured_content
        assert s["status"] == "pending_approval", s
        assert f"keyveil approve {s['request_id']}" in s["hint"]
        assert f"keyveil approve {s['request_id']}" in text(first)

        # The request is waiting: the human sees it and approves it with the passphrase.
        assert str(s["request_id"]) in home.cli("requests").stdout
        home.approve(s["request_id"])

        second = await call(client, "run", RUN_ARGS)
        assert not second.is_error, text(second)
        out = second.structured_content
        assert out["status"] == "completed", out
        assert out["exit_code"] == 0
        sha = hashlib.sha256(home.value.encode()).hexdigest()[:16]
        assert f"token sha256: {sha}" in out["stdout"], "the child did not receive the value"
        assert "token: [REDACTED:API_TOKEN]" in out["stdout"]
        assert out["redactions"] >= 1
        assert out["run_id"] and out["grant_id"]
        assert "[REDACTED:API_TOKEN]" in text(second)

        # The one-use grant is spent: the same command asks again, it is not served.
        third = await call(client, "run", RUN_ARGS)
        assert third.structured_content["status"] == "pending_approval"
    home.assert_no_value_in_transcript()


async def test_tools_list_shows_every_tool_with_annotations_and_output_schema(home: Home):
    async with connect(home, "2025-11-25") as client:
        tools = (await client.list_tools()).tools
        assert {t.name for t in tools} == TOOLS
        for t in tools:
            a = t.annotations
            assert a is not None, t.name
            for hint in (a.read_only_hint, a.destructive_hint, a.idempotent_hint, a.open_world_hint):
                assert hint is not None, f"{t.name} leaves an annotation unset"
            assert t.output_schema and t.output_schema.get("type") == "object", t.name
            assert t.input_schema.get("type") == "object", t.name
            assert t.description
        by = {t.name: t for t in tools}
        assert by["list_environments"].annotations.read_only_hint is True
        assert by["run"].annotations.read_only_hint is False
        assert by["run"].annotations.destructive_hint is True
        assert "command" in by["run"].input_schema["required"]
        assert "keyveil approve" in (client.instructions or "")
        assert "never" in (client.instructions or "").lower()


async def test_a_grant_covers_only_the_approved_command(home: Home):
    async with connect(home, "2026-07-28") as client:
        first = await call(client, "run", RUN_ARGS)
        rid = first.structured_content["request_id"]
        # A grant with uses left: still, another command is not covered by it.
        home.approve(rid, "--ttl", "10m", "--uses", "5")
        other = await call(client, "run", {**RUN_ARGS, "command": ["sh", "-c", "env"]})
        assert not other.is_error, text(other)
        assert other.structured_content["status"] == "pending_approval"
        assert other.structured_content["request_id"] != rid
        # Nor the same command in another working directory.
        moved = await call(client, "run", {**RUN_ARGS, "cwd": "/"})
        assert moved.structured_content["status"] == "pending_approval"
        # The approved one is.
        again = await call(client, "run", RUN_ARGS)
        assert again.structured_content["status"] == "completed"
        grants = await call(client, "list_grants")
        assert [g["id"] for g in grants.structured_content["grants"]] == [again.structured_content["grant_id"]]
        revoked = await call(client, "revoke_grant", {"grant_id": again.structured_content["grant_id"]})
        assert revoked.structured_content == {"revoked": True, "grant_id": again.structured_content["grant_id"]}
        after = await call(client, "run", RUN_ARGS)
        assert after.structured_content["status"] == "pending_approval"
    home.assert_no_value_in_transcript()


@pytest.mark.parametrize("era", ["2025-11-25", "2026-07-28"])
async def test_bad_input_is_a_tool_error_with_a_way_out(home: Home, era: str):
    async with connect(home, era) as client:
        unknown = await call(client, "run", {**RUN_ARGS, "environment": "nope"})
        assert unknown.is_error
        assert "nope" in text(unknown)
        described = await call(client, "describe_environment", {"environment": "nope"})
        assert described.is_error and "nope" in text(described)

        empty = await call(client, "run", {**RUN_ARGS, "command": []})
        assert empty.is_error and "empty" in text(empty)
        blank = await call(client, "run", {**RUN_ARGS, "command": [""]})
        assert blank.is_error and "empty" in text(blank)
        string = await call(client, "run", {**RUN_ARGS, "command": "ls -la"})
        assert string.is_error and "list of strings" in text(string)
        missing = await call(client, "run", {"environment": "demo"})
        assert missing.is_error and "command" in text(missing)
        wrong = await call(client, "run", {**RUN_ARGS, "timeout_seconds": "soon"})
        assert wrong.is_error and "invalid" in text(wrong)
        too_long = await call(client, "run", {**RUN_ARGS, "timeout_seconds": 999999})
        assert too_long.is_error and "3600" in text(too_long)
        huge = await call(client, "run", {**RUN_ARGS, "stdin": "x" * (2 * 1024 * 1024)})
        assert huge.is_error and "stdin" in text(huge)
        bad_name = await call(client, "declare_variable", {"environment": "demo", "name": "1 bad"})
        assert bad_name.is_error and "invalid" in text(bad_name)
        no_grant = await call(client, "revoke_grant", {"grant_id": "g-000000000000"})
        assert no_grant.is_error
        no_request = await call(client, "access_status", {"request_id": 999})
        assert no_request.is_error

        # The session is still healthy after all that.
        ok = await call(client, "list_environments")
        assert not ok.is_error
    home.assert_no_value_in_transcript()


async def test_a_fresh_broker_is_started_and_a_locked_vault_says_how_to_unlock(home: Home):
    # No broker runs: the server (with only HOME, PATH and KEYVEIL_HOME) starts one, whose vault
    # is locked until the human unlocks it.
    home.cli("daemon", "stop")
    async with connect(home, "2025-11-25") as client:
        locked = await call(client, "list_environments")
        assert locked.is_error
        assert "keyveil unlock" in text(locked), text(locked)
        # A run asked while locked waits as a request: `keyveil approve N` unlocks and approves
        # with one passphrase entry (the locked broker keeps only what the agent sent).
        ran = await call(client, "run", RUN_ARGS)
        assert not ran.is_error, text(ran)
        assert "pending_approval" in text(ran) and "keyveil approve 1" in text(ran), text(ran)
        home.cli("unlock", "--passphrase-stdin", stdin=PASSPHRASE + "\n")
        ok = await call(client, "list_environments")
        assert not ok.is_error, text(ok)
    home.assert_no_value_in_transcript()


async def test_declare_describe_request_and_audit(home: Home):
    async with connect(home, "2025-11-25") as client:
        created = await call(client, "create_environment", {"name": "staging", "description": "pre-prod"})
        assert created.structured_content == {"name": "staging"}
        human = await call(client, "declare_variable", {"environment": "staging", "name": "DB_PASSWORD", "description": "db"})
        assert human.structured_content["status"] == "awaiting_value"
        assert "keyveil set staging DB_PASSWORD" in human.structured_content["hint"]
        gen = await call(client, "declare_variable", {"environment": "staging", "name": "SESSION_KEY", "source": "generate", "length": 48})
        assert gen.structured_content["status"] == "set"
        # Declaring never overwrites a value.
        again = await call(client, "declare_variable", {"environment": "demo", "name": "API_TOKEN", "source": "generate"})
        assert again.structured_content["status"] == "set"

        d = await call(client, "describe_environment", {"environment": "staging"})
        vars_ = {v["name"]: v for v in d.structured_content["variables"]}
        assert vars_["DB_PASSWORD"]["set"] is False
        assert vars_["SESSION_KEY"]["set"] is True and vars_["SESSION_KEY"]["source"] == "generated"
        assert isinstance(d.structured_content["policy"], dict)

        req = await call(client, "request_access", {"environment": "demo", "reason": "deploy", "command": ["true"]})
        rid = req.structured_content["request_id"]
        assert req.structured_content["status"] == "pending"
        st = await call(client, "access_status", {"request_id": rid})
        assert st.structured_content["status"] == "pending"
        home.approve(rid)
        st = await call(client, "access_status", {"request_id": str(rid)})
        assert st.structured_content["status"] == "approved" and st.structured_content["grant_id"]
        ran = await call(client, "run", {"environment": "demo", "command": ["true"]})
        assert ran.structured_content["status"] == "completed"

        log = await call(client, "audit_log", {"limit": 100})
        events = [e.get("event") for e in log.structured_content["entries"]]
        assert "approve" in events and "run_end" in events, events
    # The CLI's own record of the story holds no value either.
    assert home.value not in home.cli("audit", "--json", "--limit", "1000").stdout
    home.assert_no_value_in_transcript()


async def test_run_waits_for_an_approval_given_during_the_call(home: Home):
    async with connect(home, "2026-07-28") as client:
        args = {**RUN_ARGS, "wait_seconds": 30}
        approved: list[int] = []

        def approver():
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and not approved:
                out = home.cli("requests", "--json", check=False).stdout
                for line in out.splitlines() or [out]:
                    try:
                        data = json.loads(line)
                    except ValueError:
                        continue
                    reqs = data if isinstance(data, list) else data.get("requests", [])
                    for r in reqs:
                        home.approve(r["id"])
                        approved.append(r["id"])
                        return
                time.sleep(0.2)

        progress: list[str] = []

        async def on_progress(done: float, total: float | None, message: str | None) -> None:
            progress.append(message or "")

        t = threading.Thread(target=approver)
        t.start()
        started = time.monotonic()
        with anyio.fail_after(60):
            result = await client.call_tool("run", args, progress_callback=on_progress)
        t.join()
        assert approved, "the approver never saw the request"
        assert result.structured_content["status"] == "completed", result.structured_content
        assert any(f"keyveil approve {approved[0]}" in m for m in progress), progress
        assert time.monotonic() - started < 25

        # Without an approval, the call returns at wait_seconds, not later.
        started = time.monotonic()
        pending = await call(client, "run", {**RUN_ARGS, "command": ["true"], "wait_seconds": 2})
        elapsed = time.monotonic() - started
        assert pending.structured_content["status"] == "pending_approval"
        assert 1.5 < elapsed < 6, elapsed
    home.assert_no_value_in_transcript()


@pytest.mark.parametrize("era", ["2025-11-25", "2026-07-28"])
async def test_cancelling_a_call_stops_the_command(home: Home, era: str):
    args = {"environment": "demo", "command": ["sh", "-c", "sleep 30"], "wait_seconds": 0}
    async with connect(home, era) as client:
        first = await call(client, "run", args)
        home.approve(first.structured_content["request_id"])
        with anyio.move_on_after(2) as scope:
            await client.call_tool("run", args)
        assert scope.cancelled_caught, "the run should still be going after 2 s"
        # The host cancelled: the broker kills the command's process group.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            status = json.loads(home.cli("status", "--json").stdout)
            if status.get("live_runs") == 0:
                break
            await anyio.sleep(0.1)
        assert status.get("live_runs") == 0, status
        ok = await call(client, "list_environments")
        assert not ok.is_error


async def test_round_trip_of_a_granted_run(home: Home, capsys: pytest.CaptureFixture[str]):
    args = {"environment": "demo", "command": ["true"], "wait_seconds": 0}
    async with connect(home, "2025-11-25") as client:
        first = await call(client, "run", args)
        home.approve(first.structured_content["request_id"], "--ttl", "10m")
        times = []
        for _ in range(20):
            t0 = time.perf_counter()
            r = await call(client, "run", args)
            times.append((time.perf_counter() - t0) * 1000)
            assert r.structured_content["status"] == "completed"
    median = statistics.median(times)
    with capsys.disabled():
        print(f"\nMCP round trip of a granted `run` of `true`: median {median:.1f} ms, min {min(times):.1f} ms, max {max(times):.1f} ms (20 calls)")
    assert median < 1000


# ---------------------------------------------------------------------------------------------
# Raw JSON-RPC: the negotiation itself, and a 2026-07-28 request with no discover at all.


class Raw:
    """`keyveil mcp` driven with hand-written JSON-RPC lines; both directions are recorded."""

    def __init__(self, home: Home, name: str):
        self.proc = home.raw_server()
        d = home.io / name
        d.mkdir()
        self.log = open(d / "raw", "ab")
        self.err = d / "err"
        self.lines: queue.Queue[bytes] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self.next_id = 0

    def _read(self):
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.log.write(line)
            self.lines.put(line)

    def send(self, msg: dict[str, Any]) -> None:
        data = (json.dumps(msg) + "\n").encode()
        self.log.write(data)
        assert self.proc.stdin is not None
        self.proc.stdin.write(data)
        self.proc.stdin.flush()

    def request(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        self.next_id += 1
        rid = self.next_id
        self.send({"jsonrpc": "2.0", "id": rid, "method": method, "params": params})
        deadline = time.monotonic() + 30
        while True:
            line = self.lines.get(timeout=max(0.1, deadline - time.monotonic()))
            msg = json.loads(line)
            if msg.get("id") == rid:
                return msg

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        assert self.proc.stderr is not None
        self.err.write_bytes(self.proc.stderr.read())
        self.log.close()


def meta_2026(name: str = "raw-agent") -> dict[str, Any]:
    return {
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientInfo": {"name": name, "version": "1"},
        "io.modelcontextprotocol/clientCapabilities": {},
    }


@pytest.mark.parametrize("version", ["2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25"])
def test_raw_initialize_echoes_each_2025_era_version(home: Home, version: str):
    raw = Raw(home, f"raw-{version}")
    try:
        r = raw.request(
            "initialize",
            {"protocolVersion": version, "capabilities": {}, "clientInfo": {"name": "raw-agent", "version": "1"}},
        )
        assert r["result"]["protocolVersion"] == version
        assert r["result"]["serverInfo"]["name"] == "keyveil"
        assert "tools" in r["result"]["capabilities"]
        raw.send({"jsonrpc": "2.0", "method": "notifications/initialized"})
        tools = raw.request("tools/list", {})
        assert {t["name"] for t in tools["result"]["tools"]} == TOOLS
        call = raw.request("tools/call", {"name": "run", "arguments": RUN_ARGS})
        assert call["result"]["structuredContent"]["status"] == "pending_approval"
    finally:
        raw.close()
    home.assert_no_value_in_transcript()


def test_raw_2026_era_with_and_without_discover(home: Home):
    raw = Raw(home, "raw-2026")
    try:
        # A first request carrying its own _meta, with no discover and no initialize.
        listed = raw.request("tools/call", {"_meta": meta_2026(), "name": "list_environments", "arguments": {}})
        assert listed["result"]["structuredContent"]["environments"][0]["variables"] == ["API_TOKEN"]
        assert listed["result"]["resultType"] == "complete"
        disc = raw.request("server/discover", {"_meta": meta_2026()})
        assert "2026-07-28" in disc["result"]["supportedVersions"]
        assert "2025-06-18" in disc["result"]["supportedVersions"]
        pending = raw.request("tools/call", {"_meta": meta_2026(), "name": "run", "arguments": RUN_ARGS})
        rid = pending["result"]["structuredContent"]["request_id"]
        home.approve(rid)
        done = raw.request("tools/call", {"_meta": meta_2026(), "name": "run", "arguments": RUN_ARGS})
        s = done["result"]["structuredContent"]
        assert s["status"] == "completed" and "[REDACTED:API_TOKEN]" in s["stdout"]
        # The grant is bound to the client that asked: another client name is not served.
        home.approve(raw.request("tools/call", {"_meta": meta_2026(), "name": "run", "arguments": RUN_ARGS})["result"]["structuredContent"]["request_id"], "--ttl", "10m")
        other = raw.request("tools/call", {"_meta": meta_2026("someone-else"), "name": "run", "arguments": RUN_ARGS})
        assert other["result"]["structuredContent"]["status"] == "pending_approval"
    finally:
        raw.close()
    home.assert_no_value_in_transcript()


def test_raw_initialize_asking_for_2026_falls_back_to_a_handshake_version(home: Home):
    """2026-07-28 has no `initialize`: a client that sends one anyway gets the newest version that
    does (and can then work normally)."""
    raw = Raw(home, "raw-init-2026")
    try:
        r = raw.request(
            "initialize",
            {"protocolVersion": "2026-07-28", "capabilities": {}, "clientInfo": {"name": "raw-agent", "version": "1"}},
        )
        assert r["result"]["protocolVersion"] == "2025-11-25"
        listed = raw.request("tools/call", {"name": "list_environments", "arguments": {}})
        assert "demo" in json.dumps(listed["result"]["structuredContent"])
    finally:
        raw.close()


async def test_hidden_names_reach_the_agent_only_as_aliases(home: Home):
    """With `hide-names on`, the whole MCP transcript never names the variable; the agent runs
    by alias and the child still gets the real name."""
    real = "PAYMENTS_SIGNING_KEY"
    value = secrets.token_urlsafe(30)
    home.cli("set", "demo", real, "--from-stdin", stdin=value)
    home.cli("policy", "set", "demo", "hide-names", "on", "--passphrase-stdin", stdin=PASSPHRASE + "\n")
    revealed = json.loads(
        home.cli("env", "show", "demo", "--reveal-names", "--json", "--passphrase-stdin", stdin=PASSPHRASE + "\n").stdout
    )
    alias = next(n["alias"] for n in revealed["names"] if n["real_name"] == real)
    # The script reaches the variable without spelling its name (an argv is the agent's text).
    script = "v=$(env | sed -n 's/^PAYMENTS_SIGNING_KE[Y]=//p'); echo \"got=$v\"; echo \"len=${#v}\""
    async with connect(home, "2026-07-28") as client:
        listed = await call(client, "list_environments")
        names = listed.structured_content["environments"][0]["variables"]
        assert alias in names and all(n.startswith("HIDDEN_") for n in names), names
        described = await call(client, "describe_environment", {"environment": "demo"})
        assert alias in [v["name"] for v in described.structured_content["variables"]]
        args = {"environment": "demo", "command": ["sh", "-c", script], "variables": [alias], "wait_seconds": 0}
        first = await call(client, "run", args)
        assert first.structured_content["status"] == "pending_approval", text(first)
        home.approve(first.structured_content["request_id"])
        done = await call(client, "run", args)
        out = done.structured_content["stdout"]
        assert f"got=[REDACTED:{alias}]" in out, out
        assert f"len={len(value)}" in out, out
        grants = await call(client, "list_grants")
        audit = await call(client, "audit_log", {"limit": 50})
        assert alias in json.dumps(audit.structured_content)
    # In that whole session the name never crossed the channel, either way (stderr included),
    # and neither did the value in any encoding.
    t = home.transcript()
    assert real.encode() not in t
    assert not [k for k, form in encodings(value.encode()).items() if form and form in t]
    # A guessed real name gets the same answer as a made-up one (so it confirms nothing).
    async with connect(home, "2026-07-28") as client:
        guessed = await call(client, "run", {**RUN_ARGS, "variables": [real]})
        made_up = await call(client, "run", {**RUN_ARGS, "variables": ["NOT_A_VAR"]})
        assert guessed.is_error and made_up.is_error
        assert text(guessed).replace(real, "X") == text(made_up).replace("NOT_A_VAR", "X")
    home.assert_no_value_in_transcript()


async def test_a_value_written_into_a_file_is_reported_to_the_agent(home: Home):
    """The post-run scan's findings reach the agent (by variable and path, never the value)."""
    args = {"environment": "demo", "command": ["sh", "-c", 'printf %s "$API_TOKEN" > leaked.txt; echo done'], "wait_seconds": 0}
    async with connect(home, "2026-07-28") as client:
        first = await call(client, "run", args)
        home.approve(first.structured_content["request_id"])
        done = await call(client, "run", args)
        assert done.structured_content["status"] == "completed", text(done)
        leaks = done.structured_content["write_leaks"]
        assert [(l["variable"], l["path"].endswith("leaked.txt"), l["form"]) for l in leaks] == [("API_TOKEN", True, "raw")], leaks
        assert "wrote the value of API_TOKEN into" in text(done)
    (home.work / "leaked.txt").unlink()
    home.assert_no_value_in_transcript()
