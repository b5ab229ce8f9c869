//! The imperative shell: accept connections, read heads, ask [`crate::policy`], resolve,
//! connect, answer, splice; refuse and report everything else.
//!
//! One task per connection, tracked in a `JoinSet` so shutdown can drain them. The policy in
//! force is an `Arc<Policy>` behind a `watch` channel: a reload swaps it whole, a connection
//! takes one snapshot when it is accepted, and tunnels already open keep running.
//!
//! Bounds: per agent, at most `max_connections_per_agent` connections (head reading included);
//! clients that are refused before they are admitted (unknown clients, agents over their
//! limit) share [`ProxyOptions::max_unadmitted`] slots and are simply closed when those are
//! taken; heads are limited in size and time ([`crate::head`]); resolving plus connecting is
//! limited by `connect_timeout_ms`; a silent tunnel is closed after `idle_timeout_ms`.
//!
//! Logs name the agent, the source address, the asked destination, the code and the
//! correlation id, and count the bytes of a tunnel; they never hold the bytes themselves.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use protocol::message::{AuditEvent, ErrorCode};
use protocol::{AgentName, CorrelationId};
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::config::{AgentRule, Config, ConfigError};
use crate::head::{self, HeadError, MAX_HEAD_BYTES};
use crate::policy::{self, Denial, Policy, RefusalCode, Route};
use crate::report::Reporter;
use crate::resolve::Resolver;
use crate::target;

/// Buffer size of each splice direction.
const SPLICE_BUFFER: usize = 16 * 1024;
/// How long writing a refusal may take.
const REFUSAL_WRITE_TIMEOUT: Duration = Duration::from_secs(1);
/// After a refusal, how long (and how much) the proxy reads and discards before closing, so
/// the client's unread bytes do not turn the close into a reset that destroys the answer.
const LINGER_TIME: Duration = Duration::from_millis(500);
const LINGER_BYTES: usize = 64 * 1024;
/// Pause after a failed `accept` (for example out of file descriptors).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Settings that are not part of the configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyOptions {
    /// How long a client may take to send its request head.
    pub head_timeout: Duration,
    /// How long shutdown waits for open connections before closing them.
    pub drain_timeout: Duration,
    /// Connections being refused before admission (unknown clients, agents over their limit)
    /// handled at once; more are closed without an answer.
    pub max_unadmitted: usize,
}

impl Default for ProxyOptions {
    fn default() -> Self {
        ProxyOptions {
            head_timeout: head::HEAD_TIMEOUT,
            drain_timeout: Duration::from_secs(5),
            max_unadmitted: 32,
        }
    }
}

/// Why a reload was refused (the previous configuration stays in force).
#[derive(Debug, Error)]
pub enum ReloadError {
    /// The new configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A setting changed that only a restart can apply.
    #[error("{0} changed; it takes effect only after a restart")]
    NeedsRestart(&'static str),
}

impl ReloadError {
    /// Stable code.
    pub fn code(&self) -> &'static str {
        match self {
            ReloadError::Config(e) => e.code(),
            ReloadError::NeedsRestart(_) => "egress_reload_needs_restart",
        }
    }
}

/// What a run of [`Proxy::serve`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServeSummary {
    /// Connections accepted.
    pub accepted: u64,
    /// Connections still open when the drain timeout ran out (closed then).
    pub cut_at_shutdown: usize,
}

/// The settings a reload cannot change.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Fixed {
    listen: SocketAddr,
    nats_url: String,
    identity_dir: std::path::PathBuf,
}

impl Fixed {
    fn of(config: &Config) -> Fixed {
        Fixed {
            listen: config.listen,
            nats_url: config.nats_url.clone(),
            identity_dir: config.identity_dir.clone(),
        }
    }
}

#[derive(Debug)]
struct Shared {
    policy: watch::Sender<Arc<Policy>>,
    fixed: Fixed,
    open: Mutex<HashMap<AgentName, usize>>,
    unadmitted: Arc<Semaphore>,
    reporter: Reporter,
    resolver: Arc<dyn Resolver>,
    options: ProxyOptions,
}

/// The proxy: a cheap handle (clone it to reload while [`Proxy::serve`] runs).
#[derive(Debug, Clone)]
pub struct Proxy {
    shared: Arc<Shared>,
}

/// One of an agent's connection slots, given back on drop.
struct Slot {
    shared: Arc<Shared>,
    agent: AgentName,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self
            .shared
            .open
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = open.get_mut(&self.agent) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(&self.agent);
            }
        }
    }
}

impl Proxy {
    /// A proxy enforcing `config`.
    pub fn new(
        config: &Config,
        resolver: Arc<dyn Resolver>,
        reporter: Reporter,
        options: ProxyOptions,
    ) -> Result<Proxy, ConfigError> {
        let policy = Policy::from_config(config)?;
        let (policy, _unused_receiver) = watch::channel(Arc::new(policy));
        Ok(Proxy {
            shared: Arc::new(Shared {
                policy,
                fixed: Fixed::of(config),
                open: Mutex::new(HashMap::new()),
                unadmitted: Arc::new(Semaphore::new(options.max_unadmitted)),
                reporter,
                resolver,
                options,
            }),
        })
    }

    /// Puts a new configuration in force for connections accepted from now on. Refused (and
    /// the old one kept) if it is invalid or changes `listen`, `nats_url` or `identity_dir`.
    pub fn reload(&self, config: &Config) -> Result<(), ReloadError> {
        let fixed = Fixed::of(config);
        let old = &self.shared.fixed;
        if fixed.listen != old.listen {
            return Err(ReloadError::NeedsRestart("listen"));
        }
        if fixed.nats_url != old.nats_url {
            return Err(ReloadError::NeedsRestart("nats_url"));
        }
        if fixed.identity_dir != old.identity_dir {
            return Err(ReloadError::NeedsRestart("identity_dir"));
        }
        let policy = Policy::from_config(config)?;
        let agents = config.agents.len();
        self.shared.policy.send_replace(Arc::new(policy));
        tracing::info!(agents, "configuration reloaded");
        Ok(())
    }

    /// Reads `path` and [`Proxy::reload`]s it.
    pub fn reload_from(&self, path: &Path) -> Result<(), ReloadError> {
        let config = Config::load(path)?;
        self.reload(&config)
    }

    /// The policy in force.
    pub fn policy(&self) -> Arc<Policy> {
        self.shared.policy.borrow().clone()
    }

    /// Connections `agent` holds right now.
    pub fn open_connections(&self, agent: &AgentName) -> usize {
        self.shared
            .open
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(agent)
            .copied()
            .unwrap_or(0)
    }

    /// Accepts connections until `shutdown` resolves, then stops accepting, gives open
    /// connections [`ProxyOptions::drain_timeout`] to finish and closes the rest.
    pub async fn serve(
        &self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> ServeSummary {
        let mut tasks = JoinSet::new();
        let mut accepted = 0u64;
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                next = listener.accept() => match next {
                    Ok((stream, peer)) => {
                        accepted += 1;
                        tasks.spawn(handle(self.shared.clone(), stream, peer));
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(ACCEPT_BACKOFF).await;
                    }
                },
                Some(done) = tasks.join_next(), if !tasks.is_empty() => log_task_end(done),
            }
        }
        drop(listener);
        let open = tasks.len();
        tracing::info!(open, "no longer accepting; draining open connections");
        let drain = async {
            while let Some(done) = tasks.join_next().await {
                log_task_end(done);
            }
        };
        let cut_at_shutdown =
            match tokio::time::timeout(self.shared.options.drain_timeout, drain).await {
                Ok(()) => 0,
                Err(_elapsed) => {
                    let left = tasks.len();
                    tasks.shutdown().await;
                    tracing::warn!(left, "connections closed at the end of the drain period");
                    left
                }
            };
        ServeSummary {
            accepted,
            cut_at_shutdown,
        }
    }
}

fn log_task_end(done: Result<(), tokio::task::JoinError>) {
    if let Err(e) = done
        && !e.is_cancelled()
    {
        tracing::error!(error = %e, "a connection task failed");
    }
}

/// Takes one of `agent`'s slots if it has one left.
fn take_slot(shared: &Arc<Shared>, agent: &AgentName, limit: usize) -> Option<Slot> {
    let mut open = shared.open.lock().unwrap_or_else(PoisonError::into_inner);
    let n = open.entry(agent.clone()).or_insert(0);
    if *n >= limit {
        return None;
    }
    *n += 1;
    Some(Slot {
        shared: shared.clone(),
        agent: agent.clone(),
    })
}

/// What is known about a connection, for its refusal and its logs.
struct Context {
    shared: Arc<Shared>,
    correlation: CorrelationId,
    source: IpAddr,
    agent: Option<AgentName>,
    host: String,
    port: u16,
}

impl Context {
    fn asked(&mut self, request_target: &str) {
        let (host, port) = target::asked(request_target);
        self.host = host;
        self.port = port;
    }

    fn asked_from_bytes(&mut self, bytes: &[u8]) {
        if let Some(text) = head::request_target_text(bytes) {
            self.asked(&text);
        }
    }
}

/// The HTTP status a refusal is answered with: 405 for a method other than `CONNECT`, 429 for
/// the connection limit, and 403 for everything else, so a client learns nothing beyond the
/// code.
fn status_for(code: RefusalCode, method_not_allowed: bool) -> (u16, &'static str) {
    match code {
        RefusalCode::BadRequest if method_not_allowed => (405, "Method Not Allowed"),
        RefusalCode::TooManyConnections => (429, "Too Many Requests"),
        _ => (403, "Forbidden"),
    }
}

fn refusal_response(
    code: RefusalCode,
    method_not_allowed: bool,
    correlation: CorrelationId,
) -> Vec<u8> {
    let (status, reason) = status_for(code, method_not_allowed);
    let body = format!("{code}\n");
    let allow = if method_not_allowed {
        "Allow: CONNECT\r\n"
    } else {
        ""
    };
    format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {len}\r\nConnection: close\r\nX-Correlation-Id: {correlation}\r\n{allow}\r\n{body}",
        len = body.len()
    )
    .into_bytes()
}

/// Refuses: logs, reports, answers, lingers briefly, closes.
async fn refuse(ctx: &Context, stream: &mut TcpStream, denial: Denial, method_not_allowed: bool) {
    let agent = ctx.agent.as_ref().map_or("", AgentName::as_str);
    tracing::warn!(
        correlation = %ctx.correlation,
        agent,
        source = %ctx.source,
        host = %ctx.host,
        port = ctx.port,
        code = denial.code.as_str(),
        detail = %denial.detail,
        "refused"
    );
    ctx.shared.reporter.report(
        ctx.correlation,
        AuditEvent::EgressRefused {
            agent: ctx.agent.clone(),
            source: ctx.source.to_string(),
            host: ctx.host.clone(),
            port: ctx.port,
            code: ErrorCode::from_static(denial.code.as_str()),
        },
    );
    let response = refusal_response(denial.code, method_not_allowed, ctx.correlation);
    let answered = tokio::time::timeout(REFUSAL_WRITE_TIMEOUT, async {
        stream.write_all(&response).await?;
        stream.shutdown().await
    })
    .await;
    if !matches!(answered, Ok(Ok(()))) {
        tracing::debug!(correlation = %ctx.correlation, "the refusal could not be delivered");
        return;
    }
    linger(stream).await;
}

/// Reads and discards what the client still sends, briefly and boundedly.
async fn linger<S: AsyncRead + Unpin>(stream: &mut S) {
    let mut sink = [0u8; 4096];
    let mut total = 0usize;
    let deadline = Instant::now() + LINGER_TIME;
    while total < LINGER_BYTES {
        match tokio::time::timeout_at(deadline, stream.read(&mut sink)).await {
            Ok(Ok(n)) if n > 0 => total += n,
            _ => break,
        }
    }
}

/// One connection, start to end.
async fn handle(shared: Arc<Shared>, mut stream: TcpStream, peer: SocketAddr) {
    let _nodelay = stream.set_nodelay(true);
    let policy = shared.policy.borrow().clone();
    let source = peer.ip().to_canonical();
    let agent = policy.identify(source).cloned();
    let mut ctx = Context {
        shared: shared.clone(),
        correlation: CorrelationId::random(),
        source,
        agent: agent.as_ref().map(|a| a.name.clone()),
        host: String::new(),
        port: 0,
    };
    let (rule, slot) = match agent {
        None => {
            let why = Denial::new(
                RefusalCode::UnknownClient,
                format!("{source} lies in no agent's subnet"),
            );
            refuse_unadmitted(&mut ctx, &mut stream, why).await;
            return;
        }
        Some(rule) => match take_slot(&shared, &rule.name, policy.max_connections_per_agent()) {
            Some(slot) => (rule, slot),
            None => {
                let why = Denial::new(
                    RefusalCode::TooManyConnections,
                    format!(
                        "{} already holds {} connections",
                        rule.name,
                        policy.max_connections_per_agent()
                    ),
                );
                refuse_unadmitted(&mut ctx, &mut stream, why).await;
                return;
            }
        },
    };
    admitted(&mut ctx, stream, &rule, &policy).await;
    drop(slot);
}

/// A refusal before admission: read the head (for the record) under the shared bound, then
/// refuse; when the bound is taken, just close.
async fn refuse_unadmitted(ctx: &mut Context, stream: &mut TcpStream, denial: Denial) {
    let Ok(_permit) = ctx.shared.unadmitted.clone().try_acquire_owned() else {
        tracing::debug!(
            source = %ctx.source,
            code = denial.code.as_str(),
            "closed without an answer: too many connections being refused"
        );
        return;
    };
    match head::read_head(stream, MAX_HEAD_BYTES, ctx.shared.options.head_timeout).await {
        Ok(raw) => ctx.asked_from_bytes(&raw.head),
        Err(partial) => ctx.asked_from_bytes(&partial.bytes),
    }
    refuse(ctx, stream, denial, false).await;
}

/// An identified agent within its limit: read, parse, decide, connect, splice.
async fn admitted(ctx: &mut Context, mut stream: TcpStream, rule: &AgentRule, policy: &Policy) {
    let raw = match head::read_head(&mut stream, MAX_HEAD_BYTES, ctx.shared.options.head_timeout)
        .await
    {
        Ok(raw) => raw,
        Err(partial) if partial.error == head::ReadHeadError::Closed(0) => {
            // Connected and closed without a byte: no request, nothing to refuse.
            tracing::debug!(correlation = %ctx.correlation, source = %ctx.source, "closed before any request");
            return;
        }
        Err(partial) => {
            ctx.asked_from_bytes(&partial.bytes);
            let why = Denial::new(RefusalCode::BadRequest, partial.error.to_string());
            refuse(ctx, &mut stream, why, false).await;
            return;
        }
    };
    let request = match head::parse_head(&raw.head) {
        Ok(request) => request,
        Err(e) => {
            ctx.asked_from_bytes(&raw.head);
            let method = matches!(e, HeadError::MethodNotAllowed(_));
            refuse(
                ctx,
                &mut stream,
                Denial::new(RefusalCode::BadRequest, e.to_string()),
                method,
            )
            .await;
            return;
        }
    };
    ctx.asked(&request.target);
    let upstream = match connect(ctx, rule, policy, &request.target).await {
        Ok(upstream) => upstream,
        Err(denial) => {
            refuse(ctx, &mut stream, denial, false).await;
            return;
        }
    };
    tunnel(ctx, stream, upstream, raw.early_data, policy.idle_timeout()).await;
}

/// Parses, admits, resolves, checks and connects, all within the connect timeout.
async fn connect(
    ctx: &Context,
    rule: &AgentRule,
    policy: &Policy,
    request_target: &str,
) -> Result<(TcpStream, SocketAddr), Denial> {
    let deadline = Instant::now() + policy.connect_timeout();
    let target = target::parse_target(request_target)
        .map_err(|why| Denial::new(RefusalCode::BadRequest, why))?;
    let candidates = match policy::admit(rule, &target)? {
        Route::Connect(addr) => vec![addr],
        Route::Resolve { name, port } => {
            let resolved =
                match tokio::time::timeout_at(deadline, ctx.shared.resolver.resolve(&name)).await {
                    Ok(Ok(addrs)) => addrs,
                    Ok(Err(e)) => {
                        return Err(Denial::new(
                            RefusalCode::ResolveFailed,
                            format!("resolving {name}: {e}"),
                        ));
                    }
                    Err(_elapsed) => {
                        return Err(Denial::new(
                            RefusalCode::ResolveFailed,
                            format!("resolving {name} timed out"),
                        ));
                    }
                };
            policy::check_resolved(&name, port, &resolved)?
        }
    };
    let mut failures: Vec<String> = Vec::new();
    for addr in candidates {
        match tokio::time::timeout_at(deadline, TcpStream::connect(addr)).await {
            Ok(Ok(upstream)) => return Ok((upstream, addr)),
            Ok(Err(e)) => failures.push(format!("{addr}: {e}")),
            Err(_elapsed) => {
                failures.push(format!("{addr}: timed out"));
                break;
            }
        }
    }
    Err(Denial::new(RefusalCode::ConnectFailed, failures.join("; ")))
}

/// Why a tunnel ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TunnelEnd {
    /// Both sides closed.
    Closed,
    /// Nothing moved for the idle timeout.
    Idle,
    /// A read or write failed.
    Failed,
}

/// Answers 200 and splices until both sides close, one fails, or the tunnel goes idle.
async fn tunnel(
    ctx: &Context,
    mut client: TcpStream,
    upstream: (TcpStream, SocketAddr),
    early_data: Vec<u8>,
    idle: Duration,
) {
    let (mut upstream, addr) = upstream;
    let _nodelay = upstream.set_nodelay(true);
    let agent = ctx.agent.as_ref().map_or("", AgentName::as_str);
    let started = Instant::now();
    let opened = tokio::time::timeout(idle, async {
        client
            .write_all(b"HTTP/1.1 200 Connection Established\r\n\r\n")
            .await?;
        upstream.write_all(&early_data).await
    })
    .await;
    if !matches!(opened, Ok(Ok(()))) {
        tracing::info!(correlation = %ctx.correlation, agent, "tunnel failed while opening");
        return;
    }
    tracing::info!(
        correlation = %ctx.correlation,
        agent,
        source = %ctx.source,
        host = %ctx.host,
        port = ctx.port,
        upstream = %addr,
        "tunnel open"
    );
    let (end, up, down) = splice(&mut client, &mut upstream, idle).await;
    let up = up + early_data.len() as u64;
    tracing::info!(
        correlation = %ctx.correlation,
        agent,
        host = %ctx.host,
        port = ctx.port,
        bytes_up = up,
        bytes_down = down,
        seconds = started.elapsed().as_secs_f64(),
        end = ?end,
        "tunnel closed"
    );
}

/// Copies both ways until both sides closed (`Closed`), a side failed (`Failed`) or nothing
/// moved for `idle` (`Idle`). An end of stream from one side is passed on as a half close.
/// Returns the bytes copied client→upstream and upstream→client.
async fn splice<A, B>(a: &mut A, b: &mut B, idle: Duration) -> (TunnelEnd, u64, u64)
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let (mut a_read, mut a_write) = tokio::io::split(a);
    let (mut b_read, mut b_write) = tokio::io::split(b);
    let mut a_buf = vec![0u8; SPLICE_BUFFER];
    let mut b_buf = vec![0u8; SPLICE_BUFFER];
    let (mut a_open, mut b_open) = (true, true);
    let (mut up, mut down) = (0u64, 0u64);
    let timer = tokio::time::sleep(idle);
    tokio::pin!(timer);
    let end = loop {
        if !a_open && !b_open {
            break TunnelEnd::Closed;
        }
        tokio::select! {
            read = a_read.read(&mut a_buf), if a_open => match read {
                Ok(0) => {
                    a_open = false;
                    let _half_close = b_write.shutdown().await;
                }
                Ok(n) => {
                    let data = a_buf.get(..n).unwrap_or_default();
                    match tokio::time::timeout(idle, b_write.write_all(data)).await {
                        Ok(Ok(())) => up += n as u64,
                        _ => break TunnelEnd::Failed,
                    }
                }
                Err(_read_error) => break TunnelEnd::Failed,
            },
            read = b_read.read(&mut b_buf), if b_open => match read {
                Ok(0) => {
                    b_open = false;
                    let _half_close = a_write.shutdown().await;
                }
                Ok(n) => {
                    let data = b_buf.get(..n).unwrap_or_default();
                    match tokio::time::timeout(idle, a_write.write_all(data)).await {
                        Ok(Ok(())) => down += n as u64,
                        _ => break TunnelEnd::Failed,
                    }
                }
                Err(_read_error) => break TunnelEnd::Failed,
            },
            () = &mut timer => break TunnelEnd::Idle,
        }
        timer.as_mut().reset(Instant::now() + idle);
    };
    (end, up, down)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_carry_only_the_code() {
        let id = CorrelationId::from_bytes([7; 16]);
        let text = |code, method| {
            String::from_utf8(refusal_response(code, method, id))
                .unwrap()
                .replace("\r\n", "\\r\\n\n")
        };
        expect_test::expect![[r#"
            HTTP/1.1 403 Forbidden\r\n
            Content-Type: text/plain; charset=utf-8\r\n
            Content-Length: 23\r\n
            Connection: close\r\n
            X-Correlation-Id: 07070707-0707-0707-0707-070707070707\r\n
            \r\n
            egress_not_allowlisted
        "#]]
        .assert_eq(&text(RefusalCode::NotAllowlisted, false));
        expect_test::expect![[r#"
            HTTP/1.1 405 Method Not Allowed\r\n
            Content-Type: text/plain; charset=utf-8\r\n
            Content-Length: 19\r\n
            Connection: close\r\n
            X-Correlation-Id: 07070707-0707-0707-0707-070707070707\r\n
            Allow: CONNECT\r\n
            \r\n
            egress_bad_request
        "#]]
        .assert_eq(&text(RefusalCode::BadRequest, true));
        expect_test::expect![[r#"
            HTTP/1.1 429 Too Many Requests\r\n
            Content-Type: text/plain; charset=utf-8\r\n
            Content-Length: 28\r\n
            Connection: close\r\n
            X-Correlation-Id: 07070707-0707-0707-0707-070707070707\r\n
            \r\n
            egress_too_many_connections
        "#]]
        .assert_eq(&text(RefusalCode::TooManyConnections, false));
    }

    #[tokio::test]
    async fn splice_copies_both_ways_and_passes_half_closes_on() {
        let (mut client, mut proxy_client_side) = tokio::io::duplex(1024);
        let (mut proxy_upstream_side, mut upstream) = tokio::io::duplex(1024);
        let splicer = tokio::spawn(async move {
            splice(
                &mut proxy_client_side,
                &mut proxy_upstream_side,
                Duration::from_secs(5),
            )
            .await
        });
        client.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 4];
        upstream.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping");
        upstream.write_all(b"pong!").await.unwrap();
        let mut buf = [0u8; 5];
        client.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"pong!");
        // The client stops sending; the upstream sees the end and can still answer.
        client.shutdown().await.unwrap();
        let mut rest = Vec::new();
        upstream.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty());
        upstream.write_all(b"bye").await.unwrap();
        upstream.shutdown().await.unwrap();
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest, b"bye");
        let (end, up, down) = splicer.await.unwrap();
        assert_eq!((end, up, down), (TunnelEnd::Closed, 4, 8));
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_tunnel_is_closed_after_the_idle_timeout() {
        let (mut client, mut proxy_client_side) = tokio::io::duplex(1024);
        let (mut proxy_upstream_side, _upstream) = tokio::io::duplex(1024);
        let splicer = tokio::spawn(async move {
            splice(
                &mut proxy_client_side,
                &mut proxy_upstream_side,
                Duration::from_secs(300),
            )
            .await
        });
        // Traffic resets the timer.
        tokio::time::sleep(Duration::from_secs(200)).await;
        client.write_all(b"x").await.unwrap();
        tokio::time::sleep(Duration::from_secs(200)).await;
        assert!(!splicer.is_finished());
        tokio::time::sleep(Duration::from_secs(101)).await;
        let (end, up, _) = splicer.await.unwrap();
        assert_eq!((end, up), (TunnelEnd::Idle, 1));
    }
}
