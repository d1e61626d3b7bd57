"""The client of the resumable-upload figures (`scenarios/resumable.py`): one upload of
a tmpfs file over tus 1.0 or the IETF draft, in PATCHes of `--patch-size` bytes, on one
keep-alive connection. Run by the harness as a subprocess; prints one JSON object.

    python -m benchmarks.resumable_client URL FILE --protocol tus|ietf
        [--patch-size 64MiB] [--checksum] [--auth-file F] [--metadata NAME=VALUE ...]
        [--progress-url URL]

URL is the creation endpoint (`.../api/v1/tus/?compression_algorithm=none`,
`.../files`). tus: `POST` with `Upload-Length` and `Upload-Metadata`, then `PATCH`es
with `Upload-Offset` (and `Upload-Checksum: sha256 ...` with `--checksum`). ietf: `POST`
with `Upload-Complete: ?0` and `Upload-Length`, then `PATCH`es of
`application/partial-upload` with `Upload-Offset`, `Upload-Complete: ?1` on the last
(and `Content-Digest: sha-256=:...:` with `--checksum`). Every answer's
`Upload-Offset` must be where the next part starts.

Why this client and not curl or tuspy: each PATCH body goes from the tmpfs file to the
socket with `sendfile` (no copy through the process), so the client costs close to
nothing and the same client drives the gateway and @tus/server; the digests of the
parts are computed before the clock starts (a real client hashes while it reads; here
that would only add the client's hash to the figure). tuspy reads each part into
memory and sends it through `requests`; curl would be one process per PATCH.

Times are from just before the creation `POST`: `sent_s` to the last PATCH's answer,
`stored_s` (with `--progress-url`, the gateway's `GET /api/v1/uploads/`) to the first
poll that shows the upload `stored`, with its `file_id`. `client_cpu_s` is the
process's user+sys over `sent_s` (not the digests made beforehand, nor the polling).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import http.client
import json
import mmap
import resource
import socket
import sys
import time
import urllib.parse
from pathlib import Path
from typing import Any

from ingester_gateway.config import parse_size

POLL_S = 0.01  # between two reads of the upload's progress
TIMEOUT_S = 300.0
STORE_TIMEOUT_S = 600.0


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _parts(size: int, patch: int) -> list[tuple[int, int]]:
    return [(start, min(patch, size - start)) for start in range(0, size, patch)]


def _digests(path: Path, parts: list[tuple[int, int]]) -> list[bytes]:
    with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        view = memoryview(mm)
        try:
            return [hashlib.sha256(view[start : start + n]).digest() for start, n in parts]
        finally:
            view.release()


def _metadata(fields: dict[str, str]) -> str:
    return ",".join(f"{k} {base64.b64encode(v.encode()).decode()}" for k, v in fields.items())


class Connection:
    """One keep-alive HTTP/1.1 connection; a request's body may come from a file."""

    def __init__(self, url: str) -> None:
        parts = urllib.parse.urlsplit(url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self._conn = http.client.HTTPConnection(self.host, self.port, timeout=TIMEOUT_S)
        self._conn.connect()
        assert self._conn.sock is not None
        self._conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def request(
        self,
        method: str,
        target: str,
        headers: dict[str, str],
        body: tuple[Any, int, int] | None = None,
    ) -> tuple[int, dict[str, str], bytes]:
        """`body`: (file, offset, count), sent with `sendfile`."""
        conn = self._conn
        conn.putrequest(method, target, skip_accept_encoding=True)
        for name, value in headers.items():
            conn.putheader(name, value)
        conn.putheader("Content-Length", str(body[2] if body else 0))
        conn.endheaders()
        if body is not None:
            fh, offset, count = body
            assert conn.sock is not None
            sent = conn.sock.sendfile(fh, offset, count)
            if sent != count:
                raise RuntimeError(f"sendfile sent {sent} of {count} bytes")
        resp = conn.getresponse()
        data = resp.read()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, data


def _path_of(location: str) -> str:
    parts = urllib.parse.urlsplit(location)
    return parts.path + (f"?{parts.query}" if parts.query else "")


def upload(args: argparse.Namespace) -> dict[str, Any]:
    path = Path(args.file)
    size = path.stat().st_size
    parts = _parts(size, args.patch_size)
    digests = _digests(path, parts) if args.checksum else []
    auth = {}
    if args.auth_file:
        auth["Authorization"] = Path(args.auth_file).read_text().strip()
    tus = args.protocol == "tus"
    dialect = {"Tus-Resumable": "1.0.0"} if tus else {"Upload-Draft-Interop-Version": "8"}
    fields = dict(item.split("=", 1) for item in args.metadata)
    conn = Connection(args.url)
    endpoint = _path_of(args.url)
    record: dict[str, Any] = {"size": size, "patches": len(parts), "protocol": args.protocol}

    cpu_before = _cpu()
    started = time.perf_counter()
    create = {**dialect, **auth, "Upload-Length": str(size)}
    if tus:
        create["Upload-Metadata"] = _metadata(fields)
    else:
        create["Upload-Complete"] = "?0"
        create["Content-Disposition"] = f'inline; filename="{fields.get("filename", path.name)}"'
    status, headers, body = conn.request("POST", endpoint, create)
    if status != 201 or "location" not in headers:
        raise RuntimeError(f"creation: HTTP {status} {body[:300]!r}")
    target = _path_of(headers["location"])
    with open(path, "rb") as fh:
        for i, (offset, count) in enumerate(parts):
            last = i == len(parts) - 1
            patch = {**dialect, **auth, "Upload-Offset": str(offset)}
            if tus:
                patch["Content-Type"] = "application/offset+octet-stream"
                if digests:
                    patch["Upload-Checksum"] = "sha256 " + base64.b64encode(digests[i]).decode()
            else:
                patch["Content-Type"] = "application/partial-upload"
                patch["Upload-Complete"] = "?1" if last else "?0"
                if digests:
                    encoded = base64.b64encode(digests[i]).decode()
                    patch["Content-Digest"] = f"sha-256=:{encoded}:"
            status, headers, body = conn.request("PATCH", target, patch, (fh, offset, count))
            if status not in (200, 201, 202, 204):
                raise RuntimeError(f"PATCH at {offset}: HTTP {status} {body[:300]!r}")
            if int(headers.get("upload-offset", -1)) != offset + count:
                raise RuntimeError(
                    f"PATCH at {offset}: Upload-Offset {headers.get('upload-offset')},"
                    f" expected {offset + count}"
                )
    record["sent_s"] = time.perf_counter() - started
    record["client_cpu_s"] = _cpu() - cpu_before
    record["upload_path"] = target
    if args.progress_url:
        upload_id = target.rstrip("/").rsplit("/", 1)[-1]
        progress_target = _path_of(args.progress_url.rstrip("/") + "/" + upload_id)
        deadline = time.monotonic() + STORE_TIMEOUT_S
        polls = 0
        while True:
            status, _, body = conn.request("GET", progress_target, auth)
            polls += 1
            state = json.loads(body) if status == 200 else {}
            # not the file_id alone: it shows as soon as the store starts (the gateway
            # names the file before the SE has it)
            if state.get("state") == "stored" and state.get("file_id"):
                record["stored_s"] = time.perf_counter() - started
                break
            if status != 200 or state.get("state") == "failed":
                raise RuntimeError(f"progress: HTTP {status} {body[:500]!r}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"not stored after {STORE_TIMEOUT_S:g} s: {state}")
            time.sleep(POLL_S)
        record["polls"] = polls
        # the upload's own answer: the 201 a PUT would have given
        status, _, body = conn.request("GET", target, {**dialect, **auth})
        if status != 200:
            raise RuntimeError(f"reading the stored upload: HTTP {status} {body[:300]!r}")
        record["upload"] = json.loads(body)
    return record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.resumable_client")
    parser.add_argument("url", help="creation endpoint")
    parser.add_argument("file", help="the payload (a tmpfs file)")
    parser.add_argument("--protocol", choices=("tus", "ietf"), default="tus")
    parser.add_argument("--patch-size", type=parse_size, default=64 * 2**20)
    parser.add_argument("--checksum", action="store_true", help="a sha256 on every PATCH")
    parser.add_argument("--auth-file", help="a file holding the Authorization value")
    parser.add_argument("--metadata", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument("--progress-url", help="wait until GET URL/<id> shows the file_id")
    args = parser.parse_args(argv)
    if args.patch_size < 1:
        parser.error("--patch-size must be at least 1 byte")
    try:
        record = upload(args)
    except (OSError, RuntimeError, http.client.HTTPException) as exc:
        print(json.dumps({"error": f"{type(exc).__name__}: {exc}"}))
        return 1
    record["client_max_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps(record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
