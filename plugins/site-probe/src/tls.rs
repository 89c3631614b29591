//! TLS client configs (verifying with the Mozilla roots, or accepting any certificate) and the
//! certificate-expiry reading.

use std::sync::{Arc, OnceLock};

use rustls::pki_types::CertificateDer;
use rustls::ClientConfig;
use tributary_sdk::tls::{provider, AcceptAnyCertificate};

/// The shared client config for `tls_verify: true` / `false`.
pub fn client_config(verify: bool) -> Arc<ClientConfig> {
    static VERIFYING: OnceLock<Arc<ClientConfig>> = OnceLock::new();
    static ANY_CERT: OnceLock<Arc<ClientConfig>> = OnceLock::new();
    let build = |verify: bool| {
        let builder =
            ClientConfig::builder_with_provider(provider()).with_safe_default_protocol_versions().expect("ring supports TLS 1.2 and 1.3");
        let mut cfg = if verify {
            let roots = rustls::RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
            builder.with_root_certificates(roots).with_no_client_auth()
        } else {
            builder.dangerous().with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate(provider()))).with_no_client_auth()
        };
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        Arc::new(cfg)
    };
    if verify {
        VERIFYING.get_or_init(|| build(true)).clone()
    } else {
        ANY_CERT.get_or_init(|| build(false)).clone()
    }
}

/// Days until the server certificate's `notAfter` (negative once expired).
pub fn days_until_expiry(cert: &CertificateDer<'_>, now_unix: i64) -> Option<f64> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let not_after = parsed.validity().not_after.timestamp();
    Some((not_after - now_unix) as f64 / 86_400.0)
}
