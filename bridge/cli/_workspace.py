"""``scbridge workspace [FILE]``: the browser workspace on this machine, with FILE loaded.

Starts the service (the same app as ``scbridge serve``) on a free loopback port with a fresh
random API key, runs FILE as a job, prints the page's address and opens it in the browser.

How the page gets the key without the key ever being in a URL: the address carries a one-time
sign-in token in its *fragment* (``http://127.0.0.1:PORT/#login=TOKEN``).  Browsers never
send the fragment to a server, so it is in no request line, log or ``Referer``; the page posts
the token once to ``/v1/workspace/session``, receives the key, keeps it in ``sessionStorage``
(this tab only) and removes the fragment from the address bar and history.  The token works
once and for 15 minutes, so a copy of the address seen later is worthless.  (Printing the key
for the user to paste would leave it in terminal scroll-back and CI logs; ``--show-key`` does
that for scripts that want it.)
"""

from __future__ import annotations

import argparse
import logging
import logging.config
import socket
import sys
import threading
import time
import webbrowser
from pathlib import Path
from typing import Any

NAME = "workspace"
HELP = "open the browser workspace (upload, annotate, explore, curate, export) on this machine"
logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", nargs="?",
                        help="data set to load: .h5ad, .rds, .arrow, 10x .h5 or folder")
    parser.add_argument("--port", type=int, default=0,
                        help="loopback port (default: a free one)")
    parser.add_argument("--no-browser", action="store_true",
                        help="print the address only; do not open a browser")
    parser.add_argument("--show-key", action="store_true",
                        help="also print the API key (for scripts; it then sits in the terminal)")
    parser.add_argument("--model", default=None, help="model for FILE (default: markers)")
    parser.add_argument("--tissue", default=None,
                        help="tissue for the markers model (e.g. blood, lung)")
    parser.add_argument("--min-confidence", type=float, default=None,
                        help="label cells below this confidence 'Unknown' (raw call kept)")
    parser.add_argument("--reference", action="append", metavar="NAME=PATH",
                        help="offer a reference (scbridge build-reference) as atlas NAME of model "
                             "'reference'; repeatable")
    parser.add_argument("--layout", choices=("auto", "umap", "pca"), default="auto",
                        help="2-D layout (default auto: UMAP when umap-learn is installed)")
    parser.add_argument("--max-cells", type=int, default=100_000,
                        help="most cells per job (default 100000)")
    parser.add_argument("--max-upload-mb", type=float, default=4096,
                        help="largest upload in MiB (default 4096)")
    parser.add_argument("--log-level", default="warning",
                        choices=["debug", "info", "warning", "error"])


def _loopback_socket(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(("127.0.0.1", port))
    except OSError as exc:
        sock.close()
        from .._errors import InputError

        msg = f"cannot listen on 127.0.0.1:{port} ({exc.strerror}); choose another --port."
        raise InputError(msg) from None
    sock.listen(128)
    return sock


def _open_when_ready(server: Any, url: str) -> None:
    deadline = time.monotonic() + 60
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    if server.started and not webbrowser.open(url):
        print("scbridge workspace: no browser could be opened; open the address above",
              file=sys.stderr)


def run(args: argparse.Namespace) -> int:
    import secrets

    import uvicorn

    from .._errors import NotFoundError
    from ..server._app import create_app
    from ..server._jobs import owner_of
    from ..server._settings import Settings, parse_references
    from ..server._workspace import job_options
    from ._serve import log_config

    logging.config.dictConfig(log_config(args.log_level))
    if args.file and not Path(args.file).exists():
        msg = f"{args.file} does not exist."
        raise NotFoundError(msg)
    key = secrets.token_urlsafe(24)
    references = parse_references(args.reference)
    settings = Settings(api_keys=(key,), max_cells=args.max_cells,
                        max_body_bytes=int(args.max_upload_mb * 1024 * 1024),
                        atlases={"reference": references} if references else {})
    app = create_app(settings)
    jobs = app.state.workspace
    if args.file:
        from ..server._problems import ApiError

        fields = {"model": args.model, "tissue": args.tissue,
                  "min_confidence": args.min_confidence, "layout": args.layout}
        try:
            chosen, engine = job_options(fields, app.state.catalog)
        except ApiError as exc:
            from .._errors import InputError

            raise InputError(f"{exc.message} ({exc.hint})") from None
        jobs.create(owner_of(key), chosen, engine, path=str(Path(args.file).resolve()))
    sock = _loopback_socket(args.port)
    port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/#login={jobs.issue_login(key)}"
    print(f"scbridge workspace: {url}\n  (a one-time sign-in link for one browser tab; "
          "Ctrl-C stops the server and removes its files)", flush=True)
    if args.show_key:
        print(f"  API key: {key}", flush=True)
    config = uvicorn.Config(app, log_config=log_config(args.log_level), access_log=False,
                            log_level=args.log_level)
    server = uvicorn.Server(config)
    if not args.no_browser:
        threading.Thread(target=_open_when_ready, args=(server, url), daemon=True).start()
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
    return 0
