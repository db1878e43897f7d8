"""Set up the one-way link's network interface at agent start ([link] interface).

The agent reaches board support only through this function: agent.board.netlink
(pyroute2) is imported only when an interface is configured.
"""

from __future__ import annotations

from agent.config import LinkConfig
from agent.errors import LinkSetupError

__all__ = ["LinkSetupError", "setup_interface"]


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
