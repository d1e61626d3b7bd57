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

import pytest

from ingester_gateway.reference.processes import PYTHON, free_port, gateway, running, se_entry
from tests.kit import DevKeys, eventually, http_call
from tests.resumable import TUS_VERSION
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


def test_parallel_parts_are_concatenated_into_the_same_bytes(stack: Stack, tmp_path: Path) -> None:
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


def interrupted(stack: Stack, argv: list[str], sent: int = 1) -> str:
    """Runs the command, sends it SIGINT once its record exists and the gateway holds at
    least `sent` bytes, and returns what it said (it must exit 130, asking to resume)."""
    state = Path(argv[argv.index("--state-dir") + 1])
    process = subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=environment(stack.keys.token()),
    )
    try:
        record = eventually(lambda: records(state)[0] if records(state) else None, 30, "a record")
        eventually(lambda: on_server(stack, record) >= sent or None, 30, f"{sent} bytes sent")
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 130, err
    assert "run the same command again to resume" in err
    return err


def on_server(stack: Stack, record: Path) -> int:
    """The bytes the gateway holds of the uploads a record names, read from the progress
    route (a HEAD would ask the PATCH in flight to let go: the command's chunk would
    count for nothing)."""
    total = 0
    for part in json.loads(record.read_bytes())["parts"]:
        upload_id = part["url"].rpartition("/")[2]
        answer = http_call(stack.gw, "GET", f"/api/v1/uploads/{upload_id}", None, stack.keys.auth())
        assert answer.status == 200, (answer.status, answer.body)
        total += answer.json()["bytes_received"]
    return total


@pytest.mark.parametrize("parallel", [1, 3])
def test_sigint_mid_upload_then_the_same_command_resumes_from_the_server_offset(
    stack: Stack, tmp_path: Path, parallel: int
) -> None:
    data = os.urandom(6 * MiB)
    path = tmp_path / "big.bin"
    path.write_bytes(data)
    state = tmp_path / "state"
    options = ("--no-compress", "--parallel", str(parallel))
    paced = command(stack, path, state, *options, "--chunk-size", "256KiB", "--limit-rate", "1MiB")
    interrupted(stack, paced, sent=512 * KiB)
    [record] = records(state)  # kept to resume
    kept = on_server(stack, record)
    assert 0 < kept < len(data)

    second = upload(stack, path, state, *options, "--chunk-size", "1MiB", token=stack.keys.token())
    result = printed(second)
    assert f"resuming: {kept} of {len(data)} bytes are on the server" in second.stderr
    assert result["sha256"] == hashlib.sha256(data).hexdigest()
    assert stack.download(result["file_id"]) == data  # --no-compress: stored as sent
    assert records(state) == []


def test_a_record_of_an_upload_the_server_no_longer_has_starts_anew(
    stack: Stack, tmp_path: Path
) -> None:
    data = os.urandom(2 * MiB)
    path = tmp_path / "again.bin"
    path.write_bytes(data)
    state = tmp_path / "state"
    paced = ("--chunk-size", "256KiB", "--limit-rate", "256KiB")
    interrupted(stack, command(stack, path, state, "--no-compress", *paced))
    [record] = records(state)
    url = json.loads(record.read_bytes())["parts"][0]["url"]
    auth = {**TUS_VERSION, **stack.keys.auth()}
    removed = http_call(stack.gw, "DELETE", url.removeprefix(stack.gw.url), None, auth)
    assert removed.status == 204, (removed.status, removed.body)
    done = upload(stack, path, state, "--no-compress", token=stack.keys.token())
    result = printed(done)
    assert "the interrupted upload is no longer on the server: starting anew" in done.stderr
    assert stack.download(result["file_id"]) == data
    assert records(state) == []


def test_a_gateway_restarting_mid_upload_is_retried_and_the_upload_goes_on(
    stack: Stack, tmp_path: Path
) -> None:
    data = os.urandom(4 * MiB)
    path = tmp_path / "through-a-restart.bin"
    path.write_bytes(data)
    state = tmp_path / "state"
    own = gateway(tmp_path, stack.keys.public_path, [se_entry(stack.se, "rw")])
    with running(own):
        argv = command(stack, path, state, "--no-compress", "--chunk-size", "256KiB")
        argv[argv.index("--url") + 1] = own.url
        argv += ["--limit-rate", "1MiB"]
        process = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=environment(stack.keys.token()),
        )
        try:
            record = eventually(lambda: records(state)[0] if records(state) else None, 30)
            served = Stack(stack.se, own, stack.keys, stack.data_dir)
            eventually(lambda: on_server(served, record) >= MiB or None, 30, "1 MiB sent")
            own.stop()  # SIGTERM: the gateway drains; what it received is kept
            own.start()
            out, err = process.communicate(timeout=90)
        finally:
            if process.poll() is None:
                process.kill()
                process.communicate()
    result = printed(subprocess.CompletedProcess(argv, process.returncode, out, err))
    assert "trying again in" in err  # the connection refused while the gateway was down
    assert stack.download(result["file_id"]) == data


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
