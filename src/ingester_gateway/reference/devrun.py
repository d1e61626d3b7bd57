"""`make run`: dev keys, one local reference Storage Element, the gateway, a token and a
curl command to paste. Ctrl-C stops both processes."""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from ingester_gateway.reference.tokens import generate_keypair, mint_token


def wait_ready(
    name: str, url: str, process: subprocess.Popen[bytes], timeout: float = 20.0
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{name} exited with status {process.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:  # noqa: S310 (loopback)
                if resp.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not become ready within {timeout:g} s")


def _stop(processes: list[subprocess.Popen[bytes]]) -> None:
    for p in processes:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 10
    for p in processes:
        try:
            p.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def run_dev(data_dir: Path, port: int, se_port: int, token_port: int) -> int:
    keys = data_dir / "keys"
    if not (keys / "private.pem").exists():
        generate_keypair(keys)
    public = keys / "public.pem"
    python = sys.executable
    processes: list[subprocess.Popen[bytes]] = []
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        se = subprocess.Popen(
            [
                python,
                "-m",
                "ingester_gateway",
                "storage-element",
                "--host",
                "127.0.0.1",
                "--port",
                str(se_port),
                "--data-dir",
                str(data_dir / "se-1"),
                "--mode",
                "rw",
                "--element-id",
                "se-1",
                "--public-key-file",
                str(public),
                "--quiet",
            ]
        )
        processes.append(se)
        wait_ready("the storage element", f"http://127.0.0.1:{se_port}/health/ready", se)
        # The Admin Module's stand-in: a service account for compensating deletes.
        secret = secrets.token_urlsafe(16)
        tokens = subprocess.Popen(
            [
                python,
                "-m",
                "ingester_gateway",
                "token-service",
                "--port",
                str(token_port),
                "--private-key",
                str(keys / "private.pem"),
                "--client",
                f"ingester:{secret}",
            ]
        )
        processes.append(tokens)
        wait_ready("the token service", f"http://127.0.0.1:{token_port}/health/ready", tokens)
        env = {
            "INGESTER_HOST": "127.0.0.1",
            "INGESTER_LOG_FORMAT": "text",
            **os.environ,
            "INGESTER_PORT": str(port),
            "INGESTER_AUTH_PUBLIC_KEY_FILE": str(public),
            "INGESTER_SERVICE_TOKEN_URL": f"http://127.0.0.1:{token_port}/api/v1/auth/token",
            "INGESTER_SERVICE_CLIENT_ID": "ingester",
            "INGESTER_SERVICE_CLIENT_SECRET": secret,
            "INGESTER_STORAGE_ELEMENTS": json.dumps(
                [{"id": "se-1", "url": f"http://127.0.0.1:{se_port}", "mode": "rw"}]
            ),
        }
        gateway = subprocess.Popen([python, "-m", "ingester_gateway", "serve"], env=env)
        processes.append(gateway)
        wait_ready("the gateway", f"http://127.0.0.1:{port}/health/ready", gateway)
        token = mint_token(
            (keys / "private.pem").read_bytes(), sub="dev", role="user", ttl=12 * 3600
        )
        base = f"http://127.0.0.1:{port}"
        print(
            f"""
ingester-gateway is running on {base} (Storage Element se-1 on :{se_port}, data in {data_dir})

  export TOKEN={token}

  # raw body (any size, streamed):
  curl -T README.md -H "Authorization: Bearer $TOKEN" {base}/api/v1/files/README.md

  # multipart, artStore style:
  curl -F description=demo -F file=@README.md -H "Authorization: Bearer $TOKEN" \\
       {base}/api/v1/files/upload

  metrics: {base}/metrics   ready: {base}/health/ready   API: {base}/openapi.json
  Ctrl-C stops both.
""",
            flush=True,
        )
        while all(p.poll() is None for p in processes):
            time.sleep(0.5)
        print("a process exited; stopping", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        _stop(processes)
