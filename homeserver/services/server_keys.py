"""The server's own ed25519 signing key and its self-signed TLS certificate.

Both are generated on first start under ``data_dir`` and kept, so a restart
serves the same key (remote servers cache it) and the same certificate.
``rotate_signing_key`` replaces the key; the retired one is kept (its public
half, with the time it expired) in ``old_signing_keys.json`` and published
under ``old_verify_keys``, so events signed with it still verify elsewhere.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import signedjson.key
import signedjson.sign
from signedjson.types import SigningKey
from unpaddedbase64 import encode_base64

from homeserver.services.clock import now_ms

log = logging.getLogger(__name__)

KEY_VALIDITY_MS = 7 * 24 * 3600 * 1000


def load_or_create_signing_key(path: Path) -> SigningKey:
    if path.exists():
        with path.open() as f:
            keys = signedjson.key.read_signing_keys(f)
        if keys:
            return keys[0]
    path.parent.mkdir(parents=True, exist_ok=True)
    key = signedjson.key.generate_signing_key("a_" + os.urandom(3).hex())
    tmp = path.with_suffix(".tmp")
    with tmp.open("w") as f:
        signedjson.key.write_signing_keys(f, [key])
    os.chmod(tmp, 0o600)
    tmp.replace(path)
    log.info("generated signing key ed25519:%s in %s", key.version, path)
    return key


def load_old_keys(path: Path) -> dict[str, tuple[str, int]]:
    """key id → (unpadded base64 verify key, expired_ts) of retired keys."""
    if not path.exists():
        return {}
    raw = json.loads(path.read_text())
    return {kid: (str(v["key"]), int(v["expired_ts"])) for kid, v in raw.items()}


def rotate_signing_key(key_path: Path, old_keys_path: Path) -> tuple[str, str]:
    """Retire the current signing key (kept as an old key, expired now) and
    make a new one. Returns (old key id, new key id). Restart to serve it."""
    current = load_or_create_signing_key(key_path)
    old = load_old_keys(old_keys_path)
    old_id = f"ed25519:{current.version}"
    old[old_id] = (encode_base64(current.verify_key.encode()), now_ms())
    body = {kid: {"key": k, "expired_ts": ts} for kid, (k, ts) in old.items()}
    tmp = old_keys_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(body, indent=1))
    tmp.replace(old_keys_path)
    new = signedjson.key.generate_signing_key("a_" + os.urandom(3).hex())
    tmp = key_path.with_suffix(".tmp")
    with tmp.open("w") as f:
        signedjson.key.write_signing_keys(f, [new])
    os.chmod(tmp, 0o600)
    tmp.replace(key_path)
    log.info("signing key %s retired, ed25519:%s is current", old_id, new.version)
    return old_id, f"ed25519:{new.version}"


def ensure_tls_certificate(cert_path: Path, key_path: Path, host: str) -> None:
    """Write a self-signed certificate for ``host`` (and loopback) if none exists."""
    if cert_path.exists() and key_path.exists():
        return
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = [
        x509.DNSName("localhost"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
    ]
    try:
        names.append(x509.IPAddress(ipaddress.ip_address(host.strip("[]"))))
    except ValueError:
        if host != "localhost":
            names.append(x509.DNSName(host))
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path.parent.mkdir(parents=True, exist_ok=True)
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    os.chmod(key_path, 0o600)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    log.info("generated self-signed TLS certificate %s", cert_path)


class ServerKeys:
    """The signing identity of this server."""

    def __init__(
        self,
        server_name: str,
        signing_key: SigningKey,
        old_keys: Mapping[str, tuple[str, int]] | None = None,
    ) -> None:
        self.server_name = server_name
        self.signing_key = signing_key
        # Retired keys: key id → (unpadded base64 verify key, expired_ts).
        self.old_keys = dict(old_keys or {})

    @property
    def key_id(self) -> str:
        return f"ed25519:{self.signing_key.version}"

    @property
    def verify_key_base64(self) -> str:
        return encode_base64(self.signing_key.verify_key.encode())

    def sign_json(self, obj: dict[str, Any]) -> dict[str, Any]:
        return signedjson.sign.sign_json(dict(obj), self.server_name, self.signing_key)

    def server_keys_response(self) -> dict[str, Any]:
        """The body of ``GET /_matrix/key/v2/server``, signed by the key itself."""
        return self.sign_json(
            {
                "server_name": self.server_name,
                "valid_until_ts": now_ms() + KEY_VALIDITY_MS,
                "verify_keys": {self.key_id: {"key": self.verify_key_base64}},
                "old_verify_keys": {
                    kid: {"key": key, "expired_ts": ts}
                    for kid, (key, ts) in self.old_keys.items()
                    if kid != self.key_id
                },
            }
        )
