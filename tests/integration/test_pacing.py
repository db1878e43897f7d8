"""TX never exceeds the configured bit rate on a real UDP socket."""

import contextlib
import socket
import subprocess
import sys
import time
from pathlib import Path

from agent.transport.udp import UDP_OVERHEAD
from diode_tools.sim.mosquitto import Broker


def test_tx_paces_a_flood_to_the_configured_bitrate(tmp_path: Path) -> None:
    rate = 400_000  # bit/s
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    rx.settimeout(0.2)
    port = rx.getsockname()[1]
    subprocess.run([sys.executable, "-m", "agent.cli", "keygen", "-o", str(tmp_path / "k")],
                   check=True, capture_output=True)
    with Broker() as ot:
        (tmp_path / "tx.toml").write_text(
            f'[link]\nkey_file = "k"\nport = {port}\nbitrate = {rate}\n'
            f'[[mqtt]]\nname = "p"\nport = {ot.port}\nqos = 0\n')
        tx = subprocess.Popen([sys.executable, "-m", "agent.cli", "tx", "-c",
                               str(tmp_path / "tx.toml")], stderr=subprocess.PIPE)
        try:
            time.sleep(1.5)
            flood = subprocess.Popen(["mosquitto_pub", "-p", str(ot.port), "-t", "f", "-l",
                                      "-q", "0"], stdin=subprocess.PIPE)
            assert flood.stdin is not None
            flood.stdin.write(b"".join(b"%0199d\n" % i for i in range(20000)))
            flood.stdin.close()
            flood.wait(30)
            # Measure a steady window while TX drains its backlog at the link rate.
            rx.setblocking(False)  # drop what queued in the socket before the window
            with contextlib.suppress(BlockingIOError):
                while True:
                    rx.recv(65535)
            rx.settimeout(0.2)
            start, wire_bytes, datagrams = time.monotonic(), 0, 0
            while time.monotonic() - start < 4.0:
                try:
                    wire_bytes += len(rx.recv(65535)) + UDP_OVERHEAD
                    datagrams += 1
                except TimeoutError:
                    pass
            elapsed = time.monotonic() - start
        finally:
            tx.terminate()
            tx.wait(10)
    measured = wire_bytes * 8 / elapsed
    assert datagrams > 50, "TX sent nothing to pace"
    # Never above the budget: the bucket allows one burst (8 datagrams of 1400 bytes)
    # plus one datagram of overdraft on top of rate * time.
    allowance = (8 * 1400 + 1400 + UDP_OVERHEAD) * 8
    assert wire_bytes * 8 <= rate * elapsed + allowance, measured
    # and close to it: the backlog keeps TX busy for the whole window
    assert measured >= rate * 0.8, measured
