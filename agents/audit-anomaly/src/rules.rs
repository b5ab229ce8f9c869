//! The rules: a pure, deterministic engine over audit events.
//!
//! [`Engine::observe`] takes one decoded audit event, the principal named by its NATS subject
//! (`audit.<principal>`, which the server binds to the publisher's identity) and the time the
//! stream stored it, and returns the alerts it raises. It reads no clock, draws no randomness
//! and does no I/O; its whole memory is an [`EngineState`] that the shell saves and restores, so
//! a restart continues the same windows, baselines and cool-downs.
//!
//! The rules (codes are [`Rule::code`]; every window and threshold comes from [`RulesConfig`]):
//!
//! | rule | fires on | severity |
//! |---|---|---|
//! | `token_forged` | one `command_rejected` whose code is in `critical_token_codes` (bad signature, unknown key, replay, wrong audience, a command from another sender than the orchestrator) | critical |
//! | `token_rejections` | `threshold` other `token_*` rejections by one agent within the window | warning |
//! | `nats_violation` | `threshold` `nats_violation` reports (from the orchestrator's watcher) about one principal within the window | warning |
//! | `nats_violation_burst` | the same, at the (higher) burst threshold | critical |
//! | `message_rate` | a principal's audit events in one minute above `max(floor, factor × baseline)`; the baseline is an EWMA of its per-minute counts | warning |
//! | `outside_active_hours` | `command_executed` of a change action (effect from the catalog) outside the active hours in the configured time zone | warning |
//! | `step_failures` | `threshold` `step_result`s other than `done` for one agent within the window (the agent comes from the step's `step_intent`) | warning |
//! | `egress_refused` | `threshold` `egress_refused` reports (from the egress proxy) naming one agent within the window | warning |
//! | `crash_loop` | `agent_restarted` with `restart_count` at or over the limit, or `threshold` restarts within the window | warning |
//! | `image_digest_changed` | one `image_digest_changed` | critical |
//! | `audit_event_invalid` | `threshold` audit events within the window that do not decode, name another sender than their subject, or report what only another service may report | warning |
//!
//! Events that only the orchestrator may report (`nats_violation`, `agent_restarted`,
//! `image_digest_changed`, `step_intent`, `step_result`) or only the egress proxy
//! (`egress_refused`) count only from that principal; from anyone else they are an
//! `audit_event_invalid` about the sender, so an agent cannot frame another one. The engine
//! ignores the events of its own principal (its `alert_raised` rows come back through the
//! stream).
//!
//! De-duplication: an alert for a rule and subject is not raised again within the cool-down.
//!
//! What it does not do: it never decides what happens to an agent (the orchestrator asks the
//! user), and nothing in it is configurable at run time by the events it reads.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;

use chrono::{TimeZone as _, Timelike as _};
use protocol::message::{Alert, AuditEvent, Effect, ErrorCode, MAX_LINE, Severity};
use protocol::{ActionName, AgentName, Envelope, MessageId, PlanId, Principal, UnixMillis};
use serde::{Deserialize, Serialize};

/// Most ids an alert carries as evidence.
pub const MAX_EVIDENCE: usize = 64;
/// Most keys (rule and subject, or principal) tracked per table; the least recently active is
/// forgotten first.
pub const MAX_KEYS: usize = 512;
/// Most step intents remembered (to name the agent of a later `step_result`).
pub const MAX_INTENTS: usize = 1024;
/// Most one-minute gaps replayed into a rate baseline (older history has decayed anyway).
const MAX_DECAY_MINUTES: i64 = 1440;
/// Version of [`EngineState`] as saved.
pub const STATE_VERSION: u32 = 1;

const MINUTE_MS: i64 = 60_000;

/// A rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Rule {
    /// A token check that only a forged, foreign or replayed token fails.
    TokenForged,
    /// Repeated other token rejections.
    TokenRejections,
    /// NATS permission or authentication errors.
    NatsViolation,
    /// Many NATS errors in a short time.
    NatsViolationBurst,
    /// Audit events far above the principal's baseline.
    MessageRate,
    /// A change action outside the active hours.
    OutsideActiveHours,
    /// Repeated step failures for one agent.
    StepFailures,
    /// The egress proxy refused an agent.
    EgressRefused,
    /// An agent's container or process keeps restarting.
    CrashLoop,
    /// An agent runs another image than before.
    ImageDigestChanged,
    /// Audit events that are malformed or report what their sender may not.
    AuditEventInvalid,
}

impl Rule {
    /// Every rule.
    pub const ALL: [Rule; 11] = [
        Rule::TokenForged,
        Rule::TokenRejections,
        Rule::NatsViolation,
        Rule::NatsViolationBurst,
        Rule::MessageRate,
        Rule::OutsideActiveHours,
        Rule::StepFailures,
        Rule::EgressRefused,
        Rule::CrashLoop,
        Rule::ImageDigestChanged,
        Rule::AuditEventInvalid,
    ];

    /// The stable code (the alert's `rule`).
    pub fn code(self) -> &'static str {
        match self {
            Rule::TokenForged => "token_forged",
            Rule::TokenRejections => "token_rejections",
            Rule::NatsViolation => "nats_violation",
            Rule::NatsViolationBurst => "nats_violation_burst",
            Rule::MessageRate => "message_rate",
            Rule::OutsideActiveHours => "outside_active_hours",
            Rule::StepFailures => "step_failures",
            Rule::EgressRefused => "egress_refused",
            Rule::CrashLoop => "crash_loop",
            Rule::ImageDigestChanged => "image_digest_changed",
            Rule::AuditEventInvalid => "audit_event_invalid",
        }
    }

    /// How bad an alert of this rule is.
    pub fn severity(self) -> Severity {
        match self {
            Rule::TokenForged | Rule::NatsViolationBurst | Rule::ImageDigestChanged => {
                Severity::Critical
            }
            _ => Severity::Warning,
        }
    }
}

/// `threshold` events within `window_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// Window length in milliseconds; an event counts while `now - at < window_ms`.
    pub window_ms: i64,
    /// Events in the window that raise the alert (1 to [`MAX_EVIDENCE`]).
    pub threshold: u32,
}

/// The message-rate rule.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateConfig {
    /// Events per minute that never alert, whatever the baseline.
    pub floor_per_minute: u32,
    /// How far above its baseline a minute may go.
    pub factor: f64,
    /// EWMA weight of the latest minute (0 < alpha ≤ 1).
    pub alpha: f64,
}

/// The hours in which change actions are expected, in one time zone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ActiveHours {
    /// The time zone.
    pub zone: chrono_tz::Tz,
    /// First minute of the day inside (0 to 1439).
    pub start_minute: u16,
    /// First minute of the day outside again (0 to 1439, not `start_minute`); earlier than
    /// `start_minute` means the hours wrap past midnight.
    pub end_minute: u16,
}

impl ActiveHours {
    /// Whether a minute of the day lies inside.
    pub fn contains(&self, minute: u16) -> bool {
        if self.start_minute < self.end_minute {
            (self.start_minute..self.end_minute).contains(&minute)
        } else {
            minute >= self.start_minute || minute < self.end_minute
        }
    }
}

/// The crash-loop rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CrashLoopConfig {
    /// A restart count at or over this raises at once.
    pub restart_count: u32,
    /// Or this many restart reports within the window.
    pub window: Window,
}

/// Every threshold, window and list the rules use.
#[derive(Debug, Clone, PartialEq)]
pub struct RulesConfig {
    /// The same rule for the same subject is not raised again within this.
    pub cool_down_ms: i64,
    /// `command_rejected` codes that raise `token_forged` at once.
    pub critical_token_codes: Vec<String>,
    /// Other `token_*` rejections.
    pub token_rejections: Window,
    /// NATS errors (warning).
    pub nats_violations: Window,
    /// NATS errors (critical burst).
    pub nats_violation_burst: Window,
    /// Message rate.
    pub rate: RateConfig,
    /// Active hours; `None` turns the rule off.
    pub active_hours: Option<ActiveHours>,
    /// Step failures.
    pub step_failures: Window,
    /// Egress refusals.
    pub egress_refusals: Window,
    /// Crash loops.
    pub crash_loop: CrashLoopConfig,
    /// Invalid audit events.
    pub invalid_events: Window,
}

/// Token codes that only a forged, foreign or replayed token (or a command from someone other
/// than the orchestrator) produces.
pub const DEFAULT_CRITICAL_TOKEN_CODES: &[&str] = &[
    "token_bad_signature",
    "token_unknown_key",
    "token_replayed",
    "token_wrong_audience",
    "unexpected_sender",
];

impl Default for RulesConfig {
    fn default() -> Self {
        let minutes = |m: i64| m * MINUTE_MS;
        RulesConfig {
            cool_down_ms: minutes(15),
            critical_token_codes: DEFAULT_CRITICAL_TOKEN_CODES
                .iter()
                .map(|c| (*c).to_owned())
                .collect(),
            token_rejections: Window {
                window_ms: minutes(10),
                threshold: 3,
            },
            nats_violations: Window {
                window_ms: minutes(5),
                threshold: 1,
            },
            nats_violation_burst: Window {
                window_ms: minutes(1),
                threshold: 10,
            },
            rate: RateConfig {
                floor_per_minute: 120,
                factor: 5.0,
                alpha: 0.2,
            },
            active_hours: None,
            step_failures: Window {
                window_ms: minutes(15),
                threshold: 3,
            },
            egress_refusals: Window {
                window_ms: minutes(10),
                threshold: 1,
            },
            crash_loop: CrashLoopConfig {
                restart_count: 3,
                window: Window {
                    window_ms: minutes(10),
                    threshold: 3,
                },
            },
            invalid_events: Window {
                window_ms: minutes(10),
                threshold: 1,
            },
        }
    }
}

/// One event counted in a window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hit {
    /// When (stream time, Unix milliseconds).
    pub at: i64,
    /// The event (`None` for an event that did not decode).
    pub id: Option<MessageId>,
}

/// One principal's message rate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateState {
    /// The current minute (Unix milliseconds / 60000).
    pub minute: i64,
    /// Events in the current minute.
    pub count: u32,
    /// EWMA of the completed minutes' counts.
    pub baseline: f64,
    /// The latest events of the current minute.
    pub recent: VecDeque<MessageId>,
}

/// A step the orchestrator announced, to name the agent of its result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Intent {
    /// Plan.
    pub plan_id: PlanId,
    /// Step.
    pub step: u16,
    /// The agent it goes to.
    pub agent: AgentName,
}

/// Everything the engine remembers; saved by the shell between batches.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EngineState {
    /// [`STATE_VERSION`].
    pub version: u32,
    /// Counting windows, keyed `<rule>/<subject or ->`.
    pub windows: BTreeMap<String, VecDeque<Hit>>,
    /// Message rates, keyed by principal.
    pub rates: BTreeMap<String, RateState>,
    /// When each rule last raised for each subject (same keys as `windows`).
    pub raised: BTreeMap<String, i64>,
    /// Recent step intents, oldest first.
    pub intents: VecDeque<Intent>,
}

impl Default for EngineState {
    fn default() -> Self {
        EngineState {
            version: STATE_VERSION,
            windows: BTreeMap::new(),
            rates: BTreeMap::new(),
            raised: BTreeMap::new(),
            intents: VecDeque::new(),
        }
    }
}

/// The rule engine.
#[derive(Debug, Clone)]
pub struct Engine {
    config: RulesConfig,
    me: Principal,
    orchestrator: Principal,
    egress: Principal,
    effects: BTreeMap<(String, String), Effect>,
    state: EngineState,
}

fn key(rule: Rule, subject: Option<&Principal>) -> String {
    format!("{}/{}", rule.code(), subject.map_or("-", Principal::as_str))
}

/// A principal as named in a summary.
struct Who<'a>(Option<&'a Principal>);

impl fmt::Display for Who<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(p) => write!(f, "{p}"),
            None => f.write_str("an unknown client"),
        }
    }
}

/// A window length for a summary ("10 min").
struct Span(i64);

impl fmt::Display for Span {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.0 / 1000;
        if secs % 3600 == 0 && secs >= 3600 {
            write!(f, "{} h", secs / 3600)
        } else if secs % 60 == 0 && secs >= 60 {
            write!(f, "{} min", secs / 60)
        } else {
            write!(f, "{secs} s")
        }
    }
}

/// Cuts reported text (hosts, subjects: chosen by whoever caused the event) to a short, printable
/// piece for a summary.
fn quote(text: &str, max: usize) -> String {
    let mut out: String = text
        .chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .take(max)
        .collect();
    if text.chars().count() > max {
        out.push('…');
    }
    out
}

/// One line of at most [`MAX_LINE`] bytes.
fn one_line(text: &str) -> String {
    let mut out = String::new();
    for c in text.chars() {
        let c = if c.is_control() { ' ' } else { c };
        if out.len() + c.len_utf8() > MAX_LINE {
            break;
        }
        out.push(c);
    }
    out
}

fn minute_of_day(zone: chrono_tz::Tz, at: UnixMillis) -> Option<u16> {
    let local = zone.timestamp_millis_opt(at.0).single()?;
    u16::try_from(local.hour() * 60 + local.minute()).ok()
}

fn clock(minute: u16) -> String {
    format!("{:02}:{:02}", minute / 60, minute % 60)
}

impl Engine {
    /// An engine for the agent `me` with the effects of every action in `manifests` (the
    /// catalog), starting from `state`.
    pub fn new(
        config: RulesConfig,
        me: Principal,
        manifests: &[protocol::manifest::CheckedManifest],
        state: EngineState,
    ) -> Engine {
        let mut effects = BTreeMap::new();
        for m in manifests {
            for a in &m.manifest.actions {
                effects.insert((m.name().to_string(), a.name.to_string()), a.effect);
            }
        }
        Engine {
            config,
            me,
            orchestrator: Principal::orchestrator(),
            egress: protocol::acl::Identity::Egress.principal(),
            effects,
            state,
        }
    }

    /// The state to save.
    pub fn state(&self) -> &EngineState {
        &self.state
    }

    /// The configuration.
    pub fn config(&self) -> &RulesConfig {
        &self.config
    }

    /// Observes one decoded audit event that arrived on `audit.<subject>` and was stored at
    /// `now`; returns the alerts it raises.
    pub fn observe(
        &mut self,
        event: &Envelope<AuditEvent>,
        subject: &Principal,
        now: UnixMillis,
    ) -> Vec<Alert> {
        if subject == &self.me {
            return Vec::new();
        }
        if &event.sender != subject {
            return self.invalid(
                Some(subject),
                &format!("names {} as its sender", quote(event.sender.as_str(), 32)),
                Some(event.id),
                now,
            );
        }
        let mut alerts = self.rate(subject, event.id, now);
        let from_orchestrator = subject == &self.orchestrator;
        let id = event.id;
        let raised = match &event.body {
            AuditEvent::CommandRejected { code, .. } => self.token(subject, code, id, now),
            AuditEvent::CommandExecuted { action, .. } => {
                self.active_hours(subject, action, id, now)
            }
            AuditEvent::NatsViolation {
                principal,
                kind,
                subject: what,
            } if from_orchestrator => self.nats(principal.as_ref(), kind, what, id, now),
            AuditEvent::StepIntent { plan_id, step, .. } if from_orchestrator => {
                self.intent(*plan_id, step.step, &step.agent);
                Vec::new()
            }
            AuditEvent::StepResult {
                plan_id,
                step,
                outcome,
                code,
            } if from_orchestrator => self.step_result(*plan_id, *step, outcome, code, id, now),
            AuditEvent::EgressRefused {
                agent,
                host,
                port,
                code,
                ..
            } if subject == &self.egress => self.egress(agent.as_ref(), host, *port, code, id, now),
            AuditEvent::AgentRestarted {
                agent,
                restart_count,
                oom_killed,
            } if from_orchestrator => self.restarted(agent, *restart_count, *oom_killed, id, now),
            AuditEvent::ImageDigestChanged {
                agent,
                previous,
                current,
            } if from_orchestrator => self.digest(agent, previous, current, id, now),
            AuditEvent::NatsViolation { .. }
            | AuditEvent::StepIntent { .. }
            | AuditEvent::StepResult { .. }
            | AuditEvent::AgentRestarted { .. }
            | AuditEvent::ImageDigestChanged { .. } => self.invalid(
                Some(subject),
                &format!(
                    "reports {}, which only the orchestrator may report",
                    event.body.kind()
                ),
                Some(id),
                now,
            ),
            AuditEvent::EgressRefused { .. } => self.invalid(
                Some(subject),
                "reports egress_refused, which only the egress proxy may report",
                Some(id),
                now,
            ),
            _ => Vec::new(),
        };
        alerts.extend(raised);
        alerts
    }

    /// Observes an audit event that could not be used at all: it did not decode, or its subject
    /// names no principal (`subject` is then `None`).
    pub fn observe_invalid(
        &mut self,
        subject: Option<&Principal>,
        reason: &str,
        now: UnixMillis,
    ) -> Vec<Alert> {
        if subject == Some(&self.me) {
            return Vec::new();
        }
        self.invalid(subject, reason, None, now)
    }

    fn invalid(
        &mut self,
        subject: Option<&Principal>,
        reason: &str,
        id: Option<MessageId>,
        now: UnixMillis,
    ) -> Vec<Alert> {
        let window = self.config.invalid_events;
        let Some(evidence) = self.count(Rule::AuditEventInvalid, subject, window, id, now) else {
            return Vec::new();
        };
        let summary = if window.threshold <= 1 {
            format!("{} published an audit event that {reason}.", Who(subject))
        } else {
            format!(
                "{} published {} invalid audit events within {}; the last {reason}.",
                Who(subject),
                evidence.len(),
                Span(window.window_ms)
            )
        };
        self.raise(Rule::AuditEventInvalid, subject, summary, evidence, now)
    }

    fn token(
        &mut self,
        agent: &Principal,
        code: &ErrorCode,
        id: MessageId,
        now: UnixMillis,
    ) -> Vec<Alert> {
        let code = code.as_str();
        if self.config.critical_token_codes.iter().any(|c| c == code) {
            let summary = if code == "unexpected_sender" {
                format!(
                    "{agent} received a command that did not come from the orchestrator \
                     ({code}); the NATS permissions may have been bypassed."
                )
            } else {
                format!(
                    "{agent} refused a command with a forged, foreign or replayed capability \
                     token ({code}); whoever holds the orchestrator's credentials may be \
                     compromised."
                )
            };
            return self.raise(Rule::TokenForged, Some(agent), summary, vec![id], now);
        }
        if !code.starts_with("token_") {
            return Vec::new();
        }
        let window = self.config.token_rejections;
        let Some(evidence) = self.count(Rule::TokenRejections, Some(agent), window, Some(id), now)
        else {
            return Vec::new();
        };
        let summary = format!(
            "{agent} refused {} commands for token problems within {}, the last for {code}.",
            evidence.len(),
            Span(window.window_ms)
        );
        self.raise(Rule::TokenRejections, Some(agent), summary, evidence, now)
    }

    fn nats(
        &mut self,
        principal: Option<&Principal>,
        kind: &str,
        what: &str,
        id: MessageId,
        now: UnixMillis,
    ) -> Vec<Alert> {
        let mut alerts = Vec::new();
        let kind = quote(kind, 16);
        let what = quote(what, 80);
        let burst = self.config.nats_violation_burst;
        if let Some(evidence) =
            self.count(Rule::NatsViolationBurst, principal, burst, Some(id), now)
        {
            let summary = format!(
                "{} drew {} NATS errors within {} (the last: {kind} {what}); it may be \
                 compromised.",
                Who(principal),
                evidence.len(),
                Span(burst.window_ms)
            );
            alerts.extend(self.raise(Rule::NatsViolationBurst, principal, summary, evidence, now));
        }
        let window = self.config.nats_violations;
        if let Some(evidence) = self.count(Rule::NatsViolation, principal, window, Some(id), now) {
            let summary = if window.threshold <= 1 {
                format!("NATS refused {} ({kind}: {what}).", Who(principal))
            } else {
                format!(
                    "NATS refused {} {} times within {} (the last: {kind} {what}).",
                    Who(principal),
                    evidence.len(),
                    Span(window.window_ms)
                )
            };
            alerts.extend(self.raise(Rule::NatsViolation, principal, summary, evidence, now));
        }
        alerts
    }

    fn rate(&mut self, principal: &Principal, id: MessageId, now: UnixMillis) -> Vec<Alert> {
        let config = self.config.rate;
        let minute = now.0.div_euclid(MINUTE_MS);
        let name = principal.as_str().to_owned();
        if !self.state.rates.contains_key(&name) && self.state.rates.len() >= MAX_KEYS {
            let oldest = self
                .state
                .rates
                .iter()
                .min_by_key(|(_, r)| r.minute)
                .map(|(k, _)| k.clone());
            if let Some(oldest) = oldest {
                self.state.rates.remove(&oldest);
            }
        }
        let rate = self.state.rates.entry(name).or_insert_with(|| RateState {
            minute,
            count: 0,
            baseline: 0.0,
            recent: VecDeque::new(),
        });
        if minute > rate.minute {
            rate.baseline =
                config.alpha * f64::from(rate.count) + (1.0 - config.alpha) * rate.baseline;
            let idle = (minute - rate.minute - 1).min(MAX_DECAY_MINUTES);
            let idle = i32::try_from(idle).unwrap_or(0);
            rate.baseline *= (1.0 - config.alpha).powi(idle);
            rate.minute = minute;
            rate.count = 0;
            rate.recent.clear();
        }
        rate.count = rate.count.saturating_add(1);
        rate.recent.push_back(id);
        if rate.recent.len() > 8 {
            rate.recent.pop_front();
        }
        let limit = f64::from(config.floor_per_minute).max(config.factor * rate.baseline);
        if f64::from(rate.count) <= limit {
            return Vec::new();
        }
        let summary = format!(
            "{principal} published {} audit events within one minute, over its limit of {:.0} \
             ({}× its baseline of {:.1} a minute, at least {}).",
            rate.count, limit, config.factor, rate.baseline, config.floor_per_minute
        );
        let evidence: Vec<MessageId> = rate.recent.iter().copied().collect();
        self.raise(Rule::MessageRate, Some(principal), summary, evidence, now)
    }

    fn active_hours(
        &mut self,
        agent: &Principal,
        action: &ActionName,
        id: MessageId,
        now: UnixMillis,
    ) -> Vec<Alert> {
        let Some(hours) = self.config.active_hours else {
            return Vec::new();
        };
        // An action the catalog does not know counts as a change (fail closed).
        let effect = self
            .effects
            .get(&(agent.to_string(), action.to_string()))
            .copied()
            .unwrap_or(Effect::Change);
        if effect != Effect::Change {
            return Vec::new();
        }
        let Some(minute) = minute_of_day(hours.zone, now) else {
            return Vec::new();
        };
        if hours.contains(minute) {
            return Vec::new();
        }
        let summary = format!(
            "{agent} performed {action} at {} ({}), outside the active hours {}–{}.",
            clock(minute),
            hours.zone.name(),
            clock(hours.start_minute),
            clock(hours.end_minute)
        );
        self.raise(
            Rule::OutsideActiveHours,
            Some(agent),
            summary,
            vec![id],
            now,
        )
    }

    fn intent(&mut self, plan_id: PlanId, step: u16, agent: &AgentName) {
        self.state
            .intents
            .retain(|i| !(i.plan_id == plan_id && i.step == step));
        self.state.intents.push_back(Intent {
            plan_id,
            step,
            agent: agent.clone(),
        });
        while self.state.intents.len() > MAX_INTENTS {
            self.state.intents.pop_front();
        }
    }

    fn step_result(
        &mut self,
        plan_id: PlanId,
        step: u16,
        outcome: &str,
        code: &Option<ErrorCode>,
        id: MessageId,
        now: UnixMillis,
    ) -> Vec<Alert> {
        if outcome == "done" {
            return Vec::new();
        }
        let agent: Option<Principal> = self
            .state
            .intents
            .iter()
            .rev()
            .find(|i| i.plan_id == plan_id && i.step == step)
            .map(|i| Principal::from(&i.agent));
        let window = self.config.step_failures;
        let Some(evidence) = self.count(Rule::StepFailures, agent.as_ref(), window, Some(id), now)
        else {
            return Vec::new();
        };
        let how = match code {
            Some(c) => format!("{} ({})", quote(outcome, 32), c.as_str()),
            None => quote(outcome, 32),
        };
        let who = match &agent {
            Some(a) => a.to_string(),
            None => "an unknown agent".to_owned(),
        };
        let summary = format!(
            "{} steps for {who} did not succeed within {}, the last: {how}.",
            evidence.len(),
            Span(window.window_ms)
        );
        self.raise(Rule::StepFailures, agent.as_ref(), summary, evidence, now)
    }

    fn egress(
        &mut self,
        agent: Option<&AgentName>,
        host: &str,
        port: u16,
        code: &ErrorCode,
        id: MessageId,
        now: UnixMillis,
    ) -> Vec<Alert> {
        let agent: Option<Principal> = agent.map(Principal::from);
        let window = self.config.egress_refusals;
        let Some(evidence) = self.count(Rule::EgressRefused, agent.as_ref(), window, Some(id), now)
        else {
            return Vec::new();
        };
        let target = format!("{}:{port}", quote(host, 64));
        let who = match &agent {
            Some(a) => a.to_string(),
            None => "A client outside every agent's network".to_owned(),
        };
        let summary = if window.threshold <= 1 {
            format!(
                "{who} tried to reach {target}, which it may not ({}).",
                code.as_str()
            )
        } else {
            format!(
                "{who} was refused egress {} times within {}, the last to {target} ({}).",
                evidence.len(),
                Span(window.window_ms),
                code.as_str()
            )
        };
        self.raise(Rule::EgressRefused, agent.as_ref(), summary, evidence, now)
    }

    fn restarted(
        &mut self,
        agent: &AgentName,
        restart_count: u32,
        oom_killed: bool,
        id: MessageId,
        now: UnixMillis,
    ) -> Vec<Alert> {
        let principal = Principal::from(agent);
        let config = self.config.crash_loop;
        let counted = self.count(
            Rule::CrashLoop,
            Some(&principal),
            config.window,
            Some(id),
            now,
        );
        let oom = if oom_killed {
            ", the last time for running out of memory"
        } else {
            ""
        };
        let (summary, evidence) = match counted {
            Some(evidence) => (
                format!(
                    "{agent} was restarted {} times within {}{oom}.",
                    evidence.len(),
                    Span(config.window.window_ms)
                ),
                evidence,
            ),
            None if restart_count >= config.restart_count => (
                format!("{agent} has been restarted {restart_count} times{oom}."),
                vec![id],
            ),
            None => return Vec::new(),
        };
        self.raise(Rule::CrashLoop, Some(&principal), summary, evidence, now)
    }

    fn digest(
        &mut self,
        agent: &AgentName,
        previous: &str,
        current: &str,
        id: MessageId,
        now: UnixMillis,
    ) -> Vec<Alert> {
        let principal = Principal::from(agent);
        let short = |d: &str| quote(d.strip_prefix("sha256:").unwrap_or(d), 12);
        let summary = format!(
            "{agent} now runs another image ({} became {}); nothing should change it while \
             it runs.",
            short(previous),
            short(current)
        );
        self.raise(
            Rule::ImageDigestChanged,
            Some(&principal),
            summary,
            vec![id],
            now,
        )
    }

    /// Records a hit for `rule` and `subject` and returns the window's evidence if the
    /// threshold is reached.
    fn count(
        &mut self,
        rule: Rule,
        subject: Option<&Principal>,
        window: Window,
        id: Option<MessageId>,
        now: UnixMillis,
    ) -> Option<Vec<MessageId>> {
        let k = key(rule, subject);
        if !self.state.windows.contains_key(&k) && self.state.windows.len() >= MAX_KEYS {
            self.forget_oldest_window(now);
        }
        let hits = self.state.windows.entry(k).or_default();
        hits.retain(|h| now.0 - h.at < window.window_ms && h.at <= now.0);
        hits.push_back(Hit { at: now.0, id });
        let keep = usize::try_from(window.threshold)
            .unwrap_or(MAX_EVIDENCE)
            .clamp(1, MAX_EVIDENCE);
        while hits.len() > keep {
            hits.pop_front();
        }
        if hits.len() < keep {
            return None;
        }
        Some(hits.iter().filter_map(|h| h.id).collect())
    }

    fn forget_oldest_window(&mut self, now: UnixMillis) {
        let oldest = self
            .state
            .windows
            .iter()
            .min_by_key(|(_, hits)| hits.back().map_or(i64::MIN, |h| h.at))
            .map(|(k, _)| k.clone());
        if let Some(k) = oldest {
            self.state.windows.remove(&k);
        }
        let cool_down = self.config.cool_down_ms;
        self.state.raised.retain(|_, at| now.0 - *at < cool_down);
    }

    /// Raises unless the same rule raised for the same subject within the cool-down.
    fn raise(
        &mut self,
        rule: Rule,
        subject: Option<&Principal>,
        summary: String,
        mut evidence: Vec<MessageId>,
        now: UnixMillis,
    ) -> Vec<Alert> {
        let k = key(rule, subject);
        if let Some(last) = self.state.raised.get(&k)
            && now.0 - *last < self.config.cool_down_ms
            && *last <= now.0
        {
            return Vec::new();
        }
        if !self.state.raised.contains_key(&k) && self.state.raised.len() >= MAX_KEYS {
            let oldest = self
                .state
                .raised
                .iter()
                .min_by_key(|(_, at)| **at)
                .map(|(k, _)| k.clone());
            if let Some(oldest) = oldest {
                self.state.raised.remove(&oldest);
            }
        }
        self.state.raised.insert(k, now.0);
        evidence.truncate(MAX_EVIDENCE);
        vec![Alert {
            rule: ErrorCode::from_static(rule.code()),
            severity: rule.severity(),
            subject: subject.cloned(),
            summary: one_line(&summary),
            evidence,
        }]
    }
}
