//! A Philips Hue bridge double speaking CLIP API v2 over HTTPS: the test double the Hue agent is
//! tested against, and the simulated bridge `bot up --simulate-hue` runs for a first try without
//! hardware.
//!
//! What it does: [`FakeBridge::start`] serves the real resource dump in
//! `agents/hue-sim/fixtures/v2_resources.json` (aiohue's fixture, see `tests/fixtures/SOURCES.md`)
//! the way a real bridge and the openhue OpenAPI spec describe it:
//! - HTTPS only, with a certificate chain like a real bridge's: a private root and a leaf whose
//!   common name is the bridge id (lowercase hex), with no name a client could check, so clients
//!   pin the leaf ([`FakeBridge::cert_sha256`]);
//! - every response is the `{"errors": [{"description": ..}], "data": [..]}` envelope;
//! - `GET /clip/v2/resource`, `/clip/v2/resource/{type}` and `/clip/v2/resource/{type}/{id}`;
//! - `PUT` on `light/{id}` (`on`, `dimming`, `color_temperature`, `dynamics`),
//!   `grouped_light/{id}` (the same, applied to every light of the owning room or zone: room →
//!   its child devices → their light services; zone → its lights) and `scene/{id}` (`recall`:
//!   the scene's stored actions are applied to its lights, it becomes the group's active scene);
//! - 403 with the bridge's `unauthorized user` body without or with a wrong
//!   `hue-application-key`; 404 `Not Found` for unknown types and ids; 400 with a bridge-style
//!   `json-schema validation` description for invalid bodies (e.g. brightness 150); 405 for
//!   other methods; 429 when the optional [`RateLimit`] is exceeded; 503 or refused connections
//!   on demand ([`Mode`]).
//!
//! It binds to the address it is given (`0.0.0.0:0` makes it reachable from a container).
//!
//! The error descriptions are those real bridges send: `unauthorized user` for a missing or
//! wrong key, and for an invalid body the `json-schema validation` text a bridge gave for an
//! out-of-range mirek (quoted in home-assistant/core#61584), built here for each field.
//!
//! What it does not do: PUT on other resource types (405: not modelled), POST and DELETE
//! (405), the event stream, v1 (`/api`), and fields of the PUT bodies beyond those above (they
//! are accepted when the spec lists them, and ignored).
#![forbid(unsafe_code)]
// Indexing here is `serde_json::Value` indexing (a missing key or index yields `Null`, it never
// panics) and positions found in the same locked state a line earlier.
#![allow(clippy::indexing_slicing)]

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use serde_json::{Map, Value, json};
use sha2::{Digest as _, Sha256};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;

/// The real bridge's resource dump (aiohue's `v2_resources.json`, the bare `data` array).
pub const FIXTURE: &str = include_str!("../fixtures/v2_resources.json");

/// The simulated bridge's rooms for the routines' room roles: the fixture's living room,
/// kitchen and bedroom (by their archetypes; the real bridge the fixture comes from named its
/// rooms "Room 1" to "Room 11").
pub const ROOM_ALIASES: &[(&str, &str)] = &[
    ("living", LIVING_ROOM),
    ("kitchen", "Room 1"),
    ("bedroom", "Room 9"),
    ("hallway", "Room 10"),
];

/// [`ROOM_ALIASES`] as the map the orchestrator's configuration takes.
pub fn room_aliases() -> std::collections::BTreeMap<String, String> {
    ROOM_ALIASES
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// The header carrying the application key.
pub const KEY_HEADER: &str = "hue-application-key";

/// Largest request body read, in bytes.
const MAX_BODY: usize = 64 * 1024;

/// Resource types of the CLIP v2 API (the openhue spec's `/clip/v2/resource/{type}` paths, plus
/// those the fixture holds).
pub const RESOURCE_TYPES: &[&str] = &[
    "behavior_instance",
    "behavior_script",
    "bell_button",
    "bridge",
    "bridge_home",
    "button",
    "camera_motion",
    "clip",
    "contact",
    "convenience_area_motion",
    "device",
    "device_power",
    "device_software_update",
    "entertainment",
    "entertainment_configuration",
    "geofence_client",
    "geolocation",
    "grouped_light",
    "grouped_light_level",
    "grouped_motion",
    "homekit",
    "light",
    "light_level",
    "matter",
    "matter_fabric",
    "motion",
    "motion_area_candidate",
    "motion_area_configuration",
    "relative_rotary",
    "room",
    "scene",
    "security_area_motion",
    "service_group",
    "smart_scene",
    "speaker",
    "switch_input_configuration",
    "tamper",
    "temperature",
    "wifi_connectivity",
    "zgp_connectivity",
    "zigbee_connectivity",
    "zigbee_device_discovery",
    "zone",
];

/// `LightPut` properties (openhue spec).
const LIGHT_PUT: &[&str] = &[
    "type",
    "on",
    "dimming",
    "dimming_delta",
    "color_temperature",
    "color_temperature_delta",
    "color",
    "dynamics",
    "alert",
    "signaling",
    "mode",
    "gradient",
    "effects",
    "timed_effects",
    "powerup",
];
/// `GroupedLightPut` properties (openhue spec).
const GROUPED_LIGHT_PUT: &[&str] = &[
    "type",
    "on",
    "dimming",
    "dimming_delta",
    "color_temperature",
    "color_temperature_delta",
    "color",
    "alert",
    "signaling",
    "dynamics",
];
/// `ScenePut` properties (openhue spec).
const SCENE_PUT: &[&str] = &[
    "type",
    "actions",
    "recall",
    "metadata",
    "palette",
    "speed",
    "auto_dynamic",
];

/// The fixture's resources.
pub fn fixture() -> Vec<Value> {
    // The fixture is compiled in and checked by this crate's tests; an unreadable one would be
    // an empty bridge, not a crash.
    serde_json::from_str(FIXTURE).unwrap_or_default()
}

/// The fixture plus, like a real bridge has, a `grouped_light` service for every room and zone
/// that has none (ids derived from the room's id, so they are stable across runs).
pub fn fixture_with_room_groups() -> Vec<Value> {
    with_room_groups(fixture())
}

/// The home `bot up --simulate-hue` serves: the fixture, with the devices of the lights that
/// no room holds (Lights 1, 4 and 5) placed in `Room 11` (the routines' living room, which
/// holds only a switch in the dump), and the rooms' `grouped_light` services. Every room a
/// routine touches then has lights to show the effect on.
pub fn demo_home() -> Vec<Value> {
    let mut resources = fixture();
    let in_rooms: std::collections::BTreeSet<String> = resources
        .iter()
        .filter(|r| r["type"] == "room")
        .flat_map(|r| r["children"].as_array().cloned().unwrap_or_default())
        .filter_map(|c| c["rid"].as_str().map(str::to_owned))
        .collect();
    let roomless: Vec<String> = resources
        .iter()
        .filter(|r| r["type"] == "light")
        .filter_map(|l| l["owner"]["rid"].as_str().map(str::to_owned))
        .filter(|device| !in_rooms.contains(device))
        .collect();
    if let Some(living) = resources
        .iter_mut()
        .find(|r| r["type"] == "room" && r["metadata"]["name"] == LIVING_ROOM)
        && let Some(children) = living["children"].as_array_mut()
    {
        for device in roomless {
            children.push(json!({"rid": device, "rtype": "device"}));
        }
    }
    with_room_groups(resources)
}

/// The dump's room the routines use as the living room.
const LIVING_ROOM: &str = "Room 11";

fn with_room_groups(mut resources: Vec<Value>) -> Vec<Value> {
    let mut added = Vec::new();
    for r in resources.iter_mut() {
        let rtype = r["type"].as_str().unwrap_or_default().to_owned();
        if rtype != "room" && rtype != "zone" {
            continue;
        }
        let owner_id = r["id"].as_str().unwrap_or_default().to_owned();
        let Some(services) = r["services"].as_array_mut() else {
            continue;
        };
        if services.iter().any(|s| s["rtype"] == "grouped_light") {
            continue;
        }
        let id = derived_id(&owner_id, "grouped_light");
        services.push(json!({"rid": id, "rtype": "grouped_light"}));
        added.push(json!({
            "alert": {"action_values": ["breathe"]},
            "dimming": {"brightness": 0.0},
            "id": id,
            "on": {"on": false},
            "owner": {"rid": owner_id, "rtype": rtype},
            "signaling": {"signal_values": ["no_signal", "on_off"]},
            "type": "grouped_light"
        }));
    }
    resources.extend(added);
    let mut state = State::new(resources);
    state.refresh_groups();
    state.resources
}

fn derived_id(seed: &str, salt: &str) -> String {
    let h = Sha256::digest(format!("{salt}:{seed}").as_bytes());
    let x = hex::encode(&h[..16]);
    format!(
        "{}-{}-{}-{}-{}",
        &x[0..8],
        &x[8..12],
        &x[12..16],
        &x[16..20],
        &x[20..32]
    )
}

/// How the bridge answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Normally.
    Normal,
    /// Every request gets 503.
    Unavailable,
    /// The listening socket is closed (connections are refused) and open connections are cut.
    RefuseConnections,
}

/// Requests per second the bridge accepts before answering 429 (a sliding one-second window).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    /// `PUT light/{id}`.
    pub light_per_second: usize,
    /// `PUT grouped_light/{id}` and scene recalls.
    pub group_per_second: usize,
}

/// One request as the bridge saw it.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordedRequest {
    /// Method.
    pub method: String,
    /// Path.
    pub path: String,
    /// Whether it carried the right application key.
    pub authorized: bool,
    /// The JSON body, if any parsed.
    pub body: Option<Value>,
    /// The status answered.
    pub status: u16,
    /// When it arrived.
    pub at: Instant,
}

/// One light's state.
#[derive(Debug, Clone, PartialEq)]
pub struct LightSnapshot {
    /// Resource id.
    pub id: String,
    /// `metadata.name`.
    pub name: String,
    /// `on.on`.
    pub on: bool,
    /// `dimming.brightness`.
    pub brightness: Option<f64>,
    /// `color_temperature.mirek`.
    pub mirek: Option<u64>,
}

struct State {
    resources: Vec<Value>,
    requests: Vec<RecordedRequest>,
    mode: Mode,
    rate: Option<RateLimit>,
    recent_light: VecDeque<Instant>,
    recent_group: VecDeque<Instant>,
}

enum Control {
    Listen(bool, oneshot::Sender<anyhow::Result<()>>),
}

/// A running bridge double; stops when dropped.
#[derive(Debug)]
pub struct FakeBridge {
    addr: SocketAddr,
    cert_der: Vec<u8>,
    cert_sha256: String,
    key: String,
    bridge_id: String,
    state: Arc<Mutex<State>>,
    control: mpsc::Sender<Control>,
    task: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State")
            .field("resources", &self.resources.len())
            .field("requests", &self.requests.len())
            .field("mode", &self.mode)
            .finish()
    }
}

impl Drop for FakeBridge {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct Tls {
    acceptor: TlsAcceptor,
    leaf_der: Vec<u8>,
}

fn make_tls(bridge_id: &str) -> anyhow::Result<Tls> {
    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CountryName, "NL");
    dn.push(DnType::OrganizationName, "Philips Hue");
    dn.push(DnType::CommonName, "root-bridge");
    ca.distinguished_name = dn;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca, ca_key);

    let leaf_key = KeyPair::generate()?;
    let mut leaf = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CountryName, "NL");
    dn.push(DnType::OrganizationName, "Philips Hue");
    dn.push(DnType::CommonName, bridge_id);
    leaf.distinguished_name = dn;
    leaf.is_ca = IsCa::ExplicitNoCa;
    leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    let leaf_cert = leaf.signed_by(&leaf_key, &issuer)?;
    let leaf_der = leaf_cert.der().to_vec();

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(
            vec![leaf_cert.der().clone(), ca_cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into()),
        )?;
    Ok(Tls {
        acceptor: TlsAcceptor::from(Arc::new(config)),
        leaf_der,
    })
}

impl FakeBridge {
    /// Serves the plain fixture on `bind` (port 0 picks a free port).
    pub async fn start(bind: SocketAddr) -> anyhow::Result<FakeBridge> {
        Self::start_with(bind, fixture()).await
    }

    /// Serves `resources` (a CLIP v2 resource list such as [`fixture`]) on `bind`.
    pub async fn start_with(bind: SocketAddr, resources: Vec<Value>) -> anyhow::Result<FakeBridge> {
        let bridge_id = resources
            .iter()
            .find(|r| r["type"] == "bridge")
            .and_then(|r| r["bridge_id"].as_str())
            .unwrap_or("001788fffe000000")
            .to_owned();
        let tls = make_tls(&bridge_id)?;
        let listener = TcpListener::bind(bind)
            .await
            .with_context(|| format!("bind the fake Hue bridge on {bind}"))?;
        let addr = listener.local_addr()?;
        let mut key_bytes = [0u8; 20];
        getrandom::getrandom(&mut key_bytes).context("draw an application key")?;
        let key = hex::encode(key_bytes);
        let state = Arc::new(Mutex::new(State::new(resources)));
        let (control, control_rx) = mpsc::channel(4);
        let task = tokio::spawn(serve(
            addr,
            listener,
            tls.acceptor,
            Arc::clone(&state),
            key.clone(),
            control_rx,
        ));
        Ok(FakeBridge {
            addr,
            cert_sha256: hex::encode(Sha256::digest(&tls.leaf_der)),
            cert_der: tls.leaf_der,
            key,
            bridge_id,
            state,
            control,
            task,
        })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// SHA-256 of the leaf certificate's DER, lowercase hex (what a client pins).
    pub fn cert_sha256(&self) -> &str {
        &self.cert_sha256
    }

    /// The leaf certificate (DER).
    pub fn cert_der(&self) -> &[u8] {
        &self.cert_der
    }

    /// The application key it accepts (random per bridge).
    pub fn application_key(&self) -> &str {
        &self.key
    }

    /// The bridge id (the leaf certificate's common name).
    pub fn bridge_id(&self) -> &str {
        &self.bridge_id
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Every light's state, in resource order.
    pub fn lights(&self) -> Vec<LightSnapshot> {
        self.state()
            .resources
            .iter()
            .filter(|r| r["type"] == "light")
            .map(|r| LightSnapshot {
                id: r["id"].as_str().unwrap_or_default().to_owned(),
                name: r["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                on: r["on"]["on"].as_bool().unwrap_or(false),
                brightness: r["dimming"]["brightness"].as_f64(),
                mirek: r["color_temperature"]["mirek"].as_u64(),
            })
            .collect()
    }

    /// One light's state by name.
    pub fn light(&self, name: &str) -> Option<LightSnapshot> {
        self.lights().into_iter().find(|l| l.name == name)
    }

    /// Every resource as it is now.
    pub fn resources(&self) -> Vec<Value> {
        self.state().resources.clone()
    }

    /// One resource by id.
    pub fn resource(&self, id: &str) -> Option<Value> {
        self.state()
            .resources
            .iter()
            .find(|r| r["id"] == id)
            .cloned()
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.state().requests.clone()
    }

    /// Forgets the requests so far.
    pub fn clear_requests(&self) {
        self.state().requests.clear();
    }

    /// Sets or clears the rate limit.
    pub fn set_rate_limit(&self, limit: Option<RateLimit>) {
        let mut s = self.state();
        s.rate = limit;
        s.recent_light.clear();
        s.recent_group.clear();
    }

    /// Switches how it answers; returns once the switch is in force (for
    /// [`Mode::RefuseConnections`]: the listener is closed and open connections are cut).
    pub async fn set_mode(&self, mode: Mode) -> anyhow::Result<()> {
        self.state().mode = mode;
        let (ack, acked) = oneshot::channel();
        self.control
            .send(Control::Listen(mode != Mode::RefuseConnections, ack))
            .await
            .map_err(|_closed| anyhow!("the fake bridge stopped"))?;
        acked
            .await
            .map_err(|_closed| anyhow!("the fake bridge stopped"))?
    }
}

async fn serve(
    addr: SocketAddr,
    listener: TcpListener,
    acceptor: TlsAcceptor,
    state: Arc<Mutex<State>>,
    key: String,
    mut control: mpsc::Receiver<Control>,
) {
    let key = Arc::new(key);
    // Bumped to cut every open connection.
    let (cut, _) = watch::channel(0u64);
    let mut listener = Some(listener);
    loop {
        let accepted = async {
            match &listener {
                // A failed accept (a client gone before it was accepted) is skipped.
                Some(l) => loop {
                    if let Ok(accepted) = l.accept().await {
                        break accepted;
                    }
                },
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            (tcp, _peer) = accepted => {
                let acceptor = acceptor.clone();
                let state = Arc::clone(&state);
                let key = Arc::clone(&key);
                let mut cut_rx = cut.subscribe();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else { return };
                    let service = hyper::service::service_fn(move |req| {
                        let state = Arc::clone(&state);
                        let key = Arc::clone(&key);
                        async move { Ok::<_, std::convert::Infallible>(handle(req, &state, &key).await) }
                    });
                    let conn = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), service);
                    tokio::select! {
                        _ = conn => {}
                        _ = cut_rx.changed() => {}
                    }
                });
            }
            command = control.recv() => match command {
                None => return,
                Some(Control::Listen(on, ack)) => {
                    let result = if on {
                        if listener.is_none() {
                            TcpListener::bind(addr)
                                .await
                                .map(|l| listener = Some(l))
                                .with_context(|| format!("rebind {addr}"))
                        } else {
                            Ok(())
                        }
                    } else {
                        listener = None;
                        cut.send_modify(|n| *n += 1);
                        Ok(())
                    };
                    let _ = ack.send(result);
                }
            },
        }
    }
}

fn envelope(status: StatusCode, errors: &[String], data: Vec<Value>) -> Response<Full<Bytes>> {
    let errors: Vec<Value> = errors.iter().map(|d| json!({"description": d})).collect();
    let body = json!({"errors": errors, "data": data});
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        // A constant status and header cannot be refused; fall back to an empty 500.
        .unwrap_or_else(|_builder_error| {
            let mut r = Response::new(Full::new(Bytes::new()));
            *r.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
            r
        })
}

async fn handle(req: Request<Incoming>, state: &Mutex<State>, key: &str) -> Response<Full<Bytes>> {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let authorized = req
        .headers()
        .get(KEY_HEADER)
        .is_some_and(|v| v.as_bytes() == key.as_bytes());
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_too_large) => Bytes::new(),
    };
    let mut s = state
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let (status, errors, data, parsed) =
        s.respond(&method, &path, authorized, &body, Instant::now());
    s.requests.push(RecordedRequest {
        method: method.to_string(),
        path,
        authorized,
        body: parsed,
        status: status.as_u16(),
        at: Instant::now(),
    });
    envelope(status, &errors, data)
}

type Answer = (StatusCode, Vec<String>, Vec<Value>, Option<Value>);

fn fail(status: StatusCode, description: &str) -> Answer {
    (status, vec![description.to_owned()], Vec::new(), None)
}

fn schema_error(keyword: &str, actual: &str, expected: &str, at: &str, def: &str) -> String {
    format!(
        "error: 'json-schema validation', keyword: '{keyword}', details: {{actual: {actual}, \
         expected: {expected}, instanceRef: '#{at}', schemaRef: 'clip-api.schema.json#/definitions/{def}'}}"
    )
}

/// Checks the fields this double models; the first problem is the bridge's 400 description.
fn validate_put(rtype: &str, body: &Value) -> Result<(), String> {
    let Some(obj) = body.as_object() else {
        return Err(schema_error("type", "non-object", "object", "", "Put"));
    };
    let allowed = match rtype {
        "light" => LIGHT_PUT,
        "grouped_light" => GROUPED_LIGHT_PUT,
        _ => SCENE_PUT,
    };
    for k in obj.keys() {
        if !allowed.contains(&k.as_str()) {
            return Err(schema_error(
                "additionalProperties",
                &format!("'{k}'"),
                "none",
                "",
                "Put",
            ));
        }
    }
    if let Some(t) = obj.get("type")
        && t != rtype
    {
        return Err(schema_error(
            "enum",
            &t.to_string(),
            &format!("'{rtype}'"),
            "/type",
            "ResourceType",
        ));
    }
    if rtype == "scene" {
        if let Some(recall) = obj.get("recall") {
            let Some(recall) = recall.as_object() else {
                return Err(schema_error(
                    "type",
                    "non-object",
                    "object",
                    "/recall",
                    "SceneRecall",
                ));
            };
            if let Some(action) = recall.get("action") {
                let ok = ["active", "dynamic_palette", "static"]
                    .iter()
                    .any(|a| action == a);
                if !ok {
                    return Err(schema_error(
                        "enum",
                        &action.to_string(),
                        "['active', 'dynamic_palette', 'static']",
                        "/recall/action",
                        "SceneRecallAction",
                    ));
                }
            }
            check_integer(
                recall.get("duration"),
                0,
                6_000_000,
                "/recall/duration",
                "Duration",
            )?;
            check_dimming(recall.get("dimming"), "/recall/dimming")?;
        }
        return Ok(());
    }
    if let Some(on) = obj.get("on") {
        match on.get("on") {
            Some(Value::Bool(_)) => {}
            Some(other) => {
                return Err(schema_error(
                    "type",
                    &other.to_string(),
                    "boolean",
                    "/on/on",
                    "On",
                ));
            }
            None => return Err(schema_error("required", "{}", "['on']", "/on", "On")),
        }
    }
    check_dimming(obj.get("dimming"), "/dimming")?;
    if let Some(ct) = obj.get("color_temperature") {
        check_integer(
            ct.get("mirek"),
            153,
            500,
            "/color_temperature/mirek",
            "ColorTemperatureMirek",
        )?;
    }
    if let Some(d) = obj.get("dynamics") {
        check_integer(
            d.get("duration"),
            0,
            6_000_000,
            "/dynamics/duration",
            "Duration",
        )?;
    }
    Ok(())
}

fn check_dimming(dimming: Option<&Value>, at: &str) -> Result<(), String> {
    let Some(dimming) = dimming else {
        return Ok(());
    };
    match dimming.get("brightness") {
        None => Err(schema_error(
            "required",
            "{}",
            "['brightness']",
            at,
            "Dimming",
        )),
        Some(b) => {
            let at = format!("{at}/brightness");
            let Some(v) = b.as_f64() else {
                return Err(schema_error(
                    "type",
                    &b.to_string(),
                    "number",
                    &at,
                    "Brightness",
                ));
            };
            if v > 100.0 {
                return Err(schema_error(
                    "maximum",
                    &b.to_string(),
                    "100",
                    &at,
                    "Brightness",
                ));
            }
            if v < 0.0 {
                return Err(schema_error(
                    "minimum",
                    &b.to_string(),
                    "0",
                    &at,
                    "Brightness",
                ));
            }
            Ok(())
        }
    }
}

fn check_integer(v: Option<&Value>, min: i64, max: i64, at: &str, def: &str) -> Result<(), String> {
    let Some(v) = v else { return Ok(()) };
    let Some(n) = v.as_i64() else {
        return Err(schema_error("type", &v.to_string(), "integer", at, def));
    };
    if n > max {
        return Err(schema_error(
            "maximum",
            &n.to_string(),
            &max.to_string(),
            at,
            def,
        ));
    }
    if n < min {
        return Err(schema_error(
            "minimum",
            &n.to_string(),
            &min.to_string(),
            at,
            def,
        ));
    }
    Ok(())
}

fn over_limit(recent: &mut VecDeque<Instant>, limit: usize, now: Instant) -> bool {
    while recent
        .front()
        .is_some_and(|t| now.duration_since(*t) >= Duration::from_secs(1))
    {
        recent.pop_front();
    }
    if recent.len() >= limit {
        return true;
    }
    recent.push_back(now);
    false
}

impl State {
    fn new(resources: Vec<Value>) -> Self {
        State {
            resources,
            requests: Vec::new(),
            mode: Mode::Normal,
            rate: None,
            recent_light: VecDeque::new(),
            recent_group: VecDeque::new(),
        }
    }

    fn position(&self, rtype: &str, id: &str) -> Option<usize> {
        self.resources
            .iter()
            .position(|r| r["type"] == rtype && r["id"] == id)
    }

    fn respond(
        &mut self,
        method: &Method,
        path: &str,
        authorized: bool,
        body: &[u8],
        now: Instant,
    ) -> Answer {
        if self.mode == Mode::Unavailable {
            return fail(StatusCode::SERVICE_UNAVAILABLE, "service unavailable");
        }
        let Some(rest) = path.strip_prefix("/clip/v2/resource") else {
            return fail(StatusCode::NOT_FOUND, "Not Found");
        };
        if !authorized {
            return fail(StatusCode::FORBIDDEN, "unauthorized user");
        }
        let segments: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
        if segments.len() > 2 || (!rest.is_empty() && !rest.starts_with('/')) {
            return fail(StatusCode::NOT_FOUND, "Not Found");
        }
        if let Some(t) = segments.first()
            && !RESOURCE_TYPES.contains(t)
        {
            return fail(StatusCode::NOT_FOUND, "Not Found");
        }
        match (method, segments.as_slice()) {
            (&Method::GET, []) => (StatusCode::OK, vec![], self.resources.clone(), None),
            (&Method::GET, [rtype]) => {
                let data = self
                    .resources
                    .iter()
                    .filter(|r| r["type"] == *rtype)
                    .cloned()
                    .collect();
                (StatusCode::OK, vec![], data, None)
            }
            (&Method::GET, [rtype, id]) => match self.position(rtype, id) {
                Some(i) => (
                    StatusCode::OK,
                    vec![],
                    vec![self.resources[i].clone()],
                    None,
                ),
                None => fail(StatusCode::NOT_FOUND, "Not Found"),
            },
            (&Method::PUT, [rtype @ ("light" | "grouped_light" | "scene"), id]) => {
                self.put(rtype, id, body, now)
            }
            _ => fail(StatusCode::METHOD_NOT_ALLOWED, "method not allowed"),
        }
    }

    fn put(&mut self, rtype: &str, id: &str, body: &[u8], now: Instant) -> Answer {
        let Some(index) = self.position(rtype, id) else {
            return fail(StatusCode::NOT_FOUND, "Not Found");
        };
        let parsed: Value = match serde_json::from_slice(body) {
            Ok(v) => v,
            Err(_syntax) => return fail(StatusCode::BAD_REQUEST, "body contains invalid JSON"),
        };
        if let Some(limit) = self.rate {
            let limited = if rtype == "light" {
                over_limit(&mut self.recent_light, limit.light_per_second, now)
            } else {
                over_limit(&mut self.recent_group, limit.group_per_second, now)
            };
            if limited {
                let mut a = fail(StatusCode::TOO_MANY_REQUESTS, "too many requests");
                a.3 = Some(parsed);
                return a;
            }
        }
        if let Err(description) = validate_put(rtype, &parsed) {
            return (
                StatusCode::BAD_REQUEST,
                vec![description],
                vec![],
                Some(parsed),
            );
        }
        match rtype {
            "light" => apply_light(&mut self.resources[index], &parsed),
            "grouped_light" => {
                let owner = self.resources[index]["owner"].clone();
                for light in self.lights_of(&owner) {
                    if let Some(i) = self.position("light", &light) {
                        apply_light(&mut self.resources[i], &parsed);
                    }
                }
            }
            _ => self.recall(index, &parsed),
        }
        self.refresh_groups();
        let data = vec![json!({"rid": id, "rtype": rtype})];
        (StatusCode::OK, vec![], data, Some(parsed))
    }

    /// The light ids of a room (child devices' light services), a zone (its lights, or its
    /// devices' lights) or the whole home.
    fn lights_of(&self, owner: &Value) -> Vec<String> {
        let rid = owner["rid"].as_str().unwrap_or_default();
        let rtype = owner["rtype"].as_str().unwrap_or_default();
        if rtype == "bridge_home" {
            return self
                .resources
                .iter()
                .filter(|r| r["type"] == "light")
                .filter_map(|r| r["id"].as_str().map(str::to_owned))
                .collect();
        }
        let Some(group) = self.position(rtype, rid).map(|i| &self.resources[i]) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for child in group["children"].as_array().into_iter().flatten() {
            let child_id = child["rid"].as_str().unwrap_or_default();
            match child["rtype"].as_str() {
                Some("light") => out.push(child_id.to_owned()),
                Some("device") => {
                    if let Some(d) = self.position("device", child_id) {
                        for s in self.resources[d]["services"]
                            .as_array()
                            .into_iter()
                            .flatten()
                        {
                            if s["rtype"] == "light"
                                && let Some(l) = s["rid"].as_str()
                            {
                                out.push(l.to_owned());
                            }
                        }
                    }
                }
                _ => {}
            }
        }
        out
    }

    fn recall(&mut self, index: usize, body: &Value) {
        let Some(recall) = body.get("recall") else {
            return;
        };
        let scene = self.resources[index].clone();
        for action in scene["actions"].as_array().into_iter().flatten() {
            if action["target"]["rtype"] != "light" {
                continue;
            }
            let target = action["target"]["rid"].as_str().unwrap_or_default();
            if let Some(i) = self.position("light", target) {
                apply_light(&mut self.resources[i], &action["action"]);
            }
        }
        let group = scene["group"].clone();
        let active = match recall.get("action").and_then(Value::as_str) {
            Some("dynamic_palette") => "dynamic_palette",
            _ => "static",
        };
        for r in &mut self.resources {
            if r["type"] == "scene" && r["group"] == group {
                let state = if r["id"] == scene["id"] {
                    active
                } else {
                    "inactive"
                };
                r["status"]["active"] = json!(state);
            }
        }
    }

    /// Recomputes every grouped light from its lights (on if any is on; brightness the mean of
    /// those on), as the bridge reports it.
    fn refresh_groups(&mut self) {
        let groups: Vec<(usize, Value)> = self
            .resources
            .iter()
            .enumerate()
            .filter(|(_, r)| r["type"] == "grouped_light")
            .map(|(i, r)| (i, r["owner"].clone()))
            .collect();
        for (i, owner) in groups {
            let lights = self.lights_of(&owner);
            let on: Vec<f64> = lights
                .iter()
                .filter_map(|id| self.position("light", id))
                .map(|l| &self.resources[l])
                .filter(|l| l["on"]["on"] == true)
                .map(|l| l["dimming"]["brightness"].as_f64().unwrap_or(0.0))
                .collect();
            if lights.is_empty() {
                continue;
            }
            let mean = if on.is_empty() {
                0.0
            } else {
                on.iter().sum::<f64>() / on.len() as f64
            };
            self.resources[i]["on"] = json!({"on": !on.is_empty()});
            self.resources[i]["dimming"] = json!({"brightness": (mean * 100.0).round() / 100.0});
        }
    }
}

fn apply_light(light: &mut Value, change: &Value) {
    if let Some(on) = change["on"]["on"].as_bool() {
        light["on"] = json!({"on": on});
    }
    if let Some(b) = change["dimming"]["brightness"].as_f64() {
        let min = light["dimming"]["min_dim_level"].as_f64().unwrap_or(0.0);
        if !light["dimming"].is_object() {
            light["dimming"] = Value::Object(Map::new());
        }
        light["dimming"]["brightness"] = json!(b.max(min));
    }
    if let Some(m) = change["color_temperature"]["mirek"].as_u64() {
        if !light["color_temperature"].is_object() {
            light["color_temperature"] = Value::Object(Map::new());
        }
        light["color_temperature"]["mirek"] = json!(m);
        light["color_temperature"]["mirek_valid"] = json!(true);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;

    /// The lights of a room: room → devices → light services.
    fn lights_in(resources: &[Value], room: &str) -> Vec<String> {
        let by_id = |id: &str| resources.iter().find(|r| r["id"] == id);
        let room = resources
            .iter()
            .find(|r| r["type"] == "room" && r["metadata"]["name"] == room)
            .unwrap();
        let mut names: Vec<String> = room["children"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|c| by_id(c["rid"].as_str().unwrap()))
            .flat_map(|d| d["services"].as_array().cloned().unwrap_or_default())
            .filter(|s| s["rtype"] == "light")
            .map(|s| {
                by_id(s["rid"].as_str().unwrap()).unwrap()["metadata"]["name"]
                    .as_str()
                    .unwrap()
                    .to_owned()
            })
            .collect();
        names.sort();
        names
    }

    #[test]
    fn the_demo_home_gives_the_living_room_the_roomless_lights_and_changes_nothing_else() {
        let dump = fixture_with_room_groups();
        let demo = demo_home();
        assert!(lights_in(&dump, LIVING_ROOM).is_empty());
        assert_eq!(
            lights_in(&demo, LIVING_ROOM),
            ["Light 1", "Light 4", "Light 5"]
        );
        for room in ["Room 1", "Room 9", "Room 10"] {
            assert_eq!(lights_in(&demo, room), lights_in(&dump, room), "{room}");
        }
        assert_eq!(demo.len(), dump.len());
        // Still a state the bridge double accepts whole.
        assert_eq!(State::new(demo.clone()).resources.len(), demo.len());
    }
}
