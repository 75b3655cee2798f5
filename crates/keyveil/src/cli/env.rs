//! `keyveil env`: list, show (and reveal hidden names with the factor), create, remove, and link
//! to an OpenBao KV v2 path.
#![allow(clippy::indexing_slicing)]

use super::*;
use keyveil_proto::op;

pub(crate) async fn env(paths: &Paths, e: EnvCommand) -> Result<i32> {
    match e {
        EnvCommand::Link {
            name,
            openbao,
            kv_path,
            mount,
            admin_stdin,
            bao,
            with_factor,
            factor,
        } => {
            return super::dynamic::run(
                paths,
                super::dynamic::DynamicCommand::Add {
                    env: name,
                    var: None,
                    engine: "openbao-kv".into(),
                    admin_stdin,
                    template: String::new(),
                    template_file: None,
                    output: String::new(),
                    address: Some(openbao),
                    bao: *bao,
                    mount,
                    role: None,
                    kv_path: Some(kv_path),
                    kv_key: None,
                    connect_url: None,
                    prefix: None,
                    description: None,
                    no_check: false,
                    with_factor,
                    factor,
                },
            )
            .await;
        }
        EnvCommand::Create { name, description } => {
            call(
                paths,
                op::EnvCreate {
                    name: name.clone(),
                    description,
                },
            )
            .await?;
            say(format!("created environment {name}"));
        }
        EnvCommand::List { json } => {
            let d = call(paths, op::EnvList).await?;
            if json {
                say(json_text(&d.environments)?);
            } else {
                if d.environments.is_empty() {
                    say("no environments (create one with `keyveil env create NAME`)");
                }
                for e in d.environments {
                    say(format!(
                        "{}  [{}]  {}",
                        e.name,
                        e.variables.join(","),
                        e.description
                    ));
                }
            }
        }
        EnvCommand::Show {
            name,
            json,
            reveal_names: true,
            factor,
        } => {
            let input = factor_input(
                factor.passphrase_stdin,
                factor.totp.as_ref(),
                factor.totp_stdin,
                "Vault passphrase to reveal hidden names: ",
            )?;
            let a = authorize::authorize(paths, &input)
                .await
                .map_err(auth_exit)?;
            let mut req = Request::EnvReveal(op::EnvReveal { name, factor: None });
            a.sign(&mut req);
            let mut d = expect::<op::EnvReveal>(client::call(paths, &req).await?)?;
            // The names come back sealed for this process only.
            let sealed = d.sealed_names.take().unwrap_or_default();
            let names = a
                .open(b"env_reveal", &sealed)
                .context("the names did not come sealed from the broker that proved itself")?;
            let names: Vec<op::RevealedName> =
                serde_json::from_slice(&names).context("unreadable names")?;
            d.names = Some(names);
            if json {
                say(json_text(&d)?);
            } else {
                if !d.hide_names {
                    note(
                        "note: this environment does not hide its names; agents see them as they are",
                    );
                }
                for v in d.names.unwrap_or_default() {
                    say(format!(
                        "  {:<20} {:<24} {}",
                        v.alias,
                        keyveil_proto::display::visible(&v.real_name),
                        keyveil_proto::display::visible(&v.description)
                    ));
                }
            }
        }
        EnvCommand::Show { name, json, .. } => {
            let d = call(
                paths,
                op::EnvShow {
                    name,
                    versions: true,
                },
            )
            .await?;
            if json {
                say(json_text(&d)?);
            } else {
                say(format!("{}: {}", d.name, d.description));
                for v in d.variables {
                    // A variable linked to OpenBao KV v2: the secret's version there.
                    let version = v
                        .kv_version
                        .map(|n| format!("KV v{n}  "))
                        .unwrap_or_default();
                    say(format!(
                        "  {:<24} {:<9} {:<10} {version}{}",
                        v.name,
                        v.source,
                        if v.set { "set" } else { "awaiting" },
                        v.description
                    ));
                    if let Some(c) = &v.compromised {
                        say(format!(
                            "    COMPROMISED: {} {} found by a sweep at {} ({}); {}",
                            c.copies,
                            if c.copies == 1 { "copy" } else { "copies" },
                            c.found_at,
                            c.kinds.join(", "),
                            c.hint
                        ));
                    }
                }
            }
        }
        EnvCommand::Rm { name, factor } => {
            let given = factor_from_args(&factor, true)?;
            call_guarded(paths, given, |_| {
                Ok(op::EnvRemove {
                    name: name.clone(),
                    factor: None,
                })
            })
            .await?;
            say(format!("removed environment {name}"));
        }
    }
    Ok(0)
}
