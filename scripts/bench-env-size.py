#!/usr/bin/env python3
"""Cost of `set` and of a granted run as an environment grows (issue 21, performance item 2).

On a throwaway home: N variables are stored (raw `var_set` requests on the broker socket, so
the filling costs no CLI start), then it measures
1. `set` of one more variable: the broker's answer to a raw `var_set` (median of --trials), and
   the whole `keyveil set --from-stdin` command;
2. `keyveil run --env demo -- true` under a live grant, injecting all N variables, and with
   `--only` one of them;
3. `keyveil status` answered while runs of all N variables start one after another (max and
   median of the answer time): what waits behind a run holding the broker's lock;
4. a run in an environment of 10 variables, one of them --big-kib KiB (the largest Linux can
   inject is 128 KiB with its name; larger values are refused at `set`).

Usage: scripts/bench-env-size.py [--bin target/release/keyveil] [--vars 10000] [--trials 7]
Prints a Markdown table for docs/benchmarks.md. Values are random, made here, never printed.
"""
import argparse, json, os, secrets, shutil, socket, statistics, struct, subprocess, sys, tempfile, threading, time

PASS = "bench passphrase, not a secret"


def call(sock_path, request):
    body = b"\x00" + json.dumps(request).encode()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(sock_path)
        s.sendall(struct.pack(">I", len(body)) + body)
        head = b""
        while len(head) < 4:
            chunk = s.recv(4 - len(head))
            if not chunk:
                raise RuntimeError("broker closed the connection")
            head += chunk
        (n,) = struct.unpack(">I", head)
        data = b""
        while len(data) < n:
            data += s.recv(n - len(data))
    return json.loads(data[1:])


def ms(f):
    t0 = time.perf_counter()
    f()
    return (time.perf_counter() - t0) * 1000


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default=os.path.join(os.environ.get("CARGO_TARGET_DIR", "target"), "release", "keyveil"))
    ap.add_argument("--vars", type=int, default=10000)
    ap.add_argument("--trials", type=int, default=7)
    ap.add_argument("--big-kib", type=int, default=120)
    a = ap.parse_args()
    home = tempfile.mkdtemp(prefix="kvbench")
    env = {"PATH": os.environ["PATH"], "HOME": home, "KEYVEIL_HOME": home, "LANG": "C.UTF-8",
           "KEYVEIL_NO_NOTIFY": "1"}

    def kv(*args, stdin=None, check=True):
        r = subprocess.run([a.bin, *args], input=stdin, env=env, capture_output=True, text=True)
        if check and r.returncode != 0:
            sys.exit(f"keyveil {' '.join(args)} failed: {r.stderr}")
        return r

    sock = os.path.join(home, "run", "broker.sock")
    try:
        kv("init", "--passphrase-stdin", "--kdf-memory-kib", "19456", stdin=PASS + "\n")
        kv("env", "create", "demo")
        t0 = time.perf_counter()
        for i in range(a.vars):
            r = call(sock, {"op": "var_set", "environment": "demo", "name": f"V{i}",
                            "value": secrets.token_hex(16), "sealed_value": None, "factor": None})
            if r.get("kind") != "ok":
                sys.exit(f"var_set failed: {r}")
            if i and i % 1000 == 0:
                print(f"  {i} variables ({time.perf_counter() - t0:.0f} s)", file=sys.stderr)
        fill_s = time.perf_counter() - t0
        raw_set = [ms(lambda i=i: call(sock, {"op": "var_set", "environment": "demo", "name": f"X{i}",
                                              "value": secrets.token_hex(16), "sealed_value": None,
                                              "factor": None})) for i in range(a.trials)]
        cli_set = [ms(lambda i=i: kv("set", "demo", f"Y{i}", "--from-stdin", stdin=secrets.token_hex(16)))
                   for i in range(a.trials)]
        # A standing grant covering any command in `demo`.
        r = kv("run", "--env", "demo", "--wait", "0", "--", "true", check=False)
        reqs = json.loads(kv("requests", "--json").stdout)
        kv("approve", str(reqs[-1]["id"]), "--passphrase-stdin", "--any-command", "--ttl", "30m",
           stdin=PASS + "\n")
        run_all = [ms(lambda: kv("run", "--env", "demo", "--wait", "1", "--", "true")) for _ in range(a.trials)]
        run_one = [ms(lambda: kv("run", "--env", "demo", "--wait", "1", "--only", "V1", "--", "true"))
                   for _ in range(a.trials)]
        # `status` while runs of every variable start back to back.
        stop = threading.Event()

        def runs():
            while not stop.is_set():
                kv("run", "--env", "demo", "--wait", "1", "--", "true", check=False)

        th = threading.Thread(target=runs)
        th.start()
        time.sleep(0.5)
        status = []
        t_end = time.perf_counter() + max(5.0, 3 * statistics.median(run_all) / 1000)
        while time.perf_counter() < t_end:
            status.append(ms(lambda: call(sock, {"op": "status"})))
            time.sleep(0.01)
        stop.set()
        th.join()
        # A large value, stored with the factor, in an environment of its own (10 variables).
        kv("env", "create", "big")
        for i in range(9):
            kv("set", "big", f"S{i}", "--from-stdin", "--passphrase-stdin",
               stdin=PASS + "\n" + secrets.token_hex(16))
        kv("set", "big", "BIG", "--from-stdin", "--passphrase-stdin",
           stdin=PASS + "\n" + secrets.token_hex(a.big_kib * 512))
        kv("run", "--env", "big", "--wait", "0", "--", "true", check=False)
        reqs = json.loads(kv("requests", "--json").stdout)
        kv("approve", str(reqs[-1]["id"]), "--passphrase-stdin", "--any-command", "--ttl", "30m",
           stdin=PASS + "\n")
        run_big = [ms(lambda: kv("run", "--env", "big", "--wait", "1", "--", "true")) for _ in range(a.trials)]
        med = lambda xs: f"{statistics.median(xs):.1f}"
        print(f"| measure ({a.vars:,} variables; filled in {fill_s:.0f} s) | median ms | min ms | max ms |")
        print("|---|---|---|---|")
        for name, xs in [
            ("`var_set` on the socket (broker only)", raw_set),
            ("`keyveil set --from-stdin`", cli_set),
            (f"`keyveil run -- true`, all {a.vars:,} injected", run_all),
            ("`keyveil run --only V1 -- true`", run_one),
            ("`status` answered during those runs", status),
            (f"`keyveil run -- true`, 10 variables, one of {a.big_kib} KiB", run_big),
        ]:
            print(f"| {name} | {med(xs)} | {min(xs):.1f} | {max(xs):.1f} |")
    finally:
        subprocess.run([a.bin, "daemon", "stop"], env=env, capture_output=True)
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
