//! The orchestrator: natural language → explained plan → approval → audited execution.
//!
//! What it holds:
//! - [`plan`]: the planners (routines, an OpenAI-compatible model) and plan validation;
//! - [`approval`]: the pure approval state machine, the policy and the MAC'd decision
//!   payloads; [`render`]: the approval card and result messages, from structured data only;
//! - [`store`]: the orchestrator's SQLite state (plans, approvals, steps, alerts, quarantine,
//!   scheduler); [`execute`]: write-ahead audited, token-bound execution and crash recovery;
//! - [`summary`]: the daily summary schedule (pure) and content; [`alerts`]: alerts and
//!   quarantine; [`service`]: the loop over NATS that ties them together; [`config`]: its
//!   configuration; [`mint`]: capability-token signing, the only code in the workspace that
//!   holds the token signing key; [`catalog`]: the enabled agents' manifests.
//!
//! What it does not do: it does not verify tokens (agents do, with `protocol::token::verify`),
//! it never writes the audit database (it publishes events; only the `audit` crate writes),
//! it never starts containers or processes itself (quarantine goes through
//! [`service::AgentControl`]), and nothing an agent returns ever changes a plan.
#![forbid(unsafe_code)]

pub mod alerts;
pub mod approval;
pub mod catalog;
pub mod clock;
pub mod config;
pub mod execute;
pub mod mint;
pub mod outbox;
pub mod plan;
pub mod render;
pub mod service;
pub mod store;
pub mod summary;
pub mod watch;
