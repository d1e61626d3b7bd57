"""Settings from INGESTER_* variables: defaults, sizes, lists, and one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ingester_gateway.config import ConfigError, load_settings, parse_size

SE = json.dumps([{"id": "se-1", "url": "http://127.0.0.1:8010"}])


@pytest.fixture
def base(keys) -> dict[str, str]:  # type: ignore[no-untyped-def]
    """The smallest valid environment: a public key file and one storage element."""
    return {
        "INGESTER_AUTH_PUBLIC_KEY_FILE": str(keys.public_path),
        "INGESTER_STORAGE_ELEMENTS": SE,
    }


def config_error(env: dict[str, str]) -> str:
    with pytest.raises(ConfigError) as info:
        load_settings(env)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_defaults_apply_when_only_the_required_variables_are_set(base: dict[str, str]) -> None:
    settings = load_settings(base)
    assert settings.port == 8020
    assert settings.host == "0.0.0.0"
    assert settings.auth_upload_roles == ["super_admin", "admin", "operator", "user"]
    assert settings.block_size == 2**20
    assert settings.default_compression == "zstd"
    assert settings.log_format == "json"
    assert settings.log_level == "info"
    assert settings.allowed_content_types == []
    assert settings.auth_issuer is None and settings.auth_audience is None
    [se] = settings.storage_elements
    assert (se.id, se.url, se.mode, se.priority) == ("se-1", "http://127.0.0.1:8010", "rw", 100)


def test_variables_without_the_prefix_or_unknown_names_are_ignored(base: dict[str, str]) -> None:
    settings = load_settings({**base, "PORT": "1", "INGESTER_SOMETHING_ELSE": "x"})
    assert settings.port == 8020


def test_values_are_decoded_from_strings(base: dict[str, str]) -> None:
    settings = load_settings(
        {
            **base,
            "INGESTER_PORT": "9000",
            "INGESTER_AUTH_UPLOAD_ROLES": "admin, operator",
            "INGESTER_LOG_FORMAT": "text",
            "INGESTER_ACCESS_LOG": "true",
            "INGESTER_CLIENT_BODY_TIMEOUT_SECONDS": "2.5",
        }
    )
    assert settings.port == 9000
    assert settings.auth_upload_roles == ["admin", "operator"]
    assert settings.log_format == "text"
    assert settings.access_log is True
    assert settings.client_body_timeout_seconds == 2.5


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("4096", 4096),
        ("64KiB", 64 * 2**10),
        ("1MiB", 2**20),
        ("1M", 2**20),
        ("1mb", 2**20),
        ("2GiB", 2 * 2**30),
        (" 3 KiB ", 3 * 2**10),
        ("1TiB", 2**40),
    ],
)
def test_sizes_accept_bytes_and_binary_suffixes(text: str, size: int) -> None:
    assert parse_size(text) == size


def test_size_variables_are_parsed_with_suffixes(base: dict[str, str]) -> None:
    settings = load_settings(
        {**base, "INGESTER_BLOCK_SIZE": "64KiB", "INGESTER_MAX_UPLOAD_BYTES": "1MiB"}
    )
    assert settings.block_size == 64 * 1024
    assert settings.max_upload_bytes == 2**20


def test_allowed_content_types_as_comma_list(base: dict[str, str]) -> None:
    env = {**base, "INGESTER_ALLOWED_CONTENT_TYPES": " image/png, text/* ,,application/pdf "}
    assert load_settings(env).allowed_content_types == ["image/png", "text/*", "application/pdf"]


def test_allowed_content_types_as_json_list(base: dict[str, str]) -> None:
    env = {**base, "INGESTER_ALLOWED_CONTENT_TYPES": '["image/png", "text/*"]'}
    assert load_settings(env).allowed_content_types == ["image/png", "text/*"]


def test_storage_elements_keep_mode_and_priority(base: dict[str, str]) -> None:
    elements = [
        {"id": "a", "url": "http://a.example:8010", "mode": "edit", "priority": 1},
        {"id": "b", "url": "https://b.example/se/", "mode": "ro"},
    ]
    settings = load_settings({**base, "INGESTER_STORAGE_ELEMENTS": json.dumps(elements)})
    assert [(s.id, s.mode, s.priority) for s in settings.storage_elements] == [
        ("a", "edit", 1),
        ("b", "ro", 100),
    ]


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("INGESTER_PORT", "0"),
        ("INGESTER_PORT", "65536"),
        ("INGESTER_PORT", "http"),
        ("INGESTER_LOG_FORMAT", "xml"),
        ("INGESTER_LOG_LEVEL", "verbose"),
        ("INGESTER_AUTH_UPLOAD_ROLES", "user,root"),
        ("INGESTER_DEFAULT_COMPRESSION", "lzma"),
        ("INGESTER_ACCESS_LOG", "maybe"),
        ("INGESTER_STORAGE_ELEMENTS", '[{"id": "a", "url": "ftp://a.example"}]'),
        ("INGESTER_STORAGE_ELEMENTS", '[{"id": "a", "url": "not a url"}]'),
        ("INGESTER_STORAGE_ELEMENTS", '[{"id": "a", "url": "http://a", "mode": "rx"}]'),
        ("INGESTER_STORAGE_ELEMENTS", '[{"id": "a", "url": "http://a", "colour": "red"}]'),
        ("INGESTER_STORAGE_ELEMENTS", "se-1=http://a"),
        ("INGESTER_STORAGE_ELEMENTS", '{"id": "a", "url": "http://a"}'),
        ("INGESTER_STORAGE_ELEMENTS", "[]"),
        (
            "INGESTER_STORAGE_ELEMENTS",
            '[{"id": "a", "url": "http://a"}, {"id": "a", "url": "http://b"}]',
        ),
        ("INGESTER_BLOCK_SIZE", "12XB"),
        ("INGESTER_BLOCK_SIZE", "1"),
        ("INGESTER_BLOCK_SIZE", "1GiB"),
        ("INGESTER_MAX_UPLOAD_BYTES", "-1"),
        ("INGESTER_MAX_UPLOAD_BYTES", "lots"),
        ("INGESTER_ALLOWED_CONTENT_TYPES", '["image/png"'),
        ("INGESTER_ZSTD_LEVEL", "99"),
        ("INGESTER_CLIENT_BODY_TIMEOUT_SECONDS", "0"),
        ("INGESTER_AUTH_JWKS_URL", "jwks.json"),
        ("INGESTER_AUTH_JWKS_URL", ""),
    ],
)
def test_a_bad_value_is_a_one_line_error_naming_its_variable(
    base: dict[str, str], variable: str, value: str
) -> None:
    message = config_error({**base, variable: value})
    assert message.startswith(f"{variable}:")


def test_no_key_source_is_an_error_naming_both_variables() -> None:
    message = config_error({"INGESTER_STORAGE_ELEMENTS": SE})
    assert "INGESTER_AUTH_PUBLIC_KEY_FILE" in message
    assert "INGESTER_AUTH_JWKS_URL" in message


def test_a_jwks_url_alone_is_a_valid_key_source() -> None:
    settings = load_settings(
        {"INGESTER_AUTH_JWKS_URL": "http://admin/jwks.json", "INGESTER_STORAGE_ELEMENTS": SE}
    )
    assert settings.auth_jwks_url == "http://admin/jwks.json"
    assert settings.auth_public_key_file is None


def test_no_storage_elements_with_the_static_registry_is_an_error(keys) -> None:  # type: ignore[no-untyped-def]
    message = config_error({"INGESTER_AUTH_PUBLIC_KEY_FILE": str(keys.public_path)})
    assert message.startswith("INGESTER_STORAGE_ELEMENTS:")


@pytest.mark.parametrize("path", ["/nonexistent/public.pem", ""])
def test_a_key_file_that_cannot_be_read_is_an_error_naming_it(
    base: dict[str, str], path: str
) -> None:
    message = config_error({**base, "INGESTER_AUTH_PUBLIC_KEY_FILE": path})
    assert message.startswith("INGESTER_AUTH_PUBLIC_KEY_FILE:")


def test_a_private_key_as_the_public_key_file_is_an_error(base: dict[str, str], keys) -> None:  # type: ignore[no-untyped-def]
    message = config_error({**base, "INGESTER_AUTH_PUBLIC_KEY_FILE": str(keys.private_path)})
    assert message.startswith("INGESTER_AUTH_PUBLIC_KEY_FILE:")


def test_a_key_file_that_is_not_a_key_is_an_error(base: dict[str, str], tmp_path: Path) -> None:
    garbage = tmp_path / "public.pem"
    garbage.write_text("hello\n")
    message = config_error({**base, "INGESTER_AUTH_PUBLIC_KEY_FILE": str(garbage)})
    assert message.startswith("INGESTER_AUTH_PUBLIC_KEY_FILE:")


def test_the_edge_limits_are_settings_with_sizes_and_their_defaults(base: dict[str, str]) -> None:
    defaults = load_settings(base)
    assert (defaults.max_header_bytes, defaults.max_header_count) == (64 * 1024, 100)
    assert (defaults.max_request_line_bytes, defaults.header_timeout_seconds) == (8192, 10.0)
    assert (defaults.max_connections, defaults.max_connections_per_client) == (4096, 256)
    assert defaults.keepalive_timeout_seconds == 5.0
    settings = load_settings(
        {
            **base,
            "INGESTER_MAX_HEADER_BYTES": "32KiB",
            "INGESTER_MAX_REQUEST_LINE_BYTES": "4KiB",
            "INGESTER_HEADER_TIMEOUT_SECONDS": "2.5",
            "INGESTER_MAX_CONNECTIONS_PER_CLIENT": "16",
        }
    )
    assert (settings.max_header_bytes, settings.max_request_line_bytes) == (32768, 4096)
    assert (settings.header_timeout_seconds, settings.max_connections_per_client) == (2.5, 16)


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"INGESTER_MAX_REQUEST_LINE_BYTES": "128KiB"}, "INGESTER_MAX_REQUEST_LINE_BYTES"),
        ({"INGESTER_MAX_HEADER_BYTES": "4KiB"}, "INGESTER_MAX_HEADER_BYTES"),  # no room for a token
        ({"INGESTER_HEADER_TIMEOUT_SECONDS": "0"}, "INGESTER_HEADER_TIMEOUT_SECONDS"),
        ({"INGESTER_MAX_CONNECTIONS": "0"}, "INGESTER_MAX_CONNECTIONS"),
    ],
)
def test_edge_limits_that_cannot_work_stop_start_up(
    base: dict[str, str], env: dict[str, str], named: str
) -> None:
    assert named in config_error({**base, **env})
