"""`make run`: dev keys, the reference Admin Module, two reference Storage Elements (rw
and edit) and the gateway wired to them, then commands to paste. Ctrl-C stops all.

The servers are the ones the tests and the benchmarks start (processes.py); their
logs go to `<data dir>/logs/`, the gateway's to this terminal."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

from ingester_gateway.reference.processes import (
    SERVICE_CLIENT,
    ServerProcess,
    admin_module,
    gateway,
    se_entry,
    storage_element,
)
from ingester_gateway.reference.tokens import generate_keypair, mint_token


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def run_dev(data_dir: Path, port: int, se_port: int) -> int:
    """The rw SE listens on `se_port`, the edit SE on the next port, the Admin Module
    on the one after."""
    data_dir = data_dir.resolve()
    keys = data_dir / "keys"
    if not (keys / "private.pem").exists():
        generate_keypair(keys)
    public, private = keys / "public.pem", keys / "private.pem"
    logs = data_dir / "logs"
    signal.signal(signal.SIGTERM, _interrupt)
    servers: list[ServerProcess] = []
    try:
        rw = storage_element(
            logs, public, element_id="se-rw", port=se_port, data_dir=data_dir / "se-rw"
        )
        edit = storage_element(
            logs,
            public,
            element_id="se-edit",
            mode="edit",
            port=se_port + 1,
            data_dir=data_dir / "se-edit",
        )
        admin = admin_module(logs, private, port=se_port + 2, db=data_dir / "admin.db")
        for server in (rw, edit, admin):
            servers.append(server.start())
        client_id, secret = SERVICE_CLIENT
        yours = {k: v for k, v in os.environ.items() if k.startswith("INGESTER_")}
        gw = gateway(
            logs,
            public,
            [se_entry(rw, "rw"), se_entry(edit, "edit")],
            port=port,
            env={
                "INGESTER_LOG_FORMAT": "text",
                **yours,  # the caller's settings, but for the wiring below
                "INGESTER_STATE_DIR": str(data_dir / "gateway-state"),
                "INGESTER_ADMIN_URL": admin.url,
                "INGESTER_SERVICE_CLIENT_ID": client_id,
                "INGESTER_SERVICE_CLIENT_SECRET": secret,
            },
        )
        gw.log_path = None  # the gateway speaks in this terminal
        servers.append(gw.start())
        token = mint_token(private.read_bytes(), sub="dev", role="user", ttl=12 * 3600)
        print(_instructions(gw.url, admin.url, token, rw, edit, data_dir), flush=True)
        while all(s.process is not None and s.process.poll() is None for s in servers):
            time.sleep(0.5)
        print("a server exited; stopping (logs in " + str(logs) + ")", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        for server in reversed(servers):
            server.stop()


def _cli() -> str:
    """The console script as the pasted commands can call it (the venv's, relative to here)."""
    beside = Path(sys.executable).parent / "ingester-gateway"
    return os.path.relpath(beside) if beside.exists() else "ingester-gateway"


def _instructions(
    base: str, admin: str, token: str, rw: ServerProcess, edit: ServerProcess, data_dir: Path
) -> str:
    file_id = "python3 -c 'import json,sys; print(json.load(sys.stdin)[\"file_id\"])'"
    cli = _cli()
    tx_id = "python3 -c 'import json,sys; print(json.load(sys.stdin)[\"transaction_id\"])'"
    return f"""
ingester-gateway is running on {base}
  Storage Elements: se-rw (rw) {rw.url}, se-edit (edit) {edit.url}
  Admin Module (tokens, file registry): {admin}      data and logs: {data_dir}

  export TOKEN={token}

  # a raw body (any size, streamed, compressed on the way), registered in artStore:
  curl -T README.md -H "Authorization: Bearer $TOKEN" {base}/api/v1/files/README.md

  # multipart, artStore style:
  curl -F description=demo -F file=@README.md -H "Authorization: Bearer $TOKEN" \\
       {base}/api/v1/files/upload

  # resumable (tus), checksummed, with a progress bar; Ctrl-C, then the same command resumes:
  INGESTER_TOKEN=$TOKEN {cli} upload --url {base} README.md

  # the registry's record of a stored file:
  FILE_ID=$(curl -s -T README.md -H "Authorization: Bearer $TOKEN" \\
       {base}/api/v1/files/README.md | {file_id})
  curl -H "Authorization: Bearer $TOKEN" {admin}/api/v1/files/$FILE_ID

  # a temporary file (edit SE), then finalized onto the rw SE:
  FILE_ID=$(curl -s -T README.md -H "Authorization: Bearer $TOKEN" \\
       "{base}/api/v1/files/README.md?retention_policy=temporary" | {file_id})
  TX=$(curl -s -X POST -H "Authorization: Bearer $TOKEN" {base}/api/v1/finalize/$FILE_ID | {tx_id})
  curl -H "Authorization: Bearer $TOKEN" {base}/api/v1/finalize/$TX/status

  metrics: {base}/metrics   ready: {base}/health/ready   API: {base}/openapi.json
  Ctrl-C stops everything.
"""
