"""One typed, frozen configuration, from defaults < YAML < environment < flags.

The YAML keys are a public contract (operators and scripts rely on them);
each is also settable from the environment as ``HOMESERVER_`` + the dotted key
in capitals with ``.`` replaced by ``_``. A bad value stops start-up with one
line naming the key and what is wrong (``ConfigError``).
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import yaml

from homeserver.core.ids import InvalidID, ServerName, UserID
from homeserver.core.ip_ranges import DEFAULT_BLOCKLIST, DEFAULT_FILTER, InvalidRange, IPRangeFilter
from homeserver.core.ratelimit import Rate
from homeserver.core.signing import decode_verify_key


class ConfigError(ValueError):
    """A configuration value that cannot be used; the message names the key."""


# What a listener can serve (see api/listeners.py for the paths of each).
LISTENER_RESOURCES = frozenset({"client", "admin", "federation", "keys"})


@dataclass(frozen=True, slots=True)
class ListenConfig:
    bind: str = "127.0.0.1"
    client_port: int = 8008
    federation_port: int = 8448
    metrics_port: int = 0  # 0: no metrics listener
    metrics_bind: str = "127.0.0.1"
    # Reverse proxies whose X-Forwarded-For names the client (per-address
    # rate limits behind nginx); none by default: the header is ignored.
    trusted_proxies: tuple[str, ...] = ()
    # Each listener serves only these resources (DESIGN rule 15).
    client_resources: frozenset[str] = frozenset({"client", "admin"})
    federation_resources: frozenset[str] = frozenset({"federation", "keys"})
    # Seconds: request headers (and a TLS handshake) must be complete this
    # long after the connection or the request's first byte; a kept-alive
    # connection with no request is closed after idle_timeout; a body must
    # arrive within body_timeout.
    header_timeout: int = 15
    idle_timeout: int = 60
    body_timeout: int = 60
    max_connections_per_address: int = 100


@dataclass(frozen=True, slots=True)
class TLSConfig:
    certificate: Path | None = None
    private_key: Path | None = None


@dataclass(frozen=True, slots=True)
class TrustedKeyServer:
    """A notary the operator trusts for other servers' keys; its own keys are
    pinned by ``verify_keys`` (key id → base64) or fetched from it alone."""

    server_name: str
    verify_keys: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class FederationConfig:
    verify_certificates: bool = True
    trusted_key_servers: tuple[TrustedKeyServer, ...] = ()
    ip_filter: IPRangeFilter = DEFAULT_FILTER


@dataclass(frozen=True, slots=True)
class RegistrationConfig:
    enabled: bool = True
    shared_secret: str | None = None
    # Open registration only with a token an operator handed out
    # (m.login.registration_token; ``homeserver admin registration-token``).
    requires_token: bool = False


@dataclass(frozen=True, slots=True)
class DirectoryConfig:
    # Synapse's allow_public_rooms_without_auth: GET /publicRooms without a
    # token is refused unless the operator opens it.
    allow_public_rooms_without_auth: bool = False


@dataclass(frozen=True, slots=True)
class RoomsConfig:
    """Room lifecycle settings (``io.homeserver`` room kinds)."""

    transient_purge_after_ms: int = 300_000


@dataclass(frozen=True, slots=True)
class VoipConfig:
    """TURN servers handed to clients (``/voip/turnServer``): credentials are
    minted from ``turn_shared_secret`` (coturn's ``use-auth-secret``)."""

    turn_uris: tuple[str, ...] = ()
    turn_shared_secret: str | None = None
    turn_user_lifetime_ms: int = 86_400_000


@dataclass(frozen=True, slots=True)
class FederationRateConfig:
    """Inbound federation per origin, as Synapse's ``rc_federation``."""

    window_size_ms: int = 1000
    sleep_limit: int = 10
    sleep_delay_ms: int = 500
    reject_limit: int = 50
    concurrent: int = 3


# Defaults as Synapse's (docs/usage/configuration/config_documentation.md).
RATE_DEFAULTS: dict[str, Rate] = {
    "login.address": Rate(0.003, 5),
    "login.account": Rate(0.003, 5),
    "login.failed_attempts": Rate(0.17, 3),
    "registration": Rate(0.17, 3),
    "registration_token_validity": Rate(0.1, 5),
    "message": Rate(0.2, 10),
    "room_creation": Rate(0.016, 10),
    "joins.local": Rate(0.1, 10),
    "joins.remote": Rate(0.01, 10),
    "joins_per_room": Rate(1.0, 10),
    "invites.per_room": Rate(0.3, 10),
    "invites.per_user": Rate(0.003, 5),
    "invites.per_issuer": Rate(0.3, 10),
}


@dataclass(frozen=True, slots=True)
class RateLimitsConfig:
    """``rate_limits:`` — see README and docs/security.md. ``enabled: false``
    lifts every limit (test setups and benchmarks; never on the internet)."""

    enabled: bool = True
    exempt_admins: bool = True
    rates: tuple[tuple[str, Rate], ...] = tuple(RATE_DEFAULTS.items())
    federation: FederationRateConfig = FederationRateConfig()

    def rate(self, name: str) -> Rate:
        return dict(self.rates)[name]


@dataclass(frozen=True, slots=True)
class Config:
    server_name: ServerName
    data_dir: Path
    database_url: str | None
    listen: ListenConfig
    tls: TLSConfig
    federation: FederationConfig
    registration: RegistrationConfig
    admins: tuple[UserID, ...]
    rooms: RoomsConfig = RoomsConfig()
    voip: VoipConfig = VoipConfig()
    # SIGTERM: how long in-flight requests (and a federation transaction on
    # the wire) may take to finish before they are cut.
    shutdown_grace_s: int = 10
    directory: DirectoryConfig = DirectoryConfig()
    rate_limits: RateLimitsConfig = RateLimitsConfig()
    # Events kept in memory per process (the log never changes, so the cache
    # needs no invalidation; its size is the process's memory after warm-up).
    event_cache_size: int = 10_000
    # Scales every other in-memory cache's bound (state maps, auth chains,
    # push rules and contexts, unread views, tokens): below 1 on a small
    # machine, above on a big one. As Synapse's ``caches.global_factor``.
    cache_factor: float = 1.0

    @property
    def signing_key_path(self) -> Path:
        return self.data_dir / "signing.key"

    @property
    def old_signing_keys_path(self) -> Path:
        return self.data_dir / "old_signing_keys.json"

    @property
    def embedded_pg_dir(self) -> Path:
        return self.data_dir / "postgres"

    @property
    def certificate_path(self) -> Path:
        return self.tls.certificate or self.data_dir / "tls.crt"

    @property
    def private_key_path(self) -> Path:
        return self.tls.private_key or self.data_dir / "tls.key"


DEFAULT_SERVER_NAME = "localhost:8448"

# The flat list of every key, its type and default. ``None`` type means "str
# or null". The order is the order of the documentation.
_KEYS: dict[str, tuple[type, Any]] = {
    "server_name": (str, DEFAULT_SERVER_NAME),
    "data_dir": (str, "./homeserver-data"),
    "database_url": (type(None), None),
    "listen.bind": (str, "127.0.0.1"),
    "listen.client_port": (int, 8008),
    "listen.federation_port": (int, 8448),
    "listen.metrics_port": (int, 0),
    "listen.metrics_bind": (str, "127.0.0.1"),
    "listen.trusted_proxies": (list, []),
    "listen.client_resources": (list, ["client", "admin"]),
    "listen.federation_resources": (list, ["federation", "keys"]),
    "listen.header_timeout": (int, 15),
    "listen.idle_timeout": (int, 60),
    "listen.body_timeout": (int, 60),
    "listen.max_connections_per_address": (int, 100),
    "tls.certificate": (type(None), None),
    "tls.private_key": (type(None), None),
    "federation.verify_certificates": (bool, True),
    "federation.trusted_key_servers": (list, []),
    "federation.ip_range_blocklist": (list, list(DEFAULT_BLOCKLIST)),
    "federation.ip_range_allowlist": (list, []),
    "registration.enabled": (bool, None),  # None: on only when bound to loopback
    "registration.shared_secret": (type(None), None),
    "admins": (list, []),
    "registration.requires_token": (bool, False),
    "rooms.transient_purge_after_ms": (int, 300_000),
    "caches.events": (int, 10_000),
    "caches.global_factor": (float, 1.0),
    "voip.turn_uris": (list, []),
    "voip.turn_shared_secret": (type(None), None),
    "voip.turn_user_lifetime_ms": (int, 86_400_000),
    "shutdown.grace_seconds": (int, 10),
    "directory.allow_public_rooms_without_auth": (bool, False),
    "rate_limits.enabled": (bool, True),
    "rate_limits.exempt_admins": (bool, True),
    **{
        f"rate_limits.{name}.{field}": (float, getattr(rate, field))
        for name, rate in RATE_DEFAULTS.items()
        for field in ("per_second", "burst_count")
    },
    "rate_limits.federation.window_size_ms": (int, 1000),
    "rate_limits.federation.sleep_limit": (int, 10),
    "rate_limits.federation.sleep_delay_ms": (int, 500),
    "rate_limits.federation.reject_limit": (int, 50),
    "rate_limits.federation.concurrent": (int, 3),
}


def env_name(key: str) -> str:
    return "HOMESERVER_" + key.upper().replace(".", "_")


def _flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in data.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _coerce(key: str, value: Any) -> Any:
    """Check ``value`` against the key's type; strings from the environment
    are converted (``"false"`` → False, ``"8008"`` → 8008)."""
    kind, _default = _KEYS[key]
    if kind is type(None):  # optional string
        if value is None or (isinstance(value, str) and value.lower() in ("", "null", "none")):
            return None
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string or null, got {value!r}")
        return value
    if kind is bool:
        if isinstance(value, bool) or value is None:
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "1", "on"):
            return True
        if isinstance(value, str) and value.lower() in ("false", "no", "0", "off"):
            return False
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if kind is int:
        if isinstance(value, str) and re.fullmatch(r"-?\d+", value.strip()):
            value = int(value)
        if not isinstance(value, int) or isinstance(value, bool):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if kind is float:
        if isinstance(value, str):
            try:
                value = float(value.strip())
            except ValueError:
                pass
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if kind is list:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return value
    if not isinstance(value, str):
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    return value


def _is_loopback(bind: str) -> bool:
    if bind == "localhost":
        return True
    try:
        return ipaddress.ip_address(bind).is_loopback
    except ValueError:
        return False


def _resources(key: str, value: list[Any]) -> frozenset[str]:
    names = frozenset(str(v) for v in value)
    unknown = names - LISTENER_RESOURCES
    if unknown:
        raise ConfigError(
            f"{key}: unknown resource(s) {sorted(unknown)}; known: {sorted(LISTENER_RESOURCES)}"
        )
    return names


def _cache_factor(value: float) -> float:
    if not 0.001 <= value <= 1000:
        raise ConfigError(f"caches.global_factor: must be between 0.001 and 1000, got {value}")
    return value


def _positive(key: str, value: int) -> int:
    if value < 1:
        raise ConfigError(f"{key}: must be at least 1, got {value}")
    return value


def _listen(values: Mapping[str, Any]) -> ListenConfig:
    return ListenConfig(
        bind=values["listen.bind"],
        client_port=_port("listen.client_port", values["listen.client_port"]),
        federation_port=_port("listen.federation_port", values["listen.federation_port"]),
        metrics_port=(
            _port("listen.metrics_port", values["listen.metrics_port"])
            if values["listen.metrics_port"]
            else 0
        ),
        metrics_bind=values["listen.metrics_bind"],
        trusted_proxies=_networks("listen.trusted_proxies", values["listen.trusted_proxies"]),
        client_resources=_resources("listen.client_resources", values["listen.client_resources"]),
        federation_resources=_resources(
            "listen.federation_resources", values["listen.federation_resources"]
        ),
        **{
            k: _positive(f"listen.{k}", values[f"listen.{k}"])
            for k in (
                "header_timeout",
                "idle_timeout",
                "body_timeout",
                "max_connections_per_address",
            )
        },
    )


def _port(key: str, value: int) -> int:
    if not 0 < value < 65536:
        raise ConfigError(f"{key}: port must be between 1 and 65535, got {value}")
    return value


def _trusted_key_servers(entries: list[Any]) -> tuple[TrustedKeyServer, ...]:
    """Each entry a server name, or ``{server_name, verify_keys: {id: base64}}``."""
    key = "federation.trusted_key_servers"
    out = []
    for entry in entries:
        if isinstance(entry, str):
            entry = {"server_name": entry}
        if not isinstance(entry, Mapping) or not isinstance(entry.get("server_name"), str):
            raise ConfigError(f"{key}: expected a server name or {{server_name: ...}}")
        try:
            name = str(ServerName.parse(entry["server_name"]))
        except InvalidID as e:
            raise ConfigError(f"{key}: {e}") from e
        pinned = entry.get("verify_keys") or {}
        if not isinstance(pinned, Mapping):
            raise ConfigError(f"{key}: verify_keys of {name} must map key ids to keys")
        for key_id, b64 in pinned.items():
            try:
                decode_verify_key(str(key_id), str(b64))
            except Exception as e:
                raise ConfigError(f"{key}: bad verify key {key_id} of {name}") from e
        out.append(TrustedKeyServer(name, tuple((str(k), str(v)) for k, v in pinned.items())))
    return tuple(out)


def _ip_filter(values: Mapping[str, Any]) -> IPRangeFilter:
    try:
        return IPRangeFilter.from_strings(
            values["federation.ip_range_blocklist"], values["federation.ip_range_allowlist"]
        )
    except InvalidRange as e:
        raise ConfigError(f"federation.ip_range_blocklist / ip_range_allowlist: {e}") from e


def load_config(
    path: str | os.PathLike[str] | None = None,
    *,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Config:
    """Merge defaults, the YAML file, ``HOMESERVER_*`` variables and
    ``overrides`` (flat dotted keys, from command-line flags), in that order."""
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {k: d for k, (_t, d) in _KEYS.items()}
    if path is not None:
        try:
            raw = yaml.safe_load(Path(path).read_text()) or {}
        except OSError as e:
            raise ConfigError(f"config file {path}: {e.strerror}") from e
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {path}: not valid YAML ({e})") from e
        if not isinstance(raw, Mapping):
            raise ConfigError(f"config file {path}: expected a mapping at the top level")
        for key, value in _flatten(raw).items():
            if key not in _KEYS:
                raise ConfigError(f"{key}: unknown configuration key")
            values[key] = _coerce(key, value)
    for key in _KEYS:
        if env_name(key) in env:
            values[key] = _coerce(key, env[env_name(key)])
    for key, value in (overrides or {}).items():
        if value is not None:
            values[key] = _coerce(key, value)

    try:
        server_name = ServerName.parse(values["server_name"])
    except InvalidID as e:
        raise ConfigError(f"server_name: {e}") from e
    admins = []
    for a in values["admins"]:
        try:
            admins.append(UserID.parse(str(a)))
        except InvalidID as e:
            raise ConfigError(f"admins: {e}") from e
    db = values["database_url"]
    if db is not None and not db.startswith(("postgres://", "postgresql://")):
        raise ConfigError("database_url: expected a postgresql:// URL")
    bind = values["listen.bind"]
    registration = values["registration.enabled"]
    if registration is None:
        # A token-only server takes registrations wherever it listens.
        registration = values["registration.requires_token"] or _is_loopback(bind)
    if values["rooms.transient_purge_after_ms"] < 0:
        raise ConfigError("rooms.transient_purge_after_ms: must not be negative")
    cert, key = values["tls.certificate"], values["tls.private_key"]
    if (cert is None) != (key is None):
        raise ConfigError("tls: certificate and private_key must be given together")
    return Config(
        server_name=server_name,
        data_dir=Path(values["data_dir"]).expanduser().resolve(),
        database_url=db,
        listen=_listen(values),
        tls=TLSConfig(
            certificate=Path(cert) if cert else None, private_key=Path(key) if key else None
        ),
        federation=FederationConfig(
            verify_certificates=values["federation.verify_certificates"],
            trusted_key_servers=_trusted_key_servers(values["federation.trusted_key_servers"]),
            ip_filter=_ip_filter(values),
        ),
        registration=RegistrationConfig(
            enabled=registration,
            shared_secret=values["registration.shared_secret"],
            requires_token=values["registration.requires_token"],
        ),
        admins=tuple(admins),
        rooms=RoomsConfig(transient_purge_after_ms=values["rooms.transient_purge_after_ms"]),
        voip=_voip(values),
        shutdown_grace_s=_grace(values["shutdown.grace_seconds"]),
        directory=DirectoryConfig(
            allow_public_rooms_without_auth=values["directory.allow_public_rooms_without_auth"]
        ),
        rate_limits=_rate_limits(values),
        event_cache_size=_positive("caches.events", values["caches.events"]),
        cache_factor=_cache_factor(values["caches.global_factor"]),
    )


def _rate_limits(values: Mapping[str, Any]) -> RateLimitsConfig:
    rates = []
    for name in RATE_DEFAULTS:
        per_second = values[f"rate_limits.{name}.per_second"]
        burst = values[f"rate_limits.{name}.burst_count"]
        if per_second <= 0 or burst < 1:
            raise ConfigError(
                f"rate_limits.{name}: per_second must be above 0 and burst_count at least 1"
            )
        rates.append((name, Rate(per_second, burst)))
    fed = {
        k: values[f"rate_limits.federation.{k}"]
        for k in ("window_size_ms", "sleep_limit", "sleep_delay_ms", "reject_limit", "concurrent")
    }
    for k, n in fed.items():
        if n < (0 if k == "sleep_delay_ms" else 1):
            raise ConfigError(f"rate_limits.federation.{k}: out of range ({n})")
    return RateLimitsConfig(
        enabled=values["rate_limits.enabled"],
        exempt_admins=values["rate_limits.exempt_admins"],
        rates=tuple(rates),
        federation=FederationRateConfig(**fed),
    )


def _networks(key: str, values: list[Any]) -> tuple[str, ...]:
    out = []
    for v in values:
        try:
            out.append(str(ipaddress.ip_network(str(v), strict=False)))
        except ValueError as e:
            raise ConfigError(f"{key}: {v!r} is not an address or network ({e})") from None
    return tuple(out)


def _voip(values: Mapping[str, Any]) -> VoipConfig:
    uris = tuple(str(u) for u in values["voip.turn_uris"])
    for u in uris:
        if not u.startswith(("turn:", "turns:", "stun:")):
            raise ConfigError(f"voip.turn_uris: {u!r} is not a turn:, turns: or stun: URI")
    if values["voip.turn_user_lifetime_ms"] <= 0:
        raise ConfigError("voip.turn_user_lifetime_ms: must be positive")
    return VoipConfig(
        turn_uris=uris,
        turn_shared_secret=values["voip.turn_shared_secret"],
        turn_user_lifetime_ms=values["voip.turn_user_lifetime_ms"],
    )


def _grace(value: int) -> int:
    if not 0 <= value <= 3600:
        raise ConfigError(f"shutdown.grace_seconds: must be 0 to 3600, got {value}")
    return value


def redact_url(url: str) -> str:
    """A database URL safe for logs: the password replaced by ``***``."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)
    userinfo = netloc[0].split(":", 1)[0] + ":***"
    return urlunsplit(parts._replace(netloc=f"{userinfo}@{netloc[1]}"))
