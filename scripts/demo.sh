#!/usr/bin/env bash
# Set up, then run the live local demo: OT and IT Mosquitto brokers, a simulated
# plant, TX and RX agents over loopback UDP, counters once a second.
# Arguments go to `diode demo` (e.g. ./scripts/demo.sh --duration 60 --loss 0.05).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
exec .venv/bin/diode demo "$@"
