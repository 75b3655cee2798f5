#!/usr/bin/env bash
# `keyveil sweep` at scale, for docs/benchmarks.md ("Sweep").
#
# A throwaway home with VALUES=${VALUES:-100} stored values, TRANSCRIPT_MIB=${TRANSCRIPT_MIB:-1024}
# MiB of agent transcripts (Claude Code and Codex JSON lines) and a git repository of
# COMMITS=${COMMITS:-50000} commits (built with `git fast-import`, nested trees). Three values are
# planted: one in a transcript, one in one old commit only (deleted at the next), one base64'd
# in a `.env`. Measures the wall time of `keyveil sweep` (release build) and the broker's peak
# resident memory (VmHWM) before and after; checks the three plants were found.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/keyveil-target}"
VALUES=${VALUES:-100}
TRANSCRIPT_MIB=${TRANSCRIPT_MIB:-1024}
COMMITS=${COMMITS:-50000}
# KEYVEIL_BIN=path: use that binary instead of building the release one.
if [ -n "${KEYVEIL_BIN:-}" ]; then
  KV="$KEYVEIL_BIN"
else
  cargo build --release --quiet --locked -p keyveil
  KV="$CARGO_TARGET_DIR/release/keyveil"
fi
PASS="bench passphrase not secret"
H=$(mktemp -d /tmp/kvsweep.XXXXXX)
export KEYVEIL_HOME="$H/.keyveil" HOME="$H"
cleanup() {
  "$KV" daemon stop >/dev/null 2>&1 || true
  rm -rf "$H"
}
trap cleanup EXIT
printf '%s\n' "$PASS" | "$KV" init --passphrase-stdin --kdf-memory-kib 19456 >/dev/null
"$KV" env create bench >/dev/null
python3 - "$H" "$VALUES" "$TRANSCRIPT_MIB" "$COMMITS" <<'PY'
import base64, os, random, sys
home, nvals, mib, commits = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
rnd = random.Random(7)
vals = ["v%02d_%s" % (i, os.urandom(16).hex()) for i in range(nvals)]
with open(f"{home}/values.env", "w") as f:
    for i, v in enumerate(vals):
        f.write(f"K{i:03d}={v}\n")
words = "the a build test fix error cargo run file line function return value config deploy " \
        "branch commit merge review please check output log debug trace request response".split()
def line(n):
    text = " ".join(rnd.choice(words) for _ in range(n))
    ident = os.urandom(8).hex()
    return '{"type":"assistant","uuid":"%s","message":{"role":"assistant","content":[{"type":"text","text":"%s"}]}}\n' % (ident, text)
chunk = "".join(line(rnd.randint(20, 120)) for _ in range(2000)).encode()
per_file = 1 << 20
files = mib
for i in range(files):
    host = ".claude/projects/-w-p%02d" % (i % 40) if i % 2 == 0 else ".codex/sessions/2026/01/%02d" % (i % 28 + 1)
    d = f"{home}/{host}"
    os.makedirs(d, exist_ok=True)
    with open(f"{d}/s{i:05d}.jsonl", "wb") as f:
        data = (chunk * (per_file // len(chunk) + 1))[:per_file]
        if i == files // 2:
            data = data[:4096] + ('{"type":"user","message":{"content":"key %s"}}\n' % vals[0]).encode() + data[4096:]
        f.write(data)
# The repository: nested trees, one file changed per commit.
repo = f"{home}/repo"
os.makedirs(repo)
with open(f"{home}/fast-import", "w") as f:
    for c in range(1, commits + 1):
        path = "src/m%02d/f%03d.txt" % (c % 25, c % 500)
        body = "revision %d of %s\n%s\n" % (c, path, " ".join(rnd.choice(words) for _ in range(30)))
        if c == 100:
            path, body = "config/db.yml", "password: %s\n" % vals[1]
        f.write("commit refs/heads/main\ncommitter b <b@example.invalid> %d +0000\ndata %d\nc%d\n" % (1700000000 + c, len("c%d" % c), c))
        if c == 101:
            f.write("D config/db.yml\n")
        f.write("M 100644 inline %s\ndata %d\n%s\n" % (path, len(body.encode()), body))
with open(f"{repo}/.env", "w") as f:
    f.write("TOKEN_B64=%s\n" % base64.b64encode(vals[2].encode()).decode())
PY
"$KV" import bench "$H/values.env" >/dev/null
rm "$H/values.env"
git -C "$H/repo" init -q -b main
git -C "$H/repo" fast-import --quiet < "$H/fast-import"
rm "$H/fast-import"
git -C "$H/repo" reset -q --hard main
PID=$("$KV" status --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["pid"])')
hwm() { awk '/VmHWM/ {print $2}' "/proc/$PID/status"; }
echo "# machine: $(nproc) cores, $(uname -sr); $(git --version)"
echo "# $VALUES values, $(du -sm "$H/.claude" "$H/.codex" | awk '{s+=$1} END {print s}') MiB of transcripts, $(git -C "$H/repo" rev-list --count --all) commits ($(du -sm "$H/repo/.git" | cut -f1) MiB .git)"
echo "broker VmHWM before: $(hwm) KiB"
T0=$(date +%s.%N)
set +e
printf '%s\n' "$PASS" | "$KV" sweep --passphrase-stdin --json "$H/repo" > "$H/out.json"
RC=$?
set -e
T1=$(date +%s.%N)
echo "sweep: exit $RC, $(python3 -c "print(round($T1-$T0,2))") s"
echo "broker VmHWM after: $(hwm) KiB"
python3 - "$H/out.json" <<'PY'
import json, sys
o = json.load(open(sys.argv[1]))["report"]
print("files %d, %d MiB matched, %d repositories, %d git objects, truncated %s, findings:" % (
    o["files_scanned"], o["bytes_scanned"] >> 20, o["repositories"], o["git_objects"], o["truncated"]))
for n in o["notes"]:
    print("  note: " + n)
for f in o["findings"]:
    loc = f["location"]
    where = loc.get("path") or ""
    print("  %s/%s %s %s %s" % (f["environment"], f["variable"], f["kind"], where.split("/")[-1], loc.get("commits", "")[:1]))
PY
