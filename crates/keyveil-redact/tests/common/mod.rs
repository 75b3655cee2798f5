//! Runs leak cases (the format of `tests/cases/README.md`) through the redactor.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    dead_code
)]

use keyveil_redact::Redactor;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::process::Command;

/// One line of a case file.
#[derive(Debug, Deserialize)]
pub struct Case {
    pub id: String,
    pub kind: String,
    pub secrets: BTreeMap<String, String>,
    pub program: String,
    #[serde(default)]
    pub must_not_contain: Vec<String>,
    #[serde(default)]
    pub must_contain: Vec<String>,
}

pub fn parse(jsonl: &str) -> Vec<Case> {
    jsonl
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).expect("case line parses"))
        .collect()
}

/// Runs `sh -c PROGRAM` with only the secrets and PATH/HOME/LANG in its environment.
pub fn run(case: &Case) -> (Vec<u8>, Vec<u8>) {
    let mut cmd = Command::new("sh");
    cmd.arg("-c").arg(&case.program).env_clear();
    for var in ["PATH", "HOME", "PYENV_ROOT", "PYENV_VERSION"] {
        if let Some(v) = std::env::var_os(var) {
            cmd.env(var, v);
        }
    }
    cmd.env("LANG", "C.UTF-8");
    for (k, v) in &case.secrets {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("sh runs");
    (out.stdout, out.stderr)
}

/// Whether `needle` occurs in `hay` (an empty needle always does).
pub fn contains(hay: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || hay.windows(needle.len()).any(|w| w == needle)
}

/// Redacts one stream one-shot and with 1-byte chunks; both must agree.
fn redact_both(r: &Redactor, input: &[u8]) -> Vec<u8> {
    let (one_shot, _) = r.redact(input);
    let mut s = r.stream();
    let mut streamed = Vec::new();
    for b in input {
        s.push(std::slice::from_ref(b), &mut streamed);
    }
    s.finish(&mut streamed);
    assert_eq!(
        String::from_utf8_lossy(&one_shot),
        String::from_utf8_lossy(&streamed),
        "one-shot and 1-byte streaming differ"
    );
    one_shot
}

/// Checks a case; returns a list of failures (empty when it passes).
pub fn check(case: &Case) -> Vec<String> {
    let (stdout, stderr) = run(case);
    let mut raw = stdout.clone();
    raw.extend_from_slice(&stderr);
    let r = Redactor::new(case.secrets.iter().map(|(k, v)| (k.clone(), v.clone())));
    let out = redact_both(&r, &stdout);
    let err = redact_both(&r, &stderr);
    let mut failures = Vec::new();
    let leaked_before = case
        .must_not_contain
        .iter()
        .any(|n| contains(&raw, n.as_bytes()));
    if !leaked_before {
        failures.push(format!(
            "{}: program did not print any must_not_contain string (raw: {:?})",
            case.id,
            String::from_utf8_lossy(&raw)
        ));
    }
    for n in &case.must_not_contain {
        for (stream, bytes) in [("stdout", &out), ("stderr", &err)] {
            if contains(bytes, n.as_bytes()) {
                failures.push(format!(
                    "{} [{}]: leaked {:?} on {stream}: {:?}",
                    case.id,
                    case.kind,
                    n,
                    String::from_utf8_lossy(bytes)
                ));
            }
        }
    }
    let mut both = out.clone();
    both.extend_from_slice(&err);
    for m in &case.must_contain {
        if !contains(&out, m.as_bytes()) && !contains(&err, m.as_bytes()) {
            failures.push(format!(
                "{} [{}]: over-masked, {:?} missing from {:?}",
                case.id,
                case.kind,
                m,
                String::from_utf8_lossy(&both)
            ));
        }
    }
    failures
}

/// Runs all cases and panics with every failure.
pub fn check_all(cases: &[Case]) {
    let failures: Vec<String> = cases.iter().flat_map(check).collect();
    assert!(
        failures.is_empty(),
        "{} failure(s):\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// The first run of 12 bytes (a fragment) of `v` found in `out`, if any.
pub fn leaked_window(out: &[u8], v: &[u8]) -> Option<String> {
    v.windows(12)
        .find(|w| contains(out, w))
        .map(|w| String::from_utf8_lossy(w).into_owned())
}

/// `input` streamed in chunks of the sizes in `sizes` (cycled, each at least 1 byte): the
/// output and the number of markers.
pub fn stream_in(r: &Redactor, input: &[u8], sizes: &[usize]) -> (Vec<u8>, usize) {
    let mut s = r.stream();
    let mut out = Vec::new();
    let mut rest = input;
    let mut k = 0;
    while !rest.is_empty() {
        let n = sizes
            .get(k % sizes.len().max(1))
            .copied()
            .unwrap_or(1)
            .clamp(1, rest.len());
        k += 1;
        s.push(&rest[..n], &mut out);
        rest = &rest[n..];
    }
    s.finish(&mut out);
    (out, s.redactions())
}

/// `input` streamed one byte per push.
pub fn stream_bytewise(r: &Redactor, input: &[u8]) -> Vec<u8> {
    stream_in(r, input, &[1]).0
}

/// A redactor for `values`, named `S0`, `S1`, ...
pub fn redactor(values: &[Vec<u8>]) -> Redactor {
    Redactor::new(
        values
            .iter()
            .enumerate()
            .map(|(i, v)| (format!("S{i}"), v.clone())),
    )
}
