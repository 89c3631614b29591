//! What Webex says when it refuses a request: both the API client and the OAuth token exchange
//! read their error bodies with it.

use serde_json::Value;

/// The human part of a Webex error body (`message` and each `errors[].description`), or the
/// start of whatever else came back.
pub fn webex_message(body: &[u8]) -> String {
    if let Ok(v) = serde_json::from_slice::<Value>(body) {
        let mut parts: Vec<String> = Vec::new();
        if let Some(m) = v["message"].as_str() {
            parts.push(m.to_string());
        }
        for d in v["errors"].as_array().into_iter().flatten().filter_map(|e| e["description"].as_str()) {
            if !parts.iter().any(|p| p == d) {
                parts.push(d.to_string());
            }
        }
        if !parts.is_empty() {
            return parts.join("; ");
        }
    }
    let text = String::from_utf8_lossy(body);
    if text.is_empty() {
        "(empty body)".into()
    } else {
        tributary_sdk::truncate(&text, 200).to_string()
    }
}
