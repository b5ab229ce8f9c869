//! The orchestrator's state: one SQLite database (WAL, `synchronous=FULL`), the only database
//! the orchestrator writes.
//!
//! It holds plans (the fixed plan JSON and its hash, who asked, where, the state), approvals
//! (id, short code, expiry, decision), steps (state, token nonce, result), alerts, quarantined
//! agents and the scheduler's last runs. Every state change is one transaction and checks the
//! state it starts from (`UPDATE ... WHERE state = <from>`), so two racing decisions cannot
//! both win and a restart loses no pending approval.
//!
//! ```sql
//! plans(id PK, source UNIQUE, correlation_id, plan_json, plan_hash, requested_by, channel,
//!       chat_id, state, created_at, updated_at)
//! approvals(id PK, plan_id UNIQUE -> plans, short_code, expires_at, decided_by, decision,
//!           decided_at)
//! steps(plan_id -> plans, idx, state, jti, code, summary, updated_at, PK(plan_id, idx))
//! alerts(id PK, correlation_id, rule, severity, agent, summary, digest, state, raised_at,
//!        decided_by, decided_at)
//! quarantine(agent PK, since, alert)
//! scheduler(job PK, day, state, updated_at)
//! ```
//!
//! What it does not do: it decides nothing (the state machine is `approval`), and it never
//! stores secrets or tokens (only a token's nonce).

use std::path::{Path, PathBuf};
use std::time::Duration;

use protocol::message::{ChatRef, Digest, ErrorCode, PlatformRef, Severity, Verdict};
use protocol::{
    AgentName, ApprovalId, ChannelName, ChatUser, CorrelationId, MessageId, PlanId, UnixMillis,
};
use rusqlite::{Connection, OptionalExtension as _, Transaction, params};
use thiserror::Error;

use crate::approval::{PlanState, StepState};
use crate::plan::Plan;

/// The schema version this build writes.
pub const SCHEMA_VERSION: i64 = 1;
/// Longest step summary stored, in bytes.
pub const MAX_STORED_SUMMARY: usize = 1024;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS plans (
    id TEXT PRIMARY KEY,
    source TEXT UNIQUE,
    correlation_id TEXT NOT NULL,
    plan_json TEXT NOT NULL,
    plan_hash TEXT NOT NULL,
    requested_by TEXT NOT NULL,
    channel TEXT NOT NULL,
    chat_id TEXT NOT NULL,
    state TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
) STRICT;
CREATE INDEX IF NOT EXISTS plans_by_state ON plans(state);
CREATE TABLE IF NOT EXISTS approvals (
    id TEXT PRIMARY KEY,
    plan_id TEXT NOT NULL UNIQUE REFERENCES plans(id),
    short_code TEXT NOT NULL,
    expires_at INTEGER NOT NULL,
    decided_by TEXT,
    decision TEXT,
    decided_at INTEGER
) STRICT;
CREATE INDEX IF NOT EXISTS approvals_by_code ON approvals(short_code);
CREATE TABLE IF NOT EXISTS steps (
    plan_id TEXT NOT NULL REFERENCES plans(id),
    idx INTEGER NOT NULL,
    state TEXT NOT NULL,
    jti TEXT,
    code TEXT,
    summary TEXT,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (plan_id, idx)
) STRICT;
CREATE TABLE IF NOT EXISTS alerts (
    id TEXT PRIMARY KEY,
    correlation_id TEXT NOT NULL,
    rule TEXT NOT NULL,
    severity TEXT NOT NULL,
    agent TEXT,
    summary TEXT NOT NULL,
    digest TEXT NOT NULL,
    state TEXT NOT NULL,
    raised_at INTEGER NOT NULL,
    decided_by TEXT,
    decided_at INTEGER
) STRICT;
CREATE TABLE IF NOT EXISTS quarantine (
    agent TEXT PRIMARY KEY,
    since INTEGER NOT NULL,
    alert TEXT
) STRICT;
CREATE TABLE IF NOT EXISTS scheduler (
    job TEXT PRIMARY KEY,
    day TEXT NOT NULL,
    state TEXT NOT NULL,
    updated_at INTEGER NOT NULL
) STRICT;
";

/// Why a store operation failed.
#[derive(Debug, Error)]
pub enum StoreError {
    /// SQLite failed.
    #[error("state database: {op}: {source}")]
    Sqlite {
        /// What was being done.
        op: &'static str,
        /// The cause.
        #[source]
        source: rusqlite::Error,
    },
    /// The database directory could not be prepared.
    #[error("state database directory {path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A stored value does not parse (or the plan no longer matches its hash).
    #[error("state database holds an invalid {what}: {detail}")]
    Corrupt {
        /// Which value.
        what: &'static str,
        /// Details.
        detail: String,
    },
    /// A state change from a state that does not allow it.
    #[error("{what} {id}: cannot go to {to} from its current state")]
    Transition {
        /// Plan or step.
        what: &'static str,
        /// Which.
        id: String,
        /// The target state.
        to: &'static str,
    },
    /// A database written by a newer build.
    #[error("state database schema version {0} is newer than this build's {SCHEMA_VERSION}")]
    NewerSchema(i64),
}

impl StoreError {
    /// Stable code.
    pub fn code(&self) -> &'static str {
        match self {
            StoreError::Sqlite { .. } => "state_db_error",
            StoreError::Io { .. } => "state_db_unavailable",
            StoreError::Corrupt { .. } => "state_db_corrupt",
            StoreError::Transition { .. } => "state_transition_refused",
            StoreError::NewerSchema(_) => "state_db_newer_schema",
        }
    }
}

fn sql(op: &'static str) -> impl FnOnce(rusqlite::Error) -> StoreError {
    move |source| StoreError::Sqlite { op, source }
}

fn corrupt(what: &'static str, detail: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt {
        what,
        detail: detail.to_string(),
    }
}

/// A new approval to ask for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewApproval {
    /// Its id.
    pub id: ApprovalId,
    /// After this it can no longer be approved.
    pub expires_at: UnixMillis,
}

/// A plan to record.
#[derive(Debug, Clone)]
pub struct NewPlan<'a> {
    /// Its id.
    pub plan_id: PlanId,
    /// The chat message it answers (at most one plan per message, so a redelivered message
    /// finds its plan instead of making another).
    pub source: MessageId,
    /// The request's correlation id.
    pub correlation_id: CorrelationId,
    /// The plan.
    pub plan: &'a Plan,
    /// Who asked.
    pub requested_by: &'a ChatUser,
    /// Where.
    pub chat: &'a ChatRef,
    /// The approval asked for, or `None` when policy lets the plan run at once (it is then
    /// recorded as `executing`).
    pub approval: Option<NewApproval>,
    /// Now.
    pub now: UnixMillis,
}

/// An approval as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApprovalRecord {
    /// Its id.
    pub id: ApprovalId,
    /// The short code for typed decisions.
    pub short_code: String,
    /// After this it can no longer be approved.
    pub expires_at: UnixMillis,
    /// Who decided.
    pub decided_by: Option<ChatUser>,
    /// What they decided.
    pub decision: Option<Verdict>,
    /// When.
    pub decided_at: Option<UnixMillis>,
}

/// A step as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepRecord {
    /// Its index in the plan.
    pub index: u16,
    /// Where it is.
    pub state: StepState,
    /// The token nonce (hex), once an intent exists.
    pub jti: Option<String>,
    /// The code, if it did not succeed.
    pub code: Option<ErrorCode>,
    /// One line about the result (agent text, bounded and cleaned; untrusted).
    pub summary: Option<String>,
}

/// A plan as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct PlanRecord {
    /// Its id.
    pub plan_id: PlanId,
    /// The request's correlation id.
    pub correlation_id: CorrelationId,
    /// The fixed plan.
    pub plan: Plan,
    /// Its hash (checked against the plan on every load).
    pub plan_hash: Digest,
    /// Who asked.
    pub requested_by: ChatUser,
    /// Where.
    pub chat: ChatRef,
    /// Where it is.
    pub state: PlanState,
    /// Recorded at.
    pub created_at: UnixMillis,
    /// Last change.
    pub updated_at: UnixMillis,
    /// The approval, if one was asked for.
    pub approval: Option<ApprovalRecord>,
    /// The steps, in order.
    pub steps: Vec<StepRecord>,
}

/// Whether a plan was recorded or already existed for its source message.
#[derive(Debug, Clone, PartialEq)]
pub enum Inserted {
    /// Recorded now.
    New(PlanRecord),
    /// The source message already has this plan (a redelivery).
    Existing(PlanRecord),
}

/// What became of an alert.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AlertState {
    /// Shown, not decided.
    Open,
    /// Its agent was quarantined.
    Quarantined,
    /// Dismissed.
    Dismissed,
    /// Its agent was quarantined and has been released.
    Released,
}

impl AlertState {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            AlertState::Open => "open",
            AlertState::Quarantined => "quarantined",
            AlertState::Dismissed => "dismissed",
            AlertState::Released => "released",
        }
    }

    fn parse(s: &str) -> Option<AlertState> {
        [
            AlertState::Open,
            AlertState::Quarantined,
            AlertState::Dismissed,
            AlertState::Released,
        ]
        .into_iter()
        .find(|a| a.as_str() == s)
    }
}

/// An alert as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlertRecord {
    /// The alert message's id.
    pub id: MessageId,
    /// Its correlation id.
    pub correlation_id: CorrelationId,
    /// The rule that fired.
    pub rule: ErrorCode,
    /// How bad.
    pub severity: Severity,
    /// The agent it is about, if it names one of ours.
    pub agent: Option<AgentName>,
    /// One line (cleaned).
    pub summary: String,
    /// Digest of the alert as received (what decision payloads bind).
    pub digest: Digest,
    /// What became of it.
    pub state: AlertState,
    /// When it arrived.
    pub raised_at: UnixMillis,
    /// Who decided.
    pub decided_by: Option<ChatUser>,
}

/// A quarantined agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quarantined {
    /// The agent.
    pub agent: AgentName,
    /// Since when.
    pub since: UnixMillis,
    /// The alert that led to it.
    pub alert: Option<MessageId>,
}

/// The state of one scheduled job's last run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastRun {
    /// The local day (`YYYY-MM-DD`) of the last run claimed.
    pub day: String,
    /// `running` (claimed, not finished: never retried) or `sent`.
    pub state: String,
}

/// The state database.
#[derive(Debug)]
pub struct Store {
    conn: Connection,
    path: PathBuf,
}

fn severity_str(s: Severity) -> &'static str {
    match s {
        Severity::Warning => "warning",
        Severity::Critical => "critical",
    }
}

fn verdict_str(v: Verdict) -> &'static str {
    match v {
        Verdict::Approve => "approve",
        Verdict::Reject => "reject",
    }
}

impl Store {
    /// Opens (creating if needed) the database at `path`: its directory 0700, the file 0600,
    /// WAL, `synchronous=FULL`, foreign keys on, schema created or checked.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        use std::os::unix::fs::PermissionsExt as _;
        let io = |source| StoreError::Io {
            path: path.to_path_buf(),
            source,
        };
        if let Some(dir) = path
            .parent()
            .filter(|d| !d.as_os_str().is_empty() && !d.exists())
        {
            std::fs::create_dir_all(dir).map_err(io)?;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(io)?;
        }
        let conn = Connection::open(path).map_err(sql("open"))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
        conn.busy_timeout(Duration::from_secs(5))
            .map_err(sql("busy_timeout"))?;
        let mode: String = conn
            .pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))
            .map_err(sql("journal_mode"))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(corrupt("journal mode", mode));
        }
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(sql("synchronous"))?;
        conn.pragma_update(None, "foreign_keys", true)
            .map_err(sql("foreign_keys"))?;
        let version: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(sql("user_version"))?;
        if version > SCHEMA_VERSION {
            return Err(StoreError::NewerSchema(version));
        }
        conn.execute_batch(SCHEMA).map_err(sql("create schema"))?;
        conn.pragma_update(None, "user_version", SCHEMA_VERSION)
            .map_err(sql("user_version"))?;
        Ok(Store {
            conn,
            path: path.to_path_buf(),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn tx(&mut self) -> Result<Transaction<'_>, StoreError> {
        self.conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(sql("begin"))
    }

    /// Records a plan (with its approval and pending steps), unless its source message
    /// already has one. `next_code` draws short codes until one is free among the chat's open
    /// approvals.
    pub fn insert_plan(
        &mut self,
        new: &NewPlan<'_>,
        mut next_code: impl FnMut() -> String,
    ) -> Result<Inserted, StoreError> {
        if let Some(existing) = self.plan_by_source(new.source)? {
            return Ok(Inserted::Existing(existing));
        }
        let plan_json = serde_json::to_string(new.plan).map_err(|e| corrupt("plan", e))?;
        let hash = new.plan.hash();
        let state = if new.approval.is_some() {
            PlanState::Proposed
        } else {
            PlanState::Executing
        };
        let tx = self.tx()?;
        tx.execute(
            "INSERT INTO plans (id, source, correlation_id, plan_json, plan_hash, requested_by,
                channel, chat_id, state, created_at, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?10)",
            params![
                new.plan_id.to_string(),
                new.source.to_string(),
                new.correlation_id.to_string(),
                plan_json,
                hash.to_string(),
                new.requested_by.as_str(),
                new.chat.channel.as_str(),
                new.chat.chat_id.as_str(),
                state.as_str(),
                new.now.0,
            ],
        )
        .map_err(sql("insert plan"))?;
        for i in 0..new.plan.steps.len() {
            tx.execute(
                "INSERT INTO steps (plan_id, idx, state, updated_at) VALUES (?1, ?2, ?3, ?4)",
                params![
                    new.plan_id.to_string(),
                    i as i64,
                    StepState::Pending.as_str(),
                    new.now.0
                ],
            )
            .map_err(sql("insert step"))?;
        }
        if let Some(approval) = &new.approval {
            let mut code = next_code();
            // Bounded: 10 000 codes and at most a handful of open approvals per chat.
            for _attempt in 0..64 {
                let taken: bool = tx
                    .query_row(
                        "SELECT EXISTS (SELECT 1 FROM approvals a JOIN plans p ON p.id = a.plan_id
                          WHERE a.short_code = ?1 AND p.channel = ?2 AND p.chat_id = ?3
                            AND p.state = 'proposed')",
                        params![code, new.chat.channel.as_str(), new.chat.chat_id.as_str()],
                        |r| r.get(0),
                    )
                    .map_err(sql("check short code"))?;
                if !taken {
                    break;
                }
                code = next_code();
            }
            tx.execute(
                "INSERT INTO approvals (id, plan_id, short_code, expires_at) VALUES (?1, ?2, ?3, ?4)",
                params![
                    approval.id.to_string(),
                    new.plan_id.to_string(),
                    code,
                    approval.expires_at.0
                ],
            )
            .map_err(sql("insert approval"))?;
        }
        tx.commit().map_err(sql("commit plan"))?;
        let record = self
            .plan(new.plan_id)?
            .ok_or_else(|| corrupt("plan", "vanished after insert"))?;
        Ok(Inserted::New(record))
    }

    /// The plan recorded for a source message.
    pub fn plan_by_source(&self, source: MessageId) -> Result<Option<PlanRecord>, StoreError> {
        let id: Option<String> = self
            .conn
            .query_row(
                "SELECT id FROM plans WHERE source = ?1",
                params![source.to_string()],
                |r| r.get(0),
            )
            .optional()
            .map_err(sql("plan by source"))?;
        match id {
            Some(id) => self.plan(parse_id(&id, PlanId::parse, "plan id")?),
            None => Ok(None),
        }
    }

    /// One plan with its approval and steps.
    pub fn plan(&self, plan_id: PlanId) -> Result<Option<PlanRecord>, StoreError> {
        let row = self
            .conn
            .query_row(
                "SELECT correlation_id, plan_json, plan_hash, requested_by, channel, chat_id,
                        state, created_at, updated_at
                 FROM plans WHERE id = ?1",
                params![plan_id.to_string()],
                |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, String>(3)?,
                        r.get::<_, String>(4)?,
                        r.get::<_, String>(5)?,
                        r.get::<_, String>(6)?,
                        r.get::<_, i64>(7)?,
                        r.get::<_, i64>(8)?,
                    ))
                },
            )
            .optional()
            .map_err(sql("load plan"))?;
        let Some((corr, plan_json, hash, by, channel, chat_id, state, created, updated)) = row
        else {
            return Ok(None);
        };
        let plan: Plan = serde_json::from_str(&plan_json).map_err(|e| corrupt("plan", e))?;
        let plan_hash = plan.hash();
        if plan_hash.to_string() != hash {
            return Err(corrupt(
                "plan",
                format!("plan {plan_id} does not match its recorded hash"),
            ));
        }
        let approval = self
            .conn
            .query_row(
                "SELECT id, short_code, expires_at, decided_by, decision, decided_at
                 FROM approvals WHERE plan_id = ?1",
                params![plan_id.to_string()],
                |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, i64>(2)?,
                        r.get::<_, Option<String>>(3)?,
                        r.get::<_, Option<String>>(4)?,
                        r.get::<_, Option<i64>>(5)?,
                    ))
                },
            )
            .optional()
            .map_err(sql("load approval"))?
            .map(|(id, code, expires, by, decision, at)| {
                Ok::<_, StoreError>(ApprovalRecord {
                    id: parse_id(&id, ApprovalId::parse, "approval id")?,
                    short_code: code,
                    expires_at: UnixMillis(expires),
                    decided_by: by
                        .map(|u| ChatUser::new(u).map_err(|e| corrupt("user", e)))
                        .transpose()?,
                    decision: decision
                        .map(|d| match d.as_str() {
                            "approve" => Ok(Verdict::Approve),
                            "reject" => Ok(Verdict::Reject),
                            other => Err(corrupt("decision", other)),
                        })
                        .transpose()?,
                    decided_at: at.map(UnixMillis),
                })
            })
            .transpose()?;
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT idx, state, jti, code, summary FROM steps WHERE plan_id = ?1 ORDER BY idx",
            )
            .map_err(sql("load steps"))?;
        let rows = stmt
            .query_map(params![plan_id.to_string()], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, Option<String>>(2)?,
                    r.get::<_, Option<String>>(3)?,
                    r.get::<_, Option<String>>(4)?,
                ))
            })
            .map_err(sql("load steps"))?;
        let mut steps = Vec::new();
        for row in rows {
            let (idx, state, jti, code, summary) = row.map_err(sql("load steps"))?;
            steps.push(StepRecord {
                index: u16::try_from(idx).map_err(|e| corrupt("step index", e))?,
                state: StepState::parse(&state).ok_or_else(|| corrupt("step state", &state))?,
                jti,
                code: code
                    .map(|c| ErrorCode::new(c).map_err(|e| corrupt("step code", e)))
                    .transpose()?,
                summary,
            });
        }
        if steps.len() != plan.steps.len() {
            return Err(corrupt(
                "steps",
                format!("plan {plan_id} has {} step rows", steps.len()),
            ));
        }
        Ok(Some(PlanRecord {
            plan_id,
            correlation_id: parse_id(&corr, CorrelationId::parse, "correlation id")?,
            plan,
            plan_hash,
            requested_by: ChatUser::new(by).map_err(|e| corrupt("user", e))?,
            chat: ChatRef {
                channel: ChannelName::new(channel).map_err(|e| corrupt("channel", e))?,
                chat_id: PlatformRef::new(chat_id).map_err(|e| corrupt("chat id", e))?,
            },
            state: PlanState::parse(&state).ok_or_else(|| corrupt("plan state", &state))?,
            created_at: UnixMillis(created),
            updated_at: UnixMillis(updated),
            approval,
            steps,
        }))
    }

    /// The plan an approval asks about.
    pub fn plan_by_approval(&self, approval: ApprovalId) -> Result<Option<PlanRecord>, StoreError> {
        let id: Option<String> = self
            .conn
            .query_row(
                "SELECT plan_id FROM approvals WHERE id = ?1",
                params![approval.to_string()],
                |r| r.get(0),
            )
            .optional()
            .map_err(sql("plan by approval"))?;
        match id {
            Some(id) => self.plan(parse_id(&id, PlanId::parse, "plan id")?),
            None => Ok(None),
        }
    }

    /// The newest plan in `chat` whose approval has `code`.
    pub fn plan_by_code(
        &self,
        chat: &ChatRef,
        code: &str,
    ) -> Result<Option<PlanRecord>, StoreError> {
        let id: Option<String> = self
            .conn
            .query_row(
                "SELECT p.id FROM approvals a JOIN plans p ON p.id = a.plan_id
                  WHERE a.short_code = ?1 AND p.channel = ?2 AND p.chat_id = ?3
                  ORDER BY p.created_at DESC, p.rowid DESC LIMIT 1",
                params![code, chat.channel.as_str(), chat.chat_id.as_str()],
                |r| r.get(0),
            )
            .optional()
            .map_err(sql("plan by code"))?;
        match id {
            Some(id) => self.plan(parse_id(&id, PlanId::parse, "plan id")?),
            None => Ok(None),
        }
    }

    fn plan_ids_where(
        &self,
        op: &'static str,
        query: &str,
        p: impl rusqlite::Params,
    ) -> Result<Vec<PlanId>, StoreError> {
        let mut stmt = self.conn.prepare_cached(query).map_err(sql(op))?;
        let ids = stmt
            .query_map(p, |r| r.get::<_, String>(0))
            .map_err(sql(op))?
            .collect::<Result<Vec<String>, _>>()
            .map_err(sql(op))?;
        ids.iter()
            .map(|id| parse_id(id, PlanId::parse, "plan id"))
            .collect()
    }

    /// Proposed plans whose approval has expired at `now`.
    pub fn expired_proposals(&self, now: UnixMillis) -> Result<Vec<PlanRecord>, StoreError> {
        let ids = self.plan_ids_where(
            "expired proposals",
            "SELECT p.id FROM plans p JOIN approvals a ON a.plan_id = p.id
              WHERE p.state = 'proposed' AND a.expires_at <= ?1 ORDER BY p.created_at LIMIT 256",
            params![now.0],
        )?;
        self.load_all(ids)
    }

    /// Plans that were approved or executing: what a restart must look at.
    pub fn unfinished(&self) -> Result<Vec<PlanRecord>, StoreError> {
        let ids = self.plan_ids_where(
            "unfinished plans",
            "SELECT id FROM plans WHERE state IN ('approved', 'executing') ORDER BY created_at",
            [],
        )?;
        self.load_all(ids)
    }

    fn load_all(&self, ids: Vec<PlanId>) -> Result<Vec<PlanRecord>, StoreError> {
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(p) = self.plan(id)? {
                out.push(p);
            }
        }
        Ok(out)
    }

    fn move_plan(
        tx: &Transaction<'_>,
        plan_id: PlanId,
        from: PlanState,
        to: PlanState,
        now: UnixMillis,
    ) -> Result<bool, StoreError> {
        if !from.may_become(to) {
            return Err(StoreError::Transition {
                what: "plan",
                id: plan_id.to_string(),
                to: to.as_str(),
            });
        }
        let changed = tx
            .execute(
                "UPDATE plans SET state = ?1, updated_at = ?2 WHERE id = ?3 AND state = ?4",
                params![to.as_str(), now.0, plan_id.to_string(), from.as_str()],
            )
            .map_err(sql("update plan state"))?;
        Ok(changed == 1)
    }

    /// `proposed` → `approved`/`rejected`, recording the decision. Returns whether this call
    /// made the change (false: someone else decided first, or it is no longer proposed).
    pub fn decide(
        &mut self,
        plan_id: PlanId,
        verdict: Verdict,
        by: &ChatUser,
        now: UnixMillis,
    ) -> Result<bool, StoreError> {
        let to = match verdict {
            Verdict::Approve => PlanState::Approved,
            Verdict::Reject => PlanState::Rejected,
        };
        let tx = self.tx()?;
        if !Self::move_plan(&tx, plan_id, PlanState::Proposed, to, now)? {
            return Ok(false);
        }
        tx.execute(
            "UPDATE approvals SET decided_by = ?1, decision = ?2, decided_at = ?3 WHERE plan_id = ?4",
            params![by.as_str(), verdict_str(verdict), now.0, plan_id.to_string()],
        )
        .map_err(sql("record decision"))?;
        tx.commit().map_err(sql("commit decision"))?;
        Ok(true)
    }

    /// `from` (proposed or approved) → `expired`. Returns whether this call made the change.
    pub fn expire(
        &mut self,
        plan_id: PlanId,
        from: PlanState,
        now: UnixMillis,
    ) -> Result<bool, StoreError> {
        let tx = self.tx()?;
        let changed = Self::move_plan(&tx, plan_id, from, PlanState::Expired, now)?;
        tx.commit().map_err(sql("commit expiry"))?;
        Ok(changed)
    }

    /// `approved` → `executing`. Returns whether this call made the change.
    pub fn start_execution(
        &mut self,
        plan_id: PlanId,
        now: UnixMillis,
    ) -> Result<bool, StoreError> {
        let tx = self.tx()?;
        let changed =
            Self::move_plan(&tx, plan_id, PlanState::Approved, PlanState::Executing, now)?;
        tx.commit().map_err(sql("commit start"))?;
        Ok(changed)
    }

    /// `executing` → a final state. Returns whether this call made the change.
    pub fn finish(
        &mut self,
        plan_id: PlanId,
        outcome: PlanState,
        now: UnixMillis,
    ) -> Result<bool, StoreError> {
        let tx = self.tx()?;
        let changed = Self::move_plan(&tx, plan_id, PlanState::Executing, outcome, now)?;
        tx.commit().map_err(sql("commit finish"))?;
        Ok(changed)
    }

    /// Records a step's intent (`pending` → `intent`, with its token nonce). With `start`, the
    /// same transaction also moves the plan from `approved` to `executing` and returns false,
    /// recording nothing, if the plan was not `approved` (someone else started it).
    pub fn step_intent(
        &mut self,
        plan_id: PlanId,
        index: u16,
        jti: &str,
        start: bool,
        now: UnixMillis,
    ) -> Result<bool, StoreError> {
        let tx = self.tx()?;
        if start && !Self::move_plan(&tx, plan_id, PlanState::Approved, PlanState::Executing, now)?
        {
            return Ok(false);
        }
        let changed = tx
            .execute(
                "UPDATE steps SET state = 'intent', jti = ?1, updated_at = ?2
                  WHERE plan_id = ?3 AND idx = ?4 AND state = 'pending'",
                params![jti, now.0, plan_id.to_string(), i64::from(index)],
            )
            .map_err(sql("record intent"))?;
        if changed != 1 {
            return Err(StoreError::Transition {
                what: "step",
                id: format!("{plan_id}/{index}"),
                to: StepState::Intent.as_str(),
            });
        }
        tx.commit().map_err(sql("commit intent"))?;
        Ok(true)
    }

    /// Moves one step (only along the step table); fails if the step is not in a state that
    /// may become `to`.
    pub fn set_step(
        &mut self,
        plan_id: PlanId,
        index: u16,
        to: StepState,
        result: StepUpdate<'_>,
        now: UnixMillis,
    ) -> Result<(), StoreError> {
        let tx = self.tx()?;
        let current: Option<String> = tx
            .query_row(
                "SELECT state FROM steps WHERE plan_id = ?1 AND idx = ?2",
                params![plan_id.to_string(), i64::from(index)],
                |r| r.get(0),
            )
            .optional()
            .map_err(sql("load step"))?;
        let refused = || StoreError::Transition {
            what: "step",
            id: format!("{plan_id}/{index}"),
            to: to.as_str(),
        };
        let current = current
            .and_then(|s| StepState::parse(&s))
            .ok_or_else(refused)?;
        if !current.may_become(to) {
            return Err(refused());
        }
        let summary = result.summary.map(|s| cut(s, MAX_STORED_SUMMARY));
        tx.execute(
            "UPDATE steps SET state = ?1, jti = COALESCE(?2, jti), code = ?3, summary = ?4,
                    updated_at = ?5
              WHERE plan_id = ?6 AND idx = ?7",
            params![
                to.as_str(),
                result.jti,
                result.code.map(ErrorCode::as_str),
                summary,
                now.0,
                plan_id.to_string(),
                i64::from(index)
            ],
        )
        .map_err(sql("update step"))?;
        tx.commit().map_err(sql("commit step"))?;
        Ok(())
    }

    /// Records an alert; false if its id is already stored.
    pub fn insert_alert(&mut self, a: &AlertRecord) -> Result<bool, StoreError> {
        let changed = self
            .conn
            .execute(
                "INSERT OR IGNORE INTO alerts (id, correlation_id, rule, severity, agent, summary,
                     digest, state, raised_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                params![
                    a.id.to_string(),
                    a.correlation_id.to_string(),
                    a.rule.as_str(),
                    severity_str(a.severity),
                    a.agent.as_ref().map(AgentName::as_str),
                    a.summary,
                    a.digest.to_string(),
                    a.state.as_str(),
                    a.raised_at.0,
                ],
            )
            .map_err(sql("insert alert"))?;
        Ok(changed == 1)
    }

    /// One alert.
    pub fn alert(&self, id: MessageId) -> Result<Option<AlertRecord>, StoreError> {
        let row = self
            .conn
            .query_row(
                "SELECT correlation_id, rule, severity, agent, summary, digest, state, raised_at,
                        decided_by
                 FROM alerts WHERE id = ?1",
                params![id.to_string()],
                |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, Option<String>>(3)?,
                        r.get::<_, String>(4)?,
                        r.get::<_, String>(5)?,
                        r.get::<_, String>(6)?,
                        r.get::<_, i64>(7)?,
                        r.get::<_, Option<String>>(8)?,
                    ))
                },
            )
            .optional()
            .map_err(sql("load alert"))?;
        let Some((corr, rule, severity, agent, summary, digest, state, raised, by)) = row else {
            return Ok(None);
        };
        let digest_value = serde_json::Value::String(digest);
        Ok(Some(AlertRecord {
            id,
            correlation_id: parse_id(&corr, CorrelationId::parse, "correlation id")?,
            rule: ErrorCode::new(rule).map_err(|e| corrupt("alert rule", e))?,
            severity: match severity.as_str() {
                "warning" => Severity::Warning,
                "critical" => Severity::Critical,
                other => return Err(corrupt("alert severity", other)),
            },
            agent: agent
                .map(|a| AgentName::new(a).map_err(|e| corrupt("alert agent", e)))
                .transpose()?,
            summary,
            digest: serde_json::from_value(digest_value).map_err(|e| corrupt("alert digest", e))?,
            state: AlertState::parse(&state).ok_or_else(|| corrupt("alert state", &state))?,
            raised_at: UnixMillis(raised),
            decided_by: by
                .map(|u| ChatUser::new(u).map_err(|e| corrupt("user", e)))
                .transpose()?,
        }))
    }

    /// Moves an alert from `from` to `to`, recording who; false if it was not in `from`.
    pub fn decide_alert(
        &mut self,
        id: MessageId,
        from: AlertState,
        to: AlertState,
        by: &ChatUser,
        now: UnixMillis,
    ) -> Result<bool, StoreError> {
        let changed = self
            .conn
            .execute(
                "UPDATE alerts SET state = ?1, decided_by = ?2, decided_at = ?3
                  WHERE id = ?4 AND state = ?5",
                params![
                    to.as_str(),
                    by.as_str(),
                    now.0,
                    id.to_string(),
                    from.as_str()
                ],
            )
            .map_err(sql("decide alert"))?;
        Ok(changed == 1)
    }

    /// Quarantines an agent; false if it already was.
    pub fn quarantine(
        &mut self,
        agent: &AgentName,
        alert: Option<MessageId>,
        now: UnixMillis,
    ) -> Result<bool, StoreError> {
        let changed = self
            .conn
            .execute(
                "INSERT OR IGNORE INTO quarantine (agent, since, alert) VALUES (?1, ?2, ?3)",
                params![agent.as_str(), now.0, alert.map(|a| a.to_string())],
            )
            .map_err(sql("quarantine"))?;
        Ok(changed == 1)
    }

    /// Releases an agent; false if it was not quarantined.
    pub fn release(&mut self, agent: &AgentName) -> Result<bool, StoreError> {
        let changed = self
            .conn
            .execute(
                "DELETE FROM quarantine WHERE agent = ?1",
                params![agent.as_str()],
            )
            .map_err(sql("release"))?;
        Ok(changed == 1)
    }

    /// Whether an agent is quarantined.
    pub fn is_quarantined(&self, agent: &AgentName) -> Result<bool, StoreError> {
        self.conn
            .query_row(
                "SELECT EXISTS (SELECT 1 FROM quarantine WHERE agent = ?1)",
                params![agent.as_str()],
                |r| r.get(0),
            )
            .map_err(sql("check quarantine"))
    }

    /// Every quarantined agent.
    pub fn quarantined(&self) -> Result<Vec<Quarantined>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT agent, since, alert FROM quarantine ORDER BY since")
            .map_err(sql("list quarantine"))?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, Option<String>>(2)?,
                ))
            })
            .map_err(sql("list quarantine"))?;
        let mut out = Vec::new();
        for row in rows {
            let (agent, since, alert) = row.map_err(sql("list quarantine"))?;
            out.push(Quarantined {
                agent: AgentName::new(agent).map_err(|e| corrupt("agent", e))?,
                since: UnixMillis(since),
                alert: alert
                    .map(|a| parse_id(&a, MessageId::parse, "alert id"))
                    .transpose()?,
            });
        }
        Ok(out)
    }

    /// The last run a job claimed.
    pub fn last_run(&self, job: &str) -> Result<Option<LastRun>, StoreError> {
        self.conn
            .query_row(
                "SELECT day, state FROM scheduler WHERE job = ?1",
                params![job],
                |r| {
                    Ok(LastRun {
                        day: r.get(0)?,
                        state: r.get(1)?,
                    })
                },
            )
            .optional()
            .map_err(sql("last run"))
    }

    /// Claims `day` for `job` (durably, before the run starts), unless that day or a later one
    /// was already claimed. Returns whether this call claimed it. A claimed day is never run
    /// again, even if the run did not finish.
    pub fn claim_run(&mut self, job: &str, day: &str, now: UnixMillis) -> Result<bool, StoreError> {
        let changed = self
            .conn
            .execute(
                "INSERT INTO scheduler (job, day, state, updated_at) VALUES (?1, ?2, 'running', ?3)
                 ON CONFLICT (job) DO UPDATE SET day = excluded.day, state = 'running',
                        updated_at = excluded.updated_at
                  WHERE scheduler.day < excluded.day",
                params![job, day, now.0],
            )
            .map_err(sql("claim run"))?;
        Ok(changed == 1)
    }

    /// Marks the claimed run of `day` as finished.
    pub fn finish_run(&mut self, job: &str, day: &str, now: UnixMillis) -> Result<(), StoreError> {
        self.conn
            .execute(
                "UPDATE scheduler SET state = 'sent', updated_at = ?1 WHERE job = ?2 AND day = ?3",
                params![now.0, job, day],
            )
            .map_err(sql("finish run"))?;
        Ok(())
    }
}

/// What a step change records besides the state.
#[derive(Debug, Clone, Copy, Default)]
pub struct StepUpdate<'a> {
    /// The token nonce (kept if `None`).
    pub jti: Option<&'a str>,
    /// The code, if it did not succeed.
    pub code: Option<&'a ErrorCode>,
    /// One line about the result.
    pub summary: Option<&'a str>,
}

fn parse_id<T>(s: &str, parse: fn(&str) -> Option<T>, what: &'static str) -> Result<T, StoreError> {
    parse(s).ok_or_else(|| corrupt(what, s))
}

/// `s` cut to at most `max` bytes on a character boundary.
pub(crate) fn cut(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.get(..end).unwrap_or_default().to_owned()
}

#[cfg(test)]
mod tests {
    use protocol::message::Effect;
    use protocol::{ActionName, ChannelName};

    use super::*;
    use crate::plan::{PlanStep, PlannerKind};

    fn plan(n: usize) -> Plan {
        Plan {
            summary: "Test".to_owned(),
            steps: (0..n)
                .map(|i| PlanStep {
                    agent: AgentName::new("hue").unwrap(),
                    action: ActionName::new("light.set").unwrap(),
                    params: serde_json::json!({"light": format!("Light {i}"), "on": false}),
                    why: "because".to_owned(),
                    effect: Effect::Change,
                })
                .collect(),
            planner: PlannerKind::Routine("test".to_owned()),
            continue_on_failure: false,
        }
    }

    fn chat() -> ChatRef {
        ChatRef {
            channel: ChannelName::new("terminal").unwrap(),
            chat_id: PlatformRef::new("me").unwrap(),
        }
    }

    fn open() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("state/orchestrator.db")).unwrap();
        (dir, store)
    }

    fn insert(
        store: &mut Store,
        p: &Plan,
        source: MessageId,
        approval: Option<NewApproval>,
        code: &str,
    ) -> Inserted {
        let user = ChatUser::new("terminal:me").unwrap();
        let chat = chat();
        let code = code.to_owned();
        store
            .insert_plan(
                &NewPlan {
                    plan_id: PlanId::random(),
                    source,
                    correlation_id: CorrelationId::random(),
                    plan: p,
                    requested_by: &user,
                    chat: &chat,
                    approval,
                    now: UnixMillis(1_000),
                },
                || code.clone(),
            )
            .unwrap()
    }

    #[test]
    fn a_plan_survives_reopening_and_decisions_happen_once() {
        let (dir, mut store) = open();
        let p = plan(2);
        let source = MessageId::random();
        let approval = ApprovalId::random();
        let Inserted::New(rec) = insert(
            &mut store,
            &p,
            source,
            Some(NewApproval {
                id: approval,
                expires_at: UnixMillis(2_000),
            }),
            "1234",
        ) else {
            panic!("expected a new plan")
        };
        assert_eq!(rec.state, PlanState::Proposed);
        assert_eq!(rec.steps.len(), 2);
        // The same source message finds the same plan.
        let Inserted::Existing(again) = insert(&mut store, &p, source, None, "1") else {
            panic!("expected the existing plan")
        };
        assert_eq!(again.plan_id, rec.plan_id);
        drop(store);

        let mut store = Store::open(&dir.path().join("state/orchestrator.db")).unwrap();
        let loaded = store.plan_by_approval(approval).unwrap().unwrap();
        assert_eq!(loaded, rec);
        assert_eq!(loaded.approval.as_ref().unwrap().short_code, "1234");
        assert_eq!(
            store
                .plan_by_code(&chat(), "1234")
                .unwrap()
                .unwrap()
                .plan_id,
            rec.plan_id
        );
        let user = ChatUser::new("terminal:me").unwrap();
        assert!(
            store
                .decide(rec.plan_id, Verdict::Approve, &user, UnixMillis(1_500))
                .unwrap()
        );
        assert!(
            !store
                .decide(rec.plan_id, Verdict::Approve, &user, UnixMillis(1_501))
                .unwrap()
        );
        assert!(
            !store
                .decide(rec.plan_id, Verdict::Reject, &user, UnixMillis(1_502))
                .unwrap()
        );
        let decided = store.plan(rec.plan_id).unwrap().unwrap();
        assert_eq!(decided.state, PlanState::Approved);
        let a = decided.approval.unwrap();
        assert_eq!(
            (a.decision, a.decided_by, a.decided_at),
            (Some(Verdict::Approve), Some(user), Some(UnixMillis(1_500)))
        );
        assert_eq!(store.unfinished().unwrap().len(), 1);
        assert!(
            store
                .start_execution(rec.plan_id, UnixMillis(1_600))
                .unwrap()
        );
        assert!(
            !store
                .start_execution(rec.plan_id, UnixMillis(1_600))
                .unwrap()
        );
    }

    #[test]
    fn steps_move_only_along_the_table() {
        let (_dir, mut store) = open();
        let p = plan(2);
        let Inserted::New(rec) = insert(&mut store, &p, MessageId::random(), None, "1") else {
            panic!()
        };
        assert_eq!(rec.state, PlanState::Executing);
        let id = rec.plan_id;
        let t = UnixMillis(5);
        let jti = "00".repeat(16);
        store
            .set_step(
                id,
                0,
                StepState::Intent,
                StepUpdate {
                    jti: Some(&jti),
                    ..Default::default()
                },
                t,
            )
            .unwrap();
        // Intent cannot go back to pending or jump to done.
        for bad in [StepState::Pending, StepState::Done, StepState::Skipped] {
            let e = store
                .set_step(id, 0, bad, StepUpdate::default(), t)
                .unwrap_err();
            assert_eq!(e.code(), "state_transition_refused");
        }
        store
            .set_step(id, 0, StepState::Dispatched, StepUpdate::default(), t)
            .unwrap();
        let long = "x".repeat(5_000);
        store
            .set_step(
                id,
                0,
                StepState::Done,
                StepUpdate {
                    summary: Some(&long),
                    ..Default::default()
                },
                t,
            )
            .unwrap();
        let code = ErrorCode::from_static("not_found");
        store
            .set_step(
                id,
                1,
                StepState::Skipped,
                StepUpdate {
                    code: Some(&code),
                    ..Default::default()
                },
                t,
            )
            .unwrap();
        assert!(
            store
                .set_step(id, 7, StepState::Intent, StepUpdate::default(), t)
                .is_err()
        );
        let rec = store.plan(id).unwrap().unwrap();
        assert_eq!(rec.steps[0].jti.as_deref(), Some(jti.as_str()));
        assert_eq!(
            rec.steps[0].summary.as_ref().unwrap().len(),
            MAX_STORED_SUMMARY
        );
        assert_eq!(rec.steps[1].state, StepState::Skipped);
        assert!(store.finish(id, PlanState::PartlyDone, t).unwrap());
        assert!(!store.finish(id, PlanState::Done, t).unwrap());
        assert_eq!(
            store.finish(id, PlanState::Approved, t).unwrap_err().code(),
            "state_transition_refused"
        );
    }

    #[test]
    fn the_first_intent_can_start_the_plan_in_the_same_transaction() {
        let (_dir, mut store) = open();
        let p = plan(2);
        let Inserted::New(rec) = insert(
            &mut store,
            &p,
            MessageId::random(),
            Some(NewApproval {
                id: ApprovalId::random(),
                expires_at: UnixMillis(9_999),
            }),
            "1",
        ) else {
            panic!()
        };
        let id = rec.plan_id;
        let me = ChatUser::new("terminal:me").unwrap();
        let jti = "ab".repeat(16);
        // Not approved yet: nothing is recorded.
        assert!(!store.step_intent(id, 0, &jti, true, UnixMillis(1)).unwrap());
        assert_eq!(
            store.plan(id).unwrap().unwrap().steps[0].state,
            StepState::Pending
        );
        assert!(
            store
                .decide(id, Verdict::Approve, &me, UnixMillis(2))
                .unwrap()
        );
        assert!(store.step_intent(id, 0, &jti, true, UnixMillis(3)).unwrap());
        let rec = store.plan(id).unwrap().unwrap();
        assert_eq!(
            (rec.state, rec.steps[0].state),
            (PlanState::Executing, StepState::Intent)
        );
        assert_eq!(rec.steps[0].jti.as_deref(), Some(jti.as_str()));
        // A second start loses; a second intent for the same step is refused.
        assert!(!store.step_intent(id, 1, &jti, true, UnixMillis(4)).unwrap());
        assert_eq!(
            store
                .step_intent(id, 0, &jti, false, UnixMillis(4))
                .unwrap_err()
                .code(),
            "state_transition_refused"
        );
        assert!(
            store
                .step_intent(id, 1, &jti, false, UnixMillis(4))
                .unwrap()
        );
    }

    #[test]
    fn a_tampered_plan_row_is_refused_on_load() {
        let (_dir, mut store) = open();
        let p = plan(1);
        let Inserted::New(rec) = insert(&mut store, &p, MessageId::random(), None, "1") else {
            panic!()
        };
        let json = serde_json::to_string(&plan(1))
            .unwrap()
            .replace("\"on\":false", "\"on\":true");
        store
            .conn
            .execute("UPDATE plans SET plan_json = ?1", params![json])
            .unwrap();
        assert_eq!(
            store.plan(rec.plan_id).unwrap_err().code(),
            "state_db_corrupt"
        );
    }

    #[test]
    fn short_codes_are_unique_among_open_approvals_of_a_chat() {
        let (_dir, mut store) = open();
        let p = plan(1);
        let mut codes = vec!["1111".to_owned(), "1111".to_owned(), "2222".to_owned()].into_iter();
        let user = ChatUser::new("terminal:me").unwrap();
        let chat = chat();
        let mut ids = Vec::new();
        for _ in 0..2 {
            let id = PlanId::random();
            store
                .insert_plan(
                    &NewPlan {
                        plan_id: id,
                        source: MessageId::random(),
                        correlation_id: CorrelationId::random(),
                        plan: &p,
                        requested_by: &user,
                        chat: &chat,
                        approval: Some(NewApproval {
                            id: ApprovalId::random(),
                            expires_at: UnixMillis(10),
                        }),
                        now: UnixMillis(1),
                    },
                    || codes.next().unwrap(),
                )
                .unwrap();
            ids.push(id);
        }
        let a = store.plan(ids[0]).unwrap().unwrap().approval.unwrap();
        let b = store.plan(ids[1]).unwrap().unwrap().approval.unwrap();
        assert_eq!(
            (a.short_code.as_str(), b.short_code.as_str()),
            ("1111", "2222")
        );
        assert_eq!(store.expired_proposals(UnixMillis(9)).unwrap().len(), 0);
        assert_eq!(store.expired_proposals(UnixMillis(10)).unwrap().len(), 2);
        assert!(
            store
                .expire(ids[0], PlanState::Proposed, UnixMillis(10))
                .unwrap()
        );
        assert!(
            !store
                .expire(ids[0], PlanState::Proposed, UnixMillis(10))
                .unwrap()
        );
    }

    #[test]
    fn quarantine_alerts_and_scheduler() {
        let (_dir, mut store) = open();
        let hue = AgentName::new("hue").unwrap();
        let alert = AlertRecord {
            id: MessageId::random(),
            correlation_id: CorrelationId::random(),
            rule: ErrorCode::from_static("token_rejections"),
            severity: Severity::Critical,
            agent: Some(hue.clone()),
            summary: "hue: 3 forged tokens".to_owned(),
            digest: Digest([9; 32]),
            state: AlertState::Open,
            raised_at: UnixMillis(7),
            decided_by: None,
        };
        assert!(store.insert_alert(&alert).unwrap());
        assert!(!store.insert_alert(&alert).unwrap());
        assert_eq!(store.alert(alert.id).unwrap().unwrap(), alert);
        let me = ChatUser::new("terminal:me").unwrap();
        assert!(
            store
                .decide_alert(
                    alert.id,
                    AlertState::Open,
                    AlertState::Quarantined,
                    &me,
                    UnixMillis(8)
                )
                .unwrap()
        );
        assert!(
            !store
                .decide_alert(
                    alert.id,
                    AlertState::Open,
                    AlertState::Dismissed,
                    &me,
                    UnixMillis(8)
                )
                .unwrap()
        );
        assert!(!store.is_quarantined(&hue).unwrap());
        assert!(
            store
                .quarantine(&hue, Some(alert.id), UnixMillis(8))
                .unwrap()
        );
        assert!(!store.quarantine(&hue, None, UnixMillis(9)).unwrap());
        assert!(store.is_quarantined(&hue).unwrap());
        assert_eq!(store.quarantined().unwrap()[0].alert, Some(alert.id));
        assert!(store.release(&hue).unwrap());
        assert!(!store.release(&hue).unwrap());

        assert_eq!(store.last_run("daily").unwrap(), None);
        assert!(
            store
                .claim_run("daily", "2026-11-20", UnixMillis(1))
                .unwrap()
        );
        assert!(
            !store
                .claim_run("daily", "2026-11-20", UnixMillis(2))
                .unwrap()
        );
        assert!(
            !store
                .claim_run("daily", "2026-11-19", UnixMillis(2))
                .unwrap()
        );
        store
            .finish_run("daily", "2026-11-20", UnixMillis(3))
            .unwrap();
        assert_eq!(
            store.last_run("daily").unwrap(),
            Some(LastRun {
                day: "2026-11-20".to_owned(),
                state: "sent".to_owned()
            })
        );
        assert!(
            store
                .claim_run("daily", "2026-11-21", UnixMillis(4))
                .unwrap()
        );
        assert_eq!(store.last_run("daily").unwrap().unwrap().state, "running");
    }

    #[test]
    fn the_database_is_private_and_durable() {
        use std::os::unix::fs::PermissionsExt as _;
        let (dir, store) = open();
        let mode = std::fs::metadata(store.path())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let dir_mode = std::fs::metadata(dir.path().join("state"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(dir_mode & 0o777, 0o700);
        let sync: i64 = store
            .conn
            .pragma_query_value(None, "synchronous", |r| r.get(0))
            .unwrap();
        assert_eq!(sync, 2, "synchronous=FULL");
    }
}
