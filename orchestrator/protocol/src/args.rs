//! Canonical arguments: one byte string per JSON value, hashed into a token's `args_sha256`.
//!
//! The canonical form is compact JSON with object keys sorted by their UTF-8 bytes, strings
//! escaped exactly as `serde_json` escapes them, and numbers in `serde_json`'s shortest
//! round-trip form. It does not depend on `serde_json`'s map ordering feature, so the orchestrator
//! and every agent hash the same value to the same digest whatever features the build unifies.

use sha2::{Digest as _, Sha256};

use crate::message::Digest;

/// Domain separation for argument hashes.
const ARGS_CONTEXT: &[u8] = b"assistant-args-v1\0";

/// Writes `value` in canonical form.
pub fn canonical_json(value: &serde_json::Value) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    write_canonical(value, &mut out);
    out
}

fn write_canonical(value: &serde_json::Value, out: &mut Vec<u8>) {
    use serde_json::Value;
    match value {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(true) => out.extend_from_slice(b"true"),
        Value::Bool(false) => out.extend_from_slice(b"false"),
        Value::Number(n) => out.extend_from_slice(n.to_string().as_bytes()),
        Value::String(s) => write_string(s, out),
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(item, out);
            }
            out.push(b']');
        }
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
            out.push(b'{');
            for (i, (k, v)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_string(k, out);
                out.push(b':');
                write_canonical(v, out);
            }
            out.push(b'}');
        }
    }
}

fn write_string(s: &str, out: &mut Vec<u8>) {
    // serde_json's string escaping is deterministic (RFC 8259 minimal escapes); serializing a
    // &str cannot fail.
    match serde_json::to_vec(s) {
        Ok(bytes) => out.extend_from_slice(&bytes),
        Err(_) => out.extend_from_slice(b"\"\""),
    }
}

/// SHA-256 over the domain prefix and the canonical form.
pub fn args_digest(value: &serde_json::Value) -> Digest {
    let mut h = Sha256::new();
    h.update(ARGS_CONTEXT);
    h.update(canonical_json(value));
    Digest(h.finalize().into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn canonical_form_is_sorted_and_compact() {
        let v: serde_json::Value = serde_json::from_str(
            r#"{ "b": [1, 2.5, -0, 1e3, "x\"y\n"], "a": {"z": null, "é": true, "A": false}, "aa": 18446744073709551615 }"#,
        )
        .unwrap();
        expect_test::expect![[r#"{"a":{"A":false,"z":null,"é":true},"aa":18446744073709551615,"b":[1,2.5,-0.0,1000.0,"x\"y\n"]}"#]]
            .assert_eq(std::str::from_utf8(&canonical_json(&v)).unwrap());
    }

    #[test]
    fn digest_ignores_key_order_and_whitespace_but_not_values() {
        let a = json!({"room": "living", "brightness": 20, "transition_ms": 600000});
        let b: serde_json::Value =
            serde_json::from_str(r#"{"transition_ms":600000,  "brightness":20,"room":"living"}"#)
                .unwrap();
        assert_eq!(args_digest(&a), args_digest(&b));
        let c = json!({"room": "living", "brightness": 21, "transition_ms": 600000});
        assert_ne!(args_digest(&a), args_digest(&c));
        // A float and an integer are different arguments.
        let d = json!({"room": "living", "brightness": 20.0, "transition_ms": 600000});
        assert_ne!(args_digest(&a), args_digest(&d));
    }

    #[test]
    fn digest_survives_a_wire_round_trip() {
        let v = json!({"x": 0.1, "y": 1e-7, "z": 123456789.123, "s": "☃\u{1}"});
        let wire = serde_json::to_vec(&v).unwrap();
        let back: serde_json::Value = serde_json::from_slice(&wire).unwrap();
        assert_eq!(args_digest(&v), args_digest(&back));
    }
}
