//! The egress proxy: an HTTP `CONNECT` proxy that lets each agent reach exactly the
//! destinations its deployment allows, and nothing else.
//!
//! It runs in its own hardened container, attached to the external `egress` network, to an
//! internal network shared with NATS, and (as `egress`) to the internal network of every agent
//! that needs egress. Agents get only `egress_proxy = "http://egress:3128"` and have no other
//! route. Modelled on Stripe's smokescreen, including its lesson GHSA-qwrf-gfpj-qvj6 (a
//! `[example.com]` target slipped past a deny list): here a destination has exactly one
//! spelling and must EQUAL an allow entry.
//!
//! For each connection ([`server`]):
//!
//! 1. The client is identified by its source address, which must lie in exactly one agent's
//!    subnet ([`policy::Policy::identify`]); the agent may hold at most
//!    `max_connections_per_agent` connections.
//! 2. The request head (at most 8 KiB, within 5 s) must be `CONNECT host:port HTTP/1.1`
//!    ([`head`]); the target is parsed strictly ([`target`]).
//! 3. The target must equal one of the agent's allow entries ([`policy::admit`]). An allowed
//!    IP literal is connected to as is, even on the LAN. An allowed name is resolved by the
//!    proxy ([`resolve::Resolver`]) and every address must be globally routable unicast
//!    ([`policy::check_resolved`], [`address`]); the proxy connects to those checked
//!    addresses and never resolves again.
//! 4. `HTTP/1.1 200 Connection Established`, then bytes are copied both ways until both sides
//!    close or nothing moves for `idle_timeout_ms`.
//!
//! Every refusal is answered with a short plain-text body holding only its code (HTTP 403;
//! 405 for a method other than `CONNECT`, 429 for the connection limit) and reported as an
//! `AuditEvent::EgressRefused` on `audit.egress` ([`report`]). Codes:
//! `egress_not_allowlisted`, `egress_private_address`, `egress_unknown_client`,
//! `egress_bad_request`, `egress_resolve_failed`, `egress_connect_failed`,
//! `egress_too_many_connections`.
//!
//! Configuration ([`config`], JSON, every field required, unknown fields refused; the binary
//! reads `--config`, default `/config/egress.json`):
//!
//! ```json
//! {"listen":"0.0.0.0:3128","nats_url":"nats://nats:4222","identity_dir":"/run/secrets",
//!  "agents":[{"name":"hue","subnet":"10.200.0.16/28","allow":["192.168.1.20:443"]}],
//!  "connect_timeout_ms":5000,"idle_timeout_ms":300000,"max_connections_per_agent":16}
//! ```
//!
//! `identity_dir` is a `provision::Layout` root holding the `egress` identity. The binary
//! exits 64 on a bad configuration before binding anything, reloads the file on SIGHUP (the
//! new rules apply to new connections; open tunnels keep running; a bad file or a change of
//! `listen`, `nats_url` or `identity_dir` is refused and the old rules stay), and on SIGTERM
//! or SIGINT stops accepting, drains for up to 5 s and exits 0.
//!
//! What it does not do: no plain-HTTP forwarding (only `CONNECT`), no TLS interception (it
//! never sees inside a tunnel and never logs tunnel bytes), no authentication beyond the
//! source address (the Docker networks make that address unforgeable: each agent is alone on
//! its network), no DNS service for agents, no caching of answers. If NATS is unreachable it
//! still refuses everything it should and logs the events it could not deliver.
#![forbid(unsafe_code)]

pub mod address;
pub mod config;
pub mod head;
pub mod policy;
pub mod report;
pub mod resolve;
pub mod server;
pub mod target;

pub use config::{AgentRule, Config, ConfigError, Subnet};
pub use policy::{Policy, RefusalCode};
pub use report::{Reporter, ReporterTask};
pub use resolve::{Resolver, SystemResolver};
pub use server::{Proxy, ProxyOptions, ReloadError, ServeSummary};
