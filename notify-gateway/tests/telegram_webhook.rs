//! Telegram webhook mode against the Bot API double (which POSTs updates to the webhook, one at
//! a time, retrying until a 2xx) and a real nats-server: registration, delivery answered only
//! once secured, SV-02 (a request without or with a wrong secret is refused and publishes
//! nothing), a restart that loses nothing, and long polling taking over again.
#![cfg(feature = "telegram")]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use futures::StreamExt as _;
use notify_gateway::inbound::Allowlist;
use notify_gateway::store::Store;
use notify_gateway::telegram::{BotToken, Telegram};
use notify_gateway::telegram_webhook::{WebhookSecret, webhook};
use protocol::message::ChatIn;
use protocol::subject::stream;
use protocol::{ChannelName, Envelope, Principal};
use test_support::NatsServer;
use test_support::fake_telegram::{FakeTelegram, TOKEN};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

const ALICE: i64 = 42;
const WAIT: Duration = Duration::from_secs(20);

struct Running {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    async fn stop(self) {
        let _ = self.stop.send(());
        tokio::time::timeout(WAIT, self.task)
            .await
            .expect("the gateway stops")
            .unwrap();
    }
}

/// A gateway in webhook mode listening on `addr` (a free port if `None`); returns its address.
async fn webhook_gateway(
    server: &NatsServer,
    tg: &FakeTelegram,
    db: &std::path::Path,
    addr: Option<SocketAddr>,
) -> (Running, SocketAddr) {
    let listener = tokio::net::TcpListener::bind(addr.unwrap_or(([127, 0, 0, 1], 0).into()))
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let public = url::Url::parse(&format!("http://{addr}/tg-hook")).unwrap();
    let (inbox, hook) = webhook(public, WebhookSecret::random().unwrap());
    let channel = Telegram::new(
        &BotToken::new(TOKEN),
        Some(url::Url::parse(&tg.api_url()).unwrap()),
        Duration::from_secs(1),
        ChannelName::new("telegram").unwrap(),
    )
    .with_webhook(inbox);
    let client = server.connect(&Principal::gateway()).await.unwrap();
    let store = Store::open(db).unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let (http_stop_tx, mut http_stop) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(async move {
        let http = tokio::spawn(hook.serve(listener, async move {
            let _ = http_stop.wait_for(|s| *s).await;
        }));
        notify_gateway::run(
            channel,
            Allowlist::new([ALICE.to_string()]),
            client,
            store,
            async move {
                let _ = stopped.await;
            },
        )
        .await
        .unwrap();
        http_stop_tx.send_replace(true);
        http.await.unwrap();
    });
    (Running { stop, task }, addr)
}

async fn poll_gateway(server: &NatsServer, tg: &FakeTelegram, db: &std::path::Path) -> Running {
    let channel = Telegram::new(
        &BotToken::new(TOKEN),
        Some(url::Url::parse(&tg.api_url()).unwrap()),
        Duration::from_secs(1),
        ChannelName::new("telegram").unwrap(),
    );
    let client = server.connect(&Principal::gateway()).await.unwrap();
    let store = Store::open(db).unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        notify_gateway::run(
            channel,
            Allowlist::new([ALICE.to_string()]),
            client,
            store,
            async move {
                let _ = stopped.await;
            },
        )
        .await
        .unwrap();
    });
    Running { stop, task }
}

/// The texts that arrived on CHAT_IN (read through the orchestrator's consumer), waiting for
/// `n`, then a while longer for doubles.
async fn chat_in(js: &jetstream::Context, n: usize) -> Vec<String> {
    let consumer: jetstream::consumer::PullConsumer = js
        .get_stream(stream::CHAT_IN)
        .await
        .unwrap()
        .get_consumer(stream::CHAT_IN_CONSUMER)
        .await
        .unwrap();
    let mut got = Vec::new();
    let deadline = Instant::now() + WAIT;
    let mut extra = false;
    loop {
        if got.len() >= n {
            if extra {
                break;
            }
            extra = true;
        } else if Instant::now() > deadline {
            break;
        }
        let wait = if got.len() >= n { 1500 } else { 500 };
        let mut batch = consumer
            .fetch()
            .max_messages(10)
            .expires(Duration::from_millis(wait))
            .messages()
            .await
            .unwrap();
        while let Some(m) = batch.next().await {
            let m = m.unwrap();
            m.ack().await.unwrap();
            let ChatIn::Text(t) = Envelope::<ChatIn>::decode(&m.payload).unwrap().body;
            got.push(t.text);
        }
    }
    got
}

async fn until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One raw HTTP/1.1 POST; returns the status code.
async fn post(addr: SocketAddr, path: &str, secret: Option<&str>, body: &str) -> u16 {
    post_declaring(addr, path, secret, body.len(), body).await
}

/// A POST declaring `length` bytes of body and sending `body` (fewer, for the too-large case:
/// the answer must come from the headers alone).
async fn post_declaring(
    addr: SocketAddr,
    path: &str,
    secret: Option<&str>,
    length: usize,
    body: &str,
) -> u16 {
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut req = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {length}\r\nConnection: close\r\n"
    );
    if let Some(s) = secret {
        req.push_str(&format!("X-Telegram-Bot-Api-Secret-Token: {s}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    tcp.write_all(req.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(WAIT, tcp.read_to_end(&mut answer)).await;
    String::from_utf8_lossy(&answer)
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

fn forged_update(update_id: i64, text: &str) -> String {
    serde_json::json!({
        "update_id": update_id,
        "message": {
            "message_id": 77,
            "from": {"id": ALICE, "is_bot": false, "first_name": "Alice"},
            "chat": {"id": ALICE, "type": "private", "first_name": "Alice"},
            "date": 1_700_000_000,
            "text": text
        }
    })
    .to_string()
}

#[tokio::test]
async fn webhook_updates_are_secured_before_200_and_forged_requests_publish_nothing() {
    let server = NatsServer::start(&["hue"]).await.unwrap();
    let tg = FakeTelegram::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("gateway.sqlite");
    let js = jetstream::new(server.connect(&Principal::orchestrator()).await.unwrap());

    let (gw, addr) = webhook_gateway(&server, &tg, &db, None).await;
    until("the webhook to be registered", || tg.webhook().is_some()).await;
    let hook = tg.webhook().unwrap();
    assert_eq!(hook.url, format!("http://{addr}/tg-hook"));
    assert_eq!(hook.max_connections, 1, "one update at a time, in order");
    let secret = hook.secret_token.clone().expect("a secret is registered");
    assert_eq!(secret.len(), 64);

    // A user's message: POSTed by Telegram, published once, answered 200 once secured.
    let id = tg.user_says(ALICE, ALICE, "start bedtime");
    assert_eq!(chat_in(&js, 1).await, ["start bedtime"]);
    until("the delivery to be confirmed", || tg.pending_updates() == 0).await;
    assert_eq!(tg.webhook_attempts(), [(id, 200)]);

    // SV-02: without the secret, with a wrong one (same length, one character off), or with
    // the right one on another path: refused, and nothing is published.
    let body = forged_update(1_000, "forged");
    assert_eq!(post(addr, "/tg-hook", None, &body).await, 401);
    let mut wrong = secret.clone().into_bytes();
    wrong[0] = if wrong[0] == b'a' { b'b' } else { b'a' };
    let wrong = String::from_utf8(wrong).unwrap();
    assert_eq!(post(addr, "/tg-hook", Some(&wrong), &body).await, 401);
    assert_eq!(post(addr, "/tg-hook", Some(""), &body).await, 401);
    assert_eq!(post(addr, "/other", Some(&secret), &body).await, 404);
    // With the secret, malformed and oversized bodies are refused too.
    assert_eq!(
        post(addr, "/tg-hook", Some(&secret), "{not json").await,
        400
    );
    let huge = 3 * 1024 * 1024;
    assert_eq!(
        post_declaring(addr, "/tg-hook", Some(&secret), huge, "").await,
        413
    );
    assert!(chat_in(&js, 0).await.is_empty(), "nothing was published");

    // A retry of an update already secured (same update id) is answered 200, not republished.
    let retry = forged_update(id, "start bedtime");
    assert_eq!(post(addr, "/tg-hook", Some(&secret), &retry).await, 200);
    assert!(
        chat_in(&js, 0).await.is_empty(),
        "the retry was not republished"
    );

    // The gateway stops; a message sent meanwhile waits at Telegram (deliveries fail), then
    // arrives exactly once after a restart, which registers a new secret.
    gw.stop().await;
    let while_away = tg.user_says(ALICE, ALICE, "while away");
    until("a failed delivery attempt", || {
        tg.webhook_attempts()
            .iter()
            .any(|&(u, status)| u == while_away && status != 200)
    })
    .await;
    let (gw, _) = webhook_gateway(&server, &tg, &db, Some(addr)).await;
    assert_eq!(chat_in(&js, 1).await, ["while away"]);
    until("the delivery to be confirmed", || tg.pending_updates() == 0).await;
    let new_secret = tg.webhook().unwrap().secret_token.unwrap();
    assert_ne!(new_secret, secret, "a fresh secret per start");
    assert_eq!(
        post(
            addr,
            "/tg-hook",
            Some(&secret),
            &forged_update(2_000, "old secret")
        )
        .await,
        401
    );
    gw.stop().await;

    // Back to long polling: the webhook is removed (pending updates kept) and polling works.
    let queued = tg.user_says(ALICE, ALICE, "polled again");
    let gw = poll_gateway(&server, &tg, &db).await;
    assert_eq!(chat_in(&js, 1).await, ["polled again"]);
    assert!(tg.webhook().is_none());
    assert!(queued > while_away);
    gw.stop().await;
}
