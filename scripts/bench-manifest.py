#!/usr/bin/env python3
"""What the project-manifest pin costs a granted run (docs/manifest.md): `keyveil run --env E
-- true` under a live grant, for an environment pinned to a keyveil.toml (the broker reads and
hashes the file at each request) and for an identical one that is not; median and p90 of
`--trials` interleaved runs each. A throwaway home; the manifest is `--manifest-kib` KiB.

Usage: scripts/bench-manifest.py [--bin target/release/keyveil] [--trials 50]
"""
import argparse, os, statistics, subprocess, sys, tempfile, time

PASS = "correct horse battery staple"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default=os.path.join(os.environ.get("CARGO_TARGET_DIR", "target"), "release", "keyveil"))
    ap.add_argument("--trials", type=int, default=50)
    ap.add_argument("--manifest-kib", type=int, default=1)
    a = ap.parse_args()
    home = tempfile.mkdtemp(prefix="kvbm")
    env = {"KEYVEIL_HOME": home, "PATH": "/usr/bin:/bin", "HOME": home}

    def kv(args, stdin=None, check=True):
        r = subprocess.run([a.bin] + args, input=stdin, env=env, capture_output=True, text=True,
                           start_new_session=True)
        if check and r.returncode != 0:
            sys.exit(f"keyveil {' '.join(args)}: {r.stderr}")
        return r

    kv(["init", "--passphrase-stdin", "--kdf-memory-kib", "19456"], PASS + "\n")
    repo = os.path.join(home, "repo")
    os.makedirs(repo)
    path = os.path.join(repo, "keyveil.toml")
    pad = "# " + "x" * 77 + "\n"
    with open(path, "w") as f:
        f.write(pad * max(0, a.manifest_kib * 1024 // len(pad) - 3))
        f.write("[environments.pinned.variables.API_TOKEN]\n")
    kv(["project", "apply", path, "--passphrase-stdin", "--values-stdin"], PASS + "\nvalue-one\n")
    kv(["env", "create", "plain"])
    kv(["set", "plain", "API_TOKEN", "--from-stdin"], "value-two")
    for e in ("pinned", "plain"):
        run = subprocess.Popen([a.bin, "run", "--env", e, "--", "true"], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        for _ in range(200):
            ids = kv(["requests", "--json"]).stdout
            if '"id"' in ids:
                break
            time.sleep(0.05)
        rid = ids.split('"id":')[1].split(",")[0].strip()
        kv(["approve", rid, "--passphrase-stdin", "--ttl", "30m"], PASS + "\n")
        run.wait(timeout=60)
    times = {"pinned": [], "plain": []}
    for _ in range(a.trials):
        for e in ("pinned", "plain"):
            t0 = time.perf_counter()
            kv(["run", "--env", e, "--", "true"])
            times[e].append((time.perf_counter() - t0) * 1000)
    kv(["daemon", "stop"], check=False)
    print(f"| environment ({a.trials} runs, {a.manifest_kib} KiB manifest) | median ms | p90 ms |")
    print("|---|---|---|")
    for e, t in times.items():
        t.sort()
        print(f"| {e} | {statistics.median(t):.1f} | {t[int(len(t) * 0.9) - 1]:.1f} |")


if __name__ == "__main__":
    main()
