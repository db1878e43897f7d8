"""RX's UDP socket: the deep receive buffer it asks for, and the datagrams its kernel
drops when RX falls behind, counted in the status (not only as frames lost).

A real `diode rx`, frozen with SIGSTOP while datagrams pour into its port, the
way a TX faster than RX fills the buffer.
"""

from __future__ import annotations

import os
import signal
import socket

from agent.transport.udp import RX_BUFFER
from tests.integration.conftest import Diode


def test_rx_gets_its_deep_buffer_and_counts_what_the_kernel_dropped(diode: Diode) -> None:
    rx = diode.start_rx()
    st = diode.wait_status(rx, lambda s: "kernel_dropped" in s["transport"], 10,
                           "RX's transport counters")
    assert st["transport"]["kernel_dropped"] == 0
    assert "receive buffer of" not in rx.log()   # as root it gets the full RX_BUFFER
    os.kill(rx.pid, signal.SIGSTOP)
    try:
        out = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        # each 1,400-byte datagram takes about 2.3 kB of buffer: this is twice RX_BUFFER
        n = 2 * RX_BUFFER // 1400
        junk = os.urandom(1400)
        for _ in range(n):
            out.sendto(junk, ("127.0.0.1", diode.udp_port))
        out.close()
    finally:
        os.kill(rx.pid, signal.SIGCONT)
    # every datagram sent is read or counted dropped, once RX has read its buffer
    st = diode.wait_status(rx, lambda s: s["transport"].get("kernel_dropped", 0)
                           + s["link"]["datagrams"] == n, 30,
                           "every datagram read or counted as dropped by the kernel")
    dropped, read = st["transport"]["kernel_dropped"], st["link"]["datagrams"]
    print(f"\n{n} datagrams sent to a stopped RX: {read} read, {dropped} dropped by the kernel")
    assert dropped >= n // 4 and read >= n // 4
    assert rx.running()
