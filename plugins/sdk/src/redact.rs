//! Keeping secrets out of what is printed.
//!
//! Every [`Secret`](crate::Secret) read from a config registers its value here (and the password
//! inside it when it is a connection string or a URL). [`redact`] replaces registered values
//! with `***` and drops the `user:password@` part of any URL in a text; the engine runs every log
//! line through it, and plugins use [`url_for_display`] for URLs they put into messages or
//! dead-letter reasons.

use std::borrow::Cow;
use std::sync::RwLock;

static SECRETS: RwLock<Vec<String>> = RwLock::new(Vec::new());

/// Remember `value` (and a password inside it) as a secret. Values shorter than 3 characters are
/// not redacted: they would blank out unrelated text.
pub fn register_secret(value: &str) {
    let mut parts = vec![value.to_string()];
    // `host=db user=app password=hunter22` (libpq key/value form).
    for word in value.split_whitespace() {
        if let Some(pw) = word.strip_prefix("password=") {
            parts.push(pw.trim_matches('\'').to_string());
        }
    }
    // `postgres://app:hunter22@db/x`, `http://user:pw@host`.
    if let Some((_, pw)) = userinfo(value).and_then(|u| u.split_once(':')) {
        parts.push(pw.to_string());
    }
    let Ok(mut secrets) = SECRETS.write() else { return };
    for p in parts {
        if p.len() >= 3 && !secrets.contains(&p) {
            secrets.push(p);
            // Longest first, so a secret containing another is replaced whole.
            secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        }
    }
}

/// `text` with every registered secret replaced by `***` and URL credentials removed.
pub fn redact(text: &str) -> Cow<'_, str> {
    let mut out = Cow::Borrowed(text);
    if let Ok(secrets) = SECRETS.read() {
        for s in secrets.iter() {
            if out.contains(s.as_str()) {
                out = Cow::Owned(out.replace(s.as_str(), "***"));
            }
        }
    }
    if out.contains("://") && out.contains('@') {
        out = Cow::Owned(strip_url_credentials(&out));
    }
    out
}

/// A URL as it may be shown: `http://user:pw@host:8086/x` → `http://***@host:8086/x`.
pub fn url_for_display(url: &str) -> String {
    strip_url_credentials(url)
}

/// The `user:password` of the first URL in `text`, if it has one.
fn userinfo(text: &str) -> Option<&str> {
    let start = text.find("://")? + 3;
    let authority = &text[start..start + authority_len(&text[start..])];
    authority.rfind('@').map(|at| &authority[..at])
}

/// Length of the authority part at the start of `rest` (up to the path, query or a delimiter).
fn authority_len(rest: &str) -> usize {
    rest.find(['/', '?', '#', ' ', '"', '\'', '`', '\n', ',', ')', ']', '>']).unwrap_or(rest.len())
}

fn strip_url_credentials(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("://") {
        out.push_str(&rest[..i + 3]);
        rest = &rest[i + 3..];
        let len = authority_len(rest);
        match rest[..len].rfind('@') {
            Some(at) => {
                out.push_str("***");
                out.push_str(&rest[at..len]);
            }
            None => out.push_str(&rest[..len]),
        }
        rest = &rest[len..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_lose_their_credentials_and_keep_the_rest() {
        assert_eq!(url_for_display("http://user:pw@influx:8086/api/v2"), "http://***@influx:8086/api/v2");
        assert_eq!(url_for_display("https://influx:8086"), "https://influx:8086");
        assert_eq!(
            redact("writing to http://admin:s3cr3t@db:8086/write failed; see https://docs.example/x?a=b@c"),
            "writing to http://***@db:8086/write failed; see https://docs.example/x?a=b@c"
        );
    }

    #[test]
    fn registered_secrets_and_the_passwords_inside_them_are_redacted() {
        register_secret("host=db user=app password=hunter22-redact-test");
        register_secret("ab"); // too short to redact safely
        assert_eq!(
            redact("auth failed for password hunter22-redact-test (host=db user=app password=hunter22-redact-test)"),
            "auth failed for password *** (***)"
        );
        assert_eq!(redact("ab cd"), "ab cd");
    }
}
