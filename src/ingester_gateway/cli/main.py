"""`ingester-gateway serve | storage-element | nodes | admin-module | keys | token
| dev | upload`."""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys
import tempfile
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ingester_gateway.cli.upload.command import add_arguments as add_upload_arguments
from ingester_gateway.config import ConfigError, Settings, load_settings, parse_size
from ingester_gateway.models import NODE_MODES, ROLES


def _serve(args: argparse.Namespace) -> int:
    try:
        settings = load_settings()
    except ConfigError as exc:
        print(f"ingester-gateway: invalid configuration: {exc}", file=sys.stderr)
        return 2
    if args.check:
        return _checked("serve")
    from ingester_gateway.observability import configure_logging

    configure_logging(settings.log_level, settings.log_format, settings.access_log)
    with _runtime_dir(settings.workers, settings.runtime_dir):
        _run_uvicorn(settings)
    return 0


@contextlib.contextmanager
def _runtime_dir(workers: int, configured: str | None) -> Iterator[None]:
    """Several workers share a directory (on tmpfs when there is one) for their
    metrics and upload progress; it is made fresh here and removed at the end."""
    if workers == 1:
        yield
        return
    made = configured is None
    shm = "/dev/shm"  # noqa: S108 (mkdtemp below makes a private 0700 directory in it)
    base = shm if os.path.isdir(shm) else None
    path = Path(configured) if configured else Path(tempfile.mkdtemp(prefix="ingester-", dir=base))
    metrics_dir = path / "metrics"
    shutil.rmtree(metrics_dir, ignore_errors=True)  # stale files of dead workers would count
    metrics_dir.mkdir(parents=True)
    os.environ["INGESTER_RUNTIME_DIR"] = str(path)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
    try:
        yield
    finally:
        if made:
            shutil.rmtree(path, ignore_errors=True)


def _run_uvicorn(settings: Settings) -> None:
    import uvicorn

    from ingester_gateway.runtime.supervisor import DrainingSupervisor

    config = uvicorn.Config(
        "ingester_gateway.app:app_from_environment",
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=settings.workers,
        loop="uvloop",
        http="ingester_gateway.runtime.http:GatewayHttpProtocol",
        lifespan="on",
        access_log=settings.access_log,
        log_config=None,
        server_header=False,
        timeout_keep_alive=settings.keepalive_timeout_seconds,  # type: ignore[arg-type]
        # X-Forwarded-For is judged by the gateway (INGESTER_TRUSTED_PROXIES), not by
        # uvicorn, which would believe any local peer.
        proxy_headers=False,
        # Uploads are drained by the app before uvicorn's own shutdown begins (runtime/
        # drain.py); what uvicorn then waits for is answers already on their way.
        timeout_graceful_shutdown=3,
    )
    if settings.workers > 1:
        DrainingSupervisor(config, sockets=[config.bind_socket()]).run()
        return
    server = uvicorn.Server(config)
    server.run()
    if not server.started:
        sys.exit(3)  # uvicorn's STARTUP_FAILURE: the app or the socket is broken


def _storage_element(args: argparse.Namespace) -> int:

    from ingester_gateway.auth.verify import StaticKeySource, TokenVerifier
    from ingester_gateway.observability import configure_logging
    from ingester_gateway.reference.storage_element.app import StorageElementApp
    from ingester_gateway.reference.storage_element.heartbeat import Registration
    from ingester_gateway.reference.storage_element.store import FileStore

    registration = None
    if args.redis_url is not None:
        if args.public_url is None:
            print("ingester-gateway: --redis-url needs --public-url", file=sys.stderr)
            return 2
        if args.heartbeat_ttl <= args.heartbeat_interval:
            print(
                "ingester-gateway: --heartbeat-ttl must exceed --heartbeat-interval",
                file=sys.stderr,
            )
            return 2
        registration = Registration(
            args.redis_url, args.public_url, args.heartbeat_interval, args.heartbeat_ttl
        )
    configure_logging("warning" if args.quiet else "info", "json")
    verifier = TokenVerifier(StaticKeySource.from_file(args.public_key_file))
    app = StorageElementApp(
        FileStore(args.data_dir, parse_size(args.capacity_bytes)),
        verifier,
        element_id=args.element_id,
        mode=args.mode,
        priority=args.priority,
        registration=registration,
        fail_empty_files=args.fail_empty_files,
    )
    if args.check:
        return _checked("storage-element")
    _run_plain(app, args.host, args.port, log_config=None)
    return 0


def _nodes(args: argparse.Namespace) -> int:
    if not args.redis_url:
        print("ingester-gateway nodes: give --redis-url or set INGESTER_REDIS_URL", file=sys.stderr)
        return 2
    from ingester_gateway.cli.nodes import run_nodes

    if args.check:
        from ingester_gateway.runtime.redis_io import redis_client

        redis_client(args.redis_url, 1.0)  # a bad URL raises ValueError; nothing connects
        return _checked("nodes")
    return run_nodes(args)


def _http_url(text: str) -> str:
    """An argparse type: an absolute http(s) URL with a host."""
    parsed = urllib.parse.urlsplit(text)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise argparse.ArgumentTypeError(f"not an http(s) URL: {text!r}")
    return text.rstrip("/")


def _size(text: str) -> int:
    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"not a positive number of seconds: {text!r}")
    return value


def _admin_module(args: argparse.Namespace) -> int:
    from ingester_gateway.observability import configure_logging

    # Before the modules below are imported: their loggers take the configuration then.
    configure_logging("warning" if args.quiet else "info", "json")
    from ingester_gateway.auth.verify import StaticKeySource, load_rsa_public_key
    from ingester_gateway.reference.admin_module.access import Access
    from ingester_gateway.reference.admin_module.app import AdminModuleApp, Announcements
    from ingester_gateway.reference.admin_module.elements import StorageElementSpec
    from ingester_gateway.reference.admin_module.registry import FileRegistry
    from ingester_gateway.reference.admin_module.tokens import (
        AdminUserSpec,
        ServiceAccountSpec,
        TokenIssuer,
    )
    from ingester_gateway.reference.tokens import jwks_document, public_pem

    try:
        accounts = [ServiceAccountSpec.parse(s) for s in args.service_account]
        users = [AdminUserSpec.parse(s) for s in args.admin_user]
        elements = [StorageElementSpec.parse(s) for s in args.storage_element]
    except ValueError as exc:
        print(f"ingester-gateway admin-module: {exc}", file=sys.stderr)
        return 2
    if elements and args.redis_url is None:
        print("ingester-gateway admin-module: --storage-element needs --redis-url", file=sys.stderr)
        return 2
    if len({e.name for e in elements}) != len(elements):
        print("ingester-gateway admin-module: storage element names repeat", file=sys.stderr)
        return 2
    private = Path(args.private_key).read_bytes()
    keys = StaticKeySource(load_rsa_public_key(public_pem(private)))
    app = AdminModuleApp(
        FileRegistry(args.db),
        TokenIssuer(private, accounts, users, ttl=args.ttl, kid=args.kid),
        Access(keys),
        jwks_document(private, args.kid),
        Announcements(
            args.redis_url, args.events_stream, args.events_maxlen, elements, args.poll_interval
        ),
        max_ttl_days=args.max_ttl_days,
    )
    if args.check:
        return _checked("admin-module")
    _run_plain(app, args.host, args.port, log_config=None)
    return 0


def _checked(command: str) -> int:
    """`--check`: everything was parsed and built; nothing is started."""
    print(f"ingester-gateway {command}: arguments and configuration ok")
    return 0


def _run_plain(app: Any, host: str, port: int, **logging: Any) -> None:
    """A reference server (SE, Admin Module, token service): one process, no access log."""
    import uvicorn

    uvicorn.run(
        app,
        host=host,
        port=port,
        loop="uvloop",
        http="ingester_gateway.runtime.http:GatewayHttpProtocol",
        lifespan="on",
        access_log=False,
        server_header=False,
        **logging,
    )


def _keys(args: argparse.Namespace) -> int:
    if args.check:
        return _checked("keys")
    from ingester_gateway.reference.tokens import generate_keypair

    private, public = generate_keypair(args.out)
    print(f"wrote {private} and {public}")
    return 0


def _token(args: argparse.Namespace) -> int:
    from ingester_gateway.reference.tokens import mint_token

    pem = Path(args.private_key).read_bytes()
    if args.check:
        return _checked("token")
    print(
        mint_token(
            pem, sub=args.sub, role=args.role, ttl=args.ttl, token_type=args.type, kid=args.kid
        )
    )
    return 0


def _dev(args: argparse.Namespace) -> int:
    from ingester_gateway.reference.devrun import run_dev

    if args.check:
        return _checked("dev")
    return run_dev(Path(args.data_dir), args.port, args.se_port)


def _upload(args: argparse.Namespace) -> int:
    from ingester_gateway.cli.upload.command import run_upload

    return run_upload(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ingester-gateway", description=__doc__)
    parser.add_argument(
        "--check",
        action="store_true",
        help="check the command's arguments and configuration (key files, settings), then "
        "exit 0 without starting anything, like `nginx -t`",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="start the gateway (configured by INGESTER_* variables)")
    serve.set_defaults(func=_serve)

    se = sub.add_parser("storage-element", help="start the reference Storage Element")
    se.add_argument("--host", default="127.0.0.1")
    se.add_argument("--port", type=int, default=8010)
    se.add_argument("--data-dir", required=True)
    se.add_argument("--mode", choices=NODE_MODES, default="rw")
    se.add_argument("--element-id", default="se-1")
    se.add_argument("--capacity-bytes", default="100GiB", help="bytes, or 500MiB, 2TiB, ...")
    se.add_argument("--priority", type=int, default=100)
    se.add_argument("--public-key-file", required=True)
    se.add_argument("--quiet", action="store_true", help="log warnings and errors only")
    se.add_argument(
        "--fail-empty-files",
        action="store_true",
        help="answer 500 to a 0-byte file, as the real artStore SE does (for tests)",
    )
    se.add_argument("--redis-url", help="register in this Redis and keep the record alive")
    se.add_argument(
        "--public-url", type=_http_url, help="the URL gateways use to reach this SE (with Redis)"
    )
    se.add_argument("--heartbeat-interval", type=_seconds, default=1.0, help="seconds")
    se.add_argument(
        "--heartbeat-ttl", type=_seconds, default=5.0, help="seconds a heartbeat stays valid"
    )
    se.set_defaults(func=_storage_element)

    nodes = sub.add_parser("nodes", help="list, add, remove or drain nodes in the Redis registry")
    nodes.add_argument(
        "--redis-url",
        default=os.environ.get("INGESTER_REDIS_URL"),
        help="default: INGESTER_REDIS_URL",
    )
    nodes.set_defaults(func=_nodes)
    actions = nodes.add_subparsers(dest="action", required=True)
    listing = actions.add_parser("list", help="the nodes, their capacity and heartbeat age")
    listing.add_argument("--json", action="store_true", help="one JSON array instead of a table")
    add = actions.add_parser("add", help="an operator-managed node (no heartbeat, no expiry)")
    add.add_argument("--id", required=True)
    add.add_argument("--url", required=True, type=_http_url)
    add.add_argument("--mode", required=True, choices=NODE_MODES)
    add.add_argument("--priority", type=int, default=100, help="lower is preferred")
    add.add_argument("--capacity-bytes", type=_size, help="bytes, or 500GiB, 2TiB, ...")
    remove = actions.add_parser("remove", help="delete a node's record")
    remove.add_argument("--id", required=True)
    drain = actions.add_parser("drain", help="no new uploads to a node; in-flight ones finish")
    drain.add_argument("--id", required=True)
    drain.add_argument("--undo", action="store_true", help="take new uploads again")

    admin = sub.add_parser(
        "admin-module",
        help="reference artStore Admin Module: tokens, file registry, events, SE document",
    )
    admin.add_argument("--host", default="127.0.0.1")
    admin.add_argument("--port", type=int, default=8000)
    admin.add_argument(
        "--private-key", required=True, help="PEM RSA key the tokens are signed with"
    )
    admin.add_argument("--db", required=True, help="SQLite file of the file registry")
    admin.add_argument(
        "--service-account",
        "--client",
        action="append",
        default=[],
        metavar="ID:SECRET[:ROLE[:RATE_LIMIT]]",
        help="repeatable; ROLE admin (default), user, auditor or readonly; RATE_LIMIT 100",
    )
    admin.add_argument(
        "--admin-user",
        action="append",
        default=[],
        metavar="NAME:PASSWORD[:ROLE]",
        help="repeatable; ROLE super_admin (default), admin or readonly",
    )
    admin.add_argument("--ttl", type=int, default=3600, help="token lifetime, seconds")
    admin.add_argument("--kid", default="dev")
    admin.add_argument("--redis-url", help="announce file events and the SE document here")
    admin.add_argument("--events-stream", default="file-events")
    admin.add_argument("--events-maxlen", type=int, default=10_000, help="approximate cap")
    admin.add_argument(
        "--storage-element",
        action="append",
        default=[],
        metavar="NAME=URL[,mode=MODE]",
        help="repeatable; an SE to poll (GET /api/v1/info) into artstore:storage_elements; "
        "MODE is listed until the SE reports its own",
    )
    admin.add_argument(
        "--poll-interval", type=_seconds, default=5.0, help="seconds between SE polls"
    )
    admin.add_argument(
        "--max-ttl-days",
        type=int,
        default=365,
        help="refuse temporary files kept longer (an operator's policy; artStore allows 365)",
    )
    admin.add_argument("--quiet", action="store_true", help="log warnings and errors only")
    admin.set_defaults(func=_admin_module)

    keys = sub.add_parser("keys", help="write a dev RSA key pair (private.pem, public.pem)")
    keys.add_argument("--out", required=True)
    keys.set_defaults(func=_keys)

    token = sub.add_parser("token", help="print an RS256 token in the Admin Module's format")
    token.add_argument("--private-key", required=True)
    token.add_argument("--sub", required=True)
    token.add_argument("--role", default="user", choices=ROLES)
    token.add_argument("--ttl", type=int, default=3600, help="seconds")
    token.add_argument(
        "--type", default="admin_user", choices=["admin_user", "service_account", "access"]
    )
    token.add_argument("--kid", default=None)
    token.set_defaults(func=_token)

    dev = sub.add_parser("dev", help="dev keys + a local Storage Element + the gateway")
    dev.add_argument("--data-dir", default=".data")
    dev.add_argument("--port", type=int, default=int(os.environ.get("INGESTER_PORT", "8020")))
    dev.add_argument(
        "--se-port",
        type=int,
        default=8021,
        help="the rw SE; the edit SE and the Admin Module take the next two ports",
    )
    dev.set_defaults(func=_dev)

    upload = sub.add_parser(
        "upload",
        help="upload a file over tus: resumable, checksummed, parts in parallel, with progress",
    )
    add_upload_arguments(upload)
    upload.set_defaults(func=_upload)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        return 130
    except (OSError, ValueError) as exc:
        print(f"ingester-gateway: {exc}", file=sys.stderr)
        return 1
