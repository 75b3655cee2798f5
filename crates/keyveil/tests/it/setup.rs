//! `keyveil setup` and `doctor` on configs that already hold other servers, comments and odd
//! formatting (HOME is a temp dir); a host's stripped environment finding the broker;
//! background runs (`start`, `logs`, `stop`, killed by revocation); the one-variable value page
//! (`keyveil set ENV VAR --web`).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::harness::*;

/// `keyveil` with HOME at the home, no KEYVEIL_HOME (as a user with the default data
/// directory), in `cwd`.
fn setup_cmd(h: &Home, cwd: &Path, args: &[&str]) -> Output {
    let mut c = h.cmd(args);
    c.env_remove("KEYVEIL_HOME").current_dir(cwd);
    c.output().unwrap()
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap()
}

fn backups(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".keyveil-backup-"))
        .collect();
    v.sort();
    v
}

#[test]
fn setup_codex_keeps_comments_other_servers_and_odd_formatting() {
    let h = Home::empty();
    let dir = h.path().join(".codex");
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("config.toml");
    let old = "# Codex config, hand-written\nmodel   =   \"o3\"    # pinned\napproval_policy = 'on-request'\n\n[mcp_servers.github]\ncommand = \"gh-mcp\"   # keep this comment\nargs = [ \"--stdio\" ,\"--x\" ]\nenv = { TOKEN_FILE = \"~/.gh\" }\n\n[profiles.fast]\nmodel = \"o4-mini\"\n";
    std::fs::write(&file, old).unwrap();

    let o = setup_cmd(&h, h.path(), &["setup", "codex"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let out = text(&o.stdout);
    assert!(out.contains("added [mcp_servers.keyveil]"), "{out}");
    assert!(out.contains("backup:"), "{out}");
    let new = read(&file);
    // Every original byte is still there, in order; the entry joins the other servers.
    let exe = std::fs::canonicalize(bin()).unwrap();
    let entry = format!(
        "[mcp_servers.keyveil]\ncommand = \"{}\"\nargs = [\"mcp\"]\ntool_timeout_sec = 180\ndefault_tools_approval_mode = \"approve\"\n\n",
        exe.display()
    );
    let at = old.find("[profiles.fast]").unwrap();
    assert_eq!(new, format!("{}{entry}{}", &old[..at], &old[at..]));
    let b = backups(&dir);
    assert_eq!(b.len(), 1, "{b:?}");
    assert_eq!(read(&dir.join(&b[0])), old);

    // Idempotent: nothing changes, no new backup.
    let o = setup_cmd(&h, h.path(), &["setup", "codex"]);
    assert!(o.status.success());
    assert!(
        text(&o.stdout).contains("already set up"),
        "{}",
        text(&o.stdout)
    );
    assert_eq!(read(&file), new);
    assert_eq!(backups(&dir).len(), 1);
}

#[test]
fn setup_codex_updates_a_stale_entry_in_place_and_keeps_its_extra_keys() {
    let h = Home::empty();
    let dir = h.path().join(".codex");
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("config.toml");
    std::fs::write(
        &file,
        "[mcp_servers.keyveil] # mine\ncommand = \"keyveil\"\nargs = [\"mcp\"]\nstartup_timeout_sec = 20\n\n[mcp_servers.other]\ncommand = \"o\"\n",
    )
    .unwrap();
    // With KEYVEIL_HOME set, the entry passes it (hosts give servers a short environment).
    let o = h.cmd(&["setup", "codex"]).output().unwrap();
    assert!(o.status.success(), "{}", text(&o.stderr));
    let new = read(&file);
    let exe = std::fs::canonicalize(bin()).unwrap();
    assert!(new.starts_with("[mcp_servers.keyveil] # mine\n"), "{new}");
    assert!(
        new.contains(&format!("command = \"{}\"", exe.display())),
        "{new}"
    );
    assert!(new.contains("startup_timeout_sec = 20"), "{new}");
    assert!(new.contains("tool_timeout_sec = 180"), "{new}");
    assert!(
        new.contains(&format!("KEYVEIL_HOME = \"{}\"", h.path().display())),
        "{new}"
    );
    assert!(
        new.contains("[mcp_servers.other]\ncommand = \"o\"\n"),
        "{new}"
    );
    assert_eq!(new.matches("[mcp_servers.keyveil]").count(), 1);
}

#[test]
fn setup_json_hosts_keep_other_entries_comments_and_formatting() {
    let h = Home::empty();
    let proj = h.path().join("proj");
    std::fs::create_dir_all(proj.join(".gemini")).unwrap();
    std::fs::create_dir_all(proj.join(".vscode")).unwrap();
    let exe = std::fs::canonicalize(bin()).unwrap();

    // Claude Code user scope: a large strict-JSON file with unrelated state, tabs, compact bits.
    let claude = h.path().join(".claude.json");
    let old_claude = "{\n\t\"numStartups\": 42,\n\t\"projects\": {\"/w\": {\"allowedTools\": [], \"history\": [{\"display\": \"hi\"}]}},\n\t\"mcpServers\": {\n\t\t\"github\": {\"type\": \"stdio\", \"command\": \"gh\", \"args\": []}\n\t},\n\t\"zzz\": null\n}\n";
    std::fs::write(&claude, old_claude).unwrap();
    let o = setup_cmd(&h, &proj, &["setup", "claude"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let new = read(&claude);
    for kept in [
        "\t\"numStartups\": 42,\n",
        "\t\"projects\": {\"/w\": {\"allowedTools\": [], \"history\": [{\"display\": \"hi\"}]}},\n",
        "\t\t\"github\": {\"type\": \"stdio\", \"command\": \"gh\", \"args\": []}",
        "\t\"zzz\": null\n}\n",
    ] {
        assert!(new.contains(kept), "lost {kept:?} in\n{new}");
    }
    assert!(new.find("numStartups") < new.find("projects"));
    assert!(new.find("github") < new.find("\"keyveil\""));
    assert!(new.find("\"keyveil\"") < new.find("zzz"));
    assert!(
        new.contains(&format!("\"command\": \"{}\"", exe.display())),
        "{new}"
    );
    assert!(new.contains("\"type\": \"stdio\""));

    // Gemini project settings: JSONC with comments, trailing commas and a stale keyveil entry
    // holding a key of the user's own.
    let gemini = proj.join(".gemini/settings.json");
    let old_gemini = "// project settings\n{\n  \"theme\": \"GitHub\", // dark is too dark\n  \"mcpServers\": {\n    /* ours */\n    \"keyveil\": { \"command\": \"keyveil\", \"args\": [\"mcp\"], \"trust\": false, },\n  },\n}\n";
    std::fs::write(&gemini, old_gemini).unwrap();
    let o = setup_cmd(&h, &proj, &["setup", "gemini", "--project"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let new = read(&gemini);
    for kept in [
        "// project settings\n",
        "\"theme\": \"GitHub\", // dark is too dark\n",
        "/* ours */",
    ] {
        assert!(new.contains(kept), "lost {kept:?} in\n{new}");
    }
    assert!(new.contains("\"timeout\": 180000"), "{new}");
    // trust is keyveil's permission key now: set in place.
    assert!(new.contains("\"trust\": true"), "{new}");
    assert!(!new.contains("\"trust\": false"), "{new}");
    assert!(!new.contains("\"command\": \"keyveil\""), "{new}");
    assert_eq!(new.matches("\"keyveil\"").count(), 1, "{new}");

    // VS Code and Cursor project files, created from nothing.
    for (host, rel, key) in [
        ("vscode", ".vscode/mcp.json", "\"servers\""),
        ("cursor", ".cursor/mcp.json", "\"mcpServers\""),
    ] {
        let o = setup_cmd(&h, &proj, &["setup", host, "--project"]);
        assert!(o.status.success(), "{host}: {}", text(&o.stderr));
        assert!(text(&o.stdout).contains("created"), "{}", text(&o.stdout));
        let t = read(&proj.join(rel));
        assert!(t.contains(key), "{t}");
        assert!(t.contains("\"args\": [\"mcp\"]"), "{t}");
    }
    assert!(read(&proj.join(".vscode/mcp.json")).contains("\"type\": \"stdio\""));

    // All idempotent.
    for args in [
        &["setup", "claude"][..],
        &["setup", "gemini", "--project"],
        &["setup", "vscode", "--project"],
        &["setup", "cursor", "--project"],
    ] {
        let before = (read(&claude), read(&gemini));
        let o = setup_cmd(&h, &proj, args);
        assert!(
            text(&o.stdout).contains("already set up"),
            "{args:?}: {}",
            text(&o.stdout)
        );
        assert_eq!((read(&claude), read(&gemini)), before);
    }
}

#[test]
fn setup_refuses_a_config_it_cannot_parse_and_changes_nothing() {
    let h = Home::empty();
    let cases: [(&str, &str, &str); 4] = [
        (
            "claude",
            ".claude.json",
            "{ \"mcpServers\": { \"a\": 1 }, oops }\n",
        ),
        ("cursor", ".cursor/mcp.json", "{ \"mcpServers\": [1, 2] }\n"),
        ("codex", ".codex/config.toml", "[mcp_servers\ncommand = 1\n"),
        (
            "gemini",
            ".gemini/settings.json",
            "[\"not\", \"an\", \"object\"]\n",
        ),
    ];
    for (host, rel, body) in cases {
        let file = h.path().join(rel);
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(&file, body).unwrap();
        let o = setup_cmd(&h, h.path(), &["setup", host]);
        assert_eq!(o.status.code(), Some(1), "{host}");
        let err = text(&o.stderr);
        assert!(err.contains("nothing was changed"), "{host}: {err}");
        assert!(err.contains("hint:"), "{host}: {err}");
        assert_eq!(read(&file), body, "{host}");
        assert!(backups(file.parent().unwrap()).is_empty(), "{host}");
    }
    // Claude Code's second file (the permission) is not written when the first one is refused.
    assert!(!h.path().join(".claude/settings.json").exists());
    // `--print` writes nothing either.
    let o = setup_cmd(&h, h.path(), &["setup", "vscode", "--project", "--print"]);
    assert!(o.status.success());
    assert!(
        text(&o.stdout).contains("\"servers\""),
        "{}",
        text(&o.stdout)
    );
    assert!(!h.path().join(".vscode").exists());
}

#[test]
fn doctor_says_what_to_fix_and_passes_once_set_up() {
    let h = Home::new();
    let proj = h.path().join("p");
    std::fs::create_dir_all(&proj).unwrap();
    let path = format!(
        "{}:{}",
        bin().parent().unwrap().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let doctor = || {
        let mut c = h.cmd(&["doctor"]);
        c.env("PATH", &path).current_dir(&proj);
        c.output().unwrap()
    };
    let o = doctor();
    let out = text(&o.stdout);
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(out.contains("ok   broker reachable"), "{out}");
    assert!(out.contains("ok   vault exists and is unlocked"), "{out}");
    assert!(out.contains("FAIL no agent host is set up"), "{out}");
    assert!(out.contains("hint: run `keyveil setup codex`"), "{out}");
    // Script sealing's user namespace: doctor's probe agrees with util-linux's `unshare`.
    let userns = std::process::Command::new("unshare")
        .args(["-U", "-m", "true"])
        .status()
        .is_ok_and(|s| s.success());
    if userns {
        assert!(
            out.contains("ok   user namespaces allowed: a pinned script is sealed"),
            "{out}"
        );
    } else {
        assert!(
            out.contains("warn the kernel refuses an unprivileged user namespace")
                && out.contains("hint: allow them"),
            "{out}"
        );
    }

    // A host config that starts another program fails with the fix.
    std::fs::create_dir_all(proj.join(".cursor")).unwrap();
    std::fs::write(
        proj.join(".cursor/mcp.json"),
        "{\"mcpServers\": {\"keyveil\": {\"command\": \"/bin/true\", \"args\": [\"mcp\"]}}}",
    )
    .unwrap();
    let out = text(&doctor().stdout);
    assert!(out.contains("is not this binary"), "{out}");
    assert!(
        out.contains("hint: run `keyveil setup cursor --project`"),
        "{out}"
    );

    let o = h
        .cmd(&["setup", "cursor", "--project"])
        .current_dir(&proj)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o.stderr));
    let o = doctor();
    let out = text(&o.stdout);
    assert_eq!(o.status.code(), Some(0), "{out}");
    assert!(out.contains("all checks passed"), "{out}");

    h.ok(&["lock"]);
    let o = doctor();
    let out = text(&o.stdout);
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(out.contains("FAIL the vault is locked"), "{out}");
    assert!(out.contains("hint: run `keyveil unlock`"), "{out}");
}

// ---------------------------------------------------------------------------------------------
// Every host: the host's permission, `--host-prompts`, `--remove`, on files with user content

/// One host's files before setup (user content, comments) and exactly after (`{exe}` stands for
/// the binary's path). Files not listed do not exist before.
struct Golden {
    host: &'static str,
    files: &'static [(&'static str, Option<&'static str>, &'static str)],
}

const GOLDENS: &[Golden] = &[
    Golden {
        host: "codex",
        files: &[(
            ".codex/config.toml",
            Some(
                "# mine\nmodel = \"o3\" # pinned\n\n[mcp_servers.docs]\nurl = \"https://example.com/mcp\"\n",
            ),
            "# mine\nmodel = \"o3\" # pinned\n\n[mcp_servers.docs]\nurl = \"https://example.com/mcp\"\n\n[mcp_servers.keyveil]\ncommand = \"{exe}\"\nargs = [\"mcp\"]\ntool_timeout_sec = 180\ndefault_tools_approval_mode = \"approve\"\n",
        )],
    },
    Golden {
        host: "claude",
        files: &[
            (
                ".claude.json",
                Some(
                    "{\n  \"numStartups\": 3,\n  \"mcpServers\": {\n    \"github\": { \"type\": \"http\", \"url\": \"https://api.github.com/mcp\" }\n  }\n}\n",
                ),
                "{\n  \"numStartups\": 3,\n  \"mcpServers\": {\n    \"github\": { \"type\": \"http\", \"url\": \"https://api.github.com/mcp\" },\n    \"keyveil\": {\n      \"type\": \"stdio\",\n      \"command\": \"{exe}\",\n      \"args\": [\"mcp\"],\n      \"alwaysLoad\": true\n    }\n  }\n}\n",
            ),
            (
                ".claude/settings.json",
                Some(
                    "{\n  // my settings\n  \"model\": \"opus\",\n  \"permissions\": {\n    \"allow\": [\"Bash(git status)\"], // mine\n    \"deny\": [\"Read(./.env)\"]\n  }\n}\n",
                ),
                "{\n  // my settings\n  \"model\": \"opus\",\n  \"permissions\": {\n    \"allow\": [\"Bash(git status)\", \"mcp__keyveil\"], // mine\n    \"deny\": [\"Read(./.env)\"]\n  }\n}\n",
            ),
        ],
    },
    Golden {
        host: "gemini",
        files: &[(
            ".gemini/settings.json",
            Some(
                "{\n  \"theme\": \"GitHub\", // dark is too dark\n  \"mcpServers\": {\n    \"other\": { \"command\": \"o\" },\n  },\n}\n",
            ),
            "{\n  \"theme\": \"GitHub\", // dark is too dark\n  \"mcpServers\": {\n    \"other\": { \"command\": \"o\" },\n    \"keyveil\": {\n      \"command\": \"{exe}\",\n      \"args\": [\"mcp\"],\n      \"timeout\": 180000,\n      \"trust\": true\n    },\n  },\n}\n",
        )],
    },
    Golden {
        host: "antigravity",
        files: &[(
            ".gemini/config/mcp_config.json",
            Some(
                "{\n  \"mcpServers\": {\n    \"firebase\": {\n      \"command\": \"npx\",\n      \"args\": [\"-y\", \"firebase-tools@latest\", \"mcp\"]\n    }\n  }\n}\n",
            ),
            "{\n  \"mcpServers\": {\n    \"firebase\": {\n      \"command\": \"npx\",\n      \"args\": [\"-y\", \"firebase-tools@latest\", \"mcp\"]\n    },\n    \"keyveil\": {\n      \"command\": \"{exe}\",\n      \"args\": [\"mcp\"]\n    }\n  }\n}\n",
        )],
    },
    Golden {
        host: "copilot",
        files: &[(
            ".copilot/mcp-config.json",
            Some(
                "{\n  \"mcpServers\": {\n    \"github\": { \"type\": \"http\", \"url\": \"https://api.githubcopilot.com/mcp/\" }\n  }\n}\n",
            ),
            "{\n  \"mcpServers\": {\n    \"github\": { \"type\": \"http\", \"url\": \"https://api.githubcopilot.com/mcp/\" },\n    \"keyveil\": {\n      \"type\": \"local\",\n      \"command\": \"{exe}\",\n      \"args\": [\"mcp\"],\n      \"tools\": [\"*\"],\n      \"timeout\": 180000\n    }\n  }\n}\n",
        )],
    },
    Golden {
        host: "cursor",
        files: &[(
            ".cursor/mcp.json",
            None,
            "{\n  \"mcpServers\": {\n    \"keyveil\": {\n      \"command\": \"{exe}\",\n      \"args\": [\"mcp\"]\n    }\n  }\n}\n",
        )],
    },
    Golden {
        host: "vscode",
        files: &[(
            ".config/Code/User/mcp.json",
            Some(
                "// VS Code MCP\n{\n  \"inputs\": [],\n  \"servers\": {\n    \"gh\": { \"url\": \"https://api.github.com/mcp\" }\n  }\n}\n",
            ),
            "// VS Code MCP\n{\n  \"inputs\": [],\n  \"servers\": {\n    \"gh\": { \"url\": \"https://api.github.com/mcp\" },\n    \"keyveil\": {\n      \"type\": \"stdio\",\n      \"command\": \"{exe}\",\n      \"args\": [\"mcp\"]\n    }\n  }\n}\n",
        )],
    },
    Golden {
        host: "opencode",
        files: &[(
            ".config/opencode/opencode.json",
            Some(
                "{\n  \"$schema\": \"https://opencode.ai/config.json\",\n  // my model\n  \"model\": \"anthropic/claude-sonnet-4-5\",\n  \"permission\": {\n    \"bash\": \"ask\"\n  },\n  \"mcp\": {\n    \"docs\": { \"type\": \"remote\", \"url\": \"https://example.com/mcp\" },\n  },\n}\n",
            ),
            "{\n  \"$schema\": \"https://opencode.ai/config.json\",\n  // my model\n  \"model\": \"anthropic/claude-sonnet-4-5\",\n  \"permission\": {\n    \"bash\": \"ask\",\n    \"keyveil_*\": \"allow\"\n  },\n  \"mcp\": {\n    \"docs\": { \"type\": \"remote\", \"url\": \"https://example.com/mcp\" },\n    \"keyveil\": {\n      \"type\": \"local\",\n      \"command\": [\"{exe}\", \"mcp\"],\n      \"enabled\": true,\n      \"timeout\": 180000\n    },\n  },\n}\n",
        )],
    },
];

#[test]
fn setup_every_host_golden_files_idempotent_and_remove_gives_the_files_back() {
    let exe = std::fs::canonicalize(bin()).unwrap();
    let exe = exe.to_string_lossy();
    for g in GOLDENS {
        let h = Home::empty();
        for (rel, before, _) in g.files {
            if let Some(b) = before {
                let f = h.path().join(rel);
                std::fs::create_dir_all(f.parent().unwrap()).unwrap();
                std::fs::write(&f, b).unwrap();
            }
        }
        let o = setup_cmd(&h, h.path(), &["setup", g.host]);
        assert!(o.status.success(), "{}: {}", g.host, text(&o.stderr));
        let out = text(&o.stdout);
        for (rel, _, after) in g.files {
            let want = after.replace("{exe}", &exe);
            assert_eq!(read(&h.path().join(rel)), want, "{}: {rel}", g.host);
        }
        // Said what and why (or, where keyveil writes no permission, what the user does).
        assert!(
            out.contains("why: ") || out.contains("note: "),
            "{}: {out}",
            g.host
        );
        let o = setup_cmd(&h, h.path(), &["setup", g.host]);
        assert!(
            text(&o.stdout).contains("already set up"),
            "{}: {}",
            g.host,
            text(&o.stdout)
        );
        // --remove gives every file back as it was (or takes away the one setup created).
        let o = setup_cmd(&h, h.path(), &["setup", g.host, "--remove"]);
        assert!(o.status.success(), "{}: {}", g.host, text(&o.stderr));
        for (rel, before, _) in g.files {
            let f = h.path().join(rel);
            match before {
                Some(b) => assert_eq!(read(&f), *b, "{}: {rel}", g.host),
                None => assert!(!f.exists(), "{}: {rel} left behind", g.host),
            }
        }
        let o = setup_cmd(&h, h.path(), &["setup", g.host, "--remove"]);
        assert!(
            text(&o.stdout).contains("not set up there"),
            "{}: {}",
            g.host,
            text(&o.stdout)
        );
    }
}

#[test]
fn setup_host_prompts_writes_no_permission_and_takes_out_only_keyveils() {
    let h = Home::empty();
    // The user's own rules around keyveil's: they stay through every step.
    let settings = h.path().join(".claude/settings.json");
    std::fs::create_dir_all(settings.parent().unwrap()).unwrap();
    std::fs::write(
        &settings,
        "{ \"permissions\": { \"allow\": [\"mcp__github\"], \"ask\": [\"mcp__keyveil__stop\"] } }\n",
    )
    .unwrap();
    let o = setup_cmd(&h, h.path(), &["setup", "claude", "--host-prompts"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(
        text(&o.stdout).contains("--host-prompts"),
        "{}",
        text(&o.stdout)
    );
    assert!(!read(&settings).contains("\"mcp__keyveil\""));
    assert!(read(&h.path().join(".claude.json")).contains("\"alwaysLoad\": true"));

    setup_cmd(&h, h.path(), &["setup", "claude"]);
    assert!(
        read(&settings).contains("\"mcp__keyveil\""),
        "{}",
        read(&settings)
    );
    let o = setup_cmd(&h, h.path(), &["setup", "claude", "--host-prompts"]);
    let out = text(&o.stdout);
    assert!(
        out.contains("removed \"mcp__keyveil\" from permissions.allow"),
        "{out}"
    );
    let s = read(&settings);
    assert!(!s.contains("\"mcp__keyveil\""), "{s}");
    assert!(
        s.contains("\"mcp__github\"") && s.contains("\"mcp__keyveil__stop\""),
        "{s}"
    );

    // Codex and Gemini: the key in the entry goes, the entry stays; a user's own `trust: false`
    // is not keyveil's to take out.
    for (host, rel, key) in [
        ("codex", ".codex/config.toml", "default_tools_approval_mode"),
        ("gemini", ".gemini/settings.json", "\"trust\""),
        ("opencode", ".config/opencode/opencode.json", "keyveil_*"),
    ] {
        setup_cmd(&h, h.path(), &["setup", host]);
        assert!(read(&h.path().join(rel)).contains(key), "{host}");
        setup_cmd(&h, h.path(), &["setup", host, "--host-prompts"]);
        let t = read(&h.path().join(rel));
        assert!(!t.contains(key), "{host}: {t}");
        assert!(t.contains("keyveil"), "{host}: {t}");
    }
    let gemini = h.path().join(".gemini/settings.json");
    std::fs::write(
        &gemini,
        "{ \"mcpServers\": { \"keyveil\": { \"command\": \"k\", \"trust\": false } } }\n",
    )
    .unwrap();
    setup_cmd(&h, h.path(), &["setup", "gemini", "--host-prompts"]);
    assert!(
        read(&gemini).contains("\"trust\": false"),
        "{}",
        read(&gemini)
    );
    // --remove takes the whole entry, whatever else it held.
    setup_cmd(&h, h.path(), &["setup", "gemini", "--remove"]);
    assert!(!h.path().join(".gemini/settings.json").exists() || !read(&gemini).contains("keyveil"));
}

#[test]
fn setup_claude_project_approves_the_mcp_json_server_for_this_user_only() {
    let h = Home::empty();
    let proj = h.path().join("proj");
    std::fs::create_dir_all(&proj).unwrap();
    let o = setup_cmd(&h, &proj, &["setup", "claude", "--project"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let mcp: serde_json::Value = serde_json::from_str(&read(&proj.join(".mcp.json"))).unwrap();
    assert_eq!(mcp["mcpServers"]["keyveil"]["alwaysLoad"], true);
    let local: serde_json::Value =
        serde_json::from_str(&read(&proj.join(".claude/settings.local.json"))).unwrap();
    assert_eq!(
        local["permissions"]["allow"],
        serde_json::json!(["mcp__keyveil"])
    );
    assert_eq!(
        local["enabledMcpjsonServers"],
        serde_json::json!(["keyveil"])
    );
    // The shared settings and the user's are not touched.
    assert!(!proj.join(".claude/settings.json").exists());
    assert!(!h.path().join(".claude/settings.json").exists());
    let o = setup_cmd(&h, &proj, &["setup", "claude", "--project", "--remove"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(!proj.join(".mcp.json").exists());
    assert!(!proj.join(".claude/settings.local.json").exists());

    // Hosts without a project file keyveil writes say so and write nothing.
    for host in ["antigravity", "copilot"] {
        let o = setup_cmd(&h, &proj, &["setup", host, "--project"]);
        assert_eq!(o.status.code(), Some(2), "{host}");
        assert!(
            text(&o.stderr).contains("without --project"),
            "{}",
            text(&o.stderr)
        );
    }
    assert!(!h.path().join(".copilot").exists() && !h.path().join(".gemini").exists());
}

#[test]
fn setup_project_scope_of_every_host_writes_only_in_the_project_and_remove_leaves_nothing() {
    let h = Home::empty();
    let proj = h.path().join("proj");
    std::fs::create_dir_all(&proj).unwrap();
    for (host, files) in [
        ("codex", &[".codex/config.toml"][..]),
        ("claude", &[".mcp.json", ".claude/settings.local.json"]),
        ("gemini", &[".gemini/settings.json"]),
        ("cursor", &[".cursor/mcp.json"]),
        ("vscode", &[".vscode/mcp.json"]),
        ("opencode", &["opencode.json"]),
    ] {
        let o = setup_cmd(&h, &proj, &["setup", host, "--project"]);
        assert!(o.status.success(), "{host}: {}", text(&o.stderr));
        for f in files {
            assert!(read(&proj.join(f)).contains("keyveil"), "{host}: {f}");
        }
        let o = setup_cmd(&h, &proj, &["setup", host, "--project"]);
        assert!(text(&o.stdout).contains("already set up"), "{host}");
        let o = setup_cmd(&h, &proj, &["setup", host, "--project", "--remove"]);
        assert!(o.status.success(), "{host}: {}", text(&o.stderr));
        for f in files {
            assert!(!proj.join(f).exists(), "{host}: {f} left behind");
        }
    }
    // Nothing was written outside the project (HOME holds only the project).
    let top: Vec<_> = std::fs::read_dir(h.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(top, ["proj"], "{top:?}");
}

// ---------------------------------------------------------------------------------------------
// Doctor: what stops a host from using keyveil

/// `keyveil doctor` in `cwd` with PATH = this binary's directory, `extra` (fake host CLIs) and
/// the system's own directories (no host CLI the machine may have installed).
fn doctor_in(h: &Home, cwd: &Path, extra: Option<&Path>, args: &[&str]) -> (Option<i32>, String) {
    let mut path = bin().parent().unwrap().display().to_string();
    if let Some(e) = extra {
        path = format!("{path}:{}", e.display());
    }
    path.push_str(":/usr/bin:/bin");
    let mut all = vec!["doctor"];
    all.extend_from_slice(args);
    let mut c = h.cmd(&all);
    c.env("PATH", &path).current_dir(cwd);
    let o = c.output().unwrap();
    (o.status.code(), text(&o.stdout))
}

fn fail_line<'a>(out: &'a str, what: &str) -> &'a str {
    let i = out
        .find(what)
        .unwrap_or_else(|| panic!("no {what:?} in\n{out}"));
    &out[i..]
}

#[test]
fn doctor_fails_with_a_hint_for_each_missing_host_permission() {
    let h = Home::new();
    let proj = h.path().join("p");
    std::fs::create_dir_all(&proj).unwrap();
    for host in ["codex", "claude", "opencode"] {
        let o = h
            .cmd(&["setup", host, "--host-prompts"])
            .current_dir(&proj)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", text(&o.stderr));
    }
    let (code, out) = doctor_in(&h, &proj, None, &[]);
    assert_eq!(code, Some(1), "{out}");
    let codex = fail_line(&out, "FAIL codex:");
    assert!(codex.contains("default_tools_approval_mode"), "{codex}");
    assert!(codex.contains("hint: run `keyveil setup codex`"), "{codex}");
    let claude = fail_line(&out, "FAIL claude: no permissions.allow entry");
    assert!(claude.contains("`claude -p` refuses them"), "{claude}");
    assert!(
        claude.contains("hint: run `keyveil setup claude`"),
        "{claude}"
    );
    let opencode = fail_line(&out, "FAIL opencode:");
    assert!(opencode.contains("keyveil_*"), "{opencode}");
    // Chosen on purpose: not a failure.
    let (code, out) = doctor_in(&h, &proj, None, &["--host-prompts"]);
    assert_eq!(code, Some(0), "{out}");
    // Written by setup: passes.
    for host in ["codex", "claude", "opencode"] {
        h.cmd(&["setup", host]).current_dir(&proj).output().unwrap();
    }
    let (code, out) = doctor_in(&h, &proj, None, &[]);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("ok   claude: permissions.allow holds mcp__keyveil"),
        "{out}"
    );
    // A deny rule of the user's own beats the allow: said.
    std::fs::write(
        h.path().join(".claude/settings.json"),
        "{\"permissions\": {\"allow\": [\"mcp__keyveil\"], \"deny\": [\"mcp__keyveil\"]}}",
    )
    .unwrap();
    let (code, out) = doctor_in(&h, &proj, None, &[]);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("FAIL claude: a permissions.deny rule denies keyveil's tools"),
        "{out}"
    );
}

#[test]
fn doctor_fails_for_an_untrusted_gemini_folder_a_vanished_binary_and_an_unapproved_project_server()
{
    let h = Home::new();
    let proj = h.path().join("p");
    std::fs::create_dir_all(&proj).unwrap();
    assert!(
        h.cmd(&["setup", "gemini"])
            .current_dir(&proj)
            .output()
            .unwrap()
            .status
            .success()
    );
    let (code, out) = doctor_in(&h, &proj, None, &[]);
    assert_eq!(code, Some(1), "{out}");
    let g = fail_line(&out, "FAIL gemini: Gemini CLI does not trust");
    assert!(g.contains("hint: run `gemini` in"), "{g}");
    // Trusted (a parent's rule), then explicitly distrusted (a longer rule wins).
    let trusted = h.path().join(".gemini/trustedFolders.json");
    std::fs::write(
        &trusted,
        format!("{{\"{}\": \"TRUST_FOLDER\"}}", h.path().display()),
    )
    .unwrap();
    let (code, out) = doctor_in(&h, &proj, None, &[]);
    assert_eq!(code, Some(0), "{out}");
    std::fs::write(
        &trusted,
        format!(
            "{{\"{}\": \"TRUST_FOLDER\", \"{}\": \"DO_NOT_TRUST\"}}",
            h.path().display(),
            proj.display()
        ),
    )
    .unwrap();
    let (code, out) = doctor_in(&h, &proj, None, &[]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("FAIL gemini: Gemini CLI distrusts"), "{out}");
    std::fs::remove_file(&trusted).unwrap();
    h.cmd(&["setup", "gemini", "--remove"])
        .current_dir(&proj)
        .output()
        .unwrap();

    // An entry whose binary is gone (keyveil moved).
    std::fs::create_dir_all(h.path().join(".cursor")).unwrap();
    let gone = h.path().join("old/bin/keyveil");
    std::fs::write(
        h.path().join(".cursor/mcp.json"),
        format!(
            "{{\"mcpServers\": {{\"keyveil\": {{\"command\": \"{}\", \"args\": [\"mcp\"]}}}}}}",
            gone.display()
        ),
    )
    .unwrap();
    let (code, out) = doctor_in(&h, &proj, None, &[]);
    assert_eq!(code, Some(1), "{out}");
    let c = fail_line(&out, "FAIL cursor:");
    assert!(c.contains("does not exist"), "{c}");
    assert!(c.contains("hint: run `keyveil setup cursor`"), "{c}");
    std::fs::remove_file(h.path().join(".cursor/mcp.json")).unwrap();

    // Claude Code: a project's .mcp.json server nobody approved.
    std::fs::write(
        proj.join(".mcp.json"),
        format!(
            "{{\"mcpServers\": {{\"keyveil\": {{\"command\": \"{}\", \"args\": [\"mcp\"]}}}}}}",
            std::fs::canonicalize(bin()).unwrap().display()
        ),
    )
    .unwrap();
    let (code, out) = doctor_in(&h, &proj, None, &["--host-prompts"]);
    assert_eq!(code, Some(1), "{out}");
    let c = fail_line(
        &out,
        "FAIL claude: the project's .mcp.json server keyveil is not approved",
    );
    assert!(
        c.contains("hint: run `keyveil setup claude --project`"),
        "{c}"
    );
    h.cmd(&["setup", "claude", "--project"])
        .current_dir(&proj)
        .output()
        .unwrap();
    let (code, out) = doctor_in(&h, &proj, None, &[]);
    assert_eq!(code, Some(0), "{out}");
}

/// A broker that is not running (after a reboot): doctor says so, starts one as a host's first
/// call would, and the locked vault that follows fails with the fix.
#[test]
fn doctor_says_when_no_broker_ran_and_that_the_vault_then_is_locked() {
    let h = Home::new();
    let proj = h.path().join("p");
    std::fs::create_dir_all(&proj).unwrap();
    assert!(
        h.cmd(&["setup", "cursor"])
            .current_dir(&proj)
            .output()
            .unwrap()
            .status
            .success()
    );
    h.ok(&["daemon", "stop"]);
    let (code, out) = doctor_in(&h, &proj, None, &[]);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.starts_with("warn no broker was running; doctor started one"),
        "{out}"
    );
    let c = fail_line(&out, "FAIL the vault is locked");
    assert!(c.contains("hint: run `keyveil unlock`"), "{c}");
    // Running now: no warning.
    let (_, out) = doctor_in(&h, &proj, None, &[]);
    assert!(!out.contains("no broker was running"), "{out}");
}

/// The host's own MCP listing, where its CLI is on PATH: what it says is reported, a listing
/// that hangs is killed after a few seconds (with whatever it started).
#[test]
fn doctor_reports_the_hosts_own_mcp_listing_and_kills_one_that_hangs() {
    let h = Home::new();
    let proj = h.path().join("p");
    std::fs::create_dir_all(&proj).unwrap();
    for host in ["claude", "codex"] {
        assert!(
            h.cmd(&["setup", host])
                .current_dir(&proj)
                .output()
                .unwrap()
                .status
                .success()
        );
    }
    let fake = h.path().join("fakebin");
    std::fs::create_dir_all(&fake).unwrap();
    let script = |name: &str, body: &str| {
        use std::os::unix::fs::PermissionsExt;
        let p = fake.join(name);
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    };
    let pidfile = h.path().join("grandchild.pid");
    script(
        "claude",
        "[ \"$1 $2\" = \"mcp list\" ] || exit 9\necho 'Checking MCP server health...'\necho 'keyveil: /x mcp - ⏸ Pending approval (run `claude` to approve)'",
    );
    script(
        "codex",
        &format!("sleep 300 & echo $! > {}\nwait", pidfile.display()),
    );
    let t0 = Instant::now();
    let (code, out) = doctor_in(&h, &proj, Some(&fake), &[]);
    let took = t0.elapsed();
    assert_eq!(code, Some(1), "{out}");
    let c = fail_line(
        &out,
        "FAIL claude: `claude mcp list` says: keyveil: /x mcp - ⏸ Pending approval",
    );
    assert!(c.contains("hint: "), "{c}");
    assert!(
        out.contains("warn codex: `codex mcp list` did not answer within 5 s (killed)"),
        "{out}"
    );
    assert!(took < Duration::from_secs(30), "{took:?}");
    // What the hanging listing started went with it.
    let pid: i32 = read(&pidfile).trim().parse().unwrap();
    wait_for("the listing's child to die", || {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |st| st.contains(") Z "))
    });
    // A healthy listing is ok.
    script("claude", "echo 'keyveil: /x mcp - ✔ Connected'");
    script(
        "codex",
        "printf 'Name     Command  Status\\nkeyveil  /x       enabled\\n'",
    );
    let (code, out) = doctor_in(&h, &proj, Some(&fake), &[]);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("ok   claude: `claude mcp list` says: keyveil: /x mcp - ✔ Connected"),
        "{out}"
    );
    // A listing starts the servers a project's file names, and those files (and the trust
    // files) are the agent's to write: every listing runs in HOME, even for a project set up
    // on purpose.
    assert!(
        h.cmd(&["setup", "opencode"])
            .current_dir(&proj)
            .output()
            .unwrap()
            .status
            .success()
    );
    script("opencode", "echo \"✓ keyveil connected in $(pwd)\"");
    let (_, out) = doctor_in(&h, &proj, Some(&fake), &[]);
    let want = format!(
        "ok   opencode: `opencode mcp list` says: ✓ keyveil connected in {}\n",
        h.path().display()
    );
    assert!(out.contains(&want), "{out}");
    assert!(
        h.cmd(&["setup", "opencode", "--project"])
            .current_dir(&proj)
            .output()
            .unwrap()
            .status
            .success()
    );
    let (_, out) = doctor_in(&h, &proj, Some(&fake), &[]);
    let want = format!(
        "ok   opencode: `opencode mcp list` says: ✓ keyveil connected in {}\n",
        h.path().display()
    );
    assert!(out.contains(&want), "{out}");
    // A listing without keyveil: the host does not see the entry.
    script(
        "claude",
        "echo 'No MCP servers configured. Use `claude mcp add` to add a server.'",
    );
    let (code, out) = doctor_in(&h, &proj, Some(&fake), &[]);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("FAIL claude: `claude mcp list` does not list keyveil"),
        "{out}"
    );
}

/// Codex passes MCP servers a short whitelist (HOME, PATH, LANG, USER, ...): no KEYVEIL_HOME,
/// no XDG_*. The broker's socket must still be found from HOME alone.
#[test]
fn a_run_with_a_host_whitelist_environment_finds_the_broker() {
    let h = Home::empty();
    let bare = |args: &[&str]| {
        let mut c = Command::new(bin());
        c.args(args)
            .env_clear()
            .env("HOME", h.path())
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("LANG", "C.UTF-8")
            .env("USER", "someone")
            .env("TERM", "dumb")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        c
    };
    struct Stop<'a>(&'a Path);
    impl Drop for Stop<'_> {
        fn drop(&mut self) {
            let _ = Command::new(bin())
                .arg("daemon")
                .arg("stop")
                .env_clear()
                .env("HOME", self.0)
                .output();
        }
    }
    let _stop = Stop(h.path());
    let with_stdin = |args: &[&str], input: &str| {
        let mut child = bare(args).spawn().unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    };
    let o = with_stdin(
        &["init", "--passphrase-stdin", "--kdf-memory-kib", "19456"],
        &format!("{PASS}\n"),
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(
        h.path().join(".local/share/keyveil/vault.kv").exists(),
        "the default data directory is under HOME"
    );
    assert!(
        bare(&["env", "create", "demo"])
            .output()
            .unwrap()
            .status
            .success()
    );
    let value = "whitelist-value-Q7mZ2kLp9";
    assert!(
        with_stdin(&["set", "demo", "API_TOKEN", "--from-stdin"], value)
            .status
            .success()
    );

    let child = bare(&[
        "run",
        "--env",
        "demo",
        "--wait",
        "30",
        "--",
        "sh",
        "-c",
        "echo token=$API_TOKEN",
    ])
    .spawn()
    .unwrap();
    let t0 = Instant::now();
    let id = loop {
        let o = bare(&["requests", "--json"]).output().unwrap();
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_default();
        if let Some(id) = v
            .as_array()
            .and_then(|a| a.last())
            .and_then(|r| r["id"].as_u64())
        {
            break id;
        }
        assert!(t0.elapsed() < Duration::from_secs(20), "no request");
        std::thread::sleep(Duration::from_millis(50));
    };
    let o = with_stdin(
        &["approve", &id.to_string(), "--passphrase-stdin"],
        &format!("{PASS}\n"),
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
    let o = wait_output(child, Duration::from_secs(30));
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    assert_eq!(text(&o.stdout), "token=[REDACTED:API_TOKEN]\n");
    assert!(!contains(&o.stdout, value) && !contains(&o.stderr, value));
}

// ---------------------------------------------------------------------------------------------
// Background runs

fn logs(h: &Home, id: &str, from: u64) -> String {
    h.ok(&["logs", id, "--from", &from.to_string()])
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !f() {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Starts a background run and approves it; returns the run id.
fn start_approved(h: &Home, script: &str) -> String {
    let child = h.spawn_run(&[
        "start", "--env", "demo", "--wait", "30", "--", "sh", "-c", script,
    ]);
    let id = h.wait_request();
    let o = h.approve(id, &["--ttl", "10m"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let o = wait_output(child, Duration::from_secs(30));
    assert!(o.status.success(), "{}", text(&o.stderr));
    let run = text(&o.stdout).trim().to_owned();
    assert!(run.starts_with("r-"), "{run}");
    run
}

#[test]
fn background_run_logs_incrementally_redacted_and_stops() {
    let h = Home::new();
    let value = "bg-secret-value-Zk3Qp8Lm";
    h.set("demo", "API_TOKEN", value);
    let run = start_approved(
        &h,
        "echo token=$API_TOKEN; i=0; while true; do i=$((i+1)); echo tick $i; sleep 0.1; done",
    );
    wait_for("output", || logs(&h, &run, 0).contains("tick 3"));
    let first = logs(&h, &run, 0);
    assert!(
        first.starts_with("token=[REDACTED:API_TOKEN]\ntick 1\n"),
        "{first}"
    );
    // Incremental: from an offset, only what follows.
    let offset = "token=[REDACTED:API_TOKEN]\n".len() as u64;
    assert!(logs(&h, &run, offset).starts_with("tick 1\n"));
    let st = h.json(&["status", "--json"]);
    assert_eq!(st["live_runs"], 1, "{st}");

    let out = h.ok(&["stop", &run]);
    assert!(out.contains("stopped"), "{out}");
    let st = h.json(&["status", "--json"]);
    assert_eq!(st["live_runs"], 0, "{st}");
    let o = h.run(&["logs", &run]);
    assert!(
        text(&o.stderr).contains("ended: exit code 143, stopped"),
        "{}",
        text(&o.stderr)
    );
    // Nothing keyveil wrote holds the value.
    for enc in encodings(value) {
        assert!(!contains(&h.all_plain_files(), &enc), "{enc} in a file");
    }
    let o = h.run(&["logs", "r-000000000000"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o.stderr).contains("no background run"),
        "{}",
        text(&o.stderr)
    );
}

#[test]
fn revoking_the_grant_kills_a_background_run() {
    let h = Home::new();
    h.set("demo", "API_TOKEN", "bg-revoke-value-Xy7Wq2");
    let pidfile = h.path().join("child.pid");
    let run = start_approved(
        &h,
        &format!("sleep 300 & echo $! > {}; wait", pidfile.display()),
    );
    // The shell creates the file before `echo` writes to it: wait for the whole line.
    wait_for("the grandchild", || {
        std::fs::read_to_string(&pidfile).is_ok_and(|t| t.ends_with('\n'))
    });
    let grandchild: i32 = read(&pidfile).trim().parse().unwrap();
    let grants = h.json(&["grants", "--json"]);
    let gid = grants[0]["id"].as_str().unwrap().to_owned();
    h.ok(&["revoke", &gid]);
    wait_for("the run to end", || {
        h.run(&["logs", &run])
            .stderr
            .windows(5)
            .any(|w| w == b"ended")
    });
    let o = h.run(&["logs", &run]);
    assert!(
        text(&o.stderr).contains("its grant ended"),
        "{}",
        text(&o.stderr)
    );
    // The whole process group went, not only the shell.
    wait_for("the grandchild to die", || {
        std::fs::read_to_string(format!("/proc/{grandchild}/stat"))
            .map_or(true, |st| st.contains(") Z "))
    });
}

// ---------------------------------------------------------------------------------------------
// The one-variable value page

pub(crate) fn http(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut req =
        format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if method == "POST" {
        req.push_str(&format!(
            "Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).unwrap();
    let t = text(&buf);
    let (head, body) = t.split_once("\r\n\r\n").unwrap_or((&t, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, head.to_owned(), body.to_owned())
}

#[test]
fn the_value_page_stores_one_declared_variable_once_and_nothing_else() {
    let h = Home::new();
    h.set("demo", "API_TOKEN", "already-there-value-1");
    let o = h.run(&["set", "demo", "API_TOKEN", "--web"]);
    assert_eq!(
        o.status.code(),
        Some(1),
        "a set variable is never replaced from the page"
    );
    assert!(
        text(&o.stderr).contains("already has a value"),
        "{}",
        text(&o.stderr)
    );

    let url = h.ok(&["set", "demo", "DB_PASSWORD", "--web"]);
    let rest = url.trim().strip_prefix("http://127.0.0.1:").unwrap();
    let (port, path) = rest.split_once('/').unwrap();
    let port: u16 = port.parse().unwrap();
    let path = format!("/{path}");
    let (status, head, _) = http(port, "GET", &path, &[], "");
    assert_eq!(status, 303, "{head}");
    let cookie_line = head
        .lines()
        .find(|l| l.to_ascii_lowercase().starts_with("set-cookie:"))
        .unwrap();
    let cookie = cookie_line
        .split_once(':')
        .unwrap()
        .1
        .trim()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    // The link is spent.
    assert_eq!(http(port, "GET", &path, &[], "").0, 403);
    // The value session opens nothing else.
    assert_eq!(http(port, "GET", "/", &[("Cookie", &cookie)], "").0, 401);
    let (status, _, form) = http(port, "GET", "/set", &[("Cookie", &cookie)], "");
    assert_eq!(status, 200);
    assert!(form.contains("DB_PASSWORD"), "{form}");
    let csrf = form
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap()
        .to_owned();
    let origin = format!("http://127.0.0.1:{port}");
    let value = "page-typed-value-Vb6Nm1Qz";
    // No CSRF token, or no Origin: refused.
    let (s, _, _) = http(
        port,
        "POST",
        "/set",
        &[("Cookie", &cookie), ("Origin", &origin)],
        &format!("value={value}"),
    );
    assert_eq!(s, 403);
    let (s, _, _) = http(
        port,
        "POST",
        "/set",
        &[("Cookie", &cookie)],
        &format!("csrf={csrf}&value={value}"),
    );
    assert_eq!(s, 403);
    let (s, _, body) = http(
        port,
        "POST",
        "/set",
        &[("Cookie", &cookie), ("Origin", &origin)],
        &format!("csrf={csrf}&value={value}"),
    );
    assert_eq!(s, 200, "{body}");
    assert!(body.contains("Stored demo/DB_PASSWORD"), "{body}");
    assert!(!body.contains(value), "the page echoed the value");
    // The session is spent.
    let (s, _, _) = http(
        port,
        "POST",
        "/set",
        &[("Cookie", &cookie), ("Origin", &origin)],
        &format!("csrf={csrf}&value=other-value-123456"),
    );
    assert_eq!(s, 401);
    let env = h.json(&["env", "show", "demo", "--json"]);
    let var = env["variables"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "DB_PASSWORD")
        .unwrap()
        .clone();
    assert_eq!(var["set"], true, "{env}");
    // The value really is the one typed (a run sees it), and no file keyveil wrote holds it.
    // The run compares digests: argv is stored as given (never matched against values, G12),
    // so a value typed on argv would reach the audit.
    let digest = {
        use sha2::Digest as _;
        hex::encode(sha2::Sha256::digest(value.as_bytes()))
    };
    let script = format!(
        "test \"$(printf %s \"$DB_PASSWORD\" | sha256sum | cut -c1-64)\" = {digest} && echo same"
    );
    let child = h.spawn_run(&["run", "--env", "demo", "--", "sh", "-c", &script]);
    let id = h.wait_request();
    assert!(h.approve(id, &[]).status.success());
    let o = wait_output(child, Duration::from_secs(30));
    assert_eq!(text(&o.stdout), "same\n", "{}", text(&o.stderr));
    for enc in encodings(value) {
        assert!(!contains(&h.all_plain_files(), &enc), "{enc} in a file");
    }
}
