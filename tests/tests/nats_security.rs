//! NATS cases of the security suite (SECURITY-SUITE.md §6), against a real nats-server running
//! our generated configuration.
//!
//! Every refusal is checked from both sides: the attacker sees the refusal (a `Permissions
//! Violation` `-ERR` on its connection, or a failed connect), and the legitimate party sees
//! nothing (a subscriber receives nothing after a round trip through the server; stream message
//! counts are unchanged). Each case also has a positive control: the same observation, applied to
//! a permitted action, does see the delivery, so the silence is not an artefact of the test.
//!
//! Ordering: async-nats 0.51's `flush` does not wait for the server, so every "the server has
//! processed this" step is a real round trip ([`Conn::sync`], see `ServerErrors::sync`), and
//! every "the stream would have stored it" step is an acknowledged JetStream publish sent after
//! the attempt (streams store in arrival order).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::print_stdout,
    clippy::print_stderr
)]

use std::path::Path;
use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream};
use async_nats::{Client, ConnectErrorKind, ConnectOptions, Subscriber};
use futures::StreamExt;
use protocol::Principal;
use protocol::acl::Identity;
use protocol::subject::stream as names;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use test_support::{NatsServer, ServerErrors};

/// How long a subscription is watched after a round trip on its connection. After the round
/// trip, a delivered message is already in the subscription's channel; the window only covers
/// task scheduling. The positive controls use the same window.
const WINDOW: Duration = Duration::from_millis(200);
/// How long to wait for something that must happen.
const WAIT: Duration = Duration::from_secs(5);

/// One connection and the errors the server sent it.
struct Conn {
    client: Client,
    errors: ServerErrors,
}

impl Conn {
    async fn open(server: &NatsServer, who: &Principal) -> Conn {
        let (client, errors) = server.connect_watching(who).await.unwrap();
        Conn { client, errors }
    }

    /// A round trip through the server (everything sent before is processed, everything the
    /// server sent before is dispatched).
    async fn sync(&self) {
        self.errors.sync(&self.client).await.unwrap();
    }

    /// Subscribes; when this returns the server has registered (or refused) the subscription.
    async fn subscribe(&self, subject: &str) -> Subscriber {
        let sub = self.client.subscribe(subject.to_owned()).await.unwrap();
        self.sync().await;
        sub
    }

    /// Publishes; when this returns the server has processed (delivered or refused) it.
    async fn publish(&self, subject: &str, payload: &'static str) {
        self.client
            .publish(subject.to_owned(), payload.into())
            .await
            .unwrap();
        self.sync().await;
    }

    /// Publishes through JetStream and waits for the stream's acknowledgement (a barrier: once
    /// this is acknowledged, anything that reached the stream before it has been stored).
    async fn acked_publish(&self, subject: &str, payload: &'static str) -> u64 {
        jetstream::new(self.client.clone())
            .publish(subject.to_owned(), payload.into())
            .await
            .unwrap()
            .await
            .unwrap()
            .sequence
    }

    /// Waits for one `-ERR` per expected text.
    async fn wait_errors(&self, expected: &[String]) {
        for e in expected {
            self.errors.wait_for(e, WAIT).await.unwrap();
        }
    }
}

fn principal(name: &str) -> Principal {
    Principal::new(name).unwrap()
}

fn publish_violation(subject: &str) -> String {
    format!("Permissions Violation for Publish to \"{subject}\"")
}

fn subscribe_violation(subject: &str) -> String {
    format!("Permissions Violation for Subscription to \"{subject}\"")
}

/// Asserts nothing was delivered to `sub`, a subscription of `owner`.
async fn assert_silent(owner: &Conn, sub: &mut Subscriber, what: &str) {
    owner.sync().await;
    match tokio::time::timeout(WINDOW, sub.next()).await {
        Err(_) | Ok(None) => {}
        Ok(Some(m)) => panic!(
            "{what}: received a message on {} ({:?})",
            m.subject, m.payload
        ),
    }
}

/// The same observation as [`assert_silent`], expecting a delivery.
async fn assert_delivered(owner: &Conn, sub: &mut Subscriber, what: &str) -> async_nats::Message {
    owner.sync().await;
    match tokio::time::timeout(WINDOW, sub.next()).await {
        Ok(Some(m)) => m,
        Ok(None) => panic!("{what}: subscription closed"),
        Err(_elapsed) => panic!("{what}: nothing delivered"),
    }
}

/// Message counts of every stream.
async fn stream_counts(server: &NatsServer) -> Vec<(&'static str, u64)> {
    let mut out = Vec::new();
    for spec in provision::streams::specs() {
        out.push((
            spec.name,
            server.stream_state(spec.name).await.unwrap().messages,
        ));
    }
    out
}

/// `counts` with one more message in each named stream.
fn plus_one(counts: &[(&'static str, u64)], streams: &[&str]) -> Vec<(&'static str, u64)> {
    counts
        .iter()
        .map(|(n, c)| (*n, if streams.contains(n) { c + 1 } else { *c }))
        .collect()
}

/// An identity's nkey public key, as the server log names it.
fn nkey_of(server: &NatsServer, who: &Principal) -> String {
    provision::load_nkey_seed(&server.layout().nkey_seed(who))
        .unwrap()
        .public_key()
        .to_owned()
}

#[tokio::test]
async fn sv15_an_agent_cannot_publish_on_anyone_elses_subjects() {
    let server = NatsServer::start(&["hue", "weather"]).await.unwrap();
    let hue = Conn::open(&server, &principal("hue")).await;
    let orch = Conn::open(&server, &Identity::Orchestrator.principal()).await;
    let weather = Conn::open(&server, &principal("weather")).await;
    let gateway = Conn::open(&server, &Identity::Gateway.principal()).await;

    // The legitimate receivers of every core subject hue will try.
    let mut weather_cmd = weather.subscribe("cmd.weather").await;
    let mut orch_inbox = orch.subscribe("_INBOX_orchestrator.x").await;
    let mut weather_inbox = weather.subscribe("_INBOX_weather.x").await;
    let mut orch_status = orch.subscribe("status.*").await;
    let before = stream_counts(&server).await;

    let forged = [
        "cmd.weather",
        "_INBOX_orchestrator.x",
        "_INBOX_weather.x",
        "audit.weather",
        "status.weather",
        "chat.in.telegram",
        "chat.out.telegram",
        "alert.weather",
    ];
    for subject in forged {
        hue.publish(subject, "forged by hue").await;
    }

    // The attacker saw every refusal.
    let expected: Vec<String> = forged.iter().map(|s| publish_violation(s)).collect();
    hue.wait_errors(&expected).await;
    assert_eq!(
        hue.errors.all().len(),
        forged.len(),
        "{:?}",
        hue.errors.all()
    );

    // Nothing reached a subscriber.
    assert_silent(&weather, &mut weather_cmd, "weather's commands").await;
    assert_silent(&orch, &mut orch_inbox, "the orchestrator's inbox").await;
    assert_silent(&weather, &mut weather_inbox, "weather's inbox").await;
    assert_silent(&orch, &mut orch_status, "the orchestrator's status feed").await;

    // Nothing reached a stream: one acknowledged legitimate message per stream, sent after the
    // forgeries, is the only new message in it (and the positive control for the counts).
    hue.acked_publish("audit.hue", "hue's own audit event")
        .await;
    gateway
        .acked_publish("chat.in.telegram", "a real chat message")
        .await;
    orch.acked_publish("chat.out.telegram", "a real answer")
        .await;
    assert_eq!(
        stream_counts(&server).await,
        plus_one(&before, &[names::AUDIT, names::CHAT_IN, names::CHAT_OUT]),
        "a stream stored a forgery"
    );

    // Positive controls for the subscribers: hue's own status and the orchestrator's command
    // reach them under the same observation.
    hue.publish("status.hue", "hue is alive").await;
    orch.publish("cmd.weather", "a real command").await;
    let status = assert_delivered(&orch, &mut orch_status, "hue's own status").await;
    assert_eq!(status.subject.as_str(), "status.hue");
    assert_delivered(&weather, &mut weather_cmd, "the orchestrator's command").await;
    assert_eq!(
        hue.errors.all().len(),
        forged.len(),
        "{:?}",
        hue.errors.all()
    );

    // The server log records each violation with the identity's nkey and the subject (the
    // anomaly agent reads them).
    let hue_nkey = nkey_of(&server, &principal("hue"));
    for subject in forged {
        server
            .wait_for_log(
                &format!("\"APP/nkey:{hue_nkey}\" - Publish Violation - Subject \"{subject}\""),
                WAIT,
            )
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn an_agent_may_reply_once_and_only_to_requests_it_received() {
    let server = NatsServer::start(&["hue"]).await.unwrap();
    let orch = Conn::open(&server, &Identity::Orchestrator.principal()).await;
    let hue = Conn::open(&server, &principal("hue")).await;
    let mut commands = hue.subscribe("cmd.hue").await;
    let inbox = orch.client.new_inbox();
    assert!(inbox.starts_with("_INBOX_orchestrator."), "{inbox}");
    let mut replies = orch.subscribe(&inbox).await;

    orch.client
        .publish_with_reply("cmd.hue", inbox.clone(), "turn the lights on".into())
        .await
        .unwrap();
    orch.sync().await;
    let request = assert_delivered(&hue, &mut commands, "the command").await;
    let reply_to = request.reply.clone().unwrap();
    assert_eq!(reply_to.as_str(), inbox);

    hue.publish(&reply_to, "first reply").await;
    hue.publish(&reply_to, "second reply").await;
    let first = assert_delivered(&orch, &mut replies, "the first reply").await;
    assert_eq!(&first.payload[..], b"first reply");
    hue.wait_errors(&[publish_violation(&inbox)]).await;
    assert_silent(&orch, &mut replies, "a second reply").await;
    assert_eq!(hue.errors.count(&inbox), 1, "{:?}", hue.errors.all());

    // An orchestrator inbox hue never received a request from is closed to it.
    let other = orch.client.new_inbox();
    let mut other_replies = orch.subscribe(&other).await;
    hue.publish(&other, "unsolicited").await;
    hue.wait_errors(&[publish_violation(&other)]).await;
    assert_silent(&orch, &mut other_replies, "an unsolicited reply").await;

    // The ordinary request/reply path works end to end.
    let responder = tokio::spawn(async move {
        let m = commands.next().await.unwrap();
        hue.client
            .publish(m.reply.unwrap(), "done".into())
            .await
            .unwrap();
        hue.client.flush().await.unwrap();
        hue
    });
    let answer = orch
        .client
        .send_request(
            "cmd.hue",
            async_nats::Request::new()
                .payload("dim".into())
                .timeout(Some(WAIT)),
        )
        .await
        .unwrap();
    assert_eq!(&answer.payload[..], b"done");
    let hue = responder.await.unwrap();
    assert_eq!(hue.errors.all().len(), 2, "{:?}", hue.errors.all());
}

#[tokio::test]
async fn sv16_an_agent_cannot_subscribe_to_inboxes_or_wildcards() {
    let server = NatsServer::start(&["hue", "weather"]).await.unwrap();
    let hue = Conn::open(&server, &principal("hue")).await;
    let orch = Conn::open(&server, &Identity::Orchestrator.principal()).await;
    let weather = Conn::open(&server, &principal("weather")).await;
    let gateway = Conn::open(&server, &Identity::Gateway.principal()).await;

    let attempts = [
        "_INBOX_orchestrator.>",
        "_INBOX.>",
        ">",
        "cmd.*",
        "cmd.>",
        "audit.>",
        "chat.>",
        "status.>",
    ];
    let mut stolen = Vec::new();
    for subject in attempts {
        stolen.push((subject, hue.subscribe(subject).await));
    }
    let mut own = hue.subscribe("cmd.hue").await;
    let expected: Vec<String> = attempts.iter().map(|s| subscribe_violation(s)).collect();
    hue.wait_errors(&expected).await;
    assert_eq!(
        hue.errors.all().len(),
        attempts.len(),
        "{:?}",
        hue.errors.all()
    );

    // Legitimate traffic on every family those subscriptions would match.
    let mut weather_cmd = weather.subscribe("cmd.weather").await;
    let mut orch_status = orch.subscribe("status.*").await;
    // A full request/reply: the reply travels on an _INBOX_orchestrator.* subject.
    let reply = {
        let orch = orch.client.clone();
        tokio::spawn(async move {
            orch.send_request(
                "cmd.weather",
                async_nats::Request::new()
                    .payload("forecast?".into())
                    .timeout(Some(WAIT)),
            )
            .await
        })
    };
    let request = tokio::time::timeout(WAIT, weather_cmd.next())
        .await
        .unwrap()
        .unwrap();
    weather
        .publish(request.reply.as_ref().unwrap(), "sunny")
        .await;
    assert_eq!(&reply.await.unwrap().unwrap().payload[..], b"sunny");
    weather
        .acked_publish("audit.weather", "weather audit")
        .await;
    weather.publish("status.weather", "weather alive").await;
    gateway.acked_publish("chat.in.telegram", "hello").await;
    orch.acked_publish("chat.out.telegram", "hi").await;
    orch.publish("cmd.hue", "for hue").await;

    // The legitimate receiver got the status; hue's refused subscriptions got nothing.
    assert_delivered(&orch, &mut orch_status, "weather's status").await;
    for (subject, sub) in &mut stolen {
        assert_silent(&hue, sub, &format!("hue's subscription to {subject}")).await;
    }
    // Positive control: hue's own subscription, observed the same way, got its command.
    let m = assert_delivered(&hue, &mut own, "hue's own command").await;
    assert_eq!(m.subject.as_str(), "cmd.hue");

    let hue_nkey = nkey_of(&server, &principal("hue"));
    for subject in attempts {
        server
            .wait_for_log(
                &format!(
                    "\"APP/nkey:{hue_nkey}\" - Subscription Violation - Subject \"{subject}\""
                ),
                WAIT,
            )
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn sv17_an_agent_cannot_read_another_agents_queue_or_a_service_consumer() {
    let server = NatsServer::start(&["hue", "weather"]).await.unwrap();
    let hue = Conn::open(&server, &principal("hue")).await;
    let orch = Conn::open(&server, &Identity::Orchestrator.principal()).await;
    let weather = Conn::open(&server, &principal("weather")).await;
    let gateway = Conn::open(&server, &Identity::Gateway.principal()).await;
    let audit = Conn::open(&server, &Identity::AuditWriter.principal()).await;

    // Eavesdropping on weather's commands.
    let mut weather_cmd = weather.subscribe("cmd.weather").await;
    let mut spy = hue.subscribe("cmd.weather").await;
    hue.wait_errors(&[subscribe_violation("cmd.weather")]).await;
    orch.publish("cmd.weather", "for weather only").await;
    assert_delivered(&weather, &mut weather_cmd, "weather's command").await;
    assert_silent(&hue, &mut spy, "hue's spy subscription").await;

    // One message waiting in each service consumer.
    weather
        .acked_publish("audit.weather", "an audit event")
        .await;
    gateway
        .acked_publish("chat.in.telegram", "a chat message")
        .await;

    // Hue tries to pull from them, with its own inbox as the reply subject.
    let inbox = hue.client.new_inbox();
    let mut loot = hue.subscribe(&format!("{inbox}.>")).await;
    let pulls = [
        format!(
            "$JS.API.CONSUMER.MSG.NEXT.{}.{}",
            names::AUDIT,
            names::AUDIT_WRITER_CONSUMER
        ),
        format!(
            "$JS.API.CONSUMER.MSG.NEXT.{}.{}",
            names::CHAT_IN,
            names::CHAT_IN_CONSUMER
        ),
    ];
    for (i, subject) in pulls.iter().enumerate() {
        hue.client
            .publish_with_reply(
                subject.clone(),
                format!("{inbox}.{i}"),
                r#"{"batch":1,"expires":1000000000}"#.into(),
            )
            .await
            .unwrap();
    }
    hue.sync().await;
    let expected: Vec<String> = pulls.iter().map(|s| publish_violation(s)).collect();
    hue.wait_errors(&expected).await;
    assert_silent(&hue, &mut loot, "hue's pull replies").await;

    // Nothing was taken: each consumer still holds its message, undelivered ...
    let js = jetstream::new(server.admin().await.unwrap());
    for (stream_name, consumer_name) in [
        (names::AUDIT, names::AUDIT_WRITER_CONSUMER),
        (names::CHAT_IN, names::CHAT_IN_CONSUMER),
    ] {
        let info = js
            .get_consumer_from_stream::<consumer::pull::Config, _, _>(consumer_name, stream_name)
            .await
            .unwrap()
            .cached_info()
            .clone();
        let what = format!("{stream_name}/{consumer_name}");
        assert_eq!(info.num_pending, 1, "{what}");
        assert_eq!(info.num_ack_pending, 0, "{what}");
        assert_eq!(info.delivered.stream_sequence, 0, "{what}");
    }
    // ... and delivers it to its owner (the positive control for the pull itself).
    for (owner, stream_name, consumer_name, subject) in [
        (
            &audit,
            names::AUDIT,
            names::AUDIT_WRITER_CONSUMER,
            "audit.weather",
        ),
        (
            &orch,
            names::CHAT_IN,
            names::CHAT_IN_CONSUMER,
            "chat.in.telegram",
        ),
    ] {
        let consumer = jetstream::new(owner.client.clone())
            .get_consumer_from_stream::<consumer::pull::Config, _, _>(consumer_name, stream_name)
            .await
            .unwrap();
        let mut batch = consumer
            .fetch()
            .max_messages(1)
            .expires(Duration::from_secs(2))
            .messages()
            .await
            .unwrap();
        let m = batch.next().await.unwrap().unwrap();
        assert_eq!(m.subject.as_str(), subject);
        m.double_ack().await.unwrap();
    }
    assert!(audit.errors.all().is_empty(), "{:?}", audit.errors.all());
    assert!(orch.errors.all().is_empty(), "{:?}", orch.errors.all());
}

#[tokio::test]
async fn sv18_an_agent_cannot_tamper_with_jetstream_and_the_stream_flags_stop_even_admin() {
    let server = NatsServer::start(&["hue"]).await.unwrap();
    let hue = Conn::open(&server, &principal("hue")).await;
    assert_eq!(hue.acked_publish("audit.hue", "evidence").await, 1);
    let before = stream_counts(&server).await;

    let audit_consumer = names::AUDIT_WRITER_CONSUMER;
    let calls: Vec<(String, &str)> = vec![
        ("$JS.API.STREAM.PURGE.AUDIT".into(), "{}"),
        ("$JS.API.STREAM.DELETE.AUDIT".into(), ""),
        ("$JS.API.STREAM.MSG.DELETE.AUDIT".into(), r#"{"seq":1}"#),
        (
            "$JS.API.CONSUMER.CREATE.AUDIT".into(),
            r#"{"stream_name":"AUDIT","config":{"ack_policy":"none","deliver_policy":"all"}}"#,
        ),
        (
            format!("$JS.API.CONSUMER.DELETE.AUDIT.{audit_consumer}"),
            "",
        ),
        (
            "$JS.API.STREAM.UPDATE.AUDIT".into(),
            r#"{"name":"AUDIT","subjects":["audit.>"],"deny_purge":false,"deny_delete":false}"#,
        ),
    ];
    let inbox = hue.client.new_inbox();
    let mut answers = hue.subscribe(&format!("{inbox}.>")).await;
    for (i, (subject, body)) in calls.iter().enumerate() {
        hue.client
            .publish_with_reply(subject.clone(), format!("{inbox}.{i}"), (*body).into())
            .await
            .unwrap();
    }
    hue.sync().await;
    let expected: Vec<String> = calls.iter().map(|(s, _)| publish_violation(s)).collect();
    hue.wait_errors(&expected).await;
    assert_silent(&hue, &mut answers, "JetStream API answers to hue").await;

    // Stream and consumer are intact (as the admin sees them).
    assert_eq!(stream_counts(&server).await, before);
    let js = jetstream::new(server.admin().await.unwrap());
    let mut audit_stream = js.get_stream(names::AUDIT).await.unwrap();
    let spec = &provision::streams::specs()[0];
    assert_eq!(spec.name, names::AUDIT);
    provision::streams::check_stream(
        &provision::streams::stream_config(spec),
        &audit_stream.info().await.unwrap().config,
    )
    .unwrap();
    let mut consumers: Vec<String> = audit_stream
        .consumer_names()
        .map(|n| n.unwrap())
        .collect()
        .await;
    consumers.sort();
    let mut expected: Vec<String> = spec.consumers.iter().map(|c| c.name.clone()).collect();
    expected.sort();
    assert_eq!(consumers, expected, "exactly the provisioned consumers");

    // Defence in depth: even the admin, whose ACL allows the whole JetStream API, cannot purge
    // the audit stream or delete a message from it.
    let purge = audit_stream.purge().await.expect_err("admin purged AUDIT");
    assert!(purge.to_string().contains("purge not permitted"), "{purge}");
    let delete = audit_stream
        .delete_message(1)
        .await
        .expect_err("admin deleted an audit event");
    assert!(
        delete.to_string().contains("delete not permitted"),
        "{delete}"
    );
    assert_eq!(stream_counts(&server).await, before);

    // Positive control: on a stream without the flags, the same calls by the same admin
    // succeed, and the same count observation sees their effect.
    let mut scratch = js
        .create_stream(stream::Config {
            name: "SCRATCH".into(),
            subjects: vec!["status.hue".into()],
            ..Default::default()
        })
        .await
        .unwrap();
    for _ in 0..3 {
        hue.acked_publish("status.hue", "x").await;
    }
    assert_eq!(scratch.info().await.unwrap().state.messages, 3);
    assert!(scratch.delete_message(1).await.unwrap());
    assert_eq!(scratch.info().await.unwrap().state.messages, 2);
    scratch.purge().await.unwrap();
    assert_eq!(scratch.info().await.unwrap().state.messages, 0);
    js.delete_stream("SCRATCH").await.unwrap();
}

fn root_store(ca: &Path) -> rustls::RootCertStore {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    roots
}

/// A hand-built rustls client for `who`, restricted to one protocol version.
fn tls_config(
    server: &NatsServer,
    who: &Principal,
    version: &'static rustls::SupportedProtocolVersion,
) -> rustls::ClientConfig {
    provision::client::install_crypto_provider();
    let layout = server.layout();
    let certs = CertificateDer::pem_file_iter(layout.client_cert(who))
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(layout.client_key(who)).unwrap();
    rustls::ClientConfig::builder_with_protocol_versions(&[version])
        .with_root_certificates(root_store(&layout.ca_cert()))
        .with_client_auth_cert(certs, key)
        .unwrap()
}

async fn refused(options: ConnectOptions, url: &str, what: &str) -> ConnectErrorKind {
    match options.connection_timeout(WAIT).connect(url).await {
        Ok(_client) => panic!("{what}: the server accepted the connection"),
        Err(e) => e.kind(),
    }
}

/// Everything the server sends a raw TCP client that speaks plaintext NATS, until it closes
/// the connection.
async fn plaintext_probe(addr: std::net::SocketAddr) -> Vec<u8> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut socket = tokio::net::TcpStream::connect(addr).await.unwrap();
    // A client that does not wait for INFO: CONNECT and PING straight away.
    socket
        .write_all(b"CONNECT {\"verbose\":false,\"pedantic\":false}\r\nPING\r\n")
        .await
        .unwrap();
    let mut received = Vec::new();
    let read = tokio::time::timeout(WAIT, socket.read_to_end(&mut received)).await;
    assert!(
        read.is_ok(),
        "the server kept a plaintext client open for {WAIT:?}"
    );
    received
}

#[tokio::test]
async fn sv20_weak_or_unauthenticated_transports_are_refused() {
    let server = NatsServer::start(&["hue"]).await.unwrap();
    let hue = principal("hue");
    let layout = server.layout().clone();
    let seed = provision::load_nkey_seed(&layout.nkey_seed(&hue)).unwrap();
    let seed = seed.expose_seed().to_owned();
    let tls = || {
        ConnectOptions::new()
            .require_tls(true)
            .tls_first()
            .add_root_certificates(layout.ca_cert())
    };
    let tls_failure =
        |kind: ConnectErrorKind| matches!(kind, ConnectErrorKind::Io | ConnectErrorKind::Tls);

    // 1. Plaintext. The server speaks TLS first: it never sends a cleartext INFO or answers a
    // cleartext PING, and an ordinary client that waits for INFO fails too.
    let received = plaintext_probe(server.addr()).await;
    let text = String::from_utf8_lossy(&received);
    assert!(
        !text.contains("INFO") && !text.contains("PONG") && !text.contains("+OK"),
        "the server answered a plaintext client: {text:?}"
    );
    let kind = refused(
        ConnectOptions::new().nkey(seed.clone()),
        &format!("nats://{}", server.addr()),
        "plaintext client",
    )
    .await;
    assert!(
        matches!(kind, ConnectErrorKind::Io | ConnectErrorKind::TimedOut),
        "plaintext: {kind:?}"
    );

    // 2. TLS without a client certificate.
    let kind = refused(
        tls().nkey(seed.clone()),
        server.url(),
        "TLS client without a certificate",
    )
    .await;
    assert!(tls_failure(kind), "no client certificate: {kind:?}");
    server
        .wait_for_log("client didn't provide a certificate", WAIT)
        .await
        .unwrap();

    // 3. A client certificate from another CA (another install's layout, same CA name).
    let other_dir = tempfile::tempdir().unwrap();
    let other = provision::Layout::new(other_dir.path().join("state"));
    provision::generate(
        &other,
        &provision::Spec::new(vec![protocol::AgentName::new("hue").unwrap()]),
    )
    .unwrap();
    let kind = refused(
        tls()
            .add_client_certificate(other.client_cert(&hue), other.client_key(&hue))
            .nkey(seed.clone()),
        server.url(),
        "client certificate from another CA",
    )
    .await;
    assert!(tls_failure(kind), "foreign CA: {kind:?}");
    server
        .wait_for_log("certificate signed by unknown authority", WAIT)
        .await
        .unwrap();

    // 4. TLS 1.2 only.
    let kind = refused(
        ConnectOptions::new()
            .require_tls(true)
            .tls_first()
            .tls_client_config(tls_config(&server, &hue, &rustls::version::TLS12))
            .nkey(seed.clone()),
        server.url(),
        "TLS 1.2 client",
    )
    .await;
    assert!(tls_failure(kind), "TLS 1.2: {kind:?}");
    server
        .wait_for_log("client offered only unsupported versions", WAIT)
        .await
        .unwrap();

    // 5. A valid certificate and no nkey.
    let kind = refused(
        tls().add_client_certificate(layout.client_cert(&hue), layout.client_key(&hue)),
        server.url(),
        "valid certificate without an nkey",
    )
    .await;
    assert_eq!(kind, ConnectErrorKind::AuthorizationViolation);

    // 6. A valid certificate and an nkey the server does not know.
    let unknown = provision::NkeySeed::from_raw(&layout.nkey_seed(&hue), [0xa5; 32]).unwrap();
    let kind = refused(
        tls()
            .add_client_certificate(layout.client_cert(&hue), layout.client_key(&hue))
            .nkey(unknown.expose_seed().to_owned()),
        server.url(),
        "valid certificate with an unknown nkey",
    )
    .await;
    assert_eq!(kind, ConnectErrorKind::AuthorizationViolation);
    server
        .wait_for_log(
            &format!("authentication error - Nkey \"{}\"", unknown.public_key()),
            WAIT,
        )
        .await
        .unwrap();

    // Positive controls. The same hand-built rustls client at TLS 1.3 connects (so case 4
    // failed on the version alone) ...
    let tls13 = ConnectOptions::new()
        .require_tls(true)
        .tls_first()
        .tls_client_config(tls_config(&server, &hue, &rustls::version::TLS13))
        .nkey(seed.clone())
        .custom_inbox_prefix("_INBOX_hue")
        .connection_timeout(WAIT)
        .connect(server.url())
        .await
        .unwrap();
    drop(tls13);
    // ... and the right identity connects and round-trips a message.
    let hue_conn = Conn::open(&server, &hue).await;
    let orch = Conn::open(&server, &Identity::Orchestrator.principal()).await;
    let mut commands = hue_conn.subscribe("cmd.hue").await;
    orch.publish("cmd.hue", "ping").await;
    let m = assert_delivered(&hue_conn, &mut commands, "the round trip").await;
    assert_eq!(&m.payload[..], b"ping");
}
