//! Tests of the write-side scan: the shared write-side corpus, one more case per class, clean
//! runs, and each limit (the decoders: `tests_decode.rs`).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::path::{Path, PathBuf};
use std::process::Command;

use keyveil_redact::Redactor;
use serde_json::{Value, json};

use super::*;

const CASES: &str = include_str!("../../../../tests/cases/write-side-cases.jsonl");

// ---------------------------------------------------------------------------------------------
// harness

/// A run's working directory and `$HOME`, both fresh.
pub(super) struct Dirs {
    pub(super) cwd: tempfile::TempDir,
    pub(super) home: tempfile::TempDir,
}

impl Dirs {
    pub(super) fn new() -> Dirs {
        Dirs {
            cwd: tempfile::Builder::new()
                .prefix("kv-scan-cwd")
                .tempdir()
                .unwrap(),
            home: tempfile::Builder::new()
                .prefix("kv-scan-home")
                .tempdir()
                .unwrap(),
        }
    }
    pub(super) fn cwd(&self) -> PathBuf {
        std::fs::canonicalize(self.cwd.path()).unwrap()
    }
    pub(super) fn home(&self) -> PathBuf {
        std::fs::canonicalize(self.home.path()).unwrap()
    }
    pub(super) fn scope(&self, since: SystemTime, limits: ScanLimits) -> ScanScope {
        ScanScope {
            cwd: self.cwd.path().to_path_buf(),
            home: Some(self.home.path().to_path_buf()),
            since,
            limits,
        }
    }
    /// Runs `sh -c program` the way `verify_write_cases.py` does: in the working directory,
    /// with only the secrets, PATH, HOME and LANG in the environment.
    pub(super) fn sh(&self, program: &str, secrets: &[(String, String)]) {
        let out = Command::new("sh")
            .arg("-c")
            .arg(program)
            .current_dir(self.cwd.path())
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", self.home.path())
            .env("LANG", "C.UTF-8")
            .envs(secrets.iter().map(|(k, v)| (k, v)))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "program failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

fn secrets_of(case: &Value) -> Vec<(String, String)> {
    case["secrets"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
        .collect()
}

/// `*` matches any run of characters other than `/`.
fn glob(pattern: &str, s: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == s,
        Some((head, tail)) => {
            let Some(rest) = s.strip_prefix(head) else {
                return false;
            };
            (0..=rest.len())
                .take_while(|&i| i == 0 || !rest[..i].contains('/'))
                .filter(|&i| rest.is_char_boundary(i))
                .any(|i| glob(tail, &rest[i..]))
        }
    }
}

/// The file part of a reported path (before an archive member's `!`), relative to its root:
/// `~/x` for `$HOME`, `x` for the working directory.
fn relative(leak: &Leak, d: &Dirs) -> String {
    let p = leak.path.to_string_lossy();
    let file = p.split('!').next().unwrap().to_owned();
    let file = Path::new(&file);
    if let Ok(r) = file.strip_prefix(d.cwd()) {
        return r.to_string_lossy().into_owned();
    }
    if let Ok(r) = file.strip_prefix(d.home()) {
        return format!("~/{}", r.to_string_lossy());
    }
    panic!("leak outside the scope: {}", leak.path.display());
}

/// Runs one case (corpus format) and returns the problems found.
fn check_case(case: &Value) -> Vec<String> {
    let id = case["id"].as_str().unwrap();
    let d = Dirs::new();
    let secrets = secrets_of(case);
    let since = SystemTime::now();
    d.sh(case["program"].as_str().unwrap(), &secrets);
    let redactor = Redactor::new(secrets.clone());
    let report = scan(&d.scope(since, ScanLimits::default()), &redactor);
    let mut problems = Vec::new();
    let shown = format!("{report:?}");
    for (name, value) in &secrets {
        if shown.contains(value.as_str()) {
            problems.push(format!("{id}: the report holds the value of {name}"));
        }
    }
    if report.truncated {
        problems.push(format!("{id}: truncated ({} skipped)", report.skipped));
    }
    for l in &report.leaks {
        // `file` is the file on disk to quarantine (the archive for a member).
        let outer = l
            .path
            .to_string_lossy()
            .split('!')
            .next()
            .unwrap()
            .to_owned();
        if l.file != Path::new(&outer) {
            problems.push(format!(
                "{id}: file {:?} is not the outer part of {:?}",
                l.file, l.path
            ));
        }
        if l.form != "file-name" && std::fs::symlink_metadata(&l.file).is_err() {
            problems.push(format!("{id}: file {:?} does not exist", l.file));
        }
    }
    let found: Vec<(String, String, String)> = report
        .leaks
        .iter()
        .map(|l| (l.variable.clone(), relative(l, &d), l.form.clone()))
        .collect();
    let expected = case["leaks"].as_array().unwrap();
    for e in expected {
        let (var, pat) = (e["secret"].as_str().unwrap(), e["path"].as_str().unwrap());
        if !found.iter().any(|(v, p, _)| v == var && glob(pat, p)) {
            problems.push(format!("{id}: missed {var} in {pat}; found {found:?}"));
        }
        // UTF-16 text of an ASCII value matches the value's own patterns (the redactor treats
        // NUL as noise), so it may be reported as `raw` rather than after decoding.
        if let Some(form) = e["form"].as_str()
            && !found.iter().any(|(v, p, f)| {
                v == var
                    && glob(pat, p)
                    && (f == form || (form.starts_with("utf-16") && f == "raw"))
            })
        {
            problems.push(format!(
                "{id}: {var} in {pat} not as {form}; found {found:?}"
            ));
        }
    }
    for (v, p, form) in &found {
        let wanted = expected.iter().any(|e| {
            e["secret"].as_str() == Some(v.as_str()) && glob(e["path"].as_str().unwrap(), p)
        });
        if !wanted {
            problems.push(format!("{id}: false positive {v} in {p} ({form})"));
        }
    }
    problems
}

fn check_all(cases: &[Value]) {
    let problems: Vec<String> = cases.iter().flat_map(check_case).collect();
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

// ---------------------------------------------------------------------------------------------
// the corpus, and one more case per class

#[test]
fn every_shared_write_side_case_is_reported_by_name_and_path() {
    let cases: Vec<Value> = CASES
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(cases.len() >= 16);
    check_all(&cases);
}

/// A case in the corpus format; each leak is (path, secret, expected form).
fn case(id: &str, secrets: &[(&str, &str)], program: &str, leaks: &[(&str, &str, &str)]) -> Value {
    let s: serde_json::Map<String, Value> = secrets
        .iter()
        .map(|(k, v)| ((*k).to_owned(), json!(v)))
        .collect();
    let l: Vec<Value> = leaks
        .iter()
        .map(|(p, s, f)| json!({"path": p, "secret": s, "form": f}))
        .collect();
    json!({"id": id, "secrets": s, "program": program, "leaks": l})
}

/// Cases written for this module, one per class of the corpus (other shapes, other encodings,
/// other tools), plus the container encodings the corpus names but does not exercise.
fn extra_cases() -> Vec<Value> {
    vec![
        // bundler-inline: webpack DefinePlugin output, precompressed by compression-plugin.
        case(
            "webpack-define-gzip-precompressed",
            &[(
                "REACT_APP_MAPS_KEY",
                "AIzaSyD-9tSrke72PouQMnMX-a7eZSW0jkFMBWY",
            )],
            r#"mkdir -p build/static/js && python3 - <<'PY'
import gzip, json, os
js = 'var e={NODE_ENV:"production",REACT_APP_MAPS_KEY:' + json.dumps(os.environ['REACT_APP_MAPS_KEY']) + '};'
open('build/static/js/main.3be1.js.gz', 'wb').write(gzip.compress(js.encode()))
PY"#,
            &[("build/static/js/main.*.js.gz", "REACT_APP_MAPS_KEY", "gzip")],
        ),
        // container-image-metadata: an OCI layout tar whose layer is a tar.gz holding a .env.
        case(
            "oci-layout-gzip-layer-dotenv",
            &[("STRIPE_SECRET", "rk_live_9Tq2Wm4Xz6Lp8Nb3Vc5Kd7Hf1")],
            r#"python3 - <<'PY'
import gzip, io, os, tarfile
def tar_of(files):
    b = io.BytesIO()
    with tarfile.open(fileobj=b, mode='w') as t:
        for name, data in files:
            ti = tarfile.TarInfo(name); ti.size = len(data); t.addfile(ti, io.BytesIO(data))
    return b.getvalue()
layer = gzip.compress(tar_of([('app/.env', ('STRIPE_SECRET=' + os.environ['STRIPE_SECRET'] + '\n').encode())]))
open('image.tar', 'wb').write(tar_of([('oci-layout', b'{"imageLayoutVersion":"1.0.0"}'), ('blobs/sha256/4f1e', layer)]))
PY"#,
            &[("image.tar", "STRIPE_SECRET", "tar+gzip+tar")],
        ),
        // vcs-config: a token in a url.insteadOf rewrite in the global git config.
        case(
            "git-global-insteadof-token",
            &[("GITLAB_TOKEN", "glpat-xK9mQ2vL7nR4tW8yZ1bC")],
            r#"git config --global url."https://oauth2:${GITLAB_TOKEN}@gitlab.example/".insteadOf https://gitlab.example/"#,
            &[("~/.gitconfig", "GITLAB_TOKEN", "raw")],
        ),
        // credential-cache: docker login without a helper: base64(user:password) at offset 6.
        case(
            "docker-config-auth-base64",
            &[("DOCKER_PAT", "dckr_pat_7Hq2Lm9Xv4Rt8Nw3Kp6Zs1Bc")],
            r#"mkdir -p "$HOME/.docker" && printf '{"auths":{"registry.example":{"auth":"%s"}}}' "$(printf 'deploy:%s' "$DOCKER_PAT" | base64 | tr -d '\n')" > "$HOME/.docker/config.json""#,
            &[("~/.docker/config.json", "DOCKER_PAT", "raw")],
        ),
        // vcs-history: committed, removed, then `git gc`: only a packfile holds it.
        case(
            "git-gc-packfile",
            &[("OPENAI_KEY", "sk-proj-Tz8Qw3Lm5Nx7Vb2Kc9Rd4Fg6Hj1")],
            r#"git init -q . && printf 'OPENAI_KEY=%s\n' "$OPENAI_KEY" > .env && git add .env && git -c user.name=b -c user.email=b@e.invalid commit -qm add && git rm -q .env && git -c user.name=b -c user.email=b@e.invalid commit -qm rm && git gc -q --prune=now && test -z "$(find .git/objects -type f -path '*/objects/[0-9a-f][0-9a-f]/*')""#,
            &[(".git/objects/pack/pack-*.pack", "OPENAI_KEY", "git-pack")],
        ),
        // package-manager-config: yarn berry's .yarnrc.yml, YAML single-quoted. The redactor
        // knows this escape itself, so the file is matched as stored (`raw`).
        case(
            "yarnrc-yml-single-quoted",
            &[("YARN_NPM_AUTH_TOKEN", "it's-Yq7'Zm#Au'th26")],
            r#"python3 -c "import os; t = os.environ['YARN_NPM_AUTH_TOKEN']; open('.yarnrc.yml', 'w').write(\"npmAuthToken: '\" + t.replace(\"'\", \"''\") + \"'\n\")""#,
            &[(".yarnrc.yml", "YARN_NPM_AUTH_TOKEN", "raw")],
        ),
        // iac-state: a terraform plan file is a zip; variable values sit in its members.
        case(
            "terraform-plan-zip",
            &[("TF_VAR_admin_password", "Pg!Adm1n#Secr3t-77")],
            r#"python3 - <<'PY'
import os, zipfile
pw = os.environ['TF_VAR_admin_password'].encode()
with zipfile.ZipFile('tfplan', 'w', zipfile.ZIP_DEFLATED) as z:
    z.writestr('tfplan', b'\x0a\x0e' + b'admin_password' + b'\x12' + bytes([len(pw)]) + pw + b'\x00' * 64)
    z.writestr('tfstate', '{"version": 4}')
PY"#,
            &[("tfplan", "TF_VAR_admin_password", "zip")],
        ),
        // iac-config: a Kubernetes Secret manifest (data is base64 at offset 0).
        case(
            "k8s-secret-manifest",
            &[("DB_URL", "postgres://app:Kq9vL2mX7zR4@db.internal:5432/app")],
            r#"mkdir -p k8s && printf 'apiVersion: v1\nkind: Secret\nmetadata:\n  name: app\ndata:\n  DB_URL: %s\n' "$(printf '%s' "$DB_URL" | base64 -w0)" > k8s/secret.yaml"#,
            &[("k8s/secret.yaml", "DB_URL", "raw")],
        ),
        // test-report: JUnit XML with numeric character references (known to the redactor:
        // matched as stored).
        case(
            "junit-xml-numeric-references",
            &[("CI_DEPLOY_TOKEN", "tok<&>\"9Zq-Lm41Vx")],
            r#"mkdir -p reports && python3 -c "import os; v = os.environ['CI_DEPLOY_TOKEN']; e = ''.join('&#%d;' % ord(c) if c in '<&>\"' else c for c in v); open('reports/junit.xml', 'w').write('<testsuite><system-out>CI_DEPLOY_TOKEN=' + e + '</system-out></testsuite>\n')""#,
            &[("reports/junit.xml", "CI_DEPLOY_TOKEN", "raw")],
        ),
        // notebook-output: os.environ's repr saved in an .ipynb (Python escapes inside JSON).
        case(
            "notebook-environ-repr",
            &[("HF_TOKEN", "hf_it's\"Qx81v'LmZ2\"Nb7Rt")],
            r#"python3 - <<'PY'
import json, os
out = repr({'HF_TOKEN': os.environ['HF_TOKEN']})
nb = {'cells': [{'cell_type': 'code', 'outputs': [{'output_type': 'execute_result', 'data': {'text/plain': [out]}}], 'source': ['os.environ']}], 'nbformat': 4, 'nbformat_minor': 5, 'metadata': {}}
json.dump(nb, open('explore.ipynb', 'w'))
PY"#,
            &[("explore.ipynb", "HF_TOKEN", "backslash-escape")],
        ),
        // network-capture: a PowerShell-style transcript in UTF-16LE with a byte-order mark,
        // the header JSON-escaped.
        case(
            "utf16le-transcript-json",
            &[("GCP_TOKEN", "ya29.a0\"AfH6\\SMBx7Lq2Zr9Vn4Kw")],
            r#"python3 -c "import json, os; t = '\ufeff' + json.dumps({'Authorization': 'Bearer ' + os.environ['GCP_TOKEN']}) + '\r\n'; open('transcript.txt', 'wb').write(t.encode('utf-16-le'))""#,
            &[("transcript.txt", "GCP_TOKEN", "utf-16le")],
        ),
        // crash-report: an offline crash envelope, gzip-compressed JSON.
        case(
            "crash-envelope-gzip-json",
            &[("SENTRY_AUTH", "sntrys_\"Dsn\\Key-77Qx-Lm3")],
            r#"mkdir -p "$HOME/.local/state/app/crashes" && python3 -c "import gzip, json, os; open(os.path.expanduser('~/.local/state/app/crashes/c1.json.gz'), 'wb').write(gzip.compress(json.dumps({'env': dict(os.environ)}).encode()))""#,
            &[(
                "~/.local/state/app/crashes/c1.json.gz",
                "SENTRY_AUTH",
                "gzip",
            )],
        ),
        // debug-log: a URL password percent-encoded in lower case, keeping '/'.
        case(
            "debug-log-percent-lower-keep-slash",
            &[("PROXY_PASSWORD", "p@ss:w0rd/x#y!Z9q")],
            r#"mkdir -p "$HOME/.config/tool/logs" && python3 -c "import os, urllib.parse; q = urllib.parse.quote(os.environ['PROXY_PASSWORD'], safe='/').lower(); open(os.path.expanduser('~/.config/tool/logs/debug.log'), 'w').write('GET http://u:' + q + '@proxy.internal/ 407\n')""#,
            &[("~/.config/tool/logs/debug.log", "PROXY_PASSWORD", "percent")],
        ),
        // repl-history: psql's libedit history encodes spaces as \040.
        case(
            "psql-history-libedit-octal",
            &[("PGPASSWORD", "Pg pass W0rd!9x")],
            r#"printf '_HiStOrY_V2_\nALTER\\040USER\\040app\\040PASSWORD\\040'\''%s'\'';\n' "$(printf '%s' "$PGPASSWORD" | sed 's/ /\\040/g')" > "$HOME/.psql_history""#,
            &[("~/.psql_history", "PGPASSWORD", "backslash-escape")],
        ),
        // scaffold-dotenv: direnv's .envrc with bash $'...' quoting of a multi-line key.
        case(
            "envrc-ansi-c-quoted-multiline",
            &[(
                "SSH_KEY",
                "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQ\nAAAAMwAAAAtzc2gtZWQyNTUxOQAAACBq9Lx2Vm7Rt\n-----END OPENSSH PRIVATE KEY-----",
            )],
            r#"printf 'export SSH_KEY=%q\n' "$SSH_KEY" > .envrc.tmp 2>/dev/null || true; python3 -c "import os; v = os.environ['SSH_KEY']; open('.envrc', 'w').write('export SSH_KEY=\$\'' + v.replace('\\\\', '\\\\\\\\').replace(\"'\", \"\\\\'\").replace('\n', '\\\\n') + '\'\n')"; rm -f .envrc.tmp"#,
            &[(".envrc", "SSH_KEY", "raw")],
        ),
        // A zip under node_modules/.cache (never skipped), matched by magic, not by name.
        case(
            "node-modules-cache-zip-no-extension",
            &[("NPM_TOKEN", "npm_Zp3Lq8RtV2mN7pW4zB9cF1dH6jK0sYvT5eGq")],
            r#"mkdir -p node_modules/.cache/tool && python3 -c "import os, zipfile; z = zipfile.ZipFile('node_modules/.cache/tool/0d1f', 'w', zipfile.ZIP_DEFLATED); z.writestr('npmrc', '//registry.npmjs.org/:_authToken=' + os.environ['NPM_TOKEN']); z.close()""#,
            &[("node_modules/.cache/tool/0d1f", "NPM_TOKEN", "zip")],
        ),
        // Metadata: a file named after the value, and a symlink pointing at it.
        case(
            "value-in-file-name-and-symlink-target",
            &[("SESSION_ID", "sess_Vb7Qx2Lm9Rt4Nw8Kp3Zs")],
            r#"mkdir -p cache && : > "cache/$SESSION_ID.json" && ln -s "/tmp/$SESSION_ID" current"#,
            &[
                ("cache/*.json", "SESSION_ID", "file-name"),
                ("current", "SESSION_ID", "symlink-target"),
            ],
        ),
    ]
}

#[test]
fn one_more_case_per_class_is_reported() {
    check_all(&extra_cases());
}

#[test]
fn a_path_holding_a_value_is_reported_redacted() {
    let d = Dirs::new();
    let secrets = vec![("SID".to_owned(), "sess_Vb7Qx2Lm9Rt4Nw8Kp3Zs".to_owned())];
    let since = SystemTime::now();
    d.sh(r#"mkdir -p c && : > "c/$SID.json""#, &secrets);
    let r = scan(
        &d.scope(since, ScanLimits::default()),
        &Redactor::new(secrets),
    );
    assert_eq!(r.leaks.len(), 1, "{r:?}");
    let leak = &r.leaks[0];
    assert_eq!(leak.form, "file-name");
    assert!(leak.path.ends_with("c/[REDACTED:SID].json"), "{leak:?}");
}

// ---------------------------------------------------------------------------------------------
// clean runs and old files

#[test]
fn a_clean_run_reports_nothing() {
    let d = Dirs::new();
    let secrets = vec![
        (
            "API_KEY".to_owned(),
            "ak_live_Qz8Lm2Vx7Rt4Nb9Kc3Wd".to_owned(),
        ),
        ("DB_PASSWORD".to_owned(), "it's#Secret: 9-Qv".to_owned()),
    ];
    let since = SystemTime::now();
    // Writes files of every format the scanner decodes, with everything but the values.
    d.sh(
        r#"git init -q . && printf 'hello %%40 %%2f \\n &amp; it'"''"'s\n' > notes.txt && git add notes.txt && git -c user.name=b -c user.email=b@e.invalid commit -qm init && git gc -q && mkdir -p dist node_modules/.cache && printf 'const env={"MODE":"production"};\n' > dist/app.js && tar czf dist.tgz dist && python3 - <<'PY'
import gzip, json, os, zipfile
open('report.json', 'w').write(json.dumps({'env': {k: v for k, v in os.environ.items() if k not in ('API_KEY', 'DB_PASSWORD')}}))
with zipfile.ZipFile('node_modules/.cache/x.zip', 'w', zipfile.ZIP_DEFLATED) as z:
    z.writestr('a.txt', 'nothing to see %41%42 \\u0041 &#65;')
open('utf16.txt', 'wb').write('\ufeffplain text, no secret\r\n'.encode('utf-16-le'))
open(os.path.expanduser('~/.bash_history'), 'a').write('ls\ngit status\n')
open('blob.gz', 'wb').write(gzip.compress(os.urandom(4096)))
PY"#,
        &secrets,
    );
    let r = scan(
        &d.scope(since, ScanLimits::default()),
        &Redactor::new(secrets),
    );
    assert!(r.leaks.is_empty(), "{:?}", r.leaks);
    assert!(!r.truncated, "{r:?}");
    assert!(r.files_scanned >= 8, "{r:?}");
}

#[test]
fn a_file_older_than_the_run_is_not_reported() {
    let d = Dirs::new();
    let value = "ghp_OldValueWrittenBeforeTheRun0123456789";
    std::fs::write(d.cwd.path().join("old.txt"), format!("token={value}\n")).unwrap();
    std::fs::write(d.home.path().join(".netrc"), format!("password {value}\n")).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let since = SystemTime::now();
    d.sh("printf 'new\\n' > new.txt", &[]);
    let limits = ScanLimits {
        slack: Duration::from_millis(100),
        ..ScanLimits::default()
    };
    let r = scan(&d.scope(since, limits), &Redactor::new([("OLD", value)]));
    assert!(r.leaks.is_empty(), "{:?}", r.leaks);
    assert_eq!(r.files_scanned, 1, "{r:?}");
    // Touching it (the run rewrote it) makes it count.
    d.sh("printf 'x' >> old.txt", &[]);
    let r = scan(
        &d.scope(
            since,
            ScanLimits {
                slack: Duration::from_millis(100),
                ..ScanLimits::default()
            },
        ),
        &Redactor::new([("OLD", value)]),
    );
    assert_eq!(r.leaks.len(), 1, "{r:?}");
    assert!(r.leaks[0].path.ends_with("old.txt"));
}

#[test]
fn a_backdated_mtime_is_still_changed_by_ctime() {
    let d = Dirs::new();
    let value = "ghp_BackdatedWithTouch_0123456789abcdef";
    let since = SystemTime::now();
    d.sh(
        "printf 'token=%s\\n' \"$V\" > hidden.txt && touch -d '2001-01-01' hidden.txt",
        &[("V".to_owned(), value.to_owned())],
    );
    let r = scan(
        &d.scope(since, ScanLimits::default()),
        &Redactor::new([("V", value)]),
    );
    assert_eq!(r.leaks.len(), 1, "{r:?}");
}

/// The value the decoder and limit tests plant.
pub(super) const V: &str = "kv_test_Q7mZ2xLp9Wv4Rt8Nb3Kc";

/// A redactor that knows [`V`] as `TOKEN`.
pub(super) fn redactor() -> Redactor {
    Redactor::new([("TOKEN", V)])
}

// ---------------------------------------------------------------------------------------------
// walking and limits

#[cfg(unix)]
#[test]
fn symlinks_are_never_followed_and_loops_end() {
    let d = Dirs::new();
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("secret.txt"), format!("{V}\n")).unwrap();
    let since = SystemTime::now();
    let c = d.cwd.path();
    std::fs::create_dir_all(c.join("a/b")).unwrap();
    std::os::unix::fs::symlink("..", c.join("a/b/up")).unwrap();
    std::os::unix::fs::symlink("self", c.join("self")).unwrap();
    std::os::unix::fs::symlink(outside.path(), c.join("out")).unwrap();
    std::os::unix::fs::symlink(outside.path().join("secret.txt"), c.join("link.txt")).unwrap();
    let r = scan(&d.scope(since, ScanLimits::default()), &redactor());
    assert!(r.leaks.is_empty(), "{r:?}");
    assert!(!r.truncated, "{r:?}");
}

#[cfg(unix)]
#[test]
fn fifos_and_sockets_are_not_opened() {
    let d = Dirs::new();
    let since = SystemTime::now();
    d.sh(
        "mkfifo pipe && python3 -c \"import socket; s = socket.socket(socket.AF_UNIX); s.bind('sock')\" && printf 'x' > plain",
        &[],
    );
    let (tx, rx) = std::sync::mpsc::channel();
    let scope = d.scope(since, ScanLimits::default());
    std::thread::spawn(move || {
        let _ = tx.send(scan(&scope, &redactor()));
    });
    let r = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("scan blocked");
    assert_eq!(r.files_scanned, 1, "{r:?}");
}

#[test]
fn deep_nesting_stays_bounded() {
    let d = Dirs::new();
    let since = SystemTime::now();
    let mut p = d.cwd.path().to_path_buf();
    for i in 0..40 {
        p.push(format!("d{i}"));
    }
    std::fs::create_dir_all(&p).unwrap();
    std::fs::write(p.join("leak.txt"), V).unwrap();
    let limits = ScanLimits {
        max_dir_depth: 30,
        ..ScanLimits::default()
    };
    let r = scan(&d.scope(since, limits), &redactor());
    assert!(r.leaks.is_empty(), "{r:?}");
    assert!(r.truncated);
    let r = scan(&d.scope(since, ScanLimits::default()), &redactor());
    assert_eq!(r.leaks.len(), 1, "{r:?}");
}

#[test]
fn limits_on_files_entries_and_time_mark_the_report_truncated() {
    let d = Dirs::new();
    let since = SystemTime::now();
    for i in 0..20 {
        std::fs::write(d.cwd.path().join(format!("f{i}")), "x").unwrap();
    }
    let r = scan(
        &d.scope(
            since,
            ScanLimits {
                max_files: 5,
                ..ScanLimits::default()
            },
        ),
        &redactor(),
    );
    assert_eq!(r.files_scanned, 5);
    assert!(r.truncated && r.skipped == 15, "{r:?}");
    // Each thing left out is counted by why.
    assert_eq!(
        r.left_out.get("over the file count limit"),
        Some(&15),
        "{r:?}"
    );
    let r = scan(
        &d.scope(
            since,
            ScanLimits {
                max_entries: 3,
                ..ScanLimits::default()
            },
        ),
        &redactor(),
    );
    assert!(r.truncated, "{r:?}");
    assert!(
        r.left_out.contains_key("over the entry count limit"),
        "{r:?}"
    );
    let r = scan(
        &d.scope(
            since,
            ScanLimits {
                max_duration: Duration::ZERO,
                ..ScanLimits::default()
            },
        ),
        &redactor(),
    );
    assert!(r.truncated, "{r:?}");
    assert!(r.left_out.contains_key(super::OUT_OF_TIME), "{r:?}");
}

#[test]
fn large_files_are_matched_in_overlapping_windows() {
    let d = Dirs::new();
    let since = SystemTime::now();
    let window = 1u64 << 20;
    // The value straddles the first window boundary, and again near the end.
    let mut data = vec![b'a'; (window as usize) - 10];
    data.extend_from_slice(V.as_bytes());
    data.extend(vec![b'b'; 3 << 20]);
    std::fs::write(d.cwd.path().join("straddle.js"), &data).unwrap();
    let mut tail = vec![b'c'; 5 << 20];
    tail.extend_from_slice(V.as_bytes());
    std::fs::write(d.cwd.path().join("tail.js"), &tail).unwrap();
    let limits = ScanLimits {
        max_file_bytes: window,
        ..ScanLimits::default()
    };
    let r = scan(&d.scope(since, limits), &redactor());
    assert_eq!(r.leaks.len(), 2, "{r:?}");
    assert!(!r.truncated, "{r:?}");
    // The total budget cuts a large file short.
    let r = scan(
        &d.scope(
            since,
            ScanLimits {
                max_file_bytes: window,
                max_total_bytes: 2 * window,
                ..ScanLimits::default()
            },
        ),
        &redactor(),
    );
    assert!(r.truncated, "{r:?}");
}

#[test]
fn large_file_windows_lose_no_byte() {
    // A value the redactor does not fragment: only the whole of it matches.
    let value = "the-quick-brown-fox-jumps-over-the-lazy-dog";
    let r = Redactor::new([("W", value)]);
    let mut cut = value.as_bytes().to_vec();
    cut.remove(20);
    assert!(r.find_leaks(&cut).is_empty(), "the value is fragmented");
    let window = 1usize << 20;
    for at in [window - 20, window - 1, window, 2 * window - 7] {
        let d = Dirs::new();
        let since = SystemTime::now();
        let mut data = vec![b'.'; at];
        data.extend_from_slice(value.as_bytes());
        data.extend(vec![b'.'; 3 * window]);
        std::fs::write(d.cwd.path().join("big.js"), &data).unwrap();
        let limits = ScanLimits {
            max_file_bytes: window as u64,
            ..ScanLimits::default()
        };
        let rep = scan(&d.scope(since, limits), &r);
        assert_eq!(rep.leaks.len(), 1, "value at {at}: {rep:?}");
        assert!(!rep.truncated);
    }
}

#[test]
fn home_scope_takes_top_files_and_dot_dirs_but_not_caches() {
    let d = Dirs::new();
    let since = SystemTime::now();
    let h = d.home.path();
    for p in [
        ".unknown_tool_history",
        ".config/newtool/credentials.json",
        ".local/share/fish/fish_history",
        ".cache/pip/http/x",   // cache: not walked
        "Documents/notes.txt", // not a dot-directory: outside the scope
    ] {
        let f = h.join(p);
        std::fs::create_dir_all(f.parent().unwrap()).unwrap();
        std::fs::write(&f, format!("{V}\n")).unwrap();
    }
    let r = scan(&d.scope(since, ScanLimits::default()), &redactor());
    let mut rel: Vec<String> = r.leaks.iter().map(|l| relative(l, &d)).collect();
    rel.sort();
    assert_eq!(
        rel,
        [
            "~/.config/newtool/credentials.json",
            "~/.local/share/fish/fish_history",
            "~/.unknown_tool_history"
        ]
    );
}

#[test]
fn cwd_inside_home_and_home_inside_cwd_scan_each_file_once() {
    let d = Dirs::new();
    let since = SystemTime::now();
    let proj = d.home.path().join(".work/proj");
    std::fs::create_dir_all(&proj).unwrap();
    std::fs::write(proj.join("a.txt"), V).unwrap();
    let scope = ScanScope {
        cwd: proj.clone(),
        home: Some(d.home.path().to_path_buf()),
        since,
        limits: ScanLimits::default(),
    };
    let r = scan(&scope, &redactor());
    assert_eq!((r.leaks.len(), r.files_scanned), (1, 1), "{r:?}");
    let scope = ScanScope {
        cwd: d.home.path().to_path_buf(),
        home: Some(d.home.path().to_path_buf()),
        since,
        limits: ScanLimits::default(),
    };
    let r = scan(&scope, &redactor());
    assert_eq!((r.leaks.len(), r.files_scanned), (1, 1), "{r:?}");
}

#[test]
fn glob_helper() {
    assert!(glob(".git/objects/*/*", ".git/objects/ab/cdef"));
    assert!(!glob(".git/objects/*/*", ".git/objects/ab/cd/ef"));
    assert!(glob("report.*.json", "report.2026.1.json"));
    assert!(glob(
        "~/.npm/_logs/*-debug-0.log",
        "~/.npm/_logs/2026-debug-0.log"
    ));
}
