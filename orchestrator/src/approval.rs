//! Approval: the pure state machine of a plan, the approval policy, and the opaque decision
//! payloads carried by chat buttons.
//!
//! Everything here is a function of its arguments: `now`, ids and keys are passed in, nothing
//! reads a clock, a file or the network.
//!
//! # States
//!
//! ```text
//! proposed ──approve──► approved ──► executing ──► done | failed | partly_done | outcome_unknown
//!    │  └────reject───► rejected
//!    └──────ttl────────► expired
//! (a read-only plan that policy lets run at once starts in `executing`)
//! ```
//!
//! A decision on anything but a `proposed` plan changes nothing ([`Transition::NoOp`]): a second
//! press, a press after a restart or a redelivered decision never executes twice.
//!
//! # Decision payloads
//!
//! `d1:<choice>:<id>:<mac>`: `choice` one letter (`A`pprove, `R`eject, `Q`uarantine,
//! `D`ismiss, re`L`ease), `id` the approval's (or alert's) 16 bytes and `mac` the first 16
//! bytes of HMAC-SHA256 under the orchestrator's decision key, both base64url without padding:
//! 50 bytes of `[A-Za-z0-9_:-]`, within Telegram's 64-byte `callback_data`. The MAC covers a
//! domain prefix, the choice, the id, the digest of what is decided on (the plan hash, or the
//! alert's digest), the chat and the user who may decide, each length-prefixed, and is checked
//! in constant time.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac as _};
use protocol::message::{ChatRef, Digest, Effect, Verdict};
use protocol::{ChatUser, UnixMillis};
use provision::MacKey;
use sha2::Sha256;

use crate::config::Require;

/// Domain prefix of decision MACs.
const DECISION_DOMAIN: &[u8] = b"assistant-decision-v1\0";
/// Bytes of the MAC kept in a payload.
pub const MAC_BYTES: usize = 16;
/// Digits of a short code.
pub const SHORT_CODE_DIGITS: u32 = 4;

/// Where a plan is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PlanState {
    /// Waiting for the user.
    Proposed,
    /// Approved, not started.
    Approved,
    /// Rejected by the user.
    Rejected,
    /// Nobody decided in time (or an approved plan could not start in time).
    Expired,
    /// Steps are running.
    Executing,
    /// Every step done.
    Done,
    /// Nothing done; a step failed or was refused.
    Failed,
    /// Some steps done, others failed or were not run.
    PartlyDone,
    /// A step's outcome is not known (the orchestrator stopped, or the agent did not answer).
    OutcomeUnknown,
}

impl PlanState {
    /// Every state, for tables.
    pub const ALL: [PlanState; 9] = [
        PlanState::Proposed,
        PlanState::Approved,
        PlanState::Rejected,
        PlanState::Expired,
        PlanState::Executing,
        PlanState::Done,
        PlanState::Failed,
        PlanState::PartlyDone,
        PlanState::OutcomeUnknown,
    ];

    /// The stored (and audited) name.
    pub fn as_str(self) -> &'static str {
        match self {
            PlanState::Proposed => "proposed",
            PlanState::Approved => "approved",
            PlanState::Rejected => "rejected",
            PlanState::Expired => "expired",
            PlanState::Executing => "executing",
            PlanState::Done => "done",
            PlanState::Failed => "failed",
            PlanState::PartlyDone => "partly_done",
            PlanState::OutcomeUnknown => "outcome_unknown",
        }
    }

    /// Parses a stored name.
    pub fn parse(s: &str) -> Option<PlanState> {
        PlanState::ALL.into_iter().find(|p| p.as_str() == s)
    }

    /// Nothing more will happen to the plan.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            PlanState::Rejected
                | PlanState::Expired
                | PlanState::Done
                | PlanState::Failed
                | PlanState::PartlyDone
                | PlanState::OutcomeUnknown
        )
    }

    /// Whether the machine may go from `self` to `to`.
    pub fn may_become(self, to: PlanState) -> bool {
        use PlanState as S;
        matches!(
            (self, to),
            (S::Proposed, S::Approved | S::Rejected | S::Expired)
                | (S::Approved, S::Executing | S::Expired)
                | (
                    S::Executing,
                    S::Done | S::Failed | S::PartlyDone | S::OutcomeUnknown
                )
        )
    }
}

/// Where one step is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StepState {
    /// Not started.
    Pending,
    /// Intent recorded (and audited): about to mint and dispatch.
    Intent,
    /// Token minted, request sent; no result recorded yet.
    Dispatched,
    /// The agent did it.
    Done,
    /// The agent tried and failed, or could not be reached (nothing happened).
    Failed,
    /// Refused before acting (by the agent, or by the orchestrator: quarantine, unknown action).
    Rejected,
    /// It may or may not have happened (crash between dispatch and result, no answer in time).
    Unknown,
    /// Not run because an earlier step did not succeed.
    Skipped,
}

impl StepState {
    /// Every state, for tables.
    pub const ALL: [StepState; 8] = [
        StepState::Pending,
        StepState::Intent,
        StepState::Dispatched,
        StepState::Done,
        StepState::Failed,
        StepState::Rejected,
        StepState::Unknown,
        StepState::Skipped,
    ];

    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            StepState::Pending => "pending",
            StepState::Intent => "intent",
            StepState::Dispatched => "dispatched",
            StepState::Done => "done",
            StepState::Failed => "failed",
            StepState::Rejected => "rejected",
            StepState::Unknown => "unknown",
            StepState::Skipped => "skipped",
        }
    }

    /// Parses a stored name.
    pub fn parse(s: &str) -> Option<StepState> {
        StepState::ALL.into_iter().find(|p| p.as_str() == s)
    }

    /// A result is recorded (or the step was skipped).
    pub fn is_final(self) -> bool {
        !matches!(
            self,
            StepState::Pending | StepState::Intent | StepState::Dispatched
        )
    }

    /// Whether the step may go from `self` to `to`.
    pub fn may_become(self, to: StepState) -> bool {
        use StepState as S;
        matches!(
            (self, to),
            (S::Pending, S::Intent | S::Rejected | S::Skipped)
                | (
                    S::Intent,
                    S::Dispatched | S::Rejected | S::Failed | S::Unknown
                )
                | (
                    S::Dispatched,
                    S::Done | S::Failed | S::Rejected | S::Unknown
                )
        )
    }
}

/// The plan's final state from its steps' final states.
pub fn plan_outcome(steps: &[StepState]) -> PlanState {
    let done = steps.iter().filter(|s| **s == StepState::Done).count();
    if steps.contains(&StepState::Unknown) {
        PlanState::OutcomeUnknown
    } else if done == steps.len() {
        PlanState::Done
    } else if done == 0 {
        PlanState::Failed
    } else {
        PlanState::PartlyDone
    }
}

/// Whether a plan with steps of these effects must be approved before it runs.
pub fn needs_approval(require: Require, effects: impl IntoIterator<Item = Effect>) -> bool {
    match require {
        Require::All => true,
        Require::Change => effects.into_iter().any(|e| e == Effect::Change),
    }
}

/// Why a decision was refused. Each has a stable code and a short message for the user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecisionRefusal {
    /// The payload is not one of ours (malformed, or the MAC does not verify).
    Tampered,
    /// No such approval or alert.
    Unknown,
    /// No open approval has this code in this chat.
    UnknownCode,
    /// Someone other than the user who asked.
    WrongUser,
    /// Pressed in another chat than the one the card was sent to.
    ForeignChat,
    /// Too late: the plan expired.
    Expired,
    /// Already decided: nothing more happens.
    AlreadyDecided,
}

impl DecisionRefusal {
    /// Stable code.
    pub fn code(self) -> &'static str {
        match self {
            DecisionRefusal::Tampered => "decision_tampered",
            DecisionRefusal::Unknown => "decision_unknown",
            DecisionRefusal::UnknownCode => "decision_unknown_code",
            DecisionRefusal::WrongUser => "decision_wrong_user",
            DecisionRefusal::ForeignChat => "decision_foreign_chat",
            DecisionRefusal::Expired => "decision_expired",
            DecisionRefusal::AlreadyDecided => "decision_already_decided",
        }
    }

    /// One sentence for the user.
    pub fn user_message(self) -> &'static str {
        match self {
            DecisionRefusal::Tampered => "That button is not valid; nothing was done.",
            DecisionRefusal::Unknown => "I do not know that request; nothing was done.",
            DecisionRefusal::UnknownCode => "No open plan has that code here; nothing was done.",
            DecisionRefusal::WrongUser => "Only the person who asked may decide; nothing was done.",
            DecisionRefusal::ForeignChat => {
                "That decision belongs to another chat; nothing was done."
            }
            DecisionRefusal::Expired => {
                "That plan expired before it was approved; nothing was done. Ask again."
            }
            DecisionRefusal::AlreadyDecided => "That was already decided; nothing more to do.",
        }
    }
}

/// What a decision on a plan does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// `proposed` → `approved` or `rejected`.
    Decide(Verdict),
    /// `proposed` past its TTL → `expired` (and the decision is refused as expired).
    Expire,
    /// Nothing changes: the plan is already in this state.
    NoOp(PlanState),
}

/// An approval as the decision logic sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApprovalView<'a> {
    /// The plan's state.
    pub state: PlanState,
    /// After this (exclusive) it can no longer be approved.
    pub expires_at: UnixMillis,
    /// The only user who may decide.
    pub requested_by: &'a ChatUser,
    /// The chat the card went to.
    pub chat: &'a ChatRef,
}

/// Decides what a decision does (pure). The caller has already checked that `by` is an owner
/// and, for buttons, the payload's MAC.
pub fn on_decision(
    approval: &ApprovalView<'_>,
    verdict: Verdict,
    by: &ChatUser,
    in_chat: &ChatRef,
    now: UnixMillis,
) -> Result<Transition, DecisionRefusal> {
    if in_chat != approval.chat {
        return Err(DecisionRefusal::ForeignChat);
    }
    if by != approval.requested_by {
        return Err(DecisionRefusal::WrongUser);
    }
    match approval.state {
        PlanState::Proposed if now >= approval.expires_at => Ok(Transition::Expire),
        PlanState::Proposed => Ok(Transition::Decide(verdict)),
        other => Ok(Transition::NoOp(other)),
    }
}

/// What a button decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Choice {
    /// Approve a plan.
    Approve,
    /// Reject a plan.
    Reject,
    /// Quarantine the agent an alert names.
    Quarantine,
    /// Dismiss an alert.
    Dismiss,
    /// Release a quarantined agent (the id is the alert that quarantined it).
    Release,
}

impl Choice {
    const ALL: [Choice; 5] = [
        Choice::Approve,
        Choice::Reject,
        Choice::Quarantine,
        Choice::Dismiss,
        Choice::Release,
    ];

    fn letter(self) -> u8 {
        match self {
            Choice::Approve => b'A',
            Choice::Reject => b'R',
            Choice::Quarantine => b'Q',
            Choice::Dismiss => b'D',
            Choice::Release => b'L',
        }
    }

    fn from_letter(b: u8) -> Option<Choice> {
        Choice::ALL.into_iter().find(|c| c.letter() == b)
    }

    /// The plan verdict, for plan choices.
    pub fn verdict(self) -> Option<Verdict> {
        match self {
            Choice::Approve => Some(Verdict::Approve),
            Choice::Reject => Some(Verdict::Reject),
            Choice::Quarantine | Choice::Dismiss | Choice::Release => None,
        }
    }

    /// The choice for a plan verdict.
    pub fn of_verdict(v: Verdict) -> Choice {
        match v {
            Verdict::Approve => Choice::Approve,
            Verdict::Reject => Choice::Reject,
        }
    }
}

/// What a payload's MAC binds besides the choice and the id.
#[derive(Debug, Clone, Copy)]
pub struct Binding<'a> {
    /// The digest of what is decided on (the plan hash, or the alert's digest).
    pub subject: &'a Digest,
    /// The chat the button was sent to.
    pub chat: &'a ChatRef,
    /// The user who may press it.
    pub user: &'a ChatUser,
}

/// A payload that parsed (its MAC not yet checked).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Payload {
    /// What it decides.
    pub choice: Choice,
    /// The approval's or alert's id.
    pub id: [u8; 16],
    mac: [u8; MAC_BYTES],
}

fn mac_of(key: &MacKey, choice: Choice, id: &[u8; 16], binding: &Binding<'_>) -> Hmac<Sha256> {
    // HMAC pads a key shorter than the hash's block with zeros, so this is HMAC under the
    // 32-byte key, built without a fallible constructor.
    let mut block = hmac::digest::Key::<Hmac<Sha256>>::default();
    for (d, s) in block.iter_mut().zip(key.bytes()) {
        *d = *s;
    }
    let mut mac = <Hmac<Sha256> as hmac::digest::KeyInit>::new(&block);
    let mut field = |bytes: &[u8]| {
        mac.update(&(bytes.len() as u64).to_be_bytes());
        mac.update(bytes);
    };
    field(DECISION_DOMAIN);
    field(&[choice.letter()]);
    field(id);
    field(&binding.subject.0);
    field(binding.chat.channel.as_str().as_bytes());
    field(binding.chat.chat_id.as_str().as_bytes());
    field(binding.user.as_str().as_bytes());
    mac
}

/// The payload of a button that decides `choice` on `id`.
pub fn encode_payload(
    key: &MacKey,
    choice: Choice,
    id: &[u8; 16],
    binding: &Binding<'_>,
) -> String {
    let tag = mac_of(key, choice, id, binding).finalize().into_bytes();
    let short = tag.get(..MAC_BYTES).unwrap_or_default();
    format!(
        "d1:{}:{}:{}",
        char::from(choice.letter()),
        URL_SAFE_NO_PAD.encode(id),
        URL_SAFE_NO_PAD.encode(short)
    )
}

/// Parses a payload's form (not its MAC).
pub fn parse_payload(text: &str) -> Result<Payload, DecisionRefusal> {
    let mut parts = text.split(':');
    let (Some("d1"), Some(choice), Some(id), Some(mac), None) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return Err(DecisionRefusal::Tampered);
    };
    let choice = match choice.as_bytes() {
        [b] => Choice::from_letter(*b).ok_or(DecisionRefusal::Tampered)?,
        _ => return Err(DecisionRefusal::Tampered),
    };
    let id = decode_exact::<16>(id)?;
    let mac = decode_exact::<MAC_BYTES>(mac)?;
    Ok(Payload { choice, id, mac })
}

fn decode_exact<const N: usize>(text: &str) -> Result<[u8; N], DecisionRefusal> {
    let bytes = URL_SAFE_NO_PAD
        .decode(text)
        .map_err(|_not_base64| DecisionRefusal::Tampered)?;
    // Only the canonical encoding is ours (base64 without padding has unused low bits).
    if URL_SAFE_NO_PAD.encode(&bytes) != text {
        return Err(DecisionRefusal::Tampered);
    }
    <[u8; N]>::try_from(bytes.as_slice()).map_err(|_wrong_length| DecisionRefusal::Tampered)
}

/// Checks a parsed payload's MAC against what it should bind, in constant time.
pub fn verify_payload(
    key: &MacKey,
    payload: &Payload,
    binding: &Binding<'_>,
) -> Result<(), DecisionRefusal> {
    mac_of(key, payload.choice, &payload.id, binding)
        .verify_truncated_left(&payload.mac)
        .map_err(|_mismatch| DecisionRefusal::Tampered)
}

/// A short numeric code from a random number (the caller retries on a collision in the chat).
pub fn short_code(random: u32) -> String {
    let modulus = 10u32.pow(SHORT_CODE_DIGITS);
    format!(
        "{:0width$}",
        random % modulus,
        width = SHORT_CODE_DIGITS as usize
    )
}

#[cfg(test)]
mod tests {
    use protocol::ChannelName;
    use protocol::message::PlatformRef;

    use super::*;

    fn chat(id: &str) -> ChatRef {
        ChatRef {
            channel: ChannelName::new("telegram").unwrap(),
            chat_id: PlatformRef::new(id).unwrap(),
        }
    }

    fn user(id: &str) -> ChatUser {
        ChatUser::new(format!("telegram:{id}")).unwrap()
    }

    #[test]
    fn state_names_round_trip_and_the_transition_table_is_exact() {
        for s in PlanState::ALL {
            assert_eq!(PlanState::parse(s.as_str()), Some(s));
        }
        for s in StepState::ALL {
            assert_eq!(StepState::parse(s.as_str()), Some(s));
        }
        assert_eq!(PlanState::parse("Proposed"), None);
        let mut table = String::new();
        for from in PlanState::ALL {
            let to: Vec<&str> = PlanState::ALL
                .into_iter()
                .filter(|t| from.may_become(*t))
                .map(PlanState::as_str)
                .collect();
            table.push_str(&format!(
                "{} ({}) -> {}\n",
                from.as_str(),
                if from.is_final() { "final" } else { "open" },
                to.join(", ")
            ));
        }
        for from in StepState::ALL {
            let to: Vec<&str> = StepState::ALL
                .into_iter()
                .filter(|t| from.may_become(*t))
                .map(StepState::as_str)
                .collect();
            table.push_str(&format!("step {} -> {}\n", from.as_str(), to.join(", ")));
        }
        expect_test::expect![[r#"
            proposed (open) -> approved, rejected, expired
            approved (open) -> expired, executing
            rejected (final) -> 
            expired (final) -> 
            executing (open) -> done, failed, partly_done, outcome_unknown
            done (final) -> 
            failed (final) -> 
            partly_done (final) -> 
            outcome_unknown (final) -> 
            step pending -> intent, rejected, skipped
            step intent -> dispatched, failed, rejected, unknown
            step dispatched -> done, failed, rejected, unknown
            step done -> 
            step failed -> 
            step rejected -> 
            step unknown -> 
            step skipped -> 
        "#]]
        .assert_eq(&table);
        // Final states never change.
        for from in PlanState::ALL.into_iter().filter(|s| s.is_final()) {
            assert!(PlanState::ALL.iter().all(|t| !from.may_become(*t)));
        }
    }

    #[test]
    fn plan_outcomes() {
        use StepState::*;
        let cases: &[(&[StepState], PlanState)] = &[
            (&[Done, Done], PlanState::Done),
            (&[Failed, Skipped], PlanState::Failed),
            (&[Rejected], PlanState::Failed),
            (&[Done, Failed, Skipped], PlanState::PartlyDone),
            (&[Done, Failed, Done], PlanState::PartlyDone),
            (&[Done, Unknown, Skipped], PlanState::OutcomeUnknown),
            (&[Unknown], PlanState::OutcomeUnknown),
        ];
        for (steps, want) in cases {
            assert_eq!(plan_outcome(steps), *want, "{steps:?}");
        }
    }

    #[test]
    fn the_policy_asks_for_changes_or_for_everything() {
        use Effect::{Change, Read};
        let cases = [
            (Require::Change, vec![Read], false),
            (Require::Change, vec![Read, Change], true),
            (Require::Change, vec![Change], true),
            (Require::All, vec![Read], true),
            (Require::All, vec![Change], true),
        ];
        for (require, effects, want) in cases {
            assert_eq!(
                needs_approval(require, effects.clone()),
                want,
                "{require:?} {effects:?}"
            );
        }
    }

    #[test]
    fn decisions_follow_the_table() {
        let me = user("1");
        let other = user("2");
        let here = chat("1");
        let there = chat("99");
        let view = |state| ApprovalView {
            state,
            expires_at: UnixMillis(1_000),
            requested_by: &me,
            chat: &here,
        };
        let cases = [
            (
                PlanState::Proposed,
                &me,
                &here,
                999,
                Ok(Transition::Decide(Verdict::Approve)),
            ),
            (
                PlanState::Proposed,
                &me,
                &here,
                1_000,
                Ok(Transition::Expire),
            ),
            (
                PlanState::Proposed,
                &other,
                &here,
                10,
                Err(DecisionRefusal::WrongUser),
            ),
            (
                PlanState::Proposed,
                &me,
                &there,
                10,
                Err(DecisionRefusal::ForeignChat),
            ),
            (
                PlanState::Approved,
                &me,
                &here,
                10,
                Ok(Transition::NoOp(PlanState::Approved)),
            ),
            (
                PlanState::Executing,
                &me,
                &here,
                10,
                Ok(Transition::NoOp(PlanState::Executing)),
            ),
            (
                PlanState::Done,
                &me,
                &here,
                5_000,
                Ok(Transition::NoOp(PlanState::Done)),
            ),
            (
                PlanState::Rejected,
                &me,
                &here,
                10,
                Ok(Transition::NoOp(PlanState::Rejected)),
            ),
            (
                PlanState::Expired,
                &me,
                &here,
                10,
                Ok(Transition::NoOp(PlanState::Expired)),
            ),
            (
                PlanState::Expired,
                &other,
                &here,
                10,
                Err(DecisionRefusal::WrongUser),
            ),
        ];
        for (state, by, in_chat, now, want) in cases {
            assert_eq!(
                on_decision(&view(state), Verdict::Approve, by, in_chat, UnixMillis(now)),
                want,
                "{state:?} by {by} in {in_chat:?} at {now}"
            );
        }
        assert_eq!(
            on_decision(
                &view(PlanState::Proposed),
                Verdict::Reject,
                &me,
                &here,
                UnixMillis(1)
            ),
            Ok(Transition::Decide(Verdict::Reject))
        );
    }

    fn key(b: u8) -> MacKey {
        MacKey::from_bytes([b; 32])
    }

    #[test]
    fn payloads_are_short_opaque_and_bound_to_everything() {
        let k = key(7);
        let me = user("5551234");
        let here = chat("5551234");
        let hash = Digest([3; 32]);
        let id = [0xab; 16];
        let binding = Binding {
            subject: &hash,
            chat: &here,
            user: &me,
        };
        let p = encode_payload(&k, Choice::Approve, &id, &binding);
        expect_test::expect!["d1:A:q6urq6urq6urq6urq6urqw:qy8ZdjMJw1eEeeqdapiFkQ"].assert_eq(&p);
        assert!(p.len() <= protocol::message::MAX_BUTTON_PAYLOAD);
        assert!(
            p.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b':')
        );
        let parsed = parse_payload(&p).unwrap();
        assert_eq!((parsed.choice, parsed.id), (Choice::Approve, id));
        assert_eq!(verify_payload(&k, &parsed, &binding), Ok(()));

        // Any other key, subject, chat or user fails.
        let other_hash = Digest([4; 32]);
        let other_chat = chat("1");
        let other_user = user("2");
        let bindings = [
            Binding {
                subject: &other_hash,
                ..binding
            },
            Binding {
                chat: &other_chat,
                ..binding
            },
            Binding {
                user: &other_user,
                ..binding
            },
        ];
        for b in bindings {
            assert_eq!(
                verify_payload(&k, &parsed, &b),
                Err(DecisionRefusal::Tampered)
            );
        }
        assert_eq!(
            verify_payload(&key(8), &parsed, &binding),
            Err(DecisionRefusal::Tampered)
        );

        // Flipping the verdict keeps the form but breaks the MAC.
        let flipped = p.replacen("d1:A:", "d1:R:", 1);
        let parsed = parse_payload(&flipped).unwrap();
        assert_eq!(
            verify_payload(&k, &parsed, &binding),
            Err(DecisionRefusal::Tampered)
        );
    }

    #[test]
    fn the_mac_is_standard_hmac_sha256_under_the_32_byte_key() {
        use hmac::Mac as _;
        let k = key(0x5a);
        let me = user("1");
        let here = chat("1");
        let hash = Digest([2; 32]);
        let binding = Binding {
            subject: &hash,
            chat: &here,
            user: &me,
        };
        let ours = mac_of(&k, Choice::Dismiss, &[1; 16], &binding)
            .finalize()
            .into_bytes();
        let mut reference = Hmac::<Sha256>::new_from_slice(k.bytes()).unwrap();
        let mut field = |bytes: &[u8]| {
            reference.update(&(bytes.len() as u64).to_be_bytes());
            reference.update(bytes);
        };
        field(DECISION_DOMAIN);
        field(b"D");
        field(&[1; 16]);
        field(&[2; 32]);
        field(b"telegram");
        field(b"1");
        field(b"telegram:1");
        assert_eq!(ours, reference.finalize().into_bytes());
    }

    #[test]
    fn every_single_byte_change_is_refused() {
        let k = key(9);
        let me = user("42");
        let here = chat("42");
        let hash = Digest([1; 32]);
        let binding = Binding {
            subject: &hash,
            chat: &here,
            user: &me,
        };
        let p = encode_payload(&k, Choice::Reject, &[5; 16], &binding);
        let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_:";
        for i in 0..p.len() {
            for &b in alphabet {
                let mut bytes = p.clone().into_bytes();
                if bytes[i] == b {
                    continue;
                }
                bytes[i] = b;
                let t = String::from_utf8(bytes).unwrap();
                let ok = parse_payload(&t).and_then(|parsed| verify_payload(&k, &parsed, &binding));
                assert_eq!(ok, Err(DecisionRefusal::Tampered), "{t}");
            }
        }
    }

    #[test]
    fn malformed_payloads_are_refused() {
        for p in [
            "",
            "d1",
            "d1:A",
            "d1:A:x:y",
            "d2:A:q6urq6urq6urq6urq6urqw:f98B4R_BNdYzBmcFvOr47w",
            "d1:X:q6urq6urq6urq6urq6urqw:f98B4R_BNdYzBmcFvOr47w",
            "d1:AA:q6urq6urq6urq6urq6urqw:f98B4R_BNdYzBmcFvOr47w",
            "d1:A:q6urq6urq6urq6urq6urqw:f98B4R_BNdYzBmcFvOr47w:extra",
            "d1:A:q6urq6urq6urq6urq6urq:f98B4R_BNdYzBmcFvOr47w",
            "d1:A:q6urq6urq6urq6urq6urqw==:f98B4R_BNdYzBmcFvOr47w",
        ] {
            assert_eq!(parse_payload(p), Err(DecisionRefusal::Tampered), "{p}");
        }
    }

    #[test]
    fn short_codes_have_four_digits() {
        assert_eq!(short_code(0), "0000");
        assert_eq!(short_code(4821), "4821");
        assert_eq!(short_code(1_234_567), "4567");
        assert_eq!(short_code(u32::MAX), "7295");
    }

    #[test]
    fn refusals_have_codes_and_messages() {
        for r in [
            DecisionRefusal::Tampered,
            DecisionRefusal::Unknown,
            DecisionRefusal::UnknownCode,
            DecisionRefusal::WrongUser,
            DecisionRefusal::ForeignChat,
            DecisionRefusal::Expired,
            DecisionRefusal::AlreadyDecided,
        ] {
            assert!(protocol::message::ErrorCode::new(r.code()).is_ok());
            assert!(r.user_message().ends_with('.'));
        }
    }
}
