//! The rule engine, table-tested: every rule fires, does not fire, respects its window edges and
//! the cool-down; active hours across midnight, time zones and daylight saving time; reports
//! accepted only from the principal that may make them; bounded memory; and a restored state
//! continuing exactly like an uninterrupted engine.
//!
//! Each case feeds events through one helper ([`Run`]) and compares the alerts, one line each
//! (`+<seconds> <rule> <severity> <subject> [evidence] summary`), with a snapshot.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::print_stdout,
    clippy::print_stderr
)]

use std::collections::HashMap;

use audit_anomaly::rules::{ActiveHours, Engine, EngineState, MAX_KEYS, RulesConfig, Window};
use audit_anomaly::settings::parse_clock;
use expect_test::{Expect, expect};
use protocol::message::{AuditEvent, Digest, ErrorCode, Severity, StepDigest};
use protocol::{
    ActionName, AgentName, CorrelationId, Envelope, MessageId, PlanId, Principal, UnixMillis,
};
use serde_json::json;

/// 2026-01-15 12:00:00 UTC: Zurich is UTC+1, New York UTC-5.
const WINTER: i64 = 1_768_478_400_000;
/// 2026-07-15 12:00:00 UTC: Zurich is UTC+2 (summer time), New York UTC-4.
const SUMMER: i64 = 1_784_116_800_000;
const MIN: i64 = 60;
const HOUR: i64 = 3600;

fn p(name: &str) -> Principal {
    Principal::new(name).unwrap()
}

fn agent(name: &str) -> AgentName {
    AgentName::new(name).unwrap()
}

/// Feeds events to an engine and records its alerts.
struct Run {
    engine: Engine,
    base: i64,
    next: u128,
    index: HashMap<MessageId, u128>,
    out: Vec<String>,
}

impl Run {
    fn new(config: RulesConfig) -> Run {
        Run::at_base(config, WINTER)
    }

    fn at_base(config: RulesConfig, base: i64) -> Run {
        Run::with_state(config, base, EngineState::default())
    }

    fn with_state(config: RulesConfig, base: i64, state: EngineState) -> Run {
        Run {
            engine: Engine::new(config, p("audit-anomaly"), catalog::all(), state),
            base,
            next: 0,
            index: HashMap::new(),
            out: Vec::new(),
        }
    }

    /// An event on `audit.<subject>`, sent by `subject`, stored `secs` after the base.
    fn ev(&mut self, secs: i64, subject: &str, body: AuditEvent) -> &mut Run {
        self.ev_as(secs, subject, subject, body)
    }

    /// An event on `audit.<subject>` whose envelope names `sender`.
    fn ev_as(&mut self, secs: i64, subject: &str, sender: &str, body: AuditEvent) -> &mut Run {
        self.next += 1;
        let id = MessageId::from_bytes(self.next.to_be_bytes());
        self.index.insert(id, self.next);
        let envelope = Envelope::new(id, CorrelationId::random(), p(sender), UnixMillis(0), body);
        let alerts =
            self.engine
                .observe(&envelope, &p(subject), UnixMillis(self.base + secs * 1000));
        self.record(secs, alerts);
        self
    }

    /// `n` identical events, one every `every` seconds from `secs`.
    fn many(
        &mut self,
        n: usize,
        secs: i64,
        every: i64,
        subject: &str,
        body: AuditEvent,
    ) -> &mut Run {
        for i in 0..n {
            self.ev(secs + every * i as i64, subject, body.clone());
        }
        self
    }

    fn undecodable(&mut self, secs: i64, subject: Option<&str>, reason: &str) -> &mut Run {
        let alerts = self.engine.observe_invalid(
            subject.map(p).as_ref(),
            reason,
            UnixMillis(self.base + secs * 1000),
        );
        self.record(secs, alerts);
        self
    }

    fn record(&mut self, secs: i64, alerts: Vec<protocol::message::Alert>) {
        for a in alerts {
            let evidence: Vec<String> = a
                .evidence
                .iter()
                .map(|id| format!("#{}", self.index[id]))
                .collect();
            let severity = match a.severity {
                Severity::Warning => "warning",
                Severity::Critical => "critical",
            };
            let subject = a.subject.as_ref().map_or("-", Principal::as_str);
            self.out.push(format!(
                "+{secs} {} {severity} {subject} [{}] {}",
                a.rule.as_str(),
                evidence.join(","),
                a.summary
            ));
        }
    }

    fn check(&self, expected: Expect) {
        expected.assert_eq(&self.out.join("\n"));
    }
}

fn rejected(code: &str) -> AuditEvent {
    AuditEvent::CommandRejected {
        code: ErrorCode::new(code).unwrap(),
        plan_id: None,
        step: None,
    }
}

fn executed(action: &str) -> AuditEvent {
    AuditEvent::CommandExecuted {
        action: ActionName::new(action).unwrap(),
        plan_id: PlanId::from_bytes([1; 16]),
        step: 0,
        jti: "00".to_owned(),
    }
}

fn violation(principal: Option<&str>, kind: &str, subject: &str) -> AuditEvent {
    AuditEvent::NatsViolation {
        principal: principal.map(p),
        kind: kind.to_owned(),
        subject: subject.to_owned(),
    }
}

fn plan(n: u8) -> PlanId {
    PlanId::from_bytes([n; 16])
}

fn intent(plan_n: u8, step: u16, to: &str) -> AuditEvent {
    AuditEvent::StepIntent {
        plan_id: plan(plan_n),
        step: StepDigest {
            step,
            agent: agent(to),
            action: ActionName::new("light.set").unwrap(),
            args_sha256: Digest([0; 32]),
            args: json!({}),
        },
        jti: "00".to_owned(),
    }
}

fn result(plan_n: u8, step: u16, outcome: &str, code: Option<&str>) -> AuditEvent {
    AuditEvent::StepResult {
        plan_id: plan(plan_n),
        step,
        outcome: outcome.to_owned(),
        code: code.map(|c| ErrorCode::new(c).unwrap()),
    }
}

fn egress(to: Option<&str>, host: &str, code: &str) -> AuditEvent {
    AuditEvent::EgressRefused {
        agent: to.map(agent),
        source: "172.30.0.3".to_owned(),
        host: host.to_owned(),
        port: 443,
        code: ErrorCode::new(code).unwrap(),
    }
}

fn restarted(name: &str, restart_count: u32, oom_killed: bool) -> AuditEvent {
    AuditEvent::AgentRestarted {
        agent: agent(name),
        restart_count,
        oom_killed,
    }
}

fn digest(name: &str) -> AuditEvent {
    AuditEvent::ImageDigestChanged {
        agent: agent(name),
        previous: format!("sha256:{}", "a".repeat(64)),
        current: format!("sha256:{}", "b".repeat(64)),
    }
}

fn hours(zone: &str, start: &str, end: &str) -> RulesConfig {
    RulesConfig {
        active_hours: Some(ActiveHours {
            zone: zone.parse().unwrap(),
            start_minute: parse_clock(start).unwrap(),
            end_minute: parse_clock(end).unwrap(),
        }),
        ..RulesConfig::default()
    }
}

// ---------------------------------------------------------------------------------------------
// token rejections

#[test]
fn a_forged_or_replayed_token_is_critical_at_once() {
    let mut run = Run::new(RulesConfig::default());
    for (i, code) in [
        "token_bad_signature",
        "token_unknown_key",
        "token_replayed",
        "token_wrong_audience",
        "unexpected_sender",
    ]
    .iter()
    .enumerate()
    {
        // One agent per code, so the cool-down does not hide any of them.
        let name = ["hue", "weather", "mail", "calendar", "notes"][i];
        run.ev(i as i64, name, rejected(code));
    }
    run.check(expect![[r#"
        +0 token_forged critical hue [#1] hue refused a command with a forged, foreign or replayed capability token (token_bad_signature); whoever holds the orchestrator's credentials may be compromised.
        +1 token_forged critical weather [#2] weather refused a command with a forged, foreign or replayed capability token (token_unknown_key); whoever holds the orchestrator's credentials may be compromised.
        +2 token_forged critical mail [#3] mail refused a command with a forged, foreign or replayed capability token (token_replayed); whoever holds the orchestrator's credentials may be compromised.
        +3 token_forged critical calendar [#4] calendar refused a command with a forged, foreign or replayed capability token (token_wrong_audience); whoever holds the orchestrator's credentials may be compromised.
        +4 token_forged critical notes [#5] notes received a command that did not come from the orchestrator (unexpected_sender); the NATS permissions may have been bypassed."#]]);
}

#[test]
fn other_token_rejections_alert_only_above_the_threshold_within_the_window() {
    let mut run = Run::new(RulesConfig::default());
    run.ev(0, "hue", rejected("token_expired"))
        .ev(60, "hue", rejected("token_args_mismatch"))
        // Not a token problem: never counted.
        .ev(61, "hue", rejected("invalid_arguments"))
        .ev(62, "hue", rejected("unknown_action"))
        // A different agent has its own window.
        .ev(63, "weather", rejected("token_expired"))
        .ev(120, "hue", rejected("token_expired"));
    run.check(expect![[r#"
        +120 token_rejections warning hue [#1,#2,#6] hue refused 3 commands for token problems within 10 min, the last for token_expired."#]]);
}

#[test]
fn the_token_window_edge_is_exclusive() {
    let mut run = Run::new(RulesConfig::default());
    // The third comes exactly 10 minutes after the first: the first no longer counts.
    run.ev(0, "hue", rejected("token_expired"))
        .ev(300, "hue", rejected("token_expired"))
        .ev(600, "hue", rejected("token_expired"));
    run.check(expect![[""]]);
    // One second less and it does.
    let mut run = Run::new(RulesConfig::default());
    run.ev(0, "hue", rejected("token_expired"))
        .ev(300, "hue", rejected("token_expired"))
        .ev(599, "hue", rejected("token_expired"));
    run.check(expect![[r#"
        +599 token_rejections warning hue [#1,#2,#3] hue refused 3 commands for token problems within 10 min, the last for token_expired."#]]);
}

#[test]
fn the_cool_down_suppresses_repeats_for_the_same_rule_and_subject_only() {
    let mut run = Run::new(RulesConfig::default());
    run.ev(0, "hue", rejected("token_bad_signature"))
        .ev(10, "hue", rejected("token_replayed"))
        // Another subject is not cooled down.
        .ev(11, "weather", rejected("token_replayed"))
        // Another rule for the same subject is not either.
        .many(3, 12, 1, "hue", rejected("token_expired"))
        // 15 minutes after the first: raised again (the edge is exclusive).
        .ev(899, "hue", rejected("token_bad_signature"))
        .ev(900, "hue", rejected("token_bad_signature"));
    run.check(expect![[r#"
        +0 token_forged critical hue [#1] hue refused a command with a forged, foreign or replayed capability token (token_bad_signature); whoever holds the orchestrator's credentials may be compromised.
        +11 token_forged critical weather [#3] weather refused a command with a forged, foreign or replayed capability token (token_replayed); whoever holds the orchestrator's credentials may be compromised.
        +14 token_rejections warning hue [#4,#5,#6] hue refused 3 commands for token problems within 10 min, the last for token_expired.
        +900 token_forged critical hue [#8] hue refused a command with a forged, foreign or replayed capability token (token_bad_signature); whoever holds the orchestrator's credentials may be compromised."#]]);
}

#[test]
fn critical_token_codes_come_from_the_settings() {
    let config = RulesConfig {
        critical_token_codes: vec!["token_expired".to_owned()],
        ..RulesConfig::default()
    };
    let mut run = Run::new(config);
    run.ev(0, "hue", rejected("token_expired"))
        .ev(1, "weather", rejected("token_bad_signature"));
    run.check(expect![[r#"
        +0 token_forged critical hue [#1] hue refused a command with a forged, foreign or replayed capability token (token_expired); whoever holds the orchestrator's credentials may be compromised."#]]);
}

// ---------------------------------------------------------------------------------------------
// NATS violations

#[test]
fn one_violation_warns_and_a_burst_is_critical() {
    let mut run = Run::new(RulesConfig::default());
    run.many(
        20,
        0,
        1,
        "orchestrator",
        violation(Some("hue"), "publish", "cmd.weather"),
    );
    run.check(expect![[r#"
        +0 nats_violation warning hue [#1] NATS refused hue (publish: cmd.weather).
        +9 nats_violation_burst critical hue [#1,#2,#3,#4,#5,#6,#7,#8,#9,#10] hue drew 10 NATS errors within 1 min (the last: publish cmd.weather); it may be compromised."#]]);
}

#[test]
fn violations_spread_wider_than_the_burst_window_stay_a_warning() {
    let mut run = Run::new(RulesConfig::default());
    run.many(
        12,
        0,
        7,
        "orchestrator",
        violation(Some("hue"), "subscribe", "_INBOX.>"),
    );
    run.check(expect![[r#"
        +0 nats_violation warning hue [#1] NATS refused hue (subscribe: _INBOX.>)."#]]);
}

#[test]
fn authentication_errors_from_unknown_clients_alert_without_a_subject() {
    let mut run = Run::new(RulesConfig::default());
    run.ev(
        0,
        "orchestrator",
        violation(None, "authentication", "authentication error"),
    )
    .ev(
        1,
        "orchestrator",
        violation(Some("weather"), "authentication", "authentication error"),
    );
    run.check(expect![[r#"
        +0 nats_violation warning - [#1] NATS refused an unknown client (authentication: authentication error).
        +1 nats_violation warning weather [#2] NATS refused weather (authentication: authentication error)."#]]);
}

#[test]
fn a_threshold_above_one_counts_violations() {
    let config = RulesConfig {
        nats_violations: Window {
            window_ms: 60_000,
            threshold: 3,
        },
        ..RulesConfig::default()
    };
    let mut run = Run::new(config);
    run.many(
        3,
        0,
        10,
        "orchestrator",
        violation(Some("hue"), "publish", "audit.orchestrator"),
    );
    run.check(expect![[r#"
        +20 nats_violation warning hue [#1,#2,#3] NATS refused hue 3 times within 1 min (the last: publish audit.orchestrator)."#]]);
}

#[test]
fn only_the_orchestrator_may_report_host_events() {
    let mut run = Run::new(RulesConfig::default());
    // An agent trying to frame another one is itself the subject of the alert.
    run.ev(
        0,
        "hue",
        violation(Some("weather"), "publish", "cmd.weather"),
    )
    .ev(1, "weather", restarted("hue", 9, false))
    .ev(2, "mail", digest("hue"))
    .ev(3, "notes", result(1, 0, "failed", None))
    .ev(
        4,
        "calendar",
        egress(Some("hue"), "evil.example", "egress_host_not_allowed"),
    );
    run.check(expect![[r#"
        +0 audit_event_invalid warning hue [#1] hue published an audit event that reports nats_violation, which only the orchestrator may report.
        +1 audit_event_invalid warning weather [#2] weather published an audit event that reports agent_restarted, which only the orchestrator may report.
        +2 audit_event_invalid warning mail [#3] mail published an audit event that reports image_digest_changed, which only the orchestrator may report.
        +3 audit_event_invalid warning notes [#4] notes published an audit event that reports step_result, which only the orchestrator may report.
        +4 audit_event_invalid warning calendar [#5] calendar published an audit event that reports egress_refused, which only the egress proxy may report."#]]);
}

// ---------------------------------------------------------------------------------------------
// message rate

#[test]
fn the_rate_floor_allows_bursts_up_to_it() {
    let mut run = Run::new(RulesConfig::default());
    // 120 events in the minute starting at the base: at the floor, no alert.
    run.many(
        120,
        0,
        0,
        "hue",
        AuditEvent::ServiceStarted {
            version: "1".to_owned(),
        },
    );
    run.check(expect![[""]]);
    // The 121st in the same minute is over it.
    run.ev(
        59,
        "hue",
        AuditEvent::ServiceStarted {
            version: "1".to_owned(),
        },
    );
    run.check(expect![[r#"
        +59 message_rate warning hue [#114,#115,#116,#117,#118,#119,#120,#121] hue published 121 audit events within one minute, over its limit of 120 (5× its baseline of 0.0 a minute, at least 120)."#]]);
}

#[test]
fn the_rate_limit_follows_the_baseline() {
    let config = RulesConfig {
        rate: audit_anomaly::rules::RateConfig {
            floor_per_minute: 10,
            factor: 3.0,
            alpha: 0.5,
        },
        cool_down_ms: 60_000,
        ..RulesConfig::default()
    };
    let event = AuditEvent::ServiceStarted {
        version: "1".to_owned(),
    };
    let mut run = Run::new(config.clone());
    // 20 a minute for 5 minutes: the first minute is over the floor (its baseline is still 0);
    // then the baseline climbs towards 20 (10, 15, 17.5, 18.75) and the limit, max(10, 3 ×
    // baseline), with it, so 20 a minute is fine from the second minute on ...
    for minute in 0..5 {
        run.many(20, minute * MIN, 1, "hue", event.clone());
    }
    run.check(expect![[r#"
        +10 message_rate warning hue [#4,#5,#6,#7,#8,#9,#10,#11] hue published 11 audit events within one minute, over its limit of 10 (3× its baseline of 0.0 a minute, at least 10)."#]]);
    // ... and 57 in the sixth minute too (limit 3 × 19.4 = 58), while 59 is not.
    let mut run2 = Run::new(config.clone());
    for minute in 0..5 {
        run2.many(20, minute * MIN, 1, "weather", event.clone());
    }
    run2.out.clear();
    run2.many(58, 5 * MIN, 0, "weather", event.clone());
    run2.check(expect![[""]]);
    run2.ev(5 * MIN + 1, "weather", event.clone());
    run2.check(expect![[r#"
        +301 message_rate warning weather [#152,#153,#154,#155,#156,#157,#158,#159] weather published 59 audit events within one minute, over its limit of 58 (3× its baseline of 19.4 a minute, at least 10)."#]]);
}

#[test]
fn an_idle_baseline_decays_back_to_the_floor() {
    let config = RulesConfig {
        rate: audit_anomaly::rules::RateConfig {
            floor_per_minute: 10,
            factor: 2.0,
            alpha: 0.5,
        },
        ..RulesConfig::default()
    };
    let event = AuditEvent::ServiceStarted {
        version: "1".to_owned(),
    };
    let mut run = Run::new(config);
    for minute in 0..6 {
        run.many(30, minute * MIN, 1, "hue", event.clone());
    }
    run.out.clear();
    // An hour of silence: the baseline (about 29) decays to almost nothing, so 30 in one
    // minute is over the floor again.
    run.many(30, 66 * MIN, 1, "hue", event);
    run.check(expect![[r#"
        +3970 message_rate warning hue [#184,#185,#186,#187,#188,#189,#190,#191] hue published 11 audit events within one minute, over its limit of 10 (2× its baseline of 0.0 a minute, at least 10)."#]]);
}

// ---------------------------------------------------------------------------------------------
// active hours

#[test]
fn active_hours_are_off_unless_configured() {
    let mut run = Run::new(RulesConfig::default());
    run.ev(-11 * HOUR, "hue", executed("light.set"));
    run.check(expect![[""]]);
}

#[test]
fn change_actions_outside_active_hours_alert_and_reads_never_do() {
    // WINTER is 13:00 in Zurich.
    let mut run = Run::new(hours("Europe/Zurich", "07:00", "23:00"));
    run.ev(0, "hue", executed("light.set"))
        // 03:00 local: a read is fine, a change is not, an action the catalog does not know
        // counts as a change.
        .ev(-10 * HOUR, "hue", executed("lights.list"))
        .ev(-10 * HOUR, "hue", executed("room.set"))
        .ev(-10 * HOUR, "weather", executed("forecast.refresh"));
    run.check(expect![[r#"
        +-36000 outside_active_hours warning hue [#3] hue performed room.set at 03:00 (Europe/Zurich), outside the active hours 07:00–23:00.
        +-36000 outside_active_hours warning weather [#4] weather performed forecast.refresh at 03:00 (Europe/Zurich), outside the active hours 07:00–23:00."#]]);
}

#[test]
fn active_hours_start_is_inside_and_end_is_outside() {
    // 07:00 and 22:59 local are inside; 23:00 and 06:59 are not. Each its own agent, so the
    // cool-down hides nothing.
    let mut run = Run::new(hours("Europe/Zurich", "07:00", "23:00"));
    run.ev(-6 * HOUR, "hue", executed("light.set"))
        .ev(10 * HOUR - MIN, "weather", executed("light.set"))
        .ev(10 * HOUR, "mail", executed("light.set"))
        .ev(-6 * HOUR - MIN, "notes", executed("light.set"));
    run.check(expect![[r#"
        +36000 outside_active_hours warning mail [#3] mail performed light.set at 23:00 (Europe/Zurich), outside the active hours 07:00–23:00.
        +-21660 outside_active_hours warning notes [#4] notes performed light.set at 06:59 (Europe/Zurich), outside the active hours 07:00–23:00."#]]);
}

#[test]
fn active_hours_may_wrap_past_midnight() {
    // A night-shift household: active 18:00 to 02:00 (UTC).
    let mut run = Run::new(hours("UTC", "18:00", "02:00"));
    run.ev(11 * HOUR, "hue", executed("light.set")) // 23:00: inside
        .ev(13 * HOUR + 30 * MIN, "weather", executed("light.set")) // 01:30: inside
        .ev(14 * HOUR, "mail", executed("light.set")) // 02:00: outside
        .ev(0, "notes", executed("light.set")); // 12:00: outside
    run.check(expect![[r#"
        +50400 outside_active_hours warning mail [#3] mail performed light.set at 02:00 (UTC), outside the active hours 18:00–02:00.
        +0 outside_active_hours warning notes [#4] notes performed light.set at 12:00 (UTC), outside the active hours 18:00–02:00."#]]);
}

#[test]
fn active_hours_follow_the_time_zone_and_daylight_saving_time() {
    // 06:30 UTC in winter is 07:30 in Zurich (inside) and 01:30 in New York (outside).
    let at = -5 * HOUR - 30 * MIN;
    let mut zurich = Run::new(hours("Europe/Zurich", "07:00", "23:00"));
    zurich.ev(at, "hue", executed("light.set"));
    zurich.check(expect![[""]]);
    let mut new_york = Run::new(hours("America/New_York", "07:00", "23:00"));
    new_york.ev(at, "hue", executed("light.set"));
    new_york.check(expect![[r#"
        +-19800 outside_active_hours warning hue [#1] hue performed light.set at 01:30 (America/New_York), outside the active hours 07:00–23:00."#]]);
    // 05:30 UTC is 06:30 in Zurich in winter (outside) but 07:30 in summer (inside).
    let at = -6 * HOUR - 30 * MIN;
    let mut winter = Run::at_base(hours("Europe/Zurich", "07:00", "23:00"), WINTER);
    winter.ev(at, "hue", executed("light.set"));
    winter.check(expect![[r#"
        +-23400 outside_active_hours warning hue [#1] hue performed light.set at 06:30 (Europe/Zurich), outside the active hours 07:00–23:00."#]]);
    let mut summer = Run::at_base(hours("Europe/Zurich", "07:00", "23:00"), SUMMER);
    summer.ev(at, "hue", executed("light.set"));
    summer.check(expect![[""]]);
}

// ---------------------------------------------------------------------------------------------
// step failures

#[test]
fn repeated_step_failures_for_one_agent_alert() {
    let mut run = Run::new(RulesConfig::default());
    run.ev(0, "orchestrator", intent(1, 0, "hue"))
        .ev(
            1,
            "orchestrator",
            result(1, 0, "failed", Some("hue_bridge_unreachable")),
        )
        .ev(2, "orchestrator", intent(2, 0, "hue"))
        .ev(3, "orchestrator", intent(2, 1, "weather"))
        // Done steps never count, and another agent's failure counts for that agent.
        .ev(4, "orchestrator", result(2, 0, "done", None))
        .ev(5, "orchestrator", result(2, 1, "timeout", None))
        .ev(6, "orchestrator", intent(3, 0, "hue"))
        .ev(
            7,
            "orchestrator",
            result(3, 0, "rejected", Some("token_expired")),
        )
        .ev(8, "orchestrator", intent(4, 2, "hue"))
        .ev(9, "orchestrator", result(4, 2, "unknown", None));
    run.check(expect![[r#"
        +9 step_failures warning hue [#2,#8,#10] 3 steps for hue did not succeed within 15 min, the last: unknown."#]]);
}

#[test]
fn failures_of_steps_without_a_known_intent_count_for_no_agent() {
    let mut run = Run::new(RulesConfig::default());
    run.many(
        3,
        0,
        60,
        "orchestrator",
        result(9, 0, "failed", Some("agent_timeout")),
    );
    run.check(expect![[r#"
        +120 step_failures warning - [#1,#2,#3] 3 steps for an unknown agent did not succeed within 15 min, the last: failed (agent_timeout)."#]]);
}

#[test]
fn step_failures_outside_the_window_do_not_add_up() {
    let mut run = Run::new(RulesConfig::default());
    for (i, t) in [0, 500, 1000, 1500].iter().enumerate() {
        let n = u8::try_from(i).unwrap();
        run.ev(*t, "orchestrator", intent(n, 0, "hue")).ev(
            *t + 1,
            "orchestrator",
            result(n, 0, "failed", None),
        );
    }
    run.check(expect![[""]]);
}

// ---------------------------------------------------------------------------------------------
// egress, crash loops, images

#[test]
fn egress_refusals_name_the_agent() {
    let mut run = Run::new(RulesConfig::default());
    run.ev(
        0,
        "egress",
        egress(Some("hue"), "evil.example", "egress_host_not_allowed"),
    )
    .ev(
        1,
        "egress",
        egress(Some("hue"), "evil.example", "egress_host_not_allowed"),
    )
    .ev(
        2,
        "egress",
        egress(None, "10.0.0.1", "egress_unknown_client"),
    );
    run.check(expect![[r#"
        +0 egress_refused warning hue [#1] hue tried to reach evil.example:443, which it may not (egress_host_not_allowed).
        +2 egress_refused warning - [#3] A client outside every agent's network tried to reach 10.0.0.1:443, which it may not (egress_unknown_client)."#]]);
}

#[test]
fn hostile_hosts_are_cut_and_kept_printable_in_summaries() {
    let mut run = Run::new(RulesConfig::default());
    let host = format!("{}.example", "x".repeat(300));
    run.ev(
        0,
        "egress",
        egress(Some("hue"), &host, "egress_host_not_allowed"),
    );
    let line = &run.out[0];
    assert!(line.contains(&format!("{}…:443", "x".repeat(64))), "{line}");
    assert!(line.len() < 400, "{line}");
}

#[test]
fn a_crash_loop_alerts_by_count_or_by_frequency() {
    let mut run = Run::new(RulesConfig::default());
    // Restarts far apart with a low count: nothing.
    run.ev(0, "orchestrator", restarted("hue", 1, false))
        .ev(20 * MIN, "orchestrator", restarted("hue", 2, false))
        // The count reaches 3: raised.
        .ev(40 * MIN, "orchestrator", restarted("hue", 3, true))
        // Three within ten minutes, each after a fresh start: raised by frequency.
        .ev(0, "orchestrator", restarted("weather", 1, false))
        .ev(60, "orchestrator", restarted("weather", 1, false))
        .ev(120, "orchestrator", restarted("weather", 1, false));
    run.check(expect![[r#"
        +2400 crash_loop warning hue [#3] hue has been restarted 3 times, the last time for running out of memory.
        +120 crash_loop warning weather [#4,#5,#6] weather was restarted 3 times within 10 min."#]]);
}

#[test]
fn a_changed_image_digest_is_critical() {
    let mut run = Run::new(RulesConfig::default());
    run.ev(0, "orchestrator", digest("hue"));
    run.check(expect![[r#"
        +0 image_digest_changed critical hue [#1] hue now runs another image (aaaaaaaaaaaa… became bbbbbbbbbbbb…); nothing should change it while it runs."#]]);
}

// ---------------------------------------------------------------------------------------------
// invalid events, own events, bounds, restore

#[test]
fn invalid_events_alert_about_their_subject() {
    let mut run = Run::new(RulesConfig::default());
    run.ev_as(0, "hue", "weather", rejected("token_bad_signature"))
        .undecodable(1, Some("mail"), "does not decode (malformed_message)")
        .undecodable(2, None, "arrived on a subject that names no principal");
    run.check(expect![[r#"
        +0 audit_event_invalid warning hue [#1] hue published an audit event that names weather as its sender.
        +1 audit_event_invalid warning mail [] mail published an audit event that does not decode (malformed_message).
        +2 audit_event_invalid warning - [] an unknown client published an audit event that arrived on a subject that names no principal."#]]);
}

#[test]
fn the_engine_ignores_its_own_events() {
    let mut run = Run::new(RulesConfig::default());
    run.ev(0, "audit-anomaly", rejected("token_bad_signature"))
        .ev_as(1, "audit-anomaly", "hue", digest("hue"))
        .many(500, 2, 0, "audit-anomaly", executed("alerts.recent"))
        .undecodable(3, Some("audit-anomaly"), "does not decode");
    run.check(expect![[""]]);
}

#[test]
fn memory_stays_bounded_with_many_principals() {
    let mut run = Run::new(RulesConfig::default());
    for i in 0..(MAX_KEYS + 200) {
        let name = format!("agent{i}");
        run.ev(i as i64, &name, rejected("token_expired"));
        run.ev(i as i64, &name, rejected("token_bad_signature"));
    }
    let state = run.engine.state();
    assert!(state.windows.len() <= MAX_KEYS, "{}", state.windows.len());
    assert!(state.rates.len() <= MAX_KEYS, "{}", state.rates.len());
    assert!(state.raised.len() <= MAX_KEYS, "{}", state.raised.len());
    // Every critical one was still raised.
    assert_eq!(
        run.out
            .iter()
            .filter(|l| l.contains("token_forged"))
            .count(),
        MAX_KEYS + 200
    );
    // Intents are bounded too.
    for i in 0..3000u32 {
        let n = u8::try_from(i % 200).unwrap();
        let step = u16::try_from(i).unwrap();
        run.ev(10_000, "orchestrator", intent(n, step, "hue"));
    }
    assert!(run.engine.state().intents.len() <= audit_anomaly::rules::MAX_INTENTS);
}

#[test]
fn a_restored_state_continues_exactly_like_an_uninterrupted_engine() {
    let events: Vec<(i64, &str, AuditEvent)> = vec![
        (0, "hue", rejected("token_expired")),
        (
            1,
            "orchestrator",
            violation(Some("hue"), "publish", "cmd.x"),
        ),
        (2, "hue", rejected("token_expired")),
        (3, "orchestrator", intent(1, 0, "hue")),
        // --- restart here ---
        (4, "hue", rejected("token_expired")),
        (
            5,
            "orchestrator",
            violation(Some("hue"), "publish", "cmd.x"),
        ),
        (6, "orchestrator", result(1, 0, "failed", None)),
        (7, "orchestrator", result(1, 0, "failed", None)),
        (8, "orchestrator", result(1, 0, "failed", None)),
    ];
    let mut whole = Run::new(RulesConfig::default());
    for (t, s, e) in &events {
        whole.ev(*t, s, e.clone());
    }
    let mut first = Run::new(RulesConfig::default());
    for (t, s, e) in &events[..4] {
        first.ev(*t, s, e.clone());
    }
    let saved = serde_json::to_string(first.engine.state()).unwrap();
    let restored: EngineState = serde_json::from_str(&saved).unwrap();
    let mut second = Run::with_state(RulesConfig::default(), WINTER, restored);
    second.next = first.next;
    second.index = first.index.clone();
    for (t, s, e) in &events[4..] {
        second.ev(*t, s, e.clone());
    }
    let mut resumed = first.out.clone();
    resumed.extend(second.out.clone());
    assert_eq!(resumed, whole.out);
    whole.check(expect![[r#"
        +1 nats_violation warning hue [#2] NATS refused hue (publish: cmd.x).
        +4 token_rejections warning hue [#1,#3,#5] hue refused 3 commands for token problems within 10 min, the last for token_expired.
        +8 step_failures warning hue [#7,#8,#9] 3 steps for hue did not succeed within 15 min, the last: failed."#]]);
}

#[test]
fn every_rule_has_a_distinct_stable_code() {
    let codes: Vec<&str> = audit_anomaly::rules::Rule::ALL
        .iter()
        .map(|r| r.code())
        .collect();
    let mut unique = codes.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(unique.len(), codes.len());
    for c in codes {
        assert!(ErrorCode::new(c).is_ok(), "{c}");
    }
}
