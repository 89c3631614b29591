//! A dataset as data: the arrays walked from a collection's items down to one row, and each
//! column with its type and where its value is read. One [`Table`] yields both the output's schema
//! and its rows, so a column is named once.

use serde_json::Value;
use tributary_sdk::config::{DeclaredSchema, FieldType};

use super::{Collection, Ctx, Parsed};
use crate::time::{id_key, json_time};

/// One output: the walk to its rows and its columns, in schema order.
pub struct Table {
    pub output: &'static str,
    /// Outermost first; the first step is the collection's items. One row per element of the last.
    pub walk: &'static [Step],
    pub columns: &'static [Column],
}

/// One level of the walk: its elements, the name columns read them by, and what an element must
/// have to give rows.
pub struct Step {
    pub level: &'static str,
    pub elements: Elements,
    pub needs: Option<Need>,
}

/// Where a level's elements are, relative to the element of the level above.
pub enum Elements {
    /// The collection's items (normalisation rules 1–3).
    Items,
    /// The array at this path.
    At(&'static [&'static str]),
    /// The array at the first of these paths that is present (rule 5: `result` in the spec,
    /// `results` in the legacy shape).
    FirstOf(&'static [&'static [&'static str]]),
    /// The arrays under each of these keys in turn; [`Read::Key`] reads which.
    EachKey(&'static [&'static str]),
}

/// A value an element cannot give rows without: one that lacks it is skipped and counted.
pub struct Need {
    /// The element, as the skip message names it ("a bucket").
    pub what: &'static str,
    pub fields: &'static [&'static str],
    pub conv: Conv,
}

pub struct Column {
    pub name: &'static str,
    pub ty: FieldType,
    pub from: Read,
}

/// Where a column's value is read.
pub enum Read {
    /// When the poll ran.
    PollTime,
    /// The collection's org (rule 2), else the org polled.
    Org,
    /// A field the collection carries (`from`, `to`, `aggregationInterval`).
    Carried(&'static str, Conv),
    /// The value at a path in a level's element.
    Field(&'static str, &'static [&'static str], Conv),
    /// Rule 4: a level's host under any of its three spellings.
    Host(&'static str),
    /// The key an [`Elements::EachKey`] step took.
    Key,
    /// Rule 6: a level's `triggerType`, else the query's when it names one (the spec's media
    /// health rows carry none).
    Trigger(&'static str),
}

/// How a JSON value becomes a column value. Anything that does not fit is a null, not a lost row.
#[derive(Clone, Copy)]
pub enum Conv {
    /// A string as is; any other value as its JSON text.
    Text,
    /// A Base64 ID without its `=` padding, so spellings join.
    Id,
    /// A timestamp, normalised to RFC 3339 UTC.
    Time,
    /// Counts are `number` in the spec: read as f64, stored as integers.
    Count,
    Float,
    /// `true`/`false`, or their text in any case.
    Bool,
    /// A list of texts joined by commas (`scheduleDays`).
    Commas,
    /// Every entry of a list of texts, one per line (the sample client kept only the first);
    /// an empty list is a null.
    Lines,
}

pub const fn step(level: &'static str, elements: Elements) -> Step {
    Step { level, elements, needs: None }
}

impl Step {
    pub const fn needs(self, what: &'static str, fields: &'static [&'static str], conv: Conv) -> Step {
        Step { needs: Some(Need { what, fields, conv }), ..self }
    }
}

pub const fn col(name: &'static str, ty: FieldType, from: Read) -> Column {
    Column { name, ty, from }
}

impl Table {
    pub fn declared(&self) -> DeclaredSchema {
        DeclaredSchema(self.columns.iter().map(|c| (c.name.to_string(), c.ty)).collect())
    }

    /// Appends the rows of one collection to `out`.
    pub(super) fn read(&self, coll: &Collection, ctx: &Ctx, out: &mut Parsed) {
        let env = Env { ctx, coll, org: coll.org(ctx) };
        self.walk_from(0, &mut Vec::new(), &env, out);
    }

    fn walk_from<'a>(&self, depth: usize, levels: &mut Vec<Level<'a>>, env: &Env<'a>, out: &mut Parsed) {
        let Some(step) = self.walk.get(depth) else {
            out.rows.push(self.columns.iter().map(|c| (c.name.to_string(), c.from.read(levels, env))).collect());
            return;
        };
        let parent = levels.last().map_or(&Value::Null, |l| l.element);
        let lists: Vec<(Option<&'static str>, &'a [Value])> = match step.elements {
            Elements::Items => vec![(None, env.coll.items.as_slice())],
            Elements::At(path) => vec![(None, array(at(parent, path)))],
            Elements::FirstOf(paths) => {
                vec![(None, paths.iter().map(|p| at(parent, p)).find(|v| !v.is_null()).map_or(&[][..], array))]
            }
            Elements::EachKey(keys) => keys.iter().map(|k| (Some(*k), array(&parent[*k]))).collect(),
        };
        for (key, elements) in lists {
            for element in elements {
                if let Some(problem) = step.needs.as_ref().and_then(|n| n.missing(element)) {
                    out.skip(problem);
                    continue;
                }
                levels.push(Level { name: step.level, element, key });
                self.walk_from(depth + 1, levels, env, out);
                levels.pop();
            }
        }
    }
}

impl Need {
    fn missing(&self, element: &Value) -> Option<String> {
        let field = self.fields.iter().find(|f| self.conv.apply(&element[**f]).is_null())?;
        Some(format!("{} without a valid `{field}`: {}", self.what, element[*field]))
    }
}

/// What every row of one collection shares.
struct Env<'a> {
    ctx: &'a Ctx<'a>,
    coll: &'a Collection,
    org: Value,
}

/// An element being walked.
struct Level<'a> {
    name: &'static str,
    element: &'a Value,
    key: Option<&'static str>,
}

impl Read {
    fn read(&self, levels: &[Level], env: &Env) -> Value {
        // A level the walk does not have reads as null; `every_column_reads_a_level_of_its_walk` keeps the tables from naming one.
        let level = |name: &str| levels.iter().rev().find(|l| l.name == name).map_or(&Value::Null, |l| l.element);
        match self {
            Read::PollTime => Value::String(env.ctx.poll_ts.to_string()),
            Read::Org => env.org.clone(),
            Read::Carried(field, conv) => conv.apply(env.coll.carried(field)),
            Read::Field(name, path, conv) => conv.apply(at(level(name), path)),
            Read::Host(name) => {
                let element = level(name);
                Conv::Text.apply(
                    ["hostNameOrIP", "hostNameOrIp", "hostName"]
                        .iter()
                        .map(|k| &element[*k])
                        .find(|v| !v.is_null())
                        .unwrap_or(&Value::Null),
                )
            }
            Read::Key => levels.iter().rev().find_map(|l| l.key).map_or(Value::Null, |k| Value::String(k.to_string())),
            Read::Trigger(name) => match (&level(name)["triggerType"], env.ctx.trigger_query) {
                (Value::String(t), _) => Value::String(t.clone()),
                (_, "All") => Value::Null,
                (_, query) => Value::String(query.to_string()),
            },
        }
    }

    /// The level a column reads, if it reads one.
    pub fn level(&self) -> Option<&'static str> {
        match self {
            Read::Field(name, ..) | Read::Host(name) | Read::Trigger(name) => Some(name),
            _ => None,
        }
    }
}

impl Conv {
    pub fn apply(self, v: &Value) -> Value {
        match self {
            Conv::Text => match v {
                Value::String(_) | Value::Null => v.clone(),
                other => Value::String(other.to_string()),
            },
            Conv::Id => v.as_str().map_or(Value::Null, |s| Value::String(id_key(s))),
            Conv::Time => json_time(v).map_or(Value::Null, Value::String),
            Conv::Count => v.as_f64().map_or(Value::Null, |f| Value::from(f.round() as i64)),
            Conv::Float => v.as_f64().map_or(Value::Null, Value::from),
            Conv::Bool => match v {
                Value::Bool(b) => Value::Bool(*b),
                Value::String(s) => Value::Bool(s.eq_ignore_ascii_case("true")),
                _ => Value::Null,
            },
            Conv::Commas => {
                v.as_array().map_or(Value::Null, |a| Value::String(a.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(",")))
            }
            Conv::Lines => match v {
                Value::Array(a) if a.is_empty() => Value::Null,
                Value::Array(a) => {
                    Value::String(a.iter().map(|x| x.as_str().map_or_else(|| x.to_string(), str::to_string)).collect::<Vec<_>>().join("\n"))
                }
                other => Conv::Text.apply(other),
            },
        }
    }
}

fn at<'a>(v: &'a Value, path: &[&str]) -> &'a Value {
    path.iter().fold(v, |v, k| &v[*k])
}

fn array(v: &Value) -> &[Value] {
    v.as_array().map_or(&[], Vec::as_slice)
}
