//! Self-confinement for an agent that runs as a host process (the sandbox's process backend).
//!
//! [`apply`] restricts the calling process, irreversibly, before it connects to anything:
//! - `no_new_privs`, so no exec can gain privileges;
//! - Landlock (where the kernel supports it): the filesystem is reduced to the plan's read-only
//!   and read-write paths plus the system files a dynamically linked binary needs to run, and
//!   (Landlock ABI 4 and later) TCP connections to the plan's ports only;
//! - a seccomp allowlist: the same syscall list as the container profile
//!   (`sandbox/seccomp/agent.json`), everything else fails with `EPERM`.
//!
//! It reports what it could and could not enforce, so an agent's heartbeat always says how
//! weakly it is isolated. It never fails open silently: a measure that could not be applied is
//! listed in [`ConfineReport::missing`].
//!
//! What it does not do: it cannot give a host process its own network namespace, a read-only
//! root filesystem or cgroup limits (those need a container); it never starts processes.
#![forbid(unsafe_code)]

use protocol::deploy::ConfinePlan;

/// What was enforced and what could not be.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConfineReport {
    /// Measures now in force.
    pub measures: Vec<String>,
    /// Measures that could not be applied on this host.
    pub missing: Vec<String>,
}

/// Why confinement failed outright (the caller must not continue).
#[derive(Debug, thiserror::Error)]
pub enum ConfineError {
    /// The Landlock ruleset could not be built or applied.
    #[error("landlock: {0}")]
    Landlock(String),
    /// The seccomp filter could not be built or applied.
    #[error("seccomp: {0}")]
    Seccomp(String),
}

impl ConfineError {
    /// Stable code.
    pub fn code(&self) -> &'static str {
        match self {
            ConfineError::Landlock(_) => "confine_landlock",
            ConfineError::Seccomp(_) => "confine_seccomp",
        }
    }
}

/// System paths a dynamically linked Linux binary reads to start and resolve names.
pub const SYSTEM_READ_PATHS: &[&str] = &[
    "/lib",
    "/lib64",
    "/usr/lib",
    "/usr/lib64",
    "/etc/ld.so.cache",
    "/etc/hosts",
    "/etc/resolv.conf",
    "/etc/nsswitch.conf",
    "/etc/gai.conf",
    "/proc/self",
    "/sys/fs/cgroup",
    "/sys/devices/system/cpu",
    "/dev/null",
    "/dev/urandom",
];

/// One allowed syscall: unconditional, or allowed when any of its argument conditions holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowRule {
    /// Syscall name.
    pub name: String,
    /// Alternatives (OR); each a list of conditions (AND). Empty: allowed unconditionally.
    pub alternatives: Vec<Vec<ArgCondition>>,
}

/// A condition on one syscall argument, as in the Docker profile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArgCondition {
    /// Argument index (0-based).
    pub index: u8,
    /// `eq`, `ne`, `lt`, `le`, `gt`, `ge` compare with `value`; `masked_eq` checks
    /// `arg & value == value_two`.
    pub op: String,
    /// First operand.
    pub value: u64,
    /// Second operand (masked_eq only).
    pub value_two: u64,
}

/// The syscall allowlist shared with the container profile (`sandbox/seccomp/agent.json`),
/// argument conditions included, so a process agent is held to the same rules.
pub fn allowed_syscalls() -> Result<Vec<AllowRule>, ConfineError> {
    let bad = |why: &str| ConfineError::Seccomp(format!("agent profile: {why}"));
    let profile: serde_json::Value = serde_json::from_str(AGENT_PROFILE)
        .map_err(|e| ConfineError::Seccomp(format!("agent profile: {e}")))?;
    let mut rules: std::collections::BTreeMap<String, AllowRule> = Default::default();
    for rule in profile
        .get("syscalls")
        .and_then(|s| s.as_array())
        .ok_or_else(|| bad("no syscalls list"))?
    {
        if rule.get("action").and_then(|a| a.as_str()) != Some("SCMP_ACT_ALLOW") {
            continue;
        }
        let mut conditions = Vec::new();
        for a in rule
            .get("args")
            .and_then(|a| a.as_array())
            .into_iter()
            .flatten()
        {
            let num = |k: &str| a.get(k).and_then(serde_json::Value::as_u64);
            let op = match a.get("op").and_then(|o| o.as_str()) {
                Some("SCMP_CMP_EQ") => "eq",
                Some("SCMP_CMP_NE") => "ne",
                Some("SCMP_CMP_LT") => "lt",
                Some("SCMP_CMP_LE") => "le",
                Some("SCMP_CMP_GT") => "gt",
                Some("SCMP_CMP_GE") => "ge",
                Some("SCMP_CMP_MASKED_EQ") => "masked_eq",
                _ => return Err(bad("unknown argument operator")),
            };
            conditions.push(ArgCondition {
                index: num("index")
                    .and_then(|i| u8::try_from(i).ok())
                    .filter(|i| *i < 6)
                    .ok_or_else(|| bad("argument index"))?,
                op: op.to_owned(),
                value: num("value").ok_or_else(|| bad("argument value"))?,
                value_two: num("valueTwo").unwrap_or(0),
            });
        }
        for n in rule
            .get("names")
            .and_then(|n| n.as_array())
            .into_iter()
            .flatten()
            .filter_map(|n| n.as_str())
        {
            let entry = rules.entry(n.to_owned()).or_insert_with(|| AllowRule {
                name: n.to_owned(),
                alternatives: Vec::new(),
            });
            if conditions.is_empty() {
                // Unconditional wins over any conditional alternative.
                entry.alternatives = vec![Vec::new()];
            } else if entry.alternatives != vec![Vec::new()] {
                entry.alternatives.push(conditions.clone());
            }
        }
    }
    Ok(rules.into_values().collect())
}

/// Syscalls the profile answers with a specific errno instead of allowing them (e.g. `clone3`
/// with ENOSYS, so the C library falls back to `clone`, whose flags the allowlist checks).
pub fn errno_syscalls() -> Result<Vec<(String, u32)>, ConfineError> {
    let profile: serde_json::Value = serde_json::from_str(AGENT_PROFILE)
        .map_err(|e| ConfineError::Seccomp(format!("agent profile: {e}")))?;
    let mut out = Vec::new();
    for rule in profile
        .get("syscalls")
        .and_then(|s| s.as_array())
        .into_iter()
        .flatten()
    {
        if rule.get("action").and_then(|a| a.as_str()) != Some("SCMP_ACT_ERRNO") {
            continue;
        }
        let errno = rule
            .get("errnoRet")
            .and_then(serde_json::Value::as_u64)
            .and_then(|e| u32::try_from(e).ok())
            .ok_or_else(|| {
                ConfineError::Seccomp("agent profile: errno rule without errnoRet".to_owned())
            })?;
        for n in rule
            .get("names")
            .and_then(|n| n.as_array())
            .into_iter()
            .flatten()
            .filter_map(|n| n.as_str())
        {
            out.push((n.to_owned(), errno));
        }
    }
    Ok(out)
}

/// The container profile, which this crate shares rather than copies.
const AGENT_PROFILE: &str = include_str!("../../seccomp/agent.json");

/// Applies the plan to the calling process. Call it once, early, before threads exist.
#[cfg(target_os = "linux")]
pub fn apply(plan: &ConfinePlan) -> Result<ConfineReport, ConfineError> {
    let mut report = ConfineReport::default();
    linux::landlock(plan, &mut report)?;
    if plan.seccomp {
        linux::seccomp(&mut report)?;
    } else {
        report
            .missing
            .push("seccomp allowlist: not requested".to_owned());
    }
    Ok(report)
}

/// Off Linux nothing can be enforced; everything is reported missing.
#[cfg(not(target_os = "linux"))]
pub fn apply(plan: &ConfinePlan) -> Result<ConfineReport, ConfineError> {
    let _ = plan;
    Ok(ConfineReport {
        measures: Vec::new(),
        missing: vec![
            "no_new_privs: not available on this OS".to_owned(),
            "landlock: not available on this OS".to_owned(),
            "seccomp allowlist: not available on this OS".to_owned(),
        ],
    })
}

#[cfg(target_os = "linux")]
mod linux {
    use std::path::Path;

    use landlock::{
        ABI, Access, AccessFs, AccessNet, NetPort, PathBeneath, PathFd, Ruleset, RulesetAttr,
        RulesetCreatedAttr, RulesetStatus,
    };
    use seccompiler::{BpfProgram, TargetArch};

    use super::{AllowRule, ConfineError, ConfinePlan, ConfineReport, SYSTEM_READ_PATHS};

    /// The newest Landlock ABI this code asks for; older kernels get what they support.
    const ABI_WANTED: ABI = ABI::V5;

    fn ll(e: impl std::fmt::Display) -> ConfineError {
        ConfineError::Landlock(e.to_string())
    }

    pub(super) fn landlock(
        plan: &ConfinePlan,
        report: &mut ConfineReport,
    ) -> Result<(), ConfineError> {
        let read = AccessFs::from_read(ABI_WANTED);
        let all = AccessFs::from_all(ABI_WANTED);
        let mut created = Ruleset::default()
            .handle_access(all)
            .map_err(ll)?
            .handle_access(AccessNet::ConnectTcp | AccessNet::BindTcp)
            .map_err(ll)?
            .create()
            .map_err(ll)?;
        let mut skipped = Vec::new();
        let mut add = |created: landlock::RulesetCreated,
                       path: &str,
                       access: landlock::BitFlags<AccessFs>|
         -> Result<landlock::RulesetCreated, ConfineError> {
            if !Path::new(path).exists() {
                skipped.push(path.to_owned());
                return Ok(created);
            }
            let fd = PathFd::new(path).map_err(ll)?;
            // Files get only the file subset of the access rights.
            let access = if Path::new(path).is_dir() {
                access
            } else {
                access & AccessFs::from_file(ABI_WANTED)
            };
            created.add_rule(PathBeneath::new(fd, access)).map_err(ll)
        };
        for p in SYSTEM_READ_PATHS {
            created = add(created, p, read)?;
        }
        for p in &plan.read_only {
            created = add(created, p, read)?;
        }
        for p in &plan.read_write {
            created = add(created, p, all)?;
        }
        for port in &plan.connect_tcp_ports {
            created = created
                .add_rule(NetPort::new(*port, AccessNet::ConnectTcp))
                .map_err(ll)?;
        }
        let status = created.restrict_self().map_err(ll)?;
        if status.no_new_privs {
            report.measures.push("no_new_privs".to_owned());
        } else {
            report.missing.push("no_new_privs: not set".to_owned());
        }
        match status.ruleset {
            RulesetStatus::FullyEnforced => report.measures.push(format!(
                "landlock: filesystem limited to {} paths, tcp connect to ports {:?}",
                SYSTEM_READ_PATHS.len() + plan.read_only.len() + plan.read_write.len()
                    - skipped.len(),
                plan.connect_tcp_ports
            )),
            RulesetStatus::PartiallyEnforced => {
                report
                    .measures
                    .push("landlock: partially enforced (older kernel ABI)".to_owned());
                report.missing.push(
                    "landlock: some rights (e.g. tcp port rules) not supported by this kernel"
                        .to_owned(),
                );
            }
            RulesetStatus::NotEnforced => report
                .missing
                .push("landlock: not supported or not enabled in this kernel".to_owned()),
        }
        Ok(())
    }

    pub(super) fn seccomp(report: &mut ConfineReport) -> Result<(), ConfineError> {
        let arch = if cfg!(target_arch = "x86_64") {
            TargetArch::x86_64
        } else if cfg!(target_arch = "aarch64") {
            TargetArch::aarch64
        } else {
            report
                .missing
                .push("seccomp allowlist: unsupported architecture".to_owned());
            return Ok(());
        };
        let mut rules = super::allowed_syscalls()?;
        let errnos = super::errno_syscalls()?;
        // The allowlist lets these through; the second filter below answers them with their
        // errno (seccomp stacks filters and the most restrictive answer wins).
        for (name, _) in &errnos {
            if !rules.iter().any(|r| &r.name == name) {
                rules.push(AllowRule {
                    name: name.clone(),
                    alternatives: vec![Vec::new()],
                });
            }
        }
        // seccompiler's own name table decides which names exist on this architecture.
        let (known, unknown): (Vec<&AllowRule>, Vec<&AllowRule>) = rules.iter().partition(|r| {
            compile(
                &[&AllowRule {
                    name: r.name.clone(),
                    alternatives: vec![Vec::new()],
                }],
                arch,
            )
            .is_ok()
        });
        let program = compile(&known, arch)?;
        let errno_program = compile_errnos(&errnos, arch)?;
        // The errno filter first: installing a filter needs prctl, which the allowlist forbids.
        if let Some(errno_program) = errno_program {
            seccompiler::apply_filter_all_threads(&errno_program)
                .map_err(|e| ConfineError::Seccomp(e.to_string()))?;
        }
        seccompiler::apply_filter_all_threads(&program)
            .map_err(|e| ConfineError::Seccomp(e.to_string()))?;
        report.measures.push(format!(
            "seccomp allowlist: {} syscalls ({} with argument rules), EPERM otherwise",
            known.len(),
            known
                .iter()
                .filter(|r| r.alternatives != vec![Vec::new()])
                .count()
        ));
        if !unknown.is_empty() {
            report.missing.push(format!(
                "seccomp: {} listed syscalls unknown on this architecture",
                unknown.len()
            ));
        }
        Ok(())
    }

    /// A filter answering each listed syscall with its errno and allowing everything else (it
    /// is stacked on the allowlist, which still refuses everything unlisted).
    fn compile_errnos(
        errnos: &[(String, u32)],
        arch: TargetArch,
    ) -> Result<Option<BpfProgram>, ConfineError> {
        let mut map = serde_json::Map::new();
        // seccompiler filters have one match action: one filter per errno value.
        for (name, errno) in errnos {
            let key = format!("errno{errno}");
            let entry = map.entry(key).or_insert_with(|| {
                serde_json::json!({
                    "mismatch_action": "allow",
                    "match_action": { "errno": errno },
                    "filter": [],
                })
            });
            if let Some(list) = entry.get_mut("filter").and_then(|f| f.as_array_mut()) {
                list.push(serde_json::json!({ "syscall": name }));
            }
        }
        if map.is_empty() {
            return Ok(None);
        }
        if map.len() > 1 {
            return Err(ConfineError::Seccomp(
                "the profile uses more than one errno value; extend compile_errnos".to_owned(),
            ));
        }
        let text = serde_json::Value::Object(map).to_string();
        let compiled = seccompiler::compile_from_json(text.as_bytes(), arch)
            .map_err(|e| ConfineError::Seccomp(e.to_string()))?;
        Ok(compiled.into_values().next())
    }

    /// An allowlist filter: the listed syscalls pass, anything else fails with EPERM.
    fn compile(allowed: &[&AllowRule], arch: TargetArch) -> Result<BpfProgram, ConfineError> {
        let mut rules: Vec<serde_json::Value> = Vec::new();
        for rule in allowed {
            for alternative in &rule.alternatives {
                if alternative.is_empty() {
                    rules.push(serde_json::json!({ "syscall": rule.name }));
                    continue;
                }
                let args: Vec<serde_json::Value> = alternative
                    .iter()
                    .map(|c| {
                        let op = if c.op == "masked_eq" {
                            serde_json::json!({ "masked_eq": c.value })
                        } else {
                            serde_json::json!(c.op)
                        };
                        let val = if c.op == "masked_eq" { c.value_two } else { c.value };
                        serde_json::json!({ "index": c.index, "type": "qword", "op": op, "val": val })
                    })
                    .collect();
                rules.push(serde_json::json!({ "syscall": rule.name, "args": args }));
            }
        }
        let policy = serde_json::json!({
            "agent": {
                "mismatch_action": { "errno": 1 },
                "match_action": "allow",
                "filter": rules,
            }
        });
        let text = policy.to_string();
        let mut map = seccompiler::compile_from_json(text.as_bytes(), arch)
            .map_err(|e| ConfineError::Seccomp(e.to_string()))?;
        map.remove("agent")
            .ok_or_else(|| ConfineError::Seccomp("filter missing after compilation".to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_container_profile_translates_with_its_argument_rules() {
        let rules = allowed_syscalls().unwrap();
        let get = |n: &str| rules.iter().find(|r| r.name == n);
        assert_eq!(get("read").unwrap().alternatives, vec![Vec::new()]);
        let socket = get("socket").unwrap();
        assert!(
            socket.alternatives.len() >= 2
                && socket
                    .alternatives
                    .iter()
                    .all(|a| a.len() == 1 && a[0].index == 0 && a[0].op == "eq"),
            "{socket:?}"
        );
        let mprotect = get("mprotect").unwrap();
        assert!(
            mprotect
                .alternatives
                .iter()
                .all(|a| a.iter().any(|c| c.op == "masked_eq")),
            "{mprotect:?}"
        );
        for forbidden in [
            "keyctl",
            "unshare",
            "mount",
            "ptrace",
            "bpf",
            "setns",
            "io_uring_setup",
        ] {
            assert!(get(forbidden).is_none(), "{forbidden} must not be allowed");
        }
    }
}
