//! Slack payloads to channel-neutral events, pure.
//!
//! What it does: parses Socket Mode frames ([`parse_frame`]: `hello`, `disconnect`, and
//! `events_api` / `interactive` envelopes) and the payloads they carry, which are the same as
//! the Events API / interactivity HTTP bodies ([`parse_event_callback`],
//! [`parse_interaction`]), into [`InboundKind`]s with their dedup ids: `slack-<event_id>` for
//! events, `slack-<trigger_id>` (or `slack-<action_ts>-<user>`) for button presses, so a
//! redelivery is dropped by JetStream. A `message` event becomes text only if it is a plain
//! user message (no `subtype` — edits, joins, bot posts and deletions all carry one — and no
//! `bot_id`); it is private only with `channel_type: "im"`. A `block_actions` press is private
//! only in a direct-message conversation (its channel id starts with `D`; interactivity
//! payloads carry no `channel_type`). A payload from another workspace than the configured
//! `team_id` is ignored.
//!
//! What it does not do: no I/O, no allowlist (see [`crate::inbound::decide`]); slash commands,
//! views, shortcuts and every other event type are returned as `Ignored` so they are still
//! acknowledged. Unknown keys are ignored (Slack adds fields freely); it never panics on input.

use serde_json::Value;

use crate::channel::InboundKind;

/// One Socket Mode frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// The connection is ready.
    Hello,
    /// Slack will close this connection; reconnect.
    Disconnect {
        /// Slack's reason (`warning`, `refresh_requested`, `link_disabled`).
        reason: String,
    },
    /// An envelope to acknowledge, with the event it carries.
    Envelope {
        /// The id to acknowledge.
        envelope_id: String,
        /// The dedup id for publishing.
        dedup_id: String,
        /// What it is.
        kind: InboundKind,
    },
    /// Something else (not an envelope): nothing to do.
    Other,
}

fn str_at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    let mut at = v;
    for key in path {
        at = at.get(key)?;
    }
    at.as_str().filter(|s| !s.is_empty())
}

fn ignored(what: &'static str) -> InboundKind {
    InboundKind::Ignored { what }
}

/// Parses one Socket Mode text frame. `team`: the only workspace accepted, if configured.
pub fn parse_frame(text: &str, team: Option<&str>) -> Frame {
    let Ok(frame) = serde_json::from_str::<Value>(text) else {
        return Frame::Other;
    };
    match frame.get("type").and_then(Value::as_str) {
        Some("hello") => return Frame::Hello,
        Some("disconnect") => {
            return Frame::Disconnect {
                reason: str_at(&frame, &["reason"])
                    .unwrap_or("unknown")
                    .chars()
                    .take(64)
                    .collect(),
            };
        }
        _ => {}
    }
    let Some(envelope_id) = str_at(&frame, &["envelope_id"]) else {
        return Frame::Other;
    };
    let envelope_id: String = envelope_id.chars().take(128).collect();
    let fallback = format!("slack-env-{envelope_id}");
    let payload = frame.get("payload").unwrap_or(&Value::Null);
    let parsed = match frame.get("type").and_then(Value::as_str) {
        Some("events_api") => parse_event_callback(payload, team),
        Some("interactive") => parse_interaction(payload, team),
        _ => None,
    };
    let (dedup_id, kind) = parsed.unwrap_or((fallback, ignored("envelope_not_handled")));
    Frame::Envelope {
        envelope_id,
        dedup_id,
        kind,
    }
}

fn team_ok(team: Option<&str>, payload_team: Option<&str>) -> bool {
    team.is_none_or(|t| payload_team == Some(t))
}

/// Parses an `event_callback` (Events API body or `events_api` envelope payload). `None` if
/// it has no `event_id` (nothing to dedup on).
pub fn parse_event_callback(payload: &Value, team: Option<&str>) -> Option<(String, InboundKind)> {
    let event_id = str_at(payload, &["event_id"])?;
    if event_id.len() > 128 {
        return None;
    }
    let dedup = format!("slack-{event_id}");
    if str_at(payload, &["type"]) != Some("event_callback") {
        return Some((dedup, ignored("payload_not_handled")));
    }
    if !team_ok(team, str_at(payload, &["team_id"])) {
        return Some((dedup, ignored("other_team")));
    }
    let event = payload.get("event").unwrap_or(&Value::Null);
    if str_at(event, &["type"]) != Some("message") {
        return Some((dedup, ignored("event_not_handled")));
    }
    if event.get("subtype").is_some() || event.get("bot_id").is_some() {
        return Some((dedup, ignored("message_subtype")));
    }
    let (Some(user), Some(channel), Some(ts), Some(text)) = (
        str_at(event, &["user"]),
        str_at(event, &["channel"]),
        str_at(event, &["ts"]),
        event.get("text").and_then(Value::as_str),
    ) else {
        return Some((dedup, ignored("message_incomplete")));
    };
    let kind = InboundKind::Text {
        sender: user.to_owned(),
        chat_id: channel.to_owned(),
        private: str_at(event, &["channel_type"]) == Some("im"),
        message_id: ts.to_owned(),
        text: text.to_owned(),
    };
    Some((dedup, kind))
}

/// Parses an interactivity payload (the `payload=` form field, or an `interactive` envelope's
/// payload). `None` if it has neither a `trigger_id` nor an `action_ts` to dedup on.
pub fn parse_interaction(payload: &Value, team: Option<&str>) -> Option<(String, InboundKind)> {
    let action = payload
        .get("actions")
        .and_then(Value::as_array)
        .and_then(|a| a.first())
        .unwrap_or(&Value::Null);
    let user = str_at(payload, &["user", "id"]);
    let dedup = match (
        str_at(payload, &["trigger_id"]),
        str_at(action, &["action_ts"]),
    ) {
        (Some(trigger), _) => format!("slack-{trigger}"),
        (None, Some(ts)) => format!("slack-{ts}-{}", user.unwrap_or("nobody")),
        (None, None) => return None,
    };
    if dedup.len() > 200 {
        return None;
    }
    if str_at(payload, &["type"]) != Some("block_actions") {
        return Some((dedup, ignored("interaction_not_handled")));
    }
    let payload_team = str_at(payload, &["team", "id"]).or(str_at(payload, &["user", "team_id"]));
    if !team_ok(team, payload_team) {
        return Some((dedup, ignored("other_team")));
    }
    let Some(user) = user else {
        return Some((dedup, ignored("interaction_incomplete")));
    };
    if str_at(action, &["type"]) != Some("button") {
        return Some((dedup, ignored("action_not_a_button")));
    }
    let chat_id = str_at(payload, &["channel", "id"])
        .or(str_at(payload, &["container", "channel_id"]))
        .map(str::to_owned);
    let message_id = str_at(payload, &["container", "message_ts"])
        .or(str_at(payload, &["message", "ts"]))
        .map(str::to_owned);
    let press_id = str_at(payload, &["trigger_id"])
        .or(str_at(action, &["action_ts"]))
        .unwrap_or_default()
        .to_owned();
    let kind = InboundKind::Button {
        sender: user.to_owned(),
        private: chat_id.as_deref().is_some_and(|c| c.starts_with('D')),
        chat_id,
        message_id,
        press_id,
        payload: str_at(action, &["value"]).unwrap_or_default().to_owned(),
    };
    Some((dedup, kind))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn check(frame: &str, expect: expect_test::Expect) {
        expect.assert_eq(&format!("{:?}", parse_frame(frame, Some("T1"))));
    }

    #[test]
    fn frames() {
        check(
            r#"{"type":"hello","num_connections":1}"#,
            expect_test::expect!["Hello"],
        );
        check(
            r#"{"type":"disconnect","reason":"refresh_requested"}"#,
            expect_test::expect![[r#"Disconnect { reason: "refresh_requested" }"#]],
        );
        check("not json", expect_test::expect!["Other"]);
        check(
            r#"{"type":"events_api","envelope_id":"e1","payload":{"type":"event_callback","team_id":"T1","event_id":"Ev1","event":{"type":"message","channel_type":"im","user":"U1","channel":"D1","ts":"1.2","text":"hi <@U2>"}}}"#,
            expect_test::expect![[
                r#"Envelope { envelope_id: "e1", dedup_id: "slack-Ev1", kind: Text { sender: "U1", chat_id: "D1", private: true, message_id: "1.2", text: "hi <@U2>" } }"#
            ]],
        );
        check(
            r#"{"type":"events_api","envelope_id":"e1","payload":{"type":"event_callback","team_id":"T1","event_id":"Ev1","event":{"type":"message","channel_type":"channel","user":"U1","channel":"C1","ts":"1.2","text":"hi"}}}"#,
            expect_test::expect![[
                r#"Envelope { envelope_id: "e1", dedup_id: "slack-Ev1", kind: Text { sender: "U1", chat_id: "C1", private: false, message_id: "1.2", text: "hi" } }"#
            ]],
        );
        check(
            r#"{"type":"events_api","envelope_id":"e1","payload":{"type":"event_callback","team_id":"T1","event_id":"Ev1","event":{"type":"message","subtype":"message_changed","channel_type":"im","channel":"D1"}}}"#,
            expect_test::expect![[
                r#"Envelope { envelope_id: "e1", dedup_id: "slack-Ev1", kind: Ignored { what: "message_subtype" } }"#
            ]],
        );
        check(
            r#"{"type":"events_api","envelope_id":"e1","payload":{"type":"event_callback","team_id":"T1","event_id":"Ev1","event":{"type":"message","bot_id":"B1","user":"U1","channel_type":"im","channel":"D1","ts":"1","text":"x"}}}"#,
            expect_test::expect![[
                r#"Envelope { envelope_id: "e1", dedup_id: "slack-Ev1", kind: Ignored { what: "message_subtype" } }"#
            ]],
        );
        check(
            r#"{"type":"events_api","envelope_id":"e1","payload":{"type":"event_callback","team_id":"T9","event_id":"Ev1","event":{"type":"message"}}}"#,
            expect_test::expect![[
                r#"Envelope { envelope_id: "e1", dedup_id: "slack-Ev1", kind: Ignored { what: "other_team" } }"#
            ]],
        );
        check(
            r#"{"type":"events_api","envelope_id":"e1","payload":{"type":"event_callback"}}"#,
            expect_test::expect![[
                r#"Envelope { envelope_id: "e1", dedup_id: "slack-env-e1", kind: Ignored { what: "envelope_not_handled" } }"#
            ]],
        );
        check(
            r#"{"type":"slash_commands","envelope_id":"e2","payload":{"command":"/x"}}"#,
            expect_test::expect![[
                r#"Envelope { envelope_id: "e2", dedup_id: "slack-env-e2", kind: Ignored { what: "envelope_not_handled" } }"#
            ]],
        );
        check(
            r#"{"type":"interactive","envelope_id":"e3","payload":{"type":"block_actions","team":{"id":"T1"},"user":{"id":"U1"},"trigger_id":"tr1","channel":{"id":"D1"},"container":{"type":"message","message_ts":"5.6","channel_id":"D1"},"actions":[{"type":"button","action_id":"b0","value":"ap:1","action_ts":"7.8"}]}}"#,
            expect_test::expect![[
                r#"Envelope { envelope_id: "e3", dedup_id: "slack-tr1", kind: Button { sender: "U1", chat_id: Some("D1"), private: true, message_id: Some("5.6"), press_id: "tr1", payload: "ap:1" } }"#
            ]],
        );
        check(
            r#"{"type":"interactive","envelope_id":"e3","payload":{"type":"block_actions","team":{"id":"T1"},"user":{"id":"U1"},"channel":{"id":"C1"},"message":{"ts":"5.6"},"actions":[{"type":"button","value":"ap:1","action_ts":"7.8"}]}}"#,
            expect_test::expect![[
                r#"Envelope { envelope_id: "e3", dedup_id: "slack-7.8-U1", kind: Button { sender: "U1", chat_id: Some("C1"), private: false, message_id: Some("5.6"), press_id: "7.8", payload: "ap:1" } }"#
            ]],
        );
        check(
            r#"{"type":"interactive","envelope_id":"e4","payload":{"type":"view_submission","trigger_id":"tr2"}}"#,
            expect_test::expect![[
                r#"Envelope { envelope_id: "e4", dedup_id: "slack-tr2", kind: Ignored { what: "interaction_not_handled" } }"#
            ]],
        );
    }
}
