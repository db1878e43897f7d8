#!/usr/bin/env bash
# Run the whole MQTT path over a real one-way Ethernet link between two network
# namespaces (root only): OT broker and `diode tx` in one, `diode rx` and the IT
# broker in the other, joined by a veth pair; nftables drops (and counts)
# everything RX would send; --loss adds random loss, --rate a tc tbf limit.
# Arguments go to `python -m diode_tools.sim.testbed run`, e.g.
#   sudo ./scripts/testbed.sh --duration 5 --loss 0.05 --rate 20000000 --json
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
  echo "testbed: must run as root (network namespaces, nftables, tc). Fix: sudo $0 $*" >&2
  exit 2
fi
./scripts/setup.sh

# One id per run names the namespaces; the driver removes them itself, and this
# trap catches what a killed driver left behind (processes by pid, then the namespaces).
run_id="$(od -An -N4 -tx1 /dev/urandom | tr -d ' \n')"
cleanup() {
  local ns pid
  for ns in "diode-tx-$run_id" "diode-rx-$run_id"; do
    if ip netns list | grep -qw -- "$ns"; then
      for pid in $(ip netns pids "$ns" 2>/dev/null); do
        kill -KILL "$pid" 2>/dev/null || true
      done
      ip netns del "$ns" 2>/dev/null || true
    fi
  done
}
trap cleanup EXIT

# In the background so that a signal reaches the trap at once (bash defers traps
# until a foreground child exits); the driver cleans up on SIGTERM.
.venv/bin/python -m diode_tools.sim.testbed run --run-id "$run_id" "$@" &
driver=$!
stop_driver() {
  kill -TERM "$driver" 2>/dev/null || true
  wait "$driver" || true
  exit "$1"
}
trap 'stop_driver 130' INT
trap 'stop_driver 143' TERM
wait "$driver"
