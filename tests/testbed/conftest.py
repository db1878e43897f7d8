"""Testbed tests need root and the network tools: without them they FAIL, naming the fix
(a skipped one-way-link test would pass for a link nobody checked)."""

from __future__ import annotations

import os

import pytest

from diode_tools.sim.testbed import TestbedError, check_prerequisites


@pytest.fixture(scope="session", autouse=True)
def _root_and_tools() -> None:
    try:
        check_prerequisites()
    except (TestbedError, RuntimeError) as exc:
        pytest.fail(f"testbed tests cannot run: {exc} (euid {os.geteuid()})", pytrace=False)
