//! The Slack double, driven the way a client would (a hyper client for the Web API, a
//! WebSocket for Socket Mode): its methods and error shapes, envelope delivery, acknowledgement
//! and redelivery, and the shape of what it generates against Slack's own
//! `BlockActionPayload.json` (`tests/fixtures/slack/`).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::print_stdout,
    clippy::print_stderr
)]

use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt as _, StreamExt as _};
use http_body_util::{BodyExt as _, Full};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use test_support::fake_slack::{APP_TOKEN, BOT_TOKEN, FakeSlack, fixture, unknown_keys};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

/// `POST <api>/<method>` with a JSON body and a bearer token; the status, `Retry-After` and body.
async fn call(
    fake: &FakeSlack,
    token: &str,
    method: &str,
    params: Value,
) -> (u16, Option<String>, String) {
    let url: hyper::Uri = format!("{}/{method}", fake.api_url()).parse().unwrap();
    let authority = url.authority().unwrap().to_string();
    let tcp = TcpStream::connect(&authority).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let request = hyper::Request::builder()
        .method("POST")
        .uri(url.path())
        .header("host", authority)
        .header("content-type", "application/json; charset=utf-8")
        .header("authorization", format!("Bearer {token}"))
        .body(Full::new(Bytes::from(params.to_string())))
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    let status = response.status().as_u16();
    let retry = response
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned());
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (status, retry, String::from_utf8(bytes.to_vec()).unwrap())
}

async fn ok(fake: &FakeSlack, method: &str, params: Value) -> Value {
    let (status, _, body) = call(fake, BOT_TOKEN, method, params).await;
    assert_eq!(status, 200);
    serde_json::from_str(&body).unwrap()
}

fn card() -> Value {
    json!([
        {"type": "section", "text": {"type": "mrkdwn", "text": "*Plan:* lights off"}},
        {"type": "actions", "block_id": "decision", "elements": [
            {"type": "button", "action_id": "b0", "text": {"type": "plain_text", "text": "Approve", "emoji": true}, "value": "ap:1"},
            {"type": "button", "action_id": "b1", "text": {"type": "plain_text", "text": "Reject", "emoji": true}, "value": "rj:1"},
        ]},
    ])
}

#[tokio::test]
async fn web_api_methods_and_errors() {
    let fake = FakeSlack::start().await.unwrap();
    let auth = ok(&fake, "auth.test", json!({})).await;
    assert_eq!(auth["ok"], true);
    assert_eq!(auth["user_id"], "U0FAKEBOT1");
    let (_, _, wrong) = call(&fake, "xoxb-wrong", "auth.test", json!({})).await;
    assert_eq!(wrong, r#"{"error":"invalid_auth","ok":false}"#);
    let (_, _, bot_for_socket) = call(&fake, BOT_TOKEN, "apps.connections.open", json!({})).await;
    assert!(bot_for_socket.contains("not_allowed_token_type"));

    let unknown = ok(
        &fake,
        "chat.postMessage",
        json!({"channel": "D0NOPE", "text": "x"}),
    )
    .await;
    assert_eq!(unknown, json!({"ok": false, "error": "channel_not_found"}));
    fake.add_channel("D0ALICE");
    let empty = ok(
        &fake,
        "chat.postMessage",
        json!({"channel": "D0ALICE", "text": " "}),
    )
    .await;
    assert_eq!(empty["error"], "no_text");
    let mut duplicate = card();
    duplicate[1]["elements"][1]["action_id"] = json!("b0");
    let bad = ok(
        &fake,
        "chat.postMessage",
        json!({"channel": "D0ALICE", "text": "x", "blocks": duplicate}),
    )
    .await;
    assert_eq!(bad["error"], "invalid_blocks");

    let posted = ok(
        &fake,
        "chat.postMessage",
        json!({"channel": "D0ALICE", "text": "plan", "blocks": card()}),
    )
    .await;
    assert_eq!(posted["ok"], true);
    let ts = posted["ts"].as_str().unwrap().to_owned();
    assert_eq!(fake.posted().len(), 1);
    assert_eq!(fake.posted()[0].blocks, card());

    let missing = ok(
        &fake,
        "chat.update",
        json!({"channel": "D0ALICE", "ts": "1.2", "text": "x"}),
    )
    .await;
    assert_eq!(missing["error"], "message_not_found");
    let updated = ok(
        &fake,
        "chat.update",
        json!({"channel": "D0ALICE", "ts": ts, "text": "done", "blocks": [card()[0].clone()]}),
    )
    .await;
    assert_eq!(updated["ok"], true);
    assert_eq!(
        fake.message("D0ALICE", &ts).unwrap()["blocks"]
            .as_array()
            .unwrap()
            .len(),
        1
    );

    fake.archive("D0ALICE");
    let archived = ok(
        &fake,
        "chat.postMessage",
        json!({"channel": "D0ALICE", "text": "x"}),
    )
    .await;
    assert_eq!(archived["error"], "is_archived");

    fake.rate_limit_next(1, 7);
    let (status, retry, body) = call(&fake, BOT_TOKEN, "auth.test", json!({})).await;
    assert_eq!((status, retry.as_deref()), (429, Some("7")));
    assert_eq!(body, r#"{"error":"ratelimited","ok":false}"#);
    fake.set_down(true);
    assert_eq!(call(&fake, BOT_TOKEN, "auth.test", json!({})).await.0, 503);
    fake.set_down(false);
    assert_eq!(call(&fake, BOT_TOKEN, "auth.test", json!({})).await.0, 200);
}

async fn connect(
    fake: &FakeSlack,
) -> tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>> {
    let (_, _, body) = call(fake, APP_TOKEN, "apps.connections.open", json!({})).await;
    let url = serde_json::from_str::<Value>(&body).unwrap()["url"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(url.starts_with("ws://127.0.0.1:"));
    let (ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    ws
}

async fn next_frame(
    ws: &mut tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>,
) -> Value {
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("a frame within 5 s")
            .unwrap()
            .unwrap();
        if let Message::Text(t) = frame {
            return serde_json::from_str(t.as_str()).unwrap();
        }
    }
}

#[tokio::test]
async fn socket_mode_delivers_acknowledges_and_redelivers() {
    let fake = FakeSlack::start().await.unwrap();
    let said = fake.user_says("U0ALICE", "D0ALICE", "hello");
    let mut ws = connect(&fake).await;
    assert_eq!(next_frame(&mut ws).await["type"], "hello");
    let envelope = next_frame(&mut ws).await;
    assert_eq!(envelope["type"], "events_api");
    assert_eq!(envelope["envelope_id"], said.as_str());
    assert_eq!(envelope["retry_attempt"], 0);
    assert_eq!(envelope["payload"]["event"]["channel_type"], "im");
    assert_eq!(envelope["payload"]["event"]["text"], "hello");

    // Not acknowledged: the next connection gets it again, marked as a retry.
    drop(ws);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut ws = connect(&fake).await;
    assert_eq!(next_frame(&mut ws).await["type"], "hello");
    let again = next_frame(&mut ws).await;
    assert_eq!(again["envelope_id"], said.as_str());
    assert_eq!(again["retry_attempt"], 1);
    assert_eq!(again["retry_reason"], "timeout");
    ws.send(Message::Text(
        json!({"envelope_id": said}).to_string().into(),
    ))
    .await
    .unwrap();
    assert!(fake.wait_for_ack(&said, Duration::from_secs(5)).await);
    assert_eq!(fake.deliveries(&said), 2);

    // Envelopes queued while connected arrive on the open connection; disconnect is sent.
    let other = fake.user_says("U0BOB", "C0GENERAL", "hi all");
    let e = next_frame(&mut ws).await;
    assert_eq!(e["envelope_id"], other.as_str());
    assert_eq!(e["payload"]["event"]["channel_type"], "channel");
    fake.disconnect();
    let d = next_frame(&mut ws).await;
    assert_eq!(d["type"], "disconnect");
    assert_eq!(d["reason"], "refresh_requested");
    assert_eq!(fake.acks(), vec![said]);
}

#[tokio::test]
async fn block_actions_payload_has_slacks_shape() {
    let fake = FakeSlack::start().await.unwrap();
    fake.add_channel("D0ALICE");
    let posted = ok(
        &fake,
        "chat.postMessage",
        json!({"channel": "D0ALICE", "text": "plan", "blocks": card()}),
    )
    .await;
    let ts = posted["ts"].as_str().unwrap();
    let reference = fixture("BlockActionPayload").unwrap();

    let shown = fake.press_payload("U0ALICE", "D0ALICE", ts, "ap:1");
    assert_eq!(unknown_keys(&reference, &shown), Vec::<String>::new());
    assert_eq!(shown["actions"][0]["action_id"], "b0");
    assert_eq!(shown["actions"][0]["block_id"], "decision");
    assert_eq!(shown["actions"][0]["text"]["text"], "Approve");
    assert_eq!(shown["container"]["message_ts"], ts);
    assert_eq!(shown["message"]["blocks"], card());

    let forged = fake.press_payload("U0ALICE", "D0ALICE", "1.000001", "ap:9");
    assert_eq!(unknown_keys(&reference, &forged), Vec::<String>::new());
    assert_eq!(forged["actions"][0]["action_id"], "forged");

    // The checker itself catches an invented key and a wrong type.
    let mut wrong = shown.clone();
    wrong["actions"][0]["invented"] = json!(1);
    wrong["container"]["is_ephemeral"] = json!("no");
    assert_eq!(
        unknown_keys(&reference, &wrong),
        vec![
            "$.actions[0]: unexpected key \"invented\"".to_owned(),
            "$.container.is_ephemeral: expected boolean, got string".to_owned(),
        ]
    );
}
