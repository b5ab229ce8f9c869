//! Publishing to the chat: `chat.out.<channel>` and `plan.proposed.<channel>` on the
//! JetStream `CHAT_OUT` stream, each publish acknowledged by the stream before it counts.
//!
//! Every message carries a `Nats-Msg-Id`: callers that may repeat a publish (a redelivered
//! chat message, a retry) pass a deterministic id, so JetStream's duplicate window keeps the
//! user from seeing it twice; a timed-out publish is retried with the same id.

use std::time::Duration;

use async_nats::jetstream;
use async_nats::jetstream::context::PublishErrorKind;
use protocol::message::{ChatOut, PlanMessage};
use protocol::{Body, CorrelationId, Envelope, MessageId, Principal, Subject, UnixMillis};
use thiserror::Error;

/// Publish attempts per message.
const ATTEMPTS: u32 = 3;

/// Why a chat message could not be published.
#[derive(Debug, Error)]
pub enum OutboxError {
    /// The message breaks a body rule or is too large.
    #[error("cannot encode chat message: {0}")]
    Encode(#[from] protocol::EncodeError),
    /// JetStream did not acknowledge it.
    #[error("chat message was not acknowledged: {0}")]
    Publish(#[source] async_nats::jetstream::context::PublishError),
}

impl OutboxError {
    /// Stable code.
    pub fn code(&self) -> &'static str {
        match self {
            OutboxError::Encode(e) => e.code(),
            OutboxError::Publish(_) => "chat_publish_failed",
        }
    }
}

/// Publishes chat output as the orchestrator.
#[derive(Debug, Clone)]
pub struct Outbox {
    js: jetstream::Context,
}

impl Outbox {
    /// An outbox over a JetStream context of the orchestrator's connection.
    pub fn new(js: jetstream::Context) -> Self {
        Outbox { js }
    }

    /// Sends a chat message (`chat.out.<channel>`). `dedup` is the `Nats-Msg-Id`; without one,
    /// the envelope id is used.
    pub async fn send(
        &self,
        correlation: CorrelationId,
        out: ChatOut,
        dedup: Option<String>,
    ) -> Result<MessageId, OutboxError> {
        let (ChatOut::Post(m) | ChatOut::Update(m)) = &out;
        let subject = Subject::chat_out(&m.chat.channel);
        self.publish(subject, correlation, out, dedup).await
    }

    /// Queues a chat message on the connection and returns its pending acknowledgement (no
    /// retry): anything published afterwards reaches the stream after it.
    pub async fn queue(
        &self,
        correlation: CorrelationId,
        out: ChatOut,
        dedup: String,
    ) -> Result<jetstream::context::PublishAckFuture, OutboxError> {
        let (ChatOut::Post(m) | ChatOut::Update(m)) = &out;
        let subject = Subject::chat_out(&m.chat.channel);
        let envelope = Envelope::new(
            MessageId::random(),
            correlation,
            Principal::orchestrator(),
            UnixMillis::now(),
            out,
        );
        let publish = jetstream::message::PublishMessage::build()
            .payload(bytes::Bytes::from(envelope.encode()?))
            .message_id(&dedup);
        self.js
            .send_publish(subject.as_str().to_owned(), publish)
            .await
            .map_err(OutboxError::Publish)
    }

    /// Sends an approval card (`plan.proposed.<channel>`).
    pub async fn propose(
        &self,
        correlation: CorrelationId,
        message: PlanMessage,
        dedup: Option<String>,
    ) -> Result<MessageId, OutboxError> {
        let PlanMessage::Proposed(p) = &message;
        let subject = Subject::plan_proposed(&p.chat.channel);
        self.publish(subject, correlation, message, dedup).await
    }

    async fn publish<B: Body>(
        &self,
        subject: Subject,
        correlation: CorrelationId,
        body: B,
        dedup: Option<String>,
    ) -> Result<MessageId, OutboxError> {
        let envelope = Envelope::new(
            MessageId::random(),
            correlation,
            Principal::orchestrator(),
            UnixMillis::now(),
            body,
        );
        let payload = bytes::Bytes::from(envelope.encode()?);
        let id = dedup.unwrap_or_else(|| envelope.id.to_string());
        let mut attempt = 0;
        loop {
            attempt += 1;
            let publish = jetstream::message::PublishMessage::build()
                .payload(payload.clone())
                .message_id(&id);
            let result = match self
                .js
                .send_publish(subject.as_str().to_owned(), publish)
                .await
            {
                Ok(ack) => ack.await.map(|_ack| ()),
                Err(e) => Err(e),
            };
            match result {
                Ok(()) => return Ok(envelope.id),
                Err(e)
                    if attempt < ATTEMPTS
                        && matches!(
                            e.kind(),
                            PublishErrorKind::TimedOut | PublishErrorKind::BrokenPipe
                        ) =>
                {
                    tracing::warn!(%subject, attempt, error = %e, "chat publish not acknowledged; retrying with the same id");
                    tokio::time::sleep(Duration::from_millis(200) * attempt).await;
                }
                Err(e) => return Err(OutboxError::Publish(e)),
            }
        }
    }
}
