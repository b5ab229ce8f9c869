#!/usr/bin/env bash
# Shows which system calls the sandbox's containers make outside their approved lists.
#
# Usage (as root, on Linux with Docker; a development tool, never needed by CI):
#
#   sandbox/seccomp/derive.sh [--empty] -- <command that runs containers>
#   e.g. sandbox/seccomp/derive.sh -- cargo test -p sandbox --test docker_sandbox
#
# It swaps each profile (agent.json, nats.json, egress.json) for a logging copy: the default
# action becomes SCMP_ACT_LOG, so calls outside the list are allowed and the kernel logs them
# (audit type 1326). With --empty the allow list is dropped too, so every call is logged (the
# first derivation of a new profile). It raises the kernel's printk burst for the run, records
# the kernel log while the command runs, restores the profiles and the burst (also on error or
# Ctrl-C), and prints, for each binary, the calls that were logged. Rebuild after it: binaries
# compiled during the run embed the logging profiles.
#
# Calls made by runc between loading the filter and starting the binary show up as `runc`.
set -euo pipefail

empty=0
if [ "${1:-}" = "--empty" ]; then
    empty=1
    shift
fi
[ "${1:-}" = "--" ] && shift
[ $# -gt 0 ] || { echo "usage: $0 [--empty] -- <command>" >&2; exit 64; }
[ "$(id -u)" = 0 ] || { echo "$0: needs root (kernel log, printk settings)" >&2; exit 64; }
command -v python3 >/dev/null || { echo "$0: needs python3" >&2; exit 64; }

here=$(cd "$(dirname "$0")" && pwd)
backup=$(mktemp -d)
log="$backup/kernel.log"
burst_file=/proc/sys/kernel/printk_ratelimit_burst
old_burst=$(cat "$burst_file")
dmesg_pid=

restore() {
    [ -n "$dmesg_pid" ] && kill "$dmesg_pid" 2>/dev/null || true
    cp "$backup"/*.json "$here"/
    echo "$old_burst" > "$burst_file"
}
trap restore EXIT

cp "$here"/*.json "$backup"/
for profile in agent nats egress; do
    EMPTY=$empty python3 - "$here/$profile.json" <<'PY'
import json, os, sys
path = sys.argv[1]
profile = json.load(open(path))
profile["defaultAction"] = "SCMP_ACT_LOG"
profile.pop("defaultErrnoRet", None)
if os.environ["EMPTY"] == "1":
    # Keep only clone3 -> ENOSYS, so the C library still falls back to clone as it will.
    profile["syscalls"] = [r for r in profile["syscalls"] if r["names"] == ["clone3"]]
json.dump(profile, open(path, "w"))
PY
done

echo 100000 > "$burst_file"
dmesg -C
dmesg -w > "$log" 2>&1 &
dmesg_pid=$!
status=0
"$@" || status=$?
sleep 2

python3 - "$log" <<'PY'
import collections, re, sys
table = {}
for header in ("/usr/include/x86_64-linux-gnu/asm/unistd_64.h", "/usr/include/asm-generic/unistd.h"):
    try:
        for line in open(header):
            m = re.match(r"#define __NR3?2?6?4?_(\w+)\s+(\d+)", line)
            if m and int(m.group(2)) not in table:
                table[int(m.group(2))] = m.group(1)
        break
    except OSError:
        continue
calls = collections.defaultdict(set)
for line in open(sys.argv[1], errors="replace"):
    if "type=1326" not in line:
        continue
    exe = re.search(r'exe="([^"]*)"', line)
    comm = re.search(r'comm="([^"]*)"', line)
    number = re.search(r" syscall=(\d+)", line)
    if not (exe and comm and number):
        continue
    who = "runc" if comm.group(1).startswith("runc") or exe.group(1) == "/" else exe.group(1)
    n = int(number.group(1))
    calls[who].add(table.get(n, str(n)))
if not calls:
    print("no call outside the lists was logged")
for who in sorted(calls):
    print(f"{who}: {' '.join(sorted(calls[who]))}")
PY
exit "$status"
