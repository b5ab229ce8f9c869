//! The bot's configuration file, `<home>/config.toml`.
//!
//! `[bot]` says how to run (sandbox backend, NATS port); `[hue]` connects a real Hue bridge;
//! `[anomaly]` tunes the audit-anomaly agent; `[orchestrator]` is the orchestrator's own
//! configuration (owners, approval policy, LLM, daily summary, ...), checked by the orchestrator
//! itself, with `nats_url`, `home` and `agents` filled in by `bot up`.

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Which sandbox backend runs the agents.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub(crate) enum BackendChoice {
    /// Docker if an engine answers, else host processes.
    #[default]
    Auto,
    /// Docker only (fail without an engine).
    Docker,
    /// Host processes (weaker isolation).
    Process,
}

/// `[bot]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct BotSection {
    /// The sandbox backend.
    #[serde(default)]
    pub(crate) backend: BackendChoice,
    /// NATS listens on 127.0.0.1 at this port.
    #[serde(default = "default_port")]
    pub(crate) nats_port: u16,
    /// Names the Docker objects of this installation.
    #[serde(default = "default_instance")]
    pub(crate) instance: String,
}

impl Default for BotSection {
    fn default() -> Self {
        BotSection {
            backend: BackendChoice::Auto,
            nats_port: default_port(),
            instance: default_instance(),
        }
    }
}

fn default_port() -> u16 {
    4222
}

fn default_instance() -> String {
    "assistant".to_owned()
}

/// `[hue]`: a real bridge.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct HueSection {
    /// `host:port` of the bridge (an IP literal on your LAN, e.g. `192.168.1.20:443`).
    pub(crate) bridge: String,
    /// A file holding the application key (mode 0600).
    pub(crate) application_key_file: PathBuf,
    /// SHA-256 of the bridge's certificate, 64 hex digits.
    pub(crate) bridge_cert_sha256: String,
    /// Per-request timeout, milliseconds.
    #[serde(default = "default_hue_timeout")]
    pub(crate) request_timeout_ms: u32,
}

fn default_hue_timeout() -> u32 {
    4000
}

/// The whole file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct BotConfig {
    /// How to run.
    #[serde(default)]
    pub(crate) bot: BotSection,
    /// A real Hue bridge, if any.
    #[serde(default)]
    pub(crate) hue: Option<HueSection>,
    /// The audit-anomaly agent's settings (its own strict format; empty: defaults).
    #[serde(default)]
    pub(crate) anomaly: Option<toml::Table>,
    /// The orchestrator's configuration, without `nats_url`, `home` and `agents`.
    pub(crate) orchestrator: toml::Table,
}

impl BotConfig {
    /// Reads the file.
    pub(crate) fn load(path: &Path) -> anyhow::Result<BotConfig> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("{}: {e} (run `bot init`)", path.display()))?;
        let config: BotConfig =
            toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        for key in ["nats_url", "home", "agents"] {
            if config.orchestrator.contains_key(key) {
                anyhow::bail!(
                    "{}: [orchestrator] {key} is set by `bot up`; remove it",
                    path.display()
                );
            }
        }
        Ok(config)
    }

    /// Whether `[orchestrator.routines] rooms` names the user's rooms.
    pub(crate) fn has_routine_rooms(&self) -> bool {
        self.orchestrator
            .get("routines")
            .and_then(|r| r.get("rooms"))
            .and_then(toml::Value::as_table)
            .is_some_and(|t| !t.is_empty())
    }

    /// The orchestrator's configuration text for this run.
    pub(crate) fn orchestrator_toml(
        &self,
        nats_url: &str,
        home: &Path,
        agents: &[String],
    ) -> anyhow::Result<String> {
        let mut table = self.orchestrator.clone();
        table.insert(
            "nats_url".to_owned(),
            toml::Value::String(nats_url.to_owned()),
        );
        table.insert(
            "home".to_owned(),
            toml::Value::String(home.display().to_string()),
        );
        table.insert(
            "agents".to_owned(),
            toml::Value::Array(agents.iter().cloned().map(toml::Value::String).collect()),
        );
        Ok(toml::to_string(&table)?)
    }
}

/// The file `bot init` writes when there is none: the terminal user as the only owner, the
/// offline routines, no LLM, no real bridge (`bot up --simulate-hue` runs a simulated one).
pub(crate) fn default_file(user: &str) -> String {
    format!(
        r#"# bot configuration: see README.md ("Configuration").

[bot]
backend = "auto"      # auto: Docker if an engine answers, else host processes | docker | process
nats_port = 4222      # NATS listens on 127.0.0.1 only

[orchestrator]
# Only these chat users may instruct the assistant and approve its plans.
owners = ["terminal:{user}"]
timezone = "UTC"

[orchestrator.approval]
ttl_secs = 600        # a plan not approved within 10 minutes expires
require = "change"    # "change": actions that change something need approval; "all": every action

# Your Hue rooms' names for the routines' room roles (defaults below). With --simulate-hue and
# none of these set, the simulated bridge's own rooms are used.
# [orchestrator.routines.rooms]
# living = "Living room"
# kitchen = "Kitchen"
# bedroom = "Bedroom"

# A real Philips Hue bridge (see README.md, "Connect a Hue bridge").
# [hue]
# bridge = "192.168.1.20:443"
# application_key_file = "/home/you/.config/hue-application-key"
# bridge_cert_sha256 = "<64 hex digits>"

# An OpenAI-compatible model for requests no routine covers (see README.md, "Connect an LLM").
# [orchestrator.llm]
# base_url = "http://127.0.0.1:11434/v1"
# model = "llama3.1"
# key_file = "/home/you/.config/llm-key"

# A daily summary.
# [orchestrator.summary]
# cron = "0 0 8 * * *"          # seconds first: 08:00:00 every day
# timezone = "Europe/London"
# to = {{ user = "terminal:{user}", chat_id = "{user}" }}
"#
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_file_parses_and_fills_in_what_bot_up_owns() {
        let text = default_file("me");
        let config: BotConfig = toml::from_str(&text).unwrap();
        assert_eq!(config.bot.backend, BackendChoice::Auto);
        assert_eq!(config.bot.nats_port, 4222);
        assert!(config.hue.is_none());
        let orchestrator = config
            .orchestrator_toml(
                "nats://127.0.0.1:4222",
                Path::new("/h"),
                &["hue".to_owned()],
            )
            .unwrap();
        assert!(orchestrator.contains("nats_url = \"nats://127.0.0.1:4222\""));
        assert!(orchestrator.contains("owners = [\"terminal:me\"]"));
        // What bot up hands the orchestrator passes the orchestrator's own strict checks.
        let checked = orchestrator::config::Config::from_toml(&orchestrator).unwrap();
        assert_eq!(checked.owners[0].to_string(), "terminal:me");
        assert_eq!(checked.agents[0].as_str(), "hue");
        assert!(checked.llm.is_none());
        assert!(!config.has_routine_rooms());
    }

    #[test]
    fn bot_up_owned_keys_are_refused_in_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        std::fs::write(&path, "[orchestrator]\nowners = []\nnats_url = \"x\"\n").unwrap();
        let e = BotConfig::load(&path).unwrap_err().to_string();
        assert!(e.contains("set by `bot up`"), "{e}");
        std::fs::write(&path, "[orchestrator]\nowners = []\n[extra]\n").unwrap();
        assert!(BotConfig::load(&path).is_err());
    }

    /// The ```toml blocks of a README section.
    fn toml_blocks(section: &str) -> Vec<String> {
        let readme = include_str!("../../README.md");
        let start = readme.find(section).unwrap();
        let rest = &readme[start + section.len()..];
        let rest = &rest[..rest.find("\n## ").unwrap_or(rest.len())];
        rest.split("```toml\n")
            .skip(1)
            .map(|b| b[..b.find("```").unwrap()].to_owned())
            .collect()
    }

    #[test]
    fn the_readme_configuration_examples_are_valid() {
        let blocks = toml_blocks("## Configuration");
        assert_eq!(blocks.len(), 2);
        // The second is gateway.toml, checked by the gateway's own loader.
        let dir = tempfile::tempdir().unwrap();
        let gateway = dir.path().join("gateway.toml");
        std::fs::write(&gateway, &blocks[1]).unwrap();
        let g = notify_gateway::config::Config::load(&gateway).unwrap();
        assert_eq!(g.web.unwrap().user, "owner");
        assert_eq!(g.limits.limits(), notify_gateway::limits::Limits::default());
        let config: BotConfig = toml::from_str(&blocks[0]).unwrap();
        assert_eq!(config.bot.instance, "assistant");
        assert_eq!(config.hue.as_ref().unwrap().request_timeout_ms, 4000);
        assert!(config.has_routine_rooms());
        let text = config
            .orchestrator_toml("tls://127.0.0.1:4222", Path::new("/h"), &["hue".to_owned()])
            .unwrap();
        let checked = orchestrator::config::Config::from_toml(&text).unwrap();
        assert!(checked.summary.is_some());
        assert_eq!(checked.routine_rooms["kitchen"], "Kitchen");

        let llm = toml_blocks("## Connect an LLM");
        assert_eq!(llm.len(), 1);
        let with_llm = format!("{}\n{}", blocks[0], llm[0]);
        let config: BotConfig = toml::from_str(&with_llm).unwrap();
        let text = config
            .orchestrator_toml("tls://127.0.0.1:4222", Path::new("/h"), &["hue".to_owned()])
            .unwrap();
        let checked = orchestrator::config::Config::from_toml(&text).unwrap();
        assert_eq!(checked.llm.unwrap().model, "llama3.1");
    }
}
