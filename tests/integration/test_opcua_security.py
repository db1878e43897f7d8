"""OPC UA security between real asyncua peers: the TX source as a client with its
own certificate, the mirror as a server trusting only the certificates in a folder.

A trusted TX connects over Basic256Sha256 / SignAndEncrypt and crawls; an
untrusted one is refused loudly (state "refused", `last_error` naming its
thumbprint and the fix) and tried again with backoff, never silently.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from pathlib import Path

from agent.opcua.certs import make_certificate, thumbprint
from agent.opcua.mirror import OpcuaMirror, OpcuaMirrorConfig
from agent.opcua.source import OpcuaSource, OpcuaSourceConfig
from diode_tools.sim.mosquitto import free_port


def test_trusted_client_connects_untrusted_is_refused(tmp_path: Path) -> None:
    srv_cert, srv_key = tmp_path / "rx.der", tmp_path / "rx.key"
    make_certificate(srv_cert, srv_key, "urn:diode:rx:sec", server=True)
    certs = {}
    for who in ("good", "bad"):
        cert, key = tmp_path / f"{who}.der", tmp_path / f"{who}.key"
        tp = make_certificate(cert, key, f"urn:diode:tx:{who}")
        assert tp == thumbprint(cert) and len(tp) == 40
        assert key.stat().st_mode & 0o777 == 0o600
        certs[who] = (cert, key)
    trusted = tmp_path / "trusted"
    trusted.mkdir()
    shutil.copy(certs["good"][0], trusted / "good.der")
    url = f"opc.tcp://127.0.0.1:{free_port()}/diode/"

    async def main() -> None:
        mirror = OpcuaMirror(OpcuaMirrorConfig(
            "sec", url, application_uri="urn:diode:rx:sec",
            security_policies=("Basic256Sha256_SignAndEncrypt",), cert_file=srv_cert,
            key_file=srv_key, trusted_clients_dir=trusted))
        await mirror.start()
        sources = {}
        try:
            for who, (cert, key) in certs.items():
                sources[who] = OpcuaSource(OpcuaSourceConfig(
                    "sec", url, security_policy="Basic256Sha256", security_mode="SignAndEncrypt",
                    cert_file=cert, key_file=key, application_uri=f"urn:diode:tx:{who}",
                    timeout=3.0))
                await sources[who].start()
            good, bad = sources["good"], sources["bad"]
            deadline = time.monotonic() + 40
            # refused, then tried again after the first backoff (5 s)
            while not (good.state == "connected" and bad.counters["refusals"] >= 2):
                assert time.monotonic() < deadline, (good.state, bad.state, bad.last_error)
                await asyncio.sleep(0.05)
            assert good.counters["variables"] >= 8  # the mirror's DiodeDiagnostics
            assert good.last_error is None
            assert bad.state == "refused" and bad.counters["connects"] == 0
            message = bad.stats()["last_error"]
            assert "BadCertificateUntrusted" in message and "Fix: trust" in message, message
            assert thumbprint(certs["bad"][0]) in message, message
        finally:
            for src in sources.values():
                await src.stop()
            await mirror.stop()

    asyncio.run(asyncio.wait_for(main(), 80))
