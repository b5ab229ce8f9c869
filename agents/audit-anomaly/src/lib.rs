//! The audit-anomaly agent: deterministic rules over the audit stream that raise alerts.
//!
//! What it does:
//! - [`rules`] is the pure engine: one audit event (with the principal its NATS subject names
//!   and the time the stream stored it) in, alerts out. The rules, their codes and defaults
//!   are listed there; [`settings`] configures every window and threshold.
//! - [`consume`] is its shell, run as the agent's background work
//!   ([`agent_runtime::Agent::background`]): it pulls the `AUDIT` stream through the agent's
//!   own durable consumer (`audit-anomaly`, provisioned; bound, never created), audits each
//!   alert as `alert_raised` and publishes it on `alert.audit-anomaly` as
//!   `AlertMessage::Raised` with the same id, saves its state ([`store`]) and acknowledges each
//!   event only after that, so a restart resumes where it stopped without losing or doubling
//!   an alert.
//! - As an agent it offers one read-only action, `alerts.recent`, so it is a normal agent with
//!   heartbeats, tokens and its own sandbox.
//!
//! What it does not do: it never acts on an alert (the orchestrator asks the user whether to
//! quarantine an agent), never writes the audit log (it publishes events like every service),
//! reads nothing but the audit stream, and reaches nothing but NATS. Events only the host sees
//! (nats-server's violations, restarts, image digests) are fed into the stream by the
//! orchestrator's watchers (`orchestrator::watch`).
#![forbid(unsafe_code)]

pub mod consume;
pub mod rules;
pub mod settings;
pub mod store;

use std::collections::VecDeque;
use std::sync::{Arc, LazyLock, Mutex};

use agent_runtime::{ActionError, Agent, AgentContext, AgentError, BackgroundContext, Outcome};
use protocol::manifest::CheckedManifest;
use protocol::{ActionName, AgentName};
use serde::Deserialize;
use serde_json::{Value, json};

pub use settings::Settings;
use store::RecordedAlert;

/// The agent's name.
pub const NAME: &str = protocol::acl::ANOMALY_AGENT;

static AGENT_NAME: LazyLock<Option<AgentName>> = LazyLock::new(|| AgentName::new(NAME).ok());

/// The alerts `alerts.recent` lists, oldest first (shared by the watcher and the handler).
#[derive(Debug, Default)]
pub struct Recent {
    alerts: VecDeque<RecordedAlert>,
}

impl Recent {
    /// Replaces the list.
    pub fn replace(&mut self, alerts: VecDeque<RecordedAlert>) {
        self.alerts = alerts;
    }

    /// The newest `limit` alerts, newest first.
    pub fn newest(&self, limit: usize) -> Vec<RecordedAlert> {
        self.alerts.iter().rev().take(limit).cloned().collect()
    }
}

/// The agent.
#[derive(Debug)]
pub struct AuditAnomaly {
    watch: consume::WatchSettings,
    recent: Arc<Mutex<Recent>>,
}

/// `alerts.recent` arguments.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
struct AlertsRecent {
    #[serde(default = "default_limit")]
    limit: usize,
}

fn default_limit() -> usize {
    10
}

fn alerts_recent(recent: &Recent, args: &Value) -> Result<Outcome, ActionError> {
    let args: AlertsRecent = serde_json::from_value(args.clone())
        .map_err(|e| ActionError::new("invalid_arguments", e.to_string()))?;
    let alerts = recent.newest(args.limit.clamp(1, 50));
    let summary = match alerts.first() {
        None => "No alerts so far.".to_owned(),
        Some(latest) => format!(
            "{} recent alert(s); the latest ({}, {}): {}",
            alerts.len(),
            latest.alert.rule.as_str(),
            match latest.alert.severity {
                protocol::message::Severity::Warning => "warning",
                protocol::message::Severity::Critical => "critical",
            },
            latest.alert.summary
        ),
    };
    let list: Vec<Value> = alerts
        .iter()
        .map(|r| {
            json!({
                "id": r.id,
                "raised_at": r.raised_at,
                "rule": r.alert.rule,
                "severity": r.alert.severity,
                "subject": r.alert.subject,
                "summary": r.alert.summary,
            })
        })
        .collect();
    Ok(Outcome {
        summary,
        data: json!({ "alerts": list }),
    })
}

impl Agent for AuditAnomaly {
    type Settings = Settings;
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");

    fn manifest() -> Option<&'static CheckedManifest> {
        catalog::get(AGENT_NAME.as_ref()?)
    }

    fn new(settings: Settings, _ctx: &AgentContext) -> Result<Self, AgentError> {
        let rules = settings
            .rules()
            .map_err(|m| AgentError::new("settings_invalid", m))?;
        Ok(AuditAnomaly {
            watch: consume::WatchSettings {
                rules,
                batch: usize::from(settings.batch),
                recent_alerts: usize::from(settings.recent_alerts),
            },
            recent: Arc::default(),
        })
    }

    async fn handle(&self, action: &ActionName, args: &Value) -> Result<Outcome, ActionError> {
        match action.as_str() {
            "alerts.recent" => {
                let recent = self.recent.lock().map_err(|_poisoned| {
                    ActionError::new("agent_error", "alert list unavailable")
                })?;
                alerts_recent(&recent, args)
            }
            other => Err(ActionError::new(
                "unknown_action",
                format!("no action {other}"),
            )),
        }
    }

    fn background(
        &self,
        ctx: BackgroundContext,
    ) -> Option<impl Future<Output = Result<(), AgentError>> + Send> {
        Some(consume::run(
            ctx,
            self.watch.clone(),
            Arc::clone(&self.recent),
        ))
    }
}
