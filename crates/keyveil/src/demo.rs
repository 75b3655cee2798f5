//! `keyveil demo`: the main job, end to end, on a throwaway home, with a printed transcript.
//!
//! The demo plays both parts. As the **human** it creates a vault with a random passphrase,
//! an environment `demo` and a random `API_TOKEN` (generated here and stored with `VarSet`, so
//! that the demo can afterwards prove the value never crossed the MCP channel), and it approves
//! the agent's request with the passphrase. As the **agent** it starts `keyveil mcp` as a child
//! process with only `HOME`, `PATH` and `KEYVEIL_HOME` in its environment and drives it with a
//! built-in MCP client (rmcp, the 2025 `initialize` handshake that Codex uses): it lists the
//! environments, asks to run a command that prints a hash of `$API_TOKEN` and the token itself,
//! gets `pending_approval`, and after the approval runs it again and gets the redacted output.
//!
//! Every byte on the MCP stdio in both directions, and the server's stderr, is recorded; the
//! last check searches them for the value, its hex and its base64 (standard and URL-safe, at
//! all three byte offsets). The broker is stopped and the home deleted at the end. The exit
//! code is 0 only if every check passed.

use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use rmcp::ServiceExt;
use rmcp::model::{
    CallToolRequestParams, CallToolResult, ClientCapabilities, ClientConfig, Implementation,
    ProtocolVersion,
};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use zeroize::Zeroizing;

use crate::client::{self, Connection};
use crate::mcp::tools::{ListEnvironmentsOutput, RunOutput, RunStatus};
use crate::output::say;
use crate::paths::Paths;
use keyveil_proto::op;
use keyveil_proto::{Passphrase, Reply, Request};

/// Length of the demo's random `API_TOKEN`.
const VALUE_LENGTH: usize = 40;
/// The command the agent asks to run: a hash of the token (so the demo can check that the
/// command received the real value), then the token itself (so redaction has work to do).
const DEMO_SCRIPT: &str = "echo \"token sha256: $(printf %s \"$API_TOKEN\" | sha256sum | cut -c1-16)\"; echo \"token: $API_TOKEN\"";

/// Runs the demo; exit code 0 only if every check passed.
pub(crate) fn main() -> Result<i32> {
    crate::logging::init_cli();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(run())
}

async fn run() -> Result<i32> {
    let home = make_home()?;
    let paths = Paths { home: home.clone() };
    say("keyveil demo: an agent runs a command with a secret it never sees");
    say(format!("throwaway home: {}", home.display()));
    say("");
    let outcome = flow(&paths).await;
    // Tear down whatever happened: stop the broker (and its runs), delete the home.
    stop_broker(&paths).await;
    let removed = std::fs::remove_dir_all(&home);
    match (&outcome, removed) {
        (_, Ok(())) => say(format!(
            "cleaned up: broker stopped, {} deleted",
            home.display()
        )),
        (_, Err(e)) => say(format!("warning: could not delete {}: {e}", home.display())),
    }
    match outcome {
        Ok(true) => {
            say("demo passed: the agent used API_TOKEN without ever seeing it");
            Ok(0)
        }
        Ok(false) => {
            say("demo FAILED: see the checks above");
            Ok(1)
        }
        Err(e) => Err(e.context("the demo could not finish")),
    }
}

/// The whole exchange; `Ok(passed)`.
async fn flow(paths: &Paths) -> Result<bool> {
    // ---- the human sets up
    let passphrase = Passphrase::new(random_alnum(24)?.to_string());
    let value = random_alnum(VALUE_LENGTH)?;
    human(
        "keyveil init",
        "vault created; the passphrase is random and only the demo (the human) knows it",
    );
    crate::authorize::init(
        paths,
        passphrase.clone(),
        Some(19456),
        std::env::var("PATH").ok(),
        None,
    )
    .await?;
    human("keyveil env create demo", "");
    ok(client::call(
        paths,
        &Request::EnvCreate(op::EnvCreate {
            name: "demo".into(),
            description: "keyveil demo".into(),
        }),
    )
    .await?)?;
    human(
        "keyveil set demo API_TOKEN",
        &format!("a random {VALUE_LENGTH}-character value, typed by the human"),
    );
    ok(client::call(
        paths,
        &Request::VarSet(op::VarSet {
            environment: "demo".into(),
            name: "API_TOKEN".into(),
            value: Some(Passphrase::new(value.to_string())),
            sealed_value: None,
            factor: None,
        }),
    )
    .await?)?;
    let expected_sha = sha_prefix(value.as_bytes());

    // ---- the agent starts the MCP server
    let exe = std::env::current_exe().context("cannot find keyveil's own executable")?;
    let mut cmd = tokio::process::Command::new(exe);
    cmd.arg("mcp")
        .env_clear()
        .env(
            "HOME",
            std::env::var_os("HOME").unwrap_or_else(|| paths.home.clone().into_os_string()),
        )
        .env(
            "PATH",
            std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into()),
        )
        .env("KEYVEIL_HOME", &paths.home)
        .current_dir(&paths.home)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn().context("cannot start `keyveil mcp`")?;
    agent_says("starts `keyveil mcp` with only HOME, PATH and KEYVEIL_HOME in its environment");
    let tape = Tape::default();
    let stdin = child
        .stdin
        .take()
        .ok_or_else(|| anyhow!("no stdin pipe to the server"))?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| anyhow!("no stdout pipe from the server"))?;
    let mut stderr = child
        .stderr
        .take()
        .ok_or_else(|| anyhow!("no stderr pipe from the server"))?;
    let err_tape = Tape::default();
    let err_tape2 = err_tape.clone();
    let err_task = tokio::spawn(async move {
        let mut buf = [0u8; 4096];
        while let Ok(n) = stderr.read(&mut buf).await {
            if n == 0 {
                break;
            }
            err_tape2.record(buf.get(..n).unwrap_or_default());
        }
    });
    let transport = (
        TapeReader {
            inner: stdout,
            tape: tape.clone(),
        },
        TapeWriter {
            inner: stdin,
            tape: tape.clone(),
        },
    );

    let config = ClientConfig::new(
        ClientCapabilities::default(),
        Implementation::new("keyveil-demo-agent", env!("CARGO_PKG_VERSION")),
    )
    .with_protocol_version(ProtocolVersion::V_2025_06_18);
    let service = tokio::time::timeout(Duration::from_secs(20), config.serve(transport))
        .await
        .map_err(|_| anyhow!("the MCP server did not answer `initialize` within 20 s"))?
        .context("the MCP handshake failed")?;
    let (server, version) = service
        .peer_info()
        .map(|i| {
            (
                i.server_info
                    .as_ref()
                    .map(|s| format!("{} {}", s.name, s.version))
                    .unwrap_or_else(|| "an unnamed server".into()),
                i.protocol_version.to_string(),
            )
        })
        .unwrap_or_default();
    let tools = service
        .list_all_tools()
        .await
        .context("tools/list failed")?;
    agent_says("initialize, tools/list");
    agent_sees(&format!(
        "{server}, protocol {version}, {} tools: {}",
        tools.len(),
        tools
            .iter()
            .map(|t| t.name.as_ref())
            .collect::<Vec<_>>()
            .join(", ")
    ));

    let mut checks = Checks::default();

    // ---- list_environments
    agent_says("list_environments {}");
    let r = call(&service, "list_environments", json!({})).await?;
    agent_sees(&text_of(&r));
    let lists_token = structured::<ListEnvironmentsOutput>(&r).is_some_and(|o| {
        o.environments
            .iter()
            .any(|e| e.name == "demo" && e.variables.iter().any(|v| v == "API_TOKEN"))
    });
    checks.check(
        lists_token,
        "the agent sees the environment demo and the name API_TOKEN",
    );

    // ---- run: pending
    let args = json!({
        "environment": "demo",
        "command": ["sh", "-c", DEMO_SCRIPT],
        "reason": "show that the token works",
        "wait_seconds": 1,
    });
    agent_says(&format!("run {args}"));
    let r = call(&service, "run", args.clone()).await?;
    agent_sees(&text_of(&r));
    let s = structured::<RunOutput>(&r).unwrap_or_default();
    let request_id = s.request_id;
    let pending = s.status == RunStatus::PendingApproval && request_id.is_some();
    checks.check(
        pending,
        "without a grant the command does not run: pending_approval",
    );
    let Some(request_id) = request_id else {
        return finish(service, child, err_task, &tape, &err_tape, &value, checks).await;
    };

    // ---- the human approves
    // As `keyveil approve` does: the card the human saw, bound into the signed approval.
    let listing =
        client::typed_data::<op::Requests>(ok(client::call(paths, &op::Requests.into()).await?)?)?;
    let card = listing
        .requests
        .iter()
        .find(|r| r.id == request_id)
        .map(crate::factor_proof::request_card_digest)
        .unwrap_or_default();
    let approved = client::typed_data::<op::Approve>(ok(crate::authorize::call(
        paths,
        &crate::authorize::FactorInput::Passphrase(passphrase.clone()),
        Request::Approve(op::Approve {
            request_id,
            card,
            factor: None,
            confirm: false,
            ttl_seconds: None,
            uses: None,
            any_command: false,
            prefix: false,
            subdirs: false,
        }),
    )
    .await?)?)?;
    human(
        &format!("keyveil approve {request_id}"),
        &format!(
            "approved with the vault passphrase: grant {} for this one command, one use",
            approved.grant_id
        ),
    );

    // ---- run again: completed
    agent_says("run (the same arguments)");
    let started = Instant::now();
    let r = call(&service, "run", args).await?;
    let round_trip = started.elapsed();
    let s = structured::<RunOutput>(&r).unwrap_or_default();
    let completed = s.status == RunStatus::Completed && !r.is_error.unwrap_or(false);
    agent_sees(text_of(&r).lines().next().unwrap_or("(no text)"));
    let stdout = s.stdout.as_deref().unwrap_or("");
    for line in stdout.lines() {
        say(format!("           | {line}"));
    }
    checks.check(
        completed && s.exit_code == Some(0),
        &format!(
            "after approval the command ran (exit code 0; MCP round trip {} ms)",
            round_trip.as_millis()
        ),
    );
    checks.check(
        stdout.contains(&format!("token sha256: {expected_sha}")),
        &format!(
            "the command received the real value: the sha256 prefix it printed ({expected_sha}) is the human's"
        ),
    );
    checks.check(
        stdout.contains("token: [REDACTED:API_TOKEN]"),
        "the agent saw [REDACTED:API_TOKEN] where the command printed the value",
    );

    finish(service, child, err_task, &tape, &err_tape, &value, checks).await
}

/// Ends the MCP session, then runs the transcript check.
async fn finish(
    service: rmcp::service::RunningService<rmcp::RoleClient, ClientConfig>,
    mut child: tokio::process::Child,
    err_task: tokio::task::JoinHandle<()>,
    tape: &Tape,
    err_tape: &Tape,
    value: &str,
    mut checks: Checks,
) -> Result<bool> {
    let _ = service.cancel().await;
    match tokio::time::timeout(Duration::from_secs(5), child.wait()).await {
        Ok(_) => {}
        Err(_) => {
            let _ = child.kill().await;
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), err_task).await;
    let stream = tape.take();
    let errs = err_tape.take();
    let found: Vec<&'static str> = forms(value.as_bytes())
        .iter()
        .filter(|(_, needle)| contains(&stream, needle) || contains(&errs, needle))
        .map(|(name, _)| *name)
        .collect();
    checks.check(
        found.is_empty() && !stream.is_empty(),
        &if found.is_empty() {
            format!(
                "the value is nowhere in the MCP byte stream ({} bytes, both directions) nor the server's stderr ({} bytes): searched raw, hex, base64 standard and URL-safe at 3 offsets",
                stream.len(),
                errs.len()
            )
        } else {
            format!("the value crossed the MCP channel as: {}", found.join(", "))
        },
    );
    say("");
    say("checks");
    for line in &checks.lines {
        say(format!("  {line}"));
    }
    say("");
    Ok(checks.passed)
}

// ---------------------------------------------------------------------------------------------
// Transcript lines

fn human(command: &str, note: &str) {
    if note.is_empty() {
        say(format!("  human  $ {command}"));
    } else {
        say(format!("  human  $ {command:<28} # {note}"));
    }
}

fn agent_says(what: &str) {
    say(format!(
        "  agent  -> {}",
        keyveil_proto::display::clip(what, 400)
    ));
}

fn agent_sees(what: &str) {
    let mut lines = what.lines();
    if let Some(first) = lines.next() {
        say(format!("  agent  <- {first}"));
    }
    for l in lines {
        say(format!("           {l}"));
    }
}

#[derive(Default)]
struct Checks {
    lines: Vec<String>,
    passed: bool,
    any: bool,
}

impl Checks {
    fn check(&mut self, ok: bool, what: &str) {
        if !self.any {
            self.passed = true;
            self.any = true;
        }
        self.passed &= ok;
        self.lines
            .push(format!("{} {what}", if ok { "ok  " } else { "FAIL" }));
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers

async fn call(
    service: &rmcp::service::RunningService<rmcp::RoleClient, ClientConfig>,
    tool: &'static str,
    args: Value,
) -> Result<CallToolResult> {
    let Value::Object(map) = args else {
        bail!("tool arguments must be an object");
    };
    let params = CallToolRequestParams::new(tool).with_arguments(map);
    tokio::time::timeout(Duration::from_secs(90), service.call_tool(params))
        .await
        .map_err(|_| anyhow!("{tool} did not answer within 90 s"))?
        .with_context(|| format!("the {tool} call failed"))
}

fn text_of(r: &CallToolResult) -> String {
    let t: Vec<String> = r
        .content
        .iter()
        .filter_map(|c| c.as_text().map(|t| t.text.clone()))
        .collect();
    let t = t.join("\n");
    if r.is_error == Some(true) {
        format!("error: {t}")
    } else {
        t
    }
}

/// A tool's structured result as the tool's result type (`mcp/tools.rs`).
fn structured<T: serde::de::DeserializeOwned>(r: &CallToolResult) -> Option<T> {
    serde_json::from_value(r.structured_content.clone()?).ok()
}

fn ok(reply: Reply) -> Result<Value> {
    crate::output::expect_ok(reply)
}

/// A fresh 0700 directory under /tmp with a short name (the socket path must stay short).
fn make_home() -> Result<PathBuf> {
    for _ in 0..8 {
        let mut b = [0u8; 4];
        getrandom::fill(&mut b).map_err(|e| anyhow!("the OS random source failed: {e}"))?;
        let p = Path::new("/tmp").join(format!("kvdemo-{}", hex::encode(b)));
        match std::fs::create_dir(&p) {
            Ok(()) => {
                crate::paths::set_mode(&p, 0o700)?;
                return Ok(p);
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e).with_context(|| format!("cannot create {}", p.display())),
        }
    }
    bail!("cannot find a free directory name under /tmp")
}

/// Asks the demo's broker to stop, then waits (briefly) until its socket no longer answers.
async fn stop_broker(paths: &Paths) {
    if let Some(mut c) = Connection::open_existing(paths).await
        && c.send(&Request::Shutdown).await.is_ok()
    {
        let _ = tokio::time::timeout(Duration::from_secs(5), c.final_reply()).await;
    }
    for _ in 0..50 {
        if Connection::open_existing(paths).await.is_none() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A uniformly random `A-Za-z0-9` string (rejection sampling).
fn random_alnum(len: usize) -> Result<Zeroizing<String>> {
    const ALPHABET: &[u8; 62] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut out = Zeroizing::new(String::with_capacity(len));
    let mut buf = Zeroizing::new([0u8; 64]);
    while out.len() < len {
        getrandom::fill(buf.as_mut()).map_err(|e| anyhow!("the OS random source failed: {e}"))?;
        for &b in buf.iter() {
            // 248 = 4 * 62: bytes above it would bias the first letters.
            if b < 248
                && out.len() < len
                && let Some(&c) = ALPHABET.get(usize::from(b) % 62)
            {
                out.push(char::from(c));
            }
        }
    }
    Ok(out)
}

/// The first 16 hex digits of the SHA-256 of `data`, as `sha256sum | cut -c1-16` prints them.
fn sha_prefix(data: &[u8]) -> String {
    let mut h = hex::encode(Sha256::digest(data));
    h.truncate(16);
    h
}

/// The forms of a value searched for in the transcript: raw, hex (both cases), and base64
/// (standard and URL-safe) at each of the three byte offsets the value can start at in a
/// longer encoded stream (only the characters that depend on the value alone).
fn forms(value: &[u8]) -> Vec<(&'static str, Vec<u8>)> {
    const STD: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    const URL: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = vec![
        ("raw", value.to_vec()),
        ("hex", hex::encode(value).into_bytes()),
        ("HEX", hex::encode_upper(value).into_bytes()),
    ];
    for (name, alphabet) in [("base64", STD), ("base64url", URL)] {
        for offset in 0..3usize {
            let mut data = vec![0u8; offset];
            data.extend_from_slice(value);
            let enc = base64_unpadded(&data, alphabet);
            let start = if offset > 0 { 4 } else { 0 };
            let end = data.len() / 3 * 4;
            if let Some(core) = enc.get(start..end)
                && core.len() >= 8
            {
                out.push((name, core.to_vec()));
            }
        }
    }
    out
}

fn base64_unpadded(data: &[u8], alphabet: &[u8; 64]) -> Vec<u8> {
    let sym = |i: u32| alphabet.get((i & 63) as usize).copied().unwrap_or(b'=');
    let mut out = Vec::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = |i: usize| u32::from(chunk.get(i).copied().unwrap_or(0));
        let n = (b(0) << 16) | (b(1) << 8) | b(2);
        out.push(sym(n >> 18));
        out.push(sym(n >> 12));
        if chunk.len() > 1 {
            out.push(sym(n >> 6));
        }
        if chunk.len() > 2 {
            out.push(sym(n));
        }
    }
    out
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}

/// Bytes recorded from one or both directions of a stream.
#[derive(Clone, Default)]
struct Tape(Arc<Mutex<Vec<u8>>>);

impl Tape {
    fn record(&self, bytes: &[u8]) {
        let mut g = self.0.lock().unwrap_or_else(|p| p.into_inner());
        g.extend_from_slice(bytes);
    }
    fn take(&self) -> Vec<u8> {
        let mut g = self.0.lock().unwrap_or_else(|p| p.into_inner());
        std::mem::take(&mut *g)
    }
}

/// Reads from `inner`, recording what was read.
struct TapeReader<R> {
    inner: R,
    tape: Tape,
}

impl<R: AsyncRead + Unpin> AsyncRead for TapeReader<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = &r {
            self.tape
                .record(buf.filled().get(before..).unwrap_or_default());
        }
        r
    }
}

/// Writes to `inner`, recording what was written.
struct TapeWriter<W> {
    inner: W,
    tape: Tape,
}

impl<W: AsyncWrite + Unpin> AsyncWrite for TapeWriter<W> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &r {
            self.tape.record(buf.get(..*n).unwrap_or_default());
        }
        r
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;

    #[test]
    fn base64_matches_known_vectors() {
        const STD: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        assert_eq!(base64_unpadded(b"foobar", STD), b"Zm9vYmFy");
        assert_eq!(base64_unpadded(b"fooba", STD), b"Zm9vYmE");
        assert_eq!(base64_unpadded(b"\xfb\xff", STD), b"+/8");
    }

    #[test]
    fn forms_find_the_value_at_every_offset_inside_a_longer_encoding() {
        const STD: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let value = b"Zq8vN3kL0pXr7TbY2mWc9sHd4gFj6aEu1oIiRnQe";
        let f = forms(value);
        for prefix in ["", "a", "ab", "abc", "abcd"] {
            let mut data = prefix.as_bytes().to_vec();
            data.extend_from_slice(value);
            data.extend_from_slice(b"tail!");
            let enc = base64_unpadded(&data, STD);
            assert!(
                f.iter()
                    .any(|(n, needle)| *n == "base64" && contains(&enc, needle)),
                "prefix {prefix:?}"
            );
        }
        assert!(contains(
            hex::encode(value).as_bytes(),
            &f.iter().find(|(n, _)| *n == "hex").unwrap().1
        ));
    }

    #[test]
    fn random_values_are_alphanumeric_and_sha_prefixes_match_sha256sum() {
        let v = random_alnum(40).unwrap();
        assert_eq!(v.len(), 40);
        assert!(v.chars().all(|c| c.is_ascii_alphanumeric()));
        // printf %s abc | sha256sum
        assert_eq!(sha_prefix(b"abc"), "ba7816bf8f01cfea");
    }
}
