//! Slack's Web API, the few methods the gateway calls, over reqwest.
//!
//! What it does: `POST <api_url>/<method>` with the token as a bearer header (never in the URL,
//! so no error or log line can carry it) and a JSON body, a 15 s timeout, and an answer of at
//! most 1 MiB;
//! classifies failures for the gateway's retry logic ([`classify`]): HTTP 429 with
//! `Retry-After`, or `{"ok":false,"error":"ratelimited"}`, → `RetryAfter`; network failures,
//! HTTP 5xx and Slack's own transient errors → `Transient`; every other `"ok":false` (bad
//! channel, archived, bad token, unknown message on update, …) → `Permanent`.
//!
//! What it does not do: no pagination, uploads or retries of its own (the outbound loop
//! retries); it never logs request or answer bodies.

use std::time::Duration;

use serde_json::Value;

use crate::channel::DeliveryError;

/// Slack's Web API base.
pub const SLACK_API_URL: &str = "https://slack.com/api";

/// How long one Web API call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(15);

/// The largest Web API answer read (ours are a few KiB: the posted message echoed back).
const MAX_ANSWER: usize = 1024 * 1024;

/// The wait assumed when Slack rate-limits without saying for how long.
const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(1);

/// Slack's errors that a later retry may cure.
const TRANSIENT_ERRORS: &[&str] = &[
    "internal_error",
    "fatal_error",
    "service_unavailable",
    "request_timeout",
    "team_added_to_org",
];

/// A Slack token (`xoxb-` bot token or `xapp-` app-level token), read from a file. Never
/// printed.
#[derive(Clone)]
pub struct SlackToken(String);

impl SlackToken {
    /// Wraps a token (trimmed).
    pub fn new(token: &str) -> Self {
        SlackToken(token.trim().to_owned())
    }

    /// The token, for the `Authorization` header only.
    fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for SlackToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SlackToken(<redacted>)")
    }
}

/// A Web API client (cheap to clone).
#[derive(Debug, Clone)]
pub struct WebApi {
    http: reqwest::Client,
    base: String,
}

impl WebApi {
    /// A client for `base` (no trailing slash; [`SLACK_API_URL`] for the real Slack).
    pub fn new(base: &str) -> Result<WebApi, DeliveryError> {
        let http = reqwest::Client::builder()
            .timeout(CALL_TIMEOUT)
            .connect_timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| DeliveryError::Permanent(format!("cannot build an HTTP client: {e}")))?;
        Ok(WebApi {
            http,
            base: base.trim_end_matches('/').to_owned(),
        })
    }

    /// Calls `method` with `token` and a JSON `body` (`None`: no parameters). Returns the
    /// answer of an `"ok":true` call.
    pub async fn call(
        &self,
        token: &SlackToken,
        method: &str,
        body: Option<&Value>,
    ) -> Result<Value, DeliveryError> {
        let url = format!("{}/{method}", self.base);
        let mut request = self.http.post(url).bearer_auth(token.expose());
        request = match body {
            Some(b) => request
                .header(
                    reqwest::header::CONTENT_TYPE,
                    "application/json; charset=utf-8",
                )
                .body(b.to_string()),
            None => request.header(
                reqwest::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            ),
        };
        let response = request.send().await.map_err(|e| {
            // reqwest's error names the URL, which holds no secret (the token is a header).
            DeliveryError::Transient(format!("{method}: {}", e.without_url()))
        })?;
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        if status == 429 {
            return Err(DeliveryError::RetryAfter(
                retry_after.unwrap_or(DEFAULT_RETRY_AFTER),
            ));
        }
        if status >= 500 {
            return Err(DeliveryError::Transient(format!("{method}: HTTP {status}")));
        }
        if status != 200 {
            return Err(DeliveryError::Permanent(format!("{method}: HTTP {status}")));
        }
        let mut response = response;
        let mut bytes = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| DeliveryError::Transient(format!("{method}: {}", e.without_url())))?
        {
            if bytes.len().saturating_add(chunk.len()) > MAX_ANSWER {
                return Err(DeliveryError::Transient(format!(
                    "{method}: the answer is too large"
                )));
            }
            bytes.extend_from_slice(&chunk);
        }
        let answer: Value = serde_json::from_slice(&bytes).map_err(|_not_json| {
            DeliveryError::Transient(format!("{method}: the answer is not JSON"))
        })?;
        if answer.get("ok").and_then(Value::as_bool) == Some(true) {
            return Ok(answer);
        }
        let error = answer
            .get("error")
            .and_then(Value::as_str)
            .unwrap_or("unknown_error");
        Err(classify(method, error, retry_after))
    }
}

/// How an `{"ok":false,"error":...}` answer is retried. Pure.
pub fn classify(method: &str, error: &str, retry_after: Option<Duration>) -> DeliveryError {
    // Slack's error strings are short snake_case words; keep only that much of an unexpected one.
    let error: String = error
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
        .take(64)
        .collect();
    if error == "ratelimited" || error == "rate_limited" {
        return DeliveryError::RetryAfter(retry_after.unwrap_or(DEFAULT_RETRY_AFTER));
    }
    if TRANSIENT_ERRORS.contains(&error.as_str()) {
        return DeliveryError::Transient(format!("{method}: {error}"));
    }
    DeliveryError::Permanent(format!("{method}: {error}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification() {
        let s = Some(Duration::from_secs(7));
        let cases: &[(&str, Option<Duration>, DeliveryError)] = &[
            (
                "ratelimited",
                s,
                DeliveryError::RetryAfter(Duration::from_secs(7)),
            ),
            (
                "ratelimited",
                None,
                DeliveryError::RetryAfter(DEFAULT_RETRY_AFTER),
            ),
            (
                "internal_error",
                None,
                DeliveryError::Transient("m: internal_error".into()),
            ),
            (
                "service_unavailable",
                None,
                DeliveryError::Transient("m: service_unavailable".into()),
            ),
            (
                "channel_not_found",
                None,
                DeliveryError::Permanent("m: channel_not_found".into()),
            ),
            (
                "not_in_channel",
                None,
                DeliveryError::Permanent("m: not_in_channel".into()),
            ),
            (
                "is_archived",
                None,
                DeliveryError::Permanent("m: is_archived".into()),
            ),
            (
                "invalid_auth",
                None,
                DeliveryError::Permanent("m: invalid_auth".into()),
            ),
            (
                "account_inactive",
                None,
                DeliveryError::Permanent("m: account_inactive".into()),
            ),
            (
                "message_not_found",
                None,
                DeliveryError::Permanent("m: message_not_found".into()),
            ),
            (
                "<script>\n",
                None,
                DeliveryError::Permanent("m: script".into()),
            ),
        ];
        for (error, after, expected) in cases {
            assert_eq!(&classify("m", error, *after), expected, "{error}");
        }
    }

    #[test]
    fn token_is_redacted() {
        assert_eq!(
            format!("{:?}", SlackToken::new("xoxb-secret\n")),
            "SlackToken(<redacted>)"
        );
    }
}
