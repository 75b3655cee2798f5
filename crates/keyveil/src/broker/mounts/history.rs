//! The listing's counts and recent events, rebuilt from the verified audit log.
//!
//! Every event a mount's listing shows is audited first with the same words (`listed`, and
//! `refused`: whether it counts as a refusal). The broker's memory of the listing goes with the
//! broker (`keyveil daemon stop` needs no factor); the audit log is a MAC'd hash chain the agent
//! cannot forge, and a cut in it (the file deleted, truncated or swapped for an older one) is
//! reported by `keyveil audit verify`. So at unlock, and when a mount is made, the listing of
//! each mount is read back from the log's newest entries once they verify; when they do not,
//! the listing says so instead (an alarm event) and keeps what the broker still knows.

use super::*;

/// Most audit entries read back (the newest).
const MAX_ENTRIES: usize = 100_000;

/// Replaces the counts and recent events of the mount at `only` (every mount when `None`) with
/// what the verified audit log says of its path. Nothing while the vault is locked.
pub(crate) fn rebuild(broker: &Broker, only: Option<&str>) {
    let (key, checkpoint) = {
        let inner = broker.lock();
        let Ok(vault) = inner.vault() else {
            return;
        };
        (vault.audit_key(), vault.data().audit_checkpoint.clone())
    };
    let paths: Vec<String> = match only {
        Some(p) => vec![p.to_owned()],
        None => broker.mounts.lock().keys().cloned().collect(),
    };
    if paths.is_empty() {
        return;
    }
    // One read: the entries used are the very bytes verified.
    let read = keyveil_vault::audit::verify_and_read(
        &broker.paths.audit(),
        &key,
        checkpoint.as_ref(),
        MAX_ENTRIES,
    );
    let mut m = broker.mounts.lock();
    match read {
        Ok((_, entries)) => {
            let mut by: BTreeMap<String, Gone> = BTreeMap::new();
            for e in &entries {
                let (Some(path), Some(words), Some(refused)) = (
                    e["path"].as_str(),
                    e["listed"].as_str(),
                    e["refused"].as_bool(),
                ) else {
                    continue;
                };
                if !paths.iter().any(|p| p == path) {
                    continue;
                }
                let (reads, refusals, recent) = by.entry(path.to_owned()).or_default();
                if refused {
                    *refusals += 1;
                } else {
                    *reads += 1;
                }
                push_event(recent, e["ts"].as_str().unwrap_or(""), words);
            }
            for p in &paths {
                if let Some(en) = m.get_mut(p) {
                    let (reads, refused, recent) = by.remove(p).unwrap_or_default();
                    en.reads = reads;
                    en.refused = refused;
                    en.recent = recent;
                }
            }
        }
        Err(err) => {
            let now = Timestamp::now().to_string();
            let words = format!(
                "the audit log does not verify ({err}): what this listing said before is not shown (`keyveil audit verify` says what was cut)"
            );
            for p in &paths {
                if let Some(en) = m.get_mut(p) {
                    push_event(&mut en.recent, &now, &words);
                }
            }
        }
    }
}
