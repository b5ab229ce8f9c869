//! The gateway's configuration: a TOML file, loaded once.
//!
//! ```toml
//! nats_url = "tls://127.0.0.1:4222"
//! home = "/home/me/.assistant"                 # the provisioned layout (keys, certificates)
//! state_db = "/home/me/.assistant/gateway.sqlite"
//!
//! [telegram]
//! token_file = "/home/me/.assistant/secrets/telegram-token"   # the token itself is never here
//! # token_file = { keychain = "assistant", account = "telegram-bot-token" }  # or the Keychain
//! allowed_users = [123456789]                                 # Telegram user ids
//! # api_url = "https://api.telegram.org/"                    # tests point this at a double
//! # poll_timeout_secs = 10
//! # Webhook mode instead of long polling: Telegram POSTs to `public_url` (HTTPS, your reverse
//! # proxy or tunnel), which forwards to `listen`; a fresh secret is registered at each start.
//! # webhook = { public_url = "https://bot.example.com/tg-hook", listen = "127.0.0.1:8081" }
//!
//! [limits]                                     # per allowlisted user (all optional)
//! # max_text_chars = 4096
//! # burst = 10                                 # messages or presses at once
//! # refill_secs = 3                            # then one more every this many seconds
//!
//! [imessage]                                   # macOS only (feature `imessage`)
//! allowed_handles = ["+447700900123", "me@icloud.com"]      # phone numbers / Apple ID emails
//! # chat_db = "/Users/me/Library/Messages/chat.db"           # the default
//! # osascript = "/usr/bin/osascript"                        # the default on macOS
//! # poll_interval_ms = 2000
//!
//! [slack]                                      # feature `slack`
//! bot_token_file = "/home/me/.assistant/secrets/slack-bot-token"   # xoxb-…
//! app_token_file = "/home/me/.assistant/secrets/slack-app-token"   # xapp-… (Socket Mode)
//! allowed_users = ["U0123ABCD"]                # Slack member ids
//! # team_id = "T0123ABCD"                      # accept only this workspace
//! # api_url = "https://slack.com/api"         # tests point this at a double
//! # events_listen = "127.0.0.1:3000"          # Events API over HTTP instead of Socket Mode
//! # signing_secret_file = "/home/me/.assistant/secrets/slack-signing-secret"  # with events_listen
//!
//! [web]                                        # the local web chat (feature `web`)
//! listen = "127.0.0.1:8765"                    # loopback only; anything else is refused
//! token_file = "/home/me/.assistant/secrets/web-token"     # created (0600) if missing
//! user = "owner"                               # the web user's id: `web:owner` to the orchestrator
//! ```
//!
//! What it does not do: no environment overrides yet; tokens are read by
//! [`TelegramConfig::read_token`] and [`SlackConfig::read_secret`] and never kept in the config
//! or printed.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::secret::SecretSource;

/// Why the configuration is unusable.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// Which file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid.
    #[error("invalid configuration {path}: {source}")]
    Parse {
        /// Which file.
        path: PathBuf,
        /// Why.
        #[source]
        source: toml::de::Error,
    },
    /// A value is out of range.
    #[error("invalid configuration: {0}")]
    Invalid(&'static str),
    /// A secret (token file or Keychain item) could not be read.
    #[error(transparent)]
    Secret(#[from] crate::secret::SecretError),
}

impl ConfigError {
    /// A stable code.
    pub fn code(&self) -> &'static str {
        match self {
            ConfigError::Read { .. } => "config_unreadable",
            ConfigError::Parse { .. } | ConfigError::Invalid(_) => "config_invalid",
            ConfigError::Secret(e) => e.code(),
        }
    }
}

/// The whole configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The NATS server.
    pub nats_url: String,
    /// The provisioned layout's root.
    pub home: PathBuf,
    /// The gateway's state database.
    pub state_db: PathBuf,
    /// The Telegram channel, if enabled.
    pub telegram: Option<TelegramConfig>,
    /// The iMessage channel, if enabled.
    pub imessage: Option<IMessageConfig>,
    /// The Slack channel, if enabled.
    pub slack: Option<SlackConfig>,
    /// The web chat, if enabled.
    pub web: Option<WebConfig>,
    /// Per-user input limits (defaults when absent).
    #[serde(default)]
    pub limits: LimitsConfig,
}

/// Per-user input limits.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// Longest accepted text, in characters (1 to 16384, default 4096).
    pub max_text_chars: Option<usize>,
    /// Messages or presses a user may send at once (1 to 1000, default 10).
    pub burst: Option<u32>,
    /// Seconds until one more is allowed (1 to 3600, default 3).
    pub refill_secs: Option<u64>,
}

impl LimitsConfig {
    /// The limits, defaults filled in.
    pub fn limits(&self) -> crate::limits::Limits {
        let d = crate::limits::Limits::default();
        crate::limits::Limits {
            max_text_chars: self.max_text_chars.unwrap_or(d.max_text_chars),
            burst: self.burst.unwrap_or(d.burst),
            refill_every: self
                .refill_secs
                .map_or(d.refill_every, std::time::Duration::from_secs),
        }
    }
}

/// Telegram webhook mode.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelegramWebhookConfig {
    /// The public HTTPS URL Telegram POSTs to; its path is the path served.
    pub public_url: String,
    /// Where the gateway listens (behind the proxy).
    pub listen: std::net::SocketAddr,
}

/// The web chat: a token-protected page on a loopback address.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebConfig {
    /// Where to listen; must be a loopback address (`127.0.0.1:8765`, `[::1]:8765`).
    pub listen: std::net::SocketAddr,
    /// The file holding the page's access token (created, mode 0600, if missing).
    pub token_file: PathBuf,
    /// The web user's id (1 to 64 of `A-Za-z0-9_-`; default `owner`). The orchestrator knows
    /// this user as `web:<user>`.
    #[serde(default = "default_web_user")]
    pub user: String,
}

fn default_web_user() -> String {
    "owner".to_owned()
}

/// The Slack channel.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlackConfig {
    /// A file holding the bot token (`xoxb-…`).
    pub bot_token_file: SecretSource,
    /// A file holding the app-level token (`xapp-…`, scope `connections:write`), for Socket
    /// Mode. Required unless `events_listen` is set.
    pub app_token_file: Option<SecretSource>,
    /// Slack member ids (`U…` or `W…`) allowed to talk to the assistant.
    pub allowed_users: Vec<String>,
    /// The only workspace accepted (`T…`), if set.
    pub team_id: Option<String>,
    /// The Web API base URL (default `https://slack.com/api`).
    pub api_url: Option<String>,
    /// Where to serve the Events API / interactivity endpoint instead of using Socket Mode.
    pub events_listen: Option<std::net::SocketAddr>,
    /// A file holding the signing secret. Required with `events_listen`.
    pub signing_secret_file: Option<SecretSource>,
}

/// Whether `s` looks like a Slack id with this first letter (`U`, `W`, `T`): upper-case
/// letters and digits only.
fn slack_id(s: &str, first: &[char]) -> bool {
    s.len() >= 3
        && s.len() <= 32
        && s.starts_with(first)
        && s.chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit())
}

impl SlackConfig {
    fn check(&self) -> Result<(), &'static str> {
        if self.allowed_users.is_empty() {
            return Err("slack.allowed_users is empty: nobody could talk to the assistant");
        }
        if !self.allowed_users.iter().all(|u| slack_id(u, &['U', 'W'])) {
            return Err("slack.allowed_users must hold Slack member ids such as \"U0123ABCD\"");
        }
        if self
            .team_id
            .as_deref()
            .is_some_and(|t| !slack_id(t, &['T', 'E']))
        {
            return Err("slack.team_id must be a Slack workspace id such as \"T0123ABCD\"");
        }
        if self
            .api_url
            .as_deref()
            .is_some_and(|u| !(u.starts_with("https://") || u.starts_with("http://")))
        {
            return Err("slack.api_url must be an http(s) URL");
        }
        match (
            &self.events_listen,
            &self.signing_secret_file,
            &self.app_token_file,
        ) {
            (Some(_), None, _) => Err("slack.events_listen needs slack.signing_secret_file"),
            (None, _, None) => {
                Err("slack.app_token_file is required for Socket Mode (or set slack.events_listen)")
            }
            _ => Ok(()),
        }
    }

    /// Reads one secret (a token or the signing secret, from a file or the Keychain): one
    /// line, no spaces, and for tokens the expected prefix (`xoxb-`, `xapp-`; empty: any). The
    /// error names the file or item, never its content.
    pub fn read_secret(source: &SecretSource, prefix: &str) -> Result<String, ConfigError> {
        let secret = source.read()?;
        if !secret.starts_with(prefix) {
            return Err(ConfigError::Invalid(
                "a slack token file holds the wrong kind of token (bot tokens start with xoxb-, app-level tokens with xapp-)",
            ));
        }
        Ok(secret)
    }
}

/// The iMessage channel (macOS).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IMessageConfig {
    /// Handles (phone numbers with country code, or Apple ID emails) allowed to talk to the
    /// assistant. Compared after normalisation (digits only for numbers, lowercase emails).
    pub allowed_handles: Vec<String>,
    /// The Messages database (default `$HOME/Library/Messages/chat.db`).
    pub chat_db: Option<PathBuf>,
    /// The `osascript` program (default `/usr/bin/osascript` on macOS; required elsewhere).
    pub osascript: Option<PathBuf>,
    /// How long to wait between reads of `chat.db` that found nothing (100 to 60000 ms,
    /// default 2000).
    pub poll_interval_ms: Option<u64>,
}

/// The Telegram channel.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelegramConfig {
    /// The bot token: a file (one line, mode 0600) or a Keychain item.
    pub token_file: SecretSource,
    /// Telegram user ids allowed to talk to the assistant.
    pub allowed_users: Vec<u64>,
    /// The Bot API base URL (default: the real one).
    pub api_url: Option<String>,
    /// Long-poll timeout in seconds (1 to 12, default 10).
    pub poll_timeout_secs: Option<u64>,
    /// Webhook mode instead of long polling.
    pub webhook: Option<TelegramWebhookConfig>,
}

impl Config {
    /// Reads and checks `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text).map_err(|e| match e {
            ParseFailure::Toml(source) => ConfigError::Parse {
                path: path.to_owned(),
                source,
            },
            ParseFailure::Invalid(m) => ConfigError::Invalid(m),
        })
    }

    fn parse(text: &str) -> Result<Config, ParseFailure> {
        let c: Config = toml::from_str(text).map_err(ParseFailure::Toml)?;
        if let Some(t) = &c.telegram {
            if t.allowed_users.is_empty() {
                return Err(ParseFailure::Invalid(
                    "telegram.allowed_users is empty: nobody could talk to the assistant",
                ));
            }
            if t.poll_timeout_secs.is_some_and(|s| s == 0 || s > 12) {
                return Err(ParseFailure::Invalid(
                    "telegram.poll_timeout_secs must be 1 to 12",
                ));
            }
            if let Some(w) = &t.webhook
                && !w
                    .public_url
                    .parse::<url::Url>()
                    .is_ok_and(|u| u.scheme() == "https" && u.host_str().is_some())
            {
                return Err(ParseFailure::Invalid(
                    "telegram.webhook.public_url must be an https URL (Telegram requires it)",
                ));
            }
        }
        let l = &c.limits;
        if l.max_text_chars
            .is_some_and(|n| n == 0 || n > protocol::message::MAX_CHAT_TEXT)
            || l.burst.is_some_and(|n| n == 0 || n > 1000)
            || l.refill_secs.is_some_and(|n| n == 0 || n > 3600)
        {
            return Err(ParseFailure::Invalid(
                "limits: max_text_chars 1-16384, burst 1-1000, refill_secs 1-3600",
            ));
        }
        if let Some(i) = &c.imessage {
            if i.allowed_handles.is_empty() {
                return Err(ParseFailure::Invalid(
                    "imessage.allowed_handles is empty: nobody could talk to the assistant",
                ));
            }
            if i.poll_interval_ms
                .is_some_and(|ms| !(100..=60_000).contains(&ms))
            {
                return Err(ParseFailure::Invalid(
                    "imessage.poll_interval_ms must be 100 to 60000",
                ));
            }
        }
        if let Some(w) = &c.web {
            if !w.listen.ip().is_loopback() {
                return Err(ParseFailure::Invalid(
                    "web.listen must be a loopback address (127.0.0.1 or [::1])",
                ));
            }
            let user_ok = (1..=64).contains(&w.user.len())
                && w.user
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
            if !user_ok {
                return Err(ParseFailure::Invalid(
                    "web.user must be 1 to 64 of A-Za-z0-9_-",
                ));
            }
        }
        if let Some(s) = &c.slack {
            s.check().map_err(ParseFailure::Invalid)?;
        }
        Ok(c)
    }
}

enum ParseFailure {
    Toml(toml::de::Error),
    Invalid(&'static str),
}

impl TelegramConfig {
    /// Reads the token (file or Keychain). The error names the file or item, never the token.
    pub fn read_token(&self) -> Result<String, ConfigError> {
        Ok(self.token_file.read()?)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn parses_and_refuses() {
        let ok = r#"
            nats_url = "nats://127.0.0.1:4222"
            home = "/h"
            state_db = "/h/gw.sqlite"
            [telegram]
            token_file = "/h/tg"
            allowed_users = [42]
        "#;
        let c = Config::parse(ok).ok().unwrap();
        assert_eq!(c.telegram.unwrap().allowed_users, vec![42]);
        let empty = ok.replace("[42]", "[]");
        assert!(matches!(
            Config::parse(&empty),
            Err(ParseFailure::Invalid(_))
        ));
        let unknown = format!("{ok}\ntoken = \"x\"");
        assert!(matches!(
            Config::parse(&unknown),
            Err(ParseFailure::Toml(_))
        ));
        let im = format!(
            "{ok}\n[imessage]\nallowed_handles = [\"+44 7700 900123\"]\npoll_interval_ms = 500\n"
        );
        let c = Config::parse(&im).ok().unwrap();
        assert_eq!(c.imessage.unwrap().allowed_handles, vec!["+44 7700 900123"]);
        assert!(matches!(
            Config::parse(&im.replace("[\"+44 7700 900123\"]", "[]")),
            Err(ParseFailure::Invalid(_))
        ));
        assert!(matches!(
            Config::parse(&im.replace("500", "5")),
            Err(ParseFailure::Invalid(_))
        ));
        // Webhook mode needs an https URL; limits have bounds.
        let hook = format!(
            "{ok}webhook = {{ public_url = \"https://bot.example.com/tg\", listen = \"127.0.0.1:8081\" }}\n"
        );
        let c = Config::parse(&hook).ok().unwrap();
        let w = c.telegram.unwrap().webhook.unwrap();
        assert_eq!(w.listen.port(), 8081);
        assert!(matches!(
            Config::parse(&hook.replace("https://", "http://")),
            Err(ParseFailure::Invalid(_))
        ));
        let limits = format!("{ok}\n[limits]\nburst = 5\nrefill_secs = 60\n");
        let l = Config::parse(&limits).ok().unwrap().limits.limits();
        assert_eq!(
            (l.burst, l.refill_every.as_secs(), l.max_text_chars),
            (5, 60, 4096)
        );
        assert!(matches!(
            Config::parse(&limits.replace("burst = 5", "burst = 0")),
            Err(ParseFailure::Invalid(_))
        ));
    }

    #[test]
    fn web_is_loopback_only() {
        let base = r#"
            nats_url = "nats://127.0.0.1:4222"
            home = "/h"
            state_db = "/h/gw.sqlite"
            [web]
            token_file = "/h/web-token"
        "#;
        let with = |extra: &str| Config::parse(&format!("{base}{extra}\n"));
        let c = with("listen = \"127.0.0.1:8765\"").ok().unwrap();
        let w = c.web.unwrap();
        assert_eq!(w.user, "owner");
        assert_eq!(w.listen.port(), 8765);
        assert!(with("listen = \"[::1]:8765\"\nuser = \"me_2\"").is_ok());
        for refused in [
            "listen = \"0.0.0.0:8765\"",
            "listen = \"192.168.1.2:8765\"",
            "listen = \"[::]:8765\"",
            "listen = \"127.0.0.1:8765\"\nuser = \"\"",
            "listen = \"127.0.0.1:8765\"\nuser = \"a b\"",
            "listen = \"127.0.0.1:8765\"\nuser = \"a:b\"",
        ] {
            assert!(
                matches!(with(refused), Err(ParseFailure::Invalid(_))),
                "{refused}"
            );
        }
        // Not an address, or an unknown key.
        assert!(matches!(
            with("listen = \"localhost:8765\""),
            Err(ParseFailure::Toml(_))
        ));
        assert!(matches!(
            with("listen = \"127.0.0.1:8765\"\ntoken = \"x\""),
            Err(ParseFailure::Toml(_))
        ));
    }

    fn slack(block: &str) -> Result<Config, String> {
        let text = format!(
            "nats_url = \"nats://127.0.0.1:4222\"\nhome = \"/h\"\nstate_db = \"/h/gw.sqlite\"\n[slack]\n{block}"
        );
        Config::parse(&text).map_err(|e| match e {
            ParseFailure::Toml(e) => format!("toml: {}", e.message()),
            ParseFailure::Invalid(m) => m.to_owned(),
        })
    }

    #[test]
    fn slack_is_checked() {
        let base = "bot_token_file = \"/h/b\"\napp_token_file = \"/h/a\"\nallowed_users = [\"U0123ABCD\"]\n";
        let c = slack(base).unwrap();
        assert_eq!(c.slack.unwrap().allowed_users, vec!["U0123ABCD"]);
        let cases = [
            (
                base.replace("[\"U0123ABCD\"]", "[]"),
                "slack.allowed_users is empty: nobody could talk to the assistant",
            ),
            (
                base.replace("U0123ABCD", "alice"),
                "slack.allowed_users must hold Slack member ids such as \"U0123ABCD\"",
            ),
            (
                format!("{base}team_id = \"acme\"\n"),
                "slack.team_id must be a Slack workspace id such as \"T0123ABCD\"",
            ),
            (
                format!("{base}api_url = \"ftp://x\"\n"),
                "slack.api_url must be an http(s) URL",
            ),
            (
                base.replace("app_token_file = \"/h/a\"\n", ""),
                "slack.app_token_file is required for Socket Mode (or set slack.events_listen)",
            ),
            (
                format!("{base}events_listen = \"127.0.0.1:3000\"\n"),
                "slack.events_listen needs slack.signing_secret_file",
            ),
            (
                format!("{base}token = \"xoxb-1\"\n"),
                "toml: unknown field `token`, expected one of `bot_token_file`, `app_token_file`, `allowed_users`, `team_id`, `api_url`, `events_listen`, `signing_secret_file`",
            ),
        ];
        for (block, expected) in cases {
            assert_eq!(slack(&block).err().as_deref(), Some(expected), "{block}");
        }
        let events = format!(
            "{}events_listen = \"127.0.0.1:3000\"\nsigning_secret_file = \"/h/s\"\nteam_id = \"T0123\"\n",
            base.replace("app_token_file = \"/h/a\"\n", "")
        );
        assert!(slack(&events).is_ok());
    }

    #[test]
    fn slack_secrets_are_read_without_printing_them() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bot");
        let write = |text: &str| {
            std::fs::write(&path, text).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        };
        let source = SecretSource::File(path.clone());
        write("xoxb-1-secret\n");
        assert_eq!(
            SlackConfig::read_secret(&source, "xoxb-").unwrap(),
            "xoxb-1-secret"
        );
        let wrong = SlackConfig::read_secret(&source, "xapp-")
            .unwrap_err()
            .to_string();
        assert!(!wrong.contains("xoxb-1"), "{wrong}");
        write("xoxb-1 two\n");
        let two = SlackConfig::read_secret(&source, "xoxb-")
            .unwrap_err()
            .to_string();
        assert!(!two.contains("two"), "{two}");
        let missing = SecretSource::File(dir.path().join("missing"));
        assert!(SlackConfig::read_secret(&missing, "").is_err());
    }
}
