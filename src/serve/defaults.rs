//! The view the chart page opens on when the URL names none: the time the table covers, a
//! measurement to show, a low-cardinality column to split it by, and a bin its rows fill.
//!
//! A newcomer who opened the page on "the average of the first numeric column over the last 6
//! hours" saw `status_code` in 181 bins, 2 of them holding data: the view must come from the data.

use chrono::{DateTime, Duration as ChronoDuration, DurationRound, Utc};
use datafusion::arrow::datatypes::{DataType, Schema};
pub use tributary_parquet::ChartDefaults;

use super::params::{render_bin, render_time, AUTO_BINS, NICE_BINS};

/// The widest range the page opens on: the newest 6 hours of a longer table.
pub const MAX_OPEN_RANGE: ChronoDuration = ChronoDuration::hours(6);
/// A string column with more values than this is no default grouping (one line per value).
pub const MAX_DEFAULT_GROUPS: u64 = 12;

/// Columns that make good groupings when they qualify, in order of preference.
const GROUP_NAMES: &[&str] = &["site", "channel", "region", "cluster", "session", "game", "service", "host", "name"];

/// What the table's rows are like, read once per `/api/tables`.
#[derive(Debug, Clone, PartialEq)]
pub struct TableShape {
    pub first: Option<DateTime<Utc>>,
    pub last: Option<DateTime<Utc>>,
    /// Distinct time values (approximate): how far apart the rows' times are.
    pub distinct_times: u64,
    /// String columns with no nulls: name and distinct values (approximate).
    pub strings: Vec<(String, u64)>,
}

/// The default view: `/api/series` parameters, as the page puts them in its form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DefaultView {
    pub value: Option<String>,
    pub group_by: Option<String>,
    pub from: Option<String>,
    pub to: Option<String>,
    /// `None`: the server's auto bin (about 240 over the range) fills it.
    pub bin: Option<String>,
}

/// The measurement to show: `chart.value`, else the first numeric `*_ms` column, else the first
/// float, else the first number that is not a status, code or id, else the first number.
pub fn value_column(schema: &Schema, chart: &ChartDefaults) -> Option<String> {
    if let Some(v) = &chart.value {
        return Some(v.clone());
    }
    let numeric: Vec<&str> = schema.fields().iter().filter(|f| f.data_type().is_numeric()).map(|f| f.name().as_str()).collect();
    let is_float = |n: &&&str| schema.field_with_name(n).is_ok_and(|f| f.data_type().is_floating());
    let is_label = |n: &&str| n.contains("status") || n.contains("code") || *n == "id" || n.ends_with("_id") || n.contains("port");
    numeric
        .iter()
        .find(|n| n.ends_with("_ms"))
        .or_else(|| numeric.iter().find(is_float))
        .or_else(|| numeric.iter().find(|n| !is_label(n)))
        .or_else(|| numeric.first())
        .map(|n| n.to_string())
}

/// The string columns a grouping may come from (the shape counts their values).
pub fn string_columns(schema: &Schema) -> Vec<String> {
    let is_string = |dt: &DataType| matches!(dt, DataType::Utf8 | DataType::Utf8View | DataType::LargeUtf8);
    schema.fields().iter().filter(|f| is_string(f.data_type())).map(|f| f.name().clone()).take(16).collect()
}

/// The grouping: `chart.group_by`, else a string column with 2 to [`MAX_DEFAULT_GROUPS`] values
/// and no nulls, a well-known name first (`site`, `channel`, …), else the one with fewest values.
pub fn group_column(shape: &TableShape, chart: &ChartDefaults) -> Option<String> {
    if let Some(g) = &chart.group_by {
        return Some(g.clone());
    }
    let fit: Vec<&(String, u64)> = shape.strings.iter().filter(|(_, n)| (2..=MAX_DEFAULT_GROUPS).contains(n)).collect();
    GROUP_NAMES
        .iter()
        .find_map(|known| fit.iter().find(|(name, _)| name == known))
        .or_else(|| fit.iter().min_by_key(|(_, n)| *n))
        .map(|(name, _)| name.clone())
}

/// The range and bin: the table's first to last time (its newest [`MAX_OPEN_RANGE`] when longer),
/// ending at `now` when the pipeline writes the table as the page shows it (`live`), and a bin no
/// finer than the rows' spacing, so the rows fill the bins rather than dot them.
pub fn time_view(shape: &TableShape, live: bool, now: DateTime<Utc>) -> (Option<String>, Option<String>, Option<String>) {
    let (Some(first), Some(last)) = (shape.first, shape.last) else {
        return (None, None, None);
    };
    let utc = chrono::FixedOffset::east_opt(0).expect("UTC");
    let end = if live { now.max(last) } else { last };
    let from = first.max(end - MAX_OPEN_RANGE);
    let from = from.duration_trunc(ChronoDuration::seconds(1)).unwrap_or(from);
    // Past the last row's second, so its bin is in the range (`to` is exclusive).
    let to = last.duration_trunc(ChronoDuration::seconds(1)).unwrap_or(last) + ChronoDuration::seconds(1);
    let span = (end - from).to_std().unwrap_or_default();
    let spacing = match shape.distinct_times {
        0 | 1 => std::time::Duration::ZERO,
        n => (last - first).to_std().unwrap_or_default() / (n - 1).min(u32::MAX as u64) as u32,
    };
    // The auto bin over this range is finer than the rows are apart: name a bin they fill.
    let auto = span / AUTO_BINS as u32;
    let bin = (spacing > auto)
        .then(|| NICE_BINS.iter().map(|s| std::time::Duration::from_secs(*s)).find(|b| *b >= spacing))
        .flatten()
        .map(render_bin);
    let to = if live { "now".to_string() } else { render_time(to, utc) };
    (Some(render_time(from, utc)), Some(to), bin)
}

/// The whole default view of a table.
pub fn default_view(schema: &Schema, shape: &TableShape, chart: &ChartDefaults, live: bool, now: DateTime<Utc>) -> DefaultView {
    let (from, to, bin) = time_view(shape, live, now);
    DefaultView { value: value_column(schema, chart), group_by: group_column(shape, chart), from, to, bin }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::datatypes::Field;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn schema(cols: &[(&str, DataType)]) -> Schema {
        Schema::new(cols.iter().map(|(n, dt)| Field::new(*n, dt.clone(), true)).collect::<Vec<_>>())
    }

    #[test]
    fn the_value_is_a_measurement_not_a_status_code() {
        let probes = schema(&[
            ("ts", DataType::Timestamp(datafusion::arrow::datatypes::TimeUnit::Microsecond, None)),
            ("name", DataType::Utf8),
            ("status_code", DataType::Int64),
            ("response_time_ms", DataType::Int64),
            ("dns_ms", DataType::Float64),
        ]);
        let none = ChartDefaults::default();
        assert_eq!(value_column(&probes, &none).as_deref(), Some("response_time_ms"));
        let floats = schema(&[("status_code", DataType::Int64), ("port", DataType::Int64), ("load", DataType::Float64)]);
        assert_eq!(value_column(&floats, &none).as_deref(), Some("load"));
        let ints = schema(&[("status_code", DataType::Int64), ("user_id", DataType::Int64), ("score", DataType::Int64)]);
        assert_eq!(value_column(&ints, &none).as_deref(), Some("score"));
        let only_codes = schema(&[("name", DataType::Utf8), ("status_code", DataType::Int64)]);
        assert_eq!(value_column(&only_codes, &none).as_deref(), Some("status_code"));
        let named = ChartDefaults { value: Some("dns_ms".into()), group_by: None };
        assert_eq!(value_column(&probes, &named).as_deref(), Some("dns_ms"));
    }

    #[test]
    fn the_grouping_is_a_low_cardinality_column_a_known_name_first() {
        let shape = |strings: &[(&str, u64)]| TableShape {
            first: None,
            last: None,
            distinct_times: 0,
            strings: strings.iter().map(|(n, k)| (n.to_string(), *k)).collect(),
        };
        let none = ChartDefaults::default();
        assert_eq!(group_column(&shape(&[("name", 5), ("site", 5), ("endpoint", 3)]), &none).as_deref(), Some("site"));
        assert_eq!(group_column(&shape(&[("url", 40), ("kind", 4), ("endpoint", 3)]), &none).as_deref(), Some("endpoint"));
        // One value splits nothing; 40 lines are no chart.
        assert_eq!(group_column(&shape(&[("tenant", 1), ("url", 40)]), &none), None);
        let named = ChartDefaults { value: None, group_by: Some("url".into()) };
        assert_eq!(group_column(&shape(&[("site", 5)]), &named).as_deref(), Some("url"));
    }

    #[test]
    fn the_range_is_what_the_table_covers_with_bins_its_rows_fill() {
        let now = t("2026-12-07T12:00:00Z");
        // 80 s of rows, 20 a second: the range is those 80 s, the auto bin fills.
        let dense = TableShape {
            first: Some(t("2026-12-07T11:58:40.250Z")),
            last: Some(t("2026-12-07T11:59:59.900Z")),
            distinct_times: 1600,
            strings: vec![],
        };
        assert_eq!(time_view(&dense, false, now), (Some("2026-12-07T11:58:40Z".into()), Some("2026-12-07T12:00:00Z".into()), None));
        // While the pipeline runs, the range ends now and follows it.
        assert_eq!(time_view(&dense, true, now), (Some("2026-12-07T11:58:40Z".into()), Some("now".into()), None));
        // One row a minute (a window's output): a 1m bin, not 1 s bins with a dot in every 60th.
        let per_minute = TableShape {
            first: Some(t("2026-12-07T11:50:00Z")),
            last: Some(t("2026-12-07T11:58:00Z")),
            distinct_times: 9,
            strings: vec![],
        };
        assert_eq!(
            time_view(&per_minute, false, now),
            (Some("2026-12-07T11:50:00Z".into()), Some("2026-12-07T11:58:01Z".into()), Some("1m".into()))
        );
        // Two days of rows: the newest 6 hours.
        let long = TableShape {
            first: Some(t("2026-12-05T12:00:00Z")),
            last: Some(t("2026-12-07T11:00:00Z")),
            distinct_times: 200_000,
            strings: vec![],
        };
        assert_eq!(time_view(&long, false, now).0.as_deref(), Some("2026-12-07T05:00:00Z"));
        assert_eq!(time_view(&long, true, now).0.as_deref(), Some("2026-12-07T06:00:00Z"));
        let empty = TableShape { first: None, last: None, distinct_times: 0, strings: vec![] };
        assert_eq!(time_view(&empty, true, now), (None, None, None));
    }
}
