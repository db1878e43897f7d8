"""heap.settle(): what is alive is out of the collector's scans; young garbage is freed
first, not frozen for good."""

from __future__ import annotations

import gc
import weakref

from agent import heap


class _Node:
    def __init__(self) -> None:
        self.me: _Node | None = None


def test_settled_objects_leave_the_collectors_generations() -> None:
    try:
        keep = [[i] for i in range(10_000)]
        before = gc.get_freeze_count()
        heap.settle()
        assert gc.get_freeze_count() >= before + len(keep)
    finally:
        gc.unfreeze()


def test_a_cycle_already_garbage_is_freed_not_frozen() -> None:
    try:
        n = _Node()
        n.me = n  # only the collector can free it
        dead = weakref.ref(n)
        del n
        heap.settle()
        assert dead() is None
    finally:
        gc.unfreeze()


def test_a_settled_object_is_still_freed_when_its_last_reference_goes() -> None:
    try:
        n = _Node()
        alive = weakref.ref(n)
        heap.settle()
        assert alive() is n
        del n
        assert alive() is None  # reference counting, frozen or not
    finally:
        gc.unfreeze()
