//! Inbound: platform events to `chat.in.<channel>` / `chat.decision.<channel>`.
//!
//! What it does: [`decide`] is the pure, default-deny decision for one event (allowlisted
//! sender in a private chat, payload within limits, a button press only of a button the
//! gateway currently shows on that very message in that very chat, or refused with a code).
//! [`run`] is the shell: poll after the persisted cursor; for each event look up (for a press)
//! whether the store records that button as shown, publish with JetStream and wait for the
//! acknowledgement (`Nats-Msg-Id` = the event's dedup id, so a re-publish after a crash is
//! dropped by the stream), emit a `sender_rejected` audit event for refused senders and a
//! `decision_refused` one (code `button_not_shown`) for a press of a button not shown there
//! (forged, from another chat, or from a keyboard an edit removed), and only then persist the
//! cursor; finally answer a button press (a refused one with a short generic text). A failed
//! publish is retried with backoff and the cursor does not move, so nothing is skipped; a
//! restart re-reads from the persisted cursor, so nothing is replayed beyond the duplicate
//! window's protection.
//!
//! What it does not do: it holds no MAC key and does not verify button MACs (the orchestrator
//! does, fail-closed, along with the approver), rate-limit users, or reply to refused senders
//! (no reply content, by design).

use std::collections::BTreeSet;
use std::time::Duration;

use audit::emit::AuditEmitter;
use protocol::message::{
    AuditEvent, ButtonPress, ChatDecision, ChatIn, ChatRef, CodeReply, ErrorCode, InboundText,
    MAX_BUTTON_PAYLOAD, MAX_CHAT_TEXT, PlatformRef,
};
use protocol::{
    ChannelName, ChatUser, CorrelationId, Envelope, MessageId, Principal, Subject, UnixMillis,
};
use tokio::sync::watch;

use crate::GatewayError;
use crate::channel::{Channel, InboundEvent, InboundKind};
use crate::store::Store;

/// The notification shown when a press is refused because its button is not (or no longer)
/// on that message. Generic on purpose: it says nothing about why.
pub const REFUSED_PRESS_TEXT: &str = "This button is no longer valid.";

/// Who may talk to the assistant on one channel: platform user ids, exact match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Allowlist(BTreeSet<String>);

impl Allowlist {
    /// From platform user ids.
    pub fn new<I: IntoIterator<Item = S>, S: Into<String>>(ids: I) -> Self {
        Allowlist(ids.into_iter().map(Into::into).collect())
    }
    /// Whether `id` is on the list.
    pub fn allows(&self, id: &str) -> bool {
        self.0.contains(id)
    }
}

/// What to do with one inbound event.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Publish a message on `chat.in.<channel>`.
    Say(ChatIn),
    /// Publish a decision on `chat.decision.<channel>`, then answer the press.
    Press {
        /// The decision.
        decision: ChatDecision,
        /// The platform's press id, to answer.
        press_id: String,
    },
    /// Publish a typed decision (no press to answer) on `chat.decision.<channel>`.
    Decide(ChatDecision),
    /// Drop it and write an audit row: the sender is not allowed.
    RejectSender {
        /// The sender's platform id.
        platform_user: String,
        /// Why.
        code: &'static str,
        /// The press to answer (with no content), if it was a press.
        press_id: Option<String>,
    },
    /// Drop a press of a button the gateway does not show on that message (in that chat), write
    /// an audit row, and answer the press with [`REFUSED_PRESS_TEXT`].
    RejectPress {
        /// The (allowlisted) presser.
        by: ChatUser,
        /// Why.
        code: &'static str,
        /// The press to answer.
        press_id: String,
    },
    /// Drop it quietly (not something we handle, or malformed).
    Skip {
        /// Why.
        code: &'static str,
        /// The press to answer (with no content), if it was a press.
        press_id: Option<String>,
    },
}

/// The default-deny decision for one event. Pure. `shown`: for a button press, whether the
/// gateway currently shows a button with exactly this payload on the press's message in the
/// press's chat ([`Store::button_shown`]); ignored for other events.
pub fn decide(channel: &ChannelName, allow: &Allowlist, kind: &InboundKind, shown: bool) -> Action {
    match kind {
        InboundKind::Ignored { .. } => Action::Skip {
            code: "update_kind_not_handled",
            press_id: None,
        },
        InboundKind::Text {
            sender,
            chat_id,
            private,
            message_id,
            text,
        } => {
            if let Some(refused) = admit(allow, sender, *private, None) {
                return refused;
            }
            let built = (|| {
                let chat = chat_ref(channel, chat_id)?;
                let user = ChatUser::from_parts(channel, sender).map_err(|e| e.to_string())?;
                let platform_message_id = PlatformRef::new(message_id.clone())?;
                if text.len() > MAX_CHAT_TEXT {
                    return Err("text too long".to_owned());
                }
                let body = ChatIn::Text(InboundText {
                    chat,
                    user,
                    platform_message_id,
                    text: text.clone(),
                });
                protocol::Body::validate(&body)?;
                Ok(body)
            })();
            match built {
                Ok(body) => Action::Say(body),
                Err(_invalid) => Action::Skip {
                    code: "message_invalid",
                    press_id: None,
                },
            }
        }
        InboundKind::Code {
            sender,
            chat_id,
            private,
            message_id,
            verdict,
            code,
        } => {
            if let Some(refused) = admit(allow, sender, *private, None) {
                return refused;
            }
            let built = (|| {
                let decision = ChatDecision::Code(CodeReply {
                    chat: chat_ref(channel, chat_id)?,
                    user: ChatUser::from_parts(channel, sender).map_err(|e| e.to_string())?,
                    verdict: *verdict,
                    code: code.clone(),
                    platform_ref: PlatformRef::new(message_id.clone())?,
                });
                protocol::Body::validate(&decision)?;
                Ok::<_, String>(decision)
            })();
            match built {
                Ok(decision) => Action::Decide(decision),
                Err(_invalid) => Action::Skip {
                    code: "message_invalid",
                    press_id: None,
                },
            }
        }
        InboundKind::Button {
            sender,
            chat_id,
            private,
            message_id,
            press_id,
            payload,
        } => {
            let press = Some(press_id.clone());
            if let Some(refused) = admit(allow, sender, *private, press.clone()) {
                return refused;
            }
            if payload.is_empty() || payload.len() > MAX_BUTTON_PAYLOAD {
                return Action::Skip {
                    code: "button_payload_invalid",
                    press_id: press,
                };
            }
            let built = (|| {
                let chat_id = chat_id.as_ref().ok_or("no chat")?;
                let decision = ChatDecision::Button(ButtonPress {
                    chat: chat_ref(channel, chat_id)?,
                    user: ChatUser::from_parts(channel, sender).map_err(|e| e.to_string())?,
                    payload: payload.clone(),
                    platform_ref: PlatformRef::new(press_id.clone())?,
                    message_ref: message_id.clone().map(PlatformRef::new).transpose()?,
                });
                protocol::Body::validate(&decision)?;
                Ok::<_, String>(decision)
            })();
            match built {
                Ok(ChatDecision::Button(b)) if !shown => Action::RejectPress {
                    by: b.user,
                    code: "button_not_shown",
                    press_id: press_id.clone(),
                },
                Ok(decision) => Action::Press {
                    decision,
                    press_id: press_id.clone(),
                },
                Err(_invalid) => Action::Skip {
                    code: "button_payload_invalid",
                    press_id: press,
                },
            }
        }
    }
}

/// Default deny, the same for every kind of event: an allowlisted sender in a private chat,
/// or the action that refuses it (`None`: admitted).
fn admit(
    allow: &Allowlist,
    sender: &str,
    private: bool,
    press_id: Option<String>,
) -> Option<Action> {
    if !allow.allows(sender) {
        return Some(Action::RejectSender {
            platform_user: sender.to_owned(),
            code: "sender_not_allowlisted",
            press_id,
        });
    }
    if !private {
        return Some(Action::Skip {
            code: "chat_not_private",
            press_id,
        });
    }
    None
}

fn chat_ref(channel: &ChannelName, chat_id: &str) -> Result<ChatRef, String> {
    Ok(ChatRef {
        channel: channel.clone(),
        chat_id: PlatformRef::new(chat_id)?,
    })
}

/// Backoff after a failed publish or poll: doubling from 200 ms, at most 30 s.
pub fn backoff(attempt: u32) -> Duration {
    let ms = 200u64.saturating_mul(1u64 << attempt.min(8));
    Duration::from_millis(ms.min(30_000))
}

/// The inbound loop for one channel; returns when `shutdown` turns true.
pub async fn run<C: Channel>(
    channel: &C,
    allow: &Allowlist,
    js: &async_nats::jetstream::Context,
    audit: &AuditEmitter,
    store: &Store,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), GatewayError> {
    let name = channel.name().clone();
    let mut cursor = store.cursor(name.as_str()).await?;
    let mut failures = 0u32;
    loop {
        if *shutdown.borrow() {
            return Ok(());
        }
        let events = tokio::select! {
            _ = shutdown.changed() => return Ok(()),
            polled = channel.poll(cursor) => polled,
        };
        let events = match events {
            Ok(e) => {
                failures = 0;
                e
            }
            Err(e) => {
                tracing::warn!(channel = %name, code = e.code(), error = %e, "poll failed");
                failures = failures.saturating_add(1);
                let wait = match e {
                    crate::channel::DeliveryError::RetryAfter(d) => d,
                    _ => backoff(failures),
                };
                tokio::select! {
                    _ = shutdown.changed() => return Ok(()),
                    () = tokio::time::sleep(wait) => continue,
                }
            }
        };
        for event in events {
            if cursor.is_some_and(|c| event.cursor <= c) {
                // Already handled (a push channel redelivered it): acknowledge it again.
                channel.confirm(event.cursor).await;
                continue;
            }
            let press = handle(&name, allow, js, audit, store, &event, &mut shutdown).await?;
            let Some(press) = press else {
                return Ok(());
            };
            store.set_cursor(name.as_str(), event.cursor).await?;
            cursor = Some(event.cursor);
            channel.confirm(event.cursor).await;
            if let Some((press_id, text)) = press
                && let Err(e) = channel.answer_press(&press_id, text).await
            {
                tracing::warn!(channel = %name, code = e.code(), error = %e, "could not answer a button press");
            }
        }
    }
}

/// A press to answer: its id and the notification text, if any.
type Answer = Option<(String, Option<&'static str>)>;

/// Handles one event up to (not including) the cursor write. `Ok(None)`: shutting down
/// before the publish was acknowledged; `Ok(Some(answer))`: done, answer the press if any.
async fn handle(
    name: &ChannelName,
    allow: &Allowlist,
    js: &async_nats::jetstream::Context,
    audit: &AuditEmitter,
    store: &Store,
    event: &InboundEvent,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<Option<Answer>, GatewayError> {
    let shown = match &event.kind {
        InboundKind::Button {
            chat_id: Some(chat_id),
            message_id: Some(message_id),
            payload,
            ..
        } => {
            store
                .button_shown(name.as_str(), chat_id, message_id, payload)
                .await?
        }
        _ => false,
    };
    match decide(name, allow, &event.kind, shown) {
        Action::Say(body) => {
            let sent =
                publish_until_acked(js, Subject::chat_in(name), &event.dedup_id, body, shutdown)
                    .await?;
            Ok(sent.then_some(None))
        }
        Action::Press { decision, press_id } => {
            let sent = publish_until_acked(
                js,
                Subject::chat_decision(name),
                &event.dedup_id,
                decision,
                shutdown,
            )
            .await?;
            Ok(sent.then_some(Some((press_id, None))))
        }
        Action::Decide(decision) => {
            let sent = publish_until_acked(
                js,
                Subject::chat_decision(name),
                &event.dedup_id,
                decision,
                shutdown,
            )
            .await?;
            Ok(sent.then_some(None))
        }
        Action::RejectSender {
            platform_user,
            code,
            press_id,
        } => {
            tracing::warn!(channel = %name, code, "message from a sender not on the allowlist dropped");
            let event = AuditEvent::SenderRejected {
                channel: name.clone(),
                platform_user: platform_user.chars().take(128).collect(),
                code: ErrorCode::from_static(code),
            };
            if let Err(e) = audit.emit(CorrelationId::random(), event).await {
                tracing::warn!(channel = %name, code = e.code(), error = %e, "could not audit a rejected sender");
            }
            Ok(Some(press_id.map(|p| (p, None))))
        }
        Action::RejectPress { by, code, press_id } => {
            tracing::warn!(channel = %name, code, "press of a button not shown on that message refused");
            let event = AuditEvent::DecisionRefused {
                by,
                code: ErrorCode::from_static(code),
            };
            if let Err(e) = audit.emit(CorrelationId::random(), event).await {
                tracing::warn!(channel = %name, code = e.code(), error = %e, "could not audit a refused press");
            }
            Ok(Some(Some((press_id, Some(REFUSED_PRESS_TEXT)))))
        }
        Action::Skip { code, press_id } => {
            tracing::info!(channel = %name, code, "inbound event skipped");
            Ok(Some(press_id.map(|p| (p, None))))
        }
    }
}

/// Publishes until JetStream acknowledges (same `Nats-Msg-Id` on every attempt). Returns false
/// if shutdown came first.
async fn publish_until_acked<B: protocol::Body>(
    js: &async_nats::jetstream::Context,
    subject: Subject,
    dedup_id: &str,
    body: B,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<bool, GatewayError> {
    let envelope = Envelope::new(
        MessageId::random(),
        CorrelationId::random(),
        Principal::gateway(),
        UnixMillis::now(),
        body,
    );
    let bytes = envelope.encode().map_err(GatewayError::Encode)?;
    let mut attempt = 0u32;
    loop {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", dedup_id);
        let result = async {
            js.publish_with_headers(String::from(subject.clone()), headers, bytes.clone().into())
                .await?
                .await
        }
        .await;
        match result {
            Ok(_ack) => return Ok(true),
            Err(e) => {
                attempt = attempt.saturating_add(1);
                tracing::warn!(subject = %subject, attempt, error = %e, code = "nats_publish_failed", "publish not acknowledged; retrying");
                tokio::select! {
                    _ = shutdown.changed() => return Ok(false),
                    () = tokio::time::sleep(backoff(attempt)) => {}
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn check(kind: InboundKind, expect: expect_test::Expect) {
        check_shown(kind, true, expect);
    }

    fn check_shown(kind: InboundKind, shown: bool, expect: expect_test::Expect) {
        let channel = ChannelName::new("telegram").unwrap();
        let allow = Allowlist::new(["42"]);
        let action = match decide(&channel, &allow, &kind, shown) {
            Action::Say(ChatIn::Text(t)) => format!(
                "say {} {:?} from {}",
                t.chat.chat_id.as_str(),
                t.text,
                t.user
            ),
            Action::Press {
                decision: ChatDecision::Button(b),
                press_id,
            } => {
                format!(
                    "press {} by {} ({press_id}, msg {:?})",
                    b.payload,
                    b.user,
                    b.message_ref.map(|m| m.as_str().to_owned())
                )
            }
            Action::Press { .. } => "press (other)".to_owned(),
            Action::Decide(ChatDecision::Code(c)) => format!(
                "decide {:?} {} by {} in {} (msg {})",
                c.verdict,
                c.code,
                c.user,
                c.chat.chat_id.as_str(),
                c.platform_ref.as_str()
            ),
            Action::Decide(_) => "decide (other)".to_owned(),
            Action::RejectSender {
                platform_user,
                code,
                press_id,
            } => format!("reject {platform_user} {code} {press_id:?}"),
            Action::RejectPress { by, code, press_id } => {
                format!("refuse press by {by} {code} ({press_id})")
            }
            Action::Skip { code, press_id } => format!("skip {code} {press_id:?}"),
        };
        expect.assert_eq(&action);
    }

    fn text(sender: &str, private: bool, text: &str) -> InboundKind {
        InboundKind::Text {
            sender: sender.into(),
            chat_id: sender.into(),
            private,
            message_id: "5".into(),
            text: text.into(),
        }
    }

    fn press(sender: &str, payload: &str) -> InboundKind {
        InboundKind::Button {
            sender: sender.into(),
            chat_id: Some(sender.into()),
            private: true,
            message_id: Some("9".into()),
            press_id: "777".into(),
            payload: payload.into(),
        }
    }

    #[test]
    fn default_deny_and_limits() {
        use expect_test::expect;
        check(
            text("42", true, "start bedtime"),
            expect![[r#"say 42 "start bedtime" from telegram:42"#]],
        );
        check(
            text("43", true, "hi"),
            expect!["reject 43 sender_not_allowlisted None"],
        );
        check(
            text("42", false, "hi"),
            expect!["skip chat_not_private None"],
        );
        check(
            text("42", true, "bell\u{7}"),
            expect!["skip message_invalid None"],
        );
        check(
            press("42", "ap:1234"),
            expect![[r#"press ap:1234 by telegram:42 (777, msg Some("9"))"#]],
        );
        check(
            press("43", "ap:1234"),
            expect![[r#"reject 43 sender_not_allowlisted Some("777")"#]],
        );
        check_shown(
            press("42", "ap:1234"),
            false,
            expect!["refuse press by telegram:42 button_not_shown (777)"],
        );
        check_shown(
            press("43", "ap:1234"),
            false,
            expect![[r#"reject 43 sender_not_allowlisted Some("777")"#]],
        );
        check_shown(
            press("42", &"x".repeat(65)),
            false,
            expect![[r#"skip button_payload_invalid Some("777")"#]],
        );
        check(
            press("42", &"x".repeat(65)),
            expect![[r#"skip button_payload_invalid Some("777")"#]],
        );
        check(
            press("42", ""),
            expect![[r#"skip button_payload_invalid Some("777")"#]],
        );
        check(
            press("42", "a b"),
            expect![[r#"skip button_payload_invalid Some("777")"#]],
        );
        check(
            InboundKind::Ignored {
                what: "edited_message",
            },
            expect!["skip update_kind_not_handled None"],
        );
    }

    #[test]
    fn typed_code_replies_become_decisions_for_allowlisted_senders_only() {
        use expect_test::expect;
        use protocol::message::Verdict;
        let code = |sender: &str, private: bool, code: &str| InboundKind::Code {
            sender: sender.into(),
            chat_id: sender.into(),
            private,
            message_id: "17".into(),
            verdict: Verdict::Approve,
            code: code.into(),
        };
        check(
            code("42", true, "4821"),
            expect!["decide Approve 4821 by telegram:42 in 42 (msg 17)"],
        );
        check(
            code("43", true, "4821"),
            expect!["reject 43 sender_not_allowlisted None"],
        );
        check(
            code("42", false, "4821"),
            expect!["skip chat_not_private None"],
        );
        check(
            code("42", true, "48x1"),
            expect!["skip message_invalid None"],
        );
    }

    #[test]
    fn backoff_grows_and_is_bounded() {
        assert_eq!(backoff(0), Duration::from_millis(200));
        assert_eq!(backoff(1), Duration::from_millis(400));
        assert_eq!(backoff(20), Duration::from_secs(30));
    }
}
