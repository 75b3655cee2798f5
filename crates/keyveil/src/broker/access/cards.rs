//! The pending requests as cards (typed replies for the CLI, MCP and the page), and a card's
//! digest.

use super::*;

/// Pending requests as approval cards (what the CLI card and the web page render).
///
/// The strings of every card whose requester may hold values go through the card redactor
/// (`card_redact.rs`): what a card shows of a process may hold a value a granted child has;
/// those of every other card through the matcher of the values keyveil made at random.
pub(crate) fn requests(broker: &Broker) -> op::PendingRequests {
    let mut inner = broker.lock();
    inner.expire_requests();
    let all = inner.card_matcher(true);
    let made = inner.card_matcher(false);
    let requests = inner
        .requests()
        .pending()
        .map(|r| (r.masked(), card_of(r, bound_on_card(&inner, r))))
        .filter_map(|(masked, c)| {
            // Every value where a request's strings may hold one (`AccessReq::masked`); in an
            // agent's own strings only the values keyveil made at random (masking a planted
            // guess of any other would confirm it; one made at random cannot be guessed, and a
            // daemon outside the run may have started a granted child's ask).
            // Masked whole, clipped after: a value across the clip is still whole when matched.
            match if masked { &all } else { &made } {
                Some(red) => crate::broker::card_redact::redact_card(red, c),
                None => Some(c),
            }
            .map(clip_card)
        })
        .collect();
    op::PendingRequests { requests }
}

/// `card` (already masked) with its chosen values and standard input clipped to what a card
/// shows (`state::SHOWN_VALUE_CHARS`, `state::SHOWN_STDIN_CHARS`), never inside a marker
/// (`state::clip_shown`). Clipping comes after masking: a secret value across the clip was whole
/// when the matcher saw it.
fn clip_card(mut card: op::RequestCard) -> op::RequestCard {
    use crate::broker::state::{SHOWN_STDIN_CHARS, SHOWN_VALUE_CHARS, clip_shown};
    for c in &mut card.chosen_values {
        if let Some(v) = &mut c.value {
            let (shown, clipped) = clip_shown(v, SHOWN_VALUE_CHARS);
            *v = shown;
            c.clipped = clipped;
        }
    }
    if let Some(s) = &mut card.stdin {
        let (shown, clipped) = clip_shown(&s.text, SHOWN_STDIN_CHARS);
        s.text = shown;
        s.clipped = clipped;
    }
    card
}

/// The requested variables the environment's policy binds to hosts.
fn bound_on_card(inner: &Inner, r: &AccessReq) -> Vec<op::BoundVariable> {
    let Some(p) = inner
        .vault()
        .ok()
        .and_then(|v| v.data().environments.get(r.environment()))
        .map(|e| &e.policy)
    else {
        return Vec::new();
    };
    r.variables()
        .iter()
        .filter_map(|v| {
            p.bindings.get(v).map(|hosts| {
                let bound_in = p.bound_in_of(v);
                op::BoundVariable {
                    variable: v.clone(),
                    hosts: hosts.clone(),
                    url: bound_in.url,
                    body: bound_in.body,
                }
            })
        })
        .collect()
}

/// A request as its card shows it (unmasked, unclipped: [`requests`] masks then clips).
pub(super) fn card_of(r: &AccessReq, bound: Vec<op::BoundVariable>) -> op::RequestCard {
    let proc_info = |p: &crate::broker::peer::Proc| op::ProcInfo {
        pid: p.pid,
        comm: p.comm.clone(),
        exe: p.exe.clone(),
        keyveil: p.keyveil,
    };
    op::RequestCard {
        id: r.id(),
        client: r.client().to_owned(),
        peer: op::PeerInfo {
            process: r.peer().process.as_ref().map(proc_info),
            keyveil_mode: r.peer().keyveil_mode.clone(),
            parents: r.peer().parents.iter().map(proc_info).collect(),
            origin: r.peer().origin.clone(),
        },
        environment: r.environment().to_owned(),
        variables: r.variables().to_owned(),
        argv: r.argv().to_owned(),
        cwd: r.cwd().to_owned(),
        reason: r.reason().to_owned(),
        ttl_seconds: r.ttl_seconds(),
        pass_env: r.pass_env().to_owned(),
        executable: r.executable().as_ref().map(file_pin_info),
        inputs: r.inputs().iter().map(input_pin_info).collect(),
        risk: r.risk().to_owned(),
        chosen_values: r
            .chosen_values()
            .iter()
            .map(|c| op::ChosenValueInfo {
                origin: c.origin.to_owned(),
                name: c.name.clone(),
                variable: c.variable.clone(),
                stored_at: c.stored_at,
                value: c.value.as_ref().map(|v| v.to_string()),
                bytes: c.bytes,
                clipped: false,
                digest: c.digest.clone(),
            })
            .collect(),
        stdin: r.stdin().as_ref().map(crate::broker::state::Stdin::info),
        new_variables: r
            .new_variables()
            .iter()
            .map(|n| op::NewVariableInfo {
                variable: n.variable.clone(),
                created_at: n.created_at,
                stored_at: n.stored_at,
                stored: n.stored.to_owned(),
            })
            .collect(),
        contradictions: r.contradictions().to_owned(),
        bound,
        asks: r.asks(),
        created_at: r.created_at(),
        state: state_word(r.state()).to_owned(),
        expires_at: r.expires_at(),
        mount: r.mount().as_ref().map(|p| op::MountRead {
            path: p.clone(),
            pid: r.client().pid,
            anchor: r.mount_anchor().as_ref().map(|a| a.shown()),
        }),
    }
}

/// A pinned file as replies show it.
pub(crate) fn file_pin_info(p: &crate::pin::FilePin) -> op::FilePinInfo {
    op::FilePinInfo {
        path: p.path.clone(),
        dev: p.dev,
        ino: p.ino,
        size: p.size,
        mtime_ns: p.mtime_ns,
        ctime_ns: p.ctime_ns,
        sha256: p.sha256.clone(),
    }
}

/// A pinned input as replies show it.
pub(crate) fn input_pin_info(p: &crate::pin::InputPin) -> op::InputPinInfo {
    op::InputPinInfo {
        role: p.role.clone(),
        path: p.path.clone(),
        sha256: p.sha256.clone(),
        detail: p.detail.clone(),
    }
}

/// The `factor_proof::card_digest` of pending request `id` as a `requests` listing shows it
/// (names hidden where the policy hides them); `None` when it is not pending.
pub(crate) fn card_digest_of(broker: &Broker, id: u64) -> Option<String> {
    let card = requests(broker).requests.into_iter().find(|r| r.id == id)?;
    let mut entry = serde_json::to_value(card).ok()?;
    broker.lock().names().hide_names_in(&mut entry);
    Some(crate::factor_proof::card_digest(&entry))
}

/// A request state as one word.
pub(crate) fn state_word(s: &RequestState) -> &'static str {
    match s {
        RequestState::Pending => "pending",
        RequestState::Approved { .. } => "approved",
        RequestState::Denied { .. } => "denied",
        RequestState::Expired => "expired",
    }
}
