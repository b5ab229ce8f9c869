//! The orchestrator.
//!
//! What it holds now: [`mint`], capability-token signing, the only code in the workspace that
//! holds the token signing key. Planning, approval, execution and scheduling arrive with the
//! orchestrator issue and build on it.
//!
//! What it does not do: it does not verify tokens (agents do, with `protocol::token::verify`),
//! and it never writes the audit database (only the `audit` crate does).
#![forbid(unsafe_code)]

pub mod catalog;
pub mod mint;
pub mod plan;
