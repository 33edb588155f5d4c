"""The remote client against real servers on loopback.

Equality with the local engine over several chunks (order kept) for both transports, the JSON
body byte for byte as ``requests.post(json=...)`` sends it, retries against servers that fail
on purpose (503 / 429 with Retry-After, a server that is not up yet), errors that must not be
retried, and replies that do not belong to the request.
"""

from __future__ import annotations

import email.utils
import json
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pyarrow as pa
import pytest
from starlette.applications import Starlette
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from bridge import CellMatrix, InputError, RemoteClient, RemoteError
from bridge._annotate import annotate, call_cells
from bridge._contract import ChunkCalls, chunk_table
from bridge._contract.wire import (
    ARROW_MEDIA_TYPE,
    arrow_bytes,
    decode_arrow_request,
    json_body,
)
from bridge.engines.remote import annotate_url
from bridge.server import Settings, create_app

pytest.register_assert_rewrite("tests._server")
from tests._server import (  # noqa: E402
    API_KEY,
    MAX_CELLS,
    LiveServer,
    Scripted,
    ThreadServer,
    free_port,
    marker_gene_cells,
    synthetic_cells,
)

pytest_plugins = ["tests._server"]

CORE = ["cell", "label", "ontology_id", "confidence", "alternates", "markers"]


def local_calls(matrix: CellMatrix, reference: Path) -> pa.Table:
    """What the local engine returns for the same model and atlas."""
    return call_cells(matrix, model="reference", atlas=str(reference), progress=False)


def meta(table: pa.Table, key: str) -> str:
    return table.schema.metadata[f"scbridge.{key}".encode()].decode()


@pytest.fixture(scope="module")
def query() -> CellMatrix:
    return synthetic_cells(1_000, seed=21, prefix="q")


@pytest.fixture(scope="module")
def scripted_app(reference_file: Path) -> Any:
    atlases = {"reference": {"synthetic": str(reference_file)}}
    settings = Settings(api_keys=(API_KEY,), atlases=atlases, max_cells=MAX_CELLS)
    return create_app(settings)


# -- the same table as the local engine -----------------------------------------------------
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("transport", ["arrow", "json"])
def test_remote_equals_local_across_chunks(live_server: LiveServer, query: CellMatrix,
                                           transport: str, dtype: str) -> None:
    # JSON carries no dtype (R sends doubles, h5ad often float32): both must give the same calls.
    X = query.X.astype(dtype)
    query = CellMatrix(X, query.cells, query.genes, source=query.source)
    client = RemoteClient(live_server.url, api_key=API_KEY, transport=transport,
                          model="reference", atlas="synthetic", chunk_size=130,
                          max_concurrency=3)
    remote = client.annotate(query, progress=False)
    local = local_calls(query, live_server.reference)
    assert remote.column("cell").to_pylist() == query.cells.tolist()  # 8 chunks, order kept
    assert remote.schema.names == local.schema.names
    assert remote.equals(local), (
        "remote calls differ from the local engine's; with JSON (which carries no dtype) this "
        "means the engine's results depend on float32 vs float64 input")
    for key in ("engine", "model", "parameters"):
        assert meta(remote, key) == meta(local, key)
    assert meta(remote, "atlas") == "synthetic"
    assert meta(remote, "transport") == transport


@pytest.mark.parametrize("transport", ["arrow", "json"])
def test_default_markers_model_equals_local(live_server: LiveServer, transport: str) -> None:
    cells = marker_gene_cells(450, seed=3)
    client = RemoteClient(live_server.url, api_key=API_KEY, transport=transport,
                          chunk_size=100, max_concurrency=2, tissue="blood")
    remote = client.annotate(cells, progress=False)
    local = call_cells(cells, progress=False, tissue="blood")
    assert remote.equals(local)
    assert meta(remote, "atlas") == meta(local, "atlas") == "default"
    assert meta(remote, "model") == "markers"


@pytest.mark.parametrize("transport", ["arrow", "json"])
def test_an_inferred_tissue_context_is_one_for_the_whole_run(live_server: LiveServer,
                                                              transport: str) -> None:
    # The first 100-cell chunk holds only blood cells, the later ones liver: inferred per
    # chunk, the first chunk's context would be blood and the calls would depend on the chunk
    # size. The client asks the service once, on the cells the engine itself samples.
    from test_marker_engine import synthetic_matrix

    cells, _ = synthetic_matrix(["classical monocyte", "natural killer cell", "hepatocyte",
                                 "Kupffer cell", "hepatic stellate cell"], n_per_type=100,
                                seed=4)
    client = RemoteClient(live_server.url, api_key=API_KEY, transport=transport,
                          chunk_size=100, max_concurrency=2)
    remote = client.annotate(cells, progress=False)
    local = call_cells(cells, progress=False)
    assert remote.equals(local)
    context = json.loads(meta(remote, "tissue"))
    assert context == json.loads(meta(local, "tissue"))
    assert context["source"] == "inferred" and "liver" in context["tissues"]


@pytest.mark.parametrize("transport", ["arrow", "json"])
def test_an_inferred_absence_of_tissue_is_one_for_the_whole_run(live_server: LiveServer,
                                                                 transport: str) -> None:
    # No tissue inferred: every chunk expects only the types found in every tissue (the
    # client sends tissue='unknown'), as a local call on all the cells does; 'all' would let
    # the resident-looking macrophages be Kupffer cells.
    from test_unknown_tissue import _sample

    cells = _sample()
    client = RemoteClient(live_server.url, api_key=API_KEY, transport=transport,
                          chunk_size=40, max_concurrency=2)
    remote = client.annotate(cells, progress=False)
    local = call_cells(cells, progress=False)
    assert remote.equals(local)
    assert json.loads(meta(remote, "tissue")) == json.loads(meta(local, "tissue"))
    assert json.loads(meta(local, "tissue"))["source"] == "none"


@pytest.mark.parametrize("transport", ["arrow", "json"])
def test_min_gene_fraction_reaches_the_service(live_server: LiveServer, transport: str) -> None:
    # A panel of 8 of the engine's genes: refused by the service's default bar, annotated
    # with a lower one exactly as locally (a bar the client itself cannot apply).
    from test_marker_engine import synthetic_matrix

    from bridge.engines import get_engine

    matrix, _ = synthetic_matrix(["natural killer cell", "naive B cell"], n_per_type=10)
    engine_genes = set(get_engine("markers").genes)
    keep = [g for g in matrix.genes if g not in engine_genes]
    keep += [g for g in matrix.genes if g in engine_genes][:8]
    small = matrix.select_genes(sorted(keep))
    with pytest.raises(RemoteError) as info:
        annotate(small, endpoint=live_server.url, api_key=API_KEY, transport=transport,
                 qc=False, progress=False)
    assert info.value.code == "gene_ids"
    with pytest.warns(UserWarning, match="less reliable"):
        local = call_cells(small, min_gene_fraction=0.001, progress=False)
    remote = annotate(small, endpoint=live_server.url, api_key=API_KEY, transport=transport,
                      qc=False, progress=False, min_gene_fraction=0.001)
    assert remote.select(local.column_names).equals(local)
    with pytest.raises(InputError, match="min_gene_fraction"):
        RemoteClient(live_server.url, min_gene_fraction=2.0)
    for bad in (True, "0.1", 1.5):  # the service checks it too
        body = json.loads(json_body(small, model="markers", atlas=None))
        body["min_gene_fraction"] = bad
        reply = httpx.post(annotate_url(live_server.url), json=body,
                           headers={"Authorization": f"Bearer {API_KEY}"})
        assert reply.status_code == 422
        assert reply.json()["error"]["code"] == "invalid_parameter"


@pytest.mark.parametrize("transport", ["arrow", "json"])
def test_bridge_annotate_with_endpoint_equals_local(live_server: LiveServer, query: CellMatrix,
                                                    transport: str) -> None:
    local = annotate(query, model="reference", atlas=str(live_server.reference), progress=False)
    remote = annotate(query, model="reference", atlas="synthetic", endpoint=live_server.url,
                      api_key=API_KEY, transport=transport, chunk_size=300, progress=False)
    assert remote.column_names == local.column_names
    assert remote.equals(local)


def test_api_key_from_the_environment(live_server: LiveServer, query: CellMatrix,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SCBRIDGE_API_KEY", API_KEY)
    client = RemoteClient(live_server.url, model="reference", chunk_size=500)
    assert client.annotate(query.slice_cells(0, 20), progress=False).num_rows == 20
    assert API_KEY not in repr(client)


def test_empty_matrix_needs_no_request(query: CellMatrix) -> None:
    client = RemoteClient(f"http://127.0.0.1:{free_port()}", api_key=API_KEY, retries=0)
    assert client.annotate(query.slice_cells(0, 0), progress=False).num_rows == 0


# -- the JSON transport is the tutorial's, byte for byte ------------------------------------
def tutorial_sparse_to_payload(X: Any, genes: Any) -> dict[str, Any]:
    """The public Cell Atlas tutorial's function, as published."""
    from scipy.sparse import csr_matrix

    if not isinstance(X, csr_matrix):
        X = csr_matrix(X)
    return {
        "genes": list(genes),
        "matrix": {
            "indptr": X.indptr.tolist(),
            "indices": X.indices.tolist(),
            "data": X.data.tolist(),
            "shape": list(X.shape),
        },
    }


def test_json_body_is_what_requests_sends(scripted_app: Any) -> None:
    requests = pytest.importorskip("requests")
    m = synthetic_cells(300, seed=8)
    recorder = Scripted(scripted_app)
    with ThreadServer(recorder) as server:
        client = RemoteClient(server.url, api_key=API_KEY, transport="json", model="reference",
                              atlas="synthetic", chunk_size=200)
        client.annotate(m, progress=False)
    assert len(recorder.posts) == 2
    for headers, _ in recorder.posts:
        assert headers["content-type"] == "application/json"
        assert headers["authorization"] == f"Bearer {API_KEY}"
    sent = {b for _, b in recorder.posts}
    for chunk in m.iter_chunks(200):
        payload = tutorial_sparse_to_payload(chunk.X, chunk.genes)
        payload.update(model="reference", reference_atlas="synthetic")
        assert requests.Request("POST", "http://x", json=payload).prepare().body in sent
        assert json_body(chunk, model="reference", atlas="synthetic") in sent


def test_json_transport_refuses_nan_like_requests(query: CellMatrix) -> None:
    m = query.slice_cells(0, 5).materialize()
    m.X.data[0] = np.nan
    client = RemoteClient("http://127.0.0.1:9", api_key=API_KEY, transport="json", retries=0)
    with pytest.raises(InputError, match="NaN"):
        client.annotate(m, progress=False)


# -- retries --------------------------------------------------------------------------------
def test_retries_503_and_429_then_succeeds(scripted_app: Any, query: CellMatrix,
                                            reference_file: Path) -> None:
    script = [(503, {"Retry-After": "0"}), (429, {"Retry-After": "0"}), (502, {}), (500, {})]
    recorder = Scripted(scripted_app, script)
    with ThreadServer(recorder) as server:
        client = RemoteClient(server.url, api_key=API_KEY, model="reference", chunk_size=250,
                              max_concurrency=2, retries=5, backoff=0.01)
        table = client.annotate(query, progress=False)
    assert table.column("cell").to_pylist() == query.cells.tolist()
    assert len(recorder.posts) == 4 + 4  # four failures, then the four chunks
    assert table.equals(local_calls(query, reference_file))


def test_gives_up_after_the_retries(scripted_app: Any, query: CellMatrix) -> None:
    recorder = Scripted(scripted_app, [(503, {"Retry-After": "0"})] * 10)
    with ThreadServer(recorder) as server:
        client = RemoteClient(server.url, api_key=API_KEY, model="reference", retries=2,
                              backoff=0.01)
        with pytest.raises(RemoteError, match="503") as info:
            client.annotate(query.slice_cells(0, 10), progress=False)
    assert info.value.status == 503
    assert len(recorder.posts) == 3


def test_client_errors_are_not_retried(scripted_app: Any, query: CellMatrix) -> None:
    recorder = Scripted(scripted_app)
    with ThreadServer(recorder) as server:
        client = RemoteClient(server.url, api_key="wrong-key-123456", model="reference",
                              retries=5, backoff=0.01)
        with pytest.raises(RemoteError, match="401") as info:
            client.annotate(query.slice_cells(0, 10), progress=False)
    assert info.value.code == "invalid_api_key"
    assert "SCBRIDGE_API_KEY" in str(info.value)
    assert len(recorder.posts) == 1


def test_too_many_cells_tells_the_user_to_chunk(live_server: LiveServer) -> None:
    m = synthetic_cells(MAX_CELLS + 10, n_genes=30, seed=3)
    client = RemoteClient(live_server.url, api_key=API_KEY, model="reference",
                          chunk_size=MAX_CELLS + 10, retries=3, split_too_large=False)
    with pytest.raises(RemoteError, match="413") as info:
        client.annotate(m, progress=False)
    assert info.value.code == "too_many_cells"
    assert "chunk_size" in info.value.hint


def test_chunks_the_service_refuses_as_too_large_are_halved(scripted_app: Any,
                                                            reference_file: Path) -> None:
    """A 413 (too many cells here; too many bytes alike) makes the client split the chunk."""
    m = synthetic_cells(MAX_CELLS + 500, n_genes=40, seed=3)  # 2,500 cells, limit 2,000
    recorder = Scripted(scripted_app)
    with ThreadServer(recorder) as server:
        client = RemoteClient(server.url, api_key=API_KEY, model="reference",
                              chunk_size=m.n_cells, retries=0)
        table = client.annotate(m, progress=False)
    assert table.column("cell").to_pylist() == m.cells.tolist()
    assert len(recorder.posts) == 3  # the whole (413), then two halves of 1,250 cells
    assert table.equals(local_calls(m, reference_file))


def test_unknown_model_error_reaches_the_user(live_server: LiveServer, query: CellMatrix) -> None:
    client = RemoteClient(live_server.url, api_key=API_KEY, model="geneformer")
    with pytest.raises(RemoteError, match="geneformer") as info:
        client.annotate(query.slice_cells(0, 5), progress=False)
    assert info.value.code == "unknown_model"
    assert "request id" in str(info.value)  # what to quote to the service's administrator


def test_connection_errors_are_retried_until_the_server_is_up(scripted_app: Any,
                                                              query: CellMatrix) -> None:
    server = ThreadServer(scripted_app)
    starter = threading.Timer(0.5, server.__enter__)
    starter.start()
    try:
        client = RemoteClient(server.url, api_key=API_KEY, model="reference", retries=10,
                              backoff=0.2, max_backoff=1.0)
        table = client.annotate(query.slice_cells(0, 50), progress=False)
    finally:
        starter.join()
        server.__exit__(None, None, None)
    assert table.num_rows == 50


def test_unreachable_endpoint(query: CellMatrix) -> None:
    client = RemoteClient(f"http://127.0.0.1:{free_port()}", api_key=API_KEY, retries=1,
                          backoff=0.01)
    with pytest.raises(RemoteError, match="could not reach") as info:
        client.annotate(query.slice_cells(0, 5), progress=False)
    assert info.value.status is None


def test_retry_after_is_honoured() -> None:
    client = RemoteClient("http://127.0.0.1:1", backoff=0.5, max_backoff=8.0)
    request = httpx.Request("POST", "http://127.0.0.1:1")
    seconds = httpx.Response(429, headers={"Retry-After": "3"}, request=request)
    assert client._delay(0, seconds) == 3.0
    later = email.utils.formatdate(time.time() + 20, usegmt=True)
    dated = httpx.Response(503, headers={"Retry-After": later}, request=request)
    assert 15 <= client._delay(0, dated) <= 21
    plain = httpx.Response(503, request=request)
    delays = [client._delay(3, plain) for _ in range(50)]
    assert all(2.0 <= d <= 4.0 for d in delays)  # 0.5 * 2**3 = 4, half of it jittered
    assert len(set(delays)) > 1
    assert all(4.0 <= client._delay(10, plain) <= 8.0 for _ in range(10))  # capped


# -- replies that do not belong to the request ----------------------------------------------
def _wrong_cells_app() -> Starlette:
    async def annotate(request: Any) -> Response:
        matrix = decode_arrow_request(await request.body(), max_cells=10**6).matrix
        cells = list(reversed(matrix.cells.tolist()))
        n = len(cells)
        table = chunk_table(cells, ChunkCalls(labels=["B cell"] * n, confidence=np.ones(n)))
        return Response(arrow_bytes(table), media_type=ARROW_MEDIA_TYPE)

    async def short_json(request: Any) -> JSONResponse:
        return JSONResponse({"calls": [{"label": "B cell", "confidence": 1.0, "alternates": [],
                                        "markers": []}]})

    async def healthz(request: Any) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    return Starlette(routes=[Route("/v1/singlecell/annotate", annotate, methods=["POST"]),
                             Route("/json/v1/singlecell/annotate", short_json, methods=["POST"]),
                             Route("/healthz", healthz)])


def test_mixed_up_replies_are_refused(query: CellMatrix) -> None:
    with ThreadServer(_wrong_cells_app()) as server:
        client = RemoteClient(server.url, api_key=API_KEY, retries=0)
        with pytest.raises(RemoteError, match="other cells than were sent"):
            client.annotate(query.slice_cells(0, 10), progress=False)
        client = RemoteClient(server.url + "/json", api_key=API_KEY, transport="json", retries=0)
        with pytest.raises(RemoteError, match="1 calls for 10 cells"):
            client.annotate(query.slice_cells(0, 10), progress=False)


# -- endpoints ------------------------------------------------------------------------------
@pytest.mark.parametrize(("given", "expected"), [
    ("http://h:8000", "http://h:8000/v1/singlecell/annotate"),
    ("http://h:8000/", "http://h:8000/v1/singlecell/annotate"),
    ("https://api.example.org/v1", "https://api.example.org/v1/singlecell/annotate"),
    ("https://api.example.org/v1/singlecell/annotate",
     "https://api.example.org/v1/singlecell/annotate"),
])
def test_annotate_url(given: str, expected: str) -> None:
    assert annotate_url(given) == expected


def test_bad_client_arguments() -> None:
    with pytest.raises(InputError, match="http"):
        RemoteClient("ftp://x")
    with pytest.raises(InputError, match="transport"):
        RemoteClient("http://x", transport="grpc")  # type: ignore[arg-type]
    with pytest.raises(InputError, match="chunk_size"):
        RemoteClient("http://x", chunk_size=0)


def test_models_of_the_service(live_server: LiveServer) -> None:
    models = RemoteClient(live_server.url, api_key=API_KEY).models()
    assert "reference" in {m["name"] for m in models["models"]}


def test_cli_annotate_through_the_endpoint(live_server: LiveServer, query: CellMatrix,
                                           tmp_path: Path) -> None:
    """``scbridge annotate IN --endpoint URL`` gives the local command's table."""
    import subprocess
    import sys

    import pyarrow.parquet as pq

    from bridge import write
    from tests._server import subprocess_env

    source = write(query.slice_cells(0, 400), tmp_path / "query.arrow")
    env = subprocess_env(MY_SERVICE_KEY=API_KEY)
    common = [sys.executable, "-m", "bridge", "annotate", str(source), "--model", "reference",
              "--chunk-size", "150", "--quiet"]
    remote_cmd = [*common, "--out", str(tmp_path / "remote.parquet"), "--atlas", "synthetic",
                  "--endpoint", live_server.url, "--api-key-env", "MY_SERVICE_KEY",
                  "--transport", "json"]
    local_cmd = [*common, "--out", str(tmp_path / "local.parquet"), "--atlas",
                 str(live_server.reference)]
    for cmd in (remote_cmd, local_cmd):
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
        assert done.returncode == 0, done.stderr
    remote = pq.read_table(tmp_path / "remote.parquet")
    local = pq.read_table(tmp_path / "local.parquet")
    assert remote.num_rows == 400
    assert remote.equals(local)


@pytest.mark.parametrize("transport", ["arrow", "json"])
def test_embed_and_markers_through_the_service(live_server: LiveServer, transport: str) -> None:
    from bridge import embed, rank_marker_genes

    m = synthetic_cells(150, seed=31)
    labels = m.obs.column("label").to_pylist()
    client = RemoteClient(live_server.url, api_key=API_KEY, transport=transport)
    remote = client.embed(m, n_components=6)
    local = embed(m, n_components=6)
    assert remote.schema.field("embedding").type == pa.list_(pa.float32(), 6)
    assert remote.select(["cell", "embedding"]).equals(local.select(["cell", "embedding"]))
    remote = client.rank_marker_genes(m, labels, top_n=4)
    calls = pa.table({"cell": m.cells.tolist(), "label": labels})
    local = rank_marker_genes(m, calls, top_n=4)
    assert remote.equals(local)
    with pytest.raises(InputError, match="one label per cell"):
        client.rank_marker_genes(m, labels[:-1])


def test_slow_service_times_out(query: CellMatrix) -> None:
    import asyncio

    async def slow(request: Any) -> JSONResponse:
        await asyncio.sleep(1)
        return JSONResponse({"calls": []})

    async def healthz(request: Any) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    app = Starlette(routes=[Route("/v1/singlecell/annotate", slow, methods=["POST"]),
                            Route("/healthz", healthz)])
    with ThreadServer(app) as server:
        client = RemoteClient(server.url, api_key=API_KEY, timeout=0.2, retries=1,
                              backoff=0.01)
        with pytest.raises(RemoteError, match="ReadTimeout"):
            client.annotate(query.slice_cells(0, 5), progress=False)
