//! System and security tests against real infrastructure.
//!
//! What it holds: integration tests only, in `tests/tests/*.rs`. `nats_config.rs` checks that
//! the real nats-server accepts the configuration `provision` renders and that the test harness
//! brings up hardened streams; `nats_security.rs` runs the NATS cases of the security suite
//! (SV-15 to SV-18, SV-20 and reply-once) against a real server with our generated config.
//! The harness itself is the `test-support` crate.
//!
//! What it does not do: this library has no code; nothing here is used by a service, and no
//! test is ever skipped (a missing nats-server fails the test and says how to install it).
#![forbid(unsafe_code)]
