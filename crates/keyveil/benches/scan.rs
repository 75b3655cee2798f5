//! Cost of the write-side scan after a run, on a tree of 100,000 small files.
//!
//! The tree: `KEYVEIL_BENCH_FILES` files (default 100,000) of 100–400 bytes in directories of
//! 100 (source-like text and JSON), written, then left older than the run start (`since` is
//! taken 2.2 s later, past the default 2 s slack). Then:
//!
//! - `scan/changed=0`: no file changed during the run: the cost of walking and `lstat`ing
//!   (`/threads=1`: with one walker thread instead of one per core);
//! - `scan/changed=1000`: 1% rewritten after `since`, among them 10 with a planted value (raw,
//!   base64, JSON-escaped, percent-encoded), a `.tar.gz` and a `.zip`;
//! - `scan/changed=10000`: 10% rewritten;
//! - `scan/watched/changed=0` and `scan/watched/changed=1000`: the same scans from a watch of
//!   the tree (`scan::watch`, built once as the broker does after the first run in a folder):
//!   a ticket taken before the run, then the scan of what its events name; each asserts the
//!   same leaks as the walk.
//!
//! The redactor holds 5 random 40-byte values. The page cache is warm (the tree was just
//! written). Run: `cargo bench -p keyveil --bench scan`.
#![allow(
    missing_docs,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stderr,
    clippy::indexing_slicing
)]

use keyveil::scan;

use std::hint::black_box;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use criterion::{Criterion, criterion_group, criterion_main};
use keyveil_redact::Redactor;

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
    fn token(&mut self, len: usize) -> String {
        const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
        (0..len).map(|_| A[self.below(A.len())] as char).collect()
    }
}

const WORDS: &[&str] = &[
    "const", "return", "import", "export", "function", "value", "config", "default", "module",
    "string", "number", "items", "render", "props", "state", "=>", "{", "}", ";", "\n",
];

fn filler(rng: &mut Rng, bytes: usize) -> String {
    let mut s = String::with_capacity(bytes + 16);
    while s.len() < bytes {
        s.push_str(WORDS[rng.below(WORDS.len())]);
        s.push(' ');
    }
    s
}

fn file_path(root: &Path, i: usize) -> PathBuf {
    root.join(format!("pkg{:04}", i / 100)).join(format!(
        "file{:03}.{}",
        i % 100,
        if i.is_multiple_of(3) { "json" } else { "js" }
    ))
}

fn build_tree(root: &Path, n: usize, rng: &mut Rng) {
    for d in 0..n.div_ceil(100) {
        std::fs::create_dir_all(root.join(format!("pkg{d:04}"))).unwrap();
    }
    for i in 0..n {
        let len = 100 + rng.below(300);
        std::fs::write(file_path(root, i), filler(rng, len)).unwrap();
    }
}

/// Rewrites `count` files (spread over the tree) starting at `from`; the first ten carry a
/// value in some encoding, two are archives.
fn change(root: &Path, n: usize, from: usize, count: usize, secrets: &[String], rng: &mut Rng) {
    use base64::Engine as _;
    for k in 0..count {
        let i = (from + k) * 7919 % n; // spread
        let p = file_path(root, i);
        let len = 100 + rng.below(300);
        let mut body = filler(rng, len);
        let v = &secrets[k % secrets.len()];
        match k {
            0 => body.push_str(v),
            1 => body.push_str(&base64::engine::general_purpose::STANDARD.encode(format!("u:{v}"))),
            2 => body.push_str(&serde_json::to_string(v).unwrap()),
            3 => body.push_str(&v.replace('A', "%41")),
            4 => {
                let mut t = tar::Builder::new(Vec::new());
                let mut h = tar::Header::new_ustar();
                h.set_size(v.len() as u64);
                h.set_cksum();
                t.append_data(&mut h, "x/.env", v.as_bytes()).unwrap();
                let mut gz =
                    flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
                gz.write_all(&t.into_inner().unwrap()).unwrap();
                std::fs::write(&p, gz.finish().unwrap()).unwrap();
                continue;
            }
            5 => {
                let mut z = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
                z.start_file("cfg.txt", zip::write::SimpleFileOptions::default())
                    .unwrap();
                z.write_all(body.as_bytes()).unwrap();
                z.write_all(v.as_bytes()).unwrap();
                std::fs::write(&p, z.finish().unwrap().into_inner()).unwrap();
                continue;
            }
            _ => {}
        }
        std::fs::write(&p, body).unwrap();
    }
}

/// User + system CPU time of this process, all threads, in ms (Linux `/proc/self/stat`,
/// 100 ticks a second); 0 elsewhere.
fn cpu_ms() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return 0.0;
    };
    let f: Vec<f64> = rest
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0.0))
        .collect();
    (f[11] + f[12]) * 10.0
}

fn bench(c: &mut Criterion) {
    let n: usize = std::env::var("KEYVEIL_BENCH_FILES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(100_000);
    let mut rng = Rng(0x5eed_1234_abcd_ef01);
    let dir = tempfile::Builder::new()
        .prefix("kv-scan-bench")
        .tempdir()
        .unwrap();
    let root = dir.path().join("repo");
    let t = std::time::Instant::now();
    build_tree(&root, n, &mut rng);
    eprintln!("tree of {n} files built in {:?}", t.elapsed());
    std::thread::sleep(Duration::from_millis(2200));
    let since = SystemTime::now();
    let secrets: Vec<String> = (0..5).map(|_| rng.token(40)).collect();
    let redactor = Redactor::new(
        secrets
            .iter()
            .enumerate()
            .map(|(i, v)| (format!("SECRET_{i}"), v.clone())),
    );
    let scope = scan::ScanScope {
        cwd: root.clone(),
        home: None,
        since,
        limits: scan::ScanLimits::default(),
    };
    let mut g = c.benchmark_group("scan");
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(15));
    let run = |g: &mut criterion::BenchmarkGroup<'_, _>, name: &str, scope: &scan::ScanScope| {
        // CPU time (all threads) as well as wall time: on a busy machine the wall time measures
        // the neighbours too.
        let (cpu0, t0) = (cpu_ms(), std::time::Instant::now());
        let mut r = scan::scan(scope, &redactor);
        for _ in 1..5 {
            r = scan::scan(scope, &redactor);
        }
        let (cpu, wall) = ((cpu_ms() - cpu0) / 5.0, t0.elapsed().as_secs_f64() * 200.0);
        eprintln!(
            "{name}: files_scanned={} bytes_scanned={} leaks={} truncated={} wall_ms={wall:.0} cpu_ms={cpu:.0} (mean of 5)",
            r.files_scanned,
            r.bytes_scanned,
            r.leaks.len(),
            r.truncated,
        );
        g.bench_function(name, |b| b.iter(|| black_box(scan::scan(scope, &redactor))));
    };
    run(&mut g, "changed=0", &scope);
    let one_thread = scan::ScanScope {
        limits: scan::ScanLimits {
            threads: 1,
            ..scan::ScanLimits::default()
        },
        ..scope.clone()
    };
    run(&mut g, "changed=0/threads=1", &one_thread);

    // The watched path (`scan::watch`): the watch built once (as the broker does after the
    // first run in a folder), then per run a ticket taken before it and the scan from it.
    let (cpu0, t0) = (cpu_ms(), std::time::Instant::now());
    let watch = std::sync::Arc::new(std::sync::Mutex::new(
        scan::watch::TreeWatch::new(&root, scan::watch::MAX_DIRS).unwrap(),
    ));
    eprintln!(
        "watch of {} folders built in {:?} (cpu_ms={:.0})",
        watch.lock().unwrap().dirs(),
        t0.elapsed(),
        cpu_ms() - cpu0
    );
    let watched = |g: &mut criterion::BenchmarkGroup<'_, _>,
                   name: &str,
                   ticket: Option<&scan::watch::Ticket>| {
        let one = || match ticket {
            Some(t) => scan::scan_watched(&scope, &redactor, Ok(t)),
            None => {
                // A run of its own: ticket, (nothing written), scan.
                let t = scan::watch::Ticket::begin(&watch).unwrap();
                scan::scan_watched(&scope, &redactor, Ok(&t))
            }
        };
        let (cpu0, t0) = (cpu_ms(), std::time::Instant::now());
        let (mut r, mut how) = one();
        for _ in 1..5 {
            (r, how) = one();
        }
        let (cpu, wall) = ((cpu_ms() - cpu0) / 5.0, t0.elapsed().as_secs_f64() * 200.0);
        assert_eq!(how, scan::Method::Watched);
        assert_eq!(
            r.leaks,
            scan::scan(&scope, &redactor).leaks,
            "not what the walk finds"
        );
        eprintln!(
            "{name}: files_scanned={} bytes_scanned={} leaks={} truncated={} wall_ms={wall:.2} cpu_ms={cpu:.2} (mean of 5)",
            r.files_scanned,
            r.bytes_scanned,
            r.leaks.len(),
            r.truncated,
        );
        g.bench_function(name, |b| b.iter(|| black_box(one())));
    };
    watched(&mut g, "watched/changed=0", None);
    let ticket = scan::watch::Ticket::begin(&watch).unwrap();
    change(&root, n, 0, n / 100, &secrets, &mut rng);
    run(&mut g, "changed=1000", &scope);
    watched(&mut g, "watched/changed=1000", Some(&ticket));
    drop(ticket);
    change(&root, n, n / 100, n / 10 - n / 100, &secrets, &mut rng);
    run(&mut g, "changed=10000", &scope);
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
