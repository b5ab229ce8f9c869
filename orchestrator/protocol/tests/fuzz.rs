//! Property tests: decoding arbitrary bytes never panics, and no mutation of a valid token
//! verifies.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use ed25519_dalek::{Signer as _, SigningKey};
use proptest::prelude::*;
use protocol::message::*;
use protocol::token::{self, ApprovalBinding, Claims, Expected, Keyset};
use protocol::*;

fn signed_token() -> (Vec<u8>, Keyset, serde_json::Value) {
    let key = SigningKey::from_bytes(&[5; 32]);
    let args = serde_json::json!({"room": "living", "brightness": 20});
    let claims = Claims {
        kid: 1,
        iss: Principal::orchestrator(),
        aud: AgentName::new("hue").unwrap(),
        sub: ChatUser::new("telegram:1").unwrap(),
        act: ActionName::new("room.set").unwrap(),
        args_sha256: protocol::args::args_digest(&args),
        plan_id: PlanId::from_bytes([1; 16]),
        step: 0,
        approval: ApprovalBinding::Approved {
            id: ApprovalId::from_bytes([2; 16]),
            hash: Digest([3; 32]),
        },
        iat: 1000,
        nbf: 1000,
        exp: 1030,
        jti: [4; 16],
    };
    let bytes = claims.encode();
    let sig = key.sign(&Claims::signing_input(&bytes)).to_bytes();
    (
        token::assemble(&bytes, &sig),
        Keyset::single(1, key.verifying_key()).unwrap(),
        args,
    )
}

fn decode_all_families(bytes: &[u8]) {
    let _ = Envelope::<ChatIn>::decode(bytes);
    let _ = Envelope::<ChatDecision>::decode(bytes);
    let _ = Envelope::<ChatOut>::decode(bytes);
    let _ = Envelope::<PlanMessage>::decode(bytes);
    let _ = Envelope::<AgentRequest>::decode(bytes);
    let _ = Envelope::<AgentReply>::decode(bytes);
    let _ = Envelope::<Status>::decode(bytes);
    let _ = Envelope::<AuditEvent>::decode(bytes);
    let _ = Envelope::<AlertMessage>::decode(bytes);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn token_decoding_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..700)) {
        let (_, keyset, args) = signed_token();
        let hue = AgentName::new("hue").unwrap();
        let act = ActionName::new("room.set").unwrap();
        let _ = token::decode(&bytes);
        let r = token::verify(&keyset, &bytes, Expected { audience: &hue, action: &act, args: &args, changes_world: true }, 1010);
        prop_assert!(r.is_err());
    }

    #[test]
    fn token_text_decoding_never_panics(text in ".{0,800}") {
        let _ = token::from_text(&text);
    }

    #[test]
    fn mutated_tokens_never_verify(
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
        cut in proptest::option::of(any::<prop::sample::Index>()),
        extra in proptest::collection::vec(any::<u8>(), 0..3),
    ) {
        let (good, keyset, args) = signed_token();
        let mut t = good.clone();
        for (i, b) in &edits {
            let i = i.index(t.len());
            t[i] = *b;
        }
        if let Some(c) = cut {
            t.truncate(c.index(t.len()));
        }
        t.extend_from_slice(&extra);
        let hue = AgentName::new("hue").unwrap();
        let act = ActionName::new("room.set").unwrap();
        let r = token::verify(&keyset, &t, Expected { audience: &hue, action: &act, args: &args, changes_world: true }, 1010);
        if t == good {
            prop_assert!(r.is_ok());
        } else {
            prop_assert!(r.is_err(), "mutation verified: {}", hex::encode(&t));
        }
    }

    #[test]
    fn envelope_decoding_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        decode_all_families(&bytes);
    }

    #[test]
    fn json_shaped_input_never_panics(
        value in json_value(),
    ) {
        let bytes = serde_json::to_vec(&value).unwrap();
        decode_all_families(&bytes);
        let wrapped = serde_json::json!({
            "v": 1, "id": "0b0a0a0a-0a0a-4a0a-8a0a-0a0a0a0a0a0a",
            "correlation_id": "0c0a0a0a-0a0a-4a0a-8a0a-0a0a0a0a0a0a",
            "sender": "gateway", "sent_at": 1, "body": value
        });
        decode_all_families(&serde_json::to_vec(&wrapped).unwrap());
    }

    #[test]
    fn canonical_args_hash_is_stable_under_reparse(value in json_value()) {
        let wire = serde_json::to_vec(&value).unwrap();
        let back: serde_json::Value = serde_json::from_slice(&wire).unwrap();
        prop_assert_eq!(protocol::args::args_digest(&value), protocol::args::args_digest(&back));
    }
}

fn json_value() -> impl Strategy<Value = serde_json::Value> {
    use serde_json::Value;
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        "[a-z_>*. \u{0}-\u{1f}é☃]{0,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 64, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            proptest::collection::btree_map(
                prop_oneof![
                    Just("v".to_owned()),
                    Just("text".to_owned()),
                    Just("invoke".to_owned()),
                    Just("chat".to_owned()),
                    Just("heartbeat".to_owned()),
                    "[a-z_]{1,8}"
                ],
                inner,
                0..6
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}
