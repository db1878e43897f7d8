"""MQTT topic filters: validity, matching, and whether two filters share topics.

TX refuses a channel whose filters overlap: a broker delivers a message once
per matching subscription (MQTT 5 allows it, Mosquitto does it), so
`plant/#` beside `plant/line1/#` would carry every line 1 message twice.

Rules (MQTT 3.1.1 and 5, section 4.7): levels are separated by `/`; `+` is
one whole level; `#` is the whole last level and matches its parent and any
number of levels below; a topic whose first level starts with `$` is matched
by no filter whose first level is a wildcard (`#` does not match `$SYS/x`).
A shared subscription (`$share/GROUP/FILTER`) delivers what FILTER matches.
"""

from __future__ import annotations


def _levels(f: str) -> list[str]:
    if f.startswith("$share/"):
        parts = f.split("/", 2)
        if len(parts) == 3:
            f = parts[2]
    return f.split("/")


def filter_problem(f: str) -> str | None:
    """Why `f` is not a valid topic filter, or None."""
    if not f:
        return "it is empty"
    if len(f.encode()) > 65_535:
        return "it is longer than 65,535 bytes"
    if "\0" in f:
        return "it holds a NUL character"
    if f.startswith("$share/") and len(f.split("/", 2)) < 3:
        return "a shared subscription is $share/GROUP/FILTER"
    levels = _levels(f)
    for i, level in enumerate(levels):
        if "#" in level and (level != "#" or i != len(levels) - 1):
            return "'#' must be a whole level, and the last one"
        if "+" in level and level != "+":
            return "'+' must be a whole level"
    return None


def _dollar(level: str) -> bool:
    return level.startswith("$")


def matches(f: str, topic: str) -> bool:
    """Does filter `f` match the topic name `topic`?"""
    fl, tl = _levels(f), topic.split("/")
    if fl[0] in ("+", "#") and _dollar(tl[0]):
        return False
    for i, level in enumerate(fl):
        if level == "#":
            return True
        if i == len(tl):
            return False
        if level != "+" and level != tl[i]:
            return False
    return len(fl) == len(tl)


def covers(a: str, b: str) -> bool:
    """Does `a` match every topic that `b` matches?"""
    al, bl = _levels(a), _levels(b)
    if al[0] in ("+", "#") and _dollar(bl[0]):
        return False  # b matches $-topics, which a's wildcard never does
    for i, level in enumerate(al):
        if level == "#":
            return True
        if i == len(bl) or bl[i] == "#":
            return False  # b matches a topic that ends here, or one a is too short for
        if level == "+":
            continue
        if bl[i] == "+" or bl[i] != level:
            return False
    return len(al) == len(bl)


def overlap(a: str, b: str) -> bool:
    """Is there a topic that both `a` and `b` match?"""
    al, bl = _levels(a), _levels(b)
    for x, y in ((al, bl), (bl, al)):
        if x[0] in ("+", "#") and _dollar(y[0]):
            return False  # y matches only $-topics there, which x's wildcard never does
    for i in range(max(len(al), len(bl)) + 1):
        p = al[i] if i < len(al) else None
        q = bl[i] if i < len(bl) else None
        if p == "#" or q == "#":
            return True
        if p is None or q is None:
            return p is None and q is None
        if p != "+" and q != "+" and p != q:
            return False
    return True  # not reached: one of them ends first


def example_common(a: str, b: str) -> str:
    """A topic both filters match (they must overlap)."""
    al, bl = _levels(a), _levels(b)
    out: list[str] = []
    for i in range(max(len(al), len(bl))):
        x = al[i] if i < len(al) else None
        y = bl[i] if i < len(bl) else None
        if x == "#" or y == "#":
            rest = bl[i:] if x == "#" else al[i:]
            out += ["x" if r in ("+", "#") else r for r in rest if r != "#"]
            break
        literal = x if x not in ("+", None) else y
        out.append("x" if literal in ("+", None) else literal)
    return "/".join(out) if out else "x"
