"""Dynamic credentials through MCP: an agent runs a command that uses a PostgreSQL role minted for
its grant. Neither the admin credential nor the minted password (nor their hex/base64 forms) may
cross the MCP channel.

Needs PostgreSQL on 127.0.0.1:5432 (trust, database `test`) and `psql`; skipped without them
(failed under CI, where .ci/run starts PostgreSQL).
"""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from conftest import Home, encodings
from test_mcp import call, connect, text

pytestmark = pytest.mark.anyio

ADMIN_PW = "Mcp-Admin-Pw-7d1c-never-shown"


def pg_ready() -> bool:
    if shutil.which("psql") is None:
        return False
    p = subprocess.run(
        ["psql", "-h", "127.0.0.1", "-U", "postgres", "-d", "test", "-XAtqc", "select 1"],
        capture_output=True,
    )
    return p.returncode == 0


async def test_a_minted_role_is_used_and_never_crosses_the_channel(home: Home, tmp_path):
    if not pg_ready():
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL is not running on 127.0.0.1:5432 (.ci/run starts it)")
        pytest.skip("PostgreSQL is not running on 127.0.0.1:5432")
    add = home.cli(
        "dynamic", "add", "demo", "DATABASE_URL", "--engine", "postgres", "--admin-stdin", "--output", "url",
        stdin=f"postgresql://postgres:{ADMIN_PW}@127.0.0.1:5432/test\n",
    )
    assert ADMIN_PW not in add.stdout + add.stderr
    prefix = add.stdout.split("users named ")[1].split("*")[0]
    leak = tmp_path / "minted"
    script = f'psql "$DATABASE_URL" -XAtc "select current_user"; echo "url=$DATABASE_URL"; printf %s "$DATABASE_URL" > {leak}'
    args = {"environment": "demo", "variables": ["DATABASE_URL"], "command": ["sh", "-c", script], "wait_seconds": 0}
    async with connect(home, "2026-07-28") as client:
        described = await call(client, "describe_environment", {"environment": "demo"})
        var = [v for v in described.structured_content["variables"] if v["name"] == "DATABASE_URL"][0]
        assert var["source"] == "dynamic" and var["set"] is True
        first = await call(client, "run", args)
        home.approve(first.structured_content["request_id"], "--ttl", "10m")
        done = await call(client, "run", args)
        assert done.structured_content["status"] == "completed", text(done)
        out = done.structured_content["stdout"]
        assert out.splitlines()[0].startswith(prefix), out
        assert "url=[REDACTED:DATABASE_URL]" in out
        grants = await call(client, "list_grants")
        assert len(grants.structured_content["grants"]) == 1
        revoked = await call(client, "revoke_grant", {"grant_id": done.structured_content["grant_id"]})
        assert revoked.structured_content["revoked"] is True
    minted = leak.read_text()
    password = minted.split("://", 1)[1].split("@", 1)[0].split(":", 1)[1]
    assert len(password) >= 32
    t = home.transcript()
    for secret in (ADMIN_PW, password, minted):
        leaked = [n for n, f in encodings(secret.encode()).items() if f and f in t]
        assert not leaked, f"a secret crossed the MCP channel as {leaked}"
    audit = (home.path / "audit.jsonl").read_bytes()
    assert ADMIN_PW.encode() not in audit and password.encode() not in audit
    home.assert_no_value_in_transcript()
