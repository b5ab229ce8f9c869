//! The audit log: a hash-chained, append-only SQLite log with signed checkpoints, its
//! verifier, and the audit writer service that fills it from the `AUDIT` JetStream stream.
//!
//! What it holds:
//! - [`hash`]: the row hash, a pure function (SHA-256 over length-prefixed fields and the
//!   previous hash).
//! - [`checkpoint`]: C2SP signed-note checkpoints of the chain head (sign, parse, verify).
//! - [`store`]: [`AuditLog`], the only code that writes audit rows (WAL, `synchronous=FULL`,
//!   append-only triggers, idempotent appends by event id).
//! - [`writer`]: group commit: one owner thread, many concurrent [`WriterHandle::append`]s per
//!   fsync; periodic and final checkpoints; the [`witness`] file copy.
//! - [`verify()`]: recomputes the chain and checks it against every signed checkpoint; names
//!   the first bad sequence number.
//! - [`ingest`]: binds to the `audit-writer` consumer, turns each message into a row (or a
//!   `rejected_event` row), acks only after the commit.
//! - [`emit`]: [`AuditEmitter`], how every other service publishes audit events.
//! - [`service`]: the `audit-writer` binary's wiring.
//!
//! What it does not do: it never updates or deletes a row; it holds no token-signing key
//! (the checkpoint key is separate); it creates no JetStream streams or consumers
//! (provisioning does); it does not decide what is worth auditing (callers do).
#![forbid(unsafe_code)]

pub mod checkpoint;
pub mod emit;
pub mod error;
pub mod hash;
pub mod ingest;
pub mod service;
pub mod store;
pub mod verify;
pub mod witness;
pub mod writer;

pub use checkpoint::{Checkpoint, CheckpointSigner, CheckpointVerifier, LogName};
pub use emit::{AuditEmitter, EmitError};
pub use error::AuditError;
pub use hash::{GENESIS, RowFields, RowHash, row_hash};
pub use store::{Appended, AuditLog, Head, NewEvent, StoredCheckpoint};
pub use verify::{CheckpointSource, Problem, Report, verify};
pub use witness::Witness;
pub use writer::{Writer, WriterConfig, WriterHandle};
