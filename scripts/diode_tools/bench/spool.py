"""Spool benchmark: append + ack of 100-byte records with batched fsync, on real files.

```
producer: append(100-byte payload, key for 1 in 4) ──► Spool (fsync every 10 ms)
consumer: every 1,000 appends peek(1,000) + ack(last) ──┘   (lags one batch behind)
baseline: the same payloads, framed, written in the same batches to a plain file
          with the same fsync cadence, no crypto            ──► ratio
```

`records_per_s` is appends per second of wall clock with the consumer
keeping pace (every record is read back, authenticated and decoded once).
Before the consumer catches up, every spool file is searched for a marker
that every payload carries: `plaintext_found` must be False.
"""

from __future__ import annotations

import os
import secrets
import struct
import tempfile
import time
from pathlib import Path
from typing import Any

from agent.spool import Spool

_MARKER = b"PLAINTEXT-MARKER"
_PAYLOAD = 100
_BATCH = 1_000
_INTERVAL_MS = 10.0


def _payload(index: int) -> bytes:
    head = _MARKER + index.to_bytes(8, "big")
    return head + b"." * (_PAYLOAD - len(head))


def _plaintext_found(directory: Path) -> bool:
    return any(_MARKER in path.read_bytes() for path in directory.rglob("*") if path.is_file())


def _baseline(directory: Path, records: int) -> float:
    """Plain framed writes with the same batching and fsync cadence: the ceiling."""
    frame = struct.Struct(">IQ")
    fd = os.open(directory / "baseline", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    buf = bytearray()
    interval = _INTERVAL_MS / 1000.0
    started = time.perf_counter()
    due = started + interval
    for index in range(records):
        payload = _payload(index)
        buf += frame.pack(len(payload), index)
        buf += payload
        if len(buf) >= 256 * 1024:
            os.write(fd, buf)
            buf.clear()
        if time.perf_counter() >= due:
            os.write(fd, buf)
            buf.clear()
            os.fsync(fd)
            due = time.perf_counter() + interval
    os.write(fd, buf)
    os.fsync(fd)
    seconds = time.perf_counter() - started
    os.close(fd)
    os.unlink(directory / "baseline")
    return records / seconds if seconds > 0 else float("inf")


def run_spool_bench(records: int = 200_000, directory: Path | None = None) -> dict[str, Any]:
    """Append `records` 100-byte records and consume them; figures as a dict."""
    if records < _BATCH:
        raise ValueError(f"records must be >= {_BATCH}, got {records}")
    with tempfile.TemporaryDirectory(prefix="spool-bench-", dir=directory) as tmp:
        root = Path(tmp)
        spool_dir = root / "spool"
        key = secrets.token_bytes(32)
        spool = Spool(spool_dir, key, max_bytes=1 << 30, segment_bytes=4 << 20, fsync="interval",
                      fsync_interval_ms=_INTERVAL_MS)
        consumed = 0
        started = time.perf_counter()
        for index in range(records):
            spool.append(_payload(index), f"bench/{index % 250}" if index % 4 == 0 else None)
            if index % _BATCH == _BATCH - 1 and index >= 2 * _BATCH:
                batch = spool.peek(_BATCH)
                consumed += len(batch)
                spool.ack(batch[-1].seq)
        spool.sync()
        seconds = time.perf_counter() - started
        durable = spool.durable_seq
        stats = spool.stats()
        plaintext = _plaintext_found(spool_dir)
        files = sum(1 for p in spool_dir.iterdir() if p.is_file())
        while batch := spool.peek(_BATCH):
            consumed += len(batch)
            spool.ack(batch[-1].seq)
        spool.close()
        baseline = _baseline(root, records)
    rate = records / seconds if seconds > 0 else float("inf")
    return {
        "records": records,
        "payload_bytes": _PAYLOAD,
        "fsync_interval_ms": _INTERVAL_MS,
        "seconds": seconds,
        "records_per_s": rate,
        "baseline_records_per_s": baseline,
        "ratio": rate / baseline,
        "consumed": consumed,
        "durable_seq": durable,
        "fsyncs": spool.counters["fsyncs"],
        "state_writes": spool.counters["state_writes"],
        "unacked_at_end": stats.records,
        "fill_bytes_at_end": stats.fill_bytes,
        "files_at_end": files,
        "plaintext_found": plaintext,
    }


if __name__ == "__main__":
    import json

    print(json.dumps(run_spool_bench(), indent=2))
