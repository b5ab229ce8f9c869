//! The orchestrator's configuration: one typed [`Config`], read once from a TOML file, strict
//! (unknown keys are errors) and checked as a whole before anything connects.
//!
//! ```toml
//! nats_url = "tls://127.0.0.1:4222"
//! home = "/home/me/.assistant"            # the provisioned layout (keys, certificates)
//! # state_db = "/home/me/.assistant/state/orchestrator.db"   (the default)
//! owners = ["terminal:me", "telegram:5551234"]
//! agents = ["hue"]
//! timezone = "Europe/Berlin"              # how times are shown (default UTC)
//!
//! [approval]
//! ttl_secs = 600                          # how long a plan may wait for a decision
//! require = "change"                      # "change": only world-changing plans ask; "all"
//!
//! [summary]                               # optional daily summary
//! cron = "0 0 21 * * *"                   # cron crate syntax, seconds first
//! timezone = "Europe/Berlin"
//! catch_up_window_secs = 21600
//! to = { user = "terminal:me", chat_id = "me" }
//!
//! # alerts_to = { user = "telegram:5551234", chat_id = "5551234" }   (default: the summary's
//! # chat, else the first owner's private chat)
//! # [llm] ...                             (see `plan::llm::LlmConfig`)
//! ```
//!
//! What it does not do: it reads no secrets (key files are referenced by path and read by
//! their users) and no environment variables.

use std::path::{Path, PathBuf};
use std::str::FromStr as _;

use chrono_tz::Tz;
use protocol::message::{ChatRef, PlatformRef};
use protocol::{AgentName, ChannelName, ChatUser};
use serde::Deserialize;
use thiserror::Error;

use crate::catalog::Catalog;
use crate::plan::llm::LlmConfig;

/// Largest configuration file read, in bytes.
pub const MAX_CONFIG_BYTES: u64 = 64 * 1024;
/// Default approval lifetime: ten minutes.
pub const DEFAULT_APPROVAL_TTL_SECS: u64 = 600;
/// Shortest approval lifetime accepted.
pub const MIN_APPROVAL_TTL_SECS: u64 = 10;
/// Longest approval lifetime accepted: one day.
pub const MAX_APPROVAL_TTL_SECS: u64 = 86_400;
/// Most owners.
pub const MAX_OWNERS: usize = 16;
/// Longest catch-up window for the daily summary: one day.
pub const MAX_CATCH_UP_WINDOW_SECS: u64 = 86_400;

/// Why the configuration was refused.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The file is over [`MAX_CONFIG_BYTES`].
    #[error("{path} is larger than {MAX_CONFIG_BYTES} bytes")]
    TooLarge {
        /// The file.
        path: PathBuf,
    },
    /// Not valid TOML, an unknown key, or a value of the wrong type.
    #[error("invalid configuration: {0}")]
    Parse(#[source] toml::de::Error),
    /// A value that parsed but makes no sense.
    #[error("invalid configuration: {field}: {reason}")]
    Invalid {
        /// The key.
        field: &'static str,
        /// Why.
        reason: String,
    },
}

impl ConfigError {
    /// Stable code.
    pub fn code(&self) -> &'static str {
        match self {
            ConfigError::Read { .. } => "config_unreadable",
            ConfigError::TooLarge { .. } => "config_too_large",
            ConfigError::Parse(_) => "config_malformed",
            ConfigError::Invalid { .. } => "config_invalid",
        }
    }

    fn invalid(field: &'static str, reason: impl Into<String>) -> Self {
        ConfigError::Invalid {
            field,
            reason: reason.into(),
        }
    }
}

/// Which plans ask the user before running.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Require {
    /// Plans with at least one world-changing step ask; read-only plans run at once.
    #[default]
    Change,
    /// Every plan asks.
    All,
}

/// The approval policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApprovalConfig {
    /// How long a proposed plan may wait for a decision, in seconds.
    #[serde(default = "default_ttl")]
    pub ttl_secs: u64,
    /// Which plans ask.
    #[serde(default)]
    pub require: Require,
}

fn default_ttl() -> u64 {
    DEFAULT_APPROVAL_TTL_SECS
}

impl Default for ApprovalConfig {
    fn default() -> Self {
        ApprovalConfig {
            ttl_secs: DEFAULT_APPROVAL_TTL_SECS,
            require: Require::Change,
        }
    }
}

/// A chat to send unprompted messages to (summaries, alerts), and the one user who may decide
/// on what is sent there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatTarget {
    /// The user (an owner).
    pub user: ChatUser,
    /// The chat, on the user's channel.
    pub chat: ChatRef,
}

impl ChatTarget {
    /// A chat of `user`'s channel with id `chat_id`.
    pub fn new(user: ChatUser, chat_id: PlatformRef) -> Result<ChatTarget, String> {
        let channel = ChannelName::new(user.channel()).map_err(|e| e.to_string())?;
        Ok(ChatTarget {
            user,
            chat: ChatRef { channel, chat_id },
        })
    }

    /// An owner's private chat: on every platform we support, a 1:1 chat's id is the user's id.
    pub fn private_chat_of(user: &ChatUser) -> Option<ChatTarget> {
        let chat_id = PlatformRef::new(user.platform_id()).ok()?;
        ChatTarget::new(user.clone(), chat_id).ok()
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ChatTargetFile {
    user: ChatUser,
    chat_id: PlatformRef,
}

impl ChatTargetFile {
    fn check(self, field: &'static str, owners: &[ChatUser]) -> Result<ChatTarget, ConfigError> {
        if !owners.contains(&self.user) {
            return Err(ConfigError::invalid(field, "the user is not an owner"));
        }
        ChatTarget::new(self.user, self.chat_id)
            .map_err(|reason| ConfigError::invalid(field, reason))
    }
}

/// The daily summary.
#[derive(Debug, Clone)]
pub struct SummaryConfig {
    /// When (cron crate syntax, seconds first, in `timezone`).
    pub schedule: cron::Schedule,
    /// The cron expression as written.
    pub cron: String,
    /// The time zone the schedule is in.
    pub timezone: Tz,
    /// After downtime, a missed run is made up once if it is at most this late.
    pub catch_up_window_secs: u64,
    /// Where it goes.
    pub to: ChatTarget,
}

/// The whole configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The NATS server (TLS is always required).
    pub nats_url: String,
    /// The provisioned layout's root (keys, certificates).
    pub home: PathBuf,
    /// The orchestrator's SQLite database.
    pub state_db: PathBuf,
    /// The users who may instruct and decide.
    pub owners: Vec<ChatUser>,
    /// The agents the orchestrator may use.
    pub agents: Vec<AgentName>,
    /// The time zone times are shown in.
    pub timezone: Tz,
    /// The approval policy.
    pub approval: ApprovalConfig,
    /// The LLM planner and composer, if any (the routine planner works without).
    pub llm: Option<LlmConfig>,
    /// The daily summary, if any.
    pub summary: Option<SummaryConfig>,
    /// Where alerts go, and who may decide on them.
    pub alerts_to: ChatTarget,
    /// The user's room names for the routines' room aliases (`@living`, `@kitchen`, ...).
    pub routine_rooms: std::collections::BTreeMap<String, String>,
}

/// `[routines]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RoutinesFile {
    #[serde(default)]
    rooms: std::collections::BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    nats_url: String,
    home: PathBuf,
    #[serde(default)]
    state_db: Option<PathBuf>,
    owners: Vec<ChatUser>,
    agents: Vec<AgentName>,
    #[serde(default)]
    timezone: Option<String>,
    #[serde(default)]
    approval: ApprovalConfig,
    #[serde(default)]
    llm: Option<LlmConfig>,
    #[serde(default)]
    summary: Option<SummaryFile>,
    #[serde(default)]
    alerts_to: Option<ChatTargetFile>,
    #[serde(default)]
    routines: RoutinesFile,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SummaryFile {
    cron: String,
    timezone: String,
    #[serde(default = "default_window")]
    catch_up_window_secs: u64,
    to: ChatTargetFile,
}

fn default_window() -> u64 {
    6 * 60 * 60
}

fn parse_tz(field: &'static str, s: &str) -> Result<Tz, ConfigError> {
    Tz::from_str(s).map_err(|e| ConfigError::invalid(field, format!("unknown time zone: {e}")))
}

impl Config {
    /// Reads and checks the file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        use std::io::Read as _;
        let read = |source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        };
        let file = std::fs::File::open(path).map_err(read)?;
        let mut text = String::new();
        file.take(MAX_CONFIG_BYTES + 1)
            .read_to_string(&mut text)
            .map_err(read)?;
        if text.len() as u64 > MAX_CONFIG_BYTES {
            return Err(ConfigError::TooLarge {
                path: path.to_path_buf(),
            });
        }
        Config::from_toml(&text)
    }

    /// Parses and checks a configuration's text.
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        let file: ConfigFile = toml::from_str(text).map_err(ConfigError::Parse)?;
        Config::check(file)
    }

    fn check(file: ConfigFile) -> Result<Config, ConfigError> {
        let url = file.nats_url.trim();
        if !(url.starts_with("tls://") || url.starts_with("nats://")) {
            return Err(ConfigError::invalid(
                "nats_url",
                "must be tls://host:port or nats://host:port (TLS is always required)",
            ));
        }
        if file.home.as_os_str().is_empty() {
            return Err(ConfigError::invalid("home", "is empty"));
        }
        if file.owners.is_empty() {
            return Err(ConfigError::invalid(
                "owners",
                "name at least one user (nobody could instruct the assistant)",
            ));
        }
        if file.owners.len() > MAX_OWNERS {
            return Err(ConfigError::invalid(
                "owners",
                format!("at most {MAX_OWNERS} owners"),
            ));
        }
        for (i, o) in file.owners.iter().enumerate() {
            if file.owners.iter().skip(i + 1).any(|p| p == o) {
                return Err(ConfigError::invalid(
                    "owners",
                    format!("{o} is listed twice"),
                ));
            }
        }
        let all = Catalog::all();
        for a in &file.agents {
            if all.agent(a).is_none() {
                return Err(ConfigError::invalid(
                    "agents",
                    format!("{a} is not in the agent catalog"),
                ));
            }
        }
        let approval = file.approval;
        if !(MIN_APPROVAL_TTL_SECS..=MAX_APPROVAL_TTL_SECS).contains(&approval.ttl_secs) {
            return Err(ConfigError::invalid(
                "approval.ttl_secs",
                format!("must be {MIN_APPROVAL_TTL_SECS} to {MAX_APPROVAL_TTL_SECS} seconds"),
            ));
        }
        let timezone = match &file.timezone {
            Some(t) => parse_tz("timezone", t)?,
            None => Tz::UTC,
        };
        let summary = match file.summary {
            None => None,
            Some(s) => {
                let schedule = cron::Schedule::from_str(&s.cron).map_err(|e| {
                    ConfigError::invalid("summary.cron", format!("not a cron expression: {e}"))
                })?;
                if s.catch_up_window_secs > MAX_CATCH_UP_WINDOW_SECS {
                    return Err(ConfigError::invalid(
                        "summary.catch_up_window_secs",
                        format!("at most {MAX_CATCH_UP_WINDOW_SECS} seconds"),
                    ));
                }
                Some(SummaryConfig {
                    schedule,
                    cron: s.cron,
                    timezone: parse_tz("summary.timezone", &s.timezone)?,
                    catch_up_window_secs: s.catch_up_window_secs,
                    to: s.to.check("summary.to", &file.owners)?,
                })
            }
        };
        let alerts_to = match file.alerts_to {
            Some(t) => t.check("alerts_to", &file.owners)?,
            None => match &summary {
                Some(s) => s.to.clone(),
                None => file
                    .owners
                    .first()
                    .and_then(ChatTarget::private_chat_of)
                    .ok_or_else(|| {
                        ConfigError::invalid("alerts_to", "cannot derive a chat from the owners")
                    })?,
            },
        };
        let state_db = file
            .state_db
            .unwrap_or_else(|| file.home.join("state").join("orchestrator.db"));
        Ok(Config {
            nats_url: url.to_owned(),
            home: file.home,
            state_db,
            owners: file.owners,
            agents: file.agents,
            timezone,
            approval,
            llm: file.llm,
            summary,
            alerts_to,
            routine_rooms: file.routines.rooms,
        })
    }

    /// Whether `user` may instruct and decide.
    pub fn is_owner(&self, user: &ChatUser) -> bool {
        self.owners.contains(user)
    }

    /// The catalog restricted to the configured agents.
    pub fn catalog(&self) -> Catalog {
        Catalog::enabled(&self.agents)
    }

    /// The provisioned layout.
    pub fn layout(&self) -> provision::Layout {
        provision::Layout::new(&self.home)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
        nats_url = "tls://127.0.0.1:4222"
        home = "/srv/assistant"
        owners = ["terminal:me"]
        agents = ["hue"]
    "#;

    fn check(text: &str) -> String {
        match Config::from_toml(text) {
            Ok(c) => format!(
                "ok: db={} ttl={} require={:?} tz={} alerts_to={}/{} summary={:?}",
                c.state_db.display(),
                c.approval.ttl_secs,
                c.approval.require,
                c.timezone,
                c.alerts_to.user,
                c.alerts_to.chat.chat_id.as_str(),
                c.summary.as_ref().map(|s| (
                    s.cron.as_str(),
                    s.timezone.name(),
                    s.catch_up_window_secs
                )),
            ),
            Err(e) => format!("{}: {e}", e.code()),
        }
    }

    #[test]
    fn configurations_are_checked_as_a_whole() {
        let cases = [
            MINIMAL.to_owned(),
            format!(
                "{MINIMAL}\ntimezone = \"Europe/Berlin\"\n[approval]\nttl_secs = 60\nrequire = \"all\""
            ),
            format!(
                "{MINIMAL}\n[summary]\ncron = \"0 0 21 * * *\"\ntimezone = \"Europe/Berlin\"\nto = {{ user = \"terminal:me\", chat_id = \"me\" }}"
            ),
            format!("{MINIMAL}\nsurprise = 1"),
            MINIMAL.replace("tls://", "http://"),
            MINIMAL.replace("[\"terminal:me\"]", "[]"),
            MINIMAL.replace("[\"terminal:me\"]", "[\"terminal:me\", \"terminal:me\"]"),
            MINIMAL.replace("[\"terminal:me\"]", "[\"no-colon\"]"),
            MINIMAL.replace("[\"hue\"]", "[\"weather\"]"),
            format!("{MINIMAL}\n[approval]\nttl_secs = 5"),
            format!("{MINIMAL}\n[approval]\nrequire = \"never\""),
            format!("{MINIMAL}\ntimezone = \"Mars/Olympus\""),
            format!(
                "{MINIMAL}\n[summary]\ncron = \"every evening\"\ntimezone = \"UTC\"\nto = {{ user = \"terminal:me\", chat_id = \"me\" }}"
            ),
            format!(
                "{MINIMAL}\n[summary]\ncron = \"0 0 21 * * *\"\ntimezone = \"UTC\"\nto = {{ user = \"terminal:you\", chat_id = \"me\" }}"
            ),
            format!("{MINIMAL}\nalerts_to = {{ user = \"terminal:you\", chat_id = \"x\" }}"),
        ];
        let out: Vec<String> = cases.iter().map(|c| check(c)).collect();
        expect_test::expect![[r#"
            ok: db=/srv/assistant/state/orchestrator.db ttl=600 require=Change tz=UTC alerts_to=terminal:me/me summary=None
            ok: db=/srv/assistant/state/orchestrator.db ttl=60 require=All tz=Europe/Berlin alerts_to=terminal:me/me summary=None
            ok: db=/srv/assistant/state/orchestrator.db ttl=600 require=Change tz=UTC alerts_to=terminal:me/me summary=Some(("0 0 21 * * *", "Europe/Berlin", 21600))
            config_malformed: invalid configuration: TOML parse error at line 7, column 1
              |
            7 | surprise = 1
              | ^^^^^^^^
            unknown field `surprise`, expected one of `nats_url`, `home`, `state_db`, `owners`, `agents`, `timezone`, `approval`, `llm`, `summary`, `alerts_to`, `routines`

            config_invalid: invalid configuration: nats_url: must be tls://host:port or nats://host:port (TLS is always required)
            config_invalid: invalid configuration: owners: name at least one user (nobody could instruct the assistant)
            config_invalid: invalid configuration: owners: terminal:me is listed twice
            config_malformed: invalid configuration: TOML parse error at line 4, column 18
              |
            4 |         owners = ["no-colon"]
              |                  ^^^^^^^^^^^^
            invalid chat user (8 bytes): must be <channel>:<id>

            config_invalid: invalid configuration: agents: weather is not in the agent catalog
            config_invalid: invalid configuration: approval.ttl_secs: must be 10 to 86400 seconds
            config_malformed: invalid configuration: TOML parse error at line 8, column 11
              |
            8 | require = "never"
              |           ^^^^^^^
            unknown variant `never`, expected `change` or `all`

            config_invalid: invalid configuration: timezone: unknown time zone: failed to parse timezone
            config_invalid: invalid configuration: summary.cron: not a cron expression: every evening
            ^
            The 'Seconds' field does not support using names. 'every' specified.
            config_invalid: invalid configuration: summary.to: the user is not an owner
            config_invalid: invalid configuration: alerts_to: the user is not an owner"#]]
        .assert_eq(&out.join("\n"));
    }
}
