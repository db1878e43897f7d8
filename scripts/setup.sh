#!/usr/bin/env bash
# Set up everything the demo and the tests need, on a fresh Debian 12 machine:
# Debian packages (when missing) and a Python venv at .venv with the project.
# Safe to run again: it only installs what is missing or changed.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

need=()
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || need+=(mosquitto)
command -v mosquitto_pub >/dev/null 2>&1 || need+=(mosquitto-clients)
command -v socat >/dev/null 2>&1 || need+=(socat)
# syslog: rsyslog is the IT collector (and an OT sender) in tests and benches; logger an OT sender
command -v rsyslogd >/dev/null 2>&1 || [ -x /usr/sbin/rsyslogd ] || need+=(rsyslog)
[ -f /usr/lib/x86_64-linux-gnu/rsyslog/lmnsd_gtls.so ] || ls /usr/lib/*/rsyslog/lmnsd_gtls.so >/dev/null 2>&1 || need+=(rsyslog-gnutls)
command -v logger >/dev/null 2>&1 || need+=(bsdutils)
command -v systemd-analyze >/dev/null 2>&1 || need+=(systemd)  # unit files are verified in tests
command -v nft >/dev/null 2>&1 || [ -x /usr/sbin/nft ] || need+=(nftables)
# tests/integration/test_link_clock.py: a TX board whose wall clock is behind (libfaketime)
command -v faketime >/dev/null 2>&1 || need+=(faketime)
# tests/images: the SD-card image's partition assembly, checked without a full build
command -v mkfs.vfat >/dev/null 2>&1 || [ -x /usr/sbin/mkfs.vfat ] || need+=(dosfstools)
command -v mcopy >/dev/null 2>&1 || need+=(mtools)
command -v sfdisk >/dev/null 2>&1 || [ -x /usr/sbin/sfdisk ] || need+=(fdisk)
command -v debugfs >/dev/null 2>&1 || [ -x /usr/sbin/debugfs ] || need+=(e2fsprogs)
# tests/integration/test_mqtt_aedes.py: aedes, an MQTT broker that is not Mosquitto (Node.js);
# tests/integration/test_opcua_mirror_spec.py: node-opcua, an OPC UA stack that is not asyncua
command -v node >/dev/null 2>&1 || need+=(nodejs)
command -v npm >/dev/null 2>&1 || need+=(npm)
python3 -c 'import sys; assert sys.version_info >= (3, 11)' 2>/dev/null || need+=(python3)
python3 -c 'import ensurepip, venv' 2>/dev/null || need+=(python3-venv)
if [ ${#need[@]} -gt 0 ]; then
  echo "setup: installing Debian packages: ${need[*]}" >&2
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >&2
fi
# Debian starts a system broker on 1883 after install; ours run on free ports, so leave it.

python3 -c 'import sys; assert sys.version_info >= (3, 11), "Python 3.11+ is needed"'
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv" >&2
  python3 -m venv .venv
fi
stamp=.venv/.diode-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ scripts/pyproject.toml -nt "$stamp" ]; then
  echo "setup: installing the project, its tools and their dependencies into .venv" >&2
  .venv/bin/python -m pip install -q --upgrade pip >&2
  # the product (what a board runs) and, beside it, the demo, benches and simulators
  .venv/bin/python -m pip install -q -e '.[dev]' -e ./scripts >&2
  touch "$stamp"
fi
# bytecode for the checkout's own modules, as pip compiles an installed package's (the
# editable install runs them from here): where PYTHONDONTWRITEBYTECODE is set (the agents'
# units set it, and so may a shell), every agent start would compile some 80 modules
# again, 0.35 s of TX's start on this 2-core machine
.venv/bin/python -m compileall -q agent scripts/diode_tools >&2
# the OPC UA mirror's store of the standard address space (agent/opcua/standard_space.py):
# checked, and built when missing or damaged
.venv/bin/python -m agent.opcua.standard_space >&2

# aedes from the npm registry, at the version scripts/aedes/package-lock.json pins
aedes=scripts/aedes
if [ ! -d "$aedes/node_modules/aedes" ] || [ "$aedes/package-lock.json" -nt "$aedes/node_modules/.package-lock.json" ]; then
  node_major=$(node -p 'process.versions.node.split(".")[0]')
  if [ "$node_major" -lt 20 ]; then
    echo "setup: Node.js $(node --version) is too old for aedes 1.x (needs 20 or later); the aedes test will fail" >&2
  fi
  echo "setup: installing aedes (npm ci in $aedes)" >&2
  (cd "$aedes" && npm ci --no-audit --no-fund --loglevel=error >&2)
fi

# node-opcua from the npm registry, at the version scripts/node-opcua/package-lock.json pins
# (2.182: the last release that runs on Node.js 20)
nodeopcua=scripts/node-opcua
if [ ! -d "$nodeopcua/node_modules/node-opcua" ] || [ "$nodeopcua/package-lock.json" -nt "$nodeopcua/node_modules/.package-lock.json" ]; then
  node_major=$(node -p 'process.versions.node.split(".")[0]')
  if [ "$node_major" -lt 20 ]; then
    echo "setup: Node.js $(node --version) is too old for node-opcua 2.182 (needs 20 or later); the node-opcua tests will fail" >&2
  fi
  echo "setup: installing node-opcua (npm ci in $nodeopcua)" >&2
  (cd "$nodeopcua" && npm ci --no-audit --no-fund --loglevel=error >&2)
fi
