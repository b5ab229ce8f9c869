//! The agent's settings (`settings` in its configuration file): every window, threshold and
//! list the rules use, with defaults, checked into a [`RulesConfig`] before anything connects.
//!
//! Every field may be left out; a window given must be given whole. Example with the defaults
//! (active hours are off unless configured):
//!
//! ```json
//! {
//!   "cool_down_secs": 900,
//!   "critical_token_codes": ["token_bad_signature", "token_unknown_key", "token_replayed",
//!                            "token_wrong_audience", "unexpected_sender"],
//!   "token_rejections": {"window_secs": 600, "threshold": 3},
//!   "nats_violations": {"window_secs": 300, "threshold": 1},
//!   "nats_violation_burst": {"window_secs": 60, "threshold": 10},
//!   "message_rate": {"floor_per_minute": 120, "factor": 5.0, "smoothing": 0.2},
//!   "active_hours": {"time_zone": "Europe/Zurich", "start": "07:00", "end": "23:00"},
//!   "step_failures": {"window_secs": 900, "threshold": 3},
//!   "egress_refusals": {"window_secs": 600, "threshold": 1},
//!   "crash_loop": {"restart_count": 3, "window_secs": 600, "threshold": 3},
//!   "invalid_events": {"window_secs": 600, "threshold": 1},
//!   "recent_alerts": 50,
//!   "batch": 64
//! }
//! ```

use serde::Deserialize;

use crate::rules::{
    ActiveHours, CrashLoopConfig, DEFAULT_CRITICAL_TOKEN_CODES, MAX_EVIDENCE, RateConfig,
    RulesConfig, Window,
};

/// Longest window or cool-down accepted, in seconds (one week).
pub const MAX_WINDOW_SECS: u32 = 7 * 24 * 3600;
/// Most alerts kept for `alerts.recent`.
pub const MAX_RECENT_ALERTS: u16 = 200;
/// Most audit events pulled in one batch.
pub const MAX_BATCH: u16 = 256;

/// A counting window as configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WindowSettings {
    /// Window length in seconds (1 to [`MAX_WINDOW_SECS`]).
    pub window_secs: u32,
    /// Events within the window that raise the alert (1 to 64).
    pub threshold: u32,
}

/// The message-rate rule as configured.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateSettings {
    /// Events per minute that never alert (at least 1).
    pub floor_per_minute: u32,
    /// How many times its baseline a principal may publish in a minute (at least 1).
    pub factor: f64,
    /// EWMA weight of the latest minute (over 0, at most 1).
    pub smoothing: f64,
}

/// Active hours as configured.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActiveHoursSettings {
    /// An IANA time zone name, e.g. `Europe/Zurich`.
    pub time_zone: String,
    /// `HH:MM`, the first minute inside.
    pub start: String,
    /// `HH:MM`, the first minute outside again (earlier than `start`: the hours wrap past
    /// midnight).
    pub end: String,
}

/// The crash-loop rule as configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CrashLoopSettings {
    /// A restart count at or over this raises at once (at least 1).
    pub restart_count: u32,
    /// Or `threshold` restarts within this many seconds.
    pub window_secs: u32,
    /// See `window_secs`.
    pub threshold: u32,
}

/// The agent's settings.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// Seconds before the same rule may raise again for the same subject.
    pub cool_down_secs: u32,
    /// `command_rejected` codes that raise a critical alert at once.
    pub critical_token_codes: Vec<String>,
    /// Other `token_*` rejections per agent.
    pub token_rejections: WindowSettings,
    /// NATS errors per principal (warning).
    pub nats_violations: WindowSettings,
    /// NATS errors per principal (critical).
    pub nats_violation_burst: WindowSettings,
    /// Audit events per principal per minute.
    pub message_rate: RateSettings,
    /// When change actions are expected; absent turns the rule off.
    pub active_hours: Option<ActiveHoursSettings>,
    /// Failed steps per agent.
    pub step_failures: WindowSettings,
    /// Egress refusals per agent.
    pub egress_refusals: WindowSettings,
    /// Restarts per agent.
    pub crash_loop: CrashLoopSettings,
    /// Invalid audit events per principal.
    pub invalid_events: WindowSettings,
    /// Alerts kept for `alerts.recent` (1 to 200).
    pub recent_alerts: u16,
    /// Audit events pulled in one batch (1 to 256); the state is saved and the batch
    /// acknowledged once per batch.
    pub batch: u16,
}

fn window(w: Window) -> WindowSettings {
    WindowSettings {
        window_secs: u32::try_from(w.window_ms / 1000).unwrap_or(MAX_WINDOW_SECS),
        threshold: w.threshold,
    }
}

impl Default for Settings {
    fn default() -> Self {
        let d = RulesConfig::default();
        Settings {
            cool_down_secs: u32::try_from(d.cool_down_ms / 1000).unwrap_or(900),
            critical_token_codes: DEFAULT_CRITICAL_TOKEN_CODES
                .iter()
                .map(|c| (*c).to_owned())
                .collect(),
            token_rejections: window(d.token_rejections),
            nats_violations: window(d.nats_violations),
            nats_violation_burst: window(d.nats_violation_burst),
            message_rate: RateSettings {
                floor_per_minute: d.rate.floor_per_minute,
                factor: d.rate.factor,
                smoothing: d.rate.alpha,
            },
            active_hours: None,
            step_failures: window(d.step_failures),
            egress_refusals: window(d.egress_refusals),
            crash_loop: CrashLoopSettings {
                restart_count: d.crash_loop.restart_count,
                window_secs: u32::try_from(d.crash_loop.window.window_ms / 1000).unwrap_or(600),
                threshold: d.crash_loop.window.threshold,
            },
            invalid_events: window(d.invalid_events),
            recent_alerts: 50,
            batch: 64,
        }
    }
}

fn check_window(name: &str, w: WindowSettings) -> Result<Window, String> {
    if !(1..=MAX_WINDOW_SECS).contains(&w.window_secs) {
        return Err(format!("{name}.window_secs must be 1 to {MAX_WINDOW_SECS}"));
    }
    if w.threshold == 0 || w.threshold as usize > MAX_EVIDENCE {
        return Err(format!("{name}.threshold must be 1 to {MAX_EVIDENCE}"));
    }
    Ok(Window {
        window_ms: i64::from(w.window_secs) * 1000,
        threshold: w.threshold,
    })
}

/// `HH:MM` (00:00 to 23:59) as minutes of the day.
pub fn parse_clock(text: &str) -> Option<u16> {
    let (h, m) = text.split_once(':')?;
    if h.len() != 2 || m.len() != 2 {
        return None;
    }
    let h: u16 = h.parse().ok()?;
    let m: u16 = m.parse().ok()?;
    (h < 24 && m < 60).then_some(h * 60 + m)
}

impl Settings {
    /// Checks every field and builds the rules' configuration.
    pub fn rules(&self) -> Result<RulesConfig, String> {
        if !(1..=MAX_WINDOW_SECS).contains(&self.cool_down_secs) {
            return Err(format!("cool_down_secs must be 1 to {MAX_WINDOW_SECS}"));
        }
        if self.critical_token_codes.len() > 32
            || self
                .critical_token_codes
                .iter()
                .any(|c| protocol::message::ErrorCode::new(c.as_str()).is_err())
        {
            return Err(
                "critical_token_codes must be at most 32 codes of [a-z0-9_] (1 to 48 bytes)"
                    .to_owned(),
            );
        }
        let rate = self.message_rate;
        if rate.floor_per_minute == 0 {
            return Err("message_rate.floor_per_minute must be at least 1".to_owned());
        }
        if !(rate.factor.is_finite() && rate.factor >= 1.0 && rate.factor <= 1000.0) {
            return Err("message_rate.factor must be 1 to 1000".to_owned());
        }
        if !(rate.smoothing.is_finite() && rate.smoothing > 0.0 && rate.smoothing <= 1.0) {
            return Err("message_rate.smoothing must be over 0 and at most 1".to_owned());
        }
        let active_hours = match &self.active_hours {
            None => None,
            Some(a) => {
                let zone: chrono_tz::Tz = a.time_zone.parse().map_err(|_unknown_zone| {
                    format!(
                        "active_hours.time_zone {:?} is not an IANA time zone",
                        a.time_zone
                    )
                })?;
                let start = parse_clock(&a.start)
                    .ok_or_else(|| "active_hours.start must be HH:MM".to_owned())?;
                let end = parse_clock(&a.end)
                    .ok_or_else(|| "active_hours.end must be HH:MM".to_owned())?;
                if start == end {
                    return Err("active_hours.start and end must differ".to_owned());
                }
                Some(ActiveHours {
                    zone,
                    start_minute: start,
                    end_minute: end,
                })
            }
        };
        if self.crash_loop.restart_count == 0 {
            return Err("crash_loop.restart_count must be at least 1".to_owned());
        }
        if !(1..=MAX_RECENT_ALERTS).contains(&self.recent_alerts) {
            return Err(format!("recent_alerts must be 1 to {MAX_RECENT_ALERTS}"));
        }
        if !(1..=MAX_BATCH).contains(&self.batch) {
            return Err(format!("batch must be 1 to {MAX_BATCH}"));
        }
        Ok(RulesConfig {
            cool_down_ms: i64::from(self.cool_down_secs) * 1000,
            critical_token_codes: self.critical_token_codes.clone(),
            token_rejections: check_window("token_rejections", self.token_rejections)?,
            nats_violations: check_window("nats_violations", self.nats_violations)?,
            nats_violation_burst: check_window("nats_violation_burst", self.nats_violation_burst)?,
            rate: RateConfig {
                floor_per_minute: rate.floor_per_minute,
                factor: rate.factor,
                alpha: rate.smoothing,
            },
            active_hours,
            step_failures: check_window("step_failures", self.step_failures)?,
            egress_refusals: check_window("egress_refusals", self.egress_refusals)?,
            crash_loop: CrashLoopConfig {
                restart_count: self.crash_loop.restart_count,
                window: check_window(
                    "crash_loop",
                    WindowSettings {
                        window_secs: self.crash_loop.window_secs,
                        threshold: self.crash_loop.threshold,
                    },
                )?,
            },
            invalid_events: check_window("invalid_events", self.invalid_events)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn check(value: serde_json::Value) -> String {
        match serde_json::from_value::<Settings>(value) {
            Err(e) => {
                let text = e.to_string();
                format!(
                    "parse: {}",
                    text.split(", expected").next().unwrap_or(&text)
                )
            }
            Ok(s) => match s.rules() {
                Ok(_) => "ok".to_owned(),
                Err(e) => e,
            },
        }
    }

    #[test]
    fn empty_settings_are_the_defaults() {
        let s: Settings = serde_json::from_value(json!({})).unwrap();
        assert_eq!(s, Settings::default());
        assert_eq!(s.rules().unwrap(), RulesConfig::default());
    }

    #[test]
    fn settings_are_checked() {
        let cases = [
            (json!({"cool_down_secs": 60}), "ok"),
            (
                json!({"cool_down_secs": 0}),
                "cool_down_secs must be 1 to 604800",
            ),
            (
                json!({"token_rejections": {"window_secs": 0, "threshold": 3}}),
                "token_rejections.window_secs must be 1 to 604800",
            ),
            (
                json!({"nats_violations": {"window_secs": 60, "threshold": 65}}),
                "nats_violations.threshold must be 1 to 64",
            ),
            (
                json!({"step_failures": {"window_secs": 60, "threshold": 0}}),
                "step_failures.threshold must be 1 to 64",
            ),
            (
                json!({"token_rejections": {"window_secs": 60}}),
                "parse: missing field `threshold`",
            ),
            (json!({"surprise": 1}), "parse: unknown field `surprise`"),
            (
                json!({"message_rate": {"floor_per_minute": 0, "factor": 5.0, "smoothing": 0.2}}),
                "message_rate.floor_per_minute must be at least 1",
            ),
            (
                json!({"message_rate": {"floor_per_minute": 10, "factor": 0.5, "smoothing": 0.2}}),
                "message_rate.factor must be 1 to 1000",
            ),
            (
                json!({"message_rate": {"floor_per_minute": 10, "factor": 2.0, "smoothing": 0.0}}),
                "message_rate.smoothing must be over 0 and at most 1",
            ),
            (
                json!({"active_hours": {"time_zone": "Europe/Zurich", "start": "07:00", "end": "23:30"}}),
                "ok",
            ),
            (
                json!({"active_hours": {"time_zone": "Mars/Olympus", "start": "07:00", "end": "23:00"}}),
                "active_hours.time_zone \"Mars/Olympus\" is not an IANA time zone",
            ),
            (
                json!({"active_hours": {"time_zone": "UTC", "start": "7:00", "end": "23:00"}}),
                "active_hours.start must be HH:MM",
            ),
            (
                json!({"active_hours": {"time_zone": "UTC", "start": "07:00", "end": "24:00"}}),
                "active_hours.end must be HH:MM",
            ),
            (
                json!({"active_hours": {"time_zone": "UTC", "start": "07:00", "end": "07:00"}}),
                "active_hours.start and end must differ",
            ),
            (
                json!({"critical_token_codes": ["Token Bad"]}),
                "critical_token_codes must be at most 32 codes of [a-z0-9_] (1 to 48 bytes)",
            ),
            (
                json!({"crash_loop": {"restart_count": 0, "window_secs": 60, "threshold": 3}}),
                "crash_loop.restart_count must be at least 1",
            ),
            (
                json!({"recent_alerts": 0}),
                "recent_alerts must be 1 to 200",
            ),
            (json!({"batch": 1000}), "batch must be 1 to 256"),
        ];
        for (value, expected) in cases {
            assert_eq!(check(value.clone()), expected, "{value}");
        }
    }

    #[test]
    fn clocks_parse_strictly() {
        assert_eq!(parse_clock("00:00"), Some(0));
        assert_eq!(parse_clock("23:59"), Some(1439));
        assert_eq!(parse_clock("07:30"), Some(450));
        for bad in [
            "24:00", "07:60", "7:30", "07:3", "0730", "", "aa:bb", "-1:00",
        ] {
            assert_eq!(parse_clock(bad), None, "{bad}");
        }
    }
}
