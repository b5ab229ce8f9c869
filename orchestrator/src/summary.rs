//! The daily summary: when it is due (pure), what it gathers, and how it is written.
//!
//! [`due`] decides from the last day run, now, the cron schedule and its time zone: the latest
//! scheduled time at or before now is due if its local day has not been run and it is at most
//! the catch-up window late (a run up to [`ON_TIME_GRACE`] late counts as on time). So after
//! downtime the summary is made up once, for the latest missed day only, and never twice for
//! one day: the day is claimed durably before the run starts, and a claimed day is never run
//! again, even if that run did not finish (at most once, by design).
//!
//! A run gathers read-only data from the enabled agents ([`sources`]: today the Hue lights
//! still on) as a plan of read steps executed with read-only tokens, composes the message
//! (through the LLM composer when one is configured, the agents' data marked untrusted; else
//! [`template`]), sends it to the configured chat and publishes `summary_sent`.

use std::time::Duration;

use chrono::{DateTime, NaiveDate, Utc};
use chrono_tz::Tz;
use protocol::message::Effect;
use protocol::{ActionName, AgentName};

use crate::catalog::Catalog;
use crate::execute::Executed;
use crate::plan::{Plan, PlanStep, PlannerKind, SummarySource};
use crate::render::{MAX_AGENT_LINE, clean_line};

/// The scheduler's job name in the store.
pub const JOB: &str = "daily_summary";
/// A run this late still counts as on time (the scheduler ticks; it is never exactly on time).
pub const ON_TIME_GRACE: Duration = Duration::from_secs(120);
/// Most scheduled times looked at (bounds a schedule that fires every second).
const MAX_FIRES_SCANNED: usize = 100_000;

/// A run that is due.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Due {
    /// The local day it is for.
    pub day: NaiveDate,
    /// When it was scheduled.
    pub scheduled_at: DateTime<Utc>,
    /// Made up after downtime (later than [`ON_TIME_GRACE`]).
    pub caught_up: bool,
}

/// Whether a summary is due now (pure).
pub fn due(
    last_day: Option<NaiveDate>,
    now: DateTime<Utc>,
    schedule: &cron::Schedule,
    tz: Tz,
    window: Duration,
) -> Option<Due> {
    let reach = window.max(ON_TIME_GRACE);
    let reach_chrono = chrono::Duration::from_std(reach).ok()?;
    let start = (now - reach_chrono - chrono::Duration::seconds(1)).with_timezone(&tz);
    let latest = schedule
        .after(&start)
        .take(MAX_FIRES_SCANNED)
        .take_while(|t| t.with_timezone(&Utc) <= now)
        .last()?;
    let day = latest.date_naive();
    if last_day.is_some_and(|d| d >= day) {
        return None;
    }
    let scheduled_at = latest.with_timezone(&Utc);
    let late = (now - scheduled_at).to_std().ok()?;
    if late > reach {
        return None;
    }
    Some(Due {
        day,
        scheduled_at,
        caught_up: late > ON_TIME_GRACE,
    })
}

/// The read-only data a summary gathers, from the agents that exist. New data agents add
/// their entry here.
const SOURCES: &[(&str, &str, &str, &str)] = &[(
    "hue",
    "lights.list",
    r#"{"on_only":true}"#,
    "Lights left on, for the daily summary.",
)];

/// The summary's read steps for the enabled agents (only actions the catalog says are reads).
pub fn sources(catalog: &Catalog) -> Vec<PlanStep> {
    SOURCES
        .iter()
        .filter_map(|(agent, action, params, why)| {
            let agent = AgentName::new(*agent).ok()?;
            let action = ActionName::new(*action).ok()?;
            let (spec, _) = catalog.action(&agent, &action)?;
            if spec.effect != Effect::Read {
                return None;
            }
            Some(PlanStep {
                agent,
                action,
                params: serde_json::from_str(params).ok()?,
                why: (*why).to_owned(),
                effect: Effect::Read,
            })
        })
        .collect()
}

/// The plan a summary run executes.
pub fn plan(day: NaiveDate, catalog: &Catalog) -> Plan {
    Plan {
        summary: format!("Daily summary for {day}"),
        steps: sources(catalog),
        planner: PlannerKind::Routine("daily-summary".to_owned()),
        continue_on_failure: true,
    }
}

/// The summary written without a model: a line per source, the agents' text shown as data.
pub fn template(day: NaiveDate, executed: Option<&Executed>) -> String {
    let mut lines = vec![format!("Daily summary for {day}")];
    match executed {
        None => lines.push("Nothing to report: no agent provides summary data.".to_owned()),
        Some(e) => {
            for (i, step) in e.record.plan.steps.iter().enumerate() {
                let output = e.outputs.get(i).and_then(Option::as_ref);
                let line = match output {
                    Some(o) => clean_line(&o.summary, MAX_AGENT_LINE),
                    None => {
                        let code = e
                            .record
                            .steps
                            .get(i)
                            .and_then(|s| s.code.as_ref())
                            .map_or("no_answer", |c| c.as_str());
                        format!("could not be read ({code})")
                    }
                };
                lines.push(format!("• {} {}: {line}", step.agent, step.action));
            }
        }
    }
    lines.join("\n")
}

/// The data handed to the LLM composer: one source per step that succeeded, with the agent's
/// summary line and data (untrusted; the composer wraps and labels it as such).
pub fn composer_input(executed: &Executed) -> Vec<SummarySource> {
    executed
        .record
        .plan
        .steps
        .iter()
        .zip(&executed.outputs)
        .filter_map(|(s, output)| {
            let o = output.as_ref()?;
            Some(SummarySource {
                source: format!("{} {}", s.agent, s.action),
                data: serde_json::json!({
                    "summary": clean_line(&o.summary, MAX_AGENT_LINE),
                    "data": o.data,
                }),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::str::FromStr as _;

    use chrono::TimeZone as _;

    use super::*;

    fn at(tz: Tz, y: i32, m: u32, d: u32, h: u32, min: u32) -> DateTime<Utc> {
        tz.with_ymd_and_hms(y, m, d, h, min, 0)
            .earliest()
            .unwrap()
            .with_timezone(&Utc)
    }

    fn day(s: &str) -> NaiveDate {
        NaiveDate::from_str(s).unwrap()
    }

    fn check(
        cron: &str,
        tz: Tz,
        last: Option<&str>,
        now: DateTime<Utc>,
        window_secs: u64,
    ) -> String {
        let schedule = cron::Schedule::from_str(cron).unwrap();
        match due(
            last.map(day),
            now,
            &schedule,
            tz,
            Duration::from_secs(window_secs),
        ) {
            None => "-".to_owned(),
            Some(d) => format!(
                "{} at {}{}",
                d.day,
                d.scheduled_at.with_timezone(&tz).format("%H:%M %Z"),
                if d.caught_up { " (caught up)" } else { "" }
            ),
        }
    }

    #[test]
    fn runs_are_due_once_per_day_and_caught_up_within_the_window() {
        use chrono_tz::Europe::Berlin;
        let daily = "0 0 21 * * *";
        let h = 3600;
        let cases = [
            // (last day, now, window) -> due
            (None, at(Berlin, 2026, 11, 20, 20, 59), 6 * h, "-"),
            (
                None,
                at(Berlin, 2026, 11, 20, 21, 0),
                6 * h,
                "2026-11-20 at 21:00 CET",
            ),
            (
                None,
                at(Berlin, 2026, 11, 20, 21, 1),
                6 * h,
                "2026-11-20 at 21:00 CET",
            ),
            (
                Some("2026-11-20"),
                at(Berlin, 2026, 11, 20, 21, 1),
                6 * h,
                "-",
            ),
            (
                Some("2026-11-19"),
                at(Berlin, 2026, 11, 20, 23, 30),
                6 * h,
                "2026-11-20 at 21:00 CET (caught up)",
            ),
            // After midnight the previous evening's run can still be made up.
            (
                Some("2026-11-19"),
                at(Berlin, 2026, 11, 21, 2, 59),
                6 * h,
                "2026-11-20 at 21:00 CET (caught up)",
            ),
            (
                Some("2026-11-19"),
                at(Berlin, 2026, 11, 21, 3, 1),
                6 * h,
                "-",
            ),
            // Without a window only an on-time run counts.
            (
                Some("2026-11-19"),
                at(Berlin, 2026, 11, 20, 21, 2),
                0,
                "2026-11-20 at 21:00 CET",
            ),
            (Some("2026-11-19"), at(Berlin, 2026, 11, 20, 21, 3), 0, "-"),
            // Down for days: only the latest day, once.
            (
                Some("2026-11-10"),
                at(Berlin, 2026, 11, 20, 22, 0),
                6 * h,
                "2026-11-20 at 21:00 CET (caught up)",
            ),
            (
                Some("2026-11-20"),
                at(Berlin, 2026, 11, 20, 22, 0),
                6 * h,
                "-",
            ),
            // A later day never makes an earlier one due again.
            (
                Some("2026-11-21"),
                at(Berlin, 2026, 11, 20, 21, 0),
                6 * h,
                "-",
            ),
        ];
        let out: Vec<String> = cases
            .iter()
            .map(|(last, now, window, _)| check(daily, Berlin, *last, *now, *window))
            .collect();
        let want: Vec<String> = cases.iter().map(|c| c.3.to_owned()).collect();
        assert_eq!(out, want);
    }

    #[test]
    fn daylight_saving_days() {
        use chrono_tz::Europe::Berlin;
        // 2026-03-29: clocks jump from 02:00 to 03:00, so 02:30 does not exist that day.
        let spring = "0 30 2 * * *";
        let out = [
            check(
                spring,
                Berlin,
                Some("2026-03-28"),
                at(Berlin, 2026, 3, 29, 4, 0),
                6 * 3600,
            ),
            check(
                spring,
                Berlin,
                Some("2026-03-28"),
                at(Berlin, 2026, 3, 30, 2, 31),
                6 * 3600,
            ),
            // 2026-10-25: 02:30 happens twice (CEST, then CET); the day runs once.
            check(
                spring,
                Berlin,
                Some("2026-10-24"),
                at(Berlin, 2026, 10, 25, 2, 31),
                0,
            ),
            check(
                spring,
                Berlin,
                Some("2026-10-25"),
                Berlin
                    .with_ymd_and_hms(2026, 10, 25, 2, 31, 0)
                    .latest()
                    .unwrap()
                    .with_timezone(&Utc),
                0,
            ),
            // A daily run at 21:00 keeps its local time across the change.
            check(
                "0 0 21 * * *",
                Berlin,
                Some("2026-03-28"),
                at(Berlin, 2026, 3, 29, 21, 0),
                0,
            ),
            check(
                "0 0 21 * * *",
                Berlin,
                Some("2026-10-24"),
                at(Berlin, 2026, 10, 25, 21, 0),
                0,
            ),
        ];
        expect_test::expect![[r#"
            [
                "-",
                "2026-03-30 at 02:30 CEST",
                "2026-10-25 at 02:30 CEST",
                "-",
                "2026-03-29 at 21:00 CEST",
                "2026-10-25 at 21:00 CET",
            ]
        "#]]
        .assert_debug_eq(&out);
    }

    #[test]
    fn other_time_zones_use_their_own_days() {
        let tokyo = chrono_tz::Asia::Tokyo;
        // 08:00 in Tokyo is 23:00 UTC the previous day: the day is Tokyo's.
        assert_eq!(
            check(
                "0 0 8 * * *",
                tokyo,
                Some("2026-11-20"),
                at(tokyo, 2026, 11, 21, 8, 0),
                0
            ),
            "2026-11-21 at 08:00 JST"
        );
    }

    #[test]
    fn the_template_lists_each_source_and_shows_agent_text_as_data() {
        use protocol::message::{ErrorCode, Outcome, PlatformRef};
        use protocol::{ChannelName, ChatUser, CorrelationId, PlanId, UnixMillis};

        use crate::approval::{PlanState, StepState};
        use crate::store::{PlanRecord, StepRecord};

        let hue = vec![AgentName::new("hue").unwrap()];
        let mut p = plan(day("2026-11-20"), &Catalog::enabled(&hue));
        p.steps.push(p.steps[0].clone());
        let record = PlanRecord {
            plan_id: PlanId::from_bytes([1; 16]),
            correlation_id: CorrelationId::from_bytes([2; 16]),
            plan_hash: p.hash(),
            plan: p,
            requested_by: ChatUser::new("terminal:me").unwrap(),
            chat: protocol::message::ChatRef {
                channel: ChannelName::new("terminal").unwrap(),
                chat_id: PlatformRef::new("me").unwrap(),
            },
            state: PlanState::PartlyDone,
            created_at: UnixMillis(0),
            updated_at: UnixMillis(0),
            approval: None,
            steps: vec![
                StepRecord {
                    index: 0,
                    state: StepState::Done,
                    jti: None,
                    code: None,
                    summary: None,
                },
                StepRecord {
                    index: 1,
                    state: StepState::Failed,
                    jti: None,
                    code: Some(ErrorCode::from_static("bridge_unreachable")),
                    summary: None,
                },
            ],
        };
        let executed = Executed {
            record,
            outputs: vec![
                Some(Outcome {
                    summary: "2 lights are on: Light 4,\nLight 6.\u{202E}".to_owned(),
                    data: serde_json::json!({"on": 2}),
                }),
                None,
            ],
        };
        expect_test::expect![[r#"
            Daily summary for 2026-11-20
            • hue lights.list: 2 lights are on: Light 4, Light 6.
            • hue lights.list: could not be read (bridge_unreachable)"#]]
        .assert_eq(&template(day("2026-11-20"), Some(&executed)));
        assert_eq!(
            template(day("2026-11-20"), None),
            "Daily summary for 2026-11-20\nNothing to report: no agent provides summary data."
        );
        let input = composer_input(&executed);
        assert_eq!(input.len(), 1);
        assert_eq!(input[0].source, "hue lights.list");
        assert_eq!(input[0].data["data"]["on"], 2);
    }

    #[test]
    fn sources_come_from_the_enabled_catalog_and_only_read() {
        let hue = vec![AgentName::new("hue").unwrap()];
        let steps = sources(&Catalog::enabled(&hue));
        assert_eq!(steps.len(), 1);
        assert_eq!(steps[0].action.as_str(), "lights.list");
        assert!(sources(&Catalog::enabled(&[])).is_empty());
        let p = plan(day("2026-11-20"), &Catalog::enabled(&hue));
        assert_eq!(p.summary, "Daily summary for 2026-11-20");
        assert!(!p.changes_world());
    }
}
