//! `keyveil factor` (TOTP enrolment) and `keyveil policy` (show, set).
#![allow(clippy::indexing_slicing)]

use super::*;
use keyveil_proto::op;

pub(crate) async fn factor_cmd(paths: &Paths, f: FactorCommand) -> Result<i32> {
    match f {
        FactorCommand::Enroll {
            passphrase_stdin,
            no_confirm,
            ..
        } => {
            let p = read_secret_line(passphrase_stdin, "Vault passphrase: ")?;
            // The seed comes back sealed under the factor key: only this process can read it.
            let a = authorize::authorize(paths, &FactorInput::Passphrase(p))
                .await
                .map_err(auth_exit)?;
            let mut req = Request::FactorEnroll(op::FactorEnroll { factor: None });
            a.sign(&mut req);
            let d = expect::<op::FactorEnroll>(client::call(paths, &req).await?)?;
            let open = |sealed: &str| -> Result<String> {
                let bytes = a.open(b"factor_enroll", sealed).context(
                    "the enrolment reply did not come sealed from the broker that proved itself; nothing was enrolled",
                )?;
                Ok(String::from_utf8_lossy(&bytes).into_owned())
            };
            say(open(&d.sealed_qr)?);
            say(format!(
                "Scan the QR code, or add this URI to your authenticator app:\n{}",
                open(&d.sealed_uri)?
            ));
            if no_confirm {
                say("then finish with: keyveil factor confirm CODE");
                return Ok(0);
            }
            // A mistyped first code asks again (three tries; each counts towards the lockout).
            let mut tries = 0;
            loop {
                tries += 1;
                let code = read_secret_line(false, "Code shown by the app: ")?;
                let reply = client::call(
                    paths,
                    &op::FactorConfirm {
                        code: code.expose().to_owned(),
                    }
                    .into(),
                )
                .await?;
                match reply {
                    Reply::Error {
                        code: ErrorCode::Denied,
                        message,
                        ..
                    } if tries < 3 && !message.contains("locked") => {
                        note(format!(
                            "{message}; try again with the code the app shows now"
                        ));
                    }
                    other => {
                        expect::<op::FactorConfirm>(other)?;
                        break;
                    }
                }
            }
            say(
                "TOTP enrolled: approve with `keyveil approve ID --totp` (the code is asked for) where the policy allows it",
            );
            Ok(0)
        }
        FactorCommand::Confirm { code } => {
            let code = match code {
                Some(c) => c,
                None => read_secret_line(false, "Code shown by the app: ")?
                    .expose()
                    .to_owned(),
            };
            call(paths, op::FactorConfirm { code }).await?;
            say("TOTP enrolled");
            Ok(0)
        }
    }
}

/// The rule `index` of `kind` (`deny`, `auto_approve`) as the broker lists it: shown to the
/// human, and its digest bound into the removal.
pub(crate) async fn shown_rule(
    paths: &Paths,
    env: &str,
    kind: &str,
    index: usize,
) -> Result<String> {
    let d = call(
        paths,
        op::PolicyShow {
            environment: env.to_owned(),
        },
    )
    .await?;
    let rule = match kind {
        "auto_approve" => d.policy.auto_approve.get(index).map(serde_json::to_value),
        _ => d.policy.deny.get(index).map(serde_json::to_value),
    };
    let Some(rule) = rule.transpose().context("cannot encode the rule")? else {
        return Err(Exit {
            code: 1,
            message: format!(
                "no {} rule #{index} in {env}\nhint: list the rules with `keyveil policy show {env}`",
                kind.replace('_', "-")
            ),
        }
        .into());
    };
    note(format!(
        "removing {} rule #{index}: {}",
        kind.replace('_', "-"),
        keyveil_proto::display::clip(&rule.to_string(), 200)
    ));
    Ok(crate::factor_proof::card_digest(&rule))
}

pub(crate) async fn policy_cmd(paths: &Paths, p: PolicyCommand) -> Result<i32> {
    use keyveil_proto::PolicyChange;
    match p {
        PolicyCommand::Show { env, json } => {
            let d = call(paths, op::PolicyShow { environment: env }).await?;
            if json {
                say(json_text(&d)?);
            } else {
                let pol = &d.policy;
                say(format!(
                    "environment: {}\nfactor: {}\nmax TTL: {} s\nPATH: {}\nTOTP enrolled: {}\nhide names: {}",
                    keyveil_proto::display::visible(&d.environment),
                    pol.factor,
                    pol.max_ttl_seconds,
                    keyveil_proto::display::visible(&d.effective_path),
                    d.totp_enrolled,
                    if pol.hide_names { "on" } else { "off" }
                ));
                say(format!(
                    "insecure loopback: {}",
                    if pol.other.get("insecure_loopback") == Some(&serde_json::Value::Bool(true)) {
                        "on (plain HTTP to a loopback port your own user holds may get the OpenBao login secret)"
                    } else {
                        "off"
                    }
                ));
                for (i, r) in pol.auto_approve.iter().enumerate() {
                    say(format!(
                        "auto-approve #{i}: {}{} under {} for {} s",
                        crate::card::argv_words(r.argv.iter().map(String::as_str)),
                        if r.prefix { " …" } else { "" },
                        keyveil_proto::display::visible(&r.cwd),
                        r.ttl_seconds
                    ));
                }
                for b in &pol.bindings {
                    let hosts: Vec<String> = b
                        .hosts
                        .iter()
                        .map(|h| keyveil_proto::display::visible(h))
                        .collect();
                    let parts = match (b.url, b.body) {
                        (false, false) => "headers",
                        (true, false) => "headers and URL",
                        (false, true) => "headers and body",
                        (true, true) => "headers, URL and body",
                    };
                    say(format!(
                        "bound: {} → placeholder; real value only to {} (in the {parts})",
                        keyveil_proto::display::visible(&b.variable),
                        hosts.join(", ")
                    ));
                }
                if let Some(n) = pol.egress_roots {
                    say(format!("egress roots: system + {n} extra"));
                }
                for (i, r) in pol.deny.iter().enumerate() {
                    say(format!(
                        "deny #{i}: {}{}",
                        crate::card::argv_words(r.argv.iter().map(String::as_str)),
                        if r.prefix { " …" } else { "" }
                    ));
                }
            }
            Ok(0)
        }
        PolicyCommand::Set {
            env,
            change,
            factor,
        } => {
            let change = match change {
                PolicySetCommand::Factor { factor } => PolicyChange::Factor { factor },
                PolicySetCommand::MaxTtl { duration } => PolicyChange::MaxTtl {
                    seconds: parse_duration(&duration)?,
                },
                PolicySetCommand::Path { path } => PolicyChange::Path {
                    path: (path != "default").then_some(path),
                },
                PolicySetCommand::AutoApprove {
                    cwd,
                    ttl,
                    prefix,
                    command,
                } => PolicyChange::AutoApproveAdd {
                    argv: command,
                    prefix,
                    cwd: std::path::absolute(cwd)
                        .context("bad --cwd")?
                        .to_string_lossy()
                        .into_owned(),
                    ttl_seconds: parse_duration(&ttl)?,
                },
                PolicySetCommand::AutoApproveRm { index } => PolicyChange::AutoApproveRemove {
                    index,
                    rule: shown_rule(paths, &env, "auto_approve", index).await?,
                },
                PolicySetCommand::Deny { prefix, command } => PolicyChange::DenyAdd {
                    argv: command,
                    prefix,
                },
                PolicySetCommand::DenyRm { index } => PolicyChange::DenyRemove {
                    index,
                    rule: shown_rule(paths, &env, "deny", index).await?,
                },
                PolicySetCommand::WriteLeaks { action } => PolicyChange::WriteLeaks { action },
                PolicySetCommand::HideNames { setting } => PolicyChange::HideNames {
                    hide: setting == "on",
                },
                PolicySetCommand::InsecureLoopback { setting } => PolicyChange::InsecureLoopback {
                    allow: setting == "on",
                },
                PolicySetCommand::Bind {
                    variable,
                    hosts,
                    url,
                    body,
                } => PolicyChange::Bind {
                    variable,
                    hosts,
                    url,
                    body,
                },
                PolicySetCommand::Unbind { variable } => PolicyChange::Unbind { variable },
                PolicySetCommand::EgressRoots { file } => PolicyChange::EgressRoots {
                    pem: if file == "default" {
                        None
                    } else {
                        Some(std::fs::read_to_string(&file).with_context(|| {
                            format!("cannot read {file}\nhint: give a PEM file of root certificates, or `default`")
                        })?)
                    },
                },
            };
            let input = factor_input(
                factor.passphrase_stdin,
                factor.totp.as_ref(),
                factor.totp_stdin,
                "Vault passphrase (or TOTP code) to change policy: ",
            )?;
            let d = call_signed(
                paths,
                &input,
                op::PolicySet {
                    environment: env.clone(),
                    factor: None,
                    change,
                },
            )
            .await?;
            if let Some(w) = &d.warning {
                note(format!("warning: {w}"));
            }
            say(format!("policy of {env} updated"));
            Ok(0)
        }
    }
}
