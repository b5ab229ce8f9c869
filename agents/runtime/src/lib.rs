//! Everything an agent needs but its own logic.
//!
//! What it does:
//! - [`Agent`] is what an agent implements: typed settings, its manifest, a constructor given an
//!   [`AgentContext`] (identity and data directories, egress proxy), and a handler that only
//!   ever sees an action of its manifest with arguments that passed the action's schema, under
//!   a verified, consumed capability token.
//! - [`main`] is the whole `main` of an agent binary (`agent_runtime::main::<Hue>()`): JSON
//!   tracing, the ring crypto provider, the configuration file (strict and size-limited; any
//!   problem exits 64 before anything connects), self-confinement, the NATS connection as the
//!   agent itself, and [`serve`] until SIGTERM or SIGINT.
//! - [`run`] / [`serve`] subscribe to `cmd.<agent>` only and answer every command exactly once,
//!   in this order: no reply subject (audit only), strict decoding (64 KiB), the sender must be
//!   the orchestrator, the action must be in the manifest, the token ([`verify_and_consume`]),
//!   the arguments against the schema, then the handler under the action's timeout. Audit
//!   events (`command_received`, `command_rejected`, `command_executed`, `command_failed`,
//!   `service_started`) go to `audit.<agent>` with a bounded wait for their acknowledgement;
//!   heartbeats go to `status.<agent>`; concurrency is bounded; shutdown drains. An agent's
//!   optional background work ([`Agent::background`], e.g. watching a stream) runs beside the
//!   command loop with the agent's own connection and stops with it.
//! - [`replay`] is the persistent store of seen token nonces that makes every capability token
//!   single-use, even across restarts; [`screen`] is the pure core of request handling.
//!
//! What it does not do: it never signs tokens, never writes the audit log (it publishes
//! events; the audit writer stores them), never starts processes or containers, and never
//! subscribes to anything but its own commands and inbox.
#![forbid(unsafe_code)]

pub mod agent;
pub mod entry;
pub mod error;
pub mod heartbeat;
pub mod replay;
pub mod screen;
pub mod serve;

use protocol::TokenError;
use protocol::token::{Claims, Expected, Keyset};

pub use agent::{ActionError, Agent, AgentContext, AgentError, BackgroundContext, ShutdownSignal};
pub use entry::main;
pub use error::{EXIT_CONFIG, RuntimeError, StartError};
pub use protocol::message::Outcome;
pub use replay::{ReplayError, ReplayStore};
pub use serve::{TokenGate, run, serve};

/// Verifies a token (pure checks, in order) and then records its nonce, atomically refusing a
/// nonce seen before. Fails closed: if the store cannot record the nonce, the token is refused.
pub fn verify_and_consume(
    keyset: &Keyset,
    store: &mut ReplayStore,
    token_text: &str,
    expected: Expected<'_>,
    now: i64,
) -> Result<Claims, TokenError> {
    let claims = protocol::token::verify_text(keyset, token_text, expected, now)?;
    store.consume(&claims.jti, claims.exp, now)?;
    Ok(claims)
}
