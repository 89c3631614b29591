//! The Prometheus text exposition format (0.0.4) and OpenMetrics 1.0 text, parsed into samples
//! with their family's type. As Prometheus does, a malformed line fails the whole scrape: the
//! error names the line and what was wrong.

use std::collections::HashMap;

/// Which dialect the target answered with (its `Content-Type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `text/plain; version=0.0.4`: timestamps in integer milliseconds.
    Text,
    /// `application/openmetrics-text`: timestamps in (fractional) seconds, `# EOF` at the end,
    /// exemplars after ` # `.
    OpenMetrics,
}

impl Format {
    pub fn of_content_type(content_type: &str) -> Format {
        if content_type.trim_start().starts_with("application/openmetrics-text") {
            Format::OpenMetrics
        } else {
            Format::Text
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    /// In the order exposed.
    pub labels: Vec<(String, String)>,
    pub value: f64,
    /// Milliseconds since the Unix epoch, when the target gave one.
    pub timestamp_ms: Option<i64>,
    /// The family's `# TYPE` (`counter`, `gauge`, `histogram`, `summary`, …), if declared.
    pub kind: Option<String>,
}

/// The suffixes a family's samples add to its name (`x_bucket` belongs to histogram `x`).
const SUFFIXES: [&str; 8] = ["_bucket", "_sum", "_count", "_total", "_created", "_gcount", "_gsum", "_info"];

pub fn parse(body: &str, format: Format) -> Result<Vec<Sample>, String> {
    let mut types: HashMap<String, String> = HashMap::new();
    let mut samples = Vec::new();
    for (i, line) in body.lines().enumerate() {
        let at = |what: String| format!("line {}: {what}", i + 1);
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() {
            continue;
        }
        if let Some(comment) = line.strip_prefix('#') {
            let mut words = comment.split_whitespace();
            match words.next() {
                Some("EOF") if format == Format::OpenMetrics => break,
                Some("TYPE") => {
                    let (Some(name), Some(kind)) = (words.next(), words.next()) else {
                        return Err(at("`# TYPE` needs a metric name and a type".into()));
                    };
                    types.insert(name.to_string(), kind.to_ascii_lowercase());
                }
                _ => {}
            }
            continue;
        }
        samples.push(sample(line, format).map_err(at)?);
    }
    for s in &mut samples {
        s.kind = types
            .get(&s.name)
            .cloned()
            .or_else(|| SUFFIXES.iter().find_map(|suffix| s.name.strip_suffix(suffix).and_then(|family| types.get(family).cloned())));
    }
    Ok(samples)
}

/// One sample line: `name{label="value",…} value [timestamp] [# exemplar]`.
fn sample(line: &str, format: Format) -> Result<Sample, String> {
    let mut rest = line.trim_start();
    let name_len = rest.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':')).unwrap_or(rest.len());
    let name = &rest[..name_len];
    if name.is_empty() || name.starts_with(|c: char| c.is_ascii_digit()) {
        return Err(format!("expected a metric name at `{}`", snippet(rest)));
    }
    rest = &rest[name_len..];
    let mut labels: Vec<(String, String)> = Vec::new();
    if let Some(after) = rest.strip_prefix('{') {
        rest = after;
        loop {
            rest = rest.trim_start();
            if let Some(after) = rest.strip_prefix('}') {
                rest = after;
                break;
            }
            let len = rest.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(rest.len());
            let label = &rest[..len];
            if label.is_empty() || label.starts_with(|c: char| c.is_ascii_digit()) {
                return Err(format!("expected a label name or `}}` at `{}`", snippet(rest)));
            }
            rest = rest[len..].trim_start();
            rest = rest.strip_prefix('=').ok_or_else(|| format!("expected `=` after label `{label}`"))?.trim_start();
            rest = rest.strip_prefix('"').ok_or_else(|| format!("label `{label}`: expected a quoted value"))?;
            let (value, after) = quoted(rest).ok_or_else(|| format!("label `{label}`: the value's quotes are not closed"))?;
            if labels.iter().any(|(n, _)| n == label) {
                return Err(format!("label `{label}` is given twice"));
            }
            labels.push((label.to_string(), value));
            rest = after.trim_start();
            if let Some(after) = rest.strip_prefix(',') {
                rest = after;
            } else if !rest.starts_with('}') {
                return Err(format!("expected `,` or `}}` after label `{label}`"));
            }
        }
    }
    if format == Format::OpenMetrics {
        // An exemplar follows ` # `; it is not a sample.
        if let Some(i) = rest.find(" # ") {
            rest = &rest[..i];
        }
    }
    let mut fields = rest.split_whitespace();
    let value = fields.next().ok_or_else(|| format!("`{name}` has no value"))?;
    let value = number(value).ok_or_else(|| format!("`{name}`: `{}` is not a number", snippet(value)))?;
    let timestamp_ms = match fields.next() {
        None => None,
        Some(t) => Some(timestamp(t, format).ok_or_else(|| format!("`{name}`: `{}` is not a timestamp", snippet(t)))?),
    };
    if let Some(extra) = fields.next() {
        return Err(format!("`{name}`: unexpected `{}` after the timestamp", snippet(extra)));
    }
    Ok(Sample { name: name.to_string(), labels, value, timestamp_ms, kind: None })
}

/// A label value up to its closing quote, with `\\`, `\"` and `\n` unescaped; and what follows.
fn quoted(text: &str) -> Option<(String, &str)> {
    let mut value = String::new();
    let mut chars = text.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Some((value, &text[i + 1..])),
            '\\' => match chars.next()?.1 {
                'n' => value.push('\n'),
                other @ ('\\' | '"') => value.push(other),
                other => {
                    value.push('\\');
                    value.push(other);
                }
            },
            c => value.push(c),
        }
    }
    None
}

/// A Go-style float: `NaN`, `+Inf`, `-Inf` and Rust's decimal and exponent forms.
fn number(text: &str) -> Option<f64> {
    match text.to_ascii_lowercase().as_str() {
        "nan" => Some(f64::NAN),
        "+inf" | "inf" => Some(f64::INFINITY),
        "-inf" => Some(f64::NEG_INFINITY),
        lower if lower.contains("inf") || lower.contains("nan") => None,
        _ => text.parse().ok(),
    }
}

fn timestamp(text: &str, format: Format) -> Option<i64> {
    match format {
        Format::Text => text.parse().ok(),
        Format::OpenMetrics => {
            let seconds: f64 = text.parse().ok()?;
            let ms = (seconds * 1000.0).round();
            (ms.is_finite() && ms.abs() < 9.2e18).then_some(ms as i64)
        }
    }
}

/// The start of `text`, for an error message.
fn snippet(text: &str) -> String {
    let mut s: String = text.chars().take(40).collect();
    if s.len() < text.len() {
        s.push('…');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(line: &str) -> Sample {
        parse(line, Format::Text).unwrap().remove(0)
    }

    #[test]
    fn every_kind_with_its_family_type() {
        let body = "# HELP http_requests_total Requests.\n# TYPE http_requests_total counter\nhttp_requests_total{method=\"post\",code=\"200\"} 1027 1395066363000\nhttp_requests_total{method=\"post\",code=\"400\",} 3 1395066363000\n\n# TYPE rpc_duration_seconds summary\nrpc_duration_seconds{quantile=\"0.5\"} 4773\nrpc_duration_seconds_sum 1.7560473e+07\nrpc_duration_seconds_count 2693\n# TYPE http_request_duration_seconds histogram\nhttp_request_duration_seconds_bucket{le=\"0.05\"} 24054\nhttp_request_duration_seconds_bucket{le=\"+Inf\"} 144320\nhttp_request_duration_seconds_sum 53423\nmetric_without_timestamp_and_labels 12.47\nsomething_weird{problem=\"division by zero\"} +Inf -3982045\nescaped{path=\"C:\\\\DIR\\\\\",msg=\"say \\\"hi\\\"\\nbye\"} NaN\n";
        let samples = parse(body, Format::Text).unwrap();
        let rows: Vec<(String, Option<String>, String, Option<i64>)> =
            samples.iter().map(|s| (s.name.clone(), s.kind.clone(), format!("{:?}", s.labels), s.timestamp_ms)).collect();
        let k = |k: &str| Some(k.to_string());
        assert_eq!(
            rows,
            [
                ("http_requests_total".into(), k("counter"), r#"[("method", "post"), ("code", "200")]"#.into(), Some(1395066363000)),
                ("http_requests_total".into(), k("counter"), r#"[("method", "post"), ("code", "400")]"#.into(), Some(1395066363000)),
                ("rpc_duration_seconds".into(), k("summary"), r#"[("quantile", "0.5")]"#.into(), None),
                ("rpc_duration_seconds_sum".into(), k("summary"), "[]".into(), None),
                ("rpc_duration_seconds_count".into(), k("summary"), "[]".into(), None),
                ("http_request_duration_seconds_bucket".into(), k("histogram"), r#"[("le", "0.05")]"#.into(), None),
                ("http_request_duration_seconds_bucket".into(), k("histogram"), r#"[("le", "+Inf")]"#.into(), None),
                ("http_request_duration_seconds_sum".into(), k("histogram"), "[]".into(), None),
                ("metric_without_timestamp_and_labels".into(), None, "[]".into(), None),
                ("something_weird".into(), None, r#"[("problem", "division by zero")]"#.into(), Some(-3982045)),
                ("escaped".into(), None, r#"[("path", "C:\\DIR\\"), ("msg", "say \"hi\"\nbye")]"#.into(), None),
            ]
        );
        assert_eq!(samples[0].value, 1027.0);
        assert_eq!(samples[3].value, 1.7560473e7);
        assert_eq!(samples[9].value, f64::INFINITY);
        assert!(samples[10].value.is_nan());
    }

    #[test]
    fn openmetrics_seconds_exemplars_and_eof() {
        let body = "# TYPE acme_http_router_request_seconds histogram\n# UNIT acme_http_router_request_seconds seconds\nacme_http_router_request_seconds_bucket{le=\"0.1\"} 8 1520879607.789 # {trace_id=\"KOO5S4vxi0o\"} 0.067 1520879602.7\nacme_http_router_request_seconds_count 8\n# EOF\nnot a sample after EOF\n";
        let samples = parse(body, Format::OpenMetrics).unwrap();
        assert_eq!(samples.len(), 2);
        assert_eq!(samples[0].timestamp_ms, Some(1520879607789));
        assert_eq!(samples[0].value, 8.0);
        assert_eq!(samples[1].kind.as_deref(), Some("histogram"));
        assert_eq!(Format::of_content_type("application/openmetrics-text; version=1.0.0; charset=utf-8"), Format::OpenMetrics);
        assert_eq!(Format::of_content_type("text/plain; version=0.0.4"), Format::Text);
    }

    #[test]
    fn errors_name_the_line_and_the_problem() {
        let err = |body: &str| parse(body, Format::Text).unwrap_err();
        assert_eq!(err("ok 1\n{x=\"y\"} 1\n"), "line 2: expected a metric name at `{x=\"y\"} 1`");
        assert_eq!(err("a{b=\"c} 1\n"), "line 1: label `b`: the value's quotes are not closed");
        assert_eq!(err("a{b=c} 1"), "line 1: label `b`: expected a quoted value");
        assert_eq!(err("a{b} 1"), "line 1: expected `=` after label `b`");
        assert_eq!(err("a{b=\"1\" c=\"2\"} 1"), "line 1: expected `,` or `}` after label `b`");
        assert_eq!(err("a{b=\"1\",b=\"2\"} 1"), "line 1: label `b` is given twice");
        assert_eq!(err("a"), "line 1: `a` has no value");
        assert_eq!(err("a one"), "line 1: `a`: `one` is not a number");
        assert_eq!(err("a 1 12.5"), "line 1: `a`: `12.5` is not a timestamp");
        assert_eq!(err("a 1 2 3"), "line 1: `a`: unexpected `3` after the timestamp");
        assert_eq!(err("# TYPE a\n"), "line 1: `# TYPE` needs a metric name and a type");
        assert_eq!(one("a 1e3").value, 1000.0);
        assert_eq!(one("  a{} -0.5").labels, []);
    }

    /// Hostile bodies: deep braces, a huge label value, and binary garbage fail one line with a
    /// short message, never a panic.
    #[test]
    fn hostile_bodies_fail_cleanly() {
        let deep = format!("a{} 1", "{".repeat(30_000));
        assert_eq!(
            parse(&deep, Format::Text).unwrap_err(),
            "line 1: expected a label name or `}` at `{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{…`"
        );
        let huge = format!("a{{b=\"{}\"}} 1", "x".repeat(1_000_000));
        assert_eq!(parse(&huge, Format::Text).unwrap()[0].labels[0].1.len(), 1_000_000);
        let garbage: String = (0..10_000u32).map(|i| char::from_u32(i % 0xD7FF).unwrap_or('?')).collect();
        assert!(parse(&garbage, Format::Text).is_err());
    }
}
