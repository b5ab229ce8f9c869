//! Confinement, observed from a confined process.
//!
//! This test binary has no libtest harness: run by cargo it is the parent, which prepares
//! directories and listeners and runs itself again as a child with `CONFINE_CHILD=1`. The child
//! (single-threaded, as an agent is when it confines itself) applies a plan, then tries things
//! the plan allows and things it forbids, and prints one line per check. The parent asserts
//! every outcome.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stdout,
    clippy::print_stderr
)]

use std::io::Write as _;
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Command, ExitCode};

use protocol::deploy::ConfinePlan;

fn main() -> ExitCode {
    if std::env::var_os("CONFINE_CHILD").is_some() {
        child();
        return ExitCode::SUCCESS;
    }
    parent()
}

fn env_path(k: &str) -> PathBuf {
    PathBuf::from(std::env::var_os(k).unwrap())
}

fn child() {
    let ro = env_path("RO_DIR");
    let rw = env_path("RW_DIR");
    let outside = env_path("OUTSIDE_FILE");
    let allowed: u16 = std::env::var("ALLOWED_PORT").unwrap().parse().unwrap();
    let other: u16 = std::env::var("OTHER_PORT").unwrap().parse().unwrap();
    let report = confine::apply(&ConfinePlan {
        read_only: vec![ro.display().to_string()],
        read_write: vec![rw.display().to_string()],
        connect_tcp_ports: vec![allowed],
        seccomp: true,
    })
    .unwrap();
    let mut out = std::io::stdout().lock();
    for m in &report.measures {
        writeln!(out, "measure {m}").unwrap();
    }
    for m in &report.missing {
        writeln!(out, "missing {m}").unwrap();
    }
    let mut check = |name: &str, r: std::io::Result<()>| {
        let line = match r {
            Ok(()) => format!("{name}=allowed"),
            Err(e) => format!("{name}=refused {}", e.raw_os_error().unwrap_or(0)),
        };
        writeln!(out, "{line}").unwrap();
    };
    check("read_ro", std::fs::read(ro.join("config")).map(|_| ()));
    check("write_ro", std::fs::write(ro.join("new"), b"x"));
    check("write_rw", std::fs::write(rw.join("new"), b"x"));
    check("read_outside", std::fs::read(&outside).map(|_| ()));
    check("read_etc_passwd", std::fs::read("/etc/passwd").map(|_| ()));
    check(
        "connect_allowed_port",
        TcpStream::connect(("127.0.0.1", allowed)).map(|_| ()),
    );
    check(
        "connect_other_port",
        TcpStream::connect(("127.0.0.1", other)).map(|_| ()),
    );
    // Threads still start: clone3 answers ENOSYS (as in the container) and glibc falls back to
    // clone, whose flags the allowlist checks.
    check(
        "spawn_thread",
        std::thread::spawn(|| 7)
            .join()
            .map(|_| ())
            .map_err(|_panic| std::io::Error::other("thread panicked")),
    );
    check(
        "unshare_user_namespace",
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWUSER)
            .map_err(|e| std::io::Error::from_raw_os_error(e as i32)),
    );
}

fn parent() -> ExitCode {
    let dir = tempfile::tempdir().unwrap();
    let ro = dir.path().join("ro");
    let rw = dir.path().join("rw");
    std::fs::create_dir(&ro).unwrap();
    std::fs::create_dir(&rw).unwrap();
    std::fs::write(ro.join("config"), b"{}").unwrap();
    let outside = dir.path().join("outside-secret");
    std::fs::write(&outside, b"secret").unwrap();
    let allowed = TcpListener::bind("127.0.0.1:0").unwrap();
    let other = TcpListener::bind("127.0.0.1:0").unwrap();
    let out = Command::new(std::env::current_exe().unwrap())
        .env_clear()
        .env("CONFINE_CHILD", "1")
        .env("RO_DIR", &ro)
        .env("RW_DIR", &rw)
        .env("OUTSIDE_FILE", &outside)
        .env(
            "ALLOWED_PORT",
            allowed.local_addr().unwrap().port().to_string(),
        )
        .env("OTHER_PORT", other.local_addr().unwrap().port().to_string())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "child failed");
    let outcome = |name: &str| {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name}=")))
            .unwrap_or_else(|| panic!("no outcome for {name}"))
            .to_owned()
    };
    const EACCES: &str = "13";
    const EPERM: &str = "1";
    assert_eq!(outcome("read_ro"), "allowed");
    assert_eq!(outcome("write_rw"), "allowed");
    assert_eq!(outcome("connect_allowed_port"), "allowed");
    assert_eq!(outcome("spawn_thread"), "allowed");
    assert!(
        outcome("write_ro").ends_with(EACCES),
        "{}",
        outcome("write_ro")
    );
    assert!(outcome("read_outside").ends_with(EACCES));
    assert!(outcome("read_etc_passwd").ends_with(EACCES));
    assert!(outcome("connect_other_port").ends_with(EACCES));
    assert!(
        outcome("unshare_user_namespace").ends_with(EPERM),
        "{}",
        outcome("unshare_user_namespace")
    );
    assert!(stdout.contains("measure no_new_privs"));
    assert!(stdout.contains("measure seccomp allowlist"));
    assert!(stdout.contains("measure landlock: filesystem limited"));
    assert!(!rw.join("new").exists() || std::fs::read(rw.join("new")).unwrap() == b"x");
    assert!(
        !ro.join("new").exists(),
        "a read-only directory was written"
    );
    println!("confined child: every outcome as expected");
    ExitCode::SUCCESS
}
