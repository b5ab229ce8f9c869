//! The wire contract every service shares.
//!
//! What it holds: validated names ([`AgentName`], [`Principal`], [`ChannelName`],
//! [`ActionName`], [`ChatUser`]), subjects built only from those names ([`Subject`]), the
//! versioned [`Envelope`] with one closed message enum per subject family ([`message`]), the
//! `cap.v1` capability token format and its pure verification ([`token`]), canonical argument
//! hashing ([`args`]), agent manifests ([`manifest`]) and their parameter schemas ([`schema`]), the NATS permission table ([`acl`]) and typed errors with stable codes
//! ([`error`]).
//!
//! What it does not do: no I/O, no clock, no randomness in decisions (callers pass `now` and
//! ids), no NATS, no SQLite, and no token *signing* (only the orchestrator can sign).
#![forbid(unsafe_code)]

pub mod acl;
pub mod args;
pub mod deploy;
pub mod envelope;
pub mod error;
pub mod id;
pub mod manifest;
pub mod message;
pub mod name;
pub mod schema;
pub mod subject;
pub mod token;

pub use envelope::{Body, Envelope, Family, MAX_ENVELOPE_BYTES};
pub use error::{DecodeError, EncodeError, KeysetError, NameError, TokenError};
pub use id::{ApprovalId, CorrelationId, EventId, MessageId, PlanId, UnixMillis};
pub use name::{ActionName, AgentName, ChannelName, ChatUser, Principal};
pub use subject::{Route, Subject};
