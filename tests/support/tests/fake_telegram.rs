//! The Telegram Bot API double, driven over plain HTTP (a hyper client), the way a bot library
//! would: every method and error it implements, long polling, offset confirmation,
//! `allowed_updates`, the test controls, and shape checks against real Bot API payloads
//! (`tests/fixtures/telegram/`).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::print_stdout,
    clippy::print_stderr
)]

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use test_support::fake_telegram::{FakeTelegram, fixture, shape_differences};
use tokio::net::TcpStream;

const USER: i64 = 222_222_222;

/// One request; returns the status and the JSON body.
async fn request(
    fake: &FakeTelegram,
    method: &str,
    path: &str,
    content_type: Option<&str>,
    body: String,
) -> (u16, Value) {
    let tcp = TcpStream::connect(fake.addr()).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut builder = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", fake.addr().to_string());
    if let Some(ct) = content_type {
        builder = builder.header("content-type", ct);
    }
    let response = sender
        .send_request(builder.body(Full::new(Bytes::from(body))).unwrap())
        .await
        .unwrap();
    let status = response.status().as_u16();
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(content_type, "application/json");
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&bytes).unwrap())
}

/// `POST /bot<token>/<method>` with a JSON body (what teloxide sends).
async fn call(fake: &FakeTelegram, method: &str, params: Value) -> (u16, Value) {
    let path = format!("/bot{}/{method}", fake.token());
    request(
        fake,
        "POST",
        &path,
        Some("application/json"),
        params.to_string(),
    )
    .await
}

/// A successful call's `result`.
async fn ok(fake: &FakeTelegram, method: &str, params: Value) -> Value {
    let (status, body) = call(fake, method, params).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["ok"], true, "{body}");
    assert_eq!(body.as_object().unwrap().len(), 2, "{body}");
    body["result"].clone()
}

/// A failed call: checks the exact envelope and that the status equals `error_code`.
async fn error(fake: &FakeTelegram, method: &str, params: Value, code: u16, description: &str) {
    let (status, body) = call(fake, method, params).await;
    assert_error(status, &body, code, description);
}

fn assert_error(status: u16, body: &Value, code: u16, description: &str) {
    assert_eq!(status, code, "{body}");
    assert_eq!(
        body,
        &json!({"ok": false, "error_code": code, "description": description})
    );
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        .try_into()
        .unwrap()
}

fn assert_seconds(date: &Value) {
    let date = date.as_i64().unwrap();
    assert!(
        (now() - 5..=now() + 1).contains(&date),
        "not seconds: {date}"
    );
}

fn assert_same_shape(fixture_name: &str, reference: &Value, actual: &Value) {
    let diff = shape_differences(reference, actual);
    assert!(
        diff.is_empty(),
        "{fixture_name}: {diff:#?}\nactual: {actual:#}"
    );
}

fn keyboard() -> Value {
    json!({"inline_keyboard": [[
        {"text": "Approve", "callback_data": "approve:42"},
        {"text": "Deny", "callback_data": "deny:42"}
    ]]})
}

#[tokio::test]
async fn get_me_describes_the_bot() {
    let fake = FakeTelegram::start().await.unwrap();
    let me = ok(&fake, "getMe", json!({})).await;
    assert_eq!(me, fake.bot_user());
    assert_eq!(me["is_bot"], true);
    assert_eq!(
        me["id"].as_i64().unwrap().to_string(),
        fake.token().split(':').next().unwrap()
    );
    assert!(me["username"].is_string());
    assert!(me["can_join_groups"].is_boolean());
    assert!(fake.api_url().starts_with("http://127.0.0.1:"));
    assert!(fake.api_url().ends_with('/'));
}

#[tokio::test]
async fn methods_are_case_insensitive_and_parameters_come_in_every_encoding() {
    let fake = FakeTelegram::start().await.unwrap();
    let token = fake.token().to_owned();
    // GET with no parameters, lowercase method.
    let (status, body) = request(
        &fake,
        "GET",
        &format!("/bot{token}/getme"),
        None,
        String::new(),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["result"]["is_bot"], true);
    // Query string.
    let (status, body) = request(
        &fake,
        "GET",
        &format!("/bot{token}/SENDMESSAGE?chat_id={USER}&text=hello%20there"),
        None,
        String::new(),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["result"]["text"], "hello there");
    // Form body, with the keyboard as a JSON-serialized string.
    let form = format!(
        "chat_id={USER}&text=caf%C3%A9&reply_markup={}",
        percent(&keyboard().to_string())
    );
    let (status, body) = request(
        &fake,
        "POST",
        &format!("/bot{token}/sendMessage"),
        Some("application/x-www-form-urlencoded"),
        form,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["result"]["text"], "café");
    assert_eq!(body["result"]["reply_markup"], keyboard());
    let sent = fake.sent();
    assert_eq!(sent.len(), 2);
    assert_eq!(sent[1].reply_markup, Some(keyboard()));
    let methods: Vec<String> = fake.calls().into_iter().map(|c| c.method).collect();
    assert_eq!(methods, ["getMe", "sendMessage", "sendMessage"]);
}

fn percent(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[tokio::test]
async fn a_wrong_token_is_unauthorized_and_unknown_methods_are_not_found() {
    let fake = FakeTelegram::start().await.unwrap();
    let (status, body) = request(
        &fake,
        "POST",
        "/bot999:wrong/getMe",
        Some("application/json"),
        "{}".into(),
    )
    .await;
    assert_error(status, &body, 401, "Unauthorized");
    error(&fake, "getChatHistory", json!({}), 404, "Not Found").await;
    let (status, body) = request(&fake, "GET", "/", None, String::new()).await;
    assert_error(status, &body, 404, "Not Found");
    assert!(fake.calls().is_empty());
}

#[tokio::test]
async fn send_message_returns_the_sent_message() {
    let fake = FakeTelegram::start().await.unwrap();
    let first = ok(
        &fake,
        "sendMessage",
        json!({"chat_id": USER, "text": "<b>Plan</b>", "parse_mode": "HTML", "reply_markup": keyboard()}),
    )
    .await;
    assert_eq!(first["message_id"], 1);
    assert_eq!(first["from"]["id"], fake.bot_user()["id"]);
    assert_eq!(first["from"]["is_bot"], true);
    assert_eq!(first["chat"]["id"], USER);
    assert_eq!(first["chat"]["type"], "private");
    assert_eq!(first["text"], "<b>Plan</b>");
    assert_eq!(first["reply_markup"], keyboard());
    assert_seconds(&first["date"]);
    let second = ok(
        &fake,
        "sendMessage",
        json!({"chat_id": USER, "text": "two"}),
    )
    .await;
    assert_eq!(second["message_id"], 2);
    assert!(second.get("reply_markup").is_none());
    // Ids are per chat.
    let other = ok(&fake, "sendMessage", json!({"chat_id": 7, "text": "x"})).await;
    assert_eq!(other["message_id"], 1);

    let sent = fake.sent();
    assert_eq!(sent.len(), 3);
    assert_eq!(sent[0].chat_id, USER);
    assert_eq!(sent[0].message_id, 1);
    assert_eq!(sent[0].parse_mode.as_deref(), Some("HTML"));
    assert_eq!(sent[0].reply_markup, Some(keyboard()));
    assert_eq!(sent[0].message, first);
    assert_eq!(sent[1].reply_markup, None);
}

#[tokio::test]
async fn send_message_validates_like_telegram() {
    let fake = FakeTelegram::start().await.unwrap();
    let too_long = "a".repeat(4097);
    error(
        &fake,
        "sendMessage",
        json!({"chat_id": USER, "text": too_long}),
        400,
        "Bad Request: message is too long",
    )
    .await;
    // 4096 UTF-16 code units is fine; an emoji counts two.
    ok(
        &fake,
        "sendMessage",
        json!({"chat_id": USER, "text": "a".repeat(4096)}),
    )
    .await;
    error(
        &fake,
        "sendMessage",
        json!({"chat_id": USER, "text": format!("{}😀", "a".repeat(4095))}),
        400,
        "Bad Request: message is too long",
    )
    .await;
    for empty in [json!(""), json!("  \n ")] {
        error(
            &fake,
            "sendMessage",
            json!({"chat_id": USER, "text": empty}),
            400,
            "Bad Request: message text is empty",
        )
        .await;
    }
    error(
        &fake,
        "sendMessage",
        json!({"chat_id": USER}),
        400,
        "Bad Request: message text is empty",
    )
    .await;
    let long_data = json!({"inline_keyboard": [[{"text": "x", "callback_data": "d".repeat(65)}]]});
    error(
        &fake,
        "sendMessage",
        json!({"chat_id": USER, "text": "hi", "reply_markup": long_data}),
        400,
        "Bad Request: BUTTON_DATA_INVALID",
    )
    .await;
    let max_data = json!({"inline_keyboard": [[{"text": "x", "callback_data": "d".repeat(64)}]]});
    ok(
        &fake,
        "sendMessage",
        json!({"chat_id": USER, "text": "hi", "reply_markup": max_data}),
    )
    .await;
    error(
        &fake,
        "sendMessage",
        json!({"text": "hi"}),
        400,
        "Bad Request: chat_id is empty",
    )
    .await;
    assert_eq!(fake.sent().len(), 2, "refused messages are not recorded");
}

#[tokio::test]
async fn edit_message_text_returns_the_edited_message() {
    let fake = FakeTelegram::start().await.unwrap();
    let sent = ok(
        &fake,
        "sendMessage",
        json!({"chat_id": USER, "text": "Approve?", "reply_markup": keyboard()}),
    )
    .await;
    let id = sent["message_id"].as_i64().unwrap();
    error(
        &fake,
        "editMessageText",
        json!({"chat_id": USER, "message_id": id, "text": "Approve?", "reply_markup": keyboard()}),
        400,
        "Bad Request: message is not modified: specified new message content and reply markup are exactly the same as a current content and reply markup of the message",
    )
    .await;
    error(
        &fake,
        "editMessageText",
        json!({"chat_id": USER, "message_id": 999, "text": "x"}),
        400,
        "Bad Request: message to edit not found",
    )
    .await;
    // No reply_markup: the keyboard goes, as on real Telegram.
    let edited = ok(
        &fake,
        "editMessageText",
        json!({"chat_id": USER, "message_id": id, "text": "Approved"}),
    )
    .await;
    assert_eq!(edited["message_id"], id);
    assert_eq!(edited["text"], "Approved");
    assert_eq!(edited["date"], sent["date"]);
    assert_seconds(&edited["edit_date"]);
    assert!(edited.get("reply_markup").is_none(), "{edited}");
    let edits = fake.edits();
    assert_eq!(edits.len(), 1);
    assert_eq!(edits[0].chat_id, USER);
    assert_eq!(edits[0].message_id, id);
    assert_eq!(edits[0].text, "Approved");
    assert_eq!(edits[0].reply_markup, None);
    assert_eq!(edits[0].message, edited);
    // A user's message is not the bot's to edit.
    let theirs = fake.user_says(USER, USER, "hello");
    error(
        &fake,
        "editMessageText",
        json!({"chat_id": USER, "message_id": theirs, "text": "x"}),
        400,
        "Bad Request: message can't be edited",
    )
    .await;
}

#[tokio::test]
async fn answer_callback_query_accepts_each_query_once() {
    let fake = FakeTelegram::start().await.unwrap();
    let sent = ok(
        &fake,
        "sendMessage",
        json!({"chat_id": USER, "text": "Approve?", "reply_markup": keyboard()}),
    )
    .await;
    let query = fake.user_presses(
        USER,
        USER,
        sent["message_id"].as_i64().unwrap(),
        "approve:42",
    );
    let too_old =
        "Bad Request: query is too old and response timeout expired or query ID is invalid";
    error(
        &fake,
        "answerCallbackQuery",
        json!({"callback_query_id": "12345"}),
        400,
        too_old,
    )
    .await;
    let result = ok(
        &fake,
        "answerCallbackQuery",
        json!({"callback_query_id": query, "text": "Done"}),
    )
    .await;
    assert_eq!(result, true);
    error(
        &fake,
        "answerCallbackQuery",
        json!({"callback_query_id": query}),
        400,
        too_old,
    )
    .await;
    let answered = fake.answered_callbacks();
    assert_eq!(answered.len(), 1);
    assert_eq!(answered[0].callback_query_id, query);
    assert_eq!(answered[0].text.as_deref(), Some("Done"));
    assert!(!answered[0].show_alert);
}

#[tokio::test]
async fn delete_webhook_and_set_my_commands_return_true() {
    let fake = FakeTelegram::start().await.unwrap();
    assert_eq!(ok(&fake, "deleteWebhook", json!({})).await, true);
    let commands = json!([{"command": "start", "description": "Start talking"}]);
    assert_eq!(
        ok(&fake, "setMyCommands", json!({"commands": commands})).await,
        true
    );
    assert_eq!(fake.commands(), Some(commands));
    error(
        &fake,
        "setMyCommands",
        json!({"commands": [{"command": "Bad Command", "description": "x"}]}),
        400,
        "Bad Request: BOT_COMMAND_INVALID",
    )
    .await;
    // drop_pending_updates forgets the queue.
    fake.user_says(USER, USER, "hi");
    assert_eq!(fake.pending_updates(), 1);
    ok(
        &fake,
        "deleteWebhook",
        json!({"drop_pending_updates": true}),
    )
    .await;
    assert_eq!(fake.pending_updates(), 0);
}

#[tokio::test]
async fn get_updates_delivers_until_confirmed_by_offset() {
    let fake = FakeTelegram::start().await.unwrap();
    assert_eq!(ok(&fake, "getUpdates", json!({})).await, json!([]));
    let m1 = fake.user_says(USER, USER, "one");
    fake.user_says(USER, USER, "two");
    fake.user_says(USER, USER, "three");
    let all = ok(&fake, "getUpdates", json!({})).await;
    let ids: Vec<i64> = all
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["update_id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids.len(), 3);
    assert!(ids.windows(2).all(|w| w[1] == w[0] + 1), "{ids:?}");
    assert_eq!(all[0]["message"]["message_id"], m1);
    assert_eq!(all[0]["message"]["text"], "one");
    // Not confirmed: delivered again.
    assert_eq!(ok(&fake, "getUpdates", json!({})).await, all);
    // limit.
    let limited = ok(&fake, "getUpdates", json!({"limit": 2})).await;
    assert_eq!(limited.as_array().unwrap().len(), 2);
    // offset confirms everything before it.
    let rest = ok(&fake, "getUpdates", json!({"offset": ids[1]})).await;
    assert_eq!(rest.as_array().unwrap().len(), 2);
    assert_eq!(rest[0]["update_id"], ids[1]);
    // ...and forgets it: without an offset the confirmed ones stay gone.
    let again = ok(&fake, "getUpdates", json!({})).await;
    assert_eq!(again, rest);
    let none = ok(&fake, "getUpdates", json!({"offset": ids[2] + 1})).await;
    assert_eq!(none, json!([]));
    assert_eq!(fake.pending_updates(), 0);
    // Ids keep increasing after confirmation.
    fake.user_says(USER, USER, "four");
    let next = ok(&fake, "getUpdates", json!({"offset": ids[2] + 1})).await;
    assert_eq!(next[0]["update_id"], ids[2] + 1);
}

#[tokio::test]
async fn a_negative_offset_keeps_only_the_last_updates() {
    let fake = FakeTelegram::start().await.unwrap();
    for text in ["a", "b", "c", "d"] {
        fake.user_says(USER, USER, text);
    }
    let last = ok(&fake, "getUpdates", json!({"offset": -1})).await;
    assert_eq!(last.as_array().unwrap().len(), 1);
    assert_eq!(last[0]["message"]["text"], "d");
    // The earlier ones were forgotten.
    let all = ok(&fake, "getUpdates", json!({})).await;
    assert_eq!(all, last);
}

#[tokio::test]
async fn long_polling_returns_early_on_a_new_update_and_times_out_empty() {
    let fake = FakeTelegram::start().await.unwrap();
    let started = Instant::now();
    let empty = ok(&fake, "getUpdates", json!({"timeout": 1})).await;
    let waited = started.elapsed();
    assert_eq!(empty, json!([]));
    assert!(waited >= Duration::from_millis(950), "{waited:?}");
    assert!(waited < Duration::from_secs(3), "{waited:?}");

    let started = Instant::now();
    let (result, ()) = tokio::join!(ok(&fake, "getUpdates", json!({"timeout": 30})), async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        fake.user_says(USER, USER, "wake up");
    });
    let waited = started.elapsed();
    assert_eq!(result.as_array().unwrap().len(), 1, "{result}");
    assert_eq!(result[0]["message"]["text"], "wake up");
    assert!(waited >= Duration::from_millis(200), "{waited:?}");
    assert!(waited < Duration::from_secs(5), "{waited:?}");
}

#[tokio::test]
async fn allowed_updates_filter_and_persist() {
    let fake = FakeTelegram::start().await.unwrap();
    let sent = ok(
        &fake,
        "sendMessage",
        json!({"chat_id": USER, "text": "Approve?", "reply_markup": keyboard()}),
    )
    .await;
    let message_id = sent["message_id"].as_i64().unwrap();
    // Queued before the change: still delivered, as the reference warns.
    fake.user_says(USER, USER, "before");
    let got = ok(
        &fake,
        "getUpdates",
        json!({"allowed_updates": ["callback_query"]}),
    )
    .await;
    assert_eq!(got.as_array().unwrap().len(), 1);
    assert!(got[0].get("message").is_some());
    let next = got[0]["update_id"].as_i64().unwrap() + 1;
    // Created after: messages are not, callback queries are, even on calls that do not repeat
    // the list.
    fake.user_says(USER, USER, "filtered");
    fake.user_presses(USER, USER, message_id, "approve:42");
    let got = ok(&fake, "getUpdates", json!({"offset": next})).await;
    assert_eq!(got.as_array().unwrap().len(), 1, "{got}");
    assert!(got[0].get("callback_query").is_some(), "{got}");
    let next = got[0]["update_id"].as_i64().unwrap() + 1;
    // An empty list goes back to the default (everything we generate).
    ok(
        &fake,
        "getUpdates",
        json!({"offset": next, "allowed_updates": []}),
    )
    .await;
    fake.user_says(USER, USER, "allowed again");
    let got = ok(&fake, "getUpdates", json!({"offset": next})).await;
    assert_eq!(got[0]["message"]["text"], "allowed again");
    // allowed_updates as a JSON-serialized string (form encoding) works too.
    ok(
        &fake,
        "getUpdates",
        json!({"offset": next + 1, "allowed_updates": "[\"callback_query\"]"}),
    )
    .await;
    fake.user_says(USER, USER, "filtered again");
    assert_eq!(
        ok(&fake, "getUpdates", json!({"offset": next + 1})).await,
        json!([])
    );
}

#[tokio::test]
async fn blocked_rate_limited_and_down() {
    let fake = FakeTelegram::start().await.unwrap();
    fake.set_blocked(USER);
    error(
        &fake,
        "sendMessage",
        json!({"chat_id": USER, "text": "hi"}),
        403,
        "Forbidden: bot was blocked by the user",
    )
    .await;
    ok(&fake, "sendMessage", json!({"chat_id": 5, "text": "hi"})).await;

    fake.rate_limit_next(2, 14);
    // getUpdates does not use them up.
    ok(&fake, "getUpdates", json!({})).await;
    let expected = fixture("error_too_many_requests").unwrap();
    for _ in 0..2 {
        let (status, body) = call(&fake, "sendMessage", json!({"chat_id": 5, "text": "hi"})).await;
        assert_eq!(status, 429);
        assert_eq!(body, expected, "same as the real payload");
    }
    ok(&fake, "sendMessage", json!({"chat_id": 5, "text": "hi"})).await;

    fake.set_down(true);
    error(&fake, "getMe", json!({}), 502, "Bad Gateway").await;
    fake.set_down(false);
    ok(&fake, "getMe", json!({})).await;
}

#[tokio::test]
async fn updates_have_the_shape_of_real_ones() {
    let fake = FakeTelegram::start().await.unwrap();
    fake.user_says(USER, USER, "Ciao");
    fake.user_says(USER, USER, "/test now");
    let sent = ok(
        &fake,
        "sendMessage",
        json!({"chat_id": USER, "text": "This is a test", "reply_markup": keyboard()}),
    )
    .await;
    fake.user_presses(
        USER,
        USER,
        sent["message_id"].as_i64().unwrap(),
        "approve:42",
    );
    fake.user_presses(USER, USER, 4242, "approve:7");
    let updates = ok(&fake, "getUpdates", json!({})).await;
    let updates = updates.as_array().unwrap();
    assert_eq!(updates.len(), 4);
    let expect = [
        "message",
        "command",
        "callback_query",
        "callback_query_inaccessible_message",
    ];
    for (update, name) in updates.iter().zip(expect) {
        let reference = fixture(name).unwrap();
        assert_same_shape(name, &reference, update);
        // And no key the real one lacks at the top level and in the payload.
        let kind = reference
            .as_object()
            .unwrap()
            .keys()
            .find(|k| *k != "update_id")
            .unwrap()
            .clone();
        let mut ours: Vec<&String> = update[&kind].as_object().unwrap().keys().collect();
        let mut theirs: Vec<&String> = reference[&kind].as_object().unwrap().keys().collect();
        ours.sort();
        theirs.sort();
        assert_eq!(ours, theirs, "{name}");
    }
    assert_seconds(&updates[0]["message"]["date"]);
    assert_eq!(updates[0]["message"]["from"]["is_bot"], false);
    assert_eq!(
        updates[1]["message"]["entities"],
        json!([{"offset": 0, "length": 5, "type": "bot_command"}])
    );
    let query = &updates[2]["callback_query"];
    assert!(query["id"].is_string());
    assert!(query["chat_instance"].is_string());
    assert_eq!(query["data"], "approve:42");
    assert_eq!(query["message"], sent, "the message the button belongs to");
    assert_eq!(updates[3]["callback_query"]["message"]["date"], 0);
}

#[tokio::test]
async fn messages_and_errors_have_the_shape_of_real_ones() {
    let fake = FakeTelegram::start().await.unwrap();
    let sent = ok(
        &fake,
        "sendMessage",
        json!({"chat_id": USER, "text": "This is a test", "reply_markup": keyboard()}),
    )
    .await;
    // The bot's message inside the real callback query is a Message the bot sent.
    let reference = fixture("callback_query").unwrap();
    let reference_message = &reference["callback_query"]["message"];
    assert_same_shape("callback_query.message", reference_message, &sent);
    let mut ours: Vec<&String> = sent.as_object().unwrap().keys().collect();
    let mut theirs: Vec<&String> = reference_message.as_object().unwrap().keys().collect();
    ours.sort();
    theirs.sort();
    assert_eq!(ours, theirs);

    let edited = ok(
        &fake,
        "editMessageText",
        json!({"chat_id": USER, "message_id": sent["message_id"], "text": "Edited", "reply_markup": keyboard()}),
    )
    .await;
    assert_same_shape("callback_query.message", reference_message, &edited);
    assert!(edited["edit_date"].is_i64());

    let (status, body) = call(
        &fake,
        "sendMessage",
        json!({"chat_id": USER, "text": "x".repeat(5000)}),
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(body, fixture("error_message_too_long").unwrap());
}

#[test]
fn shape_differences_reports_missing_keys_and_wrong_types() {
    let reference = json!({"a": 1, "b": {"c": "x"}, "d": [[{"e": true}]]});
    assert!(
        shape_differences(
            &reference,
            &json!({"a": 2, "b": {"c": "y", "z": 0}, "d": [[{"e": false}]]})
        )
        .is_empty()
    );
    let diff = shape_differences(
        &reference,
        &json!({"a": 1.5, "b": {}, "d": [[{"e": "no"}]]}),
    );
    assert_eq!(diff.len(), 3, "{diff:?}");
}
