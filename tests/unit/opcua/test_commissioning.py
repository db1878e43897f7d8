"""The pure parts of commissioning: when the source tries again (backoff.py), what it
says about a refusal (commissioning.py) and about its own certificate (expiry.py)."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from asyncua import ua

from agent.opcua.backoff import Backoff
from agent.opcua.certs import make_certificate
from agent.opcua.commissioning import Discovery, Refused, check_endpoint, explain
from agent.opcua.config import OpcuaSourceConfig
from agent.opcua.expiry import CHECK_EVERY, ExpiryWatch
from diode_tools.sim.certs import opcua_certificate

NOW = datetime.now(UTC)
DAY = timedelta(days=1)
B256 = "http://opcfoundation.org/UA/SecurityPolicy#Basic256Sha256"


def test_backoff_fast_after_a_loss_then_doubling() -> None:
    b = Backoff(low=1.0, high=60.0, fast_for=30.0)
    assert [b.failed(0.0) for _ in range(4)] == [1.0, 2.0, 4.0, 8.0]  # never connected
    b.connected()
    b.lost(100.0)
    assert [b.failed(100.0 + t) for t in (1, 10, 29)] == [1.0, 1.0, 1.0]  # a restart
    assert [b.failed(131.0 + t) for t in range(8)] == [1, 2, 4, 8, 16, 32, 60, 60]
    b.lost(500.0)
    assert b.refused() == 5.0 and b.refused() == 10.0  # a refusal: no fast phase
    assert b.failed(501.0) == 20.0
    b.connected()
    assert b.failed(600.0) == 1.0


def _cfg(**kw: object) -> OpcuaSourceConfig:
    return OpcuaSourceConfig("plant", "opc.tcp://192.0.2.10:4840", **kw)  # type: ignore[arg-type]


def _endpoint(cert: bytes, policy: str = B256,
              mode: ua.MessageSecurityMode = ua.MessageSecurityMode.SignAndEncrypt
              ) -> ua.EndpointDescription:
    ep = ua.EndpointDescription()
    ep.SecurityPolicyUri, ep.SecurityMode, ep.ServerCertificate = policy, mode, cert
    return ep


def test_policy_not_offered_lists_what_is(tmp_path: Path) -> None:
    disc = Discovery((_endpoint(b""),), None, NOW)
    with pytest.raises(Refused) as err:
        check_endpoint(_cfg(security_policy="Aes256_Sha256_RsaPss"), disc,
                       "http://opcfoundation.org/UA/SecurityPolicy#Aes256_Sha256_RsaPss",
                       ua.MessageSecurityMode.SignAndEncrypt)
    assert "192.0.2.10:4840" in str(err.value)
    assert "it offers Basic256Sha256/SignAndEncrypt" in str(err.value)
    with pytest.raises(Refused, match="no endpoint without security"):
        check_endpoint(_cfg(), disc, None, None)


def test_pinned_server_certificate_not_presented(tmp_path: Path) -> None:
    presented, pinned = tmp_path / "a.der", tmp_path / "b.der"
    tp_a = make_certificate(presented, tmp_path / "a.key", "urn:a", server=True)
    tp_b = make_certificate(pinned, tmp_path / "b.key", "urn:b", server=True)
    disc = Discovery((_endpoint(presented.read_bytes()),), None, NOW)
    cfg = _cfg(security_policy="Basic256Sha256", server_cert_file=pinned)
    with pytest.raises(Refused) as err:
        check_endpoint(cfg, disc, B256, ua.MessageSecurityMode.SignAndEncrypt)
    assert tp_a in str(err.value) and tp_b in str(err.value) and "Fix:" in str(err.value)
    ok = _cfg(security_policy="Basic256Sha256", server_cert_file=presented)
    assert check_endpoint(ok, disc, B256, ua.MessageSecurityMode.SignAndEncrypt) is not None


@pytest.mark.parametrize("valid, server_clock, why", [
    ((NOW - 40 * DAY, NOW - DAY), NOW, "it has expired"),
    ((NOW + DAY, NOW + 400 * DAY), NOW, "not valid yet by the server's clock"),
    # a right certificate, but the server's clock is two days behind
    ((NOW - DAY, NOW + 400 * DAY), NOW - 2 * DAY, "not valid yet by the server's clock"),
])
def test_time_invalid_says_which_clock(tmp_path: Path, valid: tuple[datetime, datetime],
                                       server_clock: datetime, why: str) -> None:
    cert, key = tmp_path / "tx.der", tmp_path / "tx.key"
    tp = opcua_certificate(cert, key, "urn:diode:tx:plant", *valid)
    cfg = _cfg(security_policy="Basic256Sha256", cert_file=cert, key_file=key)
    line = explain(cfg, ua.StatusCodes.BadCertificateTimeInvalid,
                   Discovery((), server_clock, NOW))
    assert why in line and tp in line and "Fix:" in line, line
    assert f"server clock {server_clock:%Y-%m-%d %H:%M}" in line


def test_untrusted_names_the_thumbprint_and_the_fix(tmp_path: Path) -> None:
    cert, key = tmp_path / "tx.der", tmp_path / "tx.key"
    tp = make_certificate(cert, key, "urn:diode:tx:plant")
    cfg = _cfg(security_policy="Basic256Sha256", cert_file=cert, key_file=key)
    line = explain(cfg, ua.StatusCodes.BadSecurityChecksFailed, None)
    assert tp in line and "Fix: trust TX's certificate" in line and "\n" not in line


def test_expiry_warns_ahead_at_start_and_daily(tmp_path: Path,
                                               caplog: pytest.LogCaptureFixture) -> None:
    cert = tmp_path / "c.der"
    tp = opcua_certificate(cert, tmp_path / "c.key", "urn:x", NOW - DAY, NOW + 10 * DAY)
    log = logging.getLogger("test.expiry")
    watch = ExpiryWatch("TX's certificate", cert, 30, "make a new one", log)
    with caplog.at_level(logging.WARNING, "test.expiry"):
        watch.tick(0.0, NOW)
        watch.tick(CHECK_EVERY - 1, NOW)       # not again within the day
        watch.tick(CHECK_EVERY, NOW + DAY)     # the next day
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2 and all(tp in ln and "expires on" in ln for ln in lines), lines
    assert "in 10 days" in lines[0] and "in 9 days" in lines[1]
    assert watch.status(NOW)["cert_days_left"] in (9, 10)
    assert ExpiryWatch("x", cert, 5, "fix", log).message(NOW) is None  # not yet worth a word
    level, line = ExpiryWatch("x", cert, 5, "fix", log).message(NOW + 11 * DAY) or (0, "")
    assert level == logging.ERROR and "expired on" in line
