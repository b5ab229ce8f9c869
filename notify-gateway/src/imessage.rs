//! The iMessage adapter (macOS Messages): read `chat.db`, send with `osascript`.
//!
//! What it does:
//! - **Reader** ([`ChatDb`]): opens `~/Library/Messages/chat.db` read-only (a fresh connection
//!   per poll, see [`ChatDb::open`] for the flags and why) and returns the messages after a
//!   cursor (the `message.ROWID`), oldest first, bounded per read. Each row carries the sender's
//!   handle, normalised ([`normalize_handle`]), its chat (guid and style: 45 = one-to-one), its
//!   date ([`apple_date_to_unix_millis`]: seconds or nanoseconds since 2001-01-01 UTC) and its
//!   text: the `text` column, or when that is NULL (Ventura and later) the string decoded from
//!   the `attributedBody` typedstream blob ([`attributed_body_text`], bounded, never panics).
//! - **Channel** ([`IMessage`]): turns rows into [`InboundEvent`]s (`im-<ROWID>` as dedup id).
//!   Rows sent by us (`is_from_me = 1`), rows from handles not in the iMessage allowlist and rows
//!   without text become `Ignored` events, so the cursor moves past them but nothing about them
//!   leaves the Mac: on iMessage the assistant's account may also receive the owner's ordinary
//!   conversations, which are not attempts to talk to the assistant (no audit row, no content).
//!   "approve 4821" / "reject 4821" ([`parse_code_reply`]) becomes a typed decision
//!   (`ChatDecision::Code`, the orchestrator matches the plan by its short code); any other text
//!   is published as chat input. The first poll without a cursor starts at the newest row, so
//!   the history in `chat.db` is never replayed.
//! - **Sender**: runs `osascript` with the constant [`SEND_SCRIPT`] and passes the recipient and
//!   the text as two separate process arguments ([`send_command`]); they are never spliced into
//!   AppleScript source, so no text can change what the script does. Sending runs only on macOS
//!   or when an `osascript` path is configured; elsewhere it fails with
//!   `imessage_unsupported_platform`.
//! - **Rendering** ([`render_plan_text`], [`render_message_text`]): plain text (iMessage has no
//!   markup and no buttons): the plan's summary, each step with its exact parameters and why,
//!   and "Reply approve <code> or reject <code>" with the plan's short code.
//!
//! What it does not do: group chats are passed on as not private (the inbound decision skips
//! them); attachments, tapbacks, edits and retractions are not read as input; it cannot edit a
//! sent message (an edit is sent as a new message); it cannot confirm delivery (Messages may
//! accept a send that fails later). It never writes `chat.db`.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use protocol::ChannelName;
use protocol::message::{OutboundMessage, PlanProposal, Verdict};
use rusqlite::{Connection, OpenFlags};

use crate::channel::{Channel, Delivered, DeliveryError, InboundEvent, InboundKind, Rendered};
use crate::plain::{clean, cut, plan_body};

/// Seconds from the Unix epoch to Apple's epoch (2001-01-01T00:00:00Z).
pub const APPLE_EPOCH_UNIX_SECS: i64 = 978_307_200;
/// `message.date` values above this are nanoseconds since 2001 (macOS 10.13+), values at or
/// below it seconds (older databases). 1e11 seconds is year 5170; 1e11 ns is 100 s after 2001.
pub const NANOS_THRESHOLD: i64 = 100_000_000_000;
/// Most rows returned by one read.
pub const READ_LIMIT: u32 = 100;
/// Longest text taken from one `attributedBody` (bytes); longer length prefixes are refused.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// Longest message sent (characters); longer text is cut with `…`.
pub const MAX_SEND_CHARS: usize = 16_000;
/// How long one `osascript` run may take.
const SEND_TIMEOUT: Duration = Duration::from_secs(30);

/// The AppleScript run by `osascript`, one `-e` argument per line. Constant: the recipient and
/// the text arrive as `item 1 of argv` and `item 2 of argv`.
pub const SEND_SCRIPT: &[&str] = &[
    "on run argv",
    "tell application \"Messages\"",
    "set svc to 1st account whose service type = iMessage",
    "send (item 2 of argv) to participant (item 1 of argv) of svc",
    "end tell",
    "end run",
];

/// Why the iMessage adapter failed.
#[derive(Debug, thiserror::Error)]
pub enum IMessageError {
    /// `chat.db` could not be opened (missing, or no Full Disk Access).
    #[error("cannot open the Messages database: {0}")]
    Open(#[source] rusqlite::Error),
    /// A query on `chat.db` failed.
    #[error("cannot read the Messages database: {0}")]
    Query(#[source] rusqlite::Error),
    /// Sending is only possible on macOS (or with an explicit `osascript` path).
    #[error("sending iMessages needs macOS (or an explicit osascript path)")]
    UnsupportedPlatform,
    /// The recipient is not a phone number or an email address.
    #[error("the recipient is not a phone number or email address")]
    BadRecipient,
    /// `osascript` could not be started or did not finish in time.
    #[error("osascript could not run: {0}")]
    Spawn(String),
    /// Messages refused: the process lacks the Automation permission for Messages (-1743).
    #[error("osascript is not allowed to control Messages (Automation permission, -1743)")]
    NotPermitted,
    /// `osascript` ran and failed.
    #[error("osascript failed: {0}")]
    SendFailed(String),
    /// A blocking task could not run.
    #[error("iMessage task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
}

impl IMessageError {
    /// A stable code for logs and users.
    pub fn code(&self) -> &'static str {
        match self {
            IMessageError::Open(_) => "imessage_db_open_failed",
            IMessageError::Query(_) => "imessage_db_query_failed",
            IMessageError::UnsupportedPlatform => "imessage_unsupported_platform",
            IMessageError::BadRecipient => "imessage_bad_recipient",
            IMessageError::Spawn(_) => "imessage_osascript_unavailable",
            IMessageError::NotPermitted => "imessage_not_permitted",
            IMessageError::SendFailed(_) => "imessage_send_failed",
            IMessageError::Join(_) => "imessage_task_failed",
        }
    }

    fn into_delivery(self) -> DeliveryError {
        let text = format!("{}: {self}", self.code());
        match self {
            // The operator can fix these (grant access, start Messages) without losing messages.
            IMessageError::Open(_)
            | IMessageError::Query(_)
            | IMessageError::Spawn(_)
            | IMessageError::NotPermitted
            | IMessageError::Join(_) => DeliveryError::Transient(text),
            IMessageError::UnsupportedPlatform
            | IMessageError::BadRecipient
            | IMessageError::SendFailed(_) => DeliveryError::Permanent(text),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Pure helpers

/// Converts a `message.date` value (seconds or nanoseconds since 2001-01-01 UTC, told apart by
/// magnitude: above [`NANOS_THRESHOLD`] it is nanoseconds) to Unix milliseconds. Saturating.
pub fn apple_date_to_unix_millis(raw: i64) -> i64 {
    let since_2001_ms = if raw.unsigned_abs() > NANOS_THRESHOLD.unsigned_abs() {
        raw / 1_000_000
    } else {
        raw.saturating_mul(1_000)
    };
    since_2001_ms.saturating_add(APPLE_EPOCH_UNIX_SECS * 1_000)
}

/// Normalises a handle for comparison: an email address (holds `@`) is trimmed and lowercased;
/// anything else is a phone number reduced to `+` and its digits (`+44 7700 900123`,
/// `447700900123` and `(+44) 7700-900123` all become `+447700900123`, so write allowlisted
/// numbers with their country code). `None` if it is neither.
pub fn normalize_handle(raw: &str) -> Option<String> {
    let s = raw.trim();
    if s.contains('@') {
        let lower = s.to_lowercase();
        let valid = !lower.starts_with('@')
            && !lower.ends_with('@')
            && lower.len() <= 96
            && !lower.starts_with('-')
            && lower
                .chars()
                .all(|c| !c.is_whitespace() && !c.is_control() && c != ':');
        return valid.then_some(lower);
    }
    let digits: String = s.chars().filter(char::is_ascii_digit).collect();
    let only_phone_chars = s
        .chars()
        .all(|c| c.is_ascii_digit() || matches!(c, '+' | ' ' | '-' | '(' | ')' | '.'));
    if digits.is_empty() || digits.len() > 20 || !only_phone_chars {
        return None;
    }
    Some(format!("+{digits}"))
}

/// Parses a typed decision: `approve <digits>` or `reject <digits>` (case-insensitive, extra
/// spaces and a trailing `.`/`!` allowed, 1 to 12 digits). `None` for anything else.
pub fn parse_code_reply(text: &str) -> Option<(Verdict, String)> {
    let mut words = text.split_whitespace();
    let verb = words.next()?.to_lowercase();
    let code = words.next()?.trim_end_matches(['.', '!']);
    if words.next().is_some() {
        return None;
    }
    let verdict = match verb.as_str() {
        "approve" => Verdict::Approve,
        "reject" => Verdict::Reject,
        _ => return None,
    };
    if code.is_empty() || code.len() > 12 || !code.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((verdict, code.to_owned()))
}

/// Extracts the plain string from an `attributedBody` blob (an NSArchiver "streamtyped"
/// NSAttributedString): after the `NSString` class name, the `0x01 0x2B` (`+`) marker, then a
/// length (one byte; `0x81` + u16 LE; `0x82` + u32 LE), then exactly that many UTF-8 bytes.
/// `None` if the blob does not have that shape, the length runs past the blob or over
/// [`MAX_BODY_BYTES`], or the bytes are not UTF-8. Never panics.
pub fn attributed_body_text(blob: &[u8]) -> Option<String> {
    const CLASS: &[u8] = b"NSString";
    const MARKER: &[u8] = &[0x01, 0x2B];
    let class_at = find(blob, CLASS)?;
    let after_class = blob.get(class_at.checked_add(CLASS.len())?..)?;
    let marker_at = find(after_class, MARKER)?;
    let rest = after_class.get(marker_at.checked_add(MARKER.len())?..)?;
    let (&tag, rest) = rest.split_first()?;
    let (len, rest) = match tag {
        0x81 => {
            let bytes: [u8; 2] = rest.get(..2)?.try_into().ok()?;
            (usize::from(u16::from_le_bytes(bytes)), rest.get(2..)?)
        }
        0x82 => {
            let bytes: [u8; 4] = rest.get(..4)?.try_into().ok()?;
            (
                usize::try_from(u32::from_le_bytes(bytes)).ok()?,
                rest.get(4..)?,
            )
        }
        0x80 | 0x83..=0xFF => return None,
        n => (usize::from(n), rest),
    };
    if len > MAX_BODY_BYTES {
        return None;
    }
    let text = rest.get(..len)?;
    String::from_utf8(text.to_vec()).ok()
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() {
        return None;
    }
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The `osascript` invocation that sends `text` to `recipient`: the program and its arguments
/// (`-e <line>` for each line of [`SEND_SCRIPT`], then the recipient, then the text, each one
/// argument, verbatim). The recipient must be a normalised handle (it cannot start with `-`,
/// so `osascript` cannot read it as an option; the text comes after it, where option parsing
/// has stopped).
pub fn send_command(
    osascript: &Path,
    recipient: &str,
    text: &str,
) -> Result<(PathBuf, Vec<OsString>), IMessageError> {
    if normalize_handle(recipient).as_deref() != Some(recipient) {
        return Err(IMessageError::BadRecipient);
    }
    let mut args = Vec::with_capacity(SEND_SCRIPT.len() * 2 + 2);
    for line in SEND_SCRIPT {
        args.push(OsString::from("-e"));
        args.push(OsString::from(*line));
    }
    args.push(OsString::from(recipient));
    args.push(OsString::from(text));
    Ok((osascript.to_path_buf(), args))
}

/// Where `osascript` is when none is configured: `/usr/bin/osascript` on macOS, nowhere else.
pub fn default_osascript() -> Option<PathBuf> {
    if cfg!(target_os = "macos") {
        Some(PathBuf::from("/usr/bin/osascript"))
    } else {
        None
    }
}

/// Runs `osascript` (or the configured program) to send `text` to `recipient`.
pub async fn send(
    osascript: Option<&Path>,
    recipient: &str,
    text: &str,
) -> Result<(), IMessageError> {
    let program = osascript
        .map(Path::to_path_buf)
        .or_else(default_osascript)
        .ok_or(IMessageError::UnsupportedPlatform)?;
    let (program, args) = send_command(&program, recipient, text)?;
    let run = tokio::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(SEND_TIMEOUT, run)
        .await
        .map_err(|_elapsed| IMessageError::Spawn("timed out".to_owned()))?
        .map_err(|e| IMessageError::Spawn(e.to_string()))?;
    if output.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    if stderr.contains("-1743") {
        return Err(IMessageError::NotPermitted);
    }
    // osascript's error names the script position and the error, never our argv.
    let brief: String = stderr.trim().chars().take(200).collect();
    Err(IMessageError::SendFailed(brief))
}

// ---------------------------------------------------------------------------------------------
// Reader

/// One row of `message`, as the adapter needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatDbMessage {
    /// `message.ROWID`: the cursor.
    pub rowid: u64,
    /// `message.guid`.
    pub guid: String,
    /// The sender's handle (`handle.id`), normalised; `None` if missing or not a handle.
    pub handle: Option<String>,
    /// The chat's guid (`iMessage;-;+447…`), if the message is joined to a chat.
    pub chat_guid: Option<String>,
    /// The chat's style: 45 one-to-one, 43 group.
    pub chat_style: Option<i64>,
    /// Whether we sent it.
    pub is_from_me: bool,
    /// When, in Unix milliseconds.
    pub date_unix_ms: i64,
    /// The text (`text`, else decoded from `attributedBody`); `None` if neither gave one.
    pub text: Option<String>,
}

/// `chat.db`, opened read-only for each read.
#[derive(Debug, Clone)]
pub struct ChatDb {
    path: PathBuf,
}

const SELECT_AFTER: &str = "
SELECT m.ROWID, m.guid, m.text, m.attributedBody, m.is_from_me, m.date, h.id,
       (SELECT c.guid FROM chat_message_join j JOIN chat c ON c.ROWID = j.chat_id
         WHERE j.message_id = m.ROWID ORDER BY c.ROWID LIMIT 1),
       (SELECT c.style FROM chat_message_join j JOIN chat c ON c.ROWID = j.chat_id
         WHERE j.message_id = m.ROWID ORDER BY c.ROWID LIMIT 1)
  FROM message m LEFT JOIN handle h ON h.ROWID = m.handle_id
 WHERE m.ROWID > ?1
 ORDER BY m.ROWID
 LIMIT ?2";

impl ChatDb {
    /// The database at `path` (not opened yet).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        ChatDb { path: path.into() }
    }

    /// `~/Library/Messages/chat.db` under `home`.
    pub fn default_path(home: &Path) -> PathBuf {
        home.join("Library").join("Messages").join("chat.db")
    }

    /// Opens a read-only connection.
    ///
    /// Why these flags: `SQLITE_OPEN_READ_ONLY` (and `mode=ro` in the URI) so SQLite can never
    /// write the database. `chat.db` is in WAL mode, and a read-only connection to a WAL
    /// database *creates* `-wal` / `-shm` files next to it when they do not exist. So:
    /// - if `chat.db-wal` exists, Messages has the database open and its newest rows may be
    ///   only in the WAL: open with `mode=ro` (no `immutable`, which would ignore the WAL and
    ///   locks and could miss or misread rows being written); the WAL files are Messages' own.
    /// - if it does not exist, nobody is writing (Messages is closed and checkpointed, or this
    ///   is a copy / test fixture): open with `immutable=1` too, so SQLite reads the main file
    ///   alone and creates nothing. A fresh connection is opened for every read, so this choice
    ///   is made again each time and a Messages started later is seen through its WAL.
    pub fn open(&self) -> Result<Connection, IMessageError> {
        let wal = {
            let mut p = self.path.clone().into_os_string();
            p.push("-wal");
            PathBuf::from(p)
        };
        let immutable = !wal.exists();
        let uri = file_uri(&self.path, immutable);
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY
            | OpenFlags::SQLITE_OPEN_URI
            | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(uri, flags).map_err(IMessageError::Open)?;
        conn.busy_timeout(Duration::from_secs(2))
            .map_err(IMessageError::Open)?;
        Ok(conn)
    }

    /// The newest `message.ROWID` (0 if empty).
    pub fn max_rowid(&self) -> Result<u64, IMessageError> {
        let conn = self.open()?;
        let max: i64 = conn
            .query_row("SELECT COALESCE(MAX(ROWID), 0) FROM message", [], |r| {
                r.get(0)
            })
            .map_err(IMessageError::Query)?;
        Ok(u64::try_from(max).unwrap_or(0))
    }

    /// The messages with `ROWID > after`, oldest first, at most `limit`.
    pub fn read_after(&self, after: u64, limit: u32) -> Result<Vec<ChatDbMessage>, IMessageError> {
        let conn = self.open()?;
        let after = i64::try_from(after).unwrap_or(i64::MAX);
        let mut stmt = conn.prepare(SELECT_AFTER).map_err(IMessageError::Query)?;
        let rows = stmt
            .query_map(rusqlite::params![after, limit], |r| {
                let rowid: i64 = r.get(0)?;
                let text: Option<String> = r.get(2).ok().flatten();
                let body: Option<Vec<u8>> = r.get(3).ok().flatten();
                let date: Option<i64> = r.get(5).ok().flatten();
                let handle: Option<String> = r.get(6).ok().flatten();
                Ok(ChatDbMessage {
                    rowid: u64::try_from(rowid).unwrap_or(0),
                    guid: r.get::<_, Option<String>>(1)?.unwrap_or_default(),
                    handle: handle.as_deref().and_then(normalize_handle),
                    chat_guid: r.get(7)?,
                    chat_style: r.get(8)?,
                    is_from_me: r.get::<_, Option<i64>>(4)?.unwrap_or(0) != 0,
                    date_unix_ms: apple_date_to_unix_millis(date.unwrap_or(0)),
                    text: text
                        .filter(|t| !t.is_empty())
                        .or_else(|| body.as_deref().and_then(attributed_body_text)),
                })
            })
            .map_err(IMessageError::Query)?;
        rows.collect::<Result<Vec<_>, _>>()
            .map_err(IMessageError::Query)
    }
}

/// `file:<path>?mode=ro[&immutable=1]`, with the path percent-encoded where URIs need it.
fn file_uri(path: &Path, immutable: bool) -> String {
    let mut uri = String::from("file:");
    for b in path.to_string_lossy().bytes() {
        if b.is_ascii() && !b.is_ascii_control() && !matches!(b, b'%' | b'?' | b'#') {
            uri.push(char::from(b));
        } else {
            uri.push_str(&format!("%{b:02X}"));
        }
    }
    uri.push_str("?mode=ro");
    if immutable {
        uri.push_str("&immutable=1");
    }
    uri
}

/// The inbound event for one row (pure). `allow` holds normalised handles.
pub fn event_for(row: &ChatDbMessage, allow: &[String]) -> InboundEvent {
    let ignored = |what| InboundKind::Ignored { what };
    let kind = match (&row.handle, &row.text) {
        _ if row.is_from_me => ignored("imessage_from_me"),
        (None, _) => ignored("imessage_no_handle"),
        (Some(h), _) if !allow.iter().any(|a| a == h) => ignored("imessage_not_allowlisted"),
        (_, None) => ignored("imessage_without_text"),
        (Some(handle), Some(text)) => {
            let private = row.chat_style.is_none_or(|s| s == 45);
            let chat_id = if private {
                handle.clone()
            } else {
                row.chat_guid.clone().unwrap_or_else(|| handle.clone())
            };
            let message_id = row.rowid.to_string();
            match parse_code_reply(text) {
                Some((verdict, code)) => InboundKind::Code {
                    sender: handle.clone(),
                    chat_id,
                    private,
                    message_id,
                    verdict,
                    code,
                },
                None => InboundKind::Text {
                    sender: handle.clone(),
                    chat_id,
                    private,
                    message_id,
                    text: text.clone(),
                },
            }
        }
    };
    InboundEvent {
        cursor: row.rowid,
        dedup_id: format!("im-{}", row.rowid),
        kind,
    }
}

// ---------------------------------------------------------------------------------------------
// The channel

/// The iMessage channel.
#[derive(Debug)]
pub struct IMessage {
    name: ChannelName,
    db: ChatDb,
    allow: Vec<String>,
    osascript: Option<PathBuf>,
    poll_interval: Duration,
    sent: AtomicU64,
}

impl IMessage {
    /// A channel reading `db`, accepting messages from `allowed_handles` (normalised here;
    /// invalid entries are dropped), sending with `osascript` (None: the platform default),
    /// and waiting `poll_interval` between reads that found nothing.
    pub fn new(
        name: ChannelName,
        db: ChatDb,
        allowed_handles: &[String],
        osascript: Option<PathBuf>,
        poll_interval: Duration,
    ) -> Self {
        IMessage {
            name,
            db,
            allow: allowed_handles
                .iter()
                .filter_map(|h| normalize_handle(h))
                .collect(),
            osascript,
            poll_interval,
            sent: AtomicU64::new(0),
        }
    }

    async fn send_text(&self, recipient: &str, text: &str) -> Result<(), DeliveryError> {
        send(self.osascript.as_deref(), recipient, text)
            .await
            .map_err(IMessageError::into_delivery)
    }
}

impl Channel for IMessage {
    fn name(&self) -> &ChannelName {
        &self.name
    }

    async fn poll(&self, after: Option<u64>) -> Result<Vec<InboundEvent>, DeliveryError> {
        let db = self.db.clone();
        let allow = self.allow.clone();
        let read = tokio::task::spawn_blocking(move || match after {
            // First start: skip the history; the marker event persists the starting point.
            None => db.max_rowid().map(|max| {
                vec![InboundEvent {
                    cursor: max,
                    dedup_id: format!("im-start-{max}"),
                    kind: InboundKind::Ignored {
                        what: "imessage_history_skipped",
                    },
                }]
            }),
            Some(after) => db.read_after(after, READ_LIMIT).map(|rows| {
                rows.iter()
                    .map(|row| event_for(row, &allow))
                    .collect::<Vec<_>>()
            }),
        })
        .await
        .map_err(IMessageError::from)
        .and_then(|r| r)
        .map_err(IMessageError::into_delivery)?;
        if read.is_empty() {
            tokio::time::sleep(self.poll_interval).await;
        }
        Ok(read)
    }

    async fn answer_press(
        &self,
        _press_id: &str,
        _text: Option<&str>,
    ) -> Result<(), DeliveryError> {
        // iMessage has no buttons, so there is never a press to answer.
        Ok(())
    }

    async fn post(&self, chat_id: &str, message: &Rendered) -> Result<Delivered, DeliveryError> {
        self.send_text(chat_id, &message.text).await?;
        // osascript returns no message id; ours only has to be unique within this chat.
        let n = self.sent.fetch_add(1, Ordering::Relaxed);
        Ok(Delivered {
            chat_id: chat_id.to_owned(),
            message_id: format!("sent-{}-{n}", protocol::UnixMillis::now().0),
        })
    }

    async fn edit(&self, target: &Delivered, message: &Rendered) -> Result<(), DeliveryError> {
        // Messages cannot edit through AppleScript: the new content is sent as a new message.
        self.send_text(&target.chat_id, &message.text).await
    }

    fn render_plan(&self, plan: &PlanProposal) -> Rendered {
        render_plan_text(plan)
    }

    fn render_message(&self, message: &OutboundMessage) -> Rendered {
        render_message_text(message)
    }
}

// ---------------------------------------------------------------------------------------------
// Rendering (pure)

/// A plan as plain text: summary, each step (agent, action, effect, exact parameters, why) and
/// how to answer with the short code. No buttons. A plan too long to show in full is cut and
/// says it cannot be approved from iMessage (the orchestrator would still accept the code, so
/// the instruction to reply is left out).
pub fn render_plan_text(p: &PlanProposal) -> Rendered {
    let mut text = plan_body(p);
    let code = clean(&p.short_code);
    text.push_str(&format!(
        "\nCode {code}. Reply \"approve {code}\" or \"reject {code}\"."
    ));
    if text.chars().count() > MAX_SEND_CHARS {
        let note = "\n\n(Too long to show here in full; approve it from another channel.)";
        let body = cut(text, MAX_SEND_CHARS - note.chars().count());
        return Rendered {
            text: format!("{body}{note}"),
            buttons: Vec::new(),
        };
    }
    Rendered {
        text,
        buttons: Vec::new(),
    }
}

/// A plain outbound message as plain text (cut to [`MAX_SEND_CHARS`]). iMessage shows no
/// buttons; a message that has some says so.
pub fn render_message_text(m: &OutboundMessage) -> Rendered {
    let mut text = clean(&m.text);
    if !m.buttons.is_empty() {
        let labels: Vec<&str> = m.buttons.iter().map(|b| b.label.as_str()).collect();
        text.push_str(&format!(
            "\n\n(Buttons {} are not available on iMessage.)",
            clean(&labels.join(", "))
        ));
    }
    Rendered {
        text: cut(text, MAX_SEND_CHARS),
        buttons: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn dates_in_seconds_and_nanoseconds() {
        // The plaso fixture's first row (seconds): 2015-11-22T18:09:46Z.
        assert_eq!(apple_date_to_unix_millis(469_908_586), 1_448_215_786_000);
        // The same instant in nanoseconds.
        assert_eq!(
            apple_date_to_unix_millis(469_908_586_000_000_000),
            1_448_215_786_000
        );
        assert_eq!(apple_date_to_unix_millis(0), 978_307_200_000);
        // Extremes saturate, never overflow.
        let _ = apple_date_to_unix_millis(i64::MAX);
        let _ = apple_date_to_unix_millis(i64::MIN);
    }

    #[test]
    fn handles_are_normalised() {
        assert_eq!(
            normalize_handle("+44 7700-900123").as_deref(),
            Some("+447700900123")
        );
        assert_eq!(
            normalize_handle("447700900123").as_deref(),
            Some("+447700900123")
        );
        assert_eq!(
            normalize_handle(" Me@iCloud.com ").as_deref(),
            Some("me@icloud.com")
        );
        assert_eq!(normalize_handle("-e@x"), None);
        assert_eq!(normalize_handle("abc"), None);
        assert_eq!(normalize_handle(""), None);
        assert_eq!(normalize_handle("12; rm"), None);
    }

    #[test]
    fn code_replies() {
        assert_eq!(
            parse_code_reply("approve 4821"),
            Some((Verdict::Approve, "4821".to_owned()))
        );
        assert_eq!(
            parse_code_reply("  Reject   4821. "),
            Some((Verdict::Reject, "4821".to_owned()))
        );
        assert_eq!(parse_code_reply("approve"), None);
        assert_eq!(parse_code_reply("approve 48a1"), None);
        assert_eq!(parse_code_reply("approve 4821 now"), None);
        assert_eq!(parse_code_reply("please approve 4821"), None);
        assert_eq!(parse_code_reply("approve 1234567890123"), None);
    }

    #[test]
    fn uri_escapes_special_characters() {
        assert_eq!(
            file_uri(Path::new("/a b/c?d#e%f.db"), true),
            "file:/a b/c%3Fd%23e%25f.db?mode=ro&immutable=1"
        );
        assert_eq!(
            file_uri(Path::new("/tmp/é.db"), false),
            "file:/tmp/%C3%A9.db?mode=ro"
        );
    }
}
