//! Per-user input limits: message length and rate.
//!
//! What it does: [`Limits`] names the bounds (longest accepted text, a per-user token bucket:
//! `burst` events at once, one more every `refill_every`); [`RateLimiter`] applies the bucket
//! to each allowlisted user with an injected clock, and says whether a refusal is the first of
//! a streak (so the user is told once, not once per message: a refusal must not become an
//! amplifier). Pure and deterministic; the inbound loop owns one limiter per channel.
//!
//! What it does not do: no I/O; no limits on senders who are not allowlisted (they are dropped
//! before any of this, and what they cost is one audit row each); the limiter forgets nothing
//! but is bounded by the allowlist's size.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use protocol::message::MAX_CHAT_TEXT;

/// The bounds applied to allowlisted users' input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The longest accepted text, in characters (never more than `MAX_CHAT_TEXT` bytes).
    pub max_text_chars: usize,
    /// How many messages or presses a user may send at once.
    pub burst: u32,
    /// One more is allowed every this long.
    pub refill_every: Duration,
}

impl Default for Limits {
    /// 4096 characters (Telegram's own limit); 10 at once, then one every 3 s (20 a minute).
    fn default() -> Self {
        Limits {
            max_text_chars: 4096,
            burst: 10,
            refill_every: Duration::from_secs(3),
        }
    }
}

impl Limits {
    /// Whether `text` is within the length limit (characters and the protocol's byte bound).
    pub fn text_fits(&self, text: &str) -> bool {
        text.len() <= MAX_CHAT_TEXT && text.chars().count() <= self.max_text_chars
    }
}

/// The answer for one event of one user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateDecision {
    /// Within the rate.
    Allowed,
    /// Over the rate: refuse. `first` is true for the first refusal since the user was last
    /// allowed (tell the user then, and only then); `retry_after` is when one more is allowed.
    Limited {
        /// The first refusal of a streak.
        first: bool,
        /// How long until the next event would be allowed.
        retry_after: Duration,
    },
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: u32,
    /// When the last token was added (or the bucket created).
    refilled: Instant,
    /// Whether the user has been told about the current streak of refusals.
    told: bool,
}

/// A token bucket per user.
#[derive(Debug)]
pub struct RateLimiter {
    limits: Limits,
    buckets: HashMap<String, Bucket>,
}

impl RateLimiter {
    /// A limiter with these limits.
    pub fn new(limits: Limits) -> Self {
        RateLimiter {
            limits,
            buckets: HashMap::new(),
        }
    }

    /// Takes one token from `user`'s bucket at `now`, or says it is over the rate.
    pub fn check(&mut self, user: &str, now: Instant) -> RateDecision {
        let Limits {
            burst,
            refill_every,
            ..
        } = self.limits;
        let bucket = self.buckets.entry(user.to_owned()).or_insert(Bucket {
            tokens: burst,
            refilled: now,
            told: false,
        });
        if !refill_every.is_zero() {
            let elapsed = now.saturating_duration_since(bucket.refilled);
            let earned = elapsed.as_nanos() / refill_every.as_nanos();
            if earned > 0 {
                let earned = u32::try_from(earned).unwrap_or(u32::MAX);
                bucket.tokens = bucket.tokens.saturating_add(earned).min(burst);
                bucket.refilled = if bucket.tokens == burst {
                    now
                } else {
                    bucket.refilled + refill_every.saturating_mul(earned)
                };
            }
        }
        if bucket.tokens > 0 || refill_every.is_zero() {
            bucket.tokens = bucket.tokens.saturating_sub(1);
            bucket.told = false;
            return RateDecision::Allowed;
        }
        let next = (bucket.refilled + refill_every).saturating_duration_since(now);
        let first = !bucket.told;
        bucket.told = true;
        RateDecision::Limited {
            first,
            retry_after: next,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter() -> RateLimiter {
        RateLimiter::new(Limits {
            max_text_chars: 10,
            burst: 3,
            refill_every: Duration::from_secs(2),
        })
    }

    #[test]
    fn burst_then_refused_once_told_then_refilled() {
        let mut l = limiter();
        let t0 = Instant::now();
        for _ in 0..3 {
            assert_eq!(l.check("a", t0), RateDecision::Allowed);
        }
        assert_eq!(
            l.check("a", t0),
            RateDecision::Limited {
                first: true,
                retry_after: Duration::from_secs(2)
            }
        );
        assert_eq!(
            l.check("a", t0 + Duration::from_millis(500)),
            RateDecision::Limited {
                first: false,
                retry_after: Duration::from_millis(1500)
            }
        );
        // Another user has their own bucket.
        assert_eq!(l.check("b", t0), RateDecision::Allowed);
        // One token back after 2 s, and the streak ends.
        assert_eq!(
            l.check("a", t0 + Duration::from_secs(2)),
            RateDecision::Allowed
        );
        assert!(matches!(
            l.check("a", t0 + Duration::from_secs(2)),
            RateDecision::Limited { first: true, .. }
        ));
        // A long pause refills to the burst, never beyond.
        let later = t0 + Duration::from_secs(3600);
        for _ in 0..3 {
            assert_eq!(l.check("a", later), RateDecision::Allowed);
        }
        assert!(matches!(
            l.check("a", later),
            RateDecision::Limited { first: true, .. }
        ));
    }

    #[test]
    fn sustained_rate_is_one_per_refill() {
        let mut l = limiter();
        let t0 = Instant::now();
        let mut allowed = 0;
        // One attempt every 100 ms for 60 s: the burst plus one per 2 s.
        for i in 0..600u64 {
            if l.check("a", t0 + Duration::from_millis(100 * i)) == RateDecision::Allowed {
                allowed += 1;
            }
        }
        assert_eq!(allowed, 3 + 29);
    }

    #[test]
    fn text_length_counts_characters_and_bytes() {
        let l = Limits {
            max_text_chars: 4,
            ..Limits::default()
        };
        assert!(l.text_fits("abcd"));
        assert!(l.text_fits("ééé€"));
        assert!(!l.text_fits("abcde"));
        let big = Limits {
            max_text_chars: usize::MAX,
            ..Limits::default()
        };
        assert!(big.text_fits(&"x".repeat(MAX_CHAT_TEXT)));
        assert!(!big.text_fits(&"x".repeat(MAX_CHAT_TEXT + 1)));
    }
}
