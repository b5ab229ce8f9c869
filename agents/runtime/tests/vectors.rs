//! Replays the `cap.v1` conformance vectors through `verify_and_consume` with the persistent
//! SQLite replay store: the store is seeded with each vector's `seen_jtis`, and every accepted
//! token is then presented a second time, after reopening the store, and must be refused.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use agent_runtime::{ReplayStore, verify_and_consume};
use protocol::token::{self, Expected, Keyset, KeysetFile};
use protocol::{ActionName, AgentName, TokenError};
use serde_json::Value;

const VECTORS: &str = include_str!("../../../orchestrator/protocol/tests/vectors/cap-v1.json");

#[test]
fn vectors_through_the_persistent_replay_store() {
    let file: Value = serde_json::from_str(VECTORS).unwrap();
    for v in file["vectors"].as_array().unwrap() {
        let name = v["name"].as_str().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("replay.db");
        let mut store = ReplayStore::open(&path).unwrap();
        for j in v["seen_jtis"].as_array().unwrap() {
            let mut jti = [0u8; 16];
            hex::decode_to_slice(j.as_str().unwrap(), &mut jti).unwrap();
            store.consume(&jti, i64::MAX, 0).unwrap();
        }
        let expected_error = v["result"]["error"].as_str();
        let keyset_file: KeysetFile = serde_json::from_value(v["keyset"].clone()).unwrap();
        let keyset = match Keyset::from_file(&keyset_file) {
            Ok(k) => k,
            Err(e) => {
                assert_eq!(Some(e.code()), expected_error, "{name}");
                continue;
            }
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
        let text = match v["token_text"].as_str() {
            Some(t) => t.to_owned(),
            None => token::to_text(&hex::decode(v["token_hex"].as_str().unwrap()).unwrap()),
        };
        let now = v["now"].as_i64().unwrap();
        let before = store.len().unwrap();
        match verify_and_consume(&keyset, &mut store, &text, expected, now) {
            Ok(claims) => {
                assert_eq!(expected_error, None, "{name} was accepted");
                assert_eq!(
                    v["result"]["ok"]["jti"].as_str(),
                    Some(claims.jti_hex().as_str())
                );
                assert_eq!(store.len().unwrap(), before + 1, "{name}: nonce recorded");
                drop(store);
                let mut reopened = ReplayStore::open(&path).unwrap();
                assert_eq!(
                    verify_and_consume(&keyset, &mut reopened, &text, expected, now),
                    Err(TokenError::Replayed),
                    "{name}: second use after restart"
                );
            }
            Err(err) => {
                assert_eq!(Some(err.code()), expected_error, "{name}");
                // A refused token never burns a nonce (it was never accepted).
                assert_eq!(store.len().unwrap(), before, "{name}: nothing recorded");
            }
        }
    }
}
