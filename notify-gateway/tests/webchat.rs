//! The web chat end to end over real HTTP: the page server on a loopback port, the gateway's
//! loops, a real nats-server with our generated config, the gateway's SQLite state in a
//! tempdir. The "orchestrator" here is the test, publishing on CHAT_OUT and reading CHAT_IN.
#![cfg(feature = "web")]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use futures::StreamExt as _;
use notify_gateway::store::Store;
use notify_gateway::webchat::WebChat;
use notify_gateway::webchat::history::History;
use notify_gateway::webchat::token::WebToken;
use protocol::message::{
    AuditEvent, Button, ChatDecision, ChatIn, ChatOut, ChatRef, Effect, OutboundMessage,
    PlanMessage, PlanProposal, PlatformRef, ProposedStep,
};
use protocol::subject::stream;
use protocol::{
    ActionName, AgentName, ApprovalId, ChannelName, ChatUser, CorrelationId, Envelope, MessageId,
    PlanId, Principal, Subject, UnixMillis,
};
use serde_json::{Value, json};
use test_support::NatsServer;

const WAIT: Duration = Duration::from_secs(15);

struct Harness {
    server: NatsServer,
    _dir: tempfile::TempDir,
    db: PathBuf,
    token: WebToken,
    http: reqwest::Client,
}

/// One run of the gateway's web chat: the page server and (unless `serve_only`) the loops.
struct Gateway {
    base: String,
    host: String,
    stop: tokio::sync::watch::Sender<bool>,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
    loops: Option<tokio::task::JoinHandle<Result<(), notify_gateway::GatewayError>>>,
}

impl Gateway {
    async fn stop(self) {
        self.stop.send_replace(true);
        tokio::time::timeout(WAIT, self.server)
            .await
            .expect("the server stops")
            .unwrap()
            .unwrap();
        if let Some(loops) = self.loops {
            tokio::time::timeout(WAIT, loops)
                .await
                .expect("the loops stop")
                .unwrap()
                .unwrap();
        }
    }
}

/// An HTTP answer: status, headers, JSON body (Null if none).
#[derive(Debug)]
struct Answer {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: Value,
}

impl Answer {
    fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("")
    }
}

impl Harness {
    async fn start() -> Harness {
        let server = NatsServer::start(&["hue"]).await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("gateway.sqlite");
        let token = WebToken::load_or_create(&dir.path().join("web-token")).unwrap();
        Harness {
            server,
            _dir: dir,
            db,
            token,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(40))
                .build()
                .unwrap(),
        }
    }

    async fn gateway(&self) -> Gateway {
        self.start_gateway(true).await
    }

    async fn start_gateway(&self, loops: bool) -> Gateway {
        let chat = WebChat::new(
            ChannelName::new("web").unwrap(),
            "owner",
            History::open(&self.db).unwrap(),
        )
        .await
        .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let wait = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|s| *s).await;
        };
        let server = tokio::spawn(notify_gateway::webchat::http::serve(
            listener,
            chat.clone(),
            self.token.clone(),
            wait(stopped.clone()),
        ));
        let loops = if loops {
            let store = Store::open(&self.db).unwrap();
            let allow = chat.allowlist();
            let client = self.server.connect(&Principal::gateway()).await.unwrap();
            Some(tokio::spawn(notify_gateway::run(
                chat,
                allow,
                client,
                store,
                wait(stopped),
            )))
        } else {
            None
        };
        Gateway {
            base: format!("http://{addr}"),
            host: addr.to_string(),
            stop,
            server,
            loops,
        }
    }

    fn bearer(&self) -> String {
        format!("Bearer {}", self.token.expose())
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> Answer {
        let r = request.send().await.unwrap();
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        let bytes = r.bytes().await.unwrap();
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Answer {
            status,
            headers,
            body,
        }
    }

    async fn post(&self, gw: &Gateway, path: &str, body: &Value) -> Answer {
        self.send(
            self.http
                .post(format!("{}{path}", gw.base))
                .header("Authorization", self.bearer())
                .header("Content-Type", "application/json")
                .body(serde_json::to_vec(body).unwrap()),
        )
        .await
    }

    async fn say(&self, gw: &Gateway, client_id: &str, text: &str) -> Answer {
        self.post(
            gw,
            "/api/messages",
            &json!({"client_id": client_id, "text": text}),
        )
        .await
    }

    async fn press(&self, gw: &Gateway, message_id: &str, payload: &str) -> Answer {
        self.post(
            gw,
            "/api/press",
            &json!({"message_id": message_id, "payload": payload}),
        )
        .await
    }

    /// `GET /api/messages?after=<after>&wait_ms=<wait>`.
    async fn messages(&self, gw: &Gateway, after: u64, wait_ms: u64) -> Answer {
        self.send(
            self.http
                .get(format!(
                    "{}/api/messages?after={after}&wait_ms={wait_ms}",
                    gw.base
                ))
                .header("Authorization", self.bearer()),
        )
        .await
    }

    /// Waits until the history holds a message satisfying `f`.
    async fn until_message(&self, gw: &Gateway, f: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + WAIT;
        loop {
            let a = self.messages(gw, 0, 0).await;
            assert_eq!(a.status, 200, "{a:?}");
            if let Some(m) = a.body["messages"].as_array().unwrap().iter().find(|m| f(m)) {
                return m.clone();
            }
            assert!(Instant::now() < deadline, "timed out: {:#}", a.body);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn orchestrator(&self) -> jetstream::Context {
        jetstream::new(
            self.server
                .connect(&Principal::orchestrator())
                .await
                .unwrap(),
        )
    }

    async fn chat_in_count(&self) -> u64 {
        self.server
            .stream_state(stream::CHAT_IN)
            .await
            .unwrap()
            .messages
    }

    /// Reads (and acknowledges) what arrived on CHAT_IN, waiting until `n` arrived, then a
    /// little longer for any extra.
    async fn chat_in(&self, js: &jetstream::Context, n: usize) -> Vec<(String, Vec<u8>)> {
        let consumer: jetstream::consumer::PullConsumer = js
            .get_stream(stream::CHAT_IN)
            .await
            .unwrap()
            .get_consumer(stream::CHAT_IN_CONSUMER)
            .await
            .unwrap();
        let mut got = Vec::new();
        let deadline = Instant::now() + WAIT;
        while got.len() < n && Instant::now() < deadline {
            got.extend(fetch(&consumer, Duration::from_millis(500)).await);
        }
        got.extend(fetch(&consumer, Duration::from_millis(1000)).await);
        got
    }

    async fn publish_out<B: protocol::Body>(
        &self,
        js: &jetstream::Context,
        subject: Subject,
        body: B,
    ) {
        let e = Envelope::new(
            MessageId::random(),
            CorrelationId::random(),
            Principal::orchestrator(),
            UnixMillis::now(),
            body,
        );
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", e.id.to_string().as_str());
        js.publish_with_headers(String::from(subject), headers, e.encode().unwrap().into())
            .await
            .unwrap()
            .await
            .unwrap();
    }

    async fn gateway_audits(&self) -> Vec<AuditEvent> {
        let admin = jetstream::new(self.server.admin().await.unwrap());
        let mut s = admin.get_stream(stream::AUDIT).await.unwrap();
        let last = s.info().await.unwrap().state.last_sequence;
        let mut out = Vec::new();
        for seq in 1..=last {
            let Ok(m) = s.get_raw_message(seq).await else {
                continue;
            };
            if m.subject.as_str() == "audit.gateway" {
                out.push(Envelope::<AuditEvent>::decode(&m.payload).unwrap().body);
            }
        }
        out
    }
}

async fn fetch(
    consumer: &jetstream::consumer::PullConsumer,
    expires: Duration,
) -> Vec<(String, Vec<u8>)> {
    let mut batch = consumer
        .fetch()
        .max_messages(10)
        .expires(expires)
        .messages()
        .await
        .unwrap();
    let mut out = Vec::new();
    while let Some(m) = batch.next().await {
        let m = m.unwrap();
        m.ack().await.unwrap();
        out.push((m.subject.to_string(), m.payload.to_vec()));
    }
    out
}

fn web() -> ChannelName {
    ChannelName::new("web").unwrap()
}

fn web_chat() -> ChatRef {
    ChatRef {
        channel: web(),
        chat_id: PlatformRef::new("web").unwrap(),
    }
}

fn buttons() -> Vec<Button> {
    vec![
        Button {
            label: "Approve".into(),
            payload: "ap:0123456789".into(),
        },
        Button {
            label: "Reject".into(),
            payload: "rj:0123456789".into(),
        },
    ]
}

fn plan() -> PlanProposal {
    PlanProposal {
        plan_id: PlanId::from_bytes([1; 16]),
        approval_id: ApprovalId::from_bytes([2; 16]),
        chat: web_chat(),
        requested_by: ChatUser::new("web:owner").unwrap(),
        summary: "Bedtime".into(),
        steps: vec![ProposedStep {
            agent: AgentName::new("hue").unwrap(),
            action: ActionName::new("room.set").unwrap(),
            params: json!({"room": "Kitchen", "on": false}),
            why: "Kitchen <off>".into(),
            effect: Effect::Change,
        }],
        buttons: buttons(),
        short_code: "4821".into(),
        expires_at: UnixMillis(0),
    }
}

fn out(key: &str, text: &str, buttons: Vec<Button>) -> OutboundMessage {
    OutboundMessage {
        chat: web_chat(),
        key: key.into(),
        text: text.into(),
        buttons,
    }
}

fn texts(msgs: &[(String, Vec<u8>)]) -> Vec<String> {
    msgs.iter()
        .map(|(subject, payload)| {
            assert_eq!(subject, "chat.in.web");
            let ChatIn::Text(t) = Envelope::<ChatIn>::decode(payload).unwrap().body;
            assert_eq!(t.user.as_str(), "web:owner");
            assert_eq!(t.chat.chat_id.as_str(), "web");
            t.text
        })
        .collect()
}

fn assert_security_headers(a: &Answer) {
    let h = |name: &str| {
        a.headers
            .get(name)
            .unwrap_or_else(|| panic!("no {name} on {a:?}"))
            .to_str()
            .unwrap()
            .to_owned()
    };
    assert_eq!(
        h("content-security-policy"),
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
    );
    assert_eq!(h("x-content-type-options"), "nosniff");
    assert_eq!(h("referrer-policy"), "no-referrer");
    assert_eq!(h("cache-control"), "no-store");
    assert!(a.headers.get("set-cookie").is_none());
}

/// An error answer is exactly `{"error": {"code", "correlation_id"}}`.
fn assert_error(a: &Answer, status: u16, code: &str) {
    assert_eq!(a.status, status, "{a:?}");
    assert_eq!(a.code(), code, "{a:?}");
    let e = a.body["error"].as_object().unwrap();
    assert_eq!(e.len(), 2, "{a:?}");
    assert!(!e["correlation_id"].as_str().unwrap().is_empty());
    assert_eq!(a.body.as_object().unwrap().len(), 1);
    assert_security_headers(a);
}

#[tokio::test]
async fn the_page_is_static_with_strict_headers_and_only_for_this_host() {
    let h = Harness::start().await;
    let gw = h.gateway().await;
    for (path, kind) in [
        ("/", "text/html"),
        ("/app.js", "text/javascript"),
        ("/app.css", "text/css"),
    ] {
        let r = h
            .http
            .get(format!("{}{path}", gw.base))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200, "{path}");
        let a = Answer {
            status: 200,
            headers: r.headers().clone(),
            body: Value::Null,
        };
        assert_security_headers(&a);
        assert!(
            a.headers["content-type"]
                .to_str()
                .unwrap()
                .starts_with(kind)
        );
        let text = r.text().await.unwrap();
        assert!(
            !text.contains("http://") && !text.contains("https://"),
            "{path} loads nothing external"
        );
        if path == "/" {
            assert!(text.contains(r#"<script src="/app.js" defer></script>"#));
            assert_eq!(text.matches("<script").count(), 1, "no inline script");
        }
        if path == "/app.js" {
            assert!(
                !text.contains("innerHTML"),
                "messages are set with textContent only"
            );
            assert!(text.contains("textContent"));
        }
    }
    // Other names for this server, every loopback spelling.
    let port = gw.host.rsplit(':').next().unwrap();
    for host in [format!("localhost:{port}"), format!("[::1]:{port}")] {
        let a = h
            .send(
                h.http
                    .get(format!("{}/", gw.base))
                    .header("Host", host.as_str()),
            )
            .await;
        assert_eq!(a.status, 200, "{host}");
    }
    // DNS rebinding: a page on another name that resolves to 127.0.0.1.
    for host in [
        format!("evil.example:{port}"),
        "127.0.0.1".to_owned(),
        "127.0.0.1:1".to_owned(),
    ] {
        let a = h
            .send(
                h.http
                    .get(format!("{}/", gw.base))
                    .header("Host", host.as_str()),
            )
            .await;
        assert_error(&a, 421, "host_not_allowed");
        let a = h
            .send(
                h.http
                    .get(format!("{}/api/messages", gw.base))
                    .header("Host", host.as_str())
                    .header("Authorization", h.bearer()),
            )
            .await;
        assert_error(&a, 421, "host_not_allowed");
    }
    let a = h.send(h.http.get(format!("{}/nope", gw.base))).await;
    assert_error(&a, 404, "not_found");
    gw.stop().await;
}

#[tokio::test]
async fn without_the_token_nothing_is_read_or_published() {
    let h = Harness::start().await;
    let gw = h.gateway().await;
    let body =
        serde_json::to_vec(&json!({"client_id": "0123456789abcdef", "text": "start bedtime"}))
            .unwrap();
    let wrong = format!("Bearer {}", "0".repeat(64));
    let almost = format!("Bearer {}", &h.token.expose()[..63]);
    for auth in [
        None,
        Some(wrong.as_str()),
        Some(almost.as_str()),
        Some("Basic b3duZXI6eA=="),
    ] {
        let mut post = h
            .http
            .post(format!("{}/api/messages", gw.base))
            .header("Content-Type", "application/json")
            .body(body.clone());
        let mut get = h.http.get(format!("{}/api/messages", gw.base));
        let mut press = h
            .http
            .post(format!("{}/api/press", gw.base))
            .header("Content-Type", "application/json")
            .body(r#"{"message_id":"m1","payload":"ap:1"}"#);
        if let Some(auth) = auth {
            post = post.header("Authorization", auth);
            get = get.header("Authorization", auth);
            press = press.header("Authorization", auth);
        }
        for request in [post, get, press] {
            let a = h.send(request).await;
            assert_error(&a, 401, "unauthorized");
            assert_eq!(a.headers["www-authenticate"], "Bearer");
        }
    }
    // The token in the URL (query) is not a credential either.
    let a = h
        .send(h.http.get(format!(
            "{}/api/messages?token={}",
            gw.base,
            h.token.expose()
        )))
        .await;
    assert_error(&a, 401, "unauthorized");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(h.chat_in_count().await, 0, "nothing published");
    gw.stop().await;
}

#[tokio::test]
async fn a_foreign_origin_cannot_post() {
    let h = Harness::start().await;
    let gw = h.gateway().await;
    for origin in [
        "http://evil.example",
        "null",
        "https://127.0.0.1",
        &format!("http://localhost:{}", gw.host.rsplit(':').next().unwrap()),
    ] {
        let a = h
            .send(
                h.http
                    .post(format!("{}/api/messages", gw.base))
                    .header("Authorization", h.bearer())
                    .header("Origin", origin)
                    .header("Content-Type", "application/json")
                    .body(r#"{"client_id":"0123456789abcdef","text":"hi"}"#),
            )
            .await;
        assert_error(&a, 403, "origin_not_allowed");
    }
    assert_eq!(h.chat_in_count().await, 0);
    // Its own origin is fine.
    let a = h
        .send(
            h.http
                .post(format!("{}/api/messages", gw.base))
                .header("Authorization", h.bearer())
                .header("Origin", format!("http://{}", gw.host))
                .header("Content-Type", "application/json")
                .body(r#"{"client_id":"0123456789abcdef","text":"hi"}"#),
        )
        .await;
    assert_eq!(a.status, 202, "{a:?}");
    gw.stop().await;
}

#[tokio::test]
async fn a_text_is_published_once_and_answered_after_the_ack() {
    let h = Harness::start().await;
    let gw = h.gateway().await;
    let js = h.orchestrator().await;
    let a = h
        .say(&gw, "c0ffee00-0000-4000-8000-000000000001", "start bedtime")
        .await;
    assert_eq!(a.status, 202, "{a:?}");
    assert_eq!(
        a.body,
        json!({"event_id": "web-c0ffee00-0000-4000-8000-000000000001"})
    );
    assert_security_headers(&a);
    // Answered only after JetStream acknowledged: the stream already holds it.
    assert_eq!(h.chat_in_count().await, 1);
    // A browser retry with the same client id: answered, not published again.
    let again = h
        .say(&gw, "c0ffee00-0000-4000-8000-000000000001", "start bedtime")
        .await;
    assert_eq!(again.status, 202, "{again:?}");
    assert_eq!(h.chat_in_count().await, 1);
    let got = h.chat_in(&js, 1).await;
    assert_eq!(texts(&got), ["start bedtime"]);
    let ChatIn::Text(t) = Envelope::<ChatIn>::decode(&got[0].1).unwrap().body;
    assert_eq!(
        t.platform_message_id.as_str(),
        "c0ffee00-0000-4000-8000-000000000001"
    );
    assert_eq!(t.chat.channel.as_str(), "web");
    // The page shows it once.
    let all = h.messages(&gw, 0, 0).await;
    let mine: Vec<&Value> = all.body["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["author"] == "user")
        .collect();
    assert_eq!(mine.len(), 1);
    assert_eq!(mine[0]["text"], "start bedtime");
    gw.stop().await;
}

#[tokio::test]
async fn malformed_and_oversized_requests_are_refused_with_codes() {
    let h = Harness::start().await;
    let gw = h.gateway().await;
    let big = "x".repeat(20 * 1024);
    let a = h.say(&gw, "0123456789abcdef", &big).await;
    assert_error(&a, 413, "body_too_large");
    let a = h.say(&gw, "short", "hi").await;
    assert_error(&a, 400, "client_id_invalid");
    let a = h.say(&gw, "0123456789abcdef", "bell\u{7}").await;
    assert_error(&a, 400, "message_invalid");
    let a = h.say(&gw, "0123456789abcdef", "  ").await;
    assert_error(&a, 400, "text_empty");
    let a = h
        .post(
            &gw,
            "/api/messages",
            &json!({"client_id": "0123456789abcdef", "text": "hi", "sender": "mallory"}),
        )
        .await;
    assert_error(&a, 400, "request_invalid");
    let a = h
        .send(
            h.http
                .post(format!("{}/api/messages", gw.base))
                .header("Authorization", h.bearer())
                .header("Content-Type", "text/plain")
                .body(r#"{"client_id":"0123456789abcdef","text":"hi"}"#),
        )
        .await;
    assert_error(&a, 415, "content_type_invalid");
    let a = h.press(&gw, "m1", "a b").await;
    assert_error(&a, 400, "button_payload_invalid");
    let a = h.press(&gw, "m1/../x", "ap:1").await;
    assert_error(&a, 400, "message_id_invalid");
    let a = h
        .send(
            h.http
                .get(format!("{}/api/messages?after=-1", gw.base))
                .header("Authorization", h.bearer()),
        )
        .await;
    assert_error(&a, 400, "request_invalid");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(h.chat_in_count().await, 0, "nothing published");
    gw.stop().await;
}

#[tokio::test]
async fn a_card_shows_buttons_a_press_becomes_a_decision_and_an_unshown_one_is_refused() {
    let h = Harness::start().await;
    let gw = h.gateway().await;
    let js = h.orchestrator().await;
    h.publish_out(
        &js,
        Subject::plan_proposed(&web()),
        PlanMessage::Proposed(plan()),
    )
    .await;
    let card = h.until_message(&gw, |m| m["author"] == "assistant").await;
    let text = card["text"].as_str().unwrap();
    assert!(text.starts_with("Plan: Bedtime\n"), "{text}");
    assert!(text.contains("1. hue room.set (changes)"), "{text}");
    assert!(
        text.contains(r#"Params: {"on":false,"room":"Kitchen"}"#),
        "{text}"
    );
    assert!(
        text.contains("Why: Kitchen <off>"),
        "plain text, unescaped: {text}"
    );
    assert_eq!(
        card["buttons"],
        json!([
            {"label": "Approve", "payload": "ap:0123456789"},
            {"label": "Reject", "payload": "rj:0123456789"}
        ])
    );
    let card_id = card["id"].as_str().unwrap().to_owned();

    // A press of a payload the card does not show: refused, audited, nothing published.
    let forged = h.press(&gw, &card_id, "ap:9999999999").await;
    assert_error(&forged, 409, "button_not_shown");
    let elsewhere = h.press(&gw, "m999", "ap:0123456789").await;
    assert_error(&elsewhere, 409, "button_not_shown");
    let refused: Vec<AuditEvent> = h
        .gateway_audits()
        .await
        .into_iter()
        .filter(|e| e.kind() == "decision_refused")
        .collect();
    assert_eq!(refused.len(), 2, "{refused:?}");
    let AuditEvent::DecisionRefused { by, code } = &refused[0] else {
        unreachable!()
    };
    assert_eq!(by.as_str(), "web:owner");
    assert_eq!(code.as_str(), "button_not_shown");
    assert_eq!(h.chat_in_count().await, 0);

    // Approve: published on chat.decision.web, answered after the ack.
    let a = h.press(&gw, &card_id, "ap:0123456789").await;
    assert_eq!(a.status, 202, "{a:?}");
    assert_eq!(h.chat_in_count().await, 1);
    let got = h.chat_in(&js, 1).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].0, "chat.decision.web");
    let ChatDecision::Button(b) = Envelope::<ChatDecision>::decode(&got[0].1).unwrap().body else {
        panic!("not a button press");
    };
    assert_eq!(b.payload, "ap:0123456789");
    assert_eq!(b.user.as_str(), "web:owner");
    assert_eq!(b.chat.chat_id.as_str(), "web");
    assert_eq!(b.message_ref.unwrap().as_str(), card_id);
    assert_eq!(
        a.body["event_id"].as_str().unwrap(),
        format!("web-{}", b.platform_ref.as_str())
    );

    // An edit that removes the buttons: the same message changes, and its old buttons are
    // refused from now on.
    let before = h.messages(&gw, 0, 0).await.body["version"]
        .as_u64()
        .unwrap();
    h.publish_out(
        &js,
        Subject::chat_out(&web()),
        ChatOut::Update(out(
            &ApprovalId::from_bytes([2; 16]).to_string(),
            "Approved. Running…",
            vec![],
        )),
    )
    .await;
    let edited = h
        .until_message(&gw, |m| {
            m["id"] == card_id.as_str() && m["text"] == "Approved. Running…"
        })
        .await;
    assert!(edited["version"].as_u64().unwrap() > before);
    assert_eq!(edited["buttons"], json!([]));
    let late = h.press(&gw, &card_id, "ap:0123456789").await;
    assert_error(&late, 409, "button_not_shown");
    assert!(h.chat_in(&js, 0).await.is_empty(), "nothing more published");
    gw.stop().await;
}

#[tokio::test]
async fn the_long_poll_returns_promptly_when_a_message_arrives() {
    let h = Harness::start().await;
    let gw = h.gateway().await;
    let js = h.orchestrator().await;
    // Nothing new: an empty answer after the wait asked for.
    let start = Instant::now();
    let a = h.messages(&gw, 0, 300).await;
    assert_eq!(a.status, 200);
    assert_eq!(a.body, json!({"version": 0, "messages": []}));
    assert!(start.elapsed() >= Duration::from_millis(250));
    assert_security_headers(&a);

    // A long poll (the full 25 s) is answered as soon as a message is posted.
    let waiting = {
        let http = h.http.clone();
        let url = format!("{}/api/messages?after=0", gw.base);
        let auth = h.bearer();
        tokio::spawn(async move {
            let start = Instant::now();
            let r = http
                .get(url)
                .header("Authorization", auth)
                .send()
                .await
                .unwrap();
            let body: Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
            (start.elapsed(), body)
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!waiting.is_finished(), "still waiting");
    h.publish_out(
        &js,
        Subject::chat_out(&web()),
        ChatOut::Post(out("note-1", "Lights off", vec![])),
    )
    .await;
    let (elapsed, body) = tokio::time::timeout(WAIT, waiting).await.unwrap().unwrap();
    assert!(elapsed < Duration::from_secs(5), "took {elapsed:?}");
    assert_eq!(body["messages"].as_array().unwrap().len(), 1, "{body:#}");
    assert_eq!(body["messages"][0]["text"], "Lights off");
    assert_eq!(body["messages"][0]["author"], "assistant");
    assert_eq!(body["version"], body["messages"][0]["version"]);
    // After that version, nothing.
    let v = body["version"].as_u64().unwrap();
    let a = h.messages(&gw, v, 100).await;
    assert_eq!(a.body["messages"], json!([]));
    assert_eq!(a.body["version"], v);

    // Long polls are bounded: the 17th open one is refused with a code.
    let mut open = Vec::new();
    for _ in 0..notify_gateway::webchat::http::MAX_POLLS {
        let http = h.http.clone();
        let url = format!("{}/api/messages?after={v}&wait_ms=3000", gw.base);
        let auth = h.bearer();
        open.push(tokio::spawn(async move {
            http.get(url)
                .header("Authorization", auth)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }));
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    let a = h.messages(&gw, v, 100).await;
    assert_error(&a, 503, "too_many_polls");
    for p in open {
        assert_eq!(p.await.unwrap(), 200);
    }
    assert_eq!(h.messages(&gw, v, 0).await.status, 200, "free again");
    gw.stop().await;
}

#[tokio::test]
async fn a_restart_keeps_the_history_and_neither_loses_nor_doubles() {
    let h = Harness::start().await;
    let js = h.orchestrator().await;

    // The page server is up but the gateway's loops are not: not secured in time, so the page
    // is told to retry (503, with a code).
    let gw = h.start_gateway(false).await;
    let a = h.say(&gw, "retry-me-0001", "one").await;
    assert_error(&a, 503, "not_secured");
    assert_eq!(h.chat_in_count().await, 0);
    gw.stop().await;

    let gw = h.gateway().await;
    // The retry with the same client id: published once.
    let a = h.say(&gw, "retry-me-0001", "one").await;
    assert_eq!(a.status, 202, "{a:?}");
    h.publish_out(
        &js,
        Subject::plan_proposed(&web()),
        PlanMessage::Proposed(plan()),
    )
    .await;
    h.publish_out(
        &js,
        Subject::chat_out(&web()),
        ChatOut::Post(out("note-1", "Lights off", vec![])),
    )
    .await;
    h.until_message(&gw, |m| m["text"] == "Lights off").await;
    let before = h.messages(&gw, 0, 0).await.body;
    assert_eq!(
        before["messages"].as_array().unwrap().len(),
        3,
        "{before:#}"
    );
    gw.stop().await;

    let gw = h.gateway().await;
    // Give the outbound loop time to redeliver anything it had not acknowledged.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let after = h.messages(&gw, 0, 0).await.body;
    assert_eq!(after, before, "the same history, nothing doubled");
    // New messages continue the versions; the card's buttons still work.
    let card = before["messages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["author"] == "assistant" && !m["buttons"].as_array().unwrap().is_empty())
        .unwrap()
        .clone();
    let a = h
        .press(&gw, card["id"].as_str().unwrap(), "rj:0123456789")
        .await;
    assert_eq!(a.status, 202, "{a:?}");
    let a = h.say(&gw, "after-restart-1", "two").await;
    assert_eq!(a.status, 202, "{a:?}");
    let v = before["version"].as_u64().unwrap();
    let newer = h.messages(&gw, v, 0).await.body;
    assert_eq!(newer["messages"].as_array().unwrap().len(), 1);
    assert_eq!(newer["messages"][0]["text"], "two");
    assert!(newer["version"].as_u64().unwrap() > v);

    let got = h.chat_in(&js, 3).await;
    let subjects: Vec<&str> = got.iter().map(|(s, _)| s.as_str()).collect();
    assert_eq!(
        subjects,
        ["chat.in.web", "chat.decision.web", "chat.in.web"],
        "one, the press, two: nothing lost, nothing doubled"
    );
    gw.stop().await;
}

/// Kills the gateway binary on drop (a failed assertion must not leave it running).
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn the_binary_creates_the_token_serves_the_page_and_never_logs_the_token() {
    use std::os::unix::fs::PermissionsExt as _;
    let h = Harness::start().await;
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let token_file = dir.path().join("secrets-web-token");
    let config = dir.path().join("gateway.toml");
    std::fs::write(
        &config,
        format!(
            "nats_url = \"{}\"\nhome = \"{}\"\nstate_db = \"{}\"\n[web]\nlisten = \"127.0.0.1:{port}\"\ntoken_file = \"{}\"\n",
            h.server.url(),
            h.server.layout().root().display(),
            dir.path().join("gateway.sqlite").display(),
            token_file.display(),
        ),
    )
    .unwrap();
    let log = dir.path().join("gateway.log");
    let _child = Child(
        std::process::Command::new(env!("CARGO_BIN_EXE_notify-gateway"))
            .arg("--config")
            .arg(&config)
            .env("RUST_LOG", "debug")
            .stdout(std::fs::File::create(dir.path().join("stdout")).unwrap())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    let base = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + WAIT;
    loop {
        if let Ok(r) = h.http.get(format!("{base}/")).send().await
            && r.status().as_u16() == 200
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the page never came up:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mode = std::fs::metadata(&token_file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let token = std::fs::read_to_string(&token_file)
        .unwrap()
        .trim()
        .to_owned();
    assert_eq!(token.len(), 64);

    // The page works with the token from the file: a text is published.
    let r = h
        .http
        .post(format!("{base}/api/messages"))
        .header("Authorization", format!("Bearer {token}"))
        .header("Content-Type", "application/json")
        .body(r#"{"client_id":"from-the-binary-1","text":"start bedtime"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 202);
    assert_eq!(h.chat_in_count().await, 1);

    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("web chat listening"), "{text}");
    assert!(
        text.contains(&format!("http://127.0.0.1:{port}/")),
        "{text}"
    );
    assert!(text.contains(&token_file.display().to_string()), "{text}");
    assert!(!text.contains(&token), "the token is never logged:\n{text}");
    assert!(!text.contains(&token[..16]), "not even part of it:\n{text}");
}
