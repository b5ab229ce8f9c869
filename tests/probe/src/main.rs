//! The probe: plays a compromised agent from inside a hardened container.
//!
//! It is built and run exactly like an agent (same image builder, same container spec, an
//! agent's own credentials and network) but, instead of serving commands, it attempts what an
//! attacker with code execution in that container would try, and prints one JSON line per
//! attempt: `{"check": "...", "outcome": "allowed" | "refused", "errno": n, "detail": "..."}`.
//! The security suite (`tests/tests/sandbox_security.rs`) decides which outcomes are required.
//! It ends with `{"done": true}`.
//!
//! Subcommands: `whoami`, `fs`, `syscalls`, `setuid`, `net`, `egress`, `nats`, `threads`,
//! `memhog`, `sleep`. Test-only: it is never deployed.
#![forbid(unsafe_code)]
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs, UdpSocket};
use std::process::ExitCode;
use std::time::Duration;

use serde_json::json;

fn report(check: &str, result: Result<String, std::io::Error>) {
    let line = match result {
        Ok(detail) => json!({"check": check, "outcome": "allowed", "errno": 0, "detail": detail}),
        Err(e) => json!({
            "check": check, "outcome": "refused",
            "errno": e.raw_os_error().unwrap_or(0), "detail": e.to_string()
        }),
    };
    println!("{line}");
}

fn errno(e: nix::errno::Errno) -> std::io::Error {
    std::io::Error::from_raw_os_error(e as i32)
}

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
}

fn args_all(args: &[String], name: &str) -> Vec<String> {
    args.windows(2)
        .filter(|w| w.first().is_some_and(|a| a == name))
        .filter_map(|w| w.get(1).cloned())
        .collect()
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(cmd) = args.first().cloned() else {
        eprintln!(
            "usage: probe <whoami|fs|syscalls|setuid|net|egress|nats|threads|memhog|sleep> ..."
        );
        return ExitCode::from(64);
    };
    match cmd.as_str() {
        "whoami" => whoami(),
        "fs" => fs(),
        "syscalls" => syscalls(),
        "setuid" => setuid(),
        "net" => net(&args),
        "egress" => egress(&args),
        "nats" => {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    report("runtime", Err(e));
                    return ExitCode::FAILURE;
                }
            };
            rt.block_on(nats(&args));
        }
        "threads" => threads(),
        "memhog" => memhog(),
        "sleep" => loop {
            std::thread::sleep(Duration::from_secs(3600));
        },
        other => {
            eprintln!("unknown subcommand {other}");
            return ExitCode::from(64);
        }
    }
    println!("{}", json!({"done": true}));
    let _ = std::io::stdout().flush();
    ExitCode::SUCCESS
}

/// Identity and confinement as the kernel sees them (`/proc/self/status`).
fn whoami() {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name}:")))
            .map(|v| v.trim().to_owned())
            .unwrap_or_default()
    };
    println!(
        "{}",
        json!({
            "check": "whoami", "outcome": "allowed", "errno": 0,
            "uid": field("Uid"), "gid": field("Gid"), "groups": field("Groups"),
            "cap_eff": field("CapEff"), "cap_prm": field("CapPrm"), "cap_bnd": field("CapBnd"),
            "cap_amb": field("CapAmb"), "seccomp": field("Seccomp"),
            "no_new_privs": field("NoNewPrivs"),
            "euid": nix::unistd::geteuid().as_raw(),
        })
    );
}

/// Writes outside /tmp fail, /tmp is writable but not executable, secrets are read-only.
fn fs() {
    let own = std::env::current_exe().unwrap_or_else(|_| "/probe".into());
    for (check, path) in [
        ("write_root_binary", own.display().to_string()),
        ("write_new_file_in_root", "/x".to_owned()),
        ("write_etc_passwd", "/etc/passwd".to_owned()),
        ("write_bin", "/bin/x".to_owned()),
        ("write_secrets", "/run/secrets/x".to_owned()),
        ("write_config", "/config/agent.json".to_owned()),
        ("write_proc_sysrq", "/proc/sysrq-trigger".to_owned()),
    ] {
        report(
            check,
            std::fs::write(&path, b"probe").map(|()| format!("wrote {path}")),
        );
    }
    report(
        "write_tmp",
        std::fs::write("/tmp/probe-file", b"probe").map(|()| "wrote /tmp/probe-file".to_owned()),
    );
    // Write an executable file to /tmp (mode set at creation: no chmod needed): a script whose
    // interpreter is this very binary, so it would run anywhere but on a noexec mount.
    let copied = {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o755)
            .open("/tmp/probe-copy")
            .and_then(|mut f| f.write_all(format!("#!{} whoami\n", own.display()).as_bytes()))
    };
    report(
        "copy_to_tmp",
        copied.map(|()| "wrote an executable script, mode 755".to_owned()),
    );
    report(
        "exec_from_tmp",
        std::process::Command::new("/tmp/probe-copy")
            .arg("whoami")
            .output()
            .map(|o| format!("ran, exit {:?}", o.status.code())),
    );
    report(
        "tmp_mount_options",
        std::fs::read_to_string("/proc/self/mountinfo").and_then(|m| {
            m.lines()
                .find(|l| l.split_whitespace().nth(4) == Some("/tmp"))
                .map(|l| {
                    let fields: Vec<&str> = l.split_whitespace().collect();
                    format!(
                        "{} {}",
                        fields.get(5).copied().unwrap_or_default(),
                        fields.last().copied().unwrap_or_default()
                    )
                })
                .ok_or_else(|| std::io::Error::other("no /tmp mount"))
        }),
    );
    report(
        "write_data_volume",
        std::fs::write("/data/probe-file", b"probe").map(|()| "wrote /data/probe-file".to_owned()),
    );
    report(
        "list_secrets",
        std::fs::read_dir("/run/secrets").map(|d| {
            let mut names: Vec<String> = walk(d);
            names.sort();
            names.join(",")
        }),
    );
    report(
        "docker_socket",
        std::fs::metadata("/var/run/docker.sock").map(|_| "present".to_owned()),
    );
    report(
        "read_host_proc_1_environ",
        std::fs::read("/proc/1/environ").map(|b| format!("{} bytes", b.len())),
    );
}

fn walk(dir: std::fs::ReadDir) -> Vec<String> {
    let mut out = Vec::new();
    for entry in dir.flatten() {
        let path = entry.path();
        if path.is_dir() {
            if let Ok(d) = std::fs::read_dir(&path) {
                out.extend(walk(d));
            }
        } else {
            out.push(path.display().to_string());
        }
    }
    out
}

/// Syscalls an agent never needs: each must fail (seccomp EPERM, or missing capabilities).
fn syscalls() {
    use nix::sched::{CloneFlags, setns, unshare};
    report(
        "unshare_user",
        unshare(CloneFlags::CLONE_NEWUSER)
            .map(|()| "new user namespace".to_owned())
            .map_err(errno),
    );
    report(
        "unshare_mount",
        unshare(CloneFlags::CLONE_NEWNS)
            .map(|()| "new mount namespace".to_owned())
            .map_err(errno),
    );
    report(
        "mount_tmpfs",
        nix::mount::mount(
            Some("tmpfs"),
            "/tmp",
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )
        .map(|()| "mounted".to_owned())
        .map_err(errno),
    );
    report(
        "keyctl",
        linux_keyutils::KeyRing::from_special_id(linux_keyutils::KeyRingIdentifier::Session, true)
            .map(|_| "session keyring".to_owned())
            .map_err(|e| match e {
                linux_keyutils::KeyError::PermissionDenied => std::io::Error::from_raw_os_error(1),
                linux_keyutils::KeyError::AccessDenied => std::io::Error::from_raw_os_error(13),
                linux_keyutils::KeyError::Unknown(n) => std::io::Error::from_raw_os_error(n),
                other => std::io::Error::other(format!("{other:?}")),
            }),
    );
    report(
        "io_uring_setup",
        io_uring::IoUring::new(8).map(|_| "ring created".to_owned()),
    );
    report(
        "ptrace_attach_pid1",
        nix::sys::ptrace::attach(nix::unistd::Pid::from_raw(1))
            .map(|()| "attached".to_owned())
            .map_err(errno),
    );
    report(
        "raw_socket",
        nix::sys::socket::socket(
            nix::sys::socket::AddressFamily::Inet,
            nix::sys::socket::SockType::Raw,
            nix::sys::socket::SockFlag::empty(),
            nix::sys::socket::SockProtocol::Icmp,
        )
        .map(|_| "raw socket".to_owned())
        .map_err(errno),
    );
    let _ = std::fs::write("/tmp/chown-me", b"x");
    report(
        "chown_to_root",
        std::os::unix::fs::chown("/tmp/chown-me", Some(0), Some(0)).map(|()| "chowned".to_owned()),
    );
    report(
        "setuid_root",
        nix::unistd::setuid(nix::unistd::Uid::from_raw(0))
            .map(|()| "uid 0".to_owned())
            .map_err(errno),
    );
    report(
        "setns_net_pid1",
        std::fs::File::open("/proc/1/ns/net").and_then(|f| {
            setns(f, CloneFlags::CLONE_NEWNET)
                .map(|()| "joined".to_owned())
                .map_err(errno)
        }),
    );
}

/// A setuid-root binary planted in the probe image must not raise privileges.
fn setuid() {
    let path = "/probe-suid";
    report(
        "setuid_binary_present",
        std::fs::metadata(path).map(|m| {
            use std::os::unix::fs::{MetadataExt, PermissionsExt};
            format!("uid {} mode {:o}", m.uid(), m.permissions().mode())
        }),
    );
    report(
        "run_setuid_binary",
        std::process::Command::new(path)
            .arg("whoami")
            .output()
            .and_then(|o| {
                let text = String::from_utf8_lossy(&o.stdout).into_owned();
                let v: serde_json::Value = text
                    .lines()
                    .next()
                    .and_then(|l| serde_json::from_str(l).ok())
                    .ok_or_else(|| std::io::Error::other(format!("no output: {text}")))?;
                let euid = v
                    .get("euid")
                    .and_then(serde_json::Value::as_u64)
                    .unwrap_or(u64::MAX);
                if euid == 0 {
                    Ok("euid 0: privileges gained".to_owned())
                } else {
                    Err(std::io::Error::other(format!("euid stayed {euid}")))
                }
            }),
    );
    let _ = std::fs::write("/tmp/suid-me", b"x");
    report("chmod_setuid_in_tmp", {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions("/tmp/suid-me", std::fs::Permissions::from_mode(0o4755))
            .and_then(|()| std::fs::metadata("/tmp/suid-me"))
            .map(|m| format!("mode {:o}", m.permissions().mode()))
    });
}

fn connect(addr: SocketAddr) -> std::io::Result<String> {
    TcpStream::connect_timeout(&addr, Duration::from_secs(3))
        .map(|_| format!("connected to {addr}"))
}

/// Routes: only NATS is reachable; no internet, no DNS for outside names, no other agents.
fn net(args: &[String]) {
    report(
        "tcp_internet_1_1_1_1",
        connect(SocketAddr::from(([1, 1, 1, 1], 443))),
    );
    report(
        "tcp_internet_8_8_8_8",
        connect(SocketAddr::from(([8, 8, 8, 8], 53))),
    );
    report(
        "udp_dns_8_8_8_8",
        UdpSocket::bind("0.0.0.0:0").and_then(|s| {
            s.send_to(b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x07example\x03com\x00\x00\x01\x00\x01", "8.8.8.8:53")?;
            s.set_read_timeout(Some(Duration::from_secs(2)))?;
            let mut buf = [0u8; 512];
            s.recv(&mut buf).map(|n| format!("{n} byte answer"))
        }),
    );
    report(
        "resolve_example_com",
        ("example.com", 443)
            .to_socket_addrs()
            .map(|a| format!("{:?}", a.collect::<Vec<_>>())),
    );
    for name in args_all(args, "--resolve") {
        report(
            &format!("resolve_{name}"),
            (name.as_str(), 80)
                .to_socket_addrs()
                .map(|a| format!("{:?}", a.collect::<Vec<_>>())),
        );
    }
    for target in args_all(args, "--connect") {
        let result = target
            .to_socket_addrs()
            .and_then(|mut a| a.next().ok_or_else(|| std::io::Error::other("no address")))
            .and_then(connect);
        report(&format!("tcp_{target}"), result);
    }
}

/// Through the egress proxy: only the allowlisted destination opens.
fn egress(args: &[String]) {
    let Some(proxy) = arg(args, "--proxy") else {
        report("egress_args", Err(std::io::Error::other("--proxy missing")));
        return;
    };
    for target in args_all(args, "--target") {
        let result = (|| {
            let addr = proxy
                .to_socket_addrs()?
                .next()
                .ok_or_else(|| std::io::Error::other("proxy has no address"))?;
            let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(3))?;
            s.set_read_timeout(Some(Duration::from_secs(10)))?;
            write!(s, "CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n")?;
            let mut buf = [0u8; 512];
            let n = s.read(&mut buf)?;
            let head = String::from_utf8_lossy(buf.get(..n).unwrap_or_default()).into_owned();
            let status = head.lines().next().unwrap_or_default().to_owned();
            if status.contains(" 200 ") {
                Ok(status)
            } else {
                Err(std::io::Error::other(status))
            }
        })();
        report(&format!("connect_via_proxy_{target}"), result);
    }
}

/// NATS from inside, with this agent's own credentials: only its own subjects.
async fn nats(args: &[String]) {
    use futures::StreamExt as _;
    let (Some(url), Some(dir), Some(me), Some(victim)) = (
        arg(args, "--url"),
        arg(args, "--identity-dir"),
        arg(args, "--name"),
        arg(args, "--victim"),
    ) else {
        report(
            "nats_args",
            Err(std::io::Error::other(
                "--url --identity-dir --name --victim",
            )),
        );
        return;
    };
    let Ok(principal) = protocol::Principal::new(me.as_str()) else {
        report("nats_args", Err(std::io::Error::other("bad --name")));
        return;
    };
    let layout = provision::Layout::new(dir);
    let (errors_tx, mut errors_rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let options = match provision::client::options(&layout, &principal) {
        Ok(o) => o.event_callback(move |event| {
            let tx = errors_tx.clone();
            async move {
                if let async_nats::Event::ServerError(e) = event {
                    let _ = tx.send(e.to_string());
                }
            }
        }),
        Err(e) => {
            report("nats_connect", Err(std::io::Error::other(e.to_string())));
            return;
        }
    };
    let client = match options.connect(url.as_str()).await {
        Ok(c) => {
            report("nats_connect", Ok(format!("connected as {me}")));
            c
        }
        Err(e) => {
            report("nats_connect", Err(std::io::Error::other(e.to_string())));
            return;
        }
    };
    // Each forbidden operation must draw a permissions violation from the server.
    let mut expect_violation = async |check: &str, fut: futures::future::BoxFuture<'_, ()>| {
        fut.await;
        let _ = client.flush().await;
        let got = tokio::time::timeout(Duration::from_secs(2), async {
            while let Some(e) = errors_rx.recv().await {
                if e.to_lowercase().contains("permissions violation") {
                    return Some(e);
                }
            }
            None
        })
        .await
        .ok()
        .flatten();
        match got {
            Some(e) => report(check, Err(std::io::Error::other(e))),
            None => report(check, Ok("no violation reported".to_owned())),
        }
    };
    for subject in [
        format!("cmd.{victim}"),
        format!("audit.{victim}"),
        format!("status.{victim}"),
        "audit.orchestrator".to_owned(),
        "_INBOX_orchestrator.stolen".to_owned(),
        "chat.out.telegram".to_owned(),
        "$JS.API.STREAM.PURGE.AUDIT".to_owned(),
        "$JS.API.STREAM.DELETE.AUDIT".to_owned(),
        "$JS.API.CONSUMER.MSG.NEXT.AUDIT.audit-writer".to_owned(),
    ] {
        let c = client.clone();
        let s = subject.clone();
        expect_violation(
            &format!("publish_{subject}"),
            Box::pin(async move {
                let _ = c.publish(s, bytes::Bytes::from_static(b"probe")).await;
            }),
        )
        .await;
    }
    for subject in [
        format!("cmd.{victim}"),
        "cmd.>".to_owned(),
        ">".to_owned(),
        "_INBOX_orchestrator.>".to_owned(),
        "audit.>".to_owned(),
    ] {
        let c = client.clone();
        let s = subject.clone();
        expect_violation(
            &format!("subscribe_{subject}"),
            Box::pin(async move {
                if let Ok(mut sub) = c.subscribe(s).await {
                    let _ = tokio::time::timeout(Duration::from_millis(300), sub.next()).await;
                }
            }),
        )
        .await;
    }
    // Positive control: its own audit subject is allowed.
    let own = format!("status.{me}");
    let c = client.clone();
    let before = errors_rx.len();
    let _ = c
        .publish(own.clone(), bytes::Bytes::from_static(b"{}"))
        .await;
    let _ = c.flush().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    report(
        &format!("publish_{own}"),
        if errors_rx.len() == before {
            Ok("published".to_owned())
        } else {
            Err(std::io::Error::other("violation on own subject"))
        },
    );
}

/// Spawns threads until the pids limit stops it; reports how many it got.
fn threads() {
    let mut handles = Vec::new();
    let error = loop {
        match std::thread::Builder::new()
            .stack_size(64 * 1024)
            .spawn(|| std::thread::sleep(Duration::from_secs(20)))
        {
            Ok(h) => handles.push(h),
            Err(e) => break e,
        }
        if handles.len() >= 10_000 {
            break std::io::Error::other("10000 threads without a limit");
        }
    };
    let n = handles.len();
    report(
        "thread_bomb",
        Err(std::io::Error::new(
            error.kind(),
            format!("stopped after {n} threads: {error}"),
        )),
    );
    println!(
        "{}",
        json!({"check": "thread_count", "outcome": "allowed", "errno": 0, "detail": n})
    );
    let _ = std::io::stdout().flush();
    drop(handles);
}

/// Allocates and touches memory until the memory limit kills the container.
fn memhog() {
    let mut blocks: Vec<Vec<u8>> = Vec::new();
    loop {
        let mut block = vec![0u8; 1 << 20];
        for i in (0..block.len()).step_by(4096) {
            if let Some(b) = block.get_mut(i) {
                *b = 1;
            }
        }
        blocks.push(block);
        if blocks.len().is_multiple_of(64) {
            println!(
                "{}",
                json!({"check": "memhog_mib", "outcome": "allowed", "errno": 0, "detail": blocks.len()})
            );
            let _ = std::io::stdout().flush();
        }
        if blocks.len() >= 16 * 1024 {
            report("memhog", Ok("16 GiB allocated without a limit".to_owned()));
            return;
        }
    }
}
