//! Placing the objects a sweep found in a repository's history: one walk of every commit
//! reachable from a ref, `HEAD` or any reflog entry (the stash is `refs/stash` and its reflog)
//! gives, for each found blob or tree, a path and the commits (newest first) that add or remove
//! it. Each tree is read once; a found object's path is shared between levels ([`Node`]), and
//! the work of comparing commits is bounded ([`MAX_COMPARED`]), so a planted history cannot make
//! a hit cost much more than a miss.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::rc::Rc;
use std::time::Instant;

use gix_hash::ObjectId;

use super::git_check::{MAX_CHECKED, read_reflog};

/// Commits listed per found object.
const MAX_COMMITS: usize = 5;
/// Deepest tree nesting followed while placing objects.
const MAX_TREE_DEPTH: usize = 256;
/// Most places kept per tree for the found objects below it.
const MAX_PLACES: usize = 64;
/// Most work (place comparisons, all commits and parents together) spent listing the commits
/// that add or remove found objects: a planted history of many commits with many parents,
/// each side holding the found blob at many paths, would otherwise make a hit take hours
/// longer than a miss (which compares nothing), and the audit shows a sweep's time.
const MAX_COMPARED: u64 = 1_000_000;
/// Longest path reported for a found object, in bytes: a planted tree may nest long names
/// deep, and a longer path is cut (ending `...`).
pub(crate) const MAX_PATH: usize = 4096;
/// Objects read by the history walk between two calls of its `tick` (the reader then sends a
/// tick to the matcher).
pub(super) const TICK: u64 = 1024;

/// For each found blob or tree: a path, and the commits (newest first) that add or remove it.
#[derive(Default)]
pub(super) struct Placement {
    pub(super) paths: HashMap<ObjectId, String>,
    pub(super) commits: HashMap<ObjectId, Vec<ObjectId>>,
    /// The walk stopped at the deadline.
    pub(super) cut: bool,
    /// Refs, reflogs or objects of the history that could not be read.
    pub(super) unread: u64,
    /// The work of listing commits reached [`MAX_COMPARED`]: some commits are not listed.
    pub(super) unlisted: bool,
}

/// A commit of the history walk.
struct Commit {
    tree: ObjectId,
    parents: Vec<ObjectId>,
    seconds: i64,
}

/// Where the `wanted` objects are: every commit reachable from a ref, `HEAD` or a reflog
/// entry is read, and the found objects in its tree compared with those in each parent's.
pub(super) fn place(
    dir: &Path,
    common: &Path,
    db: &gix_odb::Handle,
    wanted: &HashSet<ObjectId>,
    deadline: Instant,
    tick: &dyn Fn(),
) -> Placement {
    let mut out = Placement::default();
    let mut tips = ref_tips(dir, common, &mut out);
    tips.extend(reflog_tips(dir, common, &mut out));
    let Some(History { commits, roots }) = history(db, tips, deadline, tick, &mut out) else {
        out.cut = true;
        return out;
    };
    let mut walk = TreeWalk {
        db,
        wanted,
        memo: HashMap::new(),
        buf: Vec::new(),
        unread: 0,
        tick,
        hasher: std::collections::hash_map::RandomState::new(),
    };
    list_commits(&commits, &mut walk, deadline, &mut out);
    for t in roots {
        for (o, p) in walk.places(t, 0).iter() {
            out.paths.entry(*o).or_insert_with(|| p.render());
        }
    }
    out.unread += walk.unread;
    out
}

/// The objects refs name, loose and packed, and the pseudo refs (`HEAD`, ...), of the
/// worktree `dir` and its `common` directory; each ref not read counts in `out.unread`.
fn ref_tips(dir: &Path, common: &Path, out: &mut Placement) -> Vec<ObjectId> {
    let mut tips = Vec::new();
    let store = if common == dir {
        gix_ref::file::Store::at(dir.to_path_buf(), Default::default())
    } else {
        gix_ref::file::Store::for_linked_worktree(
            dir.to_path_buf(),
            common.to_path_buf(),
            gix_hash::Kind::Sha1,
        )
    };
    let Ok(platform) = store.iter() else {
        out.unread += 1;
        return tips;
    };
    for refs in [platform.all(), platform.pseudo()] {
        let Ok(refs) = refs else {
            out.unread += 1;
            continue;
        };
        for r in refs {
            match r {
                Ok(r) => {
                    if let gix_ref::Target::Object(oid) = r.target {
                        tips.push(oid);
                    }
                }
                Err(_) => out.unread += 1,
            }
        }
    }
    tips
}

/// Both sides of each entry of every reflog (the stash's included) of `dir` and `common`, at
/// most [`MAX_CHECKED`] directory entries looked at; each log or line not read counts in
/// `out.unread`.
fn reflog_tips(dir: &Path, common: &Path, out: &mut Placement) -> Vec<ObjectId> {
    let mut tips = Vec::new();
    let mut logs = vec![dir.join("logs")];
    if common != dir {
        logs.push(common.join("logs"));
    }
    let mut checked = 0u64;
    while let Some(d) = logs.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            checked += 1;
            if checked > MAX_CHECKED {
                out.unread += 1;
                logs.clear();
                break;
            }
            let Ok(t) = e.file_type() else { continue };
            if t.is_dir() {
                logs.push(e.path());
                continue;
            }
            let Ok(bytes) = read_reflog(&e.path()) else {
                out.unread += 1;
                continue;
            };
            for line in gix_ref::file::log::iter::forward(&bytes) {
                match line {
                    Ok(l) => {
                        tips.push(l.previous_oid());
                        tips.push(l.new_oid());
                    }
                    Err(_) => out.unread += 1,
                }
            }
        }
    }
    tips
}

/// The history reachable from the tips.
struct History {
    /// Every commit, by id.
    commits: HashMap<ObjectId, Commit>,
    /// Trees named by a tip (directly or through a tag).
    roots: Vec<ObjectId>,
}

/// Reads the commits reachable from `tips` (tags peeled); `None` when `deadline` passed first.
/// Each object not read counts in `out.unread`.
fn history(
    db: &gix_odb::Handle,
    mut tips: Vec<ObjectId>,
    deadline: Instant,
    tick: &dyn Fn(),
    out: &mut Placement,
) -> Option<History> {
    use gix_object::Find as _;
    let mut h = History {
        commits: HashMap::new(),
        roots: Vec::new(),
    };
    let mut seen = HashSet::new();
    let mut buf = zeroize::Zeroizing::new(Vec::new());
    let mut n = 0u64;
    while let Some(oid) = tips.pop() {
        if oid.is_null() || !seen.insert(oid) {
            continue;
        }
        n += 1;
        if n.is_multiple_of(TICK) {
            tick();
            if Instant::now() >= deadline {
                return None;
            }
        }
        let data = match db.try_find(&oid, &mut buf) {
            Ok(Some(d)) => d,
            Ok(None) => continue,
            Err(_) => {
                out.unread += 1;
                continue;
            }
        };
        match data.kind {
            gix_object::Kind::Tag => {
                match gix_object::TagRefIter::from_bytes(data.data, gix_hash::Kind::Sha1)
                    .target_id()
                {
                    Ok(t) => tips.push(t),
                    Err(_) => out.unread += 1,
                }
            }
            gix_object::Kind::Commit => {
                let Ok(c) = gix_object::CommitRef::from_bytes(data.data, gix_hash::Kind::Sha1)
                else {
                    out.unread += 1;
                    continue;
                };
                let parents: Vec<ObjectId> = c.parents().collect();
                tips.extend(parents.iter().copied());
                h.commits.insert(
                    oid,
                    Commit {
                        tree: c.tree(),
                        parents,
                        seconds: c.time().map_or(0, |t| t.seconds),
                    },
                );
            }
            gix_object::Kind::Tree => h.roots.push(oid),
            gix_object::Kind::Blob => {}
        }
    }
    Some(h)
}

/// Fills `out` with a path of each found object and the commits (newest first, at most
/// [`MAX_COMMITS`]) whose tree differs from a parent's in it, at most [`MAX_COMPARED`] work
/// spent; stops (`out.cut`) at `deadline`.
fn list_commits(
    commits: &HashMap<ObjectId, Commit>,
    walk: &mut TreeWalk<'_>,
    deadline: Instant,
    out: &mut Placement,
) {
    // Newest first.
    let mut order: Vec<(&ObjectId, &Commit)> = commits.iter().collect();
    order.sort_by(|a, b| b.1.seconds.cmp(&a.1.seconds).then(a.0.cmp(b.0)));
    let empty: Places = Rc::new(Vec::new());
    // Commit and parent pairs compared, and the work spent comparing found objects' places.
    let (mut pairs, mut compared) = (0u64, 0u64);
    'commits: for (i, (oid, c)) in order.iter().enumerate() {
        if i % 256 == 0 {
            (walk.tick)();
            if Instant::now() >= deadline {
                out.cut = true;
                break;
            }
        }
        let mine = walk.places(c.tree, 0);
        for (o, p) in mine.iter() {
            out.paths.entry(*o).or_insert_with(|| p.render());
        }
        // What differs from each parent (from nothing for a root commit).
        let sides: Vec<Option<ObjectId>> = if c.parents.is_empty() {
            vec![None]
        } else {
            c.parents
                .iter()
                .map(|p| commits.get(p).map(|pc| pc.tree))
                .collect()
        };
        for side in sides {
            pairs += 1;
            if pairs.is_multiple_of(TICK) {
                (walk.tick)();
                if Instant::now() >= deadline {
                    out.cut = true;
                    break 'commits;
                }
            }
            let theirs = side.map_or_else(|| Rc::clone(&empty), |t| walk.places(t, 0));
            if mine.is_empty() && theirs.is_empty() {
                continue;
            }
            // Only found objects cost anything here: bounded, so a planted history cannot make
            // a hit take much longer than a miss.
            let cost = (mine.len() * theirs.len() + mine.len() + theirs.len()) as u64;
            if compared + cost > MAX_COMPARED {
                out.unlisted = true;
                continue;
            }
            compared += cost;
            for o in changed(&mine, &theirs) {
                let list = out.commits.entry(o).or_default();
                if list.len() < MAX_COMMITS && !list.contains(oid) {
                    list.push(**oid);
                }
            }
        }
    }
}

/// A found object's path below a tree: its first name, then the path below that name (shared
/// with the subtree's own places). A deep tree of long names costs one small node per level
/// and found object, never a copy of the path at each level: a planted tree of 256 levels of
/// 64 names of 4 KiB each would otherwise build gigabytes of paths, and only when the object
/// below held a value.
struct Node {
    name: Rc<str>,
    rest: Option<Rc<Node>>,
    /// A keyed hash of the whole path: two places are the same when object and key are.
    key: u64,
}

impl Node {
    /// The path, `/`-separated, cut at [`MAX_PATH`] bytes (then ending `...`).
    fn render(&self) -> String {
        let mut out = String::new();
        let mut node = Some(self);
        while let Some(n) = node {
            if !out.is_empty() {
                out.push('/');
            }
            out.push_str(&n.name);
            if out.len() > MAX_PATH {
                let mut cut = MAX_PATH;
                while !out.is_char_boundary(cut) {
                    cut -= 1;
                }
                out.truncate(cut);
                out.push_str("...");
                break;
            }
            node = n.rest.as_deref();
        }
        out
    }
}

/// The found objects below a tree, each with its path in it.
type Places = Rc<Vec<(ObjectId, Rc<Node>)>>;

/// The objects one side has at a path and the other has not there, both ways.
fn changed(a: &Places, b: &Places) -> Vec<ObjectId> {
    if Rc::ptr_eq(a, b) {
        return Vec::new();
    }
    let has = |side: &Places, (o, n): &(ObjectId, Rc<Node>)| {
        side.iter().any(|(p, m)| p == o && m.key == n.key)
    };
    let mut out: Vec<ObjectId> = a.iter().filter(|x| !has(b, x)).map(|x| x.0).collect();
    out.extend(b.iter().filter(|x| !has(a, x)).map(|x| x.0));
    out
}

/// Finds the wanted objects below trees, each tree read once.
struct TreeWalk<'a> {
    db: &'a gix_odb::Handle,
    wanted: &'a HashSet<ObjectId>,
    memo: HashMap<ObjectId, Places>,
    buf: Vec<u8>,
    unread: u64,
    /// Called every [`TICK`] trees read.
    tick: &'a dyn Fn(),
    /// Keys the path hashes (a planted name cannot be chosen to collide).
    hasher: std::collections::hash_map::RandomState,
}

impl TreeWalk<'_> {
    /// The wanted objects below `tree` (at most [`MAX_PLACES`]), with their paths.
    fn places(&mut self, tree: ObjectId, depth: usize) -> Places {
        use gix_object::Find as _;
        if let Some(p) = self.memo.get(&tree) {
            return Rc::clone(p);
        }
        if (self.memo.len() as u64).is_multiple_of(TICK) {
            (self.tick)();
        }
        use std::hash::BuildHasher as _;
        let mut here: Vec<(ObjectId, Rc<str>, bool)> = Vec::new();
        match self.db.try_find(&tree, &mut self.buf) {
            Ok(Some(d)) if d.kind == gix_object::Kind::Tree => {
                for e in gix_object::TreeRefIter::from_bytes(d.data, gix_hash::Kind::Sha1) {
                    let Ok(e) = e else {
                        self.unread += 1;
                        break;
                    };
                    let name: Rc<str> = String::from_utf8_lossy(e.filename).into();
                    here.push((e.oid.to_owned(), name, e.mode.is_tree()));
                }
            }
            Ok(_) => {}
            Err(_) => self.unread += 1,
        }
        let mut out = Vec::new();
        for (oid, name, is_tree) in here {
            if self.wanted.contains(&oid) && out.len() < MAX_PLACES {
                let key = self.hasher.hash_one((&*name, None::<u64>));
                let node = Node {
                    name: Rc::clone(&name),
                    rest: None,
                    key,
                };
                out.push((oid, Rc::new(node)));
            }
            if is_tree && depth < MAX_TREE_DEPTH {
                for (o, p) in self.places(oid, depth + 1).iter() {
                    if out.len() >= MAX_PLACES {
                        break;
                    }
                    let key = self.hasher.hash_one((&*name, Some(p.key)));
                    let node = Node {
                        name: Rc::clone(&name),
                        rest: Some(Rc::clone(p)),
                        key,
                    };
                    out.push((*o, Rc::new(node)));
                }
            }
        }
        let out = Rc::new(out);
        self.memo.insert(tree, Rc::clone(&out));
        out
    }
}
