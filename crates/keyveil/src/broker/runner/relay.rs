//! Step 4 of the run path: the redacted output relayed, the write-side scan, the run's end
//! recorded.

use std::sync::Arc;

use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::broker::Broker;
use crate::broker::spawn;
use crate::pin;
use keyveil_proto::{Frame, Reply, RunRequest, RunResult, WriteLeak};
use keyveil_vault::WriteLeakAction;

use super::admit::Admitted;
use super::launch::Launched;
use super::wait::InputStamps;

/// Step 4: relays the redacted output to the client until the run ends, scans what it wrote,
/// records its end; the final reply.
pub(super) async fn relay(
    broker: &Arc<Broker>,
    req: &RunRequest,
    a: &Admitted,
    l: Launched,
    sink: &mut spawn::OutputSink,
    gone: &CancellationToken,
) -> Reply {
    let Launched {
        run_id,
        grant_id,
        started,
        timeout,
        redactor,
        scan_redactor,
        cancel,
        started_at,
        tmp_dir,
        stamps,
        watch,
        ..
    } = l;
    send_started(sink, &run_id, &grant_id).await;
    let mut result = spawn::relay(
        started,
        timeout,
        req.output,
        &redactor,
        cancel,
        gone.clone(),
        sink,
    )
    .await;
    result.run_id = run_id.clone();
    result.grant_id = grant_id.clone();
    result
        .write_leaks
        .extend(close_egress(broker, &run_id).await);
    end_if_inputs_changed(broker, &grant_id, &run_id, &stamps);
    let action = scan_writes(
        broker,
        (&req.environment, &grant_id),
        &a.cwd,
        (started_at, watch),
        &scan_redactor,
        &mut result,
    )
    .await;
    if let Some(dir) = tmp_dir {
        let leaks = crate::broker::private_tmp::finish(dir, &scan_redactor, started_at).await;
        result.write_leaks.extend(leaks);
    }
    if action == WriteLeakAction::Fail && !result.write_leaks.is_empty() && result.exit_code == 0 {
        result.exit_code = 1;
    }
    record_end(broker, &run_id, &grant_id, &result);
    Reply::Exit(result)
}

/// Tells the client its run started (a `Started` frame).
async fn send_started(sink: &mut spawn::OutputSink, run_id: &str, grant_id: &str) {
    if let Ok(body) = Frame::json(&Reply::Started {
        run_id: run_id.to_owned(),
        grant_id: grant_id.to_owned(),
    }) {
        let _ = sink.send(body).await;
    }
}

/// Write-side scan: files the run changed under its cwd and the usual credential stores in
/// HOME, for every whole granted value in every form `redactor` knows (the run's
/// [`super::launch::scan_redactor`]: no fragments, nothing guessable; reported by name). Its
/// summary and leaks go into `result`, each leak acted on by the environment's policy, which is
/// returned.
async fn scan_writes(
    broker: &Arc<Broker>,
    (env, grant_id): (&str, &str),
    cwd: &str,
    (since, watch): (
        std::time::SystemTime,
        Result<crate::scan::watch::Ticket, &'static str>,
    ),
    redactor: &crate::redact::Redactor,
    result: &mut RunResult,
) -> WriteLeakAction {
    let (home_dir, action) = {
        let inner = broker.lock();
        let action = inner
            .vault()
            .ok()
            .and_then(|v| v.data().environments.get(env).map(|e| e.policy.write_leaks))
            .unwrap_or_default();
        (inner.child_home(), action)
    };
    let scope = crate::scan::ScanScope {
        cwd: std::path::PathBuf::from(cwd),
        home: home_dir.map(std::path::PathBuf::from),
        since,
        limits: crate::scan::ScanLimits::default(),
    };
    if let Some((report, method)) =
        crate::broker::tree_watches::scan_run(broker, scope, redactor, watch, grant_id).await
    {
        result.write_scan = Some(keyveil_proto::WriteScanSummary {
            files_scanned: report.files_scanned,
            bytes_scanned: report.bytes_scanned,
            truncated: report.truncated,
            elapsed_ms: report.elapsed_ms,
            how: method.describe(),
        });
        for leak in report.leaks {
            let path = leak.path.to_string_lossy().into_owned();
            let act = match action {
                WriteLeakAction::Report => "reported",
                WriteLeakAction::Quarantine => quarantine(&leak.file),
                WriteLeakAction::Fail => "failed",
            };
            result.write_leaks.push(WriteLeak {
                variable: leak.variable,
                path,
                form: leak.form,
                action: act.to_owned(),
            });
        }
    }
    action
}

/// The run's end recorded: out of the live runs, into the audit (`run_end`).
fn record_end(broker: &Broker, run_id: &str, grant_id: &str, result: &RunResult) {
    let mut inner = broker.lock();
    inner.runs_mut().remove(run_id);
    inner.audit(
        "run_end",
        json!({
            "run_id": run_id,
            "grant_id": grant_id,
            "exit_code": result.exit_code,
            "signal": result.signal,
            "redactions": result.redactions,
            "timed_out": result.timed_out,
            "revoked": result.revoked,
            "truncated": result.truncated,
            "duration_ms": result.duration_ms,
            // `watched`, or `walked: WHY` (`tree_watches.rs`).
            "write_scan": result.write_scan.as_ref().map(|w| w.how.as_str()),
            // By variable and form, never the path: the audit is readable by the agent, and a path
            // would tell which of the files it planted holds a value (the requester sees paths).
            "write_leaks": result.write_leaks.iter().map(|l| json!({"variable": l.variable, "form": l.form, "action": l.action})).collect::<Vec<_>>(),
        }),
    );
}

/// Closes a run's egress proxy (every session at once) and returns what it blocked, reported
/// like write-side leaks (variable, destination, form `egress`, action `blocked`).
/// Waits until the proxy's audit entries are written (see `RunEgress::close`): call it before
/// the run's end entry.
pub(crate) async fn close_egress(broker: &Broker, run_id: &str) -> Vec<keyveil_proto::WriteLeak> {
    let e = broker.lock().runs_mut().take_egress(run_id);
    match e {
        Some(e) => {
            e.close().await;
            e.take_leaks()
        }
        None => Vec::new(),
    }
}

/// "To the end": what a run executed is checked once more when it ends. The directories it
/// finds programs in by name (agent-writable `PATH` entries, version-manager hooks, toolchains;
/// `path_dirs.rs`) are re-fingerprinted, and every file input (the script, the task runner's
/// file, the tool's config) is compared by identity (device, inode, ctime: one `stat` each) with
/// what it was when the run was checked. A file written during the run, even if put back as it
/// was, or a program planted in a directory, ends the grant: the human is asked again.
fn end_if_inputs_changed(broker: &Arc<Broker>, grant_id: &str, run_id: &str, stamps: &InputStamps) {
    let (files, dirs, _) = stamps;
    let why = match pin::changed_since(files) {
        Some(path) => Some(format!(
            "inputs changed during the run: {path} was written while it ran"
        )),
        None => pin::check_inputs(dirs)
            .err()
            .map(|e| format!("{e} (during the run)")),
    };
    if let Some(why) = why {
        let mut inner = broker.lock();
        inner.revoke(grant_id, "pin mismatch");
        inner.audit(
            "pin_mismatch",
            json!({"grant_id": grant_id, "run_id": run_id, "why": why}),
        );
        drop(inner);
        broker.notify();
    }
}

/// Moves a leaking file aside (`NAME.keyveil-quarantine`, mode 0600); archive members quarantine
/// their archive. Returns the action word.
fn quarantine(path: &std::path::Path) -> &'static str {
    let s = path.to_string_lossy();
    let file = std::path::PathBuf::from(s.split('!').next().unwrap_or(&s));
    let mut target = file.clone().into_os_string();
    target.push(".keyveil-quarantine");
    match std::fs::rename(&file, &target) {
        Ok(()) => {
            let _ = crate::paths::set_mode(std::path::Path::new(&target), 0o600);
            "quarantined"
        }
        Err(_) => "reported",
    }
}
