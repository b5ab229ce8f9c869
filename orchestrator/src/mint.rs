//! Minting `cap.v1` tokens.
//!
//! The functional core is [`Minter::mint`]: claims in, signed token out, with `now` and the
//! nonce passed in. The only randomness the shell adds is [`fresh_nonce`] from the OS CSPRNG.

use std::fmt;

use ed25519_dalek::{Signer as _, SigningKey, VerifyingKey};
use protocol::message::Digest;
use protocol::token::{self, ApprovalBinding, Claims, KeyId};
use protocol::{ActionName, AgentName, ChatUser, PlanId, Principal};
use thiserror::Error;

/// Why a token could not be minted.
#[derive(Debug, Error)]
pub enum MintError {
    /// The requested lifetime is not in `1..=MAX_TTL_SECS`.
    #[error("token lifetime of {0} s is outside 1..={max} s", max = token::MAX_TTL_SECS)]
    BadLifetime(i64),
    /// The signing seed is not 64 hex digits.
    #[error("signing seed is malformed")]
    BadSeed,
    /// The OS random number generator failed.
    #[error("no randomness available: {0}")]
    Random(#[source] getrandom::Error),
}

impl MintError {
    /// Stable code.
    pub fn code(&self) -> &'static str {
        match self {
            MintError::BadLifetime(_) => "mint_bad_lifetime",
            MintError::BadSeed => "mint_bad_seed",
            MintError::Random(_) => "mint_no_randomness",
        }
    }
}

/// What to mint a token for.
#[derive(Debug, Clone)]
pub struct MintRequest<'a> {
    /// The agent that will act.
    pub audience: &'a AgentName,
    /// The chat user on whose behalf.
    pub subject: &'a ChatUser,
    /// The action.
    pub action: &'a ActionName,
    /// The exact arguments the agent will receive.
    pub args: &'a serde_json::Value,
    /// The plan.
    pub plan_id: PlanId,
    /// The step.
    pub step: u16,
    /// The approval it executes under.
    pub approval: ApprovalBinding,
    /// Lifetime in seconds (1..=MAX_TTL_SECS).
    pub ttl_secs: i64,
}

/// A minted token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Minted {
    /// The claims it carries.
    pub claims: Claims,
    /// The token bytes.
    pub bytes: Vec<u8>,
}

impl Minted {
    /// The wire (text) form.
    pub fn text(&self) -> String {
        token::to_text(&self.bytes)
    }
}

/// Holds the signing key. Its `Debug` never shows the key.
pub struct Minter {
    kid: KeyId,
    key: SigningKey,
    issuer: Principal,
}

impl fmt::Debug for Minter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Minter")
            .field("kid", &self.kid)
            .field("issuer", &self.issuer)
            .field("key", &"<redacted>")
            .finish()
    }
}

impl Minter {
    /// A minter for key `kid` with the given 32-byte Ed25519 seed.
    pub fn new(kid: KeyId, seed: &[u8; 32], issuer: Principal) -> Self {
        Minter {
            kid,
            key: SigningKey::from_bytes(seed),
            issuer,
        }
    }

    /// Parses a seed written as 64 hex digits (surrounding whitespace ignored).
    pub fn from_seed_hex(kid: KeyId, seed_hex: &str, issuer: Principal) -> Result<Self, MintError> {
        let mut seed = [0u8; 32];
        hex::decode_to_slice(seed_hex.trim(), &mut seed).map_err(|_hex| MintError::BadSeed)?;
        Ok(Minter::new(kid, &seed, issuer))
    }

    /// The key id.
    pub fn kid(&self) -> KeyId {
        self.kid
    }

    /// The public key agents verify with.
    pub fn verifying_key(&self) -> VerifyingKey {
        self.key.verifying_key()
    }

    /// Mints a token valid from `now` for `ttl_secs`, with nonce `jti`.
    pub fn mint(
        &self,
        req: &MintRequest<'_>,
        now: i64,
        jti: [u8; 16],
    ) -> Result<Minted, MintError> {
        if req.ttl_secs < 1 || req.ttl_secs > token::MAX_TTL_SECS {
            return Err(MintError::BadLifetime(req.ttl_secs));
        }
        let claims = Claims {
            kid: self.kid,
            iss: self.issuer.clone(),
            aud: req.audience.clone(),
            sub: req.subject.clone(),
            act: req.action.clone(),
            args_sha256: protocol::args::args_digest(req.args),
            plan_id: req.plan_id,
            step: req.step,
            approval: req.approval,
            iat: now,
            nbf: now,
            exp: now + req.ttl_secs,
            jti,
        };
        Ok(Minted {
            bytes: self.sign(&claims),
            claims,
        })
    }

    /// Signs arbitrary claims exactly as given (the conformance vectors use this to build
    /// tokens a well-behaved [`Minter::mint`] never would, such as over-long lifetimes).
    pub fn sign(&self, claims: &Claims) -> Vec<u8> {
        let claims_bytes = claims.encode();
        let signature = self.key.sign(&Claims::signing_input(&claims_bytes));
        token::assemble(&claims_bytes, &signature.to_bytes())
    }
}

/// A fresh 128-bit nonce from the OS CSPRNG.
pub fn fresh_nonce() -> Result<[u8; 16], MintError> {
    let mut jti = [0u8; 16];
    getrandom::getrandom(&mut jti).map_err(MintError::Random)?;
    Ok(jti)
}

/// The approval hash binding a token to one decision: SHA-256 over a domain prefix, the
/// approval id, the plan hash and the approver.
pub fn approval_hash(
    approval_id: &protocol::ApprovalId,
    plan_hash: &Digest,
    approver: &ChatUser,
) -> Digest {
    use sha2::{Digest as _, Sha256};
    let mut h = Sha256::new();
    h.update(b"assistant-approval-v1\0");
    h.update(approval_id.as_bytes());
    h.update(plan_hash.0);
    h.update((approver.as_str().len() as u64).to_be_bytes());
    h.update(approver.as_str().as_bytes());
    Digest(h.finalize().into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::token::{Expected, Keyset};

    fn minter() -> Minter {
        Minter::new(1, &[7u8; 32], Principal::orchestrator())
    }

    #[test]
    fn minted_tokens_verify_and_refuse_bad_lifetimes() {
        let m = minter();
        let hue = AgentName::new("hue").unwrap();
        let user = ChatUser::new("telegram:42").unwrap();
        let act = ActionName::new("light.set").unwrap();
        let args = serde_json::json!({"light": "kitchen", "on": false});
        let mut req = MintRequest {
            audience: &hue,
            subject: &user,
            action: &act,
            args: &args,
            plan_id: PlanId::from_bytes([1; 16]),
            step: 0,
            approval: ApprovalBinding::Approved {
                id: protocol::ApprovalId::from_bytes([2; 16]),
                hash: Digest([3; 32]),
            },
            ttl_secs: 30,
        };
        let minted = m.mint(&req, 1_000, [9; 16]).unwrap();
        let keyset = Keyset::single(1, m.verifying_key()).unwrap();
        let expected = Expected {
            audience: &hue,
            action: &act,
            args: &args,
            changes_world: true,
        };
        let claims = token::verify_text(&keyset, &minted.text(), expected, 1_010).unwrap();
        assert_eq!(claims, minted.claims);
        assert_eq!(claims.exp, 1_030);
        for bad in [0, -5, token::MAX_TTL_SECS + 1] {
            req.ttl_secs = bad;
            assert_eq!(
                m.mint(&req, 1_000, [9; 16]).unwrap_err().code(),
                "mint_bad_lifetime"
            );
        }
    }

    #[test]
    fn debug_never_shows_the_key() {
        let shown = format!("{:?}", minter());
        assert!(shown.contains("<redacted>"));
        assert!(!shown.contains("07"));
    }

    #[test]
    fn nonces_are_fresh() {
        assert_ne!(fresh_nonce().unwrap(), fresh_nonce().unwrap());
    }

    #[test]
    fn approval_hash_binds_every_part() {
        let id = protocol::ApprovalId::from_bytes([1; 16]);
        let u1 = ChatUser::new("telegram:1").unwrap();
        let u2 = ChatUser::new("telegram:2").unwrap();
        let base = approval_hash(&id, &Digest([0; 32]), &u1);
        assert_ne!(base, approval_hash(&id, &Digest([1; 32]), &u1));
        assert_ne!(base, approval_hash(&id, &Digest([0; 32]), &u2));
        assert_ne!(
            base,
            approval_hash(
                &protocol::ApprovalId::from_bytes([2; 16]),
                &Digest([0; 32]),
                &u1
            )
        );
    }
}
