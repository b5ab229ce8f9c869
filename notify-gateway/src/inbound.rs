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
//! window's protection. Allowlisted users are held to [`Limits`]: a text over the length
//! limit, or anything over the per-user rate ([`rate_limit`]), is refused with an
//! `input_refused` audit row and a short notice carrying a code and the audit row's
//! correlation id (once per streak of refusals, so the notice cannot become an amplifier).
//!
//! What it does not do: it holds no MAC key and does not verify button MACs (the orchestrator
//! does, fail-closed, along with the approver), or reply to refused senders (no reply content,
//! by design).

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use audit::emit::AuditEmitter;
use protocol::message::{
    AuditEvent, ButtonPress, ChatDecision, ChatIn, ChatRef, CodeReply, ErrorCode, InboundText,
    MAX_BUTTON_PAYLOAD, OutboundMessage, PlatformRef,
};
use protocol::{
    ChannelName, ChatUser, CorrelationId, Envelope, MessageId, Principal, Subject, UnixMillis,
};
use tokio::sync::watch;

use crate::GatewayError;
use crate::channel::{Channel, InboundEvent, InboundKind};
use crate::limits::{Limits, RateDecision, RateLimiter};
use crate::pairing::PairOutcome;
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
    /// Adds `id` (a user paired at run time).
    pub fn insert(&mut self, id: String) {
        self.0.insert(id);
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
    /// Drop input from an allowlisted user that breaks a limit (too long, over the rate): write
    /// an `input_refused` audit row and, if `notice` is set, tell the user (as a press answer
    /// for a press, else as a message in `chat`). Nothing is published.
    RefuseInput {
        /// Who sent it.
        by: ChatUser,
        /// Where.
        chat: ChatRef,
        /// Why.
        code: &'static str,
        /// What to tell the user (once per streak), without the reference.
        notice: Option<String>,
        /// The press to answer, if it was a press.
        press_id: Option<String>,
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
pub fn decide(
    channel: &ChannelName,
    allow: &Allowlist,
    limits: &Limits,
    kind: &InboundKind,
    shown: bool,
) -> Action {
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
            if !limits.text_fits(text) {
                return match (
                    ChatUser::from_parts(channel, sender),
                    chat_ref(channel, chat_id),
                ) {
                    (Ok(by), Ok(chat)) => Action::RefuseInput {
                        by,
                        chat,
                        code: "chat_text_too_long",
                        notice: Some(format!(
                            "That message is too long: the limit is {} characters.",
                            limits.max_text_chars
                        )),
                        press_id: None,
                    },
                    _ => Action::Skip {
                        code: "message_invalid",
                        press_id: None,
                    },
                };
            }
            let built = (|| {
                let chat = chat_ref(channel, chat_id)?;
                let user = ChatUser::from_parts(channel, sender).map_err(|e| e.to_string())?;
                let platform_message_id = PlatformRef::new(message_id.clone())?;
                let body = ChatIn::Text(InboundText {
                    chat,
                    user,
                    platform_message_id,
                    text: text.clone(),
                });
                protocol::Body::validate(&body)?;
                Ok::<_, String>(body)
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
    limits: Limits,
    js: &async_nats::jetstream::Context,
    audit: &AuditEmitter,
    store: &Store,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), GatewayError> {
    let name = channel.name().clone();
    let mut limiter = RateLimiter::new(limits);
    // The configured allowlist plus everyone paired with a one-time code (`bot pair`).
    let mut allow = allow.clone();
    for user in store.paired_users(name.as_str()).await? {
        allow.insert(user);
    }
    let mut gate = Gate {
        allow,
        limits: &limits,
    };
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
            let press = handle(
                channel,
                &mut gate,
                &mut limiter,
                js,
                audit,
                store,
                &event,
                &mut shutdown,
            )
            .await?;
            let Some(press) = press else {
                return Ok(());
            };
            store.set_cursor(name.as_str(), event.cursor).await?;
            cursor = Some(event.cursor);
            channel.confirm(event.cursor).await;
            if let Some((press_id, text)) = press
                && let Err(e) = channel.answer_press(&press_id, text.as_deref()).await
            {
                tracing::warn!(channel = %name, code = e.code(), error = %e, "could not answer a button press");
            }
        }
    }
}

/// A press to answer: its id and the notification text, if any.
type Answer = Option<(String, Option<String>)>;

/// Who may talk, within which limits.
struct Gate<'a> {
    allow: Allowlist,
    limits: &'a Limits,
}

/// Applies the per-user rate to an action that would publish: over the rate, it becomes a
/// refusal (the user told on the first refusal of a streak; a press is always answered).
pub fn rate_limit(action: Action, limiter: &mut RateLimiter, now: Instant) -> Action {
    let (by, chat, press_id) = match &action {
        Action::Say(ChatIn::Text(t)) => (t.user.clone(), t.chat.clone(), None),
        Action::Press {
            decision: ChatDecision::Button(b),
            press_id,
        } => (b.user.clone(), b.chat.clone(), Some(press_id.clone())),
        Action::Decide(ChatDecision::Code(c)) => (c.user.clone(), c.chat.clone(), None),
        // A refusal with a notice spends the budget too, or it would be an amplifier.
        Action::RefuseInput {
            by, chat, press_id, ..
        } => (by.clone(), chat.clone(), press_id.clone()),
        _ => return action,
    };
    match limiter.check(by.as_str(), now) {
        RateDecision::Allowed => action,
        RateDecision::Limited { first, retry_after } => {
            // Whole seconds, rounded up, at least one.
            let wait = retry_after
                .as_secs()
                .saturating_add(u64::from(retry_after.subsec_nanos() > 0))
                .max(1);
            let notice = (first || press_id.is_some())
                .then(|| format!("Too many messages: please wait {wait} s and try again."));
            Action::RefuseInput {
                by,
                chat,
                code: "rate_limited",
                notice,
                press_id,
            }
        }
    }
}

/// Handles one event up to (not including) the cursor write. `Ok(None)`: shutting down
/// before the publish was acknowledged; `Ok(Some(answer))`: done, answer the press if any.
#[allow(clippy::too_many_arguments)]
async fn handle<C: Channel>(
    channel: &C,
    gate: &mut Gate<'_>,
    limiter: &mut RateLimiter,
    js: &async_nats::jetstream::Context,
    audit: &AuditEmitter,
    store: &Store,
    event: &InboundEvent,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<Option<Answer>, GatewayError> {
    let name = channel.name();
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
    if let InboundKind::Text {
        sender,
        chat_id,
        private: true,
        text,
        ..
    } = &event.kind
        && !gate.allow.allows(sender)
        && pair(channel, audit, store, sender, chat_id, text).await?
    {
        gate.allow.insert(sender.clone());
        return Ok(Some(None));
    }
    let action = decide(name, &gate.allow, gate.limits, &event.kind, shown);
    match rate_limit(action, limiter, Instant::now()) {
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
            Ok(Some(Some((press_id, Some(REFUSED_PRESS_TEXT.to_owned())))))
        }
        Action::RefuseInput {
            by,
            chat,
            code,
            notice,
            press_id,
        } => {
            tracing::warn!(channel = %name, code, "input from an allowlisted user refused");
            let correlation = CorrelationId::random();
            let event = AuditEvent::InputRefused {
                by,
                code: ErrorCode::from_static(code),
            };
            if let Err(e) = audit.emit(correlation, event).await {
                tracing::warn!(channel = %name, code = e.code(), error = %e, "could not audit refused input");
            }
            let notice = notice.map(|n| format!("{n} (code {code}, ref {correlation})"));
            match (press_id, notice) {
                (Some(press_id), notice) => Ok(Some(Some((press_id, notice)))),
                (None, Some(text)) => {
                    let message = OutboundMessage {
                        key: format!("notice-{correlation}"),
                        chat: chat.clone(),
                        text,
                        buttons: Vec::new(),
                    };
                    let rendered = channel.render_message(&message);
                    if let Err(e) = channel.post(chat.chat_id.as_str(), &rendered).await {
                        tracing::warn!(channel = %name, code = e.code(), error = %e, "could not tell the user their input was refused");
                    }
                    Ok(Some(None))
                }
                (None, None) => Ok(Some(None)),
            }
        }
        Action::Skip { code, press_id } => {
            tracing::info!(channel = %name, code, "inbound event skipped");
            Ok(Some(press_id.map(|p| (p, None))))
        }
    }
}

/// What a newly paired user is told.
pub const PAIRED_TEXT: &str = "Paired: you can now talk to this assistant.";

/// A text from a sender not on the allowlist, in a private chat: if it is the pending pairing
/// code, the sender is paired (audited as `user_paired`, told so) and `true` is returned;
/// anything else leaves the sender a stranger.
async fn pair<C: Channel>(
    channel: &C,
    audit: &AuditEmitter,
    store: &Store,
    sender: &str,
    chat_id: &str,
    text: &str,
) -> Result<bool, GatewayError> {
    let name = channel.name();
    let outcome = store
        .try_pair(name.as_str(), sender, text, UnixMillis::now().0)
        .await?;
    match outcome {
        PairOutcome::NotACode => Ok(false),
        PairOutcome::WrongCode => {
            tracing::warn!(channel = %name, code = "pairing_code_wrong", "a wrong pairing code was tried");
            Ok(false)
        }
        PairOutcome::Paired => {
            tracing::info!(channel = %name, "a user paired with a one-time code");
            let (Ok(user), Ok(chat)) =
                (ChatUser::from_parts(name, sender), chat_ref(name, chat_id))
            else {
                return Ok(true);
            };
            let correlation = CorrelationId::random();
            if let Err(e) = audit
                .emit(correlation, AuditEvent::UserPaired { user })
                .await
            {
                tracing::warn!(channel = %name, code = e.code(), error = %e, "could not audit a pairing");
            }
            let message = OutboundMessage {
                key: format!("paired-{correlation}"),
                chat: chat.clone(),
                text: PAIRED_TEXT.to_owned(),
                buttons: Vec::new(),
            };
            if let Err(e) = channel
                .post(chat.chat_id.as_str(), &channel.render_message(&message))
                .await
            {
                tracing::warn!(channel = %name, code = e.code(), error = %e, "could not confirm a pairing to the user");
            }
            Ok(true)
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
        let action = decide(&channel, &allow, &Limits::default(), &kind, shown);
        expect.assert_eq(&describe(action));
    }

    fn describe(action: Action) -> String {
        match action {
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
            Action::RefuseInput {
                by,
                chat,
                code,
                notice,
                press_id,
            } => format!(
                "refuse input by {by} in {} {code} {notice:?} {press_id:?}",
                chat.chat_id.as_str()
            ),
            Action::Skip { code, press_id } => format!("skip {code} {press_id:?}"),
        }
    }

    #[test]
    fn too_long_text_is_refused_with_a_notice() {
        use expect_test::expect;
        let channel = ChannelName::new("telegram").unwrap();
        let allow = Allowlist::new(["42"]);
        let limits = Limits {
            max_text_chars: 5,
            ..Limits::default()
        };
        let d = |t: &str| {
            describe(decide(
                &channel,
                &allow,
                &limits,
                &text("42", true, t),
                true,
            ))
        };
        expect![[r#"say 42 "héllo" from telegram:42"#]].assert_eq(&d("héllo"));
        expect![[r#"refuse input by telegram:42 in 42 chat_text_too_long Some("That message is too long: the limit is 5 characters.") None"#]]
            .assert_eq(&d("hello!"));
        // A stranger's long text is a stranger's text: rejected without a notice.
        let stranger = decide(&channel, &allow, &limits, &text("43", true, "hello!"), true);
        expect!["reject 43 sender_not_allowlisted None"].assert_eq(&describe(stranger));
        // The protocol's byte bound holds whatever the configured character limit.
        let huge = "x".repeat(protocol::message::MAX_CHAT_TEXT + 1);
        let unlimited = Limits {
            max_text_chars: usize::MAX,
            ..Limits::default()
        };
        let a = decide(&channel, &allow, &unlimited, &text("42", true, &huge), true);
        assert!(matches!(
            a,
            Action::RefuseInput {
                code: "chat_text_too_long",
                ..
            }
        ));
    }

    #[test]
    fn rate_limit_refuses_publishing_actions_and_tells_once() {
        use expect_test::expect;
        let channel = ChannelName::new("telegram").unwrap();
        let allow = Allowlist::new(["42", "7"]);
        let limits = Limits {
            max_text_chars: 100,
            burst: 2,
            refill_every: Duration::from_secs(10),
        };
        let mut limiter = RateLimiter::new(limits);
        let now = Instant::now();
        let mut step = |kind: InboundKind| {
            let a = decide(&channel, &allow, &limits, &kind, true);
            describe(rate_limit(a, &mut limiter, now))
        };
        expect![[r#"say 42 "a" from telegram:42"#]].assert_eq(&step(text("42", true, "a")));
        expect![[r#"press ap:1 by telegram:42 (777, msg Some("9"))"#]]
            .assert_eq(&step(press("42", "ap:1")));
        expect![[r#"refuse input by telegram:42 in 42 rate_limited Some("Too many messages: please wait 10 s and try again.") None"#]]
            .assert_eq(&step(text("42", true, "c")));
        // Told once per streak for messages; a press is always answered.
        expect!["refuse input by telegram:42 in 42 rate_limited None None"]
            .assert_eq(&step(text("42", true, "d")));
        expect![[r#"refuse input by telegram:42 in 42 rate_limited Some("Too many messages: please wait 10 s and try again.") Some("777")"#]]
            .assert_eq(&step(press("42", "ap:1")));
        // A too-long text spends the budget as well: over the rate it is told nothing more.
        let long = "x".repeat(101);
        expect!["refuse input by telegram:42 in 42 rate_limited None None"]
            .assert_eq(&step(text("42", true, &long)));
        // Rejected strangers do not spend anyone's budget, and users are separate.
        expect!["reject 43 sender_not_allowlisted None"].assert_eq(&step(text("43", true, "x")));
        expect![[r#"say 7 "hi" from telegram:7"#]].assert_eq(&step(text("7", true, "hi")));
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
