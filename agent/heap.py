"""Long-lived objects taken out of the cyclic garbage collector's full scans.

CPython's cycle collector walks every object it tracks at each full (oldest
generation) collection, and it starts one whenever the heap has grown by a
quarter since the last. An agent's heap is mostly what lives as long as the
process or the model does: the modules and classes imported at start (asyncua
builds some 1,000 dataclasses), the mirror's nodes, TX's model. So the bigger
the plant, the longer each full collection, and the more of them while a model
is built: while a 10,000-variable plant synced, RX ran 5 full collections, 0.44 s
of its CPU (the longest 0.19 s, its event loop held meanwhile); at 100,000
variables single ones held it for up to a second.

`settle()` is called right after such a structure is built (an agent started, a
model installed or grown, a crawl done): `gc.freeze()` moves every object alive
then into a permanent generation that collections skip. Reference counting
still frees a frozen object when the last reference to it goes, so a model
replaced later is freed as before where it holds no cycle; the collector only
no longer looks for cycles among frozen objects. So a reference cycle
among them stays until the process ends: one that was garbage already when
frozen (young garbage, most of it, is collected first), or one that becomes
garbage later (an IT client's session that was open at a freeze, then ends).
The calls are few (per start, per model, per crawl), so what can stay is what
was alive at those moments, not a growth per client or per value. With it, the
same RX sync ran 1 full collection, 0.02 s.
"""

from __future__ import annotations

import gc


def settle() -> None:
    """What is alive now lives long: out of every later full collection's scan."""
    gc.collect(1)  # the young generations' garbage first, not the old one's (a full scan)
    gc.freeze()
