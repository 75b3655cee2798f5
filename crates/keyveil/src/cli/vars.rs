//! `keyveil set`, `generate` and `unset`: a variable's value stored, made or removed.

use super::*;

/// `keyveil set ENV VAR` at the terminal or from stdin: the environment checked, the value
/// (and a factor on stdin's first line) read, the broker proved before the value goes sealed.
pub(crate) async fn set(
    paths: &Paths,
    env: String,
    var: String,
    from_stdin: bool,
    factor: FactorArgs,
) -> Result<i32> {
    // What can be checked without the value and the factor is checked before either is
    // asked for: the vault is unlocked and the environment exists.
    ensure_env(paths, &env).await?;
    let mut given = factor_from_args(&factor, !from_stdin)?;
    let value = if from_stdin {
        let mut buf = Vec::new();
        std::io::stdin()
            .read_to_end(&mut buf)
            .context("cannot read stdin")?;
        if factor.passphrase_stdin || factor.totp_stdin {
            // First line: the passphrase (or TOTP code); the rest: the value.
            let cut = buf.iter().position(|&b| b == b'\n').unwrap_or(buf.len());
            let line: Vec<u8> = buf.drain(..cut.saturating_add(1).min(buf.len())).collect();
            let first = Passphrase::new(
                String::from_utf8_lossy(&line)
                    .trim_end_matches(['\n', '\r'])
                    .to_owned(),
            );
            given = Some(if factor.totp_stdin {
                FactorInput::Totp(first)
            } else {
                FactorInput::Passphrase(first)
            });
        }
        if buf.ends_with(b"\n") {
            buf.pop();
            if buf.ends_with(b"\r") {
                buf.pop();
            }
        }
        let s = String::from_utf8(buf).map_err(|_| Exit {
            code: 2,
            message: "the value is not valid UTF-8; nothing was stored\nhint: values are text (they become environment variables); encode binary data first, e.g. `base64 -w0 FILE | keyveil set ENV VAR --from-stdin`".into(),
        })?;
        Passphrase::new(s)
    } else {
        read_secret_line(false, &format!("Value for {env}/{var} (hidden): "))?
    };
    if let Some((message, hint)) = keyveil_proto::env_string_too_long(&var, value.expose().len()) {
        return Err(Exit {
            code: 2,
            message: format!("{message}\nhint: {hint}"),
        }
        .into());
    }
    if given.is_none() {
        given = if from_stdin {
            // A value-free probe first: a value that would replace one is sent only
            // sealed, after the broker proved itself with the factor.
            probe_set(paths, &env, &var).await?
        } else {
            // At the terminal the human is there: prove the broker before the value goes.
            Some(factor_input(
                false,
                None,
                false,
                "Vault passphrase (or TOTP code) to hand it to your broker sealed: ",
            )?)
        };
    }
    let aad = format!("{env}/{var}");
    let d = call_guarded(paths, given, |auth| {
        Ok(match auth {
            None => op::VarSet {
                environment: env.clone(),
                name: var.clone(),
                value: Some(value.clone()),
                sealed_value: None,
                factor: None,
            },
            // With a factor the value travels sealed for the broker that proved itself.
            Some(a) => op::VarSet {
                environment: env.clone(),
                name: var.clone(),
                value: None,
                sealed_value: Some(a.seal(aad.as_bytes(), value.expose().as_bytes())?),
                factor: None,
            },
        })
    })
    .await?;
    let op::VarSetReply::Stored(d) = d else {
        bail!("the broker answered a value as if it were a probe");
    };
    if d.short_value {
        note(format!(
            "warning: the value of {var} is shorter than 8 bytes: it is redacted only where it stands as a whole token\nhint: prefer long random values (`keyveil generate {env} {var}`)"
        ));
    }
    say(format!(
        "{} {env}/{var}",
        if d.replaced { "updated" } else { "stored" }
    ));
    Ok(0)
}

/// `keyveil generate ENV VAR`: a random value of `length` characters of `charset`, never shown.
pub(crate) async fn generate(
    paths: &Paths,
    env: String,
    var: String,
    length: usize,
    charset: CharsetArg,
    factor: FactorArgs,
) -> Result<i32> {
    let given = factor_from_args(&factor, true)?;
    call_guarded(paths, given, |_| {
        Ok(op::VarGenerate {
            environment: env.clone(),
            name: var.clone(),
            length,
            charset: charset.into(),
            factor: None,
        })
    })
    .await?;
    say(format!(
        "generated {env}/{var} ({length} characters, never shown)"
    ));
    Ok(0)
}

/// `keyveil unset ENV VAR`: the variable removed, with the factor.
pub(crate) async fn unset(
    paths: &Paths,
    env: String,
    var: String,
    factor: FactorArgs,
) -> Result<i32> {
    let given = factor_from_args(&factor, true)?;
    call_guarded(paths, given, |_| {
        Ok(op::VarUnset {
            environment: env.clone(),
            name: var.clone(),
            factor: None,
        })
    })
    .await?;
    say(format!("removed {env}/{var}"));
    Ok(0)
}
