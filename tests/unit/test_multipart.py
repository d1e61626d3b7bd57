"""The streaming multipart/form-data reader, driven piece by piece with no server."""

from __future__ import annotations

import string
from dataclasses import dataclass

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from ingester_gateway.errors import ApiError
from ingester_gateway.pipeline.multipart import (
    MAX_FIELD_BYTES,
    MultipartReader,
    PartHeader,
    boundary_from,
)
from tests.kit import pieces_of, run, split_at

# RFC 2046 boundary characters (a space is allowed too, but not last; left out here).
BCHARS = string.ascii_letters + string.digits + "'()+_,-./:=?"
NAME_CHARS = string.ascii_letters + string.digits + "_-."


@dataclass
class FilePart:
    name: str
    filename: str
    content_type: str | None
    data: bytes


def encode_form(boundary: str, fields: list[tuple[str, str]], file: FilePart | None) -> bytes:
    out = bytearray()
    for name, value in fields:
        out += f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode()
        out += value.encode() + b"\r\n"
    if file is not None:
        out += (
            f"--{boundary}\r\nContent-Disposition: form-data; "
            f'name="{file.name}"; filename="{file.filename}"\r\n'
        ).encode()
        if file.content_type is not None:
            out += f"Content-Type: {file.content_type}\r\n".encode()
        out += b"\r\n" + file.data + b"\r\n"
    out += f"--{boundary}--\r\n".encode()
    return bytes(out)


async def read_form(
    chunks: list[bytes], boundary: bytes
) -> tuple[list[tuple[str, str]], list[tuple[PartHeader, bytes]]]:
    """What the gateway does: values of the fields, data of the file parts."""
    reader = MultipartReader(pieces_of(chunks), boundary)
    fields: list[tuple[str, str]] = []
    files: list[tuple[PartHeader, bytes]] = []
    while (part := await reader.next_part()) is not None:
        if part.filename is None:
            fields.append((part.name, await reader.read_value()))
        else:
            files.append((part, b"".join([piece async for piece in reader.iter_data()])))
    return fields, files


def read_bad(chunks: list[bytes], boundary: bytes = b"B") -> ApiError:
    with pytest.raises(ApiError) as info:
        run(read_form(chunks, boundary))
    assert info.value.status == 400
    return info.value


def chunkings(data: bytes) -> st.SearchStrategy[list[bytes]]:
    """Any split of `data`: one piece, one-byte pieces, or cuts anywhere."""
    cuts = st.lists(st.integers(0, len(data)), max_size=40)
    return st.one_of(
        st.just([data]),
        st.just([data[i : i + 1] for i in range(len(data))] or [b""]),
        cuts.map(lambda c: split_at(data, c)),
    )


field_strategy = st.tuples(
    st.text(NAME_CHARS, min_size=1, max_size=20),
    st.text(max_size=200),
)
file_strategy = st.builds(
    FilePart,
    name=st.just("file"),
    filename=st.text(NAME_CHARS, min_size=1, max_size=30),
    content_type=st.sampled_from([None, "application/octet-stream", "image/png", "text/csv"]),
    data=st.binary(max_size=4000),
)


@given(
    boundary=st.text(BCHARS, min_size=1, max_size=70),
    fields=st.lists(field_strategy, max_size=6),
    file=file_strategy,
    data=st.data(),
)
def test_any_form_in_any_chunking_reads_back_exactly(
    boundary: str,
    fields: list[tuple[str, str]],
    file: FilePart,
    data: st.DataObject,
) -> None:
    delimiter = b"\r\n--" + boundary.encode()
    assume(delimiter not in file.data)
    assume(all(delimiter not in value.encode() for _, value in fields))
    body = encode_form(boundary, fields, file)
    chunks = data.draw(chunkings(body))

    got_fields, got_files = run(read_form(chunks, boundary.encode()))

    assert got_fields == fields
    [(header, content)] = got_files
    assert (header.name, header.filename, header.content_type) == (
        file.name,
        file.filename,
        file.content_type,
    )
    assert content == file.data


def test_a_boundary_split_byte_by_byte_is_still_found() -> None:
    boundary = "----WebKitFormBoundary7MA4YWxkTrZu0gW"
    body = encode_form(boundary, [("description", "x")], FilePart("file", "a.bin", None, b"ab"))
    chunks = [body[i : i + 1] for i in range(len(body))]
    fields, [(_, content)] = run(read_form(chunks, boundary.encode()))
    assert fields == [("description", "x")]
    assert content == b"ab"


def test_file_data_arrives_as_the_body_arrives() -> None:
    """The reader yields file data before the body is complete: it streams."""
    head = b'--B\r\nContent-Disposition: form-data; name="file"; filename="f"\r\n\r\n'
    pulled: list[int] = []

    async def body() -> object:
        for i, piece in enumerate([head, b"x" * 1000, b"y" * 1000, b"\r\n--B--\r\n"]):
            pulled.append(i)
            yield piece

    async def scenario() -> None:
        reader = MultipartReader(body(), b"B")  # type: ignore[arg-type]
        assert (await reader.next_part()) is not None
        data = reader.iter_data()
        first = await anext(data)
        assert first.startswith(b"x")
        assert max(pulled) < 3  # the closing boundary has not been read yet
        async for _ in data:
            pass

    run(scenario())


def test_next_part_skips_what_was_not_read_of_the_current_part() -> None:
    body = encode_form(
        "B", [("a", "1" * 500), ("b", "2")], FilePart("file", "f.bin", None, b"z" * 300)
    )

    async def scenario() -> list[str]:
        reader = MultipartReader(pieces_of(split_at(body, range(0, len(body), 7))), b"B")
        names = []
        while (part := await reader.next_part()) is not None:
            names.append(part.name)
        return names

    assert run(scenario()) == ["a", "b", "file"]


def test_a_preamble_and_an_epilogue_are_ignored() -> None:
    inner = encode_form("B", [("a", "1")], None)
    fields, files = run(read_form([b"preamble\r\n" + inner + b"epilogue"], b"B"))
    assert fields == [("a", "1")]
    assert files == []


def test_an_empty_form_has_no_parts() -> None:
    assert run(read_form([b"--B--\r\n"], b"B")) == ([], [])


@pytest.mark.parametrize(
    "body",
    [
        b'--B\r\nContent-Disposition: form-data; name="a"\r\n\r\nhello\r\n--B\r\n',
        b'--B\r\nContent-Disposition: form-data; name="a"\r\n\r\nhello',
        b'--B\r\nContent-Disposition: form-data; name="a"\r\n\r\nhello\r\n',
        b'--B\r\nContent-Disposition: form-data; name="a"',
        b"--B\r\n",
        b"",
    ],
    ids=["no-closing", "cut-in-value", "cut-after-value", "cut-in-header", "only-open", "empty"],
)
def test_a_body_without_its_closing_boundary_is_400(body: bytes) -> None:
    read_bad([body])


@pytest.mark.parametrize(
    "body",
    [
        b"garbage",
        b"--X\r\nContent-Disposition: form-data; name=a\r\n\r\nv\r\n--X--\r\n",
        b"\x00" * 100,
    ],
)
def test_garbage_is_400(body: bytes) -> None:
    read_bad([body])


def test_a_part_without_content_disposition_is_400() -> None:
    read_bad([b"--B\r\nContent-Type: text/plain\r\n\r\nhello\r\n--B--\r\n"])


def test_a_part_that_is_not_form_data_is_400() -> None:
    read_bad([b'--B\r\nContent-Disposition: attachment; name="a"\r\n\r\nv\r\n--B--\r\n'])


def test_a_part_without_a_name_is_400() -> None:
    read_bad([b"--B\r\nContent-Disposition: form-data\r\n\r\nv\r\n--B--\r\n"])


def test_a_huge_part_header_is_400() -> None:
    header = b'Content-Disposition: form-data; name="a"\r\nX-Pad: ' + b"x" * 100_000
    read_bad([b"--B\r\n" + header + b"\r\n\r\nv\r\n--B--\r\n"])


def test_too_many_part_headers_is_400() -> None:
    extra = b"".join(b"X-H%d: v\r\n" % i for i in range(40))
    body = b'--B\r\nContent-Disposition: form-data; name="a"\r\n' + extra + b"\r\nv\r\n--B--\r\n"
    read_bad([body])


def test_too_many_parts_is_400() -> None:
    body = encode_form("B", [(f"f{i}", "v") for i in range(100)], None)
    read_bad([body])


def test_a_field_larger_than_the_limit_is_400() -> None:
    body = encode_form("B", [("description", "x" * (MAX_FIELD_BYTES + 1))], None)
    assert "larger" in read_bad([body]).message


def test_a_field_that_is_not_utf8_is_400() -> None:
    read_bad([b'--B\r\nContent-Disposition: form-data; name="a"\r\n\r\n\xff\xfe\r\n--B--\r\n'])


async def read_everything(chunks: list[bytes], boundary: bytes) -> None:
    await read_form(chunks, boundary)


@given(raw=st.binary(max_size=600), data=st.data())
def test_random_bytes_raise_only_a_400(raw: bytes, data: st.DataObject) -> None:
    chunks = data.draw(chunkings(raw))
    try:
        run(read_everything(chunks, b"B"))
    except ApiError as exc:
        assert exc.status == 400


VALID = encode_form(
    "B", [("description", "d"), ("compress", "true")], FilePart("file", "f.bin", "image/png", b"x")
)


@given(
    edits=st.lists(st.tuples(st.integers(0, len(VALID) - 1), st.binary(max_size=4)), max_size=6),
    cut=st.integers(0, len(VALID)),
    data=st.data(),
)
def test_mangled_forms_raise_only_a_400(
    edits: list[tuple[int, bytes]], cut: int, data: st.DataObject
) -> None:
    body = bytearray(VALID[:cut])
    for at, replacement in edits:
        body[at : at + len(replacement)] = replacement
    chunks = data.draw(chunkings(bytes(body)))
    try:
        run(read_everything(chunks, b"B"))
    except ApiError as exc:
        assert exc.status == 400


@pytest.mark.parametrize(
    ("content_type", "boundary"),
    [
        ("multipart/form-data; boundary=abc", b"abc"),
        ('multipart/form-data; boundary="a:b c"', b"a:b c"),
        ("Multipart/Form-Data; charset=utf-8; boundary=----x", b"----x"),
    ],
)
def test_boundary_from_a_multipart_content_type(content_type: str, boundary: bytes) -> None:
    assert boundary_from(content_type) == boundary


@pytest.mark.parametrize(
    "content_type",
    ["", "text/plain", "application/octet-stream", "multipart/mixed; boundary=x"],
)
def test_boundary_from_a_non_form_content_type_is_415(content_type: str) -> None:
    with pytest.raises(ApiError) as info:
        boundary_from(content_type)
    assert info.value.status == 415


@pytest.mark.parametrize(
    "content_type",
    [
        "multipart/form-data",
        "multipart/form-data; boundary=",
        'multipart/form-data; boundary=""',
        "multipart/form-data; boundary=" + "x" * 201,
    ],
)
def test_boundary_from_without_a_usable_boundary_is_400(content_type: str) -> None:
    with pytest.raises(ApiError) as info:
        boundary_from(content_type)
    assert info.value.status == 400


def test_a_part_header_that_is_not_utf8_is_400_without_the_bytes_in_the_message() -> None:
    secret = b"\xff" + b"s3cr3t-body-bytes " * 80  # ~1.5 KB the message used to echo
    body = (
        b'--B\r\nContent-Disposition: form-data; name="a"\r\nX-Junk: '
        + secret
        + b"\r\n\r\nv\r\n--B--\r\n"
    )
    error = read_bad([body])
    assert error.code == "malformed_multipart"
    assert "s3cr3t" not in error.message and "\\xff" not in error.message
    assert len(error.message) < 120, error.message


@pytest.mark.parametrize(
    "content_type",
    [
        "multipart/form-data; boundary=abc; boundary=def",
        'multipart/form-data; boundary="abc"; BOUNDARY=abc',
        "multipart/form-data; boundary=abc;boundary=abc",
    ],
)
def test_boundary_from_a_repeated_boundary_parameter_is_400(content_type: str) -> None:
    with pytest.raises(ApiError) as info:
        boundary_from(content_type)
    assert (info.value.status, info.value.code) == (400, "bad_request")
    assert "repeated" in info.value.message


def test_boundary_from_a_boundary_word_inside_another_quoted_parameter_is_not_a_repeat() -> None:
    assert boundary_from('multipart/form-data; x="; boundary=no"; boundary=yes') == b"yes"
