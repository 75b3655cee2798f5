//! What a command does, by class, for the memory of denials (`rephrased-denied`).

use std::collections::BTreeSet;

use super::{Facts, assess};

/// What a command does, by class, for the denial memory: `inline-code` (an interpreter or shell
/// given code), `env-dump`, `env-to-file`, `code-option`, `network`, and `net:HOST` for each
/// network destination named in a URL or `/dev/tcp/HOST/PORT`. Two phrasings of one act
/// (`sh -c`, `bash -lc`, `python3 -c` running the same upload) share classes.
pub(crate) fn behaviour(argv: &[String]) -> Vec<String> {
    let f = assess(
        argv,
        &[],
        &[],
        &Facts {
            approved_before: true,
            ..Facts::default()
        },
    );
    let mut out: BTreeSet<String> = f
        .into_iter()
        .filter(|x| {
            matches!(
                x.as_str(),
                "inline-code" | "env-dump" | "env-to-file" | "code-option" | "network"
            )
        })
        .collect();
    for a in argv {
        for host in hosts(a) {
            out.insert(format!("net:{host}"));
        }
    }
    out.into_iter().collect()
}

/// Hosts named in URLs (`scheme://[user@]host[:port]/…`) and `/dev/tcp|udp/HOST/PORT`, lowercased.
pub(super) fn hosts(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut push = |h: &str| {
        let h = h
            .trim_matches(|c: char| {
                !(c.is_alphanumeric() || c == '.' || c == '-' || c == ':' || c == '[' || c == ']')
            })
            .to_ascii_lowercase();
        if !h.is_empty() && !out.contains(&h) {
            out.push(h);
        }
    };
    for (i, _) in s.match_indices("://") {
        let rest = s.get(i + 3..).unwrap_or("");
        let auth = rest
            .split(['/', '?', '#', '"', '\'', ' ', ')', '`'])
            .next()
            .unwrap_or("");
        let host = auth.rsplit('@').next().unwrap_or(auth);
        let host = if host.starts_with('[') {
            host.split(']')
                .next()
                .map(|h| h.trim_start_matches('['))
                .unwrap_or("")
        } else {
            host.split(':').next().unwrap_or("")
        };
        push(host);
    }
    for pfx in ["/dev/tcp/", "/dev/udp/"] {
        for (i, _) in s.match_indices(pfx) {
            let rest = s.get(i + pfx.len()..).unwrap_or("");
            push(rest.split('/').next().unwrap_or(""));
        }
    }
    out
}

/// Classes two behaviours share (see [`behaviour`]). `network` alone counts only when neither
/// names a destination, or when both name the same one.
pub(crate) fn shared_behaviour(denied: &[String], now: &[String]) -> Vec<String> {
    let has_host = |b: &[String]| b.iter().any(|x| x.starts_with("net:"));
    now.iter()
        .filter(|c| denied.contains(c))
        .filter(|c| c.as_str() != "network" || !(has_host(denied) && has_host(now)))
        .cloned()
        .collect()
}
