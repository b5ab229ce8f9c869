//! Audit log benchmarks (`cargo bench -p audit`): durable appends per second through the
//! group-commit writer with concurrent producers, the same with one transaction per event, and
//! verification speed over a million rows. Prints the method next to every figure.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::print_stdout,
    clippy::print_stderr
)]

use std::path::Path;
use std::time::{Duration, Instant};

use audit::{AuditLog, CheckpointSigner, LogName, NewEvent, Writer, WriterConfig, verify};
use futures::StreamExt as _;
use futures::stream::FuturesUnordered;
use protocol::{CorrelationId, UnixMillis};

/// A payload shaped like a canonical `step_intent` envelope (about 420 bytes).
fn payload(n: u64) -> Vec<u8> {
    format!(
        "{{\"body\":{{\"step_intent\":{{\"jti\":\"{n:032x}\",\"plan_id\":\"6f1c2a4e-5d1b-4c7e-9a3f-{n:012x}\",\"step\":{{\"action\":\"light.set\",\"agent\":\"hue\",\"args\":{{\"brightness\":20,\"room\":\"living\",\"transition_ms\":600000}},\"args_sha256\":\"{n:064x}\",\"step\":0}}}}}},\"correlation_id\":\"0b7d9e2c-1f3a-4b5c-8d6e-{n:012x}\",\"id\":\"9a8b7c6d-5e4f-4a3b-9c2d-{n:012x}\",\"sender\":\"orchestrator\",\"sent_at\":1763740800000,\"v\":1}}"
    )
    .into_bytes()
}

fn event(n: u64) -> NewEvent {
    NewEvent::new(
        format!("9a8b7c6d-5e4f-4a3b-9c2d-{n:012x}"),
        UnixMillis(1_763_740_800_000 + n as i64),
        "orchestrator",
        "step_intent",
        Some(CorrelationId::from_bytes([(n % 251) as u8; 16])),
        payload(n),
    )
    .unwrap()
}

fn signer() -> CheckpointSigner {
    CheckpointSigner::from_seed(LogName::default_name(), &[0x42; 32])
}

fn disk(dir: &Path) -> String {
    std::process::Command::new("findmnt")
        .args(["-n", "-o", "SOURCE,FSTYPE,OPTIONS", "-T"])
        .arg(dir)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|| "unknown (findmnt unavailable)".to_owned())
}

/// `producers` tasks, each keeping `window` appends in flight, `total` appends in all.
fn group_commit(dir: &Path, producers: u64, window: usize, total: u64) {
    let path = dir.join(format!("group-{producers}-{window}.db"));
    let log = AuditLog::open(&path).unwrap();
    let mut config = WriterConfig::new(signer());
    config.checkpoint_every = 1000;
    let handle = Writer::spawn(log, None, config).unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let per = total / producers;
    let events: Vec<Vec<NewEvent>> = (0..producers)
        .map(|p| (0..per).map(|i| event(p * per + i)).collect())
        .collect();
    let (elapsed, closed) = runtime.block_on(async {
        let start = Instant::now();
        let mut tasks = Vec::new();
        for batch in events {
            let h = handle.clone();
            tasks.push(tokio::spawn(async move {
                let mut in_flight = FuturesUnordered::new();
                for e in batch {
                    if in_flight.len() >= window {
                        let done: Result<audit::Appended, audit::AuditError> =
                            in_flight.next().await.unwrap();
                        done.unwrap();
                    }
                    let pending = h.enqueue(e).await.unwrap();
                    in_flight.push(Box::pin(pending.committed()));
                }
                while let Some(r) = in_flight.next().await {
                    r.unwrap();
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let elapsed = start.elapsed();
        (elapsed, handle.shutdown().await.unwrap())
    });
    let s = closed.stats;
    println!(
        "group commit  producers={producers:<3} in-flight/producer={window:<4} appends={:<7} \
         {:>9.0} appends/s  commits={:<6} avg batch={:>6.1} largest batch={}",
        per * producers,
        (per * producers) as f64 / elapsed.as_secs_f64(),
        s.commits,
        s.rows as f64 / s.commits as f64,
        s.largest_batch,
    );
}

/// One transaction (one fsync) per event, for contrast.
fn one_per_transaction(dir: &Path, total: u64) {
    let path = dir.join("single.db");
    let mut log = AuditLog::open(&path).unwrap();
    let events: Vec<NewEvent> = (0..total).map(event).collect();
    let start = Instant::now();
    for e in events {
        log.append_batch(std::slice::from_ref(&e), UnixMillis::now())
            .unwrap();
    }
    let elapsed = start.elapsed();
    println!(
        "one tx/event  producers=1   appends={total:<7} {:>9.0} appends/s  ({:.2} ms per durable commit)",
        total as f64 / elapsed.as_secs_f64(),
        elapsed.as_secs_f64() * 1000.0 / total as f64
    );
}

/// Builds a log of `rows` rows (checkpoint every 10 000) and times `verify` over it.
fn verify_speed(dir: &Path, rows: u64) {
    let path = dir.join("verify.db");
    let witness = dir.join("verify.witness");
    let signer = signer();
    let build = Instant::now();
    {
        let mut log = AuditLog::open(&path).unwrap();
        let mut w = audit::Witness::open(&witness).unwrap();
        let chunk = 10_000;
        for start in (0..rows).step_by(chunk) {
            let events: Vec<NewEvent> = (start..(start + chunk as u64).min(rows))
                .map(event)
                .collect();
            log.append_batch(&events, UnixMillis::now()).unwrap();
            let cp = log
                .write_checkpoint(&signer, UnixMillis::now())
                .unwrap()
                .unwrap();
            w.append(&cp.note, cp.tree_size).unwrap();
        }
    }
    let built = build.elapsed();
    let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    // One untimed pass warms the page cache, so the timed passes measure the verifier, not the
    // first read from disk.
    verify(&path, &signer.verifier(), Some(&witness)).unwrap();
    let mut best = Duration::MAX;
    let mut report = None;
    for _ in 0..3 {
        let start = Instant::now();
        let r = verify(&path, &signer.verifier(), Some(&witness)).unwrap();
        best = best.min(start.elapsed());
        report = Some(r);
    }
    let report = report.unwrap();
    assert!(report.is_ok(), "{:?}", report.problems);
    assert_eq!(report.rows_verified, rows);
    println!(
        "verify        rows={rows} db={:.0} MiB checkpoints={} (DB + witness)  best of 3: {:.2} s = {:>9.0} rows/s  (built in {:.1} s)",
        size as f64 / (1024.0 * 1024.0),
        report.checkpoints_verified,
        best.as_secs_f64(),
        rows as f64 / best.as_secs_f64(),
        built.as_secs_f64()
    );
}

fn main() {
    // `cargo bench` passes --bench; any other argument is a filter we do not support.
    let dir = tempfile::Builder::new()
        .prefix("audit-bench-")
        .tempdir()
        .unwrap();
    println!("audit benchmarks");
    println!(
        "  method: real SQLite files in {} on {}",
        dir.path().display(),
        disk(dir.path())
    );
    println!(
        "  journal_mode=WAL synchronous=FULL (an fsync per commit); events of {} bytes payload; \
         writer max_batch=512, queue 4096; checkpoint every 1000 rows",
        payload(0).len()
    );
    println!(
        "  cores: {}",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    one_per_transaction(dir.path(), 2_000);
    group_commit(dir.path(), 8, 1, 20_000);
    group_commit(dir.path(), 8, 64, 100_000);
    group_commit(dir.path(), 16, 64, 200_000);
    verify_speed(dir.path(), 1_000_000);
}
