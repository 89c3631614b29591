//! Pipeline files: YAML → interpolated, positioned component declarations.
//!
//! Loading checks the document's shape (top-level sections, component ids, `type` and `inputs`).
//! Each component's own options are checked by its plugin when the pipeline is planned; every
//! error is reported as `file:line:col: path: message`, with secrets redacted.

pub mod interpolate;
pub mod spans;

use std::fmt;
use std::net::SocketAddr;
use std::path::Path;

use serde_yaml::{Mapping, Value};
use tributary_sdk::config::{path_to_string, PathSeg};

use spans::SpanIndex;

/// One problem in a pipeline file, with its position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: String,
    pub line: usize,
    pub col: usize,
    /// Where in the document (`sources.probes.rate`), empty for the whole file.
    pub path: String,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: ", self.file, self.line, self.col)?;
        if !self.path.is_empty() {
            write!(f, "{}: ", self.path)?;
        }
        f.write_str(&self.message)
    }
}

/// All problems found in a file.
#[derive(Debug, Clone)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Diagnostics {}

/// Which section a component is declared in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Source,
    Transform,
    Sink,
}

impl Kind {
    pub fn section(self) -> &'static str {
        match self {
            Kind::Source => "sources",
            Kind::Transform => "transforms",
            Kind::Sink => "sinks",
        }
    }
    pub fn label(self) -> &'static str {
        match self {
            Kind::Source => "source",
            Kind::Transform => "transform",
            Kind::Sink => "sink",
        }
    }
}

/// One component as declared.
#[derive(Debug, Clone)]
pub struct ComponentDecl {
    pub id: String,
    pub kind: Kind,
    /// `type:`; transforms default to `sql`.
    pub type_name: String,
    pub inputs: Vec<String>,
    /// Everything else, interpolated.
    pub options: Value,
}

/// `admin:` — where `/health` and `/metrics` are served.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Default `127.0.0.1:9598` (localhost only).
    #[serde(default = "default_admin_address")]
    pub address: SocketAddr,
    #[serde(default = "yes")]
    pub enabled: bool,
    /// `/health` answers 503 `degraded` once a sink has been failing (retrying) this long
    /// (default `30s`), naming it and its last error.
    #[serde(default = "default_degraded_after")]
    pub degraded_after: tributary_sdk::HumanDuration,
    /// Bearer token `/tap` requires (it serves rows and dead-letter payloads), e.g.
    /// `${TRIBUTARY_ADMIN_TOKEN}`. Unset or empty: no token (keep the address on localhost).
    #[serde(default)]
    pub token: Option<tributary_sdk::Secret>,
    /// Rows one tap streams at most (default 10000).
    #[serde(default = "default_tap_max_rows")]
    pub tap_max_rows: u64,
    /// How long one tap stays open at most (default 10m).
    #[serde(default = "default_tap_max_duration")]
    pub tap_max_duration: tributary_sdk::Period,
}

fn default_tap_max_rows() -> u64 {
    10_000
}
fn default_tap_max_duration() -> tributary_sdk::Period {
    tributary_sdk::Period::from_secs(600)
}

fn default_degraded_after() -> tributary_sdk::HumanDuration {
    tributary_sdk::HumanDuration(std::time::Duration::from_secs(30))
}

fn default_admin_address() -> SocketAddr {
    "127.0.0.1:9598".parse().unwrap()
}
fn yes() -> bool {
    true
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            address: default_admin_address(),
            enabled: true,
            degraded_after: default_degraded_after(),
            token: None,
            tap_max_rows: default_tap_max_rows(),
            tap_max_duration: default_tap_max_duration(),
        }
    }
}

/// `dead_letters:` — where the engine stores the dead letters of components whose
/// `<id>.dead_letter` output is not wired to anything.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeadLetterConfig {
    /// One JSON-lines file per component in this folder (default `./data/dead_letters`, which
    /// `tributary query` reads as the table `dead_letters`).
    #[serde(default = "default_dead_letter_path")]
    pub path: std::path::PathBuf,
}

fn default_dead_letter_path() -> std::path::PathBuf {
    "./data/dead_letters".into()
}

impl Default for DeadLetterConfig {
    fn default() -> Self {
        DeadLetterConfig { path: default_dead_letter_path() }
    }
}

/// One entry of `tables:`: a named reference table that every SQL transform can read.
#[derive(Debug, Clone, PartialEq)]
pub struct TableDecl {
    pub name: String,
    /// Its options (`type:` included), interpolated; decoded when the pipeline is planned.
    pub options: Value,
}

/// A loaded pipeline file.
#[derive(Debug)]
pub struct PipelineFile {
    pub file: String,
    pub components: Vec<ComponentDecl>,
    /// `tables:`, in file order.
    pub tables: Vec<TableDecl>,
    pub admin: AdminConfig,
    pub dead_letters: DeadLetterConfig,
    /// `delivery:` at the top level (each sink may override it).
    pub delivery: Guarantee,
    /// Values substituted from the environment, redacted from every message.
    pub secrets: Vec<String>,
    /// `tests:` as written (not interpolated): fixtures for `tributary test`.
    pub tests: Option<Value>,
    spans: SpanIndex,
}

const TOP_LEVEL_KEYS: &[&str] = &["sources", "transforms", "sinks", "tables", "delivery", "admin", "dead_letters", "tests"];

/// `delivery:` — what a sink promises about rows that a crash, an outage or a reload makes the
/// engine send again (top level for every sink; a sink's own `delivery:` overrides it).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Guarantee {
    /// Nothing acknowledged is lost; after a crash some rows may be written twice (the default).
    #[default]
    AtLeastOnce,
    /// Nothing acknowledged is lost and nothing is written twice: the sink stores the sources'
    /// positions with its rows. `validate` refuses a path that cannot provide it.
    ExactlyOnce,
}

impl PipelineFile {
    pub fn load(path: &Path) -> Result<Self, Diagnostics> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            Diagnostics(vec![Diagnostic {
                file: path.display().to_string(),
                line: 0,
                col: 0,
                path: String::new(),
                message: format!("cannot read pipeline file: {e}"),
            }])
        })?;
        Self::parse(&path.display().to_string(), &text, &|k| std::env::var(k).ok())
    }

    /// Parse pipeline text; `env` resolves `${VAR}`.
    pub fn parse(file: &str, text: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Self, Diagnostics> {
        let spans = SpanIndex::build(text).map_err(|too_deep| {
            Diagnostics(vec![Diagnostic {
                file: file.into(),
                line: too_deep.at.line,
                col: too_deep.at.col,
                path: String::new(),
                message: format!("YAML nested deeper than {} levels (the limit)", spans::MAX_YAML_NESTING),
            }])
        })?;
        let mut p = PipelineFile {
            file: file.to_string(),
            components: vec![],
            tables: vec![],
            admin: AdminConfig::default(),
            dead_letters: DeadLetterConfig::default(),
            delivery: Guarantee::default(),
            secrets: vec![],
            tests: None,
            spans,
        };
        let mut errors = Vec::new();
        let root: Value = match serde_yaml::from_str(text) {
            Ok(v) => v,
            Err(e) => {
                let (line, col) = e.location().map(|l| (l.line(), l.column())).unwrap_or((1, 1));
                let msg = e.to_string();
                let msg = msg.split(" at line ").next().unwrap_or(&msg).to_string();
                return Err(Diagnostics(vec![Diagnostic {
                    file: file.into(),
                    line,
                    col,
                    path: String::new(),
                    message: format!("invalid YAML: {msg}"),
                }]));
            }
        };
        let mut root = match root {
            Value::Mapping(m) => m,
            Value::Null => Mapping::new(),
            _ => {
                errors.push(p.diag("", "a pipeline file must be a mapping with `sources`, `transforms` and `sinks`".into()));
                return Err(Diagnostics(errors));
            }
        };
        // Test fixtures are data, not configuration: `${…}` in them stays as written.
        p.tests = root.remove("tests");
        let mut root = match p.interpolate(Value::Mapping(root), &[], env, &mut errors) {
            Value::Mapping(m) => m,
            _ => unreachable!("interpolation keeps mappings"),
        };
        for key in root.keys() {
            let k = key.as_str().unwrap_or("?");
            if !TOP_LEVEL_KEYS.contains(&k) {
                errors.push(p.diag(k, format!("unknown key `{k}`, expected one of {}", quoted(TOP_LEVEL_KEYS))));
            }
        }
        if let Some(admin) = p.section(&mut root, "admin", &mut errors) {
            p.admin = admin;
        }
        if let Some(dead_letters) = p.section(&mut root, "dead_letters", &mut errors) {
            p.dead_letters = dead_letters;
        }
        if let Some(delivery) = p.section(&mut root, "delivery", &mut errors) {
            p.delivery = delivery;
        }
        for kind in [Kind::Source, Kind::Transform, Kind::Sink] {
            match root.remove(kind.section()) {
                None | Some(Value::Null) => {}
                Some(Value::Mapping(m)) => {
                    for (id, body) in m {
                        if let Some(c) = p.component(kind, id, body, &mut errors) {
                            p.components.push(c);
                        }
                    }
                }
                Some(_) => {
                    errors.push(p.diag(kind.section(), format!("`{}` must be a mapping of component ids to components", kind.section())))
                }
            }
        }
        match root.remove("tables") {
            None | Some(Value::Null) => {}
            Some(Value::Mapping(m)) => {
                for (name, body) in m {
                    if let Some(t) = p.table(name, body, &mut errors) {
                        p.tables.push(t);
                    }
                }
            }
            Some(_) => errors.push(p.diag("tables", "`tables` must be a mapping of table names to tables".into())),
        }
        if errors.is_empty() && !p.components.iter().any(|c| c.kind == Kind::Source) {
            errors.push(p.diag("sources", "a pipeline needs at least one source".into()));
        }
        if errors.is_empty() {
            Ok(p)
        } else {
            Err(Diagnostics(errors))
        }
    }

    fn component(&self, kind: Kind, id: Value, body: Value, errors: &mut Vec<Diagnostic>) -> Option<ComponentDecl> {
        let section = kind.section();
        let Some(id) = id.as_str().map(str::to_string) else {
            errors.push(self.diag(section, "component ids must be strings".into()));
            return None;
        };
        let at = format!("{section}.{id}");
        if !valid_id(&id) {
            errors.push(self.diag(
                &at,
                format!("invalid component id `{id}`: use lowercase letters, digits and `_`, starting with a letter or `_` (ids are SQL table names)"),
            ));
            return None;
        }
        if let Some(other) = self.components.iter().find(|c| c.id == id) {
            errors.push(self.diag(
                &at,
                format!("component id `{id}` is already used by the {} `{id}`; ids must be unique across sections", other.kind.label()),
            ));
            return None;
        }
        let Value::Mapping(mut body) = body else {
            errors.push(self.diag(
                &at,
                format!(
                    "the {} `{id}` must be a mapping (with `type:`{})",
                    kind.label(),
                    if kind == Kind::Source { "" } else { " and `inputs:`" }
                ),
            ));
            return None;
        };
        let type_name = match body.remove("type") {
            Some(Value::String(t)) => t,
            Some(_) => {
                errors.push(self.diag(&format!("{at}.type"), "invalid type: expected a string".into()));
                return None;
            }
            None if kind == Kind::Transform => "sql".to_string(),
            None => {
                errors.push(self.diag(&at, "missing field `type`".into()));
                return None;
            }
        };
        let inputs = match (kind, body.remove("inputs")) {
            (Kind::Source, Some(_)) => {
                errors.push(self.diag(&format!("{at}.inputs"), "sources do not take `inputs`".into()));
                return None;
            }
            (Kind::Source, None) => vec![],
            (_, None) => {
                errors.push(self.diag(&at, "missing field `inputs`".into()));
                return None;
            }
            (_, Some(v)) => match serde_yaml::from_value::<Vec<String>>(v) {
                Ok(list) if !list.is_empty() => list,
                Ok(_) => {
                    errors.push(self.diag(&format!("{at}.inputs"), "`inputs` must name at least one component".into()));
                    return None;
                }
                Err(_) => {
                    errors
                        .push(self.diag(&format!("{at}.inputs"), "invalid type: expected a list of component ids, e.g. `[probes]`".into()));
                    return None;
                }
            },
        };
        Some(ComponentDecl { id, kind, type_name, inputs, options: Value::Mapping(body) })
    }

    fn table(&self, name: Value, body: Value, errors: &mut Vec<Diagnostic>) -> Option<TableDecl> {
        let Some(name) = name.as_str().map(str::to_string) else {
            errors.push(self.diag("tables", "table names must be strings".into()));
            return None;
        };
        let at = format!("tables.{name}");
        if !valid_id(&name) {
            errors.push(self.diag(
                &at,
                format!("invalid table name `{name}`: use lowercase letters, digits and `_`, starting with a letter or `_` (it is an SQL table name)"),
            ));
            return None;
        }
        if let Some(c) = self.get(&name) {
            errors.push(self.diag(
                &at,
                format!("table name `{name}` is already the id of the {} `{name}`; SQL could not tell them apart", c.kind.label()),
            ));
            return None;
        }
        if !matches!(body, Value::Mapping(_)) {
            errors.push(self.diag(&at, format!("the table `{name}` must be a mapping with `type:` (`file` or `postgres`)")));
            return None;
        }
        Some(TableDecl { name, options: body })
    }

    /// The engine's own top-level section `key` (`admin:`, `dead_letters:`), decoded; a problem is
    /// reported at its path and the default stays.
    fn section<T: serde::de::DeserializeOwned>(&self, root: &mut Mapping, key: &str, errors: &mut Vec<Diagnostic>) -> Option<T> {
        match serde_path_to_error::deserialize::<_, T>(root.remove(key)?) {
            Ok(v) => Some(v),
            Err(e) => {
                let path = format!("{key}{}", suffix(&e.path().to_string()));
                errors.push(self.diag(&path, strip_location(&e.into_inner().to_string())));
                None
            }
        }
    }

    /// Interpolate every string in `value`; `path` locates errors.
    fn interpolate(&mut self, value: Value, path: &[PathSeg], env: &dyn Fn(&str) -> Option<String>, errors: &mut Vec<Diagnostic>) -> Value {
        match value {
            Value::String(s) if s.contains('$') => match interpolate::interpolate(&s, env, &mut self.secrets) {
                Ok(out) if interpolate::is_single_reference(&s) => match serde_yaml::from_str::<Value>(&out) {
                    Ok(v @ (Value::Bool(_) | Value::Number(_))) => v,
                    _ => Value::String(out),
                },
                Ok(out) => Value::String(out),
                Err(msg) => {
                    let d = self.diag(&path_to_string(path), msg);
                    errors.push(d);
                    Value::String(s)
                }
            },
            Value::Mapping(m) => Value::Mapping(
                m.into_iter()
                    .map(|(k, v)| {
                        let mut p = path.to_vec();
                        p.push(PathSeg::Key(k.as_str().unwrap_or("?").to_string()));
                        let v = self.interpolate(v, &p, env, errors);
                        (k, v)
                    })
                    .collect(),
            ),
            Value::Sequence(s) => Value::Sequence(
                s.into_iter()
                    .enumerate()
                    .map(|(i, v)| {
                        let mut p = path.to_vec();
                        p.push(PathSeg::Index(i));
                        self.interpolate(v, &p, env, errors)
                    })
                    .collect(),
            ),
            other => other,
        }
    }

    /// A diagnostic at a document path (`sources.probes.rate`).
    pub fn diag(&self, path: &str, message: String) -> Diagnostic {
        let pos = self.spans.find(path).unwrap_or(spans::Position { line: 1, col: 1 });
        Diagnostic {
            file: self.file.clone(),
            line: pos.line,
            col: pos.col,
            path: path.to_string(),
            message: interpolate::redact(&message, &self.secrets),
        }
    }

    /// A diagnostic for a plugin's config error inside component `c`.
    pub fn component_diag(&self, c: &ComponentDecl, err: &tributary_sdk::ConfigError) -> Diagnostic {
        let mut path = format!("{}.{}", c.kind.section(), c.id);
        let inner = path_to_string(&err.path);
        if !inner.is_empty() {
            path = if inner.starts_with('[') { format!("{path}{inner}") } else { format!("{path}.{inner}") };
        }
        self.diag(&path, err.message.clone())
    }

    pub fn get(&self, id: &str) -> Option<&ComponentDecl> {
        self.components.iter().find(|c| c.id == id)
    }
}

fn valid_id(id: &str) -> bool {
    let mut chars = id.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

pub fn quoted(keys: &[&str]) -> String {
    keys.iter().map(|k| format!("`{k}`")).collect::<Vec<_>>().join(", ")
}

fn suffix(p: &str) -> String {
    if p == "." || p.is_empty() {
        String::new()
    } else {
        format!(".{p}")
    }
}

fn strip_location(m: &str) -> String {
    m.split(" at line ").next().unwrap_or(m).to_string()
}

#[cfg(test)]
mod tests;
