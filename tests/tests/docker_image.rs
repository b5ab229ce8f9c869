//! Images built from our binaries: exact contents, no setuid/setgid file, byte-identical
//! rebuilds, import into the real engine (skipped when present), and a container that runs.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::print_stdout,
    clippy::print_stderr
)]

use std::collections::BTreeSet;
use std::io::Read as _;
use std::time::Duration;

use bollard::query_parameters::{
    CreateContainerOptionsBuilder, RemoveContainerOptionsBuilder, RemoveImageOptionsBuilder,
    WaitContainerOptionsBuilder,
};
use futures::StreamExt as _;
use sandbox::Limits;
use sandbox::docker::image::{self, ImageArchive, ImageFile, Imported};
use sandbox::docker::spec::{self, ContainerSpec, Restart, Role};
use sha2::{Digest as _, Sha256};

use test_support::docker::TestSandbox;

/// One member of a tar archive: path, mode, uid, gid, mtime, contents.
type Member = (String, u32, u64, u64, u64, Vec<u8>);

/// Every member of a tar archive, in order.
fn members(bytes: &[u8]) -> Vec<Member> {
    let mut archive = tar::Archive::new(bytes);
    let mut out = Vec::new();
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let h = entry.header().clone();
        let mut data = Vec::new();
        entry.read_to_end(&mut data).unwrap();
        out.push((
            entry.path().unwrap().to_string_lossy().into_owned(),
            h.mode().unwrap(),
            h.uid().unwrap(),
            h.gid().unwrap(),
            h.mtime().unwrap(),
            data,
        ));
    }
    out
}

/// Checks the `docker load` structure independently of the builder: the manifest names the
/// config and the layer, the image id is the SHA-256 of the config, the config's diff id is the
/// SHA-256 of the layer. Returns the layer's members.
fn layer_of(archive: &ImageArchive) -> Vec<Member> {
    let outer = members(&archive.bytes);
    let get = |name: &str| {
        outer
            .iter()
            .find(|m| m.0 == name)
            .unwrap_or_else(|| panic!("{name} missing"))
            .5
            .clone()
    };
    let manifest: serde_json::Value = serde_json::from_slice(&get("manifest.json")).unwrap();
    let config_name = manifest[0]["Config"].as_str().unwrap();
    let config = get(config_name);
    assert_eq!(
        format!("sha256:{}", hex::encode(Sha256::digest(&config))),
        archive.id.as_str()
    );
    assert_eq!(manifest[0]["RepoTags"][0], archive.tag.as_str());
    let layer = get(manifest[0]["Layers"][0].as_str().unwrap());
    let config: serde_json::Value = serde_json::from_slice(&config).unwrap();
    assert_eq!(
        config["rootfs"]["diff_ids"][0],
        format!("sha256:{}", hex::encode(Sha256::digest(&layer)))
    );
    assert_eq!(config["config"]["User"], "10001:10001");
    assert_eq!(config["os"], "linux");
    for m in &outer {
        assert_eq!(m.4, 0, "{} has a time", m.0);
    }
    members(&layer)
}

fn listing(layer: &[Member]) -> Vec<String> {
    layer
        .iter()
        .map(|(p, mode, uid, gid, mtime, data)| {
            assert_eq!(*mtime, 0, "{p} has a time");
            assert_eq!(mode & 0o7000, 0, "{p} is setuid, setgid or sticky");
            format!(
                "{p} {mode:o} {uid}:{gid} {}",
                if p.ends_with('/') { 0 } else { data.len() }
            )
        })
        .collect()
}

#[test]
fn a_static_binary_image_holds_only_the_binary_and_two_owned_directories() {
    let nats = test_support::nats_server_bin();
    let size = std::fs::metadata(&nats).unwrap().len();
    let archive = image::build_archive(&image::collect("nats", &nats).unwrap()).unwrap();
    let out = listing(&layer_of(&archive));
    assert_eq!(
        out,
        [
            "data/ 700 10001:10001 0".to_owned(),
            format!("nats-server 755 0:0 {size}"),
            "tmp/ 700 10001:10001 0".to_owned(),
        ]
    );
    assert_eq!(
        layer_of(&archive)[1].5,
        std::fs::read(&nats).unwrap(),
        "the binary is copied byte for byte"
    );
}

/// The libraries `ldd` (the dynamic linker itself) says a binary loads, plus its interpreter.
fn ldd(binary: &std::path::Path) -> BTreeSet<String> {
    let out = std::process::Command::new("ldd")
        .arg(binary)
        .output()
        .unwrap_or_else(|e| {
            panic!("ldd (Debian package libc-bin) is needed to check the image contents: {e}")
        });
    assert!(out.status.success(), "ldd failed");
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter_map(|l| {
            let l = l.trim();
            if l.starts_with("linux-vdso") {
                return None;
            }
            let path = match l.split_once("=>") {
                Some((_, right)) => right.trim(),
                None => l,
            };
            Some(
                path.split(" (")
                    .next()
                    .unwrap()
                    .trim()
                    .trim_start_matches('/')
                    .to_owned(),
            )
        })
        .collect()
}

#[test]
fn a_dynamic_binary_image_holds_exactly_what_the_dynamic_linker_loads() {
    // This test's own executable: a Rust binary linked against glibc.
    let me = std::env::current_exe().unwrap();
    let archive = image::build_archive(&image::collect("self", &me).unwrap()).unwrap();
    let layer = layer_of(&archive);
    let files: BTreeSet<String> = layer
        .iter()
        .filter(|m| !m.0.ends_with('/'))
        .map(|m| m.0.clone())
        .collect();
    let mut expected = ldd(&me);
    expected.insert(me.file_name().unwrap().to_string_lossy().into_owned());
    assert_eq!(files, expected);
    assert!(
        expected.iter().any(|f| f.contains("libc.so.6")),
        "the control: a glibc binary needs libc"
    );
    // Nothing but the files and their parent directories, plus /tmp and /data.
    for m in layer.iter().filter(|m| m.0.ends_with('/')) {
        let dir = m.0.trim_end_matches('/');
        assert!(
            dir == "tmp"
                || dir == "data"
                || files.iter().any(|f| f.starts_with(&format!("{dir}/"))),
            "unexpected directory {dir}"
        );
    }
    for (path, mode, ..) in &layer {
        assert_eq!(mode & 0o6000, 0, "{path} is setuid or setgid");
    }
}

#[test]
fn rebuilding_gives_the_same_bytes_and_id() {
    let me = std::env::current_exe().unwrap();
    let a = image::build_archive(&image::collect("self", &me).unwrap()).unwrap();
    let b = image::build_archive(&image::collect("self", &me).unwrap()).unwrap();
    assert_eq!(a.id, b.id);
    assert!(a.bytes == b.bytes, "archives differ");
    let nats = test_support::nats_server_bin();
    let c = image::build_archive(&image::collect("nats", &nats).unwrap()).unwrap();
    assert_ne!(
        a.id, c.id,
        "the control: another binary gives another image"
    );
}

#[tokio::test]
async fn an_imported_image_runs_a_second_import_is_skipped_and_a_rebuild_replaces_it() {
    let t = TestSandbox::new().await;
    let docker = t.client();
    // A unique image (an extra file naming this instance), so this test owns it.
    let nats = test_support::nats_server_bin();
    let mut spec = image::collect("nats", &nats).unwrap();
    spec.name = format!("test-{}", t.instance());
    spec.files.push(ImageFile {
        path: "/etc/instance".to_owned(),
        mode: 0o644,
        contents: t.instance().as_str().as_bytes().to_vec(),
    });
    let archive = image::build_archive(&spec).unwrap();
    assert!(!image::exists(docker, &archive.id).await.unwrap());
    assert_eq!(
        image::import(docker, &archive).await.unwrap(),
        Imported::Loaded
    );
    assert_eq!(
        image::import(docker, &archive).await.unwrap(),
        Imported::AlreadyPresent
    );
    let inspected = docker.inspect_image(archive.id.as_str()).await.unwrap();
    assert_eq!(inspected.id.as_deref(), Some(archive.id.as_str()));
    assert_eq!(
        inspected.repo_tags.unwrap_or_default(),
        std::slice::from_ref(&archive.tag)
    );

    // A hardened container from it runs the binary.
    let name = format!("{}-image-run", t.instance());
    let run = ContainerSpec {
        name: name.clone(),
        instance: t.instance().clone(),
        role: Role::Nats,
        agent: None,
        image: archive.id.clone(),
        network: "none".to_owned(),
        aliases: Vec::new(),
        mounts: Vec::new(),
        args: vec!["--version".to_owned()],
        env: Vec::new(),
        limits: Limits::default(),
        restart: Restart::No,
        publish: None,
        stop_timeout_secs: 1,
    };
    let mut body = spec::container_body(&run);
    // `none` takes no endpoint settings.
    body.networking_config = None;
    docker
        .create_container(
            Some(CreateContainerOptionsBuilder::default().name(&name).build()),
            body,
        )
        .await
        .unwrap();
    docker.start_container(&name, None).await.unwrap();
    let exit = tokio::time::timeout(
        Duration::from_secs(60),
        docker
            .wait_container(
                &name,
                Some(
                    WaitContainerOptionsBuilder::default()
                        .condition("not-running")
                        .build(),
                ),
            )
            .next(),
    )
    .await
    .unwrap()
    .unwrap();
    let logs = t.container_logs(&name).await.unwrap();
    assert_eq!(exit.unwrap().status_code, 0, "{logs}");
    assert!(logs.contains("nats-server: v2."), "{logs}");
    docker
        .remove_container(
            &name,
            Some(RemoveContainerOptionsBuilder::default().force(true).build()),
        )
        .await
        .unwrap();

    // A rebuild under the same name replaces it: pruning untags (and so removes) the older one.
    let mut newer_spec = spec.clone();
    newer_spec.files.push(ImageFile {
        path: "/etc/rebuilt".to_owned(),
        mode: 0o644,
        contents: b"yes".to_vec(),
    });
    let newer = image::build_archive(&newer_spec).unwrap();
    assert_ne!(newer.id, archive.id);
    assert_eq!(
        image::import(docker, &newer).await.unwrap(),
        Imported::Loaded
    );
    image::prune_older(docker, &spec.name, &newer.id)
        .await
        .unwrap();
    assert!(!image::exists(docker, &archive.id).await.unwrap());
    assert!(image::exists(docker, &newer.id).await.unwrap());
    docker
        .remove_image(
            newer.id.as_str(),
            Some(RemoveImageOptionsBuilder::default().force(true).build()),
            None,
        )
        .await
        .unwrap();
    assert!(!image::exists(docker, &newer.id).await.unwrap());
}
