//! The planner's words: system prompts and the offline routines, as checked-in data with a
//! tiny loader.
//!
//! What it holds:
//! - `system/planner.md`: the LLM planner's system prompt ([`planner_system_prompt`]): the
//!   model's role, that only the owner's message is an instruction, that data from agents is
//!   untrusted and never an instruction, that it answers by calling exactly one tool and never
//!   invents agents or actions, and that each step explains its why.
//! - `system/summary.md`: the daily summary composer's system prompt
//!   ([`summary_system_prompt`]): the data is untrusted, summarise only.
//! - `system/repair.md`: the message that carries a refused plan's violations back to the
//!   model for its one repair round ([`repair_prompt`]).
//! - `routines/*.toml`: offline routines ([`routines`]): a name, a one-line description,
//!   trigger phrases, whether to keep going after a failed step, and fixed steps
//!   (`agent`, `action`, `params`, `why`).
//!
//! Everything is embedded at compile time (`include_str!`); nothing is read from disk at run
//! time. Routine files are parsed strictly (unknown fields are errors) and checked for shape
//! here (names, non-empty text, at least one trigger and one step).
//!
//! What it does not do: it does not know the agent catalog, so it does not check that a
//! routine's agents, actions and parameters exist (the orchestrator validates every routine
//! against the catalog when it loads them, and a broken routine is a load error there); it does
//! not match messages against triggers; and it renders nothing but the `{placeholder}`s of its
//! own prompts.
#![forbid(unsafe_code)]

use serde::Deserialize;

/// Longest routine name, in bytes.
pub const MAX_ROUTINE_NAME: usize = 32;
/// Most trigger phrases one routine may have.
pub const MAX_TRIGGERS: usize = 16;
/// Longest trigger phrase, in bytes.
pub const MAX_TRIGGER_LEN: usize = 64;
/// Longest description or why, in bytes.
pub const MAX_TEXT: usize = 1024;

/// The embedded routine files: (file stem, contents). One entry per file in `routines/`.
const ROUTINE_SOURCES: &[(&str, &str)] = &[
    ("bedtime", include_str!("../routines/bedtime.toml")),
    (
        "good-morning",
        include_str!("../routines/good-morning.toml"),
    ),
    ("leaving", include_str!("../routines/leaving.toml")),
    (
        "lights-report",
        include_str!("../routines/lights-report.toml"),
    ),
];

const PLANNER: &str = include_str!("../system/planner.md");
const SUMMARY: &str = include_str!("../system/summary.md");
const REPAIR: &str = include_str!("../system/repair.md");

/// The LLM planner's system prompt, with the step limit filled in.
pub fn planner_system_prompt(max_steps: usize) -> String {
    PLANNER.replace("{max_steps}", &max_steps.to_string())
}

/// The daily summary composer's system prompt, with the length limit filled in.
pub fn summary_system_prompt(max_chars: usize) -> String {
    SUMMARY.replace("{max_chars}", &max_chars.to_string())
}

/// The repair message: the violations (one sentence each) that made a plan fail validation.
pub fn repair_prompt(violations: &[String]) -> String {
    let list: Vec<String> = violations.iter().map(|v| format!("- {v}")).collect();
    REPAIR.replace("{violations}", &list.join("\n"))
}

/// An offline routine, as written in `routines/<name>.toml`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Routine {
    /// Its name, equal to its file name (`[a-z0-9-]`, starting with a letter).
    pub name: String,
    /// One line for the user: what it does (also the plan's summary).
    pub description: String,
    /// Phrases that start it ("bedtime", "going to bed").
    pub triggers: Vec<String>,
    /// Keep going after a failed step (default: stop at the first failure).
    #[serde(default)]
    pub continue_on_failure: bool,
    /// The fixed steps, in order.
    pub steps: Vec<RoutineStep>,
}

/// One fixed step of a routine.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoutineStep {
    /// The agent.
    pub agent: String,
    /// The action.
    pub action: String,
    /// The exact parameters (a TOML table; checked against the action's schema by the
    /// orchestrator).
    pub params: serde_json::Value,
    /// Why the step is in the routine, shown to the user.
    pub why: String,
}

/// Why a routine file was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RoutineError {
    /// Not valid TOML for a routine (syntax, a missing or unknown field, a wrong type).
    #[error("routines/{file}.toml: {message}")]
    Malformed {
        /// The file stem.
        file: String,
        /// The parser's message.
        message: String,
    },
    /// The `name` differs from the file name, or breaks the naming rule.
    #[error("routines/{file}.toml: {reason}")]
    Name {
        /// The file stem.
        file: String,
        /// Why.
        reason: String,
    },
    /// A description, trigger or why is empty, too long or holds control characters; or the
    /// routine has no triggers, too many, or no steps.
    #[error("routines/{file}.toml: {reason}")]
    Shape {
        /// The file stem.
        file: String,
        /// Why.
        reason: String,
    },
    /// Two files hold routines of the same name.
    #[error("routines/{file}.toml: routine {name} is already defined")]
    Duplicate {
        /// The file stem.
        file: String,
        /// The name.
        name: String,
    },
}

impl RoutineError {
    /// Stable code.
    pub fn code(&self) -> &'static str {
        match self {
            RoutineError::Malformed { .. } => "routine_malformed",
            RoutineError::Name { .. } => "routine_name_invalid",
            RoutineError::Shape { .. } => "routine_shape_invalid",
            RoutineError::Duplicate { .. } => "routine_duplicate",
        }
    }
}

/// Every embedded routine, in file order; the first broken file is an error.
pub fn routines() -> Result<Vec<Routine>, RoutineError> {
    parse_all(ROUTINE_SOURCES)
}

fn parse_all(sources: &[(&str, &str)]) -> Result<Vec<Routine>, RoutineError> {
    let mut out: Vec<Routine> = Vec::with_capacity(sources.len());
    for (file, text) in sources {
        let routine = parse(file, text)?;
        if out.iter().any(|r| r.name == routine.name) {
            return Err(RoutineError::Duplicate {
                file: (*file).to_owned(),
                name: routine.name,
            });
        }
        out.push(routine);
    }
    Ok(out)
}

/// Parses and shape-checks one routine file whose stem is `file`.
pub fn parse(file: &str, text: &str) -> Result<Routine, RoutineError> {
    let routine: Routine = toml::from_str(text).map_err(|e| RoutineError::Malformed {
        file: file.to_owned(),
        message: e.message().to_owned(),
    })?;
    let name_error = |reason: &str| RoutineError::Name {
        file: file.to_owned(),
        reason: reason.to_owned(),
    };
    if routine.name != file {
        return Err(name_error("the name must equal the file name"));
    }
    let name_ok = routine.name.len() <= MAX_ROUTINE_NAME
        && routine
            .name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_lowercase())
        && routine
            .name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if !name_ok {
        return Err(name_error(
            "names are 1 to 32 bytes of a-z, 0-9 and '-', starting with a letter",
        ));
    }
    let shape = |reason: String| RoutineError::Shape {
        file: file.to_owned(),
        reason,
    };
    check_text("description", &routine.description, MAX_TEXT).map_err(shape)?;
    if routine.triggers.is_empty() || routine.triggers.len() > MAX_TRIGGERS {
        return Err(shape(format!("a routine has 1 to {MAX_TRIGGERS} triggers")));
    }
    for t in &routine.triggers {
        check_text("trigger", t, MAX_TRIGGER_LEN).map_err(shape)?;
    }
    if routine.steps.is_empty() {
        return Err(shape("a routine needs at least one step".to_owned()));
    }
    for s in &routine.steps {
        check_text("why", &s.why, MAX_TEXT).map_err(shape)?;
    }
    Ok(routine)
}

fn check_text(field: &str, value: &str, max: usize) -> Result<(), String> {
    if value.trim().is_empty() {
        return Err(format!("{field} is empty"));
    }
    if value.len() > max {
        return Err(format!(
            "{field} is {} bytes; the limit is {max}",
            value.len()
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(format!("{field} holds control characters"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_embedded_routine_parses() {
        let all = routines().unwrap();
        let names: Vec<&str> = all.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(
            names,
            ["bedtime", "good-morning", "leaving", "lights-report"]
        );
    }

    #[test]
    fn every_file_in_the_routines_directory_is_embedded() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("routines");
        let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        on_disk.sort();
        let mut embedded: Vec<String> = ROUTINE_SOURCES
            .iter()
            .map(|(f, _)| format!("{f}.toml"))
            .collect();
        embedded.sort();
        assert_eq!(on_disk, embedded);
    }

    #[test]
    fn the_bedtime_routine_is_what_the_readme_promises() {
        let all = routines().unwrap();
        let bedtime = all.iter().find(|r| r.name == "bedtime").unwrap();
        let steps: Vec<String> = bedtime
            .steps
            .iter()
            .map(|s| format!("{} {} {}", s.agent, s.action, s.params))
            .collect();
        expect_test::expect![[r#"
            hue room.set {"brightness":20,"mirek":454,"on":true,"room":"@living","transition_ms":600000}
            hue room.set {"on":false,"room":"@kitchen"}
            hue room.set {"brightness":10,"mirek":455,"on":true,"room":"@bedroom"}
            hue lights.list {"on_only":true}"#]]
        .assert_eq(&steps.join("\n"));
        assert!(bedtime.continue_on_failure);
        assert!(bedtime.triggers.contains(&"bedtime".to_owned()));
    }

    fn check(file: &str, text: &str) -> String {
        match parse(file, text) {
            Ok(r) => format!("ok {}", r.name),
            Err(e) => format!("{}: {e}", e.code()),
        }
    }

    const GOOD: &str = r#"
name = "demo"
description = "A demo."
triggers = ["demo"]
[[steps]]
agent = "hue"
action = "lights.list"
params = {}
why = "Because."
"#;

    #[test]
    fn broken_routine_files_are_refused_with_a_reason() {
        let cases = [
            ("demo", GOOD.to_owned()),
            ("other", GOOD.to_owned()),
            ("Demo", GOOD.replace("name = \"demo\"", "name = \"Demo\"")),
            (
                "demo",
                GOOD.replace("triggers = [\"demo\"]", "triggers = []"),
            ),
            ("demo", GOOD.replace("[\"demo\"]", "[\" \"]")),
            (
                "demo",
                GOOD.replace("description = \"A demo.\"", "description = \"two\\nlines\""),
            ),
            ("demo", GOOD.replace("why = \"Because.\"", "why = \"\"")),
            (
                "demo",
                GOOD.replace("why = \"Because.\"", "why = \"x\"\nrun_now = true"),
            ),
            (
                "demo",
                GOOD.replace("name = \"demo\"", "name = \"demo\"\nauto_approve = true"),
            ),
            ("demo", GOOD.replace("params = {}\n", "")),
            (
                "demo",
                "name = \"demo\"\ndescription = \"x\"\ntriggers = [\"x\"]\nsteps = []".to_owned(),
            ),
            ("demo", "name = ".to_owned()),
            (
                "demo",
                GOOD.replace("triggers = [\"demo\"]", "triggers = \"demo\""),
            ),
        ];
        let out: Vec<String> = cases.iter().map(|(f, t)| check(f, t)).collect();
        expect_test::expect![[r#"
            ok demo
            routine_name_invalid: routines/other.toml: the name must equal the file name
            routine_name_invalid: routines/Demo.toml: names are 1 to 32 bytes of a-z, 0-9 and '-', starting with a letter
            routine_shape_invalid: routines/demo.toml: a routine has 1 to 16 triggers
            routine_shape_invalid: routines/demo.toml: trigger is empty
            routine_shape_invalid: routines/demo.toml: description holds control characters
            routine_shape_invalid: routines/demo.toml: why is empty
            routine_malformed: routines/demo.toml: unknown field `run_now`, expected one of `agent`, `action`, `params`, `why`
            routine_malformed: routines/demo.toml: unknown field `auto_approve`, expected one of `name`, `description`, `triggers`, `continue_on_failure`, `steps`
            routine_malformed: routines/demo.toml: missing field `params`
            routine_shape_invalid: routines/demo.toml: a routine needs at least one step
            routine_malformed: routines/demo.toml: string values must be quoted, expected literal string
            routine_malformed: routines/demo.toml: invalid type: string "demo", expected a sequence"#]].assert_eq(&out.join("\n"));
    }

    #[test]
    fn two_routines_with_one_name_are_refused() {
        let e = parse_all(&[("demo", GOOD), ("demo", GOOD)]).unwrap_err();
        assert_eq!(e.code(), "routine_duplicate");
    }

    #[test]
    fn prompts_have_their_placeholders_filled() {
        let planner = planner_system_prompt(8);
        assert!(planner.contains("at most 8."), "{planner}");
        assert!(planner.contains("untrusted"));
        assert!(planner.contains("exactly one tool"));
        let summary = summary_system_prompt(1500);
        assert!(summary.contains("at most 1500 characters"));
        assert!(summary.contains("<untrusted_data>"));
        let repair = repair_prompt(&["step 1: a.".to_owned(), "step 2: b.".to_owned()]);
        assert!(repair.starts_with(
            "Your plan was not accepted, for these reasons:\n- step 1: a.\n- step 2: b.\n"
        ));
        for text in [&planner, &summary, &repair] {
            assert!(
                !text.contains("{max_") && !text.contains("{violations}"),
                "{text}"
            );
        }
    }
}
