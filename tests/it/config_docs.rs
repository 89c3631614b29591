//! Plugin READMEs cannot drift from the config structs: every field a plugin's config decodes
//! appears in its README's config table, and every default the table states as a literal
//! (`` `10s` ``) is the default the struct really has — checked by decoding a minimal config with
//! and without that value and comparing the results.
//!
//! Defaults of nested keys (`docker.host`) and prose defaults ("a tenth of a second's rows") are
//! not compared; the keys still have to be listed.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde_yaml::Value;
use tributary_sdk::ComponentConfig;

/// One component's config struct and where its table is documented.
struct Documented {
    readme: &'static str,
    /// Which `| key | type | default | meaning |` table of the README (0 = the first).
    table: usize,
    /// Options with the required keys only.
    minimal: &'static str,
    /// The struct's `{:#?}` for some options, or the decode error.
    decode: fn(&ComponentConfig) -> Result<String, String>,
}

fn decode<T: DeserializeOwned + std::fmt::Debug>(c: &ComponentConfig) -> Result<String, String> {
    c.decode::<T>().map(|t| format!("{t:#?}")).map_err(|e| e.to_string())
}

/// Keys the engine takes out of every component's options before the plugin sees them.
const ENGINE_KEYS: [&str; 4] = ["type", "inputs", "buffer", "retry"];

fn documented() -> Vec<Documented> {
    vec![
        // One struct per `mode:`, all in one table (decoded without the `mode` key, as the source does).
        Documented {
            readme: "plugins/badge-events/README.md",
            table: 0,
            minimal: "{}",
            decode: decode::<tributary_badge_events::PubsubConfig>,
        },
        Documented {
            readme: "plugins/badge-events/README.md",
            table: 0,
            minimal: "{}",
            decode: decode::<tributary_badge_events::StreamConfig>,
        },
        Documented {
            readme: "plugins/badge-events/README.md",
            table: 0,
            minimal: "{}",
            decode: decode::<tributary_badge_events::HttpConfig>,
        },
        Documented { readme: "plugins/console/README.md", table: 0, minimal: "{}", decode: decode::<tributary_console::ConsoleSinkConfig> },
        Documented { readme: "src/demo/README.md", table: 0, minimal: "{kind: probes}", decode: decode::<tributary::demo::DemoConfig> },
        Documented {
            readme: "plugins/file/README.md",
            table: 0,
            minimal: "{path: /tmp/x, schema: {ts: timestamp}}",
            decode: decode::<tributary_file::FileSourceConfig>,
        },
        Documented {
            readme: "plugins/file/README.md",
            table: 1,
            minimal: "{path: /tmp/x}",
            decode: decode::<tributary_file::FileSinkConfig>,
        },
        Documented {
            readme: "plugins/http-server/README.md",
            table: 0,
            minimal: "{address: '127.0.0.1:1', schema: {ts: timestamp}}",
            decode: decode::<tributary_http_server::HttpServerConfig>,
        },
        Documented {
            readme: "plugins/amqp/README.md",
            table: 0,
            minimal: "{url: 'amqp://127.0.0.1:5672/%2f', queue: q, schema: {v: int}}",
            decode: decode::<tributary_amqp::AmqpSourceConfig>,
        },
        Documented {
            readme: "plugins/amqp/README.md",
            table: 1,
            minimal: "{url: 'amqp://127.0.0.1:5672/%2f', routing_key: k}",
            decode: decode::<tributary_amqp::AmqpSinkConfig>,
        },
        Documented {
            readme: "plugins/mqtt/README.md",
            table: 0,
            minimal: "{url: 'mqtt://127.0.0.1:1883', topics: [a], schema: {v: int}}",
            decode: decode::<tributary_mqtt::MqttSourceConfig>,
        },
        Documented {
            readme: "plugins/mqtt/README.md",
            table: 1,
            minimal: "{url: 'mqtt://127.0.0.1:1883', topic: t}",
            decode: decode::<tributary_mqtt::MqttSinkConfig>,
        },
        Documented {
            readme: "plugins/nats/README.md",
            table: 0,
            minimal: "{url: 'nats://127.0.0.1:4222', schema: {id: int}}",
            decode: decode::<tributary_nats::NatsSourceConfig>,
        },
        Documented {
            readme: "plugins/nats/README.md",
            table: 1,
            minimal: "{url: 'nats://127.0.0.1:4222', subject: s}",
            decode: decode::<tributary_nats::NatsSinkConfig>,
        },
        Documented {
            readme: "plugins/prometheus/README.md",
            table: 0,
            minimal: "{targets: ['http://x/metrics']}",
            decode: decode::<tributary_prometheus::scrape::ScrapeConfig>,
        },
        Documented {
            readme: "plugins/prometheus/README.md",
            table: 1,
            minimal: "{endpoint: 'http://x/api/v1/write', metrics: [{name: m, value: v}]}",
            decode: decode::<tributary_prometheus::RemoteWriteConfig>,
        },
        Documented {
            readme: "plugins/influx/README.md",
            table: 0,
            minimal: "{url: 'http://x', bucket: b, measurement: m}",
            decode: decode::<tributary_influx::InfluxSinkConfig>,
        },
        Documented {
            readme: "plugins/kafka/README.md",
            table: 0,
            minimal: "{bootstrap_servers: x, topic: t}",
            decode: decode::<tributary_kafka::KafkaSinkConfig>,
        },
        Documented {
            readme: "plugins/kafka/README.md",
            table: 1,
            minimal: "{bootstrap_servers: x, topics: [t], group_id: g}",
            decode: decode::<tributary_kafka::KafkaSourceConfig>,
        },
        Documented {
            readme: "plugins/otlp/README.md",
            table: 0,
            minimal: "{endpoint: 'http://x', metrics: []}",
            decode: decode::<tributary_otlp::OtlpSinkConfig>,
        },
        Documented {
            readme: "plugins/otlp/README.md",
            table: 2,
            minimal: "{http_address: '127.0.0.1:4318'}",
            decode: decode::<tributary_otlp::OtlpSourceConfig>,
        },
        Documented {
            readme: "plugins/parquet/README.md",
            table: 0,
            minimal: "{path: /tmp/x}",
            decode: decode::<tributary_parquet::ParquetSinkConfig>,
        },
        Documented {
            readme: "plugins/parquet/README.md",
            table: 1,
            minimal: "{path: /tmp/x, schema: {ts: timestamp}}",
            decode: decode::<tributary_parquet::ParquetSourceConfig>,
        },
        Documented {
            readme: "plugins/site-probe/README.md",
            table: 0,
            minimal: "{targets: []}",
            decode: decode::<tributary_site_probe::SiteProbeConfig>,
        },
        Documented {
            readme: "plugins/srt-stats/README.md",
            table: 0,
            minimal: "{}",
            decode: decode::<tributary_srt_stats::config::SessionsMode>,
        },
        Documented {
            readme: "plugins/srt-stats/README.md",
            table: 0,
            minimal: "{}",
            decode: decode::<tributary_srt_stats::config::DockerMode>,
        },
        Documented {
            readme: "plugins/srt-stats/README.md",
            table: 0,
            minimal: "{}",
            decode: decode::<tributary_srt_stats::config::ApiMode>,
        },
        Documented {
            readme: "plugins/timescale/README.md",
            table: 0,
            minimal: "{connection: 'host=x', table: t}",
            decode: decode::<tributary_timescale::TimescaleSinkConfig>,
        },
        // The keys the engine reads on every component, documented in docs/pipelines.md.
        Documented { readme: "docs/pipelines.md", table: 0, minimal: "{}", decode: decode::<tributary::graph::DiskBufferConfig> },
        Documented { readme: "docs/pipelines.md", table: 1, minimal: "{}", decode: decode::<tributary::graph::SinkRetry> },
        Documented { readme: "docs/pipelines.md", table: 2, minimal: "{}", decode: decode::<tributary::sql::window::WindowConfig> },
        Documented {
            readme: "docs/pipelines.md",
            table: 3,
            minimal: "{path: x.csv}",
            decode: decode::<tributary::tables::FileTableConfig>,
        },
        Documented {
            readme: "docs/pipelines.md",
            table: 4,
            minimal: "{connection: host=db, query: SELECT 1, schema: {n: int}}",
            decode: decode::<tributary::tables::PostgresTableConfig>,
        },
        Documented {
            readme: "docs/pipelines.md",
            table: 5,
            minimal: "{input: srt, key: [session]}",
            decode: decode::<tributary::tables::LatestTableConfig>,
        },
        Documented {
            readme: "plugins/webex-mesh/README.md",
            table: 0,
            minimal: "{auth: {client_id: a, client_secret: b, token_file: /tmp/t}}",
            decode: decode::<tributary_webex_mesh::config::WebexMeshConfig>,
        },
    ]
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A table row: its keys (`` `a` / `b` `` documents two) and the default cell.
struct Row {
    keys: Vec<String>,
    default: String,
}

fn backticked(cell: &str) -> Vec<String> {
    cell.split('`').skip(1).step_by(2).map(str::to_string).collect()
}

/// Rows of the `n`th config table (header `| key | …` or `| option | …` with a `default` column).
fn config_table(readme: &Path, n: usize) -> Vec<Row> {
    let text = std::fs::read_to_string(readme).unwrap_or_else(|e| panic!("{}: {e}", readme.display()));
    let mut tables: Vec<Vec<Row>> = Vec::new();
    let mut in_table = false;
    for line in text.lines() {
        let cells: Vec<&str> = line.trim().trim_matches('|').split(" | ").map(str::trim).collect();
        if line.starts_with('|') && (cells[0] == "key" || cells[0] == "option") && cells.get(2) == Some(&"default") {
            tables.push(Vec::new());
            in_table = true;
        } else if in_table && line.starts_with("|---") {
        } else if in_table && line.starts_with('|') {
            tables.last_mut().unwrap().push(Row { keys: backticked(cells[0]), default: cells.get(2).unwrap_or(&"").to_string() });
        } else {
            in_table = false;
        }
    }
    tables.into_iter().nth(n).unwrap_or_else(|| panic!("{}: no config table #{n}", readme.display()))
}

/// Top-level field names of a `{:#?}` rendering.
fn fields(debug: &str) -> BTreeSet<String> {
    debug
        .lines()
        .filter(|l| l.starts_with("    ") && !l.starts_with("     "))
        .filter_map(|l| l.trim().split_once(": ").map(|(name, _)| name.to_string()))
        .collect()
}

/// Lines sorted, so maps whose iteration order differs between two decodes compare equal.
fn normalized(debug: &str) -> Vec<String> {
    let mut lines: Vec<String> = debug.lines().map(str::to_string).collect();
    lines.sort();
    lines
}

#[test]
fn every_config_field_is_documented_with_its_real_default() {
    let mut problems = Vec::new();
    let (mut fields_checked, mut defaults_checked) = (0, 0);
    for d in documented() {
        let readme = root().join(d.readme);
        let rows = config_table(&readme, d.table);
        let minimal: Value = serde_yaml::from_str(d.minimal).unwrap();
        let base = match (d.decode)(&ComponentConfig::new("c", minimal.clone())) {
            Ok(b) => b,
            Err(e) => {
                problems.push(format!("{} table #{}: the minimal config `{}` does not decode: {e}", d.readme, d.table, d.minimal));
                continue;
            }
        };
        let documented: BTreeSet<String> =
            rows.iter().flat_map(|r| r.keys.iter()).map(|k| k.split(['.', '[']).next().unwrap().to_string()).collect();
        let own = fields(&base);
        for field in own.clone() {
            fields_checked += 1;
            if !documented.contains(&field) {
                problems.push(format!("{} table #{}: `{field}` is a config field but not in the table", d.readme, d.table));
            }
        }
        for row in &rows {
            let defaults = backticked(&row.default);
            // Only literal defaults: the cell is nothing but backticked values (`a` / `b`).
            let literal =
                !defaults.is_empty() && row.default.replace(['`', '/', ' '], "").len() == defaults.concat().replace(' ', "").len();
            if !literal || defaults.len() != row.keys.len() {
                continue;
            }
            for (key, default) in row.keys.iter().zip(&defaults) {
                // A table may cover several structs (one per `mode:`): each checks its own keys.
                if key.contains(['.', '[']) || ENGINE_KEYS.contains(&key.as_str()) || !own.contains(key) {
                    continue;
                }
                if minimal.get(key.as_str()).is_some() {
                    continue;
                }
                defaults_checked += 1;
                let value: Value = serde_yaml::from_str(default).unwrap_or(Value::String(default.clone()));
                let mut with = minimal.clone();
                with.as_mapping_mut().unwrap().insert(Value::String(key.clone()), value);
                match (d.decode)(&ComponentConfig::new("c", with)) {
                    Ok(explicit) if normalized(&explicit) == normalized(&base) => {}
                    Ok(_) => {
                        problems.push(format!("{}: `{key}` is documented with default `{default}`, but that is not its default", d.readme))
                    }
                    Err(e) => problems.push(format!("{}: `{key}`'s documented default `{default}` is not a valid value: {e}", d.readme)),
                }
            }
        }
    }
    // The other direction: every key a table documents is a field of a struct it covers (a table
    // may cover several, one per `mode:`, which the source reads itself).
    let mut covered: std::collections::BTreeMap<(&str, usize), BTreeSet<String>> = Default::default();
    for d in documented() {
        let minimal: Value = serde_yaml::from_str(d.minimal).unwrap();
        if let Ok(base) = (d.decode)(&ComponentConfig::new("c", minimal)) {
            covered.entry((d.readme, d.table)).or_default().extend(fields(&base));
        }
    }
    for ((readme, table), own) in &covered {
        for row in config_table(&root().join(readme), *table) {
            for key in row.keys.iter().map(|k| k.split(['.', '[']).next().unwrap()) {
                if !own.contains(key) && !ENGINE_KEYS.contains(&key) && key != "mode" {
                    problems.push(format!("{readme} table #{table}: `{key}` is documented but no config field has that name"));
                }
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    // Fifteen tables (143 fields, 93 literal defaults today): the check cannot pass by finding none.
    assert!(fields_checked > 130 && defaults_checked > 85, "{fields_checked} fields and {defaults_checked} defaults checked");
}

/// The check itself: a field missing from a table and a wrong default are both found.
#[test]
fn the_check_finds_a_missing_field_and_a_wrong_default() {
    let dir = tempfile::tempdir().unwrap();
    let readme = dir.path().join("README.md");
    std::fs::write(
        &readme,
        "## Config\n\n| key | type | default | meaning |\n|---|---|---|---|\n| `address` | addr | required | x |\n| `path` | string | `/events` | x |\n",
    )
    .unwrap();
    let rows = config_table(&readme, 0);
    assert_eq!(
        rows.iter().map(|r| (r.keys.clone(), r.default.clone())).collect::<Vec<_>>(),
        vec![(vec!["address".to_string()], "required".to_string()), (vec!["path".to_string()], "`/events`".to_string()),]
    );
    let base = decode::<tributary_http_server::HttpServerConfig>(&ComponentConfig::from_yaml(
        "c",
        "{address: '127.0.0.1:1', schema: {ts: timestamp}}",
    ))
    .unwrap();
    let listed = fields(&base);
    assert!(listed.contains("max_body_bytes") && listed.contains("path") && !listed.contains("ts"), "{listed:?}");
    let explicit = decode::<tributary_http_server::HttpServerConfig>(&ComponentConfig::from_yaml(
        "c",
        "{address: '127.0.0.1:1', schema: {ts: timestamp}, path: /events}",
    ))
    .unwrap();
    assert_ne!(normalized(&explicit), normalized(&base), "`/events` is not the default path, so the comparison must tell");
}

/// The README's plugin table, as (type, kinds, the README it links).
fn plugin_table() -> Vec<(String, String, String)> {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let table = readme.split("| type | kind | docs |").nth(1).expect("the README's plugin table");
    table
        .lines()
        .skip(2)
        .take_while(|l| l.starts_with('|'))
        .map(|l| {
            let cells: Vec<&str> = l.trim_matches('|').split(" | ").map(str::trim).collect();
            let link = cells[2].split("](").nth(1).and_then(|r| r.split(')').next()).unwrap_or("").to_string();
            (cells[0].trim_matches('`').to_string(), cells[1].to_string(), link)
        })
        .collect()
}

/// The README's plugin table lists exactly the plugins this build registers, each with the kinds
/// it is registered as, and links a README whose config table this file checks.
#[test]
fn the_plugin_table_is_the_registry() {
    let registry = tributary::plugins::Registry::builtin();
    let mut registered: std::collections::BTreeMap<String, Vec<&str>> = Default::default();
    for t in registry.source_types() {
        registered.entry(t.to_string()).or_default().push("source");
    }
    for t in registry.sink_types() {
        registered.entry(t.to_string()).or_default().push("sink");
    }
    registered.insert("sql".into(), vec!["transform"]);
    let checked: BTreeSet<&str> = documented().iter().map(|d| d.readme).collect();
    let mut listed = std::collections::BTreeMap::new();
    for (type_name, kinds, link) in plugin_table() {
        if type_name != "sql" {
            assert!(checked.contains(link.as_str()), "`{type_name}` links {link}, whose config table config_docs does not check");
        }
        listed.insert(type_name, kinds.split(", ").map(str::to_string).collect::<Vec<_>>());
    }
    let registered: std::collections::BTreeMap<String, Vec<String>> =
        registered.into_iter().map(|(t, k)| (t, k.into_iter().map(str::to_string).collect())).collect();
    assert_eq!(listed, registered, "the README's plugin table (left) against the registry (right)");
}

/// The backticked names in the first column of the table whose header starts with `header`.
fn first_column_names(file: &str, header: &str) -> BTreeSet<String> {
    let text = std::fs::read_to_string(root().join(file)).unwrap();
    let table = text.split(&format!("\n{header}")).nth(1).unwrap_or_else(|| panic!("{file}: no table `{header}`"));
    table
        .lines()
        .skip(2)
        .take_while(|l| l.starts_with('|'))
        .flat_map(|l| backticked(l.trim_matches('|').split(" | ").next().unwrap()))
        .collect()
}

/// Every delivery table names every plugin of its kind that this build registers, so a new
/// plugin cannot ship without saying what an ack means for it.
#[test]
fn the_delivery_tables_cover_every_registered_plugin() {
    let registry = tributary::plugins::Registry::builtin();
    let mut missing = Vec::new();
    let tables = [
        ("README.md", "| source |", registry.source_types()),
        ("README.md", "| sink |", registry.sink_types()),
        ("docs/delivery.md", "| source |", registry.source_types()),
        ("docs/delivery.md", "| sink |", registry.sink_types()),
        ("docs/delivery.md", "| component | exactly once |", [registry.source_types(), registry.sink_types()].concat()),
    ];
    for (file, header, types) in tables {
        let named = first_column_names(file, header);
        for t in types {
            if !named.contains(t) {
                missing.push(format!("{file}, table `{header}`: no row names `{t}`"));
            }
        }
    }
    assert!(missing.is_empty(), "{}", missing.join("\n"));
}

/// A delivery table's rows: `(type, variant, cells)`, merged into one row naming each component
/// where the cells are the same.
fn delivery_table(header: &[&str], rows: Vec<(&str, &str, Vec<&str>)>) -> String {
    let mut merged: Vec<(Vec<String>, Vec<&str>)> = Vec::new();
    for (type_name, variant, cells) in rows {
        let label = if variant.is_empty() { format!("`{type_name}`") } else { format!("`{type_name}` {variant}") };
        match merged.iter_mut().find(|(_, c)| *c == cells) {
            Some((labels, _)) => labels.push(label),
            None => merged.push((vec![label], cells)),
        }
    }
    let mut out = format!("| {} |\n|{}\n", header.join(" | "), "---|".repeat(header.len()));
    for (labels, cells) in merged {
        out += &format!("| {} | {} |\n", labels.join(", "), cells.join(" | "));
    }
    out
}

/// The delivery tables, as each plugin's `delivery()` declares them: (file, table name, text).
fn rendered_delivery_tables() -> Vec<(&'static str, &'static str, String)> {
    let registry = tributary::plugins::Registry::builtin();
    let sources = |cells: fn(&tributary_sdk::delivery::SourceDelivery) -> Vec<&'static str>| {
        registry.sources().flat_map(|p| p.delivery().iter().map(move |d| (p.type_name(), d.variant, cells(d)))).collect::<Vec<_>>()
    };
    let sinks =
        registry.sinks().flat_map(|p| p.delivery().iter().map(move |d| (p.type_name(), d.variant, vec![d.durable_when, d.duplicates])));
    let sinks = delivery_table(&["sink", "durable when", "duplicates"], sinks.collect());
    vec![
        (
            "README.md",
            "sources",
            delivery_table(
                &["source", "guarantee", "a crash loses", "duplicates"],
                sources(|d| vec![d.guarantee, d.crash_loses, d.duplicates]),
            ),
        ),
        ("README.md", "sinks", sinks.clone()),
        (
            "docs/delivery.md",
            "sources",
            delivery_table(
                &["source", "guarantee", "how", "duplicates", "a crash loses"],
                sources(|d| vec![d.guarantee, d.how, d.duplicates, d.crash_loses]),
            ),
        ),
        ("docs/delivery.md", "sinks", sinks),
    ]
}

/// The delivery tables are generated from the plugins' declarations, between
/// `<!-- generated: NAME -->` and `<!-- end generated -->`. `TRIBUTARY_BLESS=1` rewrites them.
#[test]
fn the_delivery_tables_are_the_plugins_declarations() {
    let bless = std::env::var_os("TRIBUTARY_BLESS").is_some();
    let mut stale = Vec::new();
    for (file, name, table) in rendered_delivery_tables() {
        let path = root().join(file);
        let text = std::fs::read_to_string(&path).unwrap();
        let begin = format!("<!-- generated: {name} -->\n");
        let start = text.find(&begin).unwrap_or_else(|| panic!("{file}: no `{}`", begin.trim())) + begin.len();
        let end = start + text[start..].find("<!-- end generated -->").unwrap_or_else(|| panic!("{file}: `{name}` is not closed"));
        if text[start..end] != table {
            if bless {
                std::fs::write(&path, format!("{}{table}{}", &text[..start], &text[end..])).unwrap();
            }
            stale.push(format!("{file}, table `{name}`: expected\n{table}"));
        }
    }
    assert!(bless || stale.is_empty(), "run with TRIBUTARY_BLESS=1 to rewrite:\n{}", stale.join("\n"));
}

#[test]
fn identical_delivery_rows_merge_and_variants_are_named() {
    let table = delivery_table(
        &["source", "guarantee"],
        vec![("a", "", vec!["once"]), ("b", "`mode: x`", vec!["twice"]), ("c", "`mode: y`", vec!["once"])],
    );
    assert_eq!(table, "| source | guarantee |\n|---|---|\n| `a`, `c` `mode: y` | once |\n| `b` `mode: x` | twice |\n");
}

/// The exactly-once table in docs/delivery.md says what `validate` does. Each case puts one
/// component in a pipeline with `delivery: exactly_once`; the table row listing the case's label
/// (an item of its first cell) says "yes" or "no", and planning the pipeline must succeed or fail
/// to match. Every registered source and sink type has a case, so a new plugin has to be placed in
/// the table, and a row that lies fails here.
#[tokio::test]
async fn the_exactly_once_table_says_what_validate_does() {
    // (label in the table's first column, the component's options)
    let sources: &[(&str, &str)] = &[
        ("`http_server`", "{type: http_server, address: '127.0.0.1:0', schema: {ts: timestamp, id: int}, buffer: {type: disk}}"),
        (
            "`badge_events` `mode: http` and `mode: pubsub`",
            "{type: badge_events, mode: http, address: '127.0.0.1:0', buffer: {type: disk}}",
        ),
        ("`badge_events` `mode: http` and `mode: pubsub`", "{type: badge_events, mode: pubsub, buffer: {type: disk}}"),
        ("`site_probe`", "{type: site_probe, targets: [{name: home, url: 'http://localhost/'}], buffer: {type: disk}}"),
        ("`prometheus_scrape`", "{type: prometheus_scrape, targets: ['http://localhost/metrics'], buffer: {type: disk}}"),
        ("`otlp`", "{type: otlp, http_address: '127.0.0.1:0', buffer: {type: disk}}"),
        ("`srt_stats`", "{type: srt_stats, mode: docker, buffer: {type: disk}}"),
        ("`demo`", "{type: demo, kind: probes, buffer: {type: disk}}"),
        (
            "`webex_mesh` (live poll)",
            "{type: webex_mesh, auth: {client_id: a, client_secret: b, token_file: /tmp/t}, backfill: 0s, buffer: {type: disk}}",
        ),
        ("`nats` on a core `subject`", "{type: nats, url: 'nats://127.0.0.1:4222', subject: s, schema: {id: int}, buffer: {type: disk}}"),
        (
            "`mqtt` with `qos: 0` or `clean_session: true`",
            "{type: mqtt, url: 'mqtt://127.0.0.1:1883', topics: [a], schema: {v: int}, qos: 0, buffer: {type: disk}}",
        ),
        (
            "`mqtt` with `qos: 0` or `clean_session: true`",
            "{type: mqtt, url: 'mqtt://127.0.0.1:1883', topics: [a], schema: {v: int}, clean_session: true, buffer: {type: disk}}",
        ),
        ("`kafka`", "{type: kafka, bootstrap_servers: 'localhost:9092', topics: [t], group_id: g, schema: {v: int}}"),
        ("`file`", "{type: file, path: /tmp/x, schema: {ts: timestamp}}"),
        ("`parquet`", "{type: parquet, path: /tmp/x, schema: {ts: timestamp}}"),
        ("`badge_events` `mode: stream`", "{type: badge_events, mode: stream}"),
        ("`webex_mesh` with `backfill`", "{type: webex_mesh, auth: {client_id: a, client_secret: b, token_file: /tmp/t}}"),
        (
            "`nats` with `stream` (JetStream)",
            "{type: nats, url: 'nats://127.0.0.1:4222', stream: S, consumer: c, schema: {id: int}, buffer: {type: disk}}",
        ),
        (
            "`mqtt` with `qos: 1` or `2` and a persistent session",
            "{type: mqtt, url: 'mqtt://127.0.0.1:1883', topics: [a], schema: {v: int}, qos: 2, buffer: {type: disk}}",
        ),
        ("`amqp`", "{type: amqp, url: 'amqp://127.0.0.1:5672/%2f', queue: q, schema: {v: int}, buffer: {type: disk}}"),
        ("any source without `buffer: {type: disk}`", "{type: http_server, address: '127.0.0.1:0', schema: {ts: timestamp, id: int}}"),
    ];
    let sinks: &[(&str, &str)] = &[
        ("`timescale` (`append` and `upsert`)", "{type: timescale, connection: 'host=x', table: t}"),
        ("`timescale` (`append` and `upsert`)", "{type: timescale, connection: 'host=x', table: t, mode: upsert, key: [id]}"),
        ("`parquet` with `format: delta` (local or object storage)", "{type: parquet, format: delta, path: /tmp/x}"),
        ("`parquet` with `format: delta` (local or object storage)", "{type: parquet, format: delta, path: 's3://bucket/lake'}"),
        ("`parquet` (`format: parquet`)", "{type: parquet, path: /tmp/x}"),
        ("`file`", "{type: file, path: /tmp/x}"),
        ("`kafka`", "{type: kafka, bootstrap_servers: 'localhost:9092', topic: t}"),
        ("`influx`", "{type: influx, url: 'http://localhost:8086', bucket: b, measurement: m}"),
        ("`otlp`", "{type: otlp, endpoint: 'http://localhost:4318', metrics: []}"),
        (
            "`prometheus_remote_write`",
            "{type: prometheus_remote_write, endpoint: 'http://localhost/api/v1/write', metrics: [{name: m, value: id}]}",
        ),
        ("`nats`", "{type: nats, url: 'nats://127.0.0.1:4222', subject: s}"),
        ("`mqtt`", "{type: mqtt, url: 'mqtt://127.0.0.1:1883', topic: t}"),
        ("`amqp`", "{type: amqp, url: 'amqp://127.0.0.1:5672/%2f', routing_key: k}"),
        ("`console`", "{type: console}"),
    ];
    const INGEST: &str = "{type: http_server, address: '127.0.0.1:0', schema: {ts: timestamp, id: int}, buffer: {type: disk}}";
    // An exactly-once sink taking any columns, for the sources' cases.
    const LAKE: &str = "{type: parquet, format: delta, path: /tmp/lake, partition_by_date: false}";

    let text = std::fs::read_to_string(root().join("docs/delivery.md")).unwrap();
    let start = text.find("| component | exactly once |").expect("docs/delivery.md: the exactly-once table");
    let rows: Vec<(Vec<&str>, &str)> = text[start..]
        .lines()
        .skip(2)
        .take_while(|l| l.starts_with('|'))
        .map(|l| {
            let cells: Vec<&str> = l.trim_matches('|').split(" | ").map(str::trim).collect();
            (cells[0].split(", ").collect(), cells[1])
        })
        .collect();
    // Source rows come before the SQL transforms' rows, sink rows after them.
    let first_sql = rows.iter().position(|(labels, _)| labels[0].starts_with("SQL transform")).expect("the SQL transform rows");
    let last_sql = rows.iter().rposition(|(labels, _)| labels[0].starts_with("SQL transform")).unwrap();
    let says_yes = |rows: &[(Vec<&str>, &str)], label: &str| -> Result<bool, String> {
        let found: Vec<&&str> = rows.iter().filter(|(labels, _)| labels.contains(&label)).map(|(_, verdict)| verdict).collect();
        match found[..] {
            [verdict] if verdict.starts_with("yes") => Ok(true),
            [verdict] if verdict.starts_with("no") => Ok(false),
            [verdict] => Err(format!("the row of {label} says neither yes nor no: {verdict}")),
            _ => Err(format!("{} rows list {label}", found.len())),
        }
    };
    let planned = |pipeline: String| async move {
        let file = tributary::config::PipelineFile::parse("p.yaml", &pipeline, &|_| None).map_err(|d| d.to_string())?;
        tributary::graph::plan(&file, &tributary::plugins::Registry::builtin()).await.map(|_| ()).map_err(|d| d.to_string())
    };

    let mut wrong = Vec::new();
    let mut checked_types = BTreeSet::new();
    let cases = sources
        .iter()
        .map(|(label, options)| {
            // The otlp source has an output per signal.
            let input = if options.contains("type: otlp") { "a.metrics" } else { "a" };
            let pipeline = format!("sources:\n  a: {options}\nsinks:\n  lake: {{inputs: [{input}], {}\n", &LAKE[1..]);
            ("source", &rows[..first_sql], label, options, pipeline)
        })
        .chain(sinks.iter().map(|(label, options)| {
            (
                "sink",
                &rows[last_sql + 1..],
                label,
                options,
                format!("sources:\n  ingest: {INGEST}\nsinks:\n  out: {{inputs: [ingest], {}\n", &options[1..]),
            )
        }));
    for (kind, section, label, options, pipeline) in cases {
        let pipeline = format!("delivery: exactly_once\n{pipeline}");
        let type_name = options.split("type: ").nth(1).and_then(|t| t.split([',', '}']).next()).unwrap().to_string();
        checked_types.insert((kind, type_name));
        match (says_yes(section, label), planned(pipeline.clone()).await) {
            (Err(why), _) => wrong.push(why),
            (Ok(true), Err(refused)) => wrong.push(format!("{label} says yes, but {options} is refused: {refused}")),
            (Ok(false), Ok(())) => wrong.push(format!("{label} says no, but {options} plans exactly once")),
            _ => {}
        }
    }
    let registry = tributary::plugins::Registry::builtin();
    let types = registry.source_types().into_iter().map(|t| ("source", t)).chain(registry.sink_types().into_iter().map(|t| ("sink", t)));
    for (kind, t) in types {
        if !checked_types.contains(&(kind, t.to_string())) {
            wrong.push(format!("no case for the `{t}` {kind}"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}
