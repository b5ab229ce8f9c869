//! Group commit: one owner thread holds the [`AuditLog`]; [`WriterHandle`]s (cheap clones)
//! send it appends over a bounded queue.
//!
//! The thread takes one request, drains whatever else is already queued (up to
//! [`WriterConfig::max_batch`]) without waiting, commits them in one transaction (one fsync),
//! and only then answers every waiter. So [`WriterHandle::append`] resolves only after its row
//! is durable, and many concurrent appends cost one fsync between them.
//!
//! After a commit the thread writes a signed checkpoint when [`checkpoint_due`] says so (every
//! N new rows, or T seconds after the first unchecked row), and appends it to the witness
//! file. [`WriterHandle::shutdown`] drains the queue, writes a final checkpoint and closes the
//! database.
//!
//! What this does not do: it does not decode messages or talk to NATS ([`crate::ingest`] does),
//! and it never rewrites or deletes a row.

use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use protocol::UnixMillis;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};

use crate::checkpoint::CheckpointSigner;
use crate::error::AuditError;
use crate::store::{Appended, AuditLog, Head, NewEvent, StoredCheckpoint};
use crate::witness::Witness;

/// Writer settings.
#[derive(Debug, Clone)]
pub struct WriterConfig {
    /// Most appends committed in one transaction.
    pub max_batch: usize,
    /// Most appends queued or being committed; `append` waits for room beyond that.
    pub queue_capacity: usize,
    /// Write a checkpoint once this many rows were added since the last one.
    pub checkpoint_every: u64,
    /// ... or once this long has passed since the first row after the last one.
    pub checkpoint_interval: Duration,
    /// The checkpoint signing key.
    pub signer: CheckpointSigner,
}

impl WriterConfig {
    /// Defaults: batches of up to 512, a queue of 4096, a checkpoint every 100 rows or 60 s.
    pub fn new(signer: CheckpointSigner) -> Self {
        WriterConfig {
            max_batch: 512,
            queue_capacity: 4096,
            checkpoint_every: 100,
            checkpoint_interval: Duration::from_secs(60),
            signer,
        }
    }
}

/// Whether a checkpoint is due: there are unchecked rows, and either there are at least
/// `every` of them or the oldest has waited at least `interval`. Pure.
pub fn checkpoint_due(
    unchecked_rows: u64,
    waited: Duration,
    every: u64,
    interval: Duration,
) -> bool {
    unchecked_rows > 0 && (unchecked_rows >= every || waited >= interval)
}

/// What the writer did, reported at shutdown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WriterStats {
    /// Transactions committed for appends.
    pub commits: u64,
    /// New rows written.
    pub rows: u64,
    /// Appends answered as duplicates or conflicts.
    pub duplicates: u64,
    /// Checkpoints written.
    pub checkpoints: u64,
    /// The largest batch committed.
    pub largest_batch: usize,
}

/// The final state after a clean shutdown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Closed {
    /// The head when the database was closed.
    pub head: Head,
    /// The newest checkpoint's tree size (equal to the head's after a clean shutdown).
    pub last_checkpoint: u64,
    /// Counters.
    pub stats: WriterStats,
}

type Reply = oneshot::Sender<Result<Appended, AuditError>>;

enum Request {
    Append {
        event: NewEvent,
        reply: Reply,
        _permit: OwnedSemaphorePermit,
    },
    Checkpoint {
        reply: oneshot::Sender<Result<Option<StoredCheckpoint>, AuditError>>,
    },
    Shutdown {
        reply: oneshot::Sender<Result<Closed, AuditError>>,
    },
}

/// A cheap, clonable handle to the writer thread.
#[derive(Debug, Clone)]
pub struct WriterHandle {
    tx: mpsc::Sender<Request>,
    room: Arc<Semaphore>,
}

impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Request::Append { event, .. } => write!(f, "Append({})", event.event_id()),
            Request::Checkpoint { .. } => f.write_str("Checkpoint"),
            Request::Shutdown { .. } => f.write_str("Shutdown"),
        }
    }
}

/// An append that is queued but perhaps not yet committed.
#[derive(Debug)]
pub struct PendingAppend {
    answer: oneshot::Receiver<Result<Appended, AuditError>>,
}

impl PendingAppend {
    /// Resolves once the transaction holding the event committed (or failed).
    pub async fn committed(self) -> Result<Appended, AuditError> {
        self.answer
            .await
            .map_err(|_dropped| AuditError::WriterClosed)?
    }
}

/// Starts writers.
#[derive(Debug)]
pub struct Writer;

impl Writer {
    /// Starts the owner thread. The log's tail is checked against its last checkpoint before
    /// anything is written, so the writer never signs over rows changed while it was down;
    /// rows a crash left without a checkpoint are then checkpointed, and with a witness, any
    /// stored checkpoint the witness file lacks (a crash between the database commit and the
    /// witness write) is appended.
    pub fn spawn(
        log: AuditLog,
        witness: Option<Witness>,
        config: WriterConfig,
    ) -> Result<WriterHandle, AuditError> {
        log.check_tail(&config.signer.verifier())?;
        let (tx, rx) = mpsc::channel();
        let room = Arc::new(Semaphore::new(config.queue_capacity.max(1)));
        let mut owner = Owner {
            log,
            witness,
            config,
            stats: WriterStats::default(),
            first_unchecked: None,
        };
        // Rows committed before a crash but never checkpointed: seal them now (the tail check
        // above just verified them). This also brings the witness up to date.
        owner.checkpoint()?;
        owner.sync_witness();
        std::thread::Builder::new()
            .name("audit-writer".to_owned())
            .spawn(move || owner.run(&rx))
            .map_err(|source| AuditError::Io {
                op: "spawn writer thread",
                path: String::new(),
                source,
            })?;
        Ok(WriterHandle { tx, room })
    }
}

impl WriterHandle {
    /// Appends one event; resolves after the transaction holding it committed. Waits for room
    /// when the queue is full.
    pub async fn append(&self, event: NewEvent) -> Result<Appended, AuditError> {
        self.enqueue(event).await?.committed().await
    }

    /// Queues one event (waiting for room when the queue is full) and returns as soon as it is
    /// queued. Events queued by one caller are committed in the order queued; await
    /// [`PendingAppend::committed`] to learn when it is durable.
    pub async fn enqueue(&self, event: NewEvent) -> Result<PendingAppend, AuditError> {
        let permit = Arc::clone(&self.room)
            .acquire_owned()
            .await
            .map_err(|_closed| AuditError::WriterClosed)?;
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(Request::Append {
                event,
                reply,
                _permit: permit,
            })
            .map_err(|_send_error| AuditError::WriterClosed)?;
        Ok(PendingAppend { answer })
    }

    /// Writes a checkpoint of the current head now (if there is anything new), after every
    /// append queued before this call.
    pub async fn checkpoint(&self) -> Result<Option<StoredCheckpoint>, AuditError> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(Request::Checkpoint { reply })
            .map_err(|_send_error| AuditError::WriterClosed)?;
        answer.await.map_err(|_dropped| AuditError::WriterClosed)?
    }

    /// Drains every queued append, writes a final checkpoint, closes the database and stops
    /// the thread. Appends sent after this fail with [`AuditError::WriterClosed`].
    pub async fn shutdown(&self) -> Result<Closed, AuditError> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(Request::Shutdown { reply })
            .map_err(|_send_error| AuditError::WriterClosed)?;
        self.room.close();
        answer.await.map_err(|_dropped| AuditError::WriterClosed)?
    }
}

/// Appends gathered for one transaction: the events, and who waits for each.
struct Batch {
    events: Vec<NewEvent>,
    waiters: Vec<(Reply, OwnedSemaphorePermit)>,
}

impl Batch {
    fn with_capacity(n: usize) -> Self {
        Batch {
            events: Vec::with_capacity(n),
            waiters: Vec::with_capacity(n),
        }
    }

    fn push(&mut self, event: NewEvent, reply: Reply, permit: OwnedSemaphorePermit) {
        self.events.push(event);
        self.waiters.push((reply, permit));
    }

    fn len(&self) -> usize {
        self.events.len()
    }
}

struct Owner {
    log: AuditLog,
    witness: Option<Witness>,
    config: WriterConfig,
    stats: WriterStats,
    /// When the oldest row not yet covered by a checkpoint was committed.
    first_unchecked: Option<Instant>,
}

impl Owner {
    fn run(mut self, rx: &mpsc::Receiver<Request>) {
        let max_batch = self.config.max_batch.max(1);
        let mut batch = Batch::with_capacity(max_batch);
        loop {
            let first = match self.first_unchecked {
                Some(since) => {
                    let wait = self
                        .config
                        .checkpoint_interval
                        .saturating_sub(since.elapsed());
                    match rx.recv_timeout(wait) {
                        Ok(r) => r,
                        Err(mpsc::RecvTimeoutError::Timeout) => {
                            self.maybe_checkpoint();
                            continue;
                        }
                        Err(mpsc::RecvTimeoutError::Disconnected) => break,
                    }
                }
                None => match rx.recv() {
                    Ok(r) => r,
                    Err(mpsc::RecvError) => break,
                },
            };
            let mut control = None;
            let mut next = Some(first);
            while let Some(request) = next.take() {
                match request {
                    Request::Append {
                        event,
                        reply,
                        _permit,
                    } => batch.push(event, reply, _permit),
                    other => {
                        // Control requests apply after the appends queued before them.
                        control = Some(other);
                        break;
                    }
                }
                if batch.len() >= max_batch {
                    break;
                }
                next = rx.try_recv().ok();
            }
            self.commit(&mut batch);
            match control {
                None | Some(Request::Append { .. }) => self.maybe_checkpoint(),
                Some(Request::Checkpoint { reply }) => {
                    let result = self.checkpoint();
                    let _ = reply.send(result);
                }
                Some(Request::Shutdown { reply }) => {
                    self.drain(rx, &mut batch);
                    let _ = reply.send(self.close());
                    return;
                }
            }
        }
        // Every handle is gone: finish like a shutdown, with nobody to tell.
        if let Err(e) = self.close() {
            tracing::error!(code = e.code(), error = %e, "audit writer could not close cleanly");
        }
    }

    /// Commits whatever is still queued (after a shutdown request).
    fn drain(&mut self, rx: &mpsc::Receiver<Request>, batch: &mut Batch) {
        let max_batch = self.config.max_batch.max(1);
        while let Ok(request) = rx.try_recv() {
            match request {
                Request::Append {
                    event,
                    reply,
                    _permit,
                } => {
                    batch.push(event, reply, _permit);
                    if batch.len() >= max_batch {
                        self.commit(batch);
                    }
                }
                Request::Checkpoint { reply } => {
                    let _ = reply.send(Err(AuditError::WriterClosed));
                }
                Request::Shutdown { reply } => {
                    let _ = reply.send(Err(AuditError::WriterClosed));
                }
            }
        }
        self.commit(batch);
    }

    /// Commits the batch in one transaction, then answers every waiter (and frees their queue
    /// slots).
    fn commit(&mut self, batch: &mut Batch) {
        if batch.events.is_empty() {
            return;
        }
        let result = self.log.append_batch(&batch.events, UnixMillis::now());
        self.stats.largest_batch = self.stats.largest_batch.max(batch.len());
        batch.events.clear();
        match result {
            Ok(outcomes) => {
                self.stats.commits += 1;
                let mut new_rows = 0u64;
                for ((reply, _permit), outcome) in batch.waiters.drain(..).zip(outcomes) {
                    match outcome {
                        Appended::New { .. } => new_rows += 1,
                        Appended::Duplicate { .. } | Appended::Conflict { .. } => {
                            self.stats.duplicates += 1;
                        }
                    }
                    let _ = reply.send(Ok(outcome));
                }
                self.stats.rows += new_rows;
                if new_rows > 0 && self.first_unchecked.is_none() {
                    self.first_unchecked = Some(Instant::now());
                }
            }
            Err(e) => {
                tracing::error!(code = e.code(), error = %e, rows = batch.waiters.len(), "audit batch commit failed");
                let shared = Arc::new(e);
                for (reply, _permit) in batch.waiters.drain(..) {
                    let _ = reply.send(Err(AuditError::Batch(Arc::clone(&shared))));
                }
            }
        }
    }

    fn unchecked_rows(&self) -> u64 {
        self.log.head().tree_size - self.log.last_checkpoint_size()
    }

    fn maybe_checkpoint(&mut self) {
        let waited = self.first_unchecked.map_or(Duration::ZERO, |t| t.elapsed());
        if checkpoint_due(
            self.unchecked_rows(),
            waited,
            self.config.checkpoint_every,
            self.config.checkpoint_interval,
        ) && let Err(e) = self.checkpoint()
        {
            tracing::error!(code = e.code(), error = %e, "audit checkpoint failed; retrying after the interval");
            // Back off for a whole interval instead of retrying in a tight loop.
            self.first_unchecked = Some(Instant::now());
        }
    }

    fn checkpoint(&mut self) -> Result<Option<StoredCheckpoint>, AuditError> {
        let written = self
            .log
            .write_checkpoint(&self.config.signer, UnixMillis::now())?;
        if let Some(cp) = &written {
            self.stats.checkpoints += 1;
            self.first_unchecked = None;
            tracing::debug!(tree_size = cp.tree_size, head = %cp.head, "audit checkpoint written");
            self.sync_witness();
        }
        Ok(written)
    }

    /// Appends to the witness every stored checkpoint it lacks. A failure is logged and
    /// retried at the next checkpoint; the database copy is already durable.
    fn sync_witness(&mut self) {
        let Some(witness) = self.witness.as_mut() else {
            return;
        };
        let missing = match self.log.checkpoints_after(witness.last_tree_size()) {
            Ok(m) => m,
            Err(e) => {
                tracing::error!(code = e.code(), error = %e, "cannot read checkpoints for the witness");
                return;
            }
        };
        for cp in missing {
            if let Err(e) = witness.append(&cp.note, cp.tree_size) {
                tracing::error!(code = e.code(), error = %e, "cannot append to the witness file");
                return;
            }
        }
    }

    fn close(mut self) -> Result<Closed, AuditError> {
        self.checkpoint()?;
        self.sync_witness();
        let head = self.log.head();
        let last_checkpoint = self.log.last_checkpoint_size();
        drop(self.log);
        Ok(Closed {
            head,
            last_checkpoint,
            stats: self.stats,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::LogName;

    #[test]
    fn checkpoint_policy() {
        let s = Duration::from_secs;
        let due = |rows, waited| checkpoint_due(rows, s(waited), 100, s(60));
        assert!(!due(0, 0));
        assert!(!due(0, 1000));
        assert!(!due(99, 59));
        assert!(due(100, 0));
        assert!(due(1, 60));
        assert!(due(250, 1));
    }

    fn event(n: u32) -> NewEvent {
        NewEvent::new(
            format!("ev-{n}"),
            UnixMillis(n.into()),
            "hue",
            "service_started",
            None,
            b"{}".to_vec(),
        )
        .unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_appends_share_commits_and_shutdown_checkpoints() {
        let dir = tempfile::tempdir().unwrap();
        let log = AuditLog::open(&dir.path().join("a.db")).unwrap();
        let witness = Witness::open(&dir.path().join("witness")).unwrap();
        let signer = CheckpointSigner::from_seed(LogName::default_name(), &[5; 32]);
        let mut config = WriterConfig::new(signer.clone());
        config.checkpoint_every = 1000;
        let handle = Writer::spawn(log, Some(witness), config).unwrap();
        let mut tasks = Vec::new();
        for n in 0..2000u32 {
            let h = handle.clone();
            tasks.push(tokio::spawn(async move { h.append(event(n % 1500)).await }));
        }
        let mut new = 0;
        let mut dup = 0;
        for t in tasks {
            match t.await.unwrap().unwrap() {
                Appended::New { .. } => new += 1,
                Appended::Duplicate { .. } => dup += 1,
                Appended::Conflict { .. } => panic!("no conflicts expected"),
            }
        }
        assert_eq!((new, dup), (1500, 500));
        let closed = handle.shutdown().await.unwrap();
        assert_eq!(closed.head.tree_size, 1500);
        assert_eq!(closed.last_checkpoint, 1500);
        assert_eq!(closed.stats.rows, 1500);
        // 2000 appends in far fewer commits: group commit batched them.
        assert!(
            closed.stats.commits < 1000,
            "commits = {}",
            closed.stats.commits
        );
        assert!(matches!(
            handle.append(event(1)).await,
            Err(AuditError::WriterClosed)
        ));
        // A checkpoint once 1000 rows were unchecked, and one at shutdown for the rest (unless
        // the batch that crossed 1000 also carried the last row), each in the witness.
        let notes = crate::witness::read_notes(&dir.path().join("witness")).unwrap();
        assert_eq!(closed.stats.checkpoints, notes.len() as u64);
        let sizes: Vec<u64> = notes
            .iter()
            .map(|n| signer.verifier().verify(n).unwrap().tree_size)
            .collect();
        assert!(sizes[0] >= 1000, "{sizes:?}");
        assert_eq!(sizes.last(), Some(&1500), "{sizes:?}");
        assert!(sizes.windows(2).all(|w| w[0] < w[1]), "{sizes:?}");
    }

    #[tokio::test]
    async fn interval_checkpoint_fires_without_new_rows_arriving() {
        let dir = tempfile::tempdir().unwrap();
        let log = AuditLog::open(&dir.path().join("a.db")).unwrap();
        let signer = CheckpointSigner::from_seed(LogName::default_name(), &[5; 32]);
        let mut config = WriterConfig::new(signer);
        config.checkpoint_interval = Duration::from_millis(200);
        let handle = Writer::spawn(log, None, config).unwrap();
        handle.append(event(1)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(600)).await;
        // The interval checkpoint already covered row 1, so a forced one has nothing to do.
        assert_eq!(handle.checkpoint().await.unwrap(), None);
        let closed = handle.shutdown().await.unwrap();
        assert_eq!(closed.stats.checkpoints, 1);
    }

    #[tokio::test]
    async fn rows_a_crash_left_unchecked_are_checkpointed_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.db");
        let signer = CheckpointSigner::from_seed(LogName::default_name(), &[5; 32]);
        // Committed, never checkpointed (the process died before the checkpoint).
        let mut log = AuditLog::open(&path).unwrap();
        log.append_batch(&[event(1), event(2), event(3)], UnixMillis(9))
            .unwrap();
        drop(log);
        let wpath = dir.path().join("witness");
        let handle = Writer::spawn(
            AuditLog::open(&path).unwrap(),
            Some(Witness::open(&wpath).unwrap()),
            WriterConfig::new(signer.clone()),
        )
        .unwrap();
        assert_eq!(handle.checkpoint().await.unwrap(), None, "already sealed");
        let closed = handle.shutdown().await.unwrap();
        assert_eq!(closed.last_checkpoint, 3);
        assert_eq!(closed.stats.checkpoints, 1);
        let notes = crate::witness::read_notes(&wpath).unwrap();
        assert_eq!(notes.len(), 1);
        assert_eq!(signer.verifier().verify(&notes[0]).unwrap().tree_size, 3);
    }

    #[tokio::test]
    async fn witness_catches_up_with_checkpoints_it_missed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.db");
        let signer = CheckpointSigner::from_seed(LogName::default_name(), &[5; 32]);
        // First run without a witness.
        let handle = Writer::spawn(
            AuditLog::open(&path).unwrap(),
            None,
            WriterConfig::new(signer.clone()),
        )
        .unwrap();
        handle.append(event(1)).await.unwrap();
        handle.shutdown().await.unwrap();
        // Second run with one: the earlier checkpoint is copied over at start.
        let wpath = dir.path().join("witness");
        let handle = Writer::spawn(
            AuditLog::open(&path).unwrap(),
            Some(Witness::open(&wpath).unwrap()),
            WriterConfig::new(signer.clone()),
        )
        .unwrap();
        handle.append(event(2)).await.unwrap();
        handle.shutdown().await.unwrap();
        let sizes: Vec<u64> = crate::witness::read_notes(&wpath)
            .unwrap()
            .iter()
            .map(|n| signer.verifier().verify(n).unwrap().tree_size)
            .collect();
        assert_eq!(sizes, vec![1, 2]);
    }
}
