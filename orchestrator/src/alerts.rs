//! Alerts and quarantine.
//!
//! An alert arrives on `alert.<agent>` through the `ALERTS` stream (durable: it waits while the
//! orchestrator is down; only the audit-anomaly agent may publish there, and its envelope must
//! name it as the sender). It is stored once (by its message id),
//! audited (`alert_raised`, as the orchestrator saw it) and shown to the owner named by
//! `alerts_to` with **Quarantine agent** / **Dismiss** buttons (MAC'd payloads bound to the
//! alert's digest, that chat and that user).
//!
//! Quarantine records the agent (from then on the executor refuses to mint its tokens), stops
//! it through [`AgentControl`](crate::service::AgentControl) if one was given, audits
//! `agent_quarantined` and `alert_decided`, and offers **Release**. Release lifts the
//! quarantine, starts the agent again and audits `agent_released`. Dismiss audits
//! `alert_decided`. Every button works once.

use protocol::acl::ANOMALY_AGENT;
use protocol::message::{AlertMessage, AuditEvent, Button, ChatOut, ChatRef};
use protocol::{
    AgentName, ChatUser, CorrelationId, Envelope, MessageId, Principal, Route, Subject,
};

use crate::approval::{self, Binding, Choice, DecisionRefusal, Payload};
use crate::render;
use crate::service::{Handled, Shared};
use crate::store::{AlertRecord, AlertState};

fn digest_of(alert: &protocol::message::Alert) -> protocol::message::Digest {
    use sha2::{Digest as _, Sha256};
    let value = serde_json::to_value(alert).unwrap_or(serde_json::Value::Null);
    let mut h = Sha256::new();
    h.update(b"assistant-alert-v1\0");
    h.update(protocol::args::canonical_json(&value));
    protocol::message::Digest(h.finalize().into())
}

fn buttons(shared: &Shared, alert: &AlertRecord, choices: &[(Choice, &str)]) -> Vec<Button> {
    let target = &shared.config.alerts_to;
    let binding = Binding {
        subject: &alert.digest,
        chat: &target.chat,
        user: &target.user,
    };
    choices
        .iter()
        .map(|(choice, label)| Button {
            label: (*label).to_owned(),
            payload: approval::encode_payload(&shared.mac, *choice, alert.id.as_bytes(), &binding),
        })
        .collect()
}

/// Handles one message from the `ALERTS` stream. False: it could not be stored, so it should
/// come again; true: handled (or refused for good).
pub(crate) async fn on_alert(shared: &Shared, message: &async_nats::Message) -> bool {
    let Some(Route::Alert(publisher)) = Subject::route(message.subject.as_str()) else {
        return true;
    };
    if publisher.as_str() != ANOMALY_AGENT {
        tracing::warn!(%publisher, "alert from an agent that may not raise alerts ignored");
        return true;
    }
    let envelope = match Envelope::<AlertMessage>::decode(&message.payload) {
        Ok(e) => e,
        Err(e) => {
            tracing::warn!(code = e.code(), error = %e, "undecodable alert ignored");
            return true;
        }
    };
    if envelope.sender != Principal::from(&publisher) {
        tracing::warn!(sender = %envelope.sender, "alert whose sender is not its publisher ignored");
        return true;
    }
    let AlertMessage::Raised(alert) = envelope.body;
    let agent = alert
        .subject
        .as_ref()
        .and_then(|p| AgentName::new(p.as_str()).ok())
        .filter(|a| shared.catalog.agent(a).is_some());
    let record = AlertRecord {
        id: envelope.id,
        correlation_id: envelope.correlation_id,
        rule: alert.rule.clone(),
        severity: alert.severity,
        agent: agent.clone(),
        summary: render::clean_line(&alert.summary, protocol::message::MAX_LINE),
        digest: digest_of(&alert),
        state: AlertState::Open,
        raised_at: shared.now(),
        decided_by: None,
    };
    let fresh = match shared.store(|s| s.insert_alert(&record)) {
        Ok(fresh) => fresh,
        Err(e) => {
            tracing::error!(error = %e, "alert not stored");
            return false;
        }
    };
    if !fresh {
        // Seen before: only a redelivery after a crash between storing and acknowledging
        // gets here. Its post goes again (the outbox de-duplicates by key within its window);
        // a decided alert is left alone.
        match shared.store(|s| s.alert(record.id)) {
            Ok(Some(stored)) if stored.state == AlertState::Open => {}
            _ => return true,
        }
    } else {
        let _ = shared
            .audit(record.correlation_id, AuditEvent::AlertRaised { alert })
            .await;
    }
    let quarantined = match &agent {
        Some(a) => shared.store(|s| s.is_quarantined(a)).unwrap_or(false),
        None => false,
    };
    let choices: &[(Choice, &str)] = if agent.is_some() && !quarantined {
        &[
            (Choice::Quarantine, "Quarantine agent"),
            (Choice::Dismiss, "Dismiss"),
        ]
    } else {
        &[(Choice::Dismiss, "Dismiss")]
    };
    let target = &shared.config.alerts_to;
    let out = render::alert_message(&record, &target.chat, buttons(shared, &record, choices));
    let key = out.key.clone();
    let _ = shared
        .send(record.correlation_id, ChatOut::Post(out), key)
        .await;
    true
}

/// Handles a press of an alert's button (quarantine, dismiss, release).
pub(crate) async fn on_alert_decision(
    shared: &Shared,
    payload: &Payload,
    by: &ChatUser,
    in_chat: &ChatRef,
    source: MessageId,
    incoming: CorrelationId,
) -> Result<(), Handled> {
    let id = MessageId::from_bytes(payload.id);
    let Some(alert) = shared.store(|s| s.alert(id))? else {
        return shared
            .refuse(incoming, in_chat, by, DecisionRefusal::Unknown, source)
            .await;
    };
    let target = shared.config.alerts_to.clone();
    let binding = Binding {
        subject: &alert.digest,
        chat: &target.chat,
        user: &target.user,
    };
    let correlation = alert.correlation_id;
    if let Err(refusal) = approval::verify_payload(&shared.mac, payload, &binding) {
        return shared
            .refuse(correlation, in_chat, by, refusal, source)
            .await;
    }
    if in_chat != &target.chat {
        return shared
            .refuse(
                correlation,
                in_chat,
                by,
                DecisionRefusal::ForeignChat,
                source,
            )
            .await;
    }
    if by != &target.user {
        return shared
            .refuse(correlation, in_chat, by, DecisionRefusal::WrongUser, source)
            .await;
    }
    let now = shared.now();
    let key = format!("alert-{}", alert.id);
    match payload.choice {
        Choice::Dismiss => {
            if !shared
                .store(|s| s.decide_alert(id, AlertState::Open, AlertState::Dismissed, by, now))?
            {
                return shared
                    .refuse(
                        correlation,
                        in_chat,
                        by,
                        DecisionRefusal::AlreadyDecided,
                        source,
                    )
                    .await;
            }
            shared
                .audit(
                    correlation,
                    AuditEvent::AlertDecided {
                        alert: id,
                        decision: "dismiss".to_owned(),
                        by: by.clone(),
                    },
                )
                .await?;
            let out = render::alert_update(
                &alert,
                &target.chat,
                &format!("Dismissed by {by}."),
                Vec::new(),
            );
            shared
                .send(
                    correlation,
                    ChatOut::Update(out),
                    format!("{key}-dismissed"),
                )
                .await
        }
        Choice::Quarantine => {
            let Some(agent) = alert.agent.clone() else {
                return shared
                    .refuse(correlation, in_chat, by, DecisionRefusal::Tampered, source)
                    .await;
            };
            if !shared
                .store(|s| s.decide_alert(id, AlertState::Open, AlertState::Quarantined, by, now))?
            {
                return shared
                    .refuse(
                        correlation,
                        in_chat,
                        by,
                        DecisionRefusal::AlreadyDecided,
                        source,
                    )
                    .await;
            }
            // Tokens are refused from the moment this commits.
            shared.store(|s| s.quarantine(&agent, Some(id), now))?;
            shared
                .audit(
                    correlation,
                    AuditEvent::AlertDecided {
                        alert: id,
                        decision: "quarantine".to_owned(),
                        by: by.clone(),
                    },
                )
                .await?;
            shared
                .audit(
                    correlation,
                    AuditEvent::AgentQuarantined {
                        agent: agent.clone(),
                        alert: Some(id),
                    },
                )
                .await?;
            let stopped = match &shared.control {
                Some(control) => control.stop(&agent).await,
                None => Err("no sandbox control in this deployment".to_owned()),
            };
            let outcome = match stopped {
                Ok(()) => format!(
                    "Quarantined {agent} ({by}): its container is stopped and its tokens are refused until you release it."
                ),
                Err(e) => {
                    tracing::warn!(%agent, error = %e, "quarantined agent could not be stopped");
                    format!(
                        "Quarantined {agent} ({by}): its tokens are refused until you release it, but its container could not be stopped ({}).",
                        render::clean_line(&e, 200)
                    )
                }
            };
            let release = buttons(shared, &alert, &[(Choice::Release, "Release agent")]);
            let out = render::alert_update(&alert, &target.chat, &outcome, release);
            shared
                .send(
                    correlation,
                    ChatOut::Update(out),
                    format!("{key}-quarantined"),
                )
                .await
        }
        Choice::Release => {
            let Some(agent) = alert.agent.clone() else {
                return shared
                    .refuse(correlation, in_chat, by, DecisionRefusal::Tampered, source)
                    .await;
            };
            if !shared.store(|s| {
                s.decide_alert(id, AlertState::Quarantined, AlertState::Released, by, now)
            })? {
                return shared
                    .refuse(
                        correlation,
                        in_chat,
                        by,
                        DecisionRefusal::AlreadyDecided,
                        source,
                    )
                    .await;
            }
            shared.store(|s| s.release(&agent))?;
            shared
                .audit(
                    correlation,
                    AuditEvent::AgentReleased {
                        agent: agent.clone(),
                        by: by.to_string(),
                    },
                )
                .await?;
            let started = match &shared.control {
                Some(control) => control.start(&agent).await,
                None => Ok(()),
            };
            let outcome = match started {
                Ok(()) => format!("Released {agent} ({by}): its tokens are accepted again."),
                Err(e) => format!(
                    "Released {agent} ({by}): its tokens are accepted again, but it could not be started ({}).",
                    render::clean_line(&e, 200)
                ),
            };
            let out = render::alert_update(&alert, &target.chat, &outcome, Vec::new());
            shared
                .send(correlation, ChatOut::Update(out), format!("{key}-released"))
                .await
        }
        Choice::Approve | Choice::Reject => {
            shared
                .refuse(correlation, in_chat, by, DecisionRefusal::Tampered, source)
                .await
        }
    }
}
