"""Fixtures of the reliability tests: a throw-away PKI (the `cryptography` package), TLS-aware health waits."""

from __future__ import annotations

import datetime
import ipaddress
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


def _key():
    return ec.generate_private_key(ec.SECP256R1())


def _write(folder: Path, name: str, cert: x509.Certificate, key) -> tuple[str, str]:
    cert_path, key_path = folder / f"{name}.crt", folder / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_path.chmod(0o600)
    return str(cert_path), str(key_path)


def make_pki(folder: Path, name: str = "test") -> dict[str, str]:
    """Writes {name}-ca, server (SAN 127.0.0.1, localhost; server+client auth) and client certificates.

    Returns paths: ca, server_cert, server_key, client_cert, client_key.
    """
    folder.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = _key()
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{name} CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    out = {"ca": _write(folder, f"{name}-ca", ca, ca_key)[0]}

    def leaf(cn: str, usages, sans):
        key = _key()
        builder = (x509.CertificateBuilder()
                   .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
                   .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(minutes=5))
                   .not_valid_after(now + datetime.timedelta(days=1))
                   .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                   .add_extension(x509.ExtendedKeyUsage(usages), critical=False))
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        return builder.sign(ca_key, hashes.SHA256()), key

    # Services present one certificate both as servers and as clients of other services (mTLS inside).
    server, server_key = leaf("interfacegan-service",
                              [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
                              [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    out["server_cert"], out["server_key"] = _write(folder, f"{name}-server", server, server_key)
    client, client_key = leaf("interfacegan-client", [ExtendedKeyUsageOID.CLIENT_AUTH], [])
    out["client_cert"], out["client_key"] = _write(folder, f"{name}-client", client, client_key)
    return out


@pytest.fixture(scope="session")
def pki(tmp_path_factory) -> dict[str, str]:
    """CA, server and client certificates the services and the tests trust."""
    return make_pki(tmp_path_factory.mktemp("pki"), "ifgan")


@pytest.fixture(scope="session")
def rogue_pki(tmp_path_factory) -> dict[str, str]:
    """Certificates of another CA, which the services must not trust."""
    return make_pki(tmp_path_factory.mktemp("rogue-pki"), "rogue")
