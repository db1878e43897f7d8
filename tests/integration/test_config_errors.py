"""No config or file error gives a traceback: each is one line naming the file, the
key and the fix, and `diode tx|rx` exits 2. The agents run as a user runs them."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from agent.keys import write_key
from agent.runtime import write_status
from tests.integration.conftest import diode_cmd, to_toml


def _run(role: str, config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(diode_cmd(role, "-c", str(config)), capture_output=True, text=True,
                          timeout=60, cwd=config.parent)


def _doc(tmp_path: Path, **sections: dict[str, object]) -> dict[str, object]:
    link = {"key_file": str(tmp_path / "link.key"), "host": "127.0.0.1", "port": 5999}
    return {"link": {**link, **sections.pop("link", {})}, **sections,
            "mqtt": [{"name": "plant", "port": 1}]}


def _case_toml_not_utf8(tmp_path: Path) -> tuple[Path, str]:
    p = tmp_path / "tx.toml"
    p.write_bytes(b'[link]\nkey_file = "link.key"\n# caf\xe9 not UTF-8\n')
    return p, "not UTF-8 text (byte"


def _case_key_not_utf8(tmp_path: Path) -> tuple[Path, str]:
    (tmp_path / "link.key").write_bytes(b"\xff\xfe" * 32 + b"\n")
    (tmp_path / "link.key").chmod(0o600)
    p = tmp_path / "tx.toml"
    p.write_text(to_toml(_doc(tmp_path)))
    return p, "not a link key"


def _case_password_not_utf8(tmp_path: Path) -> tuple[Path, str]:
    (tmp_path / "pw").write_bytes(b"s\xe9cret\n")
    doc = _doc(tmp_path)
    doc["mqtt"] = [{"name": "plant", "username": "u", "password_file": "pw"}]
    p = tmp_path / "tx.toml"
    p.write_text(to_toml(doc))
    return p, "[mqtt.0] password_file:"


def _case_spool_dir_is_a_file(tmp_path: Path) -> tuple[Path, str]:
    (tmp_path / "spoolfile").write_text("x")
    p = tmp_path / "tx.toml"
    p.write_text(to_toml(_doc(tmp_path, spool={"dir": "spoolfile", "key_file": "spool.key"})))
    return p, "[spool] dir:"


def _case_key_is_dev_zero(tmp_path: Path) -> tuple[Path, str]:
    doc = _doc(tmp_path, link={"key_file": "/dev/zero"})
    p = tmp_path / "tx.toml"
    p.write_text(to_toml(doc))
    return p, "/dev/zero: key file is not a regular file"


def _case_status_unwritable(tmp_path: Path) -> tuple[Path, str]:
    (tmp_path / "run").write_text("a file where a folder should be")
    p = tmp_path / "rx.toml"
    p.write_text(to_toml(_doc(tmp_path, status={"file": "run/rx.json"})))
    return p, "[status] file:"


def _case_absurd_bitrate(tmp_path: Path) -> tuple[Path, str]:
    p = tmp_path / "tx.toml"
    p.write_text(to_toml(_doc(tmp_path, link={"bitrate": 2**62})))
    return p, "[link] bitrate: must be between"


def _case_spool_key_is_link_key(tmp_path: Path) -> tuple[Path, str]:
    p = tmp_path / "rx.toml"
    p.write_text(to_toml(_doc(tmp_path, spool={"dir": "spool",
                                               "key_file": str(tmp_path / "link.key")})))
    return p, "the spool key is the link key"


CASES: list[Callable[[Path], tuple[Path, str]]] = [
    _case_toml_not_utf8, _case_key_not_utf8, _case_password_not_utf8, _case_spool_dir_is_a_file,
    _case_key_is_dev_zero, _case_status_unwritable, _case_absurd_bitrate,
    _case_spool_key_is_link_key]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.__name__[6:])
def test_one_line_with_file_key_and_fix_and_exit_2(case: Callable[[Path], tuple[Path, str]],
                                                   tmp_path: Path) -> None:
    write_key(tmp_path / "link.key")
    config, words = case(tmp_path)
    role = config.stem
    proc = _run(role, config)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines()
              if "error" in line.lower() or "CRITICAL" in line or "cannot" in line]
    assert any(words in line and "Fix:" in line for line in errors), proc.stderr


def test_a_status_file_that_fails_at_run_time_is_logged_not_raised(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "gone").write_text("a file: the status folder cannot be made")
    assert write_status(tmp_path / "gone" / "rx.json", {"role": "rx"}) is False
    assert any("cannot write the status file" in r.message and "Fix:" in r.message
               for r in caplog.records)
    assert write_status(tmp_path / "ok" / "rx.json", {"role": "rx"}) is True
