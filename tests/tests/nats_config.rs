//! The real nats-server accepts the configuration we render, and the harness brings up a server
//! whose streams carry every hardening flag.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::print_stdout,
    clippy::print_stderr
)]

use std::path::Path;
use std::process::Command;

use async_nats::jetstream;
use protocol::AgentName;
use provision::{Layout, Spec};
use test_support::{NatsServer, nats_server_bin};

/// Runs `nats-server -t -c <file>` (configuration test mode) and returns (success, output).
fn config_test(file: &Path) -> (bool, String) {
    let out = Command::new(nats_server_bin())
        .arg("-t")
        .arg("-c")
        .arg(file)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn fresh_layout(dir: &Path) -> Layout {
    let layout = Layout::new(dir.join("state"));
    let spec = Spec::new(vec![
        AgentName::new("hue").unwrap(),
        AgentName::new("weather").unwrap(),
    ]);
    provision::generate(&layout, &spec).unwrap();
    layout
}

#[test]
fn the_server_accepts_a_freshly_generated_config() {
    let dir = tempfile::tempdir().unwrap();
    let layout = fresh_layout(dir.path());
    let (ok, out) = config_test(&layout.nats_config());
    assert!(ok, "nats-server -t refused the generated config:\n{out}");
    assert!(out.contains("is valid"), "{out}");
}

#[test]
fn the_config_test_mode_does_refuse_a_broken_config() {
    // Positive control: the check above would have caught an unknown key or a bad block.
    let dir = tempfile::tempdir().unwrap();
    let layout = fresh_layout(dir.path());
    let text = std::fs::read_to_string(layout.nats_config()).unwrap();
    for (name, broken) in [
        (
            "unknown top-level key",
            format!("{text}\nbogus_setting: 1\n"),
        ),
        (
            "unknown permission key",
            text.replacen("allow_responses:", "allow_replies:", 1),
        ),
        (
            "unknown account jetstream key",
            text.replacen("max_streams:", "max_stream_count:", 1),
        ),
    ] {
        let file = dir.path().join("broken.conf");
        std::fs::write(&file, broken).unwrap();
        let (ok, out) = config_test(&file);
        assert!(
            !ok,
            "{name}: nats-server -t accepted a broken config:\n{out}"
        );
    }
}

#[test]
fn the_documented_example_is_a_valid_config() {
    // deploy/nats/nats-server.conf.example points at /var/lib/assistant; check the same render
    // with the certificate and store paths of a real layout.
    let dir = tempfile::tempdir().unwrap();
    let layout = fresh_layout(dir.path());
    let mut example = provision::nats_config::example().unwrap();
    let real = provision::NatsConfig::for_layout(
        &layout,
        example.listen,
        example.limits.clone(),
        Vec::new(),
    )
    .unwrap();
    example.cert_file = real.cert_file;
    example.key_file = real.key_file;
    example.ca_file = real.ca_file;
    example.store_dir = real.store_dir;
    let file = dir.path().join("example.conf");
    std::fs::write(&file, provision::render_nats_config(&example)).unwrap();
    let (ok, out) = config_test(&file);
    assert!(ok, "nats-server -t refused the example:\n{out}");
}

#[tokio::test]
async fn the_harness_starts_a_server_with_hardened_streams() {
    let server = NatsServer::start(&["hue"]).await.unwrap();
    assert!(server.log().contains("Server is ready"));
    assert!(server.url().starts_with("tls://127.0.0.1:"));
    let js = jetstream::new(server.admin().await.unwrap());
    for spec in provision::streams::specs() {
        let mut stream = js.get_stream(spec.name).await.unwrap();
        let info = stream.info().await.unwrap().clone();
        provision::streams::check_stream(&provision::streams::stream_config(&spec), &info.config)
            .unwrap();
        for c in &spec.consumers {
            let consumer = stream
                .get_consumer::<jetstream::consumer::pull::Config>(&c.name)
                .await
                .unwrap();
            provision::streams::check_consumer(
                spec.name,
                &provision::streams::consumer_config(c),
                &consumer.cached_info().config,
            )
            .unwrap();
        }
    }
    // Running ensure again is a no-op that still passes every check.
    provision::streams::ensure(&server.admin().await.unwrap())
        .await
        .unwrap();
}
