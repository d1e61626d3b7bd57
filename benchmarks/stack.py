"""The servers under test: one reference SE (data on tmpfs), and in front of that
same SE an nginx, the gateway (1 worker), further gateway instances (see
`GATEWAY_VARIANTS`), the FastAPI baseline of `baselines/`; beside them @tus/server
(`tus_node/`, the resumable uploads' reference). Each is started on first use
(`server(role)`) and all are stopped by `close()`, which the harness calls on every
exit path. `gateway_settings()` reads the gateway's setting defaults as its servers
see them."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import hashlib
import http.client
import json
import os
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

from benchmarks.scenario import Skipped
from ingester_gateway.reference import processes
from ingester_gateway.reference.processes import ServerProcess
from ingester_gateway.reference.tokens import generate_keypair, mint_token
from ingester_gateway.registry.redis import NodeAnnouncement, RedisNodeBook
from ingester_gateway.runtime.redis_io import redis_client

TOKEN_TTL = 6 * 3600
ROOT = Path(__file__).resolve().parent.parent
BASELINES = Path(__file__).resolve().parent / "baselines"
OTLP_SINK = Path(__file__).resolve().parent / "otlp_sink.py"
TUS_NODE = Path(__file__).resolve().parent / "tus_node"
# installed once per package-lock.json, outside the work tree (`npm ci`, ~12 MB)
TUS_NODE_CACHE = (
    Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "ingester-bench-tus-node"
)
NODE_MIN = (20, 19)  # @tus/server 2.4's `engines`
TRACING_ON = {
    "OTEL_TRACES_EXPORTER": "otlp",
    "OTEL_TRACES_SAMPLER": "always_on",
    "OTEL_BSP_MAX_QUEUE_SIZE": "262144",
    "OTEL_BSP_SCHEDULE_DELAY": "200",
}
# Further gateway instances: role -> settings on top of the main gateway's.
# Instances with the same settings as `gateway` but a history of their own: the
# process keeps what earlier uploads made its allocator grow (64 concurrent small
# uploads, brotli and gzip windows), and that must not show up in another figure's
# peak RSS. `gateway` serves the 1 GiB pass-through, zstd, multipart and paced uploads.
GATEWAY_VARIANTS: dict[str, dict[str, str]] = {
    "gateway": {},
    "gateway-codecs": {},  # brotli, gzip
    "gateway-mem": {},  # the 10 GiB upload, then the 100 concurrent ones
    "gateway-w1": {},  # small files, 1 worker
    "gateway-w2": {"INGESTER_WORKERS": "2"},  # small files, 2 workers
    "gateway-zt2": {"INGESTER_ZSTD_THREADS": "2"},
    # Nodes from a real Redis (issue 4): registry watcher, pub/sub, events, backlog.
    "gateway-redis": {"INGESTER_REGISTRY": "redis"},
    # Registering every stored file in the reference Admin Module (issue 8): small files.
    "gateway-reg": {},
    # Finalize (issue 8): the edit SE too, and the Admin Module's registry.
    "gateway-fin": {},
    # Tracing on (issue 11), every upload sampled, spans to `otlp_sink.py`: the
    # pass-through, and small files (a twin of gateway-w1). The queue holds a whole
    # small-file run, so no span is dropped (the sink counts them), and batches go out
    # every 200 ms, inside the measured window.
    "gateway-otel": TRACING_ON,
    "gateway-otel-w1": TRACING_ON,
    # ... and one upload in ten sampled (the usual production setting), small files.
    "gateway-otel10-w1": {
        **TRACING_ON,
        "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
        "OTEL_TRACES_SAMPLER_ARG": "0.1",
    },
    # The edge (issue 10): every held connection comes from the bench's one address.
    "gateway-edge": {"INGESTER_MAX_CONNECTIONS_PER_CLIENT": "100000"},
    # Fair use across instances (issue 10): small files with every limit on, through
    # Redis (none of them reached), and the same instance settings with fair use off.
    "gateway-fair": {
        "INGESTER_FAIR_USE_CONCURRENT_UPLOADS": "16",
        "INGESTER_FAIR_USE_REQUESTS_PER_MINUTE": "1000000",
        "INGESTER_FAIR_USE_BYTES_PER_WINDOW": "1TiB",
    },
    "gateway-fair-off": {"INGESTER_FAIR_USE": "false"},
    # Resumable uploads (issue 9): tus with a checksum on every PATCH, and the IETF draft;
    # their staging directory on tmpfs (`TUS_ON_TMPFS`), as @tus/server's. gateway-tus0
    # stores after the last byte only: what storing while receiving costs the PATCHes.
    "gateway-tus": {},
    "gateway-tus0": {"INGESTER_TUS_STORE_WHILE_RECEIVING": "false"},
    "gateway-ietf": {},
}
# Gateway instances wired to the reference Admin Module (registration, finalize).
WITH_ADMIN = frozenset({"gateway-reg", "gateway-fin"})
# Gateway instances given the bench's redis-server (INGESTER_REDIS_URL).
WITH_REDIS = frozenset({"gateway-redis", "gateway-fair", "gateway-fair-off"})
# Gateway instances whose resumable uploads are staged on tmpfs (INGESTER_TUS_DIR), not
# in the state directory beside the logs (on disk).
TUS_ON_TMPFS = frozenset({"gateway-tus", "gateway-tus0", "gateway-ietf"})
SERVER_ROLES = (
    *("se", "se-edit", "nginx", "redis", "admin", "otlp-sink"),
    *GATEWAY_VARIANTS,
    "baseline",
    "tus-node",
)

_SETTINGS_PROBE = """
import json, msgspec
from ingester_gateway.config import Settings
print(json.dumps({f.name: f.default for f in msgspec.structs.fields(Settings)
                  if isinstance(f.default, (int, float, str, bool))}))
"""


@functools.cache
def gateway_settings() -> dict[str, Any]:
    """The gateway's setting defaults, read by a subprocess that imports the gateway the
    way its servers do (so `--src` is honoured)."""
    result: dict[str, Any] = json.loads(
        subprocess.run(
            [sys.executable, "-c", _SETTINGS_PROBE],
            capture_output=True,
            text=True,
            check=True,
            cwd=ROOT,
        ).stdout
    )
    return result


def gateway_default(name: str) -> Any:
    """The default of one gateway setting (the references use the same levels)."""
    return gateway_settings()[name]


def zstd_threads_supported() -> bool:
    """Whether the gateway reads `INGESTER_ZSTD_THREADS` (unknown names are ignored)."""
    return "zstd_threads" in gateway_settings()


def _node_version() -> tuple[int, ...] | None:
    if shutil.which("node") is None or shutil.which("npm") is None:
        return None
    out = subprocess.run(["node", "--version"], capture_output=True, text=True, check=False)
    try:
        return tuple(int(x) for x in out.stdout.strip().lstrip("v").split("."))
    except ValueError:
        return None


def tus_node_install() -> Path:
    """A directory with @tus/server's node_modules and `server.mjs`: `npm ci` of
    `tus_node/package-lock.json` into a cache directory named after the lock, the first
    time (the registry is asked then only); `Skipped` without Node >= 20.19 and npm."""
    version = _node_version()
    if version is None or version < NODE_MIN:
        found = "none" if version is None else ".".join(map(str, version))
        raise Skipped(
            f"@tus/server 2.4 needs Node >= {'.'.join(map(str, NODE_MIN))} and npm"
            f" (found: {found}; apt-get install nodejs npm)"
        )
    lock = (TUS_NODE / "package-lock.json").read_bytes()
    home = TUS_NODE_CACHE / hashlib.sha256(lock).hexdigest()[:16]
    if not (home / "node_modules" / "@tus" / "server").is_dir():
        staging = home.with_name(home.name + f".{os.getpid()}.tmp")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        for name in ("package.json", "package-lock.json"):
            shutil.copy2(TUS_NODE / name, staging / name)
        done = subprocess.run(
            ["npm", "ci", "--ignore-scripts", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=staging,
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            shutil.rmtree(staging, ignore_errors=True)
            raise RuntimeError(f"npm ci of benchmarks/tus_node failed:\n{done.stderr[-2000:]}")
        shutil.rmtree(home, ignore_errors=True)
        staging.rename(home)
    shutil.copy2(TUS_NODE / "server.mjs", home / "server.mjs")  # the tree's, every run
    return home


async def _announce(url: str, record: NodeAnnouncement) -> None:
    client = redis_client(url, 5.0)
    try:
        await RedisNodeBook(client).announce(record, event="registered")
    finally:
        await client.aclose()


class BenchStack:
    def __init__(
        self, workdir: Path, logdir: Path, gateway_env: dict[str, str] | None = None
    ) -> None:
        self.workdir = workdir  # on tmpfs: keys, SE data
        self.logdir = logdir  # on disk: server logs, kept for a post-mortem
        self.gateway_env = {
            "INGESTER_WORKERS": "1",
            "INGESTER_HEALTH_CHECK_INTERVAL_SECONDS": "5",
            "INGESTER_LOG_LEVEL": "info",
            # Every bench client is one user ("bench"): the concurrent scenarios (100
            # uploads at once, 20 in the drain) would meet fair use's default of 16 in
            # flight. gateway-fair sets its own limits; fair use is measured there.
            "INGESTER_FAIR_USE_CONCURRENT_UPLOADS": "0",
            **(gateway_env or {}),
        }
        private, public = generate_keypair(workdir / "keys")
        self.public_key = public
        self.private_key = private
        pem = private.read_bytes()
        self.user_token = mint_token(pem, sub="bench", role="user", ttl=TOKEN_TTL)
        self.service_token = mint_token(
            pem, sub="bench-gc", role="admin", ttl=TOKEN_TTL, token_type="service_account"
        )
        self.auth_header_file = workdir / "auth.header"
        fd = os.open(self.auth_header_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(f"Authorization: Bearer {self.user_token}\n")
        self.se_data = workdir / "se-data"
        self.tus_node_dir = workdir / "tus-node-data"
        self._servers: dict[str, ServerProcess] = {}
        self._pem = pem
        self._tokens: list[str] = []

    def user_tokens(self, count: int) -> list[str]:
        """`count` distinct user tokens (own `sub` and `jti` each), minted once."""
        while len(self._tokens) < count:
            n = len(self._tokens)
            self._tokens.append(mint_token(self._pem, sub=f"bench-{n:03d}", ttl=TOKEN_TTL))
        return self._tokens[:count]

    # -- servers, started on first use -------------------------------------------

    def _start(self, role: str, server: ServerProcess) -> ServerProcess:
        self._servers[role] = server  # registered first: a failed start is still stopped
        server.start(timeout=30)
        return server

    def se(self) -> ServerProcess:
        if "se" not in self._servers:
            self._start(
                "se",
                processes.storage_element(
                    self.logdir, self.public_key, capacity="1TiB", data_dir=self.se_data
                ),
            )
        return self._servers["se"]

    def se_edit(self) -> ServerProcess:
        """An edit-mode SE (temporary files, finalize's source), data on tmpfs too."""
        if "se-edit" not in self._servers:
            self._start(
                "se-edit",
                processes.storage_element(
                    self.logdir,
                    self.public_key,
                    element_id="se-edit",
                    mode="edit",
                    capacity="1TiB",
                    data_dir=self.workdir / "se-edit-data",
                ),
            )
        return self._servers["se-edit"]

    def admin(self) -> ServerProcess:
        """The reference Admin Module: tokens and the file registry (SQLite on tmpfs)."""
        if "admin" not in self._servers:
            self._start(
                "admin",
                processes.admin_module(self.logdir, self.private_key, db=self.workdir / "admin.db"),
            )
        return self._servers["admin"]

    def otlp_sink(self) -> ServerProcess:
        """The traced gateways' OTLP/HTTP endpoint (`otlp_sink.py`): counts, keeps nothing."""
        if "otlp-sink" not in self._servers:
            port = processes.free_port()
            argv = [sys.executable, str(OTLP_SINK), "--port", str(port)]
            self._start(
                "otlp-sink",
                ServerProcess("otlp-sink", argv, port, self.logdir / "otlp-sink.log"),
            )
        return self._servers["otlp-sink"]

    def spans_exported(self) -> int:
        """Spans the sink has received so far."""
        with urllib.request.urlopen(f"{self.otlp_sink().url}/count", timeout=10) as resp:
            return int(json.loads(resp.read())["spans"])

    def nginx(self) -> ServerProcess:
        if "nginx" not in self._servers:
            se = self.se()
            self._start("nginx", processes.nginx(self.logdir, f"127.0.0.1:{se.port}"))
        return self._servers["nginx"]

    def redis(self) -> ServerProcess:
        """A redis-server holding the SE's node record (as an operator would add it)."""
        if "redis" not in self._servers:
            se = self.se()
            server = self._start("redis", processes.redis_server(self.logdir))
            record = NodeAnnouncement(id=se.name, url=se.url, mode="rw")
            asyncio.run(_announce(f"redis://127.0.0.1:{server.port}/0", record))
        return self._servers["redis"]

    def gateway(self, role: str = "gateway") -> ServerProcess:
        """The gateway (`gateway`, `INGESTER_WORKERS=1`) or one of `GATEWAY_VARIANTS`."""
        if role not in self._servers:
            se = self.se()
            env = {**self.gateway_env, **GATEWAY_VARIANTS[role]}
            entries = [processes.se_entry(se)]
            if role in WITH_REDIS:
                env["INGESTER_REDIS_URL"] = f"redis://127.0.0.1:{self.redis().port}/0"
            if role in WITH_ADMIN:
                client_id, secret = processes.SERVICE_CLIENT
                env |= {
                    "INGESTER_ADMIN_URL": self.admin().url,
                    "INGESTER_SERVICE_CLIENT_ID": client_id,
                    "INGESTER_SERVICE_CLIENT_SECRET": secret,
                    "INGESTER_FINALIZE_SAFETY_MARGIN": "0",
                }
            if role == "gateway-fin":
                entries.append(processes.se_entry(self.se_edit(), "edit"))
            if role in TUS_ON_TMPFS:
                env["INGESTER_TUS_DIR"] = str(self.workdir / f"{role}-tus")
            if "OTEL_TRACES_EXPORTER" in env:
                env["OTEL_EXPORTER_OTLP_ENDPOINT"] = self.otlp_sink().url
            self._start(
                role,
                processes.gateway(self.logdir, self.public_key, entries, env=env, name=role),
            )
        return self._servers[role]

    def baseline(self) -> ServerProcess:
        """The FastAPI ingester of `baselines/fastapi_ingester.py` under uvicorn, 1 worker."""
        if "baseline" not in self._servers:
            se = self.se()
            port = processes.free_port()
            env = {k: v for k, v in os.environ.items() if not k.startswith("INGESTER_")} | {
                "BASELINE_PUBLIC_KEY_FILE": str(self.public_key),
                "BASELINE_SE_URL": se.url,
            }
            argv = [
                *(sys.executable, "-m", "uvicorn", "fastapi_ingester:app"),
                *("--app-dir", str(BASELINES), "--host", "127.0.0.1", "--port", str(port)),
                *("--workers", "1", "--no-access-log", "--log-level", "warning"),
            ]
            self._start(
                "baseline",
                ServerProcess("baseline", argv, port, self.logdir / "baseline.log", env=env),
            )
        return self._servers["baseline"]

    def tus_node(self) -> ServerProcess:
        """@tus/server 2.4 + @tus/file-store under the machine's Node, staging in
        `tus_node_dir` on tmpfs (see `tus_node/server.mjs`)."""
        if "tus-node" not in self._servers:
            home = tus_node_install()
            self.tus_node_dir.mkdir(exist_ok=True)
            port = processes.free_port()
            argv = ["node", str(home / "server.mjs"), str(port), str(self.tus_node_dir)]
            server = ServerProcess(
                "tus-node", argv, port, self.logdir / "tus-node.log", ready_path=None
            )
            self._start("tus-node", server)
        return self._servers["tus-node"]

    def server(self, role: str) -> ServerProcess:
        if role == "se":
            return self.se()
        if role == "nginx":
            return self.nginx()
        if role == "redis":
            return self.redis()
        if role == "se-edit":
            return self.se_edit()
        if role == "admin":
            return self.admin()
        if role == "otlp-sink":
            return self.otlp_sink()
        if role == "baseline":
            return self.baseline()
        if role == "tus-node":
            return self.tus_node()
        return self.gateway(role)

    def start(self, roles: list[str]) -> None:
        """These servers up before the first measurement, so all of them are measured
        (idle ones show what idling costs) and none starts during a run."""
        for role in sorted(set(roles), key=SERVER_ROLES.index):
            self.server(role)

    def servers(self) -> dict[str, ServerProcess]:
        return dict(self._servers)

    def roots(self) -> dict[str, int]:
        """Role -> pid of the process tree to measure."""
        return {role: server.pid for role, server in self._servers.items()}

    # -- housekeeping -------------------------------------------------------------

    def delete_stored(self, file_id: str) -> None:
        """Free the tmpfs space of one stored file (the SE's gc route)."""
        request = urllib.request.Request(
            f"{self.se().url}/api/v1/gc/{file_id}",
            method="DELETE",
            headers={"Authorization": f"Bearer {self.service_token}"},
        )
        with urllib.request.urlopen(request, timeout=30) as resp:
            body = json.loads(resp.read())
        if body.get("status") not in ("deleted", "already_deleted"):
            raise RuntimeError(f"gc delete of {file_id} answered {body}")

    def stored_ids(self) -> list[str]:
        """Ids of the files the SE holds (its data directory is ours, on tmpfs)."""
        files = self.se_data / "files"
        return [p.name[: -len(".attr.json")] for p in files.glob("*.attr.json")]

    def delete_all_stored(self, parallel: int = 8) -> int:
        """gc every stored file through the SE (small-file runs leave thousands), over
        `parallel` keep-alive connections; the count deleted."""
        ids = self.stored_ids()
        se = self.se()
        headers = {"Authorization": f"Bearer {self.service_token}"}

        def delete_slice(part: list[str]) -> None:
            conn = http.client.HTTPConnection("127.0.0.1", se.port, timeout=30)
            try:
                for file_id in part:
                    conn.request("DELETE", f"/api/v1/gc/{file_id}", headers=headers)
                    resp = conn.getresponse()
                    body = resp.read()
                    if resp.status != 200:
                        raise RuntimeError(f"gc delete of {file_id}: {resp.status} {body[:200]!r}")
            finally:
                conn.close()

        with concurrent.futures.ThreadPoolExecutor(parallel) as pool:
            list(pool.map(delete_slice, [ids[i::parallel] for i in range(parallel)]))
        return len(ids)

    def log_tails(self, lines: int = 20) -> str:
        return "\n".join(
            f"--- {role} ({server.log_path}) ---\n{server.log_tail(lines)}"
            for role, server in self._servers.items()
        )

    def close(self) -> None:
        for server in reversed(list(self._servers.values())):
            with contextlib.suppress(Exception):
                server.stop()
