//! `keyveil env`: list, show (and reveal hidden names with the factor), create, remove.
#![allow(clippy::indexing_slicing)]

use super::*;

pub(crate) async fn env(paths: &Paths, e: EnvCommand) -> Result<i32> {
    match e {
        EnvCommand::Create { name, description } => {
            call(
                paths,
                Request::EnvCreate {
                    name: name.clone(),
                    description,
                },
            )
            .await?;
            say(format!("created environment {name}"));
        }
        EnvCommand::List { json } => {
            let d = call(paths, Request::EnvList).await?;
            if json {
                say(d["environments"].to_string());
            } else {
                let list = d["environments"].as_array().cloned().unwrap_or_default();
                if list.is_empty() {
                    say("no environments (create one with `keyveil env create NAME`)");
                }
                for e in list {
                    say(format!(
                        "{}  [{}]  {}",
                        e["name"].as_str().unwrap_or(""),
                        join(&e["variables"]),
                        e["description"].as_str().unwrap_or("")
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
            let mut req = Request::EnvReveal { name, factor: None };
            a.sign(&mut req);
            let mut d = expect_ok(client::call(paths, &req).await?)?;
            // The names come back sealed for this process only.
            let sealed = d["sealed_names"].as_str().unwrap_or_default().to_owned();
            let names = a
                .open(b"env_reveal", &sealed)
                .context("the names did not come sealed from the broker that proved itself")?;
            d["names"] = serde_json::from_slice(&names).context("unreadable names")?;
            if let Some(o) = d.as_object_mut() {
                o.remove("sealed_names");
            }
            if json {
                say(d.to_string());
            } else {
                if d["hide_names"] != true {
                    note(
                        "note: this environment does not hide its names; agents see them as they are",
                    );
                }
                for v in d["names"].as_array().cloned().unwrap_or_default() {
                    say(format!(
                        "  {:<20} {:<24} {}",
                        v["alias"].as_str().unwrap_or(""),
                        crate::display::visible(v["real_name"].as_str().unwrap_or("")),
                        crate::display::visible(v["description"].as_str().unwrap_or(""))
                    ));
                }
            }
        }
        EnvCommand::Show { name, json, .. } => {
            let d = call(paths, Request::EnvShow { name }).await?;
            if json {
                say(d.to_string());
            } else {
                say(format!(
                    "{}: {}",
                    d["name"].as_str().unwrap_or(""),
                    d["description"].as_str().unwrap_or("")
                ));
                for v in d["variables"].as_array().cloned().unwrap_or_default() {
                    say(format!(
                        "  {:<24} {:<9} {:<10} {}",
                        v["name"].as_str().unwrap_or(""),
                        v["source"].as_str().unwrap_or(""),
                        if v["set"] == true { "set" } else { "awaiting" },
                        v["description"].as_str().unwrap_or("")
                    ));
                    let c = &v["compromised"];
                    if c.is_object() {
                        say(format!(
                            "    COMPROMISED: {} {} found by a sweep at {} ({}); {}",
                            c["copies"],
                            if c["copies"] == 1 { "copy" } else { "copies" },
                            c["found_at"].as_str().unwrap_or(""),
                            join(&c["kinds"]),
                            c["hint"].as_str().unwrap_or("")
                        ));
                    }
                }
            }
        }
        EnvCommand::Rm { name, factor } => {
            let given = factor_from_args(&factor, true)?;
            call_guarded(paths, given, |_| {
                Ok(Request::EnvRemove {
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
