#!/usr/bin/env python3
"""End-to-end figures of a granted run, measured on a throwaway keyveil home.

1. `keyveil run --env demo -- true` with a live grant, against plain `true` (hyperfine when
   installed, else a timing loop): the cost of the CLI, the broker round trip, pin checks,
   the child environment and redaction.
2. `keyveil run -- cat FILE` against `cat FILE` (10 values in the grant), with stdout going to
   /dev/null, through a pipe into `wc -c`, and into a file on disk; median (and min) of
   `--cat-trials` interleaved trials each.
3. Revocation: 100 trials of a granted `sleep 30` (with a child of its own). The revoke is sent
   straight to the broker's socket (no CLI start in the figure), and the script records when the
   broker answers (the grant is unusable) and when no process of the run's process group is
   left (polling /proc, no subprocess). p50/p99 of both.

Usage: scripts/bench-run.py [--bin target/release/keyveil] [--trials 100]
Prints a Markdown table for docs/benchmarks.md.
"""
import argparse, json, os, shutil, socket, statistics, struct, subprocess, sys, tempfile, time


def broker_call(sock_path, request):
    """One request on the broker socket: frames are a 4-byte big-endian length, then a tag byte
    (0 = JSON) and the JSON body (crates/keyveil/src/protocol.rs). Returns the decoded reply."""
    body = b"\x00" + json.dumps(request).encode()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(sock_path)
        s.sendall(struct.pack(">I", len(body)) + body)
        head = b""
        while len(head) < 4:
            head += s.recv(4 - len(head))
        (n,) = struct.unpack(">I", head)
        data = b""
        while len(data) < n:
            data += s.recv(n - len(data))
    return json.loads(data[1:])


def _pgrp(pid):
    """Process group of `pid` (field 5 of /proc/PID/stat), or -1 if gone or a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[-1].split()
        return int(fields[2]) if fields[0] != b"Z" else -1
    except (OSError, IndexError, ValueError):
        return -1


def group_alive(pgid):
    """Whether any live (non-zombie) process still has process group `pgid`."""
    return any(_pgrp(d) == pgid for d in os.listdir("/proc") if d.isdigit())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default=os.path.join(os.environ.get("CARGO_TARGET_DIR", "target"), "release", "keyveil"))
    ap.add_argument("--trials", type=int, default=100)
    ap.add_argument("--cat-mib", type=int, default=256, help="size of the `keyveil run -- cat FILE` input")
    ap.add_argument("--cat-trials", type=int, default=7, help="trials per consumer of the cat figure (median reported)")
    ap.add_argument("--parts", default="run,cat,revoke", help="which measurements, comma-separated")
    a = ap.parse_args()
    parts = set(a.parts.split(","))
    home = tempfile.mkdtemp(prefix="kvb", dir="/tmp")
    env = {"PATH": os.environ["PATH"], "HOME": home, "KEYVEIL_HOME": home, "LANG": "C.UTF-8", "KEYVEIL_NO_NOTIFY": "1"}
    pw = "bench passphrase 123\n"
    def kv(*args, inp=None, check=True):
        p = subprocess.run([a.bin, *args], env=env, input=inp, capture_output=True, text=True)
        if check and p.returncode != 0:
            sys.exit(f"keyveil {args} failed: {p.stderr}")
        return p
    try:
        kv("init", "--passphrase-stdin", "--kdf-memory-kib", "19456", inp=pw)
        kv("env", "create", "demo")
        kv("generate", "demo", "API_TOKEN")
        # 1. run overhead with a standing grant.
        kv("run", "--env", "demo", "--wait", "0", "--", "true", check=False)
        rid = json.loads(kv("requests", "--json").stdout)[-1]["id"]
        kv("approve", str(rid), "--passphrase-stdin", "--ttl", "1h", inp=pw)
        if "run" in parts:
            run_overhead(a, env, home)
        if "cat" in parts:
            cat_overhead(a, env, kv, home, pw)
        if "revoke" in parts:
            revocation(a, env, kv, pw)
    finally:
        subprocess.run([a.bin, "daemon", "stop"], env=env, capture_output=True)
        shutil.rmtree(home, ignore_errors=True)


def run_overhead(a, env, home):
        cmd = f"{a.bin} run --env demo -- true"
        rows = []
        if shutil.which("hyperfine"):
            out = os.path.join(home, "hf.json")
            subprocess.run(["hyperfine", "-N", "--warmup", "5", "--runs", "200", "--export-json", out, "true", cmd],
                           env=env, check=True, capture_output=True)
            res = json.load(open(out))["results"]
            for r in res:
                rows.append((r["command"].replace(a.bin, "keyveil"), r["mean"] * 1000, r["median"] * 1000))
        else:
            for c in (["true"], cmd.split()):
                ts = []
                for _ in range(200):
                    t0 = time.perf_counter(); subprocess.run(c, env=env, check=True); ts.append(time.perf_counter() - t0)
                rows.append((" ".join(c).replace(a.bin, "keyveil"), statistics.mean(ts) * 1000, statistics.median(ts) * 1000))
        print("| command | mean (ms) | median (ms) |\n|---|---|---|")
        for c, mean, med in rows:
            print(f"| `{c}` | {mean:.2f} | {med:.2f} |")
def cat_overhead(a, env, kv, home, pw):
        # 2. `keyveil run -- cat FILE` against `cat FILE`, 10 values in the grant, into three
        #    consumers: /dev/null (the floor: cat's output costs nothing to drop), a pipe into
        #    `wc -c` (a realistic reader that has to receive every byte), and a file on disk.
        kv("env", "create", "ten")
        for i in range(10):
            kv("generate", "ten", f"V{i}")
        big = os.path.join(home, "big.log")
        line = b"2026-11-29T12:00:00Z INFO worker-3 processed batch 1234 in 12 ms path=/srv/app/data/file.bin ok\n"
        with open(big, "wb") as f:
            chunk = line * (1024 * 1024 // len(line) + 1)
            for _ in range(a.cat_mib):
                f.write(chunk[: 1024 * 1024])
        size = os.path.getsize(big)
        kv("run", "--env", "ten", "--wait", "0", "--", "cat", big, check=False)
        rid = json.loads(kv("requests", "--json").stdout)[-1]["id"]
        kv("approve", str(rid), "--passphrase-stdin", "--ttl", "1h", inp=pw)
        # The output file: same file system, but outside the run's cwd and the keyveil/child HOME,
        # so the post-run write-side scan does not read it back (a file written into HOME or
        # the cwd is scanned for leaked values after the run: that is a separate cost).
        out_dir = tempfile.mkdtemp(prefix="kvo", dir="/tmp")
        out_path = os.path.join(out_dir, "out.bin")

        def once(c, sink):
            """Wall time of `c` with stdout to `sink` ("null", "wc" or "file"), seconds."""
            t0 = time.perf_counter()
            if sink == "null":
                subprocess.run(c, env=env, stdout=subprocess.DEVNULL, check=True)
            elif sink == "file":
                with open(out_path, "wb") as f:
                    subprocess.run(c, env=env, stdout=f, check=True)
            else:
                p1 = subprocess.Popen(c, env=env, stdout=subprocess.PIPE)
                p2 = subprocess.Popen(["wc", "-c"], stdin=p1.stdout, stdout=subprocess.PIPE)
                p1.stdout.close()
                got = p2.communicate()[0]
                if p1.wait() != 0 or int(got.split()[0]) != size:
                    sys.exit(f"{c} | wc -c: exit {p1.returncode}, {got!r} bytes (want {size})")
            d = time.perf_counter() - t0
            if sink == "file":
                if os.path.getsize(out_path) != size:
                    sys.exit(f"{c} > FILE wrote {os.path.getsize(out_path)} bytes (want {size})")
                os.unlink(out_path)
            return d

        plain = ["cat", big]
        through = [a.bin, "run", "--env", "ten", "--", "cat", big]
        print(f"\n`cat` of {a.cat_mib} MiB through `keyveil run` (10 values), {a.cat_trials} trials each, "
              f"plain and keyveil interleaved; wall ms median (min):\n")
        print("| consumer | `cat FILE` | `keyveil run -- cat FILE` | ratio (medians) | MiB/s end to end |")
        print("|---|---:|---:|---:|---:|")
        for sink, label in (("null", "`> /dev/null`"), ("wc", "`\\| wc -c`"), ("file", "`> FILE` (disk)")):
            once(plain, sink); once(through, sink)  # warm-up: page cache, broker, pin hash
            tp, tk = [], []
            for _ in range(a.cat_trials):
                tp.append(once(plain, sink))
                tk.append(once(through, sink))
            mp, mk = statistics.median(tp), statistics.median(tk)
            print(f"| {label} | {mp*1000:.0f} ({min(tp)*1000:.0f}) | {mk*1000:.0f} ({min(tk)*1000:.0f}) "
                  f"| {mk/mp:.1f}x | {a.cat_mib/mk:.0f} |")
        shutil.rmtree(out_dir, ignore_errors=True)
def revocation(a, env, kv, pw):
        # 3. revocation latency, broker side.
        sock = json.loads(kv("status", "--json").stdout)["socket"]
        answered, dead = [], []
        for i in range(a.trials):
            script = f"sleep 30 & sleep 30 # trial {i}"
            proc = subprocess.Popen([a.bin, "run", "--env", "demo", "--wait", "30", "--", "sh", "-c", script],
                                    env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            while True:
                reqs = json.loads(kv("requests", "--json").stdout)
                if reqs:
                    break
                time.sleep(0.01)
            kv("approve", str(reqs[-1]["id"]), "--passphrase-stdin", inp=pw)
            pid = None
            while pid is None:
                st = json.loads(kv("status", "--json").stdout)
                runs = st.get("runs", [])
                if runs:
                    pid, gid = runs[0]["pgid"], runs[0]["grant_id"]
                else:
                    time.sleep(0.005)
            # Both sleeps started (the shell forks the first before it execs the second); `pid`
            # is the run's reaper, which leads the group on Linux.
            while sum(1 for d in os.listdir("/proc") if d.isdigit() and d != str(pid) and _pgrp(d) == pid) < 2:
                time.sleep(0.001)
            t0 = time.perf_counter()
            reply = broker_call(sock, {"op": "revoke", "grant_id": gid, "all": False, "client": None})
            t1 = time.perf_counter()
            assert "revoked" in json.dumps(reply), reply
            while group_alive(pid):
                pass
            t2 = time.perf_counter()
            answered.append((t1 - t0) * 1000)
            dead.append((t2 - t0) * 1000)
            proc.wait(timeout=10)
        def pct(xs):
            xs = sorted(xs)
            return statistics.median(xs), xs[min(len(xs) - 1, int(len(xs) * 0.99))], xs[-1]
        for what, xs in (("revoke sent → broker's answer (grant unusable)", answered),
                         ("revoke sent → no process of the run's group left", dead)):
            p50, p99, mx = pct(xs)
            print(f"\n{what}, {len(xs)} trials: p50 {p50:.2f} ms, p99 {p99:.2f} ms, max {mx:.2f} ms")


if __name__ == "__main__":
    main()
