//! The client side of `tributary tap`: one HTTP/1.0 request to the admin API, rows printed as
//! they arrive (HTTP/1.0 makes the server stream until it closes, no chunked decoding needed).

use std::fmt::Write as _;
use std::net::SocketAddr;

use anyhow::{bail, Context};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

/// The request path for `output` with an optional predicate and row limit.
pub fn tap_path(output: &str, filter: Option<&str>, limit: Option<u64>) -> String {
    let mut path = format!("/tap/{}", encode(output));
    let mut sep = '?';
    if let Some(f) = filter {
        let _ = write!(path, "{sep}where={}", encode(f));
        sep = '&';
    }
    if let Some(n) = limit {
        let _ = write!(path, "{sep}limit={n}");
    }
    path
}

/// Percent-encode everything but RFC 3986's unreserved characters.
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// Stream rows to stdout (one JSON object per line); why the tap ended goes to stderr.
pub async fn print_tap(
    admin: SocketAddr,
    output: &str,
    filter: Option<&str>,
    limit: Option<u64>,
    token: Option<&str>,
) -> anyhow::Result<()> {
    let mut conn = tokio::net::TcpStream::connect(admin)
        .await
        .with_context(|| format!("cannot reach the pipeline's admin API at {admin} (is it running? pass --admin)"))?;
    let path = tap_path(output, filter, limit);
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    conn.write_all(format!("GET {path} HTTP/1.0\r\nHost: {admin}\r\n{auth}\r\n").as_bytes()).await?;
    let mut lines = BufReader::new(conn).lines();
    let status = lines.next_line().await?.unwrap_or_default();
    let code: u16 = status.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    while let Some(line) = lines.next_line().await? {
        if line.is_empty() {
            break;
        }
    }
    if code != 200 {
        let mut body = String::new();
        while let Some(line) = lines.next_line().await? {
            body.push_str(&line);
        }
        bail!("{}", if body.is_empty() { status } else { body });
    }
    while let Some(line) = lines.next_line().await? {
        match serde_json::from_str::<serde_json::Value>(&line)
            .ok()
            .and_then(|v| v.get("tap_closed").and_then(|r| r.as_str()).map(str::to_string))
        {
            Some(reason) => eprintln!("tap closed: {reason}"),
            None => println!("{line}"),
        }
    }
    Ok(())
}
