"""Configuration of the OPC UA channels: `[[opcua]]` tables.

On TX each is a source (one plant server to mirror); on RX the mirror of the
same name serves it read-only. Names only here: asyncua is imported by the
source and the mirror, not to read a config.

TX source keys (seconds for every period and interval):


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
| `carousel_share` | `0.1` | share of the link each of the two re-sends may use |
| `timeout` | `10` | per request, and the connection health probe |
| `reconnect_min`, `reconnect_max` | `1`, `60` | exponential backoff |
| `queue_limit` | `200000` | value changes held while the link is slower (overflow counted, logged) |
| `model_chunk_size`, `batch_bytes` | `16384`, `1200` | record sizes on the link |
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.config_reader import Table

SECURITY_POLICIES = ("None", "Basic256Sha256", "Aes128_Sha256_RsaOaep", "Aes256_Sha256_RsaPss")
SECURITY_MODES = ("Sign", "SignAndEncrypt")
TRIGGERS = ("StatusValue", "StatusValueTimestamp")
MIRROR_POLICIES = ("None", *(f"{p}_{m}" for p in SECURITY_POLICIES[1:] for m in SECURITY_MODES))
# ns=<index>;<i|s|g|b>=<id>, or without the namespace (OPC UA Part 6, 5.3.1.10)
_NODE_ID = re.compile(r"^(ns=\d+;|nsu=[^;]+;)?(i=\d+|s=.+|g=[0-9a-fA-F-]{36}|b=[A-Za-z0-9+/=]*)$")


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
    carousel_share: float = 0.1          # of the link, for each of the two carousels
    model_chunk_size: int = 16384
    batch_bytes: int = 1200

    @property
    def label(self) -> str:
        return f"OPC UA server '{self.name}' ({self.endpoint})"


def parse_source(t: Table) -> OpcuaSourceConfig:
    """One `[[opcua]]` table of tx.toml; ConfigError names file, key and fix."""
    name = t.get("name", str, example='"plant"')
    endpoint = t.get("endpoint", str, example='"opc.tcp://192.0.2.10:4840"')
    if not endpoint.startswith("opc.tcp://"):
        t.fail("endpoint", f"expected an opc.tcp:// URL, got {endpoint!r}",
               'endpoint = "opc.tcp://192.0.2.10:4840"')
    policy = t.get("security_policy", str, "None", example='"Basic256Sha256"',
                   choices=SECURITY_POLICIES)
    mode = t.get("security_mode", str, "SignAndEncrypt", example='"SignAndEncrypt"',
                 choices=SECURITY_MODES)
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
        if not _NODE_ID.match(s):
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
                      choices=TRIGGERS),
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
        carousel_share=t.get("carousel_share", float, 0.1, example="0.1", lo=0.001, hi=1.0),
        model_chunk_size=t.get("model_chunk_size", int, 16384, example="16384", lo=512,
                               hi=1 << 20),
        batch_bytes=t.get("batch_bytes", int, 1200, example="1200", lo=200, hi=1 << 20),
    )
    return cfg


@dataclass(frozen=True)
class OpcuaMirrorConfig:
    """One `[[opcua]]` table of rx.toml.

    | key | default | meaning |
    |---|---|---|
    | `name` | required | the TX source of the same name is mirrored here |
    | `endpoint` | `opc.tcp://0.0.0.0:4840/diode/` | where IT clients connect |
    | `application_uri` | `urn:diode:rx:<name>` | the mirror's URI (in its certificate) |
    | `server_name` | `diode mirror <name>` | |
    | `security_policies` | `["None"]` | names in MIRROR_POLICIES, e.g. `Basic256Sha256_SignAndEncrypt` |
    | `cert_file`, `key_file` | unset | server certificate and key, needed by secure policies |
    | `trusted_clients_dir` | unset | only client certificates in this folder may connect securely |
    | `allow_anonymous`, `users` | `true`, `{}` | logins; every user is read-only |
    | `bad_after` | `30` | seconds of lost link/source before Uncertain values turn Bad |
    | `diagnostics` | `true` | the Objects/DiodeDiagnostics object |
    """

    name: str
    endpoint: str = "opc.tcp://0.0.0.0:4840/diode/"
    application_uri: str = ""
    server_name: str = ""
    security_policies: tuple[str, ...] = ("None",)
    cert_file: Path | None = None
    key_file: Path | None = None
    # Only client application certificates in this folder (PEM/DER) may open a
    # secure channel; None accepts any well-formed certificate.
    trusted_clients_dir: Path | None = None
    allow_anonymous: bool = True
    users: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    bad_after: float = 30.0
    diagnostics: bool = True


def parse_mirror(t: Table) -> OpcuaMirrorConfig:
    """One `[[opcua]]` table of rx.toml; ConfigError names file, key and fix."""
    name = t.get("name", str, example='"plant"')
    endpoint = t.get("endpoint", str, "opc.tcp://0.0.0.0:4840/diode/",
                     example='"opc.tcp://0.0.0.0:4840/diode/"')
    if not endpoint.startswith("opc.tcp://"):
        t.fail("endpoint", f"expected an opc.tcp:// URL, got {endpoint!r}",
               'endpoint = "opc.tcp://0.0.0.0:4840/diode/"')
    policies = t.get("security_policies", list, ["None"], example='["None"]')
    if not policies or not all(isinstance(p, str) and p in MIRROR_POLICIES for p in policies):
        t.fail("security_policies", f"expected a non-empty list of {', '.join(MIRROR_POLICIES)}",
               'security_policies = ["Basic256Sha256_SignAndEncrypt"]')
    cert = t.path_of("cert_file", None, example='"rx-opcua.der"')
    key = t.path_of("key_file", None, example='"rx-opcua.key"')
    if (cert is None) != (key is None):
        t.fail("cert_file", "cert_file and key_file go together", "set both or neither")
    if any(p != "None" for p in policies) and cert is None:
        t.fail("cert_file", "secure security_policies need a server certificate",
               "make one with `diode opcua-cert --server`, then set cert_file and key_file")
    for key_name, p in (("cert_file", cert), ("key_file", key)):
        if p is not None and not p.is_file():
            t.fail(key_name, f"file not found: {p}", "point it at an existing file")
    trusted = t.path_of("trusted_clients_dir", None, example='"opcua-trusted"')
    if trusted is not None and not trusted.is_dir():
        t.fail("trusted_clients_dir", f"not a folder: {trusted}",
               "point it at a folder holding the client certificates to trust")
    users = t.get("users", dict, {}, example='{ operator = "secret" }')
    if not all(isinstance(k, str) and isinstance(v, str) and v for k, v in users.items()):
        t.fail("users", "expected a table of user name = password (non-empty strings)",
               'users = { operator = "secret" }')
    allow_anonymous = t.get("allow_anonymous", bool, True, example="true")
    if not allow_anonymous and not users:
        t.fail("allow_anonymous", "no anonymous access and no users: nobody could log in",
               'add users = { operator = "secret" }, or allow_anonymous = true')
    cfg = OpcuaMirrorConfig(
        name=name, endpoint=endpoint,
        application_uri=t.get("application_uri", str, f"urn:diode:rx:{name}",
                              example=f'"urn:diode:rx:{name}"'),
        server_name=t.get("server_name", str, f"diode mirror {name}",
                          example=f'"diode mirror {name}"'),
        security_policies=tuple(policies), cert_file=cert, key_file=key,
        trusted_clients_dir=trusted,
        allow_anonymous=allow_anonymous, users=tuple(sorted(users.items())),
        bad_after=t.get("bad_after", float, 30.0, example="30.0", lo=0.0, hi=86400),
        diagnostics=t.get("diagnostics", bool, True, example="true"),
    )
    return cfg


def parse(t: Table, role: str, spooled: bool) -> OpcuaSourceConfig | OpcuaMirrorConfig:
    return parse_source(t) if role == "tx" else parse_mirror(t)


def check(tables: list[Table], configs: list[Any]) -> None:
    """Two mirrors cannot share an endpoint."""
    endpoints = [getattr(c, "endpoint", None) for c in configs if isinstance(c, OpcuaMirrorConfig)]
    for t, c in zip(tables, configs, strict=True):
        if isinstance(c, OpcuaMirrorConfig) and endpoints.count(c.endpoint) > 1:
            t.fail("endpoint", f"{c.endpoint} is used by two mirrors",
                   "give each [[opcua]] mirror its own port")
