//! Values printed as literals and dumps by real interpreters and tools
//! (`tests/gen_literal_vectors.py`): Python, Node.js, Perl, bash, GNU `ls`, strace, `xxd`,
//! `od`, `iconv`, SQLite. The committed vectors (`tests/literal-vectors.jsonl`) are checked
//! always; the script's live output too when `python3` is installed.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::print_stderr
)]

mod common;
use common::contains;
use keyveil_redact::Redactor;
use serde::Deserialize;

const VECTORS: &str = include_str!("literal-vectors.jsonl");

#[derive(Deserialize)]
struct Vector {
    tool: String,
    value_hex: String,
    printed_hex: String,
    body_hex: String,
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// The printed output, redacted (one-shot and byte by byte, which must agree), must hold a
/// marker, not the body that stands for the value, and no run of 5 or more letters and digits
/// of the value.
fn check(lines: &str) -> Vec<String> {
    let mut failures = Vec::new();
    let mut tools = std::collections::BTreeSet::new();
    for line in lines.lines().filter(|l| !l.trim().is_empty()) {
        let v: Vector = serde_json::from_str(line).unwrap();
        let (value, printed, body) = (
            unhex(&v.value_hex),
            unhex(&v.printed_hex),
            unhex(&v.body_hex),
        );
        tools.insert(v.tool.clone());
        let r = Redactor::new([("S", &value)]);
        let (out, n) = r.redact(&printed);
        let bytewise = common::stream_bytewise(&r, &printed);
        let show = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        if out != bytewise {
            failures.push(format!("{}: streaming differs", v.tool));
        }
        let leaked_run = value
            .split(|b| !b.is_ascii_alphanumeric())
            .filter(|run| run.len() >= 5)
            .find(|run| contains(&out, run));
        if n == 0 || contains(&out, &body) || leaked_run.is_some() {
            failures.push(format!(
                "{}: value {:?} printed {:?} redacted {:?}",
                v.tool,
                show(&value),
                show(&printed),
                show(&out)
            ));
        }
    }
    assert!(tools.len() >= 10, "only {} tools", tools.len());
    failures
}

#[test]
fn committed_vectors() {
    let failures = check(VECTORS);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn live_interpreters() {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/gen_literal_vectors.py");
    let Ok(out) = std::process::Command::new("python3").arg(script).output() else {
        eprintln!("skipped: python3 is not installed (the committed vectors are still checked)");
        return;
    };
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let failures = check(&String::from_utf8(out.stdout).unwrap());
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
