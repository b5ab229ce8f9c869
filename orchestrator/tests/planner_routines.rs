//! The offline planner through its public API: the shipped routines match their phrases,
//! validate against the catalog, act on rooms the Hue bridge double really has, and with no
//! model configured everything else gets the helpful answer.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::print_stdout,
    clippy::print_stderr
)]

use std::collections::BTreeSet;

use orchestrator::catalog::Catalog;
use orchestrator::plan::{
    Plan, PlanOutcome, PlanRequest, Planner, Planners, RoutinePlanner, validate,
};
use protocol::message::Effect;
use protocol::{AgentName, ChatUser, UnixMillis};
use serde_json::Value;

async fn plan(planners: &Planners, text: &str) -> PlanOutcome {
    let user = ChatUser::new("terminal:me").unwrap();
    planners
        .plan(PlanRequest {
            text,
            user: &user,
            now: UnixMillis(1_795_000_000_000),
        })
        .await
}

fn hue_only() -> Catalog {
    Catalog::enabled(&[AgentName::new("hue").unwrap()])
}

#[tokio::test]
async fn bedtime_phrases_give_the_same_fixed_plan() {
    let planners = Planners::new(hue_only(), None).unwrap();
    let mut hashes = BTreeSet::new();
    for text in [
        "start bedtime",
        "bedtime please",
        "it's bedtime",
        "It’s bedtime!",
        "BEDTIME",
        "I'm going to bed",
        "good night",
    ] {
        let PlanOutcome::Plan(p) = plan(&planners, text).await else {
            panic!("{text:?} should start bedtime");
        };
        assert_eq!(p.planner.to_string(), "routine:bedtime", "{text}");
        hashes.insert(p.hash().to_string());
    }
    assert_eq!(hashes.len(), 1, "one routine, one plan, one hash");
}

#[tokio::test]
async fn every_routine_is_reachable_by_each_of_its_phrases() {
    let planners = Planners::new(hue_only(), None).unwrap();
    let routines: Vec<(String, Vec<String>)> = planners
        .routines()
        .routines()
        .map(|r| (r.name.to_owned(), r.triggers.to_vec()))
        .collect();
    let names: Vec<&str> = routines.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        ["bedtime", "good-morning", "leaving", "lights-report"]
    );
    for (name, triggers) in &routines {
        for t in triggers {
            for text in [
                t.clone(),
                format!("please {t}"),
                format!("{}!", t.to_uppercase()),
            ] {
                match plan(&planners, &text).await {
                    PlanOutcome::Plan(p) => {
                        assert_eq!(p.planner.to_string(), format!("routine:{name}"), "{text}")
                    }
                    other => panic!("{text:?}: {other:?}"),
                }
            }
        }
    }
}

#[tokio::test]
async fn routine_plans_are_valid_plans_of_the_catalog() {
    let planners = Planners::new(hue_only(), None).unwrap();
    for r in planners.routines().routines() {
        let plan: &Plan = planners.routines().plan(r.name).unwrap();
        // Validating again changes nothing: the routine was validated when it loaded.
        let again = validate(
            &hue_only(),
            orchestrator::plan::DraftPlan {
                summary: plan.summary.clone(),
                steps: plan
                    .steps
                    .iter()
                    .map(|s| orchestrator::plan::DraftStep {
                        agent: s.agent.to_string(),
                        action: s.action.to_string(),
                        params: s.params.clone(),
                        why: s.why.clone(),
                    })
                    .collect(),
                planner: plan.planner.clone(),
                continue_on_failure: plan.continue_on_failure,
            },
        )
        .unwrap();
        assert_eq!(&again, plan);
        assert_eq!(plan.summary, r.description);
    }
    let report = planners.routines().plan("lights-report").unwrap();
    assert!(!report.changes_world(), "the report only reads");
    assert!(report.steps.iter().all(|s| s.effect == Effect::Read));
    let bedtime = planners.routines().plan("bedtime").unwrap();
    assert!(bedtime.changes_world());
    assert!(bedtime.continue_on_failure);
}

/// The rooms each routine names exist on the Hue bridge double, and bedtime's changes reach
/// real lights there (so the end-to-end test sees them change).
#[test]
fn routines_name_rooms_the_hue_fixture_has() {
    let resources = test_support::fake_hue::fixture_with_room_groups();
    let by_id = |id: &str| resources.iter().find(|r| r["id"] == id);
    let rooms: Vec<&Value> = resources.iter().filter(|r| r["type"] == "room").collect();
    let lights_of = |room: &str| -> usize {
        let Some(r) = rooms.iter().find(|r| r["metadata"]["name"] == room) else {
            return 0;
        };
        r["children"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|c| by_id(c["rid"].as_str().unwrap()))
            .flat_map(|device| device["services"].as_array().cloned().unwrap_or_default())
            .filter(|s| s["rtype"] == "light")
            .count()
    };
    // The simulated bridge's rooms for the routines' room roles.
    let planner =
        RoutinePlanner::load_with_rooms(&hue_only(), &test_support::fake_hue::room_aliases())
            .unwrap();
    for r in planner.routines() {
        for step in &planner.plan(r.name).unwrap().steps {
            if let Some(room) = step.params.get("room").and_then(Value::as_str) {
                let found = rooms.iter().find(|x| x["metadata"]["name"] == room);
                let Some(found) = found else {
                    panic!("{}: no room {room:?} on the bridge double", r.name);
                };
                // room.set acts through the room's grouped_light service.
                assert!(
                    found["services"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .any(|s| s["rtype"] == "grouped_light"),
                    "{}: room {room:?} has no grouped_light",
                    r.name
                );
            }
        }
    }
    assert_eq!(lights_of("Room 1"), 1, "the kitchen");
    assert_eq!(lights_of("Room 9"), 4, "the bedroom");
}

#[test]
fn room_roles_resolve_to_the_configured_names_and_unknown_roles_are_refused() {
    // Defaults: the common names.
    let default = RoutinePlanner::load(&hue_only()).unwrap();
    let bedtime = default.plan("bedtime").unwrap();
    assert_eq!(bedtime.steps[1].params["room"], "Kitchen");
    // The user's names win.
    let mut rooms = std::collections::BTreeMap::new();
    rooms.insert("kitchen".to_owned(), "Küche".to_owned());
    let mine = RoutinePlanner::load_with_rooms(&hue_only(), &rooms).unwrap();
    assert_eq!(
        mine.plan("bedtime").unwrap().steps[1].params["room"],
        "Küche"
    );
    assert_eq!(
        mine.plan("bedtime").unwrap().steps[0].params["room"],
        "Living room"
    );
    // A routine naming a role nobody defined does not load.
    let broken = prompts::parse(
        "x",
        "name = \"x\"\ndescription = \"X.\"\ntriggers = [\"xyzzy\"]\ncontinue_on_failure = false\n[[steps]]\nagent = \"hue\"\naction = \"room.set\"\nparams = { room = \"@attic\", on = false }\nwhy = \"Off.\"\n",
    )
    .unwrap();
    let e = RoutinePlanner::from_routines(vec![broken], &hue_only()).unwrap_err();
    assert!(e.to_string().contains("@attic"), "{e}");
}

#[tokio::test]
async fn without_a_model_other_text_gets_the_helpful_answer() {
    let planners = Planners::new(hue_only(), None).unwrap();
    for text in [
        "make me a coffee",
        "turn on the kitchen",
        "don't start bedtime",
        "bedtime but keep the kitchen on",
        "",
    ] {
        let PlanOutcome::Answer(answer) = plan(&planners, text).await else {
            panic!("{text:?}: no plan without a model");
        };
        assert_eq!(answer, planners.help(), "{text:?}");
    }
    let help = planners.help();
    for needle in [
        "bedtime",
        "\"going to bed\"",
        "good-morning",
        "leaving",
        "lights-report",
        "hue: lights.list, rooms.list, scenes.list (read only); light.set, room.set, scene.activate (change things)",
        "configure a language model",
    ] {
        assert!(help.contains(needle), "{needle} missing from:\n{help}");
    }
    assert!(
        !help.contains("audit-anomaly"),
        "only enabled agents are listed"
    );
    let PlanOutcome::Answer(both) = plan(&planners, "good night, I'm leaving").await else {
        panic!("ambiguous");
    };
    assert!(
        both.starts_with(
            "That names more than one routine (bedtime, leaving); say just one of them."
        )
    );
}

#[tokio::test]
async fn routines_of_agents_that_are_not_enabled_are_left_out() {
    let planners = Planners::new(Catalog::enabled(&[]), None).unwrap();
    assert_eq!(planners.routines().routines().count(), 0);
    assert_eq!(
        planners.routines().skipped(),
        ["bedtime", "good-morning", "leaving", "lights-report"]
    );
    let PlanOutcome::Answer(a) = plan(&planners, "start bedtime").await else {
        panic!("no routine, no model");
    };
    assert!(a.starts_with("No routine is available"), "{a}");
}
