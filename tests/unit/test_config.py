"""Config errors name the file, the key and the fix; the shipped examples load."""

import os
import shutil
from pathlib import Path

import pytest

from agent import config
from agent.config import ConfigError
from agent.keys import read_key, write_key

REPO = Path(__file__).resolve().parents[2]


def _write(tmp_path: Path, text: str, name: str = "tx.toml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def test_shipped_examples_load(tmp_path: Path) -> None:
    for role in ("tx", "rx"):
        shutil.copy(REPO / "board" / "config" / f"{role}.toml", tmp_path)
    (tmp_path / "it-ca.crt").write_text("dummy")
    tx = config.load(tmp_path / "tx.toml", "tx")
    rx = config.load(tmp_path / "rx.toml", "rx")
    assert tx.channels["mqtt"][0].name == rx.channels["mqtt"][0].name == "plant"
    assert tx.link.key_file == tmp_path / "link.key"
    assert rx.channels["mqtt"][0].broker.tls is not None and rx.channels["mqtt"][0].broker.tls.verify_hostname


def test_unknown_key_names_file_key_and_suggestion(tmp_path: Path) -> None:
    p = _write(tmp_path, '[link]\nkey_file = "k"\n[[mqtt]]\nname = "a"\nprot = 1883\n')
    with pytest.raises(ConfigError) as err:
        config.load(p, "tx")
    msg = str(err.value)
    assert str(p) in msg and "prot" in msg and "did you mean 'port'" in msg


@pytest.mark.parametrize("body,key,fix", [
    ('[link]\nkey_file = "k"\nrepeat = 9\n', "repeat", "repeat = 3"),
    ('[link]\nkey_file = "k"\nport = "x"\n', "port", "port = 5600"),
    ('[link]\n', "key_file", "key_file ="),
    ('[link]\nkey_file = "k"\n[[mqtt]]\nname = "a"\nprotocol = "4"\n', "protocol", '"5"'),
    ('[link]\nkey_file = "k"\n[[mqtt]]\nname = "a"\n[[mqtt]]\nname = "a"\n', "name", "own name"),
    ('[link]\nkey_file = "k"\n[[mqtt]]\nname = "a"\nca_file = "x"\n', "ca_file", "tls = true"),
    ('[link]\nkey_file = "k"\n[[mqtt]]\nname = "a"\ntls = true\nca_file = "nope.crt"\n',
     "ca_file", "existing PEM"),
])
def test_bad_values_are_named_with_a_fix(tmp_path: Path, body: str, key: str, fix: str) -> None:
    p = _write(tmp_path, body)
    with pytest.raises(ConfigError) as err:
        config.load(p, "tx")
    msg = str(err.value)
    assert str(p) in msg and key in msg and "Fix:" in msg and fix in msg


def test_missing_file_and_bad_toml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="file not found"):
        config.load(tmp_path / "none.toml", "rx")
    with pytest.raises(ConfigError, match="not valid TOML"):
        config.load(_write(tmp_path, "[link\n"), "tx")


def test_password_file_read_and_hidden_from_repr(tmp_path: Path) -> None:
    (tmp_path / "pw").write_text("s3cret\n")
    p = _write(tmp_path, '[link]\nkey_file = "k"\n[[mqtt]]\nname = "a"\nusername = "u"\n'
                         'password_file = "pw"\n')
    cfg = config.load(p, "tx")
    broker = cfg.channels["mqtt"][0].broker
    assert broker.password == "s3cret"
    assert "s3cret" not in repr(cfg)


def test_key_file_mode_and_content(tmp_path: Path) -> None:
    path = tmp_path / "link.key"
    key = write_key(path)
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert read_key(path) == key
    with pytest.raises(FileExistsError):
        write_key(path)
    os.chmod(path, 0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        read_key(path)
    os.chmod(path, 0o600)
    path.write_text("abcd\n")
    with pytest.raises(ConfigError, match="diode keygen"):
        read_key(path)
    with pytest.raises(ConfigError, match="not found"):
        read_key(tmp_path / "missing.key")


def test_systemd_credential_copy_is_preferred(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    boot = tmp_path / "boot"
    boot.mkdir()
    (boot / "link.key").write_text("00" * 32 + "\n")
    os.chmod(boot / "link.key", 0o755)  # FAT: everything reads as 0755
    creds = tmp_path / "creds"
    creds.mkdir()
    key = write_key(creds / "link.key")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    assert read_key(boot / "link.key") == key
