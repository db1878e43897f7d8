"""TX's copy of the last crawled model, on its data partition.

A TX restart against an unchanged server need not crawl it again: the source
loads this file at start, sends the model at once (so a mirror that lost it
serves it before TX has even connected), and on connecting only checks the
server's fingerprint (agent/opcua/fingerprint.py, three requests). A changed
fingerprint means a crawl, as without a cache. The file is written after each
crawl, atomically (a new file renamed over the old one), 0600.

What it holds (CBOR): the endpoint it was crawled from and the subtrees, the
model as the link carries it (compressed snapshot), the variables to monitor
with their MinimumSamplingInterval, the children digests the change watch
compares with, and the fingerprint's probe and digest. A file that does not
decode, or was made for another endpoint or other subtrees, is ignored (logged
once): the source crawls.
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cbor2

from agent.opcua.fingerprint import Probe
from agent.opcua.model import ModelError, ModelSnapshot

log = logging.getLogger("diode.source.opcua")

FORMAT = "diode-opcua-model-cache/1"


@dataclass(frozen=True)
class CachedModel:
    endpoint: str
    subtrees: tuple[str, ...]
    model: bytes                  # ModelSnapshot.encode()'s bytes
    variables: tuple[str, ...]
    min_sampling: dict[str, float]
    children: dict[str, bytes]
    probe: Probe
    digest: str

    def snapshot(self) -> tuple[str, ModelSnapshot]:
        return ModelSnapshot.decode(self.model)


def save(path: Path, cached: CachedModel) -> None:
    data = cbor2.dumps({
        "format": FORMAT, "endpoint": cached.endpoint, "subtrees": list(cached.subtrees),
        "model": cached.model, "variables": list(cached.variables),
        "min_sampling": cached.min_sampling, "children": cached.children,
        "sample": list(cached.probe.sample), "containers": list(cached.probe.containers),
        "digest": cached.digest})
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".new")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        log.warning("model cache %s: cannot write it (%s); a TX restart will crawl the "
                    "server again", path, exc)


def load(path: Path, endpoint: str, subtrees: tuple[str, ...]) -> CachedModel | None:
    """The cached model of `endpoint` and `subtrees`, or None (absent, damaged, other)."""
    try:
        d: Any = cbor2.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    except Exception as exc:  # noqa: BLE001 - cbor2 and the disk raise several types
        log.warning("model cache %s does not decode (%s): crawling the server", path, exc)
        return None
    try:
        if d["format"] != FORMAT:
            raise ValueError(f"format {d['format']!r}")
        cached = CachedModel(
            d["endpoint"], tuple(d["subtrees"]), bytes(d["model"]), tuple(d["variables"]),
            {str(k): float(v) for k, v in d["min_sampling"].items()},
            {str(k): bytes(v) for k, v in d["children"].items()},
            Probe(tuple(d["sample"]), tuple(d["containers"])), str(d["digest"]))
        cached.snapshot()  # it must decode
    except (KeyError, TypeError, ValueError, AttributeError, ModelError) as exc:
        log.warning("model cache %s is not one this TX can use (%s): crawling the server",
                    path, exc)
        return None
    if cached.endpoint != endpoint or cached.subtrees != subtrees:
        log.info("model cache %s was made for %s %s: crawling the server", path,
                 cached.endpoint, list(cached.subtrees))
        return None
    return cached
