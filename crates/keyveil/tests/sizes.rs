//! The size test (issue 14, `docs/architecture.md`, "Sizes"): no source file of the `keyveil`
//! crate is longer than [`FILE_LINES`] lines and no function of the broker longer than
//! [`BROKER_FN_LINES`], unless it is listed with its reason (a table is one kind of thing and may
//! be long). A listed entry that no longer needs to be there fails the test: the lists only shrink.
//!
//! Function length is counted from the `fn` keyword to the closing brace (doc comments and
//! attributes not counted), with `syn` and `proc-macro2`'s span locations. Functions of test
//! modules (`#[cfg(test)]`, `tests.rs`, `tests_*.rs`) are not counted; their files are.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::path::{Path, PathBuf};

use syn::visit::Visit;

/// The longest a source file may be, in lines.
const FILE_LINES: usize = 800;

/// The longest a function under `src/broker/` may be, in lines.
const BROKER_FN_LINES: usize = 120;

/// Files allowed past [`FILE_LINES`], as (file under `src/`, why).
const LONG_FILES: &[(&str, &str)] = &[];

/// Broker functions allowed past [`BROKER_FN_LINES`], as (file under `src/`, function, why).
const LONG_BROKER_FNS: &[(&str, &str, &str)] = &[];

fn src_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Every `.rs` file under `dir`, as paths relative to `src/`, sorted.
fn rust_files(src: &Path, dir: &Path, out: &mut Vec<String>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            rust_files(src, &path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let rel = path.strip_prefix(src).unwrap();
            out.push(rel.to_str().unwrap().to_string());
        }
    }
}

fn is_test_file(rel: &str) -> bool {
    let name = Path::new(rel).file_stem().and_then(|s| s.to_str()).unwrap();
    name == "tests" || name.starts_with("tests_")
}

fn is_cfg_test(attrs: &[syn::Attribute]) -> bool {
    attrs.iter().any(|a| {
        a.path().is_ident("cfg")
            && a.parse_args::<syn::Meta>()
                .is_ok_and(|m| m.path().is_ident("test"))
    })
}

/// Collects (name, lines) of every function outside test modules.
#[derive(Default)]
struct Fns {
    found: Vec<(String, usize)>,
}

impl Fns {
    fn record(&mut self, sig: &syn::Signature, block: &syn::Block) {
        let start = sig.fn_token.span.start().line;
        let end = block.brace_token.span.close().end().line;
        self.found.push((sig.ident.to_string(), end + 1 - start));
    }
}

impl<'ast> Visit<'ast> for Fns {
    fn visit_item_mod(&mut self, m: &'ast syn::ItemMod) {
        if !is_cfg_test(&m.attrs) {
            syn::visit::visit_item_mod(self, m);
        }
    }
    fn visit_item_fn(&mut self, f: &'ast syn::ItemFn) {
        if !is_cfg_test(&f.attrs) {
            self.record(&f.sig, &f.block);
            syn::visit::visit_item_fn(self, f);
        }
    }
    fn visit_impl_item_fn(&mut self, f: &'ast syn::ImplItemFn) {
        if !is_cfg_test(&f.attrs) {
            self.record(&f.sig, &f.block);
            syn::visit::visit_impl_item_fn(self, f);
        }
    }
    fn visit_trait_item_fn(&mut self, f: &'ast syn::TraitItemFn) {
        if let Some(block) = &f.default {
            self.record(&f.sig, block);
        }
        syn::visit::visit_trait_item_fn(self, f);
    }
}

#[test]
fn no_source_file_is_longer_than_the_limit() {
    let src = src_dir();
    let mut files = Vec::new();
    rust_files(&src, &src, &mut files);
    assert!(files.len() > 100, "found only {} files", files.len());
    let mut long = Vec::new();
    for rel in &files {
        let lines = std::fs::read_to_string(src.join(rel))
            .unwrap()
            .lines()
            .count();
        let listed = LONG_FILES.iter().any(|(f, _)| f == rel);
        if lines > FILE_LINES && !listed {
            long.push(format!("src/{rel}: {lines} lines"));
        }
    }
    assert!(
        long.is_empty(),
        "files over {FILE_LINES} lines (split them by what they hold, or list a table in LONG_FILES \
         with its reason):\n{}",
        long.join("\n")
    );
    let stale: Vec<_> = LONG_FILES
        .iter()
        .filter(|(f, _)| {
            std::fs::read_to_string(src.join(f))
                .map(|t| t.lines().count() <= FILE_LINES)
                .unwrap_or(true)
        })
        .collect();
    assert!(
        stale.is_empty(),
        "LONG_FILES lists files that are short now (remove them): {stale:?}"
    );
}

#[test]
fn no_broker_function_is_longer_than_the_limit() {
    let src = src_dir();
    let mut files = Vec::new();
    rust_files(&src, &src.join("broker"), &mut files);
    let mut long = Vec::new();
    let mut seen = Vec::new();
    let mut counted = 0;
    for rel in files.iter().filter(|f| !is_test_file(f)) {
        let text = std::fs::read_to_string(src.join(rel)).unwrap();
        let file = syn::parse_file(&text).unwrap_or_else(|e| panic!("parsing src/{rel}: {e}"));
        let mut fns = Fns::default();
        fns.visit_file(&file);
        counted += fns.found.len();
        for (name, lines) in fns.found {
            if lines <= BROKER_FN_LINES {
                continue;
            }
            if LONG_BROKER_FNS
                .iter()
                .any(|(f, n, _)| f == rel && *n == name)
            {
                seen.push((rel.clone(), name));
            } else {
                long.push(format!("src/{rel}: fn {name}: {lines} lines"));
            }
        }
    }
    // The counter works: the broker has hundreds of functions, and lines are real line numbers.
    assert!(counted > 300, "counted only {counted} broker functions");
    assert!(
        long.is_empty(),
        "broker functions over {BROKER_FN_LINES} lines (split them into steps that return values, \
         or list a table in LONG_BROKER_FNS with its reason):\n{}",
        long.join("\n")
    );
    let stale: Vec<_> = LONG_BROKER_FNS
        .iter()
        .filter(|(f, n, _)| !seen.iter().any(|(sf, sn)| sf == f && sn == n))
        .collect();
    assert!(
        stale.is_empty(),
        "LONG_BROKER_FNS lists functions that are short now (remove them): {stale:?}"
    );
}

/// The counter measures what it says: a function of known length in this very file.
#[test]
fn the_counter_counts_lines_from_fn_to_the_closing_brace() {
    let text = "fn a() {\n    let x = 1;\n    let _ = x;\n}\n\nmod m {\n    fn b() {}\n}\n\
                #[cfg(test)]\nmod tests {\n    fn c() {\n\n    }\n}\n";
    let file = syn::parse_file(text).unwrap();
    let mut fns = Fns::default();
    fns.visit_file(&file);
    assert_eq!(fns.found, vec![("a".to_string(), 4), ("b".to_string(), 1)]);
}
