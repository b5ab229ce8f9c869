//! The functional core of request handling: decoding, the sender and action checks, the
//! argument check, and reply encoding. No I/O, no clock: the shell ([`crate::serve`]) runs the
//! token check (which needs the replay store) between [`screen`] and [`check_args`].

use protocol::manifest::{ActionSpec, CheckedManifest};
use protocol::message::{AgentReply, AgentRequest, ErrorCode, Invocation, MAX_LINE, Refusal};
use protocol::schema::Schema;
use protocol::{CorrelationId, Envelope, MAX_ENVELOPE_BYTES, MessageId, Principal, UnixMillis};
use serde::Deserialize;

/// A request arrived without a reply subject (so nothing can answer it).
pub const NO_REPLY_SUBJECT: &str = "no_reply_subject";
/// The envelope's sender is not the orchestrator.
pub const UNEXPECTED_SENDER: &str = "unexpected_sender";
/// The action is not in the agent's manifest.
pub const UNKNOWN_ACTION: &str = "unknown_action";
/// The arguments do not satisfy the action's schema.
pub const INVALID_ARGUMENTS: &str = "invalid_arguments";
/// The handler did not finish within the action's `timeout_ms`.
pub const HANDLER_TIMEOUT: &str = "handler_timeout";
/// The handler panicked.
pub const HANDLER_PANICKED: &str = "handler_panicked";
/// The agent stopped taking requests (shutdown) before this one was started.
pub const AGENT_SHUTTING_DOWN: &str = "agent_shutting_down";
/// The agent shut down before this request finished; its effect is unknown.
pub const AGENT_SHUTDOWN: &str = "agent_shutdown";
/// The handler's outcome could not be sent (over the envelope limit, or a summary breaking
/// the message rules).
pub const REPLY_TOO_LARGE: &str = "reply_too_large";

/// What is known about a request once its envelope decoded.
#[derive(Debug, Clone, PartialEq)]
pub struct Known {
    /// The user request it belongs to.
    pub correlation_id: CorrelationId,
    /// The invocation.
    pub invocation: Invocation,
}

/// A request refused before the handler ran.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejection {
    /// Stable code.
    pub code: ErrorCode,
    /// One line for operators.
    pub message: String,
    /// The correlation id, if the payload carried one.
    pub correlation_id: Option<CorrelationId>,
    /// The decoded request, if it decoded.
    pub known: Option<Box<Known>>,
}

impl Rejection {
    fn new(code: &str, message: &str, known: Option<Known>) -> Self {
        let known = known.map(Box::new);
        Rejection {
            code: code_of(code),
            message: one_line(message, MAX_LINE),
            correlation_id: known.as_ref().map(|k| k.correlation_id),
            known,
        }
    }

    /// The reply that answers it.
    pub fn reply(&self) -> AgentReply {
        AgentReply::Rejected(Refusal {
            code: self.code.clone(),
            message: self.message.clone(),
        })
    }
}

/// A request that passed decoding, the sender check and the action check.
#[derive(Debug, Clone, PartialEq)]
pub struct Screened<'m> {
    /// The decoded request.
    pub known: Known,
    /// Its action in the manifest.
    pub spec: &'m ActionSpec,
    /// The action's parameter schema.
    pub schema: &'m Schema,
}

#[derive(Deserialize)]
struct CorrelationProbe {
    correlation_id: CorrelationId,
}

/// Steps 2 to 4 of request handling: strict decoding (size first), the sender must be
/// `orchestrator`, and the action must be in `manifest`.
pub fn screen<'m>(
    payload: &[u8],
    orchestrator: &Principal,
    manifest: &'m CheckedManifest,
) -> Result<Screened<'m>, Rejection> {
    let envelope = match Envelope::<AgentRequest>::decode(payload) {
        Ok(e) => e,
        Err(e) => {
            let mut rejection = Rejection::new(e.code(), &e.to_string(), None);
            // Best effort, so the orchestrator can match the refusal to its request.
            if payload.len() <= MAX_ENVELOPE_BYTES {
                rejection.correlation_id = serde_json::from_slice::<CorrelationProbe>(payload)
                    .ok()
                    .map(|p| p.correlation_id);
            }
            return Err(rejection);
        }
    };
    let AgentRequest::Invoke(invocation) = envelope.body;
    let known = Known {
        correlation_id: envelope.correlation_id,
        invocation,
    };
    if &envelope.sender != orchestrator {
        let message = format!("commands come from {orchestrator} only");
        return Err(Rejection::new(UNEXPECTED_SENDER, &message, Some(known)));
    }
    let Some((spec, schema)) = manifest.action(&known.invocation.action) else {
        let message = format!(
            "{} offers no action {}",
            manifest.name(),
            known.invocation.action
        );
        return Err(Rejection::new(UNKNOWN_ACTION, &message, Some(known)));
    };
    Ok(Screened {
        known,
        spec,
        schema,
    })
}

/// Step 6: the arguments against the action's schema; the refusal lists the violations.
pub fn check_args(screened: &Screened<'_>) -> Result<(), Rejection> {
    screened
        .schema
        .validate(&screened.known.invocation.args)
        .map_err(|violations| {
            let list: Vec<String> = violations.iter().map(ToString::to_string).collect();
            Rejection::new(
                INVALID_ARGUMENTS,
                &list.join("; "),
                Some(screened.known.clone()),
            )
        })
}

/// Encodes the reply envelope. An outcome that cannot be encoded (over the envelope limit, or a
/// summary breaking the message rules) becomes `Failed{reply_too_large}`, so there is always
/// exactly one reply to send.
pub fn encode_reply(
    me: &Principal,
    correlation_id: CorrelationId,
    id: MessageId,
    sent_at: UnixMillis,
    reply: AgentReply,
) -> (Vec<u8>, AgentReply) {
    let envelope = Envelope::new(id, correlation_id, me.clone(), sent_at, reply);
    match envelope.encode() {
        Ok(bytes) => (bytes, envelope.body),
        Err(e) => {
            let fallback = AgentReply::Failed(Refusal {
                code: code_of(REPLY_TOO_LARGE),
                message: one_line(&format!("the outcome could not be sent: {e}"), MAX_LINE),
            });
            let envelope = Envelope::new(id, correlation_id, me.clone(), sent_at, fallback);
            // A fixed, short refusal always encodes.
            let bytes = envelope.encode().unwrap_or_default();
            (bytes, envelope.body)
        }
    }
}

/// A workspace error code (a constant of this crate or another code()), validated.
pub(crate) fn code_of(code: &str) -> ErrorCode {
    ErrorCode::new(code).unwrap_or_else(|_bad_code| ErrorCode::from_static("agent_error"))
}

/// `text` as one line of at most `max` bytes: control characters (newlines included) become
/// spaces, and a longer text is cut at a character boundary and ends in `…`.
pub fn one_line(text: &str, max: usize) -> String {
    let clean: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if clean.len() <= max {
        return clean;
    }
    let ellipsis = '…';
    let mut cut = max.saturating_sub(ellipsis.len_utf8());
    while !clean.is_char_boundary(cut) {
        cut -= 1;
    }
    let mut out = clean.get(..cut).unwrap_or_default().to_owned();
    out.push(ellipsis);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::message::Outcome;
    use protocol::{ActionName, PlanId};
    use serde_json::json;

    fn manifest() -> CheckedManifest {
        CheckedManifest::from_json(
            r#"{"name":"probe","description":"A test agent.","egress":"none","actions":[
                {"name":"thing.read","description":"Reads.","effect":"read","timeout_ms":1000,
                 "params":{"type":"object","properties":{"n":{"type":"integer","minimum":0,"maximum":9}},
                           "required":["n"],"additionalProperties":false}}]}"#,
        )
        .unwrap()
    }

    fn request(sender: &str, action: &str, args: serde_json::Value) -> Vec<u8> {
        Envelope::new(
            MessageId::from_bytes([1; 16]),
            CorrelationId::from_bytes([2; 16]),
            Principal::new(sender).unwrap(),
            UnixMillis(0),
            AgentRequest::Invoke(Invocation {
                plan_id: PlanId::from_bytes([3; 16]),
                step: 4,
                action: ActionName::new(action).unwrap(),
                args,
                token: "t".to_owned(),
            }),
        )
        .encode()
        .unwrap()
    }

    fn check(payload: &[u8]) -> String {
        let m = manifest();
        let outcome = screen(payload, &Principal::orchestrator(), &m)
            .and_then(|s| check_args(&s).map(|()| s));
        match outcome {
            Ok(s) => format!("ok {}", s.spec.name),
            Err(r) => format!(
                "{} [{}] correlation={} known={}: {}",
                r.code.as_str(),
                match r.reply() {
                    AgentReply::Rejected(_) => "rejected",
                    _ => "other",
                },
                r.correlation_id.is_some(),
                r.known.is_some(),
                r.message
            ),
        }
    }

    #[test]
    fn requests_are_screened_in_order() {
        let mut oversized = request("orchestrator", "thing.read", json!({"n": 1}));
        oversized.resize(MAX_ENVELOPE_BYTES + 1, b' ');
        let mut trailing_garbage = request("orchestrator", "thing.read", json!({"n": 1}));
        trailing_garbage.extend_from_slice(b"x");
        let cases: Vec<Vec<u8>> = vec![
            request("orchestrator", "thing.read", json!({"n": 1})),
            b"\x00\xffgarbage".to_vec(),
            oversized,
            trailing_garbage,
            br#"{"v":2,"correlation_id":"02020202-0202-0202-0202-020202020202"}"#.to_vec(),
            request("gateway", "thing.read", json!({"n": 1})),
            request("orchestrator", "door.unlock", json!({})),
            request("orchestrator", "thing.read", json!({"n": 12, "x": "a\nb"})),
            request("orchestrator", "thing.read", json!({})),
        ];
        let out: Vec<String> = cases.iter().map(|c| check(c)).collect();
        expect_test::expect![[r#"
            ok thing.read
            malformed_message [rejected] correlation=false known=false: malformed envelope: an envelope must be a JSON object
            payload_too_large [rejected] correlation=false known=false: payload of 65537 bytes exceeds the limit of 65536 bytes
            malformed_message [rejected] correlation=false known=false: malformed envelope: trailing characters at line 1 column 271
            unsupported_version [rejected] correlation=true known=false: unsupported envelope version 2
            unexpected_sender [rejected] correlation=true known=true: commands come from orchestrator only
            unknown_action [rejected] correlation=true known=true: probe offers no action door.unlock
            invalid_arguments [rejected] correlation=true known=true: /n: must be between 0 and 9, got 12; /: unknown property "x"
            invalid_arguments [rejected] correlation=true known=true: /: missing required property "n""#]]
        .assert_eq(&out.join("\n"));
    }

    #[test]
    fn text_is_cut_to_one_line() {
        assert_eq!(one_line("a\nb\tc", 10), "a b c");
        assert_eq!(one_line("abcdef", 6), "abcdef");
        assert_eq!(one_line("abcdefg", 6), "abc…");
        // Never splits a character.
        assert_eq!(one_line("ééééé", 6), "é…");
        assert!(one_line(&"x".repeat(5000), MAX_LINE).len() <= MAX_LINE);
    }

    #[test]
    fn an_outcome_that_cannot_be_sent_becomes_one_failure() {
        let me = Principal::new("probe").unwrap();
        let huge = AgentReply::Done(Outcome {
            summary: "ok".to_owned(),
            data: json!("x".repeat(MAX_ENVELOPE_BYTES)),
        });
        let (bytes, sent) = encode_reply(
            &me,
            CorrelationId::from_bytes([1; 16]),
            MessageId::from_bytes([2; 16]),
            UnixMillis(0),
            huge,
        );
        let AgentReply::Failed(r) = &sent else {
            panic!("{sent:?}")
        };
        assert_eq!(r.code.as_str(), REPLY_TOO_LARGE);
        let decoded = Envelope::<AgentReply>::decode(&bytes).unwrap();
        assert_eq!(decoded.body, sent);
        assert_eq!(decoded.sender, me);

        let bad_summary = AgentReply::Done(Outcome {
            summary: "two\nlines\u{7}".to_owned(),
            data: json!(null),
        });
        let (_, sent) = encode_reply(
            &me,
            CorrelationId::from_bytes([1; 16]),
            MessageId::from_bytes([2; 16]),
            UnixMillis(0),
            bad_summary,
        );
        assert!(matches!(sent, AgentReply::Failed(_)), "{sent:?}");
    }
}
