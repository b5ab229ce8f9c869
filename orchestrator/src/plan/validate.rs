//! Plan validation: the one gate every plan passes before anyone sees it.
//!
//! [`validate`] is pure: it turns a [`DraftPlan`] (what a routine file or a model proposed,
//! with names still unchecked) into a [`Plan`] or into every [`Violation`] it found, each a
//! readable sentence (they are fed back to the model in its one repair round). It checks:
//! - the summary: one line, not empty, at most [`MAX_LINE`] bytes, no control characters and
//!   no invisible formatting characters (bidi overrides, zero-width characters:
//!   [`is_invisible_format`]), so the card reads as the plan runs;
//! - 1 to [`MAX_STEPS`] steps (a longer draft is refused on its length alone, so a 500-step
//!   answer costs no more than a 9-step one);
//! - each step: a known agent and one of its actions (in the catalog this installation
//!   enables), parameters valid against the action's schema and free of invisible formatting
//!   characters, and a why like the summary;
//! - no step repeated (same agent, action and parameters, or the same target with the same
//!   settings), and no two steps that contradict each other: two changes by the same action of
//!   the same agent to the same target (the values of the action's string parameters, which
//!   name what it acts on: light, room, scene; compared case-insensitively) that set a setting
//!   (a boolean or number) to different values (`on: true` then `on: false` for one room).
//!
//! The effect of every step (read or change) is taken from the catalog, never from the draft.
//!
//! What it does not do: it knows nothing about the world (whether a room exists, or which
//! lights a room holds), so a light and the room holding it are not compared; and it does not
//! judge whether a plan is wise, only whether it is well-formed and unambiguous.

use std::fmt;

use protocol::message::MAX_LINE;
use protocol::schema::Schema;
use protocol::{ActionName, AgentName};
use serde_json::Value;

use crate::catalog::Catalog;
use crate::plan::{Plan, PlanStep, PlannerKind};

/// Most steps in one plan (protocol allows up to `MAX_PLAN_STEPS`; a plan a person reads
/// before approving should be shorter).
pub const MAX_STEPS: usize = 8;
/// Most violations reported for one draft.
pub const MAX_VIOLATIONS: usize = 16;
/// Longest name echoed back in a violation, in characters.
const ECHO_CHARS: usize = 40;

/// A proposed plan before validation: names are plain strings, nothing is checked yet.
#[derive(Debug, Clone, PartialEq)]
pub struct DraftPlan {
    /// One line for the user.
    pub summary: String,
    /// The steps, in order.
    pub steps: Vec<DraftStep>,
    /// Who proposed it.
    pub planner: PlannerKind,
    /// Keep going after a failed step (routines only; a model's draft always says no).
    pub continue_on_failure: bool,
}

/// One proposed step.
#[derive(Debug, Clone, PartialEq)]
pub struct DraftStep {
    /// The agent, as proposed.
    pub agent: String,
    /// The action, as proposed.
    pub action: String,
    /// The parameters, as proposed.
    pub params: Value,
    /// Why, as proposed.
    pub why: String,
}

/// What kind of rule a violation broke.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ViolationKind {
    /// The summary is empty, too long or not one line.
    SummaryInvalid,
    /// The plan has no steps.
    NoSteps,
    /// The plan has more than [`MAX_STEPS`] steps.
    TooManySteps,
    /// A step names an agent that is not in the catalog.
    UnknownAgent,
    /// A step names an action its agent does not offer.
    UnknownAction,
    /// A step's parameters do not match the action's schema.
    ParamsInvalid,
    /// A step's why is empty, too long or not one line.
    WhyInvalid,
    /// A step repeats an earlier one.
    DuplicateStep,
    /// A step undoes or contradicts an earlier one.
    ContradictorySteps,
}

impl ViolationKind {
    /// Stable code (also the refusal code when a model's plan stays invalid).
    pub fn code(self) -> &'static str {
        match self {
            ViolationKind::SummaryInvalid => "plan_summary_invalid",
            ViolationKind::NoSteps => "plan_no_steps",
            ViolationKind::TooManySteps => "plan_too_many_steps",
            ViolationKind::UnknownAgent => "plan_unknown_agent",
            ViolationKind::UnknownAction => "plan_unknown_action",
            ViolationKind::ParamsInvalid => "plan_params_invalid",
            ViolationKind::WhyInvalid => "plan_why_invalid",
            ViolationKind::DuplicateStep => "plan_duplicate_step",
            ViolationKind::ContradictorySteps => "plan_contradictory_steps",
        }
    }
}

/// One broken rule, as a sentence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// The rule.
    pub kind: ViolationKind,
    /// The step it concerns (1-based), if one.
    pub step: Option<usize>,
    /// What is wrong, in words.
    pub message: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.step {
            Some(n) => write!(f, "step {n}: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

/// A name from a draft, shortened and quoted for a message.
fn echo(s: &str) -> String {
    let cut: String = s.chars().take(ECHO_CHARS).collect();
    if cut.len() < s.len() {
        format!("{:?}…", cut)
    } else {
        format!("{cut:?}")
    }
}

/// Characters that reorder or hide text (bidi controls, zero-width characters, word joiners,
/// the byte-order mark): a plan shown for approval must read as it runs.
pub fn is_invisible_format(c: char) -> bool {
    matches!(c,
        '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{2064}'
        | '\u{2066}'..='\u{2069}' | '\u{FEFF}' | '\u{061C}' | '\u{00AD}')
}

/// The first parameter (as a path) whose text holds an invisible formatting character.
fn hidden_text(value: &Value, path: &str) -> Option<String> {
    match value {
        Value::String(s) if s.chars().any(is_invisible_format) => Some(path.to_owned()),
        Value::Object(map) => map
            .iter()
            .find_map(|(k, v)| hidden_text(v, &format!("{path}/{k}"))),
        Value::Array(list) => list
            .iter()
            .enumerate()
            .find_map(|(i, v)| hidden_text(v, &format!("{path}/{i}"))),
        _ => None,
    }
}

/// Checks one line of text (summary or why).
fn check_line(what: &str, text: &str) -> Option<String> {
    if text.trim().is_empty() {
        Some(format!("the {what} is empty"))
    } else if text.len() > MAX_LINE {
        Some(format!(
            "the {what} is {} bytes long; the limit is {MAX_LINE}",
            text.len()
        ))
    } else if text.chars().any(char::is_control) {
        Some(format!(
            "the {what} holds control characters or line breaks; write one line"
        ))
    } else if text.chars().any(is_invisible_format) {
        Some(format!(
            "the {what} holds invisible formatting characters; write plain text"
        ))
    } else {
        None
    }
}

/// A step that passed the name checks, with what the later checks need.
struct Checked<'a> {
    index: usize,
    agent: AgentName,
    action: ActionName,
    params: &'a Value,
    effect: protocol::message::Effect,
    schema: &'static Schema,
}

/// Validates a draft against the catalog: a plan, or every violation found (at most
/// [`MAX_VIOLATIONS`], in step order).
pub fn validate(catalog: &Catalog, draft: DraftPlan) -> Result<Plan, Vec<Violation>> {
    let mut out = Vec::new();
    if let Some(m) = check_line("summary", &draft.summary) {
        out.push(Violation {
            kind: ViolationKind::SummaryInvalid,
            step: None,
            message: m,
        });
    }
    if draft.steps.is_empty() {
        out.push(Violation {
            kind: ViolationKind::NoSteps,
            step: None,
            message: "a plan needs at least one step".to_owned(),
        });
        return Err(out);
    }
    if draft.steps.len() > MAX_STEPS {
        out.push(Violation {
            kind: ViolationKind::TooManySteps,
            step: None,
            message: format!(
                "the plan has {} steps; the limit is {MAX_STEPS}",
                draft.steps.len()
            ),
        });
        return Err(out);
    }

    let mut checked: Vec<Checked<'_>> = Vec::with_capacity(draft.steps.len());
    for (i, step) in draft.steps.iter().enumerate() {
        let n = i + 1;
        let mut fail = |kind, message| {
            out.push(Violation {
                kind,
                step: Some(n),
                message,
            })
        };
        if let Some(m) = check_line("why", &step.why) {
            fail(ViolationKind::WhyInvalid, m);
        }
        let agent = AgentName::new(step.agent.as_str())
            .ok()
            .filter(|a| catalog.agent(a).is_some());
        let Some(agent) = agent else {
            let known: Vec<String> = catalog.manifests().map(|m| m.name().to_string()).collect();
            let known = if known.is_empty() {
                "no agent is enabled".to_owned()
            } else {
                format!("the agents are: {}", known.join(", "))
            };
            fail(
                ViolationKind::UnknownAgent,
                format!("there is no agent {}; {known}", echo(&step.agent)),
            );
            continue;
        };
        let found = ActionName::new(step.action.as_str())
            .ok()
            .and_then(|a| catalog.action(&agent, &a).map(|found| (a, found)));
        let Some((action, (spec, schema))) = found else {
            let actions: Vec<String> = catalog
                .agent(&agent)
                .map(|m| {
                    m.manifest
                        .actions
                        .iter()
                        .map(|a| a.name.to_string())
                        .collect()
                })
                .unwrap_or_default();
            fail(
                ViolationKind::UnknownAction,
                format!(
                    "agent {agent} has no action {}; its actions are: {}",
                    echo(&step.action),
                    actions.join(", ")
                ),
            );
            continue;
        };
        if let Err(problems) = schema.validate(&step.params) {
            for p in problems {
                let message = if p.path.is_empty() {
                    format!("{agent} {action} parameters: {}", p.message)
                } else {
                    format!(
                        "{agent} {action}: parameter {} {}",
                        p.path.trim_start_matches('/'),
                        p.message
                    )
                };
                fail(ViolationKind::ParamsInvalid, message);
            }
            continue;
        }
        if let Some(path) = hidden_text(&step.params, "") {
            fail(
                ViolationKind::ParamsInvalid,
                format!(
                    "{agent} {action}: parameter {} holds invisible formatting characters",
                    path.trim_start_matches('/')
                ),
            );
            continue;
        }
        checked.push(Checked {
            index: n,
            agent,
            action,
            params: &step.params,
            effect: spec.effect,
            schema,
        });
    }

    check_pairs(&checked, &mut out);

    if !out.is_empty() {
        out.truncate(MAX_VIOLATIONS);
        return Err(out);
    }
    let resolved: Vec<(AgentName, ActionName, protocol::message::Effect)> = checked
        .into_iter()
        .map(|c| (c.agent, c.action, c.effect))
        .collect();
    let DraftPlan {
        summary,
        steps,
        planner,
        continue_on_failure,
    } = draft;
    let steps = steps
        .into_iter()
        .zip(resolved)
        .map(|(draft, (agent, action, effect))| PlanStep {
            agent,
            action,
            params: draft.params,
            why: draft.why,
            effect,
        })
        .collect();
    Ok(Plan {
        summary,
        steps,
        planner,
        continue_on_failure,
    })
}

/// The names of an action's string parameters: what identifies its target (names and ids of
/// lights, rooms, scenes). Booleans and numbers are settings.
fn target_keys(schema: &Schema) -> Vec<&str> {
    match schema {
        Schema::Object { properties, .. } => properties
            .iter()
            .filter(|(_, s)| matches!(s, Schema::String { .. }))
            .map(|(k, _)| k.as_str())
            .collect(),
        _ => Vec::new(),
    }
}

/// A parameter value as compared across steps: strings trimmed and lowercased (names are
/// case-insensitive at the agents), everything else as canonical JSON.
fn folded(value: &Value) -> String {
    match value {
        Value::String(s) => s.trim().to_lowercase(),
        other => String::from_utf8_lossy(&protocol::args::canonical_json(other)).into_owned(),
    }
}

/// Duplicate and contradiction checks over every pair of steps.
fn check_pairs(checked: &[Checked<'_>], out: &mut Vec<Violation>) {
    for (j, later) in checked.iter().enumerate() {
        for earlier in checked.iter().take(j) {
            if later.agent != earlier.agent || later.action != earlier.action {
                continue;
            }
            if let Some(v) = compare(earlier, later) {
                out.push(v);
                break;
            }
        }
    }
}

fn compare(earlier: &Checked<'_>, later: &Checked<'_>) -> Option<Violation> {
    let (Value::Object(a), Value::Object(b)) = (earlier.params, later.params) else {
        return None;
    };
    let keys = target_keys(later.schema);
    let same_target = keys
        .iter()
        .all(|k| a.get(*k).map(folded) == b.get(*k).map(folded));
    if !same_target {
        return None;
    }
    let settings_equal = a.len() == b.len()
        && a.iter()
            .all(|(k, v)| b.get(k).is_some_and(|w| folded(v) == folded(w)));
    if settings_equal {
        return Some(Violation {
            kind: ViolationKind::DuplicateStep,
            step: Some(later.index),
            message: format!(
                "repeats step {} ({} {} with the same parameters)",
                earlier.index, later.agent, later.action
            ),
        });
    }
    // Only changes can contradict; reading twice with other filters is fine.
    if later.effect != protocol::message::Effect::Change {
        return None;
    }
    let differing: Vec<&str> = a
        .iter()
        .filter(|(k, _)| !keys.contains(&k.as_str()))
        .filter_map(|(k, v)| {
            b.get(k)
                .filter(|w| folded(v) != folded(w))
                .map(|_| k.as_str())
        })
        .collect();
    if differing.is_empty() {
        return None;
    }
    let target: Vec<String> = keys
        .iter()
        .filter_map(|k| a.get(*k).map(|v| format!("{k} {}", echo(&folded(v)))))
        .collect();
    Some(Violation {
        kind: ViolationKind::ContradictorySteps,
        step: Some(later.index),
        message: format!(
            "contradicts step {}: both are {} {} for {} but set {} differently; keep one step per target",
            earlier.index,
            later.agent,
            later.action,
            target.join(", "),
            differing.join(", ")
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn step(agent: &str, action: &str, params: Value) -> DraftStep {
        DraftStep {
            agent: agent.to_owned(),
            action: action.to_owned(),
            params,
            why: "Because it was asked for.".to_owned(),
        }
    }

    fn draft(steps: Vec<DraftStep>) -> DraftPlan {
        DraftPlan {
            summary: "Lights for the evening".to_owned(),
            steps,
            planner: PlannerKind::Llm("test-model".to_owned()),
            continue_on_failure: false,
        }
    }

    /// The Hue agent only, so these cases do not change when agents are added.
    fn hue() -> Catalog {
        Catalog::enabled(&[AgentName::new("hue").unwrap()])
    }

    fn check(d: DraftPlan) -> String {
        match validate(&hue(), d) {
            Ok(plan) => {
                let steps: Vec<String> = plan
                    .steps
                    .iter()
                    .map(|s| format!("{} {} {:?}", s.agent, s.action, s.effect))
                    .collect();
                format!("ok: {}", steps.join("; "))
            }
            Err(v) => v
                .iter()
                .map(|v| format!("{} | {v}", v.kind.code()))
                .collect::<Vec<_>>()
                .join("\n    "),
        }
    }

    #[test]
    fn drafts_are_validated_against_the_catalog() {
        let kitchen_off = || step("hue", "room.set", json!({"room": "Kitchen", "on": false}));
        let mut long_why = kitchen_off();
        long_why.why = "x".repeat(MAX_LINE + 1);
        let mut two_lines = kitchen_off();
        two_lines.why = "first\nsecond".to_owned();
        let mut blank = kitchen_off();
        blank.why = "   ".to_owned();
        let mut bad_summary = draft(vec![kitchen_off()]);
        bad_summary.summary = "Evening\u{7}".to_owned();
        let mut empty_summary = draft(vec![kitchen_off()]);
        empty_summary.summary = String::new();
        let mut hidden_summary = draft(vec![kitchen_off()]);
        hidden_summary.summary = "Kitchen off\u{200B}".to_owned();

        let cases: Vec<(&str, DraftPlan)> = vec![
            ("one valid change", draft(vec![kitchen_off()])),
            (
                "read and change; effects come from the catalog",
                draft(vec![
                    kitchen_off(),
                    step("hue", "lights.list", json!({"on_only": true})),
                ]),
            ),
            ("no steps", draft(vec![])),
            (
                "too many steps",
                draft(
                    (0..500)
                        .map(|i| {
                            step(
                                "hue",
                                "light.set",
                                json!({"light": format!("L{i}"), "on": true}),
                            )
                        })
                        .collect(),
                ),
            ),
            (
                "exactly the limit",
                draft(
                    (0..MAX_STEPS)
                        .map(|i| {
                            step(
                                "hue",
                                "light.set",
                                json!({"light": format!("L{i}"), "on": true}),
                            )
                        })
                        .collect(),
                ),
            ),
            (
                "unknown agent",
                draft(vec![step("lock", "door.unlock", json!({}))]),
            ),
            (
                "agent name that is not a name",
                draft(vec![step("Hue!", "room.set", json!({}))]),
            ),
            (
                "reserved name",
                draft(vec![step("orchestrator", "room.set", json!({}))]),
            ),
            (
                "unknown action",
                draft(vec![step("hue", "door.unlock", json!({"door": "front"}))]),
            ),
            (
                "long unknown action is shortened",
                draft(vec![step("hue", &"a".repeat(100), json!({}))]),
            ),
            (
                "extra parameter",
                draft(vec![step(
                    "hue",
                    "room.set",
                    json!({"room": "Kitchen", "on": false, "admin": true}),
                )]),
            ),
            (
                "out of range and wrong type",
                draft(vec![step(
                    "hue",
                    "room.set",
                    json!({"room": "Kitchen", "brightness": 150, "on": "yes"}),
                )]),
            ),
            (
                "params not an object",
                draft(vec![step("hue", "lights.list", json!(["on_only"]))]),
            ),
            (
                "missing target",
                draft(vec![step("hue", "room.set", json!({"on": false}))]),
            ),
            ("why too long", draft(vec![long_why])),
            ("why on two lines", draft(vec![two_lines])),
            ("why blank", draft(vec![blank])),
            ("summary with a bell", bad_summary),
            ("summary empty", empty_summary),
            ("summary with hidden text", hidden_summary),
            (
                "a parameter with a bidi override",
                draft(vec![step(
                    "hue",
                    "room.set",
                    json!({"room": "Kitchen\u{202E}nehctik", "on": false}),
                )]),
            ),
            ("exact duplicate", draft(vec![kitchen_off(), kitchen_off()])),
            (
                "duplicate up to case",
                draft(vec![
                    kitchen_off(),
                    step("hue", "room.set", json!({"room": " kitchen", "on": false})),
                ]),
            ),
            (
                "duplicate read",
                draft(vec![
                    step("hue", "lights.list", json!({"on_only": true})),
                    step("hue", "lights.list", json!({"on_only": true})),
                ]),
            ),
            (
                "two reads with other filters are fine",
                draft(vec![
                    step("hue", "lights.list", json!({"on_only": true})),
                    step("hue", "lights.list", json!({})),
                ]),
            ),
            (
                "on then off for one room",
                draft(vec![
                    step("hue", "room.set", json!({"room": "Kitchen", "on": true})),
                    step("hue", "room.set", json!({"room": "KITCHEN", "on": false})),
                ]),
            ),
            (
                "two brightnesses for one light",
                draft(vec![
                    step(
                        "hue",
                        "light.set",
                        json!({"light": "Lamp", "brightness": 10}),
                    ),
                    step(
                        "hue",
                        "light.set",
                        json!({"light": "Lamp", "brightness": 90, "mirek": 300}),
                    ),
                ]),
            ),
            (
                "different settings for one room do not conflict",
                draft(vec![
                    step("hue", "room.set", json!({"room": "Kitchen", "on": true})),
                    step(
                        "hue",
                        "room.set",
                        json!({"room": "Kitchen", "brightness": 20}),
                    ),
                ]),
            ),
            (
                "the same settings for two rooms do not conflict",
                draft(vec![
                    step("hue", "room.set", json!({"room": "Kitchen", "on": false})),
                    step("hue", "room.set", json!({"room": "Bedroom", "on": false})),
                ]),
            ),
            (
                "a scene in two rooms is two targets",
                draft(vec![
                    step(
                        "hue",
                        "scene.activate",
                        json!({"scene": "Relax", "room": "Kitchen"}),
                    ),
                    step(
                        "hue",
                        "scene.activate",
                        json!({"scene": "Relax", "room": "Bedroom"}),
                    ),
                ]),
            ),
            (
                "every problem of every step is reported",
                draft(vec![
                    step("lock", "open", json!({})),
                    step("hue", "room.set", json!({"room": "Kitchen"})),
                    kitchen_off(),
                ]),
            ),
        ];
        let out: Vec<String> = cases
            .into_iter()
            .map(|(name, d)| format!("{name}:\n    {}", check(d)))
            .collect();
        expect_test::expect![[r#"
            one valid change:
                ok: hue room.set Change
            read and change; effects come from the catalog:
                ok: hue room.set Change; hue lights.list Read
            no steps:
                plan_no_steps | a plan needs at least one step
            too many steps:
                plan_too_many_steps | the plan has 500 steps; the limit is 8
            exactly the limit:
                ok: hue light.set Change; hue light.set Change; hue light.set Change; hue light.set Change; hue light.set Change; hue light.set Change; hue light.set Change; hue light.set Change
            unknown agent:
                plan_unknown_agent | step 1: there is no agent "lock"; the agents are: hue
            agent name that is not a name:
                plan_unknown_agent | step 1: there is no agent "Hue!"; the agents are: hue
            reserved name:
                plan_unknown_agent | step 1: there is no agent "orchestrator"; the agents are: hue
            unknown action:
                plan_unknown_action | step 1: agent hue has no action "door.unlock"; its actions are: lights.list, rooms.list, scenes.list, light.set, room.set, scene.activate
            long unknown action is shortened:
                plan_unknown_action | step 1: agent hue has no action "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"…; its actions are: lights.list, rooms.list, scenes.list, light.set, room.set, scene.activate
            extra parameter:
                plan_params_invalid | step 1: hue room.set parameters: unknown property "admin"
            out of range and wrong type:
                plan_params_invalid | step 1: hue room.set: parameter brightness must be a number between 0 and 100
                plan_params_invalid | step 1: hue room.set: parameter on must be true or false
            params not an object:
                plan_params_invalid | step 1: hue lights.list parameters: must be an object
            missing target:
                plan_params_invalid | step 1: hue room.set parameters: missing required property "room"
                plan_params_invalid | step 1: hue room.set parameters: needs at least 2 of its properties
            why too long:
                plan_why_invalid | step 1: the why is 1025 bytes long; the limit is 1024
            why on two lines:
                plan_why_invalid | step 1: the why holds control characters or line breaks; write one line
            why blank:
                plan_why_invalid | step 1: the why is empty
            summary with a bell:
                plan_summary_invalid | the summary holds control characters or line breaks; write one line
            summary empty:
                plan_summary_invalid | the summary is empty
            summary with hidden text:
                plan_summary_invalid | the summary holds invisible formatting characters; write plain text
            a parameter with a bidi override:
                plan_params_invalid | step 1: hue room.set: parameter room holds invisible formatting characters
            exact duplicate:
                plan_duplicate_step | step 2: repeats step 1 (hue room.set with the same parameters)
            duplicate up to case:
                plan_duplicate_step | step 2: repeats step 1 (hue room.set with the same parameters)
            duplicate read:
                plan_duplicate_step | step 2: repeats step 1 (hue lights.list with the same parameters)
            two reads with other filters are fine:
                ok: hue lights.list Read; hue lights.list Read
            on then off for one room:
                plan_contradictory_steps | step 2: contradicts step 1: both are hue room.set for room "kitchen" but set on differently; keep one step per target
            two brightnesses for one light:
                plan_contradictory_steps | step 2: contradicts step 1: both are hue light.set for light "lamp" but set brightness differently; keep one step per target
            different settings for one room do not conflict:
                ok: hue room.set Change; hue room.set Change
            the same settings for two rooms do not conflict:
                ok: hue room.set Change; hue room.set Change
            a scene in two rooms is two targets:
                ok: hue scene.activate Change; hue scene.activate Change
            every problem of every step is reported:
                plan_unknown_agent | step 1: there is no agent "lock"; the agents are: hue
                plan_params_invalid | step 2: hue room.set parameters: needs at least 2 of its properties"#]]
        .assert_eq(&out.join("\n"));
    }

    #[test]
    fn the_effect_and_the_rest_of_a_valid_plan_come_through_unchanged() {
        let mut d = draft(vec![
            step("hue", "lights.list", json!({"on_only": true})),
            step("hue", "room.set", json!({"room": "Kitchen", "on": false})),
        ]);
        d.continue_on_failure = true;
        let plan = validate(&hue(), d).unwrap();
        assert_eq!(plan.summary, "Lights for the evening");
        assert_eq!(plan.planner, PlannerKind::Llm("test-model".to_owned()));
        assert!(plan.continue_on_failure);
        assert_eq!(plan.steps[0].effect, protocol::message::Effect::Read);
        assert_eq!(plan.steps[1].effect, protocol::message::Effect::Change);
        assert_eq!(
            plan.steps[1].params,
            json!({"room": "Kitchen", "on": false})
        );
        assert_eq!(plan.steps[1].why, "Because it was asked for.");
        assert!(plan.changes_world());
    }

    #[test]
    fn an_agent_outside_the_enabled_catalog_is_unknown() {
        let none = Catalog::enabled(&[]);
        let e = validate(&none, draft(vec![step("hue", "lights.list", json!({}))])).unwrap_err();
        assert_eq!(e[0].kind, ViolationKind::UnknownAgent);
        assert_eq!(
            e[0].to_string(),
            "step 1: there is no agent \"hue\"; no agent is enabled"
        );
    }

    #[test]
    fn violations_are_bounded() {
        let steps = (0..MAX_STEPS)
            .map(|_| step("hue", "room.set", json!({"a": 1, "b": 2, "c": 3})))
            .collect();
        let e = validate(&hue(), draft(steps)).unwrap_err();
        assert_eq!(e.len(), MAX_VIOLATIONS);
    }
}
