"""One-way Ethernet interface setup (pyroute2), for the TX and RX link interfaces.

On a diode nothing answers ARP and nothing may speak from RX, so each end is
set up so that it needs no reply and sends nothing of its own:

```
TX board                                          RX board
 eth1: up, MTU, IPv6 off,                           eth1: up, MTU, IPv6 off,
       ARP left ON (NOARP would make the kernel           NOARP (never answers or asks ARP)
       send to the interface's own MAC),
       PERMANENT neighbour RX-IP -> RX-MAC ═══════►
       host route RX-IP/32 dev eth1
```

- IPv6 is switched off by sysctl (`/proc/sys/net/ipv6/conf/<if>/disable_ipv6`,
  which pyroute2 cannot set) *before* the interface comes up, so neither side
  ever emits a router or neighbour solicitation, DAD probe or MLD report.
- Everything here is idempotent: an agent restart runs it again unchanged.
- It acts on the network namespace of the calling process, so it works the
  same on a board and inside `ip netns exec NS ...`.
- It needs CAP_NET_ADMIN (root, or `AmbientCapabilities=CAP_NET_ADMIN` in the
  systemd unit); without it `NetlinkSetupError` says so.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import errno
import ipaddress
import logging
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from agent.errors import LinkSetupError

__all__ = ["NetlinkSetupError", "setup_rx_interface", "setup_tx_interface", "tx_interface_intact",
           "watch_links"]

log = logging.getLogger("diode.netlink")

PROC_IPV6_CONF = Path("/proc/sys/net/ipv6/conf")
_MAC = re.compile(r"^[0-9a-f]{2}([:-])[0-9a-f]{2}(\1[0-9a-f]{2}){4}$", re.IGNORECASE)
_CAP_FIX = ("Fix: run the agent as root, or give it CAP_NET_ADMIN (systemd: "
            "AmbientCapabilities=CAP_NET_ADMIN CAP_NET_RAW)")


class NetlinkSetupError(LinkSetupError):
    """A link interface could not be set up; the message names the cause and the fix."""


def setup_tx_interface(name: str, *, mtu: int, rx_ip: str, rx_mac: str,
                       address: str | None = None) -> None:
    """Set up TX's link interface: it sends to `rx_ip` without ever needing ARP.

    `address` is "A.B.C.D/PREFIX" (or a bare address, taken as /32); None
    leaves the interface's addresses as they are. Safe to call from a
    coroutine (it blocks for a few milliseconds).
    """
    _off_loop(lambda: _setup_tx(name, mtu=mtu, rx_ip=rx_ip, rx_mac=rx_mac, address=address))


def setup_rx_interface(name: str, *, mtu: int, address: str | None = None) -> None:
    """Set up RX's link interface: it receives and never answers (NOARP, IPv6 off).

    Safe to call from a coroutine (it blocks for a few milliseconds).
    """
    _off_loop(lambda: _setup_rx(name, mtu=mtu, address=address))


def tx_interface_intact(name: str, *, rx_ip: str, rx_mac: str) -> bool:
    """True while TX's set-up holds: the interface up, the permanent neighbour for RX
    and the host route to it. `ip link set DEV down` (a cable re-plugged does the same)
    flushes the neighbour entry, permanent ones included, and the route; nothing puts
    them back on `up`. Blocks for a few milliseconds: call it from a thread."""
    dst, mac = str(_unicast_ipv4(rx_ip, "RX address")), _unicast_mac(rx_mac)
    with _ipr(name) as (ipr, index):
        links = ipr.link("get", index=index)
        up = bool(links) and bool(links[0]["flags"] & 1)  # IFF_UP
        neigh = [n for n in ipr.get_neighbours(ifindex=index, dst=dst)
                 if str(n.get("NDA_LLADDR", "")).lower() == mac and n["state"] & 0x80]
        try:
            routed = any(r.get("RTA_OIF") == index for r in ipr.route("get", dst=dst))
        except NetlinkError:  # ENETUNREACH: no route at all
            routed = False
    return up and bool(neigh) and routed


def watch_links(on_event: Callable[[], None], stop: Callable[[], bool]) -> None:
    """Call `on_event` for every link, neighbour or route change in this namespace, until
    `stop()`; blocks, so run it in a thread. A missed event is harmless: the caller
    checks its set-up on a timer too."""
    from pyroute2.netlink.rtnl import RTMGRP_IPV4_ROUTE, RTMGRP_LINK, RTMGRP_NEIGH
    ipr = IPRoute()
    try:
        ipr.bind(groups=RTMGRP_LINK | RTMGRP_NEIGH | RTMGRP_IPV4_ROUTE)
        while not stop():
            if ipr.get():
                on_event()
    finally:
        ipr.close()


def _off_loop(work: Callable[[], None]) -> None:
    """Run `work` here, or in a helper thread when this thread runs an asyncio loop:
    pyroute2's synchronous IPRoute drives its own loop and refuses a running one."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        work()
        return
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="netlink") as pool:
        pool.submit(work).result()


def _setup_tx(name: str, *, mtu: int, rx_ip: str, rx_mac: str, address: str | None) -> None:
    _check_name(name)
    _check_mtu(mtu)
    dst = _unicast_ipv4(rx_ip, "RX address")
    mac = _unicast_mac(rx_mac)
    iface = _interface_address(address)
    with _ipr(name) as (ipr, index):
        own = _own_mac(ipr, index)
        if own is not None and own == mac:
            raise NetlinkSetupError(
                f"RX MAC {mac} is the MAC of {name} itself (TX's own interface). Fix: use the "
                "MAC of the RX board's link interface (`ip link show` on RX)")
        _disable_ipv6(name)
        # Clear NOARP if someone set it: with NOARP the kernel resolves every
        # neighbour to the interface's own MAC and the frames never reach RX.
        _call(name, "set ARP on and MTU", lambda: ipr.link("set", index=index, arp=True, mtu=mtu))
        if iface is not None:
            _add_address(ipr, name, index, iface)
        _call(name, "bring up", lambda: ipr.link("set", index=index, state="up"))
        _call(name, f"add permanent neighbour {dst} -> {mac}",
              lambda: ipr.neigh("replace", dst=str(dst), lladdr=mac, ifindex=index,
                                state="permanent"))
        # Pin RX's address to this interface, whatever other routes exist.
        _call(name, f"add route {dst}/32",
              lambda: ipr.route("replace", dst=f"{dst}/32", oif=index, scope="link"))
    log.info("TX link interface %s: up, MTU %d, IPv6 off, ARP on, %spermanent neighbour "
             "%s -> %s", name, mtu, f"address {iface}, " if iface else "", dst, mac)


def _setup_rx(name: str, *, mtu: int, address: str | None) -> None:
    _check_name(name)
    _check_mtu(mtu)
    iface = _interface_address(address)
    with _ipr(name) as (ipr, index):
        _disable_ipv6(name)
        _call(name, "set NOARP and MTU",
              lambda: ipr.link("set", index=index, noarp=True, mtu=mtu))
        if iface is not None:
            _add_address(ipr, name, index, iface)
        _call(name, "bring up", lambda: ipr.link("set", index=index, state="up"))
    log.info("RX link interface %s: up, MTU %d, IPv6 off, NOARP%s", name, mtu,
             f", address {iface}" if iface else "")


# -- checks -----------------------------------------------------------------------------


def _check_name(name: str) -> None:
    if not name or len(name) > 15 or "/" in name or name in (".", "..") or \
            any(c.isspace() for c in name):
        raise NetlinkSetupError(f"{name!r} is not a valid interface name. Fix: set [link] "
                                "interface to the link port's name, e.g. \"eth1\"")


def _check_mtu(mtu: int) -> None:
    if not 68 <= mtu <= 65535:
        raise NetlinkSetupError(f"MTU {mtu} is out of range. Fix: use 68..65535 "
                                "(1500 for standard Ethernet)")


def _unicast_ipv4(text: str, what: str) -> ipaddress.IPv4Address:
    try:
        addr = ipaddress.IPv4Address(text)
    except ValueError:
        raise NetlinkSetupError(f"{what} {text!r} is not an IPv4 address. Fix: set [link] "
                                "host to RX's IPv4 address, e.g. \"192.0.2.2\"") from None
    if addr.is_multicast or addr.is_unspecified or addr == ipaddress.IPv4Address(
            "255.255.255.255") or addr.is_loopback:
        raise NetlinkSetupError(f"{what} {addr} is not a unicast address. Fix: use RX's own "
                                "IPv4 address on the link")
    return addr


def _unicast_mac(text: str) -> str:
    if not text:
        raise NetlinkSetupError("RX MAC address is not set: without it TX would need ARP, "
                                "which a one-way link cannot answer. Fix: set it to the MAC of "
                                "the RX board's link interface (`ip link show` on RX)")
    if not _MAC.match(text):
        raise NetlinkSetupError(f"RX MAC {text!r} is not a MAC address. Fix: write it as six "
                                "hex pairs, e.g. \"02:00:00:00:00:02\"")
    mac = text.replace("-", ":").lower()
    first = int(mac[:2], 16)
    if mac == "00:00:00:00:00:00" or first & 1:
        raise NetlinkSetupError(f"RX MAC {mac} is not a unicast MAC (all zeros, broadcast or "
                                "multicast). Fix: use the MAC of the RX board's link interface "
                                "(`ip link show` on RX)")
    return mac


def _interface_address(address: str | None) -> ipaddress.IPv4Interface | None:
    if address is None:
        return None
    try:
        iface = ipaddress.IPv4Interface(address)
    except ValueError:
        raise NetlinkSetupError(f"interface address {address!r} is not IPv4 ADDRESS/PREFIX. "
                                "Fix: write e.g. \"192.0.2.1/24\"") from None
    if iface.ip.is_multicast or iface.ip.is_unspecified:
        raise NetlinkSetupError(f"interface address {address!r} is not a unicast address. "
                                "Fix: write e.g. \"192.0.2.1/24\"")
    return iface


# -- kernel -----------------------------------------------------------------------------


@contextmanager
def _ipr(name: str) -> Iterator[tuple[IPRoute, int]]:
    try:
        ipr = IPRoute()
    except PermissionError:
        raise NetlinkSetupError(f"cannot open a netlink socket to set up {name}. {_CAP_FIX}") \
            from None
    try:
        found = ipr.link_lookup(ifname=name)
        if not found:
            raise NetlinkSetupError(
                f"network interface {name!r} does not exist (in this network namespace). Fix: "
                "set [link] interface to one listed by `ip link show`, or plug the adapter in")
        yield ipr, int(found[0])
    finally:
        ipr.close()


def _call(name: str, what: str, action: Callable[[], object]) -> None:
    try:
        action()
    except NetlinkError as exc:
        if exc.code in (errno.EPERM, errno.EACCES):
            raise NetlinkSetupError(f"{name}: cannot {what}: not permitted. {_CAP_FIX}") from None
        if exc.code == errno.ENODEV:
            raise NetlinkSetupError(f"{name}: cannot {what}: the interface went away. Fix: check "
                                    "the adapter and [link] interface") from None
        raise NetlinkSetupError(f"{name}: cannot {what}: {exc.args[-1]} (errno {exc.code})") \
            from None


def _own_mac(ipr: IPRoute, index: int) -> str | None:
    for msg in ipr.link("get", index=index):
        mac = msg.get("IFLA_ADDRESS")
        return str(mac).lower() if mac else None
    return None


def _add_address(ipr: IPRoute, name: str, index: int, iface: ipaddress.IPv4Interface) -> None:
    _call(name, f"add address {iface}",
          lambda: ipr.addr("replace", index=index, address=str(iface.ip),
                           prefixlen=iface.network.prefixlen))


def _disable_ipv6(name: str) -> None:
    """Set disable_ipv6 = 1 for `name` in the caller's network namespace."""
    if not PROC_IPV6_CONF.is_dir():
        return  # kernel without IPv6 (ipv6.disable=1): nothing can speak IPv6
    path = PROC_IPV6_CONF / name / "disable_ipv6"
    try:
        if path.read_text().strip() != "1":
            path.write_text("1\n")
    except FileNotFoundError:
        raise NetlinkSetupError(f"{path} is missing, so IPv6 cannot be switched off on {name}. "
                                "Fix: check that the interface exists in the agent's network "
                                "namespace (`ip link show`)") from None
    except PermissionError:
        raise NetlinkSetupError(f"cannot write {path} to switch IPv6 off on {name}: not "
                                f"permitted. {_CAP_FIX}") from None
    except OSError as exc:
        raise NetlinkSetupError(f"cannot write {path} to switch IPv6 off on {name}: "
                                f"{exc.strerror}. Fix: make /proc/sys writable for the agent "
                                "(containers often mount it read-only)") from None
