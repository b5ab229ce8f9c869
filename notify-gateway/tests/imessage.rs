//! The iMessage channel on Linux: the real chat.db fixture (plaso, seconds-era schema), a
//! database built here with the modern schema, hostile `attributedBody` blobs, and the
//! `osascript` argument vector with hostile text (plus a fake `osascript` that records its argv).
#![cfg(feature = "imessage")]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use notify_gateway::channel::{Channel, InboundKind};
use notify_gateway::imessage::{
    ChatDb, IMessage, SEND_SCRIPT, apple_date_to_unix_millis, attributed_body_text, event_for,
    render_message_text, render_plan_text, send, send_command,
};
use notify_gateway::store::Store;
use protocol::message::{
    Button, ChatRef, Effect, OutboundMessage, PlanProposal, PlatformRef, ProposedStep, Verdict,
};
use protocol::{ActionName, AgentName, ApprovalId, ChannelName, ChatUser, PlanId, UnixMillis};
use rusqlite::Connection;

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/imessage/imessage_chat.db")
}

fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(suffix);
    PathBuf::from(p)
}

/// The file's bytes and mtime, and whether `-wal` / `-shm` files sit next to it.
fn snapshot(path: &Path) -> (Vec<u8>, SystemTime, bool, bool) {
    (
        std::fs::read(path).unwrap(),
        std::fs::metadata(path).unwrap().modified().unwrap(),
        sibling(path, "-wal").exists(),
        sibling(path, "-shm").exists(),
    )
}

fn allow(handles: &[&str]) -> Vec<String> {
    handles.iter().map(|h| (*h).to_owned()).collect()
}

// ---------------------------------------------------------------------------------------------
// The real fixture

#[test]
fn reads_the_plaso_fixture_without_writing_it() {
    let dir = tempfile::tempdir().unwrap();
    let db_path = dir.path().join("chat.db");
    std::fs::copy(fixture(), &db_path).unwrap();
    let before = snapshot(&db_path);
    assert!(!before.2 && !before.3);

    let db = ChatDb::new(&db_path);
    assert_eq!(db.max_rowid().unwrap(), 10);
    let rows = db.read_after(0, 100).unwrap();
    assert_eq!(rows.len(), 10);
    let first = &rows[0];
    assert_eq!(first.rowid, 1);
    assert_eq!(first.handle.as_deref(), Some("+447775455555"));
    assert!(!first.is_from_me);
    assert_eq!(first.chat_style, Some(45));
    // 469908586 s after 2001 = 2015-11-22T18:09:46Z.
    assert_eq!(first.date_unix_ms, 1_448_215_786_000);
    assert!(
        first
            .text
            .as_deref()
            .unwrap()
            .starts_with("Hey Kenneth, it's Eireanne!")
    );
    assert_eq!(rows[7].handle.as_deref(), Some("xxxxxx2015@icloud.com"));

    // Reading after a cursor returns only the newer rows.
    let later: Vec<u64> = db
        .read_after(7, 100)
        .unwrap()
        .iter()
        .map(|r| r.rowid)
        .collect();
    assert_eq!(later, vec![8, 9, 10]);
    assert_eq!(db.read_after(0, 3).unwrap().len(), 3);

    // Every real attributedBody decodes to exactly the row's text column.
    let conn = Connection::open_with_flags(
        format!("file:{}?mode=ro&immutable=1", db_path.display()),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_URI,
    )
    .unwrap();
    let pairs: Vec<(String, Vec<u8>)> = conn
        .prepare("SELECT text, attributedBody FROM message ORDER BY ROWID")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    drop(conn);
    assert_eq!(pairs.len(), 10);
    for (i, (text, blob)) in pairs.iter().enumerate() {
        let decoded = attributed_body_text(blob).unwrap();
        if i == 5 || i == 9 {
            // Real data: rows 6 and 10 of the fixture have `text` and `attributedBody` that
            // disagree ("Open Office" in text, "Microsoft Office" in the body; an independent
            // Python decoder reads the same). The reader prefers `text` when it is set.
            assert!(decoded.contains("Microsoft Office"), "{decoded}");
            assert!(text.contains("Open Office"));
            assert_eq!(rows[i].text.as_deref(), Some(text.as_str()));
        } else {
            assert_eq!(&decoded, text);
        }
    }

    // The allowlisted contact's incoming rows are text; ours and the other contact's are not.
    let summary: Vec<String> = rows
        .iter()
        .map(|r| match event_for(r, &allow(&["+447775455555"])).kind {
            InboundKind::Text { sender, .. } => format!("{} text from {sender}", r.rowid),
            InboundKind::Ignored { what } => format!("{} {what}", r.rowid),
            other => format!("{} {other:?}", r.rowid),
        })
        .collect();
    expect_test::expect![[r#"
        1 text from +447775455555
        2 imessage_from_me
        3 text from +447775455555
        4 text from +447775455555
        5 imessage_from_me
        6 imessage_from_me
        7 text from +447775455555
        8 imessage_not_allowlisted
        9 imessage_from_me
        10 imessage_from_me"#]]
    .assert_eq(&summary.join("\n"));

    assert_eq!(snapshot(&db_path), before, "the reader wrote the database");
    // The committed fixture itself is untouched too (nothing was created next to it).
    assert!(!sibling(&fixture(), "-wal").exists());
    assert!(!sibling(&fixture(), "-shm").exists());
}

// ---------------------------------------------------------------------------------------------
// A database built here, modern schema

const MODERN_SCHEMA: &str = "
PRAGMA journal_mode = WAL;
CREATE TABLE handle (ROWID INTEGER PRIMARY KEY AUTOINCREMENT UNIQUE, id TEXT NOT NULL,
    country TEXT, service TEXT NOT NULL, uncanonicalized_id TEXT, person_centric_id TEXT,
    UNIQUE (id, service));
CREATE TABLE chat (ROWID INTEGER PRIMARY KEY AUTOINCREMENT, guid TEXT UNIQUE NOT NULL,
    style INTEGER, state INTEGER, account_id TEXT, properties BLOB, chat_identifier TEXT,
    service_name TEXT, room_name TEXT, account_login TEXT, is_archived INTEGER DEFAULT 0,
    last_addressed_handle TEXT, display_name TEXT, group_id TEXT, is_filtered INTEGER DEFAULT 0,
    successful_query INTEGER, engram_id TEXT, server_change_token TEXT,
    ck_sync_state INTEGER DEFAULT 0, original_group_id TEXT, last_read_message_timestamp
    INTEGER DEFAULT 0, cloudkit_record_id TEXT, last_addressed_sim_id TEXT,
    is_blackholed INTEGER DEFAULT 0, syndication_date INTEGER DEFAULT 0,
    syndication_type INTEGER DEFAULT 0, is_recovered INTEGER DEFAULT 0,
    is_deleting_incoming_messages INTEGER DEFAULT 0);
CREATE TABLE message (ROWID INTEGER PRIMARY KEY AUTOINCREMENT, guid TEXT UNIQUE NOT NULL,
    text TEXT, replace INTEGER DEFAULT 0, service_center TEXT, handle_id INTEGER DEFAULT 0,
    subject TEXT, country TEXT, attributedBody BLOB, version INTEGER DEFAULT 0,
    type INTEGER DEFAULT 0, service TEXT, account TEXT, account_guid TEXT,
    error INTEGER DEFAULT 0, date INTEGER, date_read INTEGER, date_delivered INTEGER,
    is_delivered INTEGER DEFAULT 0, is_finished INTEGER DEFAULT 0, is_emote INTEGER DEFAULT 0,
    is_from_me INTEGER DEFAULT 0, is_empty INTEGER DEFAULT 0, is_delayed INTEGER DEFAULT 0,
    is_auto_reply INTEGER DEFAULT 0, is_prepared INTEGER DEFAULT 0, is_read INTEGER DEFAULT 0,
    is_system_message INTEGER DEFAULT 0, is_sent INTEGER DEFAULT 0,
    has_dd_results INTEGER DEFAULT 0, is_service_message INTEGER DEFAULT 0,
    is_forward INTEGER DEFAULT 0, was_downgraded INTEGER DEFAULT 0,
    is_archive INTEGER DEFAULT 0, cache_has_attachments INTEGER DEFAULT 0,
    cache_roomnames TEXT, was_data_detected INTEGER DEFAULT 0,
    was_deduplicated INTEGER DEFAULT 0, is_audio_message INTEGER DEFAULT 0,
    is_played INTEGER DEFAULT 0, date_played INTEGER, item_type INTEGER DEFAULT 0,
    other_handle INTEGER DEFAULT 0, group_title TEXT, group_action_type INTEGER DEFAULT 0,
    share_status INTEGER DEFAULT 0, share_direction INTEGER DEFAULT 0,
    is_expirable INTEGER DEFAULT 0, expire_state INTEGER DEFAULT 0,
    message_action_type INTEGER DEFAULT 0, message_source INTEGER DEFAULT 0,
    associated_message_guid TEXT, associated_message_type INTEGER DEFAULT 0,
    balloon_bundle_id TEXT, payload_data BLOB, expressive_send_style_id TEXT,
    associated_message_range_location INTEGER DEFAULT 0,
    associated_message_range_length INTEGER DEFAULT 0, time_expressive_send_played INTEGER,
    message_summary_info BLOB, ck_sync_state INTEGER DEFAULT 0, ck_record_id TEXT,
    ck_record_change_tag TEXT, destination_caller_id TEXT, is_corrupt INTEGER DEFAULT 0,
    reply_to_guid TEXT, sort_id INTEGER, is_spam INTEGER DEFAULT 0,
    has_unseen_mention INTEGER DEFAULT 0, thread_originator_guid TEXT,
    thread_originator_part TEXT, syndication_ranges TEXT, synced_syndication_ranges TEXT,
    was_delivered_quietly INTEGER DEFAULT 0, did_notify_recipient INTEGER DEFAULT 0,
    date_retracted INTEGER DEFAULT 0, date_edited INTEGER DEFAULT 0,
    was_detonated INTEGER DEFAULT 0, part_count INTEGER, is_stewie INTEGER DEFAULT 0,
    is_kt_verified INTEGER DEFAULT 0, is_sos INTEGER DEFAULT 0, is_critical INTEGER DEFAULT 0,
    bia_reference_id TEXT DEFAULT NULL, fallback_hash TEXT DEFAULT NULL);
CREATE TABLE chat_message_join (chat_id INTEGER REFERENCES chat (ROWID) ON DELETE CASCADE,
    message_id INTEGER REFERENCES message (ROWID) ON DELETE CASCADE,
    message_date INTEGER DEFAULT 0, PRIMARY KEY (chat_id, message_id));
CREATE TABLE chat_handle_join (chat_id INTEGER REFERENCES chat (ROWID) ON DELETE CASCADE,
    handle_id INTEGER REFERENCES handle (ROWID) ON DELETE CASCADE, UNIQUE(chat_id, handle_id));
INSERT INTO handle (ROWID, id, country, service) VALUES
    (1, '+15551234567', 'us', 'iMessage'),
    (2, '+15550000000', 'us', 'iMessage'),
    (3, 'Me@Example.com', NULL, 'iMessage');
INSERT INTO chat (ROWID, guid, style, chat_identifier, service_name) VALUES
    (1, 'iMessage;-;+15551234567', 45, '+15551234567', 'iMessage'),
    (2, 'iMessage;-;+15550000000', 45, '+15550000000', 'iMessage'),
    (3, 'iMessage;-;me@example.com', 45, 'me@example.com', 'iMessage'),
    (4, 'iMessage;+;chat123456789', 43, 'chat123456789', 'iMessage');
INSERT INTO chat_handle_join VALUES (1, 1), (2, 2), (3, 3), (4, 1), (4, 2);
";

/// An `attributedBody` in the layout macOS writes (streamtyped NSAttributedString), with the
/// string's length encoded as one byte, or `0x81` + u16 LE when it is 128 bytes or more.
fn attributed_body(text: &str) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(b"\x04\x0bstreamtyped\x81\xe8\x03\x84\x01@\x84\x84\x84");
    b.extend_from_slice(b"\x12NSAttributedString\x00\x84\x84\x08NSObject\x00\x85\x92\x84\x84\x84");
    b.extend_from_slice(b"\x08NSString\x01\x94\x84\x01+");
    let len = text.len();
    if len < 0x80 {
        b.push(u8::try_from(len).unwrap());
    } else {
        b.push(0x81);
        b.extend_from_slice(&u16::try_from(len).unwrap().to_le_bytes());
    }
    b.extend_from_slice(text.as_bytes());
    b.extend_from_slice(b"\x86\x84\x02iI\x01\x0c\x92\x84\x84\x84\x0cNSDictionary\x00\x94\x84\x01i\x01\x92\x84\x96\x96\x1d__kIMMessagePartAttributeName\x86\x92\x84\x84\x84\x08NSNumber\x00\x84\x84\x07NSValue\x00\x94\x84\x01*\x84\x99\x99\x00\x86\x86\x86");
    b
}

/// Inserts one message (and its chat join) with a writer connection.
#[allow(clippy::too_many_arguments)]
fn insert(
    conn: &Connection,
    rowid: i64,
    handle: i64,
    chat: i64,
    from_me: bool,
    date: i64,
    text: Option<&str>,
    body: Option<&[u8]>,
) {
    conn.execute(
        "INSERT INTO message (ROWID, guid, text, handle_id, attributedBody, service, date,
                              is_from_me, is_sent, is_delivered)
         VALUES (?1, ?2, ?3, ?4, ?5, 'iMessage', ?6, ?7, ?7, 1)",
        rusqlite::params![
            rowid,
            format!("GUID-{rowid:04}"),
            text,
            handle,
            body,
            date,
            i64::from(from_me)
        ],
    )
    .unwrap();
    conn.execute(
        "INSERT INTO chat_message_join (chat_id, message_id, message_date) VALUES (?1, ?2, ?3)",
        rusqlite::params![chat, rowid, date],
    )
    .unwrap();
}

/// 2023-01-01T00:00:00Z as seconds since 2001.
const JAN_2023_S: i64 = 694_224_000;

fn build_modern(path: &Path) {
    let conn = Connection::open(path).unwrap();
    conn.execute_batch(MODERN_SCHEMA).unwrap();
    // 1: seconds-era date, plain text.
    insert(
        &conn,
        1,
        1,
        1,
        false,
        JAN_2023_S,
        Some("start bedtime"),
        None,
    );
    // 2: nanoseconds, text NULL, the body only in attributedBody.
    let body = attributed_body("Lights off ✓ «please»");
    insert(
        &conn,
        2,
        1,
        1,
        false,
        (JAN_2023_S + 60) * 1_000_000_000 + 123_456_789,
        None,
        Some(&body),
    );
    // 3: a handle not on the allowlist.
    insert(
        &conn,
        3,
        2,
        2,
        false,
        (JAN_2023_S + 120) * 1_000_000_000,
        Some("hi"),
        None,
    );
    // 4: sent by us.
    insert(
        &conn,
        4,
        1,
        1,
        true,
        (JAN_2023_S + 180) * 1_000_000_000,
        Some("sent by me"),
        None,
    );
    // 5: an email handle (stored with capitals), a typed approval.
    insert(
        &conn,
        5,
        3,
        3,
        false,
        (JAN_2023_S + 240) * 1_000_000_000,
        Some("Approve 4821"),
        None,
    );
    // 6: a group chat.
    insert(
        &conn,
        6,
        1,
        4,
        false,
        (JAN_2023_S + 300) * 1_000_000_000,
        Some("group hello"),
        None,
    );
    // 7: a long attributedBody (u16 length prefix), text empty string rather than NULL.
    let long = "x".repeat(300);
    let body = attributed_body(&long);
    insert(
        &conn,
        7,
        1,
        1,
        false,
        (JAN_2023_S + 360) * 1_000_000_000,
        Some(""),
        Some(&body),
    );
    // 8: neither text nor a decodable body.
    insert(
        &conn,
        8,
        1,
        1,
        false,
        (JAN_2023_S + 420) * 1_000_000_000,
        None,
        Some(b"junk"),
    );
    drop(conn); // a clean close checkpoints and removes -wal / -shm
}

fn describe(kind: &InboundKind) -> String {
    match kind {
        InboundKind::Text {
            sender,
            chat_id,
            private,
            message_id,
            text,
        } => format!("text {message_id} from {sender} in {chat_id} private={private}: {text:?}"),
        InboundKind::Code {
            sender,
            chat_id,
            private,
            message_id,
            verdict,
            code,
        } => format!(
            "code {message_id} from {sender} in {chat_id} private={private}: {verdict:?} {code}"
        ),
        InboundKind::Button { .. } => "button".to_owned(),
        InboundKind::Ignored { what } => format!("ignored {what}"),
    }
}

#[test]
fn modern_schema_dates_bodies_allowlist_and_from_me() {
    let dir = tempfile::tempdir().unwrap();
    let db_path = dir.path().join("chat.db");
    build_modern(&db_path);
    let before = snapshot(&db_path);
    assert!(!before.2 && !before.3, "the builder left WAL files");

    let db = ChatDb::new(&db_path);
    let rows = db.read_after(0, 100).unwrap();
    assert_eq!(rows.len(), 8);
    let jan_2023_ms = 1_672_531_200_000;
    assert_eq!(rows[0].date_unix_ms, jan_2023_ms);
    assert_eq!(rows[1].date_unix_ms, jan_2023_ms + 60_123);
    assert_eq!(rows[1].text.as_deref(), Some("Lights off ✓ «please»"));
    assert_eq!(rows[6].text.as_deref(), Some("x".repeat(300).as_str()));
    assert_eq!(rows[7].text, None);
    assert_eq!(
        apple_date_to_unix_millis(JAN_2023_S),
        apple_date_to_unix_millis(JAN_2023_S * 1_000_000_000)
    );

    let allowed = allow(&["+1 (555) 123-4567", "me@example.com"]);
    let allowed: Vec<String> = allowed
        .iter()
        .filter_map(|h| notify_gateway::imessage::normalize_handle(h))
        .collect();
    let events: Vec<String> = rows
        .iter()
        .map(|r| {
            let e = event_for(r, &allowed);
            format!("{} {}: {}", e.cursor, e.dedup_id, describe(&e.kind))
        })
        .collect();
    expect_test::expect![[r#"
        1 im-1: text 1 from +15551234567 in +15551234567 private=true: "start bedtime"
        2 im-2: text 2 from +15551234567 in +15551234567 private=true: "Lights off ✓ «please»"
        3 im-3: ignored imessage_not_allowlisted
        4 im-4: ignored imessage_from_me
        5 im-5: code 5 from me@example.com in me@example.com private=true: Approve 4821
        6 im-6: text 6 from +15551234567 in iMessage;+;chat123456789 private=false: "group hello"
        7 im-7: text 7 from +15551234567 in +15551234567 private=true: "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"
        8 im-8: ignored imessage_without_text"#]]
    .assert_eq(&events.join("\n"));

    assert_eq!(snapshot(&db_path), before, "the reader wrote the database");
}

#[tokio::test]
async fn the_cursor_survives_a_restart_and_only_newer_rows_come_back() {
    let dir = tempfile::tempdir().unwrap();
    let db_path = dir.path().join("chat.db");
    let state = dir.path().join("gateway.sqlite");
    build_modern(&db_path);
    let name = ChannelName::new("imessage").unwrap();
    let channel = || {
        IMessage::new(
            name.clone(),
            ChatDb::new(&db_path),
            &allow(&["+15551234567", "me@example.com"]),
            None,
            Duration::from_millis(10),
        )
    };

    // First start: no cursor. The history is skipped, with one marker at the newest row.
    let first = channel().poll(None).await.unwrap();
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].cursor, 8);
    assert!(matches!(first[0].kind, InboundKind::Ignored { .. }));
    {
        let store = Store::open(&state).unwrap();
        store.set_cursor("imessage", first[0].cursor).await.unwrap();
    }
    // Nothing new: an empty answer after the poll interval.
    let store = Store::open(&state).unwrap();
    let cursor = store.cursor("imessage").await.unwrap();
    assert_eq!(cursor, Some(8));
    assert!(channel().poll(cursor).await.unwrap().is_empty());

    // Messages writes two more rows while the gateway is down.
    {
        let conn = Connection::open(&db_path).unwrap();
        let ns = |s: i64| (JAN_2023_S + s) * 1_000_000_000;
        insert(
            &conn,
            9,
            1,
            1,
            false,
            ns(600),
            Some("what's on tonight?"),
            None,
        );
        insert(&conn, 10, 3, 3, false, ns(660), Some("reject 4821"), None);
    }
    drop(store);

    // Restart: reopen the state, poll after the persisted cursor.
    let store = Store::open(&state).unwrap();
    let cursor = store.cursor("imessage").await.unwrap();
    let events = channel().poll(cursor).await.unwrap();
    let got: Vec<String> = events.iter().map(|e| describe(&e.kind)).collect();
    assert_eq!(
        got,
        vec![
            "text 9 from +15551234567 in +15551234567 private=true: \"what's on tonight?\""
                .to_owned(),
            "code 10 from me@example.com in me@example.com private=true: Reject 4821".to_owned(),
        ]
    );
    if let InboundKind::Code { verdict, .. } = &events[1].kind {
        assert_eq!(*verdict, Verdict::Reject);
    }
    store.set_cursor("imessage", 10).await.unwrap();
    drop(store);
    let store = Store::open(&state).unwrap();
    assert!(
        channel()
            .poll(store.cursor("imessage").await.unwrap())
            .await
            .unwrap()
            .is_empty()
    );
    assert!(!sibling(&db_path, "-wal").exists());
    assert!(!sibling(&db_path, "-shm").exists());
}

#[test]
fn while_messages_holds_the_database_open_the_reader_sees_the_wal_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let db_path = dir.path().join("chat.db");
    build_modern(&db_path);
    // "Messages" keeps a writer open; its new row lives only in the WAL.
    let writer = Connection::open(&db_path).unwrap();
    writer
        .execute_batch("PRAGMA wal_autocheckpoint = 0;")
        .unwrap();
    insert(
        &writer,
        9,
        1,
        1,
        false,
        JAN_2023_S * 1_000_000_000,
        Some("in the WAL"),
        None,
    );
    assert!(sibling(&db_path, "-wal").exists());
    let main_before = std::fs::read(&db_path).unwrap();
    let mtime_before = std::fs::metadata(&db_path).unwrap().modified().unwrap();

    let rows = ChatDb::new(&db_path).read_after(8, 10).unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].text.as_deref(), Some("in the WAL"));

    assert_eq!(std::fs::read(&db_path).unwrap(), main_before);
    assert_eq!(
        std::fs::metadata(&db_path).unwrap().modified().unwrap(),
        mtime_before
    );
    drop(writer);
}

#[test]
fn a_missing_database_is_an_error_with_a_code() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.db");
    let err = ChatDb::new(&missing).read_after(0, 10).unwrap_err();
    assert_eq!(err.code(), "imessage_db_open_failed");
    assert!(
        !missing.exists(),
        "opening read-only must not create the file"
    );
}

// ---------------------------------------------------------------------------------------------
// Hostile attributedBody blobs

// The binding outlives the statement that borrows the connection.
#[allow(clippy::let_and_return)]
fn fixture_blobs() -> Vec<Vec<u8>> {
    let conn = Connection::open_with_flags(
        format!("file:{}?mode=ro&immutable=1", fixture().display()),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_URI,
    )
    .unwrap();
    let blobs = conn
        .prepare("SELECT attributedBody FROM message")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<Vec<Vec<u8>>, _>>()
        .unwrap();
    blobs
}

#[test]
fn every_truncation_of_real_and_built_blobs_is_none_or_a_prefix_never_a_panic() {
    let mut blobs = fixture_blobs();
    blobs.push(attributed_body(&"é".repeat(200)));
    blobs.push(attributed_body("short"));
    for blob in &blobs {
        let full = attributed_body_text(blob).unwrap();
        for cut in 0..blob.len() {
            if let Some(text) = attributed_body_text(&blob[..cut]) {
                // A cut after the string's end still yields the whole string, never more.
                assert_eq!(text, full);
            }
        }
    }
}

#[test]
fn huge_or_lying_length_prefixes_are_refused() {
    let prefix =
        b"\x04\x0bstreamtyped\x81\xe8\x03\x84\x01@\x84\x84\x84\x08NSString\x01\x94\x84\x01+";
    let with = |tail: &[u8]| {
        let mut b = prefix.to_vec();
        b.extend_from_slice(tail);
        b
    };
    // u32 length of 4 GiB, with only a few bytes behind it.
    assert_eq!(
        attributed_body_text(&with(b"\x82\xff\xff\xff\xffabc")),
        None
    );
    // u32 length over the cap, even if the bytes were there.
    let mut big = with(b"\x82\x00\x00\x02\x00");
    big.extend(std::iter::repeat_n(b'a', 0x2_0000));
    assert_eq!(attributed_body_text(&big), None);
    // u16 length past the end.
    assert_eq!(attributed_body_text(&with(b"\x81\xff\xffabc")), None);
    // One-byte length past the end.
    assert_eq!(attributed_body_text(&with(b"\x10abc")), None);
    // Unknown length tags.
    assert_eq!(attributed_body_text(&with(b"\x80abc")), None);
    assert_eq!(attributed_body_text(&with(b"\x83abc")), None);
    // Invalid UTF-8.
    assert_eq!(attributed_body_text(&with(b"\x02\xff\xfe")), None);
    // No NSString at all, or no marker after it.
    assert_eq!(attributed_body_text(b"streamtyped+\x03abc"), None);
    assert_eq!(attributed_body_text(b"NSString"), None);
    assert_eq!(attributed_body_text(b""), None);
    // A valid u32 length within the cap works.
    assert_eq!(
        attributed_body_text(&with(b"\x82\x03\x00\x00\x00abc")).as_deref(),
        Some("abc")
    );
}

/// A small deterministic generator (xorshift64*), so the fuzz loops need no extra crate.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn bytes(&mut self, max: usize) -> Vec<u8> {
        let n = usize::try_from(self.next() % (max as u64 + 1)).unwrap();
        (0..n).map(|_| self.next().to_le_bytes()[0]).collect()
    }
}

#[test]
fn random_bytes_and_random_tails_after_the_marker_never_panic() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for _ in 0..20_000 {
        let _ = attributed_body_text(&rng.bytes(512));
        let tail = rng.bytes(64);
        let mut b = b"\x84\x08NSString\x01\x94\x84\x01+".to_vec();
        b.extend_from_slice(&tail);
        if let Some(text) = attributed_body_text(&b) {
            assert!(text.len() <= tail.len());
        }
    }
    // Random byte flips inside real blobs.
    let blobs = fixture_blobs();
    for _ in 0..5_000 {
        let blob = &blobs[usize::try_from(rng.next() % blobs.len() as u64).unwrap()];
        let mut b = blob.clone();
        for _ in 0..3 {
            let at = usize::try_from(rng.next() % b.len() as u64).unwrap();
            b[at] = rng.next().to_le_bytes()[0];
        }
        if let Some(text) = attributed_body_text(&b) {
            assert!(text.len() <= b.len());
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Sending: the script is constant, the text is one argument

const HOSTILE: &[&str] = &[
    "plain",
    "say \"hi\"",
    "back\\slash \\\" end",
    "line one\nline two\r\nthree",
    "\" & do shell script \"rm -rf ~\" & \"",
    "end tell\nend run\ndo shell script \"id\"",
    "-e",
    "--",
    "«data utxt0041» ünïcødé 🚀 \u{202e}rtl",
    "'; quoted form of \"x\"",
    "",
];

fn expected_script_args() -> Vec<OsString> {
    SEND_SCRIPT
        .iter()
        .flat_map(|l| [OsString::from("-e"), OsString::from(*l)])
        .collect()
}

#[test]
fn the_script_is_constant_and_the_text_is_one_verbatim_argument() {
    let script = expected_script_args();
    assert!(SEND_SCRIPT.contains(&"send (item 2 of argv) to participant (item 1 of argv) of svc"));
    assert_eq!(SEND_SCRIPT.first(), Some(&"on run argv"));
    for text in HOSTILE {
        let (program, args) =
            send_command(Path::new("/usr/bin/osascript"), "+15551234567", text).unwrap();
        assert_eq!(program, PathBuf::from("/usr/bin/osascript"));
        assert_eq!(args.len(), script.len() + 2);
        assert_eq!(
            &args[..script.len()],
            script.as_slice(),
            "script changed for {text:?}"
        );
        assert_eq!(args[script.len()], OsString::from("+15551234567"));
        assert_eq!(args[script.len() + 1], OsString::from(*text));
    }
    // The recipient is a normalised handle only: nothing that could be an option or code.
    for bad in [
        "-e",
        "+1 555",
        "\" & do shell script \"id",
        "me@Example.com",
        "",
        "5551234567",
    ] {
        let err = send_command(Path::new("/usr/bin/osascript"), bad, "hi").unwrap_err();
        assert_eq!(err.code(), "imessage_bad_recipient", "{bad:?}");
    }
    assert!(send_command(Path::new("osascript"), "me@example.com", "hi").is_ok());
}

/// A fake `osascript` that writes each argument NUL-terminated to `out`.
fn fake_osascript(dir: &Path, out: &Path, exit: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt as _;
    let path = dir.join("osascript");
    std::fs::write(
        &path,
        format!(
            "#!/bin/sh\nfor a in \"$@\"; do printf '%s\\0' \"$a\"; done > '{}'\n{exit}\n",
            out.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

#[tokio::test]
async fn a_configured_osascript_receives_the_text_verbatim() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("argv");
    let fake = fake_osascript(dir.path(), &out, "exit 0");
    for text in HOSTILE {
        send(Some(&fake), "+15551234567", text).await.unwrap();
        let raw = std::fs::read(&out).unwrap();
        let got: Vec<&[u8]> = raw.split(|b| *b == 0).collect();
        // Split on the terminators: the last piece is empty.
        assert_eq!(got.last(), Some(&&b""[..]));
        let got = &got[..got.len() - 1];
        let mut expected: Vec<Vec<u8>> = expected_script_args()
            .into_iter()
            .map(|a| a.into_encoded_bytes())
            .collect();
        expected.push(b"+15551234567".to_vec());
        expected.push(text.as_bytes().to_vec());
        let got: Vec<Vec<u8>> = got.iter().map(|g| g.to_vec()).collect();
        assert_eq!(got, expected, "for {text:?}");
    }

    // Through the channel: a post is one osascript run to the chat's handle.
    let channel = IMessage::new(
        ChannelName::new("imessage").unwrap(),
        ChatDb::new(dir.path().join("chat.db")),
        &allow(&["+15551234567"]),
        Some(fake.clone()),
        Duration::from_millis(10),
    );
    let rendered = channel.render_message(&OutboundMessage {
        chat: chat_ref(),
        text: "Done \" & do shell script \"id\" & \"".to_owned(),
        buttons: Vec::new(),
        key: "k1".to_owned(),
    });
    let delivered = channel.post("+15551234567", &rendered).await.unwrap();
    assert_eq!(delivered.chat_id, "+15551234567");
    let raw = std::fs::read(&out).unwrap();
    assert!(raw.ends_with(b"+15551234567\0Done \" & do shell script \"id\" & \"\0"));
    channel.edit(&delivered, &rendered).await.unwrap();
    channel.answer_press("x", None).await.unwrap();
}

#[tokio::test]
async fn osascript_failures_have_codes() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("argv");
    let denied = fake_osascript(
        dir.path(),
        &out,
        "echo 'execution error: Not authorized to send Apple events to Messages. (-1743)' >&2; exit 1",
    );
    let err = send(Some(&denied), "+15551234567", "hi").await.unwrap_err();
    assert_eq!(err.code(), "imessage_not_permitted");
    let missing = dir.path().join("no-such-osascript");
    let err = send(Some(&missing), "+15551234567", "hi")
        .await
        .unwrap_err();
    assert_eq!(err.code(), "imessage_osascript_unavailable");
    let err = send(Some(&denied), "-e", "hi").await.unwrap_err();
    assert_eq!(err.code(), "imessage_bad_recipient");
}

#[cfg(not(target_os = "macos"))]
#[tokio::test]
async fn without_macos_or_a_configured_osascript_sending_is_refused_with_a_code() {
    let err = send(None, "+15551234567", "hi").await.unwrap_err();
    assert_eq!(err.code(), "imessage_unsupported_platform");
    let channel = IMessage::new(
        ChannelName::new("imessage").unwrap(),
        ChatDb::new("/nonexistent/chat.db"),
        &allow(&["+15551234567"]),
        None,
        Duration::from_millis(10),
    );
    let rendered = render_message_text(&OutboundMessage {
        chat: chat_ref(),
        text: "hi".to_owned(),
        buttons: Vec::new(),
        key: "k1".to_owned(),
    });
    let err = channel.post("+15551234567", &rendered).await.unwrap_err();
    assert_eq!(err.code(), "platform_refused");
    assert!(err.to_string().contains("imessage_unsupported_platform"));
}

// ---------------------------------------------------------------------------------------------
// Rendering

fn chat_ref() -> ChatRef {
    ChatRef {
        channel: ChannelName::new("imessage").unwrap(),
        chat_id: PlatformRef::new("+15551234567").unwrap(),
    }
}

#[test]
fn plan_card_is_plain_text_with_the_short_code() {
    let plan = PlanProposal {
        plan_id: PlanId::from_bytes([1; 16]),
        approval_id: ApprovalId::from_bytes([2; 16]),
        chat: chat_ref(),
        requested_by: ChatUser::new("imessage:+15551234567").unwrap(),
        summary: "Bedtime: lights off".into(),
        steps: vec![
            ProposedStep {
                agent: AgentName::new("hue").unwrap(),
                action: ActionName::new("room.set").unwrap(),
                params: serde_json::json!({"room": "Kitchen \"main\"", "on": false}),
                why: "You asked for bedtime.\u{7}".into(),
                effect: Effect::Change,
            },
            ProposedStep {
                agent: AgentName::new("hue").unwrap(),
                action: ActionName::new("lights.list").unwrap(),
                params: serde_json::json!({}),
                why: "To check.".into(),
                effect: Effect::Read,
            },
        ],
        buttons: vec![Button {
            label: "Approve".into(),
            payload: "ap:1".into(),
        }],
        short_code: "4821".into(),
        expires_at: UnixMillis(0),
    };
    let r = render_plan_text(&plan);
    assert!(r.buttons.is_empty());
    expect_test::expect![[r#"
        Plan: Bedtime: lights off

        1. hue room.set (changes)
           Params: {"on":false,"room":"Kitchen \"main\""}
           Why: You asked for bedtime. 

        2. hue lights.list (reads)
           Params: {}
           Why: To check.

        Code 4821. Reply "approve 4821" or "reject 4821"."#]]
    .assert_eq(&r.text);

    let m = render_message_text(&OutboundMessage {
        chat: chat_ref(),
        text: "Alert: door open".into(),
        buttons: plan.buttons.clone(),
        key: "k1".to_owned(),
    });
    assert!(m.buttons.is_empty());
    expect_test::expect![[r#"
        Alert: door open

        (Buttons Approve are not available on iMessage.)"#]]
    .assert_eq(&m.text);
}
