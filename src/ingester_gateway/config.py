"""Settings from `INGESTER_*` environment variables, decoded once at start.

Every field of `Settings` is one variable: `block_size` is `INGESTER_BLOCK_SIZE`.
A bad value stops start-up with one line that names the variable.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from typing import Annotated, Any, Literal

import msgspec

from ingester_gateway.models import DEFAULT_UPLOAD_ROLES, ROLES, CodecName, NodeMode, Role
from ingester_gateway.runtime.redis_io import is_sentinel_url, parse_sentinel_url
from ingester_gateway.tracing import TracingConfigError
from ingester_gateway.tracing import check_environment as check_tracing

PREFIX = "INGESTER_"


Port = Annotated[int, msgspec.Meta(ge=1, le=65535)]
HttpUrl = Annotated[str, msgspec.Meta(pattern=r"^https?://[^\s/]+(/\S*)?$")]
RedisUrl = Annotated[
    str, msgspec.Meta(pattern=r"^(redis|rediss|unix|redis\+sentinel|rediss\+sentinel)://\S+$")
]
Seconds = Annotated[float, msgspec.Meta(gt=0)]
# A limit per role (`INGESTER_FAIR_USE_*`): role -> value, "*" for any other role; 0 or a
# role not named (and no "*") means no limit.
RoleLimits = dict[str, Annotated[int, msgspec.Meta(ge=0)]]
ANY_ROLE = "*"


class StorageElementConfig(msgspec.Struct, forbid_unknown_fields=True):
    """One entry of the static registry (`INGESTER_STORAGE_ELEMENTS`)."""

    id: Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
    url: HttpUrl
    mode: NodeMode = "rw"
    priority: int = 100


class Settings(msgspec.Struct, forbid_unknown_fields=True):
    host: str = "0.0.0.0"
    port: Port = 8020
    workers: Annotated[int, msgspec.Meta(ge=1, le=64)] = 1
    # Shared by the workers (metrics, progress); `serve` makes one on tmpfs if unset.
    runtime_dir: str | None = None

    auth_public_key_file: str | None = None
    auth_jwks_url: HttpUrl | None = None
    auth_issuer: str | None = None
    auth_audience: str | None = None
    auth_upload_roles: list[Role] = msgspec.field(default_factory=lambda: [*DEFAULT_UPLOAD_ROLES])
    auth_leeway_seconds: Annotated[int, msgspec.Meta(ge=0, le=300)] = 10
    auth_max_token_bytes: Annotated[int, msgspec.Meta(ge=256, le=65536)] = 8192
    auth_jwks_refresh_seconds: Seconds = 300.0
    auth_token_cache_size: Annotated[int, msgspec.Meta(ge=0)] = 4096

    registry: Literal["static", "redis", "artstore"] = "static"
    storage_elements: list[StorageElementConfig] = msgspec.field(default_factory=list)
    health_check_interval_seconds: Seconds = 5.0
    redis_url: RedisUrl | None = None
    redis_timeout_seconds: Seconds = 0.5  # no request waits on Redis longer than this
    registry_refresh_seconds: Seconds = 2.0
    events_stream: str = "file-events"
    events_maxlen: Annotated[int, msgspec.Meta(ge=1)] = 10_000
    # Where undeliverable events and compensations wait for Redis (a local journal).
    state_dir: str = ".ingester-state"

    breaker_failures: Annotated[int, msgspec.Meta(ge=1)] = 5
    breaker_failure_rate: Annotated[float, msgspec.Meta(gt=0, le=1)] = 0.5
    breaker_min_calls: Annotated[int, msgspec.Meta(ge=1)] = 10
    breaker_window_seconds: Seconds = 30.0
    breaker_cooldown_seconds: Seconds = 10.0
    retry_attempts: Annotated[int, msgspec.Meta(ge=1, le=20)] = 4
    retry_deadline_seconds: Seconds = 15.0
    replay_buffer_bytes: Annotated[int, msgspec.Meta(ge=0)] = 8 * 2**20

    max_upload_bytes: Annotated[int, msgspec.Meta(ge=1)] = 100 * 2**30
    block_size: Annotated[int, msgspec.Meta(ge=2**12, le=2**26)] = 2**20
    # Blocks in flight across all uploads; blocks shrink (to 64 KiB) to stay within it.
    buffer_budget_bytes: Annotated[int, msgspec.Meta(ge=2**20)] = 128 * 2**20
    default_compression: CodecName = "zstd"
    # Smaller bodies are stored as they are: below one filesystem block, compression
    # cannot save the SE any disk space (see README for the measurement).
    compression_min_bytes: Annotated[int, msgspec.Meta(ge=0)] = 4096
    # A temporary file's lifetime when the client names none (artStore wants 1-365).
    default_ttl_days: Annotated[int, msgspec.Meta(ge=1, le=365)] = 30
    zstd_level: Annotated[int, msgspec.Meta(ge=-7, le=22)] = 3
    zstd_threads: Annotated[int, msgspec.Meta(ge=-1, le=64)] = -1  # -1: auto
    brotli_quality: Annotated[int, msgspec.Meta(ge=0, le=11)] = 4
    gzip_level: Annotated[int, msgspec.Meta(ge=1, le=9)] = 6
    allowed_content_types: list[str] = msgspec.field(default_factory=list)
    # Peers (IPs or CIDRs, e.g. an nginx in front) whose X-Forwarded-* are believed.
    trusted_proxies: list[str] = msgspec.field(default_factory=list)

    # Resumable uploads (tus, IETF draft): staged bytes (and, without Redis, their state)
    # here (default: `tus` in the state directory); shared by every gateway behind one
    # nginx when they share one Redis.
    tus_dir: str | None = None
    # An unfinished upload is removed this long after its last request (so is the state
    # of a stored one): tus `Upload-Expires`, the draft's `max-age`.
    tus_expiry_seconds: Seconds = 86400.0
    # Uploads of known length are stored while they are received (the SE has most of
    # the file when its last byte arrives); off: stored after the last byte only.
    tus_store_while_receiving: bool = True
    # Browser origins (scheme://host[:port]) allowed to call the API; `*` for any.
    cors_origins: list[str] = msgspec.field(default_factory=list)

    # How long a finalized file's source stays on its edit SE (artStore: 24 h).
    finalize_safety_margin: Annotated[float, msgspec.Meta(ge=0)] = 86400.0
    # artStore's Admin Module: every stored file is registered in its file registry
    # (with the service account below; its token URL defaults to the Admin's).
    admin_url: HttpUrl | None = None
    upstream_credentials: Literal["forward", "service_account"] = "forward"
    service_token_url: HttpUrl | None = None
    service_client_id: str | None = None
    service_client_secret: str | None = None

    # On SIGTERM: how long streamed uploads in flight may take to finish before they are
    # interrupted (readiness is false and new uploads are refused meanwhile).
    shutdown_grace: Seconds = 20.0
    # The edge, before any token is read (runtime/edge.py; README "The edge").
    max_header_bytes: Annotated[int, msgspec.Meta(ge=2**10, le=2**20)] = 64 * 2**10
    max_header_count: Annotated[int, msgspec.Meta(ge=8, le=10_000)] = 100
    max_request_line_bytes: Annotated[int, msgspec.Meta(ge=256, le=2**20)] = 8 * 2**10
    header_timeout_seconds: Seconds = 10.0
    keepalive_timeout_seconds: Seconds = 5.0
    max_connections: Annotated[int, msgspec.Meta(ge=1)] = 4096  # per worker process
    max_connections_per_client: Annotated[int, msgspec.Meta(ge=1)] = 256
    # Fair use per user (sub), shared by every instance through Redis when it is set
    # (README, "Fair use"): uploads in flight, requests per minute (the token's
    # `rate_limit` claim overrides the role's), bytes per window (reading is paced).
    fair_use: bool = True
    fair_use_concurrent_uploads: RoleLimits = msgspec.field(default_factory=lambda: {ANY_ROLE: 16})
    fair_use_requests_per_minute: RoleLimits = msgspec.field(default_factory=dict)
    fair_use_bytes_per_window: RoleLimits = msgspec.field(default_factory=dict)
    fair_use_window_seconds: Seconds = 60.0
    fair_use_token_rate_limit: bool = True
    # A slot in Redis lives this long unless its gateway renews it (a dead one cannot).
    fair_use_lease_seconds: Annotated[float, msgspec.Meta(ge=1)] = 30.0

    client_body_timeout_seconds: Seconds = 60.0
    upstream_connect_timeout_seconds: Seconds = 5.0
    upstream_response_timeout_seconds: Seconds = 120.0

    log_format: Literal["json", "text"] = "json"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    access_log: bool = False
    # OpenTelemetry traces, configured by the standard OTEL_* variables (tracing/).
    otel_enabled: bool = False

    def __post_init__(self) -> None:
        if self.tus_dir is None:
            self.tus_dir = os.path.join(self.state_dir, "tus")
        if self.auth_public_key_file is None and self.auth_jwks_url is None:
            raise ValueError("INGESTER_AUTH_PUBLIC_KEY_FILE or INGESTER_AUTH_JWKS_URL must be set")
        if self.registry != "static" and self.redis_url is None:
            raise ValueError(f"INGESTER_REGISTRY={self.registry} needs INGESTER_REDIS_URL")
        if self.redis_url is not None and is_sentinel_url(self.redis_url):
            try:
                parse_sentinel_url(self.redis_url)
            except ValueError as exc:
                raise ValueError(f"INGESTER_REDIS_URL: {exc}") from None
        if self.registry == "static" and not self.storage_elements:
            raise ValueError(
                "INGESTER_STORAGE_ELEMENTS: at least one storage element is required"
                " with the static registry"
            )
        if self.admin_url is not None:
            if not (self.service_client_id and self.service_client_secret):
                raise ValueError(
                    "INGESTER_ADMIN_URL needs a service account to register files:"
                    " INGESTER_SERVICE_CLIENT_ID and INGESTER_SERVICE_CLIENT_SECRET"
                )
            if self.service_token_url is None:
                self.service_token_url = self.admin_url.rstrip("/") + "/api/v1/auth/token"
        service = (self.service_token_url, self.service_client_id, self.service_client_secret)
        if any(service) and not all(service):
            raise ValueError(
                "INGESTER_SERVICE_TOKEN_URL, INGESTER_SERVICE_CLIENT_ID and"
                " INGESTER_SERVICE_CLIENT_SECRET go together"
            )
        if self.upstream_credentials == "service_account" and not all(service):
            raise ValueError(
                "INGESTER_UPSTREAM_CREDENTIALS=service_account needs INGESTER_SERVICE_TOKEN_URL,"
                " INGESTER_SERVICE_CLIENT_ID and INGESTER_SERVICE_CLIENT_SECRET"
            )
        for proxy in self.trusted_proxies:
            try:
                ipaddress.ip_network(proxy, strict=False)
            except ValueError:
                raise ValueError(
                    f"INGESTER_TRUSTED_PROXIES: {proxy!r} is not an IP address or network"
                ) from None
        if self.max_request_line_bytes > self.max_header_bytes:
            raise ValueError(
                "INGESTER_MAX_REQUEST_LINE_BYTES must not exceed INGESTER_MAX_HEADER_BYTES"
            )
        if self.auth_max_token_bytes + 1024 > self.max_header_bytes:
            raise ValueError(
                "INGESTER_MAX_HEADER_BYTES must leave room for a token of"
                " INGESTER_AUTH_MAX_TOKEN_BYTES and the other fields (1 KiB more)"
            )
        for name in _ROLE_LIMIT_FIELDS:
            unknown = sorted(set(getattr(self, name)) - {*ROLES, ANY_ROLE})
            if unknown:
                raise ValueError(
                    f"{PREFIX}{name.upper()}: unknown role {unknown[0]!r}"
                    f" (roles: {', '.join(ROLES)}, or * for any other)"
                )
        for origin in self.cors_origins:
            if origin != "*" and not re.fullmatch(r"https?://[^/\s]+", origin.rstrip("/")):
                raise ValueError(
                    f"INGESTER_CORS_ORIGINS: {origin!r} is not an origin (scheme://host[:port])"
                )
        ids = [se.id for se in self.storage_elements]
        if len(ids) != len(set(ids)):
            raise ValueError("INGESTER_STORAGE_ELEMENTS: storage element ids must be unique")


class ConfigError(Exception):
    """A setting is invalid; the message is one line naming the variable."""


_SIZE = re.compile(r"^\s*(\d+)\s*([kmgt]i?b?)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {"k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}
_SIZE_FIELDS = {
    "max_upload_bytes",
    "block_size",
    "buffer_budget_bytes",
    "replay_buffer_bytes",
    "compression_min_bytes",
    "max_header_bytes",
    "max_request_line_bytes",
}
_JSON_FIELDS = {"storage_elements"}
_ROLE_LIMIT_FIELDS = (
    "fair_use_concurrent_uploads",
    "fair_use_requests_per_minute",
    "fair_use_bytes_per_window",
)
_ROLE_SIZE_FIELDS = {"fair_use_bytes_per_window"}
_LIST_FIELDS = {"allowed_content_types", "auth_upload_roles", "trusted_proxies", "cors_origins"}


def parse_size(text: str) -> int:
    """`1048576`, `1MiB`, `1M` and `1mb` all mean 2**20 bytes."""
    match = _SIZE.match(text)
    if match is None:
        raise ValueError(f"not a size: {text!r} (use bytes or a suffix like 64KiB, 1GiB)")
    number, unit = match.groups()
    return int(number) * (_SIZE_UNITS[unit[0].lower()] if unit else 1)


def parse_role_limits(text: str, size: bool = False) -> dict[str, int]:
    """`16` (every role), `user=4,operator=8,*=16` (per role, * for the others), or
    `user=10GiB,*=0` with sizes; 0 is no limit. Names are checked by `Settings`."""
    value = parse_size if size else _count
    text = text.strip()
    if not text:
        return {}
    if "=" not in text:
        return {ANY_ROLE: value(text)}
    limits: dict[str, int] = {}
    for item in text.split(","):
        role, sep, number = item.partition("=")
        role = role.strip()
        if not sep or not role:
            raise ValueError(f"expected role=value pairs separated by commas, got {item!r}")
        if role in limits:
            raise ValueError(f"role {role!r} is named twice")
        limits[role] = value(number)
    return limits


def _count(text: str) -> int:
    text = text.strip()
    if not text.isdigit():
        raise ValueError(f"not a whole number: {text!r}")
    return int(text)


def _raw_value(name: str, text: str) -> Any:
    if name in _SIZE_FIELDS:
        return parse_size(text)
    if name in _ROLE_LIMIT_FIELDS:
        return parse_role_limits(text, size=name in _ROLE_SIZE_FIELDS)
    if name in _JSON_FIELDS:
        return msgspec.json.decode(text)
    if name in _LIST_FIELDS:
        text = text.strip()
        if text.startswith("["):
            return msgspec.json.decode(text)
        return [item.strip() for item in text.split(",") if item.strip()]
    return text


def _env_name(path: str) -> str:
    """`$.storage_elements[0].url` -> `INGESTER_STORAGE_ELEMENTS`."""
    field = re.sub(r"^\$\.?", "", path).split("[")[0].split(".")[0]
    return PREFIX + field.upper()


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    env = os.environ if environ is None else environ
    known = set(Settings.__struct_fields__)
    raw: dict[str, Any] = {}
    for key, text in env.items():
        if not key.startswith(PREFIX):
            continue
        name = key[len(PREFIX) :].lower()
        if name not in known:
            continue  # other tools share the prefix namespace; only known names are read
        try:
            raw[name] = _raw_value(name, text)
        except (ValueError, msgspec.DecodeError) as exc:
            raise ConfigError(f"{key}: {exc}") from None
    try:
        settings = msgspec.convert(raw, Settings, strict=False)
    except msgspec.ValidationError as exc:
        message = str(exc)
        where = message.rsplit(" - at `", 1)
        if len(where) == 2:
            path = where[1].rstrip("`")
            detail = where[0][0].lower() + where[0][1:]
            raise ConfigError(f"{_env_name(path)}: {detail} (at {path})") from None
        raise ConfigError(message) from None
    if settings.auth_public_key_file is not None:
        _check_public_key_file(settings.auth_public_key_file)
    try:
        check_tracing(env, settings.otel_enabled)
    except TracingConfigError as exc:
        raise ConfigError(str(exc)) from None
    return settings


def _check_public_key_file(path: str) -> None:
    """A key file that is missing or holds no RSA public key fails here, at start,
    with one line, rather than as a traceback when the app is built."""
    from ingester_gateway.auth.verify import load_rsa_public_key  # auth is heavier than config

    name = PREFIX + "AUTH_PUBLIC_KEY_FILE"
    try:
        with open(path, "rb") as fh:
            load_rsa_public_key(fh.read())
    except OSError as exc:
        raise ConfigError(f"{name}: cannot read {path!r}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise ConfigError(f"{name}: {path!r}: {exc}") from None
