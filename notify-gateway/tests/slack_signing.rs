//! Slack request signing: Slack's published test vector (tests/fixtures/slack/
//! signing_test_vector.json, with an injected clock), forgeries, the 300 s window from both
//! sides, malformed headers, the body bound, and the replay cache.
#![cfg(feature = "slack")]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::path::Path;

use notify_gateway::slack::signing::{
    MAX_BODY_BYTES, REPLAY_WINDOW_SECS, ReplayCache, SigningError, SigningSecret, SlackHeaders,
    sign, verify,
};

struct Vector {
    secret: String,
    timestamp: String,
    body: String,
    signature: String,
}

fn vector() -> Vector {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/slack/signing_test_vector.json");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let s = |k: &str| json[k].as_str().unwrap().to_owned();
    assert_eq!(
        json["headers"]["X-Slack-Signature"],
        json["expected_signature"]
    );
    assert_eq!(
        json["headers"]["X-Slack-Request-Timestamp"],
        json["timestamp"]
    );
    Vector {
        secret: s("signing_secret"),
        timestamp: s("timestamp"),
        body: s("body"),
        signature: s("expected_signature"),
    }
}

fn ts(v: &Vector) -> i64 {
    v.timestamp.parse().unwrap()
}

fn check(
    v: &Vector,
    timestamp: Option<&str>,
    signature: Option<&str>,
    body: &[u8],
    now: i64,
) -> Result<(), SigningError> {
    let secret = SigningSecret::new(&v.secret).unwrap();
    verify(
        &secret,
        SlackHeaders {
            timestamp,
            signature,
        },
        body,
        now,
    )
}

fn check_vector(v: &Vector, now: i64) -> Result<(), SigningError> {
    check(
        v,
        Some(&v.timestamp),
        Some(&v.signature),
        v.body.as_bytes(),
        now,
    )
}

#[test]
fn slack_test_vector_verifies_with_injected_clock() {
    let v = vector();
    assert_eq!(
        v.signature,
        "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503"
    );
    check_vector(&v, ts(&v)).unwrap();
    let secret = SigningSecret::new(&v.secret).unwrap();
    assert_eq!(sign(&secret, &v.timestamp, v.body.as_bytes()), v.signature);
    // Uppercase hex is the same tag.
    check(
        &v,
        Some(&v.timestamp),
        Some(&v.signature.to_uppercase().replacen("V0=", "v0=", 1)),
        v.body.as_bytes(),
        ts(&v),
    )
    .unwrap();
}

#[test]
fn the_vector_is_stale_today() {
    let v = vector();
    // 2026-01-01: years after the vector's 2018 timestamp.
    let err = check_vector(&v, 1_767_225_600).unwrap_err();
    assert_eq!(err.code(), "slack_signature_stale");
}

#[test]
fn one_byte_changed_in_body_is_refused() {
    let v = vector();
    let mut body = v.body.clone().into_bytes();
    for i in [0, body.len() / 2, body.len() - 1] {
        let mut forged = body.clone();
        forged[i] ^= 0x01;
        let err = check(&v, Some(&v.timestamp), Some(&v.signature), &forged, ts(&v)).unwrap_err();
        assert_eq!(err, SigningError::Mismatch);
        assert_eq!(err.code(), "slack_signature_mismatch");
    }
    // A trailing byte, and an empty body.
    body.push(b'&');
    assert_eq!(
        check(&v, Some(&v.timestamp), Some(&v.signature), &body, ts(&v)),
        Err(SigningError::Mismatch)
    );
    assert_eq!(
        check(&v, Some(&v.timestamp), Some(&v.signature), b"", ts(&v)),
        Err(SigningError::Mismatch)
    );
}

#[test]
fn one_hex_digit_changed_in_signature_is_refused() {
    let v = vector();
    for i in [3, 20, v.signature.len() - 1] {
        let mut sig = v.signature.clone().into_bytes();
        sig[i] = if sig[i] == b'0' { b'1' } else { b'0' };
        let sig = String::from_utf8(sig).unwrap();
        assert_eq!(
            check(
                &v,
                Some(&v.timestamp),
                Some(&sig),
                v.body.as_bytes(),
                ts(&v)
            ),
            Err(SigningError::Mismatch)
        );
    }
}

#[test]
fn wrong_secret_is_refused() {
    let v = vector();
    let mut other = v.secret.clone().into_bytes();
    other[0] ^= 0x01;
    let secret = SigningSecret::new(other).unwrap();
    let headers = SlackHeaders {
        timestamp: Some(&v.timestamp),
        signature: Some(&v.signature),
    };
    assert_eq!(
        verify(&secret, headers, v.body.as_bytes(), ts(&v)),
        Err(SigningError::Mismatch)
    );
    assert_eq!(
        SigningSecret::new("").unwrap_err().code(),
        "slack_secret_empty"
    );
}

#[test]
fn timestamp_is_part_of_the_mac() {
    let v = vector();
    let moved = (ts(&v) + 1).to_string();
    assert_eq!(
        check(
            &v,
            Some(&moved),
            Some(&v.signature),
            v.body.as_bytes(),
            ts(&v)
        ),
        Err(SigningError::Mismatch)
    );
}

#[test]
fn window_boundaries() {
    let v = vector();
    let t = ts(&v);
    let w = REPLAY_WINDOW_SECS as i64;
    assert_eq!(w, 300);
    // Exactly 300 s old or 300 s ahead: accepted.
    check_vector(&v, t + w).unwrap();
    check_vector(&v, t - w).unwrap();
    // 5 min + 1 s old: refused.
    let err = check_vector(&v, t + w + 1).unwrap_err();
    assert_eq!(err, SigningError::Stale { skew_secs: 301 });
    assert_eq!(err.code(), "slack_signature_stale");
    // From the future (301 s ahead of now): refused.
    assert_eq!(
        check_vector(&v, t - w - 1),
        Err(SigningError::Stale { skew_secs: 301 })
    );
    // Extreme clocks do not overflow.
    assert!(matches!(
        check_vector(&v, i64::MIN),
        Err(SigningError::Stale { .. })
    ));
    assert!(matches!(
        check_vector(&v, i64::MAX),
        Err(SigningError::Stale { .. })
    ));
}

#[test]
fn staleness_is_checked_before_the_mac() {
    // A stale request with a bad signature is reported stale, without hashing the body.
    let v = vector();
    let bad = format!("v0={}", "0".repeat(64));
    assert!(matches!(
        check(
            &v,
            Some(&v.timestamp),
            Some(&bad),
            v.body.as_bytes(),
            ts(&v) + 1000
        ),
        Err(SigningError::Stale { .. })
    ));
}

#[test]
fn missing_and_malformed_headers() {
    let v = vector();
    let body = v.body.as_bytes();
    let t = ts(&v);
    let sig = Some(v.signature.as_str());
    let stamp = Some(v.timestamp.as_str());
    let code = |r: Result<(), SigningError>| r.unwrap_err().code();

    assert_eq!(
        code(check(&v, None, sig, body, t)),
        "slack_timestamp_missing"
    );
    assert_eq!(
        code(check(&v, Some(""), sig, body, t)),
        "slack_timestamp_missing"
    );
    assert_eq!(
        code(check(&v, stamp, None, body, t)),
        "slack_signature_missing"
    );
    assert_eq!(
        code(check(&v, stamp, Some(""), body, t)),
        "slack_signature_missing"
    );
    assert_eq!(
        code(check(&v, None, None, body, t)),
        "slack_timestamp_missing"
    );

    for bad in [
        "abc",
        "1531420618.0",
        "+1531420618",
        "-1531420618",
        " 1531420618",
        "1531420618 ",
        "1e9",
        "0x5b47a1ca",
        "99999999999999999999999",
        "١٥٣١٤٢٠٦١٨",
    ] {
        assert_eq!(
            code(check(&v, Some(bad), sig, body, t)),
            "slack_timestamp_malformed",
            "{bad:?}"
        );
    }

    let hex = v.signature.strip_prefix("v0=").unwrap();
    for bad in ["v1=", "v2=", "v10="] {
        let s = format!("{bad}{hex}");
        assert_eq!(
            code(check(&v, stamp, Some(&s), body, t)),
            "slack_signature_version",
            "{s}"
        );
    }
    for bad in [
        hex.to_owned(),                // no version
        format!("v0:{hex}"),           // wrong separator
        format!("V0={hex}"),           // version is case-sensitive
        format!("v0= {hex}"),          // space
        format!("v0={}", &hex[..63]),  // short
        format!("v0={hex}0"),          // long
        format!("v0={}g", &hex[..63]), // not hex
        "v0=".to_owned(),              // empty tag
        format!("sha256={hex}"),       // another scheme
        format!("v0={hex},v0={hex}"),  // list
    ] {
        assert_eq!(
            code(check(&v, stamp, Some(&bad), body, t)),
            "slack_signature_malformed",
            "{bad}"
        );
    }
}

#[test]
fn oversized_body_is_refused_first() {
    let v = vector();
    let secret = SigningSecret::new(&v.secret).unwrap();
    let t = ts(&v);
    // At the limit and correctly signed: accepted.
    let body = vec![b'a'; MAX_BODY_BYTES];
    let sig = sign(&secret, &v.timestamp, &body);
    check(&v, Some(&v.timestamp), Some(&sig), &body, t).unwrap();
    // One byte over, even with no headers at all: refused for size.
    let body = vec![b'a'; MAX_BODY_BYTES + 1];
    let err = check(&v, None, None, &body, t).unwrap_err();
    assert_eq!(
        err,
        SigningError::BodyTooLarge {
            len: MAX_BODY_BYTES + 1,
            max: MAX_BODY_BYTES
        }
    );
    assert_eq!(err.code(), "slack_body_too_large");
}

#[test]
fn errors_never_show_the_secret() {
    let v = vector();
    let secret = SigningSecret::new(&v.secret).unwrap();
    assert_eq!(format!("{secret:?}"), "SigningSecret(<redacted>)");
    let hex_tag = v.signature.strip_prefix("v0=").unwrap();
    let errors = [
        check_vector(&v, ts(&v) + 301).unwrap_err(),
        check(&v, Some(&v.timestamp), Some(&v.signature), b"x", ts(&v)).unwrap_err(),
        check(&v, Some("x"), Some(&v.signature), b"x", ts(&v)).unwrap_err(),
        SigningError::Replayed,
        SigningError::ReplayCacheFull { capacity: 1 },
    ];
    for e in errors {
        for text in [e.to_string(), format!("{e:?}")] {
            assert!(!text.contains(&v.secret), "{text}");
            assert!(!text.contains(hex_tag), "{text}");
        }
    }
}

#[test]
fn replayed_delivery_is_refused() {
    let v = vector();
    let t = ts(&v);
    let mut cache = ReplayCache::new(16, ReplayCache::DEFAULT_TTL_SECS);
    // First delivery: verified, then recorded by its signature.
    check_vector(&v, t).unwrap();
    cache.check_and_record(&v.signature, t).unwrap();
    // The same request again, 10 s later, still inside the window: signature valid, but replayed.
    check_vector(&v, t + 10).unwrap();
    let err = cache.check_and_record(&v.signature, t + 10).unwrap_err();
    assert_eq!(err, SigningError::Replayed);
    assert_eq!(err.code(), "slack_replayed");
    // Events API: a retry with the same event_id is refused; another event is accepted.
    cache.check_and_record("Ev0PV52K21", t).unwrap();
    assert_eq!(
        cache.check_and_record("Ev0PV52K21", t + 1),
        Err(SigningError::Replayed)
    );
    cache.check_and_record("Ev0PV52K22", t + 1).unwrap();
    assert_eq!(cache.len(), 3);
}

#[test]
fn replay_cache_expires_entries_after_ttl() {
    let mut cache = ReplayCache::new(4, 600);
    cache.check_and_record("a", 1000).unwrap();
    // Exactly ttl later: still remembered.
    assert_eq!(
        cache.check_and_record("a", 1600),
        Err(SigningError::Replayed)
    );
    // ttl + 1 later: forgotten (and the signature window refuses the old request anyway).
    cache.check_and_record("a", 1601).unwrap();
    assert_eq!(cache.len(), 1);
    // A clock stepping back does not drop entries.
    assert_eq!(
        cache.check_and_record("a", 1000),
        Err(SigningError::Replayed)
    );
}

#[test]
fn replay_cache_is_bounded_and_fails_closed() {
    let mut cache = ReplayCache::new(2, 600);
    assert_eq!(cache.capacity(), 2);
    assert!(cache.is_empty());
    cache.check_and_record("a", 100).unwrap();
    cache.check_and_record("b", 200).unwrap();
    let err = cache.check_and_record("c", 300).unwrap_err();
    assert_eq!(err, SigningError::ReplayCacheFull { capacity: 2 });
    assert_eq!(err.code(), "slack_replay_cache_full");
    // Nothing was evicted: both are still refused as replays.
    assert_eq!(
        cache.check_and_record("a", 300),
        Err(SigningError::Replayed)
    );
    assert_eq!(
        cache.check_and_record("b", 300),
        Err(SigningError::Replayed)
    );
    // Once "a" expires there is room again.
    cache.check_and_record("c", 701).unwrap();
    assert_eq!(cache.len(), 2);
    assert_eq!(
        cache.check_and_record("b", 701),
        Err(SigningError::Replayed)
    );
    // Capacity 0 is raised to 1.
    assert_eq!(ReplayCache::new(0, 600).capacity(), 1);
}
