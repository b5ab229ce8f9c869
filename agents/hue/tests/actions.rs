//! Every Hue action against the fake bridge (`test_support::fake_hue`), built the way the
//! runtime builds the agent (`Agent::new` with settings and an identity directory holding the
//! application key), checking the bridge's state actually changed and every failure maps to its
//! code.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::print_stdout,
    clippy::print_stderr
)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agent_runtime::{ActionError, Agent as _, AgentContext, Outcome};
use hue::Hue;
use protocol::{ActionName, AgentName};
use serde_json::{Value, json};
use test_support::fake_hue::{FakeBridge, Mode, RateLimit, fixture, fixture_with_room_groups};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

const ROOM9: &str = "6fbbf09d-87b1-a7a1-e347-0c574f92ae3f";

fn local() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

struct Agent {
    hue: Hue,
    _identity: tempfile::TempDir,
}

fn agent_with(bridge: &FakeBridge, key: &str, pin: &str, proxy: Option<String>) -> Agent {
    let identity = tempfile::tempdir().unwrap();
    let key_file = identity.path().join("secrets/hue.key");
    std::fs::create_dir_all(key_file.parent().unwrap()).unwrap();
    std::fs::write(&key_file, format!("{key}\n")).unwrap();
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let settings = serde_json::from_value(json!({
        "bridge": bridge.addr().to_string(),
        "application_key_file": "secrets/hue.key",
        "bridge_cert_sha256": pin,
        "request_timeout_ms": 2000,
    }))
    .unwrap();
    let ctx = AgentContext {
        name: AgentName::new("hue").unwrap(),
        identity_dir: identity.path().to_path_buf(),
        data_dir: identity.path().to_path_buf(),
        egress_proxy: proxy,
    };
    Agent {
        hue: Hue::new(settings, &ctx).unwrap(),
        _identity: identity,
    }
}

fn agent(bridge: &FakeBridge) -> Agent {
    agent_with(bridge, bridge.application_key(), bridge.cert_sha256(), None)
}

async fn run(agent: &Agent, action: &str, args: Value) -> Result<Outcome, ActionError> {
    agent
        .hue
        .handle(&ActionName::new(action).unwrap(), &args)
        .await
}

async fn ok(agent: &Agent, action: &str, args: Value) -> Outcome {
    run(agent, action, args).await.unwrap()
}

async fn code(agent: &Agent, action: &str, args: Value) -> String {
    match run(agent, action, args).await {
        Ok(o) => format!("ok: {}", o.summary),
        Err(e) => e.to_string(),
    }
}

#[tokio::test]
async fn lists_read_lights_rooms_and_scenes() {
    let bridge = FakeBridge::start(local()).await.unwrap();
    let a = agent(&bridge);
    let all = ok(&a, "lights.list", json!({})).await;
    assert_eq!(
        all.summary,
        "8 lights, 6 on: Light 2, Light 3, Light 4, Light 6, Light 7, Light 8."
    );
    assert_eq!(all.data["total"], 8);
    let light2 = all.data["lights"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["name"] == "Light 2")
        .unwrap();
    assert_eq!(
        light2,
        &json!({"id": "f427202e-d8cd-cb0e-479f-72955a2d7cbe", "name": "Light 2", "room": "Room 9",
                "on": true, "brightness": 62.06, "mirek": 369})
    );
    let on = ok(&a, "lights.list", json!({"on_only": true})).await;
    assert_eq!(on.data["lights"].as_array().unwrap().len(), 6);

    let rooms = ok(&a, "rooms.list", json!({})).await;
    assert_eq!(rooms.summary, "11 rooms and 9 zones.");
    let room9 = rooms.data["rooms"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "Room 9")
        .unwrap();
    assert_eq!(
        (room9["lights"].clone(), room9["lights_on"].clone()),
        (json!(4), json!(4))
    );

    let scenes = ok(&a, "scenes.list", json!({})).await;
    assert_eq!(scenes.summary, "6 scenes.");
    let in_zone8 = ok(&a, "scenes.list", json!({"room": "zone 8"})).await;
    assert_eq!(in_zone8.summary, "1 scenes in zone 8.");
    assert_eq!(in_zone8.data["scenes"][0]["name"], "Scene 6");
    assert_eq!(in_zone8.data["scenes"][0]["active"], true);
    // Reads never write.
    assert!(
        bridge
            .requests()
            .iter()
            .all(|r| r.method == "GET" && r.status == 200)
    );
    assert_eq!(bridge.resources(), fixture());
}

#[tokio::test]
async fn set_actions_change_the_bridge() {
    let bridge = FakeBridge::start_with(local(), fixture_with_room_groups())
        .await
        .unwrap();
    let a = agent(&bridge);

    let o = ok(&a, "light.set", json!({"light": "light 2", "on": false})).await;
    assert_eq!(o.summary, "Light 2: off.");
    assert!(!bridge.light("Light 2").unwrap().on);
    // By id, with brightness, colour temperature and a transition.
    let o = ok(
        &a,
        "light.set",
        json!({"light": "1a49f893-e2fc-908a-9046-fa7629f1e770", "brightness": 25, "mirek": 454, "transition_ms": 800}),
    )
    .await;
    assert_eq!(
        o.summary,
        "Light 4: 25% brightness, 454 mirek, over 800 ms."
    );
    let l4 = bridge.light("Light 4").unwrap();
    assert_eq!(
        (l4.on, l4.brightness, l4.mirek),
        (true, Some(25.0), Some(454))
    );
    let put = bridge
        .requests()
        .into_iter()
        .rfind(|r| r.method == "PUT")
        .unwrap();
    assert_eq!(
        put.path,
        "/clip/v2/resource/light/1a49f893-e2fc-908a-9046-fa7629f1e770"
    );
    assert_eq!(
        put.body.unwrap(),
        json!({"dimming": {"brightness": 25.0}, "color_temperature": {"mirek": 454}, "dynamics": {"duration": 800}})
    );

    // A whole room through its grouped light.
    let o = ok(&a, "room.set", json!({"room": "ROOM 9", "on": false})).await;
    assert_eq!(o.summary, "Room 9: off.");
    assert_eq!(o.data["room"]["id"], ROOM9);
    for name in ["Light 2", "Light 3", "Light 7", "Light 8"] {
        assert!(!bridge.light(name).unwrap().on, "{name}");
    }
    assert!(
        bridge.light("Light 6").unwrap().on,
        "another room's light is untouched"
    );
    let still_on = ok(&a, "lights.list", json!({"on_only": true})).await;
    assert_eq!(still_on.summary, "2 lights are on: Light 4, Light 6.");

    // A scene.
    let o = ok(
        &a,
        "scene.activate",
        json!({"scene": "scene 6", "transition_ms": 400}),
    )
    .await;
    assert_eq!(o.summary, "Scene Scene 6 activated in Zone 8.");
    for name in ["Light 2", "Light 7"] {
        let l = bridge.light(name).unwrap();
        assert_eq!(
            (l.on, l.brightness, l.mirek),
            (true, Some(30.0), Some(370)),
            "{name}"
        );
    }
    let recall = bridge
        .requests()
        .into_iter()
        .rfind(|r| r.method == "PUT")
        .unwrap();
    assert_eq!(
        recall.body.unwrap(),
        json!({"recall": {"action": "active", "duration": 400}})
    );
    assert!(
        bridge
            .requests()
            .iter()
            .all(|r| r.authorized && r.status == 200)
    );
}

#[tokio::test]
async fn names_that_match_nothing_or_several_fail_without_a_write() {
    let mut resources = fixture_with_room_groups();
    for r in &mut resources {
        // Two lights and two scenes (in different zones) share a name.
        if r["id"] == "24d60506-22e8-f564-cff5-c7b702b62504" {
            r["metadata"]["name"] = json!("Light 2");
        }
        if r["id"] == "9e3b5154-714f-c5f8-2ade-d25e72bb4461" {
            r["metadata"]["name"] = json!("Scene 6");
        }
    }
    let bridge = FakeBridge::start_with(local(), resources).await.unwrap();
    let a = agent(&bridge);
    let cases = [
        ("light.set", json!({"light": "Light 2", "on": false})),
        ("light.set", json!({"light": "Porch", "on": false})),
        (
            "light.set",
            json!({"light": "Light 1", "transition_ms": 10}),
        ),
        ("room.set", json!({"room": "Attic", "on": false})),
        ("room.set", json!({"room": "Zone 1", "on": false})),
        ("scene.activate", json!({"scene": "Scene 6"})),
        (
            "scene.activate",
            json!({"scene": "Scene 6", "room": "Zone 8"}),
        ),
        (
            "scene.activate",
            json!({"scene": "Scene 6", "room": "Cellar"}),
        ),
        ("scenes.list", json!({"room": "Cellar"})),
    ];
    let mut out = Vec::new();
    for (action, args) in cases {
        out.push(format!("{action}: {}", code(&a, action, args).await));
    }
    expect_test::expect![[r#"
        light.set: ambiguous_name: 2 lights are named "Light 2": Light 2 (f427202e-d8cd-cb0e-479f-72955a2d7cbe), Light 2 (24d60506-22e8-f564-cff5-c7b702b62504); name one by its id
        light.set: not_found: no light is named "Porch"; known: Light 1, Light 2, Light 4, Light 5, Light 6, Light 7, Light 8
        light.set: nothing_to_change: give at least one of on, brightness or mirek
        room.set: not_found: no room is named "Attic"; known: Room 1, Room 10, Room 11, Room 2, Room 3, Room 4, Room 5, Room 6, Room 7, Room 8, Room 9, Zone 1 and 8 more
        room.set: ok: Zone 1: off.
        scene.activate: ambiguous_name: 2 scenes are named "Scene 6": Scene 6 in Zone 6 (9e3b5154-714f-c5f8-2ade-d25e72bb4461), Scene 6 in Zone 8 (f0e31a44-4efe-41d2-e9c9-80f1ca6355c5); name one by its id
        scene.activate: ok: Scene Scene 6 activated in Zone 8.
        scene.activate: not_found: no room or zone is named "Cellar"; known: Room 1, Room 10, Room 11, Room 2, Room 3, Room 4, Room 5, Room 6, Room 7, Room 8, Room 9, Zone 1 and 8 more
        scenes.list: not_found: no room or zone is named "Cellar"; known: Room 1, Room 10, Room 11, Room 2, Room 3, Room 4, Room 5, Room 6, Room 7, Room 8, Room 9, Zone 1 and 8 more"#]]
    .assert_eq(&out.join("\n"));
    let puts: Vec<String> = bridge
        .requests()
        .into_iter()
        .filter(|r| r.method == "PUT")
        .map(|r| r.path)
        .collect();
    assert_eq!(
        puts.len(),
        2,
        "only the two resolved changes were sent: {puts:?}"
    );
}

#[tokio::test]
async fn a_room_without_a_grouped_light_is_refused() {
    // The plain fixture: Room 9 has lights but (in this dump) no grouped_light service.
    let bridge = FakeBridge::start(local()).await.unwrap();
    let a = agent(&bridge);
    let e = code(&a, "room.set", json!({"room": "Room 9", "on": false})).await;
    assert_eq!(
        e,
        "no_grouped_light: Room 9 has no lights to control as a group"
    );
}

#[tokio::test]
async fn a_wrong_application_key_is_bridge_unauthorized() {
    let bridge = FakeBridge::start(local()).await.unwrap();
    let a = agent_with(&bridge, "wrong-key", bridge.cert_sha256(), None);
    for (action, args) in [
        ("lights.list", json!({})),
        ("light.set", json!({"light": "Light 2", "on": false})),
    ] {
        let e = run(&a, action, args).await.unwrap_err();
        assert_eq!(e.code().as_str(), "bridge_unauthorized", "{action}");
        assert!(
            !e.message().contains("wrong-key"),
            "the key is never echoed"
        );
    }
    assert!(
        bridge
            .requests()
            .iter()
            .all(|r| !r.authorized && r.status == 403)
    );
    assert_eq!(bridge.resources(), fixture());
}

#[tokio::test]
async fn another_certificate_is_a_pin_mismatch_and_nothing_is_sent() {
    let bridge = FakeBridge::start(local()).await.unwrap();
    let a = agent_with(&bridge, bridge.application_key(), &"00".repeat(32), None);
    let e = run(&a, "light.set", json!({"light": "Light 2", "on": false}))
        .await
        .unwrap_err();
    assert_eq!(e.code().as_str(), "bridge_tls_pin_mismatch");
    assert!(bridge.requests().is_empty(), "no request got through");
}

#[tokio::test]
async fn a_bridge_that_is_down_unavailable_or_busy_fails_with_its_code() {
    let bridge = FakeBridge::start_with(local(), fixture_with_room_groups())
        .await
        .unwrap();
    let a = agent(&bridge);
    // A pooled connection exists before the bridge goes down.
    ok(&a, "lights.list", json!({})).await;

    bridge.set_mode(Mode::RefuseConnections).await.unwrap();
    assert_eq!(
        code(&a, "lights.list", json!({})).await,
        "bridge_unreachable: could not connect to the Hue bridge"
    );
    bridge.set_mode(Mode::Unavailable).await.unwrap();
    assert_eq!(
        code(&a, "lights.list", json!({})).await,
        "bridge_error: the bridge answered 503: service unavailable"
    );
    bridge.set_mode(Mode::Normal).await.unwrap();
    ok(&a, "lights.list", json!({})).await;

    // 429 when over the bridge's rate.
    bridge.set_rate_limit(Some(RateLimit {
        light_per_second: 1,
        group_per_second: 1,
    }));
    ok(&a, "light.set", json!({"light": "Light 2", "on": false})).await;
    assert_eq!(
        code(&a, "light.set", json!({"light": "Light 2", "on": true})).await,
        "bridge_rate_limited: the bridge is over its command rate; try again in a moment"
    );
    assert!(
        !bridge.light("Light 2").unwrap().on,
        "the refused change did not apply"
    );
}

#[tokio::test]
async fn commands_are_paced_under_the_bridge_limits() {
    let bridge = FakeBridge::start_with(local(), fixture_with_room_groups())
        .await
        .unwrap();
    // The documented limits: about 10 light and 1 group command per second.
    bridge.set_rate_limit(Some(RateLimit {
        light_per_second: 10,
        group_per_second: 1,
    }));
    let a = Arc::new(agent(&bridge));
    let started = tokio::time::Instant::now();
    let mut tasks = Vec::new();
    for (i, room) in ["Room 9", "Room 8", "Zone 8"].into_iter().enumerate() {
        let a = Arc::clone(&a);
        tasks.push(tokio::spawn(async move {
            run(&a, "room.set", json!({"room": room, "on": i % 2 == 0})).await
        }));
    }
    for i in 0..12 {
        let a = Arc::clone(&a);
        tasks.push(tokio::spawn(async move {
            let light = format!("Light {}", 1 + i % 8);
            run(
                &a,
                "light.set",
                json!({"light": light, "brightness": 10 + i}),
            )
            .await
        }));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    // Three group commands a second apart take at least two seconds.
    assert!(
        started.elapsed() >= Duration::from_millis(1900),
        "{:?}",
        started.elapsed()
    );
    assert!(bridge.requests().iter().all(|r| r.status == 200), "no 429");
}

/// A minimal CONNECT proxy that records the destinations it was asked for.
async fn connect_proxy() -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    let listener = tokio::net::TcpListener::bind(local()).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&seen);
    tokio::spawn(async move {
        loop {
            let (mut client, _) = listener.accept().await.unwrap();
            let log = Arc::clone(&log);
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    if client.read(&mut byte).await.unwrap() == 0 {
                        return;
                    }
                    head.push(byte[0]);
                }
                let head = String::from_utf8(head).unwrap();
                let target = head
                    .strip_prefix("CONNECT ")
                    .and_then(|r| r.split_whitespace().next())
                    .unwrap()
                    .to_owned();
                log.lock().unwrap().push(target.clone());
                let mut upstream = tokio::net::TcpStream::connect(&target).await.unwrap();
                client
                    .write_all(b"HTTP/1.1 200 Connection Established\r\n\r\n")
                    .await
                    .unwrap();
                let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
            });
        }
    });
    (addr, seen)
}

#[tokio::test]
async fn with_an_egress_proxy_every_request_goes_through_it() {
    let bridge = FakeBridge::start(local()).await.unwrap();
    let (proxy, seen) = connect_proxy().await;
    let a = agent_with(
        &bridge,
        bridge.application_key(),
        bridge.cert_sha256(),
        Some(format!("http://{proxy}")),
    );
    ok(&a, "lights.list", json!({})).await;
    let seen = seen.lock().unwrap().clone();
    assert!(!seen.is_empty());
    assert!(
        seen.iter().all(|t| *t == bridge.addr().to_string()),
        "{seen:?}"
    );
    // The TLS pin still applies end to end through the tunnel.
    assert_eq!(bridge.requests().len(), 2);
}
