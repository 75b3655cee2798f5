//! The architecture test (issue 14, `docs/architecture.md`, "Layers"): reads the `keyveil` crate's
//! source with `syn`, builds the graph of which file refers to which, and checks three rules.
//!
//! - **No cycle between files.** File A refers to file B when a path in A (a `use`, or a path
//!   written inline such as `crate::broker::access::foo(..)` or `super::Thing`, also inside macro
//!   invocations) resolves to an item *defined* in B. Re-exports are followed to the defining file;
//!   a re-export (`pub use child::Item;`, `pub use child::*;`) is itself a reference of the
//!   re-exporting file to the child. Importing a module (`use crate::pin;`) is not a reference: the
//!   paths through it are. So a parent's `mod.rs` may use or re-export its children, but then no
//!   child may use an item defined in that `mod.rs`: the shared item goes into a sibling file.
//! - **No reach-up.** Each top-level module sits in a layer ([`LAYERS`]); a file refers only to
//!   modules of its own layer or of the layers below it. The exceptions left are listed in
//!   [`EXCEPTIONS`], and an exception that is no longer needed fails the test: the list only shrinks.
//! - **No `#[path]` includes**: every file is where its `mod` declaration says.
//!
//! It is a separate test binary from `tests/it` (which starts brokers): it needs no broker and
//! runs in a few seconds. `print_graph` (ignored) prints every reference it found.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use proc_macro2::{TokenStream, TokenTree};
use syn::visit::Visit;

/// The layers of `keyveil`'s top-level modules, lowest first. A file in a module of one layer may
/// refer to modules of its own layer and of the layers before it, never to a later layer.
const LAYERS: &[(&str, &[&str])] = &[
    (
        "leaves: no other keyveil module, or only these",
        &[
            "paths",
            "harden",
            "logging",
            "when",
            "factor",
            "factor_proof",
            "frame_writer",
            "gitconfig",
            "stdin_program",
            "subuid",
            "tcp_table",
            "redact",
            "notify",
            "output",
            "ci_sign",
        ],
    ),
    (
        "what a run is checked against: pins, loaders, risk, the reaper, scans",
        &[
            "pin",
            "manifest",
            "loaders",
            "risk",
            "reap",
            "scan",
            "sweep",
            "supervise",
        ],
    ),
    ("credential engines", &["dynamic"]),
    (
        "the broker's client side, and the card",
        &["client", "authorize", "card"],
    ),
    ("the broker", &["broker"]),
    (
        "clients of the broker",
        &["mcp", "setup", "sandbox", "demo", "cli"],
    ),
];

/// References from a file to a module of a later layer that are still there, as
/// (file under `src/`, the top-level module it reaches up to). Remove an entry when its reason goes.
const EXCEPTIONS: &[(&str, &str, &str)] = &[];

/// References that close a cycle still there, as (from, to) files under `src/`: the cycle check
/// leaves them out. Each is the reference that should go; an entry no longer needed fails the test.
const KNOWN_CYCLES: &[(&str, &str)] = &[];

/// A module of the crate: a file, or an inline `mod x { .. }` inside one.
struct Module {
    /// The file under `src/` that holds it.
    file: String,
    parent: Option<usize>,
    children: BTreeMap<String, usize>,
    /// Names of the items defined here (not modules).
    items: BTreeSet<String>,
    /// Names brought in by `use`: name → the path as written.
    uses: BTreeMap<String, Vec<String>>,
    /// Glob imports (`use path::*`), and whether each is `pub` (a re-export).
    globs: Vec<(Vec<String>, bool)>,
}

/// Where a path leads.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Target {
    Module(usize),
    /// An item defined in this module (or, for a name the table does not know, its module).
    Item(usize),
}

struct Crate {
    src: PathBuf,
    modules: Vec<Module>,
    /// Parsed files with the module each one is.
    files: Vec<(String, usize, syn::File)>,
    path_attrs: Vec<String>,
    /// `lookup` answers, and the lookups under way (globs can import each other).
    memo: RefCell<HashMap<(usize, String), Option<Target>>>,
}

fn src_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn has_path_attr(attrs: &[syn::Attribute]) -> bool {
    attrs.iter().any(|a| a.path().is_ident("path"))
}

impl Crate {
    fn load() -> Crate {
        let mut c = Crate {
            src: src_dir(),
            modules: Vec::new(),
            files: Vec::new(),
            path_attrs: Vec::new(),
            memo: RefCell::new(HashMap::new()),
        };
        c.load_file("lib.rs", None, None);
        c
    }

    fn new_module(&mut self, file: &str, parent: Option<usize>, name: Option<&str>) -> usize {
        let id = self.modules.len();
        self.modules.push(Module {
            file: file.to_string(),
            parent,
            children: BTreeMap::new(),
            items: BTreeSet::new(),
            uses: BTreeMap::new(),
            globs: Vec::new(),
        });
        if let (Some(p), Some(n)) = (parent, name) {
            self.modules[p].children.insert(n.to_string(), id);
        }
        id
    }

    /// Loads `rel` (a path under `src/`) as the module `name` of `parent`.
    fn load_file(&mut self, rel: &str, parent: Option<usize>, name: Option<&str>) {
        let text = std::fs::read_to_string(self.src.join(rel))
            .unwrap_or_else(|e| panic!("reading src/{rel}: {e}"));
        let file = syn::parse_file(&text).unwrap_or_else(|e| panic!("parsing src/{rel}: {e}"));
        let id = self.new_module(rel, parent, name);
        // The directory a `mod x;` declared in this file is looked for in.
        let dir = match Path::new(rel).file_name().and_then(|f| f.to_str()) {
            Some("mod.rs" | "lib.rs") => Path::new(rel).parent().unwrap().to_path_buf(),
            _ => Path::new(rel).with_extension(""),
        };
        self.register_items(rel, id, &dir, &file.items);
        self.files.push((rel.to_string(), id, file));
    }

    fn register_items(&mut self, rel: &str, id: usize, dir: &Path, items: &[syn::Item]) {
        for item in items {
            let name = match item {
                syn::Item::Const(i) => Some(&i.ident),
                syn::Item::Enum(i) => Some(&i.ident),
                syn::Item::Fn(i) => Some(&i.sig.ident),
                syn::Item::Static(i) => Some(&i.ident),
                syn::Item::Struct(i) => Some(&i.ident),
                syn::Item::Trait(i) => Some(&i.ident),
                syn::Item::TraitAlias(i) => Some(&i.ident),
                syn::Item::Type(i) => Some(&i.ident),
                syn::Item::Union(i) => Some(&i.ident),
                syn::Item::Macro(i) => i.ident.as_ref(),
                syn::Item::Use(u) => {
                    let public = !matches!(u.vis, syn::Visibility::Inherited);
                    register_use(&mut self.modules[id], &u.tree, &mut Vec::new(), public);
                    None
                }
                syn::Item::Mod(m) => {
                    let mname = m.ident.to_string();
                    if has_path_attr(&m.attrs) {
                        self.path_attrs.push(format!("src/{rel}: mod {mname}"));
                    }
                    match &m.content {
                        Some((_, inner)) => {
                            let child = self.new_module(rel, Some(id), Some(&mname));
                            self.register_items(rel, child, &dir.join(&mname), inner);
                        }
                        None => {
                            let flat = dir.join(format!("{mname}.rs"));
                            let nested = dir.join(&mname).join("mod.rs");
                            let child = if self.src.join(&flat).exists() {
                                flat
                            } else {
                                nested
                            };
                            let child = child.to_str().unwrap().to_string();
                            self.load_file(&child, Some(id), Some(&mname));
                        }
                    }
                    None
                }
                _ => None,
            };
            if let Some(n) = name {
                self.modules[id].items.insert(n.to_string());
            }
        }
    }

    /// What `name` means inside module `m`.
    fn lookup(&self, m: usize, name: &str, depth: usize) -> Option<Target> {
        let key = (m, name.to_string());
        if let Some(known) = self.memo.borrow().get(&key) {
            return *known;
        }
        if depth > 32 {
            return None;
        }
        // Under way: a glob that leads back here finds nothing new.
        self.memo.borrow_mut().insert(key.clone(), None);
        let found = self.lookup_uncached(m, name, depth);
        self.memo.borrow_mut().insert(key, found);
        found
    }

    fn lookup_uncached(&self, m: usize, name: &str, depth: usize) -> Option<Target> {
        let module = &self.modules[m];
        if let Some(&c) = module.children.get(name) {
            return Some(Target::Module(c));
        }
        if module.items.contains(name) {
            return Some(Target::Item(m));
        }
        if let Some(path) = module.uses.get(name) {
            return self.resolve(m, path, depth + 1);
        }
        for (glob, _) in &module.globs {
            if let Some(Target::Module(g)) = self.resolve(m, glob, depth + 1)
                && let Some(t) = self.lookup(g, name, depth + 1)
            {
                return Some(t);
            }
        }
        None
    }

    /// Resolves a path written in module `m`; `None` for a path outside the crate.
    fn resolve(&self, m: usize, segs: &[String], depth: usize) -> Option<Target> {
        if depth > 32 || segs.is_empty() {
            return None;
        }
        let (mut cur, rest) = match segs[0].as_str() {
            "crate" => (0, &segs[1..]),
            "self" => (m, &segs[1..]),
            "super" => {
                let mut cur = m;
                let mut i = 0;
                while segs.get(i).map(String::as_str) == Some("super") {
                    cur = self.modules[cur].parent?;
                    i += 1;
                }
                (cur, &segs[i..])
            }
            _ => (m, segs),
        };
        let mut first = !matches!(segs[0].as_str(), "crate" | "self" | "super");
        for seg in rest {
            match self.lookup(cur, seg, depth + 1) {
                Some(Target::Module(c)) => cur = c,
                Some(Target::Item(d)) => return Some(Target::Item(d)),
                // A name not in scope at the start of a path: another crate, a local variable.
                None if first => return None,
                // An item the table does not know (made by a macro, say): its module.
                None => return Some(Target::Item(cur)),
            }
            first = false;
        }
        Some(Target::Module(cur))
    }
}

fn register_use(module: &mut Module, tree: &syn::UseTree, prefix: &mut Vec<String>, public: bool) {
    match tree {
        syn::UseTree::Path(p) => {
            prefix.push(p.ident.to_string());
            register_use(module, &p.tree, prefix, public);
            prefix.pop();
        }
        syn::UseTree::Name(n) => {
            let name = n.ident.to_string();
            if name == "self" {
                if let Some(last) = prefix.last() {
                    module.uses.insert(last.clone(), prefix.clone());
                }
            } else {
                let mut path = prefix.clone();
                path.push(name.clone());
                module.uses.insert(name, path);
            }
        }
        syn::UseTree::Rename(r) => {
            let mut path = prefix.clone();
            if r.ident != "self" {
                path.push(r.ident.to_string());
            }
            module.uses.insert(r.rename.to_string(), path);
        }
        syn::UseTree::Glob(_) => module.globs.push((prefix.clone(), public)),
        syn::UseTree::Group(g) => {
            for t in &g.items {
                register_use(module, t, prefix, public);
            }
        }
    }
}

/// Every leaf path of a `use` tree (`self` leaves name their prefix), and whether it is a glob.
fn use_leaves(tree: &syn::UseTree, prefix: &mut Vec<String>, out: &mut Vec<(Vec<String>, bool)>) {
    match tree {
        syn::UseTree::Path(p) => {
            prefix.push(p.ident.to_string());
            use_leaves(&p.tree, prefix, out);
            prefix.pop();
        }
        syn::UseTree::Name(syn::UseName { ident })
        | syn::UseTree::Rename(syn::UseRename { ident, .. }) => {
            let mut path = prefix.clone();
            if ident != "self" {
                path.push(ident.to_string());
            }
            out.push((path, false));
        }
        syn::UseTree::Glob(_) => out.push((prefix.clone(), true)),
        syn::UseTree::Group(g) => {
            for t in &g.items {
                use_leaves(t, prefix, out);
            }
        }
    }
}

/// One reference: file → file, with the path that made it (the first one found).
type Edges = BTreeMap<String, BTreeMap<String, String>>;

struct Refs<'c> {
    krate: &'c Crate,
    /// Names bound by a pattern anywhere in the file (`let list = ..`, parameters): a path of one
    /// such name is taken for the local, not for an item a glob brings in.
    locals: BTreeSet<String>,
    file: String,
    ctx: usize,
    edges: &'c mut Edges,
}

impl Refs<'_> {
    fn add(&mut self, segs: &[String], target: Option<Target>) {
        let Some(Target::Item(d)) = target else {
            return;
        };
        let to = &self.krate.modules[d].file;
        if *to != self.file {
            self.edges
                .entry(self.file.clone())
                .or_default()
                .entry(to.clone())
                .or_insert_with(|| segs.join("::"));
        }
    }

    fn path(&mut self, segs: Vec<String>) {
        if let [one] = segs.as_slice()
            && self.locals.contains(one)
        {
            return;
        }
        let target = self.krate.resolve(self.ctx, &segs, 0);
        self.add(&segs, target);
    }

    /// Paths inside a macro's tokens (`json!`, `format!`, `tokio::select!`, ...), which syn does
    /// not parse: every run of `ident (:: ident)*`.
    fn tokens(&mut self, tokens: TokenStream) {
        let mut run: Vec<String> = Vec::new();
        let mut colons = 0;
        for tt in tokens {
            match tt {
                TokenTree::Ident(i) => {
                    if colons != 2 {
                        self.flush(&mut run);
                    }
                    run.push(i.to_string());
                    colons = 0;
                }
                TokenTree::Punct(p) if p.as_char() == ':' && !run.is_empty() => colons += 1,
                other => {
                    self.flush(&mut run);
                    colons = 0;
                    if let TokenTree::Group(g) = other {
                        self.tokens(g.stream());
                    }
                }
            }
        }
        self.flush(&mut run);
    }

    fn flush(&mut self, run: &mut Vec<String>) {
        if !run.is_empty() {
            self.path(std::mem::take(run));
        }
    }
}

impl<'ast> Visit<'ast> for Refs<'_> {
    fn visit_item_mod(&mut self, m: &'ast syn::ItemMod) {
        // An inline module is visited with its own scope; a file module with its file.
        if let Some((_, items)) = &m.content {
            let outer = self.ctx;
            if let Some(&c) = self.krate.modules[outer].children.get(&m.ident.to_string()) {
                self.ctx = c;
            }
            for item in items {
                self.visit_item(item);
            }
            self.ctx = outer;
        }
    }

    fn visit_item_use(&mut self, u: &'ast syn::ItemUse) {
        let public = !matches!(u.vis, syn::Visibility::Inherited);
        let mut leaves = Vec::new();
        use_leaves(&u.tree, &mut Vec::new(), &mut leaves);
        for (segs, glob) in leaves {
            let target = self.krate.resolve(self.ctx, &segs, 0);
            match target {
                // A glob re-export refers to the module's file; a private glob is counted at
                // each name it brings in.
                Some(Target::Module(g)) if glob && public => self.add(&segs, Some(Target::Item(g))),
                _ => self.add(&segs, target),
            }
        }
    }

    fn visit_path(&mut self, p: &'ast syn::Path) {
        let segs: Vec<String> = p.segments.iter().map(|s| s.ident.to_string()).collect();
        self.path(segs);
        syn::visit::visit_path(self, p);
    }

    fn visit_visibility(&mut self, _: &'ast syn::Visibility) {}

    fn visit_macro(&mut self, m: &'ast syn::Macro) {
        self.visit_path(&m.path);
        self.tokens(m.tokens.clone());
    }
}

/// The names patterns bind in a file.
struct Locals(BTreeSet<String>);

impl<'ast> Visit<'ast> for Locals {
    fn visit_pat_ident(&mut self, p: &'ast syn::PatIdent) {
        self.0.insert(p.ident.to_string());
        syn::visit::visit_pat_ident(self, p);
    }
}

fn edges(krate: &Crate) -> Edges {
    let mut edges = Edges::new();
    for (file, id, ast) in &krate.files {
        let mut locals = Locals(BTreeSet::new());
        locals.visit_file(ast);
        let mut refs = Refs {
            krate,
            locals: locals.0,
            file: file.clone(),
            ctx: *id,
            edges: &mut edges,
        };
        refs.visit_file(ast);
    }
    edges
}

/// The top-level module of a file under `src/`: `broker/access/mod.rs` → `broker`.
fn top(file: &str) -> &str {
    let first = file.split('/').next().unwrap();
    first.strip_suffix(".rs").unwrap_or(first)
}

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|(_, mods)| mods.contains(&module))
}

/// Whether `file` is the file of an ancestor module of `other`'s module: `pin/mod.rs` or
/// `setup.rs` of everything under `pin/` or `setup/`, `lib.rs` of every file.
fn is_ancestor(file: &str, other: &str) -> bool {
    let dir = match file.strip_suffix("mod.rs") {
        Some(d) => d.to_string(),
        None if file == "lib.rs" => String::new(),
        None => format!("{}/", file.strip_suffix(".rs").unwrap()),
    };
    other.starts_with(&dir) && other != file
}

/// The references the cycle rule counts: all but those between a file and its descendants'.
fn counted(edges: &Edges) -> Edges {
    let mut out = Edges::new();
    for (from, tos) in edges {
        for (to, example) in tos {
            if !is_ancestor(from, to) && !is_ancestor(to, from) {
                out.entry(from.clone())
                    .or_default()
                    .insert(to.clone(), example.clone());
            }
        }
    }
    out
}

/// The cycles between files: one shortest cycle per strongly connected group of files.
fn cycles(edges: &Edges) -> Vec<Vec<String>> {
    let nodes: BTreeSet<&String> = edges
        .iter()
        .flat_map(|(f, tos)| std::iter::once(f).chain(tos.keys()))
        .collect();
    let mut seen: BTreeSet<String> = BTreeSet::new();
    let mut out = Vec::new();
    for start in nodes {
        if seen.contains(start) {
            continue;
        }
        // Shortest path from start's successors back to start (breadth first).
        let mut prev: BTreeMap<String, String> = BTreeMap::new();
        let mut queue: VecDeque<String> = VecDeque::new();
        queue.push_back(start.clone());
        let mut found = false;
        while let Some(n) = queue.pop_front() {
            for next in edges.get(&n).into_iter().flat_map(|t| t.keys()) {
                if next == start {
                    prev.insert(start.clone(), n.clone());
                    found = true;
                    break;
                }
                if !prev.contains_key(next) {
                    prev.insert(next.clone(), n.clone());
                    queue.push_back(next.clone());
                }
            }
            if found {
                break;
            }
        }
        if found {
            let mut cycle = vec![start.clone()];
            let mut n = prev[start].clone();
            while n != *start {
                cycle.push(n.clone());
                n = prev[&n].clone();
            }
            cycle.reverse();
            seen.extend(cycle.iter().cloned());
            out.push(cycle);
        }
    }
    out
}

#[test]
fn every_source_file_is_a_module_and_none_is_included_by_path() {
    let krate = Crate::load();
    assert!(
        krate.path_attrs.is_empty(),
        "#[path] includes: {:?}",
        krate.path_attrs
    );
    let loaded: BTreeSet<&str> = krate.files.iter().map(|(f, _, _)| f.as_str()).collect();
    let mut missing = Vec::new();
    let mut stack = vec![krate.src.clone()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let rel = path
                    .strip_prefix(&krate.src)
                    .unwrap()
                    .to_str()
                    .unwrap()
                    .to_string();
                if rel != "main.rs" && !loaded.contains(rel.as_str()) {
                    missing.push(rel);
                }
            }
        }
    }
    assert!(missing.is_empty(), "files no `mod` declares: {missing:?}");
    // The resolver sees the references it should (a guard against a test that checks nothing).
    let edges = edges(&krate);
    let from_wait = edges
        .get("broker/runner/wait.rs")
        .cloned()
        .unwrap_or_default();
    assert!(
        from_wait.contains_key("broker/access/pins.rs"),
        "the resolver lost a re-exported path: {from_wait:?}"
    );
    for (_, mods) in LAYERS {
        for m in *mods {
            assert!(
                krate.modules[0].children.contains_key(*m),
                "LAYERS names `{m}`, which lib.rs does not declare"
            );
        }
    }
    for m in krate.modules[0].children.keys() {
        assert!(layer_of(m).is_some(), "`{m}` is in no layer of LAYERS");
    }
}

#[test]
fn no_import_cycles_between_files() {
    let krate = Crate::load();
    let mut edges = counted(&edges(&krate));
    let mut stale = Vec::new();
    for (from, to) in KNOWN_CYCLES {
        let removed = edges.get_mut(*from).and_then(|tos| tos.remove(*to));
        if removed.is_none() {
            stale.push(format!("{from} -> {to}"));
        }
    }
    assert!(
        stale.is_empty(),
        "KNOWN_CYCLES lists references that are gone (remove them): {stale:?}"
    );
    let found = cycles(&edges);
    let mut msg = String::new();
    for cycle in &found {
        msg.push_str("cycle:\n");
        for (i, from) in cycle.iter().enumerate() {
            let to = &cycle[(i + 1) % cycle.len()];
            let _ = writeln!(msg, "  src/{from} -> src/{to}  (`{}`)", edges[from][to]);
        }
    }
    assert!(
        found.is_empty(),
        "{} import cycle(s) between files:\n{msg}",
        found.len()
    );
}

#[test]
fn no_module_reaches_up_a_layer() {
    let krate = Crate::load();
    let edges = edges(&krate);
    let mut bad = Vec::new();
    let mut used: BTreeSet<(String, String)> = BTreeSet::new();
    for (from, tos) in &edges {
        if from == "lib.rs" {
            continue;
        }
        let from_layer = layer_of(top(from));
        for (to, example) in tos {
            let to_top = top(to);
            if from_layer >= layer_of(to_top) {
                continue;
            }
            if EXCEPTIONS.iter().any(|(f, t, _)| f == from && *t == to_top) {
                used.insert((from.clone(), to_top.to_string()));
                continue;
            }
            bad.push(format!(
                "  src/{from} ({}) -> src/{to} ({})  (`{example}`)",
                LAYERS[from_layer.unwrap()].0,
                LAYERS[layer_of(to_top).unwrap()].0
            ));
        }
    }
    assert!(bad.is_empty(), "references up a layer:\n{}", bad.join("\n"));
    let stale: Vec<_> = EXCEPTIONS
        .iter()
        .filter(|(f, t, _)| !used.contains(&(f.to_string(), t.to_string())))
        .collect();
    assert!(
        stale.is_empty(),
        "exceptions no longer needed (remove them): {stale:?}"
    );
}

/// Prints the file graph: `cargo test --test layers -- --ignored --nocapture print_graph`.
#[test]
#[ignore = "a tool, not a check"]
fn print_graph() {
    let krate = Crate::load();
    let mut out = String::new();
    for (from, tos) in edges(&krate) {
        for (to, example) in tos {
            let _ = writeln!(out, "{from} -> {to}  {example}");
        }
    }
    std::io::Write::write_all(&mut std::io::stdout(), out.as_bytes()).unwrap();
}

/// Structs and enums defined in `items` (nested inline modules too), and the inherent impl
/// blocks there: the self type's last path segment.
fn types_and_impls(items: &[syn::Item], types: &mut Vec<String>, impls: &mut Vec<String>) {
    for item in items {
        match item {
            syn::Item::Struct(s) => types.push(s.ident.to_string()),
            syn::Item::Enum(e) => types.push(e.ident.to_string()),
            syn::Item::Impl(i) if i.trait_.is_none() => {
                if let syn::Type::Path(p) = &*i.self_ty
                    && let Some(last) = p.path.segments.last()
                {
                    impls.push(last.ident.to_string());
                }
            }
            syn::Item::Mod(m) => {
                if let Some((_, inner)) = &m.content {
                    types_and_impls(inner, types, impls);
                }
            }
            _ => {}
        }
    }
}

/// A type's own methods live in the file that defines it (or its submodules): a method added
/// to a type from another file is called through the type, a reference the resolver cannot
/// see, so it would hide a cycle (`state/inner.rs` calling methods a broker-level file added
/// to `Inner` was one). Names defined in more than one file are not checked.
#[test]
fn a_types_methods_live_where_it_is_defined() {
    let krate = Crate::load();
    let mut defined: HashMap<String, Vec<String>> = HashMap::new();
    let mut impls: Vec<(String, String)> = Vec::new();
    for (file, _, ast) in &krate.files {
        let (mut t, mut i) = (Vec::new(), Vec::new());
        types_and_impls(&ast.items, &mut t, &mut i);
        for name in t {
            defined.entry(name).or_default().push(file.clone());
        }
        impls.extend(i.into_iter().map(|name| (file.clone(), name)));
    }
    let mut checked = 0;
    let mut away = Vec::new();
    for (file, name) in &impls {
        let Some([home]) = defined.get(name).map(Vec::as_slice) else {
            continue;
        };
        checked += 1;
        if home != file && !is_ancestor(home, file) {
            away.push(format!("{file}: impl {name} (defined in {home})"));
        }
    }
    assert!(checked > 50, "the check saw only {checked} impl blocks");
    assert!(
        away.is_empty(),
        "methods added away from their type: {away:#?}"
    );
}
