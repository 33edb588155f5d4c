"""``scbridge serve``: run the annotation service (see :mod:`bridge.server`)."""

from __future__ import annotations

import argparse
import logging
import os
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..server._settings import Settings

NAME = "serve"
HELP = "run the annotation service (Cell Atlas HTTP contract, JSON and Arrow)"
logger = logging.getLogger(__name__)

_LOG_FORMAT = "%(asctime)s %(levelname)s [%(request_id)s] %(name)s: %(message)s"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1",
                        help="interface to listen on (default 127.0.0.1; 0.0.0.0 for all)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    parser.add_argument("--api-keys", metavar="FILE",
                        help="file with one API key per line (also: $SCBRIDGE_API_KEYS, "
                             "comma-separated)")
    parser.add_argument("--no-auth", action="store_true",
                        help="serve without API keys (only for a trusted loopback setup)")
    parser.add_argument("--max-cells", type=int, default=100_000,
                        help="cells per request; more gets 413 (default 100000)")
    parser.add_argument("--max-body-mb", type=float, default=1024,
                        help="request body limit in MiB (default 1024)")
    parser.add_argument("--max-json-mb", type=float, default=256,
                        help="JSON body limit in MiB (default 256; parsed JSON needs ~10x its "
                             "size in memory)")
    parser.add_argument("--workers", type=int, default=1,
                        help="server processes (default 1)")
    parser.add_argument("--threads", type=int, default=1,
                        help="requests computed at once per process (default 1; use --workers "
                             "for more cores)")
    parser.add_argument("--max-pending", type=int, default=16,
                        help="requests with complete bodies queued or computing per process; "
                             "more get 503 + Retry-After (default 16)")
    parser.add_argument("--max-inflight-mb", type=float, default=1024,
                        help="MiB of request bodies held at once per process (received, "
                             "queued or computing); more get 503 + Retry-After (default 1024)")
    parser.add_argument("--max-connections", type=int, default=1024,
                        help="open connections per process (idle keep-alive ones included); a "
                             "request arriving beyond them gets 503 (default 1024)")
    parser.add_argument("--body-timeout", type=float, default=20.0, metavar="SECONDS",
                        help="a body pausing longer than this gets 408 (default 20)")
    parser.add_argument("--body-deadline", type=float, default=300.0, metavar="SECONDS",
                        help="a body taking longer than this in all gets 408 (default 300)")
    parser.add_argument("--max-header-kb", type=float, default=64,
                        help="request line + headers limit in KiB; more gets 431 (default 64)")
    parser.add_argument("--header-timeout", type=float, default=20.0, metavar="SECONDS",
                        help="time to send the request line and headers (default 20)")
    parser.add_argument("--max-marker-labels", type=int, default=200,
                        help="labels ranked per markers request (default 200)")
    parser.add_argument("--reference", action="append", metavar="NAME=PATH",
                        help="offer a reference (scbridge build-reference) as atlas NAME of "
                             "model 'reference'; repeatable")
    parser.add_argument("--atlas", action="append", metavar="MODEL:NAME=VALUE",
                        help="offer atlas NAME for MODEL, handed to the engine as VALUE; "
                             "repeatable")
    parser.add_argument("--models", help="comma-separated models to offer (default: all)")
    parser.add_argument("--default-model", default="markers",
                        help="model used when a request names none (default markers)")
    parser.add_argument("--work-dir", metavar="DIR",
                        help="the workspace's folder for uploads and jobs (default: a temporary "
                             "one, removed at exit; also $SCBRIDGE_WORK_DIR)")
    parser.add_argument("--log-level", default="info",
                        choices=["debug", "info", "warning", "error"])
    parser.add_argument("--log-format", default="text", choices=["text", "json"],
                        help="log lines as escaped text (default) or one JSON object each")


def settings_from_args(args: argparse.Namespace) -> Settings:
    from ..server._settings import Settings, parse_atlases, parse_references

    atlases = parse_atlases(args.atlas)
    references = parse_references(args.reference)
    if references:
        atlases.setdefault("reference", {}).update(references)
    models = tuple(m.strip() for m in args.models.split(",") if m.strip()) if args.models else None
    return Settings(
        api_keys_file=os.path.abspath(args.api_keys) if args.api_keys else None,
        allow_anonymous=args.no_auth,
        max_cells=args.max_cells,
        max_body_bytes=int(args.max_body_mb * 1024 * 1024),
        max_json_body_bytes=int(args.max_json_mb * 1024 * 1024),
        compute_threads=args.threads,
        max_pending=args.max_pending,
        max_inflight_bytes=int(args.max_inflight_mb * 1024 * 1024),
        body_timeout=args.body_timeout,
        body_deadline=args.body_deadline,
        max_header_bytes=int(args.max_header_kb * 1024),
        header_timeout=args.header_timeout,
        max_marker_labels=args.max_marker_labels,
        atlases=atlases,
        models=models,
        default_model=args.default_model,
    )


def log_config(level: str, log_format: str = "text") -> dict[str, Any]:
    """uvicorn / logging dictConfig: one format with the request id (control characters
    escaped, or JSON lines), no uvicorn access log."""
    formatter = ({"()": "bridge.server._logging.JsonFormatter"} if log_format == "json" else
                 {"()": "bridge.server._logging.EscapingFormatter", "fmt": _LOG_FORMAT})
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"request_id": {"()": "bridge.server._context.RequestIdFilter"}},
        "formatters": {"default": formatter},
        "handlers": {"default": {"class": "logging.StreamHandler", "formatter": "default",
                                 "filters": ["request_id"], "stream": "ext://sys.stderr"}},
        "root": {"handlers": ["default"], "level": level.upper()},
        "loggers": {
            "uvicorn": {"handlers": [], "propagate": True},
            "uvicorn.error": {"handlers": [], "propagate": True},
            "uvicorn.access": {"handlers": [], "propagate": False},
        },
    }


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from ..server._app import create_app
    from ..server._protocol import protocol_class
    from ..server._settings import ENV_SETTINGS

    if args.max_connections < 1:
        from .._errors import InputError

        raise InputError(f"--max-connections must be at least 1, got {args.max_connections}.",
                         code="invalid_parameter")
    settings = settings_from_args(args)
    shared_dir = _workspace_dir(args)
    # Build once here so a bad key file or reference fails before any port is bound.
    app = create_app(settings)
    config = log_config(args.log_level, args.log_format)
    if args.no_auth and args.host not in ("127.0.0.1", "localhost", "::1"):
        logger.warning("serving WITHOUT API keys on %s: anyone who reaches it can use it",
                       args.host)
    logger.info("serving on http://%s:%d", args.host, args.port)
    # The protocol limits header size (431) and time (408); uvicorn's own has no limits.
    if args.workers > 1:
        os.environ[ENV_SETTINGS] = settings.to_env()
        try:
            uvicorn.run("bridge.server._app:app_from_env", factory=True, host=args.host,
                        port=args.port, workers=args.workers, log_config=config,
                        access_log=False, log_level=args.log_level,
                        http="bridge.server._protocol:EnvHttpProtocol",
                        limit_concurrency=args.max_connections)
        finally:
            if shared_dir is not None:
                import shutil

                shutil.rmtree(shared_dir, ignore_errors=True)
    else:
        http = protocol_class(settings.max_header_bytes, settings.header_timeout)
        uvicorn.run(app, host=args.host, port=args.port, log_config=config, access_log=False,
                    log_level=args.log_level, http=http, limit_concurrency=args.max_connections)
    return 0


def _workspace_dir(args: argparse.Namespace) -> str | None:
    """Point the workspace at ``--work-dir``; with several workers and none given, at one
    temporary folder they share (returned, to be removed at exit), so every worker sees
    every job."""
    import tempfile

    if args.work_dir:
        os.makedirs(args.work_dir, exist_ok=True)
        os.environ["SCBRIDGE_WORK_DIR"] = os.path.abspath(args.work_dir)
        return None
    if args.workers > 1 and not os.environ.get("SCBRIDGE_WORK_DIR"):
        shared = tempfile.mkdtemp(prefix="scbridge-workspace-")
        os.environ["SCBRIDGE_WORK_DIR"] = shared
        return shared
    return None
