//! Generates the `cap.v1` conformance vectors from fixed keys and checks the result equals the
//! checked-in file `orchestrator/protocol/tests/vectors/cap-v1.json` byte for byte (run with
//! `UPDATE_EXPECT=1` to rewrite it after a deliberate change). The protocol crate and the agent
//! runtime replay that file; this test proves the minter produces exactly those tokens.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use ed25519_dalek::SigningKey;
use orchestrator::mint::{MintRequest, Minter};
use protocol::message::Digest;
use protocol::token::{self, ApprovalBinding, Claims, KeyFileEntry, KeysetFile};
use protocol::{ActionName, AgentName, ApprovalId, ChatUser, PlanId, Principal};
use serde::Serialize;
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

const NOW: i64 = 1_767_225_600; // 2026-01-01T00:00:00Z

/// The group order L of edwards25519, little-endian.
const ORDER_L: [u8; 32] = [
    0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9, 0xde, 0x14,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x10,
];

#[derive(Serialize)]
struct File {
    format: &'static str,
    notes: Vec<&'static str>,
    keys: Vec<NamedKey>,
    vectors: Vec<Vector>,
}

#[derive(Serialize)]
struct NamedKey {
    name: &'static str,
    seed: String,
    public_key: String,
}

#[derive(Serialize)]
struct Vector {
    name: &'static str,
    description: &'static str,
    keyset: KeysetFile,
    #[serde(skip_serializing_if = "Option::is_none")]
    token_hex: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    token_text: Option<String>,
    expect: ExpectJson,
    now: i64,
    seen_jtis: Vec<String>,
    result: Value,
}

#[derive(Serialize, Clone)]
struct ExpectJson {
    audience: &'static str,
    action: &'static str,
    args: Value,
    changes_world: bool,
}

fn seed(label: &str) -> [u8; 32] {
    Sha256::digest(format!("cap.v1 conformance key {label}").as_bytes()).into()
}

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

fn err(code: &str) -> Value {
    json!({ "error": code })
}

struct Ctx {
    a: Minter,
    b: Minter,
    keyset_a: KeysetFile,
    expect: ExpectJson,
    hue: AgentName,
    user: ChatUser,
    act: ActionName,
    args: Value,
}

impl Ctx {
    fn new() -> Self {
        let a = Minter::new(1, &seed("A"), Principal::orchestrator());
        let b = Minter::new(2, &seed("B"), Principal::orchestrator());
        let keyset_a = KeysetFile {
            keys: vec![KeyFileEntry {
                kid: 1,
                public_key: hex::encode(a.verifying_key().as_bytes()),
                retires_at: None,
            }],
        };
        let args = json!({"light": "kitchen", "on": false, "transition_ms": 400});
        Ctx {
            a,
            b,
            keyset_a,
            expect: ExpectJson {
                audience: "hue",
                action: "light.set",
                args: args.clone(),
                changes_world: true,
            },
            hue: AgentName::new("hue").unwrap(),
            user: ChatUser::new("telegram:5551234").unwrap(),
            act: ActionName::new("light.set").unwrap(),
            args,
        }
    }

    fn approved() -> ApprovalBinding {
        ApprovalBinding::Approved {
            id: ApprovalId::from_bytes([0x22; 16]),
            hash: Digest(Sha256::digest(b"approval event").into()),
        }
    }

    fn request(&self) -> MintRequest<'_> {
        MintRequest {
            audience: &self.hue,
            subject: &self.user,
            action: &self.act,
            args: &self.args,
            plan_id: PlanId::from_bytes([0x11; 16]),
            step: 2,
            approval: Ctx::approved(),
            ttl_secs: 30,
        }
    }

    fn claims(&self, jti: u8) -> Claims {
        self.a.mint(&self.request(), NOW, [jti; 16]).unwrap().claims
    }

    fn vector(
        &self,
        name: &'static str,
        description: &'static str,
        token: &[u8],
        result: Value,
    ) -> Vector {
        Vector {
            name,
            description,
            keyset: self.keyset_a.clone(),
            token_hex: Some(hex::encode(token)),
            token_text: None,
            expect: self.expect.clone(),
            now: NOW + 5,
            seen_jtis: Vec::new(),
            result,
        }
    }
}

fn build() -> File {
    let cx = Ctx::new();
    let mut v = Vec::new();

    let good = cx.a.mint(&cx.request(), NOW, [0x01; 16]).unwrap();
    v.push(cx.vector(
        "valid",
        "A user-approved change action, verified 5 s after issue.",
        &good.bytes,
        claims_json(&good.claims),
    ));

    let mut ro_req = cx.request();
    ro_req.approval = ApprovalBinding::ReadOnlyPolicy;
    let ro_act = ActionName::new("lights.list").unwrap();
    ro_req.action = &ro_act;
    let ro_args = json!({});
    ro_req.args = &ro_args;
    let ro = cx.a.mint(&ro_req, NOW, [0x02; 16]).unwrap();
    let mut vec_ro = cx.vector(
        "valid_read_only",
        "A read-only action that policy runs without asking: no user approval needed.",
        &ro.bytes,
        claims_json(&ro.claims),
    );
    vec_ro.expect = ExpectJson {
        audience: "hue",
        action: "lights.list",
        args: json!({}),
        changes_world: false,
    };
    v.push(vec_ro);

    let mut in_skew = cx.vector(
        "valid_within_skew",
        "Verified 20 s after exp: inside the 30 s clock skew, accepted.",
        &good.bytes,
        claims_json(&good.claims),
    );
    in_skew.now = good.claims.exp + 20;
    v.push(in_skew);

    let mut t = good.bytes.clone();
    let last = t.len() - 1;
    t[last] ^= 0x01;
    v.push(cx.vector(
        "bad_signature",
        "One bit of the signature flipped.",
        &t,
        err("token_bad_signature"),
    ));

    let zero_sig = token::assemble(&good.claims.encode(), &[0u8; 64]);
    v.push(cx.vector(
        "zero_signature",
        "An all-zero signature (the binary cousin of alg=none).",
        &zero_sig,
        err("token_bad_signature"),
    ));

    let mut tampered = good.claims.clone();
    tampered.act = ActionName::new("door.unlock").unwrap();
    let mut forged = tampered.encode();
    forged.extend_from_slice(&good.bytes[good.bytes.len() - 64..]);
    let mut tampered_vec = cx.vector(
        "tampered_claims",
        "act changed from light.set to door.unlock after signing (SV-24).",
        &forged,
        err("token_bad_signature"),
    );
    tampered_vec.expect.action = "door.unlock";
    v.push(tampered_vec);

    let mut by_b = cx.claims(0x03);
    by_b.kid = 1;
    v.push(cx.vector(
        "signed_by_other_key",
        "Names kid 1 but was signed by another key.",
        &cx.b.sign(&by_b),
        err("token_bad_signature"),
    ));

    let mut kid7 = cx.claims(0x04);
    kid7.kid = 7;
    v.push(cx.vector(
        "unknown_kid",
        "Names kid 7, which is not in the verifier's keyset (keys never come from the token).",
        &cx.a.sign(&kid7),
        err("token_unknown_key"),
    ));

    let mut expired = cx.vector(
        "expired",
        "Verified 31 s after exp + 0: beyond the 30 s skew.",
        &good.bytes,
        err("token_expired"),
    );
    expired.now = good.claims.exp + token::CLOCK_SKEW_SECS + 1;
    v.push(expired);

    let mut future = cx.claims(0x05);
    future.iat = NOW;
    future.nbf = NOW + 60;
    future.exp = NOW + 90;
    v.push(cx.vector(
        "nbf_in_future",
        "nbf is 55 s after the verifier's clock: beyond the 30 s skew.",
        &cx.a.sign(&future),
        err("token_not_yet_valid"),
    ));

    let mut long = cx.claims(0x06);
    long.exp = NOW + 600;
    v.push(cx.vector(
        "ttl_over_max",
        "exp - iat = 600 s, over the 120 s maximum lifetime.",
        &cx.a.sign(&long),
        err("token_lifetime_too_long"),
    ));

    let mut wrong_aud = cx.vector(
        "wrong_audience",
        "A valid token for hue presented to the weather agent (SV-27).",
        &good.bytes,
        err("token_wrong_audience"),
    );
    wrong_aud.expect.audience = "weather";
    v.push(wrong_aud);

    let mut wrong_act = cx.vector(
        "wrong_action",
        "A light.set token used for scene.activate (SV-28).",
        &good.bytes,
        err("token_wrong_action"),
    );
    wrong_act.expect.action = "scene.activate";
    v.push(wrong_act);

    let mut wrong_args = cx.vector(
        "args_mismatch",
        "The same action with different arguments (kitchen on instead of off).",
        &good.bytes,
        err("token_args_mismatch"),
    );
    wrong_args.expect.args = json!({"light": "kitchen", "on": true, "transition_ms": 400});
    v.push(wrong_args);

    let mut reordered = cx.vector(
        "args_reordered_keys",
        "The same arguments with keys in another order and whitespace: canonical hashing accepts.",
        &good.bytes,
        claims_json(&good.claims),
    );
    reordered.expect.args =
        serde_json::from_str(r#"{ "transition_ms": 400, "on": false, "light": "kitchen" }"#)
            .unwrap();
    v.push(reordered);

    let mut replayed = cx.vector(
        "replayed_jti",
        "A valid token whose nonce the replay store has already seen (SV-26).",
        &good.bytes,
        err("token_replayed"),
    );
    replayed.seen_jtis = vec![hex::encode(good.claims.jti)];
    v.push(replayed);

    // Small-order ("weak") key: the identity point. Under plain `verify` the signature
    // (R = identity, S = 0) is valid for every message; the keyset refuses the key outright.
    let identity_point = {
        let mut p = [0u8; 32];
        p[0] = 1;
        p
    };
    let mut weak_claims = cx.claims(0x07);
    weak_claims.kid = 9;
    let mut weak_sig = [0u8; 64];
    weak_sig[..32].copy_from_slice(&identity_point);
    let mut weak = cx.vector(
        "weak_public_key",
        "The keyset holds a small-order public key (the identity point) under kid 9, and the token is 'signed' with R = identity, S = 0, which plain verify would accept for any message.",
        &token::assemble(&weak_claims.encode(), &weak_sig),
        err("keyset_weak_key"),
    );
    weak.keyset.keys.push(KeyFileEntry {
        kid: 9,
        public_key: hex::encode(identity_point),
        retires_at: None,
    });
    v.push(weak);

    let mut malleable = good.bytes.clone();
    let n = malleable.len();
    let s = &mut malleable[n - 32..];
    let mut carry = 0u16;
    for (byte, l) in s.iter_mut().zip(ORDER_L) {
        let sum = u16::from(*byte) + u16::from(l) + carry;
        *byte = (sum & 0xff) as u8;
        carry = sum >> 8;
    }
    v.push(cx.vector(
        "non_canonical_signature",
        "The valid signature with S replaced by S + L (a malleated, non-canonical scalar).",
        &malleable,
        err("token_bad_signature"),
    ));

    let mut trailing = good.bytes.clone();
    trailing.push(0);
    v.push(cx.vector(
        "trailing_bytes",
        "A valid token followed by one extra byte.",
        &trailing,
        err("token_trailing_bytes"),
    ));

    v.push(cx.vector(
        "truncated",
        "A valid token missing its last byte.",
        &good.bytes[..good.bytes.len() - 1],
        err("token_truncated"),
    ));

    let mut oversized = good.bytes.clone();
    oversized.resize(token::MAX_TOKEN_BYTES + 1, 0);
    v.push(cx.vector(
        "oversized",
        "513 bytes: refused before decoding.",
        &oversized,
        err("token_oversized"),
    ));

    let mut oversized_text = cx.vector(
        "oversized_text",
        "A text form longer than any valid token's: refused before base64 decoding.",
        &[],
        err("token_oversized"),
    );
    oversized_text.token_hex = None;
    oversized_text.token_text = Some("A".repeat(token::MAX_TOKEN_TEXT + 1));
    v.push(oversized_text);

    let mut bad_text = cx.vector(
        "bad_encoding",
        "The text form with padding and a '+' (standard base64, not base64url-no-pad).",
        &[],
        err("token_bad_encoding"),
    );
    bad_text.token_hex = None;
    bad_text.token_text = Some(format!("{}+==", token::to_text(&good.bytes)));
    v.push(bad_text);

    let mut v2 = good.bytes.clone();
    v2[0] = 2;
    v.push(cx.vector(
        "unknown_version",
        "Version byte 2.",
        &v2,
        err("token_unsupported_version"),
    ));

    let mut v0 = good.bytes.clone();
    v0[0] = 0;
    v.push(cx.vector(
        "version_zero",
        "Version byte 0 (no downgrade to an unsigned or older format).",
        &v0,
        err("token_unsupported_version"),
    ));

    // aud and iss swapped and re-signed: "orchestrator" is not a valid agent name.
    let swapped = cx.claims(0x08);
    let mut swapped_bytes = vec![token::TOKEN_VERSION];
    swapped_bytes.extend_from_slice(&swapped.kid.to_be_bytes());
    for field in [swapped.aud.as_str(), swapped.iss.as_str()] {
        swapped_bytes.push(field.len() as u8);
        swapped_bytes.extend_from_slice(field.as_bytes());
    }
    let full = swapped.encode();
    let skip = 1 + 4 + 1 + swapped.iss.as_str().len() + 1 + swapped.aud.as_str().len();
    swapped_bytes.extend_from_slice(&full[skip..]);
    let sig = {
        use ed25519_dalek::Signer as _;
        SigningKey::from_bytes(&seed("A"))
            .sign(&Claims::signing_input(&swapped_bytes))
            .to_bytes()
    };
    v.push(cx.vector(
        "reordered_fields",
        "iss and aud swapped, then correctly signed: the layout is fixed, so aud = 'orchestrator' fails the agent-name grammar.",
        &token::assemble(&swapped_bytes, &sig),
        err("token_malformed"),
    ));

    let mut no_approval = cx.claims(0x09);
    no_approval.approval = ApprovalBinding::ReadOnlyPolicy;
    v.push(cx.vector(
        "approval_missing",
        "A change-the-world action whose token carries only the read-only policy binding.",
        &cx.a.sign(&no_approval),
        err("token_approval_missing"),
    ));

    // Rotation: kid 1 rotated out at NOW - 10 in favour of kid 2.
    let rotated = KeysetFile {
        keys: vec![
            KeyFileEntry {
                kid: 1,
                public_key: hex::encode(cx.a.verifying_key().as_bytes()),
                retires_at: Some(NOW - 10 + token::KEY_RETIREMENT_GRACE_SECS),
            },
            KeyFileEntry {
                kid: 2,
                public_key: hex::encode(cx.b.verifying_key().as_bytes()),
                retires_at: None,
            },
        ],
    };
    let old_key_token = cx.a.mint(&cx.request(), NOW - 12, [0x0a; 16]).unwrap();
    let mut grace = cx.vector(
        "rotated_key_in_grace",
        "Minted under kid 1 just before it was rotated out; verified within the grace period.",
        &old_key_token.bytes,
        claims_json(&old_key_token.claims),
    );
    grace.keyset = rotated.clone();
    v.push(grace);

    let new_key_token = cx.b.mint(&cx.request(), NOW, [0x0b; 16]).unwrap();
    let mut new_key = cx.vector(
        "rotated_new_key",
        "Minted under the new current kid 2.",
        &new_key_token.bytes,
        claims_json(&new_key_token.claims),
    );
    new_key.keyset = rotated.clone();
    v.push(new_key);

    let mut retired = cx.vector(
        "retired_key",
        "A token under kid 1 presented after kid 1's retirement time.",
        &cx.a.sign(&{
            let mut c = cx.claims(0x0c);
            let at = NOW - 10 + token::KEY_RETIREMENT_GRACE_SECS + 1;
            c.iat = at;
            c.nbf = at;
            c.exp = at + 30;
            c
        }),
        err("token_key_retired"),
    );
    retired.keyset = rotated;
    retired.now = NOW - 10 + token::KEY_RETIREMENT_GRACE_SECS + 2;
    v.push(retired);

    File {
        format: "cap.v1 conformance vectors",
        notes: vec![
            "Generated by orchestrator/tests/conformance_vectors.rs from fixed keys; replayed by orchestrator/protocol/tests/vectors.rs and agents/runtime/tests/vectors.rs.",
            "Each vector: build the keyset from `keyset` (a refused keyset is the result), decode `token_hex` (bytes) or `token_text` (wire text), verify with `expect` at `now`, then consume the nonce in a replay store that already holds `seen_jtis`.",
            "`result` is either {\"ok\": claims} or {\"error\": stable code}.",
        ],
        keys: vec![
            NamedKey {
                name: "A (kid 1)",
                seed: hex::encode(seed("A")),
                public_key: hex::encode(cx.a.verifying_key().as_bytes()),
            },
            NamedKey {
                name: "B (kid 2)",
                seed: hex::encode(seed("B")),
                public_key: hex::encode(cx.b.verifying_key().as_bytes()),
            },
        ],
        vectors: v,
    }
}

#[test]
fn vectors_file_is_reproducible() {
    let file = build();
    assert!(file.vectors.len() >= 15);
    let text = serde_json::to_string_pretty(&file).unwrap() + "\n";
    expect_test::expect_file!["../protocol/tests/vectors/cap-v1.json"].assert_eq(&text);
}
