//! `bot`: the command a user runs.
//!
//! Today: `bot init` generates every identity, key, certificate and the NATS configuration
//! under the bot's home directory, and `bot audit verify` checks the audit log's hash chain and
//! signed checkpoints. `up`, `chat`, `pair` and `doctor` arrive with later issues.
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
mod doctor;

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
        Command::Chat { user, nats_url } => chat_command(&layout, user, nats_url),
        Command::Doctor { nats_url } => doctor_command(&layout, nats_url),
    }
}

/// Where `bot up` records the NATS URL for `bot chat`.
fn nats_url_file(layout: &provision::Layout) -> PathBuf {
    layout.root().join("run/nats.url")
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
