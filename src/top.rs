//! `tributary top`: a running pipeline's components as a table refreshed every second, read from
//! its admin API (`/metrics` and `/health`), like `vector top`. On a terminal it redraws in place;
//! piped, it prints one plain table per refresh.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{IsTerminal, Write as _};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// What `/metrics` says of one component.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Component {
    pub kind: String,
    pub type_name: String,
    pub rows_in: f64,
    pub rows_out: f64,
    pub rows_written: f64,
    pub errors: f64,
    pub dead_letters: f64,
    pub retries: f64,
    /// Input buffer fill (0 to 1); sources have none.
    pub buffer_fill: Option<f64>,
    pub failing_seconds: f64,
    /// Sinks: seconds since the epoch of the last durable write (0: none yet), and its duration.
    pub last_write: Option<f64>,
    pub last_write_duration: Option<f64>,
}

/// One reading of the admin API.
#[derive(Debug, Clone)]
pub struct Sample {
    pub at: Instant,
    /// By component id, in the order `/metrics` lists them.
    pub components: Vec<(String, Component)>,
    /// `/health`'s `status` (`ok`, `degraded`, `stopping`), and the failing components' errors.
    pub health: String,
    pub failing: Vec<(String, String)>,
}

/// The components in a Prometheus text exposition (the `tributary_component_*` and
/// `tributary_sink_*` series), in the order they first appear.
pub fn parse_metrics(text: &str) -> Vec<(String, Component)> {
    let mut order: Vec<String> = Vec::new();
    let mut by_id: BTreeMap<String, Component> = BTreeMap::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else { continue };
        let Ok(value) = value.parse::<f64>() else { continue };
        let Some((name, labels)) = series.split_once('{') else { continue };
        let labels = parse_labels(labels.trim_end_matches('}'));
        let Some(id) = labels.get("component") else { continue };
        if !by_id.contains_key(id) {
            order.push(id.clone());
        }
        let c = by_id.entry(id.clone()).or_default();
        c.kind = labels.get("kind").cloned().unwrap_or_default();
        c.type_name = labels.get("type").cloned().unwrap_or_default();
        match name {
            "tributary_component_rows_in_total" => c.rows_in = value,
            "tributary_component_rows_out_total" => c.rows_out = value,
            "tributary_component_rows_written_total" => c.rows_written = value,
            "tributary_component_errors_total" => c.errors = value,
            "tributary_component_dead_letters_total" => c.dead_letters = value,
            "tributary_component_retries_total" => c.retries = value,
            "tributary_component_buffer_fill_ratio" => c.buffer_fill = Some(value),
            "tributary_component_failing_seconds" => c.failing_seconds = value,
            "tributary_sink_last_write_timestamp_seconds" => c.last_write = Some(value),
            "tributary_sink_last_write_duration_seconds" => c.last_write_duration = Some(value),
            _ => {}
        }
    }
    order.into_iter().map(|id| (id.clone(), by_id.remove(&id).unwrap_or_default())).collect()
}

/// `a="x",b="y"` (values with `\"` and `\\` escapes) as a map.
fn parse_labels(text: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut rest = text;
    while let Some((key, after)) = rest.split_once("=\"") {
        let mut value = String::new();
        let mut chars = after.char_indices();
        let mut end = after.len();
        while let Some((i, ch)) = chars.next() {
            match ch {
                '\\' => value.extend(chars.next().map(|(_, c)| if c == 'n' { '\n' } else { c })),
                '"' => {
                    end = i + 1;
                    break;
                }
                c => value.push(c),
            }
        }
        out.insert(key.trim_start_matches(',').trim().to_string(), value);
        rest = &after[end..];
    }
    out
}

/// One HTTP/1.0 GET to the admin API (the server closes when done: no chunked decoding): the
/// status and the body.
async fn get(admin: SocketAddr, path: &str, token: Option<&str>) -> anyhow::Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let exchange = async {
        let mut conn = tokio::net::TcpStream::connect(admin).await?;
        let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
        conn.write_all(format!("GET {path} HTTP/1.0\r\nHost: {admin}\r\n{auth}\r\n").as_bytes()).await?;
        let mut answer = String::new();
        conn.read_to_string(&mut answer).await?;
        anyhow::Ok(answer)
    };
    let answer = tokio::time::timeout(Duration::from_secs(2), exchange).await.map_err(|_| anyhow::anyhow!("no answer within 2s"))??;
    let (head, body) = answer.split_once("\r\n\r\n").ok_or_else(|| anyhow::anyhow!("{path}: not an HTTP answer"))?;
    let status = head.split(' ').nth(1).and_then(|c| c.parse().ok()).ok_or_else(|| anyhow::anyhow!("{path}: no status"))?;
    Ok((status, body.to_string()))
}

/// Read `/metrics` and `/health` once.
pub async fn sample(admin: SocketAddr, token: Option<&str>) -> anyhow::Result<Sample> {
    let (status, metrics) = get(admin, "/metrics", token).await?;
    anyhow::ensure!(status == 200, "/metrics answered {status}: {}", metrics.trim());
    let components = parse_metrics(&metrics);
    // `/health` answers 503 when degraded, with the same body.
    let health: serde_json::Value = serde_json::from_str(&get(admin, "/health", token).await?.1)?;
    let failing = health["components"]
        .as_object()
        .map(|m| {
            m.iter()
                .filter_map(|(id, c)| c["last_error"].as_str().map(|e| (id.clone(), format!("{e} (for {}s)", c["failing_for_s"]))))
                .collect()
        })
        .unwrap_or_default();
    Ok(Sample { at: Instant::now(), components, health: health["status"].as_str().unwrap_or("?").to_string(), failing })
}

/// The table for `now` (with rates against `before`, when there is one). `wall` is now in seconds
/// since the epoch (for "last write … ago").
pub fn render(admin: SocketAddr, now: &Sample, before: Option<&Sample>, wall: f64) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "tributary top  {admin}  health: {}  components: {}", now.health, now.components.len());
    for (id, why) in &now.failing {
        let _ = writeln!(out, "  failing: {id}: {why}");
    }
    let _ = writeln!(out);
    let header =
        ["COMPONENT", "KIND", "TYPE", "IN", "IN/s", "OUT", "OUT/s", "ERRORS", "DEAD", "RETRIES", "BUFFER", "LAG", "LAST WRITE", "LATENCY"];
    let mut rows: Vec<Vec<String>> = vec![header.iter().map(|h| h.to_string()).collect()];
    let elapsed = before.map(|b| now.at.duration_since(b.at).as_secs_f64()).filter(|s| *s > 0.0);
    for (id, c) in &now.components {
        let prev = before.and_then(|b| b.components.iter().find(|(i, _)| i == id)).map(|(_, c)| c);
        // A sink's output is what it wrote; a source's or transform's, what it sent on.
        let out_of = |c: &Component| if c.kind == "sink" { c.rows_written } else { c.rows_out };
        let rate = |f: &dyn Fn(&Component) -> f64| match (prev, elapsed) {
            (Some(p), Some(s)) => format_rate((f(c) - f(p)).max(0.0) / s),
            _ => "-".into(),
        };
        let sink = c.kind == "sink";
        rows.push(vec![
            id.clone(),
            c.kind.clone(),
            c.type_name.clone(),
            if c.kind == "source" { "-".into() } else { format_count(c.rows_in) },
            if c.kind == "source" { "-".into() } else { rate(&|c| c.rows_in) },
            format_count(out_of(c)),
            rate(&out_of),
            format_count(c.errors),
            format_count(c.dead_letters),
            format_count(c.retries),
            c.buffer_fill.map_or("-".into(), |f| format!("{:.0}%", f * 100.0)),
            // A sink's lag: rows it received and has neither written nor dead-lettered yet.
            if sink { format_count((c.rows_in - c.rows_written - c.dead_letters).max(0.0)) } else { "-".into() },
            match c.last_write {
                Some(t) if t > 0.0 => format!("{}s ago", ((wall - t).max(0.0)).round()),
                Some(_) => "never".into(),
                None => "-".into(),
            },
            match (c.last_write, c.last_write_duration) {
                (Some(t), Some(d)) if t > 0.0 => format_duration(d),
                _ => "-".into(),
            },
        ]);
    }
    let widths: Vec<usize> = (0..header.len()).map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0)).collect();
    for r in rows {
        let mut line = String::new();
        for (i, cell) in r.iter().enumerate() {
            // Names left-aligned, numbers right-aligned.
            if i < 3 {
                let _ = write!(line, "{cell:<w$}  ", w = widths[i]);
            } else {
                let _ = write!(line, "{cell:>w$}  ", w = widths[i]);
            }
        }
        let _ = writeln!(out, "{}", line.trim_end());
    }
    out
}

fn format_count(n: f64) -> String {
    format!("{}", n.round() as u64)
}

fn format_rate(r: f64) -> String {
    if r >= 100.0 {
        format!("{r:.0}")
    } else {
        format!("{r:.1}")
    }
}

fn format_duration(seconds: f64) -> String {
    if seconds >= 1.0 {
        format!("{seconds:.1}s")
    } else {
        format!("{:.1}ms", seconds * 1e3)
    }
}

/// Redraw every `every` until Ctrl-C (or `frames` tables, when given).
pub async fn run(admin: SocketAddr, token: Option<&str>, every: Duration, frames: Option<u64>) -> anyhow::Result<()> {
    let terminal = std::io::stdout().is_terminal();
    let mut before: Option<Sample> = None;
    let mut shown = 0u64;
    loop {
        let frame = match sample(admin, token).await {
            Ok(now) => {
                let wall = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64());
                let text = render(admin, &now, before.as_ref(), wall);
                before = Some(now);
                text
            }
            Err(e) => {
                before = None;
                format!("tributary top  {admin}  cannot read the admin API: {e:#} (is the pipeline running? pass --admin); retrying\n")
            }
        };
        let mut stdout = std::io::stdout().lock();
        if terminal {
            // Home, clear: the table redraws in place.
            write!(stdout, "\x1b[H\x1b[2J{frame}")?;
        } else {
            writeln!(stdout, "{frame}")?;
        }
        stdout.flush()?;
        drop(stdout);
        shown += 1;
        if frames.is_some_and(|n| shown >= n) {
            return Ok(());
        }
        tokio::time::sleep(every).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const METRICS: &str = r#"# HELP tributary_component_rows_in_total Rows received by the component.
tributary_component_rows_in_total{component="ingest",kind="source",type="http_server"} 0
tributary_component_rows_in_total{component="db",kind="sink",type="timescale"} 120
tributary_component_rows_out_total{component="ingest",kind="source",type="http_server"} 120
tributary_component_rows_written_total{component="db",kind="sink",type="timescale"} 100
tributary_component_dead_letters_total{component="db",kind="sink",type="timescale"} 5
tributary_component_errors_total{component="db",kind="sink",type="timescale"} 7
tributary_component_buffer_fill_ratio{component="db",kind="sink",type="timescale"} 0.25
tributary_sink_last_write_timestamp_seconds{component="db",kind="sink",type="timescale"} 1000
tributary_sink_last_write_duration_seconds{component="db",kind="sink",type="timescale"} 0.0042
tributary_table_rows{table="sites"} 9
tributary_up 1
"#;

    #[test]
    fn metrics_are_read_per_component_in_their_order() {
        let comps = parse_metrics(METRICS);
        assert_eq!(comps.iter().map(|(id, _)| id.as_str()).collect::<Vec<_>>(), ["ingest", "db"]);
        let db = &comps[1].1;
        assert_eq!((db.kind.as_str(), db.type_name.as_str()), ("sink", "timescale"));
        assert_eq!((db.rows_in, db.rows_written, db.dead_letters, db.errors), (120.0, 100.0, 5.0, 7.0));
        assert_eq!((db.buffer_fill, db.last_write, db.last_write_duration), (Some(0.25), Some(1000.0), Some(0.0042)));
        assert_eq!(parse_labels(r#"component="a\"b",kind="sink""#)["component"], "a\"b");
    }

    #[test]
    fn the_table_shows_rates_totals_lag_and_the_last_write() {
        let t0 = Instant::now();
        let at = |s: &str, secs: u64| Sample {
            at: t0 + Duration::from_secs(secs),
            components: parse_metrics(s),
            health: "degraded".into(),
            failing: vec![("db".into(), "connection refused (for 12s)".into())],
        };
        let before = at(METRICS, 0);
        let later = METRICS.replace("} 120\n", "} 140\n").replace(
            "rows_written_total{component=\"db\",kind=\"sink\",type=\"timescale\"} 100",
            "rows_written_total{component=\"db\",kind=\"sink\",type=\"timescale\"} 110",
        );
        let now = at(&later, 2);
        let addr: SocketAddr = "127.0.0.1:9598".parse().unwrap();
        assert_eq!(
            render(addr, &now, Some(&before), 1003.0),
            "tributary top  127.0.0.1:9598  health: degraded  components: 2\n  failing: db: connection refused (for 12s)\n\n\
             COMPONENT  KIND    TYPE          IN  IN/s  OUT  OUT/s  ERRORS  DEAD  RETRIES  BUFFER  LAG  LAST WRITE  LATENCY\n\
             ingest     source  http_server    -     -  140   10.0       0     0        0       -    -           -        -\n\
             db         sink    timescale    140  10.0  110    5.0       7     5        0     25%   25      3s ago    4.2ms\n"
        );
        // The first reading has no rates yet.
        assert!(render(addr, &before, None, 1003.0).contains("db         sink    timescale    120     -  100      -"));
    }
}
