//! The Telegram channel end to end: the Bot API double, a real nats-server with our generated
//! config, the gateway's SQLite state in a tempdir.
#![cfg(feature = "telegram")]
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
use notify_gateway::inbound::Allowlist;
use notify_gateway::inbound::REFUSED_PRESS_TEXT;
use notify_gateway::limits::Limits;
use notify_gateway::store::Store;
use notify_gateway::telegram::{BotToken, Telegram};
use protocol::message::{
    AuditEvent, Button, ChatDecision, ChatIn, ChatOut, ChatRef, Effect, OutboundMessage,
    PlanMessage, PlanProposal, PlatformRef, ProposedStep,
};
use protocol::subject::stream;
use protocol::{
    ActionName, AgentName, ApprovalId, ChannelName, ChatUser, CorrelationId, Envelope, MessageId,
    PlanId, Principal, Subject, UnixMillis,
};
use test_support::NatsServer;
use test_support::fake_telegram::{FakeTelegram, SentMessage, TOKEN};

const ALICE: i64 = 42;
const BOB: i64 = 43;
const MALLORY: i64 = 666;
const WAIT: Duration = Duration::from_secs(15);

struct Harness {
    server: NatsServer,
    tg: FakeTelegram,
    _dir: tempfile::TempDir,
    db: PathBuf,
}

struct Running {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), notify_gateway::GatewayError>>,
}

impl Running {
    async fn stop(self) {
        let _ = self.stop.send(());
        tokio::time::timeout(WAIT, self.task)
            .await
            .expect("the gateway stops")
            .unwrap()
            .unwrap();
    }
}

impl Harness {
    async fn start() -> Harness {
        let server = NatsServer::start(&["hue"]).await.unwrap();
        let tg = FakeTelegram::start().await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("gateway.sqlite");
        Harness {
            server,
            tg,
            _dir: dir,
            db,
        }
    }

    async fn gateway(&self) -> Running {
        self.gateway_for(&[ALICE]).await
    }

    async fn gateway_for(&self, allowed: &[i64]) -> Running {
        self.gateway_with(allowed, Limits::default()).await
    }

    async fn gateway_with(&self, allowed: &[i64], limits: Limits) -> Running {
        let channel = Telegram::new(
            &BotToken::new(TOKEN),
            Some(url::Url::parse(&self.tg.api_url()).unwrap()),
            Duration::from_secs(1),
            ChannelName::new("telegram").unwrap(),
        );
        let client = self.server.connect(&Principal::gateway()).await.unwrap();
        let store = Store::open(&self.db).unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(notify_gateway::run_with(
            channel,
            Allowlist::new(allowed.iter().map(i64::to_string)),
            limits,
            client,
            store,
            async move {
                let _ = stopped.await;
            },
        ));
        Running { stop, task }
    }

    async fn orchestrator(&self) -> jetstream::Context {
        jetstream::new(
            self.server
                .connect(&Principal::orchestrator())
                .await
                .unwrap(),
        )
    }

    /// Reads (and acknowledges) what arrived on CHAT_IN through the orchestrator's consumer,
    /// waiting until `n` arrived, then a little longer for any extra.
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
        // Anything beyond n is a double.
        got.extend(fetch(&consumer, Duration::from_millis(1500)).await);
        got
    }

    /// Has the gateway post the plan card (in Alice's chat) and returns it as Telegram got it.
    async fn post_card(&self, js: &jetstream::Context) -> SentMessage {
        let tg = ChannelName::new("telegram").unwrap();
        let before = self.tg.sent().len();
        self.publish_out(
            js,
            Subject::plan_proposed(&tg),
            PlanMessage::Proposed(plan()),
        )
        .await;
        until("the card", || self.tg.sent().len() > before).await;
        let card = self.tg.sent().pop().unwrap();
        assert_eq!(card.chat_id, ALICE);
        assert!(card.reply_markup.is_some());
        card
    }

    /// The last audit event the gateway wrote.
    async fn last_gateway_audit(&self) -> Envelope<AuditEvent> {
        let admin = jetstream::new(self.server.admin().await.unwrap());
        let raw = admin
            .get_stream(stream::AUDIT)
            .await
            .unwrap()
            .get_last_raw_message_by_subject("audit.gateway")
            .await
            .unwrap();
        Envelope::<AuditEvent>::decode(&raw.payload).unwrap()
    }

    /// Waits until `press` is answered and returns the notification text it got.
    async fn answer_of(&self, press: &str) -> Option<String> {
        until("the press to be answered", || {
            self.tg
                .answered_callbacks()
                .iter()
                .any(|a| a.callback_query_id == press)
        })
        .await;
        self.tg
            .answered_callbacks()
            .into_iter()
            .find(|a| a.callback_query_id == press)
            .unwrap()
            .text
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

async fn until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn texts(msgs: &[(String, Vec<u8>)]) -> Vec<String> {
    msgs.iter()
        .map(|(subject, payload)| {
            assert_eq!(subject, "chat.in.telegram");
            let ChatIn::Text(t) = Envelope::<ChatIn>::decode(payload).unwrap().body;
            assert_eq!(t.user.as_str(), "telegram:42");
            assert_eq!(t.chat.chat_id.as_str(), "42");
            t.text
        })
        .collect()
}

fn tg_chat() -> ChatRef {
    ChatRef {
        channel: ChannelName::new("telegram").unwrap(),
        chat_id: PlatformRef::new(ALICE.to_string()).unwrap(),
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

fn out(key: &str, text: &str, buttons: Vec<Button>) -> OutboundMessage {
    OutboundMessage {
        chat: tg_chat(),
        key: key.into(),
        text: text.into(),
        buttons,
    }
}

#[tokio::test]
async fn a_users_text_arrives_once_and_the_offset_is_confirmed() {
    let h = Harness::start().await;
    let gw = h.gateway().await;
    let js = h.orchestrator().await;
    h.tg.user_says(ALICE, ALICE, "start bedtime");
    let got = h.chat_in(&js, 1).await;
    assert_eq!(texts(&got), ["start bedtime"]);
    until("the update to be confirmed", || h.tg.pending_updates() == 0).await;
    assert!(h.tg.sent().is_empty(), "no reply from the gateway itself");
    gw.stop().await;
}

#[tokio::test]
async fn an_unknown_user_is_dropped_audited_and_gets_no_reply() {
    let h = Harness::start().await;
    let gw = h.gateway().await;
    let js = h.orchestrator().await;
    h.tg.user_says(MALLORY, MALLORY, "start bedtime");
    h.tg.user_says(ALICE, ALICE, "hello");
    let got = h.chat_in(&js, 1).await;
    assert_eq!(
        texts(&got),
        ["hello"],
        "only the allowlisted user's message"
    );
    assert!(h.tg.sent().is_empty());
    // The audit row, from the gateway's own audit subject.
    let admin = jetstream::new(h.server.admin().await.unwrap());
    let raw = admin
        .get_stream(stream::AUDIT)
        .await
        .unwrap()
        .get_last_raw_message_by_subject("audit.gateway")
        .await
        .unwrap();
    let e = Envelope::<AuditEvent>::decode(&raw.payload).unwrap();
    match e.body {
        AuditEvent::SenderRejected {
            channel,
            platform_user,
            code,
        } => {
            assert_eq!(channel.as_str(), "telegram");
            assert_eq!(platform_user, "666");
            assert_eq!(code.as_str(), "sender_not_allowlisted");
        }
        other => panic!("unexpected audit event {other:?}"),
    }
    assert_eq!(e.sender, Principal::gateway());
    gw.stop().await;
}

#[tokio::test]
async fn a_button_press_becomes_a_decision_and_is_answered() {
    let h = Harness::start().await;
    let gw = h.gateway().await;
    let js = h.orchestrator().await;
    let card = h.post_card(&js).await;
    let too_long =
        h.tg.user_presses(ALICE, ALICE, card.message_id, &"x".repeat(65));
    let press =
        h.tg.user_presses(ALICE, ALICE, card.message_id, "ap:0123456789");
    let got = h.chat_in(&js, 1).await;
    assert_eq!(got.len(), 1, "the over-long payload is not published");
    assert_eq!(got[0].0, "chat.decision.telegram");
    let ChatDecision::Button(b) = Envelope::<ChatDecision>::decode(&got[0].1).unwrap().body else {
        panic!("not a button press");
    };
    assert_eq!(b.payload, "ap:0123456789");
    assert_eq!(b.user.as_str(), "telegram:42");
    assert_eq!(b.platform_ref.as_str(), press);
    assert_eq!(
        b.message_ref.map(|m| m.as_str().to_owned()),
        Some(card.message_id.to_string())
    );
    until("both presses answered", || {
        h.tg.answered_callbacks().len() == 2
    })
    .await;
    let answered: Vec<String> =
        h.tg.answered_callbacks()
            .into_iter()
            .map(|a| a.callback_query_id)
            .collect();
    assert_eq!(answered, [too_long, press]);
    assert!(h.tg.answered_callbacks().iter().all(|a| a.text.is_none()));
    gw.stop().await;
}

#[tokio::test]
async fn a_restart_neither_loses_nor_repeats_updates() {
    let h = Harness::start().await;
    let js = h.orchestrator().await;
    let gw = h.gateway().await;
    h.tg.user_says(ALICE, ALICE, "one");
    assert_eq!(texts(&h.chat_in(&js, 1).await), ["one"]);
    gw.stop().await;
    // While the gateway is down.
    h.tg.user_says(ALICE, ALICE, "two");
    let gw = h.gateway().await;
    h.tg.user_says(ALICE, ALICE, "three");
    assert_eq!(texts(&h.chat_in(&js, 2).await), ["two", "three"]);
    gw.stop().await;
    // The cursor persisted; a third start sees nothing new.
    let gw = h.gateway().await;
    assert!(h.chat_in(&js, 0).await.is_empty());
    gw.stop().await;
}

fn plan() -> PlanProposal {
    PlanProposal {
        plan_id: PlanId::from_bytes([1; 16]),
        approval_id: ApprovalId::from_bytes([2; 16]),
        chat: tg_chat(),
        requested_by: ChatUser::new("telegram:42").unwrap(),
        summary: "Bedtime".into(),
        steps: vec![ProposedStep {
            agent: AgentName::new("hue").unwrap(),
            action: ActionName::new("room.set").unwrap(),
            params: serde_json::json!({"room": "Kitchen", "on": false}),
            why: "Kitchen <off>".into(),
            effect: Effect::Change,
        }],
        buttons: buttons(),
        short_code: "4821".into(),
        expires_at: UnixMillis(0),
    }
}

#[tokio::test]
async fn outbound_posts_with_a_keyboard_then_edits_the_same_message() {
    let h = Harness::start().await;
    let gw = h.gateway().await;
    let js = h.orchestrator().await;
    let tg = ChannelName::new("telegram").unwrap();
    h.publish_out(
        &js,
        Subject::plan_proposed(&tg),
        PlanMessage::Proposed(plan()),
    )
    .await;
    h.publish_out(
        &js,
        Subject::chat_out(&tg),
        ChatOut::Post(out("note-1", "Lights <off> & locked", buttons())),
    )
    .await;
    until("two messages sent", || h.tg.sent().len() == 2).await;
    let sent = h.tg.sent();
    assert_eq!(sent[0].chat_id, ALICE);
    assert_eq!(sent[0].parse_mode.as_deref(), Some("HTML"));
    assert!(
        sent[0].text.contains("Kitchen &lt;off&gt;"),
        "{}",
        sent[0].text
    );
    let keyboard = &sent[0].reply_markup.as_ref().unwrap()["inline_keyboard"];
    assert_eq!(keyboard[0][0]["text"], "Approve");
    assert_eq!(keyboard[0][0]["callback_data"], "ap:0123456789");
    assert_eq!(keyboard[1][0]["callback_data"], "rj:0123456789");
    assert_eq!(sent[1].text, "Lights &lt;off&gt; &amp; locked");

    // The orchestrator edits the plan card (key = approval id) to show the decision.
    let approval = plan().approval_id.to_string();
    h.publish_out(
        &js,
        Subject::chat_out(&tg),
        ChatOut::Update(out(&approval, "Approved.", vec![])),
    )
    .await;
    until("the edit", || h.tg.edits().len() == 1).await;
    let edit = &h.tg.edits()[0];
    assert_eq!(
        (edit.chat_id, edit.message_id),
        (sent[0].chat_id, sent[0].message_id)
    );
    assert_eq!(edit.text, "Approved.");
    assert_eq!(edit.reply_markup, None, "the keyboard is gone");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(h.tg.sent().len(), 2, "nothing sent twice");
    gw.stop().await;
}

#[tokio::test]
async fn a_429_is_waited_out_and_the_message_sent_exactly_once() {
    let h = Harness::start().await;
    let gw = h.gateway().await;
    let js = h.orchestrator().await;
    let tg = ChannelName::new("telegram").unwrap();
    h.tg.rate_limit_next(1, 1);
    let started = Instant::now();
    h.publish_out(
        &js,
        Subject::chat_out(&tg),
        ChatOut::Post(out("m1", "hello", vec![])),
    )
    .await;
    until("the message", || h.tg.sent().len() == 1).await;
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "retry_after honoured"
    );
    let attempts =
        h.tg.calls()
            .iter()
            .filter(|c| c.method == "sendMessage")
            .count();
    assert_eq!(attempts, 2, "one refused, one accepted");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(h.tg.sent().len(), 1);
    gw.stop().await;
}

#[tokio::test]
async fn a_blocked_chat_is_dropped_and_does_not_stall_the_queue() {
    let h = Harness::start().await;
    let gw = h.gateway().await;
    let js = h.orchestrator().await;
    let tg = ChannelName::new("telegram").unwrap();
    h.tg.set_blocked(ALICE);
    h.publish_out(
        &js,
        Subject::chat_out(&tg),
        ChatOut::Post(out("m1", "to a blocked chat", vec![])),
    )
    .await;
    let mut other = out("m2", "to another chat", vec![]);
    other.chat.chat_id = PlatformRef::new("43").unwrap();
    h.publish_out(&js, Subject::chat_out(&tg), ChatOut::Post(other))
        .await;
    until("the second message", || h.tg.sent().len() == 1).await;
    assert_eq!(h.tg.sent()[0].chat_id, 43);
    gw.stop().await;
    // Both were acknowledged: the work queue is empty.
    let state = h.server.stream_state(stream::CHAT_OUT).await.unwrap();
    assert_eq!(state.messages, 0);
}

#[tokio::test]
async fn a_crash_after_publishing_but_before_the_cursor_write_does_not_double() {
    let h = Harness::start().await;
    let js = h.orchestrator().await;
    // A previous run published update 1 (`tg-1`) and died before persisting the cursor: the
    // update is still pending at Telegram and is delivered again.
    let id = h.tg.user_says(ALICE, ALICE, "start bedtime");
    let gw_js = jetstream::new(h.server.connect(&Principal::gateway()).await.unwrap());
    let body = ChatIn::Text(protocol::message::InboundText {
        chat: tg_chat(),
        user: ChatUser::new("telegram:42").unwrap(),
        platform_message_id: PlatformRef::new(id.to_string()).unwrap(),
        text: "start bedtime".into(),
    });
    let e = Envelope::new(
        MessageId::random(),
        CorrelationId::random(),
        Principal::gateway(),
        UnixMillis::now(),
        body,
    );
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-Msg-Id", "tg-1");
    gw_js
        .publish_with_headers("chat.in.telegram", headers, e.encode().unwrap().into())
        .await
        .unwrap()
        .await
        .unwrap();
    let gw = h.gateway().await;
    until("the update to be confirmed", || h.tg.pending_updates() == 0).await;
    assert_eq!(
        texts(&h.chat_in(&js, 1).await),
        ["start bedtime"],
        "published once"
    );
    gw.stop().await;
}

/// Asserts the gateway's last audit event is the refusal of a press by `user`.
async fn assert_press_refused_audited(h: &Harness, user: i64) {
    let e = h.last_gateway_audit().await;
    assert_eq!(e.sender, Principal::gateway());
    match e.body {
        AuditEvent::DecisionRefused { by, code } => {
            assert_eq!(by.as_str(), format!("telegram:{user}"));
            assert_eq!(code.as_str(), "button_not_shown");
        }
        other => panic!("unexpected audit event {other:?}"),
    }
}

/// The decisions on CHAT_IN, as (user, payload, message id).
fn decisions(msgs: &[(String, Vec<u8>)]) -> Vec<(String, String, String)> {
    msgs.iter()
        .map(|(subject, payload)| {
            assert_eq!(subject, "chat.decision.telegram");
            let ChatDecision::Button(b) = Envelope::<ChatDecision>::decode(payload).unwrap().body
            else {
                panic!("not a button press");
            };
            (
                b.user.as_str().to_owned(),
                b.payload,
                b.message_ref.unwrap().as_str().to_owned(),
            )
        })
        .collect()
}

#[tokio::test]
async fn a_forged_press_publishes_nothing_and_is_audited_and_answered() {
    let h = Harness::start().await;
    let gw = h.gateway().await;
    let js = h.orchestrator().await;
    let card = h.post_card(&js).await;
    // Data that was never on that message (well formed, within 64 bytes), and a real button on
    // a message the gateway never sent.
    let forged =
        h.tg.user_presses(ALICE, ALICE, card.message_id, "ap:9999999999");
    let unknown =
        h.tg.user_presses(ALICE, ALICE, card.message_id + 1, "ap:0123456789");
    assert_eq!(
        h.answer_of(&forged).await.as_deref(),
        Some(REFUSED_PRESS_TEXT)
    );
    assert_press_refused_audited(&h, ALICE).await;
    assert_eq!(
        h.answer_of(&unknown).await.as_deref(),
        Some(REFUSED_PRESS_TEXT)
    );
    assert_press_refused_audited(&h, ALICE).await;
    // Then the real press: the only thing published.
    let real =
        h.tg.user_presses(ALICE, ALICE, card.message_id, "rj:0123456789");
    assert_eq!(h.answer_of(&real).await, None);
    assert_eq!(
        decisions(&h.chat_in(&js, 1).await),
        [(
            "telegram:42".to_owned(),
            "rj:0123456789".to_owned(),
            card.message_id.to_string()
        )]
    );
    until("every update confirmed", || h.tg.pending_updates() == 0).await;
    gw.stop().await;
}

#[tokio::test]
async fn a_button_pressed_from_another_chat_is_refused() {
    let h = Harness::start().await;
    let gw = h.gateway_for(&[ALICE, BOB]).await;
    let js = h.orchestrator().await;
    let card = h.post_card(&js).await;
    // Bob's chat has a message with the same id (no buttons).
    let tg = ChannelName::new("telegram").unwrap();
    let mut to_bob = out("note-bob", "hello Bob", vec![]);
    to_bob.chat.chat_id = PlatformRef::new(BOB.to_string()).unwrap();
    h.publish_out(&js, Subject::chat_out(&tg), ChatOut::Post(to_bob))
        .await;
    until("Bob's message", || h.tg.sent().len() == 2).await;
    let bobs = h.tg.sent()[1].clone();
    assert_eq!((bobs.chat_id, bobs.message_id), (BOB, card.message_id));
    // Alice's Approve, pressed with Bob's chat and message ids: by Bob, and by Alice.
    let by_bob =
        h.tg.user_presses(BOB, BOB, card.message_id, "ap:0123456789");
    assert_eq!(
        h.answer_of(&by_bob).await.as_deref(),
        Some(REFUSED_PRESS_TEXT)
    );
    assert_press_refused_audited(&h, BOB).await;
    let by_alice =
        h.tg.user_presses(ALICE, BOB, card.message_id, "ap:0123456789");
    assert_eq!(
        h.answer_of(&by_alice).await.as_deref(),
        Some(REFUSED_PRESS_TEXT)
    );
    assert_press_refused_audited(&h, ALICE).await;
    assert!(h.chat_in(&js, 0).await.is_empty(), "nothing published");
    until("every update confirmed", || h.tg.pending_updates() == 0).await;
    gw.stop().await;
}

#[tokio::test]
async fn a_button_whose_keyboard_an_edit_removed_is_refused() {
    let h = Harness::start().await;
    let gw = h.gateway().await;
    let js = h.orchestrator().await;
    let card = h.post_card(&js).await;
    let tg = ChannelName::new("telegram").unwrap();
    let approval = plan().approval_id.to_string();
    h.publish_out(
        &js,
        Subject::chat_out(&tg),
        ChatOut::Update(out(&approval, "Approved.", vec![])),
    )
    .await;
    until("the edit", || h.tg.edits().len() == 1).await;
    assert_eq!(h.tg.edits()[0].reply_markup, None);
    let stale =
        h.tg.user_presses(ALICE, ALICE, card.message_id, "ap:0123456789");
    assert_eq!(
        h.answer_of(&stale).await.as_deref(),
        Some(REFUSED_PRESS_TEXT)
    );
    assert_press_refused_audited(&h, ALICE).await;
    assert!(h.chat_in(&js, 0).await.is_empty(), "nothing published");

    // An edit that shows new buttons: only those count from now on.
    let again = vec![Button {
        label: "Undo".into(),
        payload: "un:0123456789".into(),
    }];
    h.publish_out(
        &js,
        Subject::chat_out(&tg),
        ChatOut::Update(out(&approval, "Approved. Undo?", again)),
    )
    .await;
    until("the second edit", || h.tg.edits().len() == 2).await;
    let old =
        h.tg.user_presses(ALICE, ALICE, card.message_id, "rj:0123456789");
    assert_eq!(h.answer_of(&old).await.as_deref(), Some(REFUSED_PRESS_TEXT));
    let undo =
        h.tg.user_presses(ALICE, ALICE, card.message_id, "un:0123456789");
    assert_eq!(h.answer_of(&undo).await, None);
    assert_eq!(
        decisions(&h.chat_in(&js, 1).await),
        [(
            "telegram:42".to_owned(),
            "un:0123456789".to_owned(),
            card.message_id.to_string()
        )]
    );
    gw.stop().await;
}

#[tokio::test]
async fn oversized_and_too_frequent_input_is_refused_told_once_and_audited() {
    let h = Harness::start().await;
    let limits = Limits {
        max_text_chars: 100,
        burst: 3,
        refill_every: Duration::from_secs(600),
    };
    let gw = h.gateway_with(&[ALICE], limits).await;
    let js = h.orchestrator().await;
    // SV-09: a 1 MB message (a client can send what Telegram cannot, through a forged webhook
    // or a future API change: the gateway's own limit is what counts).
    h.tg.user_says(ALICE, ALICE, &"x".repeat(1 << 20));
    until("the length notice", || h.tg.sent().len() == 1).await;
    let notice = h.tg.sent().pop().unwrap();
    assert_eq!(notice.chat_id, ALICE);
    assert!(notice.reply_markup.is_none());
    assert!(
        notice.text.starts_with(
            "That message is too long: the limit is 100 characters. (code chat_text_too_long, ref "
        ),
        "{}",
        notice.text
    );
    let refused = h.last_gateway_audit().await;
    match &refused.body {
        AuditEvent::InputRefused { by, code } => {
            assert_eq!(by.as_str(), "telegram:42");
            assert_eq!(code.as_str(), "chat_text_too_long");
        }
        other => panic!("unexpected audit event {other:?}"),
    }
    // The reference the user sees is the audit row's correlation id.
    assert!(notice.text.contains(&refused.correlation_id.to_string()));
    // The burst is 3 and the oversized message spent one: two pass, then one notice for the
    // whole streak, then silence.
    for text in ["one", "two", "three", "four", "five"] {
        h.tg.user_says(ALICE, ALICE, text);
    }
    let got = h.chat_in(&js, 2).await;
    assert_eq!(texts(&got), ["one", "two"]);
    until("every update confirmed", || h.tg.pending_updates() == 0).await;
    let sent = h.tg.sent();
    assert_eq!(sent.len(), 2, "one notice per refusal streak: {sent:?}");
    assert!(
        sent[1]
            .text
            .starts_with("Too many messages: please wait 600 s and try again. (code rate_limited"),
        "{}",
        sent[1].text
    );
    match h.last_gateway_audit().await.body {
        AuditEvent::InputRefused { code, .. } => assert_eq!(code.as_str(), "rate_limited"),
        other => panic!("unexpected audit event {other:?}"),
    }
    gw.stop().await;
}

#[tokio::test]
async fn the_api_down_loses_and_doubles_nothing() {
    let h = Harness::start().await;
    let gw = h.gateway().await;
    let js = h.orchestrator().await;
    h.tg.user_says(ALICE, ALICE, "before");
    assert_eq!(texts(&h.chat_in(&js, 1).await), ["before"]);
    // Telegram goes down (502 on every call, the port still bound): the user's message waits
    // at Telegram, and an outbound message waits in the gateway's queue.
    h.tg.set_down(true);
    h.tg.user_says(ALICE, ALICE, "during");
    h.publish_out(
        &js,
        Subject::chat_out(&ChannelName::new("telegram").unwrap()),
        ChatOut::Post(out("k-down", "sent while Telegram was down", Vec::new())),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(h.tg.sent().is_empty());
    // Both loops kept trying (and were answered 502) without giving up.
    let during = h.tg.answered_down();
    assert!(
        during
            .iter()
            .any(|m| m == "GetUpdates" || m == "getUpdates")
            && during
                .iter()
                .any(|m| m == "SendMessage" || m == "sendMessage"),
        "{during:?}"
    );
    h.tg.set_down(false);
    let got = h.chat_in(&js, 1).await;
    assert_eq!(texts(&got), ["during"], "delivered once after the outage");
    until("the queued message", || !h.tg.sent().is_empty()).await;
    // Long enough for a duplicate to show.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let sent = h.tg.sent();
    assert_eq!(sent.len(), 1, "sent exactly once: {sent:?}");
    assert_eq!(sent[0].text, "sent while Telegram was down");
    gw.stop().await;
}

#[tokio::test]
async fn a_one_time_code_pairs_a_new_user_for_good() {
    use notify_gateway::inbound::PAIRED_TEXT;
    let h = Harness::start().await;
    let js = h.orchestrator().await;
    // `bot pair telegram` writes the code into the gateway's state database.
    let code = notify_gateway::pairing::new_code().unwrap();
    Store::open(&h.db)
        .unwrap()
        .start_pairing("telegram", &code, UnixMillis::now().0)
        .await
        .unwrap();
    let gw = h.gateway().await;
    // A stranger guessing gets nothing; Bob, with the code, is paired and told so.
    h.tg.user_says(MALLORY, MALLORY, "AAAA-AAAA");
    h.tg.user_says(BOB, BOB, "hello");
    h.tg.user_says(BOB, BOB, &format!("/start {}", code.to_lowercase()));
    h.tg.user_says(BOB, BOB, "start bedtime");
    let got = h.chat_in(&js, 1).await;
    let texts: Vec<(String, String)> = got
        .iter()
        .map(|(_, p)| {
            let ChatIn::Text(t) = Envelope::<ChatIn>::decode(p).unwrap().body;
            (t.user.to_string(), t.text)
        })
        .collect();
    assert_eq!(
        texts,
        [("telegram:43".to_owned(), "start bedtime".to_owned())],
        "neither the code nor Bob's earlier message is forwarded"
    );
    let sent = h.tg.sent();
    assert_eq!(sent.len(), 1, "only Bob is answered: {sent:?}");
    assert_eq!((sent[0].chat_id, sent[0].text.as_str()), (BOB, PAIRED_TEXT));
    // The pairing is audited.
    let admin = jetstream::new(h.server.admin().await.unwrap());
    let audit = admin.get_stream(stream::AUDIT).await.unwrap();
    let mut paired = Vec::new();
    let info = audit.get_info().await.unwrap();
    for seq in info.state.first_sequence..=info.state.last_sequence {
        if let Ok(raw) = audit.get_raw_message(seq).await
            && let Ok(e) = Envelope::<AuditEvent>::decode(&raw.payload)
            && let AuditEvent::UserPaired { user } = e.body
        {
            paired.push(user.to_string());
        }
    }
    assert_eq!(paired, ["telegram:43"]);
    // The code is used up: Mallory cannot reuse it.
    h.tg.user_says(MALLORY, MALLORY, &code);
    until("every update handled", || h.tg.pending_updates() == 0).await;
    gw.stop().await;
    // After a restart Bob is still allowed, Mallory still is not.
    let gw = h.gateway().await;
    h.tg.user_says(MALLORY, MALLORY, "let me in");
    h.tg.user_says(BOB, BOB, "good morning");
    let got = h.chat_in(&js, 1).await;
    assert_eq!(got.len(), 1);
    let ChatIn::Text(t) = Envelope::<ChatIn>::decode(&got[0].1).unwrap().body;
    assert_eq!(
        (t.user.as_str(), t.text.as_str()),
        ("telegram:43", "good morning")
    );
    assert_eq!(h.tg.sent().len(), 1, "nothing more was sent");
    gw.stop().await;
}
