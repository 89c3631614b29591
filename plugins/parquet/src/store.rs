//! Where a lake lives: a local folder, or a prefix in object storage (`s3://`, `gs://`, `az://`)
//! reached through the `object_store` crate DataFusion itself reads with. The sink writes through
//! it; `tributary query` and the chart server list and read through it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::azure::{AzureConfigKey, MicrosoftAzureBuilder};
use object_store::gcp::{GoogleCloudStorageBuilder, GoogleConfigKey};
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjectPath;
use object_store::{BackoffConfig, ClientConfigKey, ObjectStore, RetryConfig};
use serde::Deserialize;
use tributary_sdk::{ConfigError, Period, Secret};
use url::Url;

/// How to reach object storage: a `storage:` block beside `path: s3://…`. Everything is optional:
/// credentials, region and endpoint also come from the provider's standard environment
/// (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`, `AWS_ENDPOINT_URL`,
/// `AWS_ALLOW_HTTP`, web identity and instance credentials; `GOOGLE_*`; `AZURE_*`); what is set
/// here wins.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageOptions {
    /// An S3-compatible server's address (MinIO, Ceph, moto): `http://minio:9000`. `http://`
    /// endpoints are allowed as given. Default: the provider's own.
    pub endpoint: Option<String>,
    /// S3 region (default `AWS_REGION`, else `us-east-1`).
    pub region: Option<String>,
    /// `bucket.endpoint/key` requests instead of `endpoint/bucket/key` (default false: path style,
    /// which S3-compatible servers expect and AWS still serves).
    pub virtual_hosted_style: Option<bool>,
    pub access_key_id: Option<Secret>,
    pub secret_access_key: Option<Secret>,
    pub session_token: Option<Secret>,
    /// Any other provider option, by object_store's key names (`aws_sse_kms_key_id`,
    /// `google_service_account`, `azure_storage_account_key`, …). Values are treated as secrets.
    #[serde(default)]
    pub options: BTreeMap<String, Secret>,
    /// Attempts one request gets again after a timeout, a 5xx or throttling (429, 503 SlowDown),
    /// with exponential backoff, before the write fails and the engine's retry takes over
    /// (default 3).
    pub retries: Option<usize>,
    /// Time one request may take (default 30s).
    pub timeout: Option<Period>,
}

/// A lake's place: a local folder or a prefix in an object store.
#[derive(Debug, Clone)]
pub enum Location {
    Folder(PathBuf),
    Objects(ObjectLocation),
}

/// A prefix in an object store, with the store to reach it.
#[derive(Debug, Clone)]
pub struct ObjectLocation {
    pub store: Arc<dyn ObjectStore>,
    /// `scheme://authority/`: what DataFusion registers the store under.
    pub store_url: Url,
    /// The prefix inside the store (no leading or trailing `/`; empty for the bucket's root).
    pub prefix: ObjectPath,
}

impl ObjectLocation {
    /// A local folder through object_store's file system store (what DataFusion reads with).
    pub fn local(path: &Path) -> Result<Self, String> {
        let absolute = std::path::absolute(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let prefix = ObjectPath::from_absolute_path(&absolute).map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(ObjectLocation { store: Arc::new(LocalFileSystem::new()), store_url: Url::parse("file:///").expect("a URL"), prefix })
    }

    /// This location as a URL ending in `/` (a DataFusion table location).
    pub fn url(&self) -> String {
        let mut url = self.store_url.clone();
        let prefix = self.prefix.as_ref();
        // set_path percent-encodes what a URL cannot hold (a space in a folder name).
        url.set_path(&if prefix.is_empty() { "/".to_string() } else { format!("/{prefix}/") });
        url.to_string()
    }

    /// The location `name` below this one.
    pub fn child(&self, name: &str) -> ObjectLocation {
        ObjectLocation { store: self.store.clone(), store_url: self.store_url.clone(), prefix: self.prefix.clone().join(name) }
    }

    pub fn is_local(&self) -> bool {
        self.store_url.scheme() == "file"
    }

    /// Makes the store reachable from `ctx`'s queries (the local file system always is).
    pub fn register_in(&self, ctx: &datafusion::prelude::SessionContext) {
        if !self.is_local() {
            ctx.register_object_store(&self.store_url, self.store.clone());
        }
    }
}

/// `path` as a place to read through object_store: a folder becomes the file system store's.
pub fn read_location(path: &str, options: &StorageOptions) -> Result<ObjectLocation, ConfigError> {
    match parse_location(path, options)? {
        Location::Folder(folder) => ObjectLocation::local(&folder).map_err(|e| ConfigError::at("path", e)),
        Location::Objects(objects) => Ok(objects),
    }
}

/// Parses `path` (a folder, `file://…`, `s3://bucket/prefix`, `s3a://…`, `gs://…`, `az://…`,
/// `abfs(s)://…`) into its location; object store clients are built here (no request is made).
pub fn parse_location(path: &str, options: &StorageOptions) -> Result<Location, ConfigError> {
    let Some((scheme, _)) = path.split_once("://") else {
        return Ok(Location::Folder(PathBuf::from(path)));
    };
    let url = Url::parse(path).map_err(|e| ConfigError::at("path", format!("`{path}` is not a valid URL: {e}")))?;
    if scheme == "file" {
        let folder = url.to_file_path().map_err(|()| ConfigError::at("path", format!("`{path}` is not a local file URL")))?;
        return Ok(Location::Folder(folder));
    }
    let bucket = url.host_str().filter(|h| !h.is_empty()).ok_or_else(|| ConfigError::at("path", format!("`{path}` names no bucket")))?;
    let store: Arc<dyn ObjectStore> = match scheme {
        "s3" | "s3a" => Arc::new(s3(&url, options)?),
        "gs" => Arc::new(gcs(&url, options)?),
        "az" | "azure" | "abfs" | "abfss" => Arc::new(azure(&url, options)?),
        other => {
            return Err(ConfigError::at(
                "path",
                format!("`{other}://` is not a supported store (use a folder, file://, s3://, gs:// or az://)"),
            ))
        }
    };
    let prefix = ObjectPath::parse(url.path().trim_matches('/')).map_err(|e| ConfigError::at("path", format!("`{path}`: {e}")))?;
    let store_url = Url::parse(&format!("{scheme}://{bucket}/")).map_err(|e| ConfigError::at("path", e.to_string()))?;
    Ok(Location::Objects(ObjectLocation { store, store_url, prefix }))
}

/// Retries and timeouts: a few quick attempts inside one write, so a throttled or briefly failing
/// server is ridden out without the engine seeing it, but a server that stays down surfaces as a
/// failed write (counted, logged, retried by the engine with backpressure) within about a minute.
fn retry(options: &StorageOptions) -> RetryConfig {
    RetryConfig {
        backoff: BackoffConfig { init_backoff: Duration::from_millis(100), max_backoff: Duration::from_secs(5), base: 2.0 },
        max_retries: options.retries.unwrap_or(3),
        retry_timeout: Duration::from_secs(60),
    }
}

/// HTTP client settings, as config keys (so the ones the environment set, a proxy or
/// `AWS_ALLOW_HTTP`, stay).
fn client_settings(options: &StorageOptions) -> Vec<(ClientConfigKey, String)> {
    let timeout = options.timeout.map_or(Duration::from_secs(30), |t| t.0);
    let mut settings = vec![
        (ClientConfigKey::Timeout, format!("{}ms", timeout.as_millis())),
        (ClientConfigKey::ConnectTimeout, format!("{}ms", timeout.min(Duration::from_secs(5)).as_millis())),
    ];
    if options.endpoint.as_deref().is_some_and(|e| e.starts_with("http://")) {
        settings.push((ClientConfigKey::AllowHttp, "true".into()));
    }
    settings
}

fn s3(url: &Url, o: &StorageOptions) -> Result<object_store::aws::AmazonS3, ConfigError> {
    let mut b = AmazonS3Builder::from_env().with_url(url.as_str());
    if let Some(endpoint) = &o.endpoint {
        b = b.with_endpoint(endpoint);
    }
    if let Some(region) = &o.region {
        b = b.with_region(region);
    }
    if let Some(v) = o.virtual_hosted_style {
        b = b.with_virtual_hosted_style_request(v);
    }
    if let Some(k) = &o.access_key_id {
        b = b.with_access_key_id(k.expose());
    }
    if let Some(k) = &o.secret_access_key {
        b = b.with_secret_access_key(k.expose());
    }
    if let Some(k) = &o.session_token {
        b = b.with_token(k.expose());
    }
    for (key, value) in &o.options {
        let k: AmazonS3ConfigKey = key.parse().map_err(|_| unknown_option(key, "S3 (aws_…)"))?;
        b = b.with_config(k, value.expose());
    }
    for (key, value) in client_settings(o) {
        b = b.with_config(AmazonS3ConfigKey::Client(key), value);
    }
    b.with_retry(retry(o)).build().map_err(built)
}

/// A client that could not be built, as a config error (redacted: it may quote a key).
fn built(e: object_store::Error) -> ConfigError {
    ConfigError::at("storage", tributary_sdk::redact::redact(&e.to_string()).into_owned())
}

fn only_for_s3(o: &StorageOptions, scheme: &str) -> Result<(), ConfigError> {
    let set = [
        ("endpoint", o.endpoint.is_some()),
        ("region", o.region.is_some()),
        ("virtual_hosted_style", o.virtual_hosted_style.is_some()),
        ("access_key_id", o.access_key_id.is_some()),
        ("secret_access_key", o.secret_access_key.is_some()),
        ("session_token", o.session_token.is_some()),
    ];
    match set.iter().find(|(_, on)| *on) {
        Some((name, _)) => Err(ConfigError::at(
            &format!("storage.{name}"),
            format!("applies to s3:// only; for {scheme}:// set the provider's keys under `storage.options`"),
        )),
        None => Ok(()),
    }
}

fn unknown_option(key: &str, provider: &str) -> ConfigError {
    ConfigError::at(&format!("storage.options.{key}"), format!("not an option of {provider} object storage"))
}

fn gcs(url: &Url, o: &StorageOptions) -> Result<object_store::gcp::GoogleCloudStorage, ConfigError> {
    only_for_s3(o, "gs")?;
    let mut b = GoogleCloudStorageBuilder::from_env().with_url(url.as_str());
    for (key, value) in &o.options {
        let k: GoogleConfigKey = key.parse().map_err(|_| unknown_option(key, "Google Cloud Storage (google_…)"))?;
        b = b.with_config(k, value.expose());
    }
    for (key, value) in client_settings(o) {
        b = b.with_config(GoogleConfigKey::Client(key), value);
    }
    b.with_retry(retry(o)).build().map_err(built)
}

fn azure(url: &Url, o: &StorageOptions) -> Result<object_store::azure::MicrosoftAzure, ConfigError> {
    only_for_s3(o, url.scheme())?;
    let mut b = MicrosoftAzureBuilder::from_env().with_url(url.as_str());
    for (key, value) in &o.options {
        let k: AzureConfigKey = key.parse().map_err(|_| unknown_option(key, "Azure (azure_…)"))?;
        b = b.with_config(k, value.expose());
    }
    for (key, value) in client_settings(o) {
        b = b.with_config(AzureConfigKey::Client(key), value);
    }
    b.with_retry(retry(o)).build().map_err(built)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn objects(path: &str, options: &StorageOptions) -> ObjectLocation {
        match parse_location(path, options).unwrap() {
            Location::Objects(o) => o,
            Location::Folder(f) => panic!("{path} parsed as the folder {}", f.display()),
        }
    }

    #[test]
    fn folders_and_urls_are_told_apart() {
        assert!(
            matches!(parse_location("./data/out", &StorageOptions::default()), Ok(Location::Folder(p)) if p == Path::new("./data/out"))
        );
        assert!(
            matches!(parse_location("file:///tmp/lake", &StorageOptions::default()), Ok(Location::Folder(p)) if p == Path::new("/tmp/lake"))
        );
        let o = StorageOptions { endpoint: Some("http://127.0.0.1:9000".into()), region: Some("us-east-1".into()), ..Default::default() };
        let lake = objects("s3://telemetry/lake/badges/", &o);
        assert_eq!(lake.url(), "s3://telemetry/lake/badges/");
        assert_eq!(lake.child("date=2026-11-30").url(), "s3://telemetry/lake/badges/date=2026-11-30/");
        assert_eq!(objects("s3://telemetry", &o).url(), "s3://telemetry/");
    }

    #[test]
    fn bad_locations_and_options_are_named() {
        let none = StorageOptions::default();
        let err = |path: &str, o: &StorageOptions| parse_location(path, o).err().map(|e| e.to_string()).unwrap();
        assert_eq!(err("ftp://host/x", &none), "path: `ftp://` is not a supported store (use a folder, file://, s3://, gs:// or az://)");
        assert_eq!(err("s3:///x", &none), "path: `s3:///x` names no bucket");
        let typo = StorageOptions { options: [("aws_endpoint_ur".to_string(), Secret::new("x"))].into(), ..Default::default() };
        assert_eq!(err("s3://b/x", &typo), "storage.options.aws_endpoint_ur: not an option of S3 (aws_…) object storage");
        let s3_only = StorageOptions { endpoint: Some("http://x".into()), ..Default::default() };
        assert_eq!(
            err("gs://b/x", &s3_only),
            "storage.endpoint: applies to s3:// only; for gs:// set the provider's keys under `storage.options`"
        );
    }

    #[test]
    fn credentials_are_never_printed() {
        let yaml =
            "{access_key_id: AKIAEXAMPLEKEY, secret_access_key: wJalrXUtnFEMIEXAMPLE, options: {azure_storage_account_key: c2VjcmV0a2V5}}";
        let o: StorageOptions = tributary_sdk::ComponentConfig::from_yaml("lake", yaml).decode().unwrap();
        let shown = format!("{o:?}");
        for secret in ["AKIAEXAMPLEKEY", "wJalrXUtnFEMIEXAMPLE", "c2VjcmV0a2V5"] {
            assert!(!shown.contains(secret), "{shown}");
            assert_eq!(tributary_sdk::redact::redact(&format!("error near {secret}")), "error near ***");
        }
    }

    #[test]
    fn local_locations_are_file_urls() {
        let lake = ObjectLocation::local(Path::new("/tmp/some lake")).unwrap();
        assert!(lake.is_local());
        assert_eq!(lake.url(), "file:///tmp/some%20lake/");
    }
}
