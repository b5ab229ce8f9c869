//! Audit events for refusals: a bounded queue in front of one task that publishes them with
//! [`audit::emit::AuditEmitter`] as principal `egress` (NATS lets it publish only
//! `audit.egress`).
//!
//! Reporting never blocks or fails a connection: a refusal is answered first and reported
//! after, and when NATS is unreachable (or the queue is full because it has been for a while)
//! the proxy still refuses and logs the event it could not deliver. Fail closed, never open.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use audit::emit::AuditEmitter;
use protocol::CorrelationId;
use protocol::message::AuditEvent;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

/// Events waiting for publication at most; more are dropped (and logged).
pub const QUEUE_CAPACITY: usize = 1024;

/// A handle that queues refusal events; cheap to clone.
#[derive(Debug, Clone)]
pub struct Reporter {
    tx: mpsc::Sender<(CorrelationId, AuditEvent)>,
    dropped: Arc<AtomicU64>,
}

/// The publishing task.
#[derive(Debug)]
pub struct ReporterTask {
    close: oneshot::Sender<()>,
    handle: JoinHandle<()>,
    dropped: Arc<AtomicU64>,
}

/// How one event fared, for the task's log.
async fn publish(emitter: &AuditEmitter, correlation: CorrelationId, event: AuditEvent) {
    let kind = event.kind();
    match emitter.emit(correlation, event).await {
        Ok(id) => tracing::debug!(%id, %correlation, kind, "audit event published"),
        Err(e) => tracing::error!(
            %correlation,
            kind,
            code = e.code(),
            error = %e,
            "audit event not delivered; the refusal stands"
        ),
    }
}

impl Reporter {
    /// Starts the publishing task.
    pub fn start(emitter: AuditEmitter) -> (Reporter, ReporterTask) {
        let (tx, mut rx) = mpsc::channel::<(CorrelationId, AuditEvent)>(QUEUE_CAPACITY);
        let (close, mut closing) = oneshot::channel::<()>();
        let handle = tokio::spawn(async move {
            loop {
                tokio::select! {
                    next = rx.recv() => match next {
                        Some((correlation, event)) => publish(&emitter, correlation, event).await,
                        None => return,
                    },
                    _ = &mut closing => break,
                }
            }
            // Closing: take nothing new, deliver what is queued.
            rx.close();
            while let Some((correlation, event)) = rx.recv().await {
                publish(&emitter, correlation, event).await;
            }
        });
        let dropped = Arc::new(AtomicU64::new(0));
        (
            Reporter {
                tx,
                dropped: dropped.clone(),
            },
            ReporterTask {
                close,
                handle,
                dropped,
            },
        )
    }

    /// Queues an event; never waits. A full or closed queue drops it with a log line.
    pub fn report(&self, correlation: CorrelationId, event: AuditEvent) {
        if let Err(e) = self.tx.try_send((correlation, event)) {
            let total = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            let reason = match e {
                mpsc::error::TrySendError::Full(_) => "the queue is full",
                mpsc::error::TrySendError::Closed(_) => "reporting has stopped",
            };
            tracing::error!(%correlation, reason, dropped_total = total, "audit event dropped; the refusal stands");
        }
    }
}

impl ReporterTask {
    /// Stops taking events, publishes those queued for at most `grace`, then gives up on the
    /// rest (they are logged as lost).
    pub async fn finish(self, grace: Duration) {
        let _already_stopped = self.close.send(());
        let mut handle = self.handle;
        match tokio::time::timeout(grace, &mut handle).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "the audit reporting task failed"),
            Err(_elapsed) => {
                handle.abort();
                tracing::error!(?grace, "queued audit events not delivered before shutdown");
            }
        }
        let dropped = self.dropped.load(Ordering::Relaxed);
        if dropped > 0 {
            tracing::warn!(dropped, "audit events were dropped while running");
        }
    }
}
