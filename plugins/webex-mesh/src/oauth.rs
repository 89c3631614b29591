//! Webex OAuth for an Integration: the authorization-code flow with a local callback server,
//! tokens persisted to a file only its owner can read (mode 0600), refresh ahead of expiry, and a
//! forced refresh after a 401. Tokens are never logged: they live in [`Secret`]s.

use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{StatusCode, Uri};
use axum::response::Html;
use chrono::{DateTime, Utc};
use rand::distr::{Alphanumeric, SampleString};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, Mutex};
use tokio_util::sync::CancellationToken;
use tributary_sdk::Secret;

use crate::config::Integration;

/// Access and refresh tokens with their expiry times, as kept in the token file.
#[derive(Clone, Serialize, Deserialize)]
pub struct TokenSet {
    #[serde(with = "secret_text")]
    pub access_token: Secret,
    pub expires_at: DateTime<Utc>,
    #[serde(with = "secret_text")]
    pub refresh_token: Secret,
    pub refresh_token_expires_at: DateTime<Utc>,
    /// When the access token was issued (its lifetime caps the refresh margin).
    pub obtained_at: DateTime<Utc>,
}

impl std::fmt::Debug for TokenSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TokenSet {{ expires_at: {}, refresh_token_expires_at: {} }}", self.expires_at, self.refresh_token_expires_at)
    }
}

mod secret_text {
    use serde::{Deserialize, Deserializer, Serializer};
    use tributary_sdk::Secret;
    pub fn serialize<S: Serializer>(s: &Secret, ser: S) -> Result<S::Ok, S::Error> {
        ser.serialize_str(s.expose())
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Secret, D::Error> {
        String::deserialize(d).map(Secret::new)
    }
}

/// Why no access token can be had.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthError {
    /// No tokens yet (or they were discarded): an admin has to authorize.
    NeedsLogin,
    /// The refresh token's own lifetime is over.
    RefreshExpired(DateTime<Utc>),
    /// The token endpoint refused a grant.
    Refused { status: u16, message: String, tracking_id: Option<String> },
    /// The token endpoint could not be reached or answered nonsense.
    Unavailable(String),
    /// A static `access_token` was refused by the API.
    StaticTokenRefused,
    /// The token file cannot be read or written.
    File(String),
}

impl AuthError {
    /// Only a new authorization gets past this error.
    pub fn needs_login(&self) -> bool {
        matches!(self, AuthError::NeedsLogin | AuthError::RefreshExpired(_) | AuthError::Refused { .. })
    }
}

impl std::fmt::Display for AuthError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AuthError::NeedsLogin => write!(f, "no Webex tokens yet: an org admin must authorize the integration"),
            AuthError::RefreshExpired(at) => write!(
                f,
                "the Webex refresh token expired at {}: an org admin must authorize the integration again",
                at.format("%Y-%m-%d %H:%M:%S UTC")
            ),
            AuthError::Refused { status, message, tracking_id } => {
                write!(f, "Webex refused the token request ({status}): {message}")?;
                if let Some(t) = tracking_id {
                    write!(f, " (TrackingID {t})")?;
                }
                Ok(())
            }
            AuthError::Unavailable(e) => write!(f, "the Webex token endpoint is unavailable: {e}"),
            AuthError::StaticTokenRefused => {
                write!(f, "Webex refused the configured access_token (401): it expired or was revoked; set a new one")
            }
            AuthError::File(e) => write!(f, "{e}"),
        }
    }
}

/// Where access tokens come from.
pub enum Auth {
    /// `auth.access_token`: used as is, never refreshed.
    Static(Secret),
    OAuth(Arc<OAuth>),
}

impl Auth {
    pub async fn token(&self) -> Result<Secret, AuthError> {
        match self {
            Auth::Static(t) => Ok(t.clone()),
            Auth::OAuth(o) => o.access_token().await,
        }
    }

    /// After a 401 with `stale`: a new token, unless the token cannot be refreshed.
    pub async fn after_unauthorized(&self, stale: &Secret) -> Result<Secret, AuthError> {
        match self {
            Auth::Static(_) => Err(AuthError::StaticTokenRefused),
            Auth::OAuth(o) => o.refresh_after_401(stale).await,
        }
    }
}

pub struct OAuth {
    source_id: String,
    http: reqwest::Client,
    cfg: Integration,
    tokens: Mutex<Option<TokenSet>>,
}

/// Reads the token file; a missing file is no tokens.
pub fn load_tokens(path: &Path) -> Result<Option<TokenSet>, AuthError> {
    match std::fs::read_to_string(path) {
        Ok(text) => serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| AuthError::File(format!("token file {}: not a token file ({e}); delete it to authorize again", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(AuthError::File(format!("token file {}: {e}", path.display()))),
    }
}

/// Writes the token file atomically, readable by its owner only.
pub fn save_tokens(path: &Path, tokens: &TokenSet) -> Result<(), AuthError> {
    let fail = |e: std::io::Error| AuthError::File(format!("token file {}: {e}", path.display()));
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(fail)?;
    }
    let tmp: PathBuf = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp).map_err(fail)?;
    f.write_all(serde_json::to_string_pretty(tokens).expect("tokens serialize").as_bytes()).map_err(fail)?;
    f.sync_all().map_err(fail)?;
    std::fs::rename(&tmp, path).map_err(fail)
}

#[derive(Deserialize)]
struct TokenReply {
    access_token: String,
    expires_in: u64,
    #[serde(default)]
    refresh_token: Option<String>,
    #[serde(default)]
    refresh_token_expires_in: Option<u64>,
}

#[derive(Deserialize)]
struct Callback {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
    error_description: Option<String>,
}

impl OAuth {
    pub fn new(source_id: &str, cfg: Integration, http: reqwest::Client) -> Result<OAuth, AuthError> {
        let tokens = load_tokens(&cfg.token_file)?;
        Ok(OAuth { source_id: source_id.into(), http, cfg, tokens: Mutex::new(tokens) })
    }

    /// Tokens that can still produce an access token, without a login.
    pub async fn has_usable_tokens(&self) -> bool {
        self.tokens.lock().await.as_ref().is_some_and(|t| t.refresh_token_expires_at > Utc::now() || t.expires_at > Utc::now())
    }

    pub fn authorize_url(&self, state: &str) -> String {
        let mut url = self.cfg.authorize_endpoint.clone();
        url.query_pairs_mut()
            .append_pair("client_id", &self.cfg.client_id)
            .append_pair("response_type", "code")
            .append_pair("redirect_uri", &self.cfg.redirect_uri)
            .append_pair("scope", &self.cfg.scopes.join(" "))
            .append_pair("state", state);
        url.into()
    }

    /// A valid access token, refreshed first when it is within the margin of its expiry.
    pub async fn access_token(&self) -> Result<Secret, AuthError> {
        let mut guard = self.tokens.lock().await;
        let Some(t) = guard.as_ref() else {
            return Err(AuthError::NeedsLogin);
        };
        let lifetime = (t.expires_at - t.obtained_at).to_std().unwrap_or_default();
        let margin = chrono::Duration::from_std(self.cfg.refresh_margin.0.min(lifetime / 2)).unwrap_or_default();
        if Utc::now() + margin < t.expires_at {
            return Ok(t.access_token.clone());
        }
        self.refresh_locked(&mut guard).await
    }

    async fn refresh_after_401(&self, stale: &Secret) -> Result<Secret, AuthError> {
        let mut guard = self.tokens.lock().await;
        match guard.as_ref() {
            None => Err(AuthError::NeedsLogin),
            // Another request refreshed already.
            Some(t) if t.access_token != *stale => Ok(t.access_token.clone()),
            Some(_) => self.refresh_locked(&mut guard).await,
        }
    }

    async fn refresh_locked(&self, guard: &mut Option<TokenSet>) -> Result<Secret, AuthError> {
        let t = guard.as_ref().ok_or(AuthError::NeedsLogin)?;
        if t.refresh_token_expires_at <= Utc::now() {
            return Err(AuthError::RefreshExpired(t.refresh_token_expires_at));
        }
        let form = [
            ("grant_type", "refresh_token"),
            ("client_id", self.cfg.client_id.as_str()),
            ("client_secret", self.cfg.client_secret.expose()),
            ("refresh_token", t.refresh_token.expose()),
        ];
        let fresh = self.grant(&form, Some(t)).await?;
        tracing::info!(source = %self.source_id, "refreshed the Webex access token; it expires at {}", fresh.expires_at);
        let token = fresh.access_token.clone();
        *guard = Some(fresh);
        Ok(token)
    }

    /// Exchanges an authorization code for tokens and persists them.
    pub async fn exchange_code(&self, code: &str) -> Result<(), AuthError> {
        let form = [
            ("grant_type", "authorization_code"),
            ("client_id", self.cfg.client_id.as_str()),
            ("client_secret", self.cfg.client_secret.expose()),
            ("code", code),
            ("redirect_uri", self.cfg.redirect_uri.as_str()),
        ];
        let fresh = self.grant(&form, None).await?;
        tracing::info!(source = %self.source_id, "authorized; tokens saved to {} (access token expires at {})", self.cfg.token_file.display(), fresh.expires_at);
        *self.tokens.lock().await = Some(fresh);
        Ok(())
    }

    /// POSTs a grant to the token endpoint and saves the answer.
    async fn grant(&self, form: &[(&str, &str)], previous: Option<&TokenSet>) -> Result<TokenSet, AuthError> {
        let resp = self
            .http
            .post(self.cfg.token_endpoint.clone())
            .form(form)
            .send()
            .await
            .map_err(|e| AuthError::Unavailable(format!("POST {}: {e}", self.cfg.token_endpoint)))?;
        let status = resp.status().as_u16();
        let tracking_id = resp.headers().get("TrackingID").and_then(|v| v.to_str().ok()).map(str::to_string);
        let body = resp.bytes().await.map_err(|e| AuthError::Unavailable(format!("POST {}: {e}", self.cfg.token_endpoint)))?;
        if !(200..300).contains(&status) {
            return Err(AuthError::Refused { status, message: crate::error_body::webex_message(&body), tracking_id });
        }
        let reply: TokenReply = serde_json::from_slice(&body)
            .map_err(|e| AuthError::Unavailable(format!("POST {}: unexpected token response ({e})", self.cfg.token_endpoint)))?;
        let now = Utc::now();
        let secs = |s: u64| chrono::Duration::seconds(s.min(i64::MAX as u64 / 1000) as i64);
        let (refresh_token, refresh_token_expires_at) = match (reply.refresh_token, previous) {
            (Some(r), _) => (Secret::new(r), now + secs(reply.refresh_token_expires_in.unwrap_or(7_775_999))),
            (None, Some(p)) => (p.refresh_token.clone(), p.refresh_token_expires_at),
            (None, None) => return Err(AuthError::Unavailable("the token response has no refresh_token".into())),
        };
        let tokens = TokenSet {
            access_token: Secret::new(reply.access_token),
            expires_at: now + secs(reply.expires_in),
            refresh_token,
            refresh_token_expires_at,
            obtained_at: now,
        };
        save_tokens(&self.cfg.token_file, &tokens)?;
        Ok(tokens)
    }

    /// Where the callback server listens: `auth.listen`, else the redirect URI's host and port.
    pub fn callback_address(&self) -> SocketAddr {
        self.cfg.callback
    }

    /// Logs the authorize URL and serves the redirect URI until a code was exchanged (or
    /// `shutdown`). `why` says what made a login necessary.
    pub async fn login(self: &Arc<Self>, why: &AuthError, shutdown: &CancellationToken) -> Result<(), AuthError> {
        let state = Alphanumeric.sample_string(&mut rand::rng(), 32);
        let addr = self.callback_address();
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| AuthError::File(format!("cannot serve the OAuth callback on {addr}: {e}")))?;
        let path = self.cfg.callback_path.clone();
        tracing::warn!(
            source = %self.source_id,
            "{why}. Open this URL as a Webex org admin to authorize Tributary (the callback is served on {addr}{path}): {}",
            self.authorize_url(&state)
        );
        let (done_tx, mut done_rx) = mpsc::channel::<()>(1);
        let app =
            axum::Router::new().fallback(callback).with_state(Arc::new(CallbackState { oauth: self.clone(), state, path, done: done_tx }));
        let stop = CancellationToken::new();
        let serving = stop.clone();
        let server = tokio::spawn(async move { axum::serve(listener, app).with_graceful_shutdown(serving.cancelled_owned()).await });
        let result = tokio::select! {
            _ = done_rx.recv() => Ok(()),
            _ = shutdown.cancelled() => Err(AuthError::NeedsLogin),
        };
        // Let the browser's answer go out before the server stops.
        tokio::time::sleep(Duration::from_millis(100)).await;
        stop.cancel();
        let _ = server.await;
        result
    }
}

struct CallbackState {
    oauth: Arc<OAuth>,
    state: String,
    path: String,
    done: mpsc::Sender<()>,
}

async fn callback(State(s): State<Arc<CallbackState>>, uri: Uri, q: Result<Query<Callback>, QueryRejection>) -> (StatusCode, Html<String>) {
    let page = |status: StatusCode, text: &str| (status, Html(format!("<!doctype html><title>Tributary</title><p>{text}</p>")));
    if uri.path() != s.path {
        return page(StatusCode::NOT_FOUND, "Not the OAuth callback.");
    }
    let Ok(Query(q)) = q else {
        return page(StatusCode::BAD_REQUEST, "The callback's query cannot be read.");
    };
    if let Some(e) = q.error {
        tracing::warn!(source = %s.oauth.source_id, "authorization was not granted: {e} {}", q.error_description.unwrap_or_default());
        return page(StatusCode::BAD_REQUEST, "Authorization was not granted; see the Tributary log.");
    }
    if q.state.as_deref() != Some(s.state.as_str()) {
        return page(
            StatusCode::BAD_REQUEST,
            "Unknown or stale authorization request (state does not match); open the URL from the current log.",
        );
    }
    let Some(code) = q.code else {
        return page(StatusCode::BAD_REQUEST, "The callback carries no code.");
    };
    match s.oauth.exchange_code(&code).await {
        Ok(()) => {
            let _ = s.done.try_send(());
            page(StatusCode::OK, "Tributary is authorized to read Video Mesh data. You can close this window.")
        }
        Err(e) => {
            tracing::error!(source = %s.oauth.source_id, "exchanging the authorization code failed: {e}");
            page(StatusCode::BAD_GATEWAY, &format!("Exchanging the authorization code failed: {e}"))
        }
    }
}
