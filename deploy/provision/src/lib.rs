//! Provisioning: every identity's keys and certificates, the nats-server configuration, the
//! JetStream streams, and connecting to NATS as one identity.
//!
//! What it does:
//! - [`generate`] creates, under one root directory ([`Layout`]), a local CA (ECDSA P-256), the
//!   server certificate, one client certificate and one nkey per identity (the services of
//!   [`protocol::acl::Identity`] plus one per agent), the capability-token signing seed and the
//!   keyset agents load, and the audit checkpoint key pair. It is idempotent: existing secrets
//!   are never overwritten, and a later run only adds what is missing. Secret files are 0600,
//!   directories 0700, and every file is written atomically.
//! - [`render_nats_config`] renders the server configuration from a plain [`NatsConfig`]; every
//!   user's permissions come from [`protocol::acl::permissions`].
//! - [`load_seed`] / [`load_public`] / [`load_nkey_seed`] read keys back, refusing secret files
//!   that group or others can read.
//! - [`client::options`] / [`client::connect`] connect as one identity (TLS first, our CA, its
//!   client certificate, its nkey, its own inbox prefix).
//! - [`streams::ensure`] creates the JetStream streams and durable consumers and checks that the
//!   server kept every hardening flag.
//!
//! What it does not do: it never starts nats-server or any other process, never signs tokens
//! (the orchestrator does), never deletes or rotates existing keys, never prints or logs key
//! material (summaries name files only), and holds no long-lived state.
#![forbid(unsafe_code)]

pub mod client;
mod error;
mod files;
mod generate;
mod keys;
mod layout;
pub mod nats_config;
mod pki;
pub mod streams;

pub use error::ProvisionError;
pub use generate::{
    DEFAULT_SERVER_HOSTS, FIRST_KID, IDENTITIES_VERSION, IdentitiesFile, IdentityEntry,
    IdentityKind, Spec, Summary, generate, load_identities, nats_config_from_identities,
};
pub use keys::{
    MacKey, NkeySeed, SigningKeySeed, load_mac_key, load_nkey_seed, load_public, load_seed,
};
pub use layout::Layout;
pub use nats_config::{Limits, NatsConfig, NatsUser, render_nats_config};
