//! Host-side watchers: they feed the audit stream with what only the host sees, so the
//! audit-anomaly agent (which sees nothing but that stream) can raise alerts about it.
//!
//! What it does:
//! - **nats-server's reports.** [`parse_log_line`] (pure, table-tested on real line shapes)
//!   recognises permission violations (publish, subscribe), authentication errors, TLS
//!   handshake errors and connection limits in nats-server's log; [`ServerReport::event`] maps
//!   the connection's nkey to a principal through the provisioned identities
//!   ([`NkeyDirectory`]) and makes a `nats_violation` audit event. A [`LogSource`] follows the
//!   server's log file (the process backend, `bot up`'s local server, the test harness) or the
//!   NATS container's output (Docker backend). Events are published as the orchestrator,
//!   at most [`WatchSettings::violations_per_minute`] per principal per minute
//!   ([`ViolationLimiter`]; the rest are counted in the log).
//! - **sandbox supervision.** Every [`WatchSettings::inspect_interval`] each deployed agent is
//!   inspected through [`Inspect`] (any `sandbox::Sandbox`, or a test double); [`Supervision`]
//!   (pure) turns what changed into `agent_restarted` (restart count went up; with the OOM
//!   flag) and `image_digest_changed` (another digest than the one seen before) events.
//!
//! How to start it (the orchestrator service or `bot up`), beside everything else and until
//! shutdown:
//!
//! ```text
//! // sandbox: Arc<sandbox::AnySandbox> (or any `Sandbox`), agents: the deployed agents' names,
//! // nats_log: the `-l` file of a local nats-server (Docker: LogSource::docker(&docker_sandbox)).
//! let audit = AuditEmitter::new(jetstream::new(orchestrator_client), Principal::orchestrator());
//! let nkeys = watch::NkeyDirectory::load(&layout)?;
//! tokio::spawn(async move {
//!     let watch = watch::Watch {
//!         audit,
//!         nkeys,
//!         log: Some(watch::LogSource::file(nats_log)),
//!         sandbox: Some((&*sandbox, agents)),
//!         settings: watch::WatchSettings::default(),
//!     };
//!     watch::run(watch, shutdown).await
//! });
//! ```
//!
//! What it does not do: it never raises alerts or decides anything (the audit-anomaly agent's
//! rules do), never acts on an agent, and trusts nothing a client chose: the client name in a
//! log line is skipped by parsing nats-server's quoting, and only the connection's nkey, which
//! the server verified, names the principal.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use audit::emit::AuditEmitter;
use futures::StreamExt as _;
use protocol::message::AuditEvent;
use protocol::{AgentName, CorrelationId, Principal, UnixMillis};
use provision::{IdentitiesFile, Layout, ProvisionError};
use sandbox::{AgentStatus, Sandbox, SandboxError};
use tokio::io::{AsyncReadExt as _, AsyncSeekExt as _};
use tokio::sync::mpsc;

/// Longest log line kept, in bytes; longer lines are dropped whole.
pub const MAX_LINE_BYTES: usize = 16 * 1024;
/// Longest `subject` (or reason) in a `nats_violation` event, in bytes.
pub const MAX_DETAIL_BYTES: usize = 256;
/// Lines buffered between a log follower and the parser.
const LINE_BUFFER: usize = 1024;
/// Most bytes read from a log file per poll.
const MAX_READ_PER_POLL: u64 = 1024 * 1024;
/// Pause before following a container's output again after it ended.
const DOCKER_RETRY: Duration = Duration::from_secs(1);

// ---------------------------------------------------------------------------------------------
// nats-server log lines (pure)

/// What nats-server reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReportKind {
    /// `Publish Violation`: a publish its permissions do not allow.
    Publish,
    /// `Subscription Violation`: a subscription its permissions do not allow.
    Subscribe,
    /// `authentication error`: a connection that did not authenticate.
    Authentication,
    /// `TLS handshake error`: a connection that did not complete TLS.
    Tls,
    /// A connection, subscription or payload limit was exceeded.
    Limit,
}

impl ReportKind {
    /// The `kind` of the `nats_violation` event.
    pub fn as_str(self) -> &'static str {
        match self {
            ReportKind::Publish => "publish",
            ReportKind::Subscribe => "subscribe",
            ReportKind::Authentication => "authentication",
            ReportKind::Tls => "tls",
            ReportKind::Limit => "limit",
        }
    }
}

/// One report from a log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerReport {
    /// What happened.
    pub kind: ReportKind,
    /// The connection's nkey (`U…`), when the server named one.
    pub nkey: Option<String>,
    /// The subject (as nats-server quoted it, escapes kept) or the reason.
    pub detail: String,
}

/// Strips `[pid] YYYY/MM/DD hh:mm:ss.micros [LVL] ` and returns (level, rest). The level tag
/// is the first `[XYZ] ` preceded only by the pid and time stamp, so nothing a client chose
/// (which comes later in the line) can pose as it.
fn split_level(line: &str) -> Option<(&str, &str)> {
    let bytes = line.as_bytes();
    let mut i = 0;
    while i + 6 <= bytes.len() {
        let window = bytes.get(i..i + 6)?;
        if window.first() == Some(&b'[')
            && window
                .get(1..4)
                .is_some_and(|l| l.iter().all(u8::is_ascii_uppercase))
            && window.get(4..6) == Some(b"] ")
        {
            let before = line.get(..i)?;
            if !before
                .bytes()
                .all(|b| b.is_ascii_digit() || b" []/:.".contains(&b))
            {
                return None;
            }
            return Some((line.get(i + 1..i + 4)?, line.get(i + 6..)?));
        }
        if !(bytes
            .get(i)
            .is_some_and(|b| b.is_ascii_digit() || b" []/:.".contains(b)))
        {
            return None;
        }
        i += 1;
    }
    None
}

/// Takes one Go-quoted string (`%q`: `\"` and `\\` escaped) from the start of `s`; returns its
/// text with the escapes kept, and what follows the closing quote.
fn take_quoted(s: &str) -> Option<(&str, &str)> {
    let body = s.strip_prefix('"')?;
    let mut escaped = false;
    for (i, c) in body.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' => escaped = true,
            '"' => return Some((body.get(..i)?, body.get(i + 1..)?)),
            _ => {}
        }
    }
    None
}

/// Whether `s` looks like an nkey user public key.
fn is_user_nkey(s: &str) -> bool {
    s.len() == 56
        && s.starts_with('U')
        && s.bytes()
            .all(|b| b.is_ascii_uppercase() || (b'2'..=b'7').contains(&b))
}

/// The nkey in an identity field such as `APP/nkey:U…`.
fn nkey_of_identity(field: &str) -> Option<String> {
    let (_account, user) = field.split_once('/')?;
    let nkey = user.strip_prefix("nkey:")?;
    is_user_nkey(nkey).then(|| nkey.to_owned())
}

/// The first quoted value after `marker` in `message`.
fn quoted_after<'a>(message: &'a str, marker: &str) -> Option<&'a str> {
    let at = message.find(marker)?;
    let (value, _rest) = take_quoted(message.get(at + marker.len()..)?)?;
    Some(value)
}

/// Cuts to at most `max` bytes at a character boundary, control characters replaced.
fn bounded(text: &str, max: usize) -> String {
    let mut out = String::new();
    for c in text.chars() {
        let c = if c.is_control() { '?' } else { c };
        if out.len() + c.len_utf8() > max {
            break;
        }
        out.push(c);
    }
    out
}

/// Parses one nats-server log line into a report, or `None` for a line that reports nothing
/// the rules use. Recognised shapes (nats-server 2.10 to 2.15):
///
/// ```text
/// [pid] date time [ERR] 127.0.0.1:54906 - cid:32 - "<client name>" - "APP/nkey:U…" - Publish Violation - Subject "cmd.weather"
/// [pid] date time [ERR] 127.0.0.1:54906 - cid:32 - "<client name>" - "APP/nkey:U…" - Subscription Violation - Subject "audit.>", SID 1
/// [pid] date time [ERR] 127.0.0.1:54926 - cid:34 - authentication error - Nkey "U…"
/// [pid] date time [ERR] 127.0.0.1:54926 - cid:34 - authentication error
/// [pid] date time [ERR] 127.0.0.1:54936 - cid:35 - TLS handshake error: EOF
/// [pid] date time [ERR] 127.0.0.1:37598 - cid:32 - "<client name>" - "APP/nkey:U…" - maximum subscriptions exceeded
/// ```
///
/// The client name is chosen by the client: nats-server quotes it (`%q`), and the parser walks
/// the quoted fields by that quoting, so a name holding quotes, dashes or a whole fake line
/// stays one field. The identity is the last quoted field before the message.
pub fn parse_log_line(line: &str) -> Option<ServerReport> {
    let line = line.trim_end_matches(['\r', '\n']);
    let (level, rest) = split_level(line)?;
    if level != "ERR" && level != "WRN" {
        return None;
    }
    let (_address, rest) = rest.split_once(" - ")?;
    let rest = rest.strip_prefix("cid:")?;
    let (cid, mut rest) = rest.split_once(" - ")?;
    if cid.is_empty() || !cid.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let mut fields = Vec::new();
    while rest.starts_with('"') {
        let (field, after) = take_quoted(rest)?;
        fields.push(field);
        rest = after.strip_prefix(" - ")?;
    }
    let message = rest;
    let identity = fields.last().and_then(|f| nkey_of_identity(f));
    if let Some(m) = message.strip_prefix("Publish Violation") {
        let subject = quoted_after(m, "Subject ")?;
        return Some(ServerReport {
            kind: ReportKind::Publish,
            nkey: identity,
            detail: bounded(subject, MAX_DETAIL_BYTES),
        });
    }
    if let Some(m) = message.strip_prefix("Subscription Violation") {
        let subject = quoted_after(m, "Subject ")?;
        return Some(ServerReport {
            kind: ReportKind::Subscribe,
            nkey: identity,
            detail: bounded(subject, MAX_DETAIL_BYTES),
        });
    }
    if message.starts_with("authentication error") {
        let nkey = quoted_after(message, " - Nkey ")
            .filter(|k| is_user_nkey(k))
            .map(str::to_owned)
            .or(identity);
        return Some(ServerReport {
            kind: ReportKind::Authentication,
            nkey,
            detail: "authentication error".to_owned(),
        });
    }
    if message.starts_with("TLS handshake error") {
        return Some(ServerReport {
            kind: ReportKind::Tls,
            nkey: identity,
            detail: bounded(message, MAX_DETAIL_BYTES),
        });
    }
    if message.to_ascii_lowercase().starts_with("maximum ") {
        return Some(ServerReport {
            kind: ReportKind::Limit,
            nkey: identity,
            detail: bounded(&message.to_ascii_lowercase(), MAX_DETAIL_BYTES),
        });
    }
    None
}

/// The provisioned identities by nkey.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NkeyDirectory {
    by_nkey: HashMap<String, Principal>,
}

impl NkeyDirectory {
    /// From `nats/identities.json`'s content.
    pub fn from_identities(file: &IdentitiesFile) -> NkeyDirectory {
        NkeyDirectory {
            by_nkey: file
                .identities
                .iter()
                .map(|e| (e.nkey.clone(), e.principal.clone()))
                .collect(),
        }
    }

    /// Reads the layout's `nats/identities.json` (public keys only).
    pub fn load(layout: &Layout) -> Result<NkeyDirectory, ProvisionError> {
        Ok(Self::from_identities(&provision::load_identities(layout)?))
    }

    /// The principal an nkey belongs to.
    pub fn principal(&self, nkey: &str) -> Option<&Principal> {
        self.by_nkey.get(nkey)
    }
}

impl ServerReport {
    /// The `nats_violation` audit event for this report. An nkey that is not one of ours
    /// names no principal; for an authentication error its start is kept in the reason.
    pub fn event(&self, nkeys: &NkeyDirectory) -> AuditEvent {
        let principal = self
            .nkey
            .as_deref()
            .and_then(|k| nkeys.principal(k))
            .cloned();
        let subject = match (&self.nkey, &principal, self.kind) {
            (Some(nkey), None, ReportKind::Authentication) => {
                format!(
                    "authentication error (unknown nkey {}…)",
                    nkey.get(..12).unwrap_or(nkey)
                )
            }
            _ => self.detail.clone(),
        };
        AuditEvent::NatsViolation {
            principal,
            kind: self.kind.as_str().to_owned(),
            subject: bounded(&subject, MAX_DETAIL_BYTES),
        }
    }
}

/// Admits at most `per_minute` reports per principal (or per "unknown") per wall-clock minute,
/// and counts the rest.
#[derive(Debug, Clone)]
pub struct ViolationLimiter {
    per_minute: u32,
    minute: i64,
    counts: HashMap<Option<Principal>, u32>,
    suppressed: u64,
}

impl ViolationLimiter {
    /// A limiter admitting `per_minute` (at least 1) per principal per minute.
    pub fn new(per_minute: u32) -> ViolationLimiter {
        ViolationLimiter {
            per_minute: per_minute.max(1),
            minute: i64::MIN,
            counts: HashMap::new(),
            suppressed: 0,
        }
    }

    /// Whether a report about `principal` at `now` may be published.
    pub fn admit(&mut self, principal: Option<&Principal>, now: UnixMillis) -> bool {
        let minute = now.0.div_euclid(60_000);
        if minute != self.minute {
            self.minute = minute;
            self.counts.clear();
        }
        let count = self.counts.entry(principal.cloned()).or_insert(0);
        if *count >= self.per_minute {
            self.suppressed += 1;
            return false;
        }
        *count += 1;
        true
    }

    /// Reports suppressed since the last call.
    pub fn take_suppressed(&mut self) -> u64 {
        std::mem::take(&mut self.suppressed)
    }
}

// ---------------------------------------------------------------------------------------------
// Sandbox supervision (pure core)

/// Anything that can report an agent's state: every `sandbox::Sandbox`, or a test double.
pub trait Inspect: Send + Sync {
    /// The agent's current state (named apart from `Sandbox::inspect`, so both traits can be
    /// in scope).
    fn status(
        &self,
        agent: &AgentName,
    ) -> impl Future<Output = Result<AgentStatus, SandboxError>> + Send;
}

impl<S: Sandbox> Inspect for S {
    fn status(
        &self,
        agent: &AgentName,
    ) -> impl Future<Output = Result<AgentStatus, SandboxError>> + Send {
        Sandbox::inspect(self, agent)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    restart_count: u32,
    digest: Option<String>,
}

/// What the supervision saw of each agent, and what changed since.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Supervision {
    seen: BTreeMap<AgentName, Seen>,
}

impl Supervision {
    /// The events an inspection gives: `agent_restarted` when the restart count went up (the
    /// first inspection only sets the baseline; a count that went down, after a fresh start,
    /// resets it), `image_digest_changed` when the digest differs from the one seen before.
    pub fn observe(&mut self, status: &AgentStatus) -> Vec<AuditEvent> {
        let now = Seen {
            restart_count: status.restart_count,
            digest: status.image_digest.clone(),
        };
        let Some(before) = self.seen.get_mut(&status.name) else {
            self.seen.insert(status.name.clone(), now);
            return Vec::new();
        };
        let mut events = Vec::new();
        if now.restart_count > before.restart_count {
            events.push(AuditEvent::AgentRestarted {
                agent: status.name.clone(),
                restart_count: now.restart_count,
                oom_killed: status.oom_killed,
            });
        }
        before.restart_count = now.restart_count;
        match (&before.digest, &now.digest) {
            (Some(previous), Some(current)) if previous != current => {
                events.push(AuditEvent::ImageDigestChanged {
                    agent: status.name.clone(),
                    previous: bounded(previous, 80),
                    current: bounded(current, 80),
                });
                before.digest = now.digest;
            }
            (None, Some(_)) => before.digest = now.digest,
            _ => {}
        }
        events
    }
}

// ---------------------------------------------------------------------------------------------
// Log sources (shell)

/// Where nats-server's log comes from.
#[derive(Debug, Clone)]
pub enum LogSource {
    /// A log file (`nats-server -l <file>`), followed across truncation and rotation.
    File {
        /// The file.
        path: PathBuf,
        /// Read what is already there first (`false`: only lines written from now on).
        from_start: bool,
        /// How often the file is checked for new lines.
        poll: Duration,
    },
    /// A container's output (the NATS container of the Docker backend).
    Docker {
        /// The engine.
        docker: bollard::Docker,
        /// The container's name.
        container: String,
    },
}

impl LogSource {
    /// Follows `path` from its current end, checking every 200 ms.
    pub fn file(path: impl Into<PathBuf>) -> LogSource {
        LogSource::File {
            path: path.into(),
            from_start: false,
            poll: Duration::from_millis(200),
        }
    }

    /// Follows the NATS container of a Docker sandbox from now on.
    pub fn docker(sandbox: &sandbox::docker::DockerSandbox) -> LogSource {
        LogSource::Docker {
            docker: sandbox.client().clone(),
            container: sandbox.settings().instance.nats_container(),
        }
    }

    /// Sends each complete line to `lines` until the receiver is gone.
    pub async fn follow(self, lines: mpsc::Sender<String>) {
        match self {
            LogSource::File {
                path,
                from_start,
                poll,
            } => follow_file(&path, from_start, poll, &lines).await,
            LogSource::Docker { docker, container } => {
                follow_docker(&docker, &container, &lines).await;
            }
        }
    }
}

/// Splits bytes into lines, dropping lines over [`MAX_LINE_BYTES`].
#[derive(Debug, Default)]
struct LineSplitter {
    partial: Vec<u8>,
    overlong: bool,
}

impl LineSplitter {
    fn push(&mut self, bytes: &[u8], out: &mut Vec<String>) {
        for &b in bytes {
            if b == b'\n' {
                if !self.overlong {
                    out.push(String::from_utf8_lossy(&self.partial).into_owned());
                }
                self.partial.clear();
                self.overlong = false;
            } else if self.partial.len() >= MAX_LINE_BYTES {
                self.overlong = true;
                self.partial.clear();
            } else if !self.overlong {
                self.partial.push(b);
            }
        }
    }
}

async fn send_all(lines: &mpsc::Sender<String>, out: &mut Vec<String>) -> bool {
    for line in out.drain(..) {
        if lines.send(line).await.is_err() {
            return false;
        }
    }
    true
}

fn file_id(meta: &std::fs::Metadata) -> u64 {
    use std::os::unix::fs::MetadataExt as _;
    meta.ino()
}

async fn follow_file(path: &Path, from_start: bool, poll: Duration, lines: &mpsc::Sender<String>) {
    // After the first look, every file under the name is read whole: one that appears later
    // or replaces the old one holds only new lines.
    let mut from_start = from_start;
    loop {
        let mut file = match tokio::fs::File::open(path).await {
            Ok(f) => f,
            Err(e) => {
                tracing::debug!(path = %path.display(), error = %e, "log file not there yet");
                from_start = true;
                tokio::time::sleep(poll).await;
                if lines.is_closed() {
                    return;
                }
                continue;
            }
        };
        let Ok(meta) = file.metadata().await else {
            tokio::time::sleep(poll).await;
            continue;
        };
        let id = file_id(&meta);
        let mut position = if from_start { 0 } else { meta.len() };
        from_start = true;
        let mut splitter = LineSplitter::default();
        let mut out = Vec::new();
        loop {
            if lines.is_closed() {
                return;
            }
            // Rotated (another file under the name) or truncated: start over.
            match tokio::fs::metadata(path).await {
                Ok(m) if file_id(&m) != id || m.len() < position => break,
                Ok(_) => {}
                Err(_gone) => break,
            }
            if file.seek(std::io::SeekFrom::Start(position)).await.is_err() {
                break;
            }
            let mut chunk = Vec::new();
            match (&mut file)
                .take(MAX_READ_PER_POLL)
                .read_to_end(&mut chunk)
                .await
            {
                Ok(0) => tokio::time::sleep(poll).await,
                Ok(n) => {
                    position += n as u64;
                    splitter.push(&chunk, &mut out);
                    if !send_all(lines, &mut out).await {
                        return;
                    }
                }
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "cannot read the log file");
                    tokio::time::sleep(poll).await;
                    break;
                }
            }
        }
    }
}

async fn follow_docker(docker: &bollard::Docker, container: &str, lines: &mpsc::Sender<String>) {
    let mut since = UnixMillis::now().as_secs();
    loop {
        let options = bollard::query_parameters::LogsOptionsBuilder::default()
            .follow(true)
            .stdout(true)
            .stderr(true)
            .since(i32::try_from(since).unwrap_or(i32::MAX))
            .build();
        let mut stream = docker.logs(container, Some(options));
        let mut splitter = LineSplitter::default();
        let mut out = Vec::new();
        while let Some(chunk) = stream.next().await {
            match chunk {
                Ok(output) => {
                    splitter.push(&output.into_bytes(), &mut out);
                    if !send_all(lines, &mut out).await {
                        return;
                    }
                }
                Err(e) => {
                    tracing::warn!(container, error = %e, "container output interrupted");
                    break;
                }
            }
        }
        if lines.is_closed() {
            return;
        }
        tokio::time::sleep(DOCKER_RETRY).await;
        since = UnixMillis::now().as_secs().saturating_sub(1);
    }
}

// ---------------------------------------------------------------------------------------------
// The watchers (shell)

/// How the watchers behave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WatchSettings {
    /// How often every agent is inspected.
    pub inspect_interval: Duration,
    /// Most `nats_violation` events per principal per minute.
    pub violations_per_minute: u32,
}

impl Default for WatchSettings {
    fn default() -> Self {
        WatchSettings {
            inspect_interval: Duration::from_secs(5),
            violations_per_minute: 60,
        }
    }
}

/// Everything the watchers need.
#[derive(Debug)]
pub struct Watch<'a, I> {
    /// Publishes as the orchestrator.
    pub audit: AuditEmitter,
    /// The provisioned identities.
    pub nkeys: NkeyDirectory,
    /// nats-server's log, if it can be followed.
    pub log: Option<LogSource>,
    /// The sandbox and the agents it runs, if supervised here.
    pub sandbox: Option<(&'a I, Vec<AgentName>)>,
    /// Intervals and limits.
    pub settings: WatchSettings,
}

async fn emit(audit: &AuditEmitter, event: AuditEvent) {
    let kind = event.kind();
    if let Err(e) = audit.emit(CorrelationId::random(), event).await {
        tracing::warn!(kind, code = e.code(), error = %e, "watcher event not recorded");
    }
}

/// Follows nats-server's log and publishes its reports as `nats_violation` events, until
/// cancelled.
pub async fn watch_nats_log(
    source: LogSource,
    nkeys: &NkeyDirectory,
    audit: &AuditEmitter,
    per_minute: u32,
) {
    let (tx, mut rx) = mpsc::channel::<String>(LINE_BUFFER);
    let follower = source.follow(tx);
    let handler = async {
        let mut limiter = ViolationLimiter::new(per_minute);
        while let Some(line) = rx.recv().await {
            let Some(report) = parse_log_line(&line) else {
                continue;
            };
            let event = report.event(nkeys);
            let AuditEvent::NatsViolation { principal, .. } = &event else {
                continue;
            };
            let now = UnixMillis::now();
            if !limiter.admit(principal.as_ref(), now) {
                continue;
            }
            let suppressed = limiter.take_suppressed();
            if suppressed > 0 {
                tracing::warn!(
                    suppressed,
                    "nats-server reports over the rate limit were not recorded"
                );
            }
            emit(audit, event).await;
        }
    };
    tokio::join!(follower, handler);
}

/// Inspects every agent periodically and publishes what changed, until cancelled.
pub async fn supervise<I: Inspect>(
    inspector: &I,
    agents: &[AgentName],
    audit: &AuditEmitter,
    interval: Duration,
) {
    let mut supervision = Supervision::default();
    let mut ticker = tokio::time::interval(interval.max(Duration::from_millis(10)));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        for agent in agents {
            match inspector.status(agent).await {
                Ok(status) => {
                    for event in supervision.observe(&status) {
                        tracing::info!(%agent, kind = event.kind(), "sandbox change");
                        emit(audit, event).await;
                    }
                }
                Err(SandboxError::UnknownAgent(_)) => {
                    tracing::debug!(%agent, "agent not deployed (stopped or quarantined)");
                }
                Err(e) => tracing::warn!(%agent, code = e.code(), error = %e, "cannot inspect"),
            }
        }
    }
}

/// Runs the configured watchers until `shutdown` completes.
pub async fn run<I: Inspect>(watch: Watch<'_, I>, shutdown: impl Future<Output = ()>) {
    let Watch {
        audit,
        nkeys,
        log,
        sandbox,
        settings,
    } = watch;
    let log_watch = async {
        match log {
            Some(source) => {
                watch_nats_log(source, &nkeys, &audit, settings.violations_per_minute).await;
            }
            None => std::future::pending().await,
        }
    };
    let sandbox_watch = async {
        match &sandbox {
            Some((inspector, agents)) => {
                supervise(*inspector, agents, &audit, settings.inspect_interval).await;
            }
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        () = shutdown => {}
        () = log_watch => {}
        () = sandbox_watch => {}
    }
    tracing::info!("watchers stopped");
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::message::{Isolation, IsolationReport};
    use sandbox::RunState;

    const HUE_KEY: &str = "UBUFQQZ46EYAJ2NMLMGFW6NNES7KGTCLHH4UIDQH3EOFERLD5PZTZQI5";
    const ORCH_KEY: &str = "UBLUEBPRB3ZA5PCTVH27TWAHNL4BGE57DOTREAYGI2OAMX62NMR3NBGO";
    const STRANGER: &str = "UAH42UG6PV552P5SWLWTBP3H3S5BHAVCO2IEKEXUANJXR75J63RQ5WM6";

    fn directory() -> NkeyDirectory {
        NkeyDirectory {
            by_nkey: [
                (HUE_KEY.to_owned(), Principal::new("hue").unwrap()),
                (ORCH_KEY.to_owned(), Principal::orchestrator()),
            ]
            .into_iter()
            .collect(),
        }
    }

    fn check(line: &str) -> String {
        match parse_log_line(line) {
            None => "-".to_owned(),
            Some(r) => match r.event(&directory()) {
                AuditEvent::NatsViolation {
                    principal,
                    kind,
                    subject,
                } => format!(
                    "{kind} by {} on {subject}",
                    principal.as_ref().map_or("?", Principal::as_str)
                ),
                other => format!("unexpected {other:?}"),
            },
        }
    }

    #[test]
    fn log_lines_are_parsed() {
        let prefix = "[2089] 2026/11/21 17:22:00.209801 [ERR] 127.0.0.1:54906 - cid:32 - ";
        let cases = [
            (
                format!("{prefix}\"v0.51.0:rust:hue\" - \"APP/nkey:{HUE_KEY}\" - Publish Violation - Subject \"cmd.weather\""),
                "publish by hue on cmd.weather",
            ),
            (
                format!("{prefix}\"v0.51.0:rust:hue\" - \"APP/nkey:{HUE_KEY}\" - Subscription Violation - Subject \"audit.>\", SID 1"),
                "subscribe by hue on audit.>",
            ),
            (
                format!("{prefix}\"v0.51.0:rust:hue\" - \"APP/nkey:{HUE_KEY}\" - Subscription Violation - Subject \"cmd.x\", Queue \"q\", SID 4"),
                "subscribe by hue on cmd.x",
            ),
            // Without a client name.
            (
                format!("{prefix}\"APP/nkey:{HUE_KEY}\" - Publish Violation - Subject \"cmd.weather\""),
                "publish by hue on cmd.weather",
            ),
            // An identity that is not ours.
            (
                format!("{prefix}\"APP/nkey:{STRANGER}\" - Publish Violation - Subject \"x\""),
                "publish by ? on x",
            ),
            (
                format!("{prefix}authentication error - Nkey \"{HUE_KEY}\""),
                "authentication by hue on authentication error",
            ),
            (
                format!("{prefix}authentication error - Nkey \"{STRANGER}\""),
                "authentication by ? on authentication error (unknown nkey UAH42UG6PV55…)",
            ),
            (format!("{prefix}authentication error"), "authentication by ? on authentication error"),
            (format!("{prefix}TLS handshake error: EOF"), "tls by ? on TLS handshake error: EOF"),
            (
                format!("{prefix}\"v0.51.0:rust:hue\" - \"APP/nkey:{HUE_KEY}\" - maximum subscriptions exceeded"),
                "limit by hue on maximum subscriptions exceeded",
            ),
            (
                format!("{prefix}\"APP/nkey:{HUE_KEY}\" - Maximum Payload Violation"),
                "limit by hue on maximum payload violation",
            ),
            // Quotes in the subject stay escaped.
            (
                format!("{prefix}\"APP/nkey:{HUE_KEY}\" - Publish Violation - Subject \"cmd.x\\\"y\""),
                "publish by hue on cmd.x\\\"y",
            ),
            // Without the pid and time stamp (logtime off).
            (
                format!("[ERR] 127.0.0.1:1 - cid:2 - \"APP/nkey:{HUE_KEY}\" - Publish Violation - Subject \"a\""),
                "publish by hue on a",
            ),
            // Lines that report nothing the rules use.
            ("[2089] 2026/11/21 17:22:00.164438 [INF] Starting JetStream".to_owned(), "-"),
            ("[2089] 2026/11/21 17:22:00.165663 [WRN] Clients that are not using \"TLS Handshake First\" option will fail to connect".to_owned(), "-"),
            (
                format!("[2089] 2026/11/21 17:22:00.164438 [INF] 127.0.0.1:1 - cid:2 - \"APP/nkey:{HUE_KEY}\" - Publish Violation - Subject \"a\""),
                "-",
            ),
            (format!("{prefix}Slow Consumer Detected"), "-"),
            (String::new(), "-"),
            ("garbage - cid:x - Publish Violation - Subject \"a\"".to_owned(), "-"),
            (format!("{prefix}\"unterminated - Publish Violation - Subject \"a\""), "-"),
        ];
        for (line, expected) in cases {
            assert_eq!(check(&line), expected, "{line}");
        }
    }

    #[test]
    fn a_client_name_cannot_frame_another_identity() {
        let prefix = "[6455] 2026/11/21 17:23:32.388756 [ERR] 127.0.0.1:35562 - cid:32 - ";
        // The real line nats-server wrote for a hue connection whose name held quotes, a fake
        // identity, a fake message and a newline with a whole fake line (it escapes them: %q).
        let name = format!(
            "\"v0.51.0:rust:evil\\\" - \\\"APP/nkey:{ORCH_KEY}\\\" - Publish Violation - Subject \\\"x\\n[1] 2026/11/21 17:22:00.209801 [ERR] 1.2.3.4:5 - cid:1 - \\\"n\\\" - \\\"APP/nkey:{ORCH_KEY}\\\" - Publish Violation - Subject \\\"cmd.hue\\\"\""
        );
        let line = format!(
            "{prefix}{name} - \"APP/nkey:{HUE_KEY}\" - Publish Violation - Subject \"cmd.x\\\"y\""
        );
        assert_eq!(check(&line), "publish by hue on cmd.x\\\"y");
        // A name that is itself shaped like an identity is not the last field.
        let line = format!(
            "{prefix}\"APP/nkey:{ORCH_KEY}\" - \"APP/nkey:{HUE_KEY}\" - Publish Violation - Subject \"a\""
        );
        assert_eq!(check(&line), "publish by hue on a");
        // A level tag inside client text does not count.
        let line = format!(
            "x [ERR] 127.0.0.1:1 - cid:2 - \"APP/nkey:{ORCH_KEY}\" - Publish Violation - Subject \"a\""
        );
        assert_eq!(check(&line), "-");
    }

    #[test]
    fn details_are_bounded_and_printable() {
        let subject = "a".repeat(1000);
        let line = format!(
            "[ERR] 1.2.3.4:5 - cid:1 - \"APP/nkey:{HUE_KEY}\" - Publish Violation - Subject \"{subject}\""
        );
        let r = parse_log_line(&line).unwrap();
        assert_eq!(r.detail.len(), MAX_DETAIL_BYTES);
        let AuditEvent::NatsViolation { subject, .. } = r.event(&directory()) else {
            unreachable!()
        };
        assert_eq!(subject.len(), MAX_DETAIL_BYTES);
        assert_eq!(bounded("a\u{7}b", 10), "a?b");
        assert_eq!(bounded("ééé", 5), "éé");
    }

    #[test]
    fn the_limiter_admits_per_principal_per_minute() {
        let hue = Principal::new("hue").unwrap();
        let mut limiter = ViolationLimiter::new(3);
        let t = UnixMillis(1_768_478_400_000);
        let admitted: Vec<bool> = (0..5).map(|_| limiter.admit(Some(&hue), t)).collect();
        assert_eq!(admitted, vec![true, true, true, false, false]);
        // Others have their own budget; unknown clients share one.
        assert!(limiter.admit(None, t));
        assert!(limiter.admit(Some(&Principal::orchestrator()), t));
        assert_eq!(limiter.take_suppressed(), 2);
        assert_eq!(limiter.take_suppressed(), 0);
        // A new minute starts over.
        assert!(limiter.admit(Some(&hue), UnixMillis(t.0 + 60_000)));
    }

    #[test]
    fn lines_are_split_and_overlong_ones_dropped() {
        let mut s = LineSplitter::default();
        let mut out = Vec::new();
        s.push(b"one\ntw", &mut out);
        s.push(b"o\n", &mut out);
        s.push(&vec![b'x'; MAX_LINE_BYTES + 10], &mut out);
        s.push(b"tail\nthree\n", &mut out);
        assert_eq!(out, vec!["one", "two", "three"]);
    }

    fn status(name: &str, restarts: u32, digest: Option<&str>, oom: bool) -> AgentStatus {
        AgentStatus {
            name: AgentName::new(name).unwrap(),
            state: RunState::Running,
            image_digest: digest.map(str::to_owned),
            memory_bytes: None,
            restart_count: restarts,
            oom_killed: oom,
            isolation: IsolationReport {
                level: Isolation::Container,
                measures: Vec::new(),
                missing: Vec::new(),
            },
        }
    }

    #[test]
    fn supervision_reports_restarts_and_changed_digests() {
        let mut s = Supervision::default();
        let kinds = |events: Vec<AuditEvent>| -> Vec<String> {
            events
                .iter()
                .map(|e| match e {
                    AuditEvent::AgentRestarted {
                        agent,
                        restart_count,
                        oom_killed,
                    } => format!("restarted {agent} {restart_count} oom={oom_killed}"),
                    AuditEvent::ImageDigestChanged {
                        agent,
                        previous,
                        current,
                    } => format!("digest {agent} {previous} -> {current}"),
                    other => format!("{other:?}"),
                })
                .collect()
        };
        // The first sight is the baseline, whatever it says.
        assert!(kinds(s.observe(&status("hue", 2, Some("sha256:a"), false))).is_empty());
        assert!(kinds(s.observe(&status("hue", 2, Some("sha256:a"), false))).is_empty());
        assert_eq!(
            kinds(s.observe(&status("hue", 4, Some("sha256:a"), true))),
            vec!["restarted hue 4 oom=true"]
        );
        assert_eq!(
            kinds(s.observe(&status("hue", 4, Some("sha256:b"), true))),
            vec!["digest hue sha256:a -> sha256:b"]
        );
        // Reported once, not on every inspection.
        assert!(kinds(s.observe(&status("hue", 4, Some("sha256:b"), true))).is_empty());
        // A fresh start resets the count without an event; the next restart counts from there.
        assert!(kinds(s.observe(&status("hue", 0, Some("sha256:b"), false))).is_empty());
        assert_eq!(
            kinds(s.observe(&status("hue", 1, Some("sha256:b"), false))),
            vec!["restarted hue 1 oom=false"]
        );
        // Agents are tracked separately; a process agent has no digest.
        assert!(kinds(s.observe(&status("weather", 0, None, false))).is_empty());
        assert_eq!(
            kinds(s.observe(&status("weather", 1, None, false))),
            vec!["restarted weather 1 oom=false"]
        );
    }
}
