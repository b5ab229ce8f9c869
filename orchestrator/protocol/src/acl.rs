//! Who may publish and subscribe to what: the subjects table as data.
//!
//! The NATS server configuration is rendered from [`permissions`], and ARCHITECTURE.md's
//! subjects table is checked against [`subjects_table`], so the documented table, the code and
//! the running server cannot drift apart.

use crate::name::{AgentName, Principal};
use crate::subject::stream;

/// An identity that connects to NATS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    /// The orchestrator: plans, approvals, token minting, command dispatch.
    Orchestrator,
    /// The audit writer: the only consumer of the `AUDIT` stream that writes the log.
    AuditWriter,
    /// The notify gateway: the only identity that talks to chat platforms.
    Gateway,
    /// Provisioning: creates streams and consumers at start-up, then disconnects.
    Admin,
    /// Reads the server's system events (`$SYS.>`, in the system account) for the anomaly rules.
    Monitor,
    /// The egress proxy: publishes its refusals as audit events, nothing else.
    Egress,
    /// One agent.
    Agent(AgentName),
}

impl Identity {
    /// The principal name (also the NATS user name, the inbox prefix and the `audit.<name>`).
    pub fn principal(&self) -> Principal {
        match self {
            Identity::Orchestrator => Principal::orchestrator(),
            Identity::AuditWriter => Principal::audit(),
            Identity::Gateway => Principal::gateway(),
            Identity::Admin => principal_const("admin"),
            Identity::Monitor => principal_const("monitor"),
            Identity::Egress => principal_const("egress"),
            Identity::Agent(a) => a.into(),
        }
    }

    /// Whether the identity lives in the system account.
    pub fn in_system_account(&self) -> bool {
        matches!(self, Identity::Monitor)
    }
}

fn principal_const(s: &'static str) -> Principal {
    // The literals above satisfy the principal grammar; the fallback is unreachable.
    Principal::new(s).unwrap_or_else(|_grammar| Principal::orchestrator())
}

/// `allow_responses` for a responder: it may publish to the reply subject of a request it
/// received, at most `max` times, within `expires_secs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Responses {
    /// Replies per request.
    pub max: u32,
    /// Seconds the permission lasts.
    pub expires_secs: u32,
}

/// One identity's permissions. Both publish and subscribe always have an allow list (an omitted
/// dimension would be unrestricted in NATS).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Permissions {
    /// Subjects it may publish to.
    pub publish_allow: Vec<String>,
    /// Subjects it may never publish to, even if an allow entry matches.
    pub publish_deny: Vec<String>,
    /// Subjects it may subscribe to.
    pub subscribe_allow: Vec<String>,
    /// Subjects it may never subscribe to.
    pub subscribe_deny: Vec<String>,
    /// Reply permission for responders.
    pub allow_responses: Option<Responses>,
}

fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| (*x).to_owned()).collect()
}

/// JetStream administration a service identity may never perform (streams and consumers are
/// created by the provisioning identity only). Redundant with the allow lists, kept as an
/// explicit second layer.
const JS_ADMIN: &[&str] = &[
    "$JS.API.STREAM.CREATE.>",
    "$JS.API.STREAM.UPDATE.>",
    "$JS.API.STREAM.DELETE.>",
    "$JS.API.STREAM.PURGE.>",
    "$JS.API.STREAM.MSG.DELETE.>",
    "$JS.API.CONSUMER.CREATE.>",
    "$JS.API.CONSUMER.DURABLE.CREATE.>",
    "$JS.API.CONSUMER.DELETE.>",
];

/// The agent that watches the audit stream and raises alerts. Besides an agent's own subjects it
/// may read the `AUDIT` stream through its own durable consumer and publish its alerts.
pub const ANOMALY_AGENT: &str = "audit-anomaly";

/// JetStream API subjects a durable pull consumer's owner needs, and nothing more.
fn pull_consumer(stream: &str, consumer: &str) -> Vec<String> {
    vec![
        format!("$JS.API.STREAM.INFO.{stream}"),
        format!("$JS.API.CONSUMER.INFO.{stream}.{consumer}"),
        format!("$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}"),
        format!("$JS.ACK.{stream}.{consumer}.>"),
    ]
}

/// The permissions of one identity.
pub fn permissions(id: &Identity) -> Permissions {
    let inbox = format!("{}.>", crate::Subject::inbox_prefix(&id.principal()));
    match id {
        Identity::Orchestrator => {
            let mut publish = s(&[
                "cmd.*",
                "chat.out.*",
                "plan.proposed.*",
                "audit.orchestrator",
            ]);
            publish.extend(pull_consumer(stream::CHAT_IN, stream::CHAT_IN_CONSUMER));
            publish.extend(pull_consumer(stream::ALERTS, stream::ALERTS_CONSUMER));
            Permissions {
                publish_allow: publish,
                publish_deny: s(JS_ADMIN),
                subscribe_allow: vec![inbox, "status.*".to_owned()],
                subscribe_deny: Vec::new(),
                allow_responses: None,
            }
        }
        Identity::AuditWriter => Permissions {
            publish_allow: pull_consumer(stream::AUDIT, stream::AUDIT_WRITER_CONSUMER),
            publish_deny: s(JS_ADMIN),
            subscribe_allow: vec![inbox],
            subscribe_deny: Vec::new(),
            allow_responses: None,
        },
        Identity::Gateway => {
            let mut publish = s(&["chat.in.*", "chat.decision.*", "audit.gateway"]);
            // One outbound consumer per channel (`out-<channel>`).
            publish.extend(pull_consumer(stream::CHAT_OUT, "*"));
            Permissions {
                publish_allow: publish,
                publish_deny: s(JS_ADMIN),
                subscribe_allow: vec![inbox],
                subscribe_deny: Vec::new(),
                allow_responses: None,
            }
        }
        Identity::Admin => Permissions {
            publish_allow: s(&["$JS.API.>"]),
            publish_deny: Vec::new(),
            subscribe_allow: vec![inbox],
            subscribe_deny: Vec::new(),
            allow_responses: None,
        },
        Identity::Monitor => Permissions {
            publish_allow: Vec::new(),
            publish_deny: s(&[">"]),
            subscribe_allow: s(&["$SYS.>"]),
            subscribe_deny: Vec::new(),
            allow_responses: None,
        },
        Identity::Egress => Permissions {
            publish_allow: s(&["audit.egress"]),
            publish_deny: s(&["$JS.>"]),
            subscribe_allow: vec![inbox],
            subscribe_deny: Vec::new(),
            allow_responses: None,
        },
        Identity::Agent(a) if a.as_str() == ANOMALY_AGENT => {
            let mut publish = vec![
                format!("audit.{a}"),
                format!("status.{a}"),
                format!("alert.{a}"),
            ];
            publish.extend(pull_consumer(stream::AUDIT, stream::AUDIT_ANOMALY_CONSUMER));
            let mut deny = s(&["cmd.>", "_INBOX_orchestrator.>"]);
            deny.extend(s(JS_ADMIN));
            Permissions {
                publish_allow: publish,
                publish_deny: deny,
                subscribe_allow: vec![format!("cmd.{a}"), inbox],
                subscribe_deny: s(&["_INBOX_orchestrator.>", "_INBOX.>"]),
                allow_responses: Some(Responses {
                    max: 1,
                    expires_secs: 60,
                }),
            }
        }
        Identity::Agent(a) => Permissions {
            publish_allow: vec![format!("audit.{a}"), format!("status.{a}")],
            publish_deny: s(&["cmd.>", "$JS.>", "_INBOX_orchestrator.>"]),
            subscribe_allow: vec![format!("cmd.{a}"), inbox],
            subscribe_deny: s(&["_INBOX_orchestrator.>", "$JS.>", "_INBOX.>"]),
            allow_responses: Some(Responses {
                max: 1,
                expires_secs: 60,
            }),
        },
    }
}

/// One row of the subjects table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubjectRow {
    /// Subject pattern.
    pub subject: &'static str,
    /// Body type.
    pub body: &'static str,
    /// Who publishes.
    pub publishers: &'static str,
    /// Who receives.
    pub receivers: &'static str,
    /// Core NATS or a JetStream stream.
    pub transport: &'static str,
}

/// The subjects table (rendered into ARCHITECTURE.md; a test keeps the two equal).
pub fn subjects_table() -> Vec<SubjectRow> {
    vec![
        SubjectRow {
            subject: "chat.in.<channel>",
            body: "ChatIn",
            publishers: "gateway",
            receivers: "orchestrator",
            transport: "JetStream CHAT_IN (work queue)",
        },
        SubjectRow {
            subject: "chat.decision.<channel>",
            body: "ChatDecision",
            publishers: "gateway",
            receivers: "orchestrator",
            transport: "JetStream CHAT_IN (work queue)",
        },
        SubjectRow {
            subject: "chat.out.<channel>",
            body: "ChatOut",
            publishers: "orchestrator",
            receivers: "gateway",
            transport: "JetStream CHAT_OUT (work queue, consumer out-<channel>)",
        },
        SubjectRow {
            subject: "plan.proposed.<channel>",
            body: "PlanMessage",
            publishers: "orchestrator",
            receivers: "gateway",
            transport: "JetStream CHAT_OUT (work queue, consumer out-<channel>)",
        },
        SubjectRow {
            subject: "cmd.<agent>",
            body: "AgentRequest",
            publishers: "orchestrator",
            receivers: "that agent only",
            transport: "core request/reply",
        },
        SubjectRow {
            subject: "_INBOX_orchestrator.> (reply)",
            body: "AgentReply",
            publishers: "the agent that received the request, once (allow_responses max 1)",
            receivers: "orchestrator",
            transport: "core",
        },
        SubjectRow {
            subject: "status.<agent>",
            body: "Status",
            publishers: "that agent only",
            receivers: "orchestrator",
            transport: "core",
        },
        SubjectRow {
            subject: "audit.<principal>",
            body: "AuditEvent",
            publishers: "that principal only",
            receivers: "audit writer; the audit-anomaly agent (read-only consumer)",
            transport: "JetStream AUDIT (limits, deny delete/purge, Nats-Msg-Id = event id)",
        },
        SubjectRow {
            subject: "alert.<agent>",
            body: "AlertMessage",
            publishers: "the audit-anomaly agent only",
            receivers: "orchestrator (durable consumer `orchestrator-alerts`)",
            transport: "JetStream ALERTS (work queue, Nats-Msg-Id = alert id)",
        },
        SubjectRow {
            subject: "_INBOX_<principal>.>",
            body: "replies, JetStream acks",
            publishers: "responders, the server",
            receivers: "that principal only",
            transport: "core",
        },
    ]
}

/// Renders [`subjects_table`] as the markdown table in ARCHITECTURE.md.
pub fn subjects_table_markdown() -> String {
    let mut out = String::from(
        "| subject | body | published by | received by | transport |\n|---|---|---|---|---|\n",
    );
    for r in subjects_table() {
        out.push_str(&format!(
            "| `{}` | `{}` | {} | {} | {} |\n",
            r.subject, r.body, r.publishers, r.receivers, r.transport
        ));
    }
    out
}

/// Renders every identity's permissions as a markdown table (also in ARCHITECTURE.md).
pub fn permissions_markdown(agent_example: &AgentName) -> String {
    let ids = [
        Identity::Orchestrator,
        Identity::AuditWriter,
        Identity::Gateway,
        Identity::Admin,
        Identity::Monitor,
        Identity::Egress,
        Identity::Agent(agent_example.clone()),
        Identity::Agent(AgentName::new(ANOMALY_AGENT).unwrap_or_else(|_| agent_example.clone())),
    ];
    let mut out = String::from(
        "| identity | may publish | may not publish | may subscribe | may not subscribe | replies |\n|---|---|---|---|---|---|\n",
    );
    let list = |v: &[String]| {
        if v.is_empty() {
            "none".to_owned()
        } else {
            v.iter()
                .map(|x| format!("`{x}`"))
                .collect::<Vec<_>>()
                .join(", ")
        }
    };
    for id in ids {
        let p = permissions(&id);
        let replies = p.allow_responses.map_or("no".to_owned(), |r| {
            format!("{} per request, {} s", r.max, r.expires_secs)
        });
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} |\n",
            id.principal(),
            list(&p.publish_allow),
            list(&p.publish_deny),
            list(&p.subscribe_allow),
            list(&p.subscribe_deny),
            replies
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_deny_entry_shadows_an_allow_entry() {
        // Deny wins in NATS: a deny that covers an allowed subject silently breaks a service.
        let covers = |pattern: &str, subject: &str| {
            let p: Vec<&str> = pattern.split('.').collect();
            let s: Vec<&str> = subject.split('.').collect();
            for (i, tok) in p.iter().enumerate() {
                match *tok {
                    ">" => return s.len() > i,
                    "*" => {
                        if s.get(i).is_none() {
                            return false;
                        }
                    }
                    t => {
                        if s.get(i) != Some(&t) {
                            return false;
                        }
                    }
                }
            }
            p.len() == s.len()
        };
        let ids = [
            Identity::Orchestrator,
            Identity::AuditWriter,
            Identity::Gateway,
            Identity::Admin,
            Identity::Monitor,
            Identity::Egress,
            Identity::Agent(AgentName::new("hue").unwrap()),
            Identity::Agent(AgentName::new(ANOMALY_AGENT).unwrap()),
        ];
        for id in ids {
            let p = permissions(&id);
            for allow in &p.publish_allow {
                for deny in &p.publish_deny {
                    assert!(
                        !covers(deny, allow),
                        "{id:?}: publish deny {deny} shadows {allow}"
                    );
                }
            }
            for allow in &p.subscribe_allow {
                for deny in &p.subscribe_deny {
                    assert!(
                        !covers(deny, allow),
                        "{id:?}: subscribe deny {deny} shadows {allow}"
                    );
                }
            }
        }
    }

    #[test]
    fn agents_may_touch_only_their_own_subjects() {
        let hue = AgentName::new("hue").unwrap();
        let p = permissions(&Identity::Agent(hue));
        assert_eq!(p.publish_allow, vec!["audit.hue", "status.hue"]);
        assert_eq!(p.subscribe_allow, vec!["cmd.hue", "_INBOX_hue.>"]);
        assert_eq!(
            p.allow_responses,
            Some(Responses {
                max: 1,
                expires_secs: 60
            })
        );
        for id in [
            Identity::Orchestrator,
            Identity::AuditWriter,
            Identity::Gateway,
            Identity::Admin,
            Identity::Monitor,
        ] {
            let p = permissions(&id);
            assert!(
                !p.subscribe_allow.is_empty(),
                "{id:?} needs a subscribe allow list"
            );
            assert!(
                !p.publish_allow.is_empty() || p.publish_deny == vec![">"],
                "{id:?} needs a publish allow list or a full deny"
            );
        }
    }
}
