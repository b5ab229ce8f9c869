//! Everything an agent needs but its own logic.
//!
//! What it holds now: [`replay`], the persistent store of seen token nonces that makes every
//! capability token single-use, even across agent restarts, and [`verify_and_consume`], the
//! one call an agent makes to accept a token. The NATS connection, strict request decoding,
//! heartbeats, audit events and shutdown arrive with the agent runtime issue.
//!
//! What it does not do: it never signs tokens and never writes the audit log.
#![forbid(unsafe_code)]

pub mod replay;

use protocol::TokenError;
use protocol::token::{Claims, Expected, Keyset};

pub use replay::{ReplayError, ReplayStore};

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
