//! The routine planner: offline, no model, the embedded default.
//!
//! [`RoutinePlanner::load`] takes the routines embedded in the `prompts` crate
//! (`prompts/routines/*.toml`) and validates each against the whole agent catalog when it
//! loads: a routine with an unknown agent or action, parameters its schema refuses, duplicate
//! or contradictory steps, or a trigger phrase another routine already uses is a load error
//! ([`RoutineLoadError`]), never a surprise at run time. A valid routine whose agents are not
//! all enabled in this installation is left out ([`RoutinePlanner::skipped`]).
//!
//! ## The matching rule ([`RoutinePlanner::find`])
//! 1. The message and every trigger phrase are normalised ([`normalise`]): apostrophes are
//!    dropped (`it's` → `its`), every other character that is not a letter or digit separates
//!    words, letters are lowercased.
//! 2. A message of more than [`MAX_MESSAGE_WORDS`] words, or with a negation or modifier word
//!    ([`NEGATIONS`]: "don't start bedtime", "bedtime but keep the kitchen on") matches nothing.
//! 3. A trigger matches when its words appear in the message as a contiguous run of whole
//!    words, and at most [`MAX_OTHER_WORDS`] of the message's remaining words are not filler
//!    ([`FILLER`]: "start", "please", "its", "now", ...). So "start bedtime", "bedtime
//!    please", "it's bedtime!" and "Bedtime." match `bedtime`; "bedtimes", "bedtime with the
//!    kitchen on" and "no bedtime" do not.
//! 4. Exactly one routine must match, and no trigger of another routine may appear in the
//!    message (even with more words around it): "good night, I'm leaving" names both `bedtime`
//!    and `leaving`, so none is chosen ([`RoutineMatch::Ambiguous`]) and the message goes to
//!    the model, or gets the help answer. Trigger phrases of different routines never contain
//!    one another (checked at load), so a bare trigger is never ambiguous.
//!
//! What it does not do: no fuzzy matching, no spelling correction, no parameters taken from
//! the message (a routine's steps are fixed; anything else is the model's job).

use protocol::message::MAX_CHAT_TEXT;

use crate::catalog::Catalog;
use crate::plan::validate::{DraftPlan, DraftStep, validate};
use crate::plan::{Plan, PlannerKind};

/// Longest message (in words) that can still be a routine request.
pub const MAX_MESSAGE_WORDS: usize = 24;
/// Most words outside the trigger that are not [`FILLER`].
pub const MAX_OTHER_WORDS: usize = 1;
/// Most words in one trigger phrase.
pub const MAX_TRIGGER_WORDS: usize = 8;

/// Words that do not count against [`MAX_OTHER_WORDS`] (after normalisation).
pub const FILLER: &[&str] = &[
    "a", "activate", "begin", "do", "go", "hello", "hey", "hi", "i", "im", "is", "it", "its",
    "lets", "me", "mode", "my", "now", "ok", "okay", "please", "pls", "routine", "run", "start",
    "the", "time", "us",
];

/// Words that stop a message from matching any routine (after normalisation).
pub const NEGATIONS: &[&str] = &[
    "but", "cancel", "cant", "dont", "except", "instead", "isnt", "never", "no", "not", "skip",
    "stop", "undo", "without", "wont",
];

/// Splits text into normalised words (see the module documentation).
pub fn normalise(text: &str) -> Vec<String> {
    let mut cleaned = String::with_capacity(text.len().min(MAX_CHAT_TEXT));
    for c in text.chars().take(MAX_CHAT_TEXT) {
        if c == '\'' || c == '\u{2019}' {
            continue;
        }
        if c.is_alphanumeric() {
            cleaned.extend(c.to_lowercase());
        } else {
            cleaned.push(' ');
        }
    }
    cleaned.split_whitespace().map(str::to_owned).collect()
}

/// Why the routines could not be loaded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RoutineLoadError {
    /// A routine file is malformed (see the `prompts` crate).
    #[error(transparent)]
    File(#[from] prompts::RoutineError),
    /// A routine's steps fail validation against the catalog.
    #[error("routine {routine}: {}", violations.join("; "))]
    Invalid {
        /// The routine.
        routine: String,
        /// Each violation, as a sentence.
        violations: Vec<String>,
    },
    /// A trigger phrase is unusable (no words, too many, a negation word) or taken by another
    /// routine.
    #[error("routine {routine}: trigger {trigger:?} {reason}")]
    Trigger {
        /// The routine.
        routine: String,
        /// The phrase.
        trigger: String,
        /// Why.
        reason: String,
    },
}

impl RoutineLoadError {
    /// Stable code.
    pub fn code(&self) -> &'static str {
        match self {
            RoutineLoadError::File(e) => e.code(),
            RoutineLoadError::Invalid { .. } => "routine_invalid",
            RoutineLoadError::Trigger { .. } => "routine_trigger_invalid",
        }
    }
}

/// One loaded routine.
#[derive(Debug, Clone)]
struct Loaded {
    name: String,
    description: String,
    triggers: Vec<String>,
    words: Vec<Vec<String>>,
    plan: Plan,
}

/// What [`RoutinePlanner::find`] made of a message.
#[derive(Debug, Clone, PartialEq)]
pub enum RoutineMatch<'a> {
    /// Exactly one routine matched.
    One {
        /// Its name.
        name: &'a str,
        /// Its plan (validated at load).
        plan: &'a Plan,
    },
    /// Triggers of several routines matched, so none is chosen.
    Ambiguous(Vec<&'a str>),
    /// No routine matched.
    None,
}

/// A routine as shown to the user (help text).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RoutineInfo<'a> {
    /// Its name.
    pub name: &'a str,
    /// One line.
    pub description: &'a str,
    /// Its trigger phrases, as written.
    pub triggers: &'a [String],
}

/// The offline planner: fixed routines chosen by trigger phrases.
#[derive(Debug, Clone)]
pub struct RoutinePlanner {
    routines: Vec<Loaded>,
    skipped: Vec<String>,
}

/// Room roles the routines use (`"@living"` in a routine file) and the names they resolve to
/// unless the configuration names the user's own rooms.
pub const DEFAULT_ROOM_ALIASES: &[(&str, &str)] = &[
    ("living", "Living room"),
    ("kitchen", "Kitchen"),
    ("bedroom", "Bedroom"),
    ("hallway", "Hallway"),
];

/// The alias table: the defaults, overridden by `configured`.
pub fn room_aliases(
    configured: &std::collections::BTreeMap<String, String>,
) -> std::collections::BTreeMap<String, String> {
    let mut out: std::collections::BTreeMap<String, String> = DEFAULT_ROOM_ALIASES
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    for (k, v) in configured {
        out.insert(k.clone(), v.clone());
    }
    out
}

/// Replaces every string parameter of the form `"@alias"` by the alias's room name; an unknown
/// alias is an error naming it.
fn resolve_aliases(
    value: &mut serde_json::Value,
    aliases: &std::collections::BTreeMap<String, String>,
) -> Result<(), String> {
    match value {
        serde_json::Value::String(s) => {
            if let Some(alias) = s.strip_prefix('@') {
                *s = aliases
                    .get(alias)
                    .cloned()
                    .ok_or_else(|| format!("unknown room alias @{alias}"))?;
            }
            Ok(())
        }
        serde_json::Value::Array(items) => items
            .iter_mut()
            .try_for_each(|v| resolve_aliases(v, aliases)),
        serde_json::Value::Object(map) => map
            .values_mut()
            .try_for_each(|v| resolve_aliases(v, aliases)),
        _ => Ok(()),
    }
}

impl RoutinePlanner {
    /// Loads the embedded routines, validated against the whole catalog, keeping those whose
    /// agents are all in `enabled`, with the default room aliases.
    pub fn load(enabled: &Catalog) -> Result<RoutinePlanner, RoutineLoadError> {
        Self::load_with_rooms(enabled, &std::collections::BTreeMap::new())
    }

    /// [`RoutinePlanner::load`] with the user's room names for the routines' room aliases.
    pub fn load_with_rooms(
        enabled: &Catalog,
        rooms: &std::collections::BTreeMap<String, String>,
    ) -> Result<RoutinePlanner, RoutineLoadError> {
        Self::from_routines_with_rooms(prompts::routines()?, enabled, rooms)
    }

    /// Like [`RoutinePlanner::load`], for the given routines.
    pub fn from_routines(
        routines: Vec<prompts::Routine>,
        enabled: &Catalog,
    ) -> Result<RoutinePlanner, RoutineLoadError> {
        Self::from_routines_with_rooms(routines, enabled, &std::collections::BTreeMap::new())
    }

    /// Like [`RoutinePlanner::load_with_rooms`], for the given routines.
    pub fn from_routines_with_rooms(
        routines: Vec<prompts::Routine>,
        enabled: &Catalog,
        rooms: &std::collections::BTreeMap<String, String>,
    ) -> Result<RoutinePlanner, RoutineLoadError> {
        let aliases = room_aliases(rooms);
        let everything = Catalog::all();
        let mut loaded: Vec<Loaded> = Vec::with_capacity(routines.len());
        let mut skipped = Vec::new();
        for r in routines {
            let mut steps = Vec::with_capacity(r.steps.len());
            for s in r.steps {
                let mut params = s.params;
                resolve_aliases(&mut params, &aliases).map_err(|why| {
                    RoutineLoadError::Invalid {
                        routine: r.name.clone(),
                        violations: vec![why],
                    }
                })?;
                steps.push(DraftStep {
                    agent: s.agent,
                    action: s.action,
                    params,
                    why: s.why,
                });
            }
            let draft = DraftPlan {
                summary: r.description.clone(),
                steps,
                planner: PlannerKind::Routine(r.name.clone()),
                continue_on_failure: r.continue_on_failure,
            };
            let plan = validate(&everything, draft).map_err(|v| RoutineLoadError::Invalid {
                routine: r.name.clone(),
                violations: v.iter().map(ToString::to_string).collect(),
            })?;
            let mut words = Vec::with_capacity(r.triggers.len());
            for t in &r.triggers {
                let w = check_trigger(&r.name, t, &loaded, &words)?;
                words.push(w);
            }
            if plan.steps.iter().any(|s| enabled.agent(&s.agent).is_none()) {
                skipped.push(r.name);
                continue;
            }
            loaded.push(Loaded {
                name: r.name,
                description: r.description,
                triggers: r.triggers,
                words,
                plan,
            });
        }
        Ok(RoutinePlanner {
            routines: loaded,
            skipped,
        })
    }

    /// The routines in use, in file order.
    pub fn routines(&self) -> impl Iterator<Item = RoutineInfo<'_>> {
        self.routines.iter().map(|r| RoutineInfo {
            name: &r.name,
            description: &r.description,
            triggers: &r.triggers,
        })
    }

    /// Valid routines left out because one of their agents is not enabled.
    pub fn skipped(&self) -> &[String] {
        &self.skipped
    }

    /// One routine's plan, by name.
    pub fn plan(&self, name: &str) -> Option<&Plan> {
        self.routines
            .iter()
            .find(|r| r.name == name)
            .map(|r| &r.plan)
    }

    /// Matches a message against the triggers (the rule is in the module documentation).
    pub fn find(&self, text: &str) -> RoutineMatch<'_> {
        let words = normalise(text);
        if words.is_empty()
            || words.len() > MAX_MESSAGE_WORDS
            || words.iter().any(|w| NEGATIONS.contains(&w.as_str()))
        {
            return RoutineMatch::None;
        }
        let hits: Vec<&Loaded> = self
            .routines
            .iter()
            .filter(|r| r.words.iter().any(|t| matches(&words, t)))
            .collect();
        let mentioned: Vec<&str> = self
            .routines
            .iter()
            .filter(|r| r.words.iter().any(|t| contains(&words, t)))
            .map(|r| r.name.as_str())
            .collect();
        match hits.as_slice() {
            [] => RoutineMatch::None,
            [one] if mentioned.len() == 1 => RoutineMatch::One {
                name: &one.name,
                plan: &one.plan,
            },
            _ => RoutineMatch::Ambiguous(mentioned),
        }
    }
}

/// Whether `trigger` occurs in `words` as a contiguous run.
fn contains(words: &[String], trigger: &[String]) -> bool {
    !trigger.is_empty() && words.windows(trigger.len()).any(|w| w == trigger)
}

/// Whether `trigger` occurs in `words` as a contiguous run with at most [`MAX_OTHER_WORDS`]
/// non-filler words around it.
fn matches(words: &[String], trigger: &[String]) -> bool {
    if trigger.is_empty() || trigger.len() > words.len() {
        return false;
    }
    words.windows(trigger.len()).enumerate().any(|(at, w)| {
        w == trigger && {
            let others = words
                .iter()
                .enumerate()
                .filter(|(i, _)| *i < at || *i >= at + trigger.len())
                .filter(|(_, w)| !FILLER.contains(&w.as_str()))
                .count();
            others <= MAX_OTHER_WORDS
        }
    })
}

fn check_trigger(
    routine: &str,
    trigger: &str,
    loaded: &[Loaded],
    own: &[Vec<String>],
) -> Result<Vec<String>, RoutineLoadError> {
    let fail = |reason: &str| RoutineLoadError::Trigger {
        routine: routine.to_owned(),
        trigger: trigger.to_owned(),
        reason: reason.to_owned(),
    };
    let words = normalise(trigger);
    if words.is_empty() {
        return Err(fail("has no words"));
    }
    if words.len() > MAX_TRIGGER_WORDS {
        return Err(fail("has too many words"));
    }
    if words.iter().any(|w| NEGATIONS.contains(&w.as_str())) {
        return Err(fail("holds a negation word, so it could never match"));
    }
    if words.iter().all(|w| FILLER.contains(&w.as_str())) {
        return Err(fail("is only filler words"));
    }
    if own.contains(&words) {
        return Err(fail("is listed twice"));
    }
    if let Some(other) = loaded.iter().find(|r| r.words.contains(&words)) {
        return Err(fail(&format!("is already a trigger of {}", other.name)));
    }
    // A phrase that always matches together with another routine's would make both ambiguous.
    if let Some(other) = loaded.iter().find(|r| {
        r.words
            .iter()
            .any(|t| contains(t, &words) || contains(&words, t))
    }) {
        return Err(fail(&format!(
            "overlaps a trigger of {}, so neither could be chosen",
            other.name
        )));
    }
    Ok(words)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn planner() -> RoutinePlanner {
        RoutinePlanner::load(&Catalog::all()).unwrap()
    }

    #[test]
    fn normalisation_is_explicit() {
        let cases = [
            "Start bedtime!",
            "it's bedtime",
            "It’s BEDTIME, please.",
            "good-night",
            "  lights\treport\n",
            "don't start bedtime",
            "Nachtruhe für Küche",
            "",
        ];
        let out: Vec<String> = cases
            .iter()
            .map(|c| format!("{c:?} -> {:?}", normalise(c)))
            .collect();
        expect_test::expect![[r#"
            "Start bedtime!" -> ["start", "bedtime"]
            "it's bedtime" -> ["its", "bedtime"]
            "It’s BEDTIME, please." -> ["its", "bedtime", "please"]
            "good-night" -> ["good", "night"]
            "  lights\treport\n" -> ["lights", "report"]
            "don't start bedtime" -> ["dont", "start", "bedtime"]
            "Nachtruhe für Küche" -> ["nachtruhe", "für", "küche"]
            "" -> []"#]]
        .assert_eq(&out.join("\n"));
    }

    #[test]
    fn messages_match_routines_by_the_rule() {
        let p = planner();
        let cases = [
            "start bedtime",
            "bedtime please",
            "it's bedtime",
            "Bedtime.",
            "BEDTIME!!!",
            "ok it's bedtime now",
            "please start the bedtime routine now",
            "I'm going to bed",
            "good night",
            "Goodnight!",
            "bedtime already",
            "bedtimes",
            "bed time",
            "bedtime with the kitchen on",
            "bedtime and kitchen",
            "don't start bedtime",
            "no bedtime",
            "bedtime but keep the kitchen on",
            "stop bedtime",
            "good morning",
            "wake up",
            "I'm leaving",
            "all lights off",
            "which lights are still on?",
            "what lights are on",
            "good night, I'm leaving",
            "turn on the kitchen",
            "",
            "bedtime bedtime bedtime bedtime bedtime bedtime bedtime bedtime bedtime bedtime bedtime bedtime bedtime",
            &format!("bedtime {}", "please ".repeat(30)),
        ];
        let out: Vec<String> = cases
            .iter()
            .map(|c| {
                let found = match p.find(c) {
                    RoutineMatch::One { name, .. } => name.to_owned(),
                    RoutineMatch::Ambiguous(names) => format!("ambiguous {names:?}"),
                    RoutineMatch::None => "-".to_owned(),
                };
                format!("{c:?} -> {found}")
            })
            .collect();
        expect_test::expect![[r#"
            "start bedtime" -> bedtime
            "bedtime please" -> bedtime
            "it's bedtime" -> bedtime
            "Bedtime." -> bedtime
            "BEDTIME!!!" -> bedtime
            "ok it's bedtime now" -> bedtime
            "please start the bedtime routine now" -> bedtime
            "I'm going to bed" -> bedtime
            "good night" -> bedtime
            "Goodnight!" -> bedtime
            "bedtime already" -> bedtime
            "bedtimes" -> -
            "bed time" -> -
            "bedtime with the kitchen on" -> -
            "bedtime and kitchen" -> -
            "don't start bedtime" -> -
            "no bedtime" -> -
            "bedtime but keep the kitchen on" -> -
            "stop bedtime" -> -
            "good morning" -> good-morning
            "wake up" -> good-morning
            "I'm leaving" -> leaving
            "all lights off" -> leaving
            "which lights are still on?" -> lights-report
            "what lights are on" -> lights-report
            "good night, I'm leaving" -> ambiguous ["bedtime", "leaving"]
            "turn on the kitchen" -> -
            "" -> -
            "bedtime bedtime bedtime bedtime bedtime bedtime bedtime bedtime bedtime bedtime bedtime bedtime bedtime" -> -
            "bedtime please please please please please please please please please please please please please please please please please please please please please please please please please please please please please please " -> -"#]]
        .assert_eq(&out.join("\n"));
    }

    #[test]
    fn every_shipped_routine_validates_against_the_catalog() {
        let p = planner();
        assert!(p.skipped().is_empty());
        let out: Vec<String> = p
            .routines()
            .map(|r| {
                let plan = p.plan(r.name).unwrap();
                let steps: Vec<String> = plan
                    .steps
                    .iter()
                    .map(|s| {
                        format!(
                            "    {} {} {} ({:?}): {}",
                            s.agent, s.action, s.params, s.effect, s.why
                        )
                    })
                    .collect();
                format!(
                    "{} [{}] continue_on_failure={} planner={}\n  {}\n{}",
                    r.name,
                    r.triggers.join(" | "),
                    plan.continue_on_failure,
                    plan.planner,
                    plan.summary,
                    steps.join("\n")
                )
            })
            .collect();
        expect_test::expect![[r#"
            bedtime [bedtime | going to bed | good night | goodnight | night mode] continue_on_failure=true planner=routine:bedtime
              Bedtime: living room dimmed to a warm glow, kitchen off, bedroom to a dim warm light, then a report of the lights still on.
                hue room.set {"brightness":20,"mirek":454,"on":true,"room":"Living room","transition_ms":600000} (Change): Living room to 20 % warm white (about 2200 K), fading over 10 minutes, so the evening winds down gently.
                hue room.set {"on":false,"room":"Kitchen"} (Change): Kitchen lights off: nobody needs them at night.
                hue room.set {"brightness":10,"mirek":455,"on":true,"room":"Bedroom"} (Change): Bedroom to a dim 10 % at 2200 K, enough to get ready for bed.
                hue lights.list {"on_only":true} (Read): Reports which lights are still on, so you can see whether anything was missed.
            good-morning [good morning | morning routine | wake up | start the day] continue_on_failure=false planner=routine:good-morning
              Good morning: bedroom slowly up to a neutral white, kitchen to full bright light.
                hue room.set {"brightness":60,"mirek":250,"on":true,"room":"Bedroom","transition_ms":300000} (Change): Bedroom up to 60 % neutral white (4000 K) over 5 minutes, a gentle wake-up.
                hue room.set {"brightness":100,"mirek":233,"on":true,"room":"Kitchen"} (Change): Kitchen to full, cool white light (about 4300 K) for breakfast.
            leaving [leaving | leaving home | going out | all off | all lights off | lights off everywhere] continue_on_failure=true planner=routine:leaving
              Leaving home: living room, kitchen and bedroom off, then a report of any light still on.
                hue room.set {"on":false,"room":"Living room"} (Change): Living room lights off while you are away.
                hue room.set {"on":false,"room":"Kitchen"} (Change): Kitchen lights off while you are away.
                hue room.set {"on":false,"room":"Bedroom"} (Change): Bedroom lights off while you are away.
                hue lights.list {"on_only":true} (Read): Reports any light that is still on (for example one outside these rooms), so nothing burns all day.
            lights-report [which lights are on | which lights are still on | what lights are on | lights still on | lights report] continue_on_failure=false planner=routine:lights-report
              Lights report: lists the lights that are on right now, changing nothing.
                hue lights.list {"on_only":true} (Read): Lists the lights that are on right now; nothing is changed."#]]
        .assert_eq(&out.join("\n"));
    }

    #[test]
    fn routines_whose_agents_are_not_enabled_are_left_out() {
        let p = RoutinePlanner::load(&Catalog::enabled(&[])).unwrap();
        assert_eq!(p.routines().count(), 0);
        assert_eq!(
            p.skipped(),
            ["bedtime", "good-morning", "leaving", "lights-report"]
        );
        assert_eq!(p.find("bedtime"), RoutineMatch::None);
    }

    fn routine(name: &str, triggers: &[&str], steps: &str) -> prompts::Routine {
        let text = format!(
            "name = {name:?}\ndescription = \"A test routine.\"\ntriggers = {triggers:?}\n{steps}"
        );
        prompts::parse(name, &text).unwrap()
    }

    const OFF: &str = "[[steps]]\nagent = \"hue\"\naction = \"room.set\"\nparams = { room = \"Kitchen\", on = false }\nwhy = \"Off.\"\n";

    fn load(routines: Vec<prompts::Routine>) -> String {
        match RoutinePlanner::from_routines(routines, &Catalog::all()) {
            Ok(p) => format!("ok {}", p.routines().count()),
            Err(e) => format!("{}: {e}", e.code()),
        }
    }

    #[test]
    fn a_broken_routine_is_a_load_error() {
        let on = OFF.replace("false", "true");
        let cases = vec![
            vec![routine("demo", &["demo"], OFF)],
            vec![routine(
                "demo",
                &["demo"],
                &OFF.replace("room.set", "door.unlock"),
            )],
            vec![routine(
                "demo",
                &["demo"],
                &OFF.replace("\"hue\"", "\"lock\""),
            )],
            vec![routine(
                "demo",
                &["demo"],
                &OFF.replace("on = false", "on = false, colour = \"red\""),
            )],
            vec![routine(
                "demo",
                &["demo"],
                &OFF.replace("on = false", "brightness = 150"),
            )],
            vec![routine("demo", &["demo"], &format!("{OFF}{OFF}"))],
            vec![routine("demo", &["demo"], &format!("{on}{OFF}"))],
            vec![routine(
                "demo",
                &["demo"],
                &(0..9)
                    .map(|i| OFF.replace("Kitchen", &format!("Room {i}")))
                    .collect::<String>(),
            )],
            vec![routine("demo", &["!!!"], OFF)],
            vec![routine("demo", &["please start"], OFF)],
            vec![routine("demo", &["don't panic"], OFF)],
            vec![routine(
                "demo",
                &["one two three four five six seven eight nine"],
                OFF,
            )],
            vec![routine("demo", &["demo", "Demo!"], OFF)],
            vec![
                routine("demo", &["bedtime"], OFF),
                routine("other", &["it's BEDTIME"], OFF),
            ],
            vec![
                routine("demo", &["bedtime"], OFF),
                routine("other", &["BEDTIME!"], OFF),
            ],
            vec![
                routine("demo", &["lights"], OFF),
                routine("other", &["lights off now"], OFF),
            ],
            vec![
                routine("demo", &["lights"], OFF),
                routine("other", &["lights off and on"], OFF),
            ],
        ];
        let out: Vec<String> = cases.into_iter().map(load).collect();
        expect_test::expect![[r#"
            ok 1
            routine_invalid: routine demo: step 1: agent hue has no action "door.unlock"; its actions are: lights.list, rooms.list, scenes.list, light.set, room.set, scene.activate
            routine_invalid: routine demo: step 1: there is no agent "lock"; the agents are: hue, audit-anomaly
            routine_invalid: routine demo: step 1: hue room.set parameters: unknown property "colour"
            routine_invalid: routine demo: step 1: hue room.set: parameter brightness must be a number between 0 and 100
            routine_invalid: routine demo: step 2: repeats step 1 (hue room.set with the same parameters)
            routine_invalid: routine demo: step 2: contradicts step 1: both are hue room.set for room "kitchen" but set on differently; keep one step per target
            routine_invalid: routine demo: the plan has 9 steps; the limit is 8
            routine_trigger_invalid: routine demo: trigger "!!!" has no words
            routine_trigger_invalid: routine demo: trigger "please start" is only filler words
            routine_trigger_invalid: routine demo: trigger "don't panic" holds a negation word, so it could never match
            routine_trigger_invalid: routine demo: trigger "one two three four five six seven eight nine" has too many words
            routine_trigger_invalid: routine demo: trigger "Demo!" is listed twice
            routine_trigger_invalid: routine other: trigger "it's BEDTIME" overlaps a trigger of demo, so neither could be chosen
            routine_trigger_invalid: routine other: trigger "BEDTIME!" is already a trigger of demo
            routine_trigger_invalid: routine other: trigger "lights off now" overlaps a trigger of demo, so neither could be chosen
            routine_trigger_invalid: routine other: trigger "lights off and on" overlaps a trigger of demo, so neither could be chosen"#]]
        .assert_eq(&out.join("\n"));
    }
}
