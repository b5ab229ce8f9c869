//! Rendering for the web chat: plain text (the page shows it with `textContent`, never as
//! HTML) plus the buttons.
//!
//! What it does: a plan card lists the summary, each step (agent, action, effect, exact
//! parameters, why), the short code and the plan id; a message is its text. Control characters
//! other than newline and the bidirectional-override characters (which could make a parameter
//! read differently from what it is) become spaces. A card too long to show in full is cut and
//! carries no buttons (nobody approves what they could not see).
//!
//! What it does not do: no markup of any kind, so there is nothing to escape; the page is what
//! keeps the text inert.

use protocol::message::{OutboundMessage, PlanProposal};

use crate::channel::Rendered;
pub use crate::plain::clean;
use crate::plain::{cut, plan_body};

/// Longest text shown, in characters.
pub const MAX_WEB_TEXT: usize = 32 * 1024;

/// A plan card as plain text with its Approve / Reject buttons.
pub fn render_plan_text(p: &PlanProposal) -> Rendered {
    let mut text = plan_body(p);
    text.push_str(&format!(
        "\nCode {} · Plan {}",
        clean(&p.short_code),
        p.plan_id
    ));
    if text.chars().count() > MAX_WEB_TEXT {
        let note = "\n\n(Too long to show here in full; it cannot be approved from this page.)";
        let body = cut(text, MAX_WEB_TEXT - note.chars().count());
        return Rendered {
            text: format!("{body}{note}"),
            buttons: Vec::new(),
        };
    }
    Rendered {
        text,
        buttons: p.buttons.clone(),
    }
}

/// A plain outbound message: its text (cleaned, cut to fit) and its buttons.
pub fn render_message_text(m: &OutboundMessage) -> Rendered {
    Rendered {
        text: cut(clean(&m.text), MAX_WEB_TEXT),
        buttons: m.buttons.clone(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use protocol::message::{Button, ChatRef, Effect, PlatformRef, ProposedStep};
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

    fn chat() -> ChatRef {
        ChatRef {
            channel: ChannelName::new("web").unwrap(),
            chat_id: PlatformRef::new("web").unwrap(),
        }
    }

    fn plan(summary: &str, steps: usize) -> PlanProposal {
        PlanProposal {
            plan_id: PlanId::from_bytes([1; 16]),
            approval_id: ApprovalId::from_bytes([2; 16]),
            chat: chat(),
            requested_by: ChatUser::new("web:owner").unwrap(),
            summary: summary.into(),
            steps: (0..steps)
                .map(|i| ProposedStep {
                    agent: AgentName::new("hue").unwrap(),
                    action: ActionName::new(if i == 0 { "room.set" } else { "lights.list" })
                        .unwrap(),
                    params: serde_json::json!({"room": "Kitchen", "on": false}),
                    why: "Kitchen lights off: nobody needs them at night.".into(),
                    effect: if i == 0 { Effect::Change } else { Effect::Read },
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
    fn plan_card() {
        expect_test::expect![[r#"
            Plan: Bedtime

            1. hue room.set (changes)
               Params: {"on":false,"room":"Kitchen"}
               Why: Kitchen lights off: nobody needs them at night.

            2. hue lights.list (reads)
               Params: {"on":false,"room":"Kitchen"}
               Why: Kitchen lights off: nobody needs them at night.

            Code 4821 · Plan 01010101-0101-0101-0101-010101010101
            --
            [Approve|ap:1] [Reject|rj:1]"#]]
        .assert_eq(&show(&render_plan_text(&plan("Bedtime", 2))));
    }

    #[test]
    fn hostile_text_stays_text() {
        let m = OutboundMessage {
            chat: chat(),
            key: "k".into(),
            text: "<script>alert(1)</script> &amp; <img src=x onerror=alert(2)>\u{7}\u{1b}[31m \u{202E}gnp.exe\n\"quotes\" 'too'".into(),
            buttons: buttons(),
        };
        expect_test::expect![[r#"
            <script>alert(1)</script> &amp; <img src=x onerror=alert(2)>  [31m  gnp.exe
            "quotes" 'too'
            --
            [Approve|ap:1] [Reject|rj:1]"#]]
        .assert_eq(&show(&render_message_text(&m)));
    }

    #[test]
    fn an_oversized_card_is_cut_and_cannot_be_approved() {
        let mut p = plan(&"x".repeat(1000), 16);
        for s in &mut p.steps {
            s.why = "y".repeat(1000);
            s.params = serde_json::json!({"blob": "z".repeat(2000)});
        }
        let r = render_plan_text(&p);
        assert!(r.text.chars().count() <= MAX_WEB_TEXT);
        assert!(r.buttons.is_empty());
        assert!(r.text.ends_with("cannot be approved from this page.)"));
        let long = render_message_text(&OutboundMessage {
            chat: chat(),
            key: "k".into(),
            text: "a".repeat(MAX_WEB_TEXT + 10),
            buttons: vec![],
        });
        assert_eq!(long.text.chars().count(), MAX_WEB_TEXT);
    }
}
