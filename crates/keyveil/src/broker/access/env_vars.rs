//! The pass-through variables a request names (the variables a child never gets from the
//! requester, loader and injection variables, are in `loaders::env`).

use super::*;

/// Checks the pass-through names of a request.
pub(crate) fn check_pass_env(names: &[String]) -> OpResult<Vec<String>> {
    let mut out = Vec::new();
    for n in names {
        if !keyveil_vault::is_valid_name(n) {
            return Err(OpError::new(
                ErrorCode::Usage,
                format!(
                    "invalid pass-through name \"{}\"",
                    keyveil_proto::display::clip(n, 80)
                ),
            ));
        }
        if crate::loaders::is_injection_var(n) || crate::loaders::is_loader_var(n) {
            return Err(OpError::new(
                ErrorCode::Denied,
                format!("refused to pass {n} through: it can make the granted process run other code"),
            )
            .hint("the child's environment is built from policy (PATH, HOME) and the granted values; drop this name"));
        }
        if !out.contains(n) {
            out.push(n.clone());
        }
    }
    out.sort();
    Ok(out)
}

/// The requester's value of each pass-through name, as the child would get it (the first
/// occurrence in `env`, like `runner::child_env`); `None` when it is not set.
pub(crate) fn pass_values(
    pass_env: &[String],
    env: &[(String, String)],
) -> std::collections::BTreeMap<String, Option<String>> {
    pass_env
        .iter()
        .map(|n| {
            let v = env.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
            (n.clone(), v)
        })
        .collect()
}
