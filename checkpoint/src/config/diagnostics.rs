//! From what went wrong to one line, `{file}: {key}: {reason}`: the key path found from the
//! error's byte span in the parsed document, the line, and serde's wording in the file's terms.

use std::ops::Range;

use toml::Spanned;
use toml::de::{DeTable, DeValue};

use super::ConfigError;

/// The file name and the environment, for building errors and expanding variables.
pub(super) struct Ctx<'a> {
    pub(super) source: &'a str,
    pub(super) env: &'a dyn Fn(&str) -> Option<String>,
}

impl Ctx<'_> {
    pub(super) fn invalid(&self, key: impl Into<String>, reason: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            file: self.source.to_owned(),
            key: key.into(),
            reason: escape_controls(&reason.into()),
        }
    }

    /// A TOML syntax error: key `<syntax>`, the position in the reason.
    pub(super) fn syntax(&self, text: &str, error: &toml::de::Error) -> ConfigError {
        let message = one_line(error.message());
        let reason = match error.span() {
            Some(span) => {
                let (line, column) = line_column(text, span.start);
                format!("line {line}, column {column}: {message}")
            }
            None => message,
        };
        self.invalid("<syntax>", reason)
    }

    /// An error from reading the parsed TOML into the configuration's tables: the key is
    /// found from the error's span, the line is added to the reason.
    pub(super) fn deserialize(
        &self,
        text: &str,
        document: &Spanned<DeTable<'_>>,
        error: &toml::de::Error,
    ) -> ConfigError {
        let message = one_line(error.message());
        let Some(span) = error.span() else {
            return self.invalid("<file>", message);
        };
        let line = line_column(text, span.start).0;
        if let Some(field) = backticked_after(&message, "missing field ") {
            // The span is the table that lacks the key.
            let mut path = Vec::new();
            let root = span == document.span();
            let reason = if root {
                format!("required table `[{field}]` is missing")
            } else if find_table(document.get_ref(), &span, &mut path) {
                format!("required key is missing (from the table at line {line})")
            } else {
                format!("required key is missing (line {line})")
            };
            path.push(Segment::Key(field.to_owned()));
            return self.invalid(render(&path), reason);
        }
        let mut path = Vec::new();
        find_key(document.get_ref(), span.start, &mut path);
        let key = if path.is_empty() {
            "<file>".to_owned()
        } else {
            render(&path)
        };
        // serde sees a TOML date-time as a table; say what the file says.
        let datetime = resolve(document, &path)
            .is_some_and(|value| matches!(value.get_ref(), DeValue::Datetime(_)));
        let reason = humanize(&message, datetime.then_some("a date-time"));
        self.invalid(key, format!("{reason} (line {line})"))
    }
}

/// One step of a key path.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Key(String),
    Index(usize),
}

/// `listeners[0].backoff.min_ms`, `kafka."bootstrap.servers"`.
fn render(path: &[Segment]) -> String {
    let mut out = String::new();
    for segment in path {
        match segment {
            Segment::Key(key) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(&key_segment(key));
            }
            Segment::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    out
}

/// A key as TOML would write it: bare when it can be, quoted otherwise.
pub(super) fn key_segment(key: &str) -> String {
    if !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        key.to_owned()
    } else {
        format!("{key:?}")
    }
}

fn contains(span: &Range<usize>, at: usize) -> bool {
    span.contains(&at) || (span.is_empty() && span.start == at)
}

/// The path of the innermost key whose key or value covers byte `at`; false if none does.
fn find_key(table: &DeTable<'_>, at: usize, path: &mut Vec<Segment>) -> bool {
    for (key, value) in table.iter() {
        path.push(Segment::Key(key.get_ref().to_string()));
        if find_key_in_value(value, at, path) || contains(&key.span(), at) {
            return true;
        }
        path.pop();
    }
    false
}

fn find_key_in_value(value: &Spanned<DeValue<'_>>, at: usize, path: &mut Vec<Segment>) -> bool {
    let inside = match value.get_ref() {
        DeValue::Table(table) => find_key(table, at, path),
        DeValue::Array(items) => items.iter().enumerate().any(|(i, item)| {
            path.push(Segment::Index(i));
            let found = find_key_in_value(item, at, path);
            if !found {
                path.pop();
            }
            found
        }),
        _ => false,
    };
    inside || contains(&value.span(), at)
}

/// The path of the table whose span is exactly `span`; false if none is.
fn find_table(table: &DeTable<'_>, span: &Range<usize>, path: &mut Vec<Segment>) -> bool {
    for (key, value) in table.iter() {
        path.push(Segment::Key(key.get_ref().to_string()));
        if find_table_in_value(value, span, path) {
            return true;
        }
        path.pop();
    }
    false
}

fn find_table_in_value(
    value: &Spanned<DeValue<'_>>,
    span: &Range<usize>,
    path: &mut Vec<Segment>,
) -> bool {
    match value.get_ref() {
        DeValue::Table(table) => value.span() == *span || find_table(table, span, path),
        DeValue::Array(items) => items.iter().enumerate().any(|(i, item)| {
            path.push(Segment::Index(i));
            let found = find_table_in_value(item, span, path);
            if !found {
                path.pop();
            }
            found
        }),
        _ => false,
    }
}

/// The value at `path`.
fn resolve<'d, 'i>(
    document: &'d Spanned<DeTable<'i>>,
    path: &[Segment],
) -> Option<&'d Spanned<DeValue<'i>>> {
    let (first, rest) = path.split_first()?;
    let Segment::Key(first) = first else {
        return None;
    };
    let mut value = document.get_ref().get(first.as_str())?;
    for segment in rest {
        value = match (segment, value.get_ref()) {
            (Segment::Key(key), DeValue::Table(table)) => table.get(key.as_str())?,
            (Segment::Index(i), DeValue::Array(items)) => items.get(*i)?,
            _ => return None,
        };
    }
    Some(value)
}

/// 1-based line and column (in characters) of byte `at`.
fn line_column(text: &str, at: usize) -> (usize, usize) {
    let before = text.get(..at.min(text.len())).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

/// Keeps a reason on one line when it quotes a value with a newline (from a variable, say).
pub(super) fn escape_controls(reason: &str) -> String {
    reason
        .chars()
        .map(|c| {
            if c.is_control() {
                c.escape_debug().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

fn one_line(message: &str) -> String {
    message.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The name between backticks right after `prefix`, when `message` starts with it.
fn backticked_after<'m>(message: &'m str, prefix: &str) -> Option<&'m str> {
    let rest = message.strip_prefix(prefix)?.strip_prefix('`')?;
    rest.split_once('`').map(|(name, _)| name)
}

/// serde's wording in the file's terms; `found_instead` replaces what serde says it found.
fn humanize(message: &str, found_instead: Option<&str>) -> String {
    if let Some(rest) = message.strip_prefix("unknown field ") {
        return format!("unknown key {rest}");
    }
    if let Some((found, expected)) = message
        .strip_prefix("invalid type: ")
        .and_then(|rest| rest.rsplit_once(", expected "))
    {
        if let Some(integer) = found
            .strip_suffix(" as i128")
            .or_else(|| found.strip_suffix(" as u128"))
        {
            return format!("{integer} is out of range");
        }
        let expected = match expected {
            "i64" | "u32" | "u64" | "usize" => "an integer",
            "a sequence" => "an array",
            "a map" => "a table",
            "a boolean" => "a boolean (true or false)",
            other if other.starts_with("struct ") => "a table",
            other => other,
        };
        let found = match (found, found_instead) {
            (_, Some(instead)) => instead,
            ("map", None) => "a table",
            ("sequence", None) => "an array",
            (other, None) => other,
        };
        return format!("expected {expected}, found {found}");
    }
    message.to_owned()
}

pub(super) fn backticked(names: &[&str]) -> String {
    names
        .iter()
        .map(|name| format!("`{name}`"))
        .collect::<Vec<_>>()
        .join(", ")
}
