"""Every config key is declared once (agent/config_reader.py, `setting`): the README's
tables are generated from the declarations, and the reader honours each one."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from agent.config import BoardConfig, LinkConfig, SpoolConfig, StatusConfig
from agent.config_reader import REQUIRED, Table, declared, read
from agent.errors import ConfigError
from agent.modbus.config import ModbusChannel, ModbusDevice, ModbusValue
from agent.mqtt.config import BrokerConfig, RxMqttChannel, TlsConfig, TxMqttChannel
from agent.opcua.config import OpcuaMirrorConfig, OpcuaSourceConfig
from agent.syslog.config import RxSyslogChannel, TxSyslogChannel
from diode_tools.config_tables import README, render

ALL = (LinkConfig, SpoolConfig, BoardConfig, StatusConfig, BrokerConfig, TlsConfig,
       TxMqttChannel, RxMqttChannel, OpcuaSourceConfig, OpcuaMirrorConfig, TxSyslogChannel,
       RxSyslogChannel, ModbusChannel, ModbusDevice, ModbusValue)


def test_readme_tables_are_generated_from_the_declarations() -> None:
    text = README.read_text()
    assert render(text) == text, "run: python -m diode_tools.config_tables --write"


@pytest.mark.parametrize("cls", ALL, ids=lambda c: c.__name__)
def test_every_declared_key_has_a_doc_and_an_example(cls: type) -> None:
    for name, _typ, s, default in declared(cls):
        assert s.doc and s.example, name
        if s.choices and default not in (REQUIRED, None):
            assert default in s.choices, name
        if s.lo is not None and isinstance(default, int | float) and default:
            assert default >= s.lo, name
        if s.hi is not None and isinstance(default, int | float):
            assert default <= s.hi, name


def _numeric(cls: type) -> list[tuple[str, Any, Any]]:
    return [(s.toml or name, s, default) for name, typ, s, default in declared(cls)
            if not s.manual and s.lo is not None and default not in (REQUIRED, None)]


@pytest.mark.parametrize("cls", [LinkConfig, TxMqttChannel, BrokerConfig, OpcuaSourceConfig],
                         ids=lambda c: c.__name__)
def test_bounds_are_enforced_with_file_key_and_fix(cls: type, tmp_path: Path) -> None:
    required = {"key_file": "k", "name": "n", "endpoint": "opc.tcp://h:1"}
    for key, s, default in _numeric(cls):
        value = s.lo - 1 if isinstance(default, int) else s.lo - 0.5
        t = Table(tmp_path / "x.toml", "sec", {**required, key: value})
        with pytest.raises(ConfigError) as err:
            read(t, cls)
        text = str(err.value)
        assert f"x.toml: [sec] {key}: must be between" in text and "Fix:" in text, text


def test_defaults_come_from_the_declaration(tmp_path: Path) -> None:
    t = Table(tmp_path / "x.toml", "link", {"key_file": "k"})
    link = read(t, LinkConfig)
    assert (link.port, link.repeat, link.gap_wait, link.loss) == (5600, 3, 0.5, 0.0)
    assert link.key_file == tmp_path / "k"
    t = Table(tmp_path / "x.toml", "link", {"key_file": "k", "simulated_loss": 0.25})
    assert read(t, LinkConfig).loss == 0.25
