"""Set up the one-way link's network interface ([link] interface), and keep TX's set up.

The agent reaches board support only through this module: agent.board.netlink
(pyroute2) is imported only when an interface is configured.

```
netlink events (link, neighbour, route) ──┐
a send that failed ───────────────────────┼─► TxInterfaceKeeper.check ─► intact? ─► no: set up again, logged
every few seconds ────────────────────────┘
```
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time

from agent.config import LinkConfig
from agent.errors import LinkSetupError

log = logging.getLogger("diode.link")

__all__ = ["LinkSetupError", "TxInterfaceKeeper", "setup_interface"]


def setup_interface(link: LinkConfig, role: str) -> None:
    if link.transport != "udp" or not link.interface:
        return
    from agent.board.netlink import NetlinkSetupError, setup_rx_interface, setup_tx_interface
    mtu = link.interface_mtu or max(1500, link.mtu + 28)
    try:
        if role == "rx":
            setup_rx_interface(link.interface, mtu=mtu, address=link.interface_address)
        elif not link.broadcast:
            assert link.rx_mac is not None  # the config loader insists
            setup_tx_interface(link.interface, mtu=mtu, rx_ip=link.host, rx_mac=link.rx_mac,
                               address=link.interface_address)
    except NetlinkSetupError as exc:
        raise LinkSetupError(str(exc)) from None


class TxInterfaceKeeper:
    """Puts TX's interface set-up back when the kernel dropped it (a flapped cable)."""

    PERIOD = 5.0

    def __init__(self, link: LinkConfig) -> None:
        self.link = link
        self.active = link.transport == "udp" and bool(link.interface) and not link.broadcast
        self.restored = 0
        self._wake = asyncio.Event()
        self._stopping = False

    def poke(self) -> None:
        """Something failed or changed: check soon."""
        self._wake.set()

    async def run(self) -> None:
        if not self.active:
            return
        loop = asyncio.get_running_loop()
        from agent.board.netlink import watch_links
        watcher = threading.Thread(target=watch_links, name="netlink-watch", daemon=True,
                                   args=(lambda: loop.call_soon_threadsafe(self._wake.set),
                                         lambda: self._stopping))
        watcher.start()
        try:
            while True:
                try:
                    await asyncio.wait_for(self._wake.wait(), self.PERIOD)
                except TimeoutError:
                    pass
                self._wake.clear()
                await asyncio.sleep(0.2)  # let a burst of events settle
                await loop.run_in_executor(None, self.check)
        finally:
            self._stopping = True

    def check(self) -> bool:
        """True when the set-up was intact or is restored; errors are logged, not raised."""
        from agent.board.netlink import NetlinkSetupError, tx_interface_intact
        link = self.link
        assert link.interface is not None and link.rx_mac is not None
        try:
            if tx_interface_intact(link.interface, rx_ip=link.host, rx_mac=link.rx_mac):
                return True
            log.warning("link interface %s lost its set-up (the cable was re-plugged or the "
                        "link flapped): setting it up again", link.interface)
            started = time.monotonic()
            setup_interface(link, "tx")
            self.restored += 1
            log.info("link interface %s restored in %.0f ms", link.interface,
                     (time.monotonic() - started) * 1000)
            return True
        except (NetlinkSetupError, LinkSetupError, OSError) as exc:
            log.error("link interface %s cannot be set up again: %s", link.interface, exc)
        except Exception:  # the keeper must outlive anything netlink throws at it
            log.exception("link interface %s: checking its set-up failed", link.interface)
        return False
