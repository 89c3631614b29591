//! A test CA and a server certificate it signed, as PEM files: for the brokers a test starts of
//! its own with a TLS listener (Mosquitto, RabbitMQ), which read certificates from files.

use std::path::{Path, PathBuf};

pub struct TestCertificates {
    /// The CA's certificate: what a client's `tls_ca_file` names.
    pub ca: PathBuf,
    /// The server's certificate, for `localhost` and `127.0.0.1`.
    pub cert: PathBuf,
    /// The server's private key (PKCS #8).
    pub key: PathBuf,
}

/// Writes `ca.pem`, `server.pem` and `server.key` into `dir`.
pub fn write_test_certificates(dir: &Path) -> TestCertificates {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().expect("CA key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(DnType::CommonName, "tributary test CA");
    let ca_cert = ca_params.self_signed(&ca_key).expect("CA certificate");
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().expect("server key");
    let mut params = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).expect("server params");
    params.distinguished_name.push(DnType::CommonName, "localhost");
    let cert = params.signed_by(&key, &issuer).expect("server certificate");
    let certs = TestCertificates { ca: dir.join("ca.pem"), cert: dir.join("server.pem"), key: dir.join("server.key") };
    std::fs::write(&certs.ca, ca_cert.pem()).expect("writing ca.pem");
    std::fs::write(&certs.cert, cert.pem()).expect("writing server.pem");
    std::fs::write(&certs.key, key.serialize_pem()).expect("writing server.key");
    certs
}
