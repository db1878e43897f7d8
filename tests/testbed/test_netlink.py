"""agent.board.netlink inside a fresh network namespace (root only), the way an agent calls it."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from diode_tools.sim.testbed import Topology, destroy, in_ns, sh

SETUP = """
import asyncio, sys
from agent.board.netlink import NetlinkSetupError, setup_rx_interface, setup_tx_interface
role, in_loop = sys.argv[1], sys.argv[2] == "loop"
args = dict(a.split("=", 1) for a in sys.argv[3:])
name = args.pop("name")
kw = {**args, "mtu": int(args["mtu"])}
fn = setup_tx_interface if role == "tx" else setup_rx_interface

async def from_a_coroutine():  # as an agent would call it, from its running loop
    fn(name, **kw)

try:
    asyncio.run(from_a_coroutine()) if in_loop else fn(name, **kw)
except NetlinkSetupError as exc:
    print(exc, file=sys.stderr)
    sys.exit(3)
"""


@pytest.fixture
def topo() -> Iterator[Topology]:
    t = Topology.new()
    sh("ip", "netns", "add", t.tx_ns)
    sh("ip", "netns", "add", t.rx_ns)
    sh("ip", "link", "add", t.tx_if, "netns", t.tx_ns, "type", "veth",
       "peer", "name", t.rx_if, "netns", t.rx_ns)
    try:
        yield t
    finally:
        destroy(t)


def setup(ns: str, role: str, *args: str, prefix: tuple[str, ...] = (),
          loop: bool = False) -> subprocess.CompletedProcess[str]:
    argv = in_ns(ns, *prefix, sys.executable, "-c", SETUP, role, "loop" if loop else "plain",
                 *args)
    return subprocess.run(argv, capture_output=True, text=True, timeout=30)


def link(ns: str, dev: str) -> dict[str, object]:
    info: dict[str, object] = json.loads(sh("ip", "-n", ns, "-j", "link", "show", dev))[0]
    return info


def ipv6_disabled(ns: str, dev: str) -> str:
    return sh(*in_ns(ns, "cat", f"/proc/sys/net/ipv6/conf/{dev}/disable_ipv6")).strip()


@pytest.mark.parametrize("loop", [False, True])
def test_tx_and_rx_setup(topo: Topology, loop: bool) -> None:
    ns, rns = topo.tx_ns, topo.rx_ns
    rx_mac = str(link(rns, topo.rx_if)["address"])
    for _ in range(2):  # idempotent: an agent restart runs it again
        res = setup(rns, "rx", f"name={topo.rx_if}", "mtu=1400", "address=10.77.0.2/24",
                    loop=loop)
        assert res.returncode == 0, res.stderr
        res = setup(ns, "tx", f"name={topo.tx_if}", "mtu=1400", "rx_ip=10.77.0.2",
                    f"rx_mac={rx_mac}", "address=10.77.0.1/24", loop=loop)
        assert res.returncode == 0, res.stderr
    tx, rx = link(ns, topo.tx_if), link(rns, topo.rx_if)
    assert "UP" in tx["flags"] and "NOARP" not in tx["flags"]  # type: ignore[operator]
    assert "UP" in rx["flags"] and "NOARP" in rx["flags"]  # type: ignore[operator]
    assert tx["mtu"] == rx["mtu"] == 1400
    assert ipv6_disabled(ns, topo.tx_if) == ipv6_disabled(rns, topo.rx_if) == "1"
    neigh = json.loads(sh("ip", "-n", ns, "-j", "neigh", "show", "dev", topo.tx_if))
    assert [(n["dst"], n["lladdr"], n["state"]) for n in neigh] == \
        [("10.77.0.2", rx_mac, ["PERMANENT"])]
    routes = json.loads(sh("ip", "-n", ns, "-j", "route", "get", "10.77.0.2"))
    assert routes[0]["dev"] == topo.tx_if


def test_tx_clears_a_noarp_flag(topo: Topology) -> None:
    sh("ip", "-n", topo.tx_ns, "link", "set", topo.tx_if, "arp", "off")
    res = setup(topo.tx_ns, "tx", f"name={topo.tx_if}", "mtu=1500", "rx_ip=10.77.0.2",
                "rx_mac=02:00:00:00:00:02")
    assert res.returncode == 0, res.stderr
    assert "NOARP" not in link(topo.tx_ns, topo.tx_if)["flags"]  # type: ignore[operator]


@pytest.mark.parametrize("args, message", [
    (("name=nosuch0",), "does not exist"),
    (("rx_mac=02:00:00:00:00",), "is not a MAC address"),
    (("rx_mac=",), "RX MAC address is not set"),
    (("rx_mac=ff:ff:ff:ff:ff:ff",), "not a unicast MAC"),
    (("rx_mac=01:00:5e:00:00:01",), "not a unicast MAC"),
    (("rx_ip=10.77.0",), "is not an IPv4 address"),
    (("rx_ip=224.0.0.1",), "not a unicast address"),
    (("address=10.77.0.1/40",), "not IPv4 ADDRESS/PREFIX"),
    (("mtu=20",), "out of range"),
])
def test_tx_errors_name_the_fix(topo: Topology, args: tuple[str, ...], message: str) -> None:
    base = {"name": topo.tx_if, "mtu": "1500", "rx_ip": "10.77.0.2",
            "rx_mac": "02:00:00:00:00:02"}
    for a in args:
        key, value = a.split("=", 1)
        base[key] = value
    res = setup(topo.tx_ns, "tx", *(f"{k}={v}" for k, v in base.items()))
    assert res.returncode == 3, res.stderr
    assert message in res.stderr and "Fix:" in res.stderr, res.stderr


def test_tx_refuses_its_own_mac_as_rx_mac(topo: Topology) -> None:
    own = link(topo.tx_ns, topo.tx_if)["address"]
    res = setup(topo.tx_ns, "tx", f"name={topo.tx_if}", "mtu=1500", "rx_ip=10.77.0.2",
                f"rx_mac={own}")
    assert res.returncode == 3 and "MAC of" in res.stderr and "itself" in res.stderr, res.stderr


def test_rx_missing_interface(topo: Topology) -> None:
    res = setup(topo.rx_ns, "rx", "name=nosuch0", "mtu=1500")
    assert res.returncode == 3 and "does not exist" in res.stderr, res.stderr


@pytest.mark.parametrize("role", ["tx", "rx"])
def test_without_cap_net_admin_the_error_names_the_fix(topo: Topology, role: str) -> None:
    setpriv = sh("sh", "-c", "command -v setpriv").strip()
    assert Path(setpriv).exists()
    args = [f"name={topo.tx_if if role == 'tx' else topo.rx_if}", "mtu=1500"]
    if role == "tx":
        args += ["rx_ip=10.77.0.2", "rx_mac=02:00:00:00:00:02"]
    ns = topo.tx_ns if role == "tx" else topo.rx_ns
    res = setup(ns, role, *args, prefix=(setpriv, "--bounding-set=-net_admin"))
    assert res.returncode == 3, res.stderr
    assert "not permitted" in res.stderr and "CAP_NET_ADMIN" in res.stderr, res.stderr
