//! The audit methods of [`Inner`]: entries scrubbed of names and values, written or refused,
//! gaps, checkpoints sealed into the vault, the session's start and end.

use serde_json::Value;

use keyveil_proto::ErrorCode;

use super::error::{OpError, OpResult};
use super::inner::Inner;

/// The audit log's state behind the broker's mutex.
#[derive(Default)]
pub(super) struct AuditLog {
    /// The audit writer (opened at unlock: its key comes from the vault).
    pub(super) writer: Option<keyveil_vault::audit::AuditWriter>,
    /// Why the audit log did not match the vault's sealed checkpoint at unlock (entries cut off
    /// its end, or an older log swapped in); while set, the seal is not moved forward.
    pub(super) seal_broken: Option<String>,
    /// Set when the audit log's path stopped naming the open log file (moved, deleted or
    /// replaced while the broker runs); cleared at unlock or when the file is back.
    pub(super) path_changed: Option<keyveil_vault::audit::PathChange>,
    /// Audit entries that could not be written, carried across a lock (the writer is closed
    /// then) and handed to the next writer at unlock, which writes them first as `audit.gap`.
    pub(super) gap: Option<keyveil_vault::audit::AuditGap>,
    /// Set while live runs are being stopped because their ends could not be recorded (the
    /// revocations' own entries fail too; this keeps that from recursing).
    pub(super) stopping_runs: bool,
}

impl Inner {
    /// At unlock: `writer` becomes the audit writer, first given the entries the previous one
    /// could not write (written first, as `audit.gap`).
    pub(crate) fn start_audit_log(&mut self, mut writer: keyveil_vault::audit::AuditWriter) {
        if let Some(gap) = self.log.gap.take() {
            writer.carry_gap(gap);
        }
        self.log.writer = Some(writer);
    }

    /// At unlock, once the log was checked against the vault's sealed checkpoint: why it did
    /// not match (`None`: it did), and the path is taken to name the open file again.
    pub(crate) fn audit_log_checked(&mut self, seal_broken: Option<String>) {
        self.log.seal_broken = seal_broken;
        self.log.path_changed = None;
    }

    /// How the audit log's path stopped naming the open file, if it did.
    pub(crate) fn audit_path_changed(&self) -> Option<&keyveil_vault::audit::PathChange> {
        self.log.path_changed.as_ref()
    }

    /// Why the audit log did not match the vault's sealed checkpoint at unlock, if it did not.
    pub(crate) fn audit_seal_broken(&self) -> Option<&str> {
        self.log.seal_broken.as_deref()
    }

    /// The entries not written yet: the open writer's gap, or the one carried across a lock.
    pub(crate) fn pending_audit_gap(&self) -> Option<&keyveil_vault::audit::AuditGap> {
        self.log
            .writer
            .as_ref()
            .and_then(|w| w.gap())
            .or(self.log.gap.as_ref())
    }

    /// Writes a pending gap using the reserve too (the broker is stopping: the reserve is no
    /// longer needed after this).
    pub(crate) fn flush_audit_gap_closing(&mut self) {
        if let Some(w) = self.log.writer.as_mut() {
            let _ = w.flush_gap_closing();
        }
    }

    /// An audit entry as it may be written: real names hidden where the policy hides them,
    /// and every string through the card redactor (`card_redact.rs`): argv, cwd, paths and
    /// reasons in entries (`run_start`, `deny_rule`, `mount_read`, ...) can come from a granted
    /// child holding values, and the agent reads the log without a factor.
    fn scrub_entry(&mut self, fields: &mut Value) {
        self.scrub_entry_as(fields, true);
    }

    /// [`Inner::scrub_entry`], with the card matcher only when `masked`: an entry whose
    /// strings are an agent's own (`AccessReq::masked` false) has real names hidden and
    /// nothing else changed (masking a planted guess there would confirm it).
    fn scrub_entry_as(&mut self, fields: &mut Value, masked: bool) {
        self.hide_names_in(fields);
        if masked && let Some(r) = self.card_redactor() {
            crate::broker::card_redact::redact_json(&r, fields);
        }
    }

    /// Records an audit entry for something that happens whatever the log says: a revocation,
    /// a lock, a refusal, the end of a run, a failed factor. It may use the log's reserved
    /// space (`keyveil_vault::audit::RESERVE_BYTES`), so it is written on a full disk as long as
    /// the reserve lasts. It never refuses: an entry that cannot be written is counted in the
    /// writer's pending gap (written first, as `audit.gap`, at the next possible append), logged
    /// to `broker.log`, and live runs are stopped (their ends could not be recorded either).
    /// Actions that must not happen unrecorded use [`Inner::must_audit`], or
    /// [`Inner::audit_ready`] before acting and this after. Hidden names are audited by alias
    /// (see `names.rs`).
    pub(crate) fn audit(&mut self, event: &str, fields: Value) {
        self.audit_recorded(event, fields);
    }

    /// [`Inner::audit`], saying whether the entry reached the log (`false`: the vault is
    /// locked, the log was moved, or the disk is full and the entry is counted in the gap).
    pub(crate) fn audit_recorded(&mut self, event: &str, fields: Value) -> bool {
        self.audit_recorded_as(event, fields, true)
    }

    /// [`Inner::audit`] of an entry whose requester strings are matched against values only
    /// when `masked` ([`Inner::scrub_entry_as`]).
    pub(crate) fn audit_as(&mut self, event: &str, fields: Value, masked: bool) {
        self.audit_recorded_as(event, fields, masked);
    }

    fn audit_recorded_as(&mut self, event: &str, mut fields: Value, masked: bool) -> bool {
        use keyveil_vault::audit::AuditError;
        self.scrub_entry_as(&mut fields, masked);
        let map = match fields {
            Value::Object(m) => m,
            _ => serde_json::Map::new(),
        };
        let Some(w) = self.log.writer.as_mut() else {
            tracing::info!(event, "audit log not open (vault locked)");
            return false;
        };
        match w.append_record(event, map) {
            // The path names the file again (moved back): a later move is noticed anew.
            Ok(_) => {
                self.log.path_changed = None;
                true
            }
            Err(AuditError::PathChanged { change, .. }) => {
                self.note_audit_path_changed(change);
                tracing::error!(
                    event,
                    "audit entry not recorded: the audit log was moved or replaced"
                );
                false
            }
            Err(e) => {
                tracing::error!(event, error = %e, "audit entry not recorded (kept as a gap, written when the log can be written again); live runs are stopped");
                self.stop_runs_unrecordable();
                false
            }
        }
    }

    /// [`Inner::audit`] for several entries at once, in order, with one write and one sync
    /// (`AuditWriter::append_records`): for a source that records many things that happened
    /// anyway (a run's egress proxy, one entry per request). On failure every entry is counted
    /// in the pending gap and live runs are stopped, as for [`Inner::audit`].
    pub(crate) fn audit_batch(&mut self, entries: Vec<(String, Value)>) {
        use keyveil_vault::audit::AuditError;
        let entries: Vec<_> = entries
            .into_iter()
            .map(|(event, mut fields)| {
                // Like every entry: an egress path or destination is the child's, which may
                // hold a value (`redteam_s9.rs`).
                self.scrub_entry(&mut fields);
                let map = match fields {
                    Value::Object(m) => m,
                    _ => serde_json::Map::new(),
                };
                (event, map)
            })
            .collect();
        let Some(w) = self.log.writer.as_mut() else {
            tracing::info!(entries = entries.len(), "audit log not open (vault locked)");
            return;
        };
        match w.append_records(entries) {
            Ok(_) => self.log.path_changed = None,
            Err(AuditError::PathChanged { change, .. }) => {
                self.note_audit_path_changed(change);
                tracing::error!("audit entries not recorded: the audit log was moved or replaced");
            }
            Err(e) => {
                tracing::error!(error = %e, "audit entries not recorded (kept as a gap, written when the log can be written again); live runs are stopped");
                self.stop_runs_unrecordable();
            }
        }
    }

    /// Records a refusal or failure that a requester can repeat at will (a wrong or locked-out
    /// factor, a deny rule, a denial): written only while the log keeps its reserve after it
    /// (`AuditWriter::append_if_room`), so repeating it on a full disk never eats the space
    /// kept for revocations and the ends of runs; otherwise counted in the pending gap as lost
    /// and logged. Never refuses, never stops runs.
    pub(crate) fn audit_note(&mut self, event: &str, fields: Value) {
        self.audit_note_as(event, fields, true);
    }

    /// [`Inner::audit_note`], matched against values only when `masked`
    /// ([`Inner::scrub_entry_as`]).
    pub(crate) fn audit_note_as(&mut self, event: &str, mut fields: Value, masked: bool) {
        self.scrub_entry_as(&mut fields, masked);
        let map = match fields {
            Value::Object(m) => m,
            _ => serde_json::Map::new(),
        };
        let Some(w) = self.log.writer.as_mut() else {
            tracing::info!(event, "audit log not open (vault locked)");
            return;
        };
        if let Err(e) = w.append_if_room(event, map) {
            tracing::error!(event, error = %e, "audit entry not recorded (counted in the gap)");
        }
    }

    /// Appends an audit entry **before** the action it records; the action must not happen
    /// unless this returns `Ok`. The entry is refused (and counted in the pending gap) when the
    /// log cannot keep its reserve after it: a full disk, a quota, an I/O error, a short write,
    /// a failed sync, a moved log. `Ok` while locked (no writer; the locked error comes from
    /// elsewhere).
    ///
    /// # Errors
    /// [`ErrorCode::Failed`]: "the audit log cannot be written: CAUSE; nothing was done" with a
    /// hint to free space (see [`audit_refusal`]), or the moved-log error of
    /// [`Inner::check_audit_path`].
    pub(crate) fn must_audit(&mut self, event: &str, fields: Value) -> OpResult<()> {
        self.must_audit_as(event, fields, true)
    }

    /// [`Inner::must_audit`], matched against values only when `masked`
    /// ([`Inner::scrub_entry_as`]).
    ///
    /// # Errors
    /// As [`Inner::must_audit`].
    pub(crate) fn must_audit_as(
        &mut self,
        event: &str,
        mut fields: Value,
        masked: bool,
    ) -> OpResult<()> {
        self.check_audit_path()?;
        self.scrub_entry_as(&mut fields, masked);
        let map = match fields {
            Value::Object(m) => m,
            _ => serde_json::Map::new(),
        };
        let Some(w) = self.log.writer.as_mut() else {
            return Ok(());
        };
        match w.append(event, map) {
            Ok(_) => Ok(()),
            Err(e) => {
                tracing::error!(event, error = %e, "audit entry refused; the action is refused");
                Err(audit_refusal(event, w.path(), &e))
            }
        }
    }

    /// Stops every live run by revoking its grant (SIGTERM, then SIGKILL): called when an entry
    /// could not be recorded even from the reserve, so the runs' ends could not be either.
    fn stop_runs_unrecordable(&mut self) {
        if self.log.stopping_runs {
            return;
        }
        self.log.stopping_runs = true;
        let grants: std::collections::BTreeSet<String> =
            self.runs.values().map(|r| r.grant_id.clone()).collect();
        for gid in grants {
            self.revoke(&gid, "the audit log cannot be written");
        }
        self.log.stopping_runs = false;
    }

    /// Writes a pending `audit.gap` entry if the log has room for it and its reserve (the
    /// broker's 10-second tick calls this, so a gap is sealed even when nothing else happens).
    pub(crate) fn flush_audit_gap(&mut self) {
        if self.log.path_changed.is_some() {
            return;
        }
        if let Some(w) = self.log.writer.as_mut()
            && let Ok(true) = w.flush_gap()
        {
            tracing::info!("audit log writable again; the gap was recorded");
        }
    }

    /// Closes the audit writer (at lock), keeping its pending gap for the next one.
    pub(crate) fn close_audit(&mut self) {
        if let Some(w) = self.log.writer.as_mut() {
            // Closing: the reserve is no longer needed, the gap may use it.
            let _ = w.flush_gap_closing();
        }
        if let Some(mut w) = self.log.writer.take()
            && let Some(gap) = w.take_gap()
        {
            tracing::error!(
                entries = gap.entries(),
                "audit entries could not be written; the gap is kept in memory and recorded at the next unlock"
            );
            match &mut self.log.gap {
                Some(g) => g.merge(gap),
                None => self.log.gap = Some(gap),
            }
        }
    }

    /// First notice of a moved or replaced audit log: closes the chain in the moved file with
    /// an `audit.path_changed` entry and logs what to do. Later notices only log.
    fn note_audit_path_changed(&mut self, change: keyveil_vault::audit::PathChange) {
        if self.log.path_changed.is_some() {
            return;
        }
        self.log.path_changed = Some(change);
        let Some(w) = self.log.writer.as_mut() else {
            return;
        };
        tracing::error!(
            path = %w.path().display(),
            %change,
            "the audit log is no longer at its path; grants and runs are refused until it is moved back, or until `keyveil lock` and `keyveil unlock` start a new log"
        );
        if let Err(e) = w.record_path_change(change) {
            tracing::error!(error = %e, "cannot record the change in the moved audit log");
        }
    }

    /// Whether the audit log's path still names the file the broker appends to (checked now, by
    /// device and inode). `Ok` while locked (the locked error comes from elsewhere).
    ///
    /// # Errors
    /// [`ErrorCode::Failed`] saying the log was moved, deleted or replaced, with a hint (move it
    /// back, or lock and unlock to start a new log); the first time, an `audit.path_changed`
    /// entry is appended to the moved file.
    pub(crate) fn check_audit_path(&mut self) -> OpResult<()> {
        use keyveil_vault::audit::AuditError;
        let Some(w) = self.log.writer.as_ref() else {
            return Ok(());
        };
        match w.check_path() {
            Ok(()) => {
                self.log.path_changed = None;
                Ok(())
            }
            Err(AuditError::PathChanged { path, change }) => {
                self.note_audit_path_changed(change);
                let path = path.display();
                Err(OpError::new(
                    ErrorCode::Failed,
                    format!(
                        "keyveil's audit log {path} was changed while the broker was running ({change}): it is no longer the file the broker writes to, so nothing done now could be recorded, and grants and runs are refused"
                    ),
                )
                .hint(format!(
                    "if the file was moved on purpose, move it back to {path}; otherwise the user runs `keyveil lock` then `keyveil unlock` (with their passphrase), which starts a new log there (`keyveil audit verify` then reports the break against the vault's sealed checkpoint)"
                )))
            }
            Err(e) => Err(OpError::new(
                ErrorCode::Failed,
                format!("cannot check keyveil's audit log: {e}; grants and runs are refused"),
            )
            .hint("check the permissions of KEYVEIL_HOME; `keyveil status` shows where it is")),
        }
    }

    /// Whether an action whose entry is written after it (with [`Inner::audit`]) may proceed:
    /// the log's path must still name the open file ([`Inner::check_audit_path`]), a pending
    /// gap is written, and the log must have room for the entry and its reserve, so that the
    /// entry is written once the action is done. `event` names the entry, for the gap when it
    /// is refused. `Ok` while locked.
    ///
    /// # Errors
    /// As [`Inner::must_audit`].
    pub(crate) fn audit_ready(&mut self, event: &str) -> OpResult<()> {
        self.audit_ready_for(event, 0)
    }

    /// [`Inner::audit_ready`] for an entry of about `entry_len` bytes (a run's argv can be
    /// long): the room checked for is that, or 4 KiB, whichever is more, plus the reserve.
    ///
    /// # Errors
    /// As [`Inner::must_audit`].
    pub(crate) fn audit_ready_for(&mut self, event: &str, entry_len: usize) -> OpResult<()> {
        self.check_audit_path()?;
        let Some(w) = self.log.writer.as_mut() else {
            return Ok(());
        };
        w.ready(event, entry_len as u64).map_err(|e| {
            tracing::error!(event, error = %e, "the audit log cannot be written; the action is refused");
            audit_refusal(event, w.path(), &e)
        })
    }

    /// Seals the audit log's end into the vault and closes the audit session (lock, stop): the
    /// next unlock then knows this broker ended cleanly. See [`Inner::open_audit_session`].
    pub(crate) fn seal_audit_final(&mut self) {
        self.seal_audit();
        if self.log.seal_broken.is_some() {
            return;
        }
        let Some(v) = self.vault.as_mut() else {
            return;
        };
        if v.data().audit_session_open {
            v.data_mut().audit_session_open = false;
            if let Err(e) = v.save() {
                tracing::error!(error = %e, "cannot close the audit session in the vault");
            }
        }
    }

    /// At unlock: if the previous broker never closed its audit session (it was killed, or the
    /// host stopped), records `audit_unclean_end` naming the last sealed entry — anything a
    /// same-user process cut off the log after it cannot be detected otherwise — then marks the
    /// session open in the vault.
    pub(crate) fn open_audit_session(&mut self) {
        let Some(v) = self.vault.as_ref() else {
            return;
        };
        let unclean = v.data().audit_session_open;
        let sealed = v.data().audit_checkpoint.as_ref().map(|c| c.seq);
        if unclean {
            tracing::warn!(
                ?sealed,
                "the previous broker ended without closing its audit session"
            );
            self.audit(
                "audit_unclean_end",
                serde_json::json!({"sealed_seq": sealed, "why": "the previous broker stopped without sealing the log (killed, or the host stopped): entries after sealed_seq cannot be vouched for"}),
            );
            self.record_runs_ended_by_crash();
        }
        if let Some(v) = self.vault.as_mut() {
            v.data_mut().audit_session_open = true;
            if let Err(e) = v.save() {
                tracing::error!(error = %e, "cannot mark the audit session open in the vault");
            }
        }
    }

    /// After an unclean end: every run the log shows started (`run_start`) and never ended
    /// (`run_end`) died with the broker that ran it (its reaper and command are killed by
    /// `PR_SET_PDEATHSIG`, what they started by the supervisor); each gets a `run_end` marked
    /// `broker_crashed`, so the log says how it ended. Returns how many.
    pub(crate) fn record_runs_ended_by_crash(&mut self) -> usize {
        let Some(path) = self.log.writer.as_ref().map(|w| w.path().to_path_buf()) else {
            return 0;
        };
        let entries = keyveil_vault::audit::read_entries(&path, None).unwrap_or_default();
        let mut open: std::collections::BTreeMap<String, Value> = std::collections::BTreeMap::new();
        for e in &entries {
            let Some(run_id) = e.get("run_id").and_then(Value::as_str) else {
                continue;
            };
            match e.get("event").and_then(Value::as_str) {
                Some("run_start") => {
                    open.insert(
                        run_id.to_owned(),
                        e.get("grant_id").cloned().unwrap_or(Value::Null),
                    );
                }
                Some("run_end") => {
                    open.remove(run_id);
                }
                _ => {}
            }
        }
        let n = open.len();
        for (run_id, grant_id) in open {
            self.audit(
                "run_end",
                serde_json::json!({
                    "run_id": run_id,
                    "grant_id": grant_id,
                    "broker_crashed": true,
                    "why": "the broker stopped (killed, or the host stopped) before this run's end was recorded; the run ended with it",
                }),
            );
        }
        if n > 0 {
            tracing::warn!(
                runs = n,
                "recorded the end of runs a crashed broker left open"
            );
        }
        n
    }

    /// Seals the audit log's current end into the vault (the sealed checkpoint), so that cutting
    /// entries off the end of the log is detected by `keyveil audit verify`. Saves the vault only
    /// when the checkpoint moved. Errors are logged.
    pub(crate) fn seal_audit(&mut self) {
        if self.log.seal_broken.is_some() {
            // Never move a seal forward over a log that did not match it.
            return;
        }
        let Some(cp) = self.log.writer.as_ref().and_then(|w| w.checkpoint()) else {
            return;
        };
        let Some(v) = self.vault.as_mut() else {
            return;
        };
        if v.data().audit_checkpoint.as_ref() == Some(&cp) {
            return;
        }
        v.data_mut().audit_checkpoint = Some(cp);
        // A full save, never a journal record (a journal cut must not bring back an old
        // checkpoint); it also folds the journaled variable changes into the vault file.
        if let Err(e) = v.save_audit_checkpoint() {
            tracing::error!(error = %e, "cannot save the audit checkpoint into the vault");
        }
    }
}

/// The error for an action refused because its audit entry cannot be written: "the audit log
/// cannot be written: CAUSE; nothing was run" (for a run) or "...; nothing was done", with a
/// hint to free space where the log lives. Names no entry content.
pub(crate) fn audit_refusal(
    event: &str,
    log: &std::path::Path,
    e: &keyveil_vault::audit::AuditError,
) -> OpError {
    use keyveil_vault::audit::AuditError;
    let cause = match e {
        AuditError::Io { source, .. } => source.to_string(),
        other => other.to_string(),
    };
    let nothing = if event.starts_with("run") {
        "nothing was run"
    } else {
        "nothing was done"
    };
    let dir = log
        .parent()
        .map_or_else(|| log.display().to_string(), |d| d.display().to_string());
    OpError::new(
        ErrorCode::Failed,
        format!("the audit log cannot be written: {cause}; {nothing}"),
    )
    .hint(format!(
        "free space in {dir} (see `df {dir}`), then try again; keyveil refuses to act on anything it cannot record, and records how many entries were missed as an `audit.gap` entry once it can write again"
    ))
}
