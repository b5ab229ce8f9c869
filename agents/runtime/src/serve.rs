//! The imperative shell: the NATS loop that turns each command into exactly one reply.
//!
//! One owner loop ([`serve`]) takes commands from `cmd.<agent>` while a concurrency permit is
//! free (excess requests wait in the subscription), runs each in its own task, publishes
//! heartbeats, and on shutdown stops taking commands, answers the ones already received but
//! not started, waits for those in flight up to the grace period, and sends a final heartbeat.
//! Every request that has a reply subject gets exactly one reply: each task's [`ReplySlot`] is
//! claimed once, by the task or, if the task panicked or was cut off at shutdown, by the loop.

use std::collections::HashMap;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream;
use async_nats::{Client, Message, Subscriber};
use audit::emit::AuditEmitter;
use bytes::Bytes;
use futures::{FutureExt as _, StreamExt as _};
use protocol::deploy::AgentConfig;
use protocol::manifest::CheckedManifest;
use protocol::message::{AgentReply, AuditEvent, Effect, MAX_LINE, Outcome, Refusal, Status};
use protocol::token::{Expected, Keyset, KeysetFile};
use protocol::{
    ActionName, CorrelationId, Envelope, MessageId, PlanId, Principal, Subject, TokenError,
    UnixMillis,
};
use provision::Layout;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

use crate::agent::{Agent, AgentError, BackgroundContext, ShutdownSignal};
use crate::error::{RuntimeError, StartError};
use crate::heartbeat;
use crate::replay::ReplayStore;
use crate::screen::{self, Known, Rejection, code_of, one_line};

/// How long an audit publish may hold up a request (its JetStream acknowledgement included).
pub const AUDIT_BOUND: Duration = Duration::from_secs(3);
/// How long JetStream may take to acknowledge one audit publish attempt.
const AUDIT_ACK_TIMEOUT: Duration = Duration::from_secs(1);
/// Audit publish attempts (the same event id each time).
const AUDIT_ATTEMPTS: u32 = 2;
/// How long shutdown spends answering commands that were received but not started.
const DRAIN_BOUND: Duration = Duration::from_secs(2);
/// How long the final flush of the connection may take.
const FLUSH_BOUND: Duration = Duration::from_secs(2);
/// Shortest heartbeat period accepted.
pub const MIN_HEARTBEAT: Duration = Duration::from_millis(100);
/// Largest keyset file read, in bytes.
const MAX_KEYSET_BYTES: u64 = 64 * 1024;
/// The replay store's file name in the data directory.
pub const REPLAY_DB: &str = "replay.db";

/// The token check: the local keyset and the persistent replay store.
#[derive(Debug)]
pub struct TokenGate {
    keyset: Keyset,
    replay: ReplayStore,
}

impl TokenGate {
    /// A gate from parts.
    pub fn new(keyset: Keyset, replay: ReplayStore) -> Self {
        TokenGate { keyset, replay }
    }

    /// Loads `<identity_dir>/keys/keyset.json` and opens `<data_dir>/replay.db`.
    pub fn open(config: &AgentConfig) -> Result<Self, StartError> {
        let path = Layout::new(&config.identity_dir).keyset();
        let keyset = read_keyset(&path).map_err(|reason| StartError::Keyset {
            path: path.clone(),
            reason,
        })?;
        let replay = ReplayStore::open(&std::path::Path::new(&config.data_dir).join(REPLAY_DB))?;
        Ok(TokenGate { keyset, replay })
    }

    fn check(&mut self, token: &str, expected: Expected<'_>) -> Result<[u8; 16], TokenError> {
        let now = UnixMillis::now().as_secs();
        crate::verify_and_consume(&self.keyset, &mut self.replay, token, expected, now)
            .map(|claims| claims.jti)
    }
}

fn read_keyset(path: &std::path::Path) -> Result<Keyset, String> {
    use std::io::Read as _;
    let file = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let mut text = Vec::new();
    file.take(MAX_KEYSET_BYTES + 1)
        .read_to_end(&mut text)
        .map_err(|e| e.to_string())?;
    if text.len() as u64 > MAX_KEYSET_BYTES {
        return Err(format!("over {MAX_KEYSET_BYTES} bytes"));
    }
    let file: KeysetFile = serde_json::from_slice(&text).map_err(|e| e.to_string())?;
    Keyset::from_file(&file).map_err(|e| e.to_string())
}

/// Runs the agent until `shutdown` completes: loads the token gate from `config`, then
/// [`serve`]s. Usable in-process (tests); the binary entry point is [`crate::main`].
pub async fn run<A: Agent>(
    config: AgentConfig,
    agent: A,
    client: Client,
    shutdown: impl Future<Output = ()>,
) -> Result<(), RuntimeError> {
    let gate = TokenGate::open(&config)?;
    serve(config, agent, gate, client, shutdown).await
}

/// What every request task shares.
struct Shared<A> {
    agent: A,
    manifest: &'static CheckedManifest,
    me: Principal,
    orchestrator: Principal,
    gate: Mutex<TokenGate>,
    client: Client,
    audit: AuditEmitter,
    in_flight: AtomicU32,
    handled: AtomicU64,
}

/// Where one request's reply goes, claimed exactly once.
struct ReplySlot {
    subject: async_nats::Subject,
    sent: AtomicBool,
    context: Mutex<SlotContext>,
}

#[derive(Default, Clone)]
struct SlotContext {
    correlation_id: Option<CorrelationId>,
    step: Option<(ActionName, PlanId, u16)>,
}

/// Counts a request in flight until dropped (also when its task is aborted).
struct InFlight<A> {
    shared: Arc<Shared<A>>,
}

impl<A> Drop for InFlight<A> {
    fn drop(&mut self) {
        self.shared.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.shared.handled.fetch_add(1, Ordering::Relaxed);
    }
}

impl ReplySlot {
    fn note(&self, correlation_id: Option<CorrelationId>, known: Option<&Known>) {
        if let Ok(mut c) = self.context.lock() {
            c.correlation_id = correlation_id;
            c.step = known.map(|k| {
                (
                    k.invocation.action.clone(),
                    k.invocation.plan_id,
                    k.invocation.step,
                )
            });
        }
    }

    fn context(&self) -> SlotContext {
        self.context.lock().map(|c| c.clone()).unwrap_or_default()
    }
}

impl<A: Agent> Shared<A> {
    /// Sends the reply if nobody has; returns what was actually sent (an outcome that cannot
    /// be encoded is replaced by a failure), or `None` if the slot was already claimed.
    async fn reply(&self, slot: &ReplySlot, reply: AgentReply) -> Option<AgentReply> {
        if slot.sent.swap(true, Ordering::AcqRel) {
            return None;
        }
        let correlation_id = slot
            .context()
            .correlation_id
            .unwrap_or_else(CorrelationId::random);
        let (bytes, sent) = screen::encode_reply(
            &self.me,
            correlation_id,
            MessageId::random(),
            UnixMillis::now(),
            reply,
        );
        if let Err(e) = self
            .client
            .publish(slot.subject.clone(), Bytes::from(bytes))
            .await
        {
            tracing::warn!(error = %e, "could not publish a reply");
        }
        Some(sent)
    }

    /// Publishes an audit event, waiting for its acknowledgement at most [`AUDIT_BOUND`]. A
    /// failure is logged, never returned: the request is not held up further.
    async fn audit(&self, correlation_id: Option<CorrelationId>, event: AuditEvent) {
        let kind = event.kind();
        let correlation_id = correlation_id.unwrap_or_else(CorrelationId::random);
        match tokio::time::timeout(AUDIT_BOUND, self.audit.emit(correlation_id, event)).await {
            Ok(Ok(_id)) => {}
            Ok(Err(e)) => {
                tracing::warn!(kind, code = e.code(), error = %e, "audit event not recorded");
            }
            Err(_elapsed) => {
                tracing::warn!(
                    kind,
                    code = "audit_publish_timeout",
                    "audit event not acknowledged in time"
                );
            }
        }
    }

    async fn heartbeat(&self, version: &str, started_at: UnixMillis, config: &AgentConfig) {
        let status: Status = heartbeat::heartbeat(
            version,
            started_at,
            heartbeat::rss_bytes(),
            self.in_flight.load(Ordering::Relaxed),
            self.handled.load(Ordering::Relaxed),
            &config.isolation,
        );
        let envelope = Envelope::new(
            MessageId::random(),
            CorrelationId::random(),
            self.me.clone(),
            UnixMillis::now(),
            status,
        );
        let published = match envelope.encode() {
            Ok(bytes) => self
                .client
                .publish(
                    String::from(Subject::status(&config.name)),
                    Bytes::from(bytes),
                )
                .await
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        if let Err(error) = published {
            tracing::warn!(%error, "could not publish a heartbeat");
        }
    }

    /// Rejects: replies first, then records the refusal.
    async fn reject(&self, slot: &ReplySlot, rejection: Rejection) {
        tracing::info!(code = rejection.code.as_str(), message = %rejection.message, "command rejected");
        self.reply(slot, rejection.reply()).await;
        self.audit(rejection.correlation_id, rejected_event(&rejection))
            .await;
    }

    /// Steps 1 to 7 for one command.
    async fn process(&self, slot: Option<&ReplySlot>, payload: &[u8]) {
        let screened = screen::screen(payload, &self.orchestrator, self.manifest);
        let (correlation_id, known) = match &screened {
            Ok(s) => (Some(s.known.correlation_id), Some(&s.known)),
            Err(r) => (r.correlation_id, r.known.as_deref()),
        };
        let Some(slot) = slot else {
            let known = known.cloned().map(Box::new);
            let rejection = Rejection {
                code: code_of(screen::NO_REPLY_SUBJECT),
                message: "the command has no reply subject".to_owned(),
                correlation_id,
                known,
            };
            tracing::info!(
                code = screen::NO_REPLY_SUBJECT,
                "command without a reply subject"
            );
            self.audit(correlation_id, rejected_event(&rejection)).await;
            return;
        };
        slot.note(correlation_id, known);
        if let Some(k) = known {
            let event = AuditEvent::CommandReceived {
                action: k.invocation.action.clone(),
                plan_id: Some(k.invocation.plan_id),
                step: Some(k.invocation.step),
            };
            // Queued ahead of everything this command causes (so the stream orders it first),
            // acknowledged in the background: the token check and the action do not wait for it.
            let pending = self.audit.send(k.correlation_id, event).await;
            tokio::spawn(async move {
                match tokio::time::timeout(AUDIT_BOUND, pending.acknowledged()).await {
                    Ok(Ok(_id)) => {}
                    Ok(Err(e)) => {
                        tracing::warn!(kind = "command_received", code = e.code(), error = %e, "audit event not recorded");
                    }
                    Err(_elapsed) => tracing::warn!(
                        kind = "command_received",
                        code = "audit_publish_timeout",
                        "audit event not acknowledged in time"
                    ),
                }
            });
        }
        let screened = match screened {
            Ok(s) => s,
            Err(rejection) => return self.reject(slot, rejection).await,
        };
        let inv = &screened.known.invocation;
        let expected = Expected {
            audience: &self.manifest.manifest.name,
            action: &inv.action,
            args: &inv.args,
            changes_world: screened.spec.effect == Effect::Change,
        };
        let verdict = match self.gate.lock() {
            Ok(mut gate) => gate.check(&inv.token, expected),
            // A poisoned lock means a panic while recording a nonce: fail closed.
            Err(_poisoned) => Err(TokenError::ReplayStoreUnavailable),
        };
        let jti = match verdict {
            Ok(jti) => jti,
            Err(e) => {
                let rejection = Rejection {
                    code: code_of(e.code()),
                    message: e.to_string(),
                    correlation_id,
                    known: Some(Box::new(screened.known.clone())),
                };
                return self.reject(slot, rejection).await;
            }
        };
        if let Err(rejection) = screen::check_args(&screened) {
            return self.reject(slot, rejection).await;
        }
        let timeout = Duration::from_millis(u64::from(screened.spec.timeout_ms));
        let handled = AssertUnwindSafe(tokio::time::timeout(
            timeout,
            self.agent.handle(&inv.action, &inv.args),
        ))
        .catch_unwind()
        .await;
        let reply = match handled {
            Ok(Ok(Ok(outcome))) => AgentReply::Done(Outcome {
                summary: one_line(&outcome.summary, MAX_LINE),
                data: outcome.data,
            }),
            Ok(Ok(Err(e))) => AgentReply::Failed(Refusal {
                code: e.code().clone(),
                message: e.message().to_owned(),
            }),
            Ok(Err(_elapsed)) => AgentReply::Failed(Refusal {
                code: code_of(screen::HANDLER_TIMEOUT),
                message: format!("the action did not finish within {timeout:?}"),
            }),
            Err(_panic) => AgentReply::Failed(Refusal {
                code: code_of(screen::HANDLER_PANICKED),
                message: "the action failed unexpectedly".to_owned(),
            }),
        };
        let event = match self.reply(slot, reply).await {
            Some(AgentReply::Done(_)) => {
                tracing::info!(action = %inv.action, "command executed");
                AuditEvent::CommandExecuted {
                    action: inv.action.clone(),
                    plan_id: inv.plan_id,
                    step: inv.step,
                    jti: hex::encode(jti),
                }
            }
            Some(AgentReply::Failed(r) | AgentReply::Rejected(r)) => {
                tracing::info!(action = %inv.action, code = r.code.as_str(), message = %r.message, "command failed");
                AuditEvent::CommandFailed {
                    action: inv.action.clone(),
                    plan_id: inv.plan_id,
                    step: inv.step,
                    code: r.code,
                }
            }
            // Claimed by the loop at shutdown; it records the failure.
            None => return,
        };
        self.audit(correlation_id, event).await;
    }

    /// Answers a request whose task will not: it panicked, or shutdown cut it off.
    async fn answer_abandoned(&self, slot: &ReplySlot, code: &'static str, message: &str) {
        let reply = AgentReply::Failed(Refusal {
            code: code_of(code),
            message: message.to_owned(),
        });
        if self.reply(slot, reply).await.is_none() {
            return;
        }
        let context = slot.context();
        let event = match context.step {
            Some((action, plan_id, step)) => AuditEvent::CommandFailed {
                action,
                plan_id,
                step,
                code: code_of(code),
            },
            None => AuditEvent::CommandRejected {
                code: code_of(code),
                plan_id: None,
                step: None,
            },
        };
        self.audit(context.correlation_id, event).await;
    }
}

fn rejected_event(rejection: &Rejection) -> AuditEvent {
    AuditEvent::CommandRejected {
        code: rejection.code.clone(),
        plan_id: rejection.known.as_ref().map(|k| k.invocation.plan_id),
        step: rejection.known.as_ref().map(|k| k.invocation.step),
    }
}

/// The next command, once a concurrency permit is free. `None` when the subscription ended.
async fn next_command(
    permits: &Arc<Semaphore>,
    commands: &mut Subscriber,
) -> Option<(OwnedSemaphorePermit, Message)> {
    let permit = Arc::clone(permits).acquire_owned().await.ok()?;
    let message = commands.next().await?;
    Some((permit, message))
}

type Slots = HashMap<tokio::task::Id, Arc<ReplySlot>>;

fn spawn<A: Agent>(
    shared: &Arc<Shared<A>>,
    tasks: &mut JoinSet<()>,
    slots: &mut Slots,
    permit: OwnedSemaphorePermit,
    message: Message,
) {
    shared.in_flight.fetch_add(1, Ordering::Relaxed);
    let guard = InFlight {
        shared: Arc::clone(shared),
    };
    let slot = message.reply.clone().map(|subject| {
        Arc::new(ReplySlot {
            subject,
            sent: AtomicBool::new(false),
            context: Mutex::new(SlotContext::default()),
        })
    });
    let task_slot = slot.clone();
    let task_shared = Arc::clone(shared);
    let handle = tasks.spawn(async move {
        let _permit = permit;
        let _guard = guard;
        task_shared
            .process(task_slot.as_deref(), &message.payload)
            .await;
    });
    if let Some(slot) = slot {
        slots.insert(handle.id(), slot);
    }
}

/// Handles a finished task: a panic that left its request unanswered gets a failure.
async fn reap<A: Agent>(
    shared: &Shared<A>,
    slots: &mut Slots,
    joined: Result<(tokio::task::Id, ()), tokio::task::JoinError>,
) {
    let (id, failure) = match joined {
        Ok((id, ())) => (id, None),
        Err(e) => {
            let id = e.id();
            if e.is_panic() {
                tracing::error!(code = "agent_internal_error", "a request task panicked");
            }
            (id, Some(e.is_panic()))
        }
    };
    let slot = slots.remove(&id);
    if let (Some(slot), Some(panicked)) = (slot, failure) {
        let (code, message) = if panicked {
            ("agent_internal_error", "the agent failed unexpectedly")
        } else {
            (
                screen::AGENT_SHUTDOWN,
                "the agent shut down before the action finished; its effect is unknown",
            )
        };
        shared.answer_abandoned(&slot, code, message).await;
    }
}

/// Serves commands until `shutdown` completes (then drains and returns `Ok`), the subscription
/// ends (then returns [`RuntimeError::SubscriptionClosed`] after draining) or the agent's
/// background work fails (then returns [`RuntimeError::Background`] after draining).
pub async fn serve<A: Agent>(
    config: AgentConfig,
    agent: A,
    gate: TokenGate,
    client: Client,
    shutdown: impl Future<Output = ()>,
) -> Result<(), RuntimeError> {
    let manifest = A::manifest().ok_or(StartError::ManifestMissing)?;
    if manifest.name() != &config.name {
        return Err(StartError::WrongAgent {
            config: config.name.clone(),
            manifest: manifest.name().clone(),
        }
        .into());
    }
    let me = Principal::from(&config.name);
    let mut js = jetstream::new(client.clone());
    js.set_timeout(AUDIT_ACK_TIMEOUT);
    let shared = Arc::new(Shared {
        agent,
        manifest,
        me: me.clone(),
        orchestrator: Principal::orchestrator(),
        gate: Mutex::new(gate),
        client: client.clone(),
        audit: AuditEmitter::new(js, me).with_attempts(AUDIT_ATTEMPTS),
        in_flight: AtomicU32::new(0),
        handled: AtomicU64::new(0),
    });
    let started_at = UnixMillis::now();
    let mut commands = client
        .subscribe(String::from(Subject::command(&config.name)))
        .await
        .map_err(RuntimeError::Subscribe)?;
    client.flush().await.map_err(RuntimeError::Flush)?;
    tracing::info!(agent = %config.name, version = A::VERSION, "agent ready");
    shared
        .audit(
            None,
            AuditEvent::ServiceStarted {
                version: A::VERSION.to_owned(),
            },
        )
        .await;
    shared.heartbeat(A::VERSION, started_at, &config).await;

    let period = Duration::from_millis(u64::from(config.heartbeat_interval_ms)).max(MIN_HEARTBEAT);
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let permits = Arc::new(Semaphore::new(usize::from(config.max_concurrency.max(1))));
    let mut tasks: JoinSet<()> = JoinSet::new();
    let mut slots = Slots::new();
    let shutdown = shutdown.fuse();
    tokio::pin!(shutdown);

    // The agent's background work, if any, is polled beside the command loop.
    let (stop_background, shutdown_signal) = ShutdownSignal::channel();
    let background = shared.agent.background(BackgroundContext {
        name: config.name.clone(),
        client: client.clone(),
        audit: shared.audit.clone(),
        data_dir: std::path::PathBuf::from(&config.data_dir),
        shutdown: shutdown_signal,
    });
    let mut background_running = background.is_some();
    let background = futures::future::OptionFuture::from(background);
    tokio::pin!(background);

    let end = loop {
        tokio::select! {
            biased;
            () = &mut shutdown => break LoopEnd::Shutdown,
            Some(result) = &mut background, if background_running => {
                background_running = false;
                match result {
                    Ok(()) => tracing::info!("background work finished"),
                    Err(e) => {
                        tracing::error!(code = e.code(), error = %e, "background work failed");
                        break LoopEnd::Background(e);
                    }
                }
            }
            Some(joined) = tasks.join_next_with_id(), if !tasks.is_empty() => {
                reap(&shared, &mut slots, joined).await;
            }
            _ = ticker.tick() => shared.heartbeat(A::VERSION, started_at, &config).await,
            next = next_command(&permits, &mut commands) => match next {
                Some((permit, message)) => spawn(&shared, &mut tasks, &mut slots, permit, message),
                None => break LoopEnd::SubscriptionClosed,
            },
        }
    };
    tracing::info!(in_flight = tasks.len(), "no longer taking commands");
    let _receivers_gone = stop_background.send(true);

    // Commands received but not started are refused, so each still gets its one reply.
    if let Err(e) = commands.drain().await {
        tracing::warn!(error = %e, "could not drain the command subscription");
    }
    let drained = async {
        while let Some(message) = commands.next().await {
            let Some(subject) = message.reply.clone() else {
                // Unanswerable either way; recorded like any other.
                shared.process(None, &message.payload).await;
                continue;
            };
            let slot = ReplySlot {
                subject,
                sent: AtomicBool::new(false),
                context: Mutex::new(SlotContext::default()),
            };
            let rejection = match screen::screen(&message.payload, &shared.orchestrator, manifest) {
                Ok(s) => Rejection {
                    code: code_of(screen::AGENT_SHUTTING_DOWN),
                    message: "the agent is shutting down; the action was not started".to_owned(),
                    correlation_id: Some(s.known.correlation_id),
                    known: Some(Box::new(s.known)),
                },
                Err(r) => r,
            };
            slot.note(rejection.correlation_id, rejection.known.as_deref());
            shared.reject(&slot, rejection).await;
        }
    };
    if tokio::time::timeout(DRAIN_BOUND, drained).await.is_err() {
        tracing::warn!("commands still arriving after the drain bound");
    }

    // Requests in flight get the grace period, then a failure reply each.
    let grace = Duration::from_millis(u64::from(config.shutdown_grace_ms));
    let deadline = tokio::time::Instant::now() + grace;
    while !tasks.is_empty() {
        match tokio::time::timeout_at(deadline, tasks.join_next_with_id()).await {
            Ok(Some(joined)) => reap(&shared, &mut slots, joined).await,
            Ok(None) => break,
            Err(_elapsed) => {
                tracing::warn!(
                    cut_off = tasks.len(),
                    "shutdown grace period over; stopping requests in flight"
                );
                tasks.abort_all();
                while let Some(joined) = tasks.join_next_with_id().await {
                    reap(&shared, &mut slots, joined).await;
                }
            }
        }
    }
    // Background work gets its own grace period to finish after the shutdown signal.
    if background_running {
        match tokio::time::timeout(grace, &mut background).await {
            Ok(Some(Err(e))) => {
                tracing::warn!(code = e.code(), error = %e, "background work failed while stopping");
            }
            Ok(_finished) => {}
            Err(_elapsed) => tracing::warn!("background work still running after the grace period"),
        }
    }
    shared.heartbeat(A::VERSION, started_at, &config).await;
    match tokio::time::timeout(FLUSH_BOUND, client.flush()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "final flush failed"),
        Err(_elapsed) => tracing::warn!("final flush timed out"),
    }
    tracing::info!(
        handled = shared.handled.load(Ordering::Relaxed),
        "agent stopped"
    );
    match end {
        LoopEnd::Shutdown => Ok(()),
        LoopEnd::SubscriptionClosed => Err(RuntimeError::SubscriptionClosed),
        LoopEnd::Background(e) => Err(RuntimeError::Background(e)),
    }
}

/// Why the command loop ended.
enum LoopEnd {
    /// Shutdown was requested.
    Shutdown,
    /// The command subscription ended.
    SubscriptionClosed,
    /// The background work failed.
    Background(AgentError),
}
