#!/usr/bin/env python3
"""Load on one broker: N concurrent MCP clients (each its own `keyveil mcp` process, driven by the
Python `mcp` SDK) x M granted `run` calls each, under one standing grant (approved once with
`--ttl`, so no human is needed during the load).

Every call must complete with exit code 0 and the redacted output; afterwards the audit log must
hold exactly N x M `run_end` entries and verify. Prints latency percentiles (per `run` call, as
the MCP client sees it), throughput, and the broker's peak RSS (`VmHWM`) as a Markdown block for
docs/benchmarks.md. Exit 1 if anything was lost.

Usage: scripts/bench-load.py --bin target/release/keyveil [--clients 200] [--runs 20]
(scripts/bench-load.sh picks the binary and the venv.)
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import anyio
from mcp import Client, StdioServerParameters
from mcp.types import Implementation

PASSPHRASE = "load bench passphrase 42"
VALUE = "tok_load_bench_Jq3xV8mZ2wK7pLr5"


def pct(sorted_ms: list[float], p: float) -> float:
    i = min(len(sorted_ms) - 1, max(0, round(p / 100 * len(sorted_ms)) - 1))
    return sorted_ms[i]


def status_kib(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return -1


async def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--clients", type=int, default=200)
    ap.add_argument("--runs", type=int, default=20)
    a = ap.parse_args()
    binary = os.path.abspath(a.bin)

    root = tempfile.mkdtemp(prefix="kvl", dir="/tmp")
    home, work = os.path.join(root, "h"), os.path.join(root, "w")
    os.makedirs(work)
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": root, "KEYVEIL_HOME": home,
           "LANG": "C.UTF-8", "KEYVEIL_NO_NOTIFY": "1"}

    def kv(*args: str, inp: str | None = None) -> str:
        p = subprocess.run([binary, *args], env=env, input=inp, capture_output=True, text=True)
        if p.returncode != 0:
            sys.exit(f"keyveil {' '.join(args)} failed: {p.stderr}")
        return p.stdout

    kv("init", "--passphrase-stdin", "--kdf-memory-kib", "19456", inp=PASSPHRASE + "\n")
    kv("env", "create", "bench")
    kv("set", "bench", "API_TOKEN", "--from-stdin", inp=VALUE)
    broker = int(open(os.path.join(home, "run", "broker.pid")).read())
    rss_idle = status_kib(broker, "VmRSS")

    server = StdioServerParameters(command=binary, args=["mcp"], env=env, cwd=work)
    info = Implementation(name="bench-agent", version="1")
    args = {"environment": "bench", "command": ["printenv", "API_TOKEN"], "wait_seconds": 0}

    # The standing grant: one request, approved once for an hour.
    async with Client(server, mode="legacy", client_info=info, read_timeout_seconds=60) as c:
        first = (await c.call_tool("run", args)).structured_content
    if first.get("status") != "pending_approval":
        sys.exit(f"expected a pending request, got {first}")
    kv("approve", str(first["request_id"]), "--passphrase-stdin", "--ttl", "1h",
       "--uses", str(a.clients * a.runs + 10), inp=PASSPHRASE + "\n")

    latencies: list[float] = []
    failures: list[str] = []
    connect_s: list[float] = []

    async def agent(i: int) -> None:
        t0 = time.perf_counter()
        try:
            async with Client(server, mode="legacy", client_info=info, read_timeout_seconds=600) as c:
                connect_s.append(time.perf_counter() - t0)
                for _ in range(a.runs):
                    t = time.perf_counter()
                    r = await c.call_tool("run", args)
                    latencies.append((time.perf_counter() - t) * 1000)
                    sc = r.structured_content or {}
                    out = sc.get("stdout", "")
                    if sc.get("status") != "completed" or sc.get("exit_code") != 0 \
                            or out.strip() != "[REDACTED:API_TOKEN]" or VALUE in json.dumps(sc):
                        failures.append(f"client {i}: {json.dumps(sc)[:300]}")
        except Exception as e:  # noqa: BLE001 - every failure is reported, none may pass silently
            failures.append(f"client {i}: {type(e).__name__}: {e}")

    t_start = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for i in range(a.clients):
            tg.start_soon(agent, i)
    wall = time.perf_counter() - t_start

    hwm = status_kib(broker, "VmHWM")
    rss_after = status_kib(broker, "VmRSS")
    run_ends = 0
    with open(os.path.join(home, "audit.jsonl")) as f:
        for line in f:
            if json.loads(line).get("event") == "run_end":
                run_ends += 1
    verify = subprocess.run([binary, "audit", "verify"], env=env, capture_output=True, text=True)
    kv("daemon", "stop")
    shutil.rmtree(root, ignore_errors=True)

    total = a.clients * a.runs
    lat = sorted(latencies)
    ok = not failures and len(lat) == total and run_ends == total and verify.returncode == 0
    cpu = platform.processor() or platform.machine()
    print(f"""### Load: {a.clients} concurrent MCP clients x {a.runs} runs ({total} runs), one broker

| figure | value |
|---|---|
| runs completed / audited (`run_end`) | {len(lat)} / {run_ends} (expected {total}) |
| failures | {len(failures)} |
| audit verify | {"ok" if verify.returncode == 0 else "FAILED"} |
| wall time | {wall:.1f} s ({total / wall:.0f} runs/s) |
| `run` latency p50 / p90 / p99 / max | {pct(lat, 50):.0f} / {pct(lat, 90):.0f} / {pct(lat, 99):.0f} / {lat[-1] if lat else 0:.0f} ms |
| MCP session start p50 / max | {statistics.median(connect_s) * 1000 if connect_s else 0:.0f} / {max(connect_s, default=0) * 1000:.0f} ms |
| broker RSS idle / after / peak (`VmHWM`) | {rss_idle / 1024:.1f} / {rss_after / 1024:.1f} / {hwm / 1024:.1f} MiB |

Command `printenv API_TOKEN` (output redacted to `[REDACTED:API_TOKEN]`), {os.cpu_count()} CPUs ({cpu}),
{os.path.basename(os.path.dirname(binary))} build; latency is one `run` tool call as the client sees it.""")
    for f_ in failures[:10]:
        print("FAILURE:", f_, file=sys.stderr)
    if verify.returncode != 0:
        print(verify.stderr, file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(anyio.run(main))
