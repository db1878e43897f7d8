"""No listening surface of RX can exhaust it: real sockets against a real `diode rx`.

- metrics: 1,100 connections held open (by a helper process) while MQTT messages cross end to end
  through RX's spool, under the 1,024-descriptor soft limit RX had under
  systemd; a fresh scrape is answered within the bound.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from agent.spool import write_spool_key
from diode_tools.sim.mosquitto import free_port
from tests.integration.conftest import Agent, Collector, Diode, publish_all, wait_until

MiB = 1 << 20


_HOLDER = """
import resource, select, socket, sys, time
port, n, partial = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3].encode()
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
if soft < n + 64:
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(n + 64, hard), hard))
socks = {}
poll = select.poll()
for _ in range(n):  # non-blocking: a full accept queue must not stall the holder
    s = socket.socket()
    s.setblocking(False)
    s.connect_ex(("127.0.0.1", port))
    socks[s.fileno()] = s
    poll.register(s, select.POLLOUT)
sent, deadline = set(), time.monotonic() + 10
while len(sent) < n and time.monotonic() < deadline:  # then the start of a request each
    for fd, ev in poll.poll(100):
        if fd not in sent:
            sent.add(fd)
            if partial and not ev & (select.POLLERR | select.POLLHUP):
                try:
                    socks[fd].send(partial)
                except OSError:
                    pass
            poll.modify(fd, select.POLLRDHUP)
print(n, flush=True)
# Until the server has closed every one (reset or FIN), or 20 s.
closed, deadline = set(), time.monotonic() + 20
while len(closed) < n and time.monotonic() < deadline:
    for fd, ev in poll.poll(100):
        closed.add(fd)
        poll.unregister(fd)
print(len(closed), flush=True)
sys.stdin.read()  # hold them until the test closes our stdin
"""


class Holders:
    """`n` TCP connections to `port`, opened and held by a helper process that raises its
    own RLIMIT_NOFILE for them (paho's select() in this process cannot live with
    descriptors above 1,024), each sent `partial` (the start of a request, never its end)."""

    def __init__(self, port: int, n: int, partial: bytes = b"") -> None:
        self.n = n
        self.proc = subprocess.Popen([sys.executable, "-c", _HOLDER, str(port), str(n),
                                      partial.decode()],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        opened = int(self.proc.stdout.readline() or 0)
        assert opened == n, f"the holder opened {opened} of {n} connections"

    def closed_by_server(self) -> int:
        """How many of them the server has closed, waiting until all are or 20 s."""
        assert self.proc.stdout is not None
        return int(self.proc.stdout.readline() or 0)

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


@contextmanager
def _held(port: int, n: int, partial: bytes = b"") -> Iterator[Holders]:
    holders = Holders(port, n, partial)
    try:
        yield holders
    finally:
        holders.close()


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for pid {pid}")


def _fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _log_lines(agent: Agent, needle: str) -> list[str]:
    return [line for line in agent.log().splitlines() if needle in line]


# -- metrics ------------------------------------------------------------------------------


def _scrape(port: int, timeout: float = 5) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=timeout) as r:
        return str(r.read().decode())


def test_1100_held_metrics_connections_do_not_starve_rx(diode: Diode,
                                                        collector: Callable[..., Collector],
                                                        it_broker: Any) -> None:
    n_holders, n_msgs = 1100, 2000
    port = free_port()
    key = diode.tmp / "spool.key"
    write_spool_key(key)
    rx_doc = diode.rx_doc()
    rx_doc["spool"] = {"dir": str(diode.tmp / "spool-rx"), "key_file": str(key)}
    rx_doc["metrics"] = {"listen": f"127.0.0.1:{port}"}
    rx = diode.start("rx", rx_doc)
    # The soft limit RX had under systemd before LimitNOFILE (and the one it still
    # gets when started by hand): the bound must hold without more room.
    _, hard = resource.prlimit(rx.pid, resource.RLIMIT_NOFILE)
    resource.prlimit(rx.pid, resource.RLIMIT_NOFILE, (1024, hard))
    diode.start_tx(mqtt={"qos": 1})
    c = collector(it_broker, topics=["d/#", "probe/#"])
    diode.wait_ready(c)
    assert "diode_link_state" in _scrape(port)
    fds_before = _fds(rx.pid)
    ot = diode._ot()
    # Slow clients: each sends the start of a request and never its end.
    with _held(port, n_holders, b"GET /metrics HTTP/1.1\r\n") as holders:
        fds = [_fds(rx.pid)]
        # Messages all along while the connections come in and are held.
        for batch in range(10):
            publish_all(ot.host, ot.port, [(f"d/{i}", f"{i}".encode(), 1, False)
                                           for i in range(batch * n_msgs // 10,
                                                          (batch + 1) * n_msgs // 10)])
            fds.append(_fds(rx.pid))
            time.sleep(0.5)
        got = c.wait_count(n_msgs, "d/", 60)
        delivered = len({int(m.payload) for m in got})
        closed = holders.closed_by_server()
        print(f"\nmetrics: {n_holders} slow connections held; RX closed {closed} of them; "
              f"RX descriptors {fds_before} before, at most {max(fds)} while held (soft "
              f"limit 1024); {delivered} of {n_msgs} messages delivered meanwhile")
        assert sorted(int(m.payload) for m in got) == list(range(n_msgs))
        # every one refused at once or timed out: RX holds none of them
        assert closed == n_holders
        assert max(fds) < 512
        # a fresh scraper gets its answer while the holders are still there
        text = wait_until(lambda: _try_scrape(port), 15, "a fresh scrape answered")
        assert 'diode_link_state{state="UP"} 1.0' in text
    st = diode.wait_status(rx, lambda st: st["link_state"] == "UP", 5, "link UP")
    assert st["sinks"]["plant"]["spool"].get("damaged", 0) == 0
    assert "Too many open files" not in rx.log()
    # counted: the first refusal at once, then one line per period with the count
    refused = wait_until(lambda: _log_lines(rx, "metrics: refused")[1:] and
                         _log_lines(rx, "metrics: refused"), 15, "the count line")
    assert len(refused) == 2, refused
    assert int(refused[1].split("closed ")[1].split(" ")[0]) >= n_holders - 1, refused
    print("RX logged:\n" + "\n".join(refused))


def _try_scrape(port: int) -> str | None:
    try:
        return _scrape(port, timeout=3)
    except (OSError, urllib.error.URLError):
        return None
