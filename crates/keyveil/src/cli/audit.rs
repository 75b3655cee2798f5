//! `keyveil audit` and `keyveil audit verify`.
#![allow(clippy::indexing_slicing)]

use super::*;
use keyveil_proto::op;

pub(crate) async fn audit(paths: &Paths, a: AuditArgs) -> Result<i32> {
    if let Some(AuditAction::Verify) = a.action {
        let d = call(paths, op::AuditVerify).await?;
        return Ok(audit_verified(&d));
    }
    let mut last_seq = 0u64;
    loop {
        let d = call(
            paths,
            op::Audit {
                limit: Some(a.limit),
            },
        )
        .await?;
        for e in d.entries {
            let seq = e.seq.unwrap_or(0);
            if seq <= last_seq {
                continue;
            }
            last_seq = seq;
            if a.json {
                say(json_text(&e)?);
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
pub(crate) fn audit_verified(d: &op::AuditVerified) -> i32 {
    let (gaps, pending, unclean) = (&d.gaps, d.pending_gap.as_ref(), &d.unclean_ends);
    let lost: u64 = gaps
        .iter()
        .map(|g| g.lost)
        .chain(pending.map(|p| p.lost))
        .sum();
    if !d.quarantined.is_empty() {
        // A log moved aside at unlock: this one verifies, but it is not the whole history.
        say(format!(
            "audit log INCOMPLETE: {} entries, chain and MACs verified, but an earlier log failed verification and was moved aside:",
            d.entries
        ));
        for q in &d.quarantined {
            say(format!(
                "WARNING: {} (recorded at line {})",
                crate::card::quarantine_warning(
                    std::path::Path::new(&q.moved_to),
                    q.verified_lines,
                    q.first_bad_line,
                    q.sealed_seq,
                    q.missing,
                ),
                q.seq.map_or_else(|| "null".to_owned(), |n| n.to_string()),
            ));
        }
    } else if lost == 0 && unclean.is_empty() {
        say(format!(
            "audit log OK: {} entries, chain and MACs verified",
            d.entries
        ));
    } else if lost == 0 {
        say(format!(
            "audit log INCOMPLETE: {} entries, chain and MACs verified, but a broker stopped without sealing the log:",
            d.entries
        ));
    } else {
        say(format!(
            "audit log INCOMPLETE: {} entries, chain and MACs verified, but {lost} entries of events that happened could not be written:",
            d.entries
        ));
    }
    let events = |e: &std::collections::BTreeMap<String, u64>| {
        e.iter()
            .map(|(k, v)| format!("{k} x{v}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let or_null = |n: Option<u64>| n.map_or_else(|| "null".to_owned(), |n| n.to_string());
    for g in gaps {
        say(format!(
            "WARNING: gap recorded at line {}: {} entries lost (the event happened, its entry is missing), {} refused (the action was not done because it could not be recorded), between {} and {}: {}",
            g.seq,
            g.lost,
            g.refused,
            g.first,
            g.last,
            events(&g.events),
        ));
    }
    if let Some(p) = pending {
        say(format!(
            "WARNING: not written yet (the audit log cannot be written now): {} entries lost, {} refused: {}",
            p.lost,
            p.refused,
            events(&p.events),
        ));
    }
    for u in unclean {
        say(format!(
            "WARNING: at line {} the broker found that the one before it stopped without sealing the log (killed, or the host stopped): entries after line {} cannot be vouched for (a process of yours could have cut them off)",
            or_null(u.seq),
            or_null(u.sealed_seq),
        ));
    }
    if gaps.is_empty() && pending.is_none() {
        return if unclean.is_empty() && d.quarantined.is_empty() {
            0
        } else {
            AUDIT_GAP_EXIT
        };
    }
    note(
        "hint: a gap means the audit log could not be written (a full disk, a quota, an I/O error): free space where KEYVEIL_HOME is; what a lost entry recorded is not in the log",
    );
    if lost == 0 && unclean.is_empty() && d.quarantined.is_empty() {
        0
    } else {
        AUDIT_GAP_EXIT
    }
}

/// Exit code of `keyveil audit verify` when the chain verifies but events are missing from it
/// (`audit.gap` entries counting lost entries), or may be (`audit_unclean_end`: a broker was
/// killed, and entries after its last seal cannot be vouched for).
pub(super) const AUDIT_GAP_EXIT: i32 = 3;
