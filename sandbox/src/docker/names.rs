//! Names and labels of everything the Docker backend creates. Pure.
//!
//! Every container, network and volume carries the instance label, so one installation (or one
//! test) can find and remove exactly what it created and nothing else.

use std::collections::HashMap;

use protocol::AgentName;

use crate::SandboxError;

/// Label: the instance that created the object.
pub const LABEL_INSTANCE: &str = "assistant.sandbox.instance";
/// Label: `agent`, `nats` or `egress` (and `network`/`volume` roles for those objects).
pub const LABEL_ROLE: &str = "assistant.sandbox.role";
/// Label: the agent, on an agent's container, network and volume.
pub const LABEL_AGENT: &str = "assistant.sandbox.agent";
/// Label: the image digest a container runs.
pub const LABEL_IMAGE: &str = "assistant.sandbox.image";

/// Longest instance name.
pub const MAX_INSTANCE_LEN: usize = 24;

/// One installation's name: `[a-z0-9][a-z0-9-]*`, at most [`MAX_INSTANCE_LEN`] bytes. It
/// prefixes every object name and is the value of [`LABEL_INSTANCE`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Instance(String);

impl Instance {
    /// Validates and wraps an instance name.
    pub fn new(s: impl Into<String>) -> Result<Instance, SandboxError> {
        let s = s.into();
        let ok = (1..=MAX_INSTANCE_LEN).contains(&s.len())
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !s.starts_with('-')
            && !s.ends_with('-');
        if ok {
            Ok(Instance(s))
        } else {
            Err(SandboxError::Invalid(format!(
                "instance {s:?} must be 1 to {MAX_INSTANCE_LEN} bytes of a-z, 0-9 and inner '-'"
            )))
        }
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// An agent's container.
    pub fn agent_container(&self, agent: &AgentName) -> String {
        format!("{}-agent-{agent}", self.0)
    }
    /// An agent's internal network.
    pub fn agent_network(&self, agent: &AgentName) -> String {
        format!("{}-net-{agent}", self.0)
    }
    /// An agent's data volume (mounted at `/data`; kept across stop and start).
    pub fn agent_volume(&self, agent: &AgentName) -> String {
        format!("{}-data-{agent}", self.0)
    }
    /// The NATS server's container.
    pub fn nats_container(&self) -> String {
        format!("{}-nats", self.0)
    }
    /// The NATS server's JetStream volume.
    pub fn nats_volume(&self) -> String {
        format!("{}-nats-data", self.0)
    }
    /// The network where NATS publishes its port to the host.
    pub fn core_network(&self) -> String {
        format!("{}-core", self.0)
    }
    /// The egress proxy's container.
    pub fn egress_container(&self) -> String {
        format!("{}-egress", self.0)
    }
    /// The external network the egress proxy reaches the world through.
    pub fn egress_network(&self) -> String {
        format!("{}-egress-out", self.0)
    }
    /// The internal network between the egress proxy and NATS.
    pub fn egress_nats_network(&self) -> String {
        format!("{}-egress-nats", self.0)
    }

    /// Labels for an object of this instance.
    pub fn labels(&self, role: &str, agent: Option<&AgentName>) -> HashMap<String, String> {
        let mut labels = HashMap::from([
            (LABEL_INSTANCE.to_owned(), self.0.clone()),
            (LABEL_ROLE.to_owned(), role.to_owned()),
        ]);
        if let Some(agent) = agent {
            labels.insert(LABEL_AGENT.to_owned(), agent.to_string());
        }
        labels
    }

    /// The `label=` filter that finds this instance's objects.
    pub fn filter(&self) -> HashMap<String, Vec<String>> {
        HashMap::from([(
            "label".to_owned(),
            vec![format!("{LABEL_INSTANCE}={}", self.0)],
        )])
    }
}

impl std::fmt::Display for Instance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instances_are_plain_names() {
        let cases = [
            "t1",
            "prod",
            "a-b",
            "",
            "-a",
            "a-",
            "A",
            "a_b",
            "a.b",
            "abcdefghijklmnopqrstuvwxy",
        ];
        let out: Vec<String> = cases
            .iter()
            .map(|c| match Instance::new(*c) {
                Ok(i) => format!(
                    "{c:?} ok {}",
                    i.agent_container(&AgentName::new("hue").unwrap())
                ),
                Err(e) => format!("{c:?} {}", e.code()),
            })
            .collect();
        expect_test::expect![[r#"
            "t1" ok t1-agent-hue
            "prod" ok prod-agent-hue
            "a-b" ok a-b-agent-hue
            "" sandbox_invalid_deployment
            "-a" sandbox_invalid_deployment
            "a-" sandbox_invalid_deployment
            "A" sandbox_invalid_deployment
            "a_b" sandbox_invalid_deployment
            "a.b" sandbox_invalid_deployment
            "abcdefghijklmnopqrstuvwxy" sandbox_invalid_deployment"#]]
        .assert_eq(&out.join("\n"));
    }
}
