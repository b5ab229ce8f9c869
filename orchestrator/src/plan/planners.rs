//! The orchestrator's planner: routines first, then the model, else a helpful answer.
//!
//! [`Planners::plan`] decides in this order:
//! 1. a routine matches ([`RoutinePlanner::find`]): its fixed, validated plan, even when a
//!    model is configured (offline, instant, and the same every time);
//! 2. a model is configured: the [`LlmPlanner`];
//! 3. otherwise: an answer listing what it can do (each routine with its trigger phrases, and
//!    the actions of the enabled agents), so a user without a model still learns the phrases.
//!
//! What it does not do: it never combines a routine with model output, and it never asks the
//! model to change a routine.

use protocol::message::{Effect, MAX_OUT_TEXT};

use crate::catalog::Catalog;
use crate::plan::llm::{LlmConfig, LlmPlanner, LlmSetupError};
use crate::plan::routine::{RoutineLoadError, RoutineMatch, RoutinePlanner};
use crate::plan::{PlanOutcome, PlanRequest, Planner};

/// Why the planners could not be set up (a configuration error).
#[derive(Debug, thiserror::Error)]
pub enum PlannersError {
    /// The routines do not load.
    #[error(transparent)]
    Routines(#[from] RoutineLoadError),
    /// The model client cannot be set up.
    #[error(transparent)]
    Llm(#[from] LlmSetupError),
}

impl PlannersError {
    /// Stable code.
    pub fn code(&self) -> &'static str {
        match self {
            PlannersError::Routines(e) => e.code(),
            PlannersError::Llm(e) => e.code(),
        }
    }
}

/// Routines, an optional model, and the help answer.
#[derive(Debug, Clone)]
pub struct Planners {
    routines: RoutinePlanner,
    llm: Option<LlmPlanner>,
    help: String,
}

impl Planners {
    /// Routines for the enabled `catalog`, and the model if given.
    pub fn new(catalog: Catalog, llm: Option<LlmPlanner>) -> Result<Planners, RoutineLoadError> {
        Self::with_rooms(catalog, llm, &std::collections::BTreeMap::new())
    }

    /// [`Planners::new`] with the user's room names for the routines' room aliases.
    pub fn with_rooms(
        catalog: Catalog,
        llm: Option<LlmPlanner>,
        rooms: &std::collections::BTreeMap<String, String>,
    ) -> Result<Planners, RoutineLoadError> {
        let routines = RoutinePlanner::load_with_rooms(&catalog, rooms)?;
        let help = help_text(&routines, &catalog);
        Ok(Planners {
            routines,
            llm,
            help,
        })
    }

    /// [`Planners::new`] with the model from configuration (none: routines only).
    pub fn from_config(
        catalog: Catalog,
        llm: Option<&LlmConfig>,
        rooms: &std::collections::BTreeMap<String, String>,
    ) -> Result<Planners, PlannersError> {
        let llm = llm
            .map(|c| LlmPlanner::new(c, catalog.clone()))
            .transpose()?;
        Ok(Planners::with_rooms(catalog, llm, rooms)?)
    }

    /// The routine planner.
    pub fn routines(&self) -> &RoutinePlanner {
        &self.routines
    }

    /// The model planner, if configured.
    pub fn llm(&self) -> Option<&LlmPlanner> {
        self.llm.as_ref()
    }

    /// The answer for a message nothing understood (without a model).
    pub fn help(&self) -> &str {
        &self.help
    }

    /// Plans for one message (see the module documentation).
    pub async fn plan_message(&self, request: PlanRequest<'_>) -> PlanOutcome {
        let ambiguous = match self.routines.find(request.text) {
            RoutineMatch::One { plan, .. } => return PlanOutcome::Plan(plan.clone()),
            RoutineMatch::Ambiguous(names) => Some(names.join(", ")),
            RoutineMatch::None => None,
        };
        if let Some(llm) = &self.llm {
            return llm.plan_message(request).await;
        }
        match ambiguous {
            Some(names) => PlanOutcome::Answer(bounded(format!(
                "That names more than one routine ({names}); say just one of them.\n\n{}",
                self.help
            ))),
            None => PlanOutcome::Answer(self.help.clone()),
        }
    }
}

impl Planner for Planners {
    fn plan(&self, request: PlanRequest<'_>) -> impl Future<Output = PlanOutcome> + Send {
        self.plan_message(request)
    }
}

fn bounded(mut text: String) -> String {
    if text.len() > MAX_OUT_TEXT {
        let mut cut = MAX_OUT_TEXT.saturating_sub(3);
        while !text.is_char_boundary(cut) {
            cut = cut.saturating_sub(1);
        }
        text.truncate(cut);
        text.push('…');
    }
    text
}

/// The help answer: the routines with their phrases, and the enabled agents' actions.
fn help_text(routines: &RoutinePlanner, catalog: &Catalog) -> String {
    let mut out = String::new();
    let list: Vec<String> = routines
        .routines()
        .map(|r| {
            let mut phrases: Vec<String> = r.triggers.iter().map(|t| format!("\"{t}\"")).collect();
            let last = phrases.pop().unwrap_or_default();
            let said = if phrases.is_empty() {
                last
            } else {
                format!("{} or {last}", phrases.join(", "))
            };
            format!("- {}: {} Say {said}.", r.name, r.description)
        })
        .collect();
    if list.is_empty() {
        out.push_str(
            "No routine is available for the enabled agents, and no language model is configured, so I cannot plan anything yet.\n",
        );
    } else {
        out.push_str(
            "I did not recognise that. Without a language model I plan only these routines, each started by one of its phrases:\n",
        );
        out.push_str(&list.join("\n"));
        out.push('\n');
    }
    let agents: Vec<String> = catalog
        .manifests()
        .map(|m| {
            let of = |effect: Effect| {
                m.manifest
                    .actions
                    .iter()
                    .filter(|a| a.effect == effect)
                    .map(|a| a.name.to_string())
                    .collect::<Vec<_>>()
            };
            let (reads, changes) = (of(Effect::Read), of(Effect::Change));
            let mut parts = Vec::new();
            if !reads.is_empty() {
                parts.push(format!("{} (read only)", reads.join(", ")));
            }
            if !changes.is_empty() {
                parts.push(format!("{} (change things)", changes.join(", ")));
            }
            format!("- {}: {}", m.name(), parts.join("; "))
        })
        .collect();
    if !agents.is_empty() {
        out.push_str("\nThe agents offer these actions:\n");
        out.push_str(&agents.join("\n"));
        out.push('\n');
    }
    out.push_str(
        "\nEvery plan is shown to you before anything that changes your home runs. To ask in your own words, configure a language model ([llm] in the orchestrator configuration).",
    );
    bounded(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::{ChatUser, UnixMillis};

    fn request<'a>(text: &'a str, user: &'a ChatUser) -> PlanRequest<'a> {
        PlanRequest {
            text,
            user,
            now: UnixMillis(1_795_000_000_000),
        }
    }

    #[tokio::test]
    async fn routines_win_and_without_a_model_the_rest_gets_help() {
        let planners = Planners::new(Catalog::all(), None).unwrap();
        let me = ChatUser::new("terminal:me").unwrap();
        let PlanOutcome::Plan(plan) = planners.plan(request("start bedtime", &me)).await else {
            panic!("bedtime is a routine");
        };
        assert_eq!(plan.planner.to_string(), "routine:bedtime");
        let PlanOutcome::Answer(help) = planners.plan(request("make me a coffee", &me)).await
        else {
            panic!("no model: help");
        };
        assert_eq!(help, planners.help());
        let PlanOutcome::Answer(both) =
            planners.plan(request("good night, I'm leaving", &me)).await
        else {
            panic!("ambiguous: help");
        };
        assert!(both.starts_with("That names more than one routine (bedtime, leaving)"));
    }

    #[test]
    fn the_help_answer_lists_routines_phrases_and_actions() {
        let hue = Catalog::enabled(&[protocol::AgentName::new("hue").unwrap()]);
        let planners = Planners::new(hue, None).unwrap();
        expect_test::expect![[r#"
            I did not recognise that. Without a language model I plan only these routines, each started by one of its phrases:
            - bedtime: Bedtime: living room dimmed to a warm glow, kitchen off, bedroom to a dim warm light, then a report of the lights still on. Say "bedtime", "going to bed", "good night", "goodnight" or "night mode".
            - good-morning: Good morning: bedroom slowly up to a neutral white, kitchen to full bright light. Say "good morning", "morning routine", "wake up" or "start the day".
            - leaving: Leaving home: living room, kitchen and bedroom off, then a report of any light still on. Say "leaving", "leaving home", "going out", "all off", "all lights off" or "lights off everywhere".
            - lights-report: Lights report: lists the lights that are on right now, changing nothing. Say "which lights are on", "which lights are still on", "what lights are on", "lights still on" or "lights report".

            The agents offer these actions:
            - hue: lights.list, rooms.list, scenes.list (read only); light.set, room.set, scene.activate (change things)

            Every plan is shown to you before anything that changes your home runs. To ask in your own words, configure a language model ([llm] in the orchestrator configuration)."#]]
        .assert_eq(planners.help());
        let none = Planners::new(Catalog::enabled(&[]), None).unwrap();
        expect_test::expect![[r#"
            No routine is available for the enabled agents, and no language model is configured, so I cannot plan anything yet.

            Every plan is shown to you before anything that changes your home runs. To ask in your own words, configure a language model ([llm] in the orchestrator configuration)."#]]
        .assert_eq(none.help());
    }
}
