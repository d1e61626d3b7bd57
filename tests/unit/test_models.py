"""parse_upload_options: string fields in, typed options out, or a 400 naming the field."""

from __future__ import annotations

import pytest

from ingester_gateway.errors import ApiError
from ingester_gateway.models import (
    MAX_DESCRIPTION_CHARS,
    MAX_METADATA_DEPTH,
    UploadOptions,
    parse_upload_options,
)


def invalid(fields: dict[str, str]) -> ApiError:
    with pytest.raises(ApiError) as info:
        parse_upload_options(fields)
    assert (info.value.status, info.value.code) == (400, "invalid_parameter")
    return info.value


def test_defaults() -> None:
    assert parse_upload_options({}) == UploadOptions(
        description="",
        retention_policy="permanent",
        ttl_days=None,
        compress=None,
        compression_algorithm=None,
        metadata={},
    )


def test_unknown_fields_are_ignored() -> None:
    assert parse_upload_options({"version": "3", "file_id": "x"}) == parse_upload_options({})


def test_all_fields_are_decoded() -> None:
    options = parse_upload_options(
        {
            "description": "scan of page 1",
            "retention_policy": "temporary",
            "ttl_days": "7",
            "compress": "true",
            "compression_algorithm": "brotli",
            "metadata": '{"project": "artStore", "pages": [1, 2]}',
        }
    )
    assert options.description == "scan of page 1"
    assert options.retention_policy == "temporary"
    assert options.ttl_days == 7
    assert options.compress is True
    assert options.compression_algorithm == "brotli"
    assert options.metadata == {"project": "artStore", "pages": [1, 2]}


@pytest.mark.parametrize(("mode", "policy"), [("edit", "temporary"), ("rw", "permanent")])
def test_storage_mode_is_an_alias_of_retention_policy(mode: str, policy: str) -> None:
    assert parse_upload_options({"storage_mode": mode}).retention_policy == policy
    both = {"storage_mode": mode, "retention_policy": policy}
    assert parse_upload_options(both).retention_policy == policy


@pytest.mark.parametrize(
    "fields",
    [
        {"storage_mode": "edit", "retention_policy": "permanent"},
        {"storage_mode": "rw", "retention_policy": "temporary"},
    ],
)
def test_conflicting_storage_mode_and_retention_policy_is_400(fields: dict[str, str]) -> None:
    assert "disagree" in invalid(fields).message


@pytest.mark.parametrize("mode", ["ro", "ar", "EDIT", ""])
def test_a_storage_mode_other_than_edit_or_rw_is_400(mode: str) -> None:
    assert "storage_mode" in invalid({"storage_mode": mode}).message


@pytest.mark.parametrize("ttl", ["x", "0", "-1", "3.5", "36501"])
def test_a_bad_ttl_days_is_400_naming_it(ttl: str) -> None:
    message = invalid({"retention_policy": "temporary", "ttl_days": ttl}).message
    assert message.startswith("ttl_days")


def test_ttl_days_with_permanent_retention_is_400() -> None:
    assert "ttl_days" in invalid({"ttl_days": "5"}).message
    assert "ttl_days" in invalid({"ttl_days": "5", "storage_mode": "rw"}).message


def test_ttl_days_with_the_edit_alias_is_accepted() -> None:
    assert parse_upload_options({"ttl_days": "30", "storage_mode": "edit"}).ttl_days == 30


@pytest.mark.parametrize(
    ("text", "value"),
    [("true", True), ("false", False), ("1", True), ("0", False), ("True", True), ("", None)],
)
def test_compress_strings(text: str, value: bool | None) -> None:
    assert parse_upload_options({"compress": text}).compress is value


@pytest.mark.parametrize("text", ["maybe", "2", "yess"])
def test_a_compress_value_that_is_not_a_boolean_is_400(text: str) -> None:
    assert invalid({"compress": text}).message.startswith("compress")


@pytest.mark.parametrize("algorithm", ["zstd", "brotli", "gzip", "none"])
def test_each_compression_algorithm_is_accepted(algorithm: str) -> None:
    assert parse_upload_options({"compression_algorithm": algorithm}).compression_algorithm == (
        algorithm
    )


@pytest.mark.parametrize("algorithm", ["lz4", "ZSTD", "deflate"])
def test_an_unknown_compression_algorithm_is_400(algorithm: str) -> None:
    assert invalid({"compression_algorithm": algorithm}).message.startswith("compression_algorithm")


def test_an_empty_compression_algorithm_means_the_default() -> None:
    assert parse_upload_options({"compression_algorithm": ""}).compression_algorithm is None


@pytest.mark.parametrize("metadata", ["[1, 2]", '"text"', "42", "{bad json", "null"])
def test_metadata_that_is_not_a_json_object_is_400(metadata: str) -> None:
    assert "metadata" in invalid({"metadata": metadata}).message


def test_oversized_metadata_is_400() -> None:
    big = '{"a": "' + "x" * 20_000 + '"}'
    assert "metadata" in invalid({"metadata": big}).message


def test_empty_metadata_is_an_empty_object() -> None:
    assert parse_upload_options({"metadata": ""}).metadata == {}


def test_an_overlong_description_is_400() -> None:
    message = invalid({"description": "x" * (MAX_DESCRIPTION_CHARS + 1)}).message
    assert message.startswith("description")


def test_a_bad_retention_policy_is_400() -> None:
    assert invalid({"retention_policy": "forever"}).message.startswith("retention_policy")


def test_the_gateways_reserved_metadata_key_is_refused() -> None:
    """`_ingester` in artStore's user_metadata holds the gateway's facts (the original's
    sha256): a client may not write it."""
    with pytest.raises(ApiError) as info:
        parse_upload_options({"metadata": '{"_ingester": {"original_sha256": "forged"}}'})
    assert (info.value.status, info.value.code) == (400, "invalid_parameter")
    assert "_ingester" in info.value.message


@pytest.mark.parametrize(
    "metadata",
    [
        '{"a": ' * 11 + "1" + "}" * 11,  # eleven objects deep
        '{"a": ' + "[" * 10 + "]" * 10 + "}",  # an object around ten arrays
        '{"a": ' + "[" * 8000 + "]" * 8000 + "}",  # a RecursionError in any decoder
    ],
)
def test_metadata_nested_deeper_than_the_limit_is_400(metadata: str) -> None:
    message = invalid({"metadata": metadata}).message
    assert f"deeper than {MAX_METADATA_DEPTH} levels" in message


def test_metadata_ten_levels_deep_is_accepted_and_brackets_in_strings_do_not_count() -> None:
    deep = '{"a": ' * 9 + '{"s": "[[[[{{{{"}' + "}" * 9
    options = parse_upload_options({"metadata": deep})
    assert options.metadata["a"]["a"]["a"]["a"]["a"]["a"]["a"]["a"]["a"] == {"s": "[[[[{{{{"}


def test_a_bad_value_is_named_but_not_quoted_back_unless_it_is_a_plain_word() -> None:
    assert invalid({"retention_policy": "forever"}).message == (
        "retention_policy: invalid enum value 'forever'"
    )
    hostile = "\u202e<script>" + "A" * 300
    message = invalid({"retention_policy": hostile}).message
    assert hostile not in message and "<script>" not in message
    assert message.startswith("retention_policy: invalid enum value (not shown)")
