"""TX side: the monitored items of one session, within the plant budget.

```
variables ─► sampling asked: max(sampling_interval, the node's MinimumSamplingInterval)
   ▼
create monitored items, MaxMonitoredItemsPerCall at a time, each request within the
   │  budget (budget.py), into subscriptions of at most items_per_subscription items
   ▼                                           (or the server's MaxMonitoredItemsPerSubscription)
BatchSubscription ─► publish response whole ─► on_changes(items) / on_status()
   events: of an item of monitor_events() ─► on_plant_event(notifier, names, fields)
           of the model-change item        ─► on_event() (a re-crawl)
```

A subscription does not use asyncua's async iterator (it drops the oldest item
silently when its queue is full) nor its per-notification handler tasks:
`BatchSubscription` takes each publish response whole and hands its changes on
with their status code and both timestamps.

Items asked more slowly than `sampling_interval` because the node or the server
says it cannot sample faster are counted (`sampling_limited`). What the server
revised: an item it samples more slowly than asked coalesces faster changes on
the plant, before TX sees them. They are counted (`sampling_revised`, the
slowest in `sampling_max_ms`) and logged once per request run.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable, Iterator
from typing import Any

from asyncua import ua
from asyncua.common.subscription import Subscription
from asyncua.common.utils import ServiceError

from agent.opcua.budget import PlantBudget
from agent.opcua.config import OpcuaSourceConfig
from agent.opcua.crawl import Limits
from agent.opcua.namespaces import Renumbering

log = logging.getLogger("diode.source.opcua")

KEEPALIVE = 5.0  # seconds between subscription keep-alives
# Notifications per publish response: asyncua decodes a response in one step of TX's
# event loop, and the first one of a subscription of 10,000 items, whole, held it for
# seconds (late heartbeats). The server sends the rest in the next responses.
PER_PUBLISH = 1000
TRIGGERS = {"StatusValue": ua.DataChangeTrigger.StatusValue,
            "StatusValueTimestamp": ua.DataChangeTrigger.StatusValueTimestamp}
ERRORS_LOGGED = 5  # items that cannot be monitored, named in the log per request run

EVENT_QUEUE = 1000  # events each event item may hold on the server between publishes

OnChanges = Callable[[list[ua.MonitoredItemNotification]], None]
OnEvents = Callable[[list[ua.EventFieldList]], None]
# notifier, the names of the filter's fields, one event's fields
OnPlantEvent = Callable[[str, tuple[str, ...], list[ua.Variant]], None]


class _NoHandler:
    def datachange_notification(self, node: Any, val: Any, data: Any) -> None:
        pass


class BatchSubscription(Subscription):
    """Takes each publish response whole, in the client's loop: no task per
    notification, no bounded iterator queue."""

    def __init__(self, session: Any, params: ua.CreateSubscriptionParameters,
                 on_changes: OnChanges, on_event: OnEvents,
                 on_status: Callable[[ua.StatusCode], None]) -> None:
        super().__init__(session, params, _NoHandler())
        self._on_changes, self._on_event, self._on_status = on_changes, on_event, on_status
        self.items = 0  # monitored items it holds

    async def create_items(self, requests: list[ua.MonitoredItemCreateRequest]
                           ) -> list[ua.MonitoredItemCreateResult]:
        """CreateMonitoredItems, whole results: asyncua's own call keeps no revised
        sampling interval, and this subscription dispatches by client handle itself."""
        params = ua.CreateMonitoredItemsParameters()
        params.SubscriptionId = self.subscription_id
        params.ItemsToCreate = requests
        params.TimestampsToReturn = ua.TimestampsToReturn.Both
        try:
            results: list[ua.MonitoredItemCreateResult] = \
                await self.server.create_monitored_items(params)
        except ServiceError as exc:
            raise ua.UaStatusCodeError(exc.code) from None
        return results

    async def publish_callback(self, publish_result: ua.PublishResult) -> None:
        self.last_publish_at = time.monotonic()
        msg = publish_result.NotificationMessage
        if not msg.NotificationData:
            return
        self.last_sequence_number = int(msg.SequenceNumber)
        for notif in msg.NotificationData:
            if isinstance(notif, ua.DataChangeNotification):
                self._on_changes(notif.MonitoredItems)
            elif isinstance(notif, ua.EventNotificationList):
                self._on_event(notif.Events)
            elif isinstance(notif, ua.StatusChangeNotification):
                self._on_status(notif.Status)


class Monitoring:
    """The session's subscriptions and monitored items. `node_of` maps a client handle
    (unique for the source's life: `handles`) to its node id."""

    def __init__(self, session: Any, cfg: OpcuaSourceConfig, limits: Limits,
                 budget: PlantBudget, handles: Iterator[int], counters: dict[str, int],
                 on_changes: OnChanges, on_event: Callable[[], None],
                 on_status: Callable[[ua.StatusCode], None],
                 on_plant_event: OnPlantEvent | None = None) -> None:
        self._session, self.cfg, self.limits, self.budget = session, cfg, limits, budget
        self._handles, self.counters = handles, counters
        self._on_model_event, self._on_plant_event = on_event, on_plant_event
        self._callbacks = (on_changes, self._events, on_status)
        # event items: client handle -> (notifier, the names of its filter's fields)
        self.event_of: dict[int, tuple[str, tuple[str, ...]]] = {}
        self._event_placed: dict[str, tuple[BatchSubscription, int, int]] = {}
        per_sub = cfg.items_per_subscription
        if limits.per_subscription:
            per_sub = min(per_sub, limits.per_subscription)
        self.per_subscription = per_sub
        self._wanted = 0  # variables to monitor in all (monitor)
        self.subs: list[BatchSubscription] = []
        self.handle_of: dict[str, int] = {}
        self.node_of: dict[int, str] = {}
        self._placed: dict[str, tuple[BatchSubscription, int]] = {}  # node -> sub, server handle
        self._stale: set[str] = set()  # monitored ids that name another node now
        self._filter: ua.DataChangeFilter | None = None
        if cfg.trigger != "StatusValue":
            self._filter = ua.DataChangeFilter()
            self._filter.Trigger = TRIGGERS[cfg.trigger]

    def _events(self, events: list[ua.EventFieldList]) -> None:
        """Plant events to carry, by client handle; any other is the model-change item's."""
        model_change = False
        for ev in events:
            item = self.event_of.get(ev.ClientHandle)
            if item is None:
                model_change = True
            elif self._on_plant_event is not None:
                self._on_plant_event(item[0], item[1], ev.EventFields)
        if model_change:
            self._on_model_event()

    @property
    def event_notifiers(self) -> list[str]:
        return list(self._event_placed)

    async def monitor_events(self, notifiers: list[str], evfilter: ua.EventFilter,
                             names: tuple[str, ...]) -> None:
        """An event item (all the notifier emits, `evfilter`'s fields) on each of
        `notifiers` not monitored yet, in the first subscription: a server has few
        notifiers, so they are not counted against `items_per_subscription`. One a server
        refuses (not a notifier after all) is counted in `event_errors` and left out of
        `event_notifiers`."""
        todo = [n for n in notifiers if n not in self._event_placed]
        i = 0
        while i < len(todo):
            sub = self.subs[0] if self.subs else await self._new_subscription()
            step = self.limits.monitored
            chunk = todo[i:i + step]
            handles = [next(self._handles) for _ in chunk]
            mirs = [self._event_request(n, h, evfilter) for n, h in zip(chunk, handles,
                                                                      strict=True)]
            for n, h in zip(chunk, handles, strict=True):
                self.event_of[h] = (n, names)
            await self.budget.request()
            try:
                results = await sub.create_items(mirs)
            except ua.UaStatusCodeError as exc:
                for h in handles:
                    self.event_of.pop(h, None)
                if exc.code == ua.StatusCodes.BadTooManyOperations and step > 1:
                    self.limits.monitored = max(1, step // 2)
                    continue
                raise
            for n, h, res in zip(chunk, handles, results, strict=True):
                if not res.StatusCode.is_good():
                    self.event_of.pop(h, None)
                    self.counters["event_errors"] += 1
                    log.info("%s: no events from %s: %s", self.cfg.label, n, res.StatusCode.name)
                    continue
                self._event_placed[n] = (sub, res.MonitoredItemId, h)
            i += len(chunk)
        self.counters["event_notifiers"] = len(self._event_placed)

    async def unmonitor_events(self, keep: set[str]) -> None:
        """Stop the event items of every notifier not in `keep`."""
        for n in [n for n in self._event_placed if n not in keep]:
            sub, server_handle, handle = self._event_placed.pop(n)
            self.event_of.pop(handle, None)
            await self.budget.request()
            with contextlib.suppress(ua.UaStatusCodeError):
                await sub.unsubscribe([server_handle])
        self.counters["event_notifiers"] = len(self._event_placed)

    def _event_request(self, notifier: str, handle: int, evfilter: ua.EventFilter
                       ) -> ua.MonitoredItemCreateRequest:
        rv = ua.ReadValueId()
        rv.NodeId = ua.NodeId.from_string(notifier)
        rv.AttributeId = ua.AttributeIds.EventNotifier
        mp = ua.MonitoringParameters()
        mp.ClientHandle = handle
        mp.SamplingInterval = 0
        mp.QueueSize = EVENT_QUEUE
        mp.DiscardOldest = True
        mp.Filter = evfilter
        mir = ua.MonitoredItemCreateRequest()
        mir.ItemToMonitor = rv
        mir.MonitoringMode = ua.MonitoringMode.Reporting
        mir.RequestedParameters = mp
        return mir

    def sampling_ms(self, nid: str, min_sampling: dict[str, float]) -> float:
        """What to ask for `nid`: never faster than the node or the server can sample."""
        return max(self.cfg.sampling_interval * 1000, min_sampling.get(nid, 0.0))

    def stale(self, now: float, after: float) -> bool:
        """A subscription has not published (not even a keep-alive) for `after` s."""
        return any(s.last_publish_at is not None and now - s.last_publish_at > after
                   for s in self.subs)

    async def _new_subscription(self) -> BatchSubscription:
        cfg = self.cfg
        params = ua.CreateSubscriptionParameters()
        params.RequestedPublishingInterval = cfg.publishing_interval * 1000
        # A keep-alive every KEEPALIVE seconds at most, so a dead subscription shows.
        keepalive = max(1, round(KEEPALIVE / cfg.publishing_interval))
        params.RequestedMaxKeepAliveCount = keepalive
        params.RequestedLifetimeCount = keepalive * 10
        params.MaxNotificationsPerPublish = PER_PUBLISH
        params.PublishingEnabled = True
        params.Priority = 0
        sub = BatchSubscription(self._session, params, *self._callbacks)
        await self.budget.request()
        try:
            await sub.init()
        except ua.UaStatusCodeError as exc:
            if exc.code != ua.StatusCodes.BadTooManySubscriptions or not self.subs:
                raise
            # the server allows fewer than it said (or said nothing): fill those it took
            self.limits.subscriptions = len(self.subs)
            self._fit()
            return min(self.subs, key=lambda s: s.items)
        if not self.subs:  # one subscription is enough for the server's model changes
            try:
                await self.budget.request()
                await sub.subscribe_events(ua.ObjectIds.Server,
                                           ua.ObjectIds.GeneralModelChangeEventType)
            except (ua.UaError, ValueError) as exc:
                log.debug("%s: no model change events: %s", cfg.label, exc)
        self.subs.append(sub)
        self.counters["subscriptions"] = len(self.subs)
        return sub

    def _fit(self) -> None:
        """Within the server's MaxSubscriptionsPerSession (node-opcua's is 10): more
        items in each subscription when `items_per_subscription` would need more
        subscriptions than the server allows a session."""
        most = self.limits.subscriptions
        if most:
            need = -(-self._wanted // most)
            cap = self.limits.per_subscription or need
            self.per_subscription = max(self.per_subscription, min(need, cap))

    async def _room(self) -> BatchSubscription:
        for sub in self.subs:
            if sub.items < self.per_subscription:
                return sub
        return await self._new_subscription()

    def _request(self, nid: str, handle: int, sampling: float) -> ua.MonitoredItemCreateRequest:
        rv = ua.ReadValueId()
        rv.NodeId = ua.NodeId.from_string(nid)
        rv.AttributeId = ua.AttributeIds.Value
        mp = ua.MonitoringParameters()
        mp.ClientHandle = handle
        mp.SamplingInterval = sampling
        mp.QueueSize = self.cfg.queue_size
        mp.DiscardOldest = True
        if self._filter is not None:
            mp.Filter = self._filter
        mir = ua.MonitoredItemCreateRequest()
        mir.ItemToMonitor = rv
        mir.MonitoringMode = ua.MonitoringMode.Reporting
        mir.RequestedParameters = mp
        return mir

    async def monitor(self, variables: list[str], min_sampling: dict[str, float]) -> None:
        """Monitor each of `variables` not monitored yet."""
        todo = [v for v in variables if v not in self.handle_of]
        self._wanted = len(self.handle_of) + len(todo)
        self._fit()
        errors_logged = 0
        revised, slowest = 0, 0.0
        fastest = self.cfg.sampling_interval * 1000
        i = 0
        while i < len(todo):
            sub = await self._room()
            step = min(self.limits.monitored, self.per_subscription - sub.items)
            if step <= 0:   # the server's subscriptions of its most items are all full
                self.counters["monitor_errors"] += len(todo) - i
                log.warning("%s: %d variables are not monitored: the server takes no more "
                            "than %d subscriptions of %d items in a session",
                            self.cfg.label, len(todo) - i, len(self.subs),
                            self.per_subscription)
                break
            chunk = todo[i:i + step]
            asked = [self.sampling_ms(nid, min_sampling) for nid in chunk]
            self.counters["sampling_limited"] += sum(a > fastest for a in asked)
            mirs = []
            for nid, sampling in zip(chunk, asked, strict=True):
                handle = next(self._handles)
                self.handle_of[nid] = handle
                self.node_of[handle] = nid
                mirs.append(self._request(nid, handle, sampling))
            await self.budget.request()
            try:
                results = await sub.create_items(mirs)
            except ua.UaStatusCodeError as exc:
                for nid in chunk:
                    self.node_of.pop(self.handle_of.pop(nid), None)
                if exc.code == ua.StatusCodes.BadTooManyOperations and step > 1:
                    self.limits.monitored = max(1, step // 2)
                    continue
                if exc.code == ua.StatusCodes.BadTooManyMonitoredItems and sub.items:
                    self.per_subscription = sub.items  # the server's real bound: a new one
                    continue
                raise
            for nid, res, want in zip(chunk, results, asked, strict=True):
                if not res.StatusCode.is_good():
                    self.counters["monitor_errors"] += 1
                    self.node_of.pop(self.handle_of.pop(nid), None)
                    if errors_logged < ERRORS_LOGGED:
                        errors_logged += 1
                        log.warning("%s: cannot monitor %s: %s", self.cfg.label, nid,
                                    res.StatusCode.name)
                    continue
                self._placed[nid] = (sub, res.MonitoredItemId)
                sub.items += 1
                got = res.RevisedSamplingInterval
                if got > want:
                    revised += 1
                    slowest = max(slowest, got)
            i += len(chunk)
        self.counters["monitored_items"] = len(self._placed)
        if revised:
            self.counters["sampling_revised"] += revised
            self.counters["sampling_max_ms"] = max(self.counters["sampling_max_ms"],
                                                   math.ceil(slowest))
            log.info("%s: the server samples %d items more slowly than asked (the slowest "
                     "every %.0f ms): faster changes are coalesced on the plant", self.cfg.label,
                     revised, slowest)

    def renumbered(self, renumbering: Renumbering) -> None:
        """The server's namespace array changed: an item whose id names another node now
        (or none) stops counting at once; `unmonitor` deletes it, `monitor` makes it again
        under its node's new id."""
        for nid in [n for n in self.handle_of if not renumbering.keeps(n)]:
            self._stale.add(nid)
            self.node_of.pop(self.handle_of[nid], None)

    async def unmonitor(self, keep: set[str]) -> None:
        """Stop monitoring every variable not in `keep`, and every renumbered one."""
        gone = [nid for nid in self.handle_of if nid not in keep or nid in self._stale]
        self._stale.clear()
        by_sub: dict[BatchSubscription, list[int]] = {}
        for nid in gone:
            self.node_of.pop(self.handle_of.pop(nid), None)
            placed = self._placed.pop(nid, None)
            if placed is not None:
                by_sub.setdefault(placed[0], []).append(placed[1])
        step = self.limits.monitored
        for sub, server_handles in by_sub.items():
            sub.items -= len(server_handles)
            for i in range(0, len(server_handles), step):
                await self.budget.request()
                with contextlib.suppress(ua.UaStatusCodeError):
                    await sub.unsubscribe(server_handles[i:i + step])
        self.counters["monitored_items"] = len(self._placed)

