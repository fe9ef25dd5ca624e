"""Configuration: defaults, YAML, environment, flags, and one-line errors."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import pytest

from homeserver.config import ConfigError, load_config, redact_url


def test_defaults_without_any_configuration() -> None:
    cfg = load_config(None, environ={})
    assert cfg.server_name == "localhost:8448"
    assert cfg.data_dir.name == "homeserver-data"
    assert cfg.database_url is None
    assert (cfg.listen.bind, cfg.listen.client_port, cfg.listen.federation_port) == (
        "127.0.0.1",
        8008,
        8448,
    )
    assert cfg.federation.verify_certificates is True
    assert cfg.registration.enabled is True  # loopback: open by default
    assert cfg.admins == ()
    # each listener serves only its own API; anonymous directory reads off
    assert cfg.listen.client_resources == {"client", "admin"}
    assert cfg.listen.federation_resources == {"federation", "keys"}
    assert cfg.directory.allow_public_rooms_without_auth is False
    assert (cfg.event_cache_size, cfg.cache_factor) == (10_000, 1.0)
    assert (
        load_config(None, environ={"HOMESERVER_CACHES_GLOBAL_FACTOR": "0.25"}).cache_factor == 0.25
    )


def test_yaml_env_and_flags_in_that_order(tmp_path: Path) -> None:
    f = tmp_path / "hs.yaml"
    f.write_text(
        "server_name: example.org\nlisten: {bind: 0.0.0.0, client_port: 9000}\n"
        "admins: ['@root:example.org']\n"
    )
    cfg = load_config(
        f,
        environ={
            "HOMESERVER_LISTEN_CLIENT_PORT": "9100",
            "HOMESERVER_FEDERATION_VERIFY_CERTIFICATES": "false",
        },
    )
    assert cfg.server_name == "example.org" and cfg.listen.client_port == 9100
    assert cfg.federation.verify_certificates is False
    assert cfg.registration.enabled is False  # not loopback: closed by default
    assert cfg.admins == ("@root:example.org",)
    cfg = load_config(
        f, overrides={"listen.client_port": 9200}, environ={"HOMESERVER_LISTEN_CLIENT_PORT": "9100"}
    )
    assert cfg.listen.client_port == 9200


@pytest.mark.parametrize(
    ("yaml", "env", "needle"),
    [
        ("listen: {client_port: 70000}\n", {}, "listen.client_port"),
        ("server_name: 'not a name!'\n", {}, "server_name"),
        ("nonsense: 1\n", {}, "nonsense: unknown"),
        (
            "",
            {"HOMESERVER_FEDERATION_VERIFY_CERTIFICATES": "maybe"},
            "federation.verify_certificates",
        ),
        ("admins: ['root']\n", {}, "admins"),
        ("database_url: mysql://x\n", {}, "database_url"),
        ("tls: {certificate: /x}\n", {}, "tls"),
        ("shutdown: {grace_seconds: -1}\n", {}, "shutdown.grace_seconds"),
        ("listen: {client_resources: [client, media]}\n", {}, "listen.client_resources"),
        ("", {"HOMESERVER_LISTEN_FEDERATION_RESOURCES": "fed"}, "listen.federation_resources"),
        ("listen: {header_timeout: 0}\n", {}, "listen.header_timeout"),
        ("", {"HOMESERVER_LISTEN_MAX_CONNECTIONS_PER_ADDRESS": "-1"}, "listen.max_connections"),
        ("caches: {global_factor: 0}\n", {}, "caches.global_factor"),
        ("", {"HOMESERVER_CACHES_GLOBAL_FACTOR": "lots"}, "caches.global_factor"),
    ],
)
def test_bad_values_name_the_key(
    tmp_path: Path, yaml: str, env: dict[str, str], needle: str
) -> None:
    f = tmp_path / "hs.yaml"
    f.write_text(yaml)
    with pytest.raises(ConfigError, match=needle.replace(".", r"\.")):
        load_config(f, environ=env)


def test_bad_config_stops_startup_with_one_line(tmp_path: Path) -> None:
    f = tmp_path / "hs.yaml"
    f.write_text("listen: {client_port: nope}\n")
    r = subprocess.run(
        [sys.executable, "-m", "homeserver.cli", "serve", "--config", str(f)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "listen.client_port" in lines[0]


def test_database_password_never_logged(caplog: pytest.LogCaptureFixture) -> None:
    assert redact_url("postgresql://hs:s3cret@db:5432/hs") == "postgresql://hs:***@db:5432/hs"
    with caplog.at_level(logging.INFO):
        logging.getLogger("x").info("database: %s", redact_url("postgresql://u:pw@h/d"))
    assert "pw" not in caplog.text


async def test_shared_secret_registration(aiohttp_client, db, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from homeserver.api.admin.register import mac_for
    from homeserver.app import create_app

    cfg = load_config(
        None,
        overrides={
            "server_name": "hs.test",
            "data_dir": str(tmp_path / "d"),
            "listen.bind": "0.0.0.0",
            "registration.shared_secret": "s3cret",
        },
        environ={},
    )
    assert cfg.registration.enabled is False
    c = await aiohttp_client(create_app(cfg, db))
    r = await c.post(
        "/_matrix/client/v3/register",
        json={"username": "x", "password": "y", "auth": {"type": "m.login.dummy"}},
    )
    assert r.status == 403
    nonce = (await (await c.get("/_synapse/admin/v1/register")).json())["nonce"]
    bad = await c.post(
        "/_synapse/admin/v1/register",
        json={"nonce": nonce, "username": "root", "password": "pw", "admin": True, "mac": "00"},
    )
    assert bad.status == 403
    nonce = (await (await c.get("/_synapse/admin/v1/register")).json())["nonce"]
    ok = await c.post(
        "/_synapse/admin/v1/register",
        json={
            "nonce": nonce,
            "username": "root",
            "password": "pw",
            "admin": True,
            "mac": mac_for("s3cret", nonce, "root", "pw", True),
        },
    )
    assert ok.status == 200 and (await ok.json())["user_id"] == "@root:hs.test"
    again = await c.post(
        "/_synapse/admin/v1/register",
        json={
            "nonce": nonce,
            "username": "root2",
            "password": "pw",
            "admin": False,
            "mac": mac_for("s3cret", nonce, "root2", "pw", False),
        },
    )
    assert again.status == 400  # nonces are single use


# ------------------------------------------- remote servers (issue 16)
def test_remote_server_settings_default_closed_and_parse(tmp_path: Path) -> None:
    from homeserver.core.signing import generate_signing_key, verify_key_base64

    cfg = load_config(None, environ={})
    assert cfg.federation.trusted_key_servers == ()
    assert not cfg.federation.ip_filter.allows("127.0.0.1")
    assert not cfg.federation.ip_filter.allows("10.1.2.3")
    key = generate_signing_key("n1")
    f = tmp_path / "hs.yaml"
    f.write_text(
        "federation:\n"
        "  trusted_key_servers:\n"
        "    - notary.example.org\n"
        "    - server_name: pinned.example.org:8448\n"
        f"      verify_keys: {{'ed25519:n1': '{verify_key_base64(key)}'}}\n"
        "  ip_range_blocklist: ['10.0.0.0/8']\n"
        "  ip_range_allowlist: ['10.9.0.0/16']\n"
    )
    cfg = load_config(f, environ={})
    names = [(t.server_name, dict(t.verify_keys)) for t in cfg.federation.trusted_key_servers]
    assert names == [
        ("notary.example.org", {}),
        ("pinned.example.org:8448", {"ed25519:n1": verify_key_base64(key)}),
    ]
    ip = cfg.federation.ip_filter
    assert ip.allows("127.0.0.1") and ip.allows("10.9.1.1") and not ip.allows("10.1.1.1")
    env = {
        "HOMESERVER_FEDERATION_TRUSTED_KEY_SERVERS": "a.example.org,b.example.org",
        "HOMESERVER_FEDERATION_IP_RANGE_ALLOWLIST": "127.0.0.0/8,::1/128",
    }
    cfg = load_config(None, environ=env)
    assert [t.server_name for t in cfg.federation.trusted_key_servers] == [
        "a.example.org",
        "b.example.org",
    ]
    assert cfg.federation.ip_filter.allows("::1")
    assert not cfg.federation.ip_filter.allows("10.0.0.1")


@pytest.mark.parametrize(
    ("yaml", "needle"),
    [
        ("federation: {ip_range_blocklist: ['10.0.0.1/8']}\n", "ip_range_blocklist"),
        ("federation: {ip_range_allowlist: ['localhost']}\n", "ip_range_allowlist"),
        ("federation: {trusted_key_servers: ['bad name!']}\n", "trusted_key_servers"),
        ("federation: {trusted_key_servers: [{verify_keys: {}}]}\n", "trusted_key_servers"),
        (
            "federation: {trusted_key_servers: [{server_name: a.org, verify_keys: {'ed25519:x': '!'}}]}\n",
            "trusted_key_servers",
        ),
    ],
)
def test_bad_remote_server_settings_name_the_key(tmp_path: Path, yaml: str, needle: str) -> None:
    f = tmp_path / "hs.yaml"
    f.write_text(yaml)
    with pytest.raises(ConfigError, match=needle):
        load_config(f, environ={})
