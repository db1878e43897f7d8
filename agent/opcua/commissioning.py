"""What went wrong when TX cannot open a session with a plant server, in one line with the fix.

```
every try ─► discover: GetEndpoints over SecurityPolicy None (always allowed, no certificate)
   │            endpoints offered, the server's certificate, the server's clock (response header)
   ├─ check_endpoint: the policy and mode TX is set to are offered; a pinned server
   │                  certificate (server_cert_file) is the one the server presents
   └─ connect ─► refused with a status (CreateSession fault, an ERR message on OpenSecureChannel)
              │      ─► explain(): what is wrong, TX's certificate and thumbprint, the clocks, the fix
              └─► the server closed the connection or stopped answering during the secure
                  channel handshake ─► explain_silent(): most servers do this to a client
                  certificate they do not trust, so say so, with the thumbprint
```

The most common first-day mistake is a TX certificate the plant does not trust
yet: servers answer BadSecurityChecksFailed or BadCertificateUntrusted, or just
close the connection (then asyncua logs a parsing traceback and, before this
module, TX sat in "connecting"). Each case here becomes a `Refused` error, one
line naming the server, what is wrong and the fix; the source logs it, shows it
in its state ("refused") and status (`last_error`), and tries again with backoff,
because someone will fix it on the server without restarting TX.

Clocks: a Pi has no RTC, so certificate time checks fail after a board swap. The
server's clock comes from its GetEndpoints response, so a time refusal says
which clock is off and by how much. Nothing here decides on wall-clock time.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from asyncua import Client, ua
from asyncua.ua.ua_binary import struct_from_binary
from cryptography import x509

from agent.errors import AdapterError
from agent.opcua.certs import thumbprint_of
from agent.opcua.config import OpcuaSourceConfig
from agent.opcua.expiry import Validity, validity_of
from agent.opcua.ua import status

SKEW_WARN = 300.0  # seconds between TX's and the server's clocks worth a word


class Refused(AdapterError):
    """The server refused us, or cannot work with this config: a setting must change.
    Retried with backoff (someone may fix it on the server while TX runs). `cause` names
    the mistake without what changes from try to try (the clocks), so the same mistake is
    logged once, not at every try."""

    def __init__(self, message: str, cause: str | None = None) -> None:
        super().__init__(message)
        self.cause = cause or message


@dataclass(frozen=True)
class Discovery:
    endpoints: tuple[ua.EndpointDescription, ...]
    server_time: datetime | None   # the server's clock, from its response header
    local_time: datetime           # TX's clock when the response came

    @property
    def skew(self) -> float | None:
        """Seconds the server's clock is ahead of TX's (negative: behind)."""
        if self.server_time is None:
            return None
        return (self.server_time - self.local_time).total_seconds()


async def discover(url: str, timeout: float) -> Discovery:
    """GetEndpoints on a channel without security, keeping the response header's time."""
    client = Client(url, timeout=timeout)
    await client.connect_socket()
    try:
        await client.send_hello()
        await client.open_secure_channel()
        try:
            request = ua.GetEndpointsRequest()
            request.Parameters = ua.GetEndpointsParameters()
            request.Parameters.EndpointUrl = url
            protocol = client.uaclient.protocol
            assert protocol is not None
            data = await protocol.send_request(request, timeout)
            response = struct_from_binary(ua.GetEndpointsResponse, data)
            response.ResponseHeader.ServiceResult.check()
        finally:
            await client.close_secure_channel()
    finally:
        client.disconnect_socket()
    stamp = response.ResponseHeader.Timestamp
    if stamp is not None and stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=UTC)
    if stamp is not None and stamp.year < 2000:
        stamp = None  # servers that leave it unset
    return Discovery(tuple(response.Endpoints or ()), stamp, datetime.now(UTC))


def _policy_name(uri: str | None) -> str:
    return (uri or "").rsplit("#", 1)[-1] or "?"


def offered(disc: Discovery) -> str:
    pairs = sorted({f"{_policy_name(e.SecurityPolicyUri)}/{e.SecurityMode.name}"
                    for e in disc.endpoints})
    return ", ".join(pairs) or "nothing"


def _tx_cert(cfg: OpcuaSourceConfig) -> str:
    if cfg.cert_file is None:
        return ""
    try:
        v = validity_of(cfg.cert_file)
    except (OSError, ValueError):
        return f" (TX certificate {cfg.cert_file})"
    return f" (TX certificate {cfg.cert_file}, thumbprint {v.thumbprint})"


def check_endpoint(cfg: OpcuaSourceConfig, disc: Discovery, policy_uri: str | None,
                   mode: ua.MessageSecurityMode | None) -> ua.EndpointDescription | None:
    """The endpoint TX will use; Refused if the server offers none like it, or presents
    another certificate than the pinned one."""
    if policy_uri is None:
        if not any(e.SecurityMode == ua.MessageSecurityMode.None_ for e in disc.endpoints):
            raise Refused(f"{cfg.label}: offers no endpoint without security (it offers "
                          f"{offered(disc)}). Fix: set security_policy, security_mode, "
                          "cert_file and key_file (`diode opcua-cert`) to one it offers")
        return None
    ep = next((e for e in disc.endpoints if e.SecurityPolicyUri == policy_uri
               and e.SecurityMode == mode), None)
    if ep is None:
        raise Refused(f"{cfg.label}: offers no endpoint with security policy "
                      f"{cfg.security_policy} and mode {cfg.security_mode} (it offers "
                      f"{offered(disc)}). Fix: set security_policy/security_mode to one of "
                      "these")
    if cfg.server_cert_file is not None and ep.ServerCertificate:
        from agent.opcua.certs import thumbprint
        pinned = thumbprint(cfg.server_cert_file)
        presented = server_thumbprint(ep)
        if presented != pinned:
            raise Refused(
                f"{cfg.label}: presents server certificate thumbprint {presented}, but TX "
                f"trusts only {pinned} (server_cert_file {cfg.server_cert_file}). Fix: if the "
                "server's certificate was renewed, compare that thumbprint with the one the "
                "server shows, then copy the server's new certificate to server_cert_file; "
                "else the endpoint is not the server TX expects")
    return ep


def server_thumbprint(ep: ua.EndpointDescription) -> str:
    return thumbprint_of(_server_cert(ep))


def _server_cert(ep: ua.EndpointDescription) -> x509.Certificate:
    # The field may hold a chain: the first DER certificate is the server's own.
    data = ep.ServerCertificate or b""
    length = len(data)
    if len(data) > 2 and data[1] & 0x80:  # DER long-form length of the outer SEQUENCE
        n = data[1] & 0x7F
        length = min(length, int.from_bytes(data[2:2 + n], "big") + 2 + n)
    return x509.load_der_x509_certificate(data[:length])


def server_cert_warning(cfg: OpcuaSourceConfig, ep: ua.EndpointDescription,
                        disc: Discovery) -> str | None:
    """A server certificate outside its validity (by the server's clock if known): most
    clients refuse it; asyncua does not check, so TX only warns."""
    try:
        cert = _server_cert(ep)
    except ValueError:
        return f"{cfg.label}: its certificate does not decode; secure connections may fail"
    now = disc.server_time or disc.local_time
    whose = "the server's" if disc.server_time is not None else "TX's"
    if cert.not_valid_after_utc < now:
        return (f"{cfg.label}: its certificate (thumbprint {thumbprint_of(cert)}) expired on "
                f"{cert.not_valid_after_utc:%Y-%m-%d} by {whose} clock. Fix: renew it on "
                "the server" + (" and copy it to server_cert_file" if cfg.server_cert_file
                                else ""))
    if cert.not_valid_before_utc > now:
        return (f"{cfg.label}: its certificate (thumbprint {thumbprint_of(cert)}) is valid "
                f"only from {cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC by {whose} clock. "
                "Fix: check the server's clock")
    return None


def skew_warning(cfg: OpcuaSourceConfig, disc: Discovery) -> str | None:
    skew = disc.skew
    if skew is None or abs(skew) < SKEW_WARN:
        return None
    return (f"{cfg.label}: its clock is {abs(skew):.0f} s {'ahead of' if skew > 0 else 'behind'} "
            f"TX's (server {disc.server_time:%Y-%m-%d %H:%M:%S} UTC, TX "
            f"{disc.local_time:%Y-%m-%d %H:%M:%S} UTC): certificate checks and timestamps "
            "suffer. Fix: set both clocks from NTP (TX: an NTP server on the OT side)")


# Status codes that name a setting to change; each with its fix.
_CERT = "trust TX's certificate on the OT server (move it from the server's rejected " \
        "list to its trusted list, after comparing the thumbprint)"
FIXES: dict[int, str] = {
    ua.StatusCodes.BadUserAccessDenied: "check username and password",
    ua.StatusCodes.BadIdentityTokenInvalid: "check username and password",
    ua.StatusCodes.BadIdentityTokenRejected: "the server does not accept this kind of login "
                                             "(anonymous or username); set username/password",
    ua.StatusCodes.BadCertificateUntrusted: _CERT,
    ua.StatusCodes.BadSecurityChecksFailed: _CERT + "; check also that application_uri is "
                                            "the URI in the certificate",
    ua.StatusCodes.BadCertificateInvalid: "make a new client certificate (diode opcua-cert)",
    ua.StatusCodes.BadCertificateTimeInvalid: "make a new client certificate "
                                              "(diode opcua-cert) and trust it on the server",
    ua.StatusCodes.BadCertificateUriInvalid: "application_uri must equal the URI in the client "
                                             "certificate",
    ua.StatusCodes.BadCertificateHostNameInvalid: "check the endpoint host name",
    ua.StatusCodes.BadCertificateRevoked: "the client certificate was revoked: make a new one "
                                          "and trust it on the server",
    ua.StatusCodes.BadCertificateUseNotAllowed: "make a new client certificate "
                                                "(diode opcua-cert)",
    ua.StatusCodes.BadCertificateIssuerRevocationUnknown: "give the server the issuer's CRL",
    ua.StatusCodes.BadCertificateRevocationUnknown: "give the server the issuer's CRL",
    ua.StatusCodes.BadSecurityPolicyRejected: "set a security_policy the server offers",
    ua.StatusCodes.BadSecurityModeRejected: "set a security_mode the server offers",
    ua.StatusCodes.BadNoValidCertificates: "set cert_file and key_file",
    ua.StatusCodes.BadInvalidTimestamp: "set TX's and the server's clocks from NTP",
}
_CERT_CODES = {ua.StatusCodes.BadCertificateUntrusted, ua.StatusCodes.BadSecurityChecksFailed,
               ua.StatusCodes.BadCertificateInvalid, ua.StatusCodes.BadCertificateTimeInvalid,
               ua.StatusCodes.BadCertificateUriInvalid, ua.StatusCodes.BadCertificateRevoked,
               ua.StatusCodes.BadCertificateUseNotAllowed}


def is_refusal(code: int) -> bool:
    return code in FIXES


def explain(cfg: OpcuaSourceConfig, code: int, disc: Discovery | None) -> str:
    """One line for a refusal status: the server, what is wrong, the fix."""
    name = status(code).name
    if code == ua.StatusCodes.BadCertificateTimeInvalid and cfg.cert_file is not None:
        return _time_invalid(cfg, disc)
    line = f"{cfg.label}: refused the connection: {name}. Fix: {FIXES[code]}"
    if code in _CERT_CODES:
        line += _tx_cert(cfg)
    if code == ua.StatusCodes.BadInvalidTimestamp and disc is not None and disc.skew is not None:
        line += f" (the server's clock is {disc.skew:+.0f} s from TX's)"
    return line


def _time_invalid(cfg: OpcuaSourceConfig, disc: Discovery | None) -> str:
    assert cfg.cert_file is not None
    try:
        v: Validity | None = validity_of(cfg.cert_file)
    except (OSError, ValueError):
        v = None
    head = f"{cfg.label}: refused TX's certificate as outside its validity " \
           "(BadCertificateTimeInvalid)"
    if v is None:
        return f"{head}. Fix: {FIXES[ua.StatusCodes.BadCertificateTimeInvalid]}"
    ident = f"TX certificate {v.path}, thumbprint {v.thumbprint}, valid " \
            f"{v.not_before:%Y-%m-%d %H:%M} to {v.not_after:%Y-%m-%d %H:%M} UTC"
    server_now = disc.server_time if disc is not None else None
    clocks = ""
    if disc is not None and server_now is not None:
        clocks = f"; server clock {server_now:%Y-%m-%d %H:%M} UTC, TX clock " \
                 f"{disc.local_time:%Y-%m-%d %H:%M} UTC"
    judge = server_now or datetime.now(UTC)
    if v.not_after <= judge:
        why = "it has expired"
        fix = "make a new certificate (diode opcua-cert) and trust it on the server"
    elif v.not_before > judge:
        why = ("it is not valid yet by the server's clock: TX's clock was ahead when the "
               "certificate was made, or the server's clock is behind")
        fix = ("set both clocks from NTP, then make a new certificate (diode opcua-cert) and "
               "trust it on the server")
    else:
        why = "its dates look right by the server's clock; the server may check more"
        fix = "check the server's clock and its certificate settings"
    return f"{head}: {why} ({ident}{clocks}). Fix: {fix}"


def explain_silent(cfg: OpcuaSourceConfig, what: str) -> str:
    """The server closed the connection (or stopped answering) while TX opened a secure
    channel or a session: with security on, almost always an untrusted TX certificate."""
    return (f"{cfg.label}: {what} while TX opened a secure channel with "
            f"{cfg.security_policy}/{cfg.security_mode}: the server most likely does not "
            f"trust TX's certificate{_tx_cert(cfg)}. Fix: {_CERT}; check also that "
            "application_uri is the URI in the certificate")
