//! Plans: what the planners produce, what the user approves, what the executor runs.
//!
//! A [`Plan`] is fixed once proposed: its hash ([`Plan::hash`]) binds the approval and every
//! capability token, and nothing an agent returns can add, remove or change a step.

pub mod llm;
pub mod planners;
pub mod routine;
pub mod validate;

pub use llm::{AnswerFormat, LlmComposer, LlmConfig, LlmPlanner, LlmSetupError, SummarySource};
pub use planners::{Planners, PlannersError};
pub use routine::{RoutineLoadError, RoutineMatch, RoutinePlanner};
pub use validate::{DraftPlan, DraftStep, MAX_STEPS, Violation, ViolationKind, validate};

use protocol::message::{Digest, Effect, ErrorCode};
use protocol::{ActionName, AgentName, ChatUser, UnixMillis};
use serde::{Deserialize, Serialize};

/// One step, exactly as it will be executed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanStep {
    /// The agent that acts.
    pub agent: AgentName,
    /// The action.
    pub action: ActionName,
    /// The exact parameters (valid against the action's schema).
    pub params: serde_json::Value,
    /// Why this step is in the plan, shown to the user.
    pub why: String,
    /// Read or change (from the catalog, never from the planner).
    pub effect: Effect,
}

/// Which planner made a plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum PlannerKind {
    /// An offline routine from `prompts/routines/<name>.toml`.
    Routine(String),
    /// An LLM, by model name.
    Llm(String),
}

impl std::fmt::Display for PlannerKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PlannerKind::Routine(n) => write!(f, "routine:{n}"),
            PlannerKind::Llm(m) => write!(f, "llm:{m}"),
        }
    }
}

/// A validated plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Plan {
    /// One line for the user.
    pub summary: String,
    /// The steps, in execution order.
    pub steps: Vec<PlanStep>,
    /// Which planner made it.
    pub planner: PlannerKind,
    /// Keep going after a failed step (routines may say so); default: stop at the first.
    pub continue_on_failure: bool,
}

impl Plan {
    /// SHA-256 over a domain prefix and the canonical JSON of the whole plan: the value the
    /// approval and every token are bound to.
    pub fn hash(&self) -> Digest {
        use sha2::{Digest as _, Sha256};
        let value = serde_json::to_value(self).unwrap_or(serde_json::Value::Null);
        let mut h = Sha256::new();
        h.update(b"assistant-plan-v1\0");
        h.update(protocol::args::canonical_json(&value));
        Digest(h.finalize().into())
    }

    /// Whether any step changes the world.
    pub fn changes_world(&self) -> bool {
        self.steps.iter().any(|s| s.effect == Effect::Change)
    }
}

/// What the user asked, with the context a planner may use.
#[derive(Debug, Clone, Copy)]
pub struct PlanRequest<'a> {
    /// The user's words.
    pub text: &'a str,
    /// Who asked (already allowlisted).
    pub user: &'a ChatUser,
    /// Now.
    pub now: UnixMillis,
}

/// Why no plan came out, for the user (with a code) and for operators.
#[derive(Debug, Clone, PartialEq)]
pub struct PlanRefusal {
    /// Stable code, shown to the user with the correlation id.
    pub code: ErrorCode,
    /// One or two sentences for the user (never raw model output or internals).
    pub user_message: String,
    /// Details for the audit log and operators.
    pub detail: String,
}

/// What a planner made of a message.
#[derive(Debug, Clone, PartialEq)]
pub enum PlanOutcome {
    /// A validated plan to propose (or to run at once if it only reads).
    Plan(Plan),
    /// A reply in words, with no action (plain text, shown as such).
    Answer(String),
    /// Nothing usable: the user gets the message and the code.
    Refused(PlanRefusal),
}

/// A planner.
pub trait Planner: Send + Sync {
    /// Plans for one message.
    fn plan(&self, request: PlanRequest<'_>) -> impl Future<Output = PlanOutcome> + Send;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan() -> Plan {
        Plan {
            summary: "Bedtime".to_owned(),
            steps: vec![PlanStep {
                agent: AgentName::new("hue").unwrap(),
                action: ActionName::new("room.set").unwrap(),
                params: serde_json::json!({"room": "Kitchen", "on": false}),
                why: "Lights off in the kitchen".to_owned(),
                effect: Effect::Change,
            }],
            planner: PlannerKind::Routine("bedtime".to_owned()),
            continue_on_failure: false,
        }
    }

    #[test]
    fn the_hash_covers_every_part_of_the_plan() {
        let a = plan();
        let mut b = plan();
        assert_eq!(a.hash(), b.hash());
        b.steps[0].params = serde_json::json!({"room": "Kitchen", "on": true});
        assert_ne!(a.hash(), b.hash());
        let mut c = plan();
        c.steps[0].why = "other".to_owned();
        assert_ne!(a.hash(), c.hash());
        let mut d = plan();
        d.continue_on_failure = true;
        assert_ne!(a.hash(), d.hash());
        assert!(a.changes_world());
    }
}
