"""`diode status`: one screen of a running agent's state, read from its status file."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from agent.protocols import ADAPTERS

_SECTIONS = tuple((a.name, a.status_section) for a in ADAPTERS)


def _load(path: Path) -> dict[str, Any] | None:
    try:
        data: dict[str, Any] = json.loads(path.read_text())
        return data
    except FileNotFoundError:
        print(f"diode status: {path} not found. Is the agent running with [status] file = "
              f'"{path}" in its config?', file=sys.stderr)
    except (OSError, ValueError) as exc:
        print(f"diode status: cannot read {path}: {exc}", file=sys.stderr)
    return None


def _spool_lines(sp: dict[str, Any] | None) -> list[str]:
    if not sp:
        return ["spool           none (in-memory queue)"]
    age = sp.get("oldest_age_s")
    lines = [f"spool           {sp['fill_bytes'] / 1e6:.1f} MB of {sp['max_bytes'] / 1e6:.0f} MB "
             f"({sp['fill_fraction']:.0%}), {sp['records']} records, oldest "
             f"{'-' if age is None else f'{age:.1f} s'}",
             f"spool drops     oldest {sp['dropped_oldest']}  conflated "
             f"{sp['dropped_conflated']}  disk full {sp.get('dropped_full', 0)}  torn tail "
             f"{sp['torn_tail']}  damaged {sp['damaged']}"]
    limit = sp.get("limit_bytes", sp["max_bytes"])
    if sp.get("disk_full") or limit < sp["max_bytes"]:
        lines.append(f"spool disk      {'FULL, ' if sp.get('disk_full') else ''}bounded at "
                     f"{limit / 1e6:.1f} MB by its file system (full {sp.get('disk_full_episodes', 0)}"
                     " times). Fix: free space or lower [spool] max_bytes")
    return lines


def _numbers(d: dict[str, Any]) -> str:
    return "  ".join(f"{k} {v}" for k, v in d.items()
                     if isinstance(v, int | float) and not isinstance(v, bool))


def _sink_lines(key: str, sink: dict[str, Any]) -> list[str]:
    """Any protocol's sink: its state and numbers; a table of tables (e.g. a sink's
    collectors) one line each, with their spools."""
    out = [f"sink            {key}: {sink.get('state')}  {_numbers(sink)}".rstrip()]
    for part in sink.values():
        if isinstance(part, dict) and part and all(isinstance(v, dict) for v in part.values()):
            for name, sub in part.items():
                out.append(f"  {name}: {sub.get('state', '')}  {_numbers(sub)}".rstrip())
                if sub.get("spool"):
                    out.extend("  " + ln for ln in _spool_lines(sub["spool"]))
    if sink.get("spool"):
        out.extend(_spool_lines(sink["spool"]))
    return out


def _tx_log_lines(entries: list[dict[str, Any]], last: int = 5) -> list[str]:
    """TX's latest warnings and errors, newest last."""
    out = []
    for e in entries[-last:]:
        at = time.strftime("%H:%M:%S", time.localtime(float(e.get("time", 0))))
        more = f" (+{e['suppressed']} suppressed)" if e.get("suppressed") else ""
        out.append(f"TX log          {at} {e.get('level')} {e.get('logger')}: "
                   f"{e.get('message')}{more}")
    return out


def stale(st: dict[str, Any], now: float) -> str | None:
    """A warning when the file is older than its agent would let it get, else None."""
    age = now - float(st.get("time", 0))
    interval = st.get("status_interval")
    limit = max(3 * float(interval), 5.0) if isinstance(interval, int | float) else 10.0
    if age <= limit:
        return None
    every = f"every {float(interval):g} s" if isinstance(interval, int | float) else "regularly"
    return (f"WARNING: STALE status: written {age:.0f} s ago, and the agent rewrites it "
            f"{every}. The agent is stopped, stuck, or cannot write the file: what follows "
            "is its last state, not the present one")


def render(st: dict[str, Any], now: float) -> str:
    age = now - float(st.get("time", 0))
    warning = stale(st, now)
    lines = ([warning] if warning else []) + [
        f"role            {st.get('role', '?').upper()}",
        f"config          {st.get('config')}",
        f"key fingerprint {st.get('key_fingerprint')}",
        f"status age      {age:.1f} s" + ("   (STALE: is the agent running?)" if warning else "")]
    if st.get("role") == "rx":
        hb = st.get("last_heartbeat_age_s")
        lines += [f"link state      {st.get('link_state')}",
                  f"last heartbeat  {'never' if hb is None else f'{hb:.1f} s ago'}",
                  f"datagram loss   {float(st.get('datagram_loss') or 0):.2%}",
                  f"TX epoch        {st.get('epoch')}"]
        c = st.get("counters", {})
        lines.append("link counters   " + "  ".join(f"{k} {v}" for k, v in c.items()))
        link = st.get("link") or {}
        lines.append(f"missed frames   recovered {link.get('recovered', 0)}  still expected "
                     f"{st.get('missing_frames', 0)}  given up {link.get('missed', 0)}")
        if st.get("transport"):
            lines.append("transport       " + "  ".join(f"{k} {v}" for k, v in
                                                      st["transport"].items()))
        tx = st.get("tx") or {}
        known = tx.get("last_known_sources") or {}
        hb_age = tx.get("heartbeat_age_s")
        for name, state in (tx.get("sources") or {}).items():
            if state == "unknown" and name in known:
                ago = "" if hb_age is None else f", {float(hb_age):.0f} s ago"
                state = f"unknown (link DOWN; last known {known[name]}{ago})"
            lines.append(f"TX source       {name}: {state}")
        for name, sink in (st.get("sinks") or {}).items():
            lines.append(f"sink            mqtt:{name}: {sink.get('state')}  published "
                         f"{sink.get('published')}  dropped {sink.get('queue_dropped')}  "
                         f"outages {sink.get('outages')}")
            if sink.get("spool"):
                lines.extend(_spool_lines(sink["spool"]))
        for protocol, section in _SECTIONS:
            if section != "sinks":
                for name, sink in (st.get(section) or {}).items():
                    lines.extend(_sink_lines(f"{protocol}:{name}", sink))
        lines.extend(_tx_log_lines(st.get("tx_log") or []))
    else:
        lines.append(f"epoch           {st.get('epoch')}")
        for name, state in (st.get("sources") or {}).items():
            lines.append(f"source          {name}: {state}")
        for name, queue in (st.get("queues") or {}).items():
            lines.append(f"queued          {name}: {queue.get('queued')}")
            if queue.get("last_error"):  # a source that could not connect: cause and fix
                lines.append(f"last error      {name}: {queue['last_error']}")
            if queue.get("cert_expires"):
                lines.append(f"certificate     {name}: {queue.get('cert_thumbprint')} expires "
                             f"{queue['cert_expires'][:10]} ({queue.get('cert_days_left')} "
                             "days)")
            lines.extend(_spool_lines(queue.get("spool")))
            for dev, d in (queue.get("devices") or {}).items():  # polled sources (Modbus)
                cycles = ", ".join(f"{ms} ms (every {p} s)"
                                   for p, ms in (d.get("cycle_ms") or {}).items())
                lines.append(f"device          {name}/{dev}: {d.get('state')}  "
                             f"{d.get('requests_per_cycle')} requests a cycle  cycle "
                             f"{cycles or '-'}  no answers {d.get('no_answers')}")
        c = st.get("counters", {})
        if "recovery_bytes" in c:
            lines.append(f"recovery window {c['recovery_span_ms'] / 1000:.1f} s, "
                         f"{c['recovery_bytes'] / 1e6:.1f} MB kept; {c['resent']} frames resent "
                         f"in {c['recovery_cycles']} cycles")
        lines.append("counters        " + "  ".join(f"{k} {v}" for k, v in c.items()))
    board = st.get("board") or {}
    for led, pattern in (board.get("leds") or {}).items():
        lines.append(f"LED {led:<11} {pattern}")
    if "watchdog" in board:
        lines.append(f"watchdog        {board['watchdog']}")
    return "\n".join(lines)


def show_status(path: Path, as_json: bool) -> int:
    st = _load(path)
    if st is None:
        return 1
    now = time.time()
    warning = stale(st, now)
    if warning and as_json:
        print(f"diode status: {path}: {warning}", file=sys.stderr)
    print(json.dumps(st) if as_json else render(st, now))
    return 0
