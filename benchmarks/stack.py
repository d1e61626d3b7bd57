"""The servers under test: one reference SE (data on tmpfs), an nginx and a gateway
in front of that same SE. Each is started on first use and all are stopped by
`close()`, which the harness calls on every exit path."""

from __future__ import annotations

import contextlib
import json
import os
import urllib.request
from pathlib import Path

from ingester_gateway.tokens import generate_keypair, mint_token
from tests.servers import ServerProcess, gateway, nginx, se_entry, storage_element

TOKEN_TTL = 6 * 3600


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
            **(gateway_env or {}),
        }
        private, public = generate_keypair(workdir / "keys")
        self.public_key = public
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
        self._servers: dict[str, ServerProcess] = {}

    # -- servers, started on first use -------------------------------------------

    def _start(self, role: str, server: ServerProcess) -> ServerProcess:
        self._servers[role] = server  # registered first: a failed start is still stopped
        server.start(timeout=30)
        return server

    def se(self) -> ServerProcess:
        if "se" not in self._servers:
            self._start(
                "se",
                storage_element(
                    self.logdir, self.public_key, capacity="1TiB", data_dir=self.se_data
                ),
            )
        return self._servers["se"]

    def nginx(self) -> ServerProcess:
        if "nginx" not in self._servers:
            se = self.se()
            self._start("nginx", nginx(self.logdir, f"127.0.0.1:{se.port}"))
        return self._servers["nginx"]

    def gateway(self) -> ServerProcess:
        if "gateway" not in self._servers:
            se = self.se()
            self._start(
                "gateway",
                gateway(self.logdir, self.public_key, [se_entry(se)], env=self.gateway_env),
            )
        return self._servers["gateway"]

    def start_all(self) -> None:
        """Every server up before the first measurement, so all of them are measured
        (idle ones show what idling costs) and none starts during a run."""
        self.se()
        self.nginx()
        self.gateway()

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

    def log_tails(self, lines: int = 20) -> str:
        return "\n".join(
            f"--- {role} ({server.log_path}) ---\n{server.log_tail(lines)}"
            for role, server in self._servers.items()
        )

    def close(self) -> None:
        for server in reversed(list(self._servers.values())):
            with contextlib.suppress(Exception):
                server.stop()
