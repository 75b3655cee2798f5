#!/usr/bin/env python3
"""Prints, one JSON object a line, how real interpreters and tools print test values as
literals, dumps and quoted strings: {"tool", "value_hex", "printed_hex", "body_hex"}.

`printed` is the tool's whole output (a container, a trace line, a file listing); `body` is the
part that stands for the value (the literal without its outer quotes, the dump). Tools that are
not installed are skipped. `tests/literal_vectors.rs` checks the committed output
(`tests/literal-vectors.jsonl`, regenerate with `python3 tests/gen_literal_vectors.py >
tests/literal-vectors.jsonl`) and, when python3 exists, this script's live output.
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile

VALUES = [
    "t0k\ten'Q\"x\\y" + "Zr8LmQ2v",  # the example: a tab and both quotes
    "Ab3\x1b[0m$HOME#{x}\x7f\x01zQ9kR",  # ESC, DEL, a control, Ruby/shell interpolation
    "p\u00e9-\u20ac\u0085 w\u00f6rd\U0001F600Kq7",  # non-ASCII, a C1 control, astral
    "it's-a-Secr3t-x9\r\nline2",  # a single quote only, CRLF
    "correct\thorse\tbattery",  # low entropy with tabs: exact forms only
    'only"dq\\and`bt$PATH%x^y&z',  # double quote, backslash, backtick, $, cmd specials
]


def out(tool, value, printed, body):
    if isinstance(printed, str):
        printed = printed.encode()
    if isinstance(body, str):
        body = body.encode()
    assert body in printed, (tool, printed, body)
    print(json.dumps({"tool": tool, "value_hex": value.encode().hex(),
                      "printed_hex": printed.hex(), "body_hex": body.hex()}))


def run(argv, value, **kw):
    env = dict(os.environ, V=value, LC_ALL="C.UTF-8")
    return subprocess.run(argv, env=env, capture_output=True, **kw).stdout


def python(v):
    import csv
    import email.quoprimime
    import io
    import quopri
    out("python repr", v, repr({"k": v}), repr(v)[1:-1])
    out("python ascii", v, ascii([v]), ascii(v)[1:-1])
    b = v.encode()
    out("python bytes repr", v, repr({"k": b}), repr(b)[2:-1])
    out("python list(bytes)", v, repr(list(b)), repr(list(b))[1:-1])
    buf = io.StringIO()
    csv.writer(buf).writerow(["id", v])
    out("python csv", v, buf.getvalue(), v.replace('"', '""'))
    qp = quopri.encodestring(b)
    out("python quopri", v, qp, qp.rstrip(b"\n"))
    hq = email.quoprimime.header_encode(b, charset="utf-8")
    out("python email header Q", v, hq, hq[len("=?utf-8?q?"):-2])
    try:
        import yaml
    except ImportError:
        return
    y = yaml.dump({"k": v}, default_style='"', width=1 << 20)
    body = yaml.dump(v, default_style='"', width=1 << 20).strip()[1:-1]
    out("pyyaml double-quoted", v, y, body)


def node(v):
    if not shutil.which("node"):
        return
    code = ("const u=require('util');const v=process.env.V;"
            "process.stdout.write(u.inspect({k:v})+'\\n--SEP--\\n'+u.inspect(v))")
    o = run(["node", "-e", code], v)
    printed, alone = o.split(b"\n--SEP--\n", 1)
    out("node util.inspect", v, printed, alone[1:-1])


def perl(v):
    if not shutil.which("perl"):
        return
    for useqq in (0, 1):
        code = ("use Data::Dumper; $Data::Dumper::Terse=1; $Data::Dumper::Indent=0;"
                f"$Data::Dumper::Useqq={useqq}; my $v=$ENV{{V}};"
                "print Dumper({k=>$v}), qq(\\n--SEP--\\n), Dumper($v)")
        o = run(["perl", "-e", code], v)
        printed, alone = o.split(b"\n--SEP--\n", 1)
        out(f"perl Data::Dumper Useqq={useqq}", v, printed, alone[1:-1])


def bash(v):
    if not shutil.which("bash"):
        return
    o = run(["bash", "-c", 'printf %q "$V"'], v)
    body = o[2:-1] if o.startswith(b"$'") else o
    out("bash printf %q", v, o, body)
    o = run(["bash", "-c", 'declare -p V'], v)
    out("bash declare -p", v, o, o.split(b"=", 1)[1].strip()[1:-1]
        .removeprefix(b"'").removesuffix(b"'"))


def ls(v):
    if not shutil.which("ls") or "/" in v:
        return
    with tempfile.TemporaryDirectory() as d:
        open(os.path.join(d, v), "w").close()
        for style in ("c", "escape", "shell-escape"):
            o = subprocess.run(["ls", f"--quoting-style={style}", d], capture_output=True,
                               env=dict(os.environ, LC_ALL="C.UTF-8")).stdout.rstrip(b"\n")
            body = o[1:-1] if style != "escape" else o
            out(f"ls --quoting-style={style}", v, o, body)


def strace(v):
    if not shutil.which("strace"):
        return
    for flag in ([], ["-x"], ["-xx"]):
        p = subprocess.run(["strace", *flag, "-e", "trace=write", "-s", "4096", "-o",
                            "/dev/stderr", "printf", "%s", v], capture_output=True)
        line = next((l for l in p.stderr.splitlines() if l.startswith(b"write(1, ")), None)
        if line is None:
            return
        body = line[len(b'write(1, "'):line.rindex(b'", ')]
        out("strace " + " ".join(flag or ["(default)"]), v, line, body)


def dumps(v):
    b = v.encode()
    if shutil.which("xxd"):
        o = subprocess.run(["xxd", "-i"], input=b, capture_output=True).stdout
        out("xxd -i", v, o, o.strip())
    if shutil.which("od"):
        o = subprocess.run(["od", "-An", "-tu1"], input=b, capture_output=True).stdout
        out("od -An -tu1", v, o, o.strip())
    if shutil.which("iconv"):
        for enc in ("UTF-16LE", "UTF-16BE", "UTF-32LE"):
            o = subprocess.run(["iconv", "-f", "UTF-8", "-t", enc], input=b,
                               capture_output=True).stdout
            out(f"iconv -t {enc}", v, o, o)


def sqlite(v):
    if not shutil.which("sqlite3"):
        return
    with tempfile.TemporaryDirectory() as d:
        import sqlite3
        db = os.path.join(d, "x.db")
        c = sqlite3.connect(db)
        c.executescript("create table t(s);")
        c.execute("insert into t values(?)", (v,))
        c.commit()
        c.close()
        o = subprocess.run(["sqlite3", db, ".dump"], capture_output=True).stdout
        line = next(l for l in o.splitlines() if b"INSERT" in l)
        start = end = line.index(b"'") + 1
        while line[end:end + 2] == b"''" or line[end:end + 1] != b"'":
            end += 2 if line[end:end + 2] == b"''" else 1
        out("sqlite3 .dump", v, line, line[start:end])


def main():
    for v in VALUES:
        for gen in (python, node, perl, bash, ls, strace, dumps, sqlite):
            gen(v)


if __name__ == "__main__":
    sys.exit(main())
