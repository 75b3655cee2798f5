#!/usr/bin/env python3
"""Memory the broker gives back after load (issue 21, performance item 4).

On a throwaway home with 10 stored values and a standing `--any-command` grant, runs
--bursts bursts of --clients concurrent `keyveil run --env demo -- printenv API_TOKEN`
processes, each --runs runs in a row, and samples the broker's RSS (`VmRSS`, /proc) while
idle, at its highest during each burst, and --settle seconds after each burst ends; plus the
peak (`VmHWM`). Goal: back within 2x idle a few seconds after load.

With --mcp, each client is instead one `keyveil mcp` session (raw JSON-RPC over its stdio:
`initialize`, then --runs `tools/call run` of `printenv API_TOKEN` in a row), as in issue 21's
"three bursts of 200 MCP sessions x 20 runs" (--mcp --clients 200 --runs 20).

Usage: scripts/bench-memory.py [--bin target/release/keyveil] [--clients 100] [--runs 5]
       [--bursts 3] [--settle 5] [--mcp]
Prints a Markdown table for docs/benchmarks.md. Values are random, made here, never printed.
"""
import argparse, json, os, secrets, shutil, subprocess, sys, tempfile, threading, time

PASS = "bench passphrase, not a secret"


def kib(pid, field):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def mcp_session(binary, env, cwd, runs, wait=5, last=None):
    """One `keyveil mcp` session: `initialize`, then `runs` calls of the `run` tool. Returns
    how many calls failed (not completed, or the value not redacted); the last call's
    structured content is put in `last` (a dict) when given."""
    p = subprocess.Popen([binary, "mcp"], env=env, cwd=cwd, stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, bufsize=1)

    def call(i, method, params):
        p.stdin.write(json.dumps({"jsonrpc": "2.0", "id": i, "method": method, "params": params}) + "\n")
        p.stdin.flush()
        while True:
            line = p.stdout.readline()
            if not line:
                return None
            m = json.loads(line)
            if m.get("id") == i:
                return m

    failed = 0
    try:
        init = call(0, "initialize", {"protocolVersion": "2025-06-18", "capabilities": {},
                                      "clientInfo": {"name": "bench-memory", "version": "1"}})
        if not init or "result" not in init:
            return runs
        p.stdin.write(json.dumps({"jsonrpc": "2.0", "method": "notifications/initialized"}) + "\n")
        p.stdin.flush()
        for i in range(runs):
            r = call(i + 1, "tools/call", {"name": "run", "arguments": {
                "environment": "demo", "command": ["printenv", "API_TOKEN"], "wait_seconds": wait}})
            sc = ((r or {}).get("result") or {}).get("structuredContent") or {}
            if last is not None:
                last.update(sc)
            if sc.get("status") != "completed" or "[REDACTED:API_TOKEN]" not in sc.get("stdout", ""):
                failed += 1
    finally:
        p.stdin.close()
        p.wait()
    return failed


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default=os.path.join(os.environ.get("CARGO_TARGET_DIR", "target"), "release", "keyveil"))
    ap.add_argument("--clients", type=int, default=100)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--bursts", type=int, default=3)
    ap.add_argument("--settle", type=float, default=5.0)
    ap.add_argument("--mcp", action="store_true", help="clients are MCP sessions, not CLI runs")
    a = ap.parse_args()
    home = tempfile.mkdtemp(prefix="kvmem")
    # The runs' working directory: empty, so the write-side scan after each run costs little.
    work = tempfile.mkdtemp(prefix="kvmem-work")
    env = {"PATH": os.environ["PATH"], "HOME": home, "KEYVEIL_HOME": home, "LANG": "C.UTF-8",
           "KEYVEIL_NO_NOTIFY": "1"}

    def kv(*args, stdin=None, check=True):
        r = subprocess.run([a.bin, *args], input=stdin, env=env, capture_output=True, text=True,
                           cwd=work)
        if check and r.returncode != 0:
            sys.exit(f"keyveil {' '.join(args)} failed: {r.stderr}")
        return r

    try:
        kv("init", "--passphrase-stdin", "--kdf-memory-kib", "19456", stdin=PASS + "\n")
        kv("env", "create", "demo")
        for i in range(10):
            name = "API_TOKEN" if i == 0 else f"V{i}"
            kv("set", "demo", name, "--from-stdin", stdin=secrets.token_hex(20))
        cmd = [a.bin, "run", "--env", "demo", "--wait", "5", "--", "printenv", "API_TOKEN"]
        # A standing grant covering any command in `demo` (for the MCP client with --mcp: a
        # grant is scoped to its client).
        if a.mcp:
            first = {}
            mcp_session(a.bin, env, work, 1, wait=0, last=first)
            if first.get("status") != "pending_approval":
                sys.exit(f"expected a pending request, got {first}")
            req = first["request_id"]
        else:
            kv("run", "--env", "demo", "--wait", "0", "--", "true", check=False)
            req = json.loads(kv("requests", "--json").stdout)[-1]["id"]
        kv("approve", str(req), "--passphrase-stdin", "--any-command", "--ttl", "1h", stdin=PASS + "\n")
        pid = int(open(os.path.join(home, "run", "broker.pid")).read().strip())
        time.sleep(a.settle)
        idle = kib(pid, "VmRSS")
        rows = []
        failures = 0
        for b in range(a.bursts):
            peak = [0]
            done = threading.Event()

            def sample():
                while not done.is_set():
                    peak[0] = max(peak[0], kib(pid, "VmRSS"))
                    time.sleep(0.05)

            t = threading.Thread(target=sample)
            t.start()

            def client():
                nonlocal failures
                if a.mcp:
                    failures += mcp_session(a.bin, env, work, a.runs)
                    return
                for _ in range(a.runs):
                    r = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=work)
                    if r.returncode != 0 or "[REDACTED:API_TOKEN]" not in r.stdout:
                        failures += 1

            t0 = time.perf_counter()
            cs = [threading.Thread(target=client) for _ in range(a.clients)]
            for c in cs:
                c.start()
            for c in cs:
                c.join()
            wall = time.perf_counter() - t0
            done.set()
            t.join()
            after = []
            for s in range(int(a.settle * 2)):
                time.sleep(0.5)
                after.append(kib(pid, "VmRSS"))
            rows.append((b + 1, wall, peak[0], after[1], after[-1]))
        hwm = kib(pid, "VmHWM")
        print(f"broker RSS idle: {idle / 1024:.1f} MiB; peak (VmHWM): {hwm / 1024:.1f} MiB; failed runs: {failures}")
        print()
        kind = "MCP sessions" if a.mcp else "clients"
        print(f"| burst ({a.clients} {kind} x {a.runs} runs) | wall s | RSS max during | RSS 1 s after | RSS {a.settle:g} s after | after / idle |")
        print("|---:|---:|---:|---:|---:|---:|")
        for b, wall, pk, a1, a5 in rows:
            print(f"| {b} | {wall:.1f} | {pk / 1024:.1f} MiB | {a1 / 1024:.1f} MiB | {a5 / 1024:.1f} MiB | {a5 / idle:.2f}x |")
    finally:
        subprocess.run([a.bin, "daemon", "stop"], env=env, capture_output=True)
        shutil.rmtree(home, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
