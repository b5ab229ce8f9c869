//! Execution: a fixed plan, step by step, each step write-ahead audited.
//!
//! For each step, in order: refuse it if its action is not in the catalog, if it changes the
//! world without an approval, or if its agent is quarantined → record `intent` (with the token
//! nonce, the step's idempotency key together with (plan id, step index)) → publish
//! `step_intent` and wait for JetStream's acknowledgement (durable) → check quarantine again
//! and mint a `cap.v1` token bound to the approval (or `ReadOnlyPolicy` for read-only steps run
//! by policy), 30 s → publish `token_issued` → record `dispatched` (while the stream writes
//! `token_issued`) → once both are durable, request on `cmd.<agent>`
//! with the action's timeout plus a margin → record the result → publish `step_result`.
//! Sequential; the first step that does not succeed stops the plan (the rest are `skipped`)
//! unless the plan says `continue_on_failure`. At the end the plan's outcome is recorded and
//! `plan_finished` published.
//!
//! Nothing an agent returns can add, remove or change a step: the plan is loaded from the
//! store, checked against its hash, and only its own steps run. A step found in `intent` or
//! `dispatched` (the orchestrator stopped mid-step) is never run again: [`Executor::recover`]
//! marks it `unknown` and the user is told.
//!
//! Test hook: [`Fault`] (from `ORCHESTRATOR_FAULT` in the binary) aborts the process right
//! after an intent is durable, or right after an agent answered and before the answer is
//! recorded. It does nothing unless set.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use audit::emit::AuditEmitter;
use protocol::message::{
    AgentReply, AgentRequest, AuditEvent, Effect, ErrorCode, Invocation, Outcome, StepDigest,
    Verdict,
};
use protocol::token::ApprovalBinding;
use protocol::{AgentName, Envelope, MessageId, PlanId, Principal, Subject, UnixMillis};
use thiserror::Error;

use crate::approval::{PlanState, StepState, plan_outcome};
use crate::catalog::Catalog;
use crate::clock::Clock;
use crate::mint::{MintRequest, Minter, fresh_nonce};
use crate::render::{MAX_AGENT_LINE, clean_line};
use crate::store::{PlanRecord, StepUpdate, Store, StoreError};

/// Lifetime of the tokens the executor mints, in seconds.
pub const TOKEN_TTL_SECS: i64 = protocol::token::DEFAULT_TTL_SECS;
/// Added to an action's timeout for the request's own timeout.
pub const REPLY_MARGIN: Duration = Duration::from_secs(2);

/// The store, shared by the service's tasks (each operation is one short transaction).
pub type SharedStore = Arc<Mutex<Store>>;

/// Runs `f` on the store. A panic in another holder poisons the lock; every operation is its
/// own transaction, so the store is still consistent and is used on.
pub fn with_store<T>(
    store: &SharedStore,
    f: impl FnOnce(&mut Store) -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    let mut guard = store
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    f(&mut guard)
}

/// An audit event published on the connection but not yet acknowledged by the stream.
pub(crate) type PendingAudit = async_nats::jetstream::context::PublishAckFuture;

/// Publishes an audit event as the orchestrator and returns its pending acknowledgement. The
/// event is queued on the connection when this returns, so anything published afterwards on
/// the same connection reaches the stream after it; awaiting the acknowledgement is what makes
/// it durable. (`AuditEmitter::emit` is this plus waiting, with retries.)
pub(crate) async fn publish_audit(
    js: &async_nats::jetstream::Context,
    correlation: protocol::CorrelationId,
    event: AuditEvent,
    now: UnixMillis,
) -> Result<PendingAudit, String> {
    let envelope = Envelope::new(
        MessageId::random(),
        correlation,
        Principal::orchestrator(),
        now,
        event,
    );
    let payload = envelope.encode().map_err(|e| e.to_string())?;
    let publish = async_nats::jetstream::message::PublishMessage::build()
        .payload(payload.into())
        .message_id(envelope.id.to_string());
    js.send_publish(
        Subject::audit(&Principal::orchestrator()).to_string(),
        publish,
    )
    .await
    .map_err(|e| e.to_string())
}

/// Where the test hook aborts the process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Right after a step's intent is durable (stored and acknowledged by the audit stream),
    /// before the token is minted and the request sent.
    AbortAfterIntent,
    /// Right after the agent answered, before the answer is recorded.
    AbortAfterDispatch,
}

impl Fault {
    /// The environment variable the binary reads.
    pub const ENV: &'static str = "ORCHESTRATOR_FAULT";

    /// Parses the variable's value (`abort_after_intent`, `abort_after_dispatch`).
    pub fn parse(s: &str) -> Option<Fault> {
        match s {
            "abort_after_intent" => Some(Fault::AbortAfterIntent),
            "abort_after_dispatch" => Some(Fault::AbortAfterDispatch),
            _ => None,
        }
    }
}

/// Why execution stopped before the plan finished.
#[derive(Debug, Error)]
pub enum ExecError {
    /// The store failed; the plan stays where it is and a restart picks it up.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// No such plan.
    #[error("plan {0} does not exist")]
    NotFound(PlanId),
    /// The plan is not in a state that runs.
    #[error("plan {plan} is {state} and does not run")]
    NotRunnable {
        /// The plan.
        plan: PlanId,
        /// Its state.
        state: &'static str,
    },
    /// No randomness for a token nonce.
    #[error(transparent)]
    Mint(#[from] crate::mint::MintError),
}

impl ExecError {
    /// Stable code.
    pub fn code(&self) -> &'static str {
        match self {
            ExecError::Store(e) => e.code(),
            ExecError::NotFound(_) => "plan_not_found",
            ExecError::NotRunnable { .. } => "plan_not_runnable",
            ExecError::Mint(e) => e.code(),
        }
    }
}

/// A finished plan, with what the agents returned (untrusted data, in step order; `None` for
/// steps that did not succeed).
#[derive(Debug, Clone)]
pub struct Executed {
    /// The plan as stored now.
    pub record: PlanRecord,
    /// Each step's outcome, if it succeeded.
    pub outputs: Vec<Option<Outcome>>,
}

/// What a restart found for one unfinished plan.
#[derive(Debug, Clone)]
pub enum Recovered {
    /// Approved (or executing without a step in doubt) and still within its time: run it.
    Resume(PlanId),
    /// Finished now: some step's outcome is unknown (never run again), or its pending steps
    /// were not run: its time had passed.
    Finished(PlanRecord),
    /// Approved but its time had passed before any step ran: expired, nothing done.
    Expired(PlanRecord),
}

/// Runs plans. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Executor {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    client: async_nats::Client,
    js: async_nats::jetstream::Context,
    audit: AuditEmitter,
    minter: Minter,
    catalog: Catalog,
    store: SharedStore,
    clock: Arc<dyn Clock>,
    fault: Option<Fault>,
    approval_ttl_ms: i64,
}

/// What one step came to.
struct StepEnd {
    state: StepState,
    code: Option<ErrorCode>,
    summary: Option<String>,
    output: Option<Outcome>,
    /// The `step_result` outcome word.
    audit_outcome: &'static str,
}

impl StepEnd {
    fn refused(state: StepState, code: &'static str, audit_outcome: &'static str) -> StepEnd {
        StepEnd {
            state,
            code: Some(ErrorCode::from_static(code)),
            summary: None,
            output: None,
            audit_outcome,
        }
    }
}

/// The parts an [`Executor`] is made of.
#[derive(Debug)]
pub struct ExecutorParts {
    /// The orchestrator's NATS connection.
    pub client: async_nats::Client,
    /// Its audit emitter.
    pub audit: AuditEmitter,
    /// The token minter.
    pub minter: Minter,
    /// The enabled agents.
    pub catalog: Catalog,
    /// The state database.
    pub store: SharedStore,
    /// The clock.
    pub clock: Arc<dyn Clock>,
    /// The test hook, if set.
    pub fault: Option<Fault>,
    /// How long an approval is valid (also bounds how late a plan may still start).
    pub approval_ttl_ms: i64,
}

impl Executor {
    /// An executor.
    pub fn new(parts: ExecutorParts) -> Self {
        Executor {
            inner: Arc::new(Inner {
                js: async_nats::jetstream::new(parts.client.clone()),
                client: parts.client,
                audit: parts.audit,
                minter: parts.minter,
                catalog: parts.catalog,
                store: parts.store,
                clock: parts.clock,
                fault: parts.fault,
                approval_ttl_ms: parts.approval_ttl_ms,
            }),
        }
    }

    fn store<T>(
        &self,
        f: impl FnOnce(&mut Store) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        with_store(&self.inner.store, f)
    }

    fn now(&self) -> UnixMillis {
        self.inner.clock.now()
    }

    async fn audit(
        &self,
        record: &PlanRecord,
        event: AuditEvent,
    ) -> Result<MessageId, audit::emit::EmitError> {
        let kind = event.kind();
        let r = self.inner.audit.emit(record.correlation_id, event).await;
        if let Err(e) = &r {
            tracing::error!(plan = %record.plan_id, kind, code = e.code(), error = %e, "audit event not acknowledged");
        }
        r
    }

    /// Runs a plan that is `approved` (it becomes `executing`) or already `executing` (a plan
    /// that runs by policy, or one resumed after a restart) until it finishes.
    pub async fn run(&self, plan_id: PlanId) -> Result<Executed, ExecError> {
        tracing::debug!(plan = %plan_id, "execution starts");
        let record = self
            .store(|s| s.plan(plan_id))?
            .ok_or(ExecError::NotFound(plan_id))?;
        // An approved plan becomes `executing` in the same transaction as its first intent (one
        // commit fewer before the first request); a step refused before any intent starts it
        // on its own.
        let mut start = match record.state {
            PlanState::Approved => true,
            PlanState::Executing => false,
            other => {
                return Err(ExecError::NotRunnable {
                    plan: plan_id,
                    state: other.as_str(),
                });
            }
        };
        let binding = match &record.approval {
            None => ApprovalBinding::ReadOnlyPolicy,
            Some(a) => match (&a.decision, &a.decided_by) {
                (Some(Verdict::Approve), Some(by)) => ApprovalBinding::Approved {
                    id: a.id,
                    hash: crate::mint::approval_hash(&a.id, &record.plan_hash, by),
                },
                _ => {
                    return Err(ExecError::NotRunnable {
                        plan: plan_id,
                        state: "not approved",
                    });
                }
            },
        };
        let mut outputs: Vec<Option<Outcome>> = vec![None; record.plan.steps.len()];
        let mut stop = record.steps.iter().any(|s| {
            s.state.is_final() && s.state != StepState::Done && s.state != StepState::Skipped
        });
        for (i, stored) in record.steps.iter().enumerate() {
            let idx = stored.index;
            match stored.state {
                StepState::Pending => {}
                StepState::Intent | StepState::Dispatched => {
                    // Only `recover` sees these; never run a step twice.
                    self.end_step(
                        &record,
                        idx,
                        StepEnd::refused(StepState::Unknown, "orchestrator_restarted", "unknown"),
                    )
                    .await?;
                    stop = true;
                    continue;
                }
                _ => continue,
            }
            if stop && !record.plan.continue_on_failure {
                self.store(|s| {
                    s.set_step(
                        plan_id,
                        idx,
                        StepState::Skipped,
                        StepUpdate::default(),
                        self.now(),
                    )
                })?;
                continue;
            }
            let end = self.run_step(&record, i, binding, &mut start).await?;
            if end.state != StepState::Done {
                stop = true;
            }
            if let Some(slot) = outputs.get_mut(i) {
                *slot = end.output.clone();
            }
            self.end_step(&record, idx, end).await?;
        }
        self.ensure_started(plan_id, &mut start)?;
        let record = self.finish(plan_id).await?;
        Ok(Executed { record, outputs })
    }

    /// Records the plan's outcome from its steps and publishes `plan_finished`.
    async fn finish(&self, plan_id: PlanId) -> Result<PlanRecord, ExecError> {
        let record = self
            .store(|s| s.plan(plan_id))?
            .ok_or(ExecError::NotFound(plan_id))?;
        let states: Vec<StepState> = record.steps.iter().map(|s| s.state).collect();
        let outcome = plan_outcome(&states);
        if self.store(|s| s.finish(plan_id, outcome, self.now()))? {
            let _ = self
                .audit(
                    &record,
                    AuditEvent::PlanFinished {
                        plan_id,
                        outcome: outcome.as_str().to_owned(),
                    },
                )
                .await;
        }
        self.store(|s| s.plan(plan_id))?
            .ok_or(ExecError::NotFound(plan_id))
    }

    async fn end_step(&self, record: &PlanRecord, idx: u16, end: StepEnd) -> Result<(), ExecError> {
        let summary = end
            .summary
            .as_deref()
            .map(|s| clean_line(s, MAX_AGENT_LINE));
        self.store(|s| {
            s.set_step(
                record.plan_id,
                idx,
                end.state,
                StepUpdate {
                    jti: None,
                    code: end.code.as_ref(),
                    summary: summary.as_deref(),
                },
                self.now(),
            )
        })?;
        let _ = self
            .audit(
                record,
                AuditEvent::StepResult {
                    plan_id: record.plan_id,
                    step: idx,
                    outcome: end.audit_outcome.to_owned(),
                    code: end.code,
                },
            )
            .await;
        Ok(())
    }

    /// Moves an approved plan to `executing` unless that already happened.
    fn ensure_started(&self, plan_id: PlanId, start: &mut bool) -> Result<(), ExecError> {
        if *start {
            if !self.store(|s| s.start_execution(plan_id, self.now()))? {
                return Err(ExecError::NotRunnable {
                    plan: plan_id,
                    state: "already started",
                });
            }
            *start = false;
        }
        Ok(())
    }

    fn is_quarantined(&self, agent: &AgentName) -> Result<bool, StoreError> {
        self.store(|s| s.is_quarantined(agent))
    }

    async fn run_step(
        &self,
        record: &PlanRecord,
        i: usize,
        binding: ApprovalBinding,
        start: &mut bool,
    ) -> Result<StepEnd, ExecError> {
        let end = self.run_step_inner(record, i, binding, start).await?;
        // A step refused before its intent still starts the plan.
        self.ensure_started(record.plan_id, start)?;
        Ok(end)
    }

    async fn run_step_inner(
        &self,
        record: &PlanRecord,
        i: usize,
        binding: ApprovalBinding,
        start: &mut bool,
    ) -> Result<StepEnd, ExecError> {
        let Some(step) = record.plan.steps.get(i) else {
            return Ok(StepEnd::refused(
                StepState::Rejected,
                "unknown_step",
                "rejected",
            ));
        };
        let Ok(idx) = u16::try_from(i) else {
            return Ok(StepEnd::refused(
                StepState::Rejected,
                "unknown_step",
                "rejected",
            ));
        };
        let plan_id = record.plan_id;
        // The effect comes from the catalog, never from the plan.
        let Some((spec, _schema)) = self.inner.catalog.action(&step.agent, &step.action) else {
            return Ok(StepEnd::refused(
                StepState::Rejected,
                "unknown_action",
                "rejected",
            ));
        };
        if spec.effect == Effect::Change && binding == ApprovalBinding::ReadOnlyPolicy {
            return Ok(StepEnd::refused(
                StepState::Rejected,
                "approval_missing",
                "rejected",
            ));
        }
        if self.is_quarantined(&step.agent)? {
            return Ok(StepEnd::refused(
                StepState::Rejected,
                "agent_quarantined",
                "rejected",
            ));
        }

        // 1. The intent, durable in the store and in the audit stream before anything runs.
        let jti = fresh_nonce()?;
        let jti_hex = hex::encode(jti);
        tracing::debug!(plan = %plan_id, step = idx, "recording the intent");
        let begin = *start;
        if !self.store(|s| s.step_intent(plan_id, idx, &jti_hex, begin, self.now()))? {
            return Err(ExecError::NotRunnable {
                plan: plan_id,
                state: "already started",
            });
        }
        *start = false;
        let intent = AuditEvent::StepIntent {
            plan_id,
            step: StepDigest {
                step: idx,
                agent: step.agent.clone(),
                action: step.action.clone(),
                args_sha256: protocol::args::args_digest(&step.params),
                args: step.params.clone(),
            },
            jti: jti_hex.clone(),
        };
        if self.audit(record, intent).await.is_err() {
            return Ok(StepEnd::refused(
                StepState::Failed,
                "audit_unavailable",
                "failed",
            ));
        }
        tracing::debug!(plan = %plan_id, step = idx, "intent durable");
        if self.inner.fault == Some(Fault::AbortAfterIntent) {
            tracing::error!("test hook: aborting after the intent");
            std::process::abort();
        }

        // 2. The token, unless the agent was quarantined meanwhile.
        if self.is_quarantined(&step.agent)? {
            return Ok(StepEnd::refused(
                StepState::Rejected,
                "agent_quarantined",
                "rejected",
            ));
        }
        let minted = self.inner.minter.mint(
            &MintRequest {
                audience: &step.agent,
                subject: &record.requested_by,
                action: &step.action,
                args: &step.params,
                plan_id,
                step: idx,
                approval: binding,
                ttl_secs: TOKEN_TTL_SECS,
            },
            self.now().as_secs(),
            jti,
        )?;
        let issued = AuditEvent::TokenIssued {
            plan_id,
            step: idx,
            agent: step.agent.clone(),
            action: step.action.clone(),
            kid: minted.claims.kid,
            jti: jti_hex,
            exp: minted.claims.exp,
        };
        // `token_issued` is queued on the connection ahead of the request (so the stream holds
        // it before anything the agent emits); its acknowledgement is awaited after the request
        // is on its way. The intent, durable above, already names the token's jti: a lost
        // `token_issued` costs a duplicate record, never an unaudited action.
        let token_ack = match publish_audit(
            &self.inner.js,
            record.correlation_id,
            issued,
            self.now(),
        )
        .await
        {
            Ok(ack) => ack,
            Err(e) => {
                tracing::error!(plan = %plan_id, step = idx, error = %e, "token_issued not published; the request is not sent");
                return Ok(StepEnd::refused(
                    StepState::Failed,
                    "audit_unavailable",
                    "failed",
                ));
            }
        };

        // 3. The request, with `dispatched` recorded while it travels.
        tracing::debug!(plan = %plan_id, step = idx, "dispatching");
        let request = Envelope::new(
            MessageId::random(),
            record.correlation_id,
            Principal::orchestrator(),
            self.now(),
            AgentRequest::Invoke(Invocation {
                plan_id,
                step: idx,
                action: step.action.clone(),
                args: step.params.clone(),
                token: minted.text(),
            }),
        );
        let payload = match request.encode() {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(plan = %plan_id, step = idx, error = %e, "request does not encode");
                return Ok(StepEnd::refused(
                    StepState::Failed,
                    "request_unencodable",
                    "failed",
                ));
            }
        };
        let timeout = Duration::from_millis(u64::from(spec.timeout_ms)) + REPLY_MARGIN;
        let request = self.inner.client.send_request(
            Subject::command(&step.agent).to_string(),
            async_nats::Request::new()
                .payload(payload.into())
                .timeout(Some(timeout)),
        );
        let dispatched = async {
            self.store(|s| {
                s.set_step(
                    plan_id,
                    idx,
                    StepState::Dispatched,
                    StepUpdate::default(),
                    self.now(),
                )
            })
        };
        // The request is polled first: it leaves before the state write's fsync.
        let (reply, dispatched) = tokio::join!(request, dispatched);
        if let Err(e) = dispatched {
            // The intent row already makes a restart report this step as in doubt.
            tracing::error!(plan = %plan_id, step = idx, error = %e, "dispatch not recorded");
        }
        if let Err(e) = token_ack.await {
            tracing::error!(plan = %plan_id, step = idx, error = %e, "token_issued not acknowledged by the audit stream");
        }
        if self.inner.fault == Some(Fault::AbortAfterDispatch) {
            tracing::error!("test hook: aborting after the agent answered");
            std::process::abort();
        }
        Ok(interpret(reply, &step.agent, record))
    }

    /// What a restart does with unfinished plans: steps in doubt become `unknown` (never run
    /// again) and their plans finish as `outcome_unknown`; approved plans past their time
    /// expire; plans still within their time are returned to be resumed.
    pub async fn recover(&self) -> Result<Vec<Recovered>, ExecError> {
        let now = self.now();
        let mut out = Vec::new();
        for record in self.store(|s| s.unfinished())? {
            let plan_id = record.plan_id;
            let deadline = match &record.approval {
                Some(a) => a.expires_at,
                None => UnixMillis(record.created_at.0 + self.inner.approval_ttl_ms),
            };
            match record.state {
                PlanState::Approved if now < deadline => out.push(Recovered::Resume(plan_id)),
                PlanState::Approved => {
                    if self.store(|s| s.expire(plan_id, PlanState::Approved, now))?
                        && let Some(a) = &record.approval
                    {
                        let _ = self
                            .audit(
                                &record,
                                AuditEvent::ApprovalExpired {
                                    approval_id: a.id,
                                    plan_id,
                                },
                            )
                            .await;
                    }
                    if let Some(r) = self.store(|s| s.plan(plan_id))? {
                        out.push(Recovered::Expired(r));
                    }
                }
                PlanState::Executing => {
                    let in_doubt: Vec<u16> = record
                        .steps
                        .iter()
                        .filter(|s| matches!(s.state, StepState::Intent | StepState::Dispatched))
                        .map(|s| s.index)
                        .collect();
                    let pending = record.steps.iter().any(|s| s.state == StepState::Pending);
                    if in_doubt.is_empty() && pending && now < deadline {
                        out.push(Recovered::Resume(plan_id));
                        continue;
                    }
                    for idx in in_doubt {
                        tracing::warn!(plan = %plan_id, step = idx, "step outcome unknown after a restart; it is not run again");
                        self.end_step(
                            &record,
                            idx,
                            StepEnd::refused(
                                StepState::Unknown,
                                "orchestrator_restarted",
                                "unknown",
                            ),
                        )
                        .await?;
                    }
                    for s in record
                        .steps
                        .iter()
                        .filter(|s| s.state == StepState::Pending)
                    {
                        let code = ErrorCode::from_static("not_run_after_restart");
                        self.store(|st| {
                            st.set_step(
                                plan_id,
                                s.index,
                                StepState::Skipped,
                                StepUpdate {
                                    code: Some(&code),
                                    ..StepUpdate::default()
                                },
                                now,
                            )
                        })?;
                    }
                    out.push(Recovered::Finished(self.finish(plan_id).await?));
                }
                _ => {}
            }
        }
        Ok(out)
    }
}

fn interpret(
    reply: Result<async_nats::Message, async_nats::RequestError>,
    agent: &AgentName,
    record: &PlanRecord,
) -> StepEnd {
    use async_nats::RequestErrorKind;
    let message = match reply {
        Ok(m) => m,
        Err(e) => {
            return match e.kind() {
                // Nobody listens on the subject: nothing was delivered, nothing ran.
                RequestErrorKind::NoResponders => {
                    StepEnd::refused(StepState::Failed, "agent_unavailable", "failed")
                }
                // It may have run.
                RequestErrorKind::TimedOut => {
                    StepEnd::refused(StepState::Unknown, "agent_timeout", "timeout")
                }
                // Refused by the client before anything was sent.
                RequestErrorKind::InvalidSubject | RequestErrorKind::MaxPayloadExceeded => {
                    tracing::warn!(error = %e, "request not sent");
                    StepEnd::refused(StepState::Failed, "request_not_sent", "failed")
                }
                RequestErrorKind::Other => {
                    tracing::warn!(error = %e, "request failed");
                    StepEnd::refused(StepState::Unknown, "request_failed", "unknown")
                }
            };
        }
    };
    let envelope = match Envelope::<AgentReply>::decode(&message.payload) {
        Ok(e) => e,
        Err(e) => {
            tracing::warn!(%agent, code = e.code(), error = %e, "agent reply does not decode");
            return StepEnd::refused(StepState::Unknown, "bad_reply", "unknown");
        }
    };
    if envelope.sender != Principal::from(agent) || envelope.correlation_id != record.correlation_id
    {
        tracing::warn!(%agent, sender = %envelope.sender, "reply from an unexpected sender or for another request");
        return StepEnd::refused(StepState::Unknown, "bad_reply", "unknown");
    }
    match envelope.body {
        AgentReply::Done(o) => StepEnd {
            state: StepState::Done,
            code: None,
            summary: Some(o.summary.clone()),
            output: Some(o),
            audit_outcome: "done",
        },
        AgentReply::Rejected(r) => StepEnd {
            state: StepState::Rejected,
            code: Some(r.code),
            summary: Some(r.message),
            output: None,
            audit_outcome: "rejected",
        },
        AgentReply::Failed(r) => StepEnd {
            state: StepState::Failed,
            code: Some(r.code),
            summary: Some(r.message),
            output: None,
            audit_outcome: "failed",
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fault_hook_parses_only_its_two_values() {
        assert_eq!(
            Fault::parse("abort_after_intent"),
            Some(Fault::AbortAfterIntent)
        );
        assert_eq!(
            Fault::parse("abort_after_dispatch"),
            Some(Fault::AbortAfterDispatch)
        );
        assert_eq!(Fault::parse(""), None);
        assert_eq!(Fault::parse("ABORT_AFTER_INTENT"), None);
    }
}
