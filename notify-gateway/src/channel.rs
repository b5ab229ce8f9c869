//! The channel-neutral interface every chat adapter implements.
//!
//! What it does: names the few operations the gateway needs from a chat platform — poll for new
//! events after a cursor, answer a button press, post a rendered message, edit one — and the
//! channel-neutral data they exchange ([`InboundEvent`], [`Rendered`], [`Delivered`]), plus how a
//! platform failure is classified ([`DeliveryError`]) so the shells can decide between retrying,
//! waiting and giving up without knowing the platform.
//!
//! What it does not do: no I/O of its own, no NATS, no storage, no allowlist decisions (see
//! [`crate::inbound`]). Rendering is per platform ([`Channel::render_plan`],
//! [`Channel::render_message`]) because each platform has its own markup and limits.

use std::future::Future;
use std::time::Duration;

use protocol::ChannelName;
use protocol::message::{Button, OutboundMessage, PlanProposal};

/// One event from a platform, already parsed into channel-neutral terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboundEvent {
    /// The platform's position of this event; the next poll starts after it.
    pub cursor: u64,
    /// A stable id for this event, used as `Nats-Msg-Id` so a re-publish is de-duplicated
    /// (Telegram: `tg-<update_id>`).
    pub dedup_id: String,
    /// What happened.
    pub kind: InboundKind,
}

/// What an inbound event is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InboundKind {
    /// A user wrote text.
    Text {
        /// The sender's platform user id.
        sender: String,
        /// The conversation id.
        chat_id: String,
        /// Whether the conversation is a private (one-to-one) chat with the bot.
        private: bool,
        /// The platform's message id.
        message_id: String,
        /// The text.
        text: String,
    },
    /// A user pressed an inline button.
    Button {
        /// The sender's platform user id.
        sender: String,
        /// The conversation id, if the platform said.
        chat_id: Option<String>,
        /// Whether the conversation is a private chat with the bot.
        private: bool,
        /// The message carrying the button, if the platform said.
        message_id: Option<String>,
        /// The platform's id of the press (to answer it).
        press_id: String,
        /// The button's payload as the platform returned it.
        payload: String,
    },
    /// A typed decision on a channel without buttons ("approve 4821" on iMessage): the verdict
    /// and the plan's short code, already parsed by the adapter.
    Code {
        /// The sender's platform user id.
        sender: String,
        /// The conversation id.
        chat_id: String,
        /// Whether the conversation is a private (one-to-one) chat with the assistant.
        private: bool,
        /// The platform's message id.
        message_id: String,
        /// Approve or reject.
        verdict: protocol::message::Verdict,
        /// The short code (digits) the user typed.
        code: String,
    },
    /// Something the gateway does not handle (edits, joins, media, ...): skipped, but its
    /// cursor is still confirmed.
    Ignored {
        /// A short label for logs.
        what: &'static str,
    },
}

/// A message rendered for one platform.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    /// The text in the platform's markup.
    pub text: String,
    /// The buttons, one per row.
    pub buttons: Vec<Button>,
}

/// Where a posted message landed on the platform.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivered {
    /// The conversation id.
    pub chat_id: String,
    /// The platform's message id.
    pub message_id: String,
}

/// How a platform call failed, as far as the gateway's retry logic cares.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeliveryError {
    /// Rate limited: try again after this long.
    #[error("rate limited by the platform; retry after {0:?}")]
    RetryAfter(Duration),
    /// The platform or the network failed; retrying later may succeed.
    #[error("the platform is unreachable or failing: {0}")]
    Transient(String),
    /// Retrying cannot succeed (the user blocked the bot, the request is invalid).
    #[error("the platform refused the request: {0}")]
    Permanent(String),
    /// An edit changed nothing (the message already shows this): success for our purposes.
    #[error("the message already shows this content")]
    NotModified,
}

impl DeliveryError {
    /// A stable code for logs and users.
    pub fn code(&self) -> &'static str {
        match self {
            DeliveryError::RetryAfter(_) => "platform_rate_limited",
            DeliveryError::Transient(_) => "platform_unavailable",
            DeliveryError::Permanent(_) => "platform_refused",
            DeliveryError::NotModified => "platform_not_modified",
        }
    }
}

/// One chat platform. Implementations hold the platform client and nothing else: no NATS, no
/// storage.
pub trait Channel: Send + Sync + 'static {
    /// The channel's name (`telegram`): the last token of its subjects.
    fn name(&self) -> &ChannelName;

    /// Waits (long poll, bounded) for events after `after` (the cursor of the last event
    /// handled, `None` at first start). An empty answer is normal.
    fn poll(
        &self,
        after: Option<u64>,
    ) -> impl Future<Output = Result<Vec<InboundEvent>, DeliveryError>> + Send;

    /// Called once the event at `cursor` (and every event before it) has been handled for good:
    /// published and acknowledged by JetStream, or refused and audited, and the cursor
    /// persisted. Push-based platforms (Slack Socket Mode, webhooks, web chat) acknowledge the
    /// platform here, so an event the gateway has not secured is redelivered by the platform.
    /// Polling platforms need nothing (the next `poll` after the cursor is the acknowledgement).
    ///
    /// A push-based channel numbers its events itself: the first `poll` receives the
    /// persisted cursor, and every event it returns must have a cursor above it.
    fn confirm(&self, cursor: u64) -> impl Future<Output = ()> + Send {
        let _ = cursor;
        std::future::ready(())
    }

    /// Answers a button press (stops the client's spinner), with a short notification `text`
    /// if given. Best effort.
    fn answer_press(
        &self,
        press_id: &str,
        text: Option<&str>,
    ) -> impl Future<Output = Result<(), DeliveryError>> + Send;

    /// Posts a new message in `chat_id`.
    fn post(
        &self,
        chat_id: &str,
        message: &Rendered,
    ) -> impl Future<Output = Result<Delivered, DeliveryError>> + Send;

    /// Replaces the text and buttons of a message posted earlier.
    fn edit(
        &self,
        target: &Delivered,
        message: &Rendered,
    ) -> impl Future<Output = Result<(), DeliveryError>> + Send;

    /// Renders an explained plan.
    fn render_plan(&self, plan: &PlanProposal) -> Rendered;

    /// Renders a plain outbound message.
    fn render_message(&self, message: &OutboundMessage) -> Rendered;
}
