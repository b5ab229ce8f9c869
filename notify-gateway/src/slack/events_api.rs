//! The optional Events API / interactivity endpoint (plain HTTP, for a reverse proxy in front).
//!
//! What it does: [`Endpoint::bind`] listens on the configured address and accepts `POST`s (any
//! path: point both the Event Subscriptions and the Interactivity request URLs at it). Every
//! request is checked with [`super::signing::verify`] on the **raw** body **before** anything
//! is parsed: a missing, malformed or wrong signature is answered 401 and audited
//! (`sender_rejected`, code `bad_signature`), a timestamp more than five minutes away 401 and
//! audited (`stale_timestamp`), a body over the limit 413. Then: `url_verification` is answered
//! with its `challenge`; an `event_callback` (JSON) or an interactivity `payload=` form body is
//! parsed ([`super::inbound`]) and queued for the channel's `poll` ([`super::Slack`]), and the
//! request is answered 200 **only once the gateway confirmed the event** (published and
//! acknowledged, or refused and audited), or 503 when the queue is full or the event was not
//! secured within [`ANSWER_WITHIN`], so Slack retries. A retry (`X-Slack-Retry-Num`) of an event already
//! confirmed is answered 200 at once and not published again (the channel remembers confirmed
//! dedup ids); a retry racing its first copy is published with the same `Nats-Msg-Id` and
//! dropped by JetStream.
//!
//! What it does not do: no TLS (terminate it in front), no slash commands or view
//! submissions (acknowledged and ignored), no `response_url` calls.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use audit::emit::AuditEmitter;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use protocol::message::{AuditEvent, ErrorCode};
use protocol::{ChannelName, CorrelationId};
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};

use super::Pushed;
use super::signing::{self, SigningError, SigningSecret, SlackHeaders};

/// How long a request waits for the gateway to secure its event before answering 503 (Slack
/// gives up after 3 s and retries).
pub const ANSWER_WITHIN: Duration = Duration::from_millis(2500);
/// How many events may wait for the gateway before requests are refused at once.
const QUEUE: usize = 64;

struct Shared {
    secret: SigningSecret,
    team_id: Option<String>,
    channel: ChannelName,
    audit: Option<AuditEmitter>,
    queue: mpsc::Sender<Pushed>,
}

/// A running endpoint; stops when dropped.
#[derive(Debug)]
pub struct Endpoint {
    addr: SocketAddr,
    queue: Mutex<Option<mpsc::Receiver<Pushed>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Endpoint {
    /// Listens on `addr` (port 0: a free one). `audit` receives the refused-signature rows
    /// (`None`: only logged).
    pub async fn bind(
        addr: SocketAddr,
        secret: SigningSecret,
        team_id: Option<String>,
        channel: ChannelName,
        audit: Option<AuditEmitter>,
    ) -> std::io::Result<Endpoint> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let (tx, rx) = mpsc::channel(QUEUE);
        let shared = Arc::new(Shared {
            secret,
            team_id,
            channel,
            audit,
            queue: tx,
        });
        let task = tokio::spawn(serve(listener, shared));
        Ok(Endpoint {
            addr,
            queue: Mutex::new(Some(rx)),
            task,
        })
    }

    /// Where it listens.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    pub(super) fn take_queue(&self) -> Option<mpsc::Receiver<Pushed>> {
        self.queue
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }
}

async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let Ok((tcp, _peer)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let shared = Arc::clone(&shared);
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let shared = Arc::clone(&shared);
                async move { Ok::<_, Infallible>(handle(req, &shared).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(TokioIo::new(tcp), service);
            let _ = tokio::time::timeout(Duration::from_secs(60), conn).await;
        });
    }
}

fn answer(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(content_type),
    );
    response
}

fn status(status: StatusCode) -> Response<Full<Bytes>> {
    answer(status, "text/plain", String::new())
}

fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

async fn handle(req: Request<Incoming>, shared: &Shared) -> Response<Full<Bytes>> {
    if req.method() != hyper::Method::POST {
        return status(StatusCode::METHOD_NOT_ALLOWED);
    }
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let timestamp = header("x-slack-request-timestamp");
    let signature = header("x-slack-signature");
    let content_type = header("content-type")
        .unwrap_or_default()
        .to_ascii_lowercase();
    let body = match Limited::new(req.into_body(), signing::MAX_BODY_BYTES)
        .collect()
        .await
    {
        Ok(b) => b.to_bytes(),
        Err(_too_large_or_cut) => return status(StatusCode::PAYLOAD_TOO_LARGE),
    };
    let headers = SlackHeaders {
        timestamp: timestamp.as_deref(),
        signature: signature.as_deref(),
    };
    if let Err(e) = signing::verify(&shared.secret, headers, &body, now_unix()) {
        return refuse(shared, &e).await;
    }
    let parsed = if content_type.starts_with("application/x-www-form-urlencoded") {
        form_urlencoded::parse(&body)
            .find(|(k, _)| k == "payload")
            .and_then(|(_, v)| serde_json::from_str::<Value>(&v).ok())
            .map(|p| super::inbound::parse_interaction(&p, shared.team_id.as_deref()))
    } else {
        match serde_json::from_slice::<Value>(&body) {
            Ok(v) if v.get("type").and_then(Value::as_str) == Some("url_verification") => {
                let challenge = v
                    .get("challenge")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .chars()
                    .take(256)
                    .collect();
                return answer(StatusCode::OK, "text/plain", challenge);
            }
            Ok(v) => Some(super::inbound::parse_event_callback(
                &v,
                shared.team_id.as_deref(),
            )),
            Err(_not_json) => None,
        }
    };
    let Some(Some((dedup_id, kind))) = parsed else {
        tracing::info!(
            code = "slack_request_malformed",
            "signed Slack request without an event; refused"
        );
        return status(StatusCode::BAD_REQUEST);
    };
    let (tx, rx) = oneshot::channel();
    let pushed = Pushed {
        dedup_id,
        kind,
        answer: tx,
    };
    if shared.queue.try_send(pushed).is_err() {
        tracing::warn!(
            code = "slack_gateway_busy",
            "Events API request refused: the gateway is not keeping up"
        );
        return status(StatusCode::SERVICE_UNAVAILABLE);
    }
    match tokio::time::timeout(ANSWER_WITHIN, rx).await {
        Ok(Ok(())) => status(StatusCode::OK),
        Ok(Err(_)) | Err(_) => status(StatusCode::SERVICE_UNAVAILABLE),
    }
}

async fn refuse(shared: &Shared, e: &SigningError) -> Response<Full<Bytes>> {
    let (code, http) = match e {
        SigningError::BodyTooLarge { .. } => ("body_too_large", StatusCode::PAYLOAD_TOO_LARGE),
        SigningError::Stale { .. } => ("stale_timestamp", StatusCode::UNAUTHORIZED),
        SigningError::EmptySecret | SigningError::ReplayCacheFull { .. } => {
            ("signing_unavailable", StatusCode::SERVICE_UNAVAILABLE)
        }
        _ => ("bad_signature", StatusCode::UNAUTHORIZED),
    };
    tracing::warn!(
        code,
        reason = e.code(),
        "Slack request refused before parsing"
    );
    if let Some(audit) = &shared.audit {
        let event = AuditEvent::SenderRejected {
            channel: shared.channel.clone(),
            platform_user: "unauthenticated".to_owned(),
            code: ErrorCode::from_static(code),
        };
        if let Err(e) = audit.emit(CorrelationId::random(), event).await {
            tracing::warn!(code = e.code(), error = %e, "could not audit a refused Slack request");
        }
    }
    status(http)
}
