//! `bot`: the command a user runs.
//!
//! `bot init` generates every identity, key, certificate, the NATS configuration and a default
//! `config.toml` under the bot's home directory; `bot up` runs everything (NATS, the audit
//! writer, the agents in the sandbox, the orchestrator) until Ctrl-C; `bot chat` is the
//! terminal chat channel; `bot doctor` checks an installation; `bot audit verify` checks the
//! audit log's hash chain and signed checkpoints.
//!
//! What it does not do: it never prints key material, and it never writes the audit log.
#![forbid(unsafe_code)]
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use protocol::{AgentName, ChatUser};

mod chat;
mod config;
mod doctor;
mod pair;
mod up;

/// Prints a line to standard output (the CLI's one output path).
pub(crate) fn say(text: &str) {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{text}");
    let _ = out.flush();
}

/// Exit code for bad usage or configuration (EX_USAGE).
const EXIT_USAGE: u8 = 64;

#[derive(Debug, Parser)]
#[command(
    name = "bot",
    version,
    about = "A security-first multi-agent personal assistant"
)]
struct Cli {
    /// The bot's home: identities, keys, NATS configuration, audit log.
    #[arg(long, env = "BOT_HOME", global = true)]
    home: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Generate identities, keys, certificates and the NATS configuration (idempotent: existing
    /// secrets are kept; new agents are added).
    Init {
        /// An agent to provision (repeat for several).
        #[arg(long = "agent", default_values_t = vec!["hue".to_owned()])]
        agents: Vec<String>,
        /// An extra DNS name or IP address for the NATS server certificate (repeatable).
        #[arg(long = "host")]
        hosts: Vec<String>,
        /// Where nats-server will listen.
        #[arg(long, default_value = "127.0.0.1:4222")]
        listen: SocketAddr,
    },
    /// Run the assistant: NATS, the audit writer, the agents in the sandbox and the
    /// orchestrator, until Ctrl-C (generates keys and a default config.toml on first run).
    Up {
        /// Run a simulated Hue bridge (a real bridge's resource dump) for the Hue agent.
        #[arg(long)]
        simulate_hue: bool,
        /// Where agent-hue, agent-audit-anomaly, audit-writer and egress-proxy are (default:
        /// next to bot).
        #[arg(long)]
        bin_dir: Option<PathBuf>,
        /// The sandbox backend (overrides [bot] backend).
        #[arg(long, value_parser = ["auto", "docker", "process"])]
        backend: Option<String>,
        /// NATS's port on 127.0.0.1 (overrides [bot] nats_port; 0: any free port).
        #[arg(long)]
        nats_port: Option<u16>,
    },
    /// The audit log.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Check the installation: secrets, sandbox backend, NATS, agents and their isolation, the
    /// audit log.
    Doctor {
        /// The NATS URL (default: the one `bot up` wrote to <home>/run/nats.url).
        #[arg(long)]
        nats_url: Option<String>,
    },
    /// Pair a chat account: prints a one-time code; whoever sends it to the assistant (in a
    /// private chat, within 10 minutes) may talk to it and becomes an owner.
    Pair {
        /// The platform (the notify gateway must be configured and running for it).
        #[arg(value_parser = pair::PLATFORMS)]
        platform: String,
        /// The gateway's configuration (default: <home>/gateway.toml).
        #[arg(long)]
        gateway_config: Option<PathBuf>,
    },
    /// Chat with the assistant from this terminal (the `terminal` channel).
    Chat {
        /// Your terminal user id (you are `terminal:<id>`; it must be one of the owners).
        #[arg(long = "as", env = "BOT_CHAT_USER")]
        user: Option<String>,
        /// The NATS URL (default: the one `bot up` wrote to <home>/run/nats.url).
        #[arg(long)]
        nats_url: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// Recompute the hash chain and check every signed checkpoint; name the first bad row.
    Verify {
        /// The audit database (default: <home>/audit/audit.db).
        #[arg(long)]
        db: Option<PathBuf>,
        /// The witness file with copies of the checkpoints (default: <home>/audit/witness.notes
        /// if it exists).
        #[arg(long)]
        witness: Option<PathBuf>,
        /// The checkpoint public key (default: <home>/keys/checkpoint.pub).
        #[arg(long)]
        checkpoint_key: Option<PathBuf>,
    },
}

fn default_home() -> Option<PathBuf> {
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".assistant"))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let Some(home) = cli.home.clone().or_else(default_home) else {
        eprintln!("error[config_no_home]: set --home or BOT_HOME (HOME is not set)");
        return ExitCode::from(EXIT_USAGE);
    };
    let layout = provision::Layout::new(home);
    match cli.command {
        Command::Init {
            agents,
            hosts,
            listen,
        } => init(&layout, &agents, hosts, listen),
        Command::Audit {
            command:
                AuditCommand::Verify {
                    db,
                    witness,
                    checkpoint_key,
                },
        } => audit_verify(&layout, db, witness, checkpoint_key),
        Command::Up {
            simulate_hue,
            bin_dir,
            backend,
            nats_port,
        } => up_command(
            &layout,
            up::UpOptions {
                simulate_hue,
                bin_dir,
                backend: backend.as_deref().map(|b| match b {
                    "docker" => config::BackendChoice::Docker,
                    "process" => config::BackendChoice::Process,
                    _ => config::BackendChoice::Auto,
                }),
                nats_port,
            },
        ),
        Command::Chat { user, nats_url } => chat_command(&layout, user, nats_url),
        Command::Doctor { nats_url } => doctor_command(&layout, nats_url),
        Command::Pair {
            platform,
            gateway_config,
        } => pair_command(&layout, &platform, gateway_config),
    }
}

fn pair_command(
    layout: &provision::Layout,
    platform: &str,
    gateway_config: Option<PathBuf>,
) -> ExitCode {
    let gateway_config = gateway_config.unwrap_or_else(|| up::gateway_config_path(layout));
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error[runtime]: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        let (code, store) = match pair::start(&gateway_config, platform).await {
            Ok(started) => started,
            Err(e) => {
                eprintln!("error[pair_unavailable]: {e:#}");
                return ExitCode::from(EXIT_USAGE);
            }
        };
        say(&format!(
            "Send this code to the assistant on {platform}, in a private chat, within {} minutes:\n\n    {code}\n\n(the notify gateway must be running; Ctrl-C to cancel)",
            notify_gateway::pairing::CODE_TTL.as_secs() / 60
        ));
        let waited = pair::wait(
            &store,
            platform,
            &code,
            std::time::Duration::from_millis(500),
            shutdown_signal(),
        )
        .await;
        let user = match waited {
            Ok(pair::Paired::User(user)) => user,
            Ok(pair::Paired::Expired | pair::Paired::Cancelled) => {
                let _ = store.void_pairing(platform, &code).await;
                // Someone may have used it at the last moment.
                match store.paired_with(platform, &code).await {
                    Ok(Some(user)) => format!("{platform}:{user}"),
                    _ => {
                        eprintln!(
                            "error[pair_not_used]: nobody sent the code (it is void now); run `bot pair {platform}` again"
                        );
                        return ExitCode::FAILURE;
                    }
                }
            }
            Err(e) => {
                eprintln!("error[pair_failed]: {e:#}");
                return ExitCode::FAILURE;
            }
        };
        let config = layout.root().join("config.toml");
        match pair::add_owner(&config, &user) {
            Ok(_) => {
                say(&format!(
                    "paired:   {user}, added to owners in {}; restart `bot up` so the orchestrator accepts them",
                    config.display()
                ));
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!(
                    "error[pair_owner_not_added]: {user} is paired at the gateway but not an owner: {e:#}"
                );
                ExitCode::FAILURE
            }
        }
    })
}

/// Where `bot up` records the NATS URL for `bot chat`.
pub(crate) fn nats_url_file(layout: &provision::Layout) -> PathBuf {
    layout.root().join("run/nats.url")
}

fn up_command(layout: &provision::Layout, options: up::UpOptions) -> ExitCode {
    if let Err(e) = init_logging(layout) {
        eprintln!("error[log_open]: {e}");
        return ExitCode::FAILURE;
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error[runtime]: {e}");
            return ExitCode::FAILURE;
        }
    };
    say(&format!(
        "bot up: home {} (logs in {})",
        layout.root().display(),
        layout.root().join("logs").display()
    ));
    match runtime.block_on(up::run(layout, options, shutdown_signal())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error[up_failed]: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Tracing of everything running in this process (orchestrator, sandbox) to
/// `<home>/logs/bot.log`; standard output stays for progress lines.
fn init_logging(layout: &provision::Layout) -> std::io::Result<()> {
    ensure_home(layout)?;
    let dir = layout.root().join("logs");
    std::fs::create_dir_all(&dir)?;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("bot.log"))?;
    tracing_subscriber::fmt()
        .with_writer(std::sync::Mutex::new(file))
        .with_ansi(false)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_no_filter| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    Ok(())
}

/// Completes on SIGINT (Ctrl-C) or SIGTERM.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_no_handler) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

fn doctor_command(layout: &provision::Layout, nats_url: Option<String>) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error[runtime]: {e}");
            return ExitCode::FAILURE;
        }
    };
    let _ = rustls::crypto::ring::default_provider().install_default();
    let url = nats_url.or_else(|| {
        std::fs::read_to_string(nats_url_file(layout))
            .ok()
            .map(|s| s.trim().to_owned())
    });
    let findings = runtime.block_on(async {
        let mut f = doctor::check_secrets(layout);
        f.push(doctor::check_docker().await);
        match &url {
            Some(url) => f.extend(doctor::check_agents(layout, url).await),
            None => f.push(doctor::Finding {
                level: doctor::Level::Warn,
                check: "nats".to_owned(),
                detail: "not running (no <home>/run/nats.url): start `bot up`".to_owned(),
            }),
        }
        f.push(doctor::check_audit(layout));
        f
    });
    if doctor::print(&findings) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn chat_command(
    layout: &provision::Layout,
    user: Option<String>,
    nats_url: Option<String>,
) -> ExitCode {
    let id = user
        .or_else(|| std::env::var("USER").ok())
        .unwrap_or_else(|| "me".to_owned());
    let user = match ChatUser::new(format!("{}:{id}", chat::CHANNEL)) {
        Ok(u) => u,
        Err(e) => {
            eprintln!("error[{}]: terminal user {id:?}: {e}", e.code());
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let url = match nats_url.or_else(|| {
        std::fs::read_to_string(nats_url_file(layout))
            .ok()
            .map(|s| s.trim().to_owned())
    }) {
        Some(u) => u,
        None => {
            eprintln!(
                "error[chat_not_running]: no NATS URL: start `bot up` first (or pass --nats-url)"
            );
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error[runtime]: {e}");
            return ExitCode::FAILURE;
        }
    };
    let _ = rustls::crypto::ring::default_provider().install_default();
    let result = runtime.block_on(async {
        let client =
            provision::client::connect(&url, layout, &protocol::Principal::gateway()).await?;
        chat::run(client, user).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error[chat_failed]: {e}");
            ExitCode::FAILURE
        }
    }
}

fn init(
    layout: &provision::Layout,
    agents: &[String],
    hosts: Vec<String>,
    listen: SocketAddr,
) -> ExitCode {
    let mut names = Vec::with_capacity(agents.len());
    for a in agents {
        match AgentName::new(a.as_str()) {
            Ok(n) => names.push(n),
            Err(e) => {
                eprintln!("error[{}]: agent {a:?}: {e}", e.code());
                return ExitCode::from(EXIT_USAGE);
            }
        }
    }
    let mut spec = provision::Spec::new(names);
    spec.server_hosts.extend(hosts);
    spec.listen = listen;
    match provision::generate(layout, &spec) {
        Ok(summary) => {
            println!("home: {}", layout.root().display());
            match write_default_config(layout) {
                Ok(Some(path)) => println!("  created  {}", path.display()),
                Ok(None) => {}
                Err(e) => {
                    eprintln!("error[config_write]: {e}");
                    return ExitCode::FAILURE;
                }
            }
            for f in &summary.created {
                println!("  created  {f}");
            }
            for f in &summary.written {
                println!("  rendered {f}");
            }
            println!(
                "{} created, {} kept, {} rendered. Secrets are 0600 and were not printed.",
                summary.created.len(),
                summary.kept.len(),
                summary.written.len()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error[{}]: {e}", e.code());
            ExitCode::from(EXIT_USAGE)
        }
    }
}

/// Where the bot's configuration lives.
pub(crate) fn config_path(layout: &provision::Layout) -> PathBuf {
    layout.root().join("config.toml")
}

/// Creates the home private (0700) if it does not exist; an existing one is checked by
/// provisioning.
fn ensure_home(layout: &provision::Layout) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt as _;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(layout.root())
}

/// Writes `<home>/config.toml` with the terminal user as owner unless it exists.
pub(crate) fn write_default_config(layout: &provision::Layout) -> std::io::Result<Option<PathBuf>> {
    use std::io::Write as _;
    ensure_home(layout)?;
    let path = config_path(layout);
    let user = std::env::var("USER")
        .ok()
        .filter(|u| ChatUser::new(format!("{}:{u}", chat::CHANNEL)).is_ok())
        .unwrap_or_else(|| "me".to_owned());
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
    {
        Ok(mut f) => {
            f.write_all(config::default_file(&user).as_bytes())?;
            f.sync_all()?;
            Ok(Some(path))
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(None),
        Err(e) => Err(e),
    }
}

fn audit_verify(
    layout: &provision::Layout,
    db: Option<PathBuf>,
    witness: Option<PathBuf>,
    checkpoint_key: Option<PathBuf>,
) -> ExitCode {
    let db = db.unwrap_or_else(|| layout.audit_db());
    let witness = witness.or_else(|| Some(layout.audit_witness()).filter(|w| w.exists()));
    let key_path = checkpoint_key.unwrap_or_else(|| layout.checkpoint_public());
    let key = match audit::CheckpointVerifier::from_public_file(
        audit::LogName::default_name(),
        &key_path,
    ) {
        Ok(k) => k,
        Err(e) => {
            eprintln!(
                "error[{}]: checkpoint key {}: {e}",
                e.code(),
                key_path.display()
            );
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let report = match audit::verify(&db, &key, witness.as_deref()) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error[{}]: {}: {e}", e.code(), db.display());
            return ExitCode::from(EXIT_USAGE);
        }
    };
    println!("audit log: {}", db.display());
    match &witness {
        Some(w) => println!(
            "witness:   {} ({} notes)",
            w.display(),
            report.witness_notes
        ),
        None => println!(
            "witness:   none (truncation after the last database checkpoint cannot be detected)"
        ),
    }
    println!("rows verified:        {}", report.rows_verified);
    println!("checkpoints verified: {}", report.checkpoints_verified);
    if let Some(head) = &report.head {
        println!("head:                 seq {} {}", head.tree_size, head.hash);
    }
    if report.is_ok() {
        println!("OK: the chain and every signed checkpoint verify");
        return ExitCode::SUCCESS;
    }
    for p in &report.problems {
        println!("PROBLEM[{}]: {p}", p.code());
    }
    if let Some(seq) = report.first_bad_seq() {
        println!("first bad sequence number: {seq}");
    }
    ExitCode::FAILURE
}
