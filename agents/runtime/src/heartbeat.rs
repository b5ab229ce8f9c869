//! Heartbeats: what an agent reports on `status.<agent>`.

use protocol::UnixMillis;
use protocol::message::{Heartbeat, IsolationReport, Status};

/// Most isolation notes a heartbeat carries per list (the `Status` body limit).
const MAX_NOTES: usize = 32;
/// Longest isolation note, in bytes (the `Status` body limit).
const MAX_NOTE: usize = 128;
/// Longest version text, in bytes.
const MAX_VERSION: usize = 64;

/// The resident set size of this process, from `/proc/self/status` (Linux); `None` elsewhere.
pub fn rss_bytes() -> Option<u64> {
    // Small file (about 1.5 KiB); read whole.
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| parse_vm_rss(&s))
}

/// The `VmRSS` line of a `/proc/<pid>/status` text, in bytes.
pub fn parse_vm_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let mut words = line.trim_start_matches("VmRSS:").split_whitespace();
    let value: u64 = words.next()?.parse().ok()?;
    match words.next() {
        Some("kB") => value.checked_mul(1024),
        _ => None,
    }
}

/// A heartbeat, with the isolation report cut to what a `Status` may carry.
pub fn heartbeat(
    version: &str,
    started_at: UnixMillis,
    rss_bytes: Option<u64>,
    in_flight: u32,
    handled: u64,
    isolation: &IsolationReport,
) -> Status {
    let notes = |list: &[String]| -> Vec<String> {
        list.iter()
            .take(MAX_NOTES)
            .map(|n| crate::screen::one_line(n, MAX_NOTE))
            .collect()
    };
    Status::Heartbeat(Heartbeat {
        version: crate::screen::one_line(version, MAX_VERSION),
        started_at,
        rss_bytes,
        in_flight,
        handled,
        isolation: IsolationReport {
            level: isolation.level,
            measures: notes(&isolation.measures),
            missing: notes(&isolation.missing),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::message::Isolation;
    use protocol::{CorrelationId, Envelope, MessageId, Principal};

    #[test]
    fn vm_rss_is_read_in_bytes() {
        let status = "Name:\tagent-hue\nVmPeak:\t   9000 kB\nVmRSS:\t    6120 kB\nThreads:\t1\n";
        assert_eq!(parse_vm_rss(status), Some(6120 * 1024));
        assert_eq!(parse_vm_rss("VmRSS:\t 12 MB\n"), None);
        assert_eq!(parse_vm_rss("Name: x\n"), None);
        if cfg!(target_os = "linux") {
            assert!(rss_bytes().is_some_and(|b| b > 0));
        }
    }

    #[test]
    fn an_oversized_isolation_report_is_cut_to_fit() {
        let report = IsolationReport {
            level: Isolation::Process,
            measures: (0..40).map(|i| format!("measure {i}")).collect(),
            missing: vec!["x".repeat(500), "line\nbreak".to_owned()],
        };
        let status = heartbeat("0.1.0", UnixMillis(5), Some(1), 2, 3, &report);
        let envelope = Envelope::new(
            MessageId::random(),
            CorrelationId::random(),
            Principal::new("hue").unwrap(),
            UnixMillis(6),
            status,
        );
        let decoded = Envelope::<Status>::decode(&envelope.encode().unwrap()).unwrap();
        let Status::Heartbeat(h) = decoded.body;
        assert_eq!(h.isolation.measures.len(), MAX_NOTES);
        assert!(h.isolation.missing[0].len() <= MAX_NOTE);
        assert_eq!(h.isolation.missing[1], "line break");
        assert_eq!((h.in_flight, h.handled, h.rss_bytes), (2, 3, Some(1)));
    }
}
