"""Link benchmark: the sans-IO core under seeded random loss, in memory.

```
records (~100 B, one per frame) ─► LinkSender (repeat r, interleave d)
    ─► LossyChannel (independent loss p per datagram, seeded)
    ─► LinkReceiver ─► frames delivered / frames sent   vs   theory 1 - p**r
```

Every frame goes out exactly `repeat` times, so with independent loss a frame
is lost only when all its copies are: the delivered fraction should match
`1 - loss**repeat` up to binomial noise (`sigma` is its standard deviation).
A shortfall beyond that noise means the receiver threw away copies it had
(gap declared too early, dedupe wrong, reordering mishandled).

Time is simulated: one frame per sender tick, and both cores' timers are
served when due, as a driver would. `seconds` and `frames_per_s` are wall
clock for the whole pipeline (seal, interleave, channel, open, reorder,
decode) on one core.
"""

from __future__ import annotations

import math
import random
import time
from typing import Any

from agent.link import records
from agent.link.receiver import LinkReceiver, ReceiverParams
from agent.link.sender import LinkSender, SenderParams
from agent.mqtt import codec as mqtt_codec
from agent.transport.lossy import LossyChannel

_PAYLOAD = 72  # bytes of MQTT payload; with channel, topic and fields the record is ~100 B


def _record(index: int) -> bytes:
    payload = index.to_bytes(8, "big") * (_PAYLOAD // 8)
    return records.encode(mqtt_codec.MqttMessage("bench", f"bench/{index % 1000:03d}", payload))


def run_link_bench(loss: float, repeat: int, frames: int = 100_000, interleave: int = 8,
                   seed: int = 1) -> dict[str, Any]:
    """Push `frames` one-record frames through sender -> seeded loss -> receiver."""
    if not 0.0 <= loss < 1.0:
        raise ValueError(f"loss must be in [0, 1), got {loss}")
    if frames < 1:
        raise ValueError(f"frames must be >= 1, got {frames}")
    rng = random.Random(seed)
    key = rng.randbytes(32)
    epoch = (1_700_000_000 << 32) | rng.getrandbits(32)
    sparams = SenderParams(repeat=repeat, interleave=interleave)
    sender = LinkSender(sparams, key, epoch)
    receiver = LinkReceiver(ReceiverParams(link_id=sparams.link_id), key)
    channel = LossyChannel(seed, loss=loss)
    transmit = channel.transmit
    receive = receiver.receive
    dt = sparams.tick
    rx_deadline: float | None = None
    record_size = len(_record(0))

    started = time.perf_counter()
    now = 0.0
    for index in range(frames):
        now = index * dt
        sender.push(_record(index), now)
        sender.flush(now)
        for datagram in sender.pop_datagrams():
            for survivor in transmit(datagram):
                receive(survivor, now)
        rx_deadline = receiver.next_deadline()
        if rx_deadline is not None and rx_deadline <= now:
            receiver.handle_timer(now)
    # Shutdown: the copies still owed, then let every open gap time out.
    now += dt
    for datagram in sender.drain(now):
        for survivor in transmit(datagram):
            receive(survivor, now)
    for survivor in channel.drain():
        receive(survivor, now)
    receiver.handle_timer(now + receiver.params.reorder_timeout)
    seconds = time.perf_counter() - started

    sent = sender.counters["frames"]
    delivered = receiver.counters["frames"]
    fraction = delivered / sent
    theory = 1.0 - loss**repeat
    return {
        "loss": loss,
        "repeat": repeat,
        "interleave": interleave,
        "seed": seed,
        "record_bytes": record_size,
        "frames_sent": sent,
        "frames_delivered": delivered,
        "frames_lost": receiver.counters["lost"],
        "late": receiver.counters["late"],
        "delivered_fraction": fraction,
        "theory": theory,
        "sigma": math.sqrt(theory * (1.0 - theory) / sent),
        "datagrams": sender.counters["datagrams"],
        "datagrams_dropped": channel.dropped,
        "seconds": seconds,
        "frames_per_s": sent / seconds if seconds > 0 else float("inf"),
    }
