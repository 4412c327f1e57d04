//! Where in a fleet file an error is: `FleetSpec::from_yaml` adds the line and column of the
//! field to every error, so each caller (the CLI, the tests, anything reading a file) shows them.
//!
//! What holds: a position is only ever appended (` at line L column C`, or ` (field `k`)` where
//! the parser located an error without naming the key written there); the error keeps its kind
//! and its field, and a message with nothing to locate is left as it was.

use crate::error::Error;

/// `error`, from reading `text`, with the position of what it is about.
pub(super) fn locate(text: &str, error: Error) -> Error {
    let message = error.to_string();
    let located = with_location(text, &message);
    let suffix = match located.strip_prefix(&message) {
        Some(suffix) if !suffix.is_empty() => suffix,
        _ => return error,
    };
    match error {
        Error::Invalid { field, reason } => Error::Invalid {
            field,
            reason: reason + suffix,
        },
        Error::FleetFile(message) => Error::FleetFile(message + suffix),
        other => other,
    }
}

/// Adds ` at line L column C` (of the field's value) to a message naming an `invalid FIELD`
/// without a position: the YAML parser locates syntax and type errors, not the checks made on a
/// value once read (`capacity: -3`, `image: ubuntu`).
fn with_location(text: &str, message: &str) -> String {
    if let Some((_, at)) = message.rsplit_once(" at line ") {
        return name_the_key(text, message, at);
    }
    let Some(field) = message
        .split("invalid ")
        .skip(1)
        .filter_map(|rest| rest.split_once(':').map(|(f, _)| f.trim()))
        .find(|f| !f.is_empty() && !f.contains(' '))
    else {
        return message.to_string();
    };
    // A path through a list (`policy.windows[1].timezone`) is followed item by item: the first
    // `timezone` in the file may well be another item's.
    if field.contains('[') {
        return match walk(text, field) {
            Some((line, column)) => format!("{message} at line {line} column {column}"),
            None => message.to_string(),
        };
    }
    // The name of a fleet is its `name` field.
    let (key, top_level) = match field.rsplit_once('.') {
        Some((_, last)) => (last, false),
        None if field == "fleet" => ("name", true),
        None => (field, true),
    };
    let found = text.lines().enumerate().find_map(|(n, line)| {
        let indent = line.len() - line.trim_start().len();
        let rest = line.trim_start().strip_prefix(key)?.strip_prefix(':')?;
        if top_level && indent > 0 {
            return None;
        }
        let value_col = indent + key.len() + 1 + (rest.len() - rest.trim_start().len()) + 1;
        Some((n + 1, value_col))
    });
    match found {
        Some((line, column)) => format!("{message} at line {line} column {column}"),
        None => message.to_string(),
    }
}

/// A line of block YAML: the column of its first character, of its key (past any `- ` that opens
/// a list item), and the key.
struct Line<'a> {
    text: &'a str,
    lead: usize,
    key_at: usize,
    key: Option<&'a str>,
    item: bool,
}

fn line(text: &str) -> Option<Line<'_>> {
    let body = text.trim_start();
    if body.is_empty() || body.starts_with('#') {
        return None;
    }
    let lead = text.len() - body.len();
    let mut key_at = lead;
    let mut rest = body;
    while let Some(after) = rest.strip_prefix("- ") {
        let trimmed = after.trim_start();
        key_at += rest.len() - trimmed.len();
        rest = trimmed;
    }
    let key = rest
        .split_once(':')
        .map(|(k, _)| k.trim_end())
        .filter(|k| !k.is_empty() && !k.contains([' ', '{', '[', '"', '\'']));
    Some(Line {
        text,
        lead,
        key_at,
        key,
        item: body.starts_with("- ") || body == "-",
    })
}

/// The line and column (both from 1) of the value at `path` (`policy.windows[1].timezone`) in a
/// file written in block YAML, where a list's items may be flow mappings (`- {days: [mon]}`).
fn walk(text: &str, path: &str) -> Option<(usize, usize)> {
    let lines: Vec<(usize, Line)> = text
        .lines()
        .enumerate()
        .filter_map(|(n, l)| line(l).map(|l| (n + 1, l)))
        .collect();
    let mut block: &[(usize, Line)] = &lines;
    let mut found = None;
    for segment in path.split('.') {
        let (key, index) = match segment.split_once('[') {
            Some((key, rest)) => (key, Some(rest.strip_suffix(']')?.parse::<usize>().ok()?)),
            None => (segment, None),
        };
        // The block's own keys are its least indented.
        let depth = block.iter().map(|(_, l)| l.key_at).min()?;
        let at = block
            .iter()
            .position(|(_, l)| l.key_at == depth && l.key == Some(key));
        let Some(at) = at else {
            // A flow mapping on one line: `- {days: [mon], timezone: Europe/Berln}`.
            let (n, l) = block.iter().find(|(_, l)| l.text.contains('{'))?;
            let column = after_key(l.text, key)?;
            return index.is_none().then_some((*n, column));
        };
        let (n, l) = &block[at];
        let column = l.key_at + key.len() + 2;
        let value = l.text.get(column - 1..).unwrap_or_default();
        found = Some((*n, column + value.len() - value.trim_start().len()));
        // What belongs to the key: the lines below it indented more, or list items at its indent.
        let end = block[at + 1..]
            .iter()
            .position(|(_, m)| m.lead < l.key_at || (m.lead == l.key_at && !m.item))
            .map_or(block.len(), |k| at + 1 + k);
        block = &block[at + 1..end];
        if let Some(i) = index {
            let lead = block.first()?.1.lead;
            let starts: Vec<usize> = (0..block.len())
                .filter(|&k| block[k].1.item && block[k].1.lead == lead)
                .collect();
            let from = *starts.get(i)?;
            let to = starts.get(i + 1).copied().unwrap_or(block.len());
            block = &block[from..to];
            found = block.first().map(|(n, l)| (*n, l.key_at + 1));
        }
    }
    found
}

/// The column (from 1) of the value after `key:` in a line holding a flow mapping.
fn after_key(text: &str, key: &str) -> Option<usize> {
    let pattern = format!("{key}:");
    let at = text.match_indices(&pattern).find_map(|(at, _)| {
        let before = text[..at].chars().next_back();
        (!before.is_some_and(|c| c.is_alphanumeric() || c == '_')).then_some(at)
    })?;
    let rest = &text[at + pattern.len()..];
    Some(at + pattern.len() + rest.len() - rest.trim_start().len() + 1)
}

/// A message the parser located on a line (`... at line 6 column 3`) but that does not name the
/// key written there (`invalid quantity: "lots"` for `max_surge: lots`): adds it.
fn name_the_key(text: &str, message: &str, at: &str) -> String {
    let line_no: Option<usize> = at.split_whitespace().next().and_then(|n| n.parse().ok());
    let key = line_no
        .and_then(|n| text.lines().nth(n.checked_sub(1)?))
        .and_then(|line| line.trim_start().split_once(':'))
        .map(|(k, _)| k.trim().trim_start_matches("- "))
        .filter(|k| !k.is_empty() && !k.contains(' '));
    match key {
        Some(k) if !message.contains(k) => format!("{message} (field `{k}`)"),
        _ => message.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks_on_values_are_located_at_their_field() {
        let text = "name: web\nimage: ami-12345678\ncapacity: -3\ninstance_type: t3.micro\n";
        assert_eq!(
            with_location(text, "invalid fleet file: invalid capacity: -3 is negative"),
            "invalid fleet file: invalid capacity: -3 is negative at line 3 column 11"
        );
        assert!(
            with_location("name: Web_1\n", "invalid fleet: \"Web_1\" is bad")
                .ends_with("at line 1 column 7")
        );
        let nested = "name: web\npolicy:\n  breaker:\n    unhealthy_percent: 0\n";
        assert!(with_location(
            nested,
            "invalid policy.breaker.unhealthy_percent: must be between 1 and 100"
        )
        .ends_with("at line 4 column 24"));
        // Located by the parser: the key on that line is named if the message does not.
        let located = "unknown field `capacty` at line 3 column 1";
        assert_eq!(with_location("a: 1\nb: 2\ncapacty: 3\n", located), located);
        let surge = "name: web\npolicy:\n  max_surge: lots\n";
        assert_eq!(
            with_location(
                surge,
                "policy: invalid quantity: \"lots\" at line 3 column 3"
            ),
            "policy: invalid quantity: \"lots\" at line 3 column 3 (field `max_surge`)"
        );
        // Through a list: the item's own key, not the first of that name.
        let windows = "name: web\npolicy:\n  windows:\n  - days: [mon]\n    timezone: UTC\n  - days: [mun]\n    timezone: Europe/Berln\n  freezes:\n    - {from: a, until: b}\n";
        for (field, at) in [
            ("policy.windows[1].timezone", "line 7 column 15"),
            ("policy.windows[1].days", "line 6 column 11"),
            ("policy.windows[0]", "line 4 column 5"),
            ("policy.freezes[0].until", "line 9 column 24"),
        ] {
            assert_eq!(
                with_location(windows, &format!("invalid {field}: bad")),
                format!("invalid {field}: bad at {at}")
            );
        }
        let missing = "invalid policy.windows[2].timezone: bad";
        assert_eq!(with_location(windows, missing), missing);
        // Nothing to locate: unchanged.
        let absent = "invalid launch_template: give exactly one of id or name";
        assert_eq!(with_location(text, absent), absent);
    }

    #[test]
    fn a_located_error_keeps_its_kind_and_field() {
        let text = "name: web\ncapacity: -3\n";
        assert_eq!(
            locate(text, Error::invalid("capacity", "-3 is negative")),
            Error::invalid("capacity", "-3 is negative at line 2 column 11")
        );
        assert_eq!(
            locate(
                text,
                Error::FleetFile("invalid capacity: -3 is negative".into())
            ),
            Error::FleetFile("invalid capacity: -3 is negative at line 2 column 11".into())
        );
        let elsewhere = Error::invalid("launch_template", "give exactly one of id or name");
        assert_eq!(locate(text, elsewhere.clone()), elsewhere);
    }
}
