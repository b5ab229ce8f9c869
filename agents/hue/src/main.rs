//! `agent-hue`: the Hue agent. Wiring only; see the `hue` library and `agent_runtime::main`.

fn main() -> std::process::ExitCode {
    agent_runtime::main::<hue::Hue>()
}
