#!/usr/bin/env python3
"""End-to-end figures of a granted run, measured on a throwaway keyveil home.

1. `keyveil run --env demo -- true` with a live grant, against plain `true` (hyperfine when
   installed, else a timing loop): the cost of the CLI, the broker round trip, pin checks,
   the child environment and redaction.
2. Revocation: 100 trials of a granted `sleep 30` (with a child of its own); from issuing
   `keyveil revoke` to both processes being gone. p50/p99.

Usage: scripts/bench-run.py [--bin target/release/keyveil] [--trials 100]
Prints a Markdown table for docs/benchmarks.md.
"""
import argparse, json, os, shutil, statistics, subprocess, sys, tempfile, time

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default=os.path.join(os.environ.get("CARGO_TARGET_DIR", "target"), "release", "keyveil"))
    ap.add_argument("--trials", type=int, default=100)
    ap.add_argument("--cat-mib", type=int, default=256, help="size of the `keyveil run -- cat FILE` input")
    a = ap.parse_args()
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
        # 2. `keyveil run -- cat FILE` against `cat FILE`, 10 values in the grant.
        kv("env", "create", "ten")
        for i in range(10):
            kv("generate", "ten", f"V{i}")
        big = os.path.join(home, "big.log")
        line = b"2026-11-29T12:00:00Z INFO worker-3 processed batch 1234 in 12 ms path=/srv/app/data/file.bin ok\n"
        with open(big, "wb") as f:
            chunk = line * (1024 * 1024 // len(line) + 1)
            for _ in range(a.cat_mib):
                f.write(chunk[: 1024 * 1024])
        kv("run", "--env", "ten", "--wait", "0", "--", "cat", big, check=False)
        rid = json.loads(kv("requests", "--json").stdout)[-1]["id"]
        kv("approve", str(rid), "--passphrase-stdin", "--ttl", "1h", inp=pw)
        def timed(c):
            best = None
            for _ in range(3):
                t0 = time.perf_counter()
                subprocess.run(c, env=env, stdout=subprocess.DEVNULL, check=True)
                d = time.perf_counter() - t0
                best = d if best is None else min(best, d)
            return best
        t_cat = timed(["cat", big])
        t_kv = timed([a.bin, "run", "--env", "ten", "--", "cat", big])
        print(f"\n`cat` of {a.cat_mib} MiB: {t_cat*1000:.0f} ms; through `keyveil run` (10 values): {t_kv*1000:.0f} ms "
              f"({t_kv/t_cat:.1f}x, {a.cat_mib/t_kv:.0f} MiB/s end to end; best of 3)")
        # 3. revocation latency.
        lat = []
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
            t0 = time.perf_counter()
            kv("revoke", gid)
            while True:
                # The whole process group is gone when no process has it as pgid.
                alive = subprocess.run(["pgrep", "-g", str(pid)], capture_output=True).returncode == 0
                if not alive:
                    break
                time.sleep(0.0005)
            lat.append((time.perf_counter() - t0) * 1000)
            proc.wait(timeout=10)
        lat.sort()
        p50 = statistics.median(lat); p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))]
        print(f"\nrevoke → process group gone, {len(lat)} trials: p50 {p50:.1f} ms, p99 {p99:.1f} ms, max {lat[-1]:.1f} ms "
              "(includes starting the `keyveil revoke` CLI process)")
    finally:
        subprocess.run([a.bin, "daemon", "stop"], env=env, capture_output=True)
        shutil.rmtree(home, ignore_errors=True)

if __name__ == "__main__":
    main()
