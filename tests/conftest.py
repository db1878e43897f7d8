"""The `slow` and `root` markers (registered in pyproject.toml), for the whole suite.

- Everything under tests/testbed/ is `root` (network namespaces, nftables, tc); other
  root tests carry the marker themselves (tests/integration/test_udp_raw.py).
- A `root` test run without root FAILS, naming the fix: never a skip, since CI runs as
  root and a skipped one-way-link test would pass for a link nobody checked.
- Each marked test carries its node id and markers as junit properties, so that
  scripts/check_markers.py can prove from `--junitxml` that every one of them ran and
  passed (.ci/run does).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
ROOT_FOLDERS = (HERE / "testbed",)
CHECKED = ("slow", "root")


@pytest.hookimpl(tryfirst=True)  # before -m deselects by marker
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        path = Path(item.path).resolve()
        if any(path.is_relative_to(folder) for folder in ROOT_FOLDERS) \
                and item.get_closest_marker("root") is None:
            item.add_marker(pytest.mark.root)
        marks = [name for name in CHECKED if item.get_closest_marker(name) is not None]
        if marks:
            item.user_properties.append(("nodeid", item.nodeid))
            item.user_properties.extend(("marker", name) for name in marks)


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("root") is not None and os.geteuid() != 0:
        pytest.fail(f"{item.nodeid} needs root (raw sockets, namespaces, nftables): run the "
                    f"tests as root, as CI does (euid {os.geteuid()})", pytrace=False)
