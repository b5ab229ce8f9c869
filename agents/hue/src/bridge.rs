//! The imperative shell: HTTPS requests to the bridge's CLIP v2 API.
//!
//! One `reqwest` client with the pinned TLS configuration ([`crate::tls`]), no proxy from the
//! environment (only the configured egress proxy, for everything), no redirects, a timeout on
//! every request, bounded response bodies, and pacing under the bridge's documented limits
//! (about 10 light commands and 1 group command per second).

use std::fmt;
use std::time::Duration;

use agent_runtime::{ActionError, AgentError};
use protocol::manifest::HostPort;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio::sync::Mutex;
use tokio::time::Instant;

use crate::clip::is_resource_id;
use crate::tls::{self, Pin};

/// The header carrying the application key.
pub const KEY_HEADER: &str = "hue-application-key";
/// Largest response body read, in bytes (a full resource dump of a large home is ~1 MiB).
const MAX_RESPONSE: usize = 2 * 1024 * 1024;
/// Most resources of one type read.
const MAX_RESOURCES: usize = 2000;
/// Spacing of light commands (the bridge takes about 10 per second).
pub const LIGHT_INTERVAL: Duration = Duration::from_millis(100);
/// Spacing of group commands and scene recalls (about 1 per second).
pub const GROUP_INTERVAL: Duration = Duration::from_millis(1000);
/// Longest description from the bridge repeated in an error, in characters.
const MAX_DESCRIPTION: usize = 200;

/// The application key (a secret): its `Debug` is redacted.
#[derive(Clone)]
pub struct ApplicationKey(String);

impl ApplicationKey {
    /// Checks a key read from its file: surrounding whitespace is dropped; 1 to 128 visible
    /// ASCII characters remain.
    pub fn parse(text: &str) -> Option<Self> {
        let key = text.trim();
        let ok = !key.is_empty() && key.len() <= 128 && key.bytes().all(|b| b.is_ascii_graphic());
        ok.then(|| ApplicationKey(key.to_owned()))
    }
}

impl fmt::Debug for ApplicationKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApplicationKey(<redacted>)")
    }
}

/// Why a bridge request failed.
#[derive(Debug)]
pub enum BridgeError {
    /// No connection (refused, unreachable, reset).
    Unreachable,
    /// No answer in time.
    Timeout(Duration),
    /// The bridge presented another certificate than the pinned one.
    PinMismatch,
    /// 403: the application key is wrong or was revoked.
    Unauthorized,
    /// 404: the resource does not exist.
    NotFound,
    /// 429: over the bridge's rate limit.
    RateLimited,
    /// Another status, or errors in a 2xx answer: the bridge's first description.
    Refused(u16, String),
    /// The answer is not a CLIP v2 envelope, or too large.
    BadResponse(&'static str),
}

impl BridgeError {
    /// The action error a handler returns.
    pub fn into_action_error(self) -> ActionError {
        match self {
            BridgeError::Unreachable => {
                ActionError::new("bridge_unreachable", "could not connect to the Hue bridge")
            }
            BridgeError::Timeout(d) => ActionError::new(
                "bridge_timeout",
                format!("the Hue bridge did not answer within {} ms", d.as_millis()),
            ),
            BridgeError::PinMismatch => ActionError::new(
                "bridge_tls_pin_mismatch",
                "the bridge presented a certificate other than the pinned one; nothing was sent",
            ),
            BridgeError::Unauthorized => ActionError::new(
                "bridge_unauthorized",
                "the bridge refused the application key (pair again)",
            ),
            BridgeError::NotFound => {
                ActionError::new("not_found", "the bridge has no such resource")
            }
            BridgeError::RateLimited => ActionError::new(
                "bridge_rate_limited",
                "the bridge is over its command rate; try again in a moment",
            ),
            BridgeError::Refused(status, description) => ActionError::new(
                "bridge_error",
                format!("the bridge answered {status}: {description}"),
            ),
            BridgeError::BadResponse(what) => {
                ActionError::new("bridge_bad_response", format!("the bridge answered {what}"))
            }
        }
    }
}

impl From<BridgeError> for ActionError {
    fn from(e: BridgeError) -> Self {
        e.into_action_error()
    }
}

/// Which pacing a command falls under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pace {
    /// A light command.
    Light,
    /// A grouped light command or a scene recall.
    Group,
}

/// Runs commands of one kind one at a time, each starting at least `interval` after the
/// previous one finished (so the bridge sees them at least `interval` apart, whatever the
/// network does to each), waiters in order.
#[derive(Debug)]
struct Pacer {
    interval: Duration,
    next: Mutex<Option<Instant>>,
}

impl Pacer {
    fn new(interval: Duration) -> Self {
        Pacer {
            interval,
            next: Mutex::new(None),
        }
    }

    async fn run<T>(&self, command: impl Future<Output = T>) -> T {
        let mut next = self.next.lock().await;
        if let Some(at) = *next {
            tokio::time::sleep_until(at).await;
        }
        let out = command.await;
        *next = Some(Instant::now() + self.interval);
        out
    }
}

#[derive(Deserialize)]
struct ErrorItem {
    #[serde(default)]
    description: String,
}

#[derive(Deserialize)]
struct Envelope {
    #[serde(default)]
    errors: Vec<ErrorItem>,
    #[serde(default)]
    data: Vec<Value>,
}

/// A client for one bridge.
#[derive(Debug)]
pub struct Bridge {
    http: reqwest::Client,
    base: String,
    key: ApplicationKey,
    timeout: Duration,
    lights: Pacer,
    groups: Pacer,
}

impl Bridge {
    /// A client for the bridge at `address`, trusting only the certificate `pin`, sending
    /// everything through `egress_proxy` if given.
    pub fn new(
        address: &HostPort,
        pin: Pin,
        key: ApplicationKey,
        timeout: Duration,
        egress_proxy: Option<&str>,
    ) -> Result<Self, AgentError> {
        let tls = tls::client_config(pin)
            .map_err(|e| AgentError::new("tls_config_invalid", e.to_string()))?;
        let mut builder = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(timeout)
            .connect_timeout(timeout)
            .pool_max_idle_per_host(2)
            .http1_only()
            .user_agent(concat!("assistant-agent-hue/", env!("CARGO_PKG_VERSION")));
        if let Some(proxy) = egress_proxy {
            let proxy = reqwest::Proxy::all(proxy)
                .map_err(|e| AgentError::new("egress_proxy_invalid", e.to_string()))?;
            builder = builder.proxy(proxy);
        }
        let http = builder
            .build()
            .map_err(|e| AgentError::new("http_client_unavailable", e.to_string()))?;
        Ok(Bridge {
            http,
            base: format!("https://{address}/clip/v2/resource"),
            key,
            timeout,
            lights: Pacer::new(LIGHT_INTERVAL),
            groups: Pacer::new(GROUP_INTERVAL),
        })
    }

    /// Every resource of type `rtype` that parses as `T` (others are skipped).
    pub async fn list<T: DeserializeOwned>(
        &self,
        rtype: &'static str,
    ) -> Result<Vec<T>, BridgeError> {
        let request = self.http.get(format!("{}/{rtype}", self.base));
        let data = self.send(request).await?;
        Ok(data
            .into_iter()
            .take(MAX_RESOURCES)
            .filter_map(|v| serde_json::from_value(v).ok())
            .collect())
    }

    /// One resource by id.
    pub async fn get<T: DeserializeOwned>(
        &self,
        rtype: &'static str,
        id: &str,
    ) -> Result<Option<T>, BridgeError> {
        if !is_resource_id(id) {
            return Err(BridgeError::NotFound);
        }
        let request = self.http.get(format!("{}/{rtype}/{id}", self.base));
        let data = self.send(request).await?;
        Ok(data
            .into_iter()
            .next()
            .and_then(|v| serde_json::from_value(v).ok()))
    }

    /// `PUT <rtype>/<id>` with `body`, paced.
    pub async fn put(
        &self,
        rtype: &'static str,
        id: &str,
        body: &Value,
        pace: Pace,
    ) -> Result<(), BridgeError> {
        if !is_resource_id(id) {
            return Err(BridgeError::NotFound);
        }
        let request = self
            .http
            .put(format!("{}/{rtype}/{id}", self.base))
            .header("content-type", "application/json")
            .body(body.to_string());
        let pacer = match pace {
            Pace::Light => &self.lights,
            Pace::Group => &self.groups,
        };
        pacer.run(self.send(request)).await.map(|_data| ())
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> Result<Vec<Value>, BridgeError> {
        let mut response = request
            .header(KEY_HEADER, &self.key.0)
            .send()
            .await
            .map_err(|e| self.transport(&e))?;
        let status = response.status().as_u16();
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| self.transport(&e))? {
            if body.len() + chunk.len() > MAX_RESPONSE {
                return Err(BridgeError::BadResponse("with a body over the size limit"));
            }
            body.extend_from_slice(&chunk);
        }
        let envelope: Option<Envelope> = serde_json::from_slice(&body).ok();
        let description = envelope
            .as_ref()
            .and_then(|e| e.errors.first())
            .map(|e| {
                e.description
                    .chars()
                    .take(MAX_DESCRIPTION)
                    .collect::<String>()
            })
            .unwrap_or_default();
        match status {
            403 => Err(BridgeError::Unauthorized),
            404 => Err(BridgeError::NotFound),
            429 => Err(BridgeError::RateLimited),
            200..=299 => match envelope {
                None => Err(BridgeError::BadResponse(
                    "with something other than CLIP v2 JSON",
                )),
                Some(e) if !e.errors.is_empty() => Err(BridgeError::Refused(status, description)),
                Some(e) => Ok(e.data),
            },
            _ => Err(BridgeError::Refused(status, description)),
        }
    }

    fn transport(&self, e: &reqwest::Error) -> BridgeError {
        if tls::is_pin_mismatch(e) {
            BridgeError::PinMismatch
        } else if e.is_timeout() {
            BridgeError::Timeout(self.timeout)
        } else {
            BridgeError::Unreachable
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_visible_ascii_and_never_shown() {
        let key = ApplicationKey::parse("  a4e08834-0893-4013-b646-738582ec15c9\n").unwrap();
        assert_eq!(key.0, "a4e08834-0893-4013-b646-738582ec15c9");
        assert_eq!(format!("{key:?}"), "ApplicationKey(<redacted>)");
        for bad in [
            "",
            "   ",
            "two words",
            "tab\there",
            &"k".repeat(129),
            "naïve",
        ] {
            assert!(ApplicationKey::parse(bad).is_none(), "{bad:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn pacing_spaces_commands_from_the_end_of_the_previous_one() {
        let pacer = std::sync::Arc::new(Pacer::new(Duration::from_millis(100)));
        let start = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..5 {
            let pacer = std::sync::Arc::clone(&pacer);
            // Each command takes 30 ms (its round trip).
            tasks.push(tokio::spawn(async move {
                pacer
                    .run(async {
                        let begun = start.elapsed();
                        tokio::time::sleep(Duration::from_millis(30)).await;
                        begun
                    })
                    .await
            }));
        }
        let mut begun = Vec::new();
        for t in tasks {
            begun.push(t.await.unwrap().as_millis());
        }
        // The first goes at once, then one 100 ms after the previous one finished.
        assert_eq!(begun, [0, 130, 260, 390, 520]);
        tokio::time::sleep(Duration::from_secs(1)).await;
        let later = Instant::now();
        pacer.run(async {}).await;
        assert_eq!(
            later.elapsed(),
            Duration::ZERO,
            "an idle pacer does not wait"
        );
    }
}
