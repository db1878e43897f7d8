"""scripts/check_markers.py: .ci/run's proof that every `slow` and `root` test ran and passed.

A small project in tmp_path with this suite's conftest (tests/conftest.py) and markers is
run by a real pytest with --junitxml; the checker must pass a clean run and name every
test that was skipped, failed, deselected or left out.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[2]


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("check_markers", REPO / "scripts" / "check_markers.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["check_markers"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


cm = _load()
IS_ROOT = os.geteuid() == 0

PYPROJECT = """\
[tool.pytest.ini_options]
addopts = "-ra --strict-markers -p no:cacheprovider"
markers = ["slow: long", "root: needs root"]
"""
TESTS = """\
import pytest

@pytest.mark.slow
def test_slow():
    pass

@pytest.mark.slow
@pytest.mark.parametrize("n", [1, 2])
def test_slow_param(n):
    pass

def test_plain():
    pass
"""
TESTBED = """\
def test_in_the_root_folder():
    pass
"""


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "pyproject.toml").write_text(PYPROJECT)
    shutil.copy(REPO / "tests" / "conftest.py", tmp_path / "conftest.py")
    (tmp_path / "test_a.py").write_text(TESTS)
    (tmp_path / "testbed").mkdir()
    (tmp_path / "testbed" / "test_b.py").write_text(TESTBED)
    return tmp_path


def run(project: Path, *args: str) -> tuple[int, dict[str, object], list[str]]:
    report = project / "junit.xml"
    res = subprocess.run([sys.executable, "-m", "pytest", "-q", f"--junitxml={report}", *args],
                         cwd=project, capture_output=True, text=True)
    total, cases = cm.read_report(report)
    return res.returncode, cases, cm.check(total, cases, cm.collect_marked(cwd=project))


SLOW = ["test_a.py::test_slow", "test_a.py::test_slow_param[1]", "test_a.py::test_slow_param[2]"]
ROOT = "testbed/test_b.py::test_in_the_root_folder"


def test_collects_every_marked_test_and_the_folder_rule(project: Path) -> None:
    found = cm.collect_marked(cwd=project)
    assert found == {**{n: {"slow"} for n in SLOW}, ROOT: {"root"}}


def test_a_clean_run_passes(project: Path) -> None:
    rc, cases, problems = run(project)
    if not IS_ROOT:  # the root test fails (never skips) without root, and the checker says so
        assert rc == 1 and problems == [f"{ROOT} [root]: failed (Failed: {ROOT} needs root "
                                        "(raw sockets, namespaces, nftables): run the tests as "
                                        f"root, as CI does (euid {os.geteuid()}))",
                                        "no test marked root ran and passed: the marker checks nothing"]
        return
    assert rc == 0 and problems == []
    assert {n: c.markers for n, c in cases.items()} == {**{n: {"slow"} for n in SLOW}, ROOT: {"root"}}
    assert cm.main([str(project / "junit.xml"), "--no-collect"]) == 0


def test_skipped_failed_and_deselected_are_named(project: Path) -> None:
    (project / "test_c.py").write_text(
        "import pytest\n\n"
        "@pytest.mark.slow\n@pytest.mark.skip(reason='too slow today')\ndef test_skipped():\n    pass\n\n"
        "@pytest.mark.slow\ndef test_fails():\n    assert 1 == 2\n\n"
        "@pytest.mark.slow\n@pytest.mark.xfail(reason='known')\ndef test_xfails():\n    assert 0\n")
    rc, _, problems = run(project, "--deselect", "test_a.py::test_slow_param[2]", "-k", "not folder")
    assert rc == 1
    text = "\n".join(problems)
    assert "test_c.py::test_skipped [slow]: skipped (too slow today)" in text
    assert "test_c.py::test_fails [slow]: failed" in text
    assert "test_c.py::test_xfails [slow]: skipped" in text
    assert "test_a.py::test_slow_param[2] [slow]: not in the report" in text
    assert f"{ROOT} [root]: not in the report" in text
    assert "no test marked root ran and passed" in text
    assert "test_a.py::test_slow [slow]" not in text and "test_slow_param[1]" not in text


def test_a_narrowed_run_misses_the_tests_it_left_out(project: Path) -> None:
    """Only the collection afresh can tell: the report of `pytest test_a.py` knows no root test."""
    _, _, problems = run(project, "test_a.py")
    assert problems == [f"{ROOT} [root]: not in the report (deselected, or not collected in this run)",
                        "no test marked root ran and passed: the marker checks nothing"]


def test_no_report_and_an_empty_report_fail(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cm.main([str(project / "missing.xml"), "--no-collect"]) == 1
    assert "no report" in capsys.readouterr().err
    rc = subprocess.run([sys.executable, "-m", "pytest", "-q", "--junitxml=junit.xml", "-k", "nothing"],
                        cwd=project, capture_output=True).returncode
    assert rc == 5
    assert cm.main([str(project / "junit.xml"), "--no-collect"]) == 1
    assert "holds no test at all" in capsys.readouterr().err
