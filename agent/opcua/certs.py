"""Self-signed OPC UA application certificates for TX (client) and RX (mirror server).

An OPC UA server trusts a client by its application instance certificate; the
operator copies it to the server's trust list (or accepts it from the
server's "rejected" folder, comparing the SHA-1 thumbprint printed here).

- The certificate carries the application URI as a URI SubjectAltName: it
  must equal the `application_uri` the agent presents, or servers reject it.
- DER for `.der`/`.cer` paths, PEM otherwise; the key is PEM (PKCS#8), mode 0600.
"""

from __future__ import annotations

import hashlib
import os
import socket
from pathlib import Path

from asyncua.crypto import cert_gen
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID


def make_certificate(cert_path: Path, key_path: Path, application_uri: str, *,
                     hostname: str | None = None, days: int = 1825, server: bool = False,
                     common_name: str | None = None) -> str:
    """Write a new key and self-signed certificate; return the SHA-1 thumbprint (hex).

    Refuses to overwrite existing files (FileExistsError): a new certificate
    has to be trusted again on the other side.
    """
    cert_path, key_path = Path(cert_path), Path(key_path)
    for p in (cert_path, key_path):
        if p.exists():
            raise FileExistsError(f"{p} exists; remove it first to make a new certificate")
    hostname = hostname or socket.gethostname()
    key = cert_gen.generate_private_key()
    usage = [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]
    if server:
        usage.append(ExtendedKeyUsageOID.CLIENT_AUTH)
    cert = cert_gen.generate_self_signed_app_certificate(
        key, common_name or application_uri, {},
        [x509.UniformResourceIdentifier(application_uri), x509.DNSName(hostname)],
        extended=usage, days=days)
    key_path.parent.mkdir(parents=True, exist_ok=True)
    cert_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(cert_gen.dump_private_key_as_pem(key))
    der = cert_path.suffix.lower() in (".der", ".cer")
    cert_path.write_bytes(cert.public_bytes(Encoding.DER if der else Encoding.PEM))
    return thumbprint_of(cert)


def thumbprint_of(cert: x509.Certificate) -> str:
    return hashlib.sha1(cert.public_bytes(Encoding.DER)).hexdigest()


def load_certificate(path: Path) -> x509.Certificate:
    data = Path(path).read_bytes()
    if data.lstrip().startswith(b"-----BEGIN"):
        return x509.load_pem_x509_certificate(data)
    return x509.load_der_x509_certificate(data)


def cert_der(path: Path) -> bytes:
    """A PEM or DER certificate file as DER bytes (asyncua tells PEM by a .pem suffix only)."""
    return load_certificate(path).public_bytes(Encoding.DER)


def key_der(path: Path, password: bytes | None = None) -> bytes:
    """A PEM or DER private key file as unencrypted PKCS#8 DER bytes, for asyncua."""
    data = Path(path).read_bytes()
    if data.lstrip().startswith(b"-----BEGIN"):
        key = serialization.load_pem_private_key(data, password)
    else:
        key = serialization.load_der_private_key(data, password)
    return key.private_bytes(Encoding.DER, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def thumbprint(path: Path) -> str:
    """SHA-1 thumbprint (hex) of a PEM or DER certificate file, as OPC UA servers show it."""
    return thumbprint_of(load_certificate(path))


def application_uri_of(path: Path) -> str | None:
    """The URI SubjectAltName of a certificate, if it has one."""
    cert = load_certificate(path)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None
    uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    return uris[0] if uris else None
