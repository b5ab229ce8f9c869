//! Ingest: the `AUDIT` stream into the log.
//!
//! [`bind`] looks up the existing `audit-writer` durable pull consumer (it never creates one:
//! the audit identity may not). [`run`] pulls batches and, for each message in stream order,
//! turns it into a row with the pure [`classify`], queues it on the [`WriterHandle`], and acks
//! the message only after the group commit holding its row resolved. Many appends are in
//! flight at once, so group commit batches them; in-flight messages are bounded.
//!
//! A message that fails (not JSON, unknown fields, too large, a body rule, a sender that is not
//! the subject's principal, a subject outside `audit.<principal>`) is never dropped: it becomes
//! a `rejected_event` row with event id `js-<stream sequence>` whose payload holds the error
//! code, the subject, the byte length and the SHA-256 of the raw bytes, never the bytes.
//!
//! What this does not do: no retries of its own beyond JetStream redelivery (a failed commit is
//! nak'd and redelivered), no interpretation of event bodies beyond strict decoding.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use async_nats::jetstream::consumer::PullConsumer;
use futures::StreamExt as _;
use protocol::message::AuditEvent;
use protocol::subject::stream;
use protocol::{DecodeError, Envelope, MAX_ENVELOPE_BYTES, Principal, Route, Subject, UnixMillis};
use sha2::{Digest as _, Sha256};
use thiserror::Error;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::error::AuditError;
use crate::store::{Appended, NewEvent};
use crate::writer::WriterHandle;

/// The kind of a row recording a message that could not be accepted.
pub const REJECTED_KIND: &str = "rejected_event";

/// The actor of a rejected row whose subject names no valid principal. It can never be a
/// principal (they start with a lowercase letter).
pub const UNROUTABLE_ACTOR: &str = "!unroutable";

/// Pull errors in a row (about 100 ms apart) after which ingest gives up.
const MAX_CONSECUTIVE_PULL_ERRORS: u32 = 100;

/// Longest subject copied into a rejected row, in bytes.
const MAX_SUBJECT_IN_ROW: usize = 128;

/// Ingest settings.
#[derive(Debug, Clone)]
pub struct IngestConfig {
    /// Messages asked for per pull request.
    pub batch: usize,
    /// Most messages queued or committing and not yet acked.
    pub max_in_flight: usize,
    /// Largest envelope accepted; larger messages become rejected rows.
    pub max_envelope_bytes: usize,
    /// How long one pull request waits on the server.
    pub expires: Duration,
}

impl Default for IngestConfig {
    fn default() -> Self {
        IngestConfig {
            batch: 256,
            max_in_flight: 1024,
            max_envelope_bytes: MAX_ENVELOPE_BYTES,
            expires: Duration::from_secs(5),
        }
    }
}

/// Why a message was not accepted as an event.
#[derive(Debug, Error)]
pub enum Rejection {
    /// The subject is not `audit.<principal>`.
    #[error("subject is not audit.<principal>")]
    WrongSubject,
    /// Strict decoding failed.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// The envelope's sender is not the principal the subject (and so NATS) vouches for.
    #[error("envelope sender {claimed} is not the subject's principal")]
    SenderMismatch {
        /// What the envelope claimed.
        claimed: Principal,
    },
    /// The decoded event broke a storage rule.
    #[error(transparent)]
    Unstorable(AuditError),
    /// The envelope id is already stored with different content.
    #[error("event id already stored at seq {existing_seq} with different content")]
    IdConflict {
        /// The row holding the id.
        existing_seq: u64,
    },
}

impl Rejection {
    /// Stable code (stored in the rejected row).
    pub fn code(&self) -> &'static str {
        match self {
            Rejection::WrongSubject => "wrong_subject",
            Rejection::Decode(e) => e.code(),
            Rejection::SenderMismatch { .. } => "sender_mismatch",
            Rejection::Unstorable(e) => e.code(),
            Rejection::IdConflict { .. } => "event_id_conflict",
        }
    }
}

/// A message turned into a row.
#[derive(Debug)]
pub struct Classified {
    /// The row to append.
    pub event: NewEvent,
    /// Why the message was rejected, if it was (the row is then a `rejected_event`).
    pub rejection: Option<Rejection>,
}

/// Turns one stream message into a row (pure): the event itself, or a `rejected_event` row.
pub fn classify(
    subject: &str,
    payload: &[u8],
    stream_seq: u64,
    now: UnixMillis,
    max_envelope_bytes: usize,
) -> Classified {
    let actor = match Subject::route(subject) {
        Some(Route::Audit(p)) => p,
        _ => {
            return rejected(
                subject,
                payload,
                stream_seq,
                now,
                None,
                Rejection::WrongSubject,
            );
        }
    };
    let envelope = match Envelope::<AuditEvent>::decode_with_limit(payload, max_envelope_bytes) {
        Ok(e) => e,
        Err(e) => return rejected(subject, payload, stream_seq, now, Some(&actor), e.into()),
    };
    if envelope.sender != actor {
        let claimed = envelope.sender.clone();
        return rejected(
            subject,
            payload,
            stream_seq,
            now,
            Some(&actor),
            Rejection::SenderMismatch { claimed },
        );
    }
    let canonical = match serde_json::to_value(&envelope) {
        Ok(v) => protocol::args::canonical_json(&v),
        Err(e) => {
            return rejected(
                subject,
                payload,
                stream_seq,
                now,
                Some(&actor),
                Rejection::Decode(DecodeError::Malformed(e)),
            );
        }
    };
    match NewEvent::new(
        envelope.id.to_string(),
        envelope.sent_at,
        actor.as_str(),
        envelope.body.kind(),
        Some(envelope.correlation_id),
        canonical,
    ) {
        Ok(event) => Classified {
            event,
            rejection: None,
        },
        Err(e) => rejected(
            subject,
            payload,
            stream_seq,
            now,
            Some(&actor),
            Rejection::Unstorable(e),
        ),
    }
}

/// The event id of the rejected row for a stream message.
pub fn rejected_event_id(stream_seq: u64) -> String {
    format!("js-{stream_seq}")
}

/// Builds the `rejected_event` row for a message (pure).
pub fn rejected(
    subject: &str,
    payload: &[u8],
    stream_seq: u64,
    now: UnixMillis,
    actor: Option<&Principal>,
    why: Rejection,
) -> Classified {
    let mut cut = subject.len().min(MAX_SUBJECT_IN_ROW);
    while !subject.is_char_boundary(cut) {
        cut -= 1;
    }
    let mut record = serde_json::Map::new();
    record.insert("v".to_owned(), 1.into());
    record.insert("error".to_owned(), why.code().into());
    record.insert("stream_seq".to_owned(), stream_seq.into());
    record.insert(
        "subject".to_owned(),
        subject.get(..cut).unwrap_or("").into(),
    );
    record.insert("len".to_owned(), payload.len().into());
    record.insert(
        "sha256".to_owned(),
        hex::encode(Sha256::digest(payload)).into(),
    );
    match &why {
        Rejection::SenderMismatch { claimed } => {
            record.insert("claimed_sender".to_owned(), claimed.as_str().into());
        }
        Rejection::IdConflict { existing_seq } => {
            record.insert("existing_seq".to_owned(), (*existing_seq).into());
        }
        Rejection::WrongSubject | Rejection::Decode(_) | Rejection::Unstorable(_) => {}
    }
    let record = serde_json::Value::Object(record);
    // Every field is within the rules by construction: a short `js-<n>` id, a principal or
    // the fixed actor, a fixed kind, and a payload of a few hundred bytes.
    let event = NewEvent::rejected_row(
        rejected_event_id(stream_seq),
        now,
        actor.map_or(UNROUTABLE_ACTOR, Principal::as_str).to_owned(),
        REJECTED_KIND,
        protocol::args::canonical_json(&record),
    );
    Classified {
        event,
        rejection: Some(why),
    }
}

/// Why ingest stopped.
#[derive(Debug, Error)]
pub enum IngestError {
    /// The `AUDIT` stream could not be looked up.
    #[error("cannot look up stream {stream}: {source}")]
    Stream {
        /// The stream.
        stream: &'static str,
        /// The cause.
        #[source]
        source: jetstream::context::GetStreamError,
    },
    /// The `audit-writer` consumer could not be looked up.
    #[error("cannot look up consumer {consumer}: {source}")]
    Consumer {
        /// The consumer.
        consumer: &'static str,
        /// The cause.
        #[source]
        source: async_nats::Error,
    },
    /// Pulling messages could not start.
    #[error("cannot pull from the audit consumer: {0}")]
    Pull(#[source] jetstream::consumer::StreamError),
    /// The message stream ended (connection closed, consumer deleted).
    #[error("the audit consumer's message stream ended")]
    StreamEnded,
    /// The writer stopped.
    #[error(transparent)]
    Writer(#[from] AuditError),
}

impl IngestError {
    /// Stable code.
    pub fn code(&self) -> &'static str {
        match self {
            IngestError::Stream { .. } => "audit_stream_unavailable",
            IngestError::Consumer { .. } => "audit_consumer_unavailable",
            IngestError::Pull(_) => "audit_pull_failed",
            IngestError::StreamEnded => "audit_stream_ended",
            IngestError::Writer(e) => e.code(),
        }
    }
}

/// Binds to the existing `AUDIT` stream's `audit-writer` consumer (stream and consumer info
/// requests only; nothing is created).
pub async fn bind(js: &jetstream::Context) -> Result<PullConsumer, IngestError> {
    let audit = js
        .get_stream(stream::AUDIT)
        .await
        .map_err(|source| IngestError::Stream {
            stream: stream::AUDIT,
            source,
        })?;
    audit
        .get_consumer(stream::AUDIT_WRITER_CONSUMER)
        .await
        .map_err(|source| IngestError::Consumer {
            consumer: stream::AUDIT_WRITER_CONSUMER,
            source,
        })
}

/// Counters for one ingest run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct IngestStats {
    /// Messages received.
    pub received: u64,
    /// Rows written for accepted events.
    pub stored: u64,
    /// Redeliveries of events already stored.
    pub duplicates: u64,
    /// Rejected rows written.
    pub rejected: u64,
    /// Messages acked.
    pub acked: u64,
    /// Messages left for redelivery after a failed commit.
    pub failed: u64,
}

impl IngestStats {
    fn add(&mut self, o: Outcome) {
        match o {
            Outcome::Stored => self.stored += 1,
            Outcome::Duplicate => self.duplicates += 1,
            Outcome::Rejected => self.rejected += 1,
            Outcome::Failed => self.failed += 1,
        }
        if o != Outcome::Failed {
            self.acked += 1;
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Stored,
    Duplicate,
    Rejected,
    Failed,
}

/// Pulls, stores and acks until `shutdown` resolves, then stops pulling, waits for every
/// in-flight message to be committed and acked, and returns. The writer is left running (the
/// caller shuts it down, which writes the final checkpoint).
pub async fn run(
    consumer: PullConsumer,
    writer: WriterHandle,
    config: IngestConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<IngestStats, IngestError> {
    let mut messages = consumer
        .stream()
        .max_messages_per_batch(config.batch.max(1))
        .expires(config.expires)
        .heartbeat(config.expires / 2)
        .messages()
        .await
        .map_err(IngestError::Pull)?;
    let room = Arc::new(Semaphore::new(config.max_in_flight.max(1)));
    let mut tasks: JoinSet<Result<Outcome, AuditError>> = JoinSet::new();
    let mut stats = IngestStats::default();
    let mut failure = None;
    let mut consecutive_errors = 0u32;
    tokio::pin!(shutdown);
    loop {
        let next = tokio::select! {
            biased;
            () = &mut shutdown => break,
            m = messages.next() => m,
        };
        let message = match next {
            None => {
                failure = Some(IngestError::StreamEnded);
                break;
            }
            Some(Err(e)) => {
                // Missed heartbeats and similar are reported here and the stream recovers; a
                // stream that keeps failing (consumer gone) stops ingest so a supervisor can
                // restart the service.
                consecutive_errors += 1;
                tracing::warn!(error = %e, consecutive_errors, "audit pull stream reported an error");
                if consecutive_errors >= MAX_CONSECUTIVE_PULL_ERRORS {
                    failure = Some(IngestError::StreamEnded);
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            Some(Ok(m)) => {
                consecutive_errors = 0;
                m
            }
        };
        stats.received += 1;
        let Ok(permit) = Arc::clone(&room).acquire_owned().await else {
            break;
        };
        let stream_seq = match message.info() {
            Ok(info) => info.stream_sequence,
            Err(e) => {
                // Without an ack subject the message cannot be acked either; it is not one of
                // the consumer's deliveries.
                tracing::warn!(error = %e, subject = %message.subject, "message without JetStream metadata ignored");
                continue;
            }
        };
        let classified = classify(
            message.subject.as_str(),
            &message.payload,
            stream_seq,
            UnixMillis::now(),
            config.max_envelope_bytes,
        );
        if let Some(why) = &classified.rejection {
            tracing::warn!(stream_seq, code = why.code(), subject = %message.subject, "audit message rejected; recording it");
        }
        let was_rejected = classified.rejection.is_some();
        // Queue in stream order; wait for the commit (and ack) concurrently.
        let pending = match writer.enqueue(classified.event).await {
            Ok(p) => p,
            Err(e) => {
                failure = Some(e.into());
                break;
            }
        };
        let writer = writer.clone();
        tasks.spawn(async move {
            let _permit = permit;
            let outcome = settle(&writer, pending, was_rejected, &message, stream_seq).await?;
            if outcome == Outcome::Failed {
                // Ask for a redelivery soon rather than after the whole ack wait.
                if let Err(e) = message
                    .ack_with(jetstream::AckKind::Nak(Some(Duration::from_secs(1))))
                    .await
                {
                    tracing::warn!(stream_seq, error = %e, "cannot nak audit message");
                }
            } else if let Err(e) = message.ack().await {
                // The row is durable; a lost ack only causes a redelivery, stored as a duplicate.
                tracing::warn!(stream_seq, error = %e, "cannot ack audit message");
            }
            Ok(outcome)
        });
        while let Some(done) = tasks.try_join_next() {
            collect(&mut stats, &mut failure, done);
        }
        if failure.is_some() {
            break;
        }
    }
    drop(messages);
    while let Some(done) = tasks.join_next().await {
        collect(&mut stats, &mut failure, done);
    }
    match failure {
        Some(e) => Err(e),
        None => Ok(stats),
    }
}

fn collect(
    stats: &mut IngestStats,
    failure: &mut Option<IngestError>,
    done: Result<Result<Outcome, AuditError>, tokio::task::JoinError>,
) {
    match done {
        Ok(Ok(o)) => stats.add(o),
        Ok(Err(e)) => {
            if failure.is_none() {
                *failure = Some(e.into());
            }
        }
        Err(join) => tracing::error!(error = %join, "audit ingest task failed"),
    }
}

/// Waits for the commit and decides what the message's outcome is. A conflicting event id
/// gets its own rejected row before the message is acked. `Err` means the writer is gone.
async fn settle(
    writer: &WriterHandle,
    pending: crate::writer::PendingAppend,
    was_rejected: bool,
    message: &jetstream::Message,
    stream_seq: u64,
) -> Result<Outcome, AuditError> {
    match pending.committed().await {
        Ok(Appended::New { .. }) if was_rejected => Ok(Outcome::Rejected),
        Ok(Appended::New { .. }) => Ok(Outcome::Stored),
        Ok(Appended::Duplicate { .. }) => Ok(Outcome::Duplicate),
        // `js-<seq>` ids are only ever made here, one per stream message, so a "conflict" on
        // one is the same message redelivered (its receive time differs).
        Ok(Appended::Conflict { .. }) if was_rejected => Ok(Outcome::Duplicate),
        Ok(Appended::Conflict { seq }) => {
            let record = rejected(
                message.subject.as_str(),
                &message.payload,
                stream_seq,
                UnixMillis::now(),
                match Subject::route(message.subject.as_str()) {
                    Some(Route::Audit(p)) => Some(p),
                    _ => None,
                }
                .as_ref(),
                Rejection::IdConflict { existing_seq: seq },
            );
            tracing::warn!(
                stream_seq,
                existing_seq = seq,
                "audit event id reused with different content; recording it"
            );
            match writer.append(record.event).await {
                Ok(_) => Ok(Outcome::Rejected),
                Err(AuditError::WriterClosed) => Err(AuditError::WriterClosed),
                Err(e) => {
                    tracing::error!(stream_seq, code = e.code(), error = %e, "cannot record conflicting audit event");
                    Ok(Outcome::Failed)
                }
            }
        }
        Err(AuditError::WriterClosed) => Err(AuditError::WriterClosed),
        Err(e) => {
            tracing::error!(stream_seq, code = e.code(), error = %e, "audit commit failed; the message will be redelivered");
            Ok(Outcome::Failed)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::{CorrelationId, MessageId};

    fn envelope(sender: &str, event: AuditEvent) -> Vec<u8> {
        Envelope::new(
            MessageId::from_bytes([1; 16]),
            CorrelationId::from_bytes([2; 16]),
            Principal::new(sender).unwrap(),
            UnixMillis(1_700_000_000_000),
            event,
        )
        .encode()
        .unwrap()
    }

    fn started() -> AuditEvent {
        AuditEvent::ServiceStarted {
            version: "1.0.0".to_owned(),
        }
    }

    fn check(subject: &str, payload: &[u8], limit: usize) -> String {
        let c = classify(subject, payload, 42, UnixMillis(5), limit);
        let e = &c.event;
        format!(
            "{} {} {} ts={} corr={:?} rej={:?}\n  {}",
            e.kind(),
            e.actor(),
            e.event_id(),
            e.ts().0,
            e.correlation_id(),
            c.rejection.as_ref().map(Rejection::code),
            String::from_utf8_lossy(e.payload())
        )
    }

    #[test]
    fn messages_become_events_or_rejected_rows() {
        let good = envelope("hue", started());
        let unknown_field =
            String::from_utf8(good.clone())
                .unwrap()
                .replacen("{", "{\"extra\":1,", 1);
        let v2 = String::from_utf8(good.clone())
            .unwrap()
            .replacen("\"v\":1", "\"v\":2", 1);
        let long_text = String::from_utf8(good.clone())
            .unwrap()
            .replacen("1.0.0", &"x".repeat(100), 1)
            .into_bytes();
        let cases: Vec<(&str, Vec<u8>, usize)> = vec![
            ("audit.hue", good.clone(), MAX_ENVELOPE_BYTES),
            ("audit.hue", b"not json".to_vec(), MAX_ENVELOPE_BYTES),
            ("audit.hue", unknown_field.into_bytes(), MAX_ENVELOPE_BYTES),
            ("audit.hue", v2.into_bytes(), MAX_ENVELOPE_BYTES),
            ("audit.hue", good.clone(), 64),
            ("audit.hue", long_text, MAX_ENVELOPE_BYTES),
            ("audit.door", good.clone(), MAX_ENVELOPE_BYTES),
            ("audit.hue.extra", good.clone(), MAX_ENVELOPE_BYTES),
            ("audit.Hue", good, MAX_ENVELOPE_BYTES),
        ];
        let out: Vec<String> = cases.iter().map(|(s, p, l)| check(s, p, *l)).collect();
        expect_test::expect![[r#"
            service_started hue 01010101-0101-0101-0101-010101010101 ts=1700000000000 corr=Some("02020202-0202-0202-0202-020202020202") rej=None
              {"body":{"service_started":{"version":"1.0.0"}},"correlation_id":"02020202-0202-0202-0202-020202020202","id":"01010101-0101-0101-0101-010101010101","sender":"hue","sent_at":1700000000000,"v":1}
            rejected_event hue js-42 ts=5 corr=None rej=Some("malformed_message")
              {"error":"malformed_message","len":8,"sha256":"7ccfa1fbf3940e6f0c0375d87c0f9235a50514e14cb427bdfaf5077987b26ccf","stream_seq":42,"subject":"audit.hue","v":1}
            rejected_event hue js-42 ts=5 corr=None rej=Some("malformed_message")
              {"error":"malformed_message","len":203,"sha256":"afff5b0a365f36db676504840b82a711b8213f03603cb24eaf196af7b626c5c6","stream_seq":42,"subject":"audit.hue","v":1}
            rejected_event hue js-42 ts=5 corr=None rej=Some("unsupported_version")
              {"error":"unsupported_version","len":193,"sha256":"47768bcef3304b073ce743548ecb0bf3d53454864d2ac0b37be47a8c766ab807","stream_seq":42,"subject":"audit.hue","v":1}
            rejected_event hue js-42 ts=5 corr=None rej=Some("payload_too_large")
              {"error":"payload_too_large","len":193,"sha256":"1302e3e870e4e0787430ba69736b980842a0df96f3ec230cc37d5d25be3ac336","stream_seq":42,"subject":"audit.hue","v":1}
            rejected_event hue js-42 ts=5 corr=None rej=Some("invalid_message")
              {"error":"invalid_message","len":288,"sha256":"95adf31b3658356b2c7b69fa1a6e26353d5bbb621a1d7e4d2fb5a0fa7951daba","stream_seq":42,"subject":"audit.hue","v":1}
            rejected_event door js-42 ts=5 corr=None rej=Some("sender_mismatch")
              {"claimed_sender":"hue","error":"sender_mismatch","len":193,"sha256":"1302e3e870e4e0787430ba69736b980842a0df96f3ec230cc37d5d25be3ac336","stream_seq":42,"subject":"audit.door","v":1}
            rejected_event !unroutable js-42 ts=5 corr=None rej=Some("wrong_subject")
              {"error":"wrong_subject","len":193,"sha256":"1302e3e870e4e0787430ba69736b980842a0df96f3ec230cc37d5d25be3ac336","stream_seq":42,"subject":"audit.hue.extra","v":1}
            rejected_event !unroutable js-42 ts=5 corr=None rej=Some("wrong_subject")
              {"error":"wrong_subject","len":193,"sha256":"1302e3e870e4e0787430ba69736b980842a0df96f3ec230cc37d5d25be3ac336","stream_seq":42,"subject":"audit.Hue","v":1}"#]].assert_eq(&out.join("\n"));
    }

    #[test]
    fn accepted_payload_is_the_canonical_envelope() {
        // Key order and whitespace on the wire do not change the stored payload.
        let good = envelope("hue", started());
        let value: serde_json::Value = serde_json::from_slice(&good).unwrap();
        let pretty = serde_json::to_vec_pretty(&value).unwrap();
        let a = classify("audit.hue", &good, 1, UnixMillis(0), MAX_ENVELOPE_BYTES);
        let b = classify("audit.hue", &pretty, 2, UnixMillis(0), MAX_ENVELOPE_BYTES);
        assert!(a.rejection.is_none() && b.rejection.is_none());
        assert_eq!(a.event, b.event);
        assert_eq!(a.event.payload(), protocol::args::canonical_json(&value));
    }

    #[test]
    fn rejected_rows_never_hold_the_raw_bytes() {
        let secret = b"{\"password\":\"hunter2\"}";
        let c = classify("audit.hue", secret, 7, UnixMillis(0), MAX_ENVELOPE_BYTES);
        let payload = String::from_utf8(c.event.payload().to_vec()).unwrap();
        assert!(!payload.contains("hunter2"));
        assert!(payload.contains(&hex::encode(Sha256::digest(secret))));
        // A long hostile subject is cut.
        let subject = format!("audit.{}", "x".repeat(1000));
        let c = classify(&subject, b"", 8, UnixMillis(0), MAX_ENVELOPE_BYTES);
        assert!(c.event.payload().len() < 400);
    }
}
