"""The soak of `make soak` (`benchmarks/soak.py`), short: 20 s of mixed raw, multipart
and tus uploads from clients that behave and clients that do not, while SEs restart and
one is SIGKILLed, against real processes; at the end every upload was stored or
refused cleanly, and every stored file is one a client was told of and the Admin
Module's registry holds."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from ingester_gateway.reference.processes import PYTHON

SOAK = Path(__file__).resolve().parents[2] / "benchmarks" / "soak.py"


def test_a_short_soak_fails_no_upload_and_leaves_no_orphan_and_nothing_unregistered(
    tmp_path: Path,
) -> None:
    argv = [PYTHON, str(SOAK), "--duration", "20", "--warmup", "3", "--clients", "4"]
    argv += ["--max-size", "2MiB", "--rate", "4MiB", "--body-timeout", "2", "--seed", "10"]
    argv += ["--out", str(tmp_path)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=100)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    (written,) = tmp_path.glob("soak-*.json")
    report = json.loads(written.read_text())
    files = report["accounting"]
    assert files["orphans"] == 0 and files["unregistered"] == 0 and files["missing"] == 0
    total = report["kinds"]["total"]
    assert total["failed"] == 0
    assert total["ok"] == files["told"] == files["registered"] == files["stored"] > 30
    for kind in ("raw", "multipart", "tus"):
        assert report["kinds"][kind]["ok"] > 0, report["kinds"][kind]
    assert sorted(d["action"] for d in report["disruptions"]) == ["kill", *["restart"] * 4]
    assert all(d["back_seconds"] > 0 for d in report["disruptions"])  # each SE came back
    assert report["drain"]["drained"] and report["gateway"]["end"] is not None
