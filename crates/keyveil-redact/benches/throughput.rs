//! Redaction throughput, matcher build time and a naive baseline.
//!
//! Input: a synthetic log (`KEYVEIL_BENCH_MIB` MiB, default 16) of realistic lines with planted
//! values (raw, base64, hex, JSON-escaped) every ~64 KiB. Secrets: 1, 10, 100, 1000 random
//! 40-byte tokens, each expanded by the redactor into all its variants.
//!
//! - `redact/values=N/chunk=C`: streaming redaction in chunks of C bytes (1 B chunks run on
//!   1/16 of the input to keep the run short; throughput is per byte either way);
//! - `build/values=N`: building the redactor (variants + automata);
//! - `naive/values=N`: the GitHub-runner approach, one `memmem` search per variant of each value
//!   (search only, no replacement; run on a slice so that 1000 values finish).
//!
//! `cargo bench -p keyveil-redact --bench throughput` (set `KEYVEIL_BENCH_MIB=256` for the
//! figures in `docs/benchmarks.md`). With `KEYVEIL_BENCH_CPU_TIME=1` the redaction and build
//! benchmarks measure the thread's *CPU* time (Linux `/proc/thread-self/schedstat`) instead of
//! wall time, so that a busy machine does not distort the per-core figures.
#![allow(
    missing_docs,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stderr,
    clippy::indexing_slicing
)]

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use keyveil_redact::{Redactor, variants};
use std::hint::black_box;
use std::time::Duration;

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

fn log(bytes: usize, secrets: &[(String, String)]) -> Vec<u8> {
    let mut rng = Rng(42);
    let words = [
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
    ];
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

fn input_bytes() -> usize {
    std::env::var("KEYVEIL_BENCH_MIB")
        .ok()
        .and_then(|s| s.parse::<usize>().ok())
        .unwrap_or(16)
        << 20
}

/// On-CPU time of the calling thread, if the kernel reports it.
fn thread_cpu_time() -> Option<Duration> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    let ns: u64 = s.split_whitespace().next()?.parse().ok()?;
    Some(Duration::from_nanos(ns))
}

fn cpu_time_mode() -> bool {
    std::env::var("KEYVEIL_BENCH_CPU_TIME").is_ok_and(|v| v == "1") && thread_cpu_time().is_some()
}

/// Runs `f` `iters` times and returns the elapsed wall or CPU time.
fn timed(iters: u64, mut f: impl FnMut()) -> Duration {
    if cpu_time_mode() {
        let start = thread_cpu_time().unwrap_or_default();
        for _ in 0..iters {
            f();
        }
        thread_cpu_time().unwrap_or_default().saturating_sub(start)
    } else {
        let start = std::time::Instant::now();
        for _ in 0..iters {
            f();
        }
        start.elapsed()
    }
}

fn redact_stream(r: &Redactor, input: &[u8], chunk: usize, out: &mut Vec<u8>) -> usize {
    out.clear();
    let mut s = r.stream();
    for c in input.chunks(chunk) {
        // As the broker does: each chunk's output is sent on, and the buffer reused.
        out.clear();
        s.push(c, out);
    }
    s.finish(out);
    s.redactions()
}

fn bench(c: &mut Criterion) {
    let size = input_bytes();
    for &n in &[1usize, 10, 100, 1000] {
        let secrets = secrets(n);
        let input = log(size, &secrets);
        let r = Redactor::new(secrets.iter().cloned());
        let stats = r.stats();
        eprintln!(
            "values={n}: {} + {} patterns, {:.1} MiB matchers, engines {:?}, max pattern {} B, probe stride {}",
            stats.raw_patterns,
            stats.normalized_patterns,
            stats.memory_bytes as f64 / (1 << 20) as f64,
            stats.engines,
            r.max_pattern_len(),
            stats.probe_stride
        );
        let mut g = c.benchmark_group(format!("redact/values={n}"));
        g.sample_size(10)
            .warm_up_time(Duration::from_millis(500))
            .measurement_time(Duration::from_secs(3));
        let mut out = Vec::with_capacity(8 << 20);
        for &chunk in &[1usize, 64, 4096, 65536, 1 << 20] {
            let data = if chunk == 1 {
                &input[..input.len() / 16]
            } else {
                &input[..]
            };
            g.throughput(Throughput::Bytes(data.len() as u64));
            g.bench_with_input(BenchmarkId::new("chunk", chunk), &chunk, |b, &chunk| {
                b.iter_custom(|iters| {
                    timed(iters, || {
                        black_box(redact_stream(&r, data, chunk, &mut out));
                    })
                })
            });
        }
        g.finish();

        let mut g = c.benchmark_group(format!("naive/values={n}"));
        g.sample_size(10)
            .warm_up_time(Duration::from_millis(500))
            .measurement_time(Duration::from_secs(3));
        let needles: Vec<Vec<u8>> = secrets
            .iter()
            .flat_map(|(_, v)| variants::encodings(v.as_bytes()))
            .collect();
        let finders: Vec<memchr::memmem::Finder<'_>> =
            needles.iter().map(memchr::memmem::Finder::new).collect();
        let slice = &input[..input.len().min((64 << 20) / n.max(1)).max(1 << 16)];
        eprintln!(
            "naive values={n}: {} needles over {} bytes",
            finders.len(),
            slice.len()
        );
        g.throughput(Throughput::Bytes(slice.len() as u64));
        g.bench_function("memmem-per-variant", |b| {
            b.iter_custom(|iters| {
                timed(iters, || {
                    let mut hits = 0usize;
                    for f in &finders {
                        hits += f.find_iter(slice).count();
                    }
                    black_box(hits);
                })
            })
        });
        g.finish();

        let mut g = c.benchmark_group("build");
        g.sample_size(10);
        g.bench_function(BenchmarkId::new("values", n), |b| {
            b.iter_custom(|iters| {
                timed(iters, || {
                    black_box(Redactor::new(secrets.iter().cloned()));
                })
            })
        });
        g.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
