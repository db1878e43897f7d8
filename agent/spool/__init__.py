"""Encrypted, durable store-and-forward spool ("durable where it matters").

TX spools what it takes from OT before it acknowledges it (MQTT QoS 1/2), and
RX spools what it received until the IT broker acknowledged it, so a kill -9
or power cut loses nothing acknowledged. Everything on disk is sealed with
AES-256-GCM under a spool key that is not the link key and never leaves the
board; tampering, replay, reordering and truncation are reported, a torn last
write from a crash is discarded and counted.

```
spool directory (mode 0700)
  0000000000000001.seg  ─┐  segments: append-only, one subkey each (segment.py)
  0000000000000002.seg  ─┤  oldest ... newest; the newest one is being appended
  state                 ─── ack point, manifest of segments (state.py), atomic
  reserve               ─── room kept for state files when the disk fills (store.py)
  lock                  ─── flock: one process at a time
  damaged/              ─── evidence: files set aside after damage was reported
```

Modules: `store` (the Spool), `segment` (file layout and sealing), `state`
(ack point and manifest), `recover` (judging a directory at open), `keyfile`
(load the key), `wipe` (decommissioning), `model` (records, damage, stats).
"""

from agent.spool.keyfile import load_spool_key, write_spool_key
from agent.spool.model import (
    SpoolDamage,
    SpoolDamaged,
    SpoolError,
    SpoolFull,
    SpoolRecord,
    SpoolStats,
)
from agent.spool.store import FsyncMode, Spool
from agent.spool.wipe import wipe

__all__ = ["FsyncMode", "Spool", "SpoolDamage", "SpoolDamaged", "SpoolError", "SpoolFull",
           "SpoolRecord", "SpoolStats", "load_spool_key", "wipe", "write_spool_key"]
