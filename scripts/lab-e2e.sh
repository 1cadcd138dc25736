#!/usr/bin/env bash
# CI end to end of README's first command: scripts/lab-up.sh (2 clusters x 2 nodes with the Star
# Wars demo), then `cilium connectivity test` (must pass), then `cilium lab down`, then a check
# that the lab left nothing behind: no network namespace, host link, pinned BPF object, mount or
# process (by the PIDs the lab recorded and by its directory in a command line). Prints how long
# `lab up` and the demo took and the resident memory of every lab process (agents per node).
# Run as root. The lab gets its own directory and name, so a lab already on the machine is left
# alone; on any failure the lab is taken down all the same (its logs stay, their path printed).
set -euo pipefail
source "$(dirname "$0")/as-root.sh"
cd "$(dirname "$0")/.."

# Cargo puts the binaries under $CARGO_TARGET_DIR when it is set.
cilium="${CARGO_TARGET_DIR:-target}/debug/cilium"
name="e2e-$$"
dir=$(mktemp -d /var/run/cilium-lab-e2e.XXXXXX)
export CILIUM_LAB_DIR="$dir"
snapshots=$(mktemp -d)

fail() {
    echo "error: $*" >&2
    exit 1
}

# What the lab may change on the host, so "before" and "after" can be compared.
snapshot() {
    local into="$snapshots/$1"
    mkdir -p "$into"
    ip netns list | awk '{print $1}' | sort >"$into/netns"
    ip -o link show | awk -F': ' '{sub(/@.*/, "", $2); print $2}' | sort >"$into/links"
    find /sys/fs/bpf -mindepth 1 2>/dev/null | sort >"$into/pins"
    awk '{print $2}' /proc/mounts | sort >"$into/mounts"
}

# `ps` of the lab's recorded processes: component, PID, resident memory. Stops at the first
# process that no longer runs, since every one should.
report_processes() {
    python3 - "$dir/state.json" <<'EOF'
import json, sys
state = json.load(open(sys.argv[1]))
nodes = sum(len(c["nodes"]) for c in state["clusters"])
total = agents = 0
print(f"==> resident memory of the lab's processes ({len(state['clusters'])} clusters, {nodes} nodes)")
for p in state["processes"]:
    pid = p.get("pid")
    rss = None
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1])
    except (OSError, TypeError):
        pass
    if rss is None:
        sys.exit(f"error: {p['component']} (pid {pid}) does not run; see {p['log']}")
    total += rss
    if p["component"].startswith("agent "):
        agents += rss
    print(f"    {p['component']:<28} pid {pid:<8} RSS {rss / 1024:7.1f} MiB")
print(f"    agents: {agents / 1024:.1f} MiB in all, {agents / 1024 / max(nodes, 1):.1f} MiB per node")
print(f"    whole lab: {total / 1024:.1f} MiB, {total / 1024 / max(nodes, 1):.1f} MiB per node")
EOF
}

# The PIDs the state file records (with their start times, so a reused PID is not mistaken).
recorded_pids() {
    python3 - "$dir/state.json" <<'EOF'
import json, sys
for p in json.load(open(sys.argv[1]))["processes"]:
    if p.get("pid"):
        print(p["pid"], p.get("start_time") or "")
EOF
}

teardown() {
    local status=$?
    if [ -f "$dir/state.json" ]; then
        echo "==> taking the lab down after a failure (exit $status)" >&2
        "$cilium" lab down || echo "error: cilium lab down failed too; run it again: CILIUM_LAB_DIR=$dir $cilium lab down" >&2
    fi
    if [ "$status" != 0 ]; then
        echo "==> lab-e2e FAILED; the lab's logs are in $dir/logs" >&2
    else
        rm -rf "$dir"
    fi
    rm -rf "$snapshots"
    exit "$status"
}
trap teardown EXIT
trap 'exit 130' INT TERM

snapshot before
start=$(date +%s)

echo "==> scripts/lab-up.sh --name $name (lab directory $dir)"
scripts/lab-up.sh --name "$name" 2>&1 | tee "$snapshots/lab-up.log"
up_took=$(sed -n 's/^==> lab up took //p' "$snapshots/lab-up.log")
demo_took=$(sed -n 's/^==> demo took //p' "$snapshots/lab-up.log")
[ -n "$up_took" ] && [ -n "$demo_took" ] || fail "scripts/lab-up.sh did not report its timings"
report_processes | tee "$snapshots/rss.txt"

echo "==> cilium connectivity test"
conn_started=$(date +%s)
"$cilium" connectivity test || fail "cilium connectivity test failed: see the failed scenarios above"
conn_took=$(($(date +%s) - conn_started))

recorded_pids >"$snapshots/pids"
netns_of_lab=$(python3 -c 'import json,sys; print("\n".join(json.load(open(sys.argv[1]))["netns"]))' "$dir/state.json")

echo "==> cilium lab down"
down_started=$(date +%s)
"$cilium" lab down
down_took=$(($(date +%s) - down_started))

echo "==> checking that the lab left nothing behind"
snapshot after
problems=0
for what in netns links pins mounts; do
    new=$(comm -13 "$snapshots/before/$what" "$snapshots/after/$what")
    if [ -n "$new" ]; then
        echo "error: $what left behind by the lab:" >&2
        sed 's/^/    /' <<<"$new" >&2
        problems=1
    fi
done
for ns in $netns_of_lab; do
    if [ -e "/var/run/netns/$ns" ]; then
        echo "error: namespace $ns of the lab still exists" >&2
        problems=1
    fi
done
if grep -qF "$dir" /proc/mounts; then
    echo "error: mounts under $dir left:" >&2
    grep -F "$dir" /proc/mounts | sed 's/^/    /' >&2
    problems=1
fi
# Recorded processes that still run (same PID and start time), and any process whose command
# line names the lab directory (given through the environment, so this check's own command
# line does not).
LAB_DIR="$dir" PIDS="$snapshots/pids" SCRIPT_PID=$$ python3 - <<'EOF' || problems=1
import os, sys
def stat(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return fields[0], fields[19]
    except (OSError, IndexError):
        return None
def cmdline(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""
left = False
with open(os.environ["PIDS"]) as f:
    for line in f:
        pid, _, start = line.strip().partition(" ")
        now = stat(pid)
        if now and now[0] not in "ZX" and (not start or now[1] == start):
            print(f"error: recorded process {pid} still runs: {cmdline(pid)}", file=sys.stderr)
            left = True
skip = {str(os.getpid()), os.environ["SCRIPT_PID"]}
for pid in filter(str.isdigit, os.listdir("/proc")):
    if pid in skip:
        continue
    now = stat(pid)
    if now and now[0] not in "ZX" and os.environ["LAB_DIR"] in cmdline(pid):
        print(f"error: process {pid} of the lab still runs: {cmdline(pid)}", file=sys.stderr)
        left = True
sys.exit(1 if left else 0)
EOF
[ -e "$dir/state.json" ] && { echo "error: $dir/state.json left" >&2; problems=1; }
[ "$problems" = 0 ] || fail "cilium lab down left the above behind"

echo "==> lab-e2e passed in $(($(date +%s) - start))s"
echo "    lab up (2 clusters x 2 nodes): $up_took; demo: $demo_took; connectivity test: ${conn_took}s; lab down: ${down_took}s"
sed -n 's/^    agents: /    agent RSS: /p; s/^    whole lab: /    lab RSS: /p' "$snapshots/rss.txt"
