"""The browser workspace: the page at ``/`` and its endpoints under ``/v1/workspace``.

Layer: server.  :func:`include_workspace` adds the routes to the service's app, so they share
its API keys (Bearer), limits, request ids and JSON error body::

    GET    /                                   the page (static files under /workspace/static)
    GET    /v1/workspace/options               models, atlases, tissues, limits
    POST   /v1/workspace/session               one-time sign-in token -> the API key
    POST   /v1/workspace/uploads?filename=F    the file as the raw body, streamed to disk
    GET    /v1/workspace/jobs                  this key's jobs
    POST   /v1/workspace/jobs                  {upload_id, model, reference_atlas, tissue, ...}
    GET    /v1/workspace/jobs/{id}             status (polling)
    GET    /v1/workspace/jobs/{id}/events      status as server-sent events until it ends
    POST   /v1/workspace/jobs/{id}/cancel
    DELETE /v1/workspace/jobs/{id}
    GET    /v1/workspace/jobs/{id}/cells       per-cell table: JSON for the page, or Arrow
    GET    /v1/workspace/jobs/{id}/cells/{row} one cell: its call, alternates, markers, QC
    GET    /v1/workspace/jobs/{id}/summary     labels per column: counts, confidence
    GET    /v1/workspace/jobs/{id}/dotplot     marker genes and dot plot of a grouping
    GET    /v1/workspace/jobs/{id}/edits       curation: edits table and label_curated
    POST   /v1/workspace/jobs/{id}/edits       add an edit (rename, merge, relabel)
    DELETE /v1/workspace/jobs/{id}/edits/last  undo;  DELETE .../edits: start over
    POST   /v1/workspace/jobs/{id}/downloads   {kind} -> a one-time download link
    GET    /v1/workspace/downloads/{token}     the file (the token is the credential)

The API key never appears in a URL: downloads go through one-time tokens, and the page keeps
the key in ``sessionStorage`` for the tab only.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import anyio
from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.responses import FileResponse, Response, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles

from .._contract import calls_for_csv
from .._contract.wire import ARROW_MEDIA_TYPE, JSON_MEDIA_TYPE
from ._curation import check_edit, empty_doc
from ._jobs import FINISHED, JobManager, WorkspaceLimits, owner_of, read_json, start_child
from ._problems import ApiError
from ._results import CURATED, JobResults

if TYPE_CHECKING:
    from ._compute import Catalog
    from ._settings import Settings

__all__ = ["EXPORTS", "STATIC_DIR", "include_workspace"]

logger = logging.getLogger("bridge.server.workspace")

STATIC_DIR = Path(__file__).parent / "static" / "workspace"
# Everything the page loads comes from this server: no CDN, no inline script, no framing.
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' blob: data:; "
                               "style-src 'self'; script-src 'self'; connect-src 'self'; "
                               "object-src 'none'; base-uri 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}
# kind -> (file name suffix, media type, made in a child process)
EXPORTS: dict[str, tuple[str, str, bool]] = {
    "calls.csv": ("calls.csv", "text/csv", False),
    "calls.parquet": ("calls.parquet", "application/vnd.apache.parquet", False),
    "edits.csv": ("edits.csv", "text/csv", False),
    "object.rds": ("annotated.rds", "application/octet-stream", True),
    "object.h5ad": ("annotated.h5ad", "application/x-hdf5", True),
    "report.html": ("report.html", "text/html", True),
}
_FILE_OK: dict[int | str, Any] = {200: {"description": "the file", "content": {
    media: {"schema": {"type": "string", "format": "binary"}}
    for media in sorted({kind[1] for kind in EXPORTS.values()})}}}
LAYOUTS = ("auto", "umap", "pca")
MAX_JSON_BYTES = 64 * 1024 * 1024
EXPORT_TIMEOUT_S = 3600.0
_BEARER = HTTPBearer(auto_error=False, description="Authorization: Bearer <API key>")
_STATUS_TEXT = {
    "400": "the body is not valid JSON",
    "401": "missing or invalid API key (or a used sign-in link)",
    "404": "no such job, upload or download link for this API key",
    "409": "the job is not done yet, or the edit conflicts with the edits so far",
    "413": "the upload or body is larger than the server allows",
    "422": "a parameter or the body is invalid (message and hint say what to change)",
    "429": "this API key has as many jobs as the server keeps",
    "500": "server error (report the request id)",
    "503": "busy: retry after the Retry-After delay",
    "507": "the workspace's disk allowance is used up",
}
_BINARY = {"schema": {"type": "string", "format": "binary"}}


def _documented(*codes: str, ok: dict[int | str, Any] | None = None) -> dict[int | str, Any]:
    """OpenAPI responses: the service's error body for each status, plus the success."""
    from ._openapi import ERROR_SCHEMA

    out: dict[int | str, Any] = {
        code: {"description": _STATUS_TEXT[code],
               "content": {JSON_MEDIA_TYPE: {"schema": ERROR_SCHEMA}}} for code in codes}
    out.update(ok or {})
    return out


_EVENTS_OK: dict[int | str, Any] = {200: {"description": "the job's status as server-sent events",
                    "content": {"text/event-stream": {"schema": {"type": "string"}}}}}
_CELLS_OK: dict[int | str, Any] = {200: {"description": "the per-cell table", "content": {
    JSON_MEDIA_TYPE: {"schema": {"type": "object"}}, ARROW_MEDIA_TYPE: _BINARY}}}
def _json_request(properties: dict[str, Any], required: tuple[str, ...] = ()
                  ) -> dict[str, Any]:
    schema = {"type": "object", "properties": properties, "required": list(required)}
    return {"requestBody": {"required": True,
                            "content": {JSON_MEDIA_TYPE: {"schema": schema}}}}


_TEXT = {"type": "string"}
_UPLOAD_BODY = {"requestBody": {"required": True, "description": "the file's bytes", "content": {
    "application/octet-stream": _BINARY}}}
_JOB_BODY = _json_request({
    "upload_id": _TEXT, "model": {"type": ["string", "null"]},
    "reference_atlas": {"type": ["string", "null"]}, "tissue": {"type": ["string", "null"]},
    "min_confidence": {"type": ["number", "null"], "minimum": 0, "maximum": 1},
    "layout": {"type": "string", "enum": ["auto", "umap", "pca"]}}, ("upload_id",))
_EDIT_BODY = _json_request({
    "op": {"type": "string", "enum": ["rename", "merge", "relabel"]},
    "from": {"type": ["string", "array"], "items": _TEXT},
    "cells": {"type": "array", "items": _TEXT}, "to": _TEXT, "note": _TEXT,
    "base": _TEXT}, ("op", "to"))
_DOWNLOAD_BODY = _json_request({"kind": {"type": "string", "enum": [
    "calls.csv", "calls.parquet", "edits.csv", "object.rds", "object.h5ad", "report.html"]}},
    ("kind",))
_SESSION_BODY = _json_request({"token": _TEXT}, ("token",))
_JOB = ("401", "404", "422")
_DONE = (*_JOB, "409")
_Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(_BEARER)]


@cache
def marker_tissues() -> list[str]:
    """Tissue names of the knowledge base's vocabulary (``tissue=`` of model markers; the
    engine also takes synonyms and UBERON ids, and "auto" / "all")."""
    from ..engines._knowledge_base import load_tissues

    return sorted(row["name"] for row in load_tissues())


async def _paced(chunks: AsyncIterator[bytes], timeout: float) -> AsyncIterator[bytes]:
    """``chunks``, refused with 408 when no byte arrives for ``timeout`` seconds: a stalled
    upload never holds a connection and a half-written file forever."""
    iterator = chunks.__aiter__()
    while True:
        try:
            with anyio.fail_after(timeout):
                chunk = await iterator.__anext__()
        except StopAsyncIteration:
            return
        except TimeoutError:
            raise ApiError(408, "body_timeout", f"no part of the upload arrived for {timeout:g} s.",
                           "check the connection and upload again") from None
        yield chunk


async def _json_body(request: Request) -> dict[str, Any]:
    body: bytearray | None = bytearray()
    async for piece in request.stream():  # small JSON bodies: capped, never pre-allocated
        if body is not None:
            body += piece
            if len(body) > MAX_JSON_BYTES:
                body = None  # keep reading (and dropping) so the client gets the 413
    if body is None:
        raise ApiError(413, "body_too_large", f"the JSON body exceeds {MAX_JSON_BYTES:,} bytes.",
                       "send a smaller body")
    try:
        data = json.loads(bytes(body) or b"{}")
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, "invalid_json", f"the body is not valid JSON ({exc}).",
                       "send a JSON object") from None
    if not isinstance(data, dict):
        raise ApiError(422, "invalid_payload", "the body must be a JSON object.",
                       "send a JSON object")
    return data


def job_options(fields: dict[str, Any], catalog: Catalog
                ) -> tuple[dict[str, Any], dict[str, Any]]:
    """What the client asked for (shown back) and how the job runs it (kept server-side)."""
    model, atlas_name = catalog.resolve(fields.get("model") or None,
                                        fields.get("reference_atlas") or None)
    atlas = catalog.atlases[model][atlas_name]  # the server-side value; never shown
    tissue = fields.get("tissue") or None
    if tissue is not None:
        if model != "markers":
            raise ApiError(422, "invalid_parameter", f"tissue applies to model 'markers', not "
                           f"{model!r}.", "leave tissue empty for this model")
        if not isinstance(tissue, str) or len(tissue) > 200:
            raise ApiError(422, "invalid_parameter", "tissue must be a tissue name or UBERON "
                           "id.", "pick one of the listed tissues, or leave it on auto")
        from .._errors import BridgeError
        from ..engines._tissue_context import given_context
        from ._problems import from_bridge_error

        try:
            given_context(tissue)  # an unknown name is refused here, with close matches
        except BridgeError as exc:
            raise from_bridge_error(exc) from None
    threshold = fields.get("min_confidence")
    if threshold is not None and (isinstance(threshold, bool)
                                  or not isinstance(threshold, int | float)
                                  or not 0.0 <= float(threshold) <= 1.0):
        raise ApiError(422, "invalid_parameter", "min_confidence must be a number in [0, 1] "
                       f"or null, got {json.dumps(threshold)[:40]}.",
                       "cells below it are labelled Unknown; null keeps every call")
    layout = fields.get("layout") or "auto"
    if layout not in LAYOUTS:
        raise ApiError(422, "invalid_parameter", f"layout must be one of {', '.join(LAYOUTS)}.",
                       "auto uses UMAP when umap-learn is installed")
    options = {"model": model, "reference_atlas": atlas_name, "tissue": tissue,
               "min_confidence": None if threshold is None else float(threshold),
               "layout": layout}
    engine = {"model": model, "atlas": atlas, "params": {"tissue": tissue} if tissue else {},
              "min_confidence": options["min_confidence"], "layout": layout}
    return options, engine


def _export_name(job: dict[str, Any], kind: str) -> str:
    stem = Path(job["name"]).stem or "job"
    stem = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in stem)[:80]
    return f"{stem}-{EXPORTS[kind][0]}"


def _cells_arrow(results: JobResults) -> bytes:
    """The per-cell table as an Arrow stream: calls, layout, curated label, metadata."""
    import pyarrow as pa

    table = results.calls_with_curation()
    layout = results.layout()
    table = table.append_column("x", layout.column("x")).append_column("y", layout.column("y"))
    obs = results.obs()
    for name in obs.column_names:
        if name != "cell":
            table = table.append_column(f"meta:{name}", obs.column(name))
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return bytes(sink.getvalue().to_pybytes())


def _summary(results: JobResults) -> dict[str, Any]:
    import numpy as np

    from ._results import as_text

    calls = results.calls()
    confidence = np.asarray(calls.column("confidence").to_numpy(zero_copy_only=False),
                            dtype=np.float64)
    columns: dict[str, list[dict[str, Any]]] = {}
    names = results.label_columns()
    doc = results.edits_doc()
    groupings = {n: as_text(calls.column(n)) for n in names}
    if doc["edits"]:
        groupings[CURATED] = results.curated(doc)[0]
    for name, values in groupings.items():
        rows = []
        present = np.array([v is not None for v in values])
        labels, counts = np.unique(values[present].astype(str), return_counts=True)
        for label, count in sorted(zip(labels.tolist(), counts.tolist(), strict=True),
                                   key=lambda p: -p[1]):
            own = confidence[present][values[present].astype(str) == label]
            own = own[np.isfinite(own)]
            q = np.quantile(own, [0.25, 0.5, 0.75]).round(4).tolist() if len(own) else None
            rows.append({"label": label, "count": int(count),
                         "confidence_quartiles": q})
        columns[name] = rows
    return {"n_cells": calls.num_rows, "label_columns": names, "labels": columns,
            **{k: v for k, v in results.info.items() if k != "label_columns"}}


def _cell(results: JobResults, row: int) -> dict[str, Any]:
    calls = results.calls()
    if not 0 <= row < calls.num_rows:
        raise ApiError(404, "cell_not_found", f"row {row} is not a cell of this job (it has "
                       f"{calls.num_rows:,}).", "rows count from 0 in the cells table's order")
    record = calls.slice(row, 1).to_pylist()[0]
    obs = results.obs().slice(row, 1).to_pylist()[0]
    record["metadata"] = {k: v for k, v in obs.items() if k != "cell"}
    if results.edits_doc()["edits"]:
        record[CURATED] = results.curated()[0][row]
    return _finite(record)


def _finite(value: Any) -> Any:
    """JSON-safe: NaN and infinities become null, other odd values text."""
    if isinstance(value, float):
        return value if value == value and abs(value) != float("inf") else None
    if isinstance(value, dict):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    if value is None or isinstance(value, str | int | bool):
        return value
    return str(value)


def _prepare_export(jobs: JobManager, job: dict[str, Any], kind: str) -> Path:
    """The file for a download, made once per curation revision."""
    import pyarrow.csv as pcsv
    import pyarrow.parquet as pq

    from ._jobs import locked

    folder = jobs.job_dir(job["id"])
    results = JobResults(folder)
    revision = results.edits_doc()["revision"]
    out = folder / "exports" / f"r{revision}-{EXPORTS[kind][0]}"
    with locked(folder / "exports.lock"):
        if out.exists():
            return out
        partial = out.with_name(f"partial-{out.name}")
        if kind == "calls.csv":
            pcsv.write_csv(calls_for_csv(results.calls_with_curation()), partial)
        elif kind == "calls.parquet":
            pq.write_table(results.calls_with_curation(), partial)
        elif kind == "edits.csv":
            pcsv.write_csv(results.edits_export(), partial)
        else:
            child_kind = {"object.rds": "rds", "object.h5ad": "h5ad"}.get(kind, "report")
            _export_in_child(folder, child_kind, partial)
        partial.replace(out)
        jobs.disk_usage(fresh=True)
        return out


def _export_in_child(folder: Path, kind: str, out: Path) -> None:
    import subprocess

    from ._jobs import stop_child

    with (folder / "job.log").open("ab") as log:
        process = start_child(["export", str(folder), kind, str(out)], log)
        try:
            code = process.wait(timeout=EXPORT_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            stop_child(process)
            code = -1
    error = read_json(out.with_name(out.name + ".error.json"))
    if error is not None:
        out.with_name(out.name + ".error.json").unlink(missing_ok=True)
        status = 422 if error["code"] not in ("internal_error", "out_of_memory") else 500
        raise ApiError(status, error["code"], error["message"], error["hint"])
    if code != 0 or not out.exists():
        raise ApiError(500, "export_failed", f"making the {kind} export failed (status {code}).",
                       "the server log has the details; try again or another format")


def include_workspace(app: FastAPI, settings: Settings, *, catalog: Catalog,
                      require_key: Callable[[Any], None]) -> JobManager:
    """Add the workspace page and its endpoints to ``app``; returns its job manager (also
    ``app.state.workspace``), which stops its jobs and cleans up when the app shuts down."""
    limits = WorkspaceLimits.from_env(max_upload_bytes=settings.max_body_bytes,
                                      max_cells=settings.max_cells,
                                      running_jobs=settings.compute_threads)
    jobs = JobManager(limits)
    router = APIRouter(prefix="/v1/workspace", tags=["workspace"])

    def owner(credentials: _Credentials) -> str:
        require_key(credentials)
        return owner_of(credentials.credentials if credentials is not None else None)

    # A default, not an Annotated alias: FastAPI resolves (string) annotations in the
    # module's namespace, where a name local to this function does not exist.
    key_owner = Depends(owner)

    async def in_thread(work: Callable[..., Any], *args: Any) -> Any:
        return await anyio.to_thread.run_sync(lambda: work(*args))

    async def finished_results(who: str, job_id: str) -> tuple[dict[str, Any], JobResults]:
        job = await in_thread(jobs.job, who, job_id)
        if job["state"] != "done":
            raise ApiError(409, "job_not_done", f"job {job_id} is {job['state']}, not done.",
                           "wait until its state is 'done'")
        return job, JobResults(jobs.job_dir(job_id))

    @router.get("/options", summary="What a job can use: models, atlases, tissues, limits",
                responses=_documented("401", "422"))
    async def options(who: str = key_owner) -> dict[str, Any]:
        tissues = marker_tissues() if "markers" in catalog.atlases else []
        return {"default_model": catalog.default_model, "models": catalog.describe(),
                "tissues": tissues, "layouts": list(LAYOUTS),
                "input_suffixes": list(_input_suffixes()), "exports": list(EXPORTS),
                "limits": jobs.describe()}

    @router.post("/session", summary="Exchange a one-time sign-in token for the API key",
                 responses=_documented("400", "401", "413", "422"),
                 openapi_extra=_SESSION_BODY)
    async def session(request: Request) -> dict[str, str]:
        token = (await _json_body(request)).get("token")
        if not isinstance(token, str) or not 20 <= len(token) <= 100:
            raise ApiError(422, "invalid_payload", "send {\"token\": \"...\"} from the sign-in "
                           "link.", "open the link 'scbridge workspace' printed")
        return {"api_key": jobs.redeem_login(token)}

    @router.post("/uploads", status_code=201, summary="Upload a data set (raw body)",
                 responses=_documented("401", "413", "422", "507"),
                 openapi_extra=_UPLOAD_BODY)
    async def upload(request: Request, who: str = key_owner,
                     filename: str = Query(..., min_length=1, max_length=300)
                     ) -> dict[str, Any]:
        declared = request.headers.get("content-length", "")
        return await jobs.receive_upload(who, filename,
                                         _paced(request.stream(), settings.body_timeout),
                                         int(declared) if declared.isdigit() else None)

    @router.get("/jobs", summary="This key's jobs, newest first",
                responses=_documented("401", "422"))
    async def list_jobs(who: str = key_owner) -> dict[str, Any]:
        return {"jobs": await in_thread(jobs.list, who)}

    @router.post("/jobs", status_code=202, summary="Run a job on an upload",
                 responses=_documented("400", "401", "404", "413", "422", "429", "503",
                                       "507"),
                 openapi_extra=_JOB_BODY)
    async def create_job(request: Request, who: str = key_owner) -> dict[str, Any]:
        fields = await _json_body(request)
        upload_id = fields.get("upload_id")
        if not isinstance(upload_id, str):
            raise ApiError(422, "invalid_payload", "upload_id is missing.",
                           "upload the file (POST /v1/workspace/uploads), then send its id")
        chosen, engine = job_options(fields, catalog)
        return await in_thread(lambda: jobs.create(who, chosen, engine, upload_id=upload_id))

    @router.get("/jobs/{job_id}", summary="A job's status",
                responses=_documented(*_JOB))
    async def job_status(job_id: str, who: str = key_owner) -> dict[str, Any]:
        return await in_thread(jobs.status, who, job_id)

    @router.get("/jobs/{job_id}/events", summary="A job's status as server-sent events",
                response_class=StreamingResponse,
                responses=_documented(*_JOB, ok=_EVENTS_OK))
    async def job_events(job_id: str, who: str = key_owner) -> StreamingResponse:
        first = await in_thread(jobs.status, who, job_id)

        async def stream() -> AsyncIterator[str]:
            status, last, beat = first, "", time.monotonic()
            while True:
                text = json.dumps(status)
                if text != last:
                    yield f"event: status\ndata: {text}\n\n"
                    last, beat = text, time.monotonic()
                elif time.monotonic() - beat > 15:
                    yield ": still running\n\n"
                    beat = time.monotonic()
                if status["state"] in FINISHED:
                    return
                await anyio.sleep(0.2)
                try:
                    status = await in_thread(jobs.status, who, job_id)
                except ApiError:  # deleted meanwhile
                    return

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache",
                                          "X-Accel-Buffering": "no"})

    @router.post("/jobs/{job_id}/cancel", summary="Cancel a queued or running job",
                 responses=_documented(*_JOB))
    async def cancel_job(job_id: str, who: str = key_owner) -> dict[str, Any]:
        return await in_thread(jobs.cancel, who, job_id)

    @router.delete("/jobs/{job_id}", status_code=204, summary="Delete a job and its files",
                   responses=_documented(*_JOB))
    async def delete_job(job_id: str, who: str = key_owner) -> Response:
        await in_thread(jobs.delete, who, job_id)
        return Response(status_code=204)

    @router.get("/jobs/{job_id}/cells", summary="Per-cell table (JSON for the page, or Arrow)",
                response_class=Response,
                responses=_documented(*_DONE, ok=_CELLS_OK))
    async def cells(request: Request, job_id: str, who: str = key_owner) -> Response:
        _, results = await finished_results(who, job_id)
        if ARROW_MEDIA_TYPE in request.headers.get("accept", ""):
            return Response(await in_thread(_cells_arrow, results), media_type=ARROW_MEDIA_TYPE)
        return FileResponse(results.results / "view.json", media_type=JSON_MEDIA_TYPE,
                            headers={"Cache-Control": "no-cache"})

    @router.get("/jobs/{job_id}/cells/{row}", summary="One cell: its call, alternates, markers",
                responses=_documented(*_DONE))
    async def cell(job_id: str, row: int, who: str = key_owner) -> dict[str, Any]:
        _, results = await finished_results(who, job_id)
        return await in_thread(_cell, results, row)

    @router.get("/jobs/{job_id}/summary", summary="Labels per column: counts and confidence",
                responses=_documented(*_DONE))
    async def summary(job_id: str, who: str = key_owner) -> dict[str, Any]:
        _, results = await finished_results(who, job_id)
        return await in_thread(_summary, results)

    @router.get("/jobs/{job_id}/dotplot", summary="Marker genes and dot plot of a grouping",
                responses=_documented(*_DONE))
    async def dotplot(job_id: str, who: str = key_owner,
                      column: str = Query("label", max_length=300),
                      genes_per_label: int = Query(3, ge=1, le=10)) -> Response:
        _, results = await finished_results(who, job_id)

        def work() -> bytes:
            revision = results.edits_doc()["revision"] if column == CURATED else 0
            safe = "".join(ch if ch.isalnum() else "_" for ch in column)[:100]
            cached = results.results / f"dotplot-{safe}-{revision}-{genes_per_label}.json"
            if genes_per_label == 3 and column == "label":
                cached = results.results / "dotplot-label-0.json"
            if cached.exists():
                return cached.read_bytes()
            data = json.dumps(results.dotplot(column, genes_per_label=genes_per_label)).encode()
            cached.write_bytes(data)
            return data

        return Response(await in_thread(work), media_type=JSON_MEDIA_TYPE)

    @router.get("/jobs/{job_id}/edits", summary="Curation edits and the curated labels",
                responses=_documented(*_DONE))
    async def get_edits(job_id: str, who: str = key_owner) -> dict[str, Any]:
        _, results = await finished_results(who, job_id)
        return await in_thread(results.curation_reply)

    @router.post("/jobs/{job_id}/edits", summary="Add a curation edit",
                 responses=_documented("400", "413", *_DONE), openapi_extra=_EDIT_BODY)
    async def add_edit(request: Request, job_id: str, who: str = key_owner) -> dict[str, Any]:
        _, results = await finished_results(who, job_id)
        fields = await _json_body(request)

        def change(doc: dict[str, Any], current: Any, cell_rows: dict[str, int]
                   ) -> dict[str, Any]:
            base = fields.get("base")
            if base is not None and base != doc["base"]:
                if doc["edits"]:
                    raise ApiError(409, "curation_base_fixed",
                                   f"the edits so far start from {doc['base']!r}.",
                                   "undo them all (DELETE .../edits) to start from another "
                                   "column")
                if base not in results.label_columns():
                    raise ApiError(422, "unknown_column", f"{str(base)[:80]!r} is not a label "
                                   "column of the calls.",
                                   f"use one of: {', '.join(results.label_columns())}")
                doc = empty_doc(base)
                current = results.curated(doc)[0]
            doc["edits"].append(check_edit(fields, current, cell_rows))
            return doc

        return await in_thread(results.update_edits, change)

    @router.delete("/jobs/{job_id}/edits/last", summary="Undo the last curation edit",
                   responses=_documented(*_DONE))
    async def undo_edit(job_id: str, who: str = key_owner) -> dict[str, Any]:
        _, results = await finished_results(who, job_id)

        def change(doc: dict[str, Any], *_: Any) -> dict[str, Any]:
            if not doc["edits"]:
                raise ApiError(409, "nothing_to_undo", "there are no edits.", "nothing to do")
            doc["edits"].pop()
            return doc

        return await in_thread(results.update_edits, change)

    @router.delete("/jobs/{job_id}/edits", summary="Remove every curation edit",
                   responses=_documented(*_DONE))
    async def clear_edits(job_id: str, who: str = key_owner) -> dict[str, Any]:
        _, results = await finished_results(who, job_id)
        return await in_thread(results.update_edits,
                               lambda doc, *_: {**empty_doc(doc["base"]),
                                                "revision": doc["revision"]})

    @router.post("/jobs/{job_id}/downloads", summary="A one-time link to an export",
                 responses=_documented("400", "413", "500", *_DONE),
                 openapi_extra=_DOWNLOAD_BODY)
    async def prepare_download(request: Request, job_id: str,
                               who: str = key_owner) -> dict[str, Any]:
        job, _ = await finished_results(who, job_id)
        kind = (await _json_body(request)).get("kind")
        if kind not in EXPORTS:
            raise ApiError(422, "unknown_export", f"unknown export {str(kind)[:40]!r}.",
                           f"choose one of: {', '.join(EXPORTS)}")
        path = await in_thread(_prepare_export, jobs, job, kind)
        name = _export_name(job, kind)
        token = await in_thread(jobs.issue_download, who, job_id, path, name, EXPORTS[kind][1])
        return {"url": f"/v1/workspace/downloads/{token}", "filename": name,
                "size": path.stat().st_size, "expires_in": 120}

    @router.get("/downloads/{token}", summary="Download an export (one-time link)",
                response_class=FileResponse,
                responses=_documented("404", "422", ok=_FILE_OK))
    async def download(token: str) -> FileResponse:
        info = await in_thread(jobs.redeem_download, token)
        return FileResponse(info["path"], media_type=info["media_type"],
                            filename=info["filename"], headers={"Cache-Control": "no-store"})

    app.include_router(router)
    _add_page(app)
    _close_on_shutdown(app, jobs)
    app.state.workspace = jobs
    return jobs


def _input_suffixes() -> list[str]:
    from ._jobs import INPUT_SUFFIXES

    return list(INPUT_SUFFIXES)


def _add_page(app: FastAPI) -> None:
    index = STATIC_DIR / "index.html"

    @app.get("/", include_in_schema=False)
    async def page() -> Response:
        return FileResponse(index, media_type="text/html", headers=PAGE_HEADERS)

    app.mount("/workspace/static", StaticFiles(directory=STATIC_DIR), name="workspace-static")


def _close_on_shutdown(app: FastAPI, jobs: JobManager) -> None:
    original = app.router.lifespan_context

    @contextlib.asynccontextmanager
    async def lifespan(asgi_app: Any) -> AsyncIterator[Any]:
        async with original(asgi_app) as state:
            try:
                yield state
            finally:
                await anyio.to_thread.run_sync(jobs.close)

    app.router.lifespan_context = lifespan
