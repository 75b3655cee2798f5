//! Reading the command line: clap's parser, plus one correction clap cannot make on its own:
//! `keyveil run --env demo echo hi` (the command without `--` before it) is answered with the
//! exact command line that works.

use clap::Parser;

use super::Cli;

/// Subcommands whose command goes after `--` (`policy set ENV auto-approve|deny` too).
const TAKES_A_COMMAND: [&str; 5] = ["run", "start", "agent", "auto-approve", "deny"];

/// Parses `std::env::args_os()`; on an error prints it (with a `hint:` where we know better)
/// and exits as clap does (2 for a usage error, 0 for `--help` and `--version`).
pub fn parse() -> Cli {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    match Cli::try_parse_from(&args) {
        Ok(cli) => cli,
        Err(e) => {
            if let Some(fixed) = missing_double_dash(&e, &args) {
                super::note(format!(
                    "error: the command to run goes after `--`, so that its options are never read as keyveil's\nhint: {fixed}"
                ));
                std::process::exit(2);
            }
            e.exit()
        }
    }
}

/// When `e` is clap refusing the first word of a command given without `--`, the command line
/// with `--` before that word, if it then parses.
fn missing_double_dash(e: &clap::Error, args: &[std::ffi::OsString]) -> Option<String> {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    if e.kind() != ErrorKind::UnknownArgument {
        return None;
    }
    let sub = args
        .iter()
        .skip(1)
        .position(|a| a.to_str().is_some_and(|s| TAKES_A_COMMAND.contains(&s)))?
        + 1;
    if args.iter().any(|a| a == "--") {
        return None;
    }
    let Some(ContextValue::String(bad)) = e.get(ContextKind::InvalidArg) else {
        return None;
    };
    let at = args
        .iter()
        .enumerate()
        .skip(sub + 1)
        .find(|(_, a)| a.to_str() == Some(bad.as_str()))?
        .0;
    let mut fixed: Vec<std::ffi::OsString> = args.to_vec();
    fixed.insert(at, "--".into());
    Cli::try_parse_from(&fixed).ok()?;
    let shown: Vec<String> = std::iter::once("keyveil".to_owned())
        .chain(
            fixed
                .iter()
                .skip(1)
                .map(|a| shell_word(&a.to_string_lossy())),
        )
        .collect();
    Some(shown.join(" "))
}

/// `s` as one shell word: as is when it is plain, single-quoted otherwise.
fn shell_word(s: &str) -> String {
    let plain = !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./=:,@%+".contains(&b));
    if plain {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn hint(line: &[&str]) -> Option<String> {
        let args: Vec<std::ffi::OsString> = line.iter().map(Into::into).collect();
        let e = Cli::try_parse_from(&args).err()?;
        missing_double_dash(&e, &args)
    }

    #[test]
    fn a_command_without_double_dash_gets_the_fixed_line() {
        assert_eq!(
            hint(&["keyveil", "run", "--env", "demo", "echo", "hi"]).as_deref(),
            Some("keyveil run --env demo -- echo hi")
        );
        assert_eq!(
            hint(&[
                "keyveil", "run", "--env", "demo", "--reason", "x y", "sh", "-c", "echo $A"
            ])
            .as_deref(),
            Some("keyveil run --env demo --reason 'x y' -- sh -c 'echo $A'")
        );
        assert_eq!(
            hint(&["keyveil", "start", "--env", "demo", "npm", "run", "dev"]).as_deref(),
            Some("keyveil start --env demo -- npm run dev")
        );
    }

    #[test]
    fn policy_rules_take_their_command_after_double_dash_too() {
        assert_eq!(
            hint(&[
                "keyveil", "policy", "set", "demo", "deny", "--prefix", "printenv"
            ])
            .as_deref(),
            Some("keyveil policy set demo deny --prefix -- printenv")
        );
    }

    #[test]
    fn other_errors_are_left_to_clap() {
        assert_eq!(
            hint(&["keyveil", "run", "--env", "demo", "--bogus", "--", "x"]),
            None
        );
        assert_eq!(hint(&["keyveil", "set", "demo", "A", "extra"]), None);
        assert_eq!(hint(&["keyveil", "run", "echo", "hi"]), None);
    }
}
