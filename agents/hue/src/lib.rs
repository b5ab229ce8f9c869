//! The Philips Hue agent: lights, rooms and scenes through the bridge's CLIP v2 API.
//!
//! What it does: the six actions of `agents/catalog/manifests/hue.json` — `lights.list`,
//! `rooms.list`, `scenes.list` (read) and `light.set`, `room.set`, `scene.activate` (change) —
//! against one bridge, over HTTPS with the bridge's certificate pinned ([`tls`]), the
//! application key in the `hue-application-key` header, every request bounded in time and size,
//! and commands paced under the bridge's limits ([`bridge`]). Names match case-insensitively
//! (or by id); an ambiguous name fails with `ambiguous_name` and lists the candidates, an
//! unknown one with `not_found`. Bridge answers map to stable codes: 403 `bridge_unauthorized`,
//! 404 `not_found`, 429 `bridge_rate_limited`, others `bridge_error`; a certificate other than
//! the pinned one is `bridge_tls_pin_mismatch`, no connection `bridge_unreachable`.
//!
//! What it does not do: no token checks, NATS, audit or argument validation (the runtime does
//! all of that before [`Hue`]'s handler runs), no proxy from the environment, no discovery or
//! pairing, no event stream, no colours beyond colour temperature, and it keeps no state
//! between requests beyond the pacing of its commands.
#![forbid(unsafe_code)]

pub mod bridge;
pub mod clip;
pub mod tls;

use std::path::{Component, Path};
use std::sync::LazyLock;
use std::time::Duration;

use agent_runtime::{ActionError, Agent, AgentContext, AgentError, Outcome};
use protocol::manifest::{CheckedManifest, HostPort};
use protocol::{ActionName, AgentName};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::bridge::{ApplicationKey, Bridge, Pace};
use crate::clip::{Change, Group, Light, Named as _, Scene, shown};

/// Shortest request timeout accepted, in milliseconds.
pub const MIN_REQUEST_TIMEOUT_MS: u32 = 100;
/// Longest request timeout accepted, in milliseconds: an action makes at most four requests
/// and the manifest's action timeouts are sized for four of these plus pacing.
pub const MAX_REQUEST_TIMEOUT_MS: u32 = 4000;
/// Largest application key file read, in bytes.
const MAX_KEY_FILE: u64 = 1024;

/// The agent's settings (`settings` in its configuration file).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// The bridge's address, `host:port` (port 443 on a real bridge).
    pub bridge: HostPort,
    /// The file holding the application key, relative to the identity directory.
    pub application_key_file: String,
    /// SHA-256 of the bridge's certificate (DER), 64 hex digits.
    pub bridge_cert_sha256: String,
    /// Timeout of each request to the bridge, in milliseconds.
    pub request_timeout_ms: u32,
}

/// The Hue agent.
#[derive(Debug)]
pub struct Hue {
    bridge: Bridge,
}

static NAME: LazyLock<Option<AgentName>> = LazyLock::new(|| AgentName::new("hue").ok());

fn settings_error(message: impl Into<String>) -> AgentError {
    AgentError::new("settings_invalid", message)
}

/// Reads the application key: a relative path without `..` under the identity directory, a
/// file only its owner can read, at most 1 KiB.
fn read_key(identity_dir: &Path, relative: &str) -> Result<ApplicationKey, AgentError> {
    let path = Path::new(relative);
    if relative.is_empty() || !path.components().all(|c| matches!(c, Component::Normal(_))) {
        return Err(settings_error(
            "application_key_file must be a relative path inside the identity directory",
        ));
    }
    let full = identity_dir.join(path);
    let unreadable = |e: std::io::Error| {
        AgentError::new(
            "application_key_unreadable",
            format!("cannot read {relative}: {e}"),
        )
    };
    let file = std::fs::File::open(&full).map_err(unreadable)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = file.metadata().map_err(unreadable)?.permissions().mode();
        if mode & 0o077 != 0 {
            return Err(AgentError::new(
                "application_key_unsafe",
                format!(
                    "{relative} is readable by others (mode {:o}); make it 0600",
                    mode & 0o777
                ),
            ));
        }
    }
    let mut text = String::new();
    std::io::Read::read_to_string(&mut std::io::Read::take(file, MAX_KEY_FILE + 1), &mut text)
        .map_err(unreadable)?;
    if text.len() as u64 > MAX_KEY_FILE {
        return Err(AgentError::new(
            "application_key_invalid",
            format!("{relative} is over {MAX_KEY_FILE} bytes"),
        ));
    }
    ApplicationKey::parse(&text).ok_or_else(|| {
        AgentError::new(
            "application_key_invalid",
            format!("{relative} does not hold an application key"),
        )
    })
}

impl Agent for Hue {
    type Settings = Settings;
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");

    fn manifest() -> Option<&'static CheckedManifest> {
        catalog::get(NAME.as_ref()?)
    }

    fn new(settings: Settings, ctx: &AgentContext) -> Result<Self, AgentError> {
        let pin = tls::parse_pin(&settings.bridge_cert_sha256)
            .ok_or_else(|| settings_error("bridge_cert_sha256 must be 64 hex digits"))?;
        if !(MIN_REQUEST_TIMEOUT_MS..=MAX_REQUEST_TIMEOUT_MS).contains(&settings.request_timeout_ms)
        {
            return Err(settings_error(format!(
                "request_timeout_ms must be {MIN_REQUEST_TIMEOUT_MS} to {MAX_REQUEST_TIMEOUT_MS}"
            )));
        }
        let key = read_key(&ctx.identity_dir, &settings.application_key_file)?;
        let timeout = Duration::from_millis(u64::from(settings.request_timeout_ms));
        let bridge = Bridge::new(
            &settings.bridge,
            pin,
            key,
            timeout,
            ctx.egress_proxy.as_deref(),
        )?;
        Ok(Hue { bridge })
    }

    async fn handle(&self, action: &ActionName, args: &Value) -> Result<Outcome, ActionError> {
        match Command::parse(action, args)? {
            Command::LightsList(a) => self.lights_list(a).await,
            Command::RoomsList(RoomsList {}) => self.rooms_list().await,
            Command::ScenesList(a) => self.scenes_list(a).await,
            Command::LightSet(a) => self.light_set(a).await,
            Command::RoomSet(a) => self.room_set(a).await,
            Command::SceneActivate(a) => self.scene_activate(a).await,
        }
    }
}

/// `lights.list` arguments.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LightsList {
    /// Only lights that are on.
    #[serde(default)]
    pub on_only: bool,
}

/// `rooms.list` arguments (none).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoomsList {}

/// `scenes.list` arguments.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScenesList {
    /// Only scenes of this room or zone.
    #[serde(default)]
    pub room: Option<String>,
}

/// `light.set` arguments.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LightSet {
    /// Name or id.
    pub light: String,
    /// On or off.
    #[serde(default)]
    pub on: Option<bool>,
    /// Percent.
    #[serde(default)]
    pub brightness: Option<f64>,
    /// Mirek.
    #[serde(default)]
    pub mirek: Option<u32>,
    /// Fade, in milliseconds.
    #[serde(default)]
    pub transition_ms: Option<u32>,
}

/// `room.set` arguments.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoomSet {
    /// Name or id of a room or zone.
    pub room: String,
    /// On or off.
    #[serde(default)]
    pub on: Option<bool>,
    /// Percent.
    #[serde(default)]
    pub brightness: Option<f64>,
    /// Mirek.
    #[serde(default)]
    pub mirek: Option<u32>,
    /// Fade, in milliseconds.
    #[serde(default)]
    pub transition_ms: Option<u32>,
}

/// `scene.activate` arguments.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SceneActivate {
    /// Name or id.
    pub scene: String,
    /// Its room or zone, to tell same-named scenes apart.
    #[serde(default)]
    pub room: Option<String>,
    /// Fade, in milliseconds.
    #[serde(default)]
    pub transition_ms: Option<u32>,
}

/// One request, parsed from the action name and its (already schema-checked) arguments.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// `lights.list`
    LightsList(LightsList),
    /// `rooms.list`
    RoomsList(RoomsList),
    /// `scenes.list`
    ScenesList(ScenesList),
    /// `light.set`
    LightSet(LightSet),
    /// `room.set`
    RoomSet(RoomSet),
    /// `scene.activate`
    SceneActivate(SceneActivate),
}

fn args_of<T: serde::de::DeserializeOwned>(args: &Value) -> Result<T, ActionError> {
    serde_json::from_value(args.clone())
        .map_err(|e| ActionError::new("invalid_arguments", e.to_string()))
}

impl Command {
    /// Parses an action of the manifest.
    pub fn parse(action: &ActionName, args: &Value) -> Result<Command, ActionError> {
        Ok(match action.as_str() {
            "lights.list" => Command::LightsList(args_of(args)?),
            "rooms.list" => Command::RoomsList(args_of(args)?),
            "scenes.list" => Command::ScenesList(args_of(args)?),
            "light.set" => Command::LightSet(args_of(args)?),
            "room.set" => Command::RoomSet(args_of(args)?),
            "scene.activate" => Command::SceneActivate(args_of(args)?),
            other => {
                return Err(ActionError::new(
                    "unknown_action",
                    format!("hue offers no action {other}"),
                ));
            }
        })
    }
}

fn outcome((summary, data): (String, Value)) -> Outcome {
    Outcome { summary, data }
}

impl Hue {
    async fn groups(&self) -> Result<Vec<Group>, ActionError> {
        let mut groups: Vec<Group> = self.bridge.list("room").await?;
        groups.extend(self.bridge.list::<Group>("zone").await?);
        Ok(groups)
    }

    async fn lights_list(&self, a: LightsList) -> Result<Outcome, ActionError> {
        let lights: Vec<Light> = self.bridge.list("light").await?;
        let rooms: Vec<Group> = self.bridge.list("room").await?;
        Ok(outcome(clip::lights_outcome(&lights, &rooms, a.on_only)))
    }

    async fn rooms_list(&self) -> Result<Outcome, ActionError> {
        let groups = self.groups().await?;
        let lights: Vec<Light> = self.bridge.list("light").await?;
        Ok(outcome(clip::rooms_outcome(&groups, &lights)))
    }

    async fn scenes_list(&self, a: ScenesList) -> Result<Outcome, ActionError> {
        let scenes: Vec<Scene> = self.bridge.list("scene").await?;
        let groups = self.groups().await?;
        let listed = match &a.room {
            Some(room) => clip::scenes_of(&scenes, &groups, room)?,
            None => scenes.iter().collect(),
        };
        Ok(outcome(clip::scenes_outcome(
            &listed,
            &groups,
            a.room.as_deref(),
        )))
    }

    async fn light_set(&self, a: LightSet) -> Result<Outcome, ActionError> {
        let change = Change {
            on: a.on,
            brightness: a.brightness,
            mirek: a.mirek,
            transition_ms: a.transition_ms,
        };
        let body = change.body()?;
        let lights: Vec<Light> = self.bridge.list("light").await?;
        let light = clip::resolve(&lights, &a.light, "light", |l| {
            format!("{} ({})", shown(l.name()), l.id)
        })?;
        self.bridge
            .put("light", &light.id, &body, Pace::Light)
            .await?;
        Ok(Outcome {
            summary: format!("{}: {}.", shown(light.name()), change.describe()),
            data: json!({
                "light": {"id": light.id, "name": shown(light.name())},
                "applied": change.data(),
            }),
        })
    }

    async fn room_set(&self, a: RoomSet) -> Result<Outcome, ActionError> {
        let change = Change {
            on: a.on,
            brightness: a.brightness,
            mirek: a.mirek,
            transition_ms: a.transition_ms,
        };
        let body = change.body()?;
        let groups = self.groups().await?;
        let group = clip::resolve(&groups, &a.room, "room", |g| {
            format!("{} {} ({})", g.kind, shown(g.name()), g.id)
        })?;
        let grouped = clip::grouped_light_of(group).ok_or_else(|| {
            ActionError::new(
                "no_grouped_light",
                format!(
                    "{} has no lights to control as a group",
                    shown(group.name())
                ),
            )
        })?;
        self.bridge
            .put("grouped_light", grouped, &body, Pace::Group)
            .await?;
        Ok(Outcome {
            summary: format!("{}: {}.", shown(group.name()), change.describe()),
            data: json!({
                "room": {"id": group.id, "name": shown(group.name()), "kind": group.kind},
                "grouped_light": grouped,
                "applied": change.data(),
            }),
        })
    }

    async fn scene_activate(&self, a: SceneActivate) -> Result<Outcome, ActionError> {
        let scenes: Vec<Scene> = self.bridge.list("scene").await?;
        let groups = self.groups().await?;
        let candidates: Vec<Scene> = match &a.room {
            Some(room) => clip::scenes_of(&scenes, &groups, room)?
                .into_iter()
                .cloned()
                .collect(),
            None => scenes,
        };
        let scene = clip::resolve(&candidates, &a.scene, "scene", |s| {
            let group = clip::group_name(s, &groups).unwrap_or_else(|| "?".to_owned());
            format!("{} in {group} ({})", shown(s.name()), s.id)
        })?;
        let recall = match a.transition_ms {
            Some(ms) => json!({"action": "active", "duration": ms}),
            None => json!({"action": "active"}),
        };
        self.bridge
            .put("scene", &scene.id, &json!({"recall": recall}), Pace::Group)
            .await?;
        let group = clip::group_name(scene, &groups);
        let summary = match &group {
            Some(g) => format!("Scene {} activated in {g}.", shown(scene.name())),
            None => format!("Scene {} activated.", shown(scene.name())),
        };
        Ok(Outcome {
            summary,
            data: json!({
                "scene": {"id": scene.id, "name": shown(scene.name()), "group": group},
                "transition_ms": a.transition_ms,
            }),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_manifest_action_parses_into_a_command() {
        let manifest = Hue::manifest().unwrap();
        assert_eq!(manifest.name().as_str(), "hue");
        let samples = [
            ("lights.list", json!({"on_only": true})),
            ("rooms.list", json!({})),
            ("scenes.list", json!({"room": "Kitchen"})),
            ("light.set", json!({"light": "Desk", "on": false})),
            (
                "room.set",
                json!({"room": "Kitchen", "brightness": 20, "transition_ms": 1000}),
            ),
            (
                "scene.activate",
                json!({"scene": "Relax", "room": "Kitchen"}),
            ),
        ];
        assert_eq!(samples.len(), manifest.manifest.actions.len());
        for (action, args) in samples {
            let name = ActionName::new(action).unwrap();
            let (_, schema) = manifest.action(&name).unwrap();
            schema.validate(&args).unwrap();
            Command::parse(&name, &args).unwrap();
        }
        let unknown = Command::parse(&ActionName::new("door.unlock").unwrap(), &json!({}));
        assert_eq!(unknown.unwrap_err().code().as_str(), "unknown_action");
    }

    #[test]
    fn action_timeouts_cover_four_requests_and_pacing() {
        let manifest = Hue::manifest().unwrap();
        let worst = 4 * u64::from(MAX_REQUEST_TIMEOUT_MS)
            + u64::try_from(bridge::GROUP_INTERVAL.as_millis()).unwrap();
        for a in &manifest.manifest.actions {
            assert!(
                u64::from(a.timeout_ms) >= worst,
                "{}: {} ms < {worst} ms",
                a.name,
                a.timeout_ms
            );
        }
    }

    #[test]
    fn the_key_file_must_stay_inside_the_identity_directory() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, text: &str, mode: u32| {
            let p = dir.path().join(name);
            std::fs::write(&p, text).unwrap();
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt as _;
                std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
            }
        };
        write("hue.key", "secret-key-1\n", 0o600);
        write("open.key", "secret-key-2\n", 0o644);
        write("empty.key", "\n", 0o600);
        let cases = [
            "hue.key",
            "/etc/passwd",
            "../hue.key",
            "./hue.key",
            "",
            "open.key",
            "empty.key",
            "missing.key",
        ];
        let out: Vec<String> = cases
            .iter()
            .map(|c| match read_key(dir.path(), c) {
                Ok(k) => format!("{c}: ok {k:?}"),
                Err(e) => format!("{c}: {}", e.code()),
            })
            .collect();
        expect_test::expect![[r#"
            hue.key: ok ApplicationKey(<redacted>)
            /etc/passwd: settings_invalid
            ../hue.key: settings_invalid
            ./hue.key: settings_invalid
            : settings_invalid
            open.key: application_key_unsafe
            empty.key: application_key_invalid
            missing.key: application_key_unreadable"#]]
        .assert_eq(&out.join("\n"));
    }
}
