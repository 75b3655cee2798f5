//! `keyveil audit` and `keyveil audit verify`.
#![allow(clippy::indexing_slicing)]

use super::*;
use keyveil_proto::op;

pub(crate) async fn audit(paths: &Paths, a: AuditArgs) -> Result<i32> {
    if let Some(AuditAction::Verify) = a.action {
        let d = call_untyped(paths, Request::AuditVerify).await?;
        return Ok(audit_verified(&d));
    }
    let mut last_seq = 0u64;
    loop {
        let d = call_untyped(
            paths,
            Request::Audit(op::Audit {
                limit: Some(a.limit),
            }),
        )
        .await?;
        for e in d["entries"].as_array().cloned().unwrap_or_default() {
            let seq = e["seq"].as_u64().unwrap_or(0);
            if seq <= last_seq {
                continue;
            }
            last_seq = seq;
            if a.json {
                say(e.to_string());
            } else {
                say(crate::card::audit_line(&e));
            }
        }
        if !a.follow {
            return Ok(0);
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
}

/// Prints the result of `audit verify` and returns the exit code: 0 when the chain verifies
/// and no event is missing from it; [`AUDIT_GAP_EXIT`] when the chain verifies but an
/// `audit.gap` entry (or a gap still in the broker's memory) counts **lost** entries, events
/// that happened and are not in the log. Gaps made only of refused actions (nothing happened)
/// are printed as warnings with exit 0. A chain that does not verify is an error reply: exit 1.
pub(crate) fn audit_verified(d: &Value) -> i32 {
    let gaps = d["gaps"].as_array().cloned().unwrap_or_default();
    let pending = d.get("pending_gap").filter(|p| !p.is_null());
    let lost: u64 = gaps
        .iter()
        .chain(pending)
        .map(|g| g["lost"].as_u64().unwrap_or(0))
        .sum();
    let unclean = d["unclean_ends"].as_array().cloned().unwrap_or_default();
    if lost == 0 && unclean.is_empty() {
        say(format!(
            "audit log OK: {} entries, chain and MACs verified",
            d["entries"]
        ));
    } else if lost == 0 {
        say(format!(
            "audit log INCOMPLETE: {} entries, chain and MACs verified, but a broker stopped without sealing the log:",
            d["entries"]
        ));
    } else {
        say(format!(
            "audit log INCOMPLETE: {} entries, chain and MACs verified, but {lost} entries of events that happened could not be written:",
            d["entries"]
        ));
    }
    let events = |e: &Value| {
        e.as_object()
            .map(|o| {
                o.iter()
                    .map(|(k, v)| format!("{k} x{v}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or_default()
    };
    for g in &gaps {
        say(format!(
            "WARNING: gap recorded at line {}: {} entries lost (the event happened, its entry is missing), {} refused (the action was not done because it could not be recorded), between {} and {}: {}",
            g["seq"],
            g["lost"],
            g["refused"],
            g["first"].as_str().unwrap_or("?"),
            g["last"].as_str().unwrap_or("?"),
            events(&g["events"]),
        ));
    }
    if let Some(p) = pending {
        say(format!(
            "WARNING: not written yet (the audit log cannot be written now): {} entries lost, {} refused: {}",
            p["lost"],
            p["refused"],
            events(&p["events"]),
        ));
    }
    for u in &unclean {
        say(format!(
            "WARNING: at line {} the broker found that the one before it stopped without sealing the log (killed, or the host stopped): entries after line {} cannot be vouched for (a process of yours could have cut them off)",
            u["seq"], u["sealed_seq"],
        ));
    }
    if gaps.is_empty() && pending.is_none() {
        return if unclean.is_empty() {
            0
        } else {
            AUDIT_GAP_EXIT
        };
    }
    note(
        "hint: a gap means the audit log could not be written (a full disk, a quota, an I/O error): free space where KEYVEIL_HOME is; what a lost entry recorded is not in the log",
    );
    if lost == 0 && unclean.is_empty() {
        0
    } else {
        AUDIT_GAP_EXIT
    }
}

/// Exit code of `keyveil audit verify` when the chain verifies but events are missing from it
/// (`audit.gap` entries counting lost entries), or may be (`audit_unclean_end`: a broker was
/// killed, and entries after its last seal cannot be vouched for).
pub(super) const AUDIT_GAP_EXIT: i32 = 3;
