//! `${VAR}` and `${VAR:-default}` in YAML string values, resolved from the environment.
//!
//! Interpolation happens on parsed values, never on raw text, so a variable cannot inject YAML
//! structure. A value that is exactly one reference is re-read as a YAML scalar, so
//! `rate: ${RATE:-10}` is a number. `$${` writes a literal `${`. Every substituted value is
//! remembered so error messages can redact it.

/// Substitute references in `text`. `lookup` returns a variable's value.
pub fn interpolate(text: &str, lookup: &dyn Fn(&str) -> Option<String>, used: &mut Vec<String>) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i..];
        if let Some(escaped_rest) = after.strip_prefix("$${") {
            out.push_str("${");
            rest = escaped_rest;
        } else if let Some(body) = after.strip_prefix("${") {
            let end = body.find('}').ok_or_else(|| format!("unterminated `${{` in `{text}`"))?;
            let expr = &body[..end];
            let (name, default) = match expr.find(":-") {
                Some(j) => (&expr[..j], Some(&expr[j + 2..])),
                None => (expr, None),
            };
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(format!("invalid variable name `{name}` in `${{{expr}}}`"));
            }
            let value = match (lookup(name), default) {
                (Some(v), _) if !v.is_empty() || default.is_none() => v,
                (_, Some(d)) => d.to_string(),
                (None, None) => {
                    return Err(format!("environment variable `{name}` is not set (write `${{{name}:-default}}` for a default)"))
                }
                (Some(v), None) => v,
            };
            if !value.is_empty() {
                used.push(value.clone());
                // A variable named like a secret is also kept out of every runtime log line, wherever
                // its value ends up (inside a URL, say); other values (hosts, ports) stay readable.
                if names_a_secret(name) {
                    tributary_sdk::redact::register_secret(&value);
                }
            }
            out.push_str(&value);
            rest = &body[end + 1..];
        } else {
            out.push('$');
            rest = &after[1..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// Whether a variable's name says it holds a secret (`PG_PASSWORD`, `OTLP_TOKEN`, `API_KEY`, …).
fn names_a_secret(name: &str) -> bool {
    let upper = name.to_ascii_uppercase();
    ["PASSWORD", "PASSWD", "PASS", "SECRET", "TOKEN", "KEY", "PASSPHRASE", "CREDENTIAL", "AUTH"].iter().any(|w| upper.contains(w))
}

/// True when `text` is exactly one `${...}` reference (then the result is typed as YAML).
pub fn is_single_reference(text: &str) -> bool {
    text.starts_with("${") && text.ends_with('}') && text[2..].find('}') == Some(text.len() - 3)
}

/// Replace every secret-looking substituted value in `message` with `***`.
pub fn redact(message: &str, secrets: &[String]) -> String {
    let mut out = message.to_string();
    let mut sorted: Vec<&String> = secrets.iter().filter(|s| s.len() >= 3).collect();
    sorted.sort_by_key(|s| std::cmp::Reverse(s.len()));
    for s in sorted {
        out = out.replace(s.as_str(), "***");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_of_secret_named_variables_are_redacted_from_runtime_text() {
        let lookup = |name: &str| match name {
            "INFLUX_PASSWORD" => Some("pw-from-env-77".to_string()),
            "INFLUX_HOST" => Some("influx.internal".to_string()),
            _ => None,
        };
        let url = interpolate("http://admin:${INFLUX_PASSWORD}@${INFLUX_HOST}:8086", &lookup, &mut Vec::new()).unwrap();
        assert_eq!(url, "http://admin:pw-from-env-77@influx.internal:8086");
        assert_eq!(
            tributary_sdk::redact::redact("auth failed with pw-from-env-77 at influx.internal"),
            "auth failed with *** at influx.internal",
            "the password is redacted, the host is not"
        );
    }

    fn env(name: &str) -> Option<String> {
        match name {
            "HOST" => Some("db.local".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn substitutes_defaults_and_escapes() {
        let mut used = vec![];
        assert_eq!(interpolate("postgres://${HOST}:${PORT:-5432}/x", &env, &mut used).unwrap(), "postgres://db.local:5432/x");
        assert_eq!(used, ["db.local", "5432"]);
        assert_eq!(interpolate("${EMPTY:-fallback}", &env, &mut used).unwrap(), "fallback");
        assert_eq!(interpolate("cost $5 and $${HOST}", &env, &mut used).unwrap(), "cost $5 and ${HOST}");
    }

    #[test]
    fn missing_variables_and_bad_syntax_are_errors() {
        let mut used = vec![];
        assert_eq!(
            interpolate("${TOKEN}", &env, &mut used).unwrap_err(),
            "environment variable `TOKEN` is not set (write `${TOKEN:-default}` for a default)"
        );
        assert_eq!(interpolate("${HOST", &env, &mut used).unwrap_err(), "unterminated `${` in `${HOST`");
        assert_eq!(interpolate("${A-B}", &env, &mut used).unwrap_err(), "invalid variable name `A-B` in `${A-B}`");
    }

    #[test]
    fn single_reference_detection_and_redaction() {
        assert!(is_single_reference("${RATE:-10}"));
        assert!(!is_single_reference("${A}${B}"));
        assert!(!is_single_reference("x${A}"));
        assert_eq!(redact("token hunter22 rejected", &["hunter22".into()]), "token *** rejected");
    }
}
