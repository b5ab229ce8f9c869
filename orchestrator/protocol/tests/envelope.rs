//! Strict envelope decoding: one table of inputs, each with the outcome it must produce.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use protocol::message::ChatIn;
use protocol::{Body, Envelope};

fn decode<B: Body + std::fmt::Debug>(json: &str) -> String {
    match Envelope::<B>::decode(json.as_bytes()) {
        Ok(_) => "ok".to_owned(),
        Err(e) => format!("{}: {e}", e.code()),
    }
}

const HEAD: &str = r#""v":1,"id":"0b0a0a0a-0a0a-4a0a-8a0a-0a0a0a0a0a0a","correlation_id":"0c0a0a0a-0a0a-4a0a-8a0a-0a0a0a0a0a0a","sender":"gateway","sent_at":1767225600000"#;

fn chat(body: &str) -> String {
    format!("{{{HEAD},\"body\":{body}}}")
}

#[test]
fn chat_in_cases() {
    let text = |t: &str| {
        chat(&format!(
            r#"{{"text":{{"chat":{{"channel":"telegram","chat_id":"42"}},"user":"telegram:42","platform_message_id":"7","text":{}}}}}"#,
            serde_json::to_string(t).unwrap()
        ))
    };
    let cases = [
        ("valid", text("start bedtime")),
        (
            "unknown top-level field",
            chat(r#"{"text":{}}"#).replace("\"v\":1", "\"v\":1,\"extra\":true"),
        ),
        ("unknown body variant", chat(r#"{"voice":{}}"#)),
        (
            "unknown nested field",
            text("hi").replace(r#""text":"hi""#, r#""text":"hi","admin":true"#),
        ),
        ("version 2", text("hi").replace("\"v\":1", "\"v\":2")),
        (
            "version 2 with unknown shape",
            r#"{"v":2,"whatever":[]}"#.to_owned(),
        ),
        ("control characters", text("a\u{7}b")),
        ("text over 16 KiB", text(&"x".repeat(16 * 1024 + 1))),
        (
            "user on another channel",
            text("hi").replace(r#""user":"telegram:42""#, r#""user":"slack:U1""#),
        ),
        (
            "wildcard in channel",
            text("hi").replace(r#""channel":"telegram""#, r#""channel":"tele>""#),
        ),
        ("bad id", text("hi").replace("0b0a0a0a-", "0B0A0A0A-")),
        ("not json", "start bedtime".to_owned()),
        ("empty", String::new()),
        (
            "deep nesting",
            chat(&format!(
                r#"{{"text":{}{}}}"#,
                "[".repeat(200),
                "]".repeat(200)
            )),
        ),
        (
            "array instead of object",
            r#"[1,"0b0a0a0a-0a0a-4a0a-8a0a-0a0a0a0a0a0a"]"#.to_owned(),
        ),
        (
            "huge number version",
            text("hi").replace("\"v\":1", "\"v\":1e400"),
        ),
        (
            "wrong type",
            text("hi").replace("\"sent_at\":1767225600000", "\"sent_at\":\"now\""),
        ),
    ];
    let out: Vec<String> = cases
        .iter()
        .map(|(name, json)| {
            let r = decode::<ChatIn>(json);
            // Keep the snapshot readable: serde's messages carry positions; keep the code and
            // the first words.
            let short: String = r.chars().take(90).collect();
            format!("{name}: {short}")
        })
        .collect();
    expect_test::expect![[r#"
        valid: ok
        unknown top-level field: malformed_message: malformed envelope: unknown field `extra`, expected one of `v`, `id`, `
        unknown body variant: malformed_message: malformed envelope: unknown variant `voice`, expected `text` at line 1 
        unknown nested field: malformed_message: malformed envelope: unknown field `admin`, expected one of `chat`, `use
        version 2: unsupported_version: unsupported envelope version 2
        version 2 with unknown shape: unsupported_version: unsupported envelope version 2
        control characters: invalid_message: invalid envelope: text holds control characters
        text over 16 KiB: invalid_message: invalid envelope: text is 16385 bytes; the limit is 16384
        user on another channel: invalid_message: invalid envelope: user and chat are on different channels
        wildcard in channel: malformed_message: malformed envelope: invalid channel name (5 bytes): may hold only a-z, 
        bad id: malformed_message: malformed envelope: invalid MessageId at line 1 column 50
        not json: malformed_message: malformed envelope: an envelope must be a JSON object
        empty: malformed_message: malformed envelope: an envelope must be a JSON object
        deep nesting: malformed_message: malformed envelope: invalid type: sequence, expected a string at line 1
        array instead of object: malformed_message: malformed envelope: an envelope must be a JSON object
        huge number version: malformed_message: malformed envelope: number out of range at line 1 column 10
        wrong type: malformed_message: malformed envelope: invalid type: string "now", expected i64 at line 1 "#]]
    .assert_eq(&out.join("\n"));
}

#[test]
fn size_is_checked_before_parsing() {
    // 64 KiB + 1 of garbage: refused as too large, not as malformed (nothing was parsed).
    let big = vec![b'{'; protocol::MAX_ENVELOPE_BYTES + 1];
    let e = Envelope::<ChatIn>::decode(&big).unwrap_err();
    assert_eq!(e.code(), "payload_too_large");
}

#[test]
fn every_family_round_trips_and_refuses_foreign_bodies() {
    use protocol::message::*;
    use protocol::*;
    let id = MessageId::from_bytes([1; 16]);
    let corr = CorrelationId::from_bytes([2; 16]);
    let hue = AgentName::new("hue").unwrap();
    let req = Envelope::new(
        id,
        corr,
        Principal::orchestrator(),
        UnixMillis(1),
        AgentRequest::Invoke(Invocation {
            plan_id: PlanId::from_bytes([3; 16]),
            step: 0,
            action: ActionName::new("light.set").unwrap(),
            args: serde_json::json!({"light": "kitchen", "on": false}),
            token: "AQ".to_owned(),
        }),
    );
    let bytes = req.encode().unwrap();
    assert_eq!(Envelope::<AgentRequest>::decode(&bytes).unwrap(), req);
    // A command is not a chat message, a status or an audit event.
    assert!(Envelope::<ChatIn>::decode(&bytes).is_err());
    assert!(Envelope::<Status>::decode(&bytes).is_err());
    assert!(Envelope::<AuditEvent>::decode(&bytes).is_err());
    assert!(Envelope::<ChatDecision>::decode(&bytes).is_err());

    let audit = Envelope::new(
        id,
        corr,
        (&hue).into(),
        UnixMillis(1),
        AuditEvent::CommandRejected {
            code: ErrorCode::from_static("token_expired"),
            plan_id: None,
            step: None,
        },
    );
    let bytes = audit.encode().unwrap();
    let back = Envelope::<AuditEvent>::decode(&bytes).unwrap();
    assert_eq!(back.body.kind(), "command_rejected");
    assert_eq!(back, audit);
}

#[test]
fn encode_refuses_what_decode_would_refuse() {
    use protocol::message::*;
    use protocol::*;
    let too_long = Envelope::new(
        MessageId::from_bytes([1; 16]),
        CorrelationId::from_bytes([2; 16]),
        Principal::orchestrator(),
        UnixMillis(1),
        ChatOut::Post(OutboundMessage {
            chat: ChatRef {
                channel: ChannelName::new("telegram").unwrap(),
                chat_id: PlatformRef::new("42").unwrap(),
            },
            key: "k".to_owned(),
            text: "y".repeat(MAX_OUT_TEXT + 1),
            buttons: vec![],
        }),
    );
    assert!(too_long.encode().is_err());
}

#[test]
fn deeply_nested_arguments_hit_the_recursion_limit_not_the_stack() {
    let args = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    let json = format!(
        r#"{{{HEAD},"body":{{"invoke":{{"plan_id":"0d0a0a0a-0a0a-4a0a-8a0a-0a0a0a0a0a0a","step":0,"action":"light.set","args":{args},"token":"AQ"}}}}}}"#
    );
    let e = Envelope::<protocol::message::AgentRequest>::decode(json.as_bytes()).unwrap_err();
    assert_eq!(e.code(), "malformed_message");
    assert!(e.to_string().contains("recursion limit"), "{e}");
}
