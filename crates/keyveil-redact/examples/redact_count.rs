//! One streaming redaction of the throughput benchmark's input, for instruction counts.
//!
//! `benches/throughput.rs` measures time, which moves by ±10–30 % on a shared machine. This
//! driver redacts the same synthetic log with the same secrets once, in one chunk size, so
//! that an instruction counter gives a figure that does not depend on the machine's load:
//!
//! ```text
//! cargo build --release --locked -p keyveil-redact --example redact_count
//! valgrind --tool=callgrind --collect-atstart=no --toggle-collect='*redact_once*' \
//!     target/release/examples/redact_count 100 64 16
//! ```
//!
//! Arguments: values (default 100), chunk bytes (default 64), MiB of log (default 16), and
//! `mixed` to add seven words of non-ASCII text and escapes to the log's words (CJK, Arabic,
//! a query string, `&amp;`, a Windows path, `résumé`, fullwidth letters: every chunk then goes
//! through the decoding pass's slow paths). The input generator is otherwise the benchmark's
//! (same seeds, same lines, same planted forms).
#![allow(
    missing_docs,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stderr,
    clippy::indexing_slicing
)]

use keyveil_redact::{Redactor, variants};
use std::hint::black_box;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

const ALNUM: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";

fn secrets(n: usize) -> Vec<(String, String)> {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ n as u64);
    let prefixes = ["ghp_", "sk-", "xoxb-", "glpat-", "AKIA", ""];
    (0..n)
        .map(|i| {
            let mut v = prefixes[i % prefixes.len()].to_string();
            while v.len() < 40 {
                v.push(ALNUM[rng.below(ALNUM.len())] as char);
            }
            (format!("SECRET_{i}"), v)
        })
        .collect()
}

fn log(bytes: usize, secrets: &[(String, String)], mixed: bool) -> Vec<u8> {
    let mut rng = Rng(42);
    let extra = [
        "请求已完成",
        "المستخدم",
        "?a=1&b=%20x",
        "&amp;",
        "C:\\tmp\\x",
        "résumé",
        "ｔｅｓｔ",
    ];
    let mut words = if mixed { extra.to_vec() } else { Vec::new() };
    words.extend([
        "request",
        "completed",
        "GET",
        "/api/v1/items",
        "status=200",
        "user_id=4821",
        "duration",
        "ms",
        "cache",
        "miss",
        "connecting",
        "to",
        "db.internal:5432",
        "retrying",
        "worker-3",
        "INFO",
        "WARN",
        "DEBUG",
        "commit",
        "3f2a9c1e",
        "building",
        "target/release",
        "ok",
    ]);
    let mut out = Vec::with_capacity(bytes + 256);
    let mut next_plant = 64 * 1024;
    let mut line = 0u64;
    while out.len() < bytes {
        line += 1;
        out.extend_from_slice(
            format!("2026-11-29T15:53:{:02}.{:03}Z ", line % 60, line % 1000).as_bytes(),
        );
        for _ in 0..(6 + rng.below(10)) {
            out.extend_from_slice(words[rng.below(words.len())].as_bytes());
            out.push(b' ');
        }
        if out.len() >= next_plant && !secrets.is_empty() {
            next_plant += 64 * 1024;
            let v = secrets[rng.below(secrets.len())].1.as_bytes();
            match rng.below(4) {
                0 => out.extend_from_slice(v),
                1 => out.extend_from_slice(&variants::base64_full(v)[0]),
                2 => out.extend_from_slice(&variants::hex(v)[0]),
                _ => out.extend_from_slice(&variants::json_escapes(v)[0]),
            }
        }
        out.push(b'\n');
    }
    out
}

/// The measured part: the benchmark's `redact_stream` (output buffer cleared before each push).
#[inline(never)]
fn redact_once(r: &Redactor, input: &[u8], chunk: usize, out: &mut Vec<u8>) -> usize {
    out.clear();
    let mut s = r.stream();
    for c in input.chunks(chunk) {
        out.clear();
        s.push(c, out);
    }
    s.finish(out);
    s.redactions()
}

fn main() {
    let arg = |i: usize, d: usize| {
        std::env::args()
            .nth(i)
            .and_then(|s| s.parse().ok())
            .unwrap_or(d)
    };
    let (n, chunk, mib) = (arg(1, 100), arg(2, 64).max(1), arg(3, 16));
    let secrets = secrets(n);
    let mixed = std::env::args().nth(4).is_some_and(|a| a == "mixed");
    let input = log(mib << 20, &secrets, mixed);
    let r = Redactor::new(secrets.iter().cloned());
    let mut out = Vec::with_capacity(8 << 20);
    let found = black_box(redact_once(&r, &input, chunk, &mut out));
    eprintln!(
        "values={n} chunk={chunk} bytes={} redactions={found}",
        input.len()
    );
}
