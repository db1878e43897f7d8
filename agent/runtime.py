"""What both agents share: signals, fatal errors from other threads, the status file."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import tempfile
from pathlib import Path
from typing import Any

from agent.errors import EXIT_FATAL, EXIT_OK

log = logging.getLogger("diode")



class Runtime:
    """Owns the stop event; any thread may call `fail` to stop with a fatal error."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.stop = asyncio.Event()
        self.fatal: str | None = None
        for sig in (signal.SIGTERM, signal.SIGINT):
            self.loop.add_signal_handler(sig, self._on_signal, sig)

    def _on_signal(self, sig: int) -> None:
        log.info("received %s; shutting down", signal.Signals(sig).name)
        self.stop.set()

    def fail(self, message: str) -> None:
        """Thread-safe: record the first fatal error and stop."""
        def _set() -> None:
            if self.fatal is None:
                self.fatal = message
            self.stop.set()
        self.loop.call_soon_threadsafe(_set)

    @property
    def exit_code(self) -> int:
        return EXIT_FATAL if self.fatal else EXIT_OK


def write_status(path: Path | None, status: dict[str, Any]) -> None:
    """Atomically replace the status file that `diode status` reads."""
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".status-")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(status, f)
        os.replace(tmp, path)
    except OSError:
        os.unlink(tmp)
        raise
