"""Fixtures for the end-to-end MCP tests.

Each test gets a fresh keyveil home (a short path under /tmp, so the broker's socket path fits),
set up through the real CLI as a human would: `keyveil init`, `keyveil env create demo`,
`keyveil set demo API_TOKEN`. The MCP server is started by the Python SDK's stdio client through
a small shell wrapper that records every byte in both directions (and the server's stderr) and
runs `keyveil mcp` under `env -i` with only HOME, PATH and KEYVEIL_HOME.

The binary is `$KEYVEIL_BIN`, else `$CARGO_TARGET_DIR/debug/keyveil`, else `target/debug/keyveil`.
Nothing here builds it.
"""

from __future__ import annotations

import base64
import os
import secrets
import shlex
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from mcp import StdioServerParameters

REPO = Path(__file__).resolve().parents[2]
PASSPHRASE = "correct horse battery staple"


def keyveil_bin() -> Path:
    explicit = os.environ.get("KEYVEIL_BIN")
    if explicit:
        return Path(explicit).resolve()
    target = Path(os.environ.get("CARGO_TARGET_DIR") or REPO / "target")
    if not target.is_absolute():
        target = REPO / target
    return target / "debug" / "keyveil"


def encodings(value: bytes) -> dict[str, bytes]:
    """The forms of a value that must never appear: raw, hex and base64 (standard and URL-safe)
    at the three byte offsets it can start at inside a longer encoded stream (only the characters
    that depend on the value alone)."""
    forms = {
        "raw": value,
        "hex": value.hex().encode(),
        "HEX": value.hex().upper().encode(),
    }
    for name, enc in (("base64", base64.b64encode), ("base64url", base64.urlsafe_b64encode)):
        for k in range(3):
            data = b"\0" * k + value
            e = enc(data).rstrip(b"=")
            forms[f"{name}@{k}"] = e[4 if k else 0 : len(data) // 3 * 4]
    return forms


class Home:
    """One throwaway keyveil home, the human's CLI on it, and the recorded MCP stdio."""

    def __init__(self, binary: Path, root: Path):
        self.bin = binary
        self.root = root
        self.path = root / "h"
        self.io = root / "io"
        self.io.mkdir()
        self.work = root / "w"
        self.work.mkdir()
        self.value = ""
        self.sessions = 0

    def env(self) -> dict[str, str]:
        return {
            "HOME": os.environ.get("HOME") or str(self.root),
            "PATH": os.environ.get("PATH") or "/usr/bin:/bin",
            "KEYVEIL_HOME": str(self.path),
        }

    def cli(self, *args: str, stdin: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
        p = subprocess.run(
            [str(self.bin), *args],
            input=stdin,
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=60,
            cwd=self.work,
            # A session of its own: no controlling terminal, so nothing can prompt on the
            # developer's terminal (a prompt fails with "no terminal", as in CI).
            start_new_session=True,
        )
        if check and p.returncode != 0:
            raise AssertionError(f"keyveil {' '.join(args)} exited {p.returncode}:\n{p.stdout}\n{p.stderr}")
        return p

    def approve(self, request_id: int, *extra: str) -> str:
        # The "y" answers the confirmation asked after the factor where names are hidden.
        return self.cli("approve", str(request_id), "--passphrase-stdin", *extra, stdin=PASSPHRASE + "\ny\n").stdout

    def server(self) -> StdioServerParameters:
        """Parameters for the SDK's stdio client: `keyveil mcp` behind a recording wrapper."""
        self.sessions += 1
        d = self.io / f"s{self.sessions}"
        d.mkdir()
        q = shlex.quote
        only = " ".join(q(f"{k}={v}") for k, v in self.env().items())
        wrapper = d / "server.sh"
        wrapper.write_text(
            "#!/bin/sh\n"
            f"tee -a {q(str(d / 'in'))} | env -i {only} {q(str(self.bin))} mcp 2>>{q(str(d / 'err'))}"
            f" | tee -a {q(str(d / 'out'))}\n"
        )
        return StdioServerParameters(command="/bin/sh", args=[str(wrapper)], env=self.env(), cwd=str(self.work))

    def raw_server(self) -> subprocess.Popen[bytes]:
        """`keyveil mcp` for hand-written JSON-RPC lines (its stdio is recorded by the caller)."""
        return subprocess.Popen(
            [str(self.bin), "mcp"],
            env=self.env(),
            cwd=self.work,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )

    def transcript(self) -> bytes:
        """Every recorded byte: both directions of every session, and the server's stderr."""
        parts = [p.read_bytes() for p in sorted(self.io.rglob("*")) if p.is_file() and p.name in ("in", "out", "err", "raw")]
        return b"".join(parts)

    def assert_no_value_in_transcript(self) -> None:
        t = self.transcript()
        assert len(t) > 200, "the transcript was not recorded"
        leaked = [name for name, form in encodings(self.value.encode()).items() if form and form in t]
        assert not leaked, f"the secret crossed the MCP channel as: {leaked}"


@pytest.fixture(scope="session")
def kv_bin() -> Path:
    b = keyveil_bin()
    if not b.is_file():
        pytest.fail(f"no keyveil binary at {b}: build it (`cargo build -p keyveil`) or set KEYVEIL_BIN")
    return b


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def home(kv_bin: Path):
    root = Path(tempfile.mkdtemp(prefix="kvt-", dir="/tmp"))
    h = Home(kv_bin, root)
    try:
        h.cli("init", "--passphrase-stdin", "--kdf-memory-kib", "19456", stdin=PASSPHRASE + "\n")
        h.cli("env", "create", "demo")
        # URL-safe base64 alphabet: letters, digits, '-' and '_'.
        h.value = secrets.token_urlsafe(30)
        h.cli("set", "demo", "API_TOKEN", "--from-stdin", stdin=h.value)
        yield h
    finally:
        h.cli("daemon", "stop", check=False)
        shutil.rmtree(root, ignore_errors=True)
