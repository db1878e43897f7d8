"""Topics RX makes with topic_prefix / topic_rewrite that no broker would take."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent import config
from agent.adapter import RxContext
from agent.errors import ConfigError
from agent.mqtt.codec import MqttMessage
from agent.mqtt.config import BrokerConfig, RxMqttChannel
from agent.mqtt.sink import MqttSink


def test_a_topic_too_long_after_the_prefix_is_counted_not_retried() -> None:
    sink = MqttSink(RxMqttChannel("plant", BrokerConfig(client_id="t"), topic_prefix="site/"),
                    RxContext(fail=lambda m: None, open_spool=lambda *a, **k: None))
    assert sink.prepare(MqttMessage("plant", "a" * 65_531, b"x"), 0.0) is None
    assert sink.counters["bad_topic"] == 1
    assert sink.prepare(MqttMessage("plant", "ok", b"x"), 0.0) == ("site/ok", None)


@pytest.mark.parametrize("line", ['topic_prefix = "ot/+/"', 'topic_rewrite = [["a/", "#/"]]',
                                  'status_topic = "diode/#"'])
def test_wildcards_in_made_topics_are_config_errors(line: str, tmp_path: Path) -> None:
    p = tmp_path / "rx.toml"
    p.write_text(f'[link]\nkey_file = "k"\n[[mqtt]]\nname = "plant"\n{line}\n')
    with pytest.raises(ConfigError) as err:
        config.load(p, "rx")
    assert "wildcard" in str(err.value) and "Fix:" in str(err.value)
