//! Seccomp profiles: deny by default (`EPERM`), allow an explicit list of system calls.
//!
//! Each profile is rendered from an approved list checked into the repository
//! (`sandbox/seccomp/<profile>.syscalls`, one name per line with the reason in comments) into the
//! Docker profile JSON next to it (`<profile>.json`), which is what containers get. A test keeps
//! the JSON equal to the rendering of its list, so a new system call is always a visible diff of
//! a reviewed list. The lists were derived from traces (see `sandbox/seccomp/README.md`).
//!
//! Two rules are added to every profile by the renderer, not by the lists: `clone` is allowed
//! only without namespace flags (threads and processes, never new namespaces), and `clone3`
//! fails with `ENOSYS` (its flags live in memory a filter cannot read), so the C library falls
//! back to `clone`.

use serde::Serialize;

/// A profile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    /// Agents (Rust: tokio, rustls, async-nats, rusqlite, reqwest, glibc).
    Agent,
    /// The NATS server (static Go binary).
    Nats,
    /// The egress proxy (Rust, same stack as the agents).
    Egress,
}

impl Profile {
    /// Every profile.
    pub const ALL: [Profile; 3] = [Profile::Agent, Profile::Nats, Profile::Egress];

    /// Its file stem under `sandbox/seccomp/`.
    pub fn name(self) -> &'static str {
        match self {
            Profile::Agent => "agent",
            Profile::Nats => "nats",
            Profile::Egress => "egress",
        }
    }

    /// The approved list.
    pub fn approved(self) -> &'static str {
        match self {
            Profile::Agent => include_str!("../../seccomp/agent.syscalls"),
            Profile::Nats => include_str!("../../seccomp/nats.syscalls"),
            Profile::Egress => include_str!("../../seccomp/egress.syscalls"),
        }
    }

    /// The profile JSON handed to the engine (inline, as the Engine API wants it).
    pub fn json(self) -> &'static str {
        match self {
            Profile::Agent => include_str!("../../seccomp/agent.json"),
            Profile::Nats => include_str!("../../seccomp/nats.json"),
            Profile::Egress => include_str!("../../seccomp/egress.json"),
        }
    }

    /// The allowed system calls (some only with the listed arguments), by name.
    pub fn syscalls(self) -> Vec<&'static str> {
        parse_list(self.approved())
            .map(|list| list.into_iter().map(|a| a.name).collect())
            .unwrap_or_default()
    }
}

/// `EPERM`, what every call outside the list returns.
pub const EPERM: u32 = 1;
/// `ENOSYS`, what `clone3` returns.
pub const ENOSYS: u32 = 38;
/// `CLONE_NEWNS | CLONE_NEWCGROUP | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWUSER | CLONE_NEWPID |
/// CLONE_NEWNET`: `clone` is allowed only when none of these is set.
pub const CLONE_NAMESPACE_FLAGS: u64 = 0x7E02_0000;

/// Calls that no profile may ever allow: they reach kernel attack surface or escape routes no
/// agent, proxy or NATS server needs. A test checks every list against it.
pub const NEVER: &[&str] = &[
    "acct",
    "add_key",
    "bpf",
    "chroot",
    "clock_adjtime",
    "clock_settime",
    "create_module",
    "delete_module",
    "finit_module",
    "fsconfig",
    "fsmount",
    "fsopen",
    "fspick",
    "init_module",
    "io_uring_enter",
    "io_uring_register",
    "io_uring_setup",
    "ioperm",
    "iopl",
    "kcmp",
    "kexec_file_load",
    "kexec_load",
    "keyctl",
    "lookup_dcookie",
    "mount",
    "mount_setattr",
    "move_mount",
    "name_to_handle_at",
    "open_by_handle_at",
    "open_tree",
    "perf_event_open",
    "personality",
    "pivot_root",
    "process_vm_readv",
    "process_vm_writev",
    "ptrace",
    "quotactl",
    "reboot",
    "request_key",
    "setdomainname",
    "sethostname",
    "setns",
    "settimeofday",
    "swapoff",
    "swapon",
    "syslog",
    "umount2",
    "unshare",
    "userfaultfd",
    "uselib",
    "vhangup",
];

/// A condition on one argument of a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Condition {
    /// Argument `index` equals `value` (one rule per listed value).
    Equals {
        /// Argument position (0-based).
        index: u32,
        /// The value.
        value: u64,
    },
    /// `(argument index & mask) == value`.
    Masked {
        /// Argument position (0-based).
        index: u32,
        /// The mask.
        mask: u64,
        /// The value after masking.
        value: u64,
    },
}

/// One allowed call, unconditionally or under conditions (any one of them suffices).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allowed<'a> {
    /// The call.
    pub name: &'a str,
    /// Empty: always allowed.
    pub conditions: Vec<Condition>,
}

fn number(text: &str) -> Result<u64, String> {
    let parsed = match text.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => text.parse(),
    };
    parsed.map_err(|e| format!("{text:?} is not a number: {e}"))
}

fn argument(text: &str) -> Result<u32, String> {
    text.strip_prefix("arg")
        .and_then(|n| n.parse::<u32>().ok())
        .filter(|n| *n < 6)
        .ok_or_else(|| format!("{text:?} is not arg0 to arg5"))
}

/// Parses an approved list. One call per line, `#` starts a comment:
///
/// ```text
/// read                              # always allowed
/// socket arg0 in 1 2                # only when argument 0 is 1 or 2
/// mprotect arg2 & 0x4 == 0          # only when (argument 2 & 0x4) == 0
/// ```
///
/// A call may have several condition lines (any one suffices) but not also an unconditional
/// one. The result is sorted by name.
pub fn parse_list(text: &str) -> Result<Vec<Allowed<'_>>, String> {
    let mut out: Vec<Allowed<'_>> = Vec::new();
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("").trim();
        let mut words = line.split_whitespace();
        let Some(name) = words.next() else { continue };
        if !name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        {
            return Err(format!("{name:?} is not a system call name"));
        }
        let rest: Vec<&str> = words.collect();
        let conditions = match rest.as_slice() {
            [] => Vec::new(),
            [arg, "in", values @ ..] if !values.is_empty() => {
                let index = argument(arg)?;
                values
                    .iter()
                    .map(|v| number(v).map(|value| Condition::Equals { index, value }))
                    .collect::<Result<Vec<_>, _>>()?
            }
            [arg, "&", mask, "==", value] => vec![Condition::Masked {
                index: argument(arg)?,
                mask: number(mask)?,
                value: number(value)?,
            }],
            _ => return Err(format!("cannot read {line:?}")),
        };
        match out.iter_mut().find(|a| a.name == name) {
            Some(existing) if existing.conditions.is_empty() || conditions.is_empty() => {
                return Err(format!("{name} is listed twice"));
            }
            Some(existing) => existing.conditions.extend(conditions),
            None => out.push(Allowed { name, conditions }),
        }
    }
    out.sort_by(|a, b| a.name.cmp(b.name));
    Ok(out)
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct DockerProfile<'a> {
    default_action: &'static str,
    default_errno_ret: u32,
    arch_map: Vec<ArchMap>,
    syscalls: Vec<Rule<'a>>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ArchMap {
    architecture: &'static str,
    sub_architectures: Vec<&'static str>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Rule<'a> {
    names: Vec<&'a str>,
    action: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    errno_ret: Option<u32>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    args: Vec<Arg>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Arg {
    index: u32,
    value: u64,
    value_two: u64,
    op: &'static str,
}

fn allow_if<'a>(name: &'a str, arg: Arg) -> Rule<'a> {
    Rule {
        names: vec![name],
        action: "SCMP_ACT_ALLOW",
        errno_ret: None,
        args: vec![arg],
    }
}

/// Renders a Docker seccomp profile from an approved list. Pure.
///
/// `clone` and `clone3` may not appear in the list: the renderer adds their rules itself.
pub fn render(list: &str) -> Result<String, String> {
    let allowed = parse_list(list)?;
    for a in &allowed {
        if a.name == "clone" || a.name == "clone3" {
            return Err(format!(
                "{} is added by the renderer; remove it from the list",
                a.name
            ));
        }
        if NEVER.contains(&a.name) {
            return Err(format!("{} may never be allowed", a.name));
        }
    }
    let mut syscalls = vec![Rule {
        names: allowed
            .iter()
            .filter(|a| a.conditions.is_empty())
            .map(|a| a.name)
            .collect(),
        action: "SCMP_ACT_ALLOW",
        errno_ret: None,
        args: Vec::new(),
    }];
    for a in allowed.iter().filter(|a| !a.conditions.is_empty()) {
        for c in &a.conditions {
            syscalls.push(allow_if(
                a.name,
                match *c {
                    Condition::Equals { index, value } => Arg {
                        index,
                        value,
                        value_two: 0,
                        op: "SCMP_CMP_EQ",
                    },
                    Condition::Masked { index, mask, value } => Arg {
                        index,
                        value: mask,
                        value_two: value,
                        op: "SCMP_CMP_MASKED_EQ",
                    },
                },
            ));
        }
    }
    syscalls.push(allow_if(
        "clone",
        Arg {
            index: 0,
            value: CLONE_NAMESPACE_FLAGS,
            value_two: 0,
            op: "SCMP_CMP_MASKED_EQ",
        },
    ));
    syscalls.push(Rule {
        names: vec!["clone3"],
        action: "SCMP_ACT_ERRNO",
        errno_ret: Some(ENOSYS),
        args: Vec::new(),
    });
    let profile = DockerProfile {
        default_action: "SCMP_ACT_ERRNO",
        default_errno_ret: EPERM,
        // Only the native 64-bit ABIs: 32-bit and x32 calls hit the default action.
        arch_map: vec![
            ArchMap {
                architecture: "SCMP_ARCH_X86_64",
                sub_architectures: Vec::new(),
            },
            ArchMap {
                architecture: "SCMP_ARCH_AARCH64",
                sub_architectures: Vec::new(),
            },
        ],
        syscalls,
    };
    let mut json = serde_json::to_string_pretty(&profile).map_err(|e| e.to_string())?;
    json.push('\n');
    Ok(json)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_profile_is_the_rendering_of_its_approved_list() {
        for profile in Profile::ALL {
            let rendered = render(profile.approved()).unwrap();
            match profile {
                Profile::Agent => expect_test::expect_file!["../../seccomp/agent.json"],
                Profile::Nats => expect_test::expect_file!["../../seccomp/nats.json"],
                Profile::Egress => expect_test::expect_file!["../../seccomp/egress.json"],
            }
            .assert_eq(&rendered);
        }
    }

    #[test]
    fn profiles_deny_by_default_and_never_allow_escape_calls() {
        for profile in Profile::ALL {
            let json: serde_json::Value = serde_json::from_str(profile.json()).unwrap();
            assert_eq!(json["defaultAction"], "SCMP_ACT_ERRNO", "{profile:?}");
            assert_eq!(json["defaultErrnoRet"], 1, "{profile:?}");
            let arches: Vec<&str> = json["archMap"]
                .as_array()
                .unwrap()
                .iter()
                .map(|a| a["architecture"].as_str().unwrap())
                .collect();
            assert_eq!(arches, ["SCMP_ARCH_X86_64", "SCMP_ARCH_AARCH64"]);
            let allowed = profile.syscalls();
            assert!(allowed.len() > 20, "{profile:?} is implausibly short");
            for never in NEVER {
                assert!(!allowed.contains(never), "{profile:?} allows {never}");
            }
            // Every rule that allows something unconditionally lists only approved names.
            for rule in json["syscalls"].as_array().unwrap() {
                for name in rule["names"].as_array().unwrap() {
                    let name = name.as_str().unwrap();
                    assert!(
                        allowed.contains(&name) || name == "clone" || name == "clone3",
                        "{profile:?}: {name}"
                    );
                }
            }
        }
    }

    #[test]
    fn lists_that_break_the_rules_do_not_render() {
        let cases = [
            "read\nmount\n",
            "read\nclone\n",
            "read\nBad-Name\n",
            "read # ok\nunshare",
            "read\nread\n",
            "socket arg0 in 1\nsocket\n",
            "socket arg6 in 1\n",
            "socket arg0 in\n",
            "socket arg0 in x\n",
            "mprotect arg2 & 4\n",
        ];
        let out: Vec<String> = cases.iter().map(|c| render(c).unwrap_err()).collect();
        expect_test::expect![[r#"
            mount may never be allowed
            clone is added by the renderer; remove it from the list
            "Bad-Name" is not a system call name
            unshare may never be allowed
            read is listed twice
            socket is listed twice
            "arg6" is not arg0 to arg5
            cannot read "socket arg0 in"
            "x" is not a number: invalid digit found in string
            cannot read "mprotect arg2 & 4""#]]
        .assert_eq(&out.join("\n"));
    }

    #[test]
    fn conditions_become_one_rule_per_value() {
        let json: serde_json::Value = serde_json::from_str(
            &render("read\nsocket arg0 in 1 0x2 # unix, inet\nmprotect arg2 & 0x4 == 0\nsocket arg0 in 10\n")
                .unwrap(),
        )
        .unwrap();
        let rules: Vec<String> = json["syscalls"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| format!("{} {} {}", r["names"], r["action"], r["args"]))
            .collect();
        expect_test::expect![[r#"
            ["read"] "SCMP_ACT_ALLOW" null
            ["mprotect"] "SCMP_ACT_ALLOW" [{"index":2,"op":"SCMP_CMP_MASKED_EQ","value":4,"valueTwo":0}]
            ["socket"] "SCMP_ACT_ALLOW" [{"index":0,"op":"SCMP_CMP_EQ","value":1,"valueTwo":0}]
            ["socket"] "SCMP_ACT_ALLOW" [{"index":0,"op":"SCMP_CMP_EQ","value":2,"valueTwo":0}]
            ["socket"] "SCMP_ACT_ALLOW" [{"index":0,"op":"SCMP_CMP_EQ","value":10,"valueTwo":0}]
            ["clone"] "SCMP_ACT_ALLOW" [{"index":0,"op":"SCMP_CMP_MASKED_EQ","value":2114060288,"valueTwo":0}]
            ["clone3"] "SCMP_ACT_ERRNO" null"#]]
        .assert_eq(&rules.join("\n"));
    }
}
