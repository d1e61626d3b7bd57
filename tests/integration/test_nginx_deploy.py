"""deploy/nginx.conf as shipped (only its ports substituted) on Debian's nginx, in front
of two gateways sharing one Redis and one tus staging directory, storing on a real
reference SE: what production behind nginx relies on.

- A 256 MiB chunked PUT is streamed, not spooled: with half the body held back by the
  client, the SE already holds most of the first half.
- tus `Location` URLs name nginx (its host and port, from X-Forwarded-Host/Proto, which
  the gateways believe from 127.0.0.1 only), and tuspy uploads there; a client's own
  forwarded headers do not get through nginx, and sent straight to a gateway from
  another loopback address they are ignored.
- A gateway SIGKILLed while a PATCH streams through nginx to it: the client's HEAD
  through nginx reaches the survivor at once (the dead gateway's lock is freed, not
  waited out) and names the durable offset; tuspy finishes there, byte for byte.

The tests share one deployment; the last one kills a gateway.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import socket
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from tusclient import client as tus_client

from ingester_gateway.reference.processes import ServerProcess, free_port, nginx_serving
from tests.kit import (
    DevKeys,
    eventually,
    files_path,
    http_call,
    log_events,
    pseudo_random_blocks,
    raw_exchange,
)
from tests.resumable import OFFSET_STREAM, TUS, TUS_VERSION, offset_of, wait_stored
from tests.stack import Cluster, Stack, redis_gateway, registered_se, stream_stored_digests

ROOT = Path(__file__).resolve().parents[2]
DEPLOY_CONF = ROOT / "deploy" / "nginx.conf"
MiB = 2**20
BIG = 256 * MiB
HALF = BIG // 2
SLACK = 32 * MiB  # what may sit in buffers between the client and the SE's disk
NGINX_PEER = "127.0.0.1"  # where nginx connects from: the gateways' only trusted proxy
OUTSIDER = "127.0.0.2"  # another loopback address: a client reaching a gateway directly


def deploy_conf(port: int, gateways: list[ServerProcess]) -> str:
    """deploy/nginx.conf listening on loopback `port`, its two upstreams our gateways;
    every other line as shipped (a substitution that no longer matches fails here)."""
    text = DEPLOY_CONF.read_text()
    first, second = gateways
    for shipped, here in (
        ("listen 80;", f"listen {NGINX_PEER}:{port};"),
        ("server 127.0.0.1:8020;", f"server 127.0.0.1:{first.port};"),
        ("server 127.0.0.1:8021;", f"server 127.0.0.1:{second.port};"),
    ):
        assert text.count(shipped) == 1, f"deploy/nginx.conf no longer has {shipped!r}"
        text = text.replace(shipped, here)
    return text


@dataclass
class Deployment:
    cluster: Cluster
    nginx: ServerProcess
    staging: Path  # the gateways' shared tus staging files

    @property
    def keys(self) -> DevKeys:
        return self.cluster.keys

    @property
    def se(self) -> Stack:
        return self.cluster.files("se-1")


@pytest.fixture(scope="module")
def deployment(keys: DevKeys, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    workdir = tmp_path_factory.mktemp("nginx-deploy")
    with Cluster.running(workdir, keys) as cluster:
        cluster.add_se(registered_se(workdir, keys, cluster.redis, "se-1"))
        tus_dir = workdir / "shared-tus"
        env = {
            "INGESTER_TUS_DIR": str(tus_dir),
            "INGESTER_TRUSTED_PROXIES": NGINX_PEER,
        }
        for name in ("gw-one", "gw-two"):
            gw = redis_gateway(workdir, keys, cluster.redis, cluster.tokens, name=name, env=env)
            cluster.add_gateway(gw)
        port = free_port()
        with nginx_serving(workdir, deploy_conf(port, cluster.gateways), port) as proxy:
            yield Deployment(cluster, proxy, tus_dir / "staging")


def running_upload(deployment: Deployment, upload_id: str) -> dict[str, object] | None:
    """The progress of a streamed upload, from whichever gateway runs it (a gateway
    knows its own streamed uploads only, so each is asked directly)."""
    for gw in deployment.cluster.gateways:
        answer = http_call(
            gw, "GET", f"/api/v1/uploads/{upload_id}", None, deployment.keys.auth(), timeout=5
        )
        if answer.status == 200:
            return dict(answer.json())
    return None


def test_a_256_mib_chunked_put_through_nginx_reaches_the_se_while_the_client_sends(
    deployment: Deployment,
) -> None:
    se = deployment.se
    upload_id = f"deploy-{uuid.uuid4().hex[:16]}"
    digest = hashlib.sha256()
    held: dict[str, object] = {}

    def body() -> Iterator[bytes]:
        sent = 0
        for block in pseudo_random_blocks(11, BIG):
            digest.update(block)
            yield block
            sent += len(block)
            if sent == HALF:  # hold the rest back until the SE has most of the first half
                held["se_bytes"] = eventually(
                    lambda: (n := se.partial_bytes()) >= HALF - SLACK and n,
                    timeout=30,
                    what="the SE receiving the first half while the client holds the rest",
                )
                held["progress"] = running_upload(deployment, upload_id)

    answer = http_call(
        deployment.nginx,
        "PUT",
        files_path("big.bin", "compression_algorithm=none"),
        body(),
        {**deployment.keys.auth(), "X-Upload-Id": upload_id},
        timeout=120,
    )
    assert answer.status == 201, answer.body
    # The SE held >= 96 MiB while the client had sent 128 MiB and 128 MiB were yet to
    # come: nginx did not spool the body (it would have sent nothing before the end).
    assert isinstance(held["se_bytes"], int) and HALF - SLACK <= held["se_bytes"] <= HALF
    progress = held["progress"]
    assert isinstance(progress, dict), "no gateway reported the upload running"
    assert progress["state"] == "receiving"
    assert HALF - SLACK <= progress["bytes_received"] <= HALF
    result = answer.json()
    assert (result["file_size"], result["checksum"]) == (BIG, digest.hexdigest())
    stored_hex, _, stored_size, _ = stream_stored_digests(se, result["file_id"], "none")
    assert (stored_hex, stored_size) == (digest.hexdigest(), BIG)


def _response_head(raw: bytes) -> tuple[int, dict[str, str]]:
    head = raw.partition(b"\r\n\r\n")[0].decode("latin-1")
    status_line, *lines = head.split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines)}
    return int(status_line.split()[1]), headers


def _create_directly(gw: ServerProcess, auth: dict[str, str], source: str) -> str:
    """A tus creation sent straight to `gw` from loopback address `source`, carrying
    forwarded headers a client made up; the Location it gets."""
    headers = {
        "Host": f"127.0.0.1:{gw.port}",
        **TUS_VERSION,
        **auth,
        "Upload-Length": "3",
        "X-Forwarded-Host": "evil.example",
        "X-Forwarded-Proto": "https",
        "X-Forwarded-Prefix": "/evil",
        "Content-Length": "0",
    }
    block = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    raw = raw_exchange(gw, f"POST {TUS} HTTP/1.1\r\n{block}\r\n".encode(), source)
    status, answer = _response_head(raw)
    assert status == 201, raw
    return answer["location"]


def test_tus_locations_through_nginx_name_nginx_and_forged_forwarded_headers_do_not_count(
    deployment: Deployment,
) -> None:
    auth = deployment.keys.auth()
    proxy = deployment.nginx
    data = os.urandom(3 * MiB + 17)
    # A client's own X-Forwarded-Host and -Prefix never get through nginx (it sets both).
    forged = {"X-Forwarded-Host": "evil.example", "X-Forwarded-Prefix": "/evil"}
    headers = {**TUS_VERSION, **auth, **forged, "Upload-Length": str(len(data))}
    created = http_call(proxy, "POST", TUS, b"", headers)
    assert created.status == 201, created.body
    location = created.headers["location"]
    upload_id = location.removeprefix(f"{proxy.url}{TUS}")
    assert location == f"{proxy.url}{TUS}{upload_id}" and upload_id  # nginx's host:port
    up = tus_client.TusClient(proxy.url + TUS, headers=auth).uploader(
        file_stream=io.BytesIO(data), url=location, chunk_size=MiB
    )
    up.upload()  # tuspy, from outside, at the URL it was given
    result = wait_stored(proxy, auth, urlsplit(location).path)["result"]
    assert deployment.se.download(result["file_id"]) == data

    # Straight to a gateway, the same kind of headers: believed from nginx's address
    # only (prefix included), a path relative to the request from any other.
    gw = deployment.cluster.gateways[0]
    trusted = _create_directly(gw, auth, NGINX_PEER)
    assert trusted.startswith(f"https://evil.example/evil{TUS}"), trusted
    ignored = _create_directly(gw, auth, OUTSIDER)
    assert ignored.startswith(TUS) and len(ignored) > len(TUS), ignored


def settled_size(path: Path) -> int:
    """The file's size once it has stopped growing for a moment."""
    last = -1
    while (size := path.stat().st_size) != last:
        last = size
        time.sleep(0.3)
    return size


def saved_offset(proxy: ServerProcess, auth: dict[str, str], upload_id: str) -> int:
    """The upload's saved offset, as its progress shows it (without asking its holder
    to let go, as a HEAD would)."""
    answer = http_call(proxy, "GET", f"/api/v1/uploads/{upload_id}", None, auth)
    assert answer.status == 200, answer.body
    return int(answer.json()["bytes_received"])


def holder_of(gateways: list[ServerProcess], staged: Path) -> ServerProcess:
    """The gateway with `staged` open for writing: the one a PATCH of that upload goes
    through (another may have it open for reading, storing it while it is received)."""

    def writes(gw: ServerProcess) -> bool:
        with contextlib.suppress(FileNotFoundError):
            for fd in Path(f"/proc/{gw.pid}/fd").iterdir():
                with contextlib.suppress(OSError):
                    if os.readlink(fd) != str(staged):
                        continue
                    info = Path(f"/proc/{gw.pid}/fdinfo/{fd.name}").read_text()
                    flags = int(info.split("flags:")[1].split()[0], 8)
                    if flags & os.O_ACCMODE != os.O_RDONLY:
                        return True
        return False

    return eventually(
        lambda: next((gw for gw in gateways if writes(gw)), None),
        timeout=10,
        what=f"a gateway writing {staged.name}",
    )


def test_a_gateway_killed_mid_patch_leaves_the_upload_to_the_other_through_nginx(
    deployment: Deployment,
) -> None:
    auth = deployment.keys.auth()
    proxy = deployment.nginx
    data = os.urandom(40 * MiB)
    client = tus_client.TusClient(proxy.url + TUS, headers=auth)
    location = client.uploader(file_stream=io.BytesIO(data), chunk_size=8 * MiB).create_url()
    assert location.startswith(f"{proxy.url}{TUS}"), location
    path = urlsplit(location).path
    upload_id = path.removeprefix(TUS)
    staged = deployment.staging / upload_id

    # One PATCH of everything, through nginx, paced until a checkpoint is saved and the
    # staging file holds more than it (bytes written, not yet durable).
    headers = {
        **TUS_VERSION,
        **OFFSET_STREAM,
        **auth,
        "Host": urlsplit(proxy.url).netloc,
        "Upload-Offset": "0",
        "Content-Length": str(len(data)),
    }
    block = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=30)
    with contextlib.closing(sock):
        sock.sendall(f"PATCH {path} HTTP/1.1\r\n{block}\r\n".encode())
        sent = 0
        while True:
            assert sent < len(data) // 2, "no checkpoint with bytes past it by half the data"
            sock.sendall(data[sent : sent + 256 * 1024])
            sent += 256 * 1024
            time.sleep(0.02)
            if sent >= 8 * MiB and sent % MiB == 0:
                # A checkpoint follows a piece only: once the file stops growing, none comes.
                on_disk = settled_size(staged)
                saved = saved_offset(proxy, auth, upload_id)
                if 0 < saved < on_disk:
                    break
        victim = holder_of(deployment.cluster.gateways, staged)
        [survivor] = [gw for gw in deployment.cluster.gateways if gw is not victim]
        victim.kill()
        # nginx cannot hand a half-sent body to another upstream: this PATCH is a 502.
        with contextlib.suppress(OSError):
            sock.sendall(data[sent : sent + MiB])
        raw = b""
        while b"\r\n\r\n" not in raw and (piece := sock.recv(65536)):
            raw += piece
        assert _response_head(raw)[0] == 502, raw[:300]

    started = time.monotonic()
    kept = offset_of(proxy, auth, path)  # through nginx, which now reaches the survivor
    # At once: the dead gateway's lock is freed, not waited out (LOCK_MS, 10 s).
    assert time.monotonic() - started < 3
    assert kept == saved  # the durable offset, not the on_disk bytes a dead gateway wrote
    up = client.uploader(file_stream=io.BytesIO(data), url=location, chunk_size=8 * MiB)
    assert up.offset == kept  # tuspy asked nginx where to go on
    up.upload()
    result = wait_stored(proxy, auth, path)["result"]
    assert deployment.se.download(result["file_id"]) == data
    assert result["checksum"] == hashlib.sha256(data).hexdigest()
    stored_by = [e for e in log_events(survivor, "resumable_stored") if e["upload_id"] == upload_id]
    assert len(stored_by) == 1
