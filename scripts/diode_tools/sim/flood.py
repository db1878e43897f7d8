"""A flood of datagrams at RX's link port, from a process of its own, as fast as it can.

```
python -m diode_tools.sim.flood HOST PORT KIND SECONDS [--pool FILE] [--seed N]
  garbage      random bytes (1400 of them)
  new_epochs   a forged header naming a random epoch value, a random body (1400 bytes)
  replays      the datagrams of FILE (length-prefixed, as `write_pool` writes them), in a loop
   ─► sendto(HOST, PORT) in a tight loop for SECONDS ─► one JSON line: {"sent": n, "seconds": s}
```

The forged header is the in-memory bench's (diode_tools/bench/flood_core.py); a new
epoch value per datagram, as there. A process of its own so the sender has a core
(and a GIL) to itself: the figure it is used for is how many datagrams a second RX
disposes of while the sender saturates it. It runs at nice 19 (`--nice`): on a real
link the attacker's sender is another machine, and here it would otherwise take RX's
own CPU, so RX would lose datagrams in its kernel for want of CPU, not for what it
spends on each.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import socket
import struct
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from diode_tools.bench.flood_core import HEADER, SIZE

KINDS = ("garbage", "new_epochs", "replays")
_LEN = struct.Struct(">I")


def write_pool(path: Path, datagrams: Iterable[bytes]) -> int:
    """Datagrams to replay, length-prefixed in one file; how many."""
    n = 0
    with open(path, "wb") as f:
        for d in datagrams:
            f.write(_LEN.pack(len(d)) + d)
            n += 1
    return n


def read_pool(path: Path) -> list[bytes]:
    raw = path.read_bytes()
    out, i = [], 0
    while i + _LEN.size <= len(raw):
        (n,) = _LEN.unpack_from(raw, i)
        out.append(raw[i + _LEN.size:i + _LEN.size + n])
        i += _LEN.size + n
    return out


def maker(kind: str, seed: int, pool: list[bytes]) -> Callable[[], bytes]:
    """The next datagram of the flood; each as cheap to make as can be, so the sender
    (not its making of bytes) sets the pace."""
    rng = random.Random(seed)
    if kind == "garbage":
        pool = [rng.randbytes(SIZE) for _ in range(1024)]   # RX drops it at the header
    elif kind == "new_epochs":
        body = rng.randbytes(SIZE - HEADER.size)
        pack, bits = HEADER.pack, rng.getrandbits
        return lambda: pack(1, 0, 1, bits(64), 0) + body     # a new epoch value every time
    elif not pool:
        raise ValueError("replays: the pool is empty")
    cycle = itertools.cycle(pool)
    return cycle.__next__


def flood(host: str, port: int, kind: str, seconds: float, *, pool: list[bytes] | None = None,
          seed: int = 1) -> dict[str, float | str]:
    make = maker(kind, seed, pool or [])
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    send, addr = sock.sendto, (host, port)
    sent = errors = 0
    started = time.monotonic()
    end = started + seconds
    while True:
        for _ in range(256):
            try:
                send(make(), addr)
                sent += 1
            except OSError:
                errors += 1
        if time.monotonic() >= end:
            break
    took = time.monotonic() - started
    sock.close()
    return {"kind": kind, "sent": sent, "errors": errors, "seconds": round(took, 3),
            "rate": round(sent / took)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("host")
    ap.add_argument("port", type=int)
    ap.add_argument("kind", choices=KINDS)
    ap.add_argument("seconds", type=float)
    ap.add_argument("--pool", type=Path, help="replays: the datagrams to send again")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--nice", type=int, default=19,
                    help="scheduling niceness of the sender (default %(default)s)")
    args = ap.parse_args(argv)
    os.nice(args.nice)
    pool = read_pool(args.pool) if args.pool else []
    print(json.dumps(flood(args.host, args.port, args.kind, args.seconds, pool=pool,
                           seed=args.seed)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
