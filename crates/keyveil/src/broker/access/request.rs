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
    // Every ask counts towards the burst rate, coalesced or not: per real origin (never the
    // claimed client name, which any raw frame can vary) and across all origins.
    let key = ask.client.scope_key();
    let now_i = Instant::now();
    let mut count = |k: &str| {
        let recent = inner.recent.entry(k.to_owned()).or_default();
        while recent
            .front()
            .is_some_and(|t| now_i.duration_since(*t) > Duration::from_secs(60))
        {
            recent.pop_front();
        }
        recent.push_back(now_i);
        recent.len()
    };
    let recent_requests = count(&ask.peer.origin);
    let recent_all = count(ALL);
    // Origins quiet for a minute are forgotten (a copy of an executable per request would
    // otherwise grow the map for the broker's life).
    inner.recent.retain(|_, d| {
        d.back()
            .is_some_and(|t| now_i.duration_since(*t) <= Duration::from_secs(60))
    });
    let bursting = risk::bursting(recent_requests, recent_all);
    let chosen = chosen_values(inner, ask)?;
    let mut open = 0;
    let mut open_all = 0;
    for r in inner.requests.values_mut() {
        if r.state == RequestState::Pending {
            open_all += 1;
            if r.peer.origin == ask.peer.origin {
                open += 1;
            }
        }
        if !r.same_ask(ask) {
            continue;
        }
        match &r.state {
            RequestState::Pending
                if r.executable == pins.executable
                    && r.inputs == pins.inputs
                    && r.chosen_values == chosen =>
            {
                // Coalesce: the same ask again only counts, and a burst is flagged.
                r.asks += 1;
                if bursting && !r.risk.iter().any(|f| f == "burst") {
                    r.risk.push("burst".to_owned());
                }
                return Ok((r.id, false));
            }
            RequestState::Denied { reason }
                if r.decided.is_some_and(|d| d.elapsed() < DENIAL_MEMORY) =>
            {
                return Err(OpError::new(
                    ErrorCode::Denied,
                    format!(
                        "the user denied this request (#{}){}",
                        r.id,
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
    let argv_key = ask.argv.clone().unwrap_or_default();
    let cutoff = Timestamp::now() - jiff::SignedDuration::from_secs(risk::NEW_VARIABLE_SECONDS);
    let (new_variables, all_variables) = {
        let vault = inner.vault()?;
        match vault.data().environments.get(&ask.environment) {
            None => (Vec::new(), false),
            Some(e) => {
                let new: Vec<NewVariable> = ask
                    .variables
                    .iter()
                    .filter_map(|n| e.variables.get(n).map(|v| (n, v)))
                    .filter_map(|(n, v)| {
                        // Stored without the factor recently, or before keyveil recorded how
                        // (then by creation time); never a value stored with the factor.
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
                let all =
                    e.variables.len() > 1 && e.variables.keys().all(|k| ask.variables.contains(k));
                (new, all)
            }
        }
    };
    let behaviour = risk::behaviour(&argv_key);
    let denied_behaviour: Vec<String> = inner
        .denied_behaviour
        .iter()
        .filter(|(t, _)| t.elapsed() < DENIED_FLAG_MEMORY)
        .flat_map(|(_, b)| risk::shared_behaviour(b, &behaviour))
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let facts = risk::Facts {
        writable_executable: pins.writable,
        approved_before: inner
            .approved_argv
            .contains(&(ask.environment.clone(), argv_key.clone())),
        denied_before: inner
            .denied_argv
            .get(&argv_key)
            .is_some_and(|t| t.elapsed() < DENIED_FLAG_MEMORY),
        recent_requests,
        recent_all,
        new_variable: !new_variables.is_empty(),
        all_variables,
        denied_behaviour,
    };
    let contradictions = risk::contradictions(reason.as_deref(), &facts);
    let mut strings: Vec<&str> = vec![ask.cwd.as_str(), ask.environment.as_str()];
    if let Some(r) = reason.as_deref() {
        strings.push(r);
    }
    strings.extend(ask.variables.iter().map(String::as_str));
    strings.extend(ask.pass_env.iter().map(String::as_str));
    let mut flags = risk::assess(&argv_key, &strings, &ask.variables, &facts);
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
    if !contradictions.is_empty() {
        flags.push("reason-contradicts-facts".to_owned());
    }
    if let Some(m) = &ask.mount {
        flags.extend(m.flags.iter().cloned());
    }
    flags.sort();
    flags.dedup();
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
    let (deny_hit, auto_hit) = {
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
            .position(|r| deny_covers(&r.argv, r.prefix, &argv_key));
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
        let auto_hit =
            if suspicious || ask.argv.is_none() || ask.mount.is_some() || ask.stdin.is_some() {
                None
            } else {
                policy.auto_approve.iter().enumerate().find_map(|(i, r)| {
                    let matches = rule_matches(&r.argv, r.prefix, &argv_key)
                        && Path::new(&ask.cwd).starts_with(&r.cwd);
                    if matches && !rule_binds(r, &pins) {
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
        (deny_hit, auto_hit)
    };
    if let Some(i) = deny_hit {
        inner.audit_note(
            "deny_rule",
            json!({"rule": i, "client": key, "environment": ask.environment, "argv": ask.argv}),
        );
        return Err(OpError::new(
            ErrorCode::Denied,
            format!(
                "refused by deny rule #{i} of environment '{}'",
                ask.environment
            ),
        )
        .hint("the user's policy forbids this command; ask the user instead of retrying"));
    }
    let id = inner.next_request;
    // Requester-supplied strings (argv, reason, cwd, names, client info) are stored and shown
    // as given, never matched against values: which of them a matcher would mark is an oracle
    // an agent reads back from the audit without any grant (issue 13, item 1). Humans see them
    // through `display`'s escaper.
    // Recorded before the request exists: refused when the log cannot be written.
    inner.must_audit(
        "request",
        json!({
            "request_id": id,
            "client": key,
            "client_version": ask.client.version,
            "client_pid": ask.client.pid,
            "peer": ask.peer,
            "claimed_identity": claim_mismatch,
            "environment": ask.environment,
            "variables": ask.variables,
            "argv": ask.argv,
            "cwd": ask.cwd,
            "pass_env": ask.pass_env,
            "executable": pins.executable.as_ref().map(|p| json!({"path": p.path, "sha256": p.sha256})),
            "inputs": pins.inputs.iter().map(|i| json!({"path": i.path, "sha256": i.sha256})).collect::<Vec<_>>(),
            "risk": &flags,
            "reason": reason,
            // Which values were shown and bound, by digest: the values stay out of the log.
            "chosen_values": chosen.iter().map(|c| json!({
                "origin": c.origin, "name": c.name, "variable": c.variable,
                "stored_at": c.stored_at, "bytes": c.bytes, "sha256": c.sha256,
            })).collect::<Vec<_>>(),
            "new_variables": &new_variables,
            // The requester's standard input by size and digest (its text is on the card).
            "stdin": ask.stdin.as_ref().map(|s| json!({"bytes": s.bytes, "sha256": s.sha256, "program": s.program})),
            "contradictions": &contradictions,
            "mount": ask.mount.as_ref().map(|m| &m.path),
        }),
    )?;
    inner.next_request += 1;
    if let Some(f) = &inner.request_ids {
        crate::broker::request_ids::store(f, inner.next_request);
    }
    inner.requests.insert(
        id,
        AccessReq {
            id,
            client: ask.client.clone(),
            peer: ask.peer.clone(),
            environment: ask.environment.clone(),
            variables: ask.variables.clone(),
            argv: ask.argv.clone(),
            cwd: ask.cwd.clone(),
            reason: reason.clone(),
            ttl_seconds,
            pass_env: ask.pass_env.clone(),
            executable: pins.executable.clone(),
            inputs: pins.inputs.clone(),
            risk: flags,
            chosen_values: chosen,
            stdin: ask.stdin.clone(),
            new_variables,
            contradictions,
            mount: ask.mount.as_ref().map(|m| m.path.clone()),
            asks: 1,
            created_at: Timestamp::now(),
            state: RequestState::Pending,
            decided: None,
        },
    );
    if let Some((rule, ttl)) = auto_hit {
        let req = inner.requests.get(&id).cloned();
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
        return Ok((id, true));
    }
    crate::notify::request_created(id, &ask.environment, ask.argv.as_deref(), reason.as_deref());
    Ok((id, true))
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
        .requests
        .get(&id)
        .ok_or_else(|| OpError::new(ErrorCode::NotFound, format!("no request #{id}")))?;
    Ok(match &r.state {
        RequestState::Pending => op::AccessState::Pending {
            hint: approve_hint(id),
        },
        RequestState::Approved { grant_id } => {
            let g = inner.grants.get(grant_id);
            let (grant_id, expires_at) = (grant_id.clone(), g.map(|g| g.expires_at));
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
