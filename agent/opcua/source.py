"""TX side: one OPC UA server (asyncua client) turned into link records.

```
OT server ─► discover (GetEndpoints, no security) ─► check (policy offered, pinned certificate, clocks)
   ▲             ─► connect (security, user) ──── Refused ─► one line with the fix, "refused", backoff
   │             ─► fingerprint unchanged? keep the model : crawl (crawl.py) ─► ModelSnapshot
   │                                                                  ─► OpcuaModel chunks ─┐
   │             ─► read every value ─► subscribe ─► "connected" once the values are taken ├─► take()
   │                  (re-crawl every rebrowse_period, on a GeneralModelChangeEvent, or     │
   │                   when a check every change_check_period sees one: change_watch.py)    │
   └── lost / stale ◄── subscriptions (subscriptions.py) ─► OpcuaValues ───────────────────┤
                        event items on the notifiers (events.py) ─► OpcuaEvents ──────────┘
   backoff.py: every reconnect_min at first after a loss, then doubling to reconnect_max
       data changes handled per publish response, never dropped silently
       (bounded queue, overflow counted and logged)

run_carousel(): model chunks and the notifiers carried (OpcuaNotifiers) every
model_carousel_period, value keyframes every value_keyframe_period, paced to a share
of the link. Events are not state: never re-sent; a bounded queue of their own
(event_queue_limit, overflow counted in events_dropped).
```

Every request of a session (crawl, fingerprint, reads, monitored items) waits
its turn in the source's plant budget (agent/opcua/budget.py).

Values leave as OPC UA binary Variants, so custom structures cross as the
server encoded them (an ExtensionObject body the mirror passes through) and
TX needs no type dictionary.

Connecting (agent/opcua/commissioning.py): each try starts with GetEndpoints
without security, so a policy the server does not offer, a pinned server
certificate it does not present and a clock skew are named before any secure
channel; a server that refuses us (an untrusted TX certificate, an expired one,
bad credentials) or closes the connection during the secure-channel handshake
gives one line with the server, the TX certificate's thumbprint and the fix. The
source is then "refused" (in the heartbeat, so RX and IT see it; `last_error` in
the status) and tries again with backoff: the fix is made on the server, and TX
must pick it up without a restart. An unreachable server is retried with backoff
too, quickly at first when it was connected a moment ago (agent/opcua/backoff.py).

Reconnecting: if the server's address space still has the fingerprint taken
after the last crawl (agent/opcua/fingerprint.py: three requests), the cached
model is kept and no crawl is made. Either way the session reads every value
once, and reports "connected" only once those values are on the link, so RX's
mirror can take the values it received since the outage as current as soon as it
hears "connected" (agent/opcua/mirror.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import secrets
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from asyncua import Client, ua
from asyncua.crypto import security_policies
from asyncua.ua.ua_binary import variant_to_binary

from agent import heap
from agent.adapter import Carousel, SourceState
from agent.link import records
from agent.opcua import events, model_cache
from agent.opcua.backoff import Backoff
from agent.opcua.budget import PacedSession, PlantBudget
from agent.opcua.certs import cert_der, key_der
from agent.opcua.change_watch import RECRAWL_GAP, ChangeWatch
from agent.opcua.codec import (
    OpcuaEvent,
    OpcuaEvents,
    OpcuaModel,
    OpcuaModelPart,
    OpcuaNotifiers,
    OpcuaValue,
    OpcuaValues,
)
from agent.opcua.commissioning import (
    Discovery,
    Refused,
    check_endpoint,
    discover,
    explain,
    explain_silent,
    is_refusal,
    server_cert_warning,
    skew_warning,
)
from agent.opcua.config import OpcuaSourceConfig
from agent.opcua.crawl import Crawler, CrawlResult, Grow, Limits, read_limits
from agent.opcua.expiry import ExpiryWatch
from agent.opcua.fingerprint import Probe, fingerprint, probe_of
from agent.opcua.growth import PartWriter
from agent.opcua.model import ModelSnapshot, NodeRecord
from agent.opcua.namespaces import Renumbering
from agent.opcua.off_loop import OffLoopSession
from agent.opcua.raw_values import RawValue, raw_of
from agent.opcua.subscriptions import KEEPALIVE, Monitoring
from agent.opcua.ua import status

__all__ = ["OpcuaSource", "OpcuaSourceConfig", "SourceRefused"]

SourceRefused = Refused  # the name earlier versions exported

# The config's names (agent/opcua/config.py) -> asyncua
SECURITY_POLICIES: dict[str, Any] = {
    "None": None,
    "Basic256Sha256": security_policies.SecurityPolicyBasic256Sha256,
    "Aes128_Sha256_RsaOaep": security_policies.SecurityPolicyAes128Sha256RsaOaep,
    "Aes256_Sha256_RsaPss": security_policies.SecurityPolicyAes256Sha256RsaPss,
}
SECURITY_MODES = {"Sign": ua.MessageSecurityMode.Sign,
                  "SignAndEncrypt": ua.MessageSecurityMode.SignAndEncrypt}


log = logging.getLogger("diode.source.opcua")

NULL_VARIANT = variant_to_binary(ua.Variant())
REPEAT_LOG = 600.0  # seconds before the same connection failure is logged again
_NETWORK = (OSError, TimeoutError, ConnectionError, ua.UaError)
_HANDLE_BASE = 1 << 20  # our client handles; asyncua's own counter starts at 200


# -- helpers -----------------------------------------------------------------------


def entry(nid: str, raw: RawValue) -> OpcuaValue:
    """A value record's entry: a Read's or a notification's value (`raw_values`), with
    an absent Variant sent as the Null Variant."""
    variant, code, source, server = raw
    return (nid, NULL_VARIANT if variant is None else variant, code, source, server)


def entry_of(nid: str, dv: ua.DataValue) -> OpcuaValue:
    return entry(nid, raw_of(dv))


def _entry_size(e: OpcuaValue) -> int:
    return len(e[0]) + len(e[1]) + 24


# -- the source ----------------------------------------------------------------------


class OpcuaSource:
    """TX adapter for one OPC UA server.

    `take(now, limit)` hands out live records (new model versions first, then
    value batches); `run_carousel(push, rate_bps)` re-sends the model and value
    keyframes periodically. `state` goes into the heartbeat's sources map.
    """

    def __init__(self, cfg: OpcuaSourceConfig, wake: Callable[[], None] = lambda: None,
                 cache: Path | None = None) -> None:
        self.cfg = cfg
        self.key = f"opcua:{cfg.name}"
        self._wake = wake
        self.state = SourceState.STOPPED
        self.carousels = (
            Carousel("model", cfg.model_carousel_period, cfg.carousel_share,
                     lambda: self._counted(self.model_carousel(), "model_records")),
            Carousel("values", cfg.value_keyframe_period, cfg.carousel_share,
                     lambda: self._counted(self.value_keyframe(), "keyframe_records")),
            Carousel("notifiers", cfg.model_carousel_period, cfg.carousel_share,
                     lambda: self._counted(self.notifiers_carousel(), "notifier_records")))
        self.last_error: str | None = None
        self.last_error_at: float | None = None
        self._logged: tuple[str, float] = ("", 0.0)
        self._silent_closes = 0
        self._warned: set[str] = set()
        self.discovery: Discovery | None = None
        self.expiry = ExpiryWatch(f"TX's OPC UA client certificate for '{cfg.name}'",
                                  cfg.cert_file, cfg.cert_warn_days,
                                  "make a new one (diode opcua-cert) and trust it on the "
                                  "server", log) if cfg.cert_file is not None else None
        self.counters: dict[str, int] = dict.fromkeys((
            "connects", "outages", "connect_failures", "refusals", "crawls", "model_versions",
            "model_reuses", "nodes", "variables", "monitored_items", "monitor_errors", "changes",
            "value_records", "queue_dropped", "model_records", "keyframe_records",
            "carousel_records", "crawl_ms", "check_ms", "browse_requests", "read_requests",
            "model_events", "initial_reads", "subscriptions", "sampling_revised",
            "sampling_max_ms", "sampling_limited", "model_checks", "model_changes_seen",
            "model_checks_unconfirmed", "model_cache_loads", "events", "events_dropped",
            "event_records", "event_notifiers", "event_errors", "notifier_records",
            "model_bytes", "model_part_records"), 0)
        self.model: ModelSnapshot | None = None
        self._variables: list[str] = []
        self._print: tuple[Probe, str] | None = None  # the model's fingerprint: probe, digest
        self._queued = 0   # values ever put in _pending
        self._taken = 0    # values ever taken from it
        self.version: str | None = None
        self._model_chunks: list[OpcuaModel] = []
        self._live: deque[records.Record] = deque()
        self._pending: deque[OpcuaValue] = deque()
        self._events: deque[OpcuaEvent] = deque()
        self._notifiers: tuple[str, ...] | None = None  # announced; None: nothing yet
        self._event_drop_logged = 0.0
        self._last: dict[str, OpcuaValue] = {}   # what the link was given, per node
        self._min_sampling: dict[str, float] = {}
        self._crawled_at = 0.0
        self._cache = cache  # model_cache.py's file; None: no data partition
        self._cached: tuple[str | None, str] = (None, "")  # the version and digest saved
        self._model_data = b""
        self._children: dict[str, bytes] = {}  # what the last crawl saw; change_watch.py
        self._monitoring: Monitoring | None = None  # of the current session
        self._handle_ids = itertools.count(_HANDLE_BASE)  # never reused by a later session
        self.budget = PlantBudget(cfg.requests_per_second, self.counters)
        self._task: asyncio.Task[None] | None = None
        self._lost = asyncio.Event()
        self._model_event = asyncio.Event()
        self._stopping = False
        self._drop_logged = 0.0
        self.client: Client | None = None

    # -- interface -------------------------------------------------------------------

    async def start(self) -> None:
        self._stopping = False
        if not log.isEnabledFor(logging.DEBUG):
            # asyncua's client logs its own lines (tracebacks among them) for every failed
            # try, and its certificate checks warn on every try; the source logs each
            # failure once, with the cause and the fix (and expiry.py warns ahead).
            for name in ("asyncua.client", "asyncua.crypto.uacrypto"):
                logging.getLogger(name).setLevel(logging.CRITICAL + 1)
        if self.expiry is not None:
            self.expiry.tick(time.monotonic())
        if self._cache is not None and self.model is None:
            self._load_cache(self._cache)
        self._task = asyncio.create_task(self._run(), name=f"opcua-source-{self.cfg.name}")

    async def stop(self) -> None:
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        await self._disconnect()
        self.state = SourceState.STOPPED

    def waiting(self) -> int:
        return len(self._pending) + len(self._live) + len(self._events)

    def dropped(self) -> int:
        return self.counters["queue_dropped"] + self.counters["events_dropped"]

    def stats(self) -> dict[str, Any]:
        """The queue, and what an operator commissioning the channel needs: the state, the
        last connection error (with its fix), TX's certificate and its expiry."""
        out: dict[str, Any] = {"queued": self.waiting(), "state": str(self.state)}
        if self.last_error is not None:
            out["last_error"] = self.last_error
            out["last_error_at"] = self.last_error_at
        if self.expiry is not None:
            out.update(self.expiry.status())
        if self.discovery is not None and self.discovery.skew is not None:
            out["server_clock_skew"] = round(self.discovery.skew, 1)
        return out

    def tick(self) -> None:
        if self.expiry is not None:
            self.expiry.tick(time.monotonic())  # daily

    def framed(self, tags: list[object]) -> None:
        pass

    def rewind(self) -> None:
        pass  # values are state: the keyframes re-send them

    def close(self) -> None:
        pass

    def take(self, wall: float, limit: int) -> list[tuple[bytes | None, object]]:
        """Up to `limit` encoded records: model chunks of a new version first, then
        value batches. Values are state, held in memory: nothing to release."""
        return [(records.encode(rec), None) for rec in self._take(limit)]

    def _take(self, limit: int) -> list[records.Record]:
        out: list[records.Record] = []
        live = self._live
        while live and len(out) < limit:
            out.append(live.popleft())
        evs, budget_ = self._events, self.cfg.batch_bytes
        while evs and len(out) < limit:
            ebatch: list[OpcuaEvent] = []
            size_ = 0
            while evs and size_ < budget_:
                ebatch.append(evs.popleft())
                size_ += events.entry_size(ebatch[-1])
            out.append(OpcuaEvents(self.cfg.name, tuple(ebatch)))
            self.counters["event_records"] += 1
        pending, last, budget = self._pending, self._last, self.cfg.batch_bytes
        while pending and len(out) < limit:
            batch: list[OpcuaValue] = []
            size = 0
            while pending and size < budget:
                e = pending.popleft()
                batch.append(e)
                last[e[0]] = e
                size += _entry_size(e)
            self._taken += len(batch)
            out.append(OpcuaValues(self.cfg.name, False, tuple(batch)))
            self.counters["value_records"] += 1
        return out

    def model_carousel(self) -> Iterator[OpcuaModel]:
        """The current model's chunks (re-send); nothing before the first crawl."""
        chunks = self._model_chunks
        for rec in chunks:
            if chunks is not self._model_chunks:
                return  # a new version replaced it: that one went out live
            yield rec

    def notifiers_carousel(self) -> Iterator[OpcuaNotifiers]:
        """The notifiers TX carries the events of, once announced."""
        if self._notifiers is not None:
            yield OpcuaNotifiers(self.cfg.name, self._notifiers)

    def value_keyframe(self) -> Iterator[OpcuaValues]:
        """The last value of every node the link was given, re-sent in batches.

        Read at the moment each batch is taken, so a keyframe never carries a value
        older than one already handed to the link. Nothing while disconnected from the
        server: the values would be stale, and RX shows that by their status.
        """
        if self.state != SourceState.CONNECTED:
            return
        keys = list(self._last)
        budget = self.cfg.batch_bytes
        i = 0
        while i < len(keys):
            if self.state != SourceState.CONNECTED:
                return
            batch: list[OpcuaValue] = []
            size = 0
            while i < len(keys) and size < budget:
                e = self._last.get(keys[i])
                i += 1
                if e is not None:
                    batch.append(e)
                    size += _entry_size(e)
            if batch:
                yield OpcuaValues(self.cfg.name, True, tuple(batch))

    def _counted(self, records_: Iterator[Any], counter: str) -> Iterator[bytes]:
        for rec in records_:
            self.counters["carousel_records"] += 1
            self.counters[counter] += 1
            yield records.encode(rec)

    # -- connection loop ---------------------------------------------------------------

    async def _run(self) -> None:
        cfg = self.cfg
        backoff = Backoff(cfg.reconnect_min, cfg.reconnect_max, cfg.reconnect_fast_for)
        while not self._stopping:
            self.state = SourceState.CONNECTING
            try:
                await self._connect()
            except Refused as exc:
                await self._refused(str(exc), exc.cause, backoff.refused())
                continue
            except Exception as exc:  # a network error, or whatever asyncua raises: never a
                # silent end of the source
                if not self.counters["connects"] and not self.counters["connect_failures"]:
                    self.counters["outages"] += 1  # the first try after start failed
                self.counters["connect_failures"] += 1
                self.state = SourceState.DISCONNECTED
                delay = backoff.failed(time.monotonic())
                self._failed(f"{cfg.label}: cannot connect: {_describe(exc)}", delay)
                await asyncio.sleep(delay)
                continue
            self.counters["connects"] += 1
            refusal: Refused | None = None
            try:
                await self._session(backoff)
            except Refused as exc:
                refusal = exc
            except _NETWORK as exc:
                self._failed(f"{cfg.label}: connection lost: {_describe(exc)}", None)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("%s: unexpected error; reconnecting", cfg.label)
            reached = self.state == SourceState.CONNECTED
            if reached:
                self.counters["outages"] += 1
            self.state = SourceState.DISCONNECTED
            await self._disconnect()
            if refusal is not None:
                await self._refused(str(refusal), refusal.cause, backoff.refused())
                continue
            # A server lost after it served us is most likely restarting: retry it quickly
            # for a while. One that fails its sessions before that is backed off.
            now = time.monotonic()
            if reached:
                backoff.lost(now)
            await asyncio.sleep(backoff.failed(now))

    def _note(self, line: str, cause: str | None = None) -> bool:
        """Remember `line` as the last error; True when it is worth logging now (a new
        cause, or REPEAT_LOG seconds since this one was logged)."""
        now = time.monotonic()
        self.last_error, self.last_error_at = line, time.time()
        cause = cause or line
        last, at = self._logged
        if cause == last and now - at < REPEAT_LOG:
            return False
        self._logged = (cause, now)
        return True

    def _failed(self, line: str, delay: float | None) -> None:
        if self._note(line):
            log.warning("%s%s", line, "" if delay is None else f"; retrying in {delay:.1f} s "
                        "(this line is not repeated while the cause stays the same)")

    async def _refused(self, message: str, cause: str, delay: float) -> None:
        self.state = SourceState.REFUSED
        self.counters["refusals"] += 1
        if self._note(message, cause):
            log.error("%s. Trying again in %.0f s, then less and less often", message, delay)
        await asyncio.sleep(delay)

    def _warn_once(self, line: str | None) -> None:
        if line is not None and line not in self._warned:
            self._warned.add(line)
            log.warning("%s", line)

    async def _connect(self) -> None:
        """Discover, check, open a session; Refused with the fix, or a network error."""
        cfg = self.cfg
        policy = SECURITY_POLICIES[cfg.security_policy]
        mode = SECURITY_MODES[cfg.security_mode] if policy is not None else None
        try:
            disc = self.discovery = await asyncio.wait_for(discover(cfg.endpoint, cfg.timeout),
                                                           cfg.timeout * 2)
        except _NETWORK:
            self._silent_closes = 0  # not even discovery: the server is away, not refusing
            raise
        self._warn_once(skew_warning(cfg, disc))
        ep = check_endpoint(cfg, disc, policy.URI if policy is not None else None, mode)
        if ep is not None:
            self._warn_once(server_cert_warning(cfg, ep, disc))
        # The health probe times out after watchdog_intervall: a busy server must not
        # look dead after one slow second (asyncua's default).
        client = Client(cfg.endpoint, timeout=cfg.timeout, watchdog_intervall=cfg.timeout)
        client.application_uri = cfg.application_uri
        client.name = client.description = f"diode TX {cfg.name}"
        client.product_uri = "urn:diode:tx"
        if cfg.username is not None:
            client.set_user(cfg.username)
            client.set_password(cfg.password or "")
        if policy is not None:
            assert cfg.cert_file is not None and cfg.key_file is not None and ep is not None
            try:
                cert, key = cert_der(cfg.cert_file), key_der(cfg.key_file)
            except (OSError, ValueError) as exc:
                raise Refused(f"{cfg.label}: cannot load TX's certificate or key: {exc}. Fix: "
                              "point cert_file/key_file at the files made by `diode "
                              "opcua-cert`") from None
            # The certificate the endpoint presented (check_endpoint compared it with a pin):
            # asyncua would otherwise fetch the endpoints a second time.
            await client.set_security(policy, cert, key, server_certificate=ep.ServerCertificate,
                                      mode=mode or ua.MessageSecurityMode.SignAndEncrypt)
        self._lost.clear()
        client.connection_lost_callback = self._on_connection_lost
        try:
            # asyncua may wait for an answer that never comes once the server dropped the
            # channel: every step has a deadline, so a try always ends.
            await asyncio.wait_for(client.connect(), cfg.timeout * 2)
        except ua.UaStatusCodeError as exc:
            client.disconnect_socket()
            if is_refusal(exc.code):
                raise Refused(explain(cfg, exc.code, disc), status(exc.code).name) from None
            raise
        except AssertionError:
            # asyncua 2 cannot read an OpenSecureChannel answered with a ServiceFault (what
            # node-opcua sends for a certificate it does not trust): NotEnoughData, then a
            # failed assertion. The server refused the secure channel.
            client.disconnect_socket()
            if policy is not None:
                raise Refused(explain_silent(cfg, "answered with an error asyncua cannot "
                                             "read")) from None
            raise ConnectionError("the server's answer to OpenSecureChannel could not be "
                                  "read") from None
        except (ConnectionError, TimeoutError, OSError) as exc:
            client.disconnect_socket()
            # The server answered GetEndpoints a moment ago, then closed or went silent
            # during the secure handshake: what servers do to a certificate they do not
            # trust. Twice in a row, so a server that restarts in between is not blamed.
            if policy is not None:
                self._silent_closes += 1
                if self._silent_closes >= 2:
                    what = ("stopped answering" if isinstance(exc, TimeoutError)
                            else "closed the connection")
                    raise Refused(explain_silent(cfg, what)) from None
            raise
        self._silent_closes = 0
        self.client = client

    async def _on_connection_lost(self, exc: Exception) -> None:
        self._lost.set()

    async def _disconnect(self) -> None:
        client, self.client = self.client, None
        if client is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.disconnect(), 5)

    # -- one session -------------------------------------------------------------------

    async def _session(self, backoff: Backoff) -> None:
        client = self.client
        assert client is not None
        cfg = self.cfg
        session = PacedSession(OffLoopSession(client.uaclient.session), self.budget)
        limits = await read_limits(session)
        self.state = SourceState.CRAWLING
        variables, crawled, read = await self._model_for(client, session, limits)
        # One bulk read gives RX every value now (the crawl that grew the model read them
        # with the nodes); creating thousands of monitored items can take a busy server
        # many seconds (their first notifications repeat these values, which is harmless).
        if not read:
            await self._read_values(session, limits, variables)
        if crawled:  # what the next reconnect compares with; after the values, which IT waits for
            await self._take_fingerprint(session, limits)
        read_up_to = self._queued
        watch = self._monitoring = Monitoring(
            client.uaclient.session, cfg, limits, self.budget, self._handle_ids, self.counters,
            self._on_changes, self._on_model_event, self._on_status, self._on_event)
        await watch.monitor(variables, self._min_sampling)
        await self._monitor_events(watch)
        await self._until_taken(read_up_to)
        self.state = SourceState.CONNECTED
        backoff.connected()
        self._logged = ("", 0.0)  # the next outage is news, even with the same cause
        log.info("%s: connected; %d nodes, %d variables monitored in %d subscriptions, model "
                 "%s; %d requests (%.1f s waiting for the plant budget)", cfg.label,
                 len(self.model.nodes) if self.model else 0, len(watch.handle_of),
                 len(watch.subs), self.version, self.counters["requests"], self.budget.waited)
        changes = self._change_watch()
        next_browse = time.monotonic() + cfg.rebrowse_period
        next_check = time.monotonic() + cfg.change_check_period
        seen = False  # a check saw a change: the crawl confirms it
        stale_after = max(KEEPALIVE * 3, cfg.timeout)
        while True:
            now = time.monotonic()
            wait = max(0.05, min(1.0, next_browse - now, next_check - now))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wait_any(), wait)
            if self._lost.is_set():
                raise ConnectionError("the server connection was lost")
            now = time.monotonic()
            if watch.stale(now, stale_after):
                raise ConnectionError(f"no publish response for {stale_after:.0f} s")
            if self._model_event.is_set() or now >= next_browse:
                self._model_event.clear()
                result = await self._crawl(client, session, limits)
                encoded = await asyncio.to_thread(result.snapshot.encode)
                if encoded[0] != self.version:
                    self._install(result, encoded)
                    await watch.unmonitor(set(result.variables))
                    await watch.monitor(result.variables, result.min_sampling)
                    changes = self._change_watch()
                    await self._monitor_events(watch)
                elif seen:
                    # the watch learnt what it saw: the same difference asks no more crawls
                    self.counters["model_checks_unconfirmed"] += 1
                seen = False
                await self._take_fingerprint(session, limits)
                next_browse = time.monotonic() + cfg.rebrowse_period
            elif changes is not None and now >= next_check and not seen:
                self.counters["model_checks"] += 1
                reason = await changes.check(session, limits, await self._namespaces(client))
                next_check = time.monotonic() + cfg.change_check_period
                if reason is not None:
                    seen = True
                    self.counters["model_changes_seen"] += 1
                    # a crawl costs the plant: at most a fifth of the time crawling
                    gap = max(RECRAWL_GAP, 5 * self.counters["crawl_ms"] / 1000)
                    next_browse = max(time.monotonic(), self._crawled_at + gap)
                    log.info("%s: address space changed (%s): crawling in %.0f s", cfg.label,
                             reason, next_browse - time.monotonic())

    async def _model_for(self, client: Client, session: PacedSession, limits: Limits
                         ) -> tuple[list[str], bool, bool]:
        """The variables to subscribe; whether they are of a new crawl (else of the cached
        model, the server's fingerprint unchanged); whether their values are queued (the
        crawl that grew the model read them)."""
        cfg = self.cfg
        if self._print is not None and self.model is not None:
            started = time.monotonic()
            probe, digest = self._print
            namespaces = await self._namespaces(client)
            now = await fingerprint(session, limits, namespaces, cfg.subtrees, probe)
            self.counters["check_ms"] = int((time.monotonic() - started) * 1000)
            if now == digest:
                self.counters["model_reuses"] += 1
                log.info("%s: address space unchanged (fingerprint of %d nodes and %d objects' "
                         "children, %d ms): model %s kept, no crawl", cfg.label,
                         len(probe.sample), len(probe.containers), self.counters["check_ms"],
                         self.version)
                return self._variables, False, False
            log.info("%s: address space fingerprint changed: crawling again", cfg.label)
        # The first model of this process: its nodes go out as they are read (growth.py)
        writer = None if self.model is not None else PartWriter(
            cfg.name, secrets.token_hex(4), cfg.model_chunk_size, self._push_part)

        def grow(namespaces: Sequence[str], nodes: list[NodeRecord],
                 values: list[tuple[str, RawValue]]) -> None:
            assert writer is not None
            writer(namespaces, nodes)
            self._queue_values(values)
        result = await self._crawl(client, session, limits, None if writer is None else grow)
        self._install(result, await asyncio.to_thread(result.snapshot.encode), writer)
        return result.variables, True, writer is not None

    def _load_cache(self, path: Path) -> None:
        """The model of the last run goes out at once; connecting only checks it."""
        cached = model_cache.load(path, self.cfg.endpoint, self.cfg.subtrees)
        if cached is None:
            return
        _, snap = cached.snapshot()
        self._install(CrawlResult(snap, list(cached.variables), {}, cached.min_sampling,
                                  cached.children))
        self._print = (cached.probe, cached.digest)
        self._cached = (self.version, cached.digest)
        self.counters["model_cache_loads"] += 1
        log.info("%s: model %s (%d nodes) from the cache %s, sent at once; the server's "
                 "fingerprint decides whether it still holds", self.cfg.label, self.version,
                 len(snap.nodes), path)

    def _save_cache(self) -> None:
        if self._cache is None or self._print is None or self.model is None:
            return
        probe, digest = self._print
        if self._cached == (self.version, digest):
            return
        model_cache.save(self._cache, model_cache.CachedModel(
            self.cfg.endpoint, self.cfg.subtrees, self._model_data, tuple(self._variables),
            self._min_sampling, self._children, probe, digest))
        self._cached = (self.version, digest)

    def _change_watch(self) -> ChangeWatch | None:
        """A watch on the current model (None: change_check_period 0)."""
        if self.model is None or not self.cfg.change_check_period:
            return None
        return ChangeWatch(self.model, self._children)

    async def _take_fingerprint(self, session: PacedSession, limits: Limits) -> None:
        """After a crawl: what the next reconnect compares with."""
        if self.model is None:
            return
        probe = probe_of(self.model)
        digest = await fingerprint(session, limits, list(self.model.namespaces),
                                   self.cfg.subtrees, probe)
        self._print = (probe, digest)
        await asyncio.to_thread(self._save_cache)  # a model of 100,000 nodes, and an fsync

    async def _until_taken(self, mark: int) -> None:
        """Wait (at most `timeout`) until the link took the values queued up to `mark`: the
        heartbeat's "connected" must not overtake the values read in this session."""
        deadline = time.monotonic() + self.cfg.timeout
        while self._taken < mark and self._pending and time.monotonic() < deadline:
            self._wake()
            await asyncio.sleep(0.01)

    async def _wait_any(self) -> None:
        lost = asyncio.create_task(self._lost.wait())
        model = asyncio.create_task(self._model_event.wait())
        try:
            await asyncio.wait({lost, model}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            lost.cancel()
            model.cancel()

    async def _namespaces(self, client: Client) -> list[str]:
        await self.budget.request()
        namespaces: list[str] = await client.get_namespace_array()
        return namespaces

    async def _crawl(self, client: Client, session: PacedSession, limits: Limits,
                     grow: Grow | None = None) -> CrawlResult:
        started = time.monotonic()
        crawler = Crawler(session, limits)
        namespaces = await self._namespaces(client)
        try:
            result = await crawler.crawl([ua.NodeId.from_string(s) for s in self.cfg.subtrees],
                                         namespaces, grow)
        except ValueError as exc:
            raise SourceRefused(f"{self.cfg.label}: {exc}. Fix: correct subtrees") from None
        c = self.counters
        c["crawls"] += 1
        self._crawled_at = time.monotonic()
        c["crawl_ms"] = int((time.monotonic() - started) * 1000)
        heap.settle()  # the model, kept until the next crawl
        c["browse_requests"] += crawler.counters["browse_requests"]
        c["read_requests"] += crawler.counters["read_requests"]
        return result

    def _push_part(self, part: OpcuaModelPart) -> None:
        self._live.append(part)
        self.counters["model_part_records"] += 1
        self._wake()

    def _install(self, result: CrawlResult, encoded: tuple[str, bytes] | None = None,
                 grown: PartWriter | None = None) -> None:
        """`encoded`: the snapshot's `encode()`, when the caller made it off the loop.
        `grown`: the crawl's nodes went out as parts; its end part names the version,
        and the carousel sends the snapshot itself (growth.py)."""
        snap = result.snapshot
        version, data = encoded if encoded is not None else snap.encode()
        self.counters["nodes"] = len(snap.nodes)
        self.counters["variables"] = len(result.variables)
        self._variables = result.variables
        self._min_sampling = result.min_sampling
        self._children = result.children
        if version == self.version:
            return
        old = self.version
        if self.model is not None and self.model.namespaces != snap.namespaces:
            self._renumber(Renumbering.of(self.model.namespaces, snap.namespaces))
        self.model, self.version, self._model_data = snap, version, data
        from agent.opcua.model import split
        self._model_chunks = split(self.cfg.name, version, data, self.cfg.model_chunk_size)
        self.counters["model_versions"] += 1
        self.counters["model_bytes"] = len(data)  # the current model, compressed: one carousel round
        # A new version goes out now, ahead of values for its new nodes.
        if grown is not None:
            grown.end(version)
        else:
            self._live.extend(self._model_chunks)
            self.counters["model_records"] += len(self._model_chunks)
        keep = set(result.variables)
        for nid in [n for n in self._last if n not in keep]:
            del self._last[nid]
        if old is not None:
            log.info("%s: address space changed: model %s -> %s (%d nodes)", self.cfg.label,
                     old, version, len(snap.nodes))
        self._wake()

    def _renumber(self, renumbering: Renumbering) -> None:
        """The server's namespace array changed: what TX holds under node ids moves to the
        ids of the new array (agent/opcua/namespaces.py), before the new model goes out.
        Values waiting and the keyframe's values follow their node; a monitored item
        whose id names another node now (or none) stops counting at once and is made
        again under its node's new id (`_resubscribe`)."""
        def moved(e: OpcuaValue) -> OpcuaValue | None:
            nid = renumbering.node(e[0])
            return e if nid == e[0] else None if nid is None else (nid, *e[1:])

        pending = [m for m in map(moved, self._pending) if m is not None]
        self._taken += len(self._pending) - len(pending)  # never given to the link
        self._pending = deque(pending)
        self._last = {m[0]: m for m in map(moved, self._last.values()) if m is not None}
        if self._monitoring is not None:
            self._monitoring.renumbered(renumbering)

    async def _read_values(self, session: PacedSession, limits: Limits, variables: list[str]
                           ) -> None:
        step = limits.read
        for i in range(0, len(variables), step):
            chunk = variables[i:i + step]
            params = ua.ReadParameters()
            params.TimestampsToReturn = ua.TimestampsToReturn.Both
            for nid in chunk:
                rv = ua.ReadValueId()
                rv.NodeId = ua.NodeId.from_string(nid)
                rv.AttributeId = ua.AttributeIds.Value
                params.NodesToRead.append(rv)
            values = await session.read_raw(params)
            self._queue_values(list(zip(chunk, values, strict=True)))

    def _queue_values(self, values: list[tuple[str, RawValue]]) -> None:
        """Values read (not notified): RX gets them now."""
        pending = self._pending
        for nid, raw in values:
            if len(pending) >= self.cfg.queue_limit:
                self._dropped()
                continue
            pending.append(entry(nid, raw))
            self._queued += 1
        self.counters["initial_reads"] += len(values)
        self._wake()

    # -- subscription ------------------------------------------------------------------

    def _on_changes(self, items: list[ua.MonitoredItemNotification]) -> None:
        pending = self._pending
        node_of = self._monitoring.node_of if self._monitoring is not None else {}
        limit = self.cfg.queue_limit
        was_empty = not pending
        n = 0
        for item in items:
            nid = node_of.get(item.ClientHandle)
            if nid is None:
                continue
            if len(pending) >= limit:
                self._dropped()
                continue
            pending.append(entry_of(nid, item.Value))
            n += 1
        self._queued += n
        self.counters["changes"] += n
        if was_empty and n:
            self._wake()

    async def _monitor_events(self, watch: Monitoring) -> None:
        """Event items on the model's notifiers (again after a new model: the server's
        own event types may have new fields), then announce the notifiers carried."""
        if not self.cfg.events:
            self._announce(())
            return
        wanted = events.notifiers(self.model)
        sel = events.selection(self.model)
        if watch.event_of and next(iter(watch.event_of.values()))[1] != sel.names:
            await watch.unmonitor_events(set())
        else:
            await watch.unmonitor_events(set(wanted))
        await watch.monitor_events(wanted, sel.event_filter(), sel.names)
        self._announce(tuple(watch.event_notifiers))

    def _announce(self, notifiers: tuple[str, ...]) -> None:
        if notifiers == self._notifiers:
            return
        self._notifiers = notifiers
        self._live.append(OpcuaNotifiers(self.cfg.name, notifiers))
        self.counters["notifier_records"] += 1
        log.info("%s: carrying the events of %d notifiers", self.cfg.label, len(notifiers))
        self._wake()

    def _on_event(self, notifier: str, names: tuple[str, ...], fields: list[ua.Variant]
                  ) -> None:
        evs = self._events
        if len(evs) >= self.cfg.event_queue_limit:
            self.counters["events_dropped"] += 1
            now = time.monotonic()
            if now - self._event_drop_logged > 5:
                self._event_drop_logged = now
                log.error("%s: event queue full (%d); dropping events (%d so far). The link "
                          "is slower than the server's events: raise [link] bitrate or "
                          "event_queue_limit", self.cfg.label, self.cfg.event_queue_limit,
                          self.counters["events_dropped"])
            return
        try:
            entry = events.event_entry(notifier, names, fields)
        except Exception:  # noqa: BLE001 - one odd event must not end the session
            self.counters["event_errors"] += 1
            return
        was_empty = not evs
        evs.append(entry)
        self.counters["events"] += 1
        if was_empty:
            self._wake()

    def _dropped(self) -> None:
        self.counters["queue_dropped"] += 1
        now = time.monotonic()
        if now - self._drop_logged > 5:
            self._drop_logged = now
            log.error("%s: value queue full (%d); dropping changes (%d so far). The link is "
                      "slower than the OT server's changes: raise [link] bitrate, raise "
                      "sampling_interval or narrow subtrees", self.cfg.label,
                      self.cfg.queue_limit, self.counters["queue_dropped"])

    def _on_model_event(self) -> None:
        self.counters["model_events"] += 1
        self._model_event.set()

    def _on_status(self, status: ua.StatusCode) -> None:
        if not status.is_good():
            log.warning("%s: subscription status %s", self.cfg.label, status.name)
            self._lost.set()


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ua.UaStatusCodeError):
        return status(exc.code).name
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__

