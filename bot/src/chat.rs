//! `bot chat`: a terminal chat channel over the same protocol as the notify gateway.
//!
//! Lines typed become `ChatIn::Text` on `chat.in.terminal` (JetStream, acknowledged); messages
//! for the terminal channel are pulled from the `out-terminal` consumer of `CHAT_OUT`, printed,
//! and acknowledged. A message with buttons (an explained plan's Approve / Reject, an alert's
//! Quarantine / Dismiss) lists them; typing a button's number or the first letters of its label
//! presses it (a `ChatDecision::Button` with the button's opaque payload, exactly as a chat app
//! would send it).
//!
//! It connects with the gateway's identity, which may only publish chat input and decisions and
//! read chat output: `bot chat` can ask and approve, nothing else.

use std::io::Write as _;

use futures::StreamExt as _;
use protocol::message::{
    Button, ButtonPress, ChatDecision, ChatIn, ChatOut, ChatRef, InboundText, PlanMessage,
    PlanProposal, PlatformRef,
};
use protocol::subject::stream;
use protocol::{
    ChannelName, ChatUser, CorrelationId, Envelope, MessageId, Principal, Subject, UnixMillis,
};

/// The terminal channel's name.
pub(crate) const CHANNEL: &str = "terminal";

/// Renders an explained plan for the terminal, from its structured steps only.
pub(crate) fn render_plan(p: &PlanProposal) -> String {
    let mut out = format!("Plan: {}\n", one_line(&p.summary));
    for (i, s) in p.steps.iter().enumerate() {
        let params =
            String::from_utf8(protocol::args::canonical_json(&s.params)).unwrap_or_default();
        let effect = match s.effect {
            protocol::message::Effect::Read => "reads",
            protocol::message::Effect::Change => "changes",
        };
        out.push_str(&format!(
            "  {}. {} {} {} ({effect})\n     why: {}\n",
            i + 1,
            s.agent,
            s.action,
            params,
            one_line(&s.why)
        ));
    }
    out.push_str(&format!(
        "  Code {} (for channels without buttons).\n",
        p.short_code
    ));
    out
}

/// Lists buttons as numbered choices.
pub(crate) fn render_buttons(buttons: &[Button]) -> String {
    buttons
        .iter()
        .enumerate()
        .map(|(i, b)| format!("[{}] {}", i + 1, one_line(&b.label)))
        .collect::<Vec<_>>()
        .join("   ")
}

/// Which button a typed line presses: its number, or the start of its label (case-insensitive,
/// at least one letter, unambiguous).
pub(crate) fn choose<'a>(buttons: &'a [Button], line: &str) -> Option<&'a Button> {
    let typed = line.trim().to_lowercase();
    if typed.is_empty() {
        return None;
    }
    if let Ok(n) = typed.parse::<usize>() {
        return n.checked_sub(1).and_then(|i| buttons.get(i));
    }
    let mut matches = buttons
        .iter()
        .filter(|b| b.label.to_lowercase().starts_with(&typed));
    let first = matches.next()?;
    if matches.next().is_some() {
        return None;
    }
    Some(first)
}

/// Control characters out, one line: text from the orchestrator is data, not terminal codes.
fn one_line(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// Text for the terminal: control characters other than newlines removed (so no escape
/// sequence from anywhere reaches the terminal).
fn printable(s: &str) -> String {
    s.chars()
        .filter(|c| !c.is_control() || *c == '\n')
        .collect()
}

/// Runs the chat until end of input. `user` is the terminal user's id (`terminal:<id>`).
pub(crate) async fn run(client: async_nats::Client, user: ChatUser) -> anyhow::Result<()> {
    let channel = ChannelName::new(CHANNEL)?;
    // The terminal user's private chat, like a chat app's direct chat: its id is the user's
    // id, which is also where alerts and the summary go by default.
    let chat = ChatRef {
        channel: channel.clone(),
        chat_id: PlatformRef::new(user.platform_id()).map_err(anyhow::Error::msg)?,
    };
    let js = async_nats::jetstream::new(client.clone());
    let consumer: async_nats::jetstream::consumer::PullConsumer = js
        .get_stream(stream::CHAT_OUT)
        .await?
        .get_consumer(&stream::chat_out_consumer(CHANNEL))
        .await
        .map_err(|e| anyhow::anyhow!("terminal consumer: {e}"))?;
    let mut messages = consumer
        .messages()
        .await
        .map_err(|e| anyhow::anyhow!("terminal messages: {e}"))?;

    let (lines_tx, mut lines) = tokio::sync::mpsc::channel::<String>(16);
    std::thread::spawn(move || {
        let stdin = std::io::stdin();
        let mut line = String::new();
        loop {
            line.clear();
            match stdin.read_line(&mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    if lines_tx.blocking_send(line.trim_end().to_owned()).is_err() {
                        break;
                    }
                }
            }
        }
    });

    let mut buttons: Vec<Button> = Vec::new();
    say(
        "Connected. Type a message (e.g. \"start bedtime\"); an empty line does nothing; Ctrl-D quits.",
    );
    loop {
        tokio::select! {
            line = lines.recv() => {
                let Some(line) = line else { break };
                if line.trim().is_empty() {
                    continue;
                }
                if let Some(b) = choose(&buttons, &line).cloned() {
                    let press = ChatDecision::Button(ButtonPress {
                        chat: chat.clone(),
                        user: user.clone(),
                        payload: b.payload.clone(),
                        platform_ref: PlatformRef::new(MessageId::random().to_string())
                            .map_err(anyhow::Error::msg)?,
                        message_ref: None,
                    });
                    publish(&js, Subject::chat_decision(&channel), press).await?;
                    say(&format!("> {}", one_line(&b.label)));
                    buttons.clear();
                    continue;
                }
                let text = ChatIn::Text(InboundText {
                    chat: chat.clone(),
                    user: user.clone(),
                    platform_message_id: PlatformRef::new(MessageId::random().to_string())
                        .map_err(anyhow::Error::msg)?,
                    text: line,
                });
                publish(&js, Subject::chat_in(&channel), text).await?;
            }
            message = messages.next() => {
                let Some(message) = message else { break };
                let message = message.map_err(|e| anyhow::anyhow!("chat output: {e}"))?;
                let shown = show(&message.subject, &message.payload, &mut buttons);
                say(&shown);
                message.ack().await.map_err(|e| anyhow::anyhow!("ack: {e}"))?;
            }
        }
    }
    Ok(())
}

/// Renders one outbound message and remembers its buttons.
pub(crate) fn show(subject: &str, payload: &[u8], buttons: &mut Vec<Button>) -> String {
    if subject.starts_with("plan.proposed.") {
        return match Envelope::<PlanMessage>::decode(payload) {
            Ok(e) => {
                let PlanMessage::Proposed(p) = e.body;
                *buttons = p.buttons.clone();
                format!("{}{}", render_plan(&p), render_buttons(buttons))
            }
            Err(err) => format!("(an unreadable plan message: {})", err.code()),
        };
    }
    match Envelope::<ChatOut>::decode(payload) {
        Ok(e) => {
            let (ChatOut::Post(m) | ChatOut::Update(m)) = e.body;
            let mut text = printable(&m.text);
            if !m.buttons.is_empty() {
                *buttons = m.buttons.clone();
                text.push('\n');
                text.push_str(&render_buttons(buttons));
            }
            text
        }
        Err(err) => format!("(an unreadable message: {})", err.code()),
    }
}

fn say(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{text}");
    let _ = out.flush();
}

async fn publish<B: protocol::Body>(
    js: &async_nats::jetstream::Context,
    subject: Subject,
    body: B,
) -> anyhow::Result<()> {
    let envelope = Envelope::new(
        MessageId::random(),
        CorrelationId::random(),
        Principal::gateway(),
        UnixMillis::now(),
        body,
    );
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-Msg-Id", envelope.id.to_string().as_str());
    js.publish_with_headers(String::from(subject), headers, envelope.encode()?.into())
        .await?
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn buttons() -> Vec<Button> {
        vec![
            Button {
                label: "Approve".to_owned(),
                payload: "a:1".to_owned(),
            },
            Button {
                label: "Reject".to_owned(),
                payload: "a:2".to_owned(),
            },
        ]
    }

    #[test]
    fn typed_lines_press_buttons_by_number_or_label() {
        let b = buttons();
        let pressed = |l: &str| choose(&b, l).map(|b| b.label.clone());
        assert_eq!(pressed("1").as_deref(), Some("Approve"));
        assert_eq!(pressed("2").as_deref(), Some("Reject"));
        assert_eq!(pressed("a").as_deref(), Some("Approve"));
        assert_eq!(pressed("APPROVE").as_deref(), Some("Approve"));
        assert_eq!(pressed(" r ").as_deref(), Some("Reject"));
        assert_eq!(pressed("3"), None);
        assert_eq!(pressed("0"), None);
        assert_eq!(pressed("start bedtime"), None);
        assert_eq!(pressed(""), None);
        let ambiguous = vec![
            Button {
                label: "Dismiss".to_owned(),
                payload: "x".to_owned(),
            },
            Button {
                label: "Disable".to_owned(),
                payload: "y".to_owned(),
            },
        ];
        assert!(choose(&ambiguous, "di").is_none());
        assert!(choose(&ambiguous, "dism").is_some());
    }

    #[test]
    fn a_plan_renders_from_its_structure_without_terminal_escapes() {
        let p = PlanProposal {
            plan_id: protocol::PlanId::from_bytes([1; 16]),
            approval_id: protocol::ApprovalId::from_bytes([2; 16]),
            chat: ChatRef {
                channel: ChannelName::new("terminal").unwrap(),
                chat_id: PlatformRef::new("terminal").unwrap(),
            },
            requested_by: ChatUser::new("terminal:me").unwrap(),
            summary: "Bedtime\u{1b}[2J".to_owned(),
            steps: vec![protocol::message::ProposedStep {
                agent: protocol::AgentName::new("hue").unwrap(),
                action: protocol::ActionName::new("room.set").unwrap(),
                params: serde_json::json!({"room": "Kitchen", "on": false}),
                why: "Kitchen off".to_owned(),
                effect: protocol::message::Effect::Change,
            }],
            buttons: buttons(),
            short_code: "4821".to_owned(),
            expires_at: UnixMillis(0),
        };
        expect_test::expect![[r#"
            Plan: Bedtime [2J
              1. hue room.set {"on":false,"room":"Kitchen"} (changes)
                 why: Kitchen off
              Code 4821 (for channels without buttons).
            [1] Approve   [2] Reject"#]]
        .assert_eq(&format!(
            "{}{}",
            render_plan(&p),
            render_buttons(&p.buttons)
        ));
    }
}
