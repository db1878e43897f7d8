"""The registry: every protocol the agents carry.

A protocol is a package under agent/ that exposes an `Adapter`
(agent/adapter.py); adding one is a new package and its name in PROTOCOLS
(docs/ARCHITECTURE.md has the checklist). The agents, the config reader and
the status know protocols only through ADAPTERS.
"""

from __future__ import annotations

import importlib

from agent.adapter import Adapter

PROTOCOLS = ("mqtt", "opcua", "syslog", "modbus")

ADAPTERS: tuple[Adapter, ...] = tuple(importlib.import_module(f"agent.{name}").ADAPTER
                                      for name in PROTOCOLS)
BY_RECORD: dict[type, Adapter] = {t: a for a in ADAPTERS for t in a.record_types}
