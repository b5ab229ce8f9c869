//! The Slack channel end to end: the Slack double (Web API + Socket Mode), a real nats-server
//! with our generated config, the gateway's SQLite state in a tempdir; and the Events API
//! endpoint with signed (and forged, stale, retried) requests.
#![cfg(feature = "slack")]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_nats::jetstream;
use futures::StreamExt as _;
use notify_gateway::inbound::Allowlist;
use notify_gateway::slack::events_api::Endpoint;
use notify_gateway::slack::signing::{SigningSecret, sign};
use notify_gateway::slack::{Slack, SlackSettings, SlackToken};
use notify_gateway::store::Store;
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
use test_support::fake_slack::{APP_TOKEN, BOT_TOKEN, FakeSlack, TEAM_ID};

const ALICE: &str = "U0ALICE01";
const ALICE_DM: &str = "D0ALICE01";
const MALLORY: &str = "U0MALLORY";
const MALLORY_DM: &str = "D0MALLORY";
const WAIT: Duration = Duration::from_secs(15);
const SECRET: &str = "8f742231b10e8888abcd99yyyzzz85a5";

struct Harness {
    server: NatsServer,
    slack: FakeSlack,
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

fn name() -> ChannelName {
    ChannelName::new("slack").unwrap()
}

impl Harness {
    async fn start() -> Harness {
        provision::client::install_crypto_provider();
        let server = NatsServer::start(&["hue"]).await.unwrap();
        let slack = FakeSlack::start().await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("gateway.sqlite");
        Harness {
            server,
            slack,
            _dir: dir,
            db,
        }
    }

    fn settings(&self) -> SlackSettings {
        SlackSettings {
            bot_token: SlackToken::new(BOT_TOKEN),
            api_url: self.slack.api_url(),
            team_id: Some(TEAM_ID.to_owned()),
            poll_wait: Duration::from_secs(1),
        }
    }

    async fn gateway(&self) -> Running {
        let channel =
            Slack::socket_mode(name(), self.settings(), SlackToken::new(APP_TOKEN)).unwrap();
        self.run(channel).await
    }

    /// A gateway taking events from an Events API endpoint; returns its address too.
    async fn events_gateway(&self) -> (Running, std::net::SocketAddr) {
        let client = self.server.connect(&Principal::gateway()).await.unwrap();
        let audit = audit::emit::AuditEmitter::new(jetstream::new(client), Principal::gateway());
        let endpoint = Endpoint::bind(
            "127.0.0.1:0".parse().unwrap(),
            SigningSecret::new(SECRET).unwrap(),
            Some(TEAM_ID.to_owned()),
            name(),
            Some(audit),
        )
        .await
        .unwrap();
        let addr = endpoint.local_addr();
        let channel = Slack::events_api(name(), self.settings(), endpoint).unwrap();
        (self.run(channel).await, addr)
    }

    async fn run(&self, channel: Slack) -> Running {
        let client = self.server.connect(&Principal::gateway()).await.unwrap();
        let store = Store::open(&self.db).unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(notify_gateway::run(
            channel,
            Allowlist::new([ALICE]),
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
        got.extend(fetch(&consumer, Duration::from_millis(1500)).await);
        got
    }

    /// Has the gateway post the plan card in Alice's DM; returns its `ts`.
    async fn post_card(&self, js: &jetstream::Context) -> String {
        self.slack.add_channel(ALICE_DM);
        let before = self.slack.posted().len();
        self.publish_out(
            js,
            Subject::plan_proposed(&name()),
            PlanMessage::Proposed(plan()),
        )
        .await;
        until("the card", || self.slack.posted().len() > before).await;
        let card = self.slack.posted().pop().unwrap();
        assert_eq!(card.channel, ALICE_DM);
        card.ts
    }

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

    async fn gateway_audit_count(&self) -> usize {
        let admin = jetstream::new(self.server.admin().await.unwrap());
        let s = admin.get_stream(stream::AUDIT).await.unwrap();
        let consumer = s
            .create_consumer(jetstream::consumer::pull::Config {
                filter_subject: "audit.gateway".into(),
                ..Default::default()
            })
            .await
            .unwrap();
        let mut n = 0;
        let mut batch = consumer
            .fetch()
            .max_messages(100)
            .expires(Duration::from_millis(500))
            .messages()
            .await
            .unwrap();
        while let Some(m) = batch.next().await {
            let _ = m.unwrap();
            n += 1;
        }
        n
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

    /// Makes CHAT_IN stop taking `chat.in.slack` (`on = false`) or take it again: while off, a
    /// publish by the gateway gets no JetStream acknowledgement.
    async fn chat_in_takes_slack(&self, on: bool) {
        let admin = jetstream::new(self.server.admin().await.unwrap());
        let mut s = admin.get_stream(stream::CHAT_IN).await.unwrap();
        let mut config = s.info().await.unwrap().config.clone();
        config.subjects = if on {
            vec!["chat.in.>".into(), "chat.decision.>".into()]
        } else {
            vec!["chat.in.telegram".into(), "chat.decision.>".into()]
        };
        admin.update_stream(config).await.unwrap();
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
            assert_eq!(subject, "chat.in.slack");
            let ChatIn::Text(t) = Envelope::<ChatIn>::decode(payload).unwrap().body;
            assert_eq!(t.user.as_str(), format!("slack:{ALICE}"));
            assert_eq!(t.chat.chat_id.as_str(), ALICE_DM);
            t.text
        })
        .collect()
}

fn decisions(msgs: &[(String, Vec<u8>)]) -> Vec<(String, String, String)> {
    msgs.iter()
        .map(|(subject, payload)| {
            assert_eq!(subject, "chat.decision.slack");
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

fn chat() -> ChatRef {
    ChatRef {
        channel: name(),
        chat_id: PlatformRef::new(ALICE_DM).unwrap(),
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
        chat: chat(),
        key: key.into(),
        text: text.into(),
        buttons,
    }
}

fn plan() -> PlanProposal {
    PlanProposal {
        plan_id: PlanId::from_bytes([1; 16]),
        approval_id: ApprovalId::from_bytes([2; 16]),
        chat: chat(),
        requested_by: ChatUser::new(format!("slack:{ALICE}")).unwrap(),
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

#[tokio::test]
async fn a_dm_arrives_once_and_is_acknowledged_only_after_jetstream_took_it() {
    let h = Harness::start().await;
    let js = h.orchestrator().await;
    h.chat_in_takes_slack(false).await;
    let gw = h.gateway().await;
    let env = h.slack.user_says(ALICE, ALICE_DM, "start bedtime");
    // JetStream cannot take it: the gateway keeps retrying and Slack gets no acknowledgement.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        h.slack.deliveries(&env) >= 1,
        "the envelope reached the gateway"
    );
    assert!(
        !h.slack.is_acked(&env),
        "acknowledged before JetStream took it"
    );
    h.chat_in_takes_slack(true).await;
    assert!(h.slack.wait_for_ack(&env, WAIT).await);
    assert_eq!(texts(&h.chat_in(&js, 1).await), ["start bedtime"]);
    assert!(
        h.slack.posted().is_empty(),
        "no reply from the gateway itself"
    );
    gw.stop().await;
}

#[tokio::test]
async fn an_unknown_user_is_dropped_audited_and_gets_no_reply() {
    let h = Harness::start().await;
    let gw = h.gateway().await;
    let js = h.orchestrator().await;
    let mallory = h.slack.user_says(MALLORY, MALLORY_DM, "start bedtime");
    assert!(h.slack.wait_for_ack(&mallory, WAIT).await);
    match h.last_gateway_audit().await.body {
        AuditEvent::SenderRejected {
            channel,
            platform_user,
            code,
        } => {
            assert_eq!(channel.as_str(), "slack");
            assert_eq!(platform_user, MALLORY);
            assert_eq!(code.as_str(), "sender_not_allowlisted");
        }
        other => panic!("unexpected audit event {other:?}"),
    }
    h.slack.user_says(ALICE, ALICE_DM, "hello");
    assert_eq!(texts(&h.chat_in(&js, 1).await), ["hello"]);
    assert!(h.slack.posted().is_empty());
    gw.stop().await;
}

#[tokio::test]
async fn channel_messages_are_ignored_but_acknowledged() {
    let h = Harness::start().await;
    let gw = h.gateway().await;
    let js = h.orchestrator().await;
    let public = h.slack.user_says(ALICE, "C0GENERAL", "start bedtime");
    h.slack.user_says(ALICE, ALICE_DM, "in private");
    assert_eq!(texts(&h.chat_in(&js, 1).await), ["in private"]);
    assert!(h.slack.is_acked(&public));
    gw.stop().await;
}

#[tokio::test]
async fn edits_bot_messages_and_other_events_are_acknowledged_but_not_published() {
    let h = Harness::start().await;
    let gw = h.gateway().await;
    let js = h.orchestrator().await;
    let edit = h.slack.message_event(
        ALICE,
        ALICE_DM,
        json!({"subtype": "message_changed", "text": "start bedtime"}),
    );
    let bot = h.slack.message_event(
        ALICE,
        ALICE_DM,
        json!({"bot_id": "B0OTHER01", "text": "start bedtime"}),
    );
    let deleted = h.slack.message_event(
        ALICE,
        ALICE_DM,
        json!({"subtype": "message_deleted", "hidden": true}),
    );
    h.slack.user_says(ALICE, ALICE_DM, "the real one");
    assert_eq!(texts(&h.chat_in(&js, 1).await), ["the real one"]);
    for env in [&edit, &bot, &deleted] {
        assert!(h.slack.is_acked(env), "{env}");
    }
    gw.stop().await;
}

#[tokio::test]
async fn a_redelivery_to_the_same_gateway_is_acknowledged_without_republishing_or_reauditing() {
    let h = Harness::start().await;
    let js = h.orchestrator().await;
    let gw = h.gateway().await;
    h.slack.set_ignore_acks(true);
    let said = h.slack.user_says(ALICE, ALICE_DM, "start bedtime");
    let stranger = h.slack.user_says(MALLORY, MALLORY_DM, "hello");
    assert_eq!(texts(&h.chat_in(&js, 1).await), ["start bedtime"]);
    until("both handled", || h.slack.deliveries(&stranger) == 1).await;
    let audits = h.gateway_audit_count().await;
    assert_eq!(audits, 1, "one sender_rejected");
    // The acknowledgements were lost; Slack redelivers both on the next connection.
    h.slack.set_ignore_acks(false);
    h.slack.disconnect();
    assert!(h.slack.wait_for_ack(&said, WAIT).await);
    assert!(h.slack.wait_for_ack(&stranger, WAIT).await);
    assert_eq!(h.slack.deliveries(&said), 2);
    assert!(h.chat_in(&js, 0).await.is_empty(), "not published again");
    assert_eq!(h.gateway_audit_count().await, audits, "not audited again");
    gw.stop().await;
}

#[tokio::test]
async fn a_press_of_a_shown_button_becomes_a_decision() {
    let h = Harness::start().await;
    let gw = h.gateway().await;
    let js = h.orchestrator().await;
    let ts = h.post_card(&js).await;
    let card = h.slack.posted().pop().unwrap();
    let actions = &card.blocks.as_array().unwrap().last().unwrap()["elements"];
    assert_eq!(actions[0]["value"], "ap:0123456789");
    assert_eq!(actions[1]["value"], "rj:0123456789");
    assert_ne!(actions[0]["action_id"], actions[1]["action_id"]);
    let press = h.slack.user_presses(ALICE, ALICE_DM, &ts, "ap:0123456789");
    let got = h.chat_in(&js, 1).await;
    assert_eq!(
        decisions(&got),
        [(format!("slack:{ALICE}"), "ap:0123456789".to_owned(), ts)]
    );
    assert!(h.slack.wait_for_ack(&press, WAIT).await);
    gw.stop().await;
}

async fn assert_press_refused(h: &Harness) {
    let e = h.last_gateway_audit().await;
    match e.body {
        AuditEvent::DecisionRefused { by, code } => {
            assert_eq!(by.as_str(), format!("slack:{ALICE}"));
            assert_eq!(code.as_str(), "button_not_shown");
        }
        other => panic!("unexpected audit event {other:?}"),
    }
}

#[tokio::test]
async fn forged_misplaced_and_stale_presses_are_refused_and_audited() {
    let h = Harness::start().await;
    let gw = h.gateway().await;
    let js = h.orchestrator().await;
    let ts = h.post_card(&js).await;

    let forged = h.slack.user_presses(ALICE, ALICE_DM, &ts, "ap:9999999999");
    assert!(h.slack.wait_for_ack(&forged, WAIT).await);
    assert_press_refused(&h).await;

    h.slack.add_channel("D0OTHER01");
    let elsewhere = h
        .slack
        .user_presses(ALICE, "D0OTHER01", &ts, "ap:0123456789");
    assert!(h.slack.wait_for_ack(&elsewhere, WAIT).await);
    assert_press_refused(&h).await;

    // The decision is shown: the card is updated and its buttons are gone.
    let approval = plan().approval_id.to_string();
    h.publish_out(
        &js,
        Subject::chat_out(&name()),
        ChatOut::Update(out(&approval, "Approved.", vec![])),
    )
    .await;
    until("the update", || h.slack.updates().len() == 1).await;
    let update = &h.slack.updates()[0];
    assert_eq!(
        (update.channel.as_str(), update.ts.as_str()),
        (ALICE_DM, ts.as_str())
    );
    let blocks = update.blocks.as_array().unwrap();
    assert!(
        blocks.iter().all(|b| b["type"] != "actions"),
        "buttons removed"
    );
    let stale = h.slack.user_presses(ALICE, ALICE_DM, &ts, "ap:0123456789");
    assert!(h.slack.wait_for_ack(&stale, WAIT).await);
    assert_press_refused(&h).await;

    assert!(h.chat_in(&js, 0).await.is_empty(), "nothing published");
    gw.stop().await;
}

#[tokio::test]
async fn a_gateway_killed_before_confirming_gets_the_envelope_again_and_publishes_once() {
    let h = Harness::start().await;
    let js = h.orchestrator().await;
    // The first gateway publishes, but its acknowledgement never reaches Slack (it died).
    h.slack.set_ignore_acks(true);
    let gw = h.gateway().await;
    let env = h.slack.user_says(ALICE, ALICE_DM, "start bedtime");
    until("the publish", || h.slack.deliveries(&env) == 1).await;
    let first = h.chat_in(&js, 1).await;
    assert_eq!(texts(&first), ["start bedtime"]);
    gw.stop().await;
    h.slack.set_ignore_acks(false);
    // Slack redelivers it on the next connection; JetStream drops the re-publish.
    let gw = h.gateway().await;
    assert!(h.slack.wait_for_ack(&env, WAIT).await);
    assert_eq!(h.slack.deliveries(&env), 2);
    assert!(h.chat_in(&js, 0).await.is_empty(), "published exactly once");
    // A disconnect (refresh) is followed by a reconnect, and traffic goes on.
    let connections = h.slack.connections();
    h.slack.disconnect();
    h.slack.user_says(ALICE, ALICE_DM, "after the refresh");
    assert_eq!(texts(&h.chat_in(&js, 1).await), ["after the refresh"]);
    assert!(h.slack.connections() > connections);
    gw.stop().await;
}

#[tokio::test]
async fn a_429_is_waited_out_and_the_message_posted_exactly_once() {
    let h = Harness::start().await;
    let gw = h.gateway().await;
    let js = h.orchestrator().await;
    h.slack.add_channel(ALICE_DM);
    h.slack.rate_limit_next(1, 1);
    let started = Instant::now();
    h.publish_out(
        &js,
        Subject::chat_out(&name()),
        ChatOut::Post(out("m1", "hello <@U0EVIL> & co", vec![])),
    )
    .await;
    until("the message", || h.slack.posted().len() == 1).await;
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "Retry-After honoured"
    );
    let attempts = h
        .slack
        .calls()
        .iter()
        .filter(|c| *c == "chat.postMessage")
        .count();
    assert_eq!(
        attempts, 1,
        "the 429 answered before the method was reached"
    );
    let posted = &h.slack.posted()[0];
    assert_eq!(posted.text, "hello &lt;@U0EVIL&gt; &amp; co");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(h.slack.posted().len(), 1);
    gw.stop().await;
}

#[tokio::test]
async fn the_api_down_then_back_loses_and_doubles_nothing() {
    let h = Harness::start().await;
    let gw = h.gateway().await;
    let js = h.orchestrator().await;
    h.slack.add_channel(ALICE_DM);
    h.slack.set_down(true);
    for i in 0..3 {
        h.publish_out(
            &js,
            Subject::chat_out(&name()),
            ChatOut::Post(out(&format!("m{i}"), &format!("message {i}"), vec![])),
        )
        .await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(h.slack.posted().is_empty());
    h.slack.set_down(false);
    until("all three", || h.slack.posted().len() == 3).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let texts: Vec<String> = h.slack.posted().into_iter().map(|p| p.text).collect();
    assert_eq!(texts, ["message 0", "message 1", "message 2"]);
    gw.stop().await;
    // A post to a channel Slack refuses is dropped, not retried forever.
    let gw = h.gateway().await;
    let mut lost = out("m9", "to nowhere", vec![]);
    lost.chat.chat_id = PlatformRef::new("D0NOWHERE").unwrap();
    h.publish_out(&js, Subject::chat_out(&name()), ChatOut::Post(lost))
        .await;
    h.publish_out(
        &js,
        Subject::chat_out(&name()),
        ChatOut::Post(out("m10", "after it", vec![])),
    )
    .await;
    until("the next message", || h.slack.posted().len() == 4).await;
    gw.stop().await;
    let state = h.server.stream_state(stream::CHAT_OUT).await.unwrap();
    assert_eq!(state.messages, 0);
}

// ---------------------------------------------------------------------------------------------
// Events API over HTTP

fn now() -> i64 {
    i64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs(),
    )
    .unwrap()
}

/// POSTs `body` signed with `secret` at `ts`; returns the status and body.
async fn post_signed(
    addr: std::net::SocketAddr,
    secret: &str,
    ts: i64,
    content_type: &str,
    body: &str,
    retry: Option<u32>,
) -> (u16, String) {
    let signature = sign(
        &SigningSecret::new(secret).unwrap(),
        &ts.to_string(),
        body.as_bytes(),
    );
    let mut request = reqwest::Client::new()
        .post(format!("http://{addr}/slack/events"))
        .header("content-type", content_type)
        .header("x-slack-request-timestamp", ts.to_string())
        .header("x-slack-signature", signature)
        .body(body.to_owned());
    if let Some(n) = retry {
        request = request
            .header("x-slack-retry-num", n.to_string())
            .header("x-slack-retry-reason", "http_timeout");
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.text().await.unwrap())
}

#[tokio::test]
async fn events_api_verifies_answers_and_publishes_once() {
    let h = Harness::start().await;
    let js = h.orchestrator().await;
    let (gw, addr) = h.events_gateway().await;
    let json_type = "application/json";

    let challenge = json!({"token": "x", "challenge": "3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P", "type": "url_verification"});
    assert_eq!(
        post_signed(addr, SECRET, now(), json_type, &challenge.to_string(), None).await,
        (
            200,
            "3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P".to_owned()
        )
    );

    // The same event_callback body Socket Mode carries.
    let env = h.slack.user_says(ALICE, ALICE_DM, "start bedtime");
    let event = h.slack.envelope_payload(&env).unwrap().to_string();
    let audits = h.gateway_audit_count().await;
    let (status, _) = post_signed(
        addr,
        "wrong-secret-000000000000000000",
        now(),
        json_type,
        &event,
        None,
    )
    .await;
    assert_eq!(status, 401, "forged signature");
    until_audits(&h, audits + 1).await;
    match h.last_gateway_audit().await.body {
        AuditEvent::SenderRejected { code, .. } => assert_eq!(code.as_str(), "bad_signature"),
        other => panic!("unexpected audit event {other:?}"),
    }
    let (status, _) = post_signed(addr, SECRET, now() - 600, json_type, &event, None).await;
    assert_eq!(status, 401, "stale timestamp");
    until_audits(&h, audits + 2).await;
    match h.last_gateway_audit().await.body {
        AuditEvent::SenderRejected { code, .. } => assert_eq!(code.as_str(), "stale_timestamp"),
        other => panic!("unexpected audit event {other:?}"),
    }
    assert!(
        h.chat_in(&js, 0).await.is_empty(),
        "nothing published from refused requests"
    );

    assert_eq!(
        post_signed(addr, SECRET, now(), json_type, &event, None)
            .await
            .0,
        200
    );
    assert_eq!(texts(&h.chat_in(&js, 1).await), ["start bedtime"]);
    // Slack retries (it missed our answer): 200, not published again.
    assert_eq!(
        post_signed(addr, SECRET, now(), json_type, &event, Some(1))
            .await
            .0,
        200
    );
    assert!(
        h.chat_in(&js, 0).await.is_empty(),
        "a retry is not published twice"
    );

    // While JetStream cannot take the event, Slack gets 503 (not 200) and so retries; the retry
    // after the gateway caught up is answered 200 and published once.
    h.chat_in_takes_slack(false).await;
    let env = h.slack.user_says(ALICE, ALICE_DM, "second");
    let event = h.slack.envelope_payload(&env).unwrap().to_string();
    assert_eq!(
        post_signed(addr, SECRET, now(), json_type, &event, None)
            .await
            .0,
        503
    );
    h.chat_in_takes_slack(true).await;
    let deadline = Instant::now() + WAIT;
    for retry in 1.. {
        match post_signed(addr, SECRET, now(), json_type, &event, Some(retry))
            .await
            .0
        {
            200 => break,
            503 => assert!(Instant::now() < deadline, "never answered 200"),
            other => panic!("unexpected status {other}"),
        }
    }
    assert_eq!(texts(&h.chat_in(&js, 1).await), ["second"]);

    // Interactivity: a press, as a `payload=` form body.
    let ts = h.post_card(&js).await;
    let press = h.slack.press_payload(ALICE, ALICE_DM, &ts, "ap:0123456789");
    let form: String = form_urlencoded_body(&press);
    assert_eq!(
        post_signed(
            addr,
            SECRET,
            now(),
            "application/x-www-form-urlencoded",
            &form,
            None
        )
        .await
        .0,
        200
    );
    assert_eq!(
        decisions(&h.chat_in(&js, 1).await),
        [(format!("slack:{ALICE}"), "ap:0123456789".to_owned(), ts)]
    );
    gw.stop().await;
}

fn form_urlencoded_body(payload: &Value) -> String {
    let mut out = String::from("payload=");
    for b in payload.to_string().bytes() {
        if b.is_ascii_alphanumeric() || b"-_.*".contains(&b) {
            out.push(char::from(b));
        } else if b == b' ' {
            out.push('+');
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

async fn until_audits(h: &Harness, n: usize) {
    let deadline = Instant::now() + WAIT;
    while h.gateway_audit_count().await < n {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {n} audit rows"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn web_api_failures_are_classified_and_never_show_a_token() {
    use notify_gateway::channel::{Channel as _, Delivered, DeliveryError, Rendered};
    let h = Harness::start().await;
    let channel = Slack::socket_mode(name(), h.settings(), SlackToken::new(APP_TOKEN)).unwrap();
    let message = Rendered {
        text: "hello".into(),
        buttons: buttons(),
    };
    h.slack.add_channel(ALICE_DM);
    let delivered = channel.post(ALICE_DM, &message).await.unwrap();
    assert_eq!(delivered.chat_id, ALICE_DM);
    assert_eq!(delivered.message_id, h.slack.posted()[0].ts);
    assert_eq!(channel.auth_test().await.unwrap(), "U0FAKEBOT1");

    let cases: Vec<(&str, DeliveryError)> = vec![
        (
            "unknown channel",
            channel.post("D0NOWHERE", &message).await.unwrap_err(),
        ),
        (
            "unknown message",
            channel
                .edit(
                    &Delivered {
                        chat_id: ALICE_DM.into(),
                        message_id: "1.000001".into(),
                    },
                    &message,
                )
                .await
                .unwrap_err(),
        ),
        ("rate limited", {
            h.slack.rate_limit_next(1, 7);
            channel.post(ALICE_DM, &message).await.unwrap_err()
        }),
        ("down", {
            h.slack.set_down(true);
            let e = channel.post(ALICE_DM, &message).await.unwrap_err();
            h.slack.set_down(false);
            e
        }),
        ("archived", {
            h.slack.archive(ALICE_DM);
            channel.post(ALICE_DM, &message).await.unwrap_err()
        }),
    ];
    let shown: Vec<String> = cases
        .iter()
        .map(|(what, e)| format!("{what}: {e:?}"))
        .collect();
    assert_eq!(
        shown,
        [
            "unknown channel: Permanent(\"chat.postMessage: channel_not_found\")",
            "unknown message: Permanent(\"chat.update: message_not_found\")",
            "rate limited: RetryAfter(7s)",
            "down: Transient(\"chat.postMessage: HTTP 503\")",
            "archived: Permanent(\"chat.postMessage: is_archived\")",
        ]
    );

    // A wrong bot token: refused for good, and neither the error nor its Debug shows it.
    let secret = "xoxb-9999-wrong-very-secret-token";
    let mut settings = h.settings();
    settings.bot_token = SlackToken::new(secret);
    let wrong = Slack::socket_mode(name(), settings, SlackToken::new(APP_TOKEN)).unwrap();
    let e = wrong.post("D0OTHER01", &message).await.unwrap_err();
    assert_eq!(
        e,
        DeliveryError::Permanent("chat.postMessage: invalid_auth".into())
    );
    assert!(!format!("{wrong:?}").contains("very-secret"));
    // Nothing listens on this port any more: a network failure, transient, without the token.
    let mut settings = h.settings();
    settings.api_url = "http://127.0.0.1:9/api".into();
    settings.bot_token = SlackToken::new(secret);
    let offline = Slack::socket_mode(name(), settings, SlackToken::new(APP_TOKEN)).unwrap();
    let e = offline.post(ALICE_DM, &message).await.unwrap_err();
    assert!(matches!(e, DeliveryError::Transient(_)), "{e:?}");
    assert!(!e.to_string().contains("very-secret"), "{e}");
}

/// An independent reading of Slack's reference: slack-morphism's models (a dev-dependency
/// only) must parse what the double sends over Socket Mode and the Block Kit the channel posts.
#[tokio::test]
async fn the_double_and_our_block_kit_parse_with_slack_morphisms_models() {
    use futures::SinkExt as _;
    use notify_gateway::channel::Channel as _;
    use notify_gateway::slack::WebApi;
    use slack_morphism::prelude::{SlackBlock, SlackInteractionEvent, SlackPushEventCallback};
    use tokio_tungstenite::tungstenite::Message;

    let h = Harness::start().await;
    let channel = Slack::socket_mode(name(), h.settings(), SlackToken::new(APP_TOKEN)).unwrap();
    h.slack.add_channel(ALICE_DM);
    let card = channel.render_plan(&plan());
    let posted = channel.post(ALICE_DM, &card).await.unwrap();
    let blocks: Vec<SlackBlock> =
        serde_json::from_value(h.slack.posted()[0].blocks.clone()).unwrap();
    assert!(matches!(blocks.first(), Some(SlackBlock::Section(_))));
    assert!(matches!(blocks.last(), Some(SlackBlock::Actions(_))));
    let back = serde_json::to_value(&blocks).unwrap();
    assert_eq!(
        back.pointer("/1/elements/0/value"),
        Some(&json!("ap:0123456789"))
    );

    h.slack.user_says(ALICE, ALICE_DM, "start bedtime");
    h.slack
        .user_presses(ALICE, ALICE_DM, &posted.message_id, "ap:0123456789");
    let answer = WebApi::new(&h.slack.api_url())
        .unwrap()
        .call(&SlackToken::new(APP_TOKEN), "apps.connections.open", None)
        .await
        .unwrap();
    let (mut ws, _) = tokio_tungstenite::connect_async(answer["url"].as_str().unwrap())
        .await
        .unwrap();
    let mut parsed = Vec::new();
    while parsed.len() < 4 {
        let frame = tokio::time::timeout(WAIT, ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        let Message::Text(text) = frame else { continue };
        // slack-morphism 2.31.1 does not export its envelope type (its `socket_mode` listener
        // module shadows the model module); its payload models are public.
        let mut value: Value = serde_json::from_str(text.as_str()).unwrap();
        let payload = value["payload"].clone();
        let reread = match value["type"].as_str() {
            Some("events_api") => serde_json::to_value(
                serde_json::from_value::<SlackPushEventCallback>(payload)
                    .unwrap_or_else(|e| panic!("slack-morphism cannot parse {text}: {e}")),
            ),
            Some("interactive") => serde_json::to_value(
                serde_json::from_value::<SlackInteractionEvent>(payload)
                    .unwrap_or_else(|e| panic!("slack-morphism cannot parse {text}: {e}")),
            ),
            _ => Ok(Value::Null),
        };
        value["payload"] = reread.unwrap();
        if let Some(id) = value["envelope_id"].as_str() {
            ws.send(Message::Text(json!({"envelope_id": id}).to_string().into()))
                .await
                .unwrap();
        }
        if parsed.len() == 2 {
            h.slack.disconnect();
        }
        parsed.push(value);
    }
    assert_eq!(parsed[0]["type"], "hello");
    assert_eq!(parsed[1]["type"], "events_api");
    assert_eq!(parsed[1]["payload"]["event"]["channel_type"], "im");
    assert_eq!(parsed[1]["payload"]["event"]["text"], "start bedtime");
    assert_eq!(parsed[1]["payload"]["event"]["user"], ALICE);
    assert_eq!(parsed[2]["type"], "interactive");
    assert_eq!(parsed[2]["payload"]["type"], "block_actions");
    assert_eq!(parsed[2]["payload"]["actions"][0]["value"], "ap:0123456789");
    assert_eq!(parsed[2]["payload"]["actions"][0]["action_id"], "b0");
    assert_eq!(parsed[3]["type"], "disconnect");
}
