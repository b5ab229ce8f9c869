//! How every service and agent publishes an audit event: [`AuditEmitter`].
//!
//! An event travels in a [`protocol::Envelope`] (sender = the emitter's principal, a fresh
//! message id, now) to `audit.<principal>` on the `AUDIT` stream, with `Nats-Msg-Id` set to the
//! envelope id. `emit` returns only after JetStream acknowledged the publish, so a caller that
//! must not act before its audit row exists (write-ahead intent) can wait on it. A timed-out
//! publish is retried a bounded number of times with the SAME id: the stream's duplicate window
//! and the writer's event-id check make the retry idempotent.
//!
//! What this does not do: it does not wait for the audit writer's commit (the stream is the
//! durable hand-off), and it cannot publish for another principal (NATS permissions bind
//! `audit.<principal>` to the connection's identity).

use std::time::Duration;

use async_nats::jetstream;
use async_nats::jetstream::context::{PublishError, PublishErrorKind};
use protocol::message::AuditEvent;
use protocol::{CorrelationId, EncodeError, Envelope, MessageId, Principal, Subject, UnixMillis};
use thiserror::Error;

/// Publish attempts per event (the first try and its retries).
pub const DEFAULT_ATTEMPTS: u32 = 3;

/// Why an event could not be emitted.
#[derive(Debug, Error)]
pub enum EmitError {
    /// The envelope could not be encoded (a body rule, or over the size limit).
    #[error("cannot encode audit event: {0}")]
    Encode(#[from] EncodeError),
    /// JetStream did not acknowledge the publish.
    #[error("audit event {id} was not acknowledged after {attempts} attempt(s): {source}")]
    Publish {
        /// The envelope id (the same on every attempt).
        id: MessageId,
        /// Attempts made.
        attempts: u32,
        /// The last failure.
        #[source]
        source: PublishError,
    },
}

impl EmitError {
    /// Stable code.
    pub fn code(&self) -> &'static str {
        match self {
            EmitError::Encode(e) => e.code(),
            EmitError::Publish { source, .. } => match source.kind() {
                PublishErrorKind::TimedOut => "audit_publish_timeout",
                PublishErrorKind::StreamNotFound => "audit_stream_missing",
                PublishErrorKind::MaxPayloadExceeded => "payload_too_large",
                _ => "audit_publish_failed",
            },
        }
    }
}

/// Whether a failed publish may be retried with the same id.
fn retryable(kind: &PublishErrorKind) -> bool {
    matches!(
        kind,
        PublishErrorKind::TimedOut | PublishErrorKind::BrokenPipe | PublishErrorKind::MaxAckPending
    )
}

/// Publishes audit events as one principal.
#[derive(Debug, Clone)]
pub struct AuditEmitter {
    js: jetstream::Context,
    principal: Principal,
    subject: Subject,
    attempts: u32,
    backoff: Duration,
}

impl AuditEmitter {
    /// An emitter for `principal` (which must be the identity the connection authenticated
    /// as; otherwise the server refuses the publish).
    pub fn new(js: jetstream::Context, principal: Principal) -> Self {
        let subject = Subject::audit(&principal);
        AuditEmitter {
            js,
            principal,
            subject,
            attempts: DEFAULT_ATTEMPTS,
            backoff: Duration::from_millis(200),
        }
    }

    /// Sets the number of attempts (at least 1).
    pub fn with_attempts(mut self, attempts: u32) -> Self {
        self.attempts = attempts.max(1);
        self
    }

    /// The principal events are sent as.
    pub fn principal(&self) -> &Principal {
        &self.principal
    }

    /// Emits one event and waits for the stream's acknowledgement. Returns the envelope id,
    /// which is the event id in the audit log.
    pub async fn emit(
        &self,
        correlation_id: CorrelationId,
        event: AuditEvent,
    ) -> Result<MessageId, EmitError> {
        let envelope = Envelope::new(
            MessageId::random(),
            correlation_id,
            self.principal.clone(),
            UnixMillis::now(),
            event,
        );
        self.emit_envelope(&envelope).await
    }

    /// Queues one event on the connection and returns at once; [`PendingEvent::acknowledged`]
    /// waits for the stream's acknowledgement (retrying with the same id like `emit`). For
    /// records that must be ordered before what follows on this connection but need not be
    /// durable before the caller goes on (an agent's `command_received`, say).
    pub async fn send(&self, correlation_id: CorrelationId, event: AuditEvent) -> PendingEvent {
        let envelope = Envelope::new(
            MessageId::random(),
            correlation_id,
            self.principal.clone(),
            UnixMillis::now(),
            event,
        );
        let first = match envelope.encode() {
            Ok(payload) => {
                let publish = jetstream::message::PublishMessage::build()
                    .payload(bytes::Bytes::from(payload))
                    .message_id(envelope.id.to_string());
                self.js
                    .send_publish(self.subject.as_str().to_owned(), publish)
                    .await
                    .ok()
            }
            Err(_unencodable) => None,
        };
        PendingEvent {
            emitter: self.clone(),
            envelope,
            first,
        }
    }

    /// Publishes a prepared envelope (its id is the `Nats-Msg-Id`); `emit` in two steps, for
    /// callers that need the id before publishing.
    pub async fn emit_envelope(
        &self,
        envelope: &Envelope<AuditEvent>,
    ) -> Result<MessageId, EmitError> {
        let payload = bytes::Bytes::from(envelope.encode()?);
        let id = envelope.id;
        let id_text = id.to_string();
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let publish = jetstream::message::PublishMessage::build()
                .payload(payload.clone())
                .message_id(&id_text);
            let result = match self
                .js
                .send_publish(self.subject.as_str().to_owned(), publish)
                .await
            {
                Ok(ack) => ack.await.map(|_ack| ()),
                Err(e) => Err(e),
            };
            match result {
                Ok(()) => return Ok(id),
                Err(source) if attempt < self.attempts && retryable(&source.kind()) => {
                    tracing::warn!(%id, attempt, error = %source, "audit publish not acknowledged; retrying with the same id");
                    tokio::time::sleep(self.backoff * attempt).await;
                }
                Err(source) => {
                    return Err(EmitError::Publish {
                        id,
                        attempts: attempt,
                        source,
                    });
                }
            }
        }
    }
}

/// An event [`AuditEmitter::send`] queued, awaiting its acknowledgement.
#[derive(Debug)]
pub struct PendingEvent {
    emitter: AuditEmitter,
    envelope: Envelope<AuditEvent>,
    first: Option<jetstream::context::PublishAckFuture>,
}

impl PendingEvent {
    /// The event's id (its id in the audit log).
    pub fn id(&self) -> MessageId {
        self.envelope.id
    }

    /// Waits for the stream's acknowledgement; a first publish that failed or was not
    /// acknowledged is retried with the same id (the stream deduplicates).
    pub async fn acknowledged(self) -> Result<MessageId, EmitError> {
        if let Some(ack) = self.first
            && ack.await.is_ok()
        {
            return Ok(self.envelope.id);
        }
        self.emitter.emit_envelope(&self.envelope).await
    }
}
