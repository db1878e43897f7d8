"""Configuration of the OPC UA channels: `[[opcua]]` tables.

On TX each is a source (one plant server to mirror); on RX the mirror of the
same name serves it read-only. Names only here: asyncua is imported by the
source and the mirror, not to read a config.

Every key is declared once, on the dataclasses below; the README's tables are
generated from them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from agent.config_reader import Table, read, setting

SECURITY_POLICIES = ("None", "Basic256Sha256", "Aes128_Sha256_RsaOaep", "Aes256_Sha256_RsaPss")
SECURITY_MODES = ("Sign", "SignAndEncrypt")
TRIGGERS = ("StatusValue", "StatusValueTimestamp")
MIRROR_POLICIES = ("None", *(f"{p}_{m}" for p in SECURITY_POLICIES[1:] for m in SECURITY_MODES))
# ns=<index>;<i|s|g|b>=<id>, or without the namespace (OPC UA Part 6, 5.3.1.10)
_NODE_ID = re.compile(r"^(ns=\d+;|nsu=[^;]+;)?(i=\d+|s=.+|g=[0-9a-fA-F-]{36}|b=[A-Za-z0-9+/=]*)$")


@dataclass(frozen=True)
class OpcuaSourceConfig:
    """One `[[opcua]]` table of tx.toml: a plant server to mirror. Seconds for every
    period and interval."""
    name: str = setting(doc="channel name; the RX mirror of the same name serves it",
                        example='"plant"')
    endpoint: str = setting(doc="`opc.tcp://host:port[/path]` of the plant server",
                            example='"opc.tcp://192.0.2.10:4840"')
    security_policy: str = setting("None", doc=", ".join(f"`{p}`" for p in SECURITY_POLICIES),
                                   example='"Basic256Sha256"', choices=SECURITY_POLICIES)
    security_mode: str = setting("SignAndEncrypt", doc='or `"Sign"` (only with a policy)',
                                 example='"SignAndEncrypt"', choices=SECURITY_MODES)
    cert_file: Path | None = setting(None, doc="TX's certificate (PEM or DER), needed with a "
                                     "policy: `diode opcua-cert`", example='"tx-opcua.der"')
    key_file: Path | None = setting(None, doc="its key", example='"tx-opcua.key"')
    server_cert_file: Path | None = setting(None, doc="pin the server certificate instead of "
                                            "taking it from its endpoints",
                                            example='"plant-server.der"')
    application_uri: str = setting("", doc="must match the certificate", manual=True,
                                   example='"urn:diode:tx:plant"',
                                   default_doc="the URI in `cert_file`, else "
                                   "`urn:diode:tx:<name>`")
    username: str | None = setting(None, doc="user login (unset: anonymous)", example='"diode"',
                                   manual=True)
    password: str | None = setting(None, doc="its password, or a file holding it",
                                   example='"..."', manual=True, secret=True,
                                   label="`password` or `password_file`")
    subtrees: tuple[str, ...] = setting(("i=85",), doc="node ids to mirror, with everything "
                                        "below them", example='["ns=2;s=Plant"]')
    sampling_interval: float = setting(0.0, doc="asked of the server per monitored item; 0: "
                                       "the fastest it can, on change where it can (every "
                                       "change reaches the mirror), never faster than the "
                                       "node's MinimumSamplingInterval", example="1.0", lo=0.0,
                                       hi=3600)
    publishing_interval: float = setting(0.1, doc="of each subscription", example="0.1",
                                         lo=0.01, hi=3600)
    items_per_subscription: int = setting(5000, doc="monitored items per subscription (fewer "
                                          "if the server says so)", example="5000", lo=1,
                                          hi=1_000_000)
    requests_per_second: float = setting(20.0, doc="browse, read and monitored-item requests "
                                         "TX may make of the server (the crawl, the first "
                                         "read, subscribing)", example="20.0", lo=0.1,
                                         hi=10_000)
    queue_size: int = setting(10, doc="per monitored item, on the server", example="10", lo=1,
                              hi=10000)
    trigger: str = setting("StatusValue", doc='`"StatusValueTimestamp"` also reports new '
                           "timestamps of equal values (more traffic with some servers)",
                           example='"StatusValueTimestamp"', choices=TRIGGERS)
    rebrowse_period: float = setting(120.0, doc="full re-crawl to find added, removed and "
                                     "renamed nodes", example="120.0", lo=1.0)
    change_check_period: float = setting(2.0, doc="a cheap check for model changes (three "
                                         "requests: the namespace array, a slice of the "
                                         "folders' children and of the nodes' names; 0: off)",
                                         example="2.0", lo=0.0, hi=3600)
    model_carousel_period: float = setting(15.0, doc="re-send of the address space, for an RX "
                                           "that (re)starts", example="15.0", lo=1.0)
    value_keyframe_period: float = setting(15.0, doc="re-send of every last value",
                                           example="15.0", lo=1.0)
    timeout: float = setting(10.0, doc="per request, and the connection health probe",
                             example="10.0", lo=0.5, hi=600)
    reconnect_min: float = setting(1.0, doc="first reconnect delay; it doubles up to "
                                   "`reconnect_max`", example="1.0", lo=0.05, hi=3600)
    reconnect_max: float = setting(60.0, doc="longest reconnect delay", example="60.0",
                                   lo_field="reconnect_min", hi=86400)
    reconnect_fast_for: float = setting(120.0, doc="after losing a connected server, retry it "
                                        "every `reconnect_min` for this long (a restart) before "
                                        "backing off", example="120.0", lo=0.0, hi=86400)
    cert_warn_days: float = setting(30.0, doc="warn (at start, daily, in the status) this many "
                                    "days before `cert_file` expires", example="30.0", lo=0.0,
                                    hi=3650)
    queue_limit: int = setting(200_000, doc="value changes held while the link is slower "
                               "(overflow counted, logged)", example="200000", lo=100)
    carousel_share: float = setting(0.1, doc="share of the link each re-send (model, notifiers, "
                                    "values) may use", example="0.1", lo=0.001, hi=1.0)
    model_chunk_size: int = setting(16384, doc="bytes of the address space per record",
                                    example="16384", lo=512, hi=1 << 20)
    batch_bytes: int = setting(1200, doc="bytes of values per record", example="1200", lo=200,
                               hi=1 << 20)
    events: bool = setting(True, doc="carry the events and alarms of the server's notifiers "
                           "(the Server object and every object whose EventNotifier says so)",
                           example="true")
    event_queue_limit: int = setting(10_000, doc="events held while the link is slower "
                                     "(overflow counted, logged)", example="10000", lo=10)

    @property
    def label(self) -> str:
        return f"OPC UA server '{self.name}' ({self.endpoint})"


def parse_source(t: Table) -> OpcuaSourceConfig:
    """One `[[opcua]]` table of tx.toml; ConfigError names file, key and fix."""
    username, password = t.credentials('"opcua.pass"')
    if password is not None and username is None:
        t.fail("username", "a password is set but no username", 'username = "diode"')
    app_uri = t.get("application_uri", str, "", example='"urn:diode:tx:plant"')
    cfg = read(t, OpcuaSourceConfig, username=username, password=password,
               application_uri=app_uri)
    if not cfg.endpoint.startswith("opc.tcp://"):
        t.fail("endpoint", f"expected an opc.tcp:// URL, got {cfg.endpoint!r}",
               'endpoint = "opc.tcp://192.0.2.10:4840"')
    cert, key = cfg.cert_file, cfg.key_file
    if cfg.security_policy != "None":
        if cert is None or key is None:
            t.fail("cert_file", f"security_policy {cfg.security_policy} needs a client "
                   "certificate", "make one with `diode opcua-cert`, then set cert_file and "
                   "key_file")
    elif "security_mode" in t.data:
        t.fail("security_mode", "set but security_policy is None",
               'set security_policy = "Basic256Sha256", or remove security_mode')
    if (cert is None) != (key is None):
        t.fail("cert_file", "cert_file and key_file go together", "set both or neither")
    for key_name, p in (("cert_file", cert), ("key_file", key),
                        ("server_cert_file", cfg.server_cert_file)):
        if p is not None and not p.is_file():
            t.fail(key_name, f"file not found: {p}", "point it at an existing file")
    for s in cfg.subtrees:
        if not _NODE_ID.match(s):
            t.fail("subtrees", f"{s!r} is not a node id", 'subtrees = ["i=85", "ns=2;s=Plant"]')
    if not app_uri:
        app_uri = f"urn:diode:tx:{cfg.name}"
        if cert is not None:
            from agent.opcua.certs import application_uri_of
            try:
                app_uri = application_uri_of(cert) or app_uri
            except ValueError:
                t.fail("cert_file", f"{cert} is not a PEM or DER certificate",
                       "point it at the certificate made by `diode opcua-cert`")
        cfg = replace(cfg, application_uri=app_uri)
    return cfg


@dataclass(frozen=True)
class OpcuaMirrorConfig:
    """One `[[opcua]]` table of rx.toml: a read-only mirror server."""
    name: str = setting(doc="the TX source of the same name is mirrored here", example='"plant"')
    endpoint: str = setting("opc.tcp://0.0.0.0:4840/diode/", doc="where IT clients connect",
                            example='"opc.tcp://0.0.0.0:4840/diode/"')
    application_uri: str = setting("", doc="the mirror's URI (in its certificate)",
                                   example='"urn:diode:rx:plant"',
                                   default_doc="`urn:diode:rx:<name>`")
    server_name: str = setting("", doc="shown to clients", example='"diode mirror plant"',
                               default_doc="`diode mirror <name>`")
    security_policies: tuple[str, ...] = setting(
        ("None",), doc="of " + ", ".join(f"`{p}`" for p in MIRROR_POLICIES),
        example='["Basic256Sha256_SignAndEncrypt"]')
    cert_file: Path | None = setting(None, doc="server certificate, needed by secure policies: "
                                     "`diode opcua-cert --server`", example='"rx-opcua.der"')
    key_file: Path | None = setting(None, doc="its key", example='"rx-opcua.key"')
    trusted_clients_dir: Path | None = setting(
        None, doc="only client certificates (PEM/DER) in this folder may open a secure "
        "channel (unset: any well-formed certificate)", example='"opcua-trusted"')
    allow_anonymous: bool = setting(True, doc="anonymous logins; every user is read-only",
                                    example="true")
    users: tuple[tuple[str, str], ...] = setting((), doc="user name = password", manual=True,
                                                 example='{ operator = "secret" }', secret=True,
                                                 default_doc="`{}`")
    bad_after: float = setting(30.0, doc="seconds of lost link or source before Uncertain "
                               "values turn Bad", example="30.0", lo=0.0, hi=86400)
    diagnostics: bool = setting(True, doc="the Objects/DiodeDiagnostics object",
                                example="true")
    history_nodes: tuple[str, ...] = setting(
        (), doc="node ids whose variables (the node itself, or every variable below it) keep "
        "a history on RX, served by HistoryRead", manual=True,
        example='["ns=2;s=Plant.Area000", "ns=2;s=Special.DoubleArray"]',
        default_doc="`[]` (no history: HistoryRead answers BadHistoryOperationUnsupported)")
    history_dir: Path | None = setting(None, doc="folder of the history file (SQLite)",
                                       example='"/var/lib/diode/history/plant"',
                                       default_doc="`<[spool] dir>/<name>.opcua-history`")
    history_retention: float = setting(7 * 86400.0, doc="seconds a value is kept, from its "
                                       "arrival on RX", example="604800.0", lo=60.0,
                                       hi=3650 * 86400.0)
    history_max_bytes: int = setting(64 << 20, doc="bound of the history file; the oldest "
                                     "values go first", example="67108864", lo=1 << 20)
    history_max_values: int = setting(10_000, doc="values per node in one HistoryRead answer; "
                                      "the rest come with a continuation point",
                                      example="10000", lo=1, hi=1_000_000)
    cert_warn_days: float = setting(30.0, doc="warn (at start, daily, in the status) this many "
                                    "days before `cert_file` expires", example="30.0", lo=0.0,
                                    hi=3650)


def parse_mirror(t: Table, spooled: bool = False) -> OpcuaMirrorConfig:
    """One `[[opcua]]` table of rx.toml; ConfigError names file, key and fix."""
    name = t.get("name", str, example='"plant"')
    history = t.get("history_nodes", list, [], example='["ns=2;s=Plant"]')
    for s in history:
        if not isinstance(s, str) or not _NODE_ID.match(s):
            t.fail("history_nodes", f"{s!r} is not a node id",
                   'history_nodes = ["ns=2;s=Plant.Area000"]')
    users = t.get("users", dict, {}, example='{ operator = "secret" }')
    if not all(isinstance(k, str) and isinstance(v, str) and v for k, v in users.items()):
        t.fail("users", "expected a table of user name = password (non-empty strings)",
               'users = { operator = "secret" }')
    cfg = read(t, OpcuaMirrorConfig, {"application_uri": f"urn:diode:rx:{name}",
                                      "server_name": f"diode mirror {name}"},
               users=tuple(sorted(users.items())), history_nodes=tuple(history))
    if history and cfg.history_dir is None and not spooled:
        t.fail("history_dir", "history_nodes is set but there is no folder for the history "
               "(no history_dir, and no [spool] dir to put it under)",
               f'set history_dir = "/var/lib/diode/history/{name}" on the data partition')
    if cfg.history_dir is not None and cfg.history_dir.exists() and not cfg.history_dir.is_dir():
        t.fail("history_dir", f"{cfg.history_dir} is a file, not a folder",
               "point history_dir at a folder (it is created if missing)")
    if not cfg.endpoint.startswith("opc.tcp://"):
        t.fail("endpoint", f"expected an opc.tcp:// URL, got {cfg.endpoint!r}",
               'endpoint = "opc.tcp://0.0.0.0:4840/diode/"')
    if not all(p in MIRROR_POLICIES for p in cfg.security_policies):
        t.fail("security_policies", f"expected a non-empty list of {', '.join(MIRROR_POLICIES)}",
               'security_policies = ["Basic256Sha256_SignAndEncrypt"]')
    cert, key = cfg.cert_file, cfg.key_file
    if (cert is None) != (key is None):
        t.fail("cert_file", "cert_file and key_file go together", "set both or neither")
    if any(p != "None" for p in cfg.security_policies) and cert is None:
        t.fail("cert_file", "secure security_policies need a server certificate",
               "make one with `diode opcua-cert --server`, then set cert_file and key_file")
    for key_name, p in (("cert_file", cert), ("key_file", key)):
        if p is not None and not p.is_file():
            t.fail(key_name, f"file not found: {p}", "point it at an existing file")
    trusted = cfg.trusted_clients_dir
    if trusted is not None and not trusted.is_dir():
        t.fail("trusted_clients_dir", f"not a folder: {trusted}",
               "point it at a folder holding the client certificates to trust")
    if trusted is not None and not any(p.is_file() for p in trusted.iterdir()):
        # asyncua's TrustStore cannot load an empty folder (docs/ARCHITECTURE.md, traps),
        # and no client could open a secure channel anyway
        t.fail("trusted_clients_dir", f"{trusted} holds no certificate",
               "copy the IT clients' certificates (PEM or DER) into it")
    if not cfg.allow_anonymous and not users:
        t.fail("allow_anonymous", "no anonymous access and no users: nobody could log in",
               'add users = { operator = "secret" }, or allow_anonymous = true')
    return cfg


def parse(t: Table, role: str, spooled: bool) -> OpcuaSourceConfig | OpcuaMirrorConfig:
    return parse_source(t) if role == "tx" else parse_mirror(t, spooled)


def check(tables: list[Table], configs: list[Any], link: Any) -> None:
    """Two mirrors cannot share an endpoint."""
    endpoints = [getattr(c, "endpoint", None) for c in configs if isinstance(c, OpcuaMirrorConfig)]
    for t, c in zip(tables, configs, strict=True):
        if isinstance(c, OpcuaMirrorConfig) and endpoints.count(c.endpoint) > 1:
            t.fail("endpoint", f"{c.endpoint} is used by two mirrors",
                   "give each [[opcua]] mirror its own port")
