"""Putting a record that was sent in fragments back together. Sans-IO.

A record too large for one frame goes as `Fragment` records in consecutive
frames (sender.py). The receiver hands each fragment here in the order it
delivers frames; any fragment out of place (a frame lost between them, another
record's fragment) drops the record being assembled, counted in
`fragments_dropped`. RX keeps one of these for the live stream and one for the
frames the recovery window brings, since those come between live frames.
"""

from __future__ import annotations

from agent.link.records import Fragment


class Reassembly:
    def __init__(self, max_record: int, counters: dict[str, int]) -> None:
        self.max_record = max_record
        self.counters = counters   # the receiver's: `fragments_dropped` is counted there
        self._cur: tuple[int, int, list[bytes], int] | None = None  # id, count, chunks, size

    def take(self, frag: Fragment) -> bytes | None:
        """The whole record's bytes once `frag` completes it, else None."""
        cur = self._cur
        if frag.index == 0:
            self.drop()
            cur = (frag.frag_id, frag.count, [frag.chunk], len(frag.chunk))
        elif cur is None or cur[0] != frag.frag_id or len(cur[2]) != frag.index:
            self.counters["fragments_dropped"] += 1   # this one, and the record it was of
            self._cur = None
            return None
        else:
            fid, count, chunks, size = cur
            chunks.append(frag.chunk)
            cur = (fid, count, chunks, size + len(frag.chunk))
        self._cur = cur
        _, count, chunks, size = cur
        if size > self.max_record:
            self.drop()
            return None
        if len(chunks) < count:
            return None
        self._cur = None
        return b"".join(chunks)

    def drop(self) -> None:
        """Give up the record being assembled, if any (counted)."""
        if self._cur is not None:
            self.counters["fragments_dropped"] += 1
            self._cur = None

    def reset(self) -> None:
        """Forget the record being assembled (a new epoch: nothing of it can come)."""
        self._cur = None
