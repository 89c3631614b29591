//! File tables: CSV (with a header row), JSON lines and Parquet, read whole by DataFusion's own
//! readers, and read again when the file's size or modification time changes.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::prelude::{CsvReadOptions, DataFrame, JsonReadOptions, ParquetReadOptions, SessionContext};
use serde::Deserialize;
use tributary_sdk::{ConfigError, DeclaredSchema};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FileFormat {
    Csv,
    Jsonl,
    Parquet,
}

impl FileFormat {
    fn of(path: &Path) -> Option<FileFormat> {
        match path.extension()?.to_str()? {
            "csv" => Some(FileFormat::Csv),
            "jsonl" | "ndjson" | "json" => Some(FileFormat::Jsonl),
            "parquet" => Some(FileFormat::Parquet),
            _ => None,
        }
    }
}

/// What a file looked like when it was last read: a change of any part means "read it again".
/// The size and modification time alone missed a file of the same size renamed over the old one
/// within one tick of the kernel's file clock (a few milliseconds): the inode tells them apart.
type Stamp = (u64, Option<SystemTime>, u64);

async fn stamp(path: &Path) -> Option<Stamp> {
    use std::os::unix::fs::MetadataExt;
    let meta = tokio::fs::metadata(path).await.ok()?;
    Some((meta.len(), meta.modified().ok(), meta.ino()))
}

pub(super) struct FileTable {
    path: PathBuf,
    format: FileFormat,
    /// The table's columns.
    schema: SchemaRef,
    /// How the file is read: `schema`, or the types its values have (nothing declared).
    read_schema: SchemaRef,
    /// A CSV file with declared columns: they are found in its header by name at every load.
    match_header: bool,
    loaded: Mutex<Option<Stamp>>,
}

impl FileTable {
    /// Check `path` and find the schema: `declared`, or read from the file.
    pub async fn plan(path: PathBuf, format: Option<FileFormat>, declared: Option<&DeclaredSchema>) -> Result<FileTable, ConfigError> {
        let format = match format.or_else(|| FileFormat::of(&path)) {
            Some(f) => f,
            None => {
                return Err(ConfigError::at(
                    "format",
                    format!("cannot tell the format of `{}` from its name: set `format: csv`, `jsonl` or `parquet`", path.display()),
                ))
            }
        };
        let path = std::path::absolute(&path).map_err(|e| ConfigError::at("path", format!("`{}`: {e}", path.display())))?;
        if !path.is_file() {
            return Err(ConfigError::at("path", format!("`{}` is not a file", path.display())));
        }
        let mut table = FileTable {
            path,
            format,
            schema: Arc::new(Schema::empty()),
            read_schema: Arc::new(Schema::empty()),
            match_header: false,
            loaded: Mutex::new(None),
        };
        table.check_json().await.map_err(|e| ConfigError::at("path", e))?;
        let found = table.read(None).await.map_err(|e| ConfigError::at("path", format!("cannot read `{}`: {e}", table.path.display())))?;
        let found = super::table_schema(found.schema().as_arrow());
        let Some(declared) = declared else {
            (table.schema, table.read_schema) = (found.clone(), found);
            return Ok(table);
        };
        table.schema = declared.arrow_schema();
        table.read_schema = table.schema.clone();
        if format == FileFormat::Csv {
            table.csv_layout(&found).map_err(|e| ConfigError::at("schema", e))?;
            table.match_header = true;
        }
        Ok(table)
    }

    pub fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    /// CSV columns are read by position: the file's header (`found`) with the declared types of
    /// the declared columns (text for the rest), and where each declared column is in it.
    fn csv_layout(&self, found: &Schema) -> Result<(SchemaRef, Vec<usize>), String> {
        let declared_type = |name: &str| self.schema.field_with_name(name).ok().map(|f| f.data_type().clone());
        let header: Vec<Field> =
            found.fields().iter().map(|f| Field::new(f.name(), declared_type(f.name()).unwrap_or(DataType::Utf8), true)).collect();
        let columns = self
            .schema
            .fields()
            .iter()
            .map(|f| {
                found.index_of(f.name()).map_err(|_| {
                    let names: Vec<String> = found.fields().iter().map(|f| format!("`{}`", f.name())).collect();
                    format!("`{}` is not a column of `{}` (its header: {})", f.name(), self.path.display(), names.join(", "))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok((Arc::new(Schema::new(header)), columns))
    }

    /// The file as a DataFusion frame, read with `schema` (so a value that no longer fits its
    /// column is an error, not a silent change of type), or with the types the values have.
    async fn read(&self, schema: Option<&SchemaRef>) -> datafusion::error::Result<DataFrame> {
        let ctx = SessionContext::new();
        let path = self.path.to_string_lossy();
        let schema = schema.map(|s| s.as_ref());
        match self.format {
            FileFormat::Csv => {
                let mut options = CsvReadOptions::new().has_header(true).file_extension("");
                options.schema = schema;
                ctx.read_csv(path.as_ref(), options).await
            }
            FileFormat::Jsonl => {
                let mut options = JsonReadOptions::default().file_extension("");
                options.schema = schema;
                ctx.read_json(path.as_ref(), options).await
            }
            FileFormat::Parquet => {
                let mut options = ParquetReadOptions::default().file_extension("");
                options.schema = schema;
                ctx.read_parquet(path.as_ref(), options).await
            }
        }
    }

    /// A JSON-lines file must not be nested deeper than the limit every JSON input has: the
    /// readers behind DataFusion recurse on nesting (30,000 levels would overflow the stack).
    async fn check_json(&self) -> Result<(), String> {
        if self.format != FileFormat::Jsonl {
            return Ok(());
        }
        let text = tokio::fs::read(&self.path).await.map_err(|e| format!("cannot read `{}`: {e}", self.path.display()))?;
        tributary_sdk::json::shape::check(&text)
            .map_err(|e| format!("`{}` line {}: {}", self.path.display(), tributary_sdk::json::shape::line_of(&text, e.offset), e.reason))
    }

    /// Every row of the file now.
    pub async fn load(&self) -> anyhow::Result<Vec<RecordBatch>> {
        let before = stamp(&self.path).await;
        self.check_json().await.map_err(|e| anyhow::anyhow!(e))?;
        let reading = |e| anyhow::anyhow!("reading `{}`: {e}", self.path.display());
        // A CSV file's header may have changed its order since: match the columns again.
        let layout = match self.match_header {
            false => None,
            true => Some(self.csv_layout(self.read(None).await.map_err(reading)?.schema().as_arrow()).map_err(|e| anyhow::anyhow!(e))?),
        };
        let read_schema = layout.as_ref().map_or(&self.read_schema, |(schema, _)| schema);
        let rows = self.read(Some(read_schema)).await.map_err(reading)?.collect().await.map_err(reading)?;
        let rows = match &layout {
            None => rows,
            Some((_, columns)) => rows.iter().map(|b| b.project(columns)).collect::<Result<_, _>>()?,
        };
        *self.loaded.lock().unwrap_or_else(|e| e.into_inner()) = before;
        Ok(rows)
    }

    /// The file changed since it was last read, and has not changed for a moment (a writer
    /// that is not done yet is waited for).
    pub async fn changed(&self) -> bool {
        let now = stamp(&self.path).await;
        if now.is_none() || now == *self.loaded.lock().unwrap_or_else(|e| e.into_inner()) {
            return false;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        stamp(&self.path).await == now
    }
}
