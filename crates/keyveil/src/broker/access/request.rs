//! A request for access: found again or created (pins, risk flags, rules), waited on, and its
//! status.

use super::*;

/// Finds the pending request for an ask, or creates one. Returns `(request id, created)`.
pub(crate) fn find_or_create_request(
    inner: &mut Inner,
    ask: &Ask,
    pins: Pins,
    reason: Option<String>,
    ttl_seconds: Option<u64>,
) -> OpResult<(u64, bool)> {
    inner.expire_requests();
    let masked = strings_masked(inner, &ask.peer)?;
    let key = ask.client.scope_key();
    let (recent_requests, recent_all) = count_recent(inner, &ask.peer.origin);
    let bursting = risk::bursting(recent_requests, recent_all);
    let chosen = chosen_values(inner, ask)?;
    if let Some(id) = coalesce(inner, ask, masked, &pins, &chosen, bursting)? {
        return Ok((id, false));
    }
    check_open(inner, &ask.peer.origin)?;
    let argv_key = ask.argv.clone().unwrap_or_default();
    let (new_variables, all_variables) = new_variables(inner, ask)?;
    let facts = risk::Facts {
        writable_executable: pins.writable,
        approved_before: inner.approval_memory().approved_before(
            &ask.environment,
            &argv_key,
            masked,
        ),
        denied_before: inner
            .approval_memory()
            .denied_within(&argv_key, masked, DENIED_FLAG_MEMORY),
        recent_requests,
        recent_all,
        new_variable: !new_variables.is_empty(),
        all_variables,
        denied_behaviour: denied_behaviour(inner, &argv_key),
    };
    let contradictions = risk::contradictions(reason.as_deref(), &facts);
    let mut flags = request_flags(
        inner,
        ask,
        reason.as_deref(),
        &facts,
        &chosen,
        !contradictions.is_empty(),
    );
    // The claim (kind, pid) disagrees with the process that connected. A mount read has no
    // claim: the broker itself made the ask from the reader it found.
    let claim_mismatch = if ask.mount.is_some() {
        None
    } else {
        ask.peer.mismatch(&ask.client)
    };
    if claim_mismatch.is_some() {
        flags.push("claimed-identity".to_owned());
    }
    // Policy rules, made by the human with their factor.
    let (deny_hit, mut auto_hit) = rules(inner, ask, &pins, &argv_key, &mut flags)?;
    if let Some(i) = deny_hit {
        return Err(refused_by_rule(inner, ask, &key, i, masked));
    }
    // CI mode: no human will ever decide, so what no frozen rule covers is refused at once.
    if inner.ci() && auto_hit.is_none() {
        return Err(crate::broker::ci::refused_ask(
            inner, ask, &key, &flags, masked,
        ));
    }
    let id = inner.requests().next_id();
    let facts = RequestFacts {
        reason,
        ttl_seconds,
        executable: pins.executable.clone(),
        inputs: pins.inputs.clone(),
        risk: flags,
        chosen_values: chosen,
        new_variables,
        contradictions,
        masked,
    };
    let mut req = AccessReq::new(id, ask, facts);
    // A value made at random in the strings of a requester holding none: loud, never automatic.
    let (outside, strings) = custody::found(inner, &req);
    if !outside.is_empty() {
        req.flag(custody::FLAG);
        auto_hit = None;
    }
    // Recorded before the request exists: refused when the log cannot be written.
    audit_request(inner, &req, claim_mismatch)?;
    if !outside.is_empty() {
        custody::record(inner, id, &outside, &strings);
    }
    let taken = inner.requests_mut().take_id();
    debug_assert_eq!(taken, id, "the id is taken under the same lock");
    let reason = req.reason().to_owned();
    inner.requests_mut().insert(req);
    if let Some((rule, ttl)) = auto_hit {
        auto_approve(inner, id, rule, ttl)?;
        return Ok((id, true));
    }
    notify_created(inner, id, ask, reason.as_deref(), masked);
    Ok((id, true))
}

/// Audits an ask refused by deny rule `i` (`deny_rule`; the client's scope `key`, its argv
/// masked as its card would be) and returns the refusal.
fn refused_by_rule(inner: &mut Inner, ask: &Ask, key: &str, i: usize, masked: bool) -> OpError {
    inner.audit_note_as(
        "deny_rule",
        json!({"rule": i, "client": key, "environment": ask.environment, "argv": ask.argv}),
        masked,
    );
    OpError::new(
        ErrorCode::Denied,
        format!(
            "refused by deny rule #{i} of environment '{}'",
            ask.environment
        ),
    )
    .hint("the user's policy forbids this command; ask the user instead of retrying")
}

/// Grants the new request `id` by auto-approve rule `rule`, for `ttl` seconds.
fn auto_approve(inner: &mut Inner, id: u64, rule: usize, ttl: u64) -> OpResult<()> {
    let req = inner.requests().get(id).cloned();
    if let Some(req) = req {
        grant_request(
            inner,
            &req,
            ApproveOptions {
                ttl_seconds: Some(ttl),
                uses: None,
                any_command: false,
                prefix: false,
                subdirs: false,
            },
            "auto-approve rule",
            Some(rule),
        )?;
    }
    Ok(())
}

/// Tells the human about the new request `id`. The notifier's command line (readable in
/// `/proc` by the agent) carries the argv and reason: redacted as the card is.
fn notify_created(inner: &mut Inner, id: u64, ask: &Ask, reason: Option<&str>, masked: bool) {
    let redactor = inner.card_matcher(masked);
    let (argv, reason) = match redactor {
        Some(r) => (
            ask.argv.as_ref().map(|a| {
                a.iter()
                    .map(|w| crate::broker::card_redact::redact_str(&r, w))
                    .collect::<Vec<_>>()
            }),
            reason.map(|s| crate::broker::card_redact::redact_str(&r, s)),
        ),
        None => (ask.argv.clone(), reason.map(str::to_owned)),
    };
    crate::notify::request_created(id, &ask.environment, argv.as_deref(), reason.as_deref());
}

/// Counts this ask towards the burst rate, coalesced or not: per real origin (never the
/// claimed client name, which any raw frame can vary) and across all origins. Returns the
/// requests of the last minute `(of this origin, of all)`, this one included.
fn count_recent(inner: &mut Inner, origin: &str) -> (usize, usize) {
    let now_i = Instant::now();
    let mut count = |k: &str| {
        let recent = inner.request_times_mut().entry(k.to_owned()).or_default();
        while recent
            .front()
            .is_some_and(|t| now_i.duration_since(*t) > Duration::from_secs(60))
        {
            recent.pop_front();
        }
        recent.push_back(now_i);
        recent.len()
    };
    let counts = (count(origin), count(ALL));
    // Origins quiet for a minute are forgotten (a copy of an executable per request would
    // otherwise grow the map for the broker's life).
    inner.request_times_mut().retain(|_, d| {
        d.back()
            .is_some_and(|t| now_i.duration_since(*t) <= Duration::from_secs(60))
    });
    counts
}

/// The pending request this ask repeats (same pins and chosen values): it only counts, and a
/// burst is flagged on it. A matching request denied recently refuses the ask.
fn coalesce(
    inner: &mut Inner,
    ask: &Ask,
    masked: bool,
    pins: &Pins,
    chosen: &[ChosenValue],
    bursting: bool,
) -> OpResult<Option<u64>> {
    for r in inner.requests_mut().iter_mut() {
        // An ask whose strings are shown as given never merges with one whose strings are
        // masked (or the other way round): the raw comparison would tell an agent which of its
        // planted candidates is the value a holder's card masks (merged, or "denied", for the
        // one that is; a request of its own for the rest).
        if !r.same_ask(ask) || r.masked() != masked {
            continue;
        }
        match &r.state() {
            RequestState::Pending
                if *r.executable() == pins.executable
                    && r.inputs() == pins.inputs
                    && r.chosen_values() == chosen =>
            {
                r.ask_again(bursting);
                return Ok(Some(r.id()));
            }
            RequestState::Denied { reason }
                if r.decided().is_some_and(|d| d.elapsed() < DENIAL_MEMORY) =>
            {
                return Err(OpError::new(
                    ErrorCode::Denied,
                    format!(
                        "the user denied this request (#{}){}",
                        r.id(),
                        reason
                            .as_ref()
                            .map(|x| format!(": {}", keyveil_proto::display::visible_text(x)))
                            .unwrap_or_default()
                    ),
                )
                .hint("do not ask again in a loop; ask the user what they want instead"));
            }
            _ => {}
        }
    }
    Ok(None)
}

/// Refuses a new request while too many wait: of this origin, or of all together.
fn check_open(inner: &Inner, origin: &str) -> OpResult<()> {
    let pending = || inner.requests().pending();
    let open = pending().filter(|r| r.peer().origin == origin).count();
    let open_all = pending().count();
    if open >= MAX_OPEN_REQUESTS_PER_CLIENT {
        return Err(OpError::new(
            ErrorCode::Denied,
            format!(
                "{open} requests of this client already wait for the user; no more are queued (clients are counted by the process that connects, not by the name they give)"
            ),
        )
        .hint("wait until the user has answered them (`keyveil requests` lists them)"));
    }
    if open_all >= MAX_OPEN_REQUESTS {
        return Err(OpError::new(
            ErrorCode::Denied,
            format!("{open_all} requests already wait for the user; no more are queued"),
        )
        .hint("wait until the user has answered them (`keyveil requests` lists them)"));
    }
    Ok(())
}

/// The requested variables stored recently without the factor (or before keyveil recorded
/// how, then by creation time; never a value stored with the factor), and whether the ask
/// names every variable of an environment holding more than one.
fn new_variables(inner: &Inner, ask: &Ask) -> OpResult<(Vec<NewVariable>, bool)> {
    let cutoff = Timestamp::now() - SignedDuration::from_secs(risk::NEW_VARIABLE_SECONDS);
    let vault = inner.vault()?;
    let Some(e) = vault.data().environments.get(&ask.environment) else {
        return Ok((Vec::new(), false));
    };
    let new: Vec<NewVariable> = ask
        .variables
        .iter()
        .filter_map(|n| e.variables.get(n).map(|v| (n, v)))
        .filter_map(|(n, v)| {
            let (recent, how) = match v.stored {
                Some(r) if r.factor => (false, ""),
                Some(r) => (r.at > cutoff, "without the factor"),
                None => (v.created_at > cutoff, "unknown"),
            };
            recent.then(|| NewVariable {
                variable: n.clone(),
                created_at: v.created_at,
                stored_at: v.stored.map(|r| r.at),
                stored: how,
            })
        })
        .collect();
    let names: Vec<String> = e.variables.keys().cloned().collect();
    let all = names.len() > 1 && crate::broker::state::includes_all(&ask.variables, &names);
    Ok((new, all))
}

/// Behaviour classes this command shares with requests denied in the last hour.
fn denied_behaviour(inner: &Inner, argv: &[String]) -> Vec<String> {
    let behaviour = risk::behaviour(argv);
    inner
        .approval_memory()
        .denied_behaviours(DENIED_FLAG_MEMORY)
        .flat_map(|b| risk::shared_behaviour(b, &behaviour))
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect()
}

/// The request's flags, sorted: [`risk::assess`] over the requester-supplied strings, then
/// what only the broker knows of this ask (chosen values, program on stdin, compromised
/// values, a reason the facts contradict, a mount reader's flags).
fn request_flags(
    inner: &Inner,
    ask: &Ask,
    reason: Option<&str>,
    facts: &risk::Facts,
    chosen: &[ChosenValue],
    contradicted: bool,
) -> Vec<String> {
    let argv_key = ask.argv.clone().unwrap_or_default();
    let mut strings: Vec<&str> = vec![ask.cwd.as_str(), ask.environment.as_str()];
    if let Some(r) = reason {
        strings.push(r);
    }
    strings.extend(ask.variables.iter().map(String::as_str));
    strings.extend(ask.pass_env.iter().map(String::as_str));
    let mut flags = risk::assess(&argv_key, &strings, &ask.variables, facts);
    if ask.argv.is_none() {
        flags.push("any-command".to_owned());
    }
    // A mount reader's environment has its own flag (`code-loading-environment`).
    if chosen.iter().any(|c| c.origin != "reader-env") {
        flags.push("agent-chosen-value".to_owned());
    }
    if ask.stdin.as_ref().is_some_and(|s| s.program) {
        flags.push("stdin-program".to_owned());
    }
    if crate::broker::sweep_ops::any_compromised(inner, &ask.environment, &ask.variables) {
        flags.push("compromised-value".to_owned());
    }
    if contradicted {
        flags.push("reason-contradicts-facts".to_owned());
    }
    if let Some(m) = &ask.mount {
        flags.extend(m.flags.iter().cloned());
    }
    flags.sort();
    flags.dedup();
    flags
}

/// An auto-approve rule that covers a request: its index and its grant's lifetime (seconds).
type AutoHit = (usize, u64);

/// The environment's rules applied: the deny rule that covers the command, and the
/// auto-approve rule that covers the request `(rule, ttl_seconds)`. A rule whose bound files
/// changed since it was made covers nothing and adds `changed-since-rule` to `flags`.
fn rules(
    inner: &mut Inner,
    ask: &Ask,
    pins: &Pins,
    argv_key: &[String],
    flags: &mut Vec<String>,
) -> OpResult<(Option<usize>, Option<AutoHit>)> {
    let policy = inner
        .vault()?
        .data()
        .environments
        .get(&ask.environment)
        .map(|e| e.policy.clone())
        .unwrap_or_default();
    let deny_hit = policy
        .deny
        .iter()
        .position(|r| deny_covers(&r.argv, r.prefix, argv_key));
    // Auto-approval never covers a request carrying hidden-text or injection signs.
    let suspicious = flags.iter().any(|f| {
        matches!(
            f.as_str(),
            "control-characters"
                | "bidi-control"
                | "invisible-characters"
                | "confusable"
                | "padding"
                | "workspace-executable"
                | "claimed-identity"
                | "agent-chosen-value"
                | "compromised-value"
                | "value-outside-custody"
                | "new-variable"
                | "rephrased-denied"
        )
    });
    // A rule covers a request only while what it runs is what the rule bound when the
    // human made it: a config, script or program changed or added since goes to the human.
    let mut unbound = None;
    // A mount read is never auto-approved: a rule was made for runs, whose output keyveil
    // redacts; a mount's reader it does not. Nor is a run carrying standard input: a rule
    // binds a command and its files, never bytes the requester writes.
    let auto_hit = if suspicious || ask.argv.is_none() || ask.mount.is_some() || ask.stdin.is_some()
    {
        None
    } else {
        policy.auto_approve.iter().enumerate().find_map(|(i, r)| {
            let matches = rule_matches(&r.argv, r.prefix, argv_key)
                && Path::new(&ask.cwd).starts_with(&r.cwd);
            if matches && !rule_binds(r, pins) {
                unbound.get_or_insert(i);
                return None;
            }
            matches.then_some((i, r.ttl_seconds))
        })
    };
    if auto_hit.is_none()
        && let Some(i) = unbound
    {
        flags.push("changed-since-rule".to_owned());
        inner.audit_note(
            "auto_approve_skipped",
            json!({"rule": i, "why": "what the command runs is not what the rule bound when it was made"}),
        );
    }
    Ok((deny_hit, auto_hit))
}

/// The `request` audit record. Requester-supplied strings (argv, reason, cwd, names, client
/// info) are stored as given and matched only against values no agent can guess
/// (`card_redact.rs`), whose redactor the record's strings go through as a card's do: which of
/// them a matcher marks is otherwise an oracle an agent reads back from the audit without any
/// grant (issue 13, item 1). Humans see them through `display`'s escaper. Fails when the log
/// cannot be written.
fn audit_request(inner: &mut Inner, r: &AccessReq, claim_mismatch: Option<String>) -> OpResult<()> {
    let mut entry = json!({
            "request_id": r.id(),
            "client": r.client().scope_key(),
            "client_version": r.client().version,
            "client_pid": r.client().pid,
            "peer": r.peer(),
            "claimed_identity": claim_mismatch,
            "environment": r.environment(),
            "variables": r.variables(),
            "argv": r.argv(),
            "cwd": r.cwd(),
            "pass_env": r.pass_env(),
            "executable": r.executable().as_ref().map(|p| json!({"path": p.path, "sha256": p.sha256})),
            "inputs": r.inputs().iter().map(|i| json!({"path": i.path, "sha256": i.sha256})).collect::<Vec<_>>(),
            "risk": &r.risk(),
            "reason": r.reason(),
            // Which values were shown and bound, by digest: the values stay out of the log.
            "chosen_values": r.chosen_values().iter().map(|c| json!({
                "origin": c.origin, "name": c.name, "variable": c.variable,
                "stored_at": c.stored_at, "bytes": c.bytes, "digest": c.digest,
            })).collect::<Vec<_>>(),
            "new_variables": &r.new_variables(),
            // The requester's standard input by size and digest (its text is on the card).
            "stdin": r.stdin().as_ref().map(|s| json!({"bytes": s.bytes, "digest": s.digest, "program": s.program})),
            "contradictions": &r.contradictions(),
            "mount": r.mount(),
    });
    if let Some(red) = inner.card_matcher(r.masked()) {
        crate::broker::card_redact::redact_json(&red, &mut entry);
    }
    inner.must_audit_as("request", entry, r.masked())
}

/// Whether the strings of a request from `peer` are matched against values where they are
/// shown ([`AccessReq::masked`]): yes when the peer may hold values (it descends from a live
/// run or a mount reader that was written values), no when it cannot (its strings are its
/// own: masking a planted guess would confirm it, showing it reveals nothing).
///
/// # Errors
/// [`ErrorCode::Denied`] when the broker cannot tell which (the process exited, its pid was
/// reused, or a parent cannot be read): neither masking nor showing is safe then.
pub(crate) fn strings_masked(inner: &mut Inner, peer: &Peer) -> OpResult<bool> {
    match inner.peer_holds_values(peer) {
        Holds::No => Ok(false),
        Holds::Yes => Ok(true),
        Holds::Unsure => Err(OpError::new(
            ErrorCode::Denied,
            "keyveil cannot tell which process sent this request (it exited, its pid was \
             reused, or one of its parents cannot be read), so it cannot tell whether what the \
             request shows may hold a value",
        )
        .hint(
            "send the request from a process that stays connected until the reply, in the \
             broker's PID namespace (`keyveil run` from a shell)",
        )),
    }
}

/// `request_access`: a request for access, optionally bound to a command.
/// `peer` is the process at the other end of the socket (`peer.rs`).
pub(crate) async fn request_access(
    broker: &Broker,
    a: AccessRequest,
    peer: Peer,
) -> OpResult<op::AccessRequested> {
    if a.client.kind == crate::broker::mounts::MOUNT_KIND {
        return Err(OpError::new(
            ErrorCode::Usage,
            "client kind `mount` is the broker's own (reads of a mount); no request may claim it",
        ));
    }
    let cwd = crate::broker::cwd::canonical_cwd(&a.cwd)?;
    if let Some(argv) = &a.argv
        && (argv.is_empty() || argv.first().is_some_and(String::is_empty))
    {
        return Err(OpError::new(ErrorCode::Usage, "the command is empty"));
    }
    let pass_env = check_pass_env(&a.pass_env)?;
    crate::broker::manifest_pin::check_pin(broker, &a.environment)?;
    let (vars, search_path, home) = {
        let inner = broker.lock();
        (
            inner.resolve_variables(&a.environment, a.variables.as_deref())?,
            inner.policy_path(&a.environment),
            inner.child_home(),
        )
    };
    let pins = match &a.argv {
        Some(argv) => prepare_bounded(argv.clone(), cwd.clone(), search_path, home).await?,
        None => Pins::default(),
    };
    // Values whose source the agent could have chosen: read now, quoted on the card.
    let linked = crate::broker::leases::linked_chosen(broker, &a.environment, &vars).await?;
    let ask = Ask {
        client: a.client,
        environment: a.environment,
        variables: vars,
        argv: a.argv,
        cwd,
        pass_values: pass_values(&pass_env, &a.pass_values),
        pass_env,
        // Runs under this grant get /dev/null (a run carrying stdin is another request).
        stdin: None,
        peer,
        mount: None,
        linked,
    };
    let mut inner = broker.lock();
    let (id, created) = find_or_create_request(&mut inner, &ask, pins, a.reason, a.ttl_seconds)?;
    drop(inner);
    if created {
        broker.notify();
    }
    Ok(op::AccessRequested {
        request_id: id,
        status: "pending".to_owned(),
        hint: approve_hint(id),
    })
}

/// `access_status`.
pub(crate) fn access_status(broker: &Broker, id: u64) -> OpResult<op::AccessState> {
    let mut inner = broker.lock();
    inner.expire_requests();
    let r = inner
        .requests()
        .get(id)
        .ok_or_else(|| OpError::new(ErrorCode::NotFound, format!("no request #{id}")))?;
    Ok(match &r.state() {
        RequestState::Pending => op::AccessState::Pending {
            hint: approve_hint(id),
        },
        RequestState::Approved { grant_id } => {
            let g = inner.grants().get(grant_id);
            let (grant_id, expires_at) = (grant_id.clone(), g.map(|g| g.expires_at()));
            if g.is_some_and(|g| g.live(Timestamp::now())) {
                op::AccessState::Approved {
                    grant_id,
                    expires_at,
                }
            } else {
                op::AccessState::Ended {
                    grant_id,
                    expires_at,
                }
            }
        }
        RequestState::Denied { reason } => op::AccessState::Denied {
            reason: reason.clone(),
        },
        RequestState::Expired => op::AccessState::Expired,
    })
}
