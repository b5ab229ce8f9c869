//! The Telegram adapter (teloxide's raw requests, long polling; no dispatcher).
//!
//! What it does: `getUpdates` with our own offset (the cursor the gateway persisted plus one),
//! a bounded long-poll timeout and `allowed_updates = [message, callback_query]`; parses text
//! messages and callback queries into [`InboundEvent`]s (`tg-<update_id>` as their dedup id);
//! posts with `sendMessage` and edits with `editMessageText` in HTML parse mode with an inline
//! keyboard; answers callback queries (with a short notification text when a press is
//! refused); maps Bot API failures to [`DeliveryError`] (429 → `RetryAfter`, network / 5xx →
//! `Transient`, other refusals such as 403 → `Permanent`).
//! Rendering ([`render_plan_html`], [`render_message_html`]) escapes every piece of text for
//! HTML and keeps the message under Telegram's 4096-character limit.
//!
//! In webhook mode ([`Telegram::with_webhook`]) updates come from
//! [`crate::telegram_webhook`] instead, registered with `setWebhook` on the first poll; in
//! polling mode a webhook left set is removed (`deleteWebhook`, pending updates kept).
//!
//! What it does not do: media, groups (events from non-private chats are skipped by
//! the inbound decision), and it never logs or returns the bot token (teloxide strips URLs, which
//! hold the token, from network errors).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use protocol::ChannelName;
use protocol::message::{Button, Effect, OutboundMessage, PlanProposal};
use teloxide::ApiError;
use teloxide::RequestError;
use teloxide::payloads::{
    AnswerCallbackQuerySetters as _, EditMessageTextSetters as _, GetUpdatesSetters as _,
    SendMessageSetters as _, SetWebhookSetters as _,
};
use teloxide::requests::Requester as _;
use teloxide::types::{
    AllowedUpdate, CallbackQueryId, ChatId, InlineKeyboardButton, InlineKeyboardMarkup, MessageId,
    ParseMode, UpdateKind,
};

use crate::channel::{Channel, Delivered, DeliveryError, InboundEvent, InboundKind, Rendered};
use crate::telegram_webhook::WebhookInbox;

/// Telegram's longest message text, in UTF-16 code units.
pub const MAX_TEXT_UTF16: usize = 4096;
/// Most updates asked for per poll.
const POLL_LIMIT: u8 = 100;

/// A bot token, read from a file. Never printed.
#[derive(Clone)]
pub struct BotToken(String);

impl BotToken {
    /// Wraps a token (trimmed).
    pub fn new(token: &str) -> Self {
        BotToken(token.trim().to_owned())
    }
}

impl std::fmt::Debug for BotToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BotToken(<redacted>)")
    }
}

/// The Telegram channel.
#[derive(Debug, Clone)]
pub struct Telegram {
    bot: teloxide::Bot,
    name: ChannelName,
    poll_timeout: Duration,
    /// Webhook mode: updates arrive here instead of through `getUpdates`.
    webhook: Option<Arc<WebhookInbox>>,
}

impl Telegram {
    /// A client for `token`, against `api_url` (None: the real Bot API), long-polling for at
    /// most `poll_timeout` (kept below teloxide's 17 s HTTP timeout).
    pub fn new(
        token: &BotToken,
        api_url: Option<url::Url>,
        poll_timeout: Duration,
        name: ChannelName,
    ) -> Self {
        let mut bot = teloxide::Bot::new(token.0.clone());
        if let Some(url) = api_url {
            bot = bot.set_api_url(url);
        }
        Telegram {
            bot,
            name,
            poll_timeout: poll_timeout.min(Duration::from_secs(12)),
            webhook: None,
        }
    }

    /// Webhook mode: updates come from `inbox` (fed by its
    /// [`crate::telegram_webhook::WebhookServer`]); the webhook is registered on the first
    /// poll (and again after a failure).
    pub fn with_webhook(mut self, inbox: Arc<WebhookInbox>) -> Self {
        self.webhook = Some(inbox);
        self
    }

    async fn poll_webhook(&self, inbox: &WebhookInbox) -> Result<Vec<InboundEvent>, DeliveryError> {
        if !inbox.registered.load(Ordering::Acquire) {
            self.bot
                .set_webhook(inbox.url.clone())
                .secret_token(inbox.secret.expose())
                .allowed_updates([AllowedUpdate::Message, AllowedUpdate::CallbackQuery])
                .max_connections(1)
                .await
                .map_err(map_error)?;
            inbox.registered.store(true, Ordering::Release);
            tracing::info!(channel = %self.name, "webhook registered");
        }
        let updates = inbox
            .take(self.poll_timeout)
            .await
            .ok_or_else(|| DeliveryError::Transient("the webhook server stopped".to_owned()))?;
        Ok(updates.into_iter().map(event).collect())
    }
}

fn event(u: teloxide::types::Update) -> InboundEvent {
    let id = u64::from(u.id.0);
    InboundEvent {
        cursor: id,
        dedup_id: format!("tg-{id}"),
        kind: update_kind(u.kind),
    }
}

fn map_error(e: RequestError) -> DeliveryError {
    match e {
        RequestError::RetryAfter(s) => DeliveryError::RetryAfter(s.duration()),
        RequestError::Network(_) | RequestError::Io(_) | RequestError::InvalidJson { .. } => {
            DeliveryError::Transient(e.to_string())
        }
        RequestError::Api(ApiError::MessageNotModified) => DeliveryError::NotModified,
        RequestError::Api(ApiError::Unknown(ref d)) if is_server_error(d) => {
            DeliveryError::Transient(d.clone())
        }
        // A wrong token is an operator problem that may be fixed without a restart of NATS
        // traffic; keep the messages.
        RequestError::Api(ApiError::InvalidToken) => {
            DeliveryError::Transient("the bot token was refused".to_owned())
        }
        RequestError::Api(_) | RequestError::MigrateToChatId(_) => {
            DeliveryError::Permanent(e.to_string())
        }
    }
}

/// `getUpdates` refused because a webhook is set (409).
fn webhook_is_set(e: &RequestError) -> bool {
    match e {
        RequestError::Api(ApiError::CantGetUpdates) => true,
        RequestError::Api(ApiError::Unknown(d)) => d.contains("webhook is active"),
        _ => false,
    }
}

fn is_server_error(description: &str) -> bool {
    [
        "Internal Server Error",
        "Bad Gateway",
        "Service Unavailable",
        "Gateway Timeout",
    ]
    .iter()
    .any(|s| description.starts_with(s))
}

fn chat_id(s: &str) -> Result<ChatId, DeliveryError> {
    s.parse::<i64>().map(ChatId).map_err(|_not_a_number| {
        DeliveryError::Permanent("chat id is not a Telegram chat id".to_owned())
    })
}

fn keyboard(buttons: &[Button]) -> InlineKeyboardMarkup {
    InlineKeyboardMarkup::new(buttons.iter().map(|b| {
        vec![InlineKeyboardButton::callback(
            b.label.clone(),
            b.payload.clone(),
        )]
    }))
}

impl Channel for Telegram {
    fn name(&self) -> &ChannelName {
        &self.name
    }

    async fn poll(&self, after: Option<u64>) -> Result<Vec<InboundEvent>, DeliveryError> {
        if let Some(inbox) = &self.webhook {
            return self.poll_webhook(inbox).await;
        }
        let mut request = self
            .bot
            .get_updates()
            .timeout(u32::try_from(self.poll_timeout.as_secs()).unwrap_or(10))
            .limit(POLL_LIMIT)
            .allowed_updates([AllowedUpdate::Message, AllowedUpdate::CallbackQuery]);
        if let Some(last) = after {
            let next = i32::try_from(last.saturating_add(1)).map_err(|_overflow| {
                DeliveryError::Permanent("update id out of range".to_owned())
            })?;
            request = request.offset(next);
        }
        let updates = match request.await {
            Ok(u) => u,
            Err(e) if webhook_is_set(&e) => {
                // Left over from webhook mode: long polling needs it gone (pending updates kept).
                tracing::info!(channel = %self.name, "removing a webhook to long-poll");
                self.bot.delete_webhook().await.map_err(map_error)?;
                return Ok(Vec::new());
            }
            Err(e) => return Err(map_error(e)),
        };
        Ok(updates.into_iter().map(event).collect())
    }

    async fn confirm(&self, cursor: u64) {
        if let Some(inbox) = &self.webhook {
            inbox.confirm(cursor);
        }
    }

    async fn answer_press(&self, press_id: &str, text: Option<&str>) -> Result<(), DeliveryError> {
        let mut request = self
            .bot
            .answer_callback_query(CallbackQueryId(press_id.to_owned()));
        if let Some(text) = text {
            request = request.text(text);
        }
        request.await.map(|_| ()).map_err(map_error)
    }

    async fn post(&self, chat: &str, message: &Rendered) -> Result<Delivered, DeliveryError> {
        let mut request = self
            .bot
            .send_message(chat_id(chat)?, message.text.clone())
            .parse_mode(ParseMode::Html);
        if !message.buttons.is_empty() {
            request = request.reply_markup(keyboard(&message.buttons));
        }
        let sent = request.await.map_err(map_error)?;
        Ok(Delivered {
            chat_id: sent.chat.id.0.to_string(),
            message_id: sent.id.0.to_string(),
        })
    }

    async fn edit(&self, target: &Delivered, message: &Rendered) -> Result<(), DeliveryError> {
        let message_id = target.message_id.parse::<i32>().map_err(|_not_a_number| {
            DeliveryError::Permanent("stored message id is invalid".to_owned())
        })?;
        let mut request = self
            .bot
            .edit_message_text(
                chat_id(&target.chat_id)?,
                MessageId(message_id),
                message.text.clone(),
            )
            .parse_mode(ParseMode::Html);
        if !message.buttons.is_empty() {
            request = request.reply_markup(keyboard(&message.buttons));
        }
        request.await.map(|_| ()).map_err(map_error)
    }

    fn render_plan(&self, plan: &PlanProposal) -> Rendered {
        render_plan_html(plan)
    }

    fn render_message(&self, message: &OutboundMessage) -> Rendered {
        render_message_html(message)
    }
}

fn update_kind(kind: UpdateKind) -> InboundKind {
    match kind {
        UpdateKind::Message(m) => {
            let (Some(from), Some(text)) = (m.from.as_ref(), m.text()) else {
                return InboundKind::Ignored {
                    what: "message_without_text",
                };
            };
            InboundKind::Text {
                sender: from.id.0.to_string(),
                chat_id: m.chat.id.0.to_string(),
                private: m.chat.is_private(),
                message_id: m.id.0.to_string(),
                text: text.to_owned(),
            }
        }
        UpdateKind::CallbackQuery(q) => InboundKind::Button {
            sender: q.from.id.0.to_string(),
            chat_id: q.message.as_ref().map(|m| m.chat().id.0.to_string()),
            private: q.message.as_ref().is_some_and(|m| m.chat().is_private()),
            message_id: q.message.as_ref().map(|m| m.id().0.to_string()),
            press_id: q.id.0,
            payload: q.data.unwrap_or_default(),
        },
        _ => InboundKind::Ignored {
            what: "other_update",
        },
    }
}

// ---------------------------------------------------------------------------------------------
// Rendering (pure)

/// Escapes text for Telegram's HTML parse mode (`&`, `<`, `>`; quotes too, for safety inside
/// attributes, which we never emit).
pub fn escape_html(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            c if c.is_control() && c != '\n' => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

/// Escapes at most enough of `s` to fit `budget` UTF-16 units, appending `…` if cut.
fn escape_bounded(s: &str, budget: usize) -> String {
    let full = escape_html(s);
    if utf16_len(&full) <= budget {
        return full;
    }
    let mut out = String::new();
    let mut used = 0usize;
    for c in s.chars() {
        let piece = escape_html(&c.to_string());
        let n = utf16_len(&piece);
        if used + n + 1 > budget {
            break;
        }
        used += n;
        out.push_str(&piece);
    }
    out.push('…');
    out
}

fn utf16_len(s: &str) -> usize {
    s.encode_utf16().count()
}

/// A plan card: summary, each step (agent, action, exact parameters, why, effect), the
/// short code, and the buttons. If it does not fit Telegram's limit it is cut and carries no
/// buttons (nobody approves what they could not see).
pub fn render_plan_html(p: &PlanProposal) -> Rendered {
    let mut text = format!("<b>Plan:</b> {}\n", escape_bounded(&p.summary, 512));
    for (i, s) in p.steps.iter().enumerate() {
        let params =
            String::from_utf8(protocol::args::canonical_json(&s.params)).unwrap_or_default();
        let effect = match s.effect {
            Effect::Read => "reads",
            Effect::Change => "changes",
        };
        text.push_str(&format!(
            "\n{}. <b>{}</b> {} ({effect})\n<code>{}</code>\n<i>Why:</i> {}\n",
            i + 1,
            escape_html(s.agent.as_str()),
            escape_html(s.action.as_str()),
            escape_html(&params),
            escape_html(&s.why),
        ));
    }
    text.push_str(&format!("\nCode {}", escape_html(&p.short_code)));
    if utf16_len(&text) > MAX_TEXT_UTF16 {
        let note = "\n\n(Too long to show here in full; it cannot be approved from Telegram.)";
        let mut cut = String::new();
        for c in text.chars() {
            cut.push(c);
            if utf16_len(&cut) + utf16_len(note) + 8 > MAX_TEXT_UTF16 {
                break;
            }
        }
        // Plain text from here on: a cut may split a tag, so drop all markup.
        let plain = format!("{}{note}", strip_tags(&cut));
        return Rendered {
            text: plain,
            buttons: Vec::new(),
        };
    }
    Rendered {
        text,
        buttons: p.buttons.clone(),
    }
}

/// Removes `<...>` tags (our own markup only: user text inside was escaped) and a trailing
/// partial entity.
fn strip_tags(s: &str) -> String {
    let mut out = String::new();
    let mut in_tag = false;
    for c in s.chars() {
        match c {
            '<' => in_tag = true,
            '>' if in_tag => in_tag = false,
            c if !in_tag => out.push(c),
            _ => {}
        }
    }
    if let Some(amp) = out.rfind('&')
        && !out.get(amp..).is_some_and(|tail| tail.contains(';'))
    {
        out.truncate(amp);
    }
    out
}

/// A plain outbound message: its text escaped (and cut to fit), its buttons.
pub fn render_message_html(m: &OutboundMessage) -> Rendered {
    Rendered {
        text: escape_bounded(&m.text, MAX_TEXT_UTF16),
        buttons: m.buttons.clone(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use protocol::message::{ChatRef, PlatformRef, ProposedStep};
    use protocol::{ActionName, AgentName, ApprovalId, ChatUser, PlanId, UnixMillis};

    fn buttons() -> Vec<Button> {
        vec![
            Button {
                label: "Approve".into(),
                payload: "ap:1".into(),
            },
            Button {
                label: "Reject".into(),
                payload: "rj:1".into(),
            },
        ]
    }

    fn plan(summary: &str, steps: usize) -> PlanProposal {
        PlanProposal {
            plan_id: PlanId::from_bytes([1; 16]),
            approval_id: ApprovalId::from_bytes([2; 16]),
            chat: ChatRef {
                channel: ChannelName::new("telegram").unwrap(),
                chat_id: PlatformRef::new("42").unwrap(),
            },
            requested_by: ChatUser::new("telegram:42").unwrap(),
            summary: summary.into(),
            steps: (0..steps)
                .map(|_| ProposedStep {
                    agent: AgentName::new("hue").unwrap(),
                    action: ActionName::new("room.set").unwrap(),
                    params: serde_json::json!({"room": "<Kitchen> & \"Hall\"", "on": false}),
                    why: "Kitchen <b>off</b> & dark".into(),
                    effect: Effect::Change,
                })
                .collect(),
            buttons: buttons(),
            short_code: "4821".into(),
            expires_at: UnixMillis(0),
        }
    }

    fn show(r: &Rendered) -> String {
        let b: Vec<String> = r
            .buttons
            .iter()
            .map(|b| format!("[{}|{}]", b.label, b.payload))
            .collect();
        format!("{}\n--\n{}", r.text, b.join(" "))
    }

    #[test]
    fn plan_card_escapes_everything() {
        expect_test::expect![[r#"
            <b>Plan:</b> Bedtime &lt;script&gt; &amp; more

            1. <b>hue</b> room.set (changes)
            <code>{&quot;on&quot;:false,&quot;room&quot;:&quot;&lt;Kitchen&gt; &amp; \&quot;Hall\&quot;&quot;}</code>
            <i>Why:</i> Kitchen &lt;b&gt;off&lt;/b&gt; &amp; dark

            Code 4821
            --
            [Approve|ap:1] [Reject|rj:1]"#]]
        .assert_eq(&show(&render_plan_html(&plan("Bedtime <script> & more", 1))));
    }

    #[test]
    fn an_oversized_plan_is_cut_and_cannot_be_approved() {
        let mut p = plan(&"x".repeat(1000), 16);
        for s in &mut p.steps {
            s.why = "y".repeat(1000);
        }
        let r = render_plan_html(&p);
        assert!(utf16_len(&r.text) <= MAX_TEXT_UTF16);
        assert!(r.buttons.is_empty());
        assert!(!r.text.contains('<'));
        assert!(r.text.ends_with("cannot be approved from Telegram.)"));
    }

    #[test]
    fn messages_escape_and_fit() {
        let m = |text: &str| OutboundMessage {
            chat: ChatRef {
                channel: ChannelName::new("telegram").unwrap(),
                chat_id: PlatformRef::new("42").unwrap(),
            },
            key: "k".into(),
            text: text.into(),
            buttons: buttons(),
        };
        expect_test::expect![[r#"
            Done: lights &lt;off&gt; &amp; doors locked
            --
            [Approve|ap:1] [Reject|rj:1]"#]]
        .assert_eq(&show(&render_message_html(&m(
            "Done: lights <off> & doors locked",
        ))));
        let long = render_message_html(&m(&"&".repeat(5000)));
        assert!(utf16_len(&long.text) <= MAX_TEXT_UTF16);
        assert!(long.text.ends_with("&amp;…"));
    }

    #[test]
    fn token_is_redacted() {
        assert_eq!(
            format!("{:?}", BotToken::new("123:secret\n")),
            "BotToken(<redacted>)"
        );
    }
}
