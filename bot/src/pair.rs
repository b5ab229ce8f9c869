//! `bot pair <platform>`: adds a chat user with a one-time code.
//!
//! What it does: reads the gateway's configuration (default `<home>/gateway.toml`), checks the
//! platform is configured there, writes a fresh code (only its hash) into the gateway's state
//! database (`notify_gateway::pairing`), prints the code and waits until someone sends it to
//! the assistant in a private chat (the running gateway pairs them), the code expires, or
//! Ctrl-C. On success the new user is added to `owners` in `[orchestrator]` of `config.toml`,
//! keeping the file's comments and layout, so they may instruct and approve once `bot up`
//! restarts.
//!
//! What it does not do: it does not talk to the platform or to NATS (the gateway does), and it
//! never prints anything but the code it made.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context as _, bail};
use notify_gateway::config::Config as GatewayConfig;
use notify_gateway::pairing::{CODE_TTL, new_code};
use notify_gateway::store::Store;
use protocol::UnixMillis;

/// The platforms a code can pair (those where strangers can write to the assistant).
pub(crate) const PLATFORMS: [&str; 2] = ["telegram", "slack"];

/// How `bot pair` ended.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Paired {
    /// Someone sent the code: `telegram:<id>`.
    User(String),
    /// The code expired unused.
    Expired,
    /// Interrupted.
    Cancelled,
}

/// Checks the gateway configuration and writes a code; returns it with the state database.
pub(crate) async fn start(
    gateway_config: &Path,
    platform: &str,
) -> anyhow::Result<(String, Store)> {
    let config = GatewayConfig::load(gateway_config).with_context(|| {
        format!(
            "the gateway configuration {} (see notify-gateway/README.md)",
            gateway_config.display()
        )
    })?;
    if !configured(&config, platform) {
        bail!(
            "[{platform}] is not configured in {}: set it up first (notify-gateway/README.md)",
            gateway_config.display()
        );
    }
    let store = Store::open(&config.state_db)
        .with_context(|| format!("the gateway state {}", config.state_db.display()))?;
    let code = new_code().context("no randomness for a pairing code")?;
    store
        .start_pairing(platform, &code, UnixMillis::now().0)
        .await?;
    Ok((code, store))
}

fn configured(config: &GatewayConfig, platform: &str) -> bool {
    match platform {
        "telegram" => config.telegram.is_some(),
        "slack" => config.slack.is_some(),
        _ => false,
    }
}

/// Waits until the code is used, expires, or `cancel` resolves.
pub(crate) async fn wait(
    store: &Store,
    platform: &str,
    code: &str,
    poll: Duration,
    cancel: impl std::future::Future<Output = ()>,
) -> anyhow::Result<Paired> {
    let deadline = tokio::time::Instant::now() + CODE_TTL;
    tokio::pin!(cancel);
    loop {
        if let Some(user) = store.paired_with(platform, code).await? {
            return Ok(Paired::User(format!("{platform}:{user}")));
        }
        if tokio::time::Instant::now() >= deadline {
            return Ok(Paired::Expired);
        }
        tokio::select! {
            () = &mut cancel => return Ok(Paired::Cancelled),
            () = tokio::time::sleep(poll) => {}
        }
    }
}

/// Adds `user` to `[orchestrator] owners` in the file at `path` (no-op if present), keeping
/// comments and layout. Returns whether it changed anything.
pub(crate) fn add_owner(path: &Path, user: &str) -> anyhow::Result<bool> {
    let text = std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
    let mut doc: toml_edit::DocumentMut = text
        .parse()
        .with_context(|| format!("{} is not valid TOML", path.display()))?;
    let Some(owners) = doc
        .get_mut("orchestrator")
        .and_then(|o| o.get_mut("owners"))
        .and_then(toml_edit::Item::as_array_mut)
    else {
        bail!("{} has no [orchestrator] owners list", path.display());
    };
    if owners.iter().any(|o| o.as_str() == Some(user)) {
        return Ok(false);
    }
    owners.push(user);
    let tmp = path.with_extension("toml.tmp");
    std::fs::write(&tmp, doc.to_string()).with_context(|| format!("write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("replace {}", path.display()))?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn owners_are_added_once_keeping_comments() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        std::fs::write(&path, crate::config::default_file("me")).unwrap();
        assert!(add_owner(&path, "telegram:42").unwrap());
        assert!(!add_owner(&path, "telegram:42").unwrap());
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.contains("owners = [\"terminal:me\", \"telegram:42\"]"),
            "{text}"
        );
        assert!(text.contains("# Only these chat users may instruct the assistant"));
        // The orchestrator accepts the result, with the new owner.
        let config = crate::config::BotConfig::load(&path).unwrap();
        let orchestrator = config
            .orchestrator_toml(
                "nats://127.0.0.1:4222",
                Path::new("/h"),
                &["hue".to_owned()],
            )
            .unwrap();
        let checked = orchestrator::config::Config::from_toml(&orchestrator).unwrap();
        let owners: Vec<String> = checked.owners.iter().map(ToString::to_string).collect();
        assert_eq!(owners, ["terminal:me", "telegram:42"]);
        std::fs::write(&path, "[bot]\n").unwrap();
        assert!(add_owner(&path, "telegram:42").is_err());
    }

    #[tokio::test]
    async fn a_code_is_written_for_a_configured_platform_and_waited_for() {
        let dir = tempfile::tempdir().unwrap();
        let gw = dir.path().join("gateway.toml");
        let db = dir.path().join("gw.sqlite");
        std::fs::write(
            &gw,
            format!(
                "nats_url = \"tls://127.0.0.1:4222\"\nhome = \"{}\"\nstate_db = \"{}\"\n\
                 [telegram]\ntoken_file = \"/x\"\nallowed_users = [1]\n",
                dir.path().display(),
                db.display()
            ),
        )
        .unwrap();
        assert!(
            start(&gw, "imessage").await.is_err(),
            "not a pairing platform"
        );
        assert!(
            start(&dir.path().join("none.toml"), "telegram")
                .await
                .is_err()
        );
        let (code, store) = start(&gw, "telegram").await.unwrap();
        // The gateway pairs someone with it (as its inbound loop would).
        let gateway = Store::open(&db).unwrap();
        assert_eq!(
            gateway
                .try_pair("telegram", "42", &code, UnixMillis::now().0)
                .await
                .unwrap(),
            notify_gateway::pairing::PairOutcome::Paired
        );
        let got = wait(
            &store,
            "telegram",
            &code,
            Duration::from_millis(10),
            std::future::pending(),
        )
        .await
        .unwrap();
        assert_eq!(got, Paired::User("telegram:42".into()));
        // A newer code is still pending: waiting can be cancelled.
        let (code, store) = start(&gw, "telegram").await.unwrap();
        let got = wait(
            &store,
            "telegram",
            &code,
            Duration::from_millis(10),
            async {},
        )
        .await
        .unwrap();
        assert_eq!(got, Paired::Cancelled);
    }
}
