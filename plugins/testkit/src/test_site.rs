//! A local site with the endpoints a probe meets in the wild — fast JSON, an HTML page, a slow
//! endpoint, a 500, a redirect, a refused port and a self-signed TLS endpoint — for tests and
//! demos on machines without internet access.

use std::sync::Arc;
use std::time::Duration;

use axum::response::{Html, IntoResponse, Redirect};
use axum::routing::get;
use axum::Router;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

pub struct TestSite {
    /// `http://127.0.0.1:PORT`
    pub http: String,
    /// `https://localhost:PORT` with a self-signed certificate valid for `cert_days` more days.
    pub https: String,
    /// `http://127.0.0.1:PORT` where nothing listens.
    pub refused: String,
    pub cert_days: u32,
    pub slow: Duration,
}

impl TestSite {
    /// Serves until the runtime stops. `/json`, `/title`, `/slow` (answers after `slow`),
    /// `/error` (500), `/redirect` (302 to `/json`), `/big` (100 kB).
    pub async fn start(slow: Duration, cert_days: u32) -> std::io::Result<TestSite> {
        let app = Router::new()
            .route(
                "/json",
                get(|| async {
                    (
                        [("content-type", "application/json")],
                        r#"{"status":"up","version":{"major":3},"currentDateTime":"2026-11-22T10:00Z"}"#,
                    )
                }),
            )
            .route(
                "/title",
                get(|| async { Html("<html><head><title>Video Mesh Status</title></head><body>All systems operational</body></html>") }),
            )
            .route(
                "/slow",
                get(move || async move {
                    tokio::time::sleep(slow).await;
                    "finally"
                }),
            )
            .route("/error", get(|| async { (axum::http::StatusCode::INTERNAL_SERVER_ERROR, "database is down").into_response() }))
            .route("/redirect", get(|| async { Redirect::to("/json") }))
            .route("/big", get(|| async { "x".repeat(100_000) }));
        let http = TcpListener::bind("127.0.0.1:0").await?;
        let http_addr = http.local_addr()?;
        tokio::spawn(async move {
            let _ = axum::serve(http, app).await;
        });

        let refused = TcpListener::bind("127.0.0.1:0").await?.local_addr()?;

        let tls = TcpListener::bind("127.0.0.1:0").await?;
        let tls_addr = tls.local_addr()?;
        tokio::spawn(serve_tls(tls, cert_days));
        Ok(TestSite {
            http: format!("http://{http_addr}"),
            https: format!("https://localhost:{}", tls_addr.port()),
            refused: format!("http://{refused}"),
            cert_days,
            slow,
        })
    }
}

fn self_signed(cert_days: u32) -> rustls::ServerConfig {
    let key = rcgen::KeyPair::generate().expect("key generation");
    let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).expect("params");
    let now = std::time::SystemTime::now();
    params.not_before = (now - Duration::from_secs(86_400)).into();
    params.not_after = (now + Duration::from_secs(cert_days as u64 * 86_400)).into();
    let cert = params.self_signed(&key).expect("self-signed certificate");
    let der = rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into());
    rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_no_client_auth()
        .with_single_cert(vec![cert.der().clone()], der)
        .expect("server config")
}

/// A one-response-per-connection HTTPS server: enough for a probe.
async fn serve_tls(listener: TcpListener, cert_days: u32) {
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(self_signed(cert_days)));
    loop {
        let Ok((tcp, _)) = listener.accept().await else { return };
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            let Ok(mut tls) = acceptor.accept(tcp).await else { return };
            let mut buf = vec![0u8; 4096];
            let mut seen = Vec::new();
            while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                match tls.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => seen.extend_from_slice(&buf[..n]),
                }
            }
            let _ =
                tls.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 6\r\nConnection: close\r\n\r\nsecure").await;
            let _ = tls.shutdown().await;
        });
    }
}
