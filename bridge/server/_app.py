"""The FastAPI application: routes, auth, limits and error replies.

Every request passes, in order: the header size limit (431, in the HTTP protocol, before
anything else); the request-id middleware; the API key check (401 before the body is read);
the content type and encoding (415); the body, streamed into one buffer under its size limit
(413), a progress timeout and a deadline (408), and the server's budget of body bytes in
flight (503); a place in the compute queue (503); then, in a worker thread bounded by
``Settings.compute_threads``, decoding, validation (400 / 413 / 422), the model / atlas lookup
(422) and the computation.  Replies are built as bytes in the worker too, so the event loop
only moves bytes and stays responsive.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
from collections.abc import Callable
from typing import Annotated, Any, Literal

import anyio
from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.exceptions import HTTPException as StarletteHTTPException

from .._contract.wire import (
    ARROW_MEDIA_TYPE,
    JSON_MEDIA_TYPE,
    arrow_bytes,
    calls_json_body,
    decode_arrow_request,
    decode_json_request,
    json_reply,
    metadata_to_json,
    wants_arrow,
)
from .._contract.wire import (
    Request as Decoded,
)
from .._errors import BridgeError, InputError
from .._version import __version__
from . import _compute, _openapi
from ._body import (
    Admission,
    BodyLimits,
    BodyTimeout,
    BodyTooLarge,
    InFlightBudget,
    Ticket,
    read_body,
)
from ._context import RequestContext, current_request_id
from ._problems import ApiError, error_body, from_bridge_error
from ._settings import Settings, load_api_keys

__all__ = ["create_app"]

logger = logging.getLogger("bridge.server")
_BEARER = HTTPBearer(auto_error=False, description="Authorization: Bearer <API key>")
# Module level: FastAPI resolves these (string) annotations in the module's namespace.
_Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(_BEARER)]


def _error_response(exc: ApiError) -> Response:
    headers = dict(exc.headers)
    if exc.status == 401:
        headers.setdefault("WWW-Authenticate", 'Bearer realm="scbridge"')
    return Response(error_body(exc.code, exc.message, exc.hint, current_request_id()),
                    status_code=exc.status, media_type=JSON_MEDIA_TYPE, headers=headers)


def _content_kind(request: Request) -> Literal["json", "arrow"]:
    _check_encoding(request)
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == JSON_MEDIA_TYPE:
        return "json"
    if content_type == ARROW_MEDIA_TYPE:
        return "arrow"
    raise ApiError(415, "unsupported_media_type",
                   f"Content-Type {content_type or '(none)'!r} is not accepted.",
                   f"send {JSON_MEDIA_TYPE} (the tutorial payload) or {ARROW_MEDIA_TYPE} "
                   "(an Arrow CSR stream)")


def _check_encoding(request: Request) -> None:
    """Bodies are taken as sent: a compressed one is refused (415), never inflated here."""
    encoding = request.headers.get("content-encoding", "").strip().lower()
    if encoding and encoding != "identity":
        raise ApiError(415, "unsupported_encoding",
                       f"Content-Encoding {encoding[:40]!r} is not accepted; request bodies "
                       "must be sent uncompressed.",
                       "send the body without Content-Encoding (the Arrow transport is "
                       "already compact)")


async def _read_body(request: Request, limits: BodyLimits, kind: str, ticket: Ticket
                     ) -> bytes | bytearray:
    """The body, or the ApiError for a body that is too large, too slow or too much."""
    declared = request.headers.get("content-length", "")
    try:
        return await read_body(request.receive, int(declared) if declared.isdigit() else None,
                               limits, ticket)
    except BodyTooLarge:
        raise ApiError(413, "body_too_large",
                       f"the {'JSON' if kind == 'json' else 'Arrow'} request body exceeds this "
                       f"server's limit of {limits.max_bytes:,} bytes.",
                       "send fewer cells per request (bridge.annotate(..., chunk_size=N)), or "
                       "use the Arrow transport: smaller, and decoded without parsing text",
                       {"Connection": "close"}) from None
    except BodyTimeout as exc:
        what = (f"no data arrived for {exc.seconds:g} s" if exc.kind == "stalled"
                else f"it was not complete within {exc.seconds:g} s")
        raise ApiError(408, "body_timeout",
                       f"the request body stopped short: {what} ({exc.received:,} bytes "
                       "received).",
                       "send the whole body without pausing; on a slow link send fewer cells "
                       "per request", {"Connection": "close"}) from None
    except InFlightBudget as exc:
        raise ApiError(503, "server_busy",
                       f"the server holds {int(exc.args[0]):,} bytes of request bodies "
                       "already.", "retry after the delay in Retry-After (the scbridge client "
                       "does)", {"Retry-After": "1", "Connection": "close"}) from None


def _int_field(fields: dict[str, Any], name: str, default: int, low: int, high: int) -> int:
    value = fields.get(name, default)
    if value is None:
        value = default
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise ApiError(422, "invalid_parameter", f"{name} must be an integer in [{low}, {high}], "
                       f"got {json.dumps(value)[:40]}.", f"set {name} within the range")
    return value


def _engine_options(model: str, fields: dict[str, Any], query: dict[str, Any]
                    ) -> dict[str, Any]:
    """Per-request engine options (``tissue``, ``min_gene_fraction``) from the JSON body or
    the query, for engines that take them; a sane value of the right type or a 422."""
    from ..engines import engine_parameters

    accepted = engine_parameters(model)
    options: dict[str, Any] = {}
    for name, value in query.items():
        value = fields.get(name, value)
        if value is None:
            continue
        if name not in accepted:
            raise ApiError(422, "unknown_parameter", f"model {model!r} does not take {name!r}.",
                           "leave it out, or choose a model that takes it (GET /v1/models)")
        if name == "min_gene_fraction":
            if (isinstance(value, bool) or not isinstance(value, int | float)
                    or not 0.0 <= float(value) <= 1.0):
                raise ApiError(422, "invalid_parameter", "min_gene_fraction must be a number "
                               "in [0, 1].", "send the fraction of the model's genes a "
                               "request must hold, e.g. 0.02")
            options[name] = float(value)
            continue
        if not isinstance(value, str) or not 0 < len(value) <= 200:
            raise ApiError(422, "invalid_parameter", f"{name} must be a string of 1 to 200 "
                           "characters.", f"send {name} as a name or an ontology id")
        options[name] = value
    return options


def create_app(settings: Settings | None = None) -> FastAPI:
    """The scbridge annotation service as an ASGI app.

    Parameters
    ----------
    settings
        Keys, limits and the models / atlases offered (see :class:`Settings`).

    Raises
    ------
    InputError
        No API keys were given and ``allow_anonymous`` is off.
    """
    settings = settings or Settings()
    keys = load_api_keys(settings)
    if not keys and not settings.allow_anonymous:
        msg = ("no API keys: give --api-keys FILE (one key per line) or set SCBRIDGE_API_KEYS "
               "(comma-separated); --no-auth serves without keys (loopback only, please).")
        raise InputError(msg)
    key_digests = [hashlib.sha256(k).digest() for k in keys]
    catalog = _compute.Catalog(settings)
    limiter: list[anyio.CapacityLimiter] = []
    admission = Admission(settings.max_pending, settings.max_inflight_bytes)

    def body_limits(kind: str) -> BodyLimits:
        # Parsed JSON takes ~10x its size in Python objects; Arrow is used in place.
        limit = settings.max_body_bytes
        if kind == "json":
            limit = min(limit, settings.max_json_body_bytes)
        return BodyLimits(limit, settings.body_timeout, settings.body_deadline)

    async def serve(request: Request, kind: str, work: Callable[[bytes | bytearray], bytes],
                    arrow: bool) -> Response:
        """Receive the body (counted in flight), queue for a compute thread, reply."""
        with admission.ticket() as ticket:
            admission.receiving += 1
            try:
                body = await _read_body(request, body_limits(kind), kind, ticket)
            finally:
                admission.receiving -= 1
            try:
                with admission.compute_slot():
                    return reply(await run_cpu(lambda: work(body)), arrow)
            except OverflowError:
                raise ApiError(503, "server_busy",
                               f"the server is working on {admission.pending} requests "
                               "already.", "retry after the delay in Retry-After (the scbridge "
                               "client does)", {"Retry-After": "1"}) from None
    app_state = {"admission": admission, "catalog": catalog}

    app = FastAPI(
        title="scbridge annotation service",
        version=__version__,
        description="Cell-type calls, embeddings and marker genes for single-cell matrices, "
                    "in the Cell Atlas JSON contract or as Arrow streams.",
    )

    def require_key(credentials: _Credentials) -> None:
        if settings.allow_anonymous and not keys:
            return
        if credentials is None:
            raise ApiError(401, "missing_api_key", "this endpoint needs an API key.",
                           "send the header 'Authorization: Bearer <key>' (the Python client "
                           "reads SCBRIDGE_API_KEY)")
        # Digests have one length, and every key is compared every time, so the timing says
        # nothing about a key's length or which key was close.
        given = hashlib.sha256(credentials.credentials.encode()).digest()
        matched = False
        for digest in key_digests:
            matched |= hmac.compare_digest(given, digest)
        if not matched:
            raise ApiError(401, "invalid_api_key", "the API key is not valid for this server.",
                           "check the key (SCBRIDGE_API_KEY) with the server's administrator")

    async def run_cpu(work: Callable[[], bytes]) -> bytes:
        if not limiter:
            limiter.append(anyio.CapacityLimiter(max(1, settings.compute_threads)))

        def guarded() -> bytes:
            try:
                return work()
            except ApiError:
                raise
            except BridgeError as exc:
                error = from_bridge_error(exc)
                # A last guard: no server path (an atlas file) ever reaches a client.
                error.message, error.hint = catalog.scrub(error.message), catalog.scrub(error.hint)
                raise error from None
            except MemoryError:
                logger.exception("out of memory")
                raise ApiError(503, "out_of_memory", "the server ran out of memory for this "
                               "request.", "send fewer cells per request",
                               {"Retry-After": "10"}) from None

        return await anyio.to_thread.run_sync(guarded, limiter=limiter[0])

    def parse(kind: str, body: bytes | bytearray, label_column: str | None = None) -> Decoded:
        if kind == "json":
            return decode_json_request(body, max_cells=settings.max_cells)
        return decode_arrow_request(body, max_cells=settings.max_cells, label_column=label_column)

    def reply(content: bytes, arrow: bool) -> Response:
        return Response(content, media_type=ARROW_MEDIA_TYPE if arrow else JSON_MEDIA_TYPE)

    # -- errors ---------------------------------------------------------------------------
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> Response:
        return _error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid_parameter(request: Request, exc: RequestValidationError) -> Response:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return _error_response(ApiError(422, "invalid_parameter",
                                        f"{where}: {first.get('msg', 'invalid value')}.",
                                        "see /openapi.json for the accepted values"))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        codes = {404: "not_found", 405: "method_not_allowed"}
        return _error_response(ApiError(exc.status_code, codes.get(exc.status_code, "http_error"),
                                        str(exc.detail), "see /openapi.json for the endpoints",
                                        dict(exc.headers or {})))

    # -- endpoints ------------------------------------------------------------------------
    @app.get("/healthz", tags=["service"], summary="Liveness and readiness")
    async def healthz() -> dict[str, str]:
        return {"status": "ok", "version": __version__}

    @app.get("/v1/models", tags=["service"], summary="Models, atlases and limits",
             dependencies=[Depends(require_key)], responses=_openapi.error_responses(("401",)))
    async def models() -> dict[str, Any]:
        return {"default_model": catalog.default_model, "models": catalog.describe(),
                "limits": {"max_cells": settings.max_cells,
                           "max_body_bytes": settings.max_body_bytes,
                           "max_json_body_bytes": min(settings.max_body_bytes,
                                                      settings.max_json_body_bytes)},
                "transports": [JSON_MEDIA_TYPE, ARROW_MEDIA_TYPE], "version": __version__}

    @app.post("/v1/singlecell/annotate", tags=["single-cell"], summary="Cell-type calls",
              dependencies=[Depends(require_key)], openapi_extra=_openapi.ANNOTATE_BODY,
              responses={**_openapi.ANNOTATE_OK, **_openapi.error_responses()},
              response_class=Response)
    async def annotate(
        request: Request,
        model: str | None = Query(None, max_length=200, description="Arrow bodies: the model"),
        reference_atlas: str | None = Query(None, max_length=200,
                                            description="Arrow bodies: the atlas name"),
        tissue: str | None = Query(None, max_length=200,
                                   description="Arrow bodies: the tissue context (a name or "
                                               "UBERON id), for models that take one"),
        min_gene_fraction: float | None = Query(
            None, ge=0.0, le=1.0, description="Arrow bodies: the fraction of the model's genes "
                                              "a request must hold (the engine's default when "
                                              "absent)"),
    ) -> Response:
        kind = _content_kind(request)
        arrow = wants_arrow(request.headers.get("accept"), request.headers.get("content-type"))

        def work(body: bytes | bytearray) -> bytes:
            parsed = parse(kind, body)
            chosen_model, chosen_atlas = catalog.resolve(
                parsed.fields.get("model", model),
                parsed.fields.get("reference_atlas", reference_atlas))
            params = _engine_options(chosen_model, parsed.fields,
                                     {"tissue": tissue, "min_gene_fraction": min_gene_fraction})
            table = _compute.annotate(parsed.matrix, catalog, chosen_model, chosen_atlas,
                                      **params)
            logger.info("annotated %d cells with model %s", parsed.matrix.n_cells,
                        chosen_model)
            return arrow_bytes(table) if arrow else calls_json_body(table)

        return await serve(request, kind, work, arrow)

    @app.post("/v1/singlecell/embed", tags=["single-cell"], summary="Per-cell embeddings (PCA)",
              dependencies=[Depends(require_key)], openapi_extra=_openapi.EMBED_BODY,
              responses={**_openapi.EMBED_OK, **_openapi.error_responses()},
              response_class=Response)
    async def embed(
        request: Request,
        n_components: int = Query(30, ge=1, le=200),
        n_top_genes: int = Query(2000, ge=10, le=50000),
        seed: int = Query(0, ge=0, le=2**31 - 1),
    ) -> Response:
        kind = _content_kind(request)
        arrow = wants_arrow(request.headers.get("accept"), request.headers.get("content-type"))
        query = {"n_components": n_components, "n_top_genes": n_top_genes, "seed": seed}

        def work(body: bytes | bytearray) -> bytes:
            parsed = parse(kind, body)
            fields = {**query, **parsed.fields}
            table = _compute.embed(
                parsed.matrix,
                n_components=_int_field(fields, "n_components", 30, 1, 200),
                n_top_genes=_int_field(fields, "n_top_genes", 2000, 10, 50000),
                seed=_int_field(fields, "seed", 0, 0, 2**31 - 1))
            if arrow:
                return arrow_bytes(table)
            vectors = table.column("embedding").to_pylist()
            return json_reply({"embeddings": vectors,
                               "metadata": metadata_to_json(table.schema)})

        return await serve(request, kind, work, arrow)

    @app.post("/v1/singlecell/markers", tags=["single-cell"], summary="Marker genes per label",
              dependencies=[Depends(require_key)], openapi_extra=_openapi.MARKERS_BODY,
              responses={**_openapi.MARKERS_OK, **_openapi.error_responses()},
              response_class=Response)
    async def markers(
        request: Request,
        top_n: int = Query(50, ge=1, le=1000),
        method: Literal["t-test", "wilcoxon"] = Query("t-test"),
        min_cells: int = Query(3, ge=1, le=1_000_000,
                               description="labels with fewer cells get no markers"),
    ) -> Response:
        kind = _content_kind(request)
        arrow = wants_arrow(request.headers.get("accept"), request.headers.get("content-type"))

        def work(body: bytes | bytearray) -> bytes:
            parsed = parse(kind, body, label_column="label")
            fields = {"top_n": top_n, "method": method, "min_cells": min_cells,
                      **parsed.fields}
            labels = fields.get("labels")
            n = parsed.matrix.n_cells
            if (not isinstance(labels, list) or len(labels) != n
                    or not all(v is None or (isinstance(v, str) and len(v) <= 1000)
                               for v in labels)):
                raise ApiError(422, "invalid_labels", f"'labels' must be a list of {n} strings "
                               "(one per cell, null for unlabelled cells, at most 1,000 "
                               "characters each).",
                               "send the label of every cell, in matrix row order")
            if fields["method"] not in ("t-test", "wilcoxon"):
                raise ApiError(422, "invalid_parameter", "method must be 't-test' or "
                               "'wilcoxon'.", "pick one of the two")
            table = _compute.rank_marker_genes(
                parsed.matrix, labels, top_n=_int_field(fields, "top_n", 50, 1, 1000),
                method=fields["method"], min_cells=_int_field(fields, "min_cells", 3, 1, n),
                max_labels=settings.max_marker_labels)
            if arrow:
                return arrow_bytes(table)
            return json_reply({"markers": table.to_pylist(),
                               "metadata": metadata_to_json(table.schema)})

        return await serve(request, kind, work, arrow)

    from ._workspace import include_workspace  # the browser workspace at / (issue 15)

    include_workspace(app, settings, catalog=catalog, require_key=require_key)
    app.add_middleware(RequestContext)
    for name, value in app_state.items():
        setattr(app.state, name, value)
    return app


def app_from_env() -> FastAPI:
    """App factory for ``uvicorn --factory`` worker processes (settings from the environment)."""
    return create_app(Settings.from_env())
