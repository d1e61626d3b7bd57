"""`ingester-gateway upload FILE`: its arguments, what it prints, its exit codes:
0 stored (stdout: `file_id <id>` and `sha256 <hex>`, or `--json`: the gateway's result);
1 the gateway refused or failed, or could not be reached; 2 bad arguments or no such
file; 130 interrupted (run the same command again to resume).

Only argparse is imported at start: the upload's modules load when it runs."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from ingester_gateway.config import parse_size
from ingester_gateway.models import CODEC_NAMES

if TYPE_CHECKING:
    from ingester_gateway.cli.upload.resume import FileIdentity, ResumeBook

DEFAULT_URL = "http://127.0.0.1:8020"  # `make run`'s gateway
DEFAULT_CHUNK = 64 * 2**20
MAX_PARALLEL = 16
USER_AGENT = "ingester-gateway-upload/1"


def _positive_size(text: str) -> int:
    try:
        value = parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be more than 0 bytes: {text!r}")
    return value


def _count(low: int, high: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = low - 1
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be a whole number from {low} to {high}")
        return value

    return parse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", type=Path, help="the file to upload")
    parser.add_argument(
        "--url",
        default=os.environ.get("INGESTER_URL", DEFAULT_URL),
        help=f"the gateway's base URL (default: INGESTER_URL, else {DEFAULT_URL})",
    )
    parser.add_argument(
        "--token",
        default=os.environ.get("INGESTER_TOKEN"),
        help="bearer token (default: INGESTER_TOKEN; the variable keeps it out of `ps`)",
    )
    options = parser.add_argument_group("upload options (as the gateway's PUT takes them)")
    options.add_argument("--name", help="the file name artStore keeps (default: FILE's name)")
    options.add_argument(
        "--content-type", help="declared content type (default: guessed from the name)"
    )
    options.add_argument("--description")
    options.add_argument("--retention-policy", choices=("temporary", "permanent"))
    options.add_argument("--ttl-days", type=int, help="with --retention-policy temporary")
    options.add_argument(
        "--compress",
        action=argparse.BooleanOptionalAction,
        help="compress on the gateway (default: unless the data is already compressed)",
    )
    options.add_argument("--compression-algorithm", choices=CODEC_NAMES)
    options.add_argument("--metadata", help="a JSON object kept with the file")
    transfer = parser.add_argument_group("transfer")
    transfer.add_argument(
        "--chunk-size",
        type=_positive_size,
        default=DEFAULT_CHUNK,
        help="bytes per PATCH request, e.g. 8MiB (default: 64MiB)",
    )
    transfer.add_argument(
        "--parallel",
        type=_count(1, MAX_PARALLEL),
        default=1,
        metavar="N",
        help="send N parts side by side (tus concatenation; default 1)",
    )
    transfer.add_argument(
        "--limit-rate",
        type=_positive_size,
        metavar="BYTES",
        help="at most this many bytes per second, e.g. 10MiB (default: no limit)",
    )
    transfer.add_argument(
        "--retries",
        type=_count(0, 1000),
        default=10,
        help="tries after a failure that another try may fix, per step (default 10)",
    )
    transfer.add_argument(
        "--store-timeout",
        type=float,
        default=3600.0,
        metavar="SECONDS",
        help="how long to wait for artStore to store the uploaded file (default 3600)",
    )
    transfer.add_argument(
        "--state-dir",
        type=Path,
        help="where uploads in flight are recorded to resume "
        "(default: $XDG_STATE_HOME/ingester-gateway, else ~/.local/state/ingester-gateway)",
    )
    parser.add_argument("--json", action="store_true", help="print the gateway's result as JSON")
    parser.add_argument("-q", "--quiet", action="store_true", help="print only the result")


def _fail(message: str, code: int) -> int:
    print(f"ingester-gateway upload: {message}", file=sys.stderr)
    return code


def run_upload(args: argparse.Namespace) -> int:
    from ingester_gateway.cli.upload.options import (
        OptionError,
        UploadChoices,
        guess_filetype,
        metadata_fields,
    )
    from ingester_gateway.cli.upload.resume import FileIdentity, ResumeBook, default_state_dir

    if not args.token:
        return _fail("give --token or set INGESTER_TOKEN", 2)
    path: Path = args.file
    if not path.is_file():
        return _fail(f"{path}: {'not a file' if path.exists() else 'no such file'}", 2)
    name = args.name or path.name
    choices = UploadChoices(
        filename=name,
        filetype=args.content_type or guess_filetype(name),
        description=args.description,
        retention_policy=args.retention_policy,
        ttl_days=args.ttl_days,
        compress=args.compress,
        compression_algorithm=args.compression_algorithm,
        metadata=args.metadata,
    )
    try:
        fields = metadata_fields(choices)
    except OptionError as exc:
        return _fail(str(exc), 2)
    if args.check:
        print("ingester-gateway upload: arguments ok")
        return 0
    identity = FileIdentity.of(path, args.url)
    state_dir = args.state_dir or default_state_dir(os.environ, Path.home())
    return _upload(args, identity, fields, ResumeBook(state_dir))


def _upload(
    args: argparse.Namespace, identity: FileIdentity, fields: dict[str, str], book: ResumeBook
) -> int:
    import asyncio

    import msgspec
    from tqdm import tqdm

    from ingester_gateway.cli.upload.source import FileSource
    from ingester_gateway.cli.upload.transport import TusTransport
    from ingester_gateway.cli.upload.uploader import Outcome, Uploader, UploadFailed, UploadPlan

    plan = UploadPlan(
        identity=identity,
        fields=fields,
        parallel=args.parallel,
        chunk_size=args.chunk_size,
        retries=args.retries,
        store_timeout=args.store_timeout,
    )

    def say(line: str) -> None:
        if not args.quiet:  # above the progress bar, which is drawn again below
            tqdm.write(f"ingester-gateway upload: {line}", file=sys.stderr)

    source = FileSource(Path(identity.path), args.limit_rate)
    uploader: Uploader | None = None

    async def upload() -> Outcome:
        nonlocal uploader
        async with TusTransport(args.url, args.token, USER_AGENT) as transport:
            uploader = Uploader(plan, transport, source, book, say, sys.stderr)
            return await uploader.run()

    source.open()
    try:
        outcome = asyncio.run(upload())
    except UploadFailed as exc:
        return _fail(str(exc), 1)
    except KeyboardInterrupt:
        held = (
            f"{uploader.on_server} of {identity.size} bytes are on the server; " if uploader else ""
        )
        return _fail(f"interrupted; {held}run the same command again to resume", 130)
    finally:
        source.close()
    result = outcome.result
    if args.json:
        print(msgspec.json.encode(result).decode())
    else:
        print(f"file_id {result.file_id}\nsha256 {result.checksum}")
    rate = outcome.sent / outcome.seconds if outcome.seconds > 0 else 0.0
    resumed = f", resumed at {human_size(outcome.resumed_from)}" if outcome.resumed_from else ""
    say(
        f"stored {result.original_filename} ({human_size(result.file_size)}{resumed}) on "
        f"{result.storage_element_id}, compression {result.compression_algorithm}; "
        f"{human_size(outcome.sent)} sent in {outcome.seconds:.1f} s ({human_size(rate)}/s)"
    )
    return 0


def human_size(size: float) -> str:
    """`512 B`, `3.5 MiB`, `1.2 GiB`."""
    unit = "B"
    for bigger in ("KiB", "MiB", "GiB", "TiB"):
        if size < 1024:
            break
        size, unit = size / 1024, bigger
    return f"{size:.0f} B" if unit == "B" else f"{size:.1f} {unit}"
