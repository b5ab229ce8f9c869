//! Replays the checked-in `cap.v1` conformance vectors against `protocol::token::verify`.
//!
//! The replay store here is an in-memory set seeded from each vector's `seen_jtis`; the agent
//! runtime replays the same file against its persistent SQLite store.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::collections::HashSet;

use protocol::token::{self, ApprovalBinding, Claims, Expected, Keyset, KeysetFile};
use protocol::{ActionName, AgentName};
use serde_json::{Value, json};

const VECTORS: &str = include_str!("vectors/cap-v1.json");

fn claims_json(c: &Claims) -> Value {
    let approval = match c.approval {
        ApprovalBinding::ReadOnlyPolicy => json!("read_only_policy"),
        ApprovalBinding::Approved { id, hash } => {
            json!({"approval_id": id.to_string(), "approval_hash": hash.to_string()})
        }
    };
    json!({"ok": {
        "kid": c.kid, "iss": c.iss.as_str(), "aud": c.aud.as_str(), "sub": c.sub.as_str(),
        "act": c.act.as_str(), "args_sha256": c.args_sha256.to_string(),
        "plan_id": c.plan_id.to_string(), "step": c.step, "approval": approval,
        "iat": c.iat, "nbf": c.nbf, "exp": c.exp, "jti": hex::encode(c.jti)
    }})
}

/// Runs one vector and returns its result in the file's shape.
fn run(v: &Value) -> Value {
    let file: KeysetFile = serde_json::from_value(v["keyset"].clone()).unwrap();
    let keyset = match Keyset::from_file(&file) {
        Ok(k) => k,
        Err(e) => return json!({ "error": e.code() }),
    };
    let e = &v["expect"];
    let audience = AgentName::new(e["audience"].as_str().unwrap()).unwrap();
    let action = ActionName::new(e["action"].as_str().unwrap()).unwrap();
    let expected = Expected {
        audience: &audience,
        action: &action,
        args: &e["args"],
        changes_world: e["changes_world"].as_bool().unwrap(),
    };
    let now = v["now"].as_i64().unwrap();
    let verified = if let Some(text) = v["token_text"].as_str() {
        token::verify_text(&keyset, text, expected, now)
    } else {
        let bytes = hex::decode(v["token_hex"].as_str().unwrap()).unwrap();
        token::verify(&keyset, &bytes, expected, now)
    };
    let claims = match verified {
        Ok(c) => c,
        Err(e) => return json!({ "error": e.code() }),
    };
    let seen: HashSet<&str> = v["seen_jtis"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j.as_str().unwrap())
        .collect();
    if seen.contains(claims.jti_hex().as_str()) {
        return json!({ "error": protocol::TokenError::Replayed.code() });
    }
    claims_json(&claims)
}

#[test]
fn every_vector_gives_its_expected_result() {
    let file: Value = serde_json::from_str(VECTORS).unwrap();
    let vectors = file["vectors"].as_array().unwrap();
    let mut failures = Vec::new();
    for v in vectors {
        let got = run(v);
        if got != v["result"] {
            failures.push(format!(
                "{}: expected {} got {}",
                v["name"], v["result"], got
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn the_vectors_cover_the_required_cases() {
    let file: Value = serde_json::from_str(VECTORS).unwrap();
    let names: HashSet<&str> = file["vectors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    for required in [
        "valid",
        "bad_signature",
        "signed_by_other_key",
        "unknown_kid",
        "expired",
        "nbf_in_future",
        "ttl_over_max",
        "wrong_audience",
        "wrong_action",
        "args_mismatch",
        "replayed_jti",
        "weak_public_key",
        "non_canonical_signature",
        "trailing_bytes",
        "oversized",
        "unknown_version",
    ] {
        assert!(names.contains(required), "missing vector {required}");
    }
    assert!(names.len() >= 15);
    // Every refusal code a vector expects is a real, distinct outcome.
    let errors: HashSet<&str> = file["vectors"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v["result"]["error"].as_str())
        .collect();
    assert!(errors.len() >= 14, "{errors:?}");
}

/// Why `verify_strict` (and the keyset's weak-key check) matter: plain `verify` accepts the
/// identity-point forgery for any message, strict verification does not.
#[test]
fn strict_verification_refuses_what_plain_verification_accepts() {
    use ed25519_dalek::{Signature, Verifier as _, VerifyingKey};
    let mut identity = [0u8; 32];
    identity[0] = 1;
    let key = VerifyingKey::from_bytes(&identity).unwrap();
    assert!(key.is_weak());
    let mut sig = [0u8; 64];
    sig[..32].copy_from_slice(&identity);
    let sig = Signature::from_bytes(&sig);
    let message = Claims::signing_input(b"any claims at all");
    assert!(key.verify(&message, &sig).is_ok(), "plain verify is fooled");
    assert!(key.verify_strict(&message, &sig).is_err());
    assert!(Keyset::single(9, key).is_err());
}
