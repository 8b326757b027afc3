//! `${VAR}`, `${VAR:-default}` and `$$` in string values, expanded after the TOML is parsed.

use super::ConfigError;
use super::diagnostics::Ctx;

impl Ctx<'_> {
    /// Expands `${VAR}`, `${VAR:-default}` and `$$` in `value`, found at `key`.
    pub(super) fn expand(&self, key: &str, value: &str) -> Result<String, ConfigError> {
        let mut out = String::with_capacity(value.len());
        let mut rest = value;
        while let Some(at) = rest.find('$') {
            out.push_str(&rest[..at]);
            rest = &rest[at..];
            if let Some(after) = rest.strip_prefix("$$") {
                out.push('$');
                rest = after;
            } else if let Some(after) = rest.strip_prefix("${") {
                let end = after.find('}').ok_or_else(|| {
                    self.invalid(
                        key,
                        "`${` without a closing `}` (write `$$` for a literal `$`)",
                    )
                })?;
                let reference = &after[..end];
                let (name, default) = match reference.split_once(":-") {
                    Some((name, default)) => (name, Some(default)),
                    None => (reference, None),
                };
                if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                    return Err(self.invalid(
                        key,
                        format!(
                            "`${{{reference}}}` is not a variable reference: use `${{NAME}}` or \
                             `${{NAME:-default}}`, NAME of A-Z a-z 0-9 _"
                        ),
                    ));
                }
                match ((self.env)(name), default) {
                    (Some(value), None) => out.push_str(&value),
                    (Some(value), Some(_)) if !value.is_empty() => out.push_str(&value),
                    (_, Some(default)) => out.push_str(default),
                    (None, None) => {
                        return Err(self.invalid(
                            key,
                            format!(
                                "environment variable `{name}` is not set and has no default \
                                 (write `${{{name}:-default}}` to give one)"
                            ),
                        ));
                    }
                }
                rest = &after[end + 1..];
            } else {
                out.push('$');
                rest = &rest[1..];
            }
        }
        out.push_str(rest);
        Ok(out)
    }
}
