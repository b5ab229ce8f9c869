//! The proxy on real sockets, reporting to a real nats-server: tunnels, refusals and their
//! audit events, bad request heads, per-agent limits, reload and shutdown.
//!
//! Agents are told apart by source address: `hue` is 127.0.0.0/28 (clients connect from
//! 127.0.0.2), `weather` is 127.0.0.16/28 (from 127.0.0.17); 127.0.0.100 is in no subnet.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::print_stdout,
    clippy::print_stderr
)]

mod common;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;
use egress_proxy::{ProxyOptions, ReloadError, SystemResolver};
use protocol::AgentName;
use test_support::NatsServer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const HUE: &str = "127.0.0.2";
const WEATHER: &str = "127.0.0.17";
const STRANGER: &str = "127.0.0.100";

fn agents(hue_allow: &[String], weather_allow: &[String]) -> String {
    let list = |a: &[String]| serde_json::to_string(a).unwrap();
    format!(
        r#"[{{"name":"hue","subnet":"127.0.0.0/28","allow":{}}},{{"name":"weather","subnet":"127.0.0.16/28","allow":{}}}]"#,
        list(hue_allow),
        list(weather_allow)
    )
}

fn hue() -> AgentName {
    AgentName::new("hue").unwrap()
}

#[tokio::test]
async fn a_tunnel_carries_bytes_both_ways() {
    let nats = NatsServer::start(&[]).await.unwrap();
    let up = upstream().await;
    let target = up.addr.to_string();
    let config = config(&nats, &agents(std::slice::from_ref(&target), &[]), 16);
    let running = run_proxy(
        &config,
        Arc::new(SystemResolver),
        emitter(&nats).await,
        ProxyOptions::default(),
    )
    .await;

    // A plain tunnel: the upstream speaks first, then everything sent comes back.
    let mut tunnel = open_tunnel(HUE, running.addr, &target).await;
    assert_eq!(running.proxy.open_connections(&hue()), 1);
    let big: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    echo(&mut tunnel, &big).await;

    // Bytes sent right behind the request, before the 200 (as a TLS client may), go through.
    let mut eager = connect_from(HUE, running.addr).await;
    eager
        .write_all(format!("CONNECT {target} HTTP/1.1\r\n\r\nearly bytes").as_bytes())
        .await
        .unwrap();
    let head = read_response_head(&mut eager).await;
    assert_eq!(head, "HTTP/1.1 200 Connection Established\r\n\r\n");
    expect_banner(&mut eager).await;
    let mut back = [0u8; 11];
    eager.read_exact(&mut back).await.unwrap();
    assert_eq!(&back, b"early bytes");
    assert_eq!(running.proxy.open_connections(&hue()), 2);

    // Closing the client closes the tunnel and gives the slot back.
    drop(tunnel);
    drop(eager);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while running.proxy.open_connections(&hue()) > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "slots not given back"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(up.accepted.load(Ordering::SeqCst), 2);
    running.stop(Duration::from_secs(5)).await;
    // Nothing was refused, so nothing was reported.
    assert_eq!(nats.stream_state("AUDIT").await.unwrap().messages, 0);
}

#[tokio::test]
async fn refusals_are_403_with_their_code_and_reach_the_audit_stream() {
    let nats = NatsServer::start(&[]).await.unwrap();
    let up = upstream().await;
    let port = up.addr.port();
    let dead = closed_port().await;
    let hue_allow = [
        format!("127.0.0.1:{port}"),
        format!("127.0.0.1:{dead}"),
        format!("rebind.example.com:{port}"),
        format!("mixed.example.com:{port}"),
        format!("nowhere.example.com:{port}"),
    ];
    let weather_allow = [format!("api.example.com:{port}")];
    let config = config(&nats, &agents(&hue_allow, &weather_allow), 16);
    // rebind: public on a first lookup, loopback afterwards; the proxy must look up once and
    // judge what it got. mixed: one public and one private address.
    let resolver = Arc::new(
        ScriptedResolver::default()
            .answer("rebind.example.com", &[&["127.0.0.1"], &["93.184.215.14"]])
            .answer("mixed.example.com", &[&["93.184.215.14", "10.1.2.3"]])
            .answer("api.example.com", &[&["93.184.215.14"]]),
    );
    let running = run_proxy(
        &config,
        resolver.clone(),
        emitter(&nats).await,
        ProxyOptions::default(),
    )
    .await;

    let cases: Vec<(&str, String, &str)> = vec![
        // Not on hue's list: another port, a private address, another agent's destination.
        (
            HUE,
            format!("127.0.0.1:{}", port ^ 1),
            "egress_not_allowlisted",
        ),
        (HUE, "192.168.1.1:443".to_owned(), "egress_not_allowlisted"),
        (
            HUE,
            format!("api.example.com:{port}"),
            "egress_not_allowlisted",
        ),
        // Other spellings of allowed destinations.
        (HUE, format!("[127.0.0.1]:{port}"), "egress_bad_request"),
        (
            HUE,
            format!("[::ffff:127.0.0.1]:{port}"),
            "egress_not_allowlisted",
        ),
        (HUE, format!("2130706433:{port}"), "egress_bad_request"),
        (HUE, format!("0x7f.1:{port}"), "egress_bad_request"),
        (HUE, format!("127.1:{port}"), "egress_bad_request"),
        (HUE, format!("user@127.0.0.1:{port}"), "egress_bad_request"),
        (HUE, format!("127.0.0.1:0{port}"), "egress_bad_request"),
        (
            HUE,
            format!("[rebind.example.com]:{port}"),
            "egress_bad_request",
        ),
        (
            HUE,
            format!("REBIND.example.com:{port}"),
            "egress_bad_request",
        ),
        (
            HUE,
            format!("rebind.example.com.:{port}"),
            "egress_bad_request",
        ),
        // Allowed names that resolve badly.
        (
            HUE,
            format!("rebind.example.com:{port}"),
            "egress_private_address",
        ),
        (
            HUE,
            format!("mixed.example.com:{port}"),
            "egress_private_address",
        ),
        (
            HUE,
            format!("nowhere.example.com:{port}"),
            "egress_resolve_failed",
        ),
        // An allowed literal nobody listens on.
        (HUE, format!("127.0.0.1:{dead}"), "egress_connect_failed"),
        // A client in no agent's subnet, even asking for an allowed destination.
        (
            STRANGER,
            format!("127.0.0.1:{port}"),
            "egress_unknown_client",
        ),
    ];
    for (from, target, code) in &cases {
        let request = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n");
        let (status, body) = refused(from, running.addr, request.as_bytes()).await;
        assert_eq!(
            (status, body.as_str()),
            (403, format!("{code}\n").as_str()),
            "{target} from {from}"
        );
    }
    // The rebinding name was looked up exactly once (and judged on that answer).
    assert_eq!(
        resolver
            .calls()
            .iter()
            .filter(|c| *c == "rebind.example.com")
            .count(),
        1
    );
    // Nothing reached the upstream.
    assert_eq!(up.accepted.load(Ordering::SeqCst), 0);
    // The allowed destination still works.
    let ok = open_tunnel(HUE, running.addr, &format!("127.0.0.1:{port}")).await;
    drop(ok);

    running.stop(Duration::from_secs(10)).await;
    let events = audit_events(&nats, cases.len() as u64).await;
    let seen: Vec<String> = events.iter().map(|(s, e)| describe(s, e)).collect();
    let expected: Vec<String> = cases
        .iter()
        .map(|(from, target, code)| {
            let (host, port) = egress_proxy::target::asked(target);
            let agent = match *from {
                HUE => "hue",
                WEATHER => "weather",
                _ => "-",
            };
            format!("audit.egress from egress agent={agent} source={from} {host}:{port} {code}")
        })
        .collect();
    assert_eq!(seen, expected);
    // Each event carries the correlation id the client was shown: at least they are distinct.
    let mut ids: Vec<_> = events.iter().map(|(_, e)| e.correlation_id).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), cases.len());
}

#[tokio::test]
async fn malformed_oversized_and_slow_heads_are_refused() {
    let nats = NatsServer::start(&[]).await.unwrap();
    let up = upstream().await;
    let target = up.addr.to_string();
    let config = config(&nats, &agents(std::slice::from_ref(&target), &[]), 16);
    let options = ProxyOptions {
        head_timeout: Duration::from_millis(500),
        ..ProxyOptions::default()
    };
    let running = run_proxy(
        &config,
        Arc::new(SystemResolver),
        emitter(&nats).await,
        options,
    )
    .await;

    // Not CONNECT: 405 with Allow.
    let mut get = connect_from(HUE, running.addr).await;
    get.write_all(format!("GET http://{target}/ HTTP/1.1\r\nHost: {target}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut all = Vec::new();
    get.read_to_end(&mut all).await.unwrap();
    let text = String::from_utf8(all).unwrap();
    assert!(
        text.starts_with("HTTP/1.1 405 Method Not Allowed\r\n"),
        "{text}"
    );
    assert!(text.contains("\r\nAllow: CONNECT\r\n"), "{text}");
    assert!(text.ends_with("\r\n\r\negress_bad_request\n"), "{text}");

    let bad: Vec<(&str, Vec<u8>)> = vec![
        (
            "HTTP/1.0",
            format!("CONNECT {target} HTTP/1.0\r\n\r\n").into_bytes(),
        ),
        (
            "bare LF",
            format!("CONNECT {target} HTTP/1.1\n\n").into_bytes(),
        ),
        (
            "TLS hello",
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n".to_vec(),
        ),
        ("binary junk", (0..=255u8).cycle().take(3000).collect()),
        (
            "a body",
            format!("CONNECT {target} HTTP/1.1\r\nContent-Length: 4\r\n\r\nbody").into_bytes(),
        ),
        // 9 KiB of headers: over the 8 KiB limit (the proxy stops reading at 8 KiB).
        (
            "oversized",
            format!(
                "CONNECT {target} HTTP/1.1\r\n{}\r\n",
                "X-Pad: aaaaaaaaaaaaaaaa\r\n".repeat(400)
            )
            .into_bytes(),
        ),
    ];
    for (what, request) in &bad {
        let (status, body) = refused(HUE, running.addr, request).await;
        assert_eq!(
            (status, body.as_str()),
            (403, "egress_bad_request\n"),
            "{what}"
        );
    }

    // Slow: half a head, then silence; the answer comes after the head timeout.
    let mut slow = connect_from(HUE, running.addr).await;
    slow.write_all(format!("CONNECT {target} HTTP/1.1\r\nHost: ").as_bytes())
        .await
        .unwrap();
    let started = tokio::time::Instant::now();
    let (status, body) = read_refusal(&mut slow).await;
    assert_eq!((status, body.as_str()), (403, "egress_bad_request\n"));
    assert!(
        started.elapsed() >= Duration::from_millis(400),
        "{:?}",
        started.elapsed()
    );

    // Silent from the first byte.
    let mut silent = connect_from(HUE, running.addr).await;
    let (status, _) = read_refusal(&mut silent).await;
    assert_eq!(status, 403);

    assert_eq!(up.accepted.load(Ordering::SeqCst), 0);
    // A connection that closes without a byte is no request: nothing to refuse or report.
    drop(connect_from(HUE, running.addr).await);
    // A well-formed request on the same proxy still works.
    let ok = open_tunnel(HUE, running.addr, &target).await;
    drop(ok);
    running.stop(Duration::from_secs(10)).await;

    let expected = 1 + bad.len() + 2;
    let events = audit_events(&nats, expected as u64).await;
    assert_eq!(events.len(), expected);
    for (subject, envelope) in &events {
        let line = describe(subject, envelope);
        assert!(
            line.starts_with("audit.egress from egress agent=hue source=127.0.0.2 "),
            "{line}"
        );
        assert!(line.ends_with(" egress_bad_request"), "{line}");
    }
    // Where the target could be read, the event names it as asked.
    let first = describe(&events[0].0, &events[0].1);
    assert!(
        first.contains(&format!("http://{}", up.addr.ip())),
        "{first}"
    );
}

#[tokio::test]
async fn each_agent_has_its_own_connection_limit() {
    let nats = NatsServer::start(&[]).await.unwrap();
    let up = upstream().await;
    let target = up.addr.to_string();
    let config = config(
        &nats,
        &agents(std::slice::from_ref(&target), std::slice::from_ref(&target)),
        2,
    );
    let running = run_proxy(
        &config,
        Arc::new(SystemResolver),
        emitter(&nats).await,
        ProxyOptions::default(),
    )
    .await;

    let first = open_tunnel(HUE, running.addr, &target).await;
    let second = open_tunnel(HUE, running.addr, &target).await;
    assert_eq!(running.proxy.open_connections(&hue()), 2);
    let request = format!("CONNECT {target} HTTP/1.1\r\n\r\n");
    let (status, body) = refused(HUE, running.addr, request.as_bytes()).await;
    assert_eq!(
        (status, body.as_str()),
        (429, "egress_too_many_connections\n")
    );
    // A connection that is still sending its head counts too.
    drop(first);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while running.proxy.open_connections(&hue()) > 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "slot not given back"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let pending = connect_from(HUE, running.addr).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while running.proxy.open_connections(&hue()) < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "pending head not counted"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (status, _) = refused(HUE, running.addr, request.as_bytes()).await;
    assert_eq!(status, 429);
    // The other agent is not affected.
    let weather1 = open_tunnel(WEATHER, running.addr, &target).await;
    let weather2 = open_tunnel(WEATHER, running.addr, &target).await;
    let (status, _) = refused(WEATHER, running.addr, request.as_bytes()).await;
    assert_eq!(status, 429);
    drop((pending, second, weather1, weather2));

    running.stop(Duration::from_secs(10)).await;
    let events = audit_events(&nats, 3).await;
    let seen: Vec<String> = events.iter().map(|(s, e)| describe(s, e)).collect();
    let line = |agent: &str, from: &str| {
        format!(
            "audit.egress from egress agent={agent} source={from} {}:{} egress_too_many_connections",
            up.addr.ip(),
            up.addr.port()
        )
    };
    assert_eq!(
        seen,
        vec![line("hue", HUE), line("hue", HUE), line("weather", WEATHER)]
    );
}

#[tokio::test]
async fn reload_swaps_the_rules_and_keeps_open_tunnels() {
    let nats = NatsServer::start(&[]).await.unwrap();
    let up = upstream().await;
    let target = up.addr.to_string();
    let allowed = config(&nats, &agents(std::slice::from_ref(&target), &[]), 16);
    let running = run_proxy(
        &allowed,
        Arc::new(SystemResolver),
        emitter(&nats).await,
        ProxyOptions::default(),
    )
    .await;
    let mut before = open_tunnel(HUE, running.addr, &target).await;

    // The destination moves from hue to weather.
    let moved = config(&nats, &agents(&[], std::slice::from_ref(&target)), 16);
    running.proxy.reload(&moved).unwrap();
    let request = format!("CONNECT {target} HTTP/1.1\r\n\r\n");
    let (status, body) = refused(HUE, running.addr, request.as_bytes()).await;
    assert_eq!((status, body.as_str()), (403, "egress_not_allowlisted\n"));
    let weather = open_tunnel(WEATHER, running.addr, &target).await;
    // The tunnel opened under the old rules keeps running.
    echo(&mut before, b"still here").await;

    // Refused reloads leave the rules as they were.
    let mut bad = moved.clone();
    bad.connect_timeout_ms = 0;
    assert_eq!(
        running.proxy.reload(&bad).unwrap_err().code(),
        "egress_config_invalid"
    );
    let mut elsewhere = moved.clone();
    elsewhere.listen = "127.0.0.1:3128".parse().unwrap();
    assert!(matches!(
        running.proxy.reload(&elsewhere),
        Err(ReloadError::NeedsRestart("listen"))
    ));
    let mut other_nats = moved.clone();
    other_nats.nats_url = "nats://other:4222".to_owned();
    assert!(matches!(
        running.proxy.reload(&other_nats),
        Err(ReloadError::NeedsRestart("nats_url"))
    ));
    assert_eq!(
        *running.proxy.policy(),
        egress_proxy::Policy::from_config(&moved).unwrap()
    );
    let weather_again = open_tunnel(WEATHER, running.addr, &target).await;
    drop((before, weather, weather_again));
    running.stop(Duration::from_secs(10)).await;
}

#[tokio::test]
async fn without_nats_the_proxy_still_refuses_and_still_tunnels() {
    // The identity files exist, but nothing listens where NATS should be.
    let nats = NatsServer::start(&[]).await.unwrap();
    let dead = closed_port().await;
    let layout = nats.layout().clone();
    let client = provision::client::options(&layout, &protocol::acl::Identity::Egress.principal())
        .unwrap()
        .retry_on_initial_connect()
        .connect(format!("tls://127.0.0.1:{dead}"))
        .await
        .unwrap();
    let emitter = audit::emit::AuditEmitter::new(
        async_nats::jetstream::new(client),
        protocol::acl::Identity::Egress.principal(),
    );
    let up = upstream().await;
    let target = up.addr.to_string();
    let config = config(&nats, &agents(std::slice::from_ref(&target), &[]), 16);
    let running = run_proxy(
        &config,
        Arc::new(SystemResolver),
        emitter,
        ProxyOptions::default(),
    )
    .await;

    for _ in 0..3 {
        let (status, body) = refused(
            HUE,
            running.addr,
            b"CONNECT 192.168.1.1:443 HTTP/1.1\r\n\r\n",
        )
        .await;
        assert_eq!((status, body.as_str()), (403, "egress_not_allowlisted\n"));
        let (status, body) = refused(
            STRANGER,
            running.addr,
            format!("CONNECT {target} HTTP/1.1\r\n\r\n").as_bytes(),
        )
        .await;
        assert_eq!((status, body.as_str()), (403, "egress_unknown_client\n"));
    }
    let ok = open_tunnel(HUE, running.addr, &target).await;
    drop(ok);
    // Shutdown gives up on the undeliverable events after its grace period.
    let started = tokio::time::Instant::now();
    running.stop(Duration::from_millis(300)).await;
    assert!(started.elapsed() < Duration::from_secs(10));
    // Nothing reached the real server's stream (the events had nowhere to go).
    assert_eq!(nats.stream_state("AUDIT").await.unwrap().messages, 0);
}

#[tokio::test]
async fn shutdown_stops_accepting_and_drains() {
    let nats = NatsServer::start(&[]).await.unwrap();
    let up = upstream().await;
    let target = up.addr.to_string();
    let config = config(&nats, &agents(std::slice::from_ref(&target), &[]), 16);
    let options = ProxyOptions {
        drain_timeout: Duration::from_millis(500),
        ..ProxyOptions::default()
    };
    let running = run_proxy(
        &config,
        Arc::new(SystemResolver),
        emitter(&nats).await,
        options,
    )
    .await;
    let addr = running.addr;
    let mut open = open_tunnel(HUE, addr, &target).await;
    let stopping = tokio::spawn(running.stop(Duration::from_secs(5)));
    // During the drain the open tunnel still works...
    tokio::time::sleep(Duration::from_millis(100)).await;
    echo(&mut open, b"draining").await;
    // ...but nobody new gets in.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
    assert!(socket.connect(addr).await.is_err());
    // After the drain period the tunnel is cut.
    let summary = stopping.await.unwrap();
    assert_eq!(summary.cut_at_shutdown, 1);
    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), open.read_to_end(&mut rest)).await;
    assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "{read:?}");
}
