//! The approval memory behind the `first-time`, `denied-before` and `rephrased-denied` flags
//! ([`ApprovalMemory`]): what was approved and denied in this broker's life.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

/// What the human approved and denied in this broker's life (memory only).
#[derive(Debug, Default)]
pub(crate) struct ApprovalMemory {
    /// (environment, argv, masked) approved: for the `first-time` flag. `masked` is the
    /// request's `AccessReq::masked`: a holder's approved argv never answers an agent's own
    /// ask (the flag would single out the planted candidate that is the value).
    approved_argv: HashSet<(String, Vec<String>, bool)>,
    /// (argv, masked) denied, with when: for the `denied-before` flag (`masked` as above).
    denied_argv: HashMap<(Vec<String>, bool), Instant>,
    /// What denied commands did (`risk::behaviour`), with when: for `rephrased-denied`.
    denied_behaviour: Vec<(Instant, Vec<String>)>,
}

impl ApprovalMemory {
    /// Records an approval of `argv` in `environment`.
    pub(crate) fn record_approval(&mut self, environment: &str, argv: &[String], masked: bool) {
        self.approved_argv
            .insert((environment.to_owned(), argv.to_vec(), masked));
    }

    /// Whether `argv` was approved in `environment` before (with the same `masked`).
    pub(crate) fn approved_before(&self, environment: &str, argv: &[String], masked: bool) -> bool {
        self.approved_argv
            .contains(&(environment.to_owned(), argv.to_vec(), masked))
    }

    /// Records a denial of `argv` at `now`, with what the command does (`behaviour`);
    /// behaviours older than `keep` are forgotten.
    pub(crate) fn record_denial(
        &mut self,
        argv: Vec<String>,
        masked: bool,
        behaviour: Vec<String>,
        now: Instant,
        keep: Duration,
    ) {
        self.denied_behaviour.retain(|(t, _)| t.elapsed() < keep);
        self.denied_behaviour.push((now, behaviour));
        self.denied_argv.insert((argv, masked), now);
    }

    /// Whether `argv` (with the same `masked`) was denied less than `within` ago.
    pub(crate) fn denied_within(&self, argv: &[String], masked: bool, within: Duration) -> bool {
        self.denied_argv
            .get(&(argv.to_vec(), masked))
            .is_some_and(|t| t.elapsed() < within)
    }

    /// The behaviours of commands denied less than `within` ago.
    pub(crate) fn denied_behaviours(&self, within: Duration) -> impl Iterator<Item = &[String]> {
        self.denied_behaviour
            .iter()
            .filter(move |(t, _)| t.elapsed() < within)
            .map(|(_, b)| b.as_slice())
    }
}
