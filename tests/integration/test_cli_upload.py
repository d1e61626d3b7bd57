"""`ingester-gateway upload` as a user runs it: the real command in its own process, a
real gateway and SE on loopback; what it stores is read back from the SE. Interrupted
with SIGINT and run again, it resumes from the server's offset."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
from pathlib import Path
from typing import Any

from ingester_gateway.reference.processes import PYTHON, free_port
from tests.kit import DevKeys, eventually
from tests.resumable import offset_of, wait_stored
from tests.stack import Stack, assert_stored

KiB, MiB = 2**10, 2**20


def command(stack: Stack | None, path: Path, state_dir: Path, *args: str) -> list[str]:
    url = stack.gw.url if stack is not None else f"http://127.0.0.1:{free_port()}"
    return [
        PYTHON, "-m", "ingester_gateway", "upload", str(path),
        "--url", url, "--state-dir", str(state_dir), *args,
    ]  # fmt: skip


def environment(token: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("INGESTER_")}
    return {**env, "INGESTER_TOKEN": token}


def upload(
    stack: Stack | None, path: Path, state_dir: Path, *args: str, token: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command(stack, path, state_dir, *args),
        capture_output=True,
        text=True,
        timeout=120,
        env=environment(token),
    )


def printed(done: subprocess.CompletedProcess[str]) -> dict[str, str]:
    """The plain result: `file_id <id>` and `sha256 <hex>`."""
    assert done.returncode == 0, done.stderr
    lines = dict(line.split(" ", 1) for line in done.stdout.splitlines())
    assert set(lines) == {"file_id", "sha256"}, done.stdout
    return lines


def records(state_dir: Path) -> list[Path]:
    return sorted((state_dir / "uploads").glob("*.json"))


def stored_result(stack: Stack, url: str) -> dict[str, Any]:
    result = wait_stored(stack.gw, stack.keys.auth(), url.removeprefix(stack.gw.url))["result"]
    assert isinstance(result, dict)
    return result


def test_upload_stores_the_file_with_its_options_and_forgets_the_record(
    stack: Stack, tmp_path: Path
) -> None:
    data = b"".join(b"line %06d of a log that compresses well\n" % i for i in range(60_000))
    path = tmp_path / "app.log"
    path.write_bytes(data)
    state = tmp_path / "state"
    done = upload(
        stack, path, state, "--chunk-size", "1MiB", "--compression-algorithm", "zstd",
        "--description", "from the command line", "--metadata", '{"project": "cli"}', "--json",
        token=stack.keys.token(),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["original_filename"] == "app.log" and result["compression_algorithm"] == "zstd"
    assert result["content_type"].startswith("text/plain")
    assert_stored(stack, result, data)
    assert records(state) == []  # stored: nothing left to resume


def test_parallel_parts_are_concatenated_into_the_same_bytes(
    stack: Stack, tmp_path: Path
) -> None:
    data = os.urandom(5 * MiB + 3)
    path = tmp_path / "random.bin"
    path.write_bytes(data)
    state = tmp_path / "state"
    done = upload(
        stack, path, state, "--parallel", "4", "--chunk-size", "512KiB", "--json",
        token=stack.keys.token(),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["checksum"] == hashlib.sha256(data).hexdigest()
    assert_stored(stack, result, data)
    assert records(state) == []


def test_sigint_mid_upload_then_the_same_command_resumes_from_the_server_offset(
    stack: Stack, tmp_path: Path
) -> None:
    data = os.urandom(6 * MiB)
    path = tmp_path / "big.bin"
    path.write_bytes(data)
    state = tmp_path / "state"
    auth = stack.keys.auth()
    paced = command(stack, path, state, "--chunk-size", "256KiB", "--limit-rate", "1MiB")
    first = subprocess.Popen(
        paced,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=environment(stack.keys.token()),
    )
    try:
        record = eventually(lambda: records(state)[0] if records(state) else None, 30, "a record")
        url = json.loads(record.read_bytes())["parts"][0]["url"]
        path_on_gateway = url.removeprefix(stack.gw.url)
        eventually(
            lambda: offset_of(stack.gw, auth, path_on_gateway) >= 512 * KiB or None,
            30,
            "half a MiB on the server",
        )
        first.send_signal(signal.SIGINT)
        _, err = first.communicate(timeout=30)
    finally:
        if first.poll() is None:
            first.kill()
            first.communicate()
    assert first.returncode == 130, err
    assert "run the same command again to resume" in err
    kept = offset_of(stack.gw, auth, path_on_gateway)
    assert 0 < kept < len(data)
    assert records(state) == [record]  # kept to resume

    second = upload(stack, path, state, "--chunk-size", "1MiB", token=stack.keys.token())
    result = printed(second)
    assert f"resuming: {kept} of {len(data)} bytes are on the server" in second.stderr
    assert result["sha256"] == hashlib.sha256(data).hexdigest()
    stored = stored_result(stack, url)
    assert stored["file_id"] == result["file_id"]
    assert_stored(stack, stored, data)
    assert records(state) == []


def test_a_bad_token_exits_1_with_the_gateways_message(
    stack: Stack, tmp_path: Path, other_keys: DevKeys
) -> None:
    path = tmp_path / "small.txt"
    path.write_bytes(b"hello\n")
    done = upload(stack, path, tmp_path / "state", token=other_keys.token())
    assert done.returncode == 1
    assert done.stdout == ""
    message = done.stderr.strip()
    assert message.startswith("ingester-gateway upload: 401 unauthorized: "), message
    assert "\n" not in message
    assert records(tmp_path / "state") == []


def test_a_missing_file_exits_2(stack: Stack, tmp_path: Path) -> None:
    done = upload(stack, tmp_path / "nothing.bin", tmp_path / "state", token=stack.keys.token())
    assert done.returncode == 2
    assert "nothing.bin: no such file" in done.stderr


def test_an_unreachable_gateway_exits_1_after_its_retries(keys: DevKeys, tmp_path: Path) -> None:
    path = tmp_path / "small.txt"
    path.write_bytes(b"hello\n")
    done = upload(None, path, tmp_path / "state", "--retries", "1", token=keys.token())
    assert done.returncode == 1
    assert "cannot reach 127.0.0.1:" in done.stderr and "gave up after 2 tries" in done.stderr
