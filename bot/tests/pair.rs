//! `bot pair telegram` end to end: the command prints a code, the user sends it to the bot on
//! Telegram (the Bot API double), the running gateway (real nats-server) pairs them and tells
//! them so, the command sees it, adds them to the owners in config.toml and exits 0; their next
//! message reaches the assistant.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::io::{BufRead as _, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use notify_gateway::inbound::{Allowlist, PAIRED_TEXT};
use notify_gateway::store::Store;
use notify_gateway::telegram::{BotToken, Telegram};
use protocol::{ChannelName, Principal};
use test_support::NatsServer;
use test_support::fake_telegram::{FakeTelegram, TOKEN};

const ALICE: i64 = 42;
const BOB: i64 = 43;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_code_from_bot_pair_sent_on_telegram_pairs_and_makes_an_owner() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let db = home.join("gateway.sqlite");
    std::fs::write(
        home.join("gateway.toml"),
        format!(
            "nats_url = \"tls://127.0.0.1:4222\"\nhome = \"{h}\"\nstate_db = \"{d}\"\n\
             [telegram]\ntoken_file = \"{h}/tg\"\nallowed_users = [{ALICE}]\n",
            h = home.display(),
            d = db.display()
        ),
    )
    .unwrap();
    std::fs::write(
        home.join("config.toml"),
        "# mine\n[orchestrator]\nowners = [\"terminal:me\"] # keep\ntimezone = \"UTC\"\n",
    )
    .unwrap();

    let server = NatsServer::start(&["hue"]).await.unwrap();
    let tg = FakeTelegram::start().await.unwrap();
    let channel = Telegram::new(
        &BotToken::new(TOKEN),
        Some(url::Url::parse(&tg.api_url()).unwrap()),
        Duration::from_secs(1),
        ChannelName::new("telegram").unwrap(),
    );
    let client = server.connect(&Principal::gateway()).await.unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let gateway = tokio::spawn(notify_gateway::run(
        channel,
        Allowlist::new([ALICE.to_string()]),
        client,
        Store::open(&db).unwrap(),
        async move {
            let _ = stopped.await;
        },
    ));

    let mut child = Command::new(env!("CARGO_BIN_EXE_bot"))
        .arg("--home")
        .arg(&home)
        .args(["pair", "telegram"])
        .env_remove("BOT_HOME")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (lines_tx, lines_rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = lines_tx.send(line);
        }
    });
    // The code is the indented line.
    let code = loop {
        let line = lines_rx
            .recv_timeout(Duration::from_secs(20))
            .expect("bot pair prints a code");
        if let Some(code) = line.strip_prefix("    ") {
            break code.trim().to_owned();
        }
    };
    assert_eq!(code.len(), 9);

    // Bob is a stranger until he sends the code.
    tg.user_says(BOB, BOB, "hi");
    tg.user_says(BOB, BOB, &code);
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "bot pair did not finish");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let rest: Vec<String> = lines_rx.try_iter().collect();
    assert!(status.success(), "{rest:?}");
    assert!(
        rest.iter().any(|l| l.starts_with("paired:   telegram:43")),
        "{rest:?}"
    );
    let config = std::fs::read_to_string(home.join("config.toml")).unwrap();
    assert_eq!(
        config,
        "# mine\n[orchestrator]\nowners = [\"terminal:me\", \"telegram:43\"] # keep\ntimezone = \"UTC\"\n"
    );
    let sent = tg.sent();
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert_eq!((sent[0].chat_id, sent[0].text.as_str()), (BOB, PAIRED_TEXT));

    // Running it again and giving up (SIGINT) voids the new code.
    let again = Command::new(env!("CARGO_BIN_EXE_bot"))
        .arg("--home")
        .arg(&home)
        .args(["pair", "telegram"])
        .env_remove("BOT_HOME")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(800)).await;
    let _ = Command::new("kill")
        .args(["-INT", &again.id().to_string()])
        .status();
    let out = again.wait_with_output().unwrap();
    assert!(!out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("error[pair_not_used]"), "{err}");
    let voided = stdout
        .lines()
        .find_map(|l| l.strip_prefix("    "))
        .unwrap()
        .trim()
        .to_owned();
    tg.user_says(666, 666, &voided);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(tg.sent().len(), 1, "a voided code pairs nobody");

    let _ = stop.send(());
    gateway.await.unwrap().unwrap();
}
