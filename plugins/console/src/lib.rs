//! `console` sink: rows on standard output, as a table, JSON lines, or a periodic summary.

use std::io::Write;
use std::time::Duration;

use datafusion::arrow::record_batch::RecordBatch;
use datafusion::arrow::util::pretty::pretty_format_batches;
use serde::Deserialize;
use tributary_sdk::arrow::datatypes::SchemaRef;
use tributary_sdk::{ComponentConfig, ConfigError, DeadLetter, Period, Sink, SinkContext, SinkPlugin, Transient, Written};

/// How rows are printed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConsoleFormat {
    /// Each batch as a table (at most `max_rows` rows of it).
    #[default]
    Table,
    /// Every row as a JSON object on its own line.
    Json,
    /// A line per `interval`: rows received since the last line and in total.
    Summary,
}

/// Config of a `console` sink.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsoleSinkConfig {
    #[serde(default)]
    pub format: ConsoleFormat,
    /// Rows shown per batch in `table` format (default 20).
    #[serde(default = "default_max_rows")]
    pub max_rows: usize,
    /// Summary period in `summary` format (default 10s).
    #[serde(default = "default_interval")]
    pub interval: Period,
}

fn default_max_rows() -> usize {
    20
}
fn default_interval() -> Period {
    Period(Duration::from_secs(10))
}

pub struct ConsoleSinkPlugin;

impl SinkPlugin for ConsoleSinkPlugin {
    fn type_name(&self) -> &'static str {
        "console"
    }
    fn delivery(&self) -> &'static [tributary_sdk::delivery::SinkDelivery] {
        use tributary_sdk::delivery::SinkDelivery;
        &[SinkDelivery { variant: "", durable_when: "written to stdout", duplicates: "none" }]
    }
    fn build(&self, config: &ComponentConfig, _inputs: &[(String, SchemaRef)]) -> Result<Box<dyn Sink>, ConfigError> {
        let cfg: ConsoleSinkConfig = config.decode()?;
        Ok(Box::new(ConsoleSink { id: config.id.clone(), cfg, since_last: 0, total: 0, out: Box::new(std::io::stdout()) }))
    }
}

pub struct ConsoleSink {
    id: String,
    cfg: ConsoleSinkConfig,
    since_last: u64,
    total: u64,
    out: Box<dyn Write + Send>,
}

impl ConsoleSink {
    /// Render a batch as the configured format would (without the summary's counters).
    pub fn render(id: &str, cfg: &ConsoleSinkConfig, batch: &RecordBatch) -> anyhow::Result<String> {
        Ok(match cfg.format {
            ConsoleFormat::Table => {
                let shown = batch.num_rows().min(cfg.max_rows);
                let table = pretty_format_batches(&[batch.slice(0, shown)])?;
                let more = batch.num_rows() - shown;
                let tail = if more > 0 { format!("… {more} more rows\n") } else { String::new() };
                format!("[{id}] {} rows\n{table}\n{tail}", batch.num_rows())
            }
            ConsoleFormat::Json => tributary_sdk::dead_letter::rows_as_json(batch).into_iter().map(|l| l + "\n").collect(),
            ConsoleFormat::Summary => String::new(),
        })
    }
}

#[async_trait::async_trait]
impl Sink for ConsoleSink {
    async fn write(&mut self, batch: RecordBatch, _ctx: &SinkContext) -> Result<Written, Transient> {
        self.since_last += batch.num_rows() as u64;
        self.total += batch.num_rows() as u64;
        let text = Self::render(&self.id, &self.cfg, &batch)?;
        if !text.is_empty() {
            self.out.write_all(text.as_bytes())?;
        }
        Ok(Written::durable())
    }

    async fn flush(&mut self, _ctx: &SinkContext) -> Result<Vec<DeadLetter>, Transient> {
        if self.cfg.format == ConsoleFormat::Summary && (self.since_last > 0 || self.total == 0) {
            writeln!(self.out, "[{}] +{} rows ({} total)", self.id, self.since_last, self.total)?;
            self.since_last = 0;
        }
        self.out.flush()?;
        Ok(Vec::new())
    }

    fn flush_interval(&self) -> Option<Duration> {
        (self.cfg.format == ConsoleFormat::Summary).then_some(self.cfg.interval.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Int64Array, StringArray};
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    use std::sync::Arc;

    fn batch() -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![Field::new("site", DataType::Utf8, false), Field::new("ms", DataType::Int64, true)]));
        RecordBatch::try_new(
            schema,
            vec![Arc::new(StringArray::from(vec!["a", "b", "c"])), Arc::new(Int64Array::from(vec![Some(5), None, Some(7)]))],
        )
        .unwrap()
    }

    #[test]
    fn table_format_limits_rows_and_says_how_many_are_hidden() {
        let cfg: ConsoleSinkConfig = serde_yaml::from_str("{max_rows: 2}").unwrap();
        let text = ConsoleSink::render("slow", &cfg, &batch()).unwrap();
        assert_eq!(
            text,
            "[slow] 3 rows\n+------+----+\n| site | ms |\n+------+----+\n| a    | 5  |\n| b    |    |\n+------+----+\n… 1 more rows\n"
        );
    }

    #[test]
    fn json_format_prints_one_object_per_row() {
        let cfg: ConsoleSinkConfig = serde_yaml::from_str("{format: json}").unwrap();
        let text = ConsoleSink::render("x", &cfg, &batch()).unwrap();
        assert_eq!(text, "{\"site\":\"a\",\"ms\":5}\n{\"site\":\"b\"}\n{\"site\":\"c\",\"ms\":7}\n");
    }
}
