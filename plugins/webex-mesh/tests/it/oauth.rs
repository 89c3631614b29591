//! OAuth against the simulator: code exchange through the callback server, tokens persisted with
//! mode 0600 and reused after a restart, refresh ahead of expiry, the expired and the refused
//! refresh token, and 401 → refresh → retry. Tokens never reach the log.

use crate::common;

use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::time::Duration;

use common::{login_like_a_browser, oauth_config, simulator, Logs};
use tokio_util::sync::CancellationToken;
use tributary_sdk::ComponentMetrics;
use tributary_webex_mesh::client::{ApiClient, RateLimiter};
use tributary_webex_mesh::config::Credentials;
use tributary_webex_mesh::oauth::{load_tokens, save_tokens, Auth, AuthError, OAuth};
use tributary_webex_mesh::simulator::SimConfig;

fn oauth(cfg: &tributary_webex_mesh::config::WebexMeshConfig) -> Arc<OAuth> {
    let Credentials::Integration(integration) = cfg.resolve().unwrap().credentials else { panic!("an OAuth config") };
    Arc::new(OAuth::new("mesh", *integration, reqwest::Client::new()).unwrap())
}

#[tokio::test]
async fn code_exchange_persists_tokens_for_the_owner_only_and_a_restart_reuses_them() {
    let (logs, _guard) = Logs::capture();
    let sim = simulator(SimConfig::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = oauth_config(&sim, dir.path(), "");
    let first = oauth(&cfg);
    assert!(!first.has_usable_tokens().await);
    assert_eq!(first.access_token().await.unwrap_err(), AuthError::NeedsLogin);

    let page = login_like_a_browser(&first, &logs).await;
    assert!(page.contains("Tributary is authorized to read Video Mesh data."), "{page}");
    assert_eq!(sim.served("token:authorization_code", 200), 1);
    let file = &cfg.auth.token_file;
    assert_eq!(std::fs::metadata(file).unwrap().permissions().mode() & 0o777, 0o600);
    let saved = load_tokens(file).unwrap().unwrap();
    let token = first.access_token().await.unwrap();
    assert_eq!(token, saved.access_token);
    let expires_in = (saved.expires_at - saved.obtained_at).num_seconds();
    assert_eq!(expires_in, 1_209_599, "the simulator's default lifetime, as Webex's");

    // A restart: the file is enough, no new login and no new grant.
    let second = oauth(&cfg);
    assert!(second.has_usable_tokens().await);
    assert_eq!(second.access_token().await.unwrap(), token);
    assert_eq!(sim.served("token:authorization_code", 200), 1);
    assert_eq!(sim.served("token:refresh_token", 200), 0);

    // The log has the authorize URL (no secret in it) and never a token or the client secret.
    let text = logs.text();
    assert!(text.contains("Open this URL as a Webex org admin to authorize Tributary"), "{text}");
    assert!(text.contains("tokens saved to"), "{text}");
    for secret in [token.expose(), saved.refresh_token.expose(), "simulated-client-secret"] {
        assert!(!text.contains(secret), "a secret reached the log:\n{text}");
    }
    assert!(!format!("{saved:?}").contains(token.expose()), "Debug of the token set hides the tokens");
}

#[tokio::test]
async fn tokens_are_refreshed_ahead_of_expiry_and_an_expired_refresh_token_is_a_clear_error() {
    let (logs, _guard) = Logs::capture();
    let sim = simulator(SimConfig { access_token_ttl: Duration::from_secs(2), ..SimConfig::default() }).await;
    let dir = tempfile::tempdir().unwrap();
    // A one-day margin is capped at half the token's lifetime (1 s here).
    let cfg = oauth_config(&sim, dir.path(), "");
    let o = oauth(&cfg);
    login_like_a_browser(&o, &logs).await;
    let first = o.access_token().await.unwrap();
    assert_eq!(o.access_token().await.unwrap(), first, "fresh enough: no refresh");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let second = o.access_token().await.unwrap();
    assert_ne!(second, first);
    assert_eq!(sim.served("token:refresh_token", 200), 1);
    let saved = load_tokens(&cfg.auth.token_file).unwrap().unwrap();
    assert_eq!(saved.access_token, second, "the refreshed tokens are persisted");
    assert!(!logs.text().contains(second.expose()));

    // The refresh token's own lifetime is over.
    let mut stale = saved.clone();
    stale.expires_at = chrono::Utc::now() - chrono::Duration::seconds(5);
    stale.refresh_token_expires_at = chrono::DateTime::parse_from_rfc3339("2026-01-02T03:04:05Z").unwrap().into();
    save_tokens(&cfg.auth.token_file, &stale).unwrap();
    let err = oauth(&cfg).access_token().await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "the Webex refresh token expired at 2026-01-02 03:04:05 UTC: an org admin must authorize the integration again"
    );
    assert!(err.needs_login());

    // A refresh token the server no longer knows (revoked, or rotated away).
    stale.refresh_token_expires_at = chrono::Utc::now() + chrono::Duration::days(1);
    stale.refresh_token = tributary_sdk::Secret::new("revoked-refresh-token");
    save_tokens(&cfg.auth.token_file, &stale).unwrap();
    let err = oauth(&cfg).access_token().await.unwrap_err().to_string();
    assert!(
        err.starts_with("Webex refused the token request (400): The refresh token provided is expired, revoked, malformed, or invalid. (TrackingID ROUTER_"),
        "{err}"
    );
}

#[tokio::test]
async fn a_401_refreshes_the_token_once_and_retries() {
    let (logs, _guard) = Logs::capture();
    let sim = simulator(SimConfig::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = oauth_config(&sim, dir.path(), "");
    let o = oauth(&cfg);
    login_like_a_browser(&o, &logs).await;
    let client = ApiClient::new(
        "mesh",
        reqwest::Client::new(),
        &cfg.base_url,
        Arc::new(Auth::OAuth(o.clone())),
        RateLimiter::new(50, Duration::from_secs(300)),
        3,
        CancellationToken::new(),
        Arc::new(ComponentMetrics::default()),
    );
    let before = o.access_token().await.unwrap();
    sim.expire_access_tokens();
    let reply = client.get("/organizations", &[]).await.unwrap();
    assert_eq!(reply.body["items"][0]["displayName"], "Acme Media");
    assert!(reply.tracking_id.unwrap().starts_with("ROUTER_"));
    assert_eq!(sim.served("/v1/organizations", 401), 1);
    assert_eq!(sim.served("/v1/organizations", 200), 1);
    assert_eq!(sim.served("token:refresh_token", 200), 1);
    assert_ne!(o.access_token().await.unwrap(), before);

    // A static token the API refuses is not refreshed: a clear error.
    let static_client = ApiClient::new(
        "mesh",
        reqwest::Client::new(),
        &cfg.base_url,
        Arc::new(Auth::Static(tributary_sdk::Secret::new("not-a-token"))),
        RateLimiter::new(50, Duration::from_secs(300)),
        3,
        CancellationToken::new(),
        Arc::new(ComponentMetrics::default()),
    );
    let err = static_client.get("/organizations", &[]).await.unwrap_err();
    assert_eq!(err.to_string(), "Webex refused the configured access_token (401): it expired or was revoked; set a new one");
}
