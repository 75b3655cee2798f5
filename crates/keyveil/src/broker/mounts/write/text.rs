//! The dotenv text of a grant and the pieces it is written in.

use crate::broker::mounts::*;

/// Largest dotenv text a mount serves.
pub(in crate::broker::mounts) const MAX_TEXT: usize = 1 << 20;

/// One `NAME=VALUE` line of the text: the variable's name as clients see it (an alias where
/// the policy hides names), the length of `NAME=` and of the whole line.
pub(in crate::broker::mounts) struct Line {
    pub(in crate::broker::mounts) shown: String,
    pub(in crate::broker::mounts) name_len: usize,
    pub(in crate::broker::mounts) len: usize,
}

/// The dotenv text of the grant's variables and its lines, or why there is none.
pub(in crate::broker::mounts) fn dotenv_text(
    broker: &Broker,
    env: &str,
    grant_id: &str,
) -> Result<(zeroize::Zeroizing<String>, Vec<Line>), String> {
    let inner = broker.lock();
    let vars = inner
        .grants()
        .get(grant_id)
        .map(|g| g.variables().to_owned())
        .unwrap_or_default();
    let opened = inner.sealed_values(env, &vars).and_then(|sealed| {
        sealed
            .into_iter()
            .map(|(k, v)| {
                v.open()
                    .map(|o| (k, o))
                    .map_err(super::state::sealed_value_error)
            })
            .collect::<Result<Vec<_>, _>>()
    });
    let text = match opened {
        Err(e) => Err(format!(
            "cannot read the values: {}",
            inner.names().hide_names_in_error(env, &vars, e).message
        )),
        Ok(values) => keyveil_dotenv::write(values.iter().map(|(k, v)| (k.as_str(), v.expose())))
            .map_err(|e| {
                // The name as clients see it (an alias where the policy hides names).
                format!(
                    "cannot write a .env every reader reads the same: {}: {}",
                    inner.names().shown_name(env, &e.name),
                    e.what
                )
            })
            .map(|text| {
                // Each line as written alone: the text is these lines, one after the other.
                let lines = values
                    .iter()
                    .map(|(k, v)| Line {
                        shown: inner.names().shown_name(env, k),
                        name_len: k.len() + 1,
                        len: keyveil_dotenv::write([(k.as_str(), v.expose())])
                            .map_or(0, |l| l.len()),
                    })
                    .collect::<Vec<_>>();
                (text, lines)
            }),
    }?;
    if text.0.len() > MAX_TEXT {
        return Err(format!("the .env text is over {MAX_TEXT} bytes"));
    }
    Ok(text)
}

/// A piece of the text: its bytes, and the line whose value it holds part of (`None`: a
/// name and its `=`; `Some(usize::MAX)`: a value of a line not known).
pub(in crate::broker::mounts) struct Piece {
    pub(in crate::broker::mounts) range: std::ops::Range<usize>,
    pub(in crate::broker::mounts) value_of: Option<usize>,
}

/// Most bytes of a value in one piece of the text (see [`pieces`]).
pub(in crate::broker::mounts) const VALUE_PIECE: usize = 4;

/// The pieces the text is written in, each only after the reader has read the one before:
/// every `NAME=` in one piece, each value (with its line end) in pieces of at most
/// [`VALUE_PIECE`] bytes, so that a process that snatches one piece out of the pipe gets a
/// few bytes of one value, and the broker stops at once. Each piece comes with the index of
/// the line it is part of. Lines that do not add up to the text (never expected): the whole
/// text in pieces of [`VALUE_PIECE`] bytes, all counted as values of unknown lines.
pub(in crate::broker::mounts) fn pieces(len: usize, lines: &[Line]) -> Vec<Piece> {
    let mut out = Vec::new();
    let value = |out: &mut Vec<_>, from: usize, to: usize, line: usize| {
        let mut at = from;
        while at < to {
            let end = (at + VALUE_PIECE).min(to);
            out.push(Piece {
                range: at..end,
                value_of: Some(line),
            });
            at = end;
        }
    };
    if lines.iter().map(|l| l.len).sum::<usize>() != len || lines.iter().any(|l| l.name_len > l.len)
    {
        value(&mut out, 0, len, usize::MAX);
        return out;
    }
    let mut at = 0;
    for (i, l) in lines.iter().enumerate() {
        out.push(Piece {
            range: at..at + l.name_len,
            value_of: None,
        });
        value(&mut out, at + l.name_len, at + l.len, i);
        at += l.len;
    }
    out
}
