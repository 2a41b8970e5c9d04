//! `${VAR}` expansion in paths.

use crate::error::ErrorKind;

/// The variable whose default is `$HOME/.cache/keel`.
pub(crate) const KEEL_CACHE: &str = "KEEL_CACHE";

/// Looks a variable up, giving `KEEL_CACHE` its default when unset.
fn lookup(var: &str, env: &dyn Fn(&str) -> Option<String>) -> Option<String> {
    match env(var) {
        Some(value) => Some(value),
        None if var == KEEL_CACHE => env("HOME").map(|home| format!("{home}/.cache/keel")),
        None => None,
    }
}

/// Expands every `${NAME}` in `value`; `$$` stands for a literal `$`. Any other `$` is kept.
pub(crate) fn expand(
    key: &'static str,
    value: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<String, ErrorKind> {
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    while let Some(dollar) = rest.find('$') {
        out.push_str(&rest[..dollar]);
        let after = &rest[dollar + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(tail) = after.strip_prefix('{') {
            let bad = || ErrorKind::BadVarSyntax {
                key,
                value: value.to_string(),
            };
            let close = tail.find('}').ok_or_else(bad)?;
            let var = &tail[..close];
            let valid =
                !var.is_empty() && var.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
            if !valid {
                return Err(bad());
            }
            let expansion = lookup(var, env).ok_or_else(|| ErrorKind::UndefinedVar {
                key,
                var: var.to_string(),
                value: value.to_string(),
            })?;
            out.push_str(&expansion);
            rest = &tail[close + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(var: &str) -> Option<String> {
        match var {
            "HOME" => Some("/home/u".into()),
            "IMAGES" => Some("/srv/img".into()),
            _ => None,
        }
    }

    #[test]
    fn braced_variables_are_replaced() {
        assert_eq!(
            expand("kernel", "${IMAGES}/a/${IMAGES}", &env).unwrap(),
            "/srv/img/a//srv/img"
        );
    }

    #[test]
    fn keel_cache_defaults_under_home() {
        assert_eq!(
            expand("kernel", "${KEEL_CACHE}/vmlinuz", &env).unwrap(),
            "/home/u/.cache/keel/vmlinuz"
        );
    }

    #[test]
    fn keel_cache_without_home_is_undefined() {
        let err = expand("kernel", "${KEEL_CACHE}/x", &|_| None).unwrap_err();
        assert!(matches!(err, ErrorKind::UndefinedVar { var, .. } if var == "KEEL_CACHE"));
    }

    #[test]
    fn double_dollar_is_a_literal_dollar() {
        assert_eq!(expand("kernel", "a$${B}", &env).unwrap(), "a${B}");
        assert_eq!(expand("kernel", "a$b", &env).unwrap(), "a$b");
    }

    #[test]
    fn unterminated_reference_is_an_error() {
        assert!(matches!(
            expand("kernel", "${IMAGES", &env),
            Err(ErrorKind::BadVarSyntax { .. })
        ));
        assert!(matches!(
            expand("kernel", "${}", &env),
            Err(ErrorKind::BadVarSyntax { .. })
        ));
    }
}
