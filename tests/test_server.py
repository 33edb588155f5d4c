"""The annotation service over real HTTP: ``python -m bridge serve`` on a loopback port.

Covers both transports, auth, every malformed-request error (status, code, hint), request
ids in headers and logs, concurrent requests that must not mix, and the companion endpoints.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pyarrow as pa
import pytest

from bridge import InputError
from bridge._contract.wire import ARROW_MEDIA_TYPE, matrix_arrow_body, sparse_to_payload

pytest.register_assert_rewrite("tests._server")
from tests._server import (  # noqa: E402
    API_KEY,
    MAX_BODY_MB,
    MAX_CELLS,
    OTHER_KEY,
    LiveServer,
    ThreadServer,
    marker_gene_cells,
    synthetic_cells,
)

pytest_plugins = ["tests._server"]

ANNOTATE = "/v1/singlecell/annotate"


def tutorial_payload(n_cells: int = 50, seed: int = 5, **extra: Any) -> dict[str, Any]:
    m = synthetic_cells(n_cells, seed=seed)
    payload = sparse_to_payload(m.X, m.genes.tolist())
    payload.update({"model": "reference", "reference_atlas": "synthetic", **extra})
    return payload


def post_json(server: LiveServer, body: Any, path: str = ANNOTATE, key: str = API_KEY,
              **kw: Any) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {"Content-Type": "application/json", **server.headers(key), **kw.pop("headers", {})}
    return httpx.post(server.url + path, content=content, headers=headers, timeout=60, **kw)


def assert_error(response: httpx.Response, status: int, code: str, phrase: str = "") -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert error["code"] == code
    assert error["message"] and error["hint"]
    assert error["request_id"] == response.headers["x-request-id"]
    assert phrase.lower() in (error["message"] + " " + error["hint"]).lower()
    return error


# -- service endpoints ----------------------------------------------------------------------
def test_healthz_needs_no_key_and_carries_a_request_id(live_server: LiveServer) -> None:
    response = httpx.get(live_server.url + "/healthz")
    assert response.status_code == 200
    assert response.json()["status"] == "ok"
    assert len(response.headers["x-request-id"]) >= 16


def test_request_id_is_echoed_and_logged(live_server: LiveServer) -> None:
    rid = "trace-42-abc"
    response = post_json(live_server, tutorial_payload(10), headers={"X-Request-ID": rid})
    assert response.status_code == 200
    assert response.headers["x-request-id"] == rid
    # Access log and the computation's own log line (in a worker thread) both carry it.
    # The access line is written once the reply is sent, so it may trail the reply a little.
    for _ in range(100):
        lines = [ln for ln in live_server.log.read_text().splitlines() if f"[{rid}]" in ln]
        if any(ANNOTATE in ln and "-> 200" in ln for ln in lines):
            break
        time.sleep(0.05)
    assert any("annotated 10 cells" in ln for ln in lines)
    assert any(ANNOTATE in ln and "-> 200" in ln for ln in lines)


def test_models_lists_models_atlases_and_limits(live_server: LiveServer) -> None:
    body = httpx.get(live_server.url + "/v1/models", headers=live_server.headers()).json()
    models = {m["name"]: m for m in body["models"]}
    assert models["reference"]["atlases"] == ["synthetic"]
    assert body["limits"]["max_cells"] == MAX_CELLS
    assert ARROW_MEDIA_TYPE in body["transports"]


def test_openapi_documents_the_endpoints(live_server: LiveServer) -> None:
    spec = httpx.get(live_server.url + "/openapi.json").json()
    for path in (ANNOTATE, "/v1/singlecell/embed", "/v1/singlecell/markers", "/v1/models",
                 "/healthz"):
        assert path in spec["paths"]
    content = spec["paths"][ANNOTATE]["post"]["requestBody"]["content"]
    assert set(content) == {"application/json", ARROW_MEDIA_TYPE}


# -- auth -----------------------------------------------------------------------------------
def test_missing_key_is_401_with_bearer_challenge(live_server: LiveServer) -> None:
    response = httpx.post(live_server.url + ANNOTATE, json=tutorial_payload(5))
    assert_error(response, 401, "missing_api_key", "Authorization: Bearer")
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert_error(httpx.get(live_server.url + "/v1/models"), 401, "missing_api_key")


def test_bad_key_is_401_and_never_logged(live_server: LiveServer) -> None:
    bad = "not-a-valid-key-xyz"
    assert_error(post_json(live_server, tutorial_payload(5), key=bad), 401, "invalid_api_key")
    log = live_server.log.read_text()
    assert bad not in log
    assert API_KEY not in log


def test_every_key_in_the_file_works(live_server: LiveServer) -> None:
    assert post_json(live_server, tutorial_payload(5), key=OTHER_KEY).status_code == 200


def test_keys_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from bridge.server import Settings, create_app

    monkeypatch.setenv("SCBRIDGE_API_KEYS", "env-key-aaaaaaaa, env-key-bbbbbbbb")
    with ThreadServer(create_app(Settings())) as server:
        url = server.url + "/v1/models"
        ok = httpx.get(url, headers={"Authorization": "Bearer env-key-bbbbbbbb"})
        assert ok.status_code == 200
        assert httpx.get(url, headers={"Authorization": "Bearer nope"}).status_code == 401


def test_a_server_without_keys_refuses_to_start(monkeypatch: pytest.MonkeyPatch) -> None:
    from bridge.server import Settings, create_app

    monkeypatch.delenv("SCBRIDGE_API_KEYS", raising=False)
    with pytest.raises(InputError, match="no API keys"):
        create_app(Settings())


# -- annotate, both transports --------------------------------------------------------------
def test_annotate_tutorial_json(live_server: LiveServer) -> None:
    payload = tutorial_payload(40)
    response = post_json(live_server, payload)
    assert response.status_code == 200, response.text
    body = response.json()
    assert len(body["calls"]) == 40
    first = body["calls"][0]
    assert {"label", "confidence", "alternates", "markers", "ontology_id"} <= set(first)
    assert 0.0 <= first["confidence"] <= 1.0
    assert body["metadata"]["scbridge.atlas"] == "synthetic"
    # The server's file path never reaches a client.
    assert str(live_server.reference) not in response.text


def test_annotate_arrow_stream(live_server: LiveServer) -> None:
    m = synthetic_cells(60, seed=9)
    response = httpx.post(
        live_server.url + ANNOTATE, content=matrix_arrow_body(m),
        params={"model": "reference", "reference_atlas": "synthetic"},
        headers={"Content-Type": ARROW_MEDIA_TYPE, "Accept": ARROW_MEDIA_TYPE,
                 **live_server.headers()})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == ARROW_MEDIA_TYPE
    table = pa.ipc.open_stream(response.content).read_all()
    assert table.column("cell").to_pylist() == m.cells.tolist()
    assert table.schema.field("label").type == pa.dictionary(pa.int32(), pa.string())
    truth = m.obs.column("label").to_pylist()
    called = table.column("label").to_pylist()
    assert np.mean([a == b for a, b in zip(truth, called, strict=True)]) > 0.9


def test_markers_model_levels_and_tissue_in_json_and_arrow(live_server: LiveServer) -> None:
    m = marker_gene_cells(60, seed=5)
    payload = {**sparse_to_payload(m.X, m.genes.tolist()), "model": "markers",
               "tissue": "blood"}
    reply = post_json(live_server, payload)
    assert reply.status_code == 200, reply.text
    calls = reply.json()["calls"]
    assert {c["label_l1"] for c in calls} <= {"immune", "erythroid/megakaryocyte", None}
    assert all(c["label_l2"] for c in calls if c["label"] != "Unknown")
    assert all("unknown_reason" in c for c in calls)
    context = json.loads(reply.json()["metadata"]["scbridge.tissue"])
    assert context == {"tissues": ["blood"], "source": "given"}
    arrow = httpx.post(live_server.url + ANNOTATE, content=matrix_arrow_body(m),
                       params={"model": "markers", "tissue": "PBMC"},
                       headers={"Content-Type": ARROW_MEDIA_TYPE, "Accept": ARROW_MEDIA_TYPE,
                                **live_server.headers()})
    assert arrow.status_code == 200, arrow.text
    table = pa.ipc.open_stream(arrow.content).read_all()
    for name in ("label_l1", "label_l2", "unknown_reason"):
        assert table.schema.field(name).type == pa.dictionary(pa.int32(), pa.string())
    assert table.column("label_l2").to_pylist() == [c["label_l2"] for c in calls]
    bad = post_json(live_server, {**payload, "tissue": "pancreass"})
    assert_error(bad, 422, "unknown_tissue", "did you mean 'pancreas'")


def test_arrow_request_with_json_reply(live_server: LiveServer) -> None:
    m = synthetic_cells(20, seed=2)
    response = httpx.post(live_server.url + ANNOTATE, content=matrix_arrow_body(m),
                          params={"model": "reference"},
                          headers={"Content-Type": ARROW_MEDIA_TYPE, "Accept": "application/json",
                                   **live_server.headers()})
    assert response.status_code == 200
    assert len(response.json()["calls"]) == 20


def test_concurrent_requests_do_not_mix(live_server: LiveServer) -> None:
    """Different matrices in parallel: each reply belongs to its own request."""
    matrices = [synthetic_cells(30 + 7 * i, seed=100 + i, prefix=f"r{i}_") for i in range(8)]

    def one(m):
        response = httpx.post(live_server.url + ANNOTATE, content=matrix_arrow_body(m),
                              params={"model": "reference"}, timeout=60,
                              headers={"Content-Type": ARROW_MEDIA_TYPE, **live_server.headers()})
        assert response.status_code == 200, response.text
        return pa.ipc.open_stream(response.content).read_all()

    with ThreadPoolExecutor(8) as pool:
        tables = list(pool.map(one, matrices))
    for m, table in zip(matrices, tables, strict=True):
        assert table.column("cell").to_pylist() == m.cells.tolist()


# -- every malformed request ----------------------------------------------------------------
def _matrix_payload(**matrix: Any) -> dict[str, Any]:
    base = {"indptr": [0, 2, 3], "indices": [0, 2, 1], "data": [1.0, 2.0, 3.0], "shape": [2, 3]}
    base.update(matrix)
    return {"genes": ["GENE0", "GENE1", "GENE2"], "matrix": base, "model": "reference"}


@pytest.mark.parametrize(("matrix", "code", "phrase"), [
    ({"shape": [2]}, "invalid_shape", "[n_cells, n_genes]"),
    ({"shape": [2, -3]}, "invalid_shape", "n_cells"),
    ({"data": [1.0, 2.0]}, "shape_mismatch", "same length"),
    ({"indptr": [0, 2, 2]}, "shape_mismatch", "ends at 2"),
    ({"indptr": [0, 3]}, "indptr_length", "n_cells + 1"),
    ({"indptr": [0, 2, 3, 3]}, "indptr_length", "needs n_cells + 1 = 3"),
    ({"indptr": [0, 3, 2, 3], "shape": [3, 3]}, "indptr_not_monotone", "never decrease"),
    ({"indptr": [1, 2, 3]}, "indptr_not_monotone", "start at 0"),
    ({"indices": [0, 7, 1]}, "index_out_of_range", "gene index 7"),
    ({"indices": [0, -1, 1]}, "index_out_of_range", "gene index -1"),
    ({"indices": [0, 1.5, 1]}, "invalid_payload", "integers"),
    ({"data": [1.0, "x", 2.0]}, "invalid_payload", "numbers"),
    ({"data": [1.0, -2.0, 3.0]}, "invalid_values", "negative"),
    ({"indices": [2, 2, 1]}, "duplicate_indices", "same gene index twice"),
])
def test_malformed_matrix(live_server: LiveServer, matrix: dict, code: str, phrase: str) -> None:
    assert_error(post_json(live_server, _matrix_payload(**matrix)), 422, code, phrase)


def test_genes_do_not_match_columns(live_server: LiveServer) -> None:
    payload = _matrix_payload()
    payload["genes"] = ["GENE0", "GENE1"]
    assert_error(post_json(live_server, payload), 422, "genes_mismatch", "one gene id per")


def test_duplicated_genes(live_server: LiveServer) -> None:
    payload = _matrix_payload()
    payload["genes"] = ["GENE0", "GENE0", "GENE2"]
    assert_error(post_json(live_server, payload), 422, "invalid_genes", "duplicated")


def test_non_finite_values(live_server: LiveServer) -> None:
    # Python's json writes NaN / Infinity tokens (allow_nan=True); the server refuses them.
    body = json.dumps(_matrix_payload(data=[1.0, float("nan"), 3.0])).encode()
    assert_error(post_json(live_server, body), 422, "non_finite_values", "NaN or Inf")
    body = json.dumps(_matrix_payload(data=[1.0, 2.0, float("inf")])).encode()
    assert_error(post_json(live_server, body), 422, "non_finite_values", "cell '1'")


def test_unknown_model_lists_the_available_ones(live_server: LiveServer) -> None:
    payload = tutorial_payload(5, model="geneformer")
    error = assert_error(post_json(live_server, payload), 422, "unknown_model", "geneformer")
    assert "reference" in error["message"]


def test_unknown_atlas_lists_the_available_ones(live_server: LiveServer) -> None:
    payload = tutorial_payload(5, reference_atlas="/etc/passwd")
    error = assert_error(post_json(live_server, payload), 422, "unknown_atlas", "available")
    assert "synthetic" in error["message"]


def test_too_many_cells_is_413_with_a_hint_to_chunk(live_server: LiveServer) -> None:
    payload = _matrix_payload(shape=[MAX_CELLS + 1, 3])
    error = assert_error(post_json(live_server, payload), 413, "too_many_cells", "chunk_size")
    assert f"{MAX_CELLS:,}" in error["message"]
    m = synthetic_cells(MAX_CELLS + 1, n_genes=20, seed=1)
    response = httpx.post(live_server.url + ANNOTATE, content=matrix_arrow_body(m),
                          headers={"Content-Type": ARROW_MEDIA_TYPE, **live_server.headers()})
    assert_error(response, 413, "too_many_cells", "chunk")


def test_body_too_large_is_413(live_server: LiveServer) -> None:
    body = b"[" + b"0," * (MAX_BODY_MB * 1024 * 1024 // 2) + b"0]"
    assert_error(post_json(live_server, body), 413, "body_too_large", "chunk_size")


def test_body_too_large_streamed_without_content_length(live_server: LiveServer) -> None:
    def chunks():
        for _ in range(MAX_BODY_MB + 1):
            yield b" " * (1024 * 1024)

    response = httpx.post(live_server.url + ANNOTATE, content=chunks(), timeout=60,
                          headers={"Content-Type": "application/json", **live_server.headers()})
    assert_error(response, 413, "body_too_large")


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", ""])
def test_wrong_content_type_is_415(live_server: LiveServer, content_type: str) -> None:
    response = httpx.post(live_server.url + ANNOTATE, content=b"genes=1",
                          headers={"Content-Type": content_type, **live_server.headers()})
    assert_error(response, 415, "unsupported_media_type", ARROW_MEDIA_TYPE)


def test_bad_json_is_400(live_server: LiveServer) -> None:
    assert_error(post_json(live_server, b'{"genes": [1, 2'), 400, "invalid_json", "valid JSON")


@pytest.mark.parametrize(("body", "phrase"), [
    ([1, 2, 3], "must be an object"),
    ({"genes": ["A"]}, "lacks matrix"),
    ({"genes": "A", "matrix": {"indptr": [0], "indices": [], "data": [], "shape": [0, 1]}},
     "list of gene id"),
    ({"genes": ["A"], "matrix": {"indptr": [0, 0]}}, "indptr, indices, data and shape"),
    ({"genes": ["A"], "matrix": {"indptr": [[0], [0]], "indices": [], "data": [],
                                 "shape": [1, 1]}}, "integers"),
])
def test_json_of_the_wrong_form_is_422(live_server: LiveServer, body: Any, phrase: str) -> None:
    assert_error(post_json(live_server, body), 422, "invalid_payload", phrase)


def test_empty_matrix_is_422(live_server: LiveServer) -> None:
    payload = {"genes": ["A"], "matrix": {"indptr": [0], "indices": [], "data": [],
                                          "shape": [0, 1]}}
    assert_error(post_json(live_server, payload), 422, "invalid_shape", "at least one cell")


def test_corrupt_arrow_is_400(live_server: LiveServer) -> None:
    good = matrix_arrow_body(synthetic_cells(20, seed=4))
    for body in (b"not arrow at all", good[: len(good) // 2]):
        response = httpx.post(live_server.url + ANNOTATE, content=body,
                              headers={"Content-Type": ARROW_MEDIA_TYPE, **live_server.headers()})
        assert_error(response, 400, "invalid_arrow", "Arrow")


def test_arrow_without_the_format_stamp_is_400(live_server: LiveServer) -> None:
    sink = pa.BufferOutputStream()
    table = pa.table({"x": [1, 2]})
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    response = httpx.post(live_server.url + ANNOTATE, content=sink.getvalue().to_pybytes(),
                          headers={"Content-Type": ARROW_MEDIA_TYPE, **live_server.headers()})
    assert_error(response, 400, "invalid_arrow", "not an scbridge Arrow CSR")


def test_arrow_values_out_of_range_and_non_finite(live_server: LiveServer) -> None:
    m = synthetic_cells(10, n_genes=30, seed=4)
    m.X.indices[3] = 99  # beyond 30 genes
    response = httpx.post(live_server.url + ANNOTATE, content=matrix_arrow_body(m),
                          headers={"Content-Type": ARROW_MEDIA_TYPE, **live_server.headers()})
    assert_error(response, 422, "index_out_of_range", "gene index 99")
    m = synthetic_cells(10, n_genes=30, seed=4)
    m.X.data[5] = np.nan
    response = httpx.post(live_server.url + ANNOTATE, content=matrix_arrow_body(m),
                          headers={"Content-Type": ARROW_MEDIA_TYPE, **live_server.headers()})
    assert_error(response, 422, "non_finite_values", "'cell0'")


def test_invalid_query_parameter_is_422(live_server: LiveServer) -> None:
    m = synthetic_cells(20, seed=4)
    response = httpx.post(live_server.url + "/v1/singlecell/embed", content=matrix_arrow_body(m),
                          params={"n_components": 0},
                          headers={"Content-Type": ARROW_MEDIA_TYPE, **live_server.headers()})
    assert_error(response, 422, "invalid_parameter", "n_components")


def test_gene_ids_the_model_does_not_know(live_server: LiveServer) -> None:
    payload = _matrix_payload()
    payload["genes"] = ["ENSG01", "ENSG02", "ENSG03"]
    assert_error(post_json(live_server, payload), 422, "gene_ids", "genes")


def test_unknown_route_uses_the_error_format(live_server: LiveServer) -> None:
    assert_error(httpx.get(live_server.url + "/v2/nothing"), 404, "not_found")


def test_server_survives_a_burst_of_bad_requests(live_server: LiveServer) -> None:
    bodies = [b"\x00" * 100, b"{}", b"[]", b'{"genes": null, "matrix": null}', b"1e999999"]

    def send(body: bytes) -> int:
        return post_json(live_server, body).status_code

    with ThreadPoolExecutor(4) as pool:
        codes = list(pool.map(send, bodies * 4))
    assert all(400 <= c < 500 for c in codes)
    assert httpx.get(live_server.url + "/healthz").status_code == 200


# -- companion endpoints --------------------------------------------------------------------
def test_embed_json_and_arrow(live_server: LiveServer) -> None:
    m = synthetic_cells(80, seed=6)
    payload = {**sparse_to_payload(m.X, m.genes.tolist()), "n_components": 5}
    response = post_json(live_server, payload, path="/v1/singlecell/embed")
    assert response.status_code == 200, response.text
    vectors = response.json()["embeddings"]
    assert len(vectors) == 80 and len(vectors[0]) == 5
    response = httpx.post(live_server.url + "/v1/singlecell/embed", content=matrix_arrow_body(m),
                          params={"n_components": 4},
                          headers={"Content-Type": ARROW_MEDIA_TYPE, **live_server.headers()})
    table = pa.ipc.open_stream(response.content).read_all()
    assert table.column("cell").to_pylist() == m.cells.tolist()
    assert table.schema.field("embedding").type == pa.list_(pa.float32(), 4)


def test_markers_json_and_arrow(live_server: LiveServer) -> None:
    m = synthetic_cells(120, seed=7)
    labels = m.obs.column("label").to_pylist()
    payload = {**sparse_to_payload(m.X, m.genes.tolist()), "labels": labels, "top_n": 5}
    response = post_json(live_server, payload, path="/v1/singlecell/markers")
    assert response.status_code == 200, response.text
    rows = response.json()["markers"]
    b_cell = [r["gene"] for r in rows if r["label"] == "B cell"]
    # B cells over-express GENE0..GENE19 in the synthetic data.
    assert b_cell and all(int(g[4:]) < 20 for g in b_cell)
    # Arrow: the labels travel as a 'label' column of the Arrow CSR stream.
    from bridge.io.arrow import write_arrow

    sink = pa.BufferOutputStream()
    write_arrow(m, sink, stream=True)
    response = httpx.post(live_server.url + "/v1/singlecell/markers",
                          content=sink.getvalue().to_pybytes(), params={"top_n": 3},
                          headers={"Content-Type": ARROW_MEDIA_TYPE, **live_server.headers()})
    assert response.status_code == 200, response.text
    table = pa.ipc.open_stream(response.content).read_all()
    assert set(table.column("label").to_pylist()) == {"B cell", "T cell", "Monocyte"}


def test_markers_needs_one_label_per_cell(live_server: LiveServer) -> None:
    m = synthetic_cells(30, seed=7)
    payload = {**sparse_to_payload(m.X, m.genes.tolist()), "labels": ["B cell"] * 29}
    response = post_json(live_server, payload, path="/v1/singlecell/markers")
    assert_error(response, 422, "invalid_labels", "30 strings")
    response = httpx.post(live_server.url + "/v1/singlecell/markers",
                          content=matrix_arrow_body(m),
                          headers={"Content-Type": ARROW_MEDIA_TYPE, **live_server.headers()})
    assert_error(response, 422, "invalid_payload", "'label' column")


def test_worker_settings_round_trip(monkeypatch: pytest.MonkeyPatch) -> None:
    from bridge.server import Settings

    s = Settings(api_keys=("secret-key-123",), atlases={"reference": {"a": "/x"}},
                 models=("reference",), max_cells=7)
    monkeypatch.setenv("SCBRIDGE_SERVER_SETTINGS", s.to_env())
    back = Settings.from_env()
    assert back.max_cells == 7 and back.atlases == s.atlases and back.models == ("reference",)
    assert back.api_keys == ()  # keys never travel through the environment settings





@pytest.mark.parametrize("codec", ["lz4", "zstd"])
def test_compressed_arrow_is_refused(live_server: LiveServer, codec: str) -> None:
    from bridge.io.arrow import arrow_schema, batches_from_matrix

    m = synthetic_cells(20, seed=4)
    schema = arrow_schema(m)
    sink = pa.BufferOutputStream()
    options = pa.ipc.IpcWriteOptions(compression=codec)
    with pa.ipc.new_stream(sink, schema, options=options) as writer:
        for batch in batches_from_matrix(m, schema=schema):
            writer.write_batch(batch)
    response = httpx.post(live_server.url + ANNOTATE, content=sink.getvalue().to_pybytes(),
                          headers={"Content-Type": ARROW_MEDIA_TYPE, **live_server.headers()})
    assert_error(response, 400, "compressed_arrow", "without compression")


def test_unsorted_indices_give_the_same_calls(live_server: LiveServer) -> None:
    m = synthetic_cells(30, seed=12)
    payload = sparse_to_payload(m.X, m.genes.tolist())
    payload.update(model="reference")
    first = post_json(live_server, payload).json()["calls"]
    # Reverse the gene order inside every cell (same matrix, unsorted indices).
    indptr, indices, data = (payload["matrix"][k] for k in ("indptr", "indices", "data"))
    for a, b in itertools.pairwise(indptr):
        indices[a:b], data[a:b] = indices[a:b][::-1], data[a:b][::-1]
    assert post_json(live_server, payload).json()["calls"] == first


def test_several_server_processes(tmp_path: Path, reference_file: Path) -> None:
    """``--workers 2``: settings reach the worker processes, keys are re-read from the file."""
    import subprocess
    import sys

    from tests._server import free_port, subprocess_env, wait_healthy

    keys = tmp_path / "keys.txt"
    keys.write_text(API_KEY + "\n")
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "bridge", "serve", "--port", str(port), "--api-keys", str(keys),
         "--workers", "2", "--max-cells", "77", "--reference", f"synthetic={reference_file}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=subprocess_env())
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, proc)
        body = httpx.get(url + "/v1/models", headers={"Authorization": f"Bearer {API_KEY}"})
        assert body.json()["limits"]["max_cells"] == 77
        payload = tutorial_payload(10)
        response = httpx.post(url + ANNOTATE, json=payload,
                              headers={"Authorization": f"Bearer {API_KEY}"})
        assert response.status_code == 200 and len(response.json()["calls"]) == 10
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def test_busy_server_answers_503_with_retry_after(reference_file: Path) -> None:
    """A body beyond the bytes in flight is refused at once (503 + Retry-After), not queued.

    (Bytes that arrived count, never a declared length, and a slow upload holds only the
    bytes it sent: see tests/test_server_abuse.py.)"""
    from bridge.server import Settings, create_app

    body = json.dumps(tutorial_payload(20)).encode()
    settings = Settings(api_keys=(API_KEY,), max_inflight_bytes=len(body) + 50,
                        atlases={"reference": {"synthetic": str(reference_file)}})
    release = threading.Event()

    def slow_body():
        yield body[:100]
        release.wait(timeout=30)  # holds 100 bytes of the budget while the second arrives
        yield body[100:]

    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {API_KEY}"}
    app = create_app(settings)
    with ThreadServer(app) as server:
        with ThreadPoolExecutor(1) as pool:
            first = pool.submit(httpx.post, server.url + ANNOTATE, content=slow_body(),
                                headers=headers, timeout=60)
            for _ in range(500):  # until the first request holds its bytes
                if app.state.admission.inflight_bytes >= 100:
                    break
                time.sleep(0.01)
            busy = httpx.post(server.url + ANNOTATE, content=body, headers=headers)
            release.set()
            assert first.result().status_code == 200
        assert_error(busy, 503, "server_busy", "Retry-After")
        assert busy.headers["retry-after"] == "1"
        assert httpx.post(server.url + ANNOTATE, content=body, headers=headers).status_code == 200


def test_no_auth_server_needs_no_key(reference_file: Path) -> None:
    from bridge.server import Settings, create_app

    app = create_app(Settings(allow_anonymous=True, api_keys=(),
                              atlases={"reference": {"synthetic": str(reference_file)}}))
    with ThreadServer(app) as server:
        response = httpx.post(server.url + ANNOTATE, json=tutorial_payload(5))
        assert response.status_code == 200


@pytest.mark.parametrize(("args", "phrase"), [
    ([], "no API keys"),
    (["--api-keys", "/nonexistent/keys.txt"], "does not exist"),
    (["--no-auth", "--reference", "atlas=/nonexistent.parquet"], "does not exist"),
    (["--no-auth", "--reference", "no-equals-sign"], "NAME=PATH"),
    (["--no-auth", "--models", "geneformer"], "unknown model"),
])
def test_serve_refuses_bad_settings_before_listening(args: list[str], phrase: str) -> None:
    import subprocess
    import sys

    from tests._server import subprocess_env

    env = {k: v for k, v in subprocess_env().items() if k != "SCBRIDGE_API_KEYS"}
    done = subprocess.run([sys.executable, "-m", "bridge", "serve", "--port", "9", *args],
                          capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 2
    assert phrase in done.stderr


def test_json_bodies_have_their_own_smaller_limit(reference_file: Path) -> None:
    from bridge.server import Settings, create_app

    settings = Settings(api_keys=(API_KEY,), max_body_bytes=8 << 20,
                        max_json_body_bytes=200_000,
                        atlases={"reference": {"synthetic": str(reference_file)}})
    m = synthetic_cells(600, seed=2)
    headers = {"Authorization": f"Bearer {API_KEY}"}
    with ThreadServer(create_app(settings)) as server:
        payload = {**sparse_to_payload(m.X, m.genes.tolist()), "model": "reference"}
        response = httpx.post(server.url + ANNOTATE, json=payload, headers=headers)
        assert_error(response, 413, "body_too_large", "JSON request body")
        assert len(response.request.content) > 200_000
        arrow = matrix_arrow_body(m)
        assert len(arrow) > 200_000  # the same cells as Arrow fit
        response = httpx.post(server.url + ANNOTATE, content=arrow, params={"model": "reference"},
                              headers={"Content-Type": ARROW_MEDIA_TYPE, **headers})
        assert response.status_code == 200
