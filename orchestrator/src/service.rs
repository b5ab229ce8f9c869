//! The orchestrator service: the imperative shell around planning, approval and execution.
//!
//! [`run`] opens the state database, loads the decision MAC key and the token signing key,
//! binds the `CHAT_IN` consumer (`orchestrator`; it never creates one), subscribes to
//! `status.*` (agent heartbeats) and the `ALERTS` stream (the audit-anomaly agent's alerts), publishes
//! `service_started`, recovers what a previous run left unfinished, and then loops until
//! `shutdown`:
//!
//! - `chat.in.<channel>` text from an owner: `message_received` → plan → a plan that needs
//!   approval (policy) is stored, audited (`plan_proposed`) and shown on
//!   `plan.proposed.<channel>`; a plan that only reads runs at once (`plan_started`); an
//!   answer goes to `chat.out` (`answer_sent`); a refusal goes to `chat.out` with its code and
//!   the correlation id (`plan_refused`). Anyone else: `sender_rejected`, no reply.
//! - `chat.decision.<channel>`: a button (MAC'd payload) or a typed short code → the approval
//!   state machine, or the alert flow (quarantine, dismiss, release).
//! - `ALERTS` (`alert.*`, durable): stored, audited, shown to the owner with Quarantine /
//!   Dismiss buttons, then acknowledged.
//! - a periodic tick: expired approvals, and the daily summary when it is due.
//!
//! A chat message is acknowledged only after its effects are durable (stored and published);
//! while it is being handled its ack deadline is extended. Executions run as tasks, bounded,
//! and read their plan from the store; shutdown stops taking messages and drains.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_nats::jetstream::{self, AckKind};
use audit::emit::AuditEmitter;
use futures::StreamExt as _;
use futures::future::BoxFuture;
use protocol::message::{
    AuditEvent, Button, ChatDecision, ChatIn, ChatOut, ChatRef, ErrorCode, Isolation, MAX_OUT_TEXT,
    MAX_PLAN_STEPS, PlanMessage, Status, StepDigest, Verdict,
};
use protocol::subject::stream;
use protocol::token::KeysetFile;
use protocol::{
    AgentName, ApprovalId, ChannelName, ChatUser, CorrelationId, Envelope, MessageId, PlanId,
    Principal, Route, Subject, UnixMillis,
};
use provision::{Layout, MacKey};
use thiserror::Error;
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;

use crate::alerts;
use crate::approval::{
    self, ApprovalView, Binding, Choice, DecisionRefusal, PlanState, Transition,
};
use crate::catalog::Catalog;
use crate::clock::Clock;
use crate::config::Config;
use crate::execute::{Executor, ExecutorParts, Fault, Recovered, SharedStore, with_store};
use crate::mint::Minter;
use crate::outbox::Outbox;
use crate::plan::{LlmComposer, PlanOutcome, PlanRequest, Planner};
use crate::render::{self, CardStatus};
use crate::store::{Inserted, NewApproval, NewPlan, PlanRecord, Store, StoreError};
use crate::summary;

/// How a quarantined agent's container is stopped and started again: `bot up` passes one
/// backed by the sandbox. Without one, quarantine still refuses the agent's tokens.
pub trait AgentControl: Send + Sync {
    /// Stops the agent's container or process.
    fn stop<'a>(&'a self, agent: &'a AgentName) -> BoxFuture<'a, Result<(), String>>;
    /// Starts it again.
    fn start<'a>(&'a self, agent: &'a AgentName) -> BoxFuture<'a, Result<(), String>>;
}

/// Timing and bounds of the service loop.
#[derive(Debug, Clone, Copy)]
pub struct Tuning {
    /// How often expiries and the summary schedule are checked.
    pub tick: Duration,
    /// Chat messages handled at once.
    pub max_handlers: usize,
    /// Plans executing at once.
    pub max_executions: usize,
    /// How long shutdown waits for handlers and executions.
    pub drain: Duration,
    /// How often a chat message's ack deadline is extended while it is handled.
    pub progress: Duration,
}

impl Default for Tuning {
    fn default() -> Self {
        Tuning {
            tick: Duration::from_secs(5),
            max_handlers: 8,
            max_executions: 4,
            drain: Duration::from_secs(10),
            progress: Duration::from_secs(10),
        }
    }
}

/// What the service is given.
pub struct Deps<P> {
    /// A NATS connection authenticated as the orchestrator.
    pub client: async_nats::Client,
    /// The provisioned layout (decision key, token signing seed, keyset).
    pub layout: Layout,
    /// The planner.
    pub planner: P,
    /// Stops and starts agents for quarantine, if available.
    pub agent_control: Option<Arc<dyn AgentControl>>,
    /// Writes the daily summary, if an LLM is configured (else the template is used).
    pub composer: Option<LlmComposer>,
    /// The clock.
    pub clock: Arc<dyn Clock>,
    /// The crash test hook (`ORCHESTRATOR_FAULT`), if set.
    pub fault: Option<Fault>,
    /// Loop timing.
    pub tuning: Tuning,
}

impl<P> std::fmt::Debug for Deps<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deps")
            .field("layout", &self.layout)
            .field("agent_control", &self.agent_control.is_some())
            .field("composer", &self.composer.is_some())
            .field("clock", &self.clock)
            .field("fault", &self.fault)
            .field("tuning", &self.tuning)
            .finish_non_exhaustive()
    }
}

/// Why the service stopped or could not start.
#[derive(Debug, Error)]
pub enum ServiceError {
    /// The state database.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A key file.
    #[error("cannot load {what}: {source}")]
    Key {
        /// Which key.
        what: &'static str,
        /// The cause.
        #[source]
        source: provision::ProvisionError,
    },
    /// The keyset file does not name the signing key.
    #[error("keyset: {0}")]
    Keyset(String),
    /// The `CHAT_IN` stream or its consumer could not be bound.
    #[error("cannot bind the chat consumer: {0}")]
    Consumer(String),
    /// A subscription failed.
    #[error("cannot subscribe: {0}")]
    Subscribe(#[source] async_nats::SubscribeError),
    /// The chat message stream ended (connection closed or consumer deleted).
    #[error("the chat consumer's message stream ended")]
    StreamEnded,
    /// Recovery failed.
    #[error("recovery failed: {0}")]
    Recovery(#[source] crate::execute::ExecError),
}

impl ServiceError {
    /// Stable code.
    pub fn code(&self) -> &'static str {
        match self {
            ServiceError::Store(e) => e.code(),
            ServiceError::Key { .. } => "key_unavailable",
            ServiceError::Keyset(_) => "keyset_invalid",
            ServiceError::Consumer(_) => "chat_consumer_unavailable",
            ServiceError::Subscribe(_) => "subscribe_failed",
            ServiceError::StreamEnded => "chat_stream_ended",
            ServiceError::Recovery(e) => e.code(),
        }
    }
}

/// What an agent last said about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    /// When.
    pub at: UnixMillis,
    /// Its version.
    pub version: String,
    /// Its isolation.
    pub isolation: Isolation,
}

/// Everything the handlers share.
pub(crate) struct Shared {
    pub(crate) config: Config,
    pub(crate) catalog: Catalog,
    pub(crate) store: SharedStore,
    pub(crate) audit: AuditEmitter,
    pub(crate) js: jetstream::Context,
    pub(crate) outbox: Outbox,
    pub(crate) executor: Executor,
    pub(crate) mac: MacKey,
    pub(crate) control: Option<Arc<dyn AgentControl>>,
    pub(crate) composer: Option<LlmComposer>,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) seen: std::sync::Mutex<HashMap<AgentName, Seen>>,
    exec_tx: mpsc::Sender<PlanId>,
    summary_running: AtomicBool,
}

/// How handling a message ended.
pub(crate) enum Handled {
    /// Done (or deliberately dropped after auditing): acknowledge.
    Done,
    /// Not one of ours (malformed, wrong sender): terminate, never redeliver.
    Drop(&'static str),
    /// A transient failure before the effects were durable: redeliver.
    Retry(String),
}

impl From<StoreError> for Handled {
    fn from(e: StoreError) -> Self {
        Handled::Retry(e.to_string())
    }
}

impl Shared {
    pub(crate) fn now(&self) -> UnixMillis {
        self.clock.now()
    }

    pub(crate) fn store<T>(
        &self,
        f: impl FnOnce(&mut Store) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        with_store(&self.store, f)
    }

    /// Publishes an audit event; a failure is logged and returned.
    pub(crate) async fn audit(
        &self,
        correlation: CorrelationId,
        event: AuditEvent,
    ) -> Result<(), Handled> {
        let kind = event.kind();
        self.audit
            .emit(correlation, event)
            .await
            .map(|_id| ())
            .map_err(|e| {
                tracing::error!(kind, code = e.code(), error = %e, "audit event not acknowledged");
                Handled::Retry(e.to_string())
            })
    }

    /// Sends a chat message, deduplicated by `dedup`.
    pub(crate) async fn send(
        &self,
        correlation: CorrelationId,
        out: ChatOut,
        dedup: String,
    ) -> Result<(), Handled> {
        self.outbox
            .send(correlation, out, Some(dedup))
            .await
            .map(|_id| ())
            .map_err(|e| {
                tracing::error!(code = e.code(), error = %e, "chat message not published");
                Handled::Retry(e.to_string())
            })
    }

    /// Refuses a decision: `decision_refused`, and a short message with the code.
    pub(crate) async fn refuse(
        &self,
        correlation: CorrelationId,
        chat: &ChatRef,
        by: &ChatUser,
        refusal: DecisionRefusal,
        source: MessageId,
    ) -> Result<(), Handled> {
        tracing::info!(%by, code = refusal.code(), "decision refused");
        self.audit(
            correlation,
            AuditEvent::DecisionRefused {
                by: by.clone(),
                code: ErrorCode::from_static(refusal.code()),
            },
        )
        .await?;
        let text = render::error_text(refusal.user_message(), refusal.code(), correlation);
        let key = format!("dec-{source}");
        self.send(
            correlation,
            ChatOut::Post(render::post(chat, key.clone(), text)),
            key,
        )
        .await
    }

    fn plan_buttons(&self, record: &PlanRecord, approval: ApprovalId) -> Vec<Button> {
        let binding = Binding {
            subject: &record.plan_hash,
            chat: &record.chat,
            user: &record.requested_by,
        };
        [(Choice::Approve, "Approve"), (Choice::Reject, "Reject")]
            .into_iter()
            .map(|(choice, label)| Button {
                label: label.to_owned(),
                payload: approval::encode_payload(&self.mac, choice, approval.as_bytes(), &binding),
            })
            .collect()
    }

    fn proposal_of(&self, record: &PlanRecord) -> Option<protocol::message::PlanProposal> {
        let approval = record.approval.as_ref()?;
        Some(render::proposal(
            record,
            approval,
            self.plan_buttons(record, approval.id),
        ))
    }

    /// A plan card's update (buttons gone, its status shown) and its dedup id.
    fn card_update(&self, record: &PlanRecord, status: &CardStatus) -> Option<(ChatOut, String)> {
        let proposal = self.proposal_of(record)?;
        let tag = match status {
            CardStatus::Running { .. } => "running",
            CardStatus::Rejected { .. } => "rejected",
            CardStatus::Expired => "expired",
            CardStatus::Finished(_) => "finished",
        };
        let dedup = format!("upd-{}-{tag}", proposal.approval_id);
        Some((
            ChatOut::Update(render::card_update(&proposal, status)),
            dedup,
        ))
    }

    /// Replaces a plan's card (buttons gone) with its status.
    async fn update_card(&self, record: &PlanRecord, status: CardStatus) -> Result<(), Handled> {
        let Some((out, dedup)) = self.card_update(record, &status) else {
            return Ok(());
        };
        self.send(record.correlation_id, out, dedup).await
    }

    /// Tells the user how a finished plan went: the card updated, the results posted.
    pub(crate) async fn report(&self, record: &PlanRecord) -> Result<(), Handled> {
        if record.approval.is_some() {
            self.update_card(record, CardStatus::Finished(record.state))
                .await?;
        }
        let message = render::results_message(record);
        let dedup = message.key.clone();
        self.send(record.correlation_id, ChatOut::Post(message), dedup)
            .await
    }

    async fn request_execution(&self, plan_id: PlanId) {
        if self.exec_tx.send(plan_id).await.is_err() {
            // The loop is shutting down; the plan stays approved and a restart resumes it.
            tracing::warn!(plan = %plan_id, "execution not started: shutting down");
        }
    }
}

fn digests(record: &PlanRecord) -> Vec<StepDigest> {
    record
        .plan
        .steps
        .iter()
        .enumerate()
        .map(|(i, s)| StepDigest {
            step: u16::try_from(i).unwrap_or(u16::MAX),
            agent: s.agent.clone(),
            action: s.action.clone(),
            args_sha256: protocol::args::args_digest(&s.params),
            args: s.params.clone(),
        })
        .collect()
}

/// Loads the token signing key and finds its key id in the keyset.
pub fn load_minter(layout: &Layout) -> Result<Minter, ServiceError> {
    let seed =
        provision::load_seed(&layout.token_signing_seed()).map_err(|source| ServiceError::Key {
            what: "the token signing seed",
            source,
        })?;
    let text = std::fs::read(layout.keyset())
        .map_err(|e| ServiceError::Keyset(format!("{}: {e}", layout.keyset().display())))?;
    let file: KeysetFile =
        serde_json::from_slice(&text).map_err(|e| ServiceError::Keyset(e.to_string()))?;
    let public = seed.public_hex();
    let kid = file
        .keys
        .iter()
        .find(|k| k.public_key == public && k.retires_at.is_none())
        .map(|k| k.kid)
        .ok_or_else(|| {
            ServiceError::Keyset("no current key in the keyset matches the signing seed".to_owned())
        })?;
    Ok(Minter::new(
        kid,
        &seed.signing_key().to_bytes(),
        Principal::orchestrator(),
    ))
}

/// Runs the orchestrator until `shutdown` completes (see the module documentation).
pub async fn run<P: Planner + 'static>(
    config: Config,
    deps: Deps<P>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServiceError> {
    let store = Arc::new(std::sync::Mutex::new(Store::open(&config.state_db)?));
    let mac = provision::load_mac_key(&deps.layout.decision_key()).map_err(|source| {
        ServiceError::Key {
            what: "the decision MAC key",
            source,
        }
    })?;
    let minter = load_minter(&deps.layout)?;
    let js = jetstream::new(deps.client.clone());
    let audit = AuditEmitter::new(js.clone(), Principal::orchestrator());
    let consumer = bind_consumer(&js, stream::CHAT_IN, stream::CHAT_IN_CONSUMER).await?;
    let mut statuses = deps
        .client
        .subscribe("status.*")
        .await
        .map_err(ServiceError::Subscribe)?;
    let alerts_consumer = bind_consumer(&js, stream::ALERTS, stream::ALERTS_CONSUMER).await?;
    let catalog = config.catalog();
    let executor = Executor::new(ExecutorParts {
        client: deps.client.clone(),
        audit: audit.clone(),
        minter,
        catalog: catalog.clone(),
        store: Arc::clone(&store),
        clock: Arc::clone(&deps.clock),
        fault: deps.fault,
        approval_ttl_ms: i64::try_from(config.approval.ttl_secs.saturating_mul(1000))
            .unwrap_or(i64::MAX),
    });
    let (exec_tx, mut exec_rx) = mpsc::channel::<PlanId>(64);
    let shared = Arc::new(Shared {
        config,
        catalog,
        store,
        audit,
        js: js.clone(),
        outbox: Outbox::new(js),
        executor,
        mac,
        control: deps.agent_control,
        composer: deps.composer,
        clock: deps.clock,
        seen: std::sync::Mutex::new(HashMap::new()),
        exec_tx,
        summary_running: AtomicBool::new(false),
    });
    let planner = Arc::new(deps.planner);
    let tuning = deps.tuning;

    let started = AuditEvent::ServiceStarted {
        version: env!("CARGO_PKG_VERSION").to_owned(),
    };
    if shared
        .audit(CorrelationId::random(), started)
        .await
        .is_err()
    {
        tracing::warn!("service_started was not audited");
    }

    let mut tasks: JoinSet<()> = JoinSet::new();
    let executions = Arc::new(Semaphore::new(tuning.max_executions.max(1)));
    let handlers = Arc::new(Semaphore::new(tuning.max_handlers.max(1)));

    // Recovery: before any new message, settle what the last run left.
    let recovered = shared
        .executor
        .recover()
        .await
        .map_err(ServiceError::Recovery)?;
    for r in recovered {
        match r {
            Recovered::Resume(plan_id) => {
                tracing::info!(plan = %plan_id, "resuming an approved plan after a restart");
                spawn_execution(&mut tasks, &shared, &executions, plan_id);
            }
            Recovered::Finished(record) => {
                tracing::warn!(plan = %record.plan_id, state = record.state.as_str(), "plan finished by recovery");
                let _ = shared.report(&record).await;
            }
            Recovered::Expired(record) => {
                let _ = shared.update_card(&record, CardStatus::Expired).await;
                let text = render::error_text(
                    "An approved plan could not start before it expired (the orchestrator was down); nothing was done.",
                    "approval_expired",
                    record.correlation_id,
                );
                let key = format!("exp-{}", record.plan_id);
                let _ = shared
                    .send(
                        record.correlation_id,
                        ChatOut::Post(render::post(&record.chat, key.clone(), text)),
                        key,
                    )
                    .await;
            }
        }
    }

    let mut messages = consumer
        .stream()
        .max_messages_per_batch(64)
        .expires(Duration::from_secs(5))
        .heartbeat(Duration::from_millis(2500))
        .messages()
        .await
        .map_err(|e| ServiceError::Consumer(e.to_string()))?;
    // Alerts wait in their stream while the orchestrator is down; each is acknowledged once
    // handled (stored, audited, posted), so a crash in between redelivers it.
    let mut alert_messages = alerts_consumer
        .stream()
        .max_messages_per_batch(16)
        .expires(Duration::from_secs(5))
        .heartbeat(Duration::from_millis(2500))
        .messages()
        .await
        .map_err(|e| ServiceError::Consumer(e.to_string()))?;
    let mut tick = tokio::time::interval(tuning.tick.max(Duration::from_millis(10)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tracing::info!("orchestrator ready");
    tokio::pin!(shutdown);
    let mut consecutive_errors = 0u32;
    let result = loop {
        tokio::select! {
            biased;
            () = &mut shutdown => break Ok(()),
            Some(plan_id) = exec_rx.recv() => {
                spawn_execution(&mut tasks, &shared, &executions, plan_id);
            }
            next = messages.next() => {
                let message = match next {
                    None => break Err(ServiceError::StreamEnded),
                    Some(Err(e)) => {
                        consecutive_errors += 1;
                        tracing::warn!(error = %e, consecutive_errors, "chat pull stream reported an error");
                        if consecutive_errors >= 100 {
                            break Err(ServiceError::StreamEnded);
                        }
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                    Some(Ok(m)) => {
                        consecutive_errors = 0;
                        m
                    }
                };
                // At most `max_handlers` are handled at once; the rest wait in their tasks,
                // bounded by the consumer's pending-ack limit.
                let handlers = Arc::clone(&handlers);
                let shared = Arc::clone(&shared);
                let planner = Arc::clone(&planner);
                tasks.spawn(async move {
                    let Ok(_permit) = handlers.acquire_owned().await else {
                        return;
                    };
                    handle_chat(&shared, &*planner, message, tuning.progress).await;
                });
            }
            Some(next) = alert_messages.next() => match next {
                Ok(m) => {
                    let shared = Arc::clone(&shared);
                    tasks.spawn(async move {
                        let acked = if alerts::on_alert(&shared, &m).await {
                            m.ack().await
                        } else {
                            m.ack_with(jetstream::AckKind::Nak(Some(Duration::from_secs(1)))).await
                        };
                        if let Err(e) = acked {
                            tracing::warn!(error = %e, "alert not acknowledged; it will come again");
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "alert pull stream reported an error");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(m) = statuses.next() => on_status(&shared, &m),
            _ = tick.tick() => {
                let shared_tick = Arc::clone(&shared);
                tasks.spawn(async move { sweep(&shared_tick).await });
                if shared.config.summary.is_some() && !shared.summary_running.swap(true, Ordering::SeqCst) {
                    let shared = Arc::clone(&shared);
                    tasks.spawn(async move {
                        summary_tick(&shared).await;
                        shared.summary_running.store(false, Ordering::SeqCst);
                    });
                }
            }
            Some(done) = tasks.join_next(), if !tasks.is_empty() => {
                if let Err(e) = done {
                    tracing::error!(error = %e, "a task panicked");
                }
            }
        }
    };
    tracing::info!(in_flight = tasks.len(), "orchestrator stopping; draining");
    drop(messages);
    drop(alert_messages);
    let drained = tokio::time::timeout(tuning.drain, async {
        while let Some(done) = tasks.join_next().await {
            if let Err(e) = done {
                tracing::error!(error = %e, "a task panicked while draining");
            }
        }
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            left = tasks.len(),
            "drain timed out; stopping the rest (a restart recovers them)"
        );
        tasks.abort_all();
        while tasks.join_next().await.is_some() {}
    }
    result
}

async fn bind_consumer(
    js: &jetstream::Context,
    stream_name: &str,
    consumer: &str,
) -> Result<jetstream::consumer::PullConsumer, ServiceError> {
    js.get_stream(stream_name)
        .await
        .map_err(|e| ServiceError::Consumer(format!("{stream_name}: {e}")))?
        .get_consumer(consumer)
        .await
        .map_err(|e| ServiceError::Consumer(format!("{stream_name}/{consumer}: {e}")))
}

/// Starts a plan's execution as a task; at most `max_executions` run at once, the others wait
/// in their task (never in the loop, which keeps taking messages).
fn spawn_execution(
    tasks: &mut JoinSet<()>,
    shared: &Arc<Shared>,
    executions: &Arc<Semaphore>,
    plan_id: PlanId,
) {
    let shared = Arc::clone(shared);
    let executions = Arc::clone(executions);
    tasks.spawn(async move {
        let Ok(_permit) = executions.acquire_owned().await else {
            return;
        };
        execute_and_report(&shared, plan_id).await;
    });
}

async fn execute_and_report(shared: &Shared, plan_id: PlanId) {
    match shared.executor.run(plan_id).await {
        Ok(executed) => {
            let _ = shared.report(&executed.record).await;
        }
        Err(e) => {
            tracing::error!(plan = %plan_id, code = e.code(), error = %e, "execution stopped");
        }
    }
}

fn on_status(shared: &Shared, message: &async_nats::Message) {
    let Some(Route::Status(agent)) = Subject::route(message.subject.as_str()) else {
        return;
    };
    let Ok(envelope) = Envelope::<Status>::decode(&message.payload) else {
        tracing::warn!(%agent, "undecodable heartbeat ignored");
        return;
    };
    if envelope.sender != Principal::from(&agent) {
        tracing::warn!(%agent, sender = %envelope.sender, "heartbeat from another sender ignored");
        return;
    }
    let Status::Heartbeat(h) = envelope.body;
    let seen = Seen {
        at: shared.now(),
        version: h.version,
        isolation: h.isolation.level,
    };
    let mut map = shared
        .seen
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let previous = map.insert(agent.clone(), seen.clone());
    if previous.as_ref().map(|p| p.isolation) != Some(seen.isolation) {
        tracing::info!(%agent, isolation = ?seen.isolation, version = %seen.version, "agent heartbeat");
    }
}

/// Expires proposals whose time has passed.
async fn sweep(shared: &Shared) {
    let now = shared.now();
    let expired = match shared.store(|s| s.expired_proposals(now)) {
        Ok(e) => e,
        Err(e) => {
            tracing::error!(error = %e, "expiry sweep failed");
            return;
        }
    };
    for record in expired {
        let _ = expire_proposal(shared, &record, now).await;
    }
}

async fn expire_proposal(
    shared: &Shared,
    record: &PlanRecord,
    now: UnixMillis,
) -> Result<bool, Handled> {
    let Some(approval) = &record.approval else {
        return Ok(false);
    };
    if !shared.store(|s| s.expire(record.plan_id, PlanState::Proposed, now))? {
        return Ok(false);
    }
    shared
        .audit(
            record.correlation_id,
            AuditEvent::ApprovalExpired {
                approval_id: approval.id,
                plan_id: record.plan_id,
            },
        )
        .await?;
    shared.update_card(record, CardStatus::Expired).await?;
    Ok(true)
}

async fn handle_chat<P: Planner>(
    shared: &Shared,
    planner: &P,
    message: jetstream::Message,
    progress: Duration,
) {
    let work = async {
        match Subject::route(message.subject.as_str()) {
            Some(Route::ChatIn(channel)) => {
                on_text(shared, planner, &channel, &message.payload).await
            }
            Some(Route::ChatDecision(channel)) => {
                on_decision(shared, &channel, &message.payload).await
            }
            _ => Handled::Drop("wrong_subject"),
        }
    };
    let keep_alive = async {
        loop {
            tokio::time::sleep(progress).await;
            if let Err(e) = message.ack_with(AckKind::Progress).await {
                tracing::warn!(error = %e, "could not extend the ack deadline");
            }
        }
    };
    let handled = tokio::select! {
        h = work => h,
        () = keep_alive => Handled::Retry("unreachable".to_owned()),
    };
    let ack = match handled {
        Handled::Done => message.ack().await,
        Handled::Drop(code) => {
            tracing::warn!(subject = %message.subject, code, "chat message dropped");
            message.ack_with(AckKind::Term).await
        }
        Handled::Retry(reason) => {
            tracing::warn!(subject = %message.subject, %reason, "chat message will be redelivered");
            message
                .ack_with(AckKind::Nak(Some(Duration::from_secs(1))))
                .await
        }
    };
    if let Err(e) = ack {
        tracing::warn!(error = %e, "acknowledgement failed; the message will be redelivered");
    }
}

fn outcome_of(r: Result<(), Handled>) -> Handled {
    match r {
        Ok(()) => Handled::Done,
        Err(h) => h,
    }
}

async fn on_text<P: Planner>(
    shared: &Shared,
    planner: &P,
    channel: &ChannelName,
    payload: &[u8],
) -> Handled {
    let envelope = match Envelope::<ChatIn>::decode(payload) {
        Ok(e) => e,
        Err(e) => {
            tracing::warn!(code = e.code(), error = %e, "undecodable chat message");
            return Handled::Drop(e.code());
        }
    };
    if envelope.sender != Principal::gateway() {
        return Handled::Drop("wrong_sender");
    }
    let ChatIn::Text(text) = &envelope.body;
    if &text.chat.channel != channel {
        return Handled::Drop("wrong_channel");
    }
    let correlation = envelope.correlation_id;
    if !shared.config.is_owner(&text.user) {
        tracing::info!(channel = %channel, "message from a sender who is not an owner dropped");
        return outcome_of(
            shared
                .audit(
                    correlation,
                    AuditEvent::SenderRejected {
                        channel: channel.clone(),
                        platform_user: render::clean_line(text.user.platform_id(), 128),
                        code: ErrorCode::from_static("sender_not_allowed"),
                    },
                )
                .await,
        );
    }
    // A redelivered message finds the plan it already made.
    match shared.store(|s| s.plan_by_source(envelope.id)) {
        Ok(Some(existing)) => return outcome_of(show_plan(shared, &existing).await),
        Ok(None) => {}
        Err(e) => return e.into(),
    }
    if let Err(h) = shared
        .audit(
            correlation,
            AuditEvent::MessageReceived {
                chat: text.chat.clone(),
                user: text.user.clone(),
                text: text.text.clone(),
            },
        )
        .await
    {
        return h;
    }
    let now = shared.now();
    let outcome = planner
        .plan(PlanRequest {
            text: &text.text,
            user: &text.user,
            now,
        })
        .await;
    let source = envelope.id;
    match outcome {
        PlanOutcome::Answer(answer) => {
            let r = async {
                shared
                    .audit(
                        correlation,
                        AuditEvent::AnswerSent {
                            planner: "planner".to_owned(),
                        },
                    )
                    .await?;
                let key = format!("ans-{source}");
                let body = render::clean_text(&answer, MAX_OUT_TEXT - 64);
                shared
                    .send(
                        correlation,
                        ChatOut::Post(render::post(&text.chat, key.clone(), body)),
                        key,
                    )
                    .await
            };
            outcome_of(r.await)
        }
        PlanOutcome::Refused(refusal) => {
            refuse_plan(
                shared,
                correlation,
                &text.chat,
                source,
                "planner",
                &refusal.code,
                &refusal.user_message,
                &refusal.detail,
            )
            .await
        }
        PlanOutcome::Plan(plan) => {
            if plan.steps.is_empty() || plan.steps.len() > MAX_PLAN_STEPS {
                return refuse_plan(
                    shared,
                    correlation,
                    &text.chat,
                    source,
                    &plan.planner.to_string(),
                    &ErrorCode::from_static("plan_invalid"),
                    "I could not make a usable plan for that.",
                    &format!("plan with {} steps", plan.steps.len()),
                )
                .await;
            }
            // The policy looks at the catalog's effects, never at the plan's.
            let effects = plan.steps.iter().map(|s| {
                shared
                    .catalog
                    .action(&s.agent, &s.action)
                    .map_or(protocol::message::Effect::Change, |(spec, _)| spec.effect)
            });
            let needs = approval::needs_approval(shared.config.approval.require, effects);
            let ttl_ms = i64::try_from(shared.config.approval.ttl_secs.saturating_mul(1000))
                .unwrap_or(i64::MAX);
            let new = NewPlan {
                plan_id: PlanId::random(),
                source,
                correlation_id: correlation,
                plan: &plan,
                requested_by: &text.user,
                chat: &text.chat,
                approval: needs.then(|| NewApproval {
                    id: ApprovalId::random(),
                    expires_at: UnixMillis(now.0.saturating_add(ttl_ms)),
                }),
                now,
            };
            let inserted = match shared.store(|s| s.insert_plan(&new, random_code)) {
                Ok(i) => i,
                Err(e) => return e.into(),
            };
            let record = match inserted {
                Inserted::New(r) | Inserted::Existing(r) => r,
            };
            outcome_of(show_plan(shared, &record).await)
        }
    }
}

fn random_code() -> String {
    let mut b = [0u8; 4];
    if getrandom::getrandom(&mut b).is_err() {
        // Codes are a convenience bound to the chat and user, not a secret.
        return approval::short_code((UnixMillis::now().0 & 0xffff_ffff) as u32);
    }
    approval::short_code(u32::from_le_bytes(b))
}

/// Audits and shows a recorded plan: its card if it waits for approval; a plan that runs by
/// policy is started. Idempotent for a redelivered message (same dedup ids).
async fn show_plan(shared: &Shared, record: &PlanRecord) -> Result<(), Handled> {
    let correlation = record.correlation_id;
    match (&record.approval, record.state) {
        (Some(approval), PlanState::Proposed) => {
            shared
                .audit(
                    correlation,
                    AuditEvent::PlanProposed {
                        plan_id: record.plan_id,
                        approval_id: approval.id,
                        requested_by: record.requested_by.clone(),
                        planner: record.plan.planner.to_string(),
                        steps: digests(record),
                    },
                )
                .await?;
            let Some(proposal) = shared.proposal_of(record) else {
                return Ok(());
            };
            shared
                .outbox
                .propose(
                    correlation,
                    PlanMessage::Proposed(proposal),
                    Some(format!("card-{}", approval.id)),
                )
                .await
                .map(|_id| ())
                .map_err(|e| {
                    tracing::error!(code = e.code(), error = %e, "approval card not published");
                    Handled::Retry(e.to_string())
                })
        }
        (None, PlanState::Executing) => {
            let untouched = record
                .steps
                .iter()
                .all(|s| s.state == crate::approval::StepState::Pending);
            if !untouched {
                // Already running or run (a redelivery); the executor reports it.
                return Ok(());
            }
            shared
                .audit(
                    correlation,
                    AuditEvent::PlanStarted {
                        plan_id: record.plan_id,
                        requested_by: record.requested_by.clone(),
                        planner: record.plan.planner.to_string(),
                        steps: digests(record),
                    },
                )
                .await?;
            shared.request_execution(record.plan_id).await;
            Ok(())
        }
        // Decided, expired or finished meanwhile: nothing to show again.
        _ => Ok(()),
    }
}

#[allow(clippy::too_many_arguments)]
async fn refuse_plan(
    shared: &Shared,
    correlation: CorrelationId,
    chat: &ChatRef,
    source: MessageId,
    planner: &str,
    code: &ErrorCode,
    user_message: &str,
    detail: &str,
) -> Handled {
    let r = async {
        shared
            .audit(
                correlation,
                AuditEvent::PlanRefused {
                    planner: render::clean_line(planner, 128),
                    code: code.clone(),
                    detail: render::clean_line(detail, protocol::message::MAX_LINE),
                },
            )
            .await?;
        let key = format!("ref-{source}");
        let text = render::error_text(
            &render::clean_line(user_message, protocol::message::MAX_LINE),
            code.as_str(),
            correlation,
        );
        shared
            .send(
                correlation,
                ChatOut::Post(render::post(chat, key.clone(), text)),
                key,
            )
            .await
    };
    outcome_of(r.await)
}

async fn on_decision(shared: &Shared, channel: &ChannelName, payload: &[u8]) -> Handled {
    tracing::debug!("decision received");
    let envelope = match Envelope::<ChatDecision>::decode(payload) {
        Ok(e) => e,
        Err(e) => {
            tracing::warn!(code = e.code(), error = %e, "undecodable decision");
            return Handled::Drop(e.code());
        }
    };
    if envelope.sender != Principal::gateway() {
        return Handled::Drop("wrong_sender");
    }
    let (chat, user) = match &envelope.body {
        ChatDecision::Button(b) => (&b.chat, &b.user),
        ChatDecision::Code(c) => (&c.chat, &c.user),
    };
    if &chat.channel != channel {
        return Handled::Drop("wrong_channel");
    }
    let correlation = envelope.correlation_id;
    if !shared.config.is_owner(user) {
        // Default deny, and no reply content for strangers.
        return outcome_of(
            shared
                .audit(
                    correlation,
                    AuditEvent::SenderRejected {
                        channel: channel.clone(),
                        platform_user: render::clean_line(user.platform_id(), 128),
                        code: ErrorCode::from_static("sender_not_allowed"),
                    },
                )
                .await,
        );
    }
    let source = envelope.id;
    let result = match &envelope.body {
        ChatDecision::Button(b) => {
            let parsed = match approval::parse_payload(&b.payload) {
                Ok(p) => p,
                Err(refusal) => {
                    return outcome_of(
                        shared
                            .refuse(correlation, chat, user, refusal, source)
                            .await,
                    );
                }
            };
            match parsed.choice.verdict() {
                Some(verdict) => {
                    let id = ApprovalId::from_bytes(parsed.id);
                    match shared.store(|s| s.plan_by_approval(id)) {
                        Err(e) => return e.into(),
                        Ok(None) => {
                            shared
                                .refuse(correlation, chat, user, DecisionRefusal::Unknown, source)
                                .await
                        }
                        Ok(Some(record)) => {
                            let binding = Binding {
                                subject: &record.plan_hash,
                                chat: &record.chat,
                                user: &record.requested_by,
                            };
                            match approval::verify_payload(&shared.mac, &parsed, &binding) {
                                Err(refusal) => {
                                    shared
                                        .refuse(correlation, chat, user, refusal, source)
                                        .await
                                }
                                Ok(()) => {
                                    decide_plan(
                                        shared,
                                        &record,
                                        verdict,
                                        user,
                                        chat,
                                        source,
                                        correlation,
                                    )
                                    .await
                                }
                            }
                        }
                    }
                }
                None => {
                    alerts::on_alert_decision(shared, &parsed, user, chat, source, correlation)
                        .await
                }
            }
        }
        ChatDecision::Code(c) => match shared.store(|s| s.plan_by_code(&c.chat, &c.code)) {
            Err(e) => return e.into(),
            Ok(None) => {
                shared
                    .refuse(
                        correlation,
                        chat,
                        user,
                        DecisionRefusal::UnknownCode,
                        source,
                    )
                    .await
            }
            Ok(Some(record)) => {
                decide_plan(shared, &record, c.verdict, user, chat, source, correlation).await
            }
        },
    };
    outcome_of(result)
}

async fn decide_plan(
    shared: &Shared,
    record: &PlanRecord,
    verdict: Verdict,
    by: &ChatUser,
    in_chat: &ChatRef,
    source: MessageId,
    incoming: CorrelationId,
) -> Result<(), Handled> {
    let Some(approval) = &record.approval else {
        return shared
            .refuse(incoming, in_chat, by, DecisionRefusal::Unknown, source)
            .await;
    };
    let now = shared.now();
    let view = ApprovalView {
        state: record.state,
        expires_at: approval.expires_at,
        requested_by: &record.requested_by,
        chat: &record.chat,
    };
    // Refusals about a real plan are filed under its correlation id.
    let correlation = record.correlation_id;
    match approval::on_decision(&view, verdict, by, in_chat, now) {
        Err(refusal) => {
            shared
                .refuse(correlation, in_chat, by, refusal, source)
                .await
        }
        Ok(Transition::Expire) => {
            expire_proposal(shared, record, now).await?;
            shared
                .refuse(correlation, in_chat, by, DecisionRefusal::Expired, source)
                .await
        }
        Ok(Transition::NoOp(PlanState::Expired)) => {
            shared
                .refuse(correlation, in_chat, by, DecisionRefusal::Expired, source)
                .await
        }
        Ok(Transition::NoOp(_)) => {
            shared
                .refuse(
                    correlation,
                    in_chat,
                    by,
                    DecisionRefusal::AlreadyDecided,
                    source,
                )
                .await
        }
        Ok(Transition::Decide(verdict)) => {
            tracing::debug!("decision checked");
            if !shared.store(|s| s.decide(record.plan_id, verdict, by, now))? {
                // Another press won the race.
                return shared
                    .refuse(
                        correlation,
                        in_chat,
                        by,
                        DecisionRefusal::AlreadyDecided,
                        source,
                    )
                    .await;
            }
            // The decision is durable; from here on a redelivery is a no-op. `approval_decided`
            // is queued before the execution starts (so it precedes the steps' events in the
            // stream) and its acknowledgement awaited before the message is acknowledged.
            let pending = crate::execute::publish_audit(
                &shared.js,
                correlation,
                AuditEvent::ApprovalDecided {
                    approval_id: approval.id,
                    plan_id: record.plan_id,
                    verdict,
                    by: by.clone(),
                },
                now,
            )
            .await;
            let status = match verdict {
                Verdict::Approve => CardStatus::Running { by: by.clone() },
                Verdict::Reject => CardStatus::Rejected { by: by.clone() },
            };
            // The card's update is queued before the execution starts, so the final update
            // (the outcome) always comes after it.
            let card = match shared.card_update(record, &status) {
                Some((out, dedup)) => Some(shared.outbox.queue(correlation, out, dedup).await),
                None => None,
            };
            tracing::debug!("decision stored");
            if verdict == Verdict::Approve {
                shared.request_execution(record.plan_id).await;
            }
            if let Some(queued) = card {
                let acked = match queued {
                    Ok(ack) => ack.await.map(|_ack| ()).map_err(|e| e.to_string()),
                    Err(e) => Err(e.to_string()),
                };
                if let Err(e) = acked {
                    tracing::warn!(plan = %record.plan_id, error = %e, "card update not published");
                }
            }
            let acked = match pending {
                Ok(ack) => ack.await.map(|_ack| ()).map_err(|e| e.to_string()),
                Err(e) => Err(e),
            };
            if let Err(e) = acked {
                // The decision stands (it is in the state database); the steps' own intents
                // are still audited before anything runs.
                tracing::error!(plan = %record.plan_id, error = %e, "approval_decided not acknowledged");
            }
            Ok(())
        }
    }
}

/// Runs the daily summary if it is due.
async fn summary_tick(shared: &Shared) {
    if let Err(e) = summary_run(shared).await {
        tracing::error!(code = e.code(), error = %e, "daily summary failed");
    }
}

async fn summary_run(shared: &Shared) -> Result<(), crate::execute::ExecError> {
    use std::str::FromStr as _;
    let Some(config) = &shared.config.summary else {
        return Ok(());
    };
    let now = shared.now();
    let Some(now_utc) = chrono::DateTime::from_timestamp_millis(now.0) else {
        return Ok(());
    };
    let last = shared.store(|s| s.last_run(summary::JOB))?;
    let last_day = last
        .as_ref()
        .and_then(|l| chrono::NaiveDate::from_str(&l.day).ok());
    let window = Duration::from_secs(config.catch_up_window_secs);
    let Some(due) = summary::due(last_day, now_utc, &config.schedule, config.timezone, window)
    else {
        return Ok(());
    };
    let day = due.day.to_string();
    if !shared.store(|s| s.claim_run(summary::JOB, &day, now))? {
        return Ok(());
    }
    tracing::info!(%day, caught_up = due.caught_up, "daily summary due");
    let correlation = CorrelationId::random();
    let plan = summary::plan(due.day, &shared.catalog);
    let executed = if plan.steps.is_empty() {
        None
    } else {
        let source = summary_source(&day);
        let new = NewPlan {
            plan_id: PlanId::random(),
            source,
            correlation_id: correlation,
            plan: &plan,
            requested_by: &config.to.user,
            chat: &config.to.chat,
            approval: None,
            now,
        };
        let record = match shared.store(|s| s.insert_plan(&new, random_code))? {
            Inserted::New(r) | Inserted::Existing(r) => r,
        };
        let started = AuditEvent::PlanStarted {
            plan_id: record.plan_id,
            requested_by: record.requested_by.clone(),
            planner: record.plan.planner.to_string(),
            steps: digests(&record),
        };
        if shared.audit(correlation, started).await.is_err() {
            tracing::warn!("plan_started of the summary not audited");
        }
        Some(shared.executor.run(record.plan_id).await?)
    };
    let mut text = None;
    if let (Some(composer), Some(e)) = (&shared.composer, &executed) {
        let sources = summary::composer_input(e);
        match composer.compose(now, &sources).await {
            Ok(t) if !t.trim().is_empty() => {
                text = Some(format!(
                    "Daily summary for {day}\n{}",
                    render::clean_text(&t, MAX_OUT_TEXT / 2)
                ));
            }
            Ok(_) => tracing::warn!("the composer returned nothing; using the template"),
            Err(e) => {
                tracing::warn!(code = e.code(), error = %e, "the composer failed; using the template");
            }
        }
    }
    let text = text.unwrap_or_else(|| summary::template(due.day, executed.as_ref()));
    let key = format!("summary-{day}");
    let sent = shared
        .send(
            correlation,
            ChatOut::Post(render::post(&config.to.chat, key.clone(), text)),
            key,
        )
        .await;
    if sent.is_err() {
        tracing::error!(%day, "daily summary not delivered (the day is not retried)");
    } else {
        let _ = shared
            .audit(
                correlation,
                AuditEvent::SummarySent {
                    day: day.clone(),
                    caught_up: due.caught_up,
                },
            )
            .await;
    }
    shared.store(|s| s.finish_run(summary::JOB, &day, shared.now()))?;
    Ok(())
}

/// The source id of a day's summary plan (one plan per day).
fn summary_source(day: &str) -> MessageId {
    use sha2::{Digest as _, Sha256};
    let h = Sha256::digest(format!("daily-summary:{day}").as_bytes());
    let mut b = [0u8; 16];
    for (d, s) in b.iter_mut().zip(h.iter()) {
        *d = *s;
    }
    // Version 4 / variant bits, so it reads as any other id.
    if let Some(v) = b.get_mut(6) {
        *v = (*v & 0x0f) | 0x40;
    }
    if let Some(v) = b.get_mut(8) {
        *v = (*v & 0x3f) | 0x80;
    }
    MessageId::from_bytes(b)
}
