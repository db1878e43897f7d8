"""The demo and the benches run as a user runs them, and report honest figures."""

import json
import subprocess
import sys

import pytest


def _diode(*args: str, timeout: float) -> dict:
    proc = subprocess.run([sys.executable, "-m", "agent.cli", *args], capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_demo_delivers_everything_on_a_clean_link() -> None:
    out = _diode("demo", "--duration", "4", "--rate", "300", "--json", timeout=120)
    assert out["published"] > 1000
    assert out["delivered"] == out["published"]
    assert out["lost"] == 0 and out["frames_lost"] == 0
    assert out["duplicates"] > 0  # repeat = 3: RX saw and dropped the extra copies
    assert out["link_state"] == "UP"
    assert out["retained_topics_at_it"] == 100
    assert out["syslog_sent"] > 0 and out["syslog_delivered"] == out["syslog_sent"]
    # the simulated Modbus PLC: polled, mirrored, and never written to
    assert out["modbus_requests"] > 0 and out["modbus_writes"] == 0
    assert out["modbus_mirror_variables"] == 267


@pytest.mark.slow
def test_demo_with_loss_reports_it() -> None:
    out = _diode("demo", "--duration", "4", "--rate", "300", "--loss", "0.2", "--json",
                 timeout=120)
    assert 0.1 < out["datagram_loss"] < 0.3
    # r = 3 at 20 % loss: 0.8 % of frames lost in all copies, so nearly everything arrives
    assert out["delivered"] >= 0.95 * out["published"]
    assert out["lost"] == out["published"] - out["delivered"]
    assert out["syslog_lost"] == out["syslog_sent"] - out["syslog_delivered"]


def test_bench_link_json() -> None:
    out = _diode("bench", "link", "--loss", "0.05", "--repeat", "3", "--frames", "20000",
                 "--json", timeout=120)
    assert out["frames_sent"] == 20000
    assert abs(out["delivered_fraction"] - out["theory"]) < 0.001


@pytest.mark.slow
def test_bench_mqtt_json() -> None:
    # 100 Mbit/s: well below what RX takes in, even on a loaded CI machine
    out = _diode("bench", "mqtt", "--messages", "20000", "--bitrate", "100000000",
                 "--rounds", "3", "--json", timeout=300)
    for key in ("msgs_per_s", "p50_ms", "p99_ms", "bridge_msgs_per_s", "ratio", "lost"):
        assert key in out
    assert out["lost"] == 0 and out["bridge_lost"] == 0
    assert len(out["msgs_per_s_rounds"]) == len(out["bridge_msgs_per_s_rounds"]) == 3
    assert out["msgs_per_s"] == sorted(out["msgs_per_s_rounds"])[1] > 0
    assert out["bridge_msgs_per_s"] == sorted(out["bridge_msgs_per_s_rounds"])[1] > 0
    assert out["ratio"] == round(out["msgs_per_s"] / out["bridge_msgs_per_s"], 3)


def test_bench_syslog_json() -> None:
    out = _diode("bench", "syslog", "--messages", "5000", "--rounds", "1", "--bitrate",
                 "50000000", "--json", timeout=120)
    assert out["lost"] == 0 and out["rsyslog_lost"] == 0 and out["frames_lost"] == 0
    assert out["msgs_per_s"] > 0 and out["rsyslog_msgs_per_s"] > 0
    assert out["ratio"] == round(out["msgs_per_s"] / out["rsyslog_msgs_per_s"], 3)


def test_demo_and_bench_on_a_board_without_the_tools_say_how_to_get_them() -> None:
    hide = ("import sys; sys.modules['diode_tools'] = None; from agent.cli import main; "
            "sys.exit(main(sys.argv[1:]))")
    for args in (["demo"], ["bench", "link"]):
        proc = subprocess.run([sys.executable, "-c", hide, *args], capture_output=True,
                              text=True, timeout=60)
        assert proc.returncode == 2
        assert "not installed" in proc.stderr and "scripts/setup.sh" in proc.stderr
