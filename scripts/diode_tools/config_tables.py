"""The README's configuration tables, generated from the declared settings.

Each key is declared once, on its config dataclass (agent/config_reader.py,
`setting`). The README holds the generated tables between
`<!-- config:NAME -->` and `<!-- /config:NAME -->`; a unit test fails when they
are out of date, and this rewrites them:

    .venv/bin/python -m diode_tools.config_tables --write
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable
from pathlib import Path

from agent.config import BoardConfig, LinkConfig, MetricsConfig, SpoolConfig, StatusConfig
from agent.config_reader import markdown_rows
from agent.modbus.config import ModbusChannel, ModbusDevice, ModbusValue
from agent.mqtt.config import BrokerConfig, RxMqttChannel, TlsConfig, TxMqttChannel
from agent.opcua.config import OpcuaMirrorConfig, OpcuaSourceConfig
from agent.syslog.config import RxSyslogChannel, TxSyslogChannel

README = Path(__file__).resolve().parents[2] / "README.md"
_HEAD = ["| key | default | meaning |", "|---|---|---|"]


def _both(tx: type, rx: type) -> list[str]:
    """Rows of a table both roles read: shared keys once, the others marked TX: / RX:."""
    tx_rows, rx_rows = markdown_rows(tx), markdown_rows(rx)
    shared = [r for r in tx_rows if r in rx_rows]
    return (shared + [r.replace("| ", "| TX: ", 1) for r in tx_rows if r not in shared]
            + [r.replace("| ", "| RX: ", 1) for r in rx_rows if r not in shared])


def blocks() -> dict[str, str]:
    tables = {
        "link": markdown_rows(LinkConfig),
        "mqtt": _both(TxMqttChannel, RxMqttChannel) + markdown_rows(BrokerConfig)
        + markdown_rows(TlsConfig),
        "spool": markdown_rows(SpoolConfig),
        "board": markdown_rows(BoardConfig),
        "status": markdown_rows(StatusConfig),
        "metrics": markdown_rows(MetricsConfig),
        "opcua-tx": markdown_rows(OpcuaSourceConfig),
        "opcua-rx": markdown_rows(OpcuaMirrorConfig),
        "syslog-tx": markdown_rows(TxSyslogChannel),
        "syslog-rx": markdown_rows(RxSyslogChannel),
        "modbus-tx": markdown_rows(ModbusChannel),
        "modbus-device": markdown_rows(ModbusDevice),
        "modbus-value": markdown_rows(ModbusValue),
    }
    return {name: "\n".join(_HEAD + rows) for name, rows in tables.items()}


def _replacement(table: str) -> Callable[[re.Match[str]], str]:
    return lambda m: m.group(1) + table + "\n" + m.group(2)


def render(text: str) -> str:
    """`text` with every config block replaced by its generated table."""
    for name, table in blocks().items():
        pattern = re.compile(rf"(<!-- config:{name} -->\n).*?(<!-- /config:{name} -->)", re.S)
        if not pattern.search(text):
            raise SystemExit(f"README.md has no <!-- config:{name} --> block")
        text = pattern.sub(_replacement(table), text)
    return text


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--write", action="store_true", help="rewrite the README's tables")
    args = p.parse_args()
    text = README.read_text()
    new = render(text)
    if args.write:
        README.write_text(new)
        return 0
    if new != text:
        print("README.md's configuration tables are out of date: run "
              "python -m diode_tools.config_tables --write", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
