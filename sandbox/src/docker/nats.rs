//! The NATS server in a container of our own: its image is built from the static `nats-server`
//! binary, its configuration is rendered by `provision` with container paths (TLS material
//! mounted read-only at `/run/secrets/tls`, JetStream on a named volume at `/data`, listening on
//! `0.0.0.0:4222`), it sits on the core network with its port published on the host's loopback
//! only, and it is attached (alias `nats`) to every agent network and to the egress proxy's.
//!
//! After it starts, the host connects as `admin` over TLS until the server answers, then creates
//! the JetStream streams (`provision::streams::ensure`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use protocol::acl::Identity;
use provision::{Layout, NatsConfig};

use super::names::Instance;
use super::spec::{self, DATA_DIR, NATS_PORT, NatsContainer, SECRETS_DIR};
use super::{DockerSandbox, files, image, network, volume};
use crate::{Limits, SandboxError, SecretFile};

/// How long [`DockerSandbox::ensure_nats`] waits for the server to answer.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// What the NATS container is made from.
#[derive(Debug, Clone)]
pub struct NatsSettings {
    /// The static `nats-server` binary.
    pub binary: PathBuf,
    /// The provisioned home (TLS material, `nats/identities.json`, the admin identity).
    pub home: Layout,
    /// Host port on 127.0.0.1 (0: any free port).
    pub host_port: u16,
    /// Container limits.
    pub limits: Limits,
    /// Server limits (rendered into its configuration).
    pub server_limits: provision::Limits,
}

impl NatsSettings {
    /// Defaults for a binary and a home: any free port, 512 MiB, 256 processes, one CPU, 4096
    /// open files, the default server limits.
    pub fn new(binary: PathBuf, home: Layout) -> NatsSettings {
        NatsSettings {
            binary,
            home,
            host_port: 0,
            limits: Limits {
                memory_bytes: 512 * 1024 * 1024,
                pids: 256,
                nano_cpus: 1_000_000_000,
                nofile: 4096,
            },
            server_limits: provision::Limits::default(),
        }
    }
}

/// Where the host reaches the NATS container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatsEndpoint {
    /// `nats://127.0.0.1:<port>` (TLS is required by the options every client uses).
    pub url: String,
    /// The published port on 127.0.0.1.
    pub host_port: u16,
}

/// The TLS material the server reads, from the home: its certificate and key, and the CA that
/// client certificates must chain to. Never the CA's key.
pub fn secrets(home: &Layout) -> Vec<SecretFile> {
    vec![
        SecretFile {
            source: home.server_cert(),
            target: PathBuf::from("tls/server.pem"),
        },
        SecretFile {
            source: home.server_key(),
            target: PathBuf::from("tls/server.key"),
        },
        SecretFile {
            source: home.ca_cert(),
            target: PathBuf::from("tls/ca.pem"),
        },
    ]
}

/// The server configuration with container paths. Pure apart from its input.
pub fn render_config(
    identities: &provision::IdentitiesFile,
    server_limits: &provision::Limits,
) -> Result<String, SandboxError> {
    let container_layout = Layout::new(SECRETS_DIR);
    let mut config: NatsConfig = provision::nats_config_from_identities(
        &container_layout,
        SocketAddr::from(([0, 0, 0, 0], NATS_PORT)),
        server_limits.clone(),
        identities,
    )
    .map_err(|source| SandboxError::Provision {
        operation: "render the NATS configuration",
        source,
    })?;
    config.store_dir = format!("{DATA_DIR}/jetstream");
    let mut text = provision::render_nats_config(&config);
    // Clients inside reach the server as `nats`; advertising that keeps the server from
    // enumerating interfaces (netlink, which its seccomp profile does not allow).
    text.push_str(&format!(
        "\n# The address clients on the container networks use.\nclient_advertise: \"nats:{NATS_PORT}\"\n"
    ));
    Ok(text)
}

fn state_dir(sandbox: &DockerSandbox) -> PathBuf {
    sandbox.inner.settings.state_dir.join("_nats")
}

impl DockerSandbox {
    /// Starts the NATS container (or keeps the running one), waits until it answers TLS
    /// connections from the host as `admin`, and creates the JetStream streams.
    pub async fn ensure_nats(&self, settings: &NatsSettings) -> Result<NatsEndpoint, SandboxError> {
        let _lifecycle = self.inner.lifecycle.lock().await;
        let instance: &Instance = &self.inner.settings.instance;
        let image = image::ensure(&self.inner.docker, "nats", &settings.binary).await?;
        network::ensure(
            &self.inner.docker,
            &network::NetworkSpec {
                name: instance.core_network(),
                kind: network::Kind::Core,
                labels: instance.labels("network", None),
            },
        )
        .await?;
        volume::ensure(
            &self.inner.docker,
            &instance.nats_volume(),
            instance.labels("volume", None),
        )
        .await?;

        let name = instance.nats_container();
        let running_same = self
            .running_image(&name)
            .await?
            .is_some_and(|running| running == image);
        if !running_same {
            self.remove_container(&name).await?;
            let dir = state_dir(self);
            files::fresh_container_dir(&dir, instance)?;
            let secrets_dir = dir.join("secrets");
            files::copy_secrets(&secrets_dir, &secrets(&settings.home))?;
            let identities = provision::load_identities(&settings.home).map_err(|source| {
                SandboxError::Provision {
                    operation: "load identities",
                    source,
                }
            })?;
            let config_file = dir.join("nats-server.conf");
            files::write_public(
                &config_file,
                render_config(&identities, &settings.server_limits)?.as_bytes(),
            )?;
            let spec = spec::nats_spec(&NatsContainer {
                instance: instance.clone(),
                image,
                secrets_dir,
                config_file,
                host_port: settings.host_port,
                limits: settings.limits,
            });
            self.create_and_start(&spec).await?;
        }
        // Attach (again) to every network that needs NATS.
        for net in self.networks_needing_nats().await? {
            network::connect(&self.inner.docker, &net, &name, &["nats"]).await?;
        }
        let host_port = self.published_port(&name, NATS_PORT).await?;
        let endpoint = NatsEndpoint {
            url: format!("nats://127.0.0.1:{host_port}"),
            host_port,
        };
        let admin = wait_ready(&endpoint.url, &settings.home).await?;
        provision::streams::ensure(&admin)
            .await
            .map_err(|source| SandboxError::Provision {
                operation: "create the JetStream streams",
                source,
            })?;
        drop(admin);
        self.inner.state.lock().await.nats = Some(endpoint.clone());
        tracing::info!(url = %endpoint.url, "nats ready");
        Ok(endpoint)
    }
}

/// Connects as `admin` until the server answers (or [`READY_TIMEOUT`] passes; the last
/// connection error is the cause).
async fn wait_ready(url: &str, home: &Layout) -> Result<async_nats::Client, SandboxError> {
    let admin = Identity::Admin.principal();
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        match provision::client::connect(url, home, &admin).await {
            Ok(client) => return Ok(client),
            Err(source) if Instant::now() >= deadline => {
                return Err(SandboxError::Provision {
                    operation: "wait for the NATS container",
                    source,
                });
            }
            Err(e) => {
                tracing::debug!(error = %e, "nats not ready yet");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}
