//! `keyveil ci scan` and `keyveil ci finish` in the broker: artifacts scanned for every value
//! the job used; the broker ended with its audit chain written out and its head signed.

use std::io::Read;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use keyveil_proto::ErrorCode;
use keyveil_proto::op;
use serde_json::json;

use crate::broker::Broker;
use crate::broker::state::{OpError, OpResult, RunsStopped};
use crate::ci_sign::{CHAIN_FILE, HEAD_FILE};

/// The largest audit log `ci finish` copies (a CI job's log is a few hundred KiB at most).
const MAX_LOG_BYTES: u64 = 256 << 20;

/// The refusal of a CI operation by a broker not in CI mode.
fn not_ci() -> OpError {
    OpError::new(
        ErrorCode::Usage,
        "this broker does not run in CI mode; `keyveil ci scan` and `ci finish` are for a broker `keyveil ci start` started",
    )
    .hint("run `keyveil ci start` first, in a fresh KEYVEIL_HOME, with the same KEYVEIL_HOME in every step")
}

/// A usage error about a path a client gave.
fn bad_path(p: &Path) -> OpError {
    OpError::new(
        ErrorCode::Usage,
        format!("{} is not an absolute path", p.display()),
    )
    .hint("give absolute paths (the CLI makes them absolute)")
}

/// Scans `paths` (whole trees: every file, whatever its age) for every value the job's runs
/// were given and every value the vault holds, in every encoding the write-side scan knows.
/// The reply names variables and paths only.
///
/// Errors: not a CI broker; a relative path.
pub(crate) async fn scan(broker: &Arc<Broker>, o: op::CiScan) -> OpResult<op::CiScanned> {
    let Some(session) = broker.ci.get() else {
        return Err(not_ci());
    };
    if let Some(p) = o.paths.iter().find(|p| !p.is_absolute()) {
        return Err(bad_path(p));
    }
    let mut values = session
        .used
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    {
        let inner = broker.lock();
        let v = inner.vault()?;
        for e in v.data().environments.values() {
            for (name, var) in &e.variables {
                if let Some(sealed) = &var.value
                    && let Ok(open) = sealed.open()
                    && !values.iter().any(|(n, u)| n == name && *u == open)
                {
                    values.push((name.clone(), open));
                }
            }
        }
    }
    let names: Vec<String> = values.iter().map(|(n, _)| n.clone()).collect();
    let redactor = crate::broker::runner::scan_redactor(&names, &values);
    let paths = o.paths.clone();
    let reports = tokio::task::spawn_blocking(move || {
        paths
            .iter()
            .map(|p| {
                crate::scan::scan(
                    &crate::scan::ScanScope {
                        cwd: p.clone(),
                        home: None,
                        since: std::time::UNIX_EPOCH,
                        limits: crate::scan::ScanLimits {
                            slack: Duration::ZERO,
                            ..Default::default()
                        },
                    },
                    &redactor,
                )
            })
            .collect::<Vec<_>>()
    })
    .await
    .map_err(|e| OpError::new(ErrorCode::Failed, format!("the scan stopped: {e}")))?;
    let mut out = op::CiScanned {
        findings: Vec::new(),
        files_scanned: 0,
        truncated: false,
        signature: None,
    };
    for r in reports {
        out.files_scanned += r.files_scanned;
        out.truncated |= r.truncated;
        out.findings
            .extend(r.leaks.into_iter().map(|l| op::CiFinding {
                variable: l.variable,
                path: l.path.to_string_lossy().into_owned(),
                form: l.form,
            }));
    }
    broker.lock().audit(
        "ci_scan",
        json!({
            "paths": o.paths.len(),
            "files_scanned": out.files_scanned,
            "found": out.findings.len(),
            "variables": out.findings.iter().map(|f| f.variable.clone()).collect::<std::collections::BTreeSet<_>>(),
            "truncated": out.truncated,
        }),
    );
    if let Some(nonce) = &o.nonce {
        out.signature = Some(session.signer.sign_scan(nonce, &out));
    }
    Ok(out)
}

/// Ends the CI broker: every run stopped, every grant, lease and OpenBao token revoked (their
/// entries in the chain), a `ci_finish` entry, the log read once and checked under its MAC key
/// against the writer's own last entry (an agent's edit of the file during the job fails here),
/// its head signed, the chain and the signed head written to `o.out`; then the vault leaves
/// memory and the broker stops.
///
/// Errors: not a CI broker; a relative path; the log does not verify; the folder cannot be
/// written. The broker keeps running after an error, so the step can be retried.
pub(crate) async fn finish(broker: &Arc<Broker>, o: op::CiFinish) -> OpResult<op::CiFinished> {
    let Some(session) = broker.ci.get() else {
        return Err(not_ci());
    };
    if !o.out.is_absolute() {
        return Err(bad_path(&o.out));
    }
    let stopped = RunsStopped::wait(crate::broker::ops::stop_everything(broker, "ci finish")).await;
    crate::broker::leases::settle(broker, Duration::from_secs(10)).await;
    let (tokens_revoked, tokens_failed) =
        crate::broker::leases::close_logins(broker, Duration::from_secs(5)).await;
    let (bytes, key, checkpoint) = {
        let mut inner = broker.lock();
        inner.must_audit(
            "ci_finish",
            json!({
                "runs_stopped": stopped.reply().runs_stopped,
                "login_tokens_revoked": tokens_revoked,
                "login_tokens_not_revoked": tokens_failed,
            }),
        )?;
        let key = inner.vault()?.audit_key();
        let checkpoint = inner.audit_log().checkpoint_to_seal();
        (read_log(&broker.paths.audit())?, key, checkpoint)
    };
    let head = keyveil_vault::audit::chain_head(&bytes, Some(&key)).map_err(|e| {
        OpError::new(
            ErrorCode::Failed,
            format!("the audit log does not verify ({e}): it was edited during the job; nothing was signed"),
        )
        .hint("the job's log cannot be vouched for: treat the job as compromised")
    })?;
    if checkpoint.is_none_or(|c| c.seq != head.entries || Some(&c.mac) != head.last_mac.as_ref()) {
        return Err(OpError::new(
            ErrorCode::Failed,
            "the audit log on disk does not end with the last entry this broker wrote (cut, replaced or appended to during the job); nothing was signed",
        )
        .hint("the job's log cannot be vouched for: treat the job as compromised"));
    }
    let signed = session.signer.sign_head(head.entries, &head.sha256);
    write_out(&o.out, &bytes, &signed)?;
    crate::broker::ops::lock_vault(broker).await;
    broker.shutdown.cancel();
    Ok(op::CiFinished {
        out: o.out,
        entries: head.entries,
        head_sha256: head.sha256,
        public_key: signed.public_key,
    })
}

/// The audit log's bytes, read once (at most [`MAX_LOG_BYTES`]).
fn read_log(path: &Path) -> OpResult<Vec<u8>> {
    let cant = |e: std::io::Error| {
        OpError::new(
            ErrorCode::Failed,
            format!("cannot read the audit log {}: {e}", path.display()),
        )
        .hint("nothing was signed; check KEYVEIL_HOME")
    };
    let f = std::fs::File::open(path).map_err(cant)?;
    let mut bytes = Vec::new();
    f.take(MAX_LOG_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(cant)?;
    if bytes.len() as u64 > MAX_LOG_BYTES {
        return Err(OpError::new(
            ErrorCode::Failed,
            format!("the audit log is over {MAX_LOG_BYTES} bytes; nothing was signed"),
        )
        .hint("the job's log cannot be vouched for"));
    }
    Ok(bytes)
}

/// Writes the chain and its signed head into `out` (created, mode 0700; files 0644: an
/// artifact is meant to be read).
fn write_out(out: &Path, chain: &[u8], head: &crate::ci_sign::Head) -> OpResult<()> {
    let cant = |e: std::io::Error| {
        OpError::new(
            ErrorCode::Failed,
            format!("cannot write to {}: {e}", out.display()),
        )
        .hint("choose a folder the job can write (for example under $RUNNER_TEMP), and run `keyveil ci finish` again")
    };
    std::fs::create_dir_all(out).map_err(cant)?;
    let text = serde_json::to_string_pretty(head)
        .map_err(|e| OpError::new(ErrorCode::Failed, format!("cannot encode the head: {e}")))?;
    std::fs::write(out.join(CHAIN_FILE), chain).map_err(cant)?;
    std::fs::write(out.join(HEAD_FILE), format!("{text}\n")).map_err(cant)?;
    Ok(())
}
