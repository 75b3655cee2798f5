//! What `keyveil sweep --contain --scrub-transcripts` rewrites: which findings' secrets a scrub
//! may rewrite ([`scrubbable`]: former values and minted credentials, never a current value),
//! the findings sorted by what the scrub does with their files, the rewrite on a blocking
//! thread ([`crate::sweep::scrub`]) and the notes for the human's sealed report on what was
//! left and why.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use crate::sweep::Finding;

/// The credential of a finding of a value a variable held when a sweep marked it compromised and
/// that was replaced since (see [`keyveil_vault::Compromise::value`]).
pub(crate) const FORMER: &str = "former";
/// [`FORMER`], for a value stored without the human's factor (a first value: an agent may
/// have chosen it; see [`keyveil_vault::Compromise::value_by_factor`]).
pub(crate) const FORMER_UNVERIFIED: &str = "former-unverified";

/// Whether a finding's `credential` is a former value ([`FORMER`] or [`FORMER_UNVERIFIED`]).
pub(crate) fn is_former(credential: &str) -> bool {
    credential == FORMER || credential == FORMER_UNVERIFIED
}

/// Whether `--scrub-transcripts` may rewrite copies of a finding's `credential`: a former value
/// (replaced since it was found) or a minted credential (destroyed at its source by the
/// containment that runs before the scrub). Never a current stored value or admin credential:
/// a rewrite of only the transcripts that hold it would tell whoever planted guesses, one per
/// transcript, which guess was right.
pub(crate) fn scrubbable(credential: &str) -> bool {
    is_former(credential) || credential == "minted"
}

/// The scrub's redactors (made by `sweep_ops::redactors`): every [`scrubbable`] secret, and all but the former
/// values stored without the factor (for a sweep that also contained something: see
/// [`scrub_after`]).
pub(super) struct Scrubbers {
    /// Every scrubbable secret.
    pub(super) all: crate::redact::Redactor,
    /// All but the former values stored without the factor.
    pub(super) gated: crate::redact::Redactor,
}

/// Rewrites the host transcripts that hold a copy of a [`scrubbable`] secret among `findings`
/// with `scrubbers` (which know only those), and says, in notes for the human's sealed report,
/// which current values' copies it left and why.
///
/// When the sweep also `contained` something (a current value or admin credential found, or a
/// minted one), the former values stored without the factor ([`FORMER_UNVERIFIED`]) are left
/// too: the agent could have chosen one (the first value of a variable of its own, a guess of
/// another's, rotated by the human as the sealed report said). `sweep_ops::secrets` leaves out a former
/// value that a current secret also has, so whether such a guess was scrubbed would say whether
/// it was right; but a copy of it is then a copy of that current value, found and contained.
/// Scrubbing them only when nothing was contained makes what the scrub does with them a
/// function of what the `incident` entries already tell (one bit a sweep), never of which
/// planted guess matched (`tests/it/redteam_s9b.rs`).
pub(super) async fn scrub_after(
    findings: &[Finding],
    home: Option<PathBuf>,
    scrubbers: Scrubbers,
    contained: bool,
) -> (crate::sweep::scrub::Scrubbed, Vec<String>) {
    use crate::sweep::scrub;
    let groups = ScrubGroups::of(findings, home.as_deref(), contained);
    let left = groups.notes();
    let files: Vec<PathBuf> = groups.files.into_iter().collect();
    let scrubber = if contained {
        scrubbers.gated
    } else {
        scrubbers.all
    };
    let done = tokio::task::spawn_blocking(move || scrub::scrub(&files, &scrubber))
        .await
        .unwrap_or_else(|_| scrub::Scrubbed {
            files: Vec::new(),
            notes: vec![
                "the scrub stopped unexpectedly; transcripts were left as they were".to_owned(),
            ],
        });
    (done, left)
}

/// A sweep's findings sorted, in one pass, by what [`scrub_after`] does with their files.
#[derive(Default)]
struct ScrubGroups {
    /// Transcripts rewritten: each holds a copy of a [`scrubbable`] secret not held back.
    files: BTreeSet<PathBuf>,
    /// Transcripts that hold a copy of a secret that is not scrubbable (a current value or
    /// admin credential).
    held: BTreeSet<PathBuf>,
    /// Host files left as they are, with why (see [`crate::sweep::scrub::target`]).
    left: BTreeSet<String>,
    /// Variables whose former value stored without the factor was held back from the scrub,
    /// since the sweep also contained something (`(environment, variable)`).
    formers: BTreeSet<(String, String)>,
    /// Copies in files of secrets that are not scrubbable: `(environment, variable, admin
    /// credential, file)`; reported when the file is one of `held`.
    current: Vec<(String, String, bool, PathBuf)>,
}

impl ScrubGroups {
    /// Sorts each of `findings` (files below `home`) into its groups; `contained` holds back
    /// the former values stored without the factor (see [`scrub_after`]).
    fn of(findings: &[Finding], home: Option<&Path>, contained: bool) -> ScrubGroups {
        use crate::sweep::scrub::{self, Target};
        let home = scrub::canonical_home(home);
        let mut g = ScrubGroups::default();
        for f in findings {
            let rewrite = match scrub::target(f, home.as_deref()) {
                Target::Rewrite(p) => Some(p),
                Target::Left(note) => {
                    g.left.insert(note);
                    None
                }
                Target::Ignored => None,
            };
            let id = || (f.environment.clone(), f.variable.clone());
            if !scrubbable(&f.credential) {
                g.held.extend(rewrite);
                if let crate::sweep::Location::File { path, .. } = &f.location {
                    let (env, var) = id();
                    let admin = f.credential == "admin";
                    g.current.push((env, var, admin, PathBuf::from(path)));
                }
            } else if contained && f.credential == FORMER_UNVERIFIED {
                if rewrite.is_some() {
                    g.formers.insert(id());
                }
            } else {
                g.files.extend(rewrite);
            }
        }
        g
    }

    /// The notes for the human's sealed report: host files left, former values held back, and
    /// current values whose copies in transcripts were not rewritten, each with what to do.
    fn notes(&self) -> Vec<String> {
        let mut left: Vec<String> = self.left.iter().cloned().collect();
        for (env, var) in &self.formers {
            left.push(format!(
                "{env}/{var}: copies of its former value (stored without your factor) in host transcripts were not rewritten: this sweep also contained something, and a value stored without the factor may be an agent's guess of a current one; rotate what it contained and store the new values, then run `keyveil sweep --contain --scrub-transcripts` again"
            ));
        }
        let current: BTreeSet<(&str, &str, bool)> = self
            .current
            .iter()
            .filter(|(.., path)| self.held.contains(path))
            .map(|(env, var, admin, _)| (env.as_str(), var.as_str(), *admin))
            .collect();
        const WHY: &str = "the value is current, and rewriting only the transcripts that hold it would tell whoever planted guesses there which one was right";
        for (env, var, admin) in current {
            left.push(if admin {
                format!(
                    "{env}/{var}: copies of its admin credential in host transcripts were not rewritten: {WHY}; replace it at its source and in keyveil (`keyveil dynamic add`), then delete those transcripts with the host closed"
                )
            } else {
                format!(
                    "{env}/{var}: its copies in host transcripts were not rewritten: {WHY}; rotate it at its source and store the new value (`keyveil set {env} {var}`), then run `keyveil sweep --contain --scrub-transcripts` again: keyveil keeps the value it found sealed, and that scrub rewrites its copies"
                )
            });
        }
        left
    }
}
