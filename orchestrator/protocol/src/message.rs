//! Message bodies: one closed enum per subject family.
//!
//! Every struct refuses unknown fields. Free text is bounded (see the `MAX_*` constants) and
//! checked for control characters by [`Body::validate`].

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::envelope::{Body, Family, check_len, check_text};
use crate::id::{ApprovalId, MessageId, PlanId, UnixMillis};
use crate::name::{ActionName, AgentName, ChannelName, ChatUser, Principal};

/// Longest user text accepted from a chat platform, in bytes.
pub const MAX_CHAT_TEXT: usize = 16 * 1024;
/// Longest text of an outbound chat message, in bytes.
pub const MAX_OUT_TEXT: usize = 16 * 1024;
/// Longest one-line summary or explanation ("why"), in bytes.
pub const MAX_LINE: usize = 1024;
/// Most steps in one plan.
pub const MAX_PLAN_STEPS: usize = 16;
/// Most buttons on one message.
pub const MAX_BUTTONS: usize = 8;
/// Longest button payload, in bytes: Telegram's `callback_data` limit.
pub const MAX_BUTTON_PAYLOAD: usize = 64;

/// An opaque platform reference: a chat id, message id or callback id as the platform spells
/// it. 1 to 128 bytes, no whitespace or control characters.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct PlatformRef(String);

impl PlatformRef {
    /// Validates and wraps.
    pub fn new(s: impl Into<String>) -> Result<Self, String> {
        let s = s.into();
        if s.is_empty() || s.len() > 128 {
            return Err(format!(
                "platform reference must be 1 to 128 bytes, got {}",
                s.len()
            ));
        }
        if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err("platform reference holds whitespace or control characters".to_owned());
        }
        Ok(PlatformRef(s))
    }
    /// The text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for PlatformRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PlatformRef({:?})", self.0)
    }
}

impl Serialize for PlatformRef {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for PlatformRef {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        PlatformRef::new(String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

/// A stable error code (`[a-z0-9_]`, 1 to 48 bytes), as produced by the `code()` methods.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct ErrorCode(String);

impl ErrorCode {
    /// Validates and wraps.
    pub fn new(s: impl Into<String>) -> Result<Self, String> {
        let s = s.into();
        if s.is_empty()
            || s.len() > 48
            || !s
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        {
            return Err("error code must be 1 to 48 bytes of [a-z0-9_]".to_owned());
        }
        Ok(ErrorCode(s))
    }
    /// Wraps a code that is a compile-time constant of this workspace.
    pub fn from_static(s: &'static str) -> Self {
        ErrorCode(s.to_owned())
    }
    /// The text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ErrorCode({})", self.0)
    }
}

impl Serialize for ErrorCode {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for ErrorCode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        ErrorCode::new(String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

/// A SHA-256 digest, hex on the wire.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Digest(pub [u8; 32]);

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({})", hex::encode(self.0))
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl Serialize for Digest {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(self.0))
    }
}

impl<'de> Deserialize<'de> for Digest {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        let mut out = [0u8; 32];
        if s.len() != 64 || s.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(serde::de::Error::custom(
                "digest must be 64 lowercase hex digits",
            ));
        }
        hex::decode_to_slice(s.as_bytes(), &mut out).map_err(serde::de::Error::custom)?;
        Ok(Digest(out))
    }
}

/// A chat conversation on one platform.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChatRef {
    /// The platform.
    pub channel: ChannelName,
    /// The platform's conversation id.
    pub chat_id: PlatformRef,
}

// ---------------------------------------------------------------------------------------------
// chat.in.<channel>

/// `chat.in.<channel>`: what a user said.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum ChatIn {
    /// A text message from an allowlisted user.
    Text(InboundText),
}

/// A text message from a user.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InboundText {
    /// Where it was said.
    pub chat: ChatRef,
    /// Who said it.
    pub user: ChatUser,
    /// The platform's id for this message (for de-duplication).
    pub platform_message_id: PlatformRef,
    /// The text.
    pub text: String,
}

impl Body for ChatIn {
    const FAMILY: Family = Family::ChatIn;
    fn validate(&self) -> Result<(), String> {
        match self {
            ChatIn::Text(t) => {
                check_text("text", &t.text, MAX_CHAT_TEXT)?;
                check_user_channel(&t.user, &t.chat)
            }
        }
    }
}

fn check_user_channel(user: &ChatUser, chat: &ChatRef) -> Result<(), String> {
    if user.channel() != chat.channel.as_str() {
        return Err("user and chat are on different channels".to_owned());
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// chat.decision.<channel>

/// `chat.decision.<channel>`: a user's decision on something we asked.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum ChatDecision {
    /// An inline button was pressed; the payload is the opaque, MAC'd value we attached.
    Button(ButtonPress),
    /// A typed reply such as "approve 4821" on a channel without buttons.
    Code(CodeReply),
}

/// A button press.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ButtonPress {
    /// Where.
    pub chat: ChatRef,
    /// Who pressed it.
    pub user: ChatUser,
    /// The button's payload, as attached by us (≤ 64 bytes).
    pub payload: String,
    /// The platform's id for the press (callback query id, action ts).
    pub platform_ref: PlatformRef,
    /// The platform's id of the message that carried the button, if it told us.
    pub message_ref: Option<PlatformRef>,
}

/// What a typed reply decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Go ahead.
    Approve,
    /// Do not.
    Reject,
}

/// A typed decision with the short code shown to the user.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CodeReply {
    /// Where.
    pub chat: ChatRef,
    /// Who.
    pub user: ChatUser,
    /// Approve or reject.
    pub verdict: Verdict,
    /// The short code (digits) from the plan message.
    pub code: String,
    /// The platform's id for the reply message.
    pub platform_ref: PlatformRef,
}

impl Body for ChatDecision {
    const FAMILY: Family = Family::ChatDecision;
    fn validate(&self) -> Result<(), String> {
        match self {
            ChatDecision::Button(b) => {
                check_button_payload(&b.payload)?;
                check_user_channel(&b.user, &b.chat)
            }
            ChatDecision::Code(c) => {
                if c.code.is_empty()
                    || c.code.len() > 12
                    || !c.code.bytes().all(|b| b.is_ascii_digit())
                {
                    return Err("code must be 1 to 12 digits".to_owned());
                }
                check_user_channel(&c.user, &c.chat)
            }
        }
    }
}

fn check_button_payload(p: &str) -> Result<(), String> {
    if p.is_empty() || p.len() > MAX_BUTTON_PAYLOAD {
        return Err(format!(
            "button payload must be 1 to {MAX_BUTTON_PAYLOAD} bytes"
        ));
    }
    if !p
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b':')
    {
        return Err("button payload must be [A-Za-z0-9_:-]".to_owned());
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// chat.out.<channel> and plan.proposed.<channel>

/// A button on an outbound message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Button {
    /// The label shown.
    pub label: String,
    /// The opaque payload returned on press (≤ 64 bytes, MAC'd by the orchestrator).
    pub payload: String,
}

/// A channel-neutral outbound message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutboundMessage {
    /// Where to send it.
    pub chat: ChatRef,
    /// Our key for this message, so a later update can edit it (e.g. the approval id).
    pub key: String,
    /// The text (plain; each channel escapes it for its own markup).
    pub text: String,
    /// Buttons, in order.
    pub buttons: Vec<Button>,
}

/// `chat.out.<channel>`: something to show the user.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum ChatOut {
    /// Send a new message.
    Post(OutboundMessage),
    /// Replace the text and buttons of the message we sent earlier under the same key.
    Update(OutboundMessage),
}

impl Body for ChatOut {
    const FAMILY: Family = Family::ChatOut;
    fn validate(&self) -> Result<(), String> {
        let (ChatOut::Post(m) | ChatOut::Update(m)) = self;
        check_outbound(m)
    }
}

fn check_outbound(m: &OutboundMessage) -> Result<(), String> {
    check_text("text", &m.text, MAX_OUT_TEXT)?;
    check_key(&m.key)?;
    check_len("buttons", &m.buttons, MAX_BUTTONS)?;
    for b in &m.buttons {
        check_text("button label", &b.label, 64)?;
        check_button_payload(&b.payload)?;
    }
    Ok(())
}

fn check_key(k: &str) -> Result<(), String> {
    if k.is_empty()
        || k.len() > 64
        || !k
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b':')
    {
        return Err("message key must be 1 to 64 bytes of [A-Za-z0-9_:-]".to_owned());
    }
    Ok(())
}

/// Whether an action only reads or changes the world.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Effect {
    /// Reads only; policy may let it run without approval.
    Read,
    /// Changes something; needs approval by default.
    Change,
}

/// One step of a proposed plan, exactly as it will be executed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProposedStep {
    /// The agent that will act.
    pub agent: AgentName,
    /// The action.
    pub action: ActionName,
    /// The exact parameters.
    pub params: serde_json::Value,
    /// Why this step is in the plan.
    pub why: String,
    /// Read or change.
    pub effect: Effect,
}

/// An explained plan awaiting the user's decision.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanProposal {
    /// The plan.
    pub plan_id: PlanId,
    /// The approval this card asks for.
    pub approval_id: ApprovalId,
    /// Where to show it.
    pub chat: ChatRef,
    /// Who asked (the only user who may decide).
    pub requested_by: ChatUser,
    /// One line.
    pub summary: String,
    /// The steps, in execution order.
    pub steps: Vec<ProposedStep>,
    /// Approve / Reject buttons.
    pub buttons: Vec<Button>,
    /// A short numeric code for channels without buttons ("approve 4821").
    pub short_code: String,
    /// After this the plan can no longer be approved.
    pub expires_at: UnixMillis,
}

/// `plan.proposed.<channel>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum PlanMessage {
    /// A plan to approve or reject.
    Proposed(PlanProposal),
}

impl Body for PlanMessage {
    const FAMILY: Family = Family::PlanProposed;
    fn validate(&self) -> Result<(), String> {
        let PlanMessage::Proposed(p) = self;
        check_text("summary", &p.summary, MAX_LINE)?;
        if p.steps.is_empty() {
            return Err("a plan needs at least one step".to_owned());
        }
        check_len("steps", &p.steps, MAX_PLAN_STEPS)?;
        for s in &p.steps {
            check_text("why", &s.why, MAX_LINE)?;
        }
        check_len("buttons", &p.buttons, MAX_BUTTONS)?;
        for b in &p.buttons {
            check_text("button label", &b.label, 64)?;
            check_button_payload(&b.payload)?;
        }
        if p.short_code.is_empty()
            || p.short_code.len() > 12
            || !p.short_code.bytes().all(|b| b.is_ascii_digit())
        {
            return Err("short code must be 1 to 12 digits".to_owned());
        }
        check_user_channel(&p.requested_by, &p.chat)
    }
}

// ---------------------------------------------------------------------------------------------
// cmd.<agent> and its reply

/// `cmd.<agent>`: a request to one agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum AgentRequest {
    /// Perform one action under a capability token.
    Invoke(Invocation),
}

/// One action to perform.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Invocation {
    /// The plan this step belongs to.
    pub plan_id: PlanId,
    /// The step's index in the plan.
    pub step: u16,
    /// The action.
    pub action: ActionName,
    /// The exact arguments; their canonical hash must equal the token's `args_sha256`.
    pub args: serde_json::Value,
    /// The `cap.v1` token, base64url without padding.
    pub token: String,
}

impl Body for AgentRequest {
    const FAMILY: Family = Family::Command;
    fn validate(&self) -> Result<(), String> {
        let AgentRequest::Invoke(i) = self;
        if i.token.len() > crate::token::MAX_TOKEN_TEXT {
            return Err("token text is over the size limit".to_owned());
        }
        Ok(())
    }
}

/// What an agent did with a request. Exactly one reply per request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum AgentReply {
    /// Done; `data` is untrusted output for the orchestrator to show or summarise.
    Done(Outcome),
    /// Refused before acting (bad token, unknown action, invalid arguments).
    Rejected(Refusal),
    /// Tried and failed.
    Failed(Refusal),
}

/// A successful outcome.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Outcome {
    /// One line for the user.
    pub summary: String,
    /// Structured result data (untrusted).
    pub data: serde_json::Value,
}

/// Why a request was refused or failed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Refusal {
    /// Stable code.
    pub code: ErrorCode,
    /// One line for operators; never secrets or raw internals.
    pub message: String,
}

impl Body for AgentReply {
    const FAMILY: Family = Family::Reply;
    fn validate(&self) -> Result<(), String> {
        match self {
            AgentReply::Done(o) => check_text("summary", &o.summary, MAX_LINE),
            AgentReply::Rejected(r) | AgentReply::Failed(r) => {
                check_text("message", &r.message, MAX_LINE)
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// status.<agent>

/// How strongly a running agent is isolated; every status shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Isolation {
    /// Its own hardened container (seccomp allowlist, read-only rootfs, no capabilities, own
    /// network).
    Container,
    /// A host process with no_new_privs, seccomp and Landlock where the kernel allows: weaker.
    Process,
    /// A host process without sandboxing (development only).
    None,
}

/// `status.<agent>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Status {
    /// A periodic heartbeat.
    Heartbeat(Heartbeat),
}

/// An agent's heartbeat.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Heartbeat {
    /// Build version of the agent.
    pub version: String,
    /// When the process started.
    pub started_at: UnixMillis,
    /// Resident memory, if the platform reports it.
    pub rss_bytes: Option<u64>,
    /// Requests being handled now.
    pub in_flight: u32,
    /// Requests handled since start.
    pub handled: u64,
    /// Isolation the agent runs under.
    pub isolation: IsolationReport,
}

/// How an agent is isolated, with the measures in force and those that could not be applied,
/// so weaker isolation is always visible.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IsolationReport {
    /// The backend.
    pub level: Isolation,
    /// Measures in force (e.g. `seccomp allowlist`, `landlock abi 4`).
    pub measures: Vec<String>,
    /// Measures that could not be applied here (e.g. `landlock: not supported by the kernel`).
    pub missing: Vec<String>,
}

impl Body for Status {
    const FAMILY: Family = Family::Status;
    fn validate(&self) -> Result<(), String> {
        let Status::Heartbeat(h) = self;
        check_text("version", &h.version, 64)?;
        check_len("isolation measures", &h.isolation.measures, 32)?;
        check_len("isolation gaps", &h.isolation.missing, 32)?;
        for m in h.isolation.measures.iter().chain(&h.isolation.missing) {
            check_text("isolation note", m, 128)?;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// audit.<principal>

/// A step as recorded in the audit log: who, what, and the hash of the exact arguments.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepDigest {
    /// Step index.
    pub step: u16,
    /// Agent.
    pub agent: AgentName,
    /// Action.
    pub action: ActionName,
    /// SHA-256 of the canonical arguments.
    pub args_sha256: Digest,
    /// The exact arguments.
    pub args: serde_json::Value,
}

/// `audit.<principal>`: one audit event. The envelope's message id is the event id: the audit
/// writer stores each id at most once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum AuditEvent {
    /// A user's message arrived.
    MessageReceived {
        /// Where.
        chat: ChatRef,
        /// Who.
        user: ChatUser,
        /// What they said.
        text: String,
    },
    /// A message from someone not on the allowlist was dropped.
    SenderRejected {
        /// The platform.
        channel: ChannelName,
        /// The sender's platform id, as the platform gave it.
        platform_user: String,
        /// Why.
        code: ErrorCode,
    },
    /// A chat user sent the one-time pairing code (`bot pair`) and was added to the gateway's
    /// allowlist.
    UserPaired {
        /// Who.
        user: ChatUser,
    },
    /// A message or press from an allowlisted user was refused at the gateway (too long, over
    /// the per-user rate): the user was told, nothing was published.
    InputRefused {
        /// Who sent it.
        by: ChatUser,
        /// Why.
        code: ErrorCode,
    },
    /// A plan was proposed.
    PlanProposed {
        /// Plan.
        plan_id: PlanId,
        /// Approval asked for.
        approval_id: ApprovalId,
        /// Who asked.
        requested_by: ChatUser,
        /// Which planner made it (`routine:<name>` or `llm:<model>`).
        planner: String,
        /// The steps.
        steps: Vec<StepDigest>,
    },
    /// A plan that only reads started at once, without asking: the approval policy lets
    /// read-only plans run (its tokens carry the read-only-by-policy binding).
    PlanStarted {
        /// Plan.
        plan_id: PlanId,
        /// Who asked.
        requested_by: ChatUser,
        /// Which planner made it (`routine:<name>` or `llm:<model>`).
        planner: String,
        /// The steps.
        steps: Vec<StepDigest>,
    },
    /// A plan was refused before anyone saw it (validation failed).
    PlanRefused {
        /// Which planner.
        planner: String,
        /// Why.
        code: ErrorCode,
        /// Details for operators.
        detail: String,
    },
    /// The user decided.
    ApprovalDecided {
        /// Approval.
        approval_id: ApprovalId,
        /// Plan.
        plan_id: PlanId,
        /// Approve or reject.
        verdict: Verdict,
        /// Who decided.
        by: ChatUser,
    },
    /// A decision was refused (wrong user, expired, tampered).
    DecisionRefused {
        /// Who tried.
        by: ChatUser,
        /// Why.
        code: ErrorCode,
    },
    /// Write-ahead: a step is about to be dispatched.
    StepIntent {
        /// Plan.
        plan_id: PlanId,
        /// The step.
        step: StepDigest,
        /// The token's nonce.
        jti: String,
    },
    /// A token was minted.
    TokenIssued {
        /// Plan.
        plan_id: PlanId,
        /// Step.
        step: u16,
        /// Audience.
        agent: AgentName,
        /// Action.
        action: ActionName,
        /// Key id.
        kid: u32,
        /// Nonce (hex).
        jti: String,
        /// Expiry (Unix seconds).
        exp: i64,
    },
    /// A step's result came back (or did not).
    StepResult {
        /// Plan.
        plan_id: PlanId,
        /// Step.
        step: u16,
        /// `done`, `rejected`, `failed`, `timeout` or `unknown`.
        outcome: String,
        /// Code if not done.
        code: Option<ErrorCode>,
    },
    /// An agent received a command.
    CommandReceived {
        /// Action.
        action: ActionName,
        /// Plan, if the request decoded that far.
        plan_id: Option<PlanId>,
        /// Step.
        step: Option<u16>,
    },
    /// An agent refused a command.
    CommandRejected {
        /// Why.
        code: ErrorCode,
        /// Plan, if known.
        plan_id: Option<PlanId>,
        /// Step, if known.
        step: Option<u16>,
    },
    /// An agent executed a command.
    CommandExecuted {
        /// Action.
        action: ActionName,
        /// Plan.
        plan_id: PlanId,
        /// Step.
        step: u16,
        /// Nonce (hex).
        jti: String,
    },
    /// An agent tried and failed.
    CommandFailed {
        /// Action.
        action: ActionName,
        /// Plan.
        plan_id: PlanId,
        /// Step.
        step: u16,
        /// Why.
        code: ErrorCode,
    },
    /// The egress proxy refused a connection.
    EgressRefused {
        /// Which agent asked; `None` when the client's address lies in no agent's subnet.
        agent: Option<AgentName>,
        /// The client's source IP address, as the proxy saw it.
        source: String,
        /// Host as asked (empty when the refusal came before the request could be read).
        host: String,
        /// Port as asked (0 when it could not be read).
        port: u16,
        /// Why.
        code: ErrorCode,
    },
    /// An alert was raised.
    AlertRaised {
        /// The alert.
        alert: Alert,
    },
    /// A service started.
    ServiceStarted {
        /// Version.
        version: String,
    },
    /// The planner answered in words, with no action.
    AnswerSent {
        /// Which planner.
        planner: String,
    },
    /// An approval ran out before anyone decided.
    ApprovalExpired {
        /// Approval.
        approval_id: ApprovalId,
        /// Plan.
        plan_id: PlanId,
    },
    /// A plan finished (or was found interrupted after a restart).
    PlanFinished {
        /// Plan.
        plan_id: PlanId,
        /// `done`, `failed`, `partly_done` or `outcome_unknown`.
        outcome: String,
    },
    /// The daily summary was sent.
    SummarySent {
        /// The local day it covers (`YYYY-MM-DD`).
        day: String,
        /// Sent late, after downtime.
        caught_up: bool,
    },
    /// The user decided on an alert.
    AlertDecided {
        /// The alert (its event id).
        alert: MessageId,
        /// `quarantine` or `dismiss`.
        decision: String,
        /// Who.
        by: ChatUser,
    },
    /// An agent was quarantined: its container stopped and its tokens refused.
    AgentQuarantined {
        /// The agent.
        agent: AgentName,
        /// The alert that led to it, if any.
        alert: Option<MessageId>,
    },
    /// An agent was released from quarantine.
    AgentReleased {
        /// The agent.
        agent: AgentName,
        /// Who released it.
        by: String,
    },
    /// nats-server reported an authentication or permission error.
    NatsViolation {
        /// The principal, if the server named a known identity.
        principal: Option<Principal>,
        /// `publish`, `subscribe` or `authentication`.
        kind: String,
        /// The subject (publish/subscribe) or the reason (authentication).
        subject: String,
    },
    /// The sandbox restarted an agent (crash or memory limit).
    AgentRestarted {
        /// The agent.
        agent: AgentName,
        /// Restarts so far.
        restart_count: u32,
        /// Killed by the memory limit.
        oom_killed: bool,
    },
    /// An agent runs a different image than it did.
    ImageDigestChanged {
        /// The agent.
        agent: AgentName,
        /// Before.
        previous: String,
        /// Now.
        current: String,
    },
}

impl Body for AuditEvent {
    const FAMILY: Family = Family::Audit;
    fn validate(&self) -> Result<(), String> {
        match self {
            AuditEvent::MessageReceived { text, .. } => check_text("text", text, MAX_CHAT_TEXT),
            AuditEvent::SenderRejected { platform_user, .. } => {
                check_text("platform_user", platform_user, 128)
            }
            AuditEvent::PlanProposed { planner, steps, .. } => {
                check_text("planner", planner, 128)?;
                check_len("steps", steps, MAX_PLAN_STEPS)
            }
            AuditEvent::PlanStarted { planner, steps, .. } => {
                check_text("planner", planner, 128)?;
                check_len("steps", steps, MAX_PLAN_STEPS)
            }
            AuditEvent::PlanRefused {
                planner, detail, ..
            } => {
                check_text("planner", planner, 128)?;
                check_text("detail", detail, MAX_LINE)
            }
            AuditEvent::StepResult { outcome, .. } => check_text("outcome", outcome, 32),
            AuditEvent::EgressRefused { host, source, .. } => {
                check_text("host", host, 255)?;
                check_text("source", source, 64)
            }
            AuditEvent::AlertRaised { alert } => alert.check(),
            AuditEvent::ServiceStarted { version } => check_text("version", version, 64),
            AuditEvent::AnswerSent { planner } => check_text("planner", planner, 128),
            AuditEvent::PlanFinished { outcome, .. } => check_text("outcome", outcome, 32),
            AuditEvent::SummarySent { day, .. } => check_text("day", day, 10),
            AuditEvent::AlertDecided { decision, .. } => check_text("decision", decision, 16),
            AuditEvent::AgentReleased { by, .. } => check_text("by", by, 128),
            AuditEvent::NatsViolation { kind, subject, .. } => {
                check_text("kind", kind, 16)?;
                check_text("subject", subject, 256)
            }
            AuditEvent::ImageDigestChanged {
                previous, current, ..
            } => {
                check_text("previous", previous, 80)?;
                check_text("current", current, 80)
            }
            AuditEvent::ApprovalExpired { .. }
            | AuditEvent::AgentQuarantined { .. }
            | AuditEvent::AgentRestarted { .. } => Ok(()),
            AuditEvent::StepIntent { jti, .. }
            | AuditEvent::TokenIssued { jti, .. }
            | AuditEvent::CommandExecuted { jti, .. } => check_text("jti", jti, 64),
            AuditEvent::ApprovalDecided { .. }
            | AuditEvent::DecisionRefused { .. }
            | AuditEvent::InputRefused { .. }
            | AuditEvent::UserPaired { .. }
            | AuditEvent::CommandReceived { .. }
            | AuditEvent::CommandRejected { .. }
            | AuditEvent::CommandFailed { .. } => Ok(()),
        }
    }
}

impl AuditEvent {
    /// The event's kind, as stored in the audit log's `kind` column.
    pub fn kind(&self) -> &'static str {
        match self {
            AuditEvent::MessageReceived { .. } => "message_received",
            AuditEvent::SenderRejected { .. } => "sender_rejected",
            AuditEvent::InputRefused { .. } => "input_refused",
            AuditEvent::UserPaired { .. } => "user_paired",
            AuditEvent::PlanProposed { .. } => "plan_proposed",
            AuditEvent::PlanStarted { .. } => "plan_started",
            AuditEvent::PlanRefused { .. } => "plan_refused",
            AuditEvent::ApprovalDecided { .. } => "approval_decided",
            AuditEvent::DecisionRefused { .. } => "decision_refused",
            AuditEvent::StepIntent { .. } => "step_intent",
            AuditEvent::TokenIssued { .. } => "token_issued",
            AuditEvent::StepResult { .. } => "step_result",
            AuditEvent::CommandReceived { .. } => "command_received",
            AuditEvent::CommandRejected { .. } => "command_rejected",
            AuditEvent::CommandExecuted { .. } => "command_executed",
            AuditEvent::CommandFailed { .. } => "command_failed",
            AuditEvent::EgressRefused { .. } => "egress_refused",
            AuditEvent::AlertRaised { .. } => "alert_raised",
            AuditEvent::ServiceStarted { .. } => "service_started",
            AuditEvent::AnswerSent { .. } => "answer_sent",
            AuditEvent::ApprovalExpired { .. } => "approval_expired",
            AuditEvent::PlanFinished { .. } => "plan_finished",
            AuditEvent::SummarySent { .. } => "summary_sent",
            AuditEvent::AlertDecided { .. } => "alert_decided",
            AuditEvent::AgentQuarantined { .. } => "agent_quarantined",
            AuditEvent::AgentReleased { .. } => "agent_released",
            AuditEvent::NatsViolation { .. } => "nats_violation",
            AuditEvent::AgentRestarted { .. } => "agent_restarted",
            AuditEvent::ImageDigestChanged { .. } => "image_digest_changed",
        }
    }
}

// ---------------------------------------------------------------------------------------------
// alert.<agent>

/// How bad.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// Worth a look.
    Warning,
    /// Act now.
    Critical,
}

/// An anomaly found by a watching agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Alert {
    /// The rule that fired (stable code).
    pub rule: ErrorCode,
    /// How bad.
    pub severity: Severity,
    /// The principal it is about, if any.
    pub subject: Option<Principal>,
    /// One line for the user.
    pub summary: String,
    /// Audit events that triggered it.
    pub evidence: Vec<MessageId>,
}

impl Alert {
    fn check(&self) -> Result<(), String> {
        check_text("summary", &self.summary, MAX_LINE)?;
        check_len("evidence", &self.evidence, 64)
    }
}

/// `alert.<agent>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum AlertMessage {
    /// An alert.
    Raised(Alert),
}

impl Body for AlertMessage {
    const FAMILY: Family = Family::Alert;
    fn validate(&self) -> Result<(), String> {
        let AlertMessage::Raised(a) = self;
        a.check()
    }
}
