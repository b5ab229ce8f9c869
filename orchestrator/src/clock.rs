//! The time the orchestrator's decisions use, passed in so tests can move it.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use protocol::UnixMillis;

/// A source of the current time.
pub trait Clock: Send + Sync + fmt::Debug {
    /// Now.
    fn now(&self) -> UnixMillis;
}

/// The system's wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> UnixMillis {
        UnixMillis::now()
    }
}

/// The wall clock plus an offset that tests move forward (to expire an approval without
/// waiting). Tokens minted while the offset is large would not verify at an agent, whose clock
/// is real; tests only move it where no token is minted.
#[derive(Debug, Clone, Default)]
pub struct OffsetClock {
    offset_ms: Arc<AtomicI64>,
}

impl OffsetClock {
    /// A clock at the wall clock's time.
    pub fn new() -> Self {
        OffsetClock::default()
    }

    /// Moves the clock forward by `ms`.
    pub fn advance(&self, ms: i64) {
        self.offset_ms.fetch_add(ms, Ordering::SeqCst);
    }
}

impl Clock for OffsetClock {
    fn now(&self) -> UnixMillis {
        UnixMillis(UnixMillis::now().0 + self.offset_ms.load(Ordering::SeqCst))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_offset_clock_moves_only_forward_by_what_it_is_told() {
        let c = OffsetClock::new();
        let before = c.now();
        c.advance(3_600_000);
        let after = c.now();
        assert!(after.0 - before.0 >= 3_600_000);
        assert!(after.0 - UnixMillis::now().0 <= 3_600_000);
    }
}
