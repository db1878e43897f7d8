"""Commissioning mistakes, loud and with the fix: the real agent processes against a real
asyncua plant with security (it trusts only the client certificates in a folder), and
the most common one against node-opcua's certificate manager too.

For each mistake TX logs one line (no traceback) naming the server endpoint, what
is wrong, TX's certificate thumbprint where it matters, and the fix; its source
is "refused" in TX's status (with `last_error`) and, through the heartbeat, in
RX's; TX keeps running and tries again with backoff. The untrusted certificate,
the most common first-day mistake, is then trusted on the plant: TX connects by
itself and the mirror serves.
"""

from __future__ import annotations

import datetime
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from agent.opcua.certs import make_certificate, thumbprint
from diode_tools.sim.certs import opcua_certificate
from diode_tools.sim.mosquitto import free_port
from diode_tools.sim.node_opcua import NodeOpcuaPlant, node_client
from diode_tools.sim.plant_opcua import PlantProcess, PlantSecurity
from tests.integration.conftest import Agent, Diode, wait_until

NOW = datetime.datetime.now(datetime.UTC)
DAY = datetime.timedelta(days=1)


@dataclass
class Site:
    plant: PlantProcess
    trusted: Path
    plant_cert: Path
    tmp: Path


@pytest.fixture
def site(tmp_path: Path, request: pytest.FixtureRequest) -> Any:
    """The secure plant; `refuse_at_open` by indirect parametrization (default: refuse at
    CreateSession, as asyncua does)."""
    cert, key = tmp_path / "plant.der", tmp_path / "plant.key"
    make_certificate(cert, key, "urn:diode:plant", server=True)
    trusted = tmp_path / "plant-trusted"
    trusted.mkdir()
    plant = PlantProcess(free_port(), variables=50, rate=50, security=PlantSecurity(
        cert, key, ("Basic256Sha256_SignAndEncrypt",), True, trusted,
        getattr(request, "param", None)))
    try:
        yield Site(plant, trusted, cert, tmp_path)
    finally:
        plant.stop()


def _tx_cert(site: Site, valid: tuple[datetime.datetime, datetime.datetime] | None = None
             ) -> tuple[Path, Path, str]:
    cert, key = site.tmp / "tx.der", site.tmp / "tx.key"
    if valid is None:
        tp = make_certificate(cert, key, "urn:diode:tx:plant")
    else:
        tp = opcua_certificate(cert, key, "urn:diode:tx:plant", *valid)
    return cert, key, tp


def _start(diode: Diode, site: Site, cert: Path, key: Path, **source: Any) -> tuple[Agent, Agent]:
    tx, rx = diode.tx_doc(), diode.rx_doc()
    del tx["mqtt"], rx["mqtt"]
    tx["opcua"] = [{"name": "plant", "endpoint": site.plant.endpoint, "timeout": 3.0,
                    "security_policy": "Basic256Sha256", "security_mode": "SignAndEncrypt",
                    "cert_file": str(cert), "key_file": str(key), **source}]
    rx["opcua"] = [{"name": "plant", "endpoint": f"opc.tcp://127.0.0.1:{free_port()}/diode/"}]
    rx_agent = diode.start("rx", rx)
    # RX listening first: TX's log crosses the link once, as it happens
    wait_until(lambda: rx_agent.status() is not None, 20, "RX listening")
    return diode.start("tx", tx), rx_agent


def _refused(diode: Diode, site: Site, tx: Agent, rx: Agent, *expect: str) -> str:
    """TX's one line for the mistake; asserts its status, RX's view, the retries."""
    st = diode.wait_status(tx, lambda s: s["counters"].get("opcua:plant.refusals", 0) >= 2,
                           40, "TX refused, then tried again")
    assert st["sources"]["opcua:plant"] == "refused"
    last = st["queues"]["opcua:plant"]["last_error"]
    for word in (site.plant.endpoint, *expect, "Fix:"):
        assert word in last, (word, last)
    log = tx.log()
    lines = [ln for ln in log.splitlines() if "ERROR diode.source.opcua" in ln
             and "Trying again" in ln]
    assert len(lines) == 1, lines  # one line, not repeated on every retry
    # the same line (its clock readings aside, which move from try to try)
    assert all(word in lines[0] for word in (site.plant.endpoint, *expect, "Fix:")), lines[0]
    assert "Traceback" not in log and "NotEnoughData" not in log, log[-3000:]
    assert tx.running(), "a refusal must not stop TX"
    diode.wait_status(rx, lambda s: (s.get("tx") or {}).get("sources", {}).get("opcua:plant")
                      == "refused" and any(expect[0] in e["message"] and site.plant.endpoint
                                           in e["message"] for e in s["tx_log"]), 10,
                      "RX showing the refusal and TX's line")
    return last


def test_untrusted_tx_certificate_then_trusted(diode: Diode, site: Site) -> None:
    cert, key, tp = _tx_cert(site)
    tx, rx = _start(diode, site, cert, key)
    line = _refused(diode, site, tx, rx, "BadCertificateUntrusted", tp, "trust TX's certificate")
    print(line)
    shutil.copy(cert, site.trusted / "tx.der")  # the fix, on the plant; TX is not restarted
    diode.wait_status(tx, lambda s: s["sources"]["opcua:plant"] == "connected", 40,
                      "TX connected once the plant trusts its certificate")
    diode.wait_status(rx, lambda s: s.get("opcua", {}).get("plant", {}).get("state")
                      == "serving", 20, "the mirror serving")


@pytest.mark.parametrize("site", ["error", "close"], indirect=True)
def test_untrusted_tx_certificate_refused_at_open(diode: Diode, site: Site) -> None:
    """Servers that refuse already in OpenSecureChannel: with an ERR message
    (BadSecurityChecksFailed), or by closing the connection (TX used to hang in
    "connecting" after an asyncua traceback)."""
    cert, key, tp = _tx_cert(site)
    tx, rx = _start(diode, site, cert, key)
    how = site.plant.security.refuse_at_open if site.plant.security else None
    expect = ("BadSecurityChecksFailed",) if how == "error" else (
        "closed the connection", "does not trust TX's certificate")
    print(_refused(diode, site, tx, rx, *expect, tp, "trust TX's certificate"))
    shutil.copy(cert, site.trusted / "tx.der")
    diode.wait_status(tx, lambda s: s["sources"]["opcua:plant"] == "connected", 40,
                      "TX connected once the plant trusts its certificate")


@pytest.mark.parametrize("case", ["expired", "clock_ahead"])
def test_certificate_outside_its_validity(diode: Diode, site: Site, case: str) -> None:
    valid = ((NOW - 40 * DAY, NOW - DAY) if case == "expired"
             else (NOW + DAY, NOW + 400 * DAY))  # made on a board whose clock was a day ahead
    cert, key, tp = _tx_cert(site, valid)
    shutil.copy(cert, site.trusted / "tx.der")  # trusted: only the dates are wrong
    tx, rx = _start(diode, site, cert, key)
    why = "it has expired" if case == "expired" else "not valid yet by the server's clock"
    line = _refused(diode, site, tx, rx, "BadCertificateTimeInvalid", tp, why, "server clock")
    print(line)
    start_warning = "expired on" if case == "expired" else "is valid only from"
    assert start_warning in tx.log(), "no certificate warning at start"


def test_security_policy_the_plant_does_not_offer(diode: Diode, site: Site) -> None:
    cert, key, _ = _tx_cert(site)
    tx, rx = _start(diode, site, cert, key, security_policy="Aes256_Sha256_RsaPss")
    print(_refused(diode, site, tx, rx, "no endpoint with security policy Aes256_Sha256_RsaPss",
                   "Basic256Sha256/SignAndEncrypt"))


def test_server_certificate_tx_does_not_trust(diode: Diode, site: Site) -> None:
    cert, key, _ = _tx_cert(site)
    other, other_key = site.tmp / "other-plant.der", site.tmp / "other-plant.key"
    pinned = make_certificate(other, other_key, "urn:diode:plant", server=True)
    tx, rx = _start(diode, site, cert, key, server_cert_file=str(other))
    print(_refused(diode, site, tx, rx, thumbprint(site.plant_cert), pinned, "server_cert_file"))


def test_certificate_expiry_warned_at_start_and_in_the_status(diode: Diode, site: Site,
                                                              tmp_path: Path) -> None:
    cert, key, tp = _tx_cert(site, (NOW - DAY, NOW + 10 * DAY))
    shutil.copy(cert, site.trusted / "tx.der")
    rx_cert, rx_key = tmp_path / "rx.der", tmp_path / "rx.key"
    opcua_certificate(rx_cert, rx_key, "urn:diode:rx:plant", NOW - DAY, NOW + 20 * DAY,
                      server=True)
    tx_doc, rx_doc = diode.tx_doc(), diode.rx_doc()
    del tx_doc["mqtt"], rx_doc["mqtt"]
    tx_doc["opcua"] = [{"name": "plant", "endpoint": site.plant.endpoint, "timeout": 3.0,
                        "security_policy": "Basic256Sha256", "cert_file": str(cert),
                        "key_file": str(key)}]
    rx_doc["opcua"] = [{"name": "plant", "endpoint": f"opc.tcp://127.0.0.1:{free_port()}/diode/",
                        "security_policies": ["None", "Basic256Sha256_SignAndEncrypt"],
                        "cert_file": str(rx_cert), "key_file": str(rx_key),
                        "cert_warn_days": 30}]
    tx, rx = diode.start("tx", tx_doc), diode.start("rx", rx_doc)
    st = diode.wait_status(tx, lambda s: s["sources"]["opcua:plant"] == "connected", 30,
                           "TX connected with a certificate that expires soon")
    q = st["queues"]["opcua:plant"]
    assert q["cert_thumbprint"] == tp and q["cert_days_left"] in (9, 10), q

    def warned(log: str, what: str) -> bool:
        return any("WARNING" in ln and what in ln and "expires on" in ln
                   for ln in log.splitlines())

    wait_until(lambda: warned(tx.log(), tp), 10, "TX's expiry warning")
    rx_st = diode.wait_status(rx, lambda s: "plant" in s.get("opcua", {}), 20, "mirror status")
    assert rx_st["opcua"]["plant"]["cert_days_left"] in (19, 20), rx_st["opcua"]["plant"]
    assert warned(rx.log(), "mirror's OPC UA server certificate")


def test_an_independent_plant_refusing_then_trusting_tx(diode: Diode, tmp_path: Path) -> None:
    """The same first-day mistake against node-opcua (scripts/node-opcua/secure_plant.mjs):
    its certificate manager refuses TX's certificate until it is in its trusted folder."""
    pki = tmp_path / "node-pki"
    with NodeOpcuaPlant(script="secure_plant.mjs", args=(str(pki),)) as plant:
        cert, key = tmp_path / "tx.der", tmp_path / "tx.key"
        tp = make_certificate(cert, key, "urn:diode:tx:plant")
        tx_doc, rx_doc = diode.tx_doc(), diode.rx_doc()
        del tx_doc["mqtt"], rx_doc["mqtt"]
        tx_doc["opcua"] = [{"name": "plant", "endpoint": plant.endpoint, "timeout": 3.0,
                            "security_policy": "Basic256Sha256",
                            "security_mode": "SignAndEncrypt", "cert_file": str(cert),
                            "key_file": str(key), "reconnect_max": 5.0}]
        mirror = f"opc.tcp://127.0.0.1:{free_port()}/diode/"
        rx_doc["opcua"] = [{"name": "plant", "endpoint": mirror}]
        rx = diode.start("rx", rx_doc)
        wait_until(lambda: rx.status() is not None, 20, "RX listening")
        tx = diode.start("tx", tx_doc)
        st = diode.wait_status(tx, lambda s: s["counters"].get("opcua:plant.refusals", 0) >= 2,
                               60, "TX refused, then tried again")
        assert st["sources"]["opcua:plant"] == "refused"
        last = st["queues"]["opcua:plant"]["last_error"]
        for word in (plant.endpoint, tp, "trust TX's certificate", "Fix:"):
            assert word in last, (word, last)
        assert "Traceback" not in tx.log()
        # the fix, as the line says and node-opcua's admins do it: the certificate moved
        # from the server's rejected folder to its trusted one; TX is not restarted
        [rejected] = (pki / "rejected").iterdir()
        shutil.move(rejected, pki / "trusted" / "certs" / rejected.name)
        diode.wait_status(tx, lambda s: s["sources"]["opcua:plant"] == "connected", 60,
                          "TX connected once the plant trusts its certificate")
        st = diode.wait_status(rx, lambda s: s.get("opcua", {}).get("plant", {}).get("state")
                               == "serving", 20, "the mirror serving")
        [dv] = node_client(mirror, [{"op": "read", "nodeId": "ns=2;s=Plant.Value"}])
        assert dv["status"] == "Good" and isinstance(dv["value"], int | float), dv
