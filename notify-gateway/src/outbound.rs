//! Outbound: the `out-<channel>` consumer of `CHAT_OUT` to platform messages.
//!
//! What it does: pulls one message at a time (so order is kept: a `Post` is on the platform
//! before the `Update` that edits it), decodes it strictly, skips (and acknowledges) an envelope
//! it already delivered, renders it with the channel, posts or edits, records the delivery (for a
//! post, where the message landed; for a post or an edit, the button payloads the message now
//! shows, which is what inbound checks a press against) durably, and only then acknowledges. A
//! 429 waits the platform's `retry_after`; a 5xx or connection error retries with backoff; while
//! waiting the JetStream message is kept alive with progress acknowledgements. A permanent refusal (403,
//! the user blocked the bot) is logged, recorded and acknowledged: it cannot succeed.
//!
//! What it does not do: it cannot make the platform idempotent. If the gateway dies after the
//! platform accepted a post and before the delivery row commits, that one message is sent again
//! on redelivery; every other path sends at most once.

use std::time::Duration;

use async_nats::jetstream::AckKind;
use async_nats::jetstream::consumer::PullConsumer;
use futures::StreamExt as _;
use protocol::message::{ChatOut, PlanMessage};
use protocol::subject::{Route, stream};
use protocol::{ChannelName, Envelope, Subject};
use tokio::sync::watch;

use crate::GatewayError;
use crate::channel::{Channel, Delivered, DeliveryError, Rendered};
use crate::inbound::backoff;
use crate::store::{Shown, Store};

/// One decoded outbound item.
#[derive(Debug, Clone, PartialEq)]
pub enum Outgoing {
    /// Post a new message under `key`.
    Post {
        /// Our key.
        key: String,
        /// The conversation.
        chat_id: String,
        /// The rendered message.
        rendered: Rendered,
    },
    /// Edit the message posted under `key` (posting it if it was never posted).
    Update {
        /// Our key.
        key: String,
        /// The conversation.
        chat_id: String,
        /// The rendered message.
        rendered: Rendered,
    },
}

impl Outgoing {
    /// The rendered message.
    pub fn rendered(&self) -> &Rendered {
        match self {
            Outgoing::Post { rendered, .. } | Outgoing::Update { rendered, .. } => rendered,
        }
    }
}

/// Why an outbound message cannot be handled at all (it is terminated, not retried).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Undeliverable(pub &'static str);

/// Decodes and renders one `CHAT_OUT` message for `channel`. Pure apart from the channel's
/// renderer. Returns the envelope id too.
pub fn decode<C: Channel>(
    channel: &C,
    subject: &str,
    payload: &[u8],
) -> Result<(String, Outgoing), Undeliverable> {
    let name = channel.name();
    match Subject::route(subject) {
        Some(Route::PlanProposed(c)) if &c == name => {
            let e = Envelope::<PlanMessage>::decode(payload)
                .map_err(|_bad| Undeliverable("message_invalid"))?;
            let PlanMessage::Proposed(p) = &e.body;
            check_chat(name, &p.chat.channel)?;
            Ok((
                e.id.to_string(),
                Outgoing::Post {
                    key: p.approval_id.to_string(),
                    chat_id: p.chat.chat_id.as_str().to_owned(),
                    rendered: channel.render_plan(p),
                },
            ))
        }
        Some(Route::ChatOut(c)) if &c == name => {
            let e = Envelope::<ChatOut>::decode(payload)
                .map_err(|_bad| Undeliverable("message_invalid"))?;
            let id = e.id.to_string();
            match &e.body {
                ChatOut::Post(m) => {
                    check_chat(name, &m.chat.channel)?;
                    Ok((
                        id,
                        Outgoing::Post {
                            key: m.key.clone(),
                            chat_id: m.chat.chat_id.as_str().to_owned(),
                            rendered: channel.render_message(m),
                        },
                    ))
                }
                ChatOut::Update(m) => {
                    check_chat(name, &m.chat.channel)?;
                    Ok((
                        id,
                        Outgoing::Update {
                            key: m.key.clone(),
                            chat_id: m.chat.chat_id.as_str().to_owned(),
                            rendered: channel.render_message(m),
                        },
                    ))
                }
            }
        }
        _ => Err(Undeliverable("subject_not_for_channel")),
    }
}

fn check_chat(ours: &ChannelName, theirs: &ChannelName) -> Result<(), Undeliverable> {
    if ours == theirs {
        Ok(())
    } else {
        Err(Undeliverable("chat_not_on_channel"))
    }
}

/// The outbound loop for one channel; returns when `shutdown` turns true.
pub async fn run<C: Channel>(
    channel: &C,
    js: &async_nats::jetstream::Context,
    store: &Store,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), GatewayError> {
    let name = channel.name().clone();
    let consumer: PullConsumer = js
        .get_stream(stream::CHAT_OUT)
        .await
        .map_err(|e| GatewayError::Nats(format!("CHAT_OUT stream: {e}")))?
        .get_consumer(&stream::chat_out_consumer(name.as_str()))
        .await
        .map_err(|e| GatewayError::Nats(format!("out-{name} consumer: {e}")))?;
    let mut messages = consumer
        .stream()
        .max_messages_per_batch(1)
        .messages()
        .await
        .map_err(|e| GatewayError::Nats(format!("out-{name} messages: {e}")))?;
    loop {
        let next = tokio::select! {
            _ = shutdown.changed() => return Ok(()),
            next = messages.next() => next,
        };
        let message = match next {
            None => {
                return Err(GatewayError::Nats(
                    "outbound message stream ended".to_owned(),
                ));
            }
            Some(Err(e)) => {
                tracing::warn!(channel = %name, error = %e, code = "nats_pull_failed", "outbound pull failed");
                continue;
            }
            Some(Ok(m)) => m,
        };
        let (envelope_id, outgoing) = match decode(
            channel,
            message.subject.as_str(),
            &message.payload,
        ) {
            Ok(d) => d,
            Err(Undeliverable(code)) => {
                tracing::warn!(channel = %name, subject = %message.subject, code, "outbound message refused");
                ack(&message, AckKind::Term).await;
                continue;
            }
        };
        if store.is_delivered(name.as_str(), &envelope_id).await? {
            tracing::info!(channel = %name, envelope = %envelope_id, "already delivered; acknowledging the redelivery");
            ack(&message, AckKind::Ack).await;
            continue;
        }
        let mut attempt = 0u32;
        loop {
            match deliver(channel, store, &outgoing).await? {
                Ok((posted, at)) => {
                    let outcome = if posted.is_some() { "posted" } else { "edited" };
                    let shown = Shown {
                        at,
                        payloads: outgoing
                            .rendered()
                            .buttons
                            .iter()
                            .map(|b| b.payload.clone())
                            .collect(),
                    };
                    store
                        .record_delivery(name.as_str(), &envelope_id, outcome, posted, Some(shown))
                        .await?;
                    ack(&message, AckKind::Ack).await;
                    break;
                }
                Err(DeliveryError::Permanent(reason)) => {
                    tracing::warn!(channel = %name, envelope = %envelope_id, code = "platform_refused", %reason, "outbound message cannot be delivered; dropping it");
                    store
                        .record_delivery(name.as_str(), &envelope_id, "refused", None, None)
                        .await?;
                    ack(&message, AckKind::Ack).await;
                    break;
                }
                Err(e) => {
                    attempt = attempt.saturating_add(1);
                    let wait = match &e {
                        DeliveryError::RetryAfter(d) => *d,
                        _ => backoff(attempt),
                    };
                    tracing::warn!(channel = %name, code = e.code(), error = %e, ?wait, "outbound delivery failed; retrying");
                    if !wait_alive(&message, wait, &mut shutdown).await {
                        // Not acknowledged: JetStream redelivers after a restart.
                        return Ok(());
                    }
                }
            }
        }
    }
}

/// Where a delivery landed: the `(key, where)` to record for a post, and the message itself.
type Landed = (Option<(String, Delivered)>, Delivered);

/// Posts or edits. `Ok(Ok((Some((key, where)), where)))` for a post, `Ok(Ok((None, where)))`
/// for an edit.
async fn deliver<C: Channel>(
    channel: &C,
    store: &Store,
    outgoing: &Outgoing,
) -> Result<Result<Landed, DeliveryError>, GatewayError> {
    let name = channel.name().as_str();
    Ok(match outgoing {
        Outgoing::Post {
            key,
            chat_id,
            rendered,
        } => channel
            .post(chat_id, rendered)
            .await
            .map(|d| (Some((key.clone(), d.clone())), d)),
        Outgoing::Update {
            key,
            chat_id,
            rendered,
        } => match store.posted(name, key).await? {
            Some(target) if &target.chat_id == chat_id => {
                match channel.edit(&target, rendered).await {
                    Ok(()) | Err(DeliveryError::NotModified) => Ok((None, target)),
                    Err(e) => Err(e),
                }
            }
            Some(_other_chat) => Err(DeliveryError::Permanent(
                "update for a message in another chat".to_owned(),
            )),
            None => {
                tracing::info!(
                    channel = name,
                    "update for a message never posted; posting it"
                );
                channel
                    .post(chat_id, rendered)
                    .await
                    .map(|d| (Some((key.clone(), d.clone())), d))
            }
        },
    })
}

/// Sleeps `wait`, telling JetStream every 10 s that the message is still being worked on.
/// False if shutdown came first.
async fn wait_alive(
    message: &async_nats::jetstream::Message,
    wait: Duration,
    shutdown: &mut watch::Receiver<bool>,
) -> bool {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let now = tokio::time::Instant::now();
        if now >= deadline {
            return true;
        }
        let step = (deadline - now).min(Duration::from_secs(10));
        tokio::select! {
            _ = shutdown.changed() => return false,
            () = tokio::time::sleep(step) => {}
        }
        ack(message, AckKind::Progress).await;
    }
}

async fn ack(message: &async_nats::jetstream::Message, kind: AckKind) {
    if let Err(e) = message.ack_with(kind).await {
        tracing::warn!(error = %e, code = "nats_ack_failed", "acknowledgement failed; the message will be redelivered");
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use protocol::message::{OutboundMessage, PlanProposal};
    use protocol::{CorrelationId, MessageId, Principal, UnixMillis};

    use super::*;
    use crate::channel::InboundEvent;

    /// A channel that only renders (the decoder needs nothing else).
    struct Renderer(ChannelName);

    impl Channel for Renderer {
        fn name(&self) -> &ChannelName {
            &self.0
        }
        async fn poll(&self, _after: Option<u64>) -> Result<Vec<InboundEvent>, DeliveryError> {
            Ok(Vec::new())
        }
        async fn answer_press(&self, _id: &str, _text: Option<&str>) -> Result<(), DeliveryError> {
            Ok(())
        }
        async fn post(&self, _chat: &str, _m: &Rendered) -> Result<Delivered, DeliveryError> {
            Err(DeliveryError::Permanent("test".into()))
        }
        async fn edit(&self, _t: &Delivered, _m: &Rendered) -> Result<(), DeliveryError> {
            Ok(())
        }
        fn render_plan(&self, plan: &PlanProposal) -> Rendered {
            Rendered {
                text: plan.summary.clone(),
                buttons: Vec::new(),
            }
        }
        fn render_message(&self, m: &OutboundMessage) -> Rendered {
            Rendered {
                text: m.text.clone(),
                buttons: m.buttons.clone(),
            }
        }
    }

    fn post(channel: &str, text: &str) -> Vec<u8> {
        let chat = protocol::message::ChatRef {
            channel: ChannelName::new(channel).unwrap(),
            chat_id: protocol::message::PlatformRef::new("42").unwrap(),
        };
        Envelope::new(
            MessageId::random(),
            CorrelationId::random(),
            Principal::orchestrator(),
            UnixMillis::now(),
            ChatOut::Post(OutboundMessage {
                chat,
                key: "k1".into(),
                text: text.into(),
                buttons: Vec::new(),
            }),
        )
        .encode()
        .unwrap()
    }

    #[test]
    fn hostile_outbound_messages_are_refused_with_codes_never_a_panic() {
        let tg = Renderer(ChannelName::new("telegram").unwrap());
        let good = post("telegram", "hello");
        let (_, out) = decode(&tg, "chat.out.telegram", &good).unwrap();
        assert_eq!(out.rendered().text, "hello");
        // Another channel's subject, an unknown subject, a chat of another channel.
        assert!(decode(&tg, "chat.out.slack", &good).is_err());
        assert!(decode(&tg, "chat.in.telegram", &good).is_err());
        assert!(decode(&tg, "nonsense", &good).is_err());
        assert_eq!(
            decode(&tg, "chat.out.telegram", &post("slack", "x")).unwrap_err(),
            Undeliverable("chat_not_on_channel")
        );
        // Not JSON, truncated, an unknown field, a wrong type, deep nesting, a plan body on the
        // chat subject.
        let mut unknown: serde_json::Value = serde_json::from_slice(&good).unwrap();
        unknown["extra"] = serde_json::json!(1);
        let mut wrong_type: serde_json::Value = serde_json::from_slice(&good).unwrap();
        wrong_type["body"]["post"]["text"] = serde_json::json!(7);
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        for bad in [
            b"\xff\xfe not json".to_vec(),
            good.get(..good.len() / 2).unwrap().to_vec(),
            serde_json::to_vec(&unknown).unwrap(),
            serde_json::to_vec(&wrong_type).unwrap(),
            deep.into_bytes(),
            Vec::new(),
        ] {
            assert_eq!(
                decode(&tg, "chat.out.telegram", &bad).unwrap_err(),
                Undeliverable("message_invalid")
            );
        }
        assert!(decode(&tg, "plan.proposed.telegram", &good).is_err());
    }
}
