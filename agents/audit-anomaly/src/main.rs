//! `agent-audit-anomaly`: the audit-anomaly agent. Wiring only; see the `audit-anomaly` library
//! and `agent_runtime::main`.

fn main() -> std::process::ExitCode {
    agent_runtime::main::<audit_anomaly::AuditAnomaly>()
}
