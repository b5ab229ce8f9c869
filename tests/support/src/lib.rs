//! Test harness: a real `nats-server` running our generated configuration.
//!
//! What it does: [`NatsServer::start`] provisions a fresh [`provision::Layout`] in a temporary
//! directory (the given agents plus every service identity), renders the config on a free
//! 127.0.0.1 port, starts `nats-server` with its log in that directory, waits until it is ready,
//! creates the JetStream streams as the admin identity, and kills the server (and waits for it)
//! when dropped. [`NatsServer::connect_watching`] also collects the `-ERR` messages the server
//! sends a client (permission violations), so tests can assert the attacker saw the refusal, and
//! [`ServerErrors::sync`] gives a real round trip through the server (async-nats 0.51's `flush`
//! only writes the socket), so "nothing arrived" can be asserted without guessing at timing.
//!
//! What it does not do: it never skips. A missing `nats-server` binary is a panic that says how
//! to install it (`tests/run.sh`); a server that does not come up is an error carrying its log.
#![forbid(unsafe_code)]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::print_stdout,
    clippy::print_stderr
)]

pub mod docker;
pub mod fake_llm;
pub mod fake_slack;
pub mod fake_telegram;
/// The Hue bridge double (crate `hue-sim`).
pub use hue_sim as fake_hue;

use std::fs::{self, File};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail};
use async_nats::jetstream;
use protocol::acl::Identity;
use protocol::{AgentName, Principal};
use provision::{Layout, Spec};

/// How long the server may take to become ready.
pub const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a [`ServerErrors::sync`] round trip may take.
pub const SYNC_TIMEOUT: Duration = Duration::from_secs(10);
/// Attempts at finding a free port (another process may take the one we picked).
const PORT_ATTEMPTS: usize = 5;

/// The workspace root (two levels above this crate).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .expect("tests/support sits two levels below the workspace root")
        .to_path_buf()
}

/// The `nats-server` binary: `$NATS_SERVER_BIN`, else `<workspace>/.tools/py/bin/nats-server`,
/// else the first `nats-server` on `PATH`. Panics (the test fails) if there is none.
pub fn nats_server_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("NATS_SERVER_BIN").filter(|b| !b.is_empty()) {
        let bin = PathBuf::from(bin);
        assert!(
            bin.is_file(),
            "NATS_SERVER_BIN={} does not exist; run tests/run.sh to install nats-server",
            bin.display()
        );
        return bin;
    }
    let tools = workspace_root().join(".tools/py/bin/nats-server");
    if tools.is_file() {
        return tools;
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let candidate = dir.join("nats-server");
            if candidate.is_file() {
                return candidate;
            }
        }
    }
    panic!(
        "nats-server not found (NATS_SERVER_BIN, {}, PATH): run tests/run.sh, which installs \
         the pinned nats-server into .tools/",
        tools.display()
    );
}

/// Subjects [`ServerErrors::sync`] publishes to. No identity may publish there (every identity
/// has a publish allow list, and none names `sync.`), so the server answers with an `-ERR`.
pub const SYNC_SUBJECT_PREFIX: &str = "sync.barrier";

/// Errors the server sent one client (`-ERR ...`), in arrival order.
#[derive(Debug, Clone, Default)]
pub struct ServerErrors {
    seen: Arc<Mutex<Vec<String>>>,
    syncs: Arc<AtomicU64>,
}

impl ServerErrors {
    fn push(&self, message: String) {
        self.seen.lock().unwrap().push(message);
    }

    fn is_sync(message: &str) -> bool {
        message.contains(SYNC_SUBJECT_PREFIX)
    }

    /// Everything received so far (without the answers to [`ServerErrors::sync`]).
    pub fn all(&self) -> Vec<String> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|m| !Self::is_sync(m))
            .cloned()
            .collect()
    }

    /// How many errors so far contain `substring` (without the answers to
    /// [`ServerErrors::sync`]).
    pub fn count(&self, substring: &str) -> usize {
        self.all().iter().filter(|m| m.contains(substring)).count()
    }

    /// Waits until an error containing `substring` has arrived and returns it; fails after
    /// `timeout` listing what did arrive.
    pub async fn wait_for(&self, substring: &str, timeout: Duration) -> anyhow::Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(found) = self
                .seen
                .lock()
                .unwrap()
                .iter()
                .find(|m| m.contains(substring))
            {
                return Ok(found.clone());
            }
            if Instant::now() >= deadline {
                bail!(
                    "no server error containing {substring:?} within {timeout:?}; received: {:?}",
                    self.all()
                );
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// A round trip through the server on `client` (the connection these errors belong to).
    ///
    /// async-nats 0.51's `Client::flush` only writes the client's buffer to the socket; it does
    /// not wait for the server. This publishes to a subject no identity may publish to and waits
    /// for the server's `Permissions Violation`. When it returns, the server has processed
    /// everything the client sent before (so its subscriptions are registered, or refused), and
    /// the client has already dispatched every message the server sent it before (the error
    /// travels behind them on the same connection).
    pub async fn sync(&self, client: &async_nats::Client) -> anyhow::Result<()> {
        let n = self.syncs.fetch_add(1, Ordering::Relaxed);
        let subject = format!("{SYNC_SUBJECT_PREFIX}.{n}");
        client.publish(subject.clone(), "".into()).await?;
        client.flush().await?;
        self.wait_for(&format!("\"{subject}\""), SYNC_TIMEOUT)
            .await
            .context("sync round trip")?;
        Ok(())
    }
}

/// A running `nats-server` with a freshly provisioned layout; killed on drop.
#[derive(Debug)]
pub struct NatsServer {
    child: Child,
    url: String,
    addr: SocketAddr,
    layout: Layout,
    log_path: PathBuf,
    stderr_path: PathBuf,
    // Removed only after the server is gone (Drop stops it first); `None` only while a failed
    // start hands the directory to the next attempt.
    dir: Option<tempfile::TempDir>,
}

enum Startup {
    Ready,
    AddressInUse,
}

fn free_port() -> anyhow::Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("bind an ephemeral port")?;
    Ok(listener.local_addr()?.port())
}

fn read_lossy(path: &Path) -> String {
    fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

impl NatsServer {
    /// Provisions a layout for `agents` and every service, starts nats-server on a free
    /// 127.0.0.1 port, waits until it is ready and creates the streams as admin.
    pub async fn start(agents: &[&str]) -> anyhow::Result<NatsServer> {
        Self::start_with_ports(agents, free_port).await
    }

    /// [`NatsServer::start`] with the ports to try coming from `next_port` (a port another
    /// process takes in the meantime is retried with the next one).
    async fn start_with_ports(
        agents: &[&str],
        mut next_port: impl FnMut() -> anyhow::Result<u16>,
    ) -> anyhow::Result<NatsServer> {
        let bin = nats_server_bin();
        let agents = agents
            .iter()
            .map(|a| AgentName::new(*a).with_context(|| format!("agent name {a:?}")))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let mut dir = tempfile::Builder::new()
            .prefix("nats-test-")
            .tempdir()
            .context("create the server's temporary directory")?;
        let layout = Layout::new(dir.path().join("state"));
        let mut spec = Spec::new(agents);
        let log_path = dir.path().join("nats-server.log");
        let stderr_path = dir.path().join("nats-server.stderr");

        let mut last_log = String::new();
        for _attempt in 0..PORT_ATTEMPTS {
            let port = next_port()?;
            spec.listen = SocketAddr::from(([127, 0, 0, 1], port));
            // The first run creates everything; later ones only re-render the config.
            provision::generate(&layout, &spec).context("provision the test layout")?;
            // Fresh logs per attempt, so an earlier attempt's lines cannot be mistaken for this one's.
            for old in [&log_path, &stderr_path] {
                if old.exists() {
                    fs::remove_file(old).context("remove an old log")?;
                }
            }
            let stderr = File::create(&stderr_path).context("create the stderr file")?;
            let child = Command::new(&bin)
                .arg("-c")
                .arg(layout.nats_config())
                .arg("-l")
                .arg(&log_path)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(stderr)
                .spawn()
                .with_context(|| format!("spawn {}", bin.display()))?;
            let mut server = NatsServer {
                child,
                url: format!("tls://127.0.0.1:{port}"),
                addr: spec.listen,
                layout: layout.clone(),
                log_path: log_path.clone(),
                stderr_path: stderr_path.clone(),
                dir: Some(dir),
            };
            match server.wait_ready().await {
                Ok(Startup::Ready) => {
                    server.ensure_streams().await?;
                    return Ok(server);
                }
                Ok(Startup::AddressInUse) => {
                    last_log = server.log();
                    // Take the directory back (the server is stopped by the drop below).
                    dir = server.take_dir()?;
                }
                Err(e) => return Err(e),
            }
        }
        bail!("no free port after {PORT_ATTEMPTS} attempts; last server log:\n{last_log}")
    }

    /// Stops the server and hands its temporary directory back (for a retry on another port).
    fn take_dir(mut self) -> anyhow::Result<tempfile::TempDir> {
        self.stop();
        self.dir
            .take()
            .ok_or_else(|| anyhow!("the server's directory was already taken"))
    }

    async fn wait_ready(&mut self) -> anyhow::Result<Startup> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let log = self.log();
            if log.contains("Server is ready") {
                return Ok(Startup::Ready);
            }
            if let Some(status) = self.child.try_wait()? {
                if log.contains("address already in use") {
                    return Ok(Startup::AddressInUse);
                }
                bail!("nats-server exited ({status}) before it was ready; its log:\n{log}");
            }
            if Instant::now() >= deadline {
                bail!("nats-server was not ready within {READY_TIMEOUT:?}; its log:\n{log}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn ensure_streams(&self) -> anyhow::Result<()> {
        let admin = self.admin().await?;
        provision::streams::ensure(&admin)
            .await
            .with_context(|| format!("create the streams; server log:\n{}", self.log()))?;
        admin.flush().await?;
        Ok(())
    }

    fn stop(&mut self) {
        // Already exited is fine; either way, reap it.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The client URL (`tls://127.0.0.1:<port>`).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The provisioned layout (keys, certificates, config).
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// The temporary directory holding the layout and the logs.
    pub fn dir(&self) -> &Path {
        self.dir
            .as_ref()
            .map_or_else(|| self.layout.root(), |d| d.path())
    }

    /// Connects as `principal` with its provisioned credentials.
    pub async fn connect(&self, principal: &Principal) -> anyhow::Result<async_nats::Client> {
        provision::client::connect(&self.url, &self.layout, principal)
            .await
            .with_context(|| format!("connect as {principal}"))
    }

    /// Connects as `principal` and collects the errors the server sends this connection.
    pub async fn connect_watching(
        &self,
        principal: &Principal,
    ) -> anyhow::Result<(async_nats::Client, ServerErrors)> {
        let errors = ServerErrors::default();
        let sink = errors.clone();
        let client = provision::client::options(&self.layout, principal)?
            .event_callback(move |event| {
                let sink = sink.clone();
                async move {
                    if let async_nats::Event::ServerError(e) = event {
                        let text = match e {
                            async_nats::ServerError::Other(text) => text,
                            other => other.to_string(),
                        };
                        sink.push(text);
                    }
                }
            })
            .connect(&self.url)
            .await
            .with_context(|| format!("connect as {principal}"))?;
        Ok((client, errors))
    }

    /// Connects as the admin identity (the only one that may manage streams).
    pub async fn admin(&self) -> anyhow::Result<async_nats::Client> {
        self.connect(&Identity::Admin.principal()).await
    }

    /// A stream's current state, as the admin sees it.
    pub async fn stream_state(&self, stream: &str) -> anyhow::Result<jetstream::stream::State> {
        let js = jetstream::new(self.admin().await?);
        let mut s = js
            .get_stream(stream)
            .await
            .with_context(|| format!("get stream {stream}"))?;
        Ok(s.info().await?.state.clone())
    }

    /// The server log so far (and anything it wrote to stderr).
    pub fn log(&self) -> String {
        let mut log = read_lossy(&self.log_path);
        let stderr = read_lossy(&self.stderr_path);
        if !stderr.is_empty() {
            log.push_str("\n--- stderr ---\n");
            log.push_str(&stderr);
        }
        log
    }

    /// Waits until the server log contains `substring` (the log is written asynchronously).
    pub async fn wait_for_log(&self, substring: &str, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.log().contains(substring) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(anyhow!(
                    "server log has no {substring:?} within {timeout:?}; log:\n{}",
                    self.log()
                ));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The orchestrator's view of the `ALERTS` stream: its durable consumer's messages.
pub type AlertFeed = jetstream::consumer::pull::Stream;

/// Binds the orchestrator's durable consumer on `ALERTS` (as the orchestrator, whose identity
/// may read alerts only this way).
pub async fn alert_feed(orchestrator: &async_nats::Client) -> anyhow::Result<AlertFeed> {
    let consumer: jetstream::consumer::PullConsumer = jetstream::new(orchestrator.clone())
        .get_stream(protocol::subject::stream::ALERTS)
        .await?
        .get_consumer(protocol::subject::stream::ALERTS_CONSUMER)
        .await
        .map_err(|e| anyhow!("the orchestrator's alerts consumer: {e}"))?;
    Ok(consumer.messages().await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_port_taken_meanwhile_is_retried_on_another() {
        // The first port offered is busy (held by this listener), the second is free.
        let busy = TcpListener::bind("127.0.0.1:0").unwrap();
        let busy_port = busy.local_addr().unwrap().port();
        let mut offered = vec![busy_port];
        let server = NatsServer::start_with_ports(&["hue"], || {
            let port = if offered.is_empty() {
                free_port()?
            } else {
                offered.remove(0)
            };
            Ok(port)
        })
        .await
        .unwrap();
        assert_ne!(server.addr().port(), busy_port);
        let hue = server
            .connect(&Principal::new("hue").unwrap())
            .await
            .unwrap();
        let (orch, errors) = server
            .connect_watching(&Identity::Orchestrator.principal())
            .await
            .unwrap();
        errors.sync(&orch).await.unwrap();
        assert!(errors.all().is_empty(), "{:?}", errors.all());
        drop((hue, busy));
    }

    #[tokio::test]
    async fn drop_stops_the_server_and_removes_its_directory() {
        let server = NatsServer::start(&[]).await.unwrap();
        let addr = server.addr();
        let dir = server.dir().to_path_buf();
        assert!(dir.join("state/nats/nats-server.conf").is_file());
        drop(server);
        assert!(!dir.exists());
        assert!(
            std::net::TcpStream::connect(addr).is_err(),
            "still listening"
        );
    }

    #[tokio::test]
    async fn an_invalid_agent_name_is_refused_before_anything_starts() {
        let e = NatsServer::start(&["Not An Agent"]).await.unwrap_err();
        assert!(format!("{e:#}").contains("agent name"), "{e:#}");
    }

    #[tokio::test]
    async fn a_server_that_never_gets_a_port_fails_with_its_log() {
        let busy = TcpListener::bind("127.0.0.1:0").unwrap();
        let busy_port = busy.local_addr().unwrap().port();
        let e = NatsServer::start_with_ports(&[], || Ok(busy_port))
            .await
            .unwrap_err();
        let text = format!("{e:#}");
        assert!(text.contains("no free port"), "{text}");
        assert!(text.contains("address already in use"), "{text}");
    }
}
