//! Helpers shared by the proxy's integration tests: a local upstream, clients with chosen
//! source addresses (every 127.x.y.z address is local on Linux, so one machine can play
//! several agents and an unknown client), a scripted resolver, and reading the `AUDIT` stream
//! of a real nats-server as the admin identity.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::print_stdout,
    clippy::print_stderr,
    dead_code
)]

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream;
use audit::emit::AuditEmitter;
use egress_proxy::resolve::BoxFuture;
use egress_proxy::{Config, Proxy, ProxyOptions, Reporter, ReporterTask, Resolver, ServeSummary};
use protocol::Envelope;
use protocol::acl::Identity;
use protocol::message::AuditEvent;
use test_support::NatsServer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// What the upstream says first, before the client sends anything.
pub(crate) const BANNER: &[u8] = b"upstream says hello\n";

/// A local TCP upstream: sends [`BANNER`], then echoes everything back.
pub(crate) struct Upstream {
    pub(crate) addr: SocketAddr,
    pub(crate) accepted: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub(crate) async fn upstream() -> Upstream {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = accepted.clone();
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            counter.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                if stream.write_all(BANNER).await.is_err() {
                    return;
                }
                let (mut r, mut w) = stream.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    Upstream {
        addr,
        accepted,
        task,
    }
}

/// A port on which nothing listens.
pub(crate) async fn closed_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap().port()
}

/// Connects to `to` from source address `from`.
pub(crate) async fn connect_from(from: &str, to: SocketAddr) -> TcpStream {
    let from: IpAddr = from.parse().unwrap();
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(from, 0)).unwrap();
    socket.connect(to).await.unwrap()
}

/// Reads a response head (up to the empty line), byte by byte so nothing after it is taken.
pub(crate) async fn read_response_head(stream: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut byte))
            .await
            .expect("response head within 10 s")
            .unwrap();
        assert!(n == 1, "closed after {:?}", String::from_utf8_lossy(&head));
        head.push(byte[0]);
        assert!(head.len() < 4096, "response head too long");
    }
    String::from_utf8(head).unwrap()
}

/// Sends `request` from `from` and expects a refusal: returns (status, body).
pub(crate) async fn refused(from: &str, proxy: SocketAddr, request: &[u8]) -> (u16, String) {
    let mut stream = connect_from(from, proxy).await;
    stream.write_all(request).await.unwrap();
    read_refusal(&mut stream).await
}

/// Reads a whole refusal: head, body, then the proxy's close.
pub(crate) async fn read_refusal(stream: &mut TcpStream) -> (u16, String) {
    let mut all = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut all))
        .await
        .expect("the proxy answers and closes within 10 s")
        .unwrap();
    let text = String::from_utf8(all).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").expect("a complete response");
    let status: u16 = head
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .expect("a status line")
        .parse()
        .unwrap();
    assert!(head.contains("Content-Type: text/plain"), "{head}");
    assert!(head.contains("Connection: close"), "{head}");
    (status, body.to_owned())
}

/// Opens a tunnel from `from` to `target` and checks it works both ways: the upstream's
/// banner arrives, and what the client sends comes back.
pub(crate) async fn open_tunnel(from: &str, proxy: SocketAddr, target: &str) -> TcpStream {
    let mut stream = connect_from(from, proxy).await;
    stream
        .write_all(format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let head = read_response_head(&mut stream).await;
    assert_eq!(head, "HTTP/1.1 200 Connection Established\r\n\r\n");
    expect_banner(&mut stream).await;
    echo(&mut stream, b"ping").await;
    stream
}

pub(crate) async fn expect_banner(stream: &mut TcpStream) {
    let mut banner = vec![0u8; BANNER.len()];
    tokio::time::timeout(Duration::from_secs(10), stream.read_exact(&mut banner))
        .await
        .expect("banner within 10 s")
        .unwrap();
    assert_eq!(banner, BANNER);
}

/// Sends `data` through a tunnel to the echo upstream and reads it back.
pub(crate) async fn echo(stream: &mut TcpStream, data: &[u8]) {
    stream.write_all(data).await.unwrap();
    let mut back = vec![0u8; data.len()];
    tokio::time::timeout(Duration::from_secs(10), stream.read_exact(&mut back))
        .await
        .expect("echo within 10 s")
        .unwrap();
    assert_eq!(back, data);
}

/// A resolver that answers from a script: each name has a list of answers, the n-th call for a
/// name gets the n-th answer (the last one repeats); unknown names fail. It records calls.
#[derive(Debug, Default)]
pub(crate) struct ScriptedResolver {
    answers: HashMap<String, Vec<Vec<IpAddr>>>,
    calls: Mutex<Vec<String>>,
}

impl ScriptedResolver {
    pub(crate) fn answer(mut self, name: &str, answers: &[&[&str]]) -> Self {
        let answers = answers
            .iter()
            .map(|a| a.iter().map(|ip| ip.parse().unwrap()).collect())
            .collect();
        self.answers.insert(name.to_owned(), answers);
        self
    }

    pub(crate) fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap().clone()
    }
}

impl Resolver for ScriptedResolver {
    fn resolve<'a>(&'a self, name: &'a str) -> BoxFuture<'a, io::Result<Vec<IpAddr>>> {
        Box::pin(async move {
            let n = {
                let mut calls = self.calls.lock().unwrap();
                calls.push(name.to_owned());
                calls.iter().filter(|c| *c == name).count() - 1
            };
            match self.answers.get(name) {
                Some(answers) => Ok(answers[n.min(answers.len() - 1)].clone()),
                None => Err(io::Error::new(io::ErrorKind::NotFound, "no such name")),
            }
        })
    }
}

/// A configuration file's text for a test proxy: agents as JSON, everything else fixed.
pub(crate) fn config_text(
    listen: &str,
    nats_url: &str,
    identity_dir: &std::path::Path,
    agents: &str,
    max_connections_per_agent: u32,
) -> String {
    let identity_dir = serde_json::to_string(identity_dir.to_str().unwrap()).unwrap();
    format!(
        r#"{{"listen":"{listen}","nats_url":"{nats_url}","identity_dir":{identity_dir},"agents":{agents},"connect_timeout_ms":2000,"idle_timeout_ms":30000,"max_connections_per_agent":{max_connections_per_agent}}}"#
    )
}

pub(crate) fn config(nats: &NatsServer, agents: &str, max_connections_per_agent: u32) -> Config {
    Config::from_json(
        config_text(
            "127.0.0.1:0",
            nats.url(),
            nats.layout().root(),
            agents,
            max_connections_per_agent,
        )
        .as_bytes(),
    )
    .unwrap()
}

/// A proxy serving on a free local port.
pub(crate) struct Running {
    pub(crate) proxy: Proxy,
    pub(crate) addr: SocketAddr,
    stop: oneshot::Sender<()>,
    serve: JoinHandle<ServeSummary>,
    reporter: ReporterTask,
}

impl Running {
    /// Stops accepting, drains, and stops reporting (waiting up to `grace` for the queue).
    pub(crate) async fn stop(self, grace: Duration) -> ServeSummary {
        let _ = self.stop.send(());
        let summary = tokio::time::timeout(Duration::from_secs(30), self.serve)
            .await
            .expect("serve returns after shutdown")
            .unwrap();
        self.reporter.finish(grace).await;
        summary
    }
}

/// An emitter publishing as `egress` on the test server.
pub(crate) async fn emitter(nats: &NatsServer) -> AuditEmitter {
    let client = nats.connect(&Identity::Egress.principal()).await.unwrap();
    AuditEmitter::new(jetstream::new(client), Identity::Egress.principal())
}

pub(crate) async fn run_proxy(
    config: &Config,
    resolver: Arc<dyn Resolver>,
    emitter: AuditEmitter,
    options: ProxyOptions,
) -> Running {
    let (reporter, reporter_task) = Reporter::start(emitter);
    let proxy = Proxy::new(config, resolver, reporter, options).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let serving = proxy.clone();
    let serve = tokio::spawn(async move {
        serving
            .serve(listener, async {
                let _ = stopped.await;
            })
            .await
    });
    Running {
        proxy,
        addr,
        stop,
        serve,
        reporter: reporter_task,
    }
}

/// Every event in the `AUDIT` stream once it holds at least `count`, read as the admin
/// identity, each with its subject; waits up to 15 s.
pub(crate) async fn audit_events(
    nats: &NatsServer,
    count: u64,
) -> Vec<(String, Envelope<AuditEvent>)> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let state = nats.stream_state("AUDIT").await.unwrap();
        if state.messages >= count {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the AUDIT stream holds {} events, expected {count}",
            state.messages
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let js = jetstream::new(nats.admin().await.unwrap());
    let stream = js.get_stream("AUDIT").await.unwrap();
    let state = nats.stream_state("AUDIT").await.unwrap();
    let mut out = Vec::new();
    for seq in state.first_sequence..=state.last_sequence {
        let message = stream.get_raw_message(seq).await.unwrap();
        let envelope = Envelope::<AuditEvent>::decode(&message.payload).unwrap();
        out.push((message.subject.to_string(), envelope));
    }
    out
}

/// An `EgressRefused` event's fields as one line, for comparisons.
pub(crate) fn describe(subject: &str, envelope: &Envelope<AuditEvent>) -> String {
    match &envelope.body {
        AuditEvent::EgressRefused {
            agent,
            source,
            host,
            port,
            code,
        } => format!(
            "{subject} from {} agent={} source={source} {host}:{port} {}",
            envelope.sender,
            agent.as_ref().map_or("-", |a| a.as_str()),
            code.as_str()
        ),
        other => format!("{subject} from {} {other:?}", envelope.sender),
    }
}
