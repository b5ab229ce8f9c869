//! The functional core: the CLIP v2 resources this agent reads, name resolution, request
//! bodies and outcome summaries. No I/O.
//!
//! Resources are parsed leniently (a bridge adds fields with every firmware) but only the fields
//! used here are read; everything a bridge says is untrusted text and is cut and bounded
//! before it leaves the agent.

use serde::Deserialize;
use serde_json::{Value, json};

use agent_runtime::ActionError;

/// Most entries an outcome lists.
pub const MAX_LISTED: usize = 200;
/// Longest name an outcome carries, in characters.
const MAX_NAME: usize = 64;
/// Most candidates named in a "not found" or "ambiguous" message.
const MAX_CANDIDATES: usize = 12;

/// A reference to another resource.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Ref {
    /// Its id.
    pub rid: String,
    /// Its type.
    pub rtype: String,
}

/// `metadata`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
pub struct Metadata {
    /// The user's name for it.
    #[serde(default)]
    pub name: String,
}

/// `on`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct On {
    /// On or off.
    pub on: bool,
}

/// `dimming`.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
pub struct Dimming {
    /// Percent.
    pub brightness: f64,
}

/// `color_temperature`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
pub struct ColorTemperature {
    /// Mirek, or `null` when the light is not in the colour temperature range.
    #[serde(default)]
    pub mirek: Option<u32>,
}

/// A `light` resource.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Light {
    /// Id.
    pub id: String,
    /// Name.
    #[serde(default)]
    pub metadata: Metadata,
    /// On or off.
    pub on: On,
    /// Brightness, for dimmable lights.
    #[serde(default)]
    pub dimming: Option<Dimming>,
    /// Colour temperature, for lights that have one.
    #[serde(default)]
    pub color_temperature: Option<ColorTemperature>,
    /// The device that offers it.
    pub owner: Ref,
}

/// A `room` or `zone` resource.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Group {
    /// Id.
    pub id: String,
    /// Name.
    #[serde(default)]
    pub metadata: Metadata,
    /// `room` or `zone`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Devices (rooms) or services (zones) in it.
    #[serde(default)]
    pub children: Vec<Ref>,
    /// Its services, among them its `grouped_light`.
    #[serde(default)]
    pub services: Vec<Ref>,
}

/// `status` of a scene.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
pub struct SceneStatus {
    /// `inactive`, `static` or `dynamic_palette`.
    #[serde(default)]
    pub active: String,
}

/// A `scene` resource.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Scene {
    /// Id.
    pub id: String,
    /// Name.
    #[serde(default)]
    pub metadata: Metadata,
    /// The room or zone it belongs to.
    pub group: Ref,
    /// Whether it is active.
    #[serde(default)]
    pub status: SceneStatus,
}

/// Something with an id and a name.
pub trait Named {
    /// Id.
    fn id(&self) -> &str;
    /// Name.
    fn name(&self) -> &str;
}

impl Named for Light {
    fn id(&self) -> &str {
        &self.id
    }
    fn name(&self) -> &str {
        &self.metadata.name
    }
}

impl Named for Group {
    fn id(&self) -> &str {
        &self.id
    }
    fn name(&self) -> &str {
        &self.metadata.name
    }
}

impl Named for Scene {
    fn id(&self) -> &str {
        &self.id
    }
    fn name(&self) -> &str {
        &self.metadata.name
    }
}

/// A bridge-supplied name, cut to [`MAX_NAME`] characters.
pub fn shown(name: &str) -> String {
    let cut: String = name.chars().take(MAX_NAME).collect();
    if cut.len() < name.len() {
        format!("{cut}…")
    } else {
        cut
    }
}

fn fold(s: &str) -> String {
    s.trim().to_lowercase()
}

/// Finds the one item `query` names: an exact id, else a case-insensitive name. `what` names
/// the kind for messages ("light", "room", "scene"); `describe` shows a candidate in an
/// ambiguity message.
pub fn resolve<'a, T: Named>(
    items: &'a [T],
    query: &str,
    what: &str,
    describe: impl Fn(&T) -> String,
) -> Result<&'a T, ActionError> {
    let folded = fold(query);
    if let Some(hit) = items.iter().find(|i| fold(i.id()) == folded) {
        return Ok(hit);
    }
    let hits: Vec<&T> = items.iter().filter(|i| fold(i.name()) == folded).collect();
    match hits.as_slice() {
        [one] => Ok(one),
        [] => {
            let mut known: Vec<String> = items.iter().map(|i| shown(i.name())).collect();
            known.sort();
            known.dedup();
            let more = known.len().saturating_sub(MAX_CANDIDATES);
            known.truncate(MAX_CANDIDATES);
            let tail = if more > 0 {
                format!(" and {more} more")
            } else {
                String::new()
            };
            Err(ActionError::new(
                "not_found",
                format!(
                    "no {what} is named {:?}; known: {}{tail}",
                    shown(query),
                    known.join(", ")
                ),
            ))
        }
        many => {
            let listed: Vec<String> = many
                .iter()
                .take(MAX_CANDIDATES)
                .map(|i| describe(i))
                .collect();
            Err(ActionError::new(
                "ambiguous_name",
                format!(
                    "{} {what}s are named {:?}: {}; name one by its id",
                    many.len(),
                    shown(query),
                    listed.join(", ")
                ),
            ))
        }
    }
}

/// A light or group change.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Change {
    /// Switch on or off.
    pub on: Option<bool>,
    /// Brightness in percent.
    pub brightness: Option<f64>,
    /// Colour temperature in mirek.
    pub mirek: Option<u32>,
    /// Transition in milliseconds.
    pub transition_ms: Option<u32>,
}

impl Change {
    /// The `LightPut` / `GroupedLightPut` body; refuses a change that changes nothing.
    pub fn body(&self) -> Result<Value, ActionError> {
        if self.on.is_none() && self.brightness.is_none() && self.mirek.is_none() {
            return Err(ActionError::new(
                "nothing_to_change",
                "give at least one of on, brightness or mirek",
            ));
        }
        let mut body = serde_json::Map::new();
        if let Some(on) = self.on {
            body.insert("on".to_owned(), json!({"on": on}));
        }
        if let Some(b) = self.brightness {
            body.insert("dimming".to_owned(), json!({"brightness": b}));
        }
        if let Some(m) = self.mirek {
            body.insert("color_temperature".to_owned(), json!({"mirek": m}));
        }
        if let Some(ms) = self.transition_ms {
            body.insert("dynamics".to_owned(), json!({"duration": ms}));
        }
        Ok(Value::Object(body))
    }

    /// "off", "on, 40% brightness, 370 mirek", ...
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        match self.on {
            Some(true) => parts.push("on".to_owned()),
            Some(false) => parts.push("off".to_owned()),
            None => {}
        }
        if let Some(b) = self.brightness {
            parts.push(format!("{b}% brightness"));
        }
        if let Some(m) = self.mirek {
            parts.push(format!("{m} mirek"));
        }
        if let Some(ms) = self.transition_ms {
            parts.push(format!("over {ms} ms"));
        }
        parts.join(", ")
    }

    /// The change as outcome data.
    pub fn data(&self) -> Value {
        json!({
            "on": self.on,
            "brightness": self.brightness,
            "mirek": self.mirek,
            "transition_ms": self.transition_ms,
        })
    }
}

/// The room (or, failing that, zone) each light belongs to: a room's children are devices
/// (matched against the light's owner), a zone's children are lights.
pub fn room_of<'a>(light: &Light, groups: &'a [Group]) -> Option<&'a Group> {
    let in_group = |g: &&Group| {
        g.children.iter().any(|c| {
            (c.rtype == "device" && c.rid == light.owner.rid)
                || (c.rtype == "light" && c.rid == light.id)
        })
    };
    groups
        .iter()
        .filter(|g| g.kind == "room")
        .find(in_group)
        .or_else(|| groups.iter().filter(|g| g.kind == "zone").find(in_group))
}

/// The lights of a room or zone.
pub fn lights_in<'a>(group: &Group, lights: &'a [Light]) -> Vec<&'a Light> {
    lights
        .iter()
        .filter(|l| {
            group.children.iter().any(|c| {
                (c.rtype == "device" && c.rid == l.owner.rid)
                    || (c.rtype == "light" && c.rid == l.id)
            })
        })
        .collect()
}

/// A group's `grouped_light` service id.
pub fn grouped_light_of(group: &Group) -> Option<&str> {
    group
        .services
        .iter()
        .find(|s| s.rtype == "grouped_light")
        .map(|s| s.rid.as_str())
}

fn list_names(names: &[String], max: usize) -> String {
    let mut out: Vec<String> = names.iter().take(max).cloned().collect();
    if names.len() > max {
        out.push(format!("{} more", names.len() - max));
    }
    out.join(", ")
}

/// `lights.list`: the summary and data.
pub fn lights_outcome(lights: &[Light], groups: &[Group], on_only: bool) -> (String, Value) {
    let on: Vec<&Light> = lights.iter().filter(|l| l.on.on).collect();
    let listed: Vec<&Light> = if on_only {
        on.clone()
    } else {
        lights.iter().collect()
    };
    let entries: Vec<Value> = listed
        .iter()
        .take(MAX_LISTED)
        .map(|l| {
            json!({
                "id": l.id,
                "name": shown(l.name()),
                "room": room_of(l, groups).map(|g| shown(g.name())),
                "on": l.on.on,
                "brightness": l.dimming.map(|d| d.brightness),
                "mirek": l.color_temperature.and_then(|c| c.mirek),
            })
        })
        .collect();
    let on_names: Vec<String> = on.iter().map(|l| shown(l.name())).collect();
    let summary = match (on_only, on.len()) {
        (true, 0) => "No lights are on.".to_owned(),
        (true, 1) => format!("1 light is on: {}.", list_names(&on_names, 10)),
        (true, n) => format!("{n} lights are on: {}.", list_names(&on_names, 10)),
        (false, 0) => format!("{} lights, none on.", lights.len()),
        (false, n) => format!(
            "{} lights, {n} on: {}.",
            lights.len(),
            list_names(&on_names, 10)
        ),
    };
    let data = json!({
        "lights": entries,
        "total": lights.len(),
        "on": on.len(),
        "truncated": listed.len() > MAX_LISTED,
    });
    (summary, data)
}

/// `rooms.list`: the summary and data.
pub fn rooms_outcome(groups: &[Group], lights: &[Light]) -> (String, Value) {
    let entries: Vec<Value> = groups
        .iter()
        .take(MAX_LISTED)
        .map(|g| {
            let members = lights_in(g, lights);
            json!({
                "id": g.id,
                "name": shown(g.name()),
                "kind": g.kind,
                "lights": members.len(),
                "lights_on": members.iter().filter(|l| l.on.on).count(),
            })
        })
        .collect();
    let rooms = groups.iter().filter(|g| g.kind == "room").count();
    let zones = groups.len() - rooms;
    let summary = format!("{rooms} rooms and {zones} zones.");
    let data = json!({"rooms": entries, "truncated": groups.len() > MAX_LISTED});
    (summary, data)
}

/// The name of a scene's room or zone.
pub fn group_name(scene: &Scene, groups: &[Group]) -> Option<String> {
    groups
        .iter()
        .find(|g| g.id == scene.group.rid)
        .map(|g| shown(g.name()))
}

/// `scenes.list`: the summary and data (scenes of `room` only, if given).
pub fn scenes_outcome(scenes: &[&Scene], groups: &[Group], room: Option<&str>) -> (String, Value) {
    let entries: Vec<Value> = scenes
        .iter()
        .take(MAX_LISTED)
        .map(|s| {
            json!({
                "id": s.id,
                "name": shown(s.name()),
                "group": group_name(s, groups),
                "active": s.status.active != "inactive" && !s.status.active.is_empty(),
            })
        })
        .collect();
    let summary = match room {
        Some(r) => format!("{} scenes in {}.", scenes.len(), shown(r)),
        None => format!("{} scenes.", scenes.len()),
    };
    let data = json!({"scenes": entries, "truncated": scenes.len() > MAX_LISTED});
    (summary, data)
}

/// Scenes of the room or zone named `room` (case-insensitive), or an error naming the
/// known rooms.
pub fn scenes_of<'a>(
    scenes: &'a [Scene],
    groups: &[Group],
    room: &str,
) -> Result<Vec<&'a Scene>, ActionError> {
    let group = resolve(groups, room, "room or zone", |g| {
        format!("{} {} ({})", g.kind, shown(g.name()), g.id)
    })?;
    Ok(scenes.iter().filter(|s| s.group.rid == group.id).collect())
}

/// A resource id as the bridge spells it: lowercase hex and dashes, 1 to 64 bytes. Anything else
/// never goes into a request path.
pub fn is_resource_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b) || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn light(id: &str, name: &str, device: &str, on: bool) -> Light {
        Light {
            id: id.to_owned(),
            metadata: Metadata {
                name: name.to_owned(),
            },
            on: On { on },
            dimming: Some(Dimming { brightness: 50.0 }),
            color_temperature: Some(ColorTemperature { mirek: Some(300) }),
            owner: Ref {
                rid: device.to_owned(),
                rtype: "device".to_owned(),
            },
        }
    }

    fn group(id: &str, name: &str, kind: &str, children: &[(&str, &str)]) -> Group {
        Group {
            id: id.to_owned(),
            metadata: Metadata {
                name: name.to_owned(),
            },
            kind: kind.to_owned(),
            children: children
                .iter()
                .map(|(rid, rtype)| Ref {
                    rid: (*rid).to_owned(),
                    rtype: (*rtype).to_owned(),
                })
                .collect(),
            services: vec![],
        }
    }

    fn check(items: &[Light], query: &str) -> String {
        match resolve(items, query, "light", |l| {
            format!("{} ({})", l.name(), l.id)
        }) {
            Ok(l) => format!("ok {}", l.id),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn names_resolve_by_id_then_case_insensitive_name() {
        let lights = [
            light("a1", "Kitchen", "d1", true),
            light("b2", "Desk", "d2", false),
            light("c3", "Desk", "d3", true),
            light("d4", "kitchen strip", "d4", true),
        ];
        let cases = [
            "a1",
            "A1",
            "kitchen",
            "  KITCHEN ",
            "desk",
            "c3",
            "hall",
            "Kitchen Strip",
        ];
        let out: Vec<String> = cases.iter().map(|q| check(&lights, q)).collect();
        expect_test::expect![[r#"
            ok a1
            ok a1
            ok a1
            ok a1
            ambiguous_name: 2 lights are named "desk": Desk (b2), Desk (c3); name one by its id
            ok c3
            not_found: no light is named "hall"; known: Desk, Kitchen, kitchen strip
            ok d4"#]]
        .assert_eq(&out.join("\n"));
    }

    #[test]
    fn not_found_messages_are_bounded() {
        let lights: Vec<Light> = (0..40)
            .map(|i| light(&format!("{i:02x}"), &format!("L{i:02}"), "d", false))
            .collect();
        let e = resolve(&lights, &"x".repeat(500), "light", |l| l.id.clone()).unwrap_err();
        assert!(e.message().contains("and 28 more"), "{}", e.message());
        assert!(e.message().len() <= agent_runtime::agent::MAX_ACTION_MESSAGE);
    }

    #[test]
    fn change_bodies_follow_the_clip_put_shape() {
        let change = Change {
            on: Some(true),
            brightness: Some(40.5),
            mirek: Some(370),
            transition_ms: Some(2000),
        };
        assert_eq!(
            change.body().unwrap(),
            json!({"on": {"on": true}, "dimming": {"brightness": 40.5},
                   "color_temperature": {"mirek": 370}, "dynamics": {"duration": 2000}})
        );
        assert_eq!(
            change.describe(),
            "on, 40.5% brightness, 370 mirek, over 2000 ms"
        );
        let off = Change {
            on: Some(false),
            ..Change::default()
        };
        assert_eq!(off.body().unwrap(), json!({"on": {"on": false}}));
        let nothing = Change {
            transition_ms: Some(5),
            ..Change::default()
        };
        assert_eq!(
            nothing.body().unwrap_err().code().as_str(),
            "nothing_to_change"
        );
    }

    #[test]
    fn lights_belong_to_the_room_of_their_device() {
        let lights = [
            light("l1", "Lamp", "dev1", true),
            light("l2", "Strip", "dev2", false),
            light("l3", "Loose", "dev3", true),
        ];
        let groups = [
            group(
                "z1",
                "Downstairs",
                "zone",
                &[("l1", "light"), ("l3", "light")],
            ),
            group(
                "r1",
                "Living",
                "room",
                &[("dev1", "device"), ("dev2", "device")],
            ),
        ];
        assert_eq!(room_of(&lights[0], &groups).unwrap().id, "r1");
        assert_eq!(room_of(&lights[2], &groups).unwrap().id, "z1");
        let ids: Vec<&str> = lights_in(&groups[1], &lights)
            .iter()
            .map(|l| l.id.as_str())
            .collect();
        assert_eq!(ids, ["l1", "l2"]);
        let (summary, data) = lights_outcome(&lights, &groups, true);
        assert_eq!(summary, "2 lights are on: Lamp, Loose.");
        assert_eq!(data["lights"][0]["room"], "Living");
        assert_eq!(data["lights"].as_array().unwrap().len(), 2);
        let (summary, _) = lights_outcome(&lights, &groups, false);
        assert_eq!(summary, "3 lights, 2 on: Lamp, Loose.");
        let (summary, data) = rooms_outcome(&groups, &lights);
        assert_eq!(summary, "1 rooms and 1 zones.");
        assert_eq!(data["rooms"][1]["lights_on"], 1);
    }

    #[test]
    fn only_bridge_style_ids_go_into_paths() {
        assert!(is_resource_id("1a49f893-e2fc-908a-9046-fa7629f1e770"));
        for bad in ["", "../light", "1a49f893/x", "ABC", "a?b", &"a".repeat(65)] {
            assert!(!is_resource_id(bad), "{bad}");
        }
    }

    #[test]
    fn long_names_are_cut() {
        assert_eq!(shown("Hall"), "Hall");
        let long = "é".repeat(100);
        assert_eq!(shown(&long).chars().count(), MAX_NAME + 1);
    }
}
