//! Block Kit rendering for Slack, pure.
//!
//! What it does: turns plans and plain messages into Slack `mrkdwn` text ([`render_plan_mrkdwn`],
//! [`render_message_mrkdwn`]) with every piece of outside text escaped as Slack requires (`&`,
//! `<`, `>`; so `<!channel>`, `<@U…>` and links cannot be injected), backticks inside code
//! spans replaced so parameters cannot break out of them, and control characters blanked; and
//! turns a [`Rendered`] message into Block Kit ([`blocks`]): section blocks of at most
//! [`MAX_SECTION_TEXT`] characters, then one actions block with one button per protocol
//! [`Button`](protocol::message::Button) (its `value` is the opaque payload, its `action_id`
//! `b<index>`, distinct within the message).
//!
//! What it does not do: no I/O. It does not neutralise `*`, `_` or `~` in user text (Slack
//! has no escape for them): hostile text can change emphasis but never add mentions, links or
//! buttons. A plan too long for [`MAX_SECTIONS`] sections is cut and shown without buttons
//! (nobody approves what they could not see).

use protocol::message::{Effect, OutboundMessage, PlanProposal};
use serde_json::{Value, json};

use crate::channel::Rendered;

/// Slack's limit for a section block's text, in characters.
pub const MAX_SECTION_TEXT: usize = 3000;
/// How many section blocks a message may use (Slack allows 50 blocks in all).
pub const MAX_SECTIONS: usize = 10;
/// Slack's limit for a button's text, in characters.
pub const MAX_BUTTON_TEXT: usize = 75;
/// Slack's limit for the top-level `text` (notification fallback) we send, in characters.
pub const MAX_FALLBACK_TEXT: usize = 3000;

/// Escapes text for Slack `mrkdwn` (`&`, `<`, `>`), blanking control characters other than a
/// newline.
pub fn escape_mrkdwn(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            c if c.is_control() && c != '\n' => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

/// Escapes text for the inside of a code span: as [`escape_mrkdwn`], with backticks replaced
/// by `ˋ` (U+02CB) and newlines by spaces, so the span cannot be closed early.
fn escape_code(s: &str) -> String {
    escape_mrkdwn(s).replace('`', "\u{2cb}").replace('\n', " ")
}

/// At most `max` characters of `s`, with `…` appended if cut. Cuts before a partial `&…;`
/// entity, so an escaped text stays well formed.
fn cut_chars(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_owned();
    }
    let mut out: String = s.chars().take(max.saturating_sub(1)).collect();
    if let Some(amp) = out.rfind('&')
        && !out.get(amp..).is_some_and(|tail| tail.contains(';'))
    {
        out.truncate(amp);
    }
    out.push('…');
    out
}

/// A plan card: summary, each step (agent, action, exact parameters, why, effect), the short
/// code and the plan id (to quote when asking about it), and the buttons. Cut, without
/// buttons, if it does not fit [`MAX_SECTIONS`] sections.
pub fn render_plan_mrkdwn(p: &PlanProposal) -> Rendered {
    let mut text = format!("*Plan:* {}\n", cut_chars(&escape_mrkdwn(&p.summary), 512));
    for (i, s) in p.steps.iter().enumerate() {
        let params =
            String::from_utf8(protocol::args::canonical_json(&s.params)).unwrap_or_default();
        let effect = match s.effect {
            Effect::Read => "reads",
            Effect::Change => "changes",
        };
        text.push_str(&format!(
            "\n{}. *{}* `{}` ({effect})\n`{}`\n_Why:_ {}\n",
            i + 1,
            escape_mrkdwn(s.agent.as_str()),
            escape_code(s.action.as_str()),
            escape_code(&params),
            escape_mrkdwn(&s.why),
        ));
    }
    text.push_str(&format!(
        "\nCode {} · plan `{}`",
        escape_mrkdwn(&p.short_code),
        escape_code(&p.plan_id.to_string()),
    ));
    if text.chars().count() > MAX_SECTION_TEXT * MAX_SECTIONS - 200 {
        let note = "\n\n(Too long to show here in full; it cannot be approved from Slack.)";
        let cut = cut_chars(&text, MAX_SECTION_TEXT * MAX_SECTIONS - 400);
        return Rendered {
            text: format!("{cut}{note}"),
            buttons: Vec::new(),
        };
    }
    Rendered {
        text,
        buttons: p.buttons.clone(),
    }
}

/// A plain outbound message: its text escaped (and cut to fit), its buttons.
pub fn render_message_mrkdwn(m: &OutboundMessage) -> Rendered {
    Rendered {
        text: cut_chars(
            &escape_mrkdwn(&m.text),
            MAX_SECTION_TEXT * MAX_SECTIONS - 200,
        ),
        buttons: m.buttons.clone(),
    }
}

/// Splits already-escaped text into chunks of at most [`MAX_SECTION_TEXT`] characters, at
/// line ends when possible and never inside an `&…;` entity.
fn sections(text: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut current = String::new();
    let mut len = 0usize;
    for line in text.split_inclusive('\n') {
        let n = line.chars().count();
        if len + n <= MAX_SECTION_TEXT {
            current.push_str(line);
            len += n;
            continue;
        }
        if !current.is_empty() {
            out.push(std::mem::take(&mut current));
        }
        let mut rest = line.to_owned();
        while rest.chars().count() > MAX_SECTION_TEXT {
            let mut head: String = rest.chars().take(MAX_SECTION_TEXT).collect();
            if let Some(amp) = head.rfind('&')
                && !head.get(amp..).is_some_and(|tail| tail.contains(';'))
                && amp > 0
            {
                head.truncate(amp);
            }
            rest = rest.get(head.len()..).unwrap_or_default().to_owned();
            out.push(head);
        }
        len = rest.chars().count();
        current = rest;
    }
    if !current.trim().is_empty() {
        out.push(current);
    }
    out.truncate(MAX_SECTIONS);
    out
}

/// The Block Kit blocks for a rendered message: its text in section blocks, then its buttons
/// in one actions block (none if it has no buttons, which is how an edit removes them).
pub fn blocks(message: &Rendered) -> Value {
    let mut blocks: Vec<Value> = sections(&message.text)
        .into_iter()
        .map(|text| json!({"type": "section", "text": {"type": "mrkdwn", "text": text}}))
        .collect();
    if !message.buttons.is_empty() {
        let elements: Vec<Value> = message
            .buttons
            .iter()
            .take(25)
            .enumerate()
            .map(|(i, b)| {
                json!({
                    "type": "button",
                    "action_id": format!("b{i}"),
                    "text": {
                        "type": "plain_text",
                        "text": cut_chars(&b.label, MAX_BUTTON_TEXT),
                        "emoji": true,
                    },
                    "value": b.payload,
                })
            })
            .collect();
        blocks.push(json!({"type": "actions", "block_id": "decision", "elements": elements}));
    }
    Value::Array(blocks)
}

/// The top-level `text` sent with the blocks (notifications, and clients without Block Kit).
pub fn fallback_text(message: &Rendered) -> String {
    let text = cut_chars(&message.text, MAX_FALLBACK_TEXT);
    if text.trim().is_empty() {
        " ".to_owned()
    } else {
        text
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use protocol::message::{Button, ChatRef, PlatformRef, ProposedStep};
    use protocol::{ActionName, AgentName, ApprovalId, ChannelName, ChatUser, PlanId, UnixMillis};

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
                channel: ChannelName::new("slack").unwrap(),
                chat_id: PlatformRef::new("D0123").unwrap(),
            },
            requested_by: ChatUser::new("slack:U0123").unwrap(),
            summary: summary.into(),
            steps: (0..steps)
                .map(|_| ProposedStep {
                    agent: AgentName::new("hue").unwrap(),
                    action: ActionName::new("room.set").unwrap(),
                    params: serde_json::json!({"room": "<Kitchen> & `Hall`", "on": false}),
                    why: "Kitchen <!channel> off & <https://evil.example|dark>".into(),
                    effect: Effect::Change,
                })
                .collect(),
            buttons: buttons(),
            short_code: "4821".into(),
            expires_at: UnixMillis(0),
        }
    }

    fn show(r: &Rendered) -> String {
        serde_json::to_string_pretty(&json!({
            "text": fallback_text(r),
            "blocks": blocks(r),
        }))
        .unwrap()
    }

    #[test]
    fn plan_card_escapes_everything() {
        expect_test::expect![[r#"
            {
              "blocks": [
                {
                  "text": {
                    "text": "*Plan:* Bedtime &lt;@U999&gt; &amp; more\n\n1. *hue* `room.set` (changes)\n`{\"on\":false,\"room\":\"&lt;Kitchen&gt; &amp; ˋHallˋ\"}`\n_Why:_ Kitchen &lt;!channel&gt; off &amp; &lt;https://evil.example|dark&gt;\n\nCode 4821 · plan `01010101-0101-0101-0101-010101010101`",
                    "type": "mrkdwn"
                  },
                  "type": "section"
                },
                {
                  "block_id": "decision",
                  "elements": [
                    {
                      "action_id": "b0",
                      "text": {
                        "emoji": true,
                        "text": "Approve",
                        "type": "plain_text"
                      },
                      "type": "button",
                      "value": "ap:1"
                    },
                    {
                      "action_id": "b1",
                      "text": {
                        "emoji": true,
                        "text": "Reject",
                        "type": "plain_text"
                      },
                      "type": "button",
                      "value": "rj:1"
                    }
                  ],
                  "type": "actions"
                }
              ],
              "text": "*Plan:* Bedtime &lt;@U999&gt; &amp; more\n\n1. *hue* `room.set` (changes)\n`{\"on\":false,\"room\":\"&lt;Kitchen&gt; &amp; ˋHallˋ\"}`\n_Why:_ Kitchen &lt;!channel&gt; off &amp; &lt;https://evil.example|dark&gt;\n\nCode 4821 · plan `01010101-0101-0101-0101-010101010101`"
            }"#]]
        .assert_eq(&show(&render_plan_mrkdwn(&plan("Bedtime <@U999> & more", 1))));
    }

    #[test]
    fn an_oversized_plan_is_cut_and_cannot_be_approved() {
        let mut p = plan(&"x".repeat(1000), 40);
        for s in &mut p.steps {
            s.why = "&".repeat(1000);
        }
        let r = render_plan_mrkdwn(&p);
        assert!(r.buttons.is_empty());
        assert!(r.text.ends_with("cannot be approved from Slack.)"));
        let b = blocks(&r);
        let sections = b.as_array().unwrap();
        assert!(sections.len() <= MAX_SECTIONS);
        for s in sections {
            let t = s["text"]["text"].as_str().unwrap();
            assert!(t.chars().count() <= MAX_SECTION_TEXT);
            assert!(!t.ends_with("&am"), "entity split");
        }
    }

    #[test]
    fn messages_escape_and_an_edit_without_buttons_has_no_actions() {
        let m = |text: &str, buttons: Vec<Button>| OutboundMessage {
            chat: ChatRef {
                channel: ChannelName::new("slack").unwrap(),
                chat_id: PlatformRef::new("D0123").unwrap(),
            },
            key: "k".into(),
            text: text.into(),
            buttons,
        };
        expect_test::expect![[r#"
            {
              "blocks": [
                {
                  "text": {
                    "text": "Done: lights &lt;off&gt; &amp;  &lt;!here&gt; *not bold*",
                    "type": "mrkdwn"
                  },
                  "type": "section"
                }
              ],
              "text": "Done: lights &lt;off&gt; &amp;  &lt;!here&gt; *not bold*"
            }"#]]
        .assert_eq(&show(&render_message_mrkdwn(&m(
            "Done: lights <off> & \u{7}<!here> *not bold*",
            Vec::new(),
        ))));
        let long = render_message_mrkdwn(&m(&"<".repeat(40_000), buttons()));
        let b = blocks(&long);
        assert_eq!(b.as_array().unwrap().last().unwrap()["type"], "actions");
    }
}
