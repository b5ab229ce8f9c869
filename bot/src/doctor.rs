//! `bot doctor`: what is set up, what runs, and how well isolated it is.
//!
//! Checks, each printed as `ok`, `warn` or `FAIL` with one line of detail: the home and its
//! secrets' permissions; the Docker engine (and so which sandbox backend `bot up` will use);
//! `nats-server`; if the system runs, each agent's last heartbeat with its isolation level,
//! the measures in force and the ones missing; and the audit log's verification.

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::time::Duration;

use futures::StreamExt as _;
use protocol::message::{Isolation, Status};
use protocol::{Envelope, Principal};

/// One finding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Level {
    Ok,
    Warn,
    Fail,
}

/// A check's result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Finding {
    pub(crate) level: Level,
    pub(crate) check: String,
    pub(crate) detail: String,
}

fn finding(level: Level, check: &str, detail: impl Into<String>) -> Finding {
    Finding {
        level,
        check: check.to_owned(),
        detail: detail.into(),
    }
}

/// Secret files under the home that must be private.
pub(crate) fn check_secrets(layout: &provision::Layout) -> Vec<Finding> {
    let mut out = Vec::new();
    if !layout.root().exists() {
        out.push(finding(
            Level::Fail,
            "home",
            format!("{} does not exist: run `bot init`", layout.root().display()),
        ));
        return out;
    }
    let mode = |p: &Path| std::fs::metadata(p).map(|m| m.permissions().mode() & 0o777);
    match mode(layout.root()) {
        Ok(m) if m & 0o077 == 0 => out.push(finding(
            Level::Ok,
            "home",
            format!("{} ({m:o})", layout.root().display()),
        )),
        Ok(m) => out.push(finding(
            Level::Fail,
            "home",
            format!(
                "{} is {m:o}: others can enter it (chmod 700)",
                layout.root().display()
            ),
        )),
        Err(e) => out.push(finding(Level::Fail, "home", e.to_string())),
    }
    let mut secrets = vec![
        layout.token_signing_seed(),
        layout.checkpoint_seed(),
        layout.decision_key(),
        layout.ca_key(),
        layout.server_key(),
    ];
    for dir in [layout.nats_dir(), layout.clients_dir()] {
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for e in entries.flatten() {
                let p = e.path();
                let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
                if name.ends_with(".nk") || name.ends_with(".key") {
                    secrets.push(p);
                }
            }
        }
    }
    let mut loose = Vec::new();
    let mut missing = Vec::new();
    for s in &secrets {
        match mode(s) {
            Ok(m) if m & 0o077 == 0 => {}
            Ok(m) => loose.push(format!("{} ({m:o})", layout.relative(s))),
            Err(_) => missing.push(layout.relative(s)),
        }
    }
    if loose.is_empty() && missing.is_empty() {
        out.push(finding(
            Level::Ok,
            "secrets",
            format!("{} secret files, each 0600", secrets.len()),
        ));
    }
    if !loose.is_empty() {
        out.push(finding(
            Level::Fail,
            "secrets",
            format!("readable by others: {}", loose.join(", ")),
        ));
    }
    if !missing.is_empty() {
        out.push(finding(
            Level::Fail,
            "secrets",
            format!("missing (run `bot init`): {}", missing.join(", ")),
        ));
    }
    out
}

/// The Docker engine, and so the backend `bot up` would choose.
pub(crate) async fn check_docker() -> Finding {
    match bollard::Docker::connect_with_local_defaults() {
        Ok(d) => match d.negotiate_version().await {
            Ok(d) => match d.version().await {
                Ok(v) => finding(
                    Level::Ok,
                    "sandbox",
                    format!(
                        "Docker {} (API {}): agents run in hardened containers",
                        v.version.unwrap_or_default(),
                        v.api_version.unwrap_or_default()
                    ),
                ),
                Err(e) => no_docker(&e.to_string()),
            },
            Err(e) => no_docker(&e.to_string()),
        },
        Err(e) => no_docker(&e.to_string()),
    }
}

fn no_docker(why: &str) -> Finding {
    finding(
        Level::Warn,
        "sandbox",
        format!(
            "no Docker engine answers ({}): agents would run as confined host processes \
             (weaker: no network namespace, no egress proxy, no resource limits)",
            why.lines().next().unwrap_or_default()
        ),
    )
}

/// Heartbeats seen within one interval: each agent's isolation as it reports it.
pub(crate) async fn check_agents(layout: &provision::Layout, url: &str) -> Vec<Finding> {
    let client = match provision::client::connect(url, layout, &Principal::orchestrator()).await {
        Ok(c) => c,
        Err(e) => {
            return vec![finding(
                Level::Fail,
                "nats",
                format!("cannot connect to {url}: {e}"),
            )];
        }
    };
    let mut out = vec![finding(Level::Ok, "nats", format!("connected to {url}"))];
    let Ok(mut statuses) = client.subscribe("status.*").await else {
        out.push(finding(
            Level::Fail,
            "agents",
            "cannot subscribe to heartbeats",
        ));
        return out;
    };
    let mut seen = std::collections::BTreeMap::new();
    let deadline = tokio::time::sleep(Duration::from_secs(12));
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            m = statuses.next() => {
                let Some(m) = m else { break };
                if let Ok(e) = Envelope::<Status>::decode(&m.payload) {
                    let Status::Heartbeat(h) = e.body;
                    seen.insert(e.sender.to_string(), h);
                }
            }
            () = &mut deadline => break,
        }
    }
    if seen.is_empty() {
        out.push(finding(
            Level::Warn,
            "agents",
            "no heartbeat within 12 s: no agent is running",
        ));
    }
    for (agent, h) in seen {
        let level = match h.isolation.level {
            Isolation::Container => Level::Ok,
            Isolation::Process | Isolation::None => Level::Warn,
        };
        let mut detail = format!(
            "{:?} isolation, version {}, {} handled",
            h.isolation.level, h.version, h.handled
        );
        if !h.isolation.measures.is_empty() {
            detail.push_str(&format!("; in force: {}", h.isolation.measures.join("; ")));
        }
        if !h.isolation.missing.is_empty() {
            detail.push_str(&format!("; MISSING: {}", h.isolation.missing.join("; ")));
        }
        out.push(Finding {
            level,
            check: format!("agent {agent}"),
            detail,
        });
    }
    out
}

/// The audit log, if there is one.
pub(crate) fn check_audit(layout: &provision::Layout) -> Finding {
    let db = layout.audit_db();
    if !db.exists() {
        return finding(
            Level::Warn,
            "audit",
            "no audit log yet (it appears with `bot up`)",
        );
    }
    let key = match audit::CheckpointVerifier::from_public_file(
        audit::LogName::default_name(),
        &layout.checkpoint_public(),
    ) {
        Ok(k) => k,
        Err(e) => return finding(Level::Fail, "audit", format!("checkpoint key: {e}")),
    };
    let witness = Some(layout.audit_witness()).filter(|w| w.exists());
    match audit::verify(&db, &key, witness.as_deref()) {
        Ok(r) if r.is_ok() => finding(
            Level::Ok,
            "audit",
            format!(
                "{} rows and {} signed checkpoints verify",
                r.rows_verified, r.checkpoints_verified
            ),
        ),
        Ok(r) => finding(
            Level::Fail,
            "audit",
            format!(
                "{} problem(s), first bad sequence number {:?}: run `bot audit verify`",
                r.problems.len(),
                r.first_bad_seq()
            ),
        ),
        Err(e) => finding(Level::Fail, "audit", format!("{}: {e}", e.code())),
    }
}

/// Prints findings; returns whether none failed.
pub(crate) fn print(findings: &[Finding]) -> bool {
    let mut ok = true;
    for f in findings {
        let tag = match f.level {
            Level::Ok => "ok  ",
            Level::Warn => "warn",
            Level::Fail => {
                ok = false;
                "FAIL"
            }
        };
        crate::say(&format!("{tag} {:<14} {}", f.check, f.detail));
    }
    ok
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loose_and_missing_secrets_are_failures() {
        let dir = tempfile::tempdir().unwrap();
        let layout = provision::Layout::new(dir.path().join("home"));
        let missing = check_secrets(&layout);
        assert_eq!(missing[0].level, Level::Fail);
        provision::generate(&layout, &provision::Spec::new(vec![])).unwrap();
        let fine = check_secrets(&layout);
        assert!(fine.iter().all(|f| f.level == Level::Ok), "{fine:?}");
        std::fs::set_permissions(
            layout.token_signing_seed(),
            std::fs::Permissions::from_mode(0o644),
        )
        .unwrap();
        let loose = check_secrets(&layout);
        assert!(
            loose
                .iter()
                .any(|f| f.level == Level::Fail && f.detail.contains("keys/token-signing.seed")),
            "{loose:?}"
        );
    }
}
