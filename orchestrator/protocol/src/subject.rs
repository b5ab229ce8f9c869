//! NATS subjects, built only from validated names.
//!
//! A [`Subject`] can only come from one of the family constructors below, each of which takes
//! validated names, so a subject can never carry a wildcard or an extra token injected from user
//! text. Incoming subjects are parsed back into a [`Route`] (a closed enum) before anything is
//! dispatched on them.

use std::fmt;

use crate::name::{AgentName, ChannelName, Principal};

/// A concrete NATS subject (never a wildcard).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Subject(String);

impl Subject {
    /// `chat.in.<channel>`: a user's message, from the gateway to the orchestrator.
    pub fn chat_in(channel: &ChannelName) -> Self {
        Subject(format!("chat.in.{channel}"))
    }
    /// `chat.decision.<channel>`: a button press or approval reply, gateway to orchestrator.
    pub fn chat_decision(channel: &ChannelName) -> Self {
        Subject(format!("chat.decision.{channel}"))
    }
    /// `chat.out.<channel>`: a message for the user, orchestrator to gateway.
    pub fn chat_out(channel: &ChannelName) -> Self {
        Subject(format!("chat.out.{channel}"))
    }
    /// `plan.proposed.<channel>`: an explained plan awaiting approval, orchestrator to gateway.
    pub fn plan_proposed(channel: &ChannelName) -> Self {
        Subject(format!("plan.proposed.{channel}"))
    }
    /// `cmd.<agent>`: a command (request) to one agent, from the orchestrator only. The reply goes
    /// to the request's reply subject, once.
    pub fn command(agent: &AgentName) -> Self {
        Subject(format!("cmd.{agent}"))
    }
    /// `status.<agent>`: an agent's heartbeat.
    pub fn status(agent: &AgentName) -> Self {
        Subject(format!("status.{agent}"))
    }
    /// `audit.<principal>`: an audit event from one service or agent (JetStream stream `AUDIT`).
    pub fn audit(principal: &Principal) -> Self {
        Subject(format!("audit.{principal}"))
    }
    /// `alert.<agent>`: an alert raised by a watching agent (the audit-anomaly agent).
    pub fn alert(agent: &AgentName) -> Self {
        Subject(format!("alert.{agent}"))
    }

    /// The inbox prefix a principal must use for its own request replies (`_INBOX_<principal>`),
    /// so no identity can read another's replies.
    pub fn inbox_prefix(principal: &Principal) -> String {
        format!("_INBOX_{principal}")
    }

    /// The subject text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Parses an incoming subject into its family and validated parameter.
    pub fn route(s: &str) -> Option<Route> {
        let mut parts = s.split('.');
        let first = parts.next()?;
        let (second, third) = (parts.next(), parts.next());
        let fourth = parts.next();
        if fourth.is_some() {
            return None;
        }
        match (first, second, third) {
            ("chat", Some("in"), Some(c)) => ChannelName::new(c).ok().map(Route::ChatIn),
            ("chat", Some("decision"), Some(c)) => {
                ChannelName::new(c).ok().map(Route::ChatDecision)
            }
            ("chat", Some("out"), Some(c)) => ChannelName::new(c).ok().map(Route::ChatOut),
            ("plan", Some("proposed"), Some(c)) => {
                ChannelName::new(c).ok().map(Route::PlanProposed)
            }
            ("cmd", Some(a), None) => AgentName::new(a).ok().map(Route::Command),
            ("status", Some(a), None) => AgentName::new(a).ok().map(Route::Status),
            ("audit", Some(p), None) => Principal::new(p).ok().map(Route::Audit),
            ("alert", Some(a), None) => AgentName::new(a).ok().map(Route::Alert),
            _ => None,
        }
    }
}

impl fmt::Display for Subject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Subject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Subject({})", self.0)
    }
}

impl From<Subject> for String {
    fn from(s: Subject) -> String {
        s.0
    }
}

/// A parsed incoming subject: one variant per subject family.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// `chat.in.<channel>`
    ChatIn(ChannelName),
    /// `chat.decision.<channel>`
    ChatDecision(ChannelName),
    /// `chat.out.<channel>`
    ChatOut(ChannelName),
    /// `plan.proposed.<channel>`
    PlanProposed(ChannelName),
    /// `cmd.<agent>`
    Command(AgentName),
    /// `status.<agent>`
    Status(AgentName),
    /// `audit.<principal>`
    Audit(Principal),
    /// `alert.<agent>`
    Alert(AgentName),
}

/// JetStream stream and consumer names. Streams are created by the provisioning identity only.
pub mod stream {
    /// Audit events from every principal (`audit.>`), limits retention, deny delete/purge.
    pub const AUDIT: &str = "AUDIT";
    /// The audit writer's durable pull consumer on [`AUDIT`].
    pub const AUDIT_WRITER_CONSUMER: &str = "audit-writer";
    /// Inbound chat (`chat.in.>`, `chat.decision.>`), work queue for the orchestrator.
    pub const CHAT_IN: &str = "CHAT_IN";
    /// The orchestrator's durable pull consumer on [`CHAT_IN`].
    pub const CHAT_IN_CONSUMER: &str = "orchestrator";
    /// Outbound chat (`chat.out.>`, `plan.proposed.>`), work queue with one consumer per
    /// channel (see [`chat_out_consumer`]).
    pub const CHAT_OUT: &str = "CHAT_OUT";
    /// The audit-anomaly agent's durable pull consumer on [`AUDIT`] (read-only watching).
    pub const AUDIT_ANOMALY_CONSUMER: &str = "audit-anomaly";
    /// Alerts (`alert.>`), work queue for the orchestrator: an alert raised while the
    /// orchestrator is down waits for it.
    pub const ALERTS: &str = "ALERTS";
    /// The orchestrator's durable pull consumer on [`ALERTS`].
    pub const ALERTS_CONSUMER: &str = "orchestrator-alerts";
    /// The chat channels that have an outbound consumer.
    pub const CHANNELS: &[&str] = &["terminal", "telegram", "slack", "imessage", "web"];

    /// The durable pull consumer on [`CHAT_OUT`] for one channel: `out-<channel>`, filtered to
    /// `chat.out.<channel>` and `plan.proposed.<channel>`.
    pub fn chat_out_consumer(channel: &str) -> String {
        format!("out-{channel}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constructors_and_routes_round_trip() {
        let hue = AgentName::new("hue").unwrap_or_else(|e| panic!("{e}"));
        let tg = ChannelName::new("telegram").unwrap_or_else(|e| panic!("{e}"));
        let subjects = [
            Subject::chat_in(&tg),
            Subject::chat_decision(&tg),
            Subject::chat_out(&tg),
            Subject::plan_proposed(&tg),
            Subject::command(&hue),
            Subject::status(&hue),
            Subject::audit(&Principal::orchestrator()),
            Subject::alert(&hue),
        ];
        let out: Vec<String> = subjects
            .iter()
            .map(|s| format!("{s} -> {:?}", Subject::route(s.as_str())))
            .collect();
        expect_test::expect![[r#"
            chat.in.telegram -> Some(ChatIn(ChannelName("telegram")))
            chat.decision.telegram -> Some(ChatDecision(ChannelName("telegram")))
            chat.out.telegram -> Some(ChatOut(ChannelName("telegram")))
            plan.proposed.telegram -> Some(PlanProposed(ChannelName("telegram")))
            cmd.hue -> Some(Command(AgentName("hue")))
            status.hue -> Some(Status(AgentName("hue")))
            audit.orchestrator -> Some(Audit(Principal("orchestrator")))
            alert.hue -> Some(Alert(AgentName("hue")))"#]]
        .assert_eq(&out.join("\n"));
    }

    #[test]
    fn routes_refuse_wildcards_and_extra_tokens() {
        for s in [
            "cmd.>",
            "cmd.*",
            "cmd.hue.x",
            "cmd",
            "cmd.",
            "chat.in.tele gram",
            "audit.>",
            "chat.sideways.telegram",
            "cmd.orchestrator",
            "",
            "status.HUE",
        ] {
            assert_eq!(Subject::route(s), None, "{s}");
        }
    }
}
