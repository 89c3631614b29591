//! Charts without Grafana: `/api/tables`, `/api/series` (a value binned over time, per group) and a
//! chart page at `/`, over the Parquet outputs. `tributary serve` serves a data folder; a running
//! pipeline's admin server serves its own `parquet` sinks.
//!
//! Stateless: every request opens its table afresh (new files show up at once), so several
//! servers over one folder behave as one behind any load balancer. Only Parquet footers are cached,
//! per process, keyed by file path, size and modification time.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use datafusion::datasource::listing::{ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl};
use datafusion::datasource::MemTable;
use datafusion::execution::runtime_env::{RuntimeEnv, RuntimeEnvBuilder};
use datafusion::prelude::{DataFrame, SessionConfig, SessionContext};
use object_store::path::Path as ObjectPath;
use tokio_util::sync::CancellationToken;
use tributary_parquet::store::ObjectLocation;

mod defaults;
pub mod params;
pub mod series;
mod tables;

pub use defaults::ChartDefaults;
use params::ParamError;

/// One table of the lake: a folder or object store prefix of Parquet files (or JSON lines).
#[derive(Debug, Clone)]
pub struct TableDecl {
    pub name: String,
    pub location: ObjectLocation,
    /// The pipeline's `time_column` for its sinks; found from the schema otherwise.
    pub time_column: Option<String>,
    /// The sink's `chart:`: the view the page opens on, where the guess would be wrong.
    pub chart: ChartDefaults,
}

/// Where the tables come from.
#[derive(Debug, Clone)]
pub enum Tables {
    /// Every folder (or object store prefix) under this one, looked up per request.
    Under(ObjectLocation),
    /// A pipeline's `parquet` sinks, named after them.
    Outputs(Vec<TableDecl>),
}

/// What one answer may cost.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Bins × series one `/api/series` answer holds at most.
    pub max_points: u64,
    /// A query running longer is stopped and answered 503.
    pub query_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_points: 20_000, query_timeout: Duration::from_secs(10) }
    }
}

/// The lake the chart routes read.
#[derive(Clone)]
pub struct Lake {
    tables: Tables,
    limits: Limits,
    runtime: Arc<RuntimeEnv>,
    /// Offer auto-refresh by default (a running pipeline's outputs change).
    live: bool,
}

impl Lake {
    pub fn new(tables: Tables, limits: Limits, live: bool) -> anyhow::Result<Self> {
        // DataFusion caches folder listings forever by default, which would hide every file a sink
        // writes after the first request: list afresh (footers stay cached, checked by size and mtime).
        let runtime = RuntimeEnvBuilder::new().with_object_list_cache_limit(0).build_arc()?;
        Ok(Lake { tables, limits, runtime, live })
    }

    /// The tables, looked up afresh (object_store lists local folders on the blocking pool: on a
    /// pipeline's admin address they would otherwise hold up the pipeline's own tasks).
    async fn decls(&self) -> Vec<TableDecl> {
        match &self.tables {
            Tables::Under(root) => {
                let found = crate::query::discover_tables(root, &[]).await.unwrap_or_default();
                found
                    .into_iter()
                    .map(|t| TableDecl { name: t.name, location: t.location, time_column: None, chart: ChartDefaults::default() })
                    .collect()
            }
            Tables::Outputs(decls) => decls.clone(),
        }
    }

    async fn find(&self, name: &str) -> Result<TableDecl, ParamError> {
        // One listing of the folder names, not every table's layout: a request reads one table.
        if let Tables::Under(root) = &self.tables {
            let folders = crate::query::table_folders(root).await.unwrap_or_default();
            if let Some(t) = folders.into_iter().find(|t| t.name == name) {
                return Ok(TableDecl { name: t.name, location: t.location, time_column: None, chart: ChartDefaults::default() });
            }
        }
        let decls = self.decls().await;
        decls.iter().find(|d| d.name == name).cloned().ok_or_else(|| {
            let names: Vec<&str> = decls.iter().map(|d| d.name.as_str()).collect();
            ParamError::new("table", format!("no table `{name}` (tables: {})", names.join(", ")))
        })
    }

    /// A session holding this one table only (so `where` cannot reach another), on all cores.
    /// With a `range`, a table in `date=` folders is only the folders of the range's UTC dates
    /// (and has no `date` column): the rest is neither listed nor read.
    async fn open(&self, decl: &TableDecl, range: Option<Range>) -> anyhow::Result<Option<DataFrame>> {
        // A sink's folder that does not exist yet holds no files either.
        let layout = crate::query::layout(&decl.location).await?;
        if !layout.has_files {
            return Ok(None);
        }
        let mut config = SessionConfig::new().with_information_schema(false);
        // Row filters inside the Parquet reader: a `where key IN (…)` skips decoding the other rows.
        config.options_mut().execution.parquet.pushdown_filters = true;
        let ctx = SessionContext::new_with_config_rt(config, self.runtime.clone());
        match range {
            Some(range) if !layout.dates.is_empty() && !layout.json_lines => register_dates(&ctx, &decl.name, &layout, range).await?,
            _ => crate::query::register_layout(&ctx, &decl.name, &layout).await?,
        }
        Ok(Some(ctx.table(decl.name.as_str()).await?))
    }
}

/// `[from, to)`.
type Range = (chrono::DateTime<chrono::Utc>, chrono::DateTime<chrono::Utc>);

/// Register the table as the `date=` folders holding `range` (UTC dates of `from` and of the
/// last instant before `to`), one listing per folder.
async fn register_dates(ctx: &SessionContext, name: &str, layout: &crate::query::TableLayout, (from, to): Range) -> anyhow::Result<()> {
    let first = from.format("date=%Y-%m-%d").to_string();
    let last = (to - chrono::Duration::nanoseconds(1)).format("date=%Y-%m-%d").to_string();
    let folders: Vec<&ObjectPath> =
        layout.dates.iter().filter(|d| d.filename().is_some_and(|f| *f >= *first && *f <= *last && f != "date=unknown")).collect();
    let schema =
        crate::query::file_schema(ctx, name, layout).await?.ok_or_else(|| anyhow::anyhow!("table `{name}` has no Parquet file"))?;
    layout.location.register_in(ctx);
    if folders.is_empty() {
        ctx.register_table(name, Arc::new(MemTable::try_new(schema, vec![vec![]])?))?;
        return Ok(());
    }
    let urls = folders
        .into_iter()
        .map(|d| ListingTableUrl::parse(ObjectLocation { prefix: d.clone(), ..layout.location.clone() }.url()))
        .collect::<datafusion::error::Result<Vec<_>>>()?;
    let options = ListingOptions::new(Arc::new(crate::query::parquet_format(ctx))).with_file_extension(".parquet");
    let config = ListingTableConfig::new_with_multi_paths(urls).with_listing_options(options).with_schema(schema);
    ctx.register_table(name, Arc::new(ListingTable::try_new(config)?))?;
    Ok(())
}

/// The chart routes, to merge into a router.
pub fn router(lake: Lake) -> Router {
    Router::new()
        .route("/", get(page))
        .route("/assets/app.js", get(|| asset("text/javascript", include_str!("page/app.js"))))
        .route("/assets/uPlot.iife.min.js", get(|| asset("text/javascript", include_str!("page/uPlot.iife.min.js"))))
        .route("/assets/uPlot.min.css", get(|| asset("text/css", include_str!("page/uPlot.min.css"))))
        .route("/assets/uPlot.LICENSE", get(|| asset("text/plain", include_str!("page/uPlot.LICENSE"))))
        .route("/api/tables", get(list_tables))
        .route("/api/series", get(get_series))
        .with_state(Arc::new(lake))
}

async fn asset(content_type: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type), (header::CACHE_CONTROL, "public, max-age=3600")], body).into_response()
}

async fn page(State(lake): State<Arc<Lake>>) -> Response {
    let html = include_str!("page/index.html").replace("__LIVE__", if lake.live { "true" } else { "false" });
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], html).into_response()
}

fn errors(status: StatusCode, errors: Vec<ParamError>) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], serde_json::json!({ "errors": errors }).to_string()).into_response()
}

async fn list_tables(State(lake): State<Arc<Lake>>) -> Response {
    let work = tables::describe_all(&lake);
    match tokio::time::timeout(lake.limits.query_timeout, work).await {
        Ok(Ok(body)) => ([(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response(),
        Ok(Err(e)) => errors(StatusCode::INTERNAL_SERVER_ERROR, vec![ParamError::new("table", format!("{e:#}"))]),
        Err(_) => errors(StatusCode::SERVICE_UNAVAILABLE, vec![timeout_error(&lake)]),
    }
}

fn timeout_error(lake: &Lake) -> ParamError {
    ParamError::new("query", format!("stopped after {:?} (the server's query timeout)", lake.limits.query_timeout))
}

async fn get_series(State(lake): State<Arc<Lake>>, Query(pairs): Query<Vec<(String, String)>>, headers: HeaderMap) -> Response {
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    // The columns the request names, read once: the table to look up, and its checks when the
    // other parameters fail.
    let refs = series::ColumnRefs::from_pairs(&pairs);
    let parsed = params::parse(&pairs, chrono::Utc::now(), accept);
    // The table's own checks join the parameter errors, so one answer names every problem.
    let (mut problems, params) = match parsed {
        Ok(p) => (Vec::new(), Some(p)),
        Err(e) => (e, None),
    };
    let decl = match refs.table.as_str() {
        "" => None,
        t => match lake.find(t).await {
            Ok(d) => Some(d),
            Err(e) => {
                problems.push(e);
                None
            }
        },
    };
    let limits = lake.limits;
    let (params, decl) = match (params, decl) {
        (Some(params), Some(decl)) => (params, decl),
        (_, decl) => {
            if let Some(decl) = decl {
                // Name the table's problems too (unknown columns, a `where` that does not plan).
                if let Ok(Ok(Some(df))) = tokio::time::timeout(limits.query_timeout, lake.open(&decl, None)).await {
                    problems.extend(series::check_columns(&refs, df, decl.time_column.as_deref()).errors);
                }
            }
            return errors(StatusCode::BAD_REQUEST, problems);
        }
    };
    let work = async {
        let df = match lake.open(&decl, Some((params.from, params.to))).await {
            Ok(Some(df)) => df,
            Ok(None) => {
                return Err((StatusCode::BAD_REQUEST, vec![ParamError::new("table", format!("table `{}` has no files yet", decl.name))]))
            }
            Err(e) => return Err((StatusCode::INTERNAL_SERVER_ERROR, vec![ParamError::new("table", format!("{e:#}"))])),
        };
        let query = series::plan(params, df, decl.time_column.as_deref(), limits.max_points).map_err(|e| (StatusCode::BAD_REQUEST, e))?;
        query.run(limits.max_points).await.map_err(|e| {
            let status = if e.parameter == "bin" { StatusCode::BAD_REQUEST } else { StatusCode::INTERNAL_SERVER_ERROR };
            (status, vec![e])
        })
    };
    match tokio::time::timeout(limits.query_timeout, work).await {
        Ok(Ok(answer)) => match answer.format() {
            params::Format::Json => ([(header::CONTENT_TYPE, "application/json")], answer.to_json()).into_response(),
            params::Format::Csv => ([(header::CONTENT_TYPE, "text/csv; charset=utf-8")], answer.to_csv()).into_response(),
        },
        Ok(Err((status, e))) => errors(status, e),
        Err(_) => errors(StatusCode::SERVICE_UNAVAILABLE, vec![timeout_error(&lake)]),
    }
}

/// `tributary serve`: bind `address` (failing fast if taken) and serve until `stop`.
pub async fn serve(address: SocketAddr, lake: Lake, stop: CancellationToken) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .map_err(|e| anyhow::anyhow!("cannot serve on {address}: {e} (pick another with --address)"))?;
    let bound = listener.local_addr()?;
    tracing::info!(address = %bound, "charts: http://{bound}/  (API: /api/tables, /api/series)");
    axum::serve(listener, router(lake)).with_graceful_shutdown(async move { stop.cancelled().await }).await?;
    Ok(())
}
