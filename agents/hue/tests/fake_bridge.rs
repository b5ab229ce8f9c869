//! The fake Hue bridge (`test_support::fake_hue`) against the real fixture and the CLIP v2
//! shapes of the openhue spec, through raw HTTPS requests with the agent's pinned TLS
//! configuration (so these tests also prove the pin works against a bridge-like certificate
//! chain: a private root and a leaf named after the bridge id, reached by IP address).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::print_stdout,
    clippy::print_stderr
)]

use std::net::SocketAddr;

use serde_json::{Value, json};
use test_support::fake_hue::{FakeBridge, KEY_HEADER, fixture, fixture_with_room_groups};

fn local() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

fn client(bridge: &FakeBridge) -> reqwest::Client {
    let pin = hue::tls::parse_pin(bridge.cert_sha256()).unwrap();
    reqwest::Client::builder()
        .tls_backend_preconfigured(hue::tls::client_config(pin).unwrap())
        .no_proxy()
        .build()
        .unwrap()
}

struct Answer {
    status: u16,
    body: Value,
}

async fn call(
    bridge: &FakeBridge,
    method: reqwest::Method,
    path: &str,
    key: Option<&str>,
    body: Option<&str>,
) -> Answer {
    let mut req = client(bridge).request(method, format!("https://{}{path}", bridge.addr()));
    if let Some(k) = key {
        req = req.header(KEY_HEADER, k);
    }
    if let Some(b) = body {
        req = req.body(b.to_owned());
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    assert_eq!(resp.headers()["content-type"], "application/json", "{path}");
    let body: Value = serde_json::from_slice(&resp.bytes().await.unwrap()).unwrap();
    Answer { status, body }
}

async fn get(bridge: &FakeBridge, path: &str) -> Answer {
    call(
        bridge,
        reqwest::Method::GET,
        path,
        Some(bridge.application_key()),
        None,
    )
    .await
}

async fn put(bridge: &FakeBridge, path: &str, body: &str) -> Answer {
    call(
        bridge,
        reqwest::Method::PUT,
        path,
        Some(bridge.application_key()),
        Some(body),
    )
    .await
}

/// The `ApiResponse` / `ErrorResponse` shapes of the spec: `errors` is a list of objects with a
/// string `description`, `data` a list of objects; an error answer carries at least one error
/// and no data.
fn assert_envelope(a: &Answer, context: &str) {
    let errors = a.body["errors"]
        .as_array()
        .unwrap_or_else(|| panic!("{context}: errors"));
    let data = a.body["data"]
        .as_array()
        .unwrap_or_else(|| panic!("{context}: data"));
    assert_eq!(
        a.body.as_object().unwrap().len(),
        2,
        "{context}: only errors and data"
    );
    for e in errors {
        assert_eq!(e.as_object().unwrap().len(), 1, "{context}");
        assert!(e["description"].is_string(), "{context}");
    }
    assert!(data.iter().all(Value::is_object), "{context}");
    if (200..300).contains(&a.status) {
        assert!(errors.is_empty(), "{context}");
    } else {
        assert!(!errors.is_empty() && data.is_empty(), "{context}");
    }
}

fn description(a: &Answer) -> String {
    format!(
        "{} {}",
        a.status,
        a.body["errors"][0]["description"].as_str().unwrap()
    )
}

#[tokio::test]
async fn get_payloads_equal_the_fixture() {
    let bridge = FakeBridge::start(local()).await.unwrap();
    let all = get(&bridge, "/clip/v2/resource").await;
    assert_eq!(all.status, 200);
    assert_envelope(&all, "all");
    assert_eq!(all.body["data"], Value::Array(fixture()));

    for rtype in [
        "light",
        "room",
        "zone",
        "scene",
        "grouped_light",
        "device",
        "bridge",
    ] {
        let a = get(&bridge, &format!("/clip/v2/resource/{rtype}")).await;
        assert_eq!(a.status, 200, "{rtype}");
        assert_envelope(&a, rtype);
        let expected: Vec<Value> = fixture()
            .into_iter()
            .filter(|r| r["type"] == rtype)
            .collect();
        assert!(!expected.is_empty(), "{rtype}");
        assert_eq!(a.body["data"], Value::Array(expected), "{rtype}");
    }
    // A known type without resources is an empty list, not an error.
    let a = get(&bridge, "/clip/v2/resource/bell_button").await;
    assert_eq!((a.status, a.body["data"].clone()), (200, json!([])));

    for resource in fixture()
        .iter()
        .filter(|r| r["type"] == "light" || r["type"] == "scene")
    {
        let path = format!(
            "/clip/v2/resource/{}/{}",
            resource["type"].as_str().unwrap(),
            resource["id"].as_str().unwrap()
        );
        let a = get(&bridge, &path).await;
        assert_eq!(a.status, 200, "{path}");
        assert_eq!(a.body["data"], json!([resource]), "{path}");
    }
    assert!(
        bridge
            .requests()
            .iter()
            .all(|r| r.authorized && r.status == 200)
    );
}

#[tokio::test]
async fn errors_have_the_bridge_shapes() {
    let bridge = FakeBridge::start(local()).await.unwrap();
    let light = "/clip/v2/resource/light/f427202e-d8cd-cb0e-479f-72955a2d7cbe";
    let g = reqwest::Method::GET;
    let p = reqwest::Method::PUT;
    let key = Some(bridge.application_key());
    let cases: Vec<(&str, Answer)> = vec![
        (
            "no key",
            call(&bridge, g.clone(), "/clip/v2/resource/light", None, None).await,
        ),
        (
            "wrong key",
            call(
                &bridge,
                g.clone(),
                "/clip/v2/resource/light",
                Some("not-the-key"),
                None,
            )
            .await,
        ),
        (
            "wrong key on a PUT",
            call(
                &bridge,
                p.clone(),
                light,
                Some("not-the-key"),
                Some(r#"{"on":{"on":false}}"#),
            )
            .await,
        ),
        (
            "unknown id",
            get(
                &bridge,
                "/clip/v2/resource/light/00000000-0000-0000-0000-000000000000",
            )
            .await,
        ),
        (
            "id of another type",
            get(
                &bridge,
                "/clip/v2/resource/room/f427202e-d8cd-cb0e-479f-72955a2d7cbe",
            )
            .await,
        ),
        ("unknown type", get(&bridge, "/clip/v2/resource/lamp").await),
        (
            "too deep",
            get(&bridge, "/clip/v2/resource/light/a/b").await,
        ),
        ("not the API", get(&bridge, "/api/config").await),
        (
            "brightness 150",
            put(&bridge, light, r#"{"dimming":{"brightness":150}}"#).await,
        ),
        (
            "mirek 100",
            put(&bridge, light, r#"{"color_temperature":{"mirek":100}}"#).await,
        ),
        (
            "on is a string",
            put(&bridge, light, r#"{"on":{"on":"yes"}}"#).await,
        ),
        (
            "dimming without brightness",
            put(&bridge, light, r#"{"dimming":{}}"#).await,
        ),
        (
            "unknown property",
            put(&bridge, light, r#"{"colour":"red"}"#).await,
        ),
        ("not JSON", put(&bridge, light, "{on: true").await),
        (
            "bad recall",
            put(
                &bridge,
                "/clip/v2/resource/scene/ad2b2008-3b09-8917-f070-50009b7dbe4d",
                r#"{"recall":{"action":"go"}}"#,
            )
            .await,
        ),
        (
            "PUT on an unknown id",
            put(
                &bridge,
                "/clip/v2/resource/light/00000000-0000-0000-0000-000000000000",
                r#"{"on":{"on":true}}"#,
            )
            .await,
        ),
        (
            "PUT on a list",
            put(&bridge, "/clip/v2/resource/light", r#"{"on":{"on":true}}"#).await,
        ),
        (
            "PUT on a type not modelled",
            put(
                &bridge,
                "/clip/v2/resource/device/6c3131a4-de8b-7105-6c11-b39e79f481ce",
                "{}",
            )
            .await,
        ),
        (
            "POST",
            call(
                &bridge,
                reqwest::Method::POST,
                "/clip/v2/resource/scene",
                key,
                Some("{}"),
            )
            .await,
        ),
        (
            "DELETE",
            call(&bridge, reqwest::Method::DELETE, light, key, None).await,
        ),
    ];
    let mut out = Vec::new();
    for (name, answer) in &cases {
        assert_envelope(answer, name);
        out.push(format!("{name}: {}", description(answer)));
    }
    expect_test::expect![[r#"
        no key: 403 unauthorized user
        wrong key: 403 unauthorized user
        wrong key on a PUT: 403 unauthorized user
        unknown id: 404 Not Found
        id of another type: 404 Not Found
        unknown type: 404 Not Found
        too deep: 404 Not Found
        not the API: 404 Not Found
        brightness 150: 400 error: 'json-schema validation', keyword: 'maximum', details: {actual: 150, expected: 100, instanceRef: '#/dimming/brightness', schemaRef: 'clip-api.schema.json#/definitions/Brightness'}
        mirek 100: 400 error: 'json-schema validation', keyword: 'minimum', details: {actual: 100, expected: 153, instanceRef: '#/color_temperature/mirek', schemaRef: 'clip-api.schema.json#/definitions/ColorTemperatureMirek'}
        on is a string: 400 error: 'json-schema validation', keyword: 'type', details: {actual: "yes", expected: boolean, instanceRef: '#/on/on', schemaRef: 'clip-api.schema.json#/definitions/On'}
        dimming without brightness: 400 error: 'json-schema validation', keyword: 'required', details: {actual: {}, expected: ['brightness'], instanceRef: '#/dimming', schemaRef: 'clip-api.schema.json#/definitions/Dimming'}
        unknown property: 400 error: 'json-schema validation', keyword: 'additionalProperties', details: {actual: 'colour', expected: none, instanceRef: '#', schemaRef: 'clip-api.schema.json#/definitions/Put'}
        not JSON: 400 body contains invalid JSON
        bad recall: 400 error: 'json-schema validation', keyword: 'enum', details: {actual: "go", expected: ['active', 'dynamic_palette', 'static'], instanceRef: '#/recall/action', schemaRef: 'clip-api.schema.json#/definitions/SceneRecallAction'}
        PUT on an unknown id: 404 Not Found
        PUT on a list: 405 method not allowed
        PUT on a type not modelled: 405 method not allowed
        POST: 405 method not allowed
        DELETE: 405 method not allowed"#]]
    .assert_eq(&out.join("\n"));
    // Nothing changed.
    assert_eq!(bridge.resources(), fixture());
    let log = bridge.requests();
    assert!(!log[0].authorized && !log[1].authorized && log[3].authorized);
}

#[tokio::test]
async fn puts_change_lights_groups_and_scenes_like_a_bridge() {
    let bridge = FakeBridge::start_with(local(), fixture_with_room_groups())
        .await
        .unwrap();
    // One light.
    let light2 = "f427202e-d8cd-cb0e-479f-72955a2d7cbe";
    let a = put(
        &bridge,
        &format!("/clip/v2/resource/light/{light2}"),
        r#"{"on":{"on":false},"dimming":{"brightness":40},"color_temperature":{"mirek":300},"dynamics":{"duration":500}}"#,
    )
    .await;
    assert_envelope(&a, "light");
    assert_eq!(a.body["data"], json!([{"rid": light2, "rtype": "light"}]));
    let l = bridge.light("Light 2").unwrap();
    assert_eq!(
        (l.on, l.brightness, l.mirek),
        (false, Some(40.0), Some(300))
    );
    // A brightness under the light's minimum dim level becomes that level.
    put(
        &bridge,
        &format!("/clip/v2/resource/light/{light2}"),
        r#"{"dimming":{"brightness":0}}"#,
    )
    .await;
    assert_eq!(bridge.light("Light 2").unwrap().brightness, Some(0.2));

    // Room 9 (devices 17, 9, 1, 26 and one without a light) through its grouped light.
    let room9 = bridge
        .resource("6fbbf09d-87b1-a7a1-e347-0c574f92ae3f")
        .unwrap();
    let grouped = room9["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["rtype"] == "grouped_light")
        .unwrap()["rid"]
        .as_str()
        .unwrap()
        .to_owned();
    let a = put(
        &bridge,
        &format!("/clip/v2/resource/grouped_light/{grouped}"),
        r#"{"on":{"on":true},"dimming":{"brightness":55}}"#,
    )
    .await;
    assert_eq!(a.status, 200);
    let mut in_room: Vec<(String, bool, Option<f64>)> = bridge
        .lights()
        .into_iter()
        .filter(|l| ["Light 2", "Light 3", "Light 7", "Light 8"].contains(&l.name.as_str()))
        .map(|l| (l.name, l.on, l.brightness))
        .collect();
    in_room.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        in_room,
        [
            ("Light 2".to_owned(), true, Some(55.0)),
            ("Light 3".to_owned(), true, Some(55.0)),
            ("Light 7".to_owned(), true, Some(55.0)),
            ("Light 8".to_owned(), true, Some(55.0)),
        ]
    );
    // Other rooms' lights did not change.
    assert_eq!(bridge.light("Light 6").unwrap().brightness, Some(100.0));
    let group = bridge.resource(&grouped).unwrap();
    assert_eq!(
        (
            group["on"]["on"].clone(),
            group["dimming"]["brightness"].clone()
        ),
        (json!(true), json!(55.0))
    );

    // Scene 6 (Zone 8: lights 7 and 2 at 30 %, 370 mirek).
    let scene6 = "f0e31a44-4efe-41d2-e9c9-80f1ca6355c5";
    let a = put(
        &bridge,
        &format!("/clip/v2/resource/scene/{scene6}"),
        r#"{"recall":{"action":"active","duration":1000}}"#,
    )
    .await;
    assert_eq!(a.body["data"], json!([{"rid": scene6, "rtype": "scene"}]));
    for name in ["Light 2", "Light 7"] {
        let l = bridge.light(name).unwrap();
        assert_eq!(
            (l.on, l.brightness, l.mirek),
            (true, Some(30.0), Some(370)),
            "{name}"
        );
    }
    assert_eq!(
        bridge.resource(scene6).unwrap()["status"]["active"],
        "static"
    );
    // The home's grouped light follows every light.
    let home = bridge
        .resource("c3793415-1f6a-b694-2b5f-12ec5f37d265")
        .unwrap();
    assert_eq!(home["on"]["on"], true);
}

#[tokio::test]
async fn the_pin_refuses_any_other_certificate() {
    let bridge = FakeBridge::start(local()).await.unwrap();
    let other = FakeBridge::start(local()).await.unwrap();
    // Pinned to `other`, talking to `bridge`.
    let pin = hue::tls::parse_pin(other.cert_sha256()).unwrap();
    let client = reqwest::Client::builder()
        .tls_backend_preconfigured(hue::tls::client_config(pin).unwrap())
        .no_proxy()
        .build()
        .unwrap();
    let e = client
        .get(format!("https://{}/clip/v2/resource", bridge.addr()))
        .header(KEY_HEADER, bridge.application_key())
        .send()
        .await
        .unwrap_err();
    assert!(hue::tls::is_pin_mismatch(&e), "{e:?}");
    assert!(
        bridge.requests().is_empty(),
        "no request reached the bridge"
    );
    assert_ne!(bridge.cert_sha256(), other.cert_sha256());
    // The leaf is named after the fixture's bridge id, as on a real bridge.
    let id = fixture()
        .into_iter()
        .find(|r| r["type"] == "bridge")
        .unwrap()["bridge_id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(bridge.bridge_id(), id);
}
