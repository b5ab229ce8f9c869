//! The orchestrator's view of the agents it may use: the checked-in manifests (crate
//! `catalog`), restricted to the agents this installation enables.
//!
//! Plans are validated against it, the LLM's tool description and the approval policy are
//! derived from it, and the executor looks up each action's timeout and effect in it. It is
//! never built from what a running agent says about itself.

use protocol::manifest::{ActionSpec, CheckedManifest};
use protocol::schema::Schema;
use protocol::{ActionName, AgentName};

/// The enabled agents' manifests.
#[derive(Debug, Clone)]
pub struct Catalog {
    manifests: Vec<&'static CheckedManifest>,
}

impl Catalog {
    /// Every agent in the checked-in catalog.
    pub fn all() -> Catalog {
        Catalog {
            manifests: catalog::all().iter().collect(),
        }
    }

    /// Only these agents (unknown names are ignored; the caller validates its configuration).
    pub fn enabled(agents: &[AgentName]) -> Catalog {
        Catalog {
            manifests: catalog::all()
                .iter()
                .filter(|m| agents.contains(m.name()))
                .collect(),
        }
    }

    /// The manifests, in catalog order.
    pub fn manifests(&self) -> impl Iterator<Item = &'static CheckedManifest> + '_ {
        self.manifests.iter().copied()
    }

    /// One agent's manifest.
    pub fn agent(&self, agent: &AgentName) -> Option<&'static CheckedManifest> {
        self.manifests.iter().copied().find(|m| m.name() == agent)
    }

    /// One action of one agent, with its parsed parameter schema.
    pub fn action(
        &self,
        agent: &AgentName,
        action: &ActionName,
    ) -> Option<(&'static ActionSpec, &'static Schema)> {
        self.agent(agent).and_then(|m| m.action(action))
    }
}
