//! The egress proxy in a container of our own: its image is built from the `egress-proxy`
//! binary; it holds its own identity (principal `egress`, mounted read-only like an agent's),
//! sits on the external egress network, on an internal network with NATS, and (alias `egress`)
//! on every agent network whose agent needs egress. Its rules (which agent subnet may reach
//! which `host:port`) are written to `egress.json` in a read-only mounted directory; after a
//! change the file is replaced atomically and the proxy gets SIGHUP.

use std::path::PathBuf;

use bollard::query_parameters::KillContainerOptionsBuilder;
use protocol::AgentName;
use protocol::acl::Identity;
use protocol::manifest::HostPort;
use provision::Layout;
use serde::Serialize;

use super::network::{self, Subnet};
use super::spec::{self, EGRESS_PORT, EgressContainer, NATS_PORT, SECRETS_DIR};
use super::{DockerSandbox, files, image};
use crate::{Limits, SandboxError, SecretFile};

/// The configuration file's name in its mounted directory.
pub const CONFIG_FILE: &str = "egress.json";
/// How long the proxy waits to connect to a destination.
pub const CONNECT_TIMEOUT_MS: u64 = 5_000;
/// How long an idle tunnel stays open.
pub const IDLE_TIMEOUT_MS: u64 = 300_000;
/// Tunnels one agent may hold at once.
pub const MAX_CONNECTIONS_PER_AGENT: u32 = 16;

/// What the egress proxy container is made from.
#[derive(Debug, Clone)]
pub struct EgressSettings {
    /// The `egress-proxy` binary.
    pub binary: PathBuf,
    /// The provisioned home (its identity: CA, client certificate and key, nkey).
    pub home: Layout,
    /// Arguments after the entrypoint (none: the proxy reads `/config/egress.json`).
    pub args: Vec<String>,
    /// Container limits.
    pub limits: Limits,
}

impl EgressSettings {
    /// Defaults: no arguments, 128 MiB, 128 processes, half a CPU, 1024 open files.
    pub fn new(binary: PathBuf, home: Layout) -> EgressSettings {
        EgressSettings {
            binary,
            home,
            args: Vec::new(),
            limits: Limits {
                memory_bytes: 128 * 1024 * 1024,
                pids: 128,
                nano_cpus: 500_000_000,
                nofile: 1024,
            },
        }
    }
}

/// One agent's rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AgentRule {
    /// The agent.
    pub name: AgentName,
    /// Its network's subnet (connections from there are this agent's).
    pub subnet: String,
    /// Where it may connect.
    pub allow: Vec<String>,
}

/// The proxy's configuration file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EgressConfig {
    /// Listen address.
    pub listen: String,
    /// NATS (for audit events).
    pub nats_url: String,
    /// Its identity directory (a layout root for principal `egress`).
    pub identity_dir: String,
    /// Rules, by agent name.
    pub agents: Vec<AgentRule>,
    /// Connect timeout.
    pub connect_timeout_ms: u64,
    /// Idle timeout.
    pub idle_timeout_ms: u64,
    /// Tunnels per agent.
    pub max_connections_per_agent: u32,
}

/// The configuration for a set of agents (sorted by name). Pure.
pub fn render_config(rules: &[(AgentName, Subnet, Vec<HostPort>)]) -> Result<String, SandboxError> {
    let mut agents: Vec<AgentRule> = rules
        .iter()
        .map(|(name, subnet, allow)| AgentRule {
            name: name.clone(),
            subnet: subnet.to_string(),
            allow: allow.iter().map(ToString::to_string).collect(),
        })
        .collect();
    agents.sort_by(|a, b| a.name.as_str().cmp(b.name.as_str()));
    let config = EgressConfig {
        listen: format!("0.0.0.0:{EGRESS_PORT}"),
        nats_url: format!("nats://nats:{NATS_PORT}"),
        identity_dir: SECRETS_DIR.to_owned(),
        agents,
        connect_timeout_ms: CONNECT_TIMEOUT_MS,
        idle_timeout_ms: IDLE_TIMEOUT_MS,
        max_connections_per_agent: MAX_CONNECTIONS_PER_AGENT,
    };
    let mut text = serde_json::to_string_pretty(&config)
        .map_err(|e| SandboxError::Invalid(format!("egress configuration: {e}")))?;
    text.push('\n');
    Ok(text)
}

/// The proxy's identity files, from the home, at their layout paths.
pub fn secrets(home: &Layout) -> Vec<SecretFile> {
    let egress = Identity::Egress.principal();
    let in_layout = |source: PathBuf| SecretFile {
        target: source
            .strip_prefix(home.root())
            .map(PathBuf::from)
            .unwrap_or_else(|_outside| source.clone()),
        source,
    };
    vec![
        in_layout(home.ca_cert()),
        in_layout(home.client_cert(&egress)),
        in_layout(home.client_key(&egress)),
        in_layout(home.nkey_seed(&egress)),
    ]
}

fn state_dir(sandbox: &DockerSandbox) -> PathBuf {
    sandbox.inner.settings.state_dir.join("_egress")
}

impl DockerSandbox {
    /// Starts the egress proxy (or keeps the running one) on its networks, with the rules of
    /// every agent that needs egress. NATS must be running.
    pub async fn ensure_egress_proxy(&self, settings: &EgressSettings) -> Result<(), SandboxError> {
        let _lifecycle = self.inner.lifecycle.lock().await;
        let instance = self.inner.settings.instance.clone();
        if self.inner.state.lock().await.nats.is_none() {
            return Err(SandboxError::Invalid(
                "NATS is not running: call ensure_nats first".to_owned(),
            ));
        }
        let image = image::ensure(&self.inner.docker, "egress-proxy", &settings.binary).await?;
        network::ensure(
            &self.inner.docker,
            &network::NetworkSpec {
                name: instance.egress_network(),
                kind: network::Kind::External,
                labels: instance.labels("network", None),
            },
        )
        .await?;
        network::ensure(
            &self.inner.docker,
            &network::NetworkSpec {
                name: instance.egress_nats_network(),
                kind: network::Kind::Internal,
                labels: instance.labels("network", None),
            },
        )
        .await?;
        network::connect(
            &self.inner.docker,
            &instance.egress_nats_network(),
            &instance.nats_container(),
            &["nats"],
        )
        .await?;

        let name = instance.egress_container();
        let running_same = self
            .running_image(&name)
            .await?
            .is_some_and(|running| running == image);
        let dir = state_dir(self);
        if !running_same {
            self.remove_container(&name).await?;
            files::fresh_container_dir(&dir, &instance)?;
            let secrets_dir = dir.join("secrets");
            files::copy_secrets(&secrets_dir, &secrets(&settings.home))?;
            let config_dir = dir.join("config");
            files::private_dir(&config_dir)?;
            // The proxy reads the directory as the container user.
            std::fs::set_permissions(
                &config_dir,
                std::os::unix::fs::PermissionsExt::from_mode(0o755),
            )
            .map_err(|source| SandboxError::Io {
                operation: "chmod",
                path: config_dir.clone(),
                source,
            })?;
            self.write_egress_config(&config_dir).await?;
            let spec = spec::egress_spec(&EgressContainer {
                instance: instance.clone(),
                image,
                secrets_dir,
                config_dir,
                args: settings.args.clone(),
                limits: settings.limits,
            });
            self.create_and_start(&spec).await?;
        }
        network::connect(
            &self.inner.docker,
            &instance.egress_nats_network(),
            &name,
            &["egress"],
        )
        .await?;
        let agent_networks: Vec<String> = {
            let state = self.inner.state.lock().await;
            state
                .agents
                .iter()
                .filter(|(_, a)| !a.deployment.egress.is_empty())
                .map(|(n, _)| instance.agent_network(n))
                .collect()
        };
        for net in agent_networks {
            network::connect(&self.inner.docker, &net, &name, &["egress"]).await?;
        }
        self.inner.state.lock().await.egress = Some(settings.clone());
        if running_same {
            self.reload_egress_rules().await?;
        }
        Ok(())
    }

    /// Writes the rules of the agents currently deployed.
    async fn write_egress_config(&self, config_dir: &std::path::Path) -> Result<(), SandboxError> {
        let rules: Vec<(AgentName, Subnet, Vec<HostPort>)> = {
            let state = self.inner.state.lock().await;
            state
                .agents
                .iter()
                .filter(|(_, a)| !a.deployment.egress.is_empty())
                .map(|(n, a)| (n.clone(), a.subnet, a.deployment.egress.clone()))
                .collect()
        };
        files::write_public(
            &config_dir.join(CONFIG_FILE),
            render_config(&rules)?.as_bytes(),
        )
    }

    /// Rewrites the proxy's rules and sends it SIGHUP (nothing happens without a proxy).
    pub(super) async fn reload_egress_rules(&self) -> Result<(), SandboxError> {
        if self.inner.state.lock().await.egress.is_none() {
            return Ok(());
        }
        self.write_egress_config(&state_dir(self).join("config"))
            .await?;
        self.inner
            .docker
            .kill_container(
                &self.inner.settings.instance.egress_container(),
                Some(
                    KillContainerOptionsBuilder::default()
                        .signal("SIGHUP")
                        .build(),
                ),
            )
            .await
            .map_err(|source| SandboxError::Docker {
                operation: "signal the egress proxy",
                source,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_configuration_lists_each_agent_subnet_and_destinations() {
        let rules = vec![
            (
                AgentName::new("weather").unwrap(),
                Subnet::parse("10.213.4.16/28").unwrap(),
                vec![HostPort::parse("api.open-meteo.com:443").unwrap()],
            ),
            (
                AgentName::new("hue").unwrap(),
                Subnet::parse("10.213.0.32/28").unwrap(),
                vec![
                    HostPort::parse("192.168.1.20:443").unwrap(),
                    HostPort::parse("[2001:db8::1]:443").unwrap(),
                ],
            ),
        ];
        expect_test::expect![[r#"
            {
              "listen": "0.0.0.0:3128",
              "nats_url": "nats://nats:4222",
              "identity_dir": "/run/secrets",
              "agents": [
                {
                  "name": "hue",
                  "subnet": "10.213.0.32/28",
                  "allow": [
                    "192.168.1.20:443",
                    "[2001:db8::1]:443"
                  ]
                },
                {
                  "name": "weather",
                  "subnet": "10.213.4.16/28",
                  "allow": [
                    "api.open-meteo.com:443"
                  ]
                }
              ],
              "connect_timeout_ms": 5000,
              "idle_timeout_ms": 300000,
              "max_connections_per_agent": 16
            }
        "#]]
        .assert_eq(&render_config(&rules).unwrap());
    }

    #[test]
    fn the_proxy_gets_only_its_own_identity() {
        let home = Layout::new("/home/a");
        let listed: Vec<String> = secrets(&home)
            .iter()
            .map(|s| format!("{} -> {}", s.source.display(), s.target.display()))
            .collect();
        expect_test::expect![[r#"
            /home/a/tls/ca.pem -> tls/ca.pem
            /home/a/tls/clients/egress.pem -> tls/clients/egress.pem
            /home/a/tls/clients/egress.key -> tls/clients/egress.key
            /home/a/nats/egress.nk -> nats/egress.nk"#]]
        .assert_eq(&listed.join("\n"));
    }
}
