"""The remote engine: a client for ``scbridge serve`` and any service of the Cell Atlas contract.

Registered as engine ``"remote"``: ``bridge.annotate(..., endpoint=URL)`` builds it with
the model, atlas and tissue to ask the service for; the raw gene ids are sent (the service
maps and checks them).

The matrix goes out in chunks (50,000 cells by default), a bounded number at a time, each
retried with exponential backoff and jitter on connection errors, 429 and 5xx (a
``Retry-After`` header wins over the computed delay).  Replies are checked against the cells
that were sent and joined in input order, so the result is the table the local engine gives.

Transports:

``"arrow"``
    request body an Arrow CSR stream, reply the Calls table as an Arrow stream; ``model`` and
    ``reference_atlas`` travel as query parameters.  About 4x smaller than JSON, and decoded
    without parsing text.
``"json"``
    the body of the public tutorial, the same bytes ``requests.post(url, json=payload)`` sends
    for ``sparse_to_payload(X, genes)`` plus ``model`` and ``reference_atlas``, so the client
    works against the hosted API too.

The API key comes from ``api_key`` or the ``SCBRIDGE_API_KEY`` environment variable and is
sent as ``Authorization: Bearer <key>``; it is never logged.
"""

from __future__ import annotations

import email.utils
import json
import logging
import os
import random
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pyarrow as pa
import scipy.sparse as sp

from .._contract import CALLS_SCHEMA, MARKERS_SCHEMA, concat_calls, with_metadata
from .._contract.wire import (
    ARROW_MEDIA_TYPE,
    JSON_MEDIA_TYPE,
    calls_from_json,
    json_body,
    matrix_arrow_buffer,
    metadata_from_json,
    table_from_arrow,
)
from .._errors import InputError, MissingDependencyError, RemoteError
from ..matrix import CellMatrix
from ..numerics import spread_runs
from . import DEFAULT_CHUNK_SIZE, register_engine

if TYPE_CHECKING:
    from collections.abc import Iterator

    import httpx

__all__ = ["ENV_API_KEY", "RemoteClient", "annotate_url", "body_chunks"]

logger = logging.getLogger(__name__)

ENV_API_KEY = "SCBRIDGE_API_KEY"
_ANNOTATE_PATH = "/v1/singlecell/annotate"
_RETRY_STATUS = frozenset({429, 500, 502, 503, 504})
Transport = Literal["arrow", "json"]


def _infers_tissue(model: str) -> bool:
    """Whether ``model`` is one of ours that infers a tissue context (a model this package
    does not know, such as a hosted one, is sent exactly the requests it asks for)."""
    from . import engine_parameters

    try:
        return "tissue" in engine_parameters(model)
    except Exception:  # an unknown model name
        return False


def annotate_url(endpoint: str) -> str:
    """The annotate URL for a base URL (``http://host:8000``, ``.../v1``) or the full URL."""
    url = endpoint.rstrip("/")
    if not url.startswith(("http://", "https://")):
        msg = f"endpoint must be an http:// or https:// URL, got {endpoint!r}."
        raise InputError(msg, code="invalid_parameter")
    if url.endswith(_ANNOTATE_PATH):
        return url
    if url.endswith("/v1"):
        return url + _ANNOTATE_PATH[len("/v1"):]
    return url + _ANNOTATE_PATH


def _retry_after(response: httpx.Response) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or an HTTP date), if any."""
    value = response.headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _error_from(response: httpx.Response, url: str) -> RemoteError:
    """A RemoteError carrying the service's ``{"error": {code, message, hint}}`` when present."""
    code = hint = None
    message = response.text[:300] if response.content else response.reason_phrase
    try:
        error = response.json().get("error", {})
        if isinstance(error, dict):
            code, hint = error.get("code"), error.get("hint")
            message = error.get("message") or message
    except (ValueError, AttributeError):
        pass
    if response.status_code == 401 and not hint:
        hint = f"set {ENV_API_KEY} (or pass api_key=) to a key the service accepts"
    text = f"{url} answered {response.status_code}: {message}"
    if hint:
        text += f" Hint: {hint}."
    request_id = response.headers.get("x-request-id")
    if request_id:
        text += f" (request id {request_id})"
    return RemoteError(text, status=response.status_code, code=code, hint=hint)


def body_chunks(body: bytes | pa.Buffer, size: int = 1 << 20) -> Iterator[memoryview]:
    """``body`` as memoryview slices, for streaming uploads.

    httpcore sends a ``bytes`` body with ``while buf: n = sock.send(buf); buf = buf[n:]``,
    which copies the rest of the body on every partial send: quadratic, ~80 MB/s for a
    240 MB body on loopback.  Slices of at most 1 MiB keep each copy small (~2 GB/s).
    """
    view = memoryview(body).cast("B")
    for start in range(0, len(view), size):
        yield view[start:start + size]


class RemoteClient:
    """Annotate cells with a remote service (the ``"remote"`` engine).

    Parameters
    ----------
    endpoint
        Base URL of the service (``http://127.0.0.1:8000``) or the full annotate URL.
    api_key
        Bearer key; default ``$SCBRIDGE_API_KEY``.  Without one, no Authorization header is sent.
    transport
        ``"arrow"`` (fast, scbridge servers) or ``"json"`` (the public tutorial's body).
    model, atlas
        What the service should use (``GET /v1/models`` lists them); ``atlas`` is sent as
        ``reference_atlas``.
    tissue
        The tissue context to ask for (a name or UBERON id), sent as ``tissue``.
    min_gene_fraction
        The genes-found bar the service's engine should apply (sent as ``min_gene_fraction``;
        the service's own default when ``None``).  The client itself checks no genes: the
        service knows its model's panel.
    chunk_size
        Cells per request.
    max_concurrency
        Requests in flight at once.
    timeout
        Seconds to wait for each reply (connecting: at most 30 s).
    retries
        Further attempts per chunk after a connection error, 429 or 5xx.
    backoff, max_backoff
        First and largest delay between attempts, in seconds (doubling, with jitter).
    split_too_large
        When the service refuses a chunk as too large (413: too many cells, or too many
        bytes), send it again in halves (recursively) instead of failing.
    """

    name = "remote"
    min_gene_fraction = 0.0  # the service checks the genes against its own model
    genes = None

    def __init__(
        self,
        endpoint: str,
        *,
        api_key: str | None = None,
        transport: Transport | str = "arrow",
        model: str = "markers",
        atlas: str | None = None,
        tissue: str | None = None,
        min_gene_fraction: float | None = None,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        max_concurrency: int = 4,
        timeout: float = 300.0,
        retries: int = 5,
        backoff: float = 0.5,
        max_backoff: float = 60.0,
        split_too_large: bool = True,
    ) -> None:
        if transport not in ("arrow", "json"):
            msg = f"transport must be 'arrow' or 'json', got {transport!r}."
            raise InputError(msg, code="invalid_parameter")
        if chunk_size < 1 or max_concurrency < 1 or retries < 0 or timeout <= 0:
            msg = ("chunk_size and max_concurrency must be >= 1, retries >= 0 and timeout > 0; "
                   f"got {chunk_size}, {max_concurrency}, {retries}, {timeout}.")
            raise InputError(msg, code="invalid_parameter")
        self.url = annotate_url(endpoint)
        self.api_key = api_key if api_key is not None else os.environ.get(ENV_API_KEY) or None
        self.transport: Transport = "arrow" if transport == "arrow" else "json"
        self.model = model
        self.atlas = atlas
        if min_gene_fraction is not None and not 0.0 <= float(min_gene_fraction) <= 1.0:
            msg = f"min_gene_fraction must lie in [0, 1], got {min_gene_fraction}."
            raise InputError(msg, code="invalid_parameter")
        self.tissue = tissue
        # Not `min_gene_fraction`: that attribute is the local check's bar (0, none here).
        self.service_min_gene_fraction = (None if min_gene_fraction is None
                                          else float(min_gene_fraction))
        self.chunk_size = chunk_size
        self.max_concurrency = max_concurrency
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.split_too_large = split_too_large
        self._rng = random.Random()
        self._rng_lock = threading.Lock()

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "atlas": self.atlas,
                "parameters": {"endpoint": self.url, "model": self.model,
                               "transport": self.transport, "tissue": self.tissue,
                               "min_gene_fraction": self.service_min_gene_fraction,
                               "chunk_size": self.chunk_size}}

    def __repr__(self) -> str:  # never shows the key
        return (f"RemoteClient({self.url!r}, transport={self.transport!r}, model={self.model!r}, "
                f"atlas={self.atlas!r}, chunk_size={self.chunk_size})")

    # -- HTTP ---------------------------------------------------------------------------------
    def _http(self) -> httpx.Client:
        try:
            import httpx
        except ImportError:
            msg = "the remote engine needs httpx: pip install 'scbridge[server]' (or httpx)."
            raise MissingDependencyError(msg) from None
        headers = {"User-Agent": "scbridge"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        limits = httpx.Limits(max_connections=self.max_concurrency,
                              max_keepalive_connections=self.max_concurrency)
        timeout = httpx.Timeout(self.timeout, connect=min(self.timeout, 30.0))
        return httpx.Client(headers=headers, limits=limits, timeout=timeout)

    def _delay(self, attempt: int, response: httpx.Response | None) -> float:
        """Seconds before the next attempt: the server's Retry-After, else 2^n backoff with
        jitter (half fixed, half random, so retrying clients spread out)."""
        if response is not None:
            after = _retry_after(response)
            if after is not None:
                return min(after, max(self.max_backoff, 1.0) * 5)
        base = min(self.max_backoff, self.backoff * 2**attempt)
        with self._rng_lock:
            return base / 2 + self._rng.uniform(0, base / 2)

    def _post(self, http: httpx.Client, content: bytes | pa.Buffer, headers: dict[str, str],
              params: dict[str, Any], what: str, url: str | None = None) -> httpx.Response:
        import httpx

        headers = {**headers, "Content-Length": str(len(memoryview(content).cast("B")))}
        for attempt in range(self.retries + 1):
            response: httpx.Response | None = None
            try:
                # Streamed in slices (a fresh iterator per attempt): see body_chunks.
                response = http.post(url or self.url,
                                     content=body_chunks(content),  # type: ignore[arg-type]
                                     headers=headers, params=params)
            except httpx.TransportError as exc:
                if attempt == self.retries:
                    msg = (f"could not reach {self.url} for {what} after {attempt + 1} attempts "
                           f"({type(exc).__name__}: {exc}). Check the URL and that the service "
                           "is running.")
                    raise RemoteError(msg, code="remote_unreachable") from None
                reason = type(exc).__name__
            else:
                if response.status_code < 400:
                    return response
                if response.status_code not in _RETRY_STATUS or attempt == self.retries:
                    raise _error_from(response, url or self.url)
                reason = f"HTTP {response.status_code}"
            delay = self._delay(attempt, response)
            logger.info("%s: %s; retrying in %.2f s (attempt %d of %d)", what, reason, delay,
                        attempt + 2, self.retries + 1)
            time.sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover

    # -- one chunk ----------------------------------------------------------------------------
    def _request(self, chunk: CellMatrix, tissue: str | None
                 ) -> tuple[bytes | pa.Buffer, dict[str, str], dict[str, str]]:
        if self.transport == "arrow":
            params = {"model": self.model}
            if self.atlas is not None:
                params["reference_atlas"] = self.atlas
            if tissue is not None:
                params["tissue"] = tissue
            if self.service_min_gene_fraction is not None:
                params["min_gene_fraction"] = repr(self.service_min_gene_fraction)
            headers = {"Content-Type": ARROW_MEDIA_TYPE, "Accept": ARROW_MEDIA_TYPE}
            return matrix_arrow_buffer(chunk), headers, params
        body = json_body(chunk, model=self.model, atlas=self.atlas, tissue=tissue,
                         min_gene_fraction=self.service_min_gene_fraction)
        return body, {"Content-Type": JSON_MEDIA_TYPE, "Accept": JSON_MEDIA_TYPE}, {}

    def _annotate_chunk(self, http: httpx.Client, chunk: CellMatrix, index: int,
                        tissue: str | None = None, what: str | None = None) -> pa.Table:
        what = what or f"chunk {index} ({chunk.n_cells} cells)"
        content, headers, params = self._request(chunk, tissue)
        try:
            response = self._post(http, content, headers, params, what)
        except RemoteError as exc:
            if not (self.split_too_large and exc.status == 413 and chunk.n_cells > 1):
                raise
            # The service takes fewer cells or bytes per request: halve, keep the order.
            half = chunk.n_cells // 2
            logger.info("%s: the service refused it as too large (%s); sending it in halves",
                        what, exc.code)
            parts = [chunk.slice_cells(0, half), chunk.slice_cells(half, chunk.n_cells)]
            return concat_calls([self._annotate_chunk(http, part, index, tissue)
                                 for part in parts])
        del content
        kind = response.headers.get("content-type", "").split(";")[0].strip()
        if kind == headers["Accept"] == ARROW_MEDIA_TYPE:
            table = table_from_arrow(response.content)
            sent = [str(c) for c in chunk.cells]
            if table.num_rows != len(sent) or "cell" not in table.column_names:
                msg = f"{what}: the service returned {table.num_rows} calls for {len(sent)} cells."
                raise RemoteError(msg, code="remote_reply")
            if table.column("cell").to_pylist() != sent:
                msg = (f"{what}: the service returned calls for other cells than were sent "
                       "(a mixed-up reply); nothing was merged.")
                raise RemoteError(msg, code="remote_reply")
            return table
        try:
            body = response.json()
        except ValueError:
            msg = (f"{what}: the service replied with {kind or 'no content type'}, neither JSON "
                   "nor Arrow; is the endpoint an annotate URL?")
            raise RemoteError(msg, code="remote_reply") from None
        return calls_from_json(body, chunk.cells)

    # -- public -------------------------------------------------------------------------------
    def annotate(self, matrix: CellMatrix, *, chunk_size: int | None = None,
                 progress: bool = True) -> pa.Table:
        """Calls for every cell of ``matrix``, in its order (the Calls table of DESIGN §3).

        ``chunk_size`` (cells per request) defaults to the client's own.

        Raises
        ------
        RemoteError
            The service refused a chunk (message, code and hint from its reply) or could not
            be reached after all retries.
        """
        from tqdm.auto import tqdm

        if matrix.n_cells == 0:
            return CALLS_SCHEMA.empty_table()
        size = chunk_size or self.chunk_size
        chunks = matrix.iter_chunks(size)
        n_chunks = -(-matrix.n_cells // size)
        results: list[pa.Table | None] = [None] * n_chunks
        bar = tqdm(total=matrix.n_cells, unit="cells", desc="annotating (remote)",
                   disable=not progress or n_chunks < 2)
        with self._http() as http, ThreadPoolExecutor(self.max_concurrency) as pool:
            pending: dict[Future[pa.Table], tuple[int, int]] = {}
            tissue, context = self.tissue, None
            if (n_chunks > 1 and (tissue is None or tissue.strip().lower() == "auto")
                    and _infers_tissue(self.model)):
                tissue, context = self._context_for_run(http, matrix)

            def submit(index: int, chunk: CellMatrix) -> None:
                future = pool.submit(self._annotate_chunk, http, chunk, index, tissue)
                pending[future] = (index, chunk.n_cells)

            try:
                # At most max_concurrency chunks are encoded or in flight at any time.
                for index, chunk in enumerate(chunks):
                    if len(pending) >= self.max_concurrency:
                        self._collect(pending, results, bar, FIRST_COMPLETED)
                    submit(index, chunk)
                while pending:
                    self._collect(pending, results, bar, FIRST_COMPLETED)
            except BaseException:
                for future in pending:
                    future.cancel()
                raise
            finally:
                bar.close()
        table = concat_calls([t for t in results if t is not None])
        if context is not None:  # the inference, as a run in one piece would record it
            table = with_metadata(table, tissue=context)
        return with_metadata(table, endpoint=self.url, transport=self.transport)

    def _context_for_run(self, http: httpx.Client, matrix: CellMatrix
                         ) -> tuple[str | None, str | None]:
        """One tissue context for every chunk of a run with ``tissue="auto"``.

        Each chunk on its own would have its context inferred from its own cells, so calls
        would depend on the chunk size.  The service is first sent the cells the embedded
        engine samples for its inference (:func:`~bridge.numerics.spread_runs` over the whole
        matrix); the context it infers from them is then asked for by name in every chunk.
        Returns the tissue value to send and the inference's ``scbridge.tissue`` metadata,
        or ``(None, None)`` for a model without a tissue context.
        """
        from ._tissue_context import INFERENCE_CELLS, UNKNOWN_TISSUE

        runs = spread_runs(matrix.n_cells, INFERENCE_CELLS)
        sample = [matrix.slice_cells(a, b) for a, b in runs]
        cells = CellMatrix(sp.vstack([c.X for c in sample], format="csr"),
                           np.concatenate([c.cells for c in sample]), matrix.genes,
                           value_kind=matrix.value_kind, source=matrix.source, validate=False)
        reply = self._annotate_chunk(http, cells, -1, None,
                                     what=f"tissue inference ({cells.n_cells} sampled cells)")
        raw = (reply.schema.metadata or {}).get(b"scbridge.tissue")
        try:
            context = json.loads(raw) if raw else None
        except ValueError:
            context = None
        if not isinstance(context, dict):
            return None, None
        tissues = context.get("tissues")
        if context.get("source") == "none":  # inferred: no tissue (the sample asked 'auto')
            return UNKNOWN_TISSUE, raw.decode() if raw else None
        if context.get("source") != "inferred" or not isinstance(tissues, list) or not tissues:
            return None, None
        logger.info("tissue context for every chunk, inferred from %d sampled cells: %s",
                    cells.n_cells, ", ".join(map(str, tissues)))
        return ";".join(map(str, tissues)), raw.decode() if raw else None

    @staticmethod
    def _collect(pending: dict[Future[pa.Table], tuple[int, int]],
                 results: list[pa.Table | None], bar: Any, when: str) -> None:
        done, _ = wait(list(pending), return_when=when)
        for future in done:
            index, n = pending.pop(future)
            results[index] = future.result()
            bar.update(n)

    # -- companion endpoints (all cells in one request: they need every cell at once) ------------
    def _companion(self, name: str, matrix: CellMatrix, params: dict[str, Any],
                   labels: list[str | None] | None = None) -> Any:
        url = self.url[: -len(_ANNOTATE_PATH)] + f"/v1/singlecell/{name}"
        if self.transport == "arrow":
            content = matrix_arrow_buffer(matrix, labels)
            headers = {"Content-Type": ARROW_MEDIA_TYPE, "Accept": ARROW_MEDIA_TYPE}
            with self._http() as http:
                response = self._post(http, content, headers, params, name, url)
            return table_from_arrow(response.content)
        body = json_body(matrix, model=None, atlas=None, labels=labels, **params)
        headers = {"Content-Type": JSON_MEDIA_TYPE, "Accept": JSON_MEDIA_TYPE}
        with self._http() as http:
            return self._post(http, body, headers, {}, name, url).json()

    def embed(self, matrix: CellMatrix, *, n_components: int = 30, n_top_genes: int = 2000,
              seed: int = 0) -> pa.Table:
        """The service's per-cell embedding (``POST /v1/singlecell/embed``), as
        :func:`bridge.embed` returns it: ``cell`` and ``embedding`` (fixed-size float32 list).
        """
        from .._contract import embedding_table

        params = {"n_components": n_components, "n_top_genes": n_top_genes, "seed": seed}
        reply = self._companion("embed", matrix, params)
        if isinstance(reply, pa.Table):
            return reply
        vectors = reply.get("embeddings") if isinstance(reply, dict) else None
        if not isinstance(vectors, list) or len(vectors) != matrix.n_cells:
            msg = f"the service returned no embedding for each of the {matrix.n_cells} cells."
            raise RemoteError(msg, code="remote_reply")
        import numpy as np

        scores = np.asarray(vectors, dtype=np.float32).reshape(matrix.n_cells, n_components)
        return embedding_table([str(c) for c in matrix.cells], scores,
                               metadata_from_json(reply.get("metadata")))

    def rank_marker_genes(self, matrix: CellMatrix, labels: list[str | None], *,
                          top_n: int = 50, method: Literal["t-test", "wilcoxon"] = "t-test"
                          ) -> pa.Table:
        """The service's marker genes per label (``POST /v1/singlecell/markers``), as
        :func:`bridge.rank_marker_genes` returns them.  ``labels``: one per cell, in order."""
        if len(labels) != matrix.n_cells:
            msg = f"{len(labels)} labels for {matrix.n_cells} cells; give one label per cell."
            raise InputError(msg, code="invalid_parameter")
        labels = [None if v is None else str(v) for v in labels]
        reply = self._companion("markers", matrix, {"top_n": top_n, "method": method}, labels)
        if isinstance(reply, pa.Table):
            return reply
        rows = reply.get("markers") if isinstance(reply, dict) else None
        if not isinstance(rows, list):
            msg = "the service's reply has no 'markers' list."
            raise RemoteError(msg, code="remote_reply")
        table = pa.Table.from_pylist(rows, schema=MARKERS_SCHEMA)
        return table.replace_schema_metadata(metadata_from_json(reply.get("metadata")))

    def models(self) -> dict[str, Any]:
        """The service's ``GET /v1/models``: models, atlases and limits."""
        url = self.url[: -len(_ANNOTATE_PATH)] + "/v1/models"
        with self._http() as http:
            response = self._get(http, url)
        return response.json()

    def _get(self, http: httpx.Client, url: str) -> httpx.Response:
        import httpx

        try:
            response = http.get(url)
        except httpx.TransportError as exc:
            msg = f"could not reach {url} ({type(exc).__name__}: {exc})."
            raise RemoteError(msg, code="remote_unreachable") from None
        if response.status_code >= 400:
            raise _error_from(response, url)
        return response



def _remote_engine(atlas: str | None = None, *, endpoint: str, model: str = "markers",
                   api_key: str | None = None, transport: str = "arrow",
                   tissue: str | None = None, min_gene_fraction: float | None = None,
                   max_concurrency: int = 4,
                   timeout: float = 300.0, retries: int = 5, backoff: float = 0.5,
                   max_backoff: float = 60.0, split_too_large: bool = True) -> RemoteClient:
    return RemoteClient(endpoint, api_key=api_key, transport=transport, model=model, atlas=atlas,
                        tissue=tissue, min_gene_fraction=min_gene_fraction,
                        max_concurrency=max_concurrency, timeout=timeout,
                        retries=retries, backoff=backoff, max_backoff=max_backoff,
                        split_too_large=split_too_large)


register_engine("remote", _remote_engine,
                "a service speaking the Cell Atlas annotate contract (bridge.annotate(..., "
                "endpoint=URL))", serve=False)
