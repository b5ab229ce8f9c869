//! The imperative shell around the rules: pulls the `AUDIT` stream through the agent's own
//! durable consumer, feeds each event to the [`Engine`], publishes and audits each alert, saves
//! the state, and acknowledges.
//!
//! Per batch (up to `batch` events, or what arrives within a second):
//! 1. each event (skipped if its stream sequence is not above the saved one: a redelivery after
//!    a crash between saving and acknowledging) goes through the engine, with the time the
//!    stream stored it as `now` (server time, not the sender's claim);
//! 2. if it raised alerts, they get fresh ids and are saved as pending *before* they are sent,
//!    then each is audited (`alert_raised`, event id = the alert's id; JetStream acknowledges it)
//!    and published on `alert.<agent>` (the `ALERTS` stream) as `AlertMessage::Raised` with the
//!    same envelope id;
//! 3. at the end of the batch the state (engine, last sequence, recent alerts) is saved and
//!    only then every message of the batch is acknowledged.
//!
//! So a crash loses no alert (an unacknowledged event is redelivered and, being unsaved, looked
//! at again) and doubles none: a saved event is skipped on redelivery, and pending alerts are
//! re-sent with their original ids (the stream's duplicate window and the audit writer's event
//! ids keep one row each). The consumer is bound, never created: the agent may not create one.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::{self, consumer::PullConsumer};
use bytes::Bytes;
use futures::StreamExt as _;
use protocol::message::{AlertMessage, AuditEvent};
use protocol::subject::{Route, stream};
use protocol::{AgentName, CorrelationId, Envelope, MessageId, Principal, Subject, UnixMillis};

use agent_runtime::{AgentError, BackgroundContext};

use crate::Recent;
use crate::rules::{Engine, RulesConfig};
use crate::store::{RecordedAlert, Snapshot, Store};

/// How long one pull waits for events before the batch ends.
const PULL_EXPIRES: Duration = Duration::from_secs(1);
/// Attempts at binding the consumer at start-up.
const BIND_ATTEMPTS: u32 = 5;
/// Pause after a failed pull or bind.
const BACKOFF: Duration = Duration::from_millis(500);

/// What the watcher needs besides the runtime's context.
#[derive(Debug, Clone)]
pub struct WatchSettings {
    /// The rules.
    pub rules: RulesConfig,
    /// Events pulled per batch.
    pub batch: usize,
    /// Alerts kept for `alerts.recent`.
    pub recent_alerts: usize,
}

fn background_error(code: &'static str) -> impl FnOnce(String) -> AgentError {
    move |message| AgentError::new(code, message)
}

/// Runs until shutdown: see the module documentation. An error (the consumer cannot be bound,
/// the state cannot be saved) stops the agent so its supervisor restarts it.
pub async fn run(
    mut ctx: BackgroundContext,
    settings: WatchSettings,
    recent: Arc<Mutex<Recent>>,
) -> Result<(), AgentError> {
    let me = Principal::from(&ctx.name);
    let mut store =
        Store::open(&ctx.data_dir).map_err(|e| AgentError::new(e.code(), e.to_string()))?;
    let mut snapshot = match store.load() {
        Ok(Some(s)) => s,
        Ok(None) => Snapshot::default(),
        Err(e) => {
            tracing::error!(code = e.code(), error = %e, "state unreadable; set aside, starting over");
            store
                .set_aside(UnixMillis::now())
                .map_err(|e| AgentError::new(e.code(), e.to_string()))?;
            Snapshot::default()
        }
    };
    let engine = Engine::new(
        settings.rules.clone(),
        me.clone(),
        catalog::all(),
        std::mem::take(&mut snapshot.engine),
    );
    if let Ok(mut r) = recent.lock() {
        r.replace(snapshot.recent.clone());
    }
    let consumer = bind(&ctx).await?;
    let delivered = consumer.cached_info().delivered.stream_sequence;
    if snapshot.last_sequence > delivered {
        // The saved position belongs to another stream (a fresh installation with an old data
        // directory): start from the consumer's own position.
        tracing::warn!(
            saved = snapshot.last_sequence,
            delivered,
            "saved position is past the consumer's; starting from the consumer's"
        );
        snapshot.last_sequence = consumer.cached_info().ack_floor.stream_sequence;
    }
    let mut watcher = Watcher {
        ctx: ctx.clone(),
        me,
        store,
        engine,
        snapshot,
        recent,
        recent_max: settings.recent_alerts.max(1),
    };
    // Alerts raised before a crash but not confirmed sent go out first, with their ids.
    watcher.send_pending().await?;
    tracing::info!(
        last_sequence = watcher.snapshot.last_sequence,
        "watching the audit stream"
    );
    loop {
        if ctx.shutdown.is_requested() {
            return Ok(());
        }
        let batch = consumer
            .batch()
            .max_messages(settings.batch.max(1))
            .expires(PULL_EXPIRES)
            .messages()
            .await;
        let mut batch = match batch {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(error = %e, "cannot pull audit events");
                tokio::select! {
                    () = ctx.shutdown.requested() => return Ok(()),
                    () = tokio::time::sleep(BACKOFF) => continue,
                }
            }
        };
        let mut processed = Vec::new();
        let mut stopping = false;
        loop {
            tokio::select! {
                biased;
                () = ctx.shutdown.requested() => {
                    stopping = true;
                    break;
                }
                next = batch.next() => match next {
                    None => break,
                    Some(Ok(message)) => {
                        watcher.process(&message).await?;
                        processed.push(message);
                    }
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, "pull interrupted");
                        break;
                    }
                },
            }
        }
        if !processed.is_empty() {
            watcher.save()?;
            for message in &processed {
                if let Err(e) = message.ack().await {
                    // Redelivered later and skipped by its sequence.
                    tracing::warn!(error = %e, "could not acknowledge an audit event");
                }
            }
        }
        watcher.send_pending().await?;
        if stopping {
            return Ok(());
        }
    }
}

/// Binds the provisioned durable consumer (never creates one), retrying briefly.
async fn bind(ctx: &BackgroundContext) -> Result<PullConsumer, AgentError> {
    let js = jetstream::new(ctx.client.clone());
    let mut attempt = 0;
    loop {
        attempt += 1;
        match js
            .get_consumer_from_stream::<jetstream::consumer::pull::Config, _, _>(
                stream::AUDIT_ANOMALY_CONSUMER,
                stream::AUDIT,
            )
            .await
        {
            Ok(c) => return Ok(c),
            Err(e) if attempt < BIND_ATTEMPTS => {
                tracing::warn!(attempt, error = %e, "cannot bind the audit consumer yet");
                tokio::time::sleep(BACKOFF).await;
            }
            Err(e) => {
                return Err(AgentError::new(
                    "anomaly_consumer_unavailable",
                    format!(
                        "cannot bind consumer {} on {}: {e}",
                        stream::AUDIT_ANOMALY_CONSUMER,
                        stream::AUDIT
                    ),
                ));
            }
        }
    }
}

struct Watcher {
    ctx: BackgroundContext,
    me: Principal,
    store: Store,
    engine: Engine,
    snapshot: Snapshot,
    recent: Arc<Mutex<Recent>>,
    recent_max: usize,
}

impl Watcher {
    fn save(&mut self) -> Result<(), AgentError> {
        self.snapshot.engine = self.engine.state().clone();
        self.store
            .save(&self.snapshot)
            .map_err(|e| AgentError::new(e.code(), e.to_string()))
    }

    /// One audit event: the rules, and if they raised, the alerts saved as pending and sent.
    async fn process(&mut self, message: &jetstream::Message) -> Result<(), AgentError> {
        let info = message
            .info()
            .map_err(|e| e.to_string())
            .map_err(background_error("anomaly_message_info"))?;
        let sequence = info.stream_sequence;
        if sequence <= self.snapshot.last_sequence {
            return Ok(());
        }
        let nanos = info.published.unix_timestamp_nanos();
        let now = UnixMillis(i64::try_from(nanos / 1_000_000).unwrap_or(i64::MAX));
        let (alerts, correlation_id) = match Subject::route(message.subject.as_str()) {
            Some(Route::Audit(principal)) => match Envelope::<AuditEvent>::decode(&message.payload)
            {
                Ok(event) => (
                    self.engine.observe(&event, &principal, now),
                    Some(event.correlation_id),
                ),
                Err(e) => (
                    self.engine.observe_invalid(
                        Some(&principal),
                        &format!("does not decode ({})", e.code()),
                        now,
                    ),
                    None,
                ),
            },
            _ => (
                self.engine.observe_invalid(
                    None,
                    "arrived on a subject that names no principal",
                    now,
                ),
                None,
            ),
        };
        self.snapshot.last_sequence = sequence;
        if alerts.is_empty() {
            return Ok(());
        }
        let correlation_id = correlation_id.unwrap_or_else(CorrelationId::random);
        for alert in alerts {
            tracing::info!(
                rule = alert.rule.as_str(),
                subject = alert.subject.as_ref().map(Principal::as_str),
                summary = %alert.summary,
                "alert raised"
            );
            self.snapshot.pending.push(RecordedAlert {
                id: MessageId::random(),
                correlation_id,
                raised_at: now,
                alert,
            });
        }
        // Saved before anything is sent: a crash from here on re-sends with the same ids.
        self.save()?;
        self.send_pending().await
    }

    /// Audits and publishes every pending alert; those that could not be sent stay pending
    /// (and saved) for the next batch.
    async fn send_pending(&mut self) -> Result<(), AgentError> {
        if self.snapshot.pending.is_empty() {
            return Ok(());
        }
        let pending = std::mem::take(&mut self.snapshot.pending);
        let mut left = Vec::new();
        for recorded in pending {
            match send(&self.ctx, &self.me, &recorded).await {
                Ok(()) => {
                    self.snapshot.recent.push_back(recorded);
                    while self.snapshot.recent.len() > self.recent_max {
                        self.snapshot.recent.pop_front();
                    }
                }
                Err(reason) => {
                    tracing::warn!(id = %recorded.id, %reason, "alert not sent yet; will retry");
                    left.push(recorded);
                }
            }
        }
        self.snapshot.pending = left;
        if let Ok(mut r) = self.recent.lock() {
            r.replace(self.snapshot.recent.clone());
        }
        self.save()
    }
}

/// Audits one alert (`alert_raised`, acknowledged by JetStream), then publishes it on
/// `alert.<agent>` (the `ALERTS` stream, acknowledged) with the same id.
async fn send(
    ctx: &BackgroundContext,
    me: &Principal,
    recorded: &RecordedAlert,
) -> Result<(), String> {
    let audit = Envelope::new(
        recorded.id,
        recorded.correlation_id,
        me.clone(),
        UnixMillis::now(),
        AuditEvent::AlertRaised {
            alert: recorded.alert.clone(),
        },
    );
    ctx.audit
        .emit_envelope(&audit)
        .await
        .map_err(|e| format!("{}: {e}", e.code()))?;
    let message = Envelope::new(
        recorded.id,
        recorded.correlation_id,
        me.clone(),
        UnixMillis::now(),
        AlertMessage::Raised(recorded.alert.clone()),
    );
    let bytes = message.encode().map_err(|e| e.to_string())?;
    let subject = alert_subject(&ctx.name);
    // Into the ALERTS stream, de-duplicated by the alert's id (a retry after a lost ack is
    // stored once), acknowledged before the alert counts as sent.
    let publish = async_nats::jetstream::message::PublishMessage::build()
        .payload(Bytes::from(bytes))
        .message_id(recorded.id.to_string());
    async_nats::jetstream::new(ctx.client.clone())
        .send_publish(subject, publish)
        .await
        .map_err(|e| e.to_string())?
        .await
        .map(|_ack| ())
        .map_err(|e| e.to_string())
}

fn alert_subject(name: &AgentName) -> String {
    String::from(Subject::alert(name))
}
