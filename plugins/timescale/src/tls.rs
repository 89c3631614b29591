//! TLS to PostgreSQL with libpq's `sslmode` meanings, on rustls (no OpenSSL).
//!
//! tokio-postgres parses `sslmode=disable|prefer|require` and leaves the handshake to a connector;
//! libpq's `verify-ca`, `verify-full` and `sslrootcert` it does not know. They are taken out of the
//! connection string here (which keeps `sslmode=require`), and the connector verifies:
//!
//! | `sslmode` | encrypted | certificate chain | host name |
//! |---|---|---|---|
//! | `disable` | no | – | – |
//! | `prefer` (default) | when the server offers TLS | not checked | not checked |
//! | `require` | yes, or no connection | not checked | not checked |
//! | `verify-ca` | yes | against `sslrootcert` (default: the Mozilla roots) | not checked |
//! | `verify-full` | yes | against `sslrootcert` (default: the Mozilla roots) | must match the host |

use std::path::PathBuf;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio_postgres_rustls::MakeRustlsConnect;
use tributary_sdk::tls::{provider, AcceptAnyCertificate};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    fn parse(value: &str) -> Result<SslMode, String> {
        Ok(match value {
            "disable" => SslMode::Disable,
            "allow" | "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            other => return Err(format!("sslmode `{other}` is not one of disable, prefer, require, verify-ca, verify-full")),
        })
    }
    /// What tokio-postgres is told (it negotiates; the connector verifies).
    fn for_tokio_postgres(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => "require",
        }
    }
}

/// The TLS options of a connection string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsOptions {
    pub mode: SslMode,
    pub root_cert: Option<PathBuf>,
}

/// Takes `sslmode` and `sslrootcert` out of `conn` (libpq's `key=value` form, values optionally
/// single-quoted, or a `postgres://` URL) and returns the string for tokio-postgres with them.
pub fn split(conn: &str) -> Result<(String, TlsOptions), String> {
    let mut opts = TlsOptions { mode: SslMode::Prefer, root_cert: None };
    let url = conn.starts_with("postgres://") || conn.starts_with("postgresql://");
    let mut kept = Vec::new();
    let (head, pairs): (&str, Vec<String>) = if url {
        match conn.split_once('?') {
            Some((head, query)) => (head, query.split('&').filter(|p| !p.is_empty()).map(str::to_string).collect()),
            None => (conn, Vec::new()),
        }
    } else {
        ("", key_values(conn)?)
    };
    for pair in pairs {
        match pair.split_once('=') {
            Some(("sslmode", v)) => opts.mode = SslMode::parse(unquote(v))?,
            Some(("sslrootcert", v)) => opts.root_cert = Some(PathBuf::from(unquote(v))),
            _ => kept.push(pair),
        }
    }
    kept.push(format!("sslmode={}", opts.mode.for_tokio_postgres()));
    let rebuilt = if url { format!("{head}?{}", kept.join("&")) } else { kept.join(" ") };
    Ok((rebuilt, opts))
}

/// `key=value` words of a libpq string, keeping single-quoted values (with spaces) whole.
fn key_values(conn: &str) -> Result<Vec<String>, String> {
    let (mut words, mut word, mut quoted) = (Vec::new(), String::new(), false);
    let mut chars = conn.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' if quoted => {
                word.push(c);
                word.extend(chars.next());
            }
            '\'' => {
                quoted = !quoted;
                word.push(c);
            }
            c if c.is_whitespace() && !quoted => {
                if !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
            }
            c => word.push(c),
        }
    }
    if quoted {
        return Err("unterminated quote in the connection string".into());
    }
    if !word.is_empty() {
        words.push(word);
    }
    Ok(words)
}

fn unquote(v: &str) -> &str {
    v.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')).unwrap_or(v)
}

/// The connector for these options. Errors (an unreadable `sslrootcert`) are configuration
/// errors, reported before anything connects.
pub fn connector(opts: &TlsOptions) -> Result<MakeRustlsConnect, String> {
    let builder = ClientConfig::builder_with_provider(provider()).with_safe_default_protocol_versions().map_err(|e| e.to_string())?;
    let config = match opts.mode {
        SslMode::Disable | SslMode::Prefer | SslMode::Require => {
            builder.dangerous().with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate(provider()))).with_no_client_auth()
        }
        SslMode::VerifyCa | SslMode::VerifyFull => {
            let roots = Arc::new(roots(opts)?);
            let webpki = WebPkiServerVerifier::builder_with_provider(roots, provider()).build().map_err(|e| e.to_string())?;
            let verifier: Arc<dyn ServerCertVerifier> = if opts.mode == SslMode::VerifyCa { Arc::new(ChainOnly(webpki)) } else { webpki };
            builder.dangerous().with_custom_certificate_verifier(verifier).with_no_client_auth()
        }
    };
    Ok(MakeRustlsConnect::new(config))
}

fn roots(opts: &TlsOptions) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    match &opts.root_cert {
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        Some(path) => {
            let certs = CertificateDer::pem_file_iter(path)
                .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                .map_err(|e| format!("sslrootcert {}: {e}", path.display()))?;
            let (added, _) = roots.add_parsable_certificates(certs);
            if added == 0 {
                return Err(format!("sslrootcert {}: no certificate in it", path.display()));
            }
        }
    }
    Ok(roots)
}

/// `verify-ca`: the chain must lead to a trusted root; the name is not checked.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.0.verify_server_cert(end_entity, intermediates, server_name, ocsp, now) {
            Err(rustls::Error::InvalidCertificate(CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. })) => {
                Ok(ServerCertVerified::assertion())
            }
            other => other,
        }
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// Whether `e` is a TLS failure no retry can fix: the server offers no TLS while it is required,
/// or its certificate does not verify. (A connection lost during the handshake stays transient.)
pub fn is_permanent_tls_failure(e: &tokio_postgres::Error) -> bool {
    if e.to_string().starts_with("server does not support TLS") {
        return true;
    }
    let mut cause: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(c) = cause {
        if c.downcast_ref::<rustls::Error>().is_some() {
            return true;
        }
        if let Some(inner) = c.downcast_ref::<std::io::Error>().and_then(|io| io.get_ref()) {
            if inner.downcast_ref::<rustls::Error>().is_some() {
                return true;
            }
        }
        cause = c.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libpq_tls_options_are_taken_out_of_both_forms() {
        let (rest, opts) = split("host=db user=app password='a b' sslmode=verify-full sslrootcert=/etc/ca.pem").unwrap();
        assert_eq!(rest, "host=db user=app password='a b' sslmode=require");
        assert_eq!(opts, TlsOptions { mode: SslMode::VerifyFull, root_cert: Some("/etc/ca.pem".into()) });
        let (rest, opts) = split("postgres://app@db:5432/x?sslmode=verify-ca&application_name=t").unwrap();
        assert_eq!(rest, "postgres://app@db:5432/x?application_name=t&sslmode=require");
        assert_eq!(opts.mode, SslMode::VerifyCa);
        let (rest, opts) = split("host=db").unwrap();
        assert_eq!((rest.as_str(), opts.mode), ("host=db sslmode=prefer", SslMode::Prefer));
        assert_eq!(
            split("host=db sslmode=verify").unwrap_err(),
            "sslmode `verify` is not one of disable, prefer, require, verify-ca, verify-full"
        );
    }
}
