#!/usr/bin/env python3
"""Prove from a pytest junit report that every `slow` and `root` test ran and passed.

    python scripts/check_markers.py REPORT.xml

The tests that must have run are found twice: by collecting the whole suite afresh
(`pytest --collect-only` with this file as a plugin, so a test left out of the run by
a path, -k, -m or --deselect is still missed), and from the report itself (tests/conftest.py
writes each marked test's node id and markers as junit properties). Every one must
be in the report, passed: not failed, errored, skipped or xfailed. And the run must
hold at least one test of each marker: a marker nobody uses any more is a check that
quietly stopped checking. Exit 0 when all is well, 1 (naming the tests) when not.
CI runs as root (.ci/run), so root tests always run there.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
MARKERS = ("slow", "root")
_OUT = "CHECK_MARKERS_OUT"


@dataclass
class Case:
    nodeid: str
    markers: set[str] = field(default_factory=set)
    outcome: str = "passed"  # or failed, error, skipped
    detail: str = ""


def read_report(path: Path) -> tuple[int, dict[str, Case]]:
    """(testcases in the report, the marked ones by node id)."""
    root = ET.parse(path).getroot()
    total = 0
    cases: dict[str, Case] = {}
    for tc in root.iter("testcase"):
        total += 1
        props = [(p.get("name"), p.get("value") or "") for p in tc.iter("property")]
        nodeid = next((v for k, v in props if k == "nodeid"), None)
        if nodeid is None:
            continue
        case = cases.setdefault(nodeid, Case(nodeid))
        case.markers |= {v for k, v in props if k == "marker"}
        for tag in ("failure", "error", "skipped"):
            bad = tc.find(tag)
            if bad is not None and case.outcome == "passed":
                case.outcome = "failed" if tag == "failure" else tag
                text = (bad.get("message") or bad.text or "").strip()
                case.detail = text.splitlines()[0][:160] if text else ""
    return total, cases


def collect_marked(python: str = sys.executable, cwd: Path = REPO) -> dict[str, set[str]]:
    """Node id -> markers, for every test of the suite that carries `slow` or `root`: one
    `pytest --collect-only` with this file as a plugin (pytest_collection_finish below)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "marked.json"
        env = {**os.environ, _OUT: str(out),
               "PYTHONPATH": os.pathsep.join([str(HERE), *filter(None, [os.environ.get("PYTHONPATH")])])}
        res = subprocess.run([python, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
                              "-p", "check_markers"], cwd=cwd, env=env, capture_output=True, text=True)
        if res.returncode not in (0, 5) or not out.is_file():  # 5: no test at all, reported by check
            raise SystemExit(f"check_markers: collecting the suite failed (pytest exit "
                             f"{res.returncode}):\n{res.stdout[-3000:]}{res.stderr[-3000:]}")
        marked: dict[str, list[str]] = json.loads(out.read_text())
    return {nodeid: set(marks) for nodeid, marks in marked.items()}


def pytest_collection_finish(session: Any) -> None:
    """As a pytest plugin (`-p check_markers`, from collect_marked): write what is marked."""
    out = os.environ.get(_OUT)
    if out:
        marked = {item.nodeid: [m for m in MARKERS if item.get_closest_marker(m) is not None]
                  for item in session.items}
        Path(out).write_text(json.dumps({k: v for k, v in marked.items() if v}))


def check(total: int, cases: dict[str, Case], expected: dict[str, set[str]]) -> list[str]:
    """The problems, one line each; empty when every marked test ran and passed."""
    if total == 0:
        return ["the report holds no test at all (did pytest collect nothing? exit code 5)"]
    problems = []
    wanted = {nodeid: set(marks) for nodeid, marks in expected.items()}
    for nodeid, case in cases.items():
        wanted.setdefault(nodeid, set()).update(case.markers)
    for nodeid in sorted(wanted):
        marks = ",".join(sorted(wanted[nodeid]))
        found = cases.get(nodeid)
        if found is None:
            problems.append(f"{nodeid} [{marks}]: not in the report (deselected, or not collected "
                            "in this run)")
        elif found.outcome != "passed":
            why = f" ({found.detail})" if found.detail else ""
            problems.append(f"{nodeid} [{marks}]: {found.outcome}{why}")
    for marker in MARKERS:
        if not any(marker in case.markers and case.outcome == "passed" for case in cases.values()):
            problems.append(f"no test marked {marker} ran and passed: the marker checks nothing")
    return problems


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("report", type=Path, help="the --junitxml file of the run")
    ap.add_argument("--no-collect", action="store_true",
                    help="trust the report's own markers; do not collect the suite again")
    args = ap.parse_args(argv)
    if not args.report.is_file():
        print(f"check_markers: no report at {args.report} (did pytest run with --junitxml?)",
              file=sys.stderr)
        return 1
    total, cases = read_report(args.report)
    expected = {} if args.no_collect else collect_marked()
    problems = check(total, cases, expected)
    if problems:
        print(f"check_markers: {len(problems)} problem(s) with the slow/root tests in "
              f"{args.report}:", file=sys.stderr)
        for p in problems:
            print(f"  {p}", file=sys.stderr)
        print("Fix: every slow and root test must run and pass in CI (as root); none may be "
              "skipped, deselected or left out of the run.", file=sys.stderr)
        return 1
    counts = {m: sum(m in c.markers for c in cases.values()) for m in MARKERS}
    print(f"check_markers: all {len(cases)} marked tests ran and passed "
          f"({counts['slow']} slow, {counts['root']} root)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
