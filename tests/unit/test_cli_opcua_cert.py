import os
import re
from pathlib import Path

import pytest

from agent.cli import main
from agent.opcua.certs import thumbprint


def test_opcua_cert_writes_a_private_key_and_prints_the_thumbprint(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["opcua-cert", "-o", str(tmp_path / "c"), "--uri", "urn:diode:tx:plant"]) == 0
    out = capsys.readouterr().out
    thumb = re.search(r"thumbprint ([0-9a-f]{40})", out)
    assert thumb and thumb.group(1) == thumbprint(tmp_path / "c" / "cert.der")
    assert os.stat(tmp_path / "c" / "key.pem").st_mode & 0o777 == 0o600
