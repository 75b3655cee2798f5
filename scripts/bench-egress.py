#!/usr/bin/env python3
"""Figures of the egress proxy (docs/egress.md), on a throwaway keyveil home.

A local HTTPS "API" (Python's http.server, HTTP/1.1 keep-alive, a test CA made with the
`openssl` CLI) on 127.0.0.1; a variable bound to it; one approved `keyveil run` whose child
(python3) measures, on one kept-alive connection each:
  1. latency: N GET requests with the placeholder in Authorization, direct to the API (the
     child's own TLS to it) and through the run's proxy (CONNECT, TLS terminated, swap,
     verified upstream); p50/p90 of each and the added p50;
  2. throughput: a 256 MiB response body read in 1 MiB reads, direct and through the proxy.
The direct figures use the same client and server, so the difference is the proxy's.

  3. memory: the broker's RSS with one idle proxied session, then with --idle more; the
     difference per session.
Direct and proxied requests and downloads are interleaved so both see the same machine load.

Usage: scripts/bench-egress.py [--bin target/release/keyveil] [--requests 500] [--mib 256]
                               [--rounds 3] [--idle 200]
Prints a Markdown table for docs/benchmarks.md.
"""
import argparse, json, os, subprocess, sys, tempfile, threading, time, ssl, secrets
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PASS = "bench passphrase, not a secret"

CHILD = r'''
import http.client, json, os, ssl, statistics, sys, time
port, n, mib, ca, rounds, idle = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], int(sys.argv[5]), int(sys.argv[6])
proxy = os.environ["HTTPS_PROXY"].removeprefix("http://")
ph, pp = proxy.rsplit(":", 1)
hdr = {"Authorization": "Bearer " + os.environ["API_TOKEN"]}
def conn(via_proxy):
    if via_proxy:
        ctx = ssl.create_default_context(cafile=os.environ["SSL_CERT_FILE"])
        c = http.client.HTTPSConnection(ph, int(pp), context=ctx)
        c.set_tunnel("localhost", port)
    else:
        ctx = ssl.create_default_context(cafile=ca)
        c = http.client.HTTPSConnection("localhost", port, context=ctx)
    return c
def get(c, path):
    c.request("GET", path, headers=hdr); r = c.getresponse(); body = r.read()
    assert r.status == 200, (r.status, body)
out = {"load_before": os.getloadavg()[0]}
conns = {"direct": conn(False), "proxy": conn(True)}
for c in conns.values():
    get(c, "/small")  # handshake
# Latency: direct and proxy requests interleaved, so both see the same machine load.
ts = {"direct": [], "proxy": []}
for _ in range(n):
    for name, c in conns.items():
        t0 = time.perf_counter()
        get(c, "/small")
        ts[name].append(time.perf_counter() - t0)
for name, t in ts.items():
    t.sort()
    out[name + "_p50_ms"] = t[len(t) // 2] * 1000
    out[name + "_p90_ms"] = t[int(len(t) * 0.9)] * 1000
# Throughput: rounds of one direct and one proxied download, alternated; the median of each.
mbs = {"direct": [], "proxy": []}
for _ in range(rounds):
    for name, c in conns.items():
        t0 = time.perf_counter()
        c.request("GET", "/big", headers=hdr); r = c.getresponse()
        got = 0
        while True:
            b = r.read(1 << 20)
            if not b: break
            got += len(b)
        dt = time.perf_counter() - t0
        assert got == mib << 20, got
        mbs[name].append(got / dt / 1e6)
for name, v in mbs.items():
    out[name + "_mb_s"] = statistics.median(v)
    out[name + "_mb_s_all"] = [round(x) for x in v]
out["load_after"] = os.getloadavg()[0]
for c in conns.values():
    c.close()
# Idle sessions: the bench samples the broker's RSS with one session open, then with `idle`
# more (each CONNECT + TLS both ways + one request, then kept alive and idle).
def wait_for(f):
    while not os.path.exists(f):
        time.sleep(0.02)
if idle:
    keep = [conn(True)]
    get(keep[0], "/small")
    open("warm", "w").close(); wait_for("go1")
    for _ in range(idle):
        c = conn(True); get(c, "/small"); keep.append(c)
    open("opened", "w").close(); wait_for("go2")
    for c in keep:
        c.close()
print("BENCH " + json.dumps(out))
'''


def make_ca(d):
    run = lambda *a: subprocess.run(a, check=True, capture_output=True, cwd=d)
    run("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
        "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=bench CA")
    run("openssl", "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
        "-keyout", "leaf.key", "-out", "leaf.csr", "-subj", "/CN=localhost")
    with open(os.path.join(d, "ext.cnf"), "w") as f:
        f.write("subjectAltName=DNS:localhost\n")
    run("openssl", "x509", "-req", "-in", "leaf.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        "-CAcreateserial", "-out", "leaf.pem", "-days", "2", "-extfile", "ext.cnf")


def serve(d, mib):
    chunk = b"x" * (1 << 20)

    class H(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True

        def log_message(self, *a):
            pass

        def do_GET(self):
            if self.path == "/big":
                self.send_response(200)
                self.send_header("Content-Length", str(mib << 20))
                self.end_headers()
                for _ in range(mib):
                    self.wfile.write(chunk)
            else:
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

    srv = ThreadingHTTPServer(("127.0.0.1", 0), H)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(os.path.join(d, "leaf.pem"), os.path.join(d, "leaf.key"))
    srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv.server_address[1]


def kib(pid, field):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def wait_file(path, run):
    for _ in range(6000):
        if os.path.exists(path):
            return
        if run.poll() is not None:
            sys.exit(f"the run ended early: {run.communicate()}")
        time.sleep(0.05)
    sys.exit(f"timed out waiting for {path}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default=os.path.join(os.environ.get("CARGO_TARGET_DIR", "target"), "release", "keyveil"))
    ap.add_argument("--requests", type=int, default=500)
    ap.add_argument("--mib", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=3, help="downloads each way, alternated")
    ap.add_argument("--idle", type=int, default=200, help="idle sessions for the memory figure (0: none)")
    a = ap.parse_args()
    home = tempfile.mkdtemp(prefix="kvbench", dir="/tmp")
    env = {"PATH": os.environ["PATH"], "HOME": home, "KEYVEIL_HOME": home, "LANG": "C.UTF-8"}

    def kv(*args, stdin=""):
        r = subprocess.run(["setsid", "-w", a.bin, *args], input=stdin, text=True, capture_output=True, env=env, timeout=300)
        if r.returncode != 0:
            sys.exit(f"keyveil {args}: {r.stderr}")
        return r.stdout

    try:
        make_ca(home)
        port = serve(home, a.mib)
        kv("init", "--passphrase-stdin", "--kdf-memory-kib", "19456", stdin=PASS + "\n")
        kv("env", "create", "demo")
        value = "sk-proj-" + secrets.token_hex(24)
        kv("set", "demo", "API_TOKEN", "--from-stdin", "--passphrase-stdin", stdin=f"{PASS}\n{value}")
        kv("policy", "set", "demo", "egress-roots", os.path.join(home, "ca.pem"), "--passphrase-stdin", stdin=PASS + "\n")
        kv("policy", "set", "demo", "bind", "API_TOKEN", f"localhost:{port}", "--passphrase-stdin", stdin=PASS + "\n")
        work = tempfile.mkdtemp(prefix="kvbenchwork", dir="/tmp")
        child_py = os.path.join(work, "child.py")
        with open(child_py, "w") as f:
            f.write(CHILD)
        run = subprocess.Popen(["setsid", "-w", a.bin, "run", "--env", "demo", "--timeout", "600", "--cwd", work, "--",
                                "python3", child_py, str(port), str(a.requests), str(a.mib), os.path.join(home, "ca.pem"),
                                str(a.rounds), str(a.idle)],
                               stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        for _ in range(400):
            reqs = json.loads(kv("requests", "--json"))
            if reqs or run.poll() is not None:
                break
            time.sleep(0.05)
        if not reqs:
            out, err = run.communicate(timeout=60)
            sys.exit(f"no request appeared: {out}\n{err}")
        kv("approve", str(reqs[-1]["id"]), "--passphrase-stdin", stdin=PASS + "\n")
        idle_kib = None
        if a.idle:
            pid = int(open(os.path.join(home, "run", "broker.pid")).read().strip())
            wait_file(os.path.join(work, "warm"), run)
            time.sleep(1)
            rss0 = kib(pid, "VmRSS")
            open(os.path.join(work, "go1"), "w").close()
            wait_file(os.path.join(work, "opened"), run)
            time.sleep(1)
            rss1 = kib(pid, "VmRSS")
            open(os.path.join(work, "go2"), "w").close()
            idle_kib = (rss1 - rss0) / a.idle
        out, err = run.communicate(timeout=600)
        line = next((l for l in out.splitlines() if l.startswith("BENCH ")), None)
        if not line:
            sys.exit(f"no figures: {out}\n{err}")
        r = json.loads(line[6:])
        print(f"| figure | direct | through the proxy | added |")
        print(f"|---|---|---|---|")
        print(f"| GET latency p50, kept-alive, {a.requests} requests | {r['direct_p50_ms']:.3f} ms | {r['proxy_p50_ms']:.3f} ms | {r['proxy_p50_ms'] - r['direct_p50_ms']:.3f} ms |")
        print(f"| GET latency p90 | {r['direct_p90_ms']:.3f} ms | {r['proxy_p90_ms']:.3f} ms | {r['proxy_p90_ms'] - r['direct_p90_ms']:.3f} ms |")
        print(f"| {a.mib} MiB response body, median of {a.rounds} | {r['direct_mb_s']:.0f} MB/s | {r['proxy_mb_s']:.0f} MB/s | |")
        if idle_kib is not None:
            print(f"| broker RSS per idle proxied session ({a.idle} kept alive) | | {idle_kib:.1f} KiB | |")
        print(f"\nload average (1 min) before/after the latency and throughput runs: {r['load_before']:.1f} / {r['load_after']:.1f}; "
              f"downloads direct {r['direct_mb_s_all']} MB/s, proxy {r['proxy_mb_s_all']} MB/s")
    finally:
        subprocess.run(["setsid", "-w", a.bin, "daemon", "stop"], env=env, capture_output=True)
        subprocess.run(["rm", "-rf", home])
        if "work" in locals():
            subprocess.run(["rm", "-rf", work])


if __name__ == "__main__":
    main()
