//! The HTTP edge of the LLM client: the endpoint (base URL and key, from configuration only)
//! and the executor that sends each request exactly once and reads at most a bounded body.
//!
//! async-openai's own `OpenAIConfig::new()` reads `OPENAI_BASE_URL`, `OPENAI_API_KEY`,
//! `OPENAI_ORG_ID` and `OPENAI_PROJECT_ID` from the environment, and its default executor
//! retries 429, 5xx and connection errors with backoff. Neither suits a planner that must go
//! only where its configuration says and answer within its timeout, so [`Endpoint`] implements
//! the `Config` trait itself (no environment at all) and [`BoundedHttp`] replaces the executor.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use async_openai::config::Config;
use async_openai::error::OpenAIError;
use async_openai::middleware::HttpRequestFactory;
use reqwest::header::{AUTHORIZATION, HeaderMap, HeaderValue};
use secrecy::SecretString;

/// Where requests go and the key they carry: built from configuration only.
#[derive(Clone)]
pub(super) struct Endpoint {
    base: String,
    key: SecretString,
    authorization: Option<HeaderValue>,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("base", &self.base)
            .field(
                "key",
                &if self.authorization.is_some() {
                    "[redacted]"
                } else {
                    "none"
                },
            )
            .finish()
    }
}

impl Endpoint {
    /// `base` is a checked base URL without a trailing slash; `key` a checked key (visible
    /// ASCII), or none for servers that need none (a local Ollama or llama.cpp).
    pub(super) fn new(base: String, key: Option<String>) -> Result<Endpoint, String> {
        let authorization = match &key {
            None => None,
            Some(k) => {
                let mut value = HeaderValue::from_str(&format!("Bearer {k}"))
                    .map_err(|_invalid| "the key is not a valid header value".to_owned())?;
                value.set_sensitive(true);
                Some(value)
            }
        };
        Ok(Endpoint {
            base,
            key: SecretString::from(key.unwrap_or_default()),
            authorization,
        })
    }
}

impl Config for Endpoint {
    fn headers(&self) -> HeaderMap {
        let mut headers = HeaderMap::new();
        if let Some(value) = &self.authorization {
            headers.insert(AUTHORIZATION, value.clone());
        }
        headers
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn query(&self) -> Vec<(&str, &str)> {
        Vec::new()
    }

    fn api_base(&self) -> &str {
        &self.base
    }

    fn api_key(&self) -> &SecretString {
        &self.key
    }
}

/// What the executor refused, carried to the caller inside `OpenAIError::Boxed`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(super) enum HttpFailure {
    /// The body is larger than the limit.
    #[error("the response is larger than {0} bytes")]
    TooLarge(usize),
    /// A status other than 2xx. `api_code` is the error body's `code` (or `type`) when it is a
    /// short identifier like `invalid_api_key`; the body itself is never kept (a server may
    /// echo the key in it).
    #[error("HTTP status {status}{}", api_code.as_ref().map(|c| format!(" ({c})")).unwrap_or_default())]
    Status {
        /// The status code.
        status: u16,
        /// The error body's code, if it is a short identifier.
        api_code: Option<String>,
    },
}

/// Sends each request once (no retries), reads at most `max_body` bytes, and turns every
/// non-2xx status into [`HttpFailure::Status`].
#[derive(Debug, Clone)]
pub(super) struct BoundedHttp {
    client: reqwest::Client,
    max_body: usize,
}

impl BoundedHttp {
    pub(super) fn new(client: reqwest::Client, max_body: usize) -> BoundedHttp {
        BoundedHttp { client, max_body }
    }
}

fn boxed(failure: HttpFailure) -> OpenAIError {
    OpenAIError::Boxed(Box::new(failure))
}

/// The `code` (else `type`) of an OpenAI-style error body, if it is a short identifier.
fn api_code(body: &[u8]) -> Option<String> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    let error = value.get("error")?;
    ["code", "type"]
        .iter()
        .filter_map(|k| error.get(*k).and_then(serde_json::Value::as_str))
        .find(|c| {
            !c.is_empty()
                && c.len() <= 48
                && c.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        })
        .map(str::to_owned)
}

type Pending = Pin<Box<dyn Future<Output = Result<reqwest::Response, OpenAIError>> + Send>>;

impl tower::Service<HttpRequestFactory> for BoundedHttp {
    type Response = reqwest::Response;
    type Error = OpenAIError;
    type Future = Pending;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), OpenAIError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, factory: HttpRequestFactory) -> Pending {
        let client = self.client.clone();
        let max = self.max_body;
        Box::pin(async move {
            let request = factory.build().await?;
            let mut response = client.execute(request).await?;
            let status = response.status();
            let version = response.version();
            let headers = response.headers().clone();
            if response
                .content_length()
                .is_some_and(|n| n > u64::try_from(max).unwrap_or(u64::MAX))
            {
                return Err(boxed(HttpFailure::TooLarge(max)));
            }
            let mut body: Vec<u8> = Vec::new();
            while let Some(chunk) = response.chunk().await? {
                if body.len().saturating_add(chunk.len()) > max {
                    return Err(boxed(HttpFailure::TooLarge(max)));
                }
                body.extend_from_slice(&chunk);
            }
            if !status.is_success() {
                return Err(boxed(HttpFailure::Status {
                    status: status.as_u16(),
                    api_code: api_code(&body),
                }));
            }
            let mut rebuilt = http::Response::new(body);
            *rebuilt.status_mut() = status;
            *rebuilt.version_mut() = version;
            *rebuilt.headers_mut() = headers;
            Ok(reqwest::Response::from(rebuilt))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_codes_are_kept_only_when_they_are_identifiers() {
        let cases = [
            r#"{"error":{"message":"Incorrect API key provided: sk-abc","type":"invalid_request_error","param":null,"code":"invalid_api_key"}}"#,
            r#"{"error":{"message":"x","type":"server_error","param":null,"code":null}}"#,
            r#"{"error":{"message":"x","type":"Not An Id","code":"sk-secret key"}}"#,
            r#"<html>Bad gateway</html>"#,
            r#"{"detail":"nope"}"#,
        ];
        let out: Vec<Option<String>> = cases.iter().map(|c| api_code(c.as_bytes())).collect();
        assert_eq!(
            out,
            [
                Some("invalid_api_key".to_owned()),
                Some("server_error".to_owned()),
                None,
                None,
                None
            ]
        );
    }

    #[test]
    fn the_endpoint_sends_only_what_it_was_given() {
        let with_key =
            Endpoint::new("http://127.0.0.1:1/v1".to_owned(), Some("k-1".to_owned())).unwrap();
        let headers = with_key.headers();
        assert_eq!(headers.len(), 1);
        assert_eq!(headers[AUTHORIZATION], "Bearer k-1");
        assert!(headers[AUTHORIZATION].is_sensitive());
        assert_eq!(
            with_key.url("/chat/completions"),
            "http://127.0.0.1:1/v1/chat/completions"
        );
        assert!(!format!("{with_key:?}").contains("k-1"));
        let without = Endpoint::new("http://127.0.0.1:1/v1".to_owned(), None).unwrap();
        assert!(without.headers().is_empty());
        assert!(Endpoint::new("x".to_owned(), Some("a\nb".to_owned())).is_err());
    }
}
