"""A throwaway test PKI, so TLS brokers and clients can be tested for real.

`make_pki` writes one CA, a server certificate and a client certificate signed
by it, and a second, unrelated "rogue" CA for negative tests (a client that
trusts only the rogue CA must be refused by the TLS handshake). Keys are
P-256 ECDSA: quick to generate, and both OpenSSL (Mosquitto) and Python's ssl
accept them. Everything is for tests and the demo only.
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

_VALIDITY = datetime.timedelta(days=30)
# Backdate so a clock a little behind (another container, a Pi without RTC)
# still accepts the certificates.
_BACKDATE = datetime.timedelta(hours=1)


@dataclass(frozen=True)
class TlsFiles:
    """The three files one TLS endpoint needs: whom it trusts, and who it is."""

    cafile: Path
    certfile: Path | None = None
    keyfile: Path | None = None


@dataclass(frozen=True)
class Pki:
    """Paths of a test PKI made by `make_pki`."""

    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    rogue_ca_cert: Path

    @property
    def server_tls(self) -> TlsFiles:
        """What a broker presents: the server pair, verifying clients by our CA."""
        return TlsFiles(self.ca_cert, self.server_cert, self.server_key)

    @property
    def client_tls(self) -> TlsFiles:
        """What a mutual-TLS client presents: the client pair, trusting our CA."""
        return TlsFiles(self.ca_cert, self.client_cert, self.client_key)


def make_pki(dir: Path, server_names: Iterable[str] = ("localhost", "127.0.0.1")) -> Pki:
    """Write a fresh CA, server and client certificates and a rogue CA into `dir`.

    Each of `server_names` becomes a subjectAltName of the server certificate:
    an IP address if it parses as one, otherwise a DNS name.
    """
    dir = Path(dir)
    dir.mkdir(parents=True, exist_ok=True)
    names = list(server_names)
    if not names:
        raise ValueError("server_names must name at least one host")

    ca_key = _new_key()
    ca_cert = _ca_certificate(ca_key, "diode test CA")
    server_key = _new_key()
    server_cert = _leaf_certificate(
        ca_key, ca_cert, server_key, names[0], ExtendedKeyUsageOID.SERVER_AUTH, names
    )
    client_key = _new_key()
    client_cert = _leaf_certificate(
        ca_key, ca_cert, client_key, "diode test client", ExtendedKeyUsageOID.CLIENT_AUTH, []
    )
    rogue_cert = _ca_certificate(_new_key(), "rogue CA")

    pki = Pki(
        ca_cert=dir / "ca.crt",
        ca_key=dir / "ca.key",
        server_cert=dir / "server.crt",
        server_key=dir / "server.key",
        client_cert=dir / "client.crt",
        client_key=dir / "client.key",
        rogue_ca_cert=dir / "rogue-ca.crt",
    )
    _write_cert(pki.ca_cert, ca_cert)
    _write_key(pki.ca_key, ca_key)
    _write_cert(pki.server_cert, server_cert)
    _write_key(pki.server_key, server_key)
    _write_cert(pki.client_cert, client_cert)
    _write_key(pki.client_key, client_key)
    _write_cert(pki.rogue_ca_cert, rogue_cert)
    return pki


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "diode tests"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _builder(
    subject: x509.Name, issuer: x509.Name, public_key: ec.EllipticCurvePublicKey
) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + _VALIDITY)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    )


def _ca_certificate(key: ec.EllipticCurvePrivateKey, common_name: str) -> x509.Certificate:
    name = _name(common_name)
    builder = (
        _builder(name, name, key.public_key())
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    )
    return builder.sign(key, hashes.SHA256())


def _leaf_certificate(
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    key: ec.EllipticCurvePrivateKey,
    common_name: str,
    usage: x509.ObjectIdentifier,
    alt_names: list[str],
) -> x509.Certificate:
    builder = (
        _builder(_name(common_name), ca_cert.subject, key.public_key())
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=True,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
    )
    if alt_names:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([_general_name(n) for n in alt_names]), critical=False
        )
    return builder.sign(ca_key, hashes.SHA256())


def _general_name(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def _write_cert(path: Path, cert: x509.Certificate) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    """Write a private key readable by its owner only (0600 from creation on)."""
    data = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        os.fchmod(fd, 0o600)  # O_CREAT's mode does not apply to an existing file
        f.write(data)


def opcua_certificate(cert_path: Path, key_path: Path, application_uri: str,
                      not_before: datetime.datetime, not_after: datetime.datetime, *,
                      server: bool = False) -> str:
    """A self-signed OPC UA application certificate (RSA, DER) valid from `not_before`
    to `not_after`, for tests of expired certificates and skewed clocks (`diode
    opcua-cert` always starts at now); returns its SHA-1 thumbprint."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = _name(application_uri)
    usage = [ExtendedKeyUsageOID.CLIENT_AUTH] + ([ExtendedKeyUsageOID.SERVER_AUTH] if server
                                                  else [])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(not_before).not_valid_after(not_after)
            .add_extension(x509.SubjectAlternativeName(
                [x509.UniformResourceIdentifier(application_uri), x509.DNSName("localhost")]),
                critical=False)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=True,
                                         key_encipherment=True, data_encipherment=True,
                                         key_agreement=False, key_cert_sign=server,
                                         crl_sign=False, encipher_only=False,
                                         decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage(usage), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    der = cert.public_bytes(serialization.Encoding.DER)
    cert_path.write_bytes(der)
    return hashlib.sha1(der).hexdigest()
