//! The `bot` binary end to end: `init` on a fresh home and again (idempotent), and
//! `audit verify` on a real audit log signed with the key `init` generated, before and after
//! an attacker edits a row.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Output};

use audit::{AuditLog, CheckpointSigner, LogName, NewEvent};
use protocol::UnixMillis;

fn bot(home: &std::path::Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_bot"))
        .arg("--home")
        .arg(home)
        .args(args)
        .env_remove("BOT_HOME")
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn init_generates_secrets_privately_and_is_idempotent() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let first = bot(&home, &["init", "--agent", "hue", "--agent", "weather"]);
    assert!(first.status.success(), "{}", text(&first));
    let out = text(&first);
    assert!(out.contains("created  keys/token-signing.seed"), "{out}");
    assert!(out.contains("created  nats/hue.nk"), "{out}");
    for secret in [
        "keys/token-signing.seed",
        "keys/checkpoint.seed",
        "tls/ca.key",
        "nats/hue.nk",
        "tls/clients/weather.key",
    ] {
        let mode = std::fs::metadata(home.join(secret))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{secret}");
        // The secret's content never appears in the output.
        let content = std::fs::read_to_string(home.join(secret)).unwrap();
        let first_line = content.lines().find(|l| l.len() > 16).unwrap_or(&content);
        assert!(!out.contains(first_line.trim()), "{secret} leaked");
    }
    let seed_before = std::fs::read(home.join("keys/token-signing.seed")).unwrap();
    let second = bot(&home, &["init", "--agent", "hue", "--agent", "weather"]);
    assert!(second.status.success(), "{}", text(&second));
    assert!(text(&second).contains("0 created"), "{}", text(&second));
    assert_eq!(
        std::fs::read(home.join("keys/token-signing.seed")).unwrap(),
        seed_before
    );
}

#[test]
fn init_refuses_a_bad_agent_name_with_exit_64() {
    let dir = tempfile::tempdir().unwrap();
    let o = bot(dir.path(), &["init", "--agent", "cmd.>"]);
    assert_eq!(o.status.code(), Some(64), "{}", text(&o));
    assert!(text(&o).contains("error[invalid_name]"), "{}", text(&o));
    let o = bot(dir.path(), &["init", "--agent", "orchestrator"]);
    assert_eq!(o.status.code(), Some(64), "{}", text(&o));
}

#[test]
fn audit_verify_passes_then_names_the_edited_row() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    assert!(bot(&home, &["init"]).status.success());
    let db = home.join("audit/audit.db");
    std::fs::create_dir_all(db.parent().unwrap()).unwrap();
    let signer = CheckpointSigner::from_seed_file(
        LogName::default_name(),
        &home.join("keys/checkpoint.seed"),
    )
    .unwrap();
    {
        let mut log = AuditLog::open(&db).unwrap();
        let events: Vec<NewEvent> = (0..40)
            .map(|i| {
                NewEvent::new(
                    format!("event-{i}"),
                    UnixMillis(1_767_225_600_000 + i),
                    "hue",
                    "command_executed",
                    None,
                    format!("{{\"n\":{i}}}").into_bytes(),
                )
                .unwrap()
            })
            .collect();
        log.append_batch(&events, UnixMillis(1_767_225_601_000))
            .unwrap();
        log.write_checkpoint(&signer, UnixMillis(1_767_225_602_000))
            .unwrap()
            .unwrap();
    }
    let ok = bot(&home, &["audit", "verify"]);
    assert!(ok.status.success(), "{}", text(&ok));
    assert!(
        text(&ok).contains("rows verified:        40"),
        "{}",
        text(&ok)
    );
    assert!(
        text(&ok).contains("checkpoints verified: 1"),
        "{}",
        text(&ok)
    );

    // An attacker with file access drops the trigger and edits row 17.
    let conn = rusqlite::Connection::open(&db).unwrap();
    conn.execute_batch("DROP TRIGGER IF EXISTS audit_no_update;")
        .unwrap();
    let triggers: Vec<String> = conn
        .prepare("SELECT name FROM sqlite_master WHERE type = 'trigger'")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    for t in &triggers {
        conn.execute_batch(&format!("DROP TRIGGER {t};")).unwrap();
    }
    conn.execute("UPDATE audit SET payload = X'7b7d' WHERE seq = 17", [])
        .unwrap();
    drop(conn);
    let bad = bot(&home, &["audit", "verify"]);
    assert_eq!(bad.status.code(), Some(1), "{}", text(&bad));
    assert!(
        text(&bad).contains("first bad sequence number: 17"),
        "{}",
        text(&bad)
    );
}

#[test]
fn audit_verify_without_a_log_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    assert!(bot(&home, &["init"]).status.success());
    let o = bot(&home, &["audit", "verify"]);
    assert_eq!(o.status.code(), Some(64), "{}", text(&o));
    assert!(text(&o).starts_with("error["), "{}", text(&o));
}
