//! Red team s13 of issue 22 (`.env` mounts): a prompt-injected agent (same uid, shell,
//! `/proc`, the socket, the CLI) after the count of openings and the pieces. A held attack is
//! a passing test; one that works is kept `#[ignore = "LEAK: ..."]` with what it got (counts
//! only, never a value) in its doc comment.
#![allow(clippy::print_stderr)] // the figures of each attempt (counts only, never a value)

use std::time::{Duration, Instant};

use crate::harness::{Home, text};
use crate::mount::{
    Project, TTL_SCRIPT, agent_host, approve_card, finished, mount, nul_pairs, pending, store,
    ttl_grant, values, wait_card,
};

/// The agent's side channel: it finds the process holding `.env` (`/proc/*/fd`, a `readlink`,
/// no opening; read-only, not the broker: `fdinfo`, `comm`) while the card waits, then reads that process's `/proc/PID/io` (no ptrace
/// attach: `PTRACE_MODE_READ`, which Yama does not restrict) as fast as it can, keeping each
/// new `rchar` (the bytes its `read`s returned). Writes the successive increases to `argv[2]`
/// as JSON, then `argv[2].done`.
const RCHAR_SPY: &str = r#"
import os, sys, time, json
path, out = sys.argv[1], sys.argv[2]
pid = None; t0 = time.time()
while pid is None and time.time() - t0 < 30:
    for p in os.listdir("/proc"):
        if not p.isdigit() or int(p) == os.getpid():
            continue
        try:
            if open(f"/proc/{p}/comm").read().strip() == "keyveil":
                continue  # the broker's own write end
            for f in os.listdir(f"/proc/{p}/fd"):
                if os.readlink(f"/proc/{p}/fd/{f}") == path:
                    flags = open(f"/proc/{p}/fdinfo/{f}").read().split("flags:")[1].split()[0]
                    if int(flags, 8) & 3 == 0:
                        pid = int(p)
        except OSError:
            pass
    time.sleep(0.005)
cpus = sorted(os.sched_getaffinity(0))
os.sched_setaffinity(0, {cpus[-1]})  # its own CPU (the agent may pin itself)
if len(sys.argv) > 3:
    os.execv(sys.argv[3], [sys.argv[3], str(pid), out])
fd = os.open(f"/proc/{pid}/io", os.O_RDONLY)
pread = os.pread
last = pread(fd, 40, 0)
seen = [last]; k = 0
try:
    while True:
        raw = pread(fd, 40, 0)
        if raw != last:
            seen.append(raw); last = raw
        k += 1
        if k & 0xffff == 0 and time.time() - t0 > 40:
            break
except OSError:
    pass  # the reader is gone
seen = [int(r.split(b"\n")[0].split()[1]) for r in seen]
seen = [a for i, a in enumerate(seen) if i == 0 or a != seen[i - 1]]
deltas = [b - a for a, b in zip(seen, seen[1:])]
with open(out, "w") as f:
    json.dump(deltas, f)
open(out + ".done", "w").close()
"#;

/// The same spy's polling loop in C (faster than Python's: it misses fewer pieces): `argv[1]`
/// the pid, `argv[2]` the output.
const RCHAR_SPY_C: &str = r#"
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
static long long seen[1 << 16];
int main(int argc, char **argv) {
    char p[64], buf[48], last[48] = {0};
    snprintf(p, sizeof p, "/proc/%s/io", argv[1]);
    int fd = open(p, O_RDONLY);
    int n = 0;
    for (long k = 0; fd >= 0 && k < 400000000L && n < (1 << 16); k++) {
        ssize_t r = pread(fd, buf, 40, 0);
        if (r <= 0) break;
        buf[r] = 0;
        if (strcmp(buf, last) != 0) {
            long long v = atoll(buf + 7);
            if (n == 0 || seen[n - 1] != v) seen[n++] = v;
            memcpy(last, buf, sizeof buf);
        }
    }
    FILE *f = fopen(argv[2], "w");
    fputc('[', f);
    for (int i = 1; i < n; i++) fprintf(f, "%s%lld", i > 1 ? "," : "", seen[i] - seen[i - 1]);
    fputs("]", f);
    fclose(f);
    char d[4096];
    snprintf(d, sizeof d, "%s.done", argv[2]);
    fclose(fopen(d, "w"));
    return 0;
}
"#;

/// The human's reader: an ordinary loader's loop (`read` until end-of-file). It prints what
/// each `read` returned (sizes) and the text (hex), for the test to check the spy against.
const LOOP_READER: &str = r#"
import os, sys, json
fd = os.open(".env", os.O_RDONLY)
sizes = []; data = b""
while True:
    b = os.read(fd, 65536)
    if not b:
        break
    sizes.append(len(b)); data += b
sys.stdout.write(json.dumps({"sizes": sizes, "hex": data.hex()}))
"#;

/// Each variable's line in `text` (in the order of the text): its name and the length of
/// what follows `NAME=` up to and with the line's end (the value as written, quotes and all).
fn line_lengths(text: &[u8], names: &[&str]) -> Vec<(String, usize)> {
    let mut at: Vec<(usize, &str)> = names
        .iter()
        .filter_map(|n| {
            let needle = format!("{n}=");
            (0..text.len())
                .find(|&i| {
                    (i == 0 || text[i - 1] == b'\n') && text[i..].starts_with(needle.as_bytes())
                })
                .map(|i| (i, *n))
        })
        .collect();
    at.sort();
    at.iter()
        .enumerate()
        .map(|(k, (i, n))| {
            let end = at.get(k + 1).map_or(text.len(), |x| x.0);
            ((*n).to_owned(), end - i - n.len() - 1)
        })
        .collect()
}

/// What the agent makes of the increases it saw, knowing the names and their order: after a
/// `NAME=` piece, the value's pieces are 4 bytes but the last; a value ends at a piece under 4
/// bytes or where the next increase is the next `NAME=`. Each variable's inferred length of
/// its written value (with the line end), `None` where the walk lost track.
fn infer(deltas: &[usize], order: &[String]) -> Vec<Option<usize>> {
    let mut out = Vec::new();
    let mut i = 0;
    for (j, name) in order.iter().enumerate() {
        if deltas.get(i) != Some(&(name.len() + 1)) {
            out.resize(order.len(), None);
            return out;
        }
        i += 1;
        let next = order.get(j + 1).map(|n| n.len() + 1);
        let mut sum = 0;
        while let Some(&d) = deltas.get(i) {
            sum += d;
            i += 1;
            if d < 4 || deltas.get(i).copied() == next {
                break;
            }
        }
        out.push(Some(sum));
    }
    out
}

/// Value lengths through the reader's byte count. The broker writes each `NAME=` in one piece
/// and each value in pieces of 4 bytes, the next only once the reader read the last; the
/// reader's `rchar` (`/proc/READER/io`, readable by any process of the user: Yama restricts
/// attaching, not this) grows by each piece, so an agent that polls it learns where each
/// value starts and ends: the length of every value as written (quotes included), and the
/// text's length, while nothing of the FIFO is touched. Measured on this shared machine (load
/// average 12 on 2 CPUs, other builds running), 9 runs (2 with a Python poller, 7 with the C
/// one pinned to a CPU of its own): the spy saw 8 to 37 of the reader's 64 reads (the rest
/// merged), the text's length (259 bytes) exactly in 9 of 9, one value's written length in 1 of
/// 9 (0 of 7 in the others); audit `mount_read` only. On an idle machine a poller that sees
/// every piece gets every value's length: the piece sizes are fixed by the text alone.
#[test]
#[ignore = "LIMIT (docs/mounts.md, What a mount cannot give: the lengths of the text and its values): the reader's /proc/PID/io rchar shows the pieces' sizes: the text's length in 9 of 9 runs, one value's written length in 1 (load average 12 on 2 CPUs: the spy saw 8 to 37 of the 64 pieces); nothing audited but mount_read"]
fn the_readers_byte_count_tells_the_agent_each_values_length() {
    let h = Home::new();
    let vals = values();
    store(&h, &vals);
    let p = Project::new();
    mount(&h, &p);
    let out = p.tmp.path().join("spied");
    // The C loop where a compiler is at hand, else Python's.
    let c_src = p.tmp.path().join("spy.c");
    let c_bin = p.tmp.path().join("spy");
    std::fs::write(&c_src, RCHAR_SPY_C).unwrap();
    let compiled = std::process::Command::new("cc")
        .args(["-O2", "-o"])
        .arg(&c_bin)
        .arg(&c_src)
        .status()
        .is_ok_and(|s| s.success());
    let mut args = vec![
        "-c".to_owned(),
        RCHAR_SPY.to_owned(),
        p.env_file().display().to_string(),
        out.display().to_string(),
    ];
    if compiled {
        args.push(c_bin.display().to_string());
    }
    let spy = std::process::Command::new("python3")
        .args(&args)
        .stdin(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let reader = p.reader(&["python3", "-c", LOOP_READER], &[]);
    let card = wait_card(&h);
    approve_card(&h, &card, &[]);
    let honest = finished(reader);
    let done = out.with_extension("done");
    let t0 = Instant::now();
    while !done.exists() {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "the spy never finished"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = crate::harness::wait_output(spy, Duration::from_secs(5));
    let deltas: Vec<usize> = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    let r: serde_json::Value = serde_json::from_slice(&honest.stdout).unwrap();
    let sizes: Vec<usize> = serde_json::from_value(r["sizes"].clone()).unwrap();
    let hex = r["hex"].as_str().unwrap();
    let text_bytes: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect();
    let names: Vec<&str> = vals.iter().map(|(n, _)| *n).collect();
    let truth = line_lengths(&text_bytes, &names);
    let order: Vec<String> = truth.iter().map(|(n, _)| n.clone()).collect();
    let inferred = infer(&deltas, &order);
    let learned = truth
        .iter()
        .zip(&inferred)
        .filter(|((_, t), i)| **i == Some(*t))
        .count();
    let audit = h.audit_text();
    let flagged = audit.contains("\"mount_read_suspect\"") || audit.contains("\"mount_refused\"");
    eprintln!(
        "rchar spy (C {compiled}): {} increases seen, {} reads by the reader, same sequence {}, text {} bytes (spy's sum {}), value lengths learned {learned} of {}, flagged {flagged}",
        deltas.len(),
        sizes.len(),
        deltas == sizes,
        text_bytes.len(),
        deltas.iter().sum::<usize>(),
        vals.len()
    );
    assert!(
        learned == 0 || flagged,
        "the agent learned the written length of {learned} of {} values unreported",
        vals.len()
    );
}

/// A TTL grant made for a reader the human started (no agent host among its parents) serves
/// the same argv from the same directory started by the agent: the grant binds the argv, the
/// directory, the executable and the code-loading environment, not the risk flags the card
/// showed. The agent's reader is its own descendant (its memory, output and a parked copy of
/// its `.env` opening are the agent's: `redteam_s12_mounts.rs`), and the card that says
/// `agent-reader` never appears. Held when the agent's read gets a card flagged `agent-reader`.
#[test]
fn a_ttl_grant_for_the_humans_reader_serves_the_agents_reader_without_a_card() {
    let h = Home::new();
    let vals = values();
    store(&h, &vals);
    let p = Project::new();
    mount(&h, &p);
    let script = TTL_SCRIPT;
    // Control: under the agent host, without a grant, the card says `agent-reader`.
    let host = agent_host(&p);
    let control = p.reader(
        &[host.to_str().unwrap(), "-c", "sh -c \"$S\" control; :"],
        &[("S", script)],
    );
    let c0 = wait_card(&h);
    assert!(
        c0.to_string().contains("agent-reader"),
        "the agent host is seen: {c0}"
    );
    assert!(h.run(&["deny", &c0["id"].to_string()]).status.success());
    let _ = finished(control);
    ttl_grant(&h, &p, &vals);
    // The agent: `claude -c 'sh -c SCRIPT; :'` (not exec'd: the agent host stays a parent).
    let agents = p.reader(
        &[host.to_str().unwrap(), "-c", "sh -c \"$S\"; :"],
        &[("S", script)],
    );
    let t0 = Instant::now();
    let mut card2 = None;
    while t0.elapsed() < Duration::from_secs(5) {
        if let Some(c) = pending(&h).pop() {
            card2 = Some(c);
            break;
        }
        if agents.id() > 0 && !crate::harness::alive(agents.id() as i32) {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    match card2 {
        Some(c) => {
            assert!(
                c.to_string().contains("agent-reader"),
                "the agent's read got a card without agent-reader"
            );
            let o = h.run(&["deny", &c["id"].to_string()]);
            assert!(o.status.success());
            let o = finished(agents);
            assert!(nul_pairs(&o.stdout).iter().all(|(_, v)| v.is_empty()));
        }
        None => {
            let o = finished(agents);
            let got = nul_pairs(&o.stdout);
            let read = vals
                .iter()
                .filter(|(n, v)| got.iter().any(|(k, w)| k == n && w == v))
                .count();
            panic!(
                "the agent's reader (under an agent host) read {read} of {} values with no card",
                vals.len()
            );
        }
    }
}

/// `keyveil mounts` is where the human learns a read was refused or stopped. The agent, with no
/// factor, unmounts and mounts the same path again (`unmount`/`mount` ask for none): the
/// refusal it caused (an `O_RDWR` opener posing as a reader) is then no longer shown there.
/// Held when the listing still says the path was refused (the audit keeps `mount_refused`).
#[test]
fn the_agent_erases_a_refusal_from_the_mounts_listing_by_mounting_again() {
    let h = Home::new();
    let vals = values();
    store(&h, &vals);
    let p = Project::new();
    mount(&h, &p);
    let rdwr = p.reader(
        &[
            "python3",
            "-c",
            "import os, time\nfd = os.open('.env', os.O_RDWR)\ntime.sleep(1.5)\n",
        ],
        &[],
    );
    let _ = crate::harness::wait_output(rdwr, Duration::from_secs(10));
    let t0 = Instant::now();
    while !h.audit_text().contains("mount_refused") {
        assert!(t0.elapsed() < Duration::from_secs(10), "no refusal");
        std::thread::sleep(Duration::from_millis(100));
    }
    let before = h.json(&["mounts", "--json"]);
    eprintln!("before: {before}");
    let env = p.env_file();
    let path = env.to_str().unwrap();
    let u = h.run(&["unmount", path]);
    let m = h.run(&["mount", "demo", path]);
    eprintln!(
        "agent's unmount: {}, mount: {}",
        u.status.success(),
        m.status.success()
    );
    let after = h.json(&["mounts", "--json"]);
    eprintln!("after: {after}");
    let refused = |v: &serde_json::Value| {
        v.as_array()
            .and_then(|a| a.first())
            .map_or(0, |m| m["refused"].as_u64().unwrap_or(0))
    };
    assert!(refused(&before) > 0, "the refusal is listed: {before}");
    assert!(
        refused(&after) > 0 || !(u.status.success() && m.status.success()),
        "the listing forgot the refusal: {}",
        text(&u.stderr)
    );
}

/// The executable line is the one to trust, and `workspace-executable` flags one that lies
/// where the agent can write: the project, `$HOME`, a temporary directory, or a world-writable
/// directory. The agent's user can write elsewhere too: its runtime directory
/// (`/run/user/UID`, mode 0700, the user's own; here a directory like it under `/run`). The
/// agent copies `sh` there as `docker`, puts it first on `PATH` (a `PATH` alone is no
/// `code-loading-environment`) and writes the script `compose` into the project: the reader
/// `docker compose up` is a shell that copies `.env` to its output with builtins (no `cat`).
/// Held when the card flags the executable.
#[test]
#[ignore = "LIMIT (docs/mounts.md, workspace-executable: a broker run as root goes by places only; for any other user the rule is pin::tests::writable_by_sees_a_users_own_directories_anywhere): an executable in a directory of the user's outside the project, HOME and the temporary directories is not flagged when everything runs as root: card `docker compose up`, running RUNDIR/docker (a copy of sh), risk only all-variables, first-time (3 runs; approved, 7 of 7 values copied to the agent's output)"]
fn a_shell_copied_into_the_users_runtime_directory_reads_under_an_unflagged_card() {
    use std::os::unix::fs::PermissionsExt;
    let h = Home::new();
    let vals = values();
    store(&h, &vals);
    let p = Project::new();
    mount(&h, &p);
    let run = tempfile::Builder::new()
        .prefix("kvrun")
        .tempdir_in("/run")
        .unwrap();
    std::fs::set_permissions(run.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    let docker = run.path().join("docker");
    std::fs::copy("/bin/sh", &docker).unwrap();
    std::fs::write(
        p.path().join("compose"),
        "while IFS= read -r l || [ -n \"$l\" ]; do printf '%s\\n' \"$l\"; done < .env\n",
    )
    .unwrap();
    // `env -i` drops what this machine's and cargo's environment would flag on every card
    // (`LD_LIBRARY_PATH`, `PYTHON*`, ...): the reader's environment is `PATH` alone.
    let path = format!("PATH={}:/usr/bin:/bin", run.path().display());
    let reader = p.reader(&["env", "-i", &path, "docker", "compose", "up"], &[]);
    let card = wait_card(&h);
    let flags: Vec<String> = card["risk"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|f| f.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    eprintln!(
        "card: argv {} words, executable under the runtime directory {}, flags {flags:?}",
        card["argv"].as_array().map_or(0, Vec::len),
        card.to_string().contains(&run.path().display().to_string())
    );
    if flags.iter().any(|f| f == "workspace-executable")
        || card.to_string().contains("workspace-executable")
    {
        assert!(h.run(&["deny", &card["id"].to_string()]).status.success());
        let _ = finished(reader);
        return;
    }
    approve_card(&h, &card, &[]);
    let o = finished(reader);
    let copied = vals
        .iter()
        .filter(|(_, v)| crate::harness::contains(&o.stdout, v))
        .count();
    panic!(
        "the card showed no flag for an executable the agent wrote (flags {flags:?}); {copied} of {} values copied",
        vals.len()
    );
}

/// A reader in a mount namespace of its own (`unshare -m`; an unprivileged agent gets one with
/// a user namespace) where the agent's copy of `sh` is bind-mounted over `/usr/bin/env`:
/// `/proc/PID/exe` then reads `/usr/bin/env`, the path in the reader's namespace, and a card
/// that trusted it would say the reader runs the system's `env`. Held: the broker pins the
/// file at that path in its own namespace and compares it with the file that runs
/// (`/proc/PID/exe`'s device and inode); they differ, so the card says the executable could
/// not be pinned (`unpinned-executable`), never `/usr/bin/env` (3 runs: flagged, no path).
#[test]
fn a_reader_in_its_own_mount_namespace_cannot_borrow_a_system_executables_name() {
    let h = Home::new();
    let vals = values();
    store(&h, &vals);
    let p = Project::new();
    mount(&h, &p);
    let evil = p.tmp.path().join("evil");
    std::fs::copy("/bin/sh", &evil).unwrap();
    std::fs::write(
        p.path().join("compose"),
        "while IFS= read -r l || [ -n \"$l\" ]; do printf '%s\\n' \"$l\"; done < .env\n",
    )
    .unwrap();
    let script = format!(
        "mount --bind '{}' /usr/bin/env && exec env compose up",
        evil.display()
    );
    let probe = std::process::Command::new("unshare")
        .args(["-m", "true"])
        .status()
        .is_ok_and(|s| s.success());
    if !probe {
        eprintln!("skipped: no mount namespace for this user");
        return;
    }
    let reader = p.reader(&["unshare", "-m", "sh", "-c", &script], &[]);
    let card = wait_card(&h);
    let risk = card["risk"].to_string();
    let exe = card["executable"]["path"].as_str().unwrap_or("").to_owned();
    eprintln!("card: risk {risk}, executable {exe:?}");
    assert!(h.run(&["deny", &card["id"].to_string()]).status.success());
    let o = finished(reader);
    assert!(o.stdout.is_empty(), "a denied read got bytes");
    assert!(
        risk.contains("unpinned-executable"),
        "the card trusted the reader's namespace: {risk}"
    );
    assert_ne!(
        exe, "/usr/bin/env",
        "the card names the system's env as the executable"
    );
}
