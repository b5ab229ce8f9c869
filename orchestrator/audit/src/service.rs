//! The audit writer service: the `audit-writer` binary's wiring, as a library so tests and
//! the `bot` can reuse it.
//!
//! [`prepare`] does everything local and can fail on bad configuration before anything touches
//! the network: it checks the settings, loads the checkpoint key, opens (or creates) the
//! database and the witness file, checks the log's tail against its last checkpoint, and
//! starts the writer thread. [`run`] then connects as the `audit` identity, binds to the
//! `audit-writer` consumer, ingests until `shutdown` resolves, drains, writes the final
//! checkpoint and flushes the last acks.
//!
//! What this does not do: it parses no command line (the binary does) and installs no signal
//! handlers (the caller passes `shutdown`).

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use protocol::Principal;
use thiserror::Error;

use crate::checkpoint::{CheckpointKeyError, CheckpointSigner, LogName};
use crate::error::AuditError;
use crate::ingest::{self, IngestConfig, IngestError, IngestStats};
use crate::store::AuditLog;
use crate::witness::Witness;
use crate::writer::{Closed, Writer, WriterConfig, WriterHandle};

/// The service's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceConfig {
    /// NATS server URL (`tls://host:port`).
    pub nats_url: String,
    /// The provisioned identity directory (a `provision::Layout` root).
    pub identity_dir: PathBuf,
    /// The audit database file.
    pub db: PathBuf,
    /// The witness file, if any (put it on another disk or host).
    pub witness: Option<PathBuf>,
    /// Rows between checkpoints.
    pub checkpoint_every: u64,
    /// Longest time a row waits for a checkpoint.
    pub checkpoint_interval: Duration,
}

/// Why the service stopped.
#[derive(Debug, Error)]
pub enum ServiceError {
    /// A setting is unusable; nothing was started.
    #[error("bad configuration: {0}")]
    Config(String),
    /// The checkpoint key could not be loaded.
    #[error("bad configuration: {0}")]
    Key(#[from] CheckpointKeyError),
    /// The audit log could not be opened or written.
    #[error(transparent)]
    Audit(#[from] AuditError),
    /// Connecting to NATS failed.
    #[error("cannot connect to NATS: {0}")]
    Connect(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// Ingest stopped with an error.
    #[error(transparent)]
    Ingest(#[from] IngestError),
}

impl ServiceError {
    /// Stable code.
    pub fn code(&self) -> &'static str {
        match self {
            ServiceError::Config(_) => "audit_bad_config",
            ServiceError::Key(e) => e.code(),
            ServiceError::Audit(e) => e.code(),
            ServiceError::Connect(_) => "audit_connect_failed",
            ServiceError::Ingest(e) => e.code(),
        }
    }

    /// The process exit code: 64 (`EX_USAGE`) for configuration errors, 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            ServiceError::Config(_) | ServiceError::Key(_) => 64,
            ServiceError::Audit(_) | ServiceError::Connect(_) | ServiceError::Ingest(_) => 1,
        }
    }
}

/// Checks the settings (pure apart from looking at directories).
pub fn check_config(config: &ServiceConfig) -> Result<(), ServiceError> {
    if !(config.nats_url.starts_with("tls://") || config.nats_url.starts_with("nats://")) {
        return Err(ServiceError::Config(
            "--nats-url must start with tls:// or nats://".to_owned(),
        ));
    }
    if config.checkpoint_every == 0 {
        return Err(ServiceError::Config(
            "--checkpoint-every must be at least 1".to_owned(),
        ));
    }
    if config.checkpoint_interval.is_zero() {
        return Err(ServiceError::Config(
            "--checkpoint-interval-secs must be at least 1".to_owned(),
        ));
    }
    if !config.identity_dir.is_dir() {
        return Err(ServiceError::Config(format!(
            "--identity-dir {} is not a directory",
            config.identity_dir.display()
        )));
    }
    let parent_ok = |p: &Path| {
        p.parent()
            .map(|d| d.as_os_str().is_empty() || d.is_dir())
            .unwrap_or(false)
    };
    if !parent_ok(&config.db) {
        return Err(ServiceError::Config(format!(
            "the directory of --db {} does not exist",
            config.db.display()
        )));
    }
    if let Some(w) = &config.witness {
        if !parent_ok(w) {
            return Err(ServiceError::Config(format!(
                "the directory of --witness {} does not exist",
                w.display()
            )));
        }
        if w == &config.db {
            return Err(ServiceError::Config(
                "--witness must not be the database file".to_owned(),
            ));
        }
    }
    Ok(())
}

/// Everything local, ready to connect.
#[derive(Debug)]
pub struct Prepared {
    config: ServiceConfig,
    writer: WriterHandle,
}

impl Prepared {
    /// The running writer.
    pub fn writer(&self) -> &WriterHandle {
        &self.writer
    }
}

/// Checks the settings, loads the key, opens the log and witness, and starts the writer.
pub fn prepare(config: ServiceConfig) -> Result<Prepared, ServiceError> {
    check_config(&config)?;
    let layout = provision::Layout::new(config.identity_dir.clone());
    let signer =
        CheckpointSigner::from_seed_file(LogName::default_name(), &layout.checkpoint_seed())?;
    let log = AuditLog::open(&config.db)?;
    let witness = config.witness.as_deref().map(Witness::open).transpose()?;
    let mut writer_config = WriterConfig::new(signer);
    writer_config.checkpoint_every = config.checkpoint_every;
    writer_config.checkpoint_interval = config.checkpoint_interval;
    let writer = Writer::spawn(log, witness, writer_config)?;
    Ok(Prepared { config, writer })
}

/// What a run did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    /// Ingest counters.
    pub ingest: IngestStats,
    /// The writer's final state.
    pub closed: Closed,
}

/// Connects, ingests until `shutdown`, then drains and closes. The writer is shut down (final
/// checkpoint) whatever happens after [`prepare`].
pub async fn run(
    prepared: Prepared,
    shutdown: impl Future<Output = ()>,
) -> Result<Summary, ServiceError> {
    let Prepared { config, writer } = prepared;
    let result = connect_and_ingest(&config, &writer, shutdown).await;
    let closed = writer.shutdown().await;
    let (ingest, client) = result?;
    // The last acks are queued in the client; send them before the process exits.
    if let Err(e) = client.flush().await {
        tracing::warn!(error = %e, "could not flush the last acks; they will be redelivered and stored as duplicates");
    }
    Ok(Summary {
        ingest,
        closed: closed?,
    })
}

async fn connect_and_ingest(
    config: &ServiceConfig,
    writer: &WriterHandle,
    shutdown: impl Future<Output = ()>,
) -> Result<(IngestStats, async_nats::Client), ServiceError> {
    let layout = provision::Layout::new(config.identity_dir.clone());
    let client = provision::client::connect(&config.nats_url, &layout, &Principal::audit())
        .await
        .map_err(|e| ServiceError::Connect(Box::new(e)))?;
    let js = async_nats::jetstream::new(client.clone());
    let consumer = ingest::bind(&js).await?;
    tracing::info!(db = %config.db.display(), "audit writer bound to the audit consumer");
    let stats = ingest::run(consumer, writer.clone(), IngestConfig::default(), shutdown).await?;
    Ok((stats, client))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(dir: &Path) -> ServiceConfig {
        ServiceConfig {
            nats_url: "tls://127.0.0.1:4222".to_owned(),
            identity_dir: dir.to_owned(),
            db: dir.join("audit.db"),
            witness: Some(dir.join("witness")),
            checkpoint_every: 100,
            checkpoint_interval: Duration::from_secs(60),
        }
    }

    #[test]
    fn bad_settings_are_config_errors() {
        let dir = tempfile::tempdir().unwrap();
        let good = config(dir.path());
        assert!(check_config(&good).is_ok());
        let cases: Vec<(&str, ServiceConfig)> = vec![
            (
                "url",
                ServiceConfig {
                    nats_url: "http://x".to_owned(),
                    ..good.clone()
                },
            ),
            (
                "every",
                ServiceConfig {
                    checkpoint_every: 0,
                    ..good.clone()
                },
            ),
            (
                "interval",
                ServiceConfig {
                    checkpoint_interval: Duration::ZERO,
                    ..good.clone()
                },
            ),
            (
                "identity",
                ServiceConfig {
                    identity_dir: dir.path().join("nope"),
                    ..good.clone()
                },
            ),
            (
                "db dir",
                ServiceConfig {
                    db: dir.path().join("nope/audit.db"),
                    ..good.clone()
                },
            ),
            (
                "witness is db",
                ServiceConfig {
                    witness: Some(good.db.clone()),
                    ..good.clone()
                },
            ),
        ];
        for (name, c) in cases {
            let e = check_config(&c).unwrap_err();
            assert_eq!(e.exit_code(), 64, "{name}");
            assert_eq!(e.code(), "audit_bad_config", "{name}");
        }
        // A missing checkpoint key is a configuration error too, found before any network.
        let e = prepare(good).unwrap_err();
        assert_eq!(e.exit_code(), 64);
        assert_eq!(e.code(), "checkpoint_key_unreadable");
    }
}
