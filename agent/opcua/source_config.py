"""Configuration of a TX OPC UA source: one `[[opcua]]` table of tx.toml.

Keys (seconds for every period and interval):

| key | default | meaning |
|---|---|---|
| `name` | required | channel name; the RX mirror of the same name serves it |
| `endpoint` | required | `opc.tcp://host:port[/path]` of the OT server |
| `security_policy` | `"None"` | `None`, `Basic256Sha256`, `Aes128_Sha256_RsaOaep`, `Aes256_Sha256_RsaPss` |
| `security_mode` | `"SignAndEncrypt"` | or `"Sign"` (only with a policy) |
| `cert_file`, `key_file` | unset | client certificate and key (PEM or DER), needed with a policy |
| `server_cert_file` | unset | pin the server certificate instead of taking it from its endpoints |
| `application_uri` | URI in `cert_file`, else `urn:diode:tx:<name>` | must match the certificate |
| `username`, `password` / `password_file` | anonymous | user login |
| `subtrees` | `["i=85"]` | node ids to mirror (with everything below them) |
| `sampling_interval`, `publishing_interval` | `0.1`, `0.1` | subscription timing |
| `queue_size` | `10` | per monitored item, on the server |
| `trigger` | `"StatusValue"` | `"StatusValueTimestamp"` also reports new timestamps of equal values |
| `rebrowse_period` | `120` | full re-crawl to find added, removed and renamed nodes |
| `model_carousel_period`, `value_keyframe_period` | `15`, `15` | re-sends for an RX that (re)starts |
| `timeout` | `10` | per request, and the connection health probe |
| `reconnect_min`, `reconnect_max` | `1`, `60` | exponential backoff |
| `queue_limit` | `200000` | value changes held while the link is slower (overflow counted, logged) |
| `model_chunk_size`, `batch_bytes` | `16384`, `1200` | record sizes on the link |
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from asyncua import ua
from asyncua.crypto import security_policies

from agent.config import _Table

SECURITY_POLICIES: dict[str, Any] = {
    "None": None,
    "Basic256Sha256": security_policies.SecurityPolicyBasic256Sha256,
    "Aes128_Sha256_RsaOaep": security_policies.SecurityPolicyAes128Sha256RsaOaep,
    "Aes256_Sha256_RsaPss": security_policies.SecurityPolicyAes256Sha256RsaPss,
}
SECURITY_MODES = {"Sign": ua.MessageSecurityMode.Sign,
                  "SignAndEncrypt": ua.MessageSecurityMode.SignAndEncrypt}

TRIGGERS = {"StatusValue": ua.DataChangeTrigger.StatusValue,
            "StatusValueTimestamp": ua.DataChangeTrigger.StatusValueTimestamp}


@dataclass(frozen=True)
class OpcuaSourceConfig:
    name: str
    endpoint: str
    security_policy: str = "None"
    security_mode: str = "SignAndEncrypt"
    cert_file: Path | None = None
    key_file: Path | None = None
    server_cert_file: Path | None = None
    application_uri: str = ""
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    subtrees: tuple[str, ...] = ("i=85",)
    sampling_interval: float = 0.1       # seconds
    publishing_interval: float = 0.1     # seconds
    queue_size: int = 10
    # "StatusValue" (the OPC UA default) or "StatusValueTimestamp": also report a new
    # source timestamp with an unchanged value (more traffic with some servers).
    trigger: str = "StatusValue"
    rebrowse_period: float = 120.0
    model_carousel_period: float = 15.0
    value_keyframe_period: float = 15.0
    timeout: float = 10.0
    reconnect_min: float = 1.0
    reconnect_max: float = 60.0
    queue_limit: int = 200_000
    model_chunk_size: int = 16384
    batch_bytes: int = 1200

    @property
    def label(self) -> str:
        return f"OPC UA server '{self.name}' ({self.endpoint})"


def parse_opcua_source(table: dict[str, Any], path: Path, where: str = "opcua") -> OpcuaSourceConfig:
    """One `[[opcua]]` table of tx.toml; ConfigError names file, key and fix."""
    t = _Table(Path(path), where, table)
    name = t.get("name", str, example='"plant"')
    endpoint = t.get("endpoint", str, example='"opc.tcp://192.0.2.10:4840"')
    if not endpoint.startswith("opc.tcp://"):
        t.fail("endpoint", f"expected an opc.tcp:// URL, got {endpoint!r}",
               'endpoint = "opc.tcp://192.0.2.10:4840"')
    policy = t.get("security_policy", str, "None", example='"Basic256Sha256"',
                   choices=tuple(SECURITY_POLICIES))
    mode = t.get("security_mode", str, "SignAndEncrypt", example='"SignAndEncrypt"',
                 choices=tuple(SECURITY_MODES))
    cert = t.path_of("cert_file", None, example='"tx-opcua.der"')
    key = t.path_of("key_file", None, example='"tx-opcua.key"')
    server_cert = t.path_of("server_cert_file", None, example='"plant-server.der"')
    if policy != "None":
        if cert is None or key is None:
            t.fail("cert_file", f"security_policy {policy} needs a client certificate",
                   "make one with `diode opcua-cert`, then set cert_file and key_file")
    elif "security_mode" in t.data:
        t.fail("security_mode", "set but security_policy is None",
               'set security_policy = "Basic256Sha256", or remove security_mode')
    if (cert is None) != (key is None):
        t.fail("cert_file", "cert_file and key_file go together", "set both or neither")
    for key_name, p in (("cert_file", cert), ("key_file", key), ("server_cert_file", server_cert)):
        if p is not None and not p.is_file():
            t.fail(key_name, f"file not found: {p}", "point it at an existing file")
    app_uri = t.get("application_uri", str, "", example=f'"urn:diode:tx:{name}"')
    if not app_uri:
        app_uri = f"urn:diode:tx:{name}"
        if cert is not None:
            from agent.opcua.certs import application_uri_of
            try:
                app_uri = application_uri_of(cert) or app_uri
            except ValueError:
                t.fail("cert_file", f"{cert} is not a PEM or DER certificate",
                       "point it at the certificate made by `diode opcua-cert`")
    username, password = t.credentials('"opcua.pass"')
    if password is not None and username is None:
        t.fail("username", "a password is set but no username", 'username = "diode"')
    subtrees = t.get("subtrees", list, ["i=85"], example='["i=85"]')
    if not subtrees or not all(isinstance(s, str) for s in subtrees):
        t.fail("subtrees", "expected a non-empty list of node ids", 'subtrees = ["ns=2;s=Plant"]')
    for s in subtrees:
        try:
            ua.NodeId.from_string(s)
        except Exception:  # asyncua raises several types on a bad string
            t.fail("subtrees", f"{s!r} is not a node id", 'subtrees = ["i=85", "ns=2;s=Plant"]')
    reconnect_min = t.get("reconnect_min", float, 1.0, example="1.0", lo=0.05, hi=3600)
    cfg = OpcuaSourceConfig(
        name=name, endpoint=endpoint, security_policy=policy, security_mode=mode,
        cert_file=cert, key_file=key, server_cert_file=server_cert, application_uri=app_uri,
        username=username, password=password, subtrees=tuple(subtrees),
        sampling_interval=t.get("sampling_interval", float, 0.1, example="0.1", lo=0.0, hi=3600),
        publishing_interval=t.get("publishing_interval", float, 0.1, example="0.1",
                                  lo=0.01, hi=3600),
        queue_size=t.get("queue_size", int, 10, example="10", lo=1, hi=10000),
        trigger=t.get("trigger", str, "StatusValue", example='"StatusValueTimestamp"',
                      choices=tuple(TRIGGERS)),
        rebrowse_period=t.get("rebrowse_period", float, 120.0, example="120.0", lo=1.0),
        model_carousel_period=t.get("model_carousel_period", float, 15.0, example="15.0",
                                    lo=1.0),
        value_keyframe_period=t.get("value_keyframe_period", float, 15.0, example="15.0",
                                    lo=1.0),
        timeout=t.get("timeout", float, 10.0, example="10.0", lo=0.5, hi=600),
        reconnect_min=reconnect_min,
        reconnect_max=t.get("reconnect_max", float, 60.0, example="60.0", lo=reconnect_min,
                            hi=86400),
        queue_limit=t.get("queue_limit", int, 200_000, example="200000", lo=100),
        model_chunk_size=t.get("model_chunk_size", int, 16384, example="16384", lo=512,
                               hi=1 << 20),
        batch_bytes=t.get("batch_bytes", int, 1200, example="1200", lo=200, hi=1 << 20),
    )
    t.done()
    return cfg


