"""The systemd units pass `systemd-analyze verify` with no warning, and say what the design needs.

`verify` refuses a unit whose ExecStart binary does not exist, and
/opt/diode/venv/bin/diode exists only on a board. So each unit is verified
as a copy in a temporary folder whose only change is ExecStart pointing at
this checkout's own `diode` console script; the test asserts that the copy
differs in that line alone. Unknown keys and unparsable values are
warnings, not errors, for `verify` (exit 0), so the test also fails on any
line of its output that mentions the unit; a negative control proves that
check would catch a typo.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
UNITS = REPO / "board" / "systemd"
INSTALLED_DIODE = "/opt/diode/venv/bin/diode"


def systemd_analyze() -> str:
    """The systemd-analyze binary; installs Debian's systemd package if it is missing."""
    found = shutil.which("systemd-analyze")
    if found:
        return found
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.fail("systemd-analyze is missing and cannot be installed here (needs root and apt-get). "
                    "Fix: apt-get install -y systemd")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "--no-install-recommends", "systemd"]
    if subprocess.run(install, env=env, capture_output=True).returncode != 0:
        subprocess.run(["apt-get", "update"], env=env, capture_output=True, check=False)
        res = subprocess.run(install, env=env, capture_output=True, text=True)
        if res.returncode != 0:
            pytest.fail(f"apt-get install systemd failed:\n{res.stdout[-2000:]}\n{res.stderr[-2000:]}")
    found = shutil.which("systemd-analyze")
    if not found:
        pytest.fail("systemd installed but systemd-analyze is still not on PATH")
    return found


def local_diode() -> str:
    """This checkout's `diode` console script (the venv running the tests has it)."""
    candidate = Path(sys.executable).parent / "diode"
    found = str(candidate) if candidate.exists() else shutil.which("diode")
    if not found:
        pytest.fail("no `diode` console script next to the test interpreter. Fix: pip install -e .")
    return found


def verifiable_copy(unit: Path, folder: Path) -> Path:
    text = unit.read_text()
    copy = text.replace(INSTALLED_DIODE, local_diode())
    changed = [(a, b) for a, b in zip(text.splitlines(), copy.splitlines(), strict=True) if a != b]
    assert len(changed) == 1 and changed[0][0].startswith("ExecStart="), changed
    out = folder / unit.name
    out.write_text(copy)
    return out


def verify(path: Path) -> tuple[int, list[str]]:
    """Exit code and the output lines that concern this unit."""
    res = subprocess.run([systemd_analyze(), "verify", "--man=no", str(path)],
                         capture_output=True, text=True, timeout=120)
    lines = (res.stdout + res.stderr).splitlines()
    ours = [line for line in lines
            if path.name in line or str(path) in line
            or re.search(r"Unknown (key|section)|Failed to parse|ignoring", line)]
    return res.returncode, ours


def directives(unit: Path) -> dict[tuple[str, str], list[str]]:
    """(section, key) -> values, in order; systemd allows a key more than once."""
    out: dict[tuple[str, str], list[str]] = {}
    section = ""
    for raw in unit.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        out.setdefault((section, key.strip()), []).append(value.strip())
    return out


@pytest.mark.parametrize("role", ["tx", "rx"])
def test_unit_passes_systemd_analyze_verify(role: str, tmp_path: Path) -> None:
    copy = verifiable_copy(UNITS / f"diode-{role}.service", tmp_path)
    rc, lines = verify(copy)
    assert rc == 0, lines
    assert lines == [], "systemd-analyze verify warned:\n" + "\n".join(lines)


def test_verify_check_catches_unknown_keys(tmp_path: Path) -> None:
    """Negative control: a typo'd key is only a warning for verify, and our check fails on it."""
    copy = verifiable_copy(UNITS / "diode-tx.service", tmp_path)
    copy.write_text(copy.read_text().replace("NoNewPrivileges=yes", "NoNewPrivilege=yes"))
    rc, lines = verify(copy)
    assert any("Unknown key" in line and "NoNewPrivilege" in line for line in lines), (rc, lines)


@pytest.mark.parametrize("role", ["tx", "rx"])
def test_unit_exposure_is_low(role: str, tmp_path: Path) -> None:
    """`systemd-analyze security` rates the hardening; 2.5 of 10 or lower ("OK")."""
    copy = verifiable_copy(UNITS / f"diode-{role}.service", tmp_path)
    res = subprocess.run([systemd_analyze(), "security", "--offline=true", "--threshold=25", str(copy)],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]


@pytest.mark.parametrize("role", ["tx", "rx"])
def test_unit_says_what_the_design_needs(role: str) -> None:
    d = directives(UNITS / f"diode-{role}.service")

    def one(key: str, section: str = "Service") -> str:
        values = d.get((section, key))
        assert values is not None and len(values) == 1, (key, values)
        return values[0]

    assert one("Type") == "notify"
    assert one("ExecStart") == f"{INSTALLED_DIODE} {role} -c /boot/firmware/diode/{role}.toml"
    assert one("Restart") == "always"
    watchdog_sec = int(one("WatchdogSec").rstrip("s"))
    assert 10 <= watchdog_sec <= 60
    assert one("DynamicUser") == "yes"
    assert one("NoNewPrivileges") == "yes"
    assert one("ProtectSystem") == "strict"
    assert one("PrivateTmp") == "yes" and one("ProtectHome") == "yes"
    assert one("StateDirectory") == "diode" and one("RuntimeDirectory") == "diode"
    # RX's mirror may build its store of OPC UA's standard address space (standard_space.py)
    assert d.get(("Service", "CacheDirectory")) == (["diode"] if role == "rx" else None)
    assert one("ReadOnlyPaths").lstrip("-") == "/boot/firmware/diode"
    assert one("ProtectKernelTunables") == "yes"
    assert one("ReadWritePaths") == "-/proc/sys/net/ipv6/conf"  # netlink.py's disable_ipv6
    # Capabilities: CAP_NET_ADMIN for interface setup; CAP_NET_RAW only on TX, for its
    # send-only raw IPv4 socket (AF_INET, so still no AF_PACKET), and CAP_NET_BIND_SERVICE
    # only on TX, for syslog listeners on the standard ports (514, 601) when configured.
    caps = ("CAP_NET_ADMIN CAP_NET_RAW CAP_NET_BIND_SERVICE" if role == "tx"
            else "CAP_NET_ADMIN")
    assert one("CapabilityBoundingSet") == caps
    assert one("AmbientCapabilities") == caps
    families = one("RestrictAddressFamilies").split()
    assert {"AF_UNIX", "AF_INET", "AF_NETLINK"} <= set(families) and "AF_PACKET" not in families
    assert "@system-service" in d[("Service", "SystemCallFilter")]
    # Room for the spool and connections past systemd's default soft limit of 1,024.
    assert int(one("LimitNOFILE")) >= 4096
    # The status file the example config names lives in the RuntimeDirectory.
    config = tomllib.loads((REPO / "board" / "config" / f"{role}.toml").read_text())
    assert config["status"]["file"] == f"/run/diode/{role}.json"
