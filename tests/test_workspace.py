"""The browser workspace: its endpoints against a real ``scbridge serve`` on loopback, and the
page itself in a real headless Chromium driven by Playwright.

API tests: auth, key isolation, size limits, malformed uploads, job progress over server-sent
events, cancel, curation edits, every export, expiry, the per-key job limit, disk cap, one
work folder shared by two job managers (``--workers``).  Browser tests (``needs_browser``):
upload ``SeuratObject::pbmc_small`` saved by the real R, run, see the embedding drawn and the
label table filled, rename a label, download the calls and compare them with ``scbridge
annotate`` on the same file; malformed uploads; pan / zoom / lasso / relabel; the
``scbridge workspace`` command's one-time sign-in link.
"""

from __future__ import annotations

import csv
import gzip
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pyarrow as pa
import pytest

pytest.register_assert_rewrite("tests._server")
from tests._server import (  # noqa: E402
    API_KEY,
    OTHER_KEY,
    ThreadServer,
    free_port,
    marker_gene_cells,
    subprocess_env,
    wait_healthy,
)

from conftest import CHROMIUM, run_r  # noqa: E402

pytest_plugins = ["tests._server"]

WS = "/v1/workspace"
MAX_BODY_MB = 4
MAX_CELLS = 2_000
CHROMIUM_ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
FINISHED = ("done", "failed", "cancelled")
TESTIDS = ("api-key-input", "upload-input", "run-button", "job-status", "embedding-canvas",
           "label-table", "download-csv")


# -- a real server and data ---------------------------------------------------------------
@dataclass
class Workspace:
    url: str
    work_dir: Path
    log: Path

    def headers(self, key: str = API_KEY) -> dict[str, str]:
        return {"Authorization": f"Bearer {key}"}

    def get(self, path: str, key: str = API_KEY, **kw: Any) -> httpx.Response:
        return httpx.get(self.url + path, headers={**self.headers(key), **kw.pop("headers", {})},
                         timeout=120, **kw)

    def post(self, path: str, key: str = API_KEY, **kw: Any) -> httpx.Response:
        return httpx.post(self.url + path, headers={**self.headers(key), **kw.pop("headers", {})},
                          timeout=600, **kw)

    def delete(self, path: str, key: str = API_KEY) -> httpx.Response:
        return httpx.delete(self.url + path, headers=self.headers(key), timeout=60)

    def upload(self, path: Path, key: str = API_KEY, name: str | None = None) -> httpx.Response:
        return self.post(f"{WS}/uploads", key, params={"filename": name or path.name},
                         content=path.read_bytes())

    def start(self, path: Path, key: str = API_KEY, **options: Any) -> dict[str, Any]:
        uploaded = self.upload(path, key)
        assert uploaded.status_code == 201, uploaded.text
        created = self.post(f"{WS}/jobs", key, json={"upload_id": uploaded.json()["id"],
                                                     **options})
        assert created.status_code == 202, created.text
        return created.json()

    def events(self, job_id: str, key: str = API_KEY) -> list[dict[str, Any]]:
        """Every status the job's event stream sends, until it ends."""
        seen = []
        with httpx.stream("GET", f"{self.url}{WS}/jobs/{job_id}/events",
                          headers=self.headers(key), timeout=600) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            for line in response.iter_lines():
                if line.startswith("data:"):
                    seen.append(json.loads(line[5:]))
        return seen

    def run(self, path: Path, key: str = API_KEY, **options: Any) -> dict[str, Any]:
        job = self.start(path, key, **options)
        final = self.events(job["id"], key)[-1]
        assert final["state"] == "done", final
        return final

    def download(self, job_id: str, kind: str, key: str = API_KEY) -> httpx.Response:
        link = self.post(f"{WS}/jobs/{job_id}/downloads", key, json={"kind": kind})
        assert link.status_code == 200, link.text
        assert API_KEY not in link.json()["url"]
        return httpx.get(self.url + link.json()["url"], timeout=120)


def assert_error(response: httpx.Response, status: int, code: str, phrase: str = "") -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code
    assert error["message"] and error["hint"]
    assert error["request_id"] == response.headers["x-request-id"]
    assert phrase.lower() in (error["message"] + " " + error["hint"]).lower(), error
    return error


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Workspace]:
    """``python -m bridge serve`` with two keys, a 4 MiB upload limit and 2,000 cells a job."""
    tmp = tmp_path_factory.mktemp("workspace")
    keys = tmp / "keys.txt"
    keys.write_text(f"{API_KEY}\n{OTHER_KEY}\n")
    port = free_port()
    log = tmp / "server.log"
    work = tmp / "work"
    cmd = [sys.executable, "-m", "bridge", "serve", "--port", str(port), "--api-keys", str(keys),
           "--max-body-mb", str(MAX_BODY_MB), "--max-cells", str(MAX_CELLS),
           "--work-dir", str(work), "--log-level", "info"]
    with log.open("wb") as sink:
        proc = subprocess.Popen(cmd, stdout=sink, stderr=subprocess.STDOUT,
                                env=subprocess_env(SCBRIDGE_API_KEYS=""))
        url = f"http://127.0.0.1:{port}"
        try:
            wait_healthy(url, proc)
            yield Workspace(url, work, log)
        finally:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture(scope="module")
def marker_arrow(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """400 cells on the marker database's genes, as an Arrow CSR file (read without R)."""
    from bridge.io import write

    out = tmp_path_factory.mktemp("data") / "markers400.arrow"
    write(marker_gene_cells(400, seed=3), out)
    return out


@pytest.fixture(scope="module")
def pbmc_small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``SeuratObject::pbmc_small`` saved as .rds by the real R."""
    from conftest import r_status

    if r_status() is not None:
        pytest.skip(f"needs R: {r_status()}")
    out = tmp_path_factory.mktemp("pbmc") / "pbmc_small.rds"
    run_r(f'saveRDS(SeuratObject::pbmc_small, "{out}")')
    return out


@pytest.fixture(scope="module")
def arrow_job(workspace: Workspace, marker_arrow: Path) -> dict[str, Any]:
    """One finished job on the Arrow file (PCA layout: quick)."""
    return workspace.run(marker_arrow, layout="pca")


def job_processes(job_dir: Path) -> list[int]:
    """Pids of live processes whose command line names ``job_dir`` (job or export children)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if str(job_dir) in cmdline and "_job_run" in cmdline:
            pids.append(int(entry.name))
    return pids


# -- the page -------------------------------------------------------------------------------
def test_page_is_served_with_every_hook_and_nothing_from_elsewhere(workspace: Workspace) -> None:
    from bridge.server._workspace import STATIC_DIR

    page = httpx.get(workspace.url + "/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    policy = page.headers["content-security-policy"]
    assert "default-src 'self'" in policy and "script-src 'self'" in policy
    for testid in TESTIDS:
        assert f'data-testid="{testid}"' in page.text, testid
    # Every file the page is made of comes from this server: no CDN, no web font, no http(s)
    # address other than the SVG namespace name.
    files = [p for p in STATIC_DIR.rglob("*") if p.is_file()]
    assert {p.suffix for p in files} >= {".html", ".css", ".js"}
    for path in files:
        text = path.read_text()
        for scheme in ("http://", "https://", "//cdn", "@import", "url("):
            hits = [line for line in text.splitlines() if scheme in line
                    and "http://www.w3.org/2000/svg" not in line]
            assert not hits, (path.name, hits[:2])
        served = httpx.get(f"{workspace.url}/workspace/static/{path.relative_to(STATIC_DIR)}")
        assert served.status_code == 200, path


# -- auth and isolation -------------------------------------------------------------------
@pytest.mark.parametrize(("method", "path"), [
    ("GET", f"{WS}/options"), ("GET", f"{WS}/jobs"), ("POST", f"{WS}/uploads?filename=a.h5ad"),
    ("POST", f"{WS}/jobs"), ("GET", f"{WS}/jobs/{'0' * 32}/cells"),
    ("POST", f"{WS}/jobs/{'0' * 32}/downloads"),
])
def test_workspace_endpoints_need_a_valid_key(workspace: Workspace, method: str,
                                              path: str) -> None:
    missing = httpx.request(method, workspace.url + path, content=b"x" * 100)
    assert_error(missing, 401, "missing_api_key", "Authorization")
    wrong = httpx.request(method, workspace.url + path, content=b"x" * 100,
                          headers={"Authorization": "Bearer not-the-right-key"})
    assert_error(wrong, 401, "invalid_api_key")


def test_one_key_never_sees_another_keys_jobs_or_uploads(workspace: Workspace,
                                                         arrow_job: dict[str, Any],
                                                         marker_arrow: Path) -> None:
    job_id = arrow_job["id"]
    assert any(j["id"] == job_id for j in workspace.get(f"{WS}/jobs").json()["jobs"])
    assert all(j["id"] != job_id
               for j in workspace.get(f"{WS}/jobs", OTHER_KEY).json()["jobs"])
    for path in ("", "/events", "/cells", "/cells/0", "/summary", "/dotplot", "/edits"):
        assert_error(workspace.get(f"{WS}/jobs/{job_id}{path}", OTHER_KEY), 404,
                     "job_not_found")
    assert_error(workspace.post(f"{WS}/jobs/{job_id}/cancel", OTHER_KEY), 404, "job_not_found")
    assert_error(workspace.post(f"{WS}/jobs/{job_id}/downloads", OTHER_KEY,
                                json={"kind": "calls.csv"}), 404, "job_not_found")
    assert_error(workspace.post(f"{WS}/jobs/{job_id}/edits", OTHER_KEY,
                                json={"op": "rename", "from": "x", "to": "y"}),
                 404, "job_not_found")
    assert_error(workspace.delete(f"{WS}/jobs/{job_id}", OTHER_KEY), 404, "job_not_found")
    assert workspace.get(f"{WS}/jobs/{job_id}").json()["state"] == "done"
    # An upload belongs to its key too.
    upload = workspace.upload(marker_arrow).json()
    assert_error(workspace.post(f"{WS}/jobs", OTHER_KEY, json={"upload_id": upload["id"]}),
                 404, "upload_not_found")
    # The key itself is stored nowhere: jobs are owned by its SHA-256 digest.
    job_file = (workspace.work_dir / "jobs" / job_id / "job.json").read_text()
    assert API_KEY not in job_file
    assert json.loads(job_file)["owner"] == __import__("hashlib").sha256(
        API_KEY.encode()).hexdigest()


# -- uploads --------------------------------------------------------------------------------
def test_an_upload_over_the_size_limit_is_refused_and_leaves_nothing(workspace: Workspace,
                                                                     tmp_path: Path) -> None:
    big = tmp_path / "big.arrow"
    big.write_bytes(b"ARROW1" + os.urandom(MAX_BODY_MB * 1024 * 1024))
    before = sorted((workspace.work_dir / "uploads").iterdir())
    response = workspace.upload(big)
    assert_error(response, 413, "body_too_large", f"{MAX_BODY_MB} MiB")

    def chunks() -> Iterator[bytes]:  # no Content-Length: refused while streaming
        data = big.read_bytes()
        for i in range(0, len(data), 256 * 1024):
            yield data[i:i + 256 * 1024]

    streamed = workspace.post(f"{WS}/uploads", params={"filename": "big.arrow"},
                              content=chunks())
    assert_error(streamed, 413, "body_too_large")
    assert sorted((workspace.work_dir / "uploads").iterdir()) == before


@pytest.mark.parametrize(("name", "content", "code", "phrase"), [
    ("broken.rds", b"this is a text file, not R", "unrecognised_file", "not an R data file"),
    ("broken.h5ad", b"PK\x03\x04 a zip, not HDF5", "unrecognised_file", "not an HDF5 file"),
    ("broken.arrow", b"col1,col2\n1,2\n", "unrecognised_file", "not an Arrow"),
    ("empty.h5", b"", "empty_file", "empty"),
    ("table.csv", b"cell,label\n", "unsupported_file_type", ".h5ad"),
])
def test_a_malformed_upload_gets_a_clear_error(workspace: Workspace, tmp_path: Path, name: str,
                                               content: bytes, code: str, phrase: str) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    error = assert_error(workspace.upload(path), 422, code, phrase)
    assert name in error["message"]


@pytest.mark.needs_r
def test_an_r_file_that_r_cannot_read_fails_the_job_with_rs_message(workspace: Workspace,
                                                                    tmp_path: Path) -> None:
    path = tmp_path / "not_really.rds"
    path.write_bytes(gzip.compress(b"hello, this is not serialised R data\n" * 20))
    job = workspace.start(path, layout="pca")
    final = workspace.events(job["id"])[-1]
    assert final["state"] == "failed"
    error = final["error"]
    assert error["code"] != "internal_error" and error["message"] and error["hint"], error
    # Named as the user named it, without the server's folders.
    assert "not_really.rds" in error["message"], error
    assert str(workspace.work_dir) not in error["message"], error


# -- running a job --------------------------------------------------------------------------
def test_a_job_reports_progress_and_matches_bridge_annotate(workspace: Workspace,
                                                            marker_arrow: Path) -> None:
    import bridge

    job = workspace.start(marker_arrow, layout="pca")
    assert job["state"] in ("queued", "running")
    statuses = workspace.events(job["id"])
    states = [s["state"] for s in statuses]
    assert states[-1] == "done"
    assert "running" in states
    progress = [s["progress"] for s in statuses]
    assert progress == sorted(progress) and progress[-1] == 1.0
    # Every stage the job went through, also those too brief for a poll to see.
    assert {"reading", "annotating", "embedding"} <= set(statuses[-1]["stages"])
    assert {s["stage"] for s in statuses} - {"finished", "queued", "running"} <= set(
        statuses[-1]["stages"])
    # Polling says the same.
    assert workspace.get(f"{WS}/jobs/{job['id']}").json()["state"] == "done"

    view = workspace.get(f"{WS}/jobs/{job['id']}/cells").json()
    expected = bridge.annotate(str(marker_arrow), progress=False)
    assert view["n_cells"] == expected.num_rows == len(view["x"]) == len(view["y"])
    assert view["cells"] == expected.column("cell").to_pylist()
    label = next(c for c in view["columns"] if c["name"] == "label")
    assert [label["levels"][c] for c in label["codes"]] == \
        pa.compute.cast(expected.column("label"), pa.string()).to_pylist()
    names = {c["name"] for c in view["columns"]}
    assert {"confidence", "total_counts", "n_genes", "mito_fraction", "qc_pass"} <= names
    assert np.isfinite(view["x"]).all() and np.ptp(view["x"]) > 0

    arrow = workspace.get(f"{WS}/jobs/{job['id']}/cells",
                          headers={"Accept": "application/vnd.apache.arrow.stream"})
    table = pa.ipc.open_stream(arrow.content).read_all()
    assert table.column("cell").to_pylist() == view["cells"]
    assert {"label", "confidence", "markers", "x", "y"} <= set(table.column_names)

    summary = workspace.get(f"{WS}/jobs/{job['id']}/summary").json()
    counts = {r["label"]: r["count"] for r in summary["labels"]["label"]}
    assert sum(counts.values()) == expected.num_rows
    one = workspace.get(f"{WS}/jobs/{job['id']}/cells/5").json()
    assert one["cell"] == view["cells"][5] and isinstance(one["alternates"], list)
    assert_error(workspace.get(f"{WS}/jobs/{job['id']}/cells/400"), 404, "cell_not_found")

    dots = workspace.get(f"{WS}/jobs/{job['id']}/dotplot").json()
    assert dots["labels"] and len(dots["fraction"]) == len(dots["labels"])
    assert all(len(row) == len(dots["genes"]) for row in dots["fraction"])
    assert set(dots["markers"]) == set(dots["labels"])
    assert_error(workspace.get(f"{WS}/jobs/{job['id']}/dotplot", params={"column": "nope"}),
                 422, "unknown_column")
    workspace.delete(f"{WS}/jobs/{job['id']}")


def _write_10x_h5(matrix: Any, path: Path) -> None:
    import h5py
    import scipy.sparse as sp

    csc = sp.csc_matrix(matrix.X.T)  # genes x cells CSC, as Cell Ranger stores it
    with h5py.File(path, "w") as f:
        g = f.create_group("matrix")
        g["data"], g["indices"], g["indptr"] = csc.data, csc.indices, csc.indptr
        g["shape"] = np.array(csc.shape)
        g["barcodes"] = np.array([c.encode() for c in matrix.cells.astype(str)])
        features = g.create_group("features")
        features["id"] = np.array([f"ID{j}".encode() for j in range(matrix.n_genes)])
        features["name"] = np.array([s.encode() for s in matrix.genes.astype(str)])
        features["feature_type"] = np.array([b"Gene Expression"] * matrix.n_genes)


@pytest.mark.parametrize("name", ["cells.h5ad", "filtered_feature_bc_matrix.H5"])
def test_h5ad_and_10x_h5_uploads_run(workspace: Workspace, tmp_path: Path, name: str) -> None:
    import bridge
    from bridge.io import write

    matrix = marker_gene_cells(150, seed=7)
    path = tmp_path / name
    if name.endswith(".h5ad"):
        write(matrix, path)
    else:
        _write_10x_h5(matrix, path)
    job = workspace.run(path, layout="pca")
    view = workspace.get(f"{WS}/jobs/{job['id']}/cells").json()
    label = next(c for c in view["columns"] if c["name"] == "label")
    expected = bridge.annotate(matrix, progress=False)
    assert view["cells"] == matrix.cells.astype(str).tolist()
    assert [label["levels"][c] for c in label["codes"]] == \
        pa.compute.cast(expected.column("label"), pa.string()).to_pylist()
    workspace.delete(f"{WS}/jobs/{job['id']}")


def test_job_options_are_checked(workspace: Workspace, marker_arrow: Path) -> None:
    upload = workspace.upload(marker_arrow).json()["id"]
    cases = [({"model": "nope"}, "unknown_model"), ({"tissue": "moon"}, "unknown_tissue"),
             ({"min_confidence": 2}, "invalid_parameter"), ({"layout": "3d"}, "invalid_parameter")]
    for options, code in cases:
        assert_error(workspace.post(f"{WS}/jobs", json={"upload_id": upload, **options}), 422,
                     code)
    assert_error(workspace.post(f"{WS}/jobs", json={}), 422, "invalid_payload", "upload")
    assert_error(workspace.post(f"{WS}/jobs", content=b"{not json",
                                headers={"Content-Type": "application/json"}), 400,
                 "invalid_json")


def test_a_job_with_too_many_cells_fails_with_the_limit(workspace: Workspace,
                                                        tmp_path: Path) -> None:
    from bridge.io import write

    path = tmp_path / "many.arrow"
    write(marker_gene_cells(MAX_CELLS + 10, seed=1), path)
    job = workspace.start(path, layout="pca")
    final = workspace.events(job["id"])[-1]
    assert final["state"] == "failed"
    assert final["error"]["code"] == "too_many_cells"
    assert f"{MAX_CELLS:,}" in final["error"]["message"]


def test_cancel_stops_a_running_job_and_a_queued_one(workspace: Workspace,
                                                     marker_arrow: Path) -> None:
    # UMAP (numba compiles first) keeps the first job busy for seconds: time to cancel.
    first = workspace.start(marker_arrow, layout="umap")
    second = workspace.start(marker_arrow, layout="pca")  # one job runs at a time: queued
    job_dir = workspace.work_dir / "jobs" / first["id"]
    deadline = time.monotonic() + 60
    while workspace.get(f"{WS}/jobs/{first['id']}").json()["state"] != "running":
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert workspace.get(f"{WS}/jobs/{second['id']}").json()["state"] == "queued"
    queued = workspace.post(f"{WS}/jobs/{second['id']}/cancel").json()
    assert queued["state"] == "cancelled" and queued["started"] is None
    cancelled = workspace.post(f"{WS}/jobs/{first['id']}/cancel").json()
    assert cancelled["state"] == "cancelled"
    assert workspace.events(first["id"])[-1]["state"] == "cancelled"
    assert job_processes(job_dir) == []
    assert_error(workspace.get(f"{WS}/jobs/{first['id']}/cells"), 409, "job_not_done")
    # Cancelling a finished job changes nothing; deleting removes its files.
    assert workspace.post(f"{WS}/jobs/{first['id']}/cancel").json()["state"] == "cancelled"
    assert workspace.delete(f"{WS}/jobs/{first['id']}").status_code == 204
    assert not job_dir.exists()
    assert_error(workspace.get(f"{WS}/jobs/{first['id']}"), 404, "job_not_found")


# -- curation and exports -----------------------------------------------------------------
def test_curation_edits_are_a_table_beside_the_calls(workspace: Workspace,
                                                     arrow_job: dict[str, Any]) -> None:
    path = f"{WS}/jobs/{arrow_job['id']}/edits"
    workspace.delete(path)
    view = workspace.get(f"{WS}/jobs/{arrow_job['id']}/cells").json()
    label = next(c for c in view["columns"] if c["name"] == "label")
    original = [label["levels"][c] for c in label["codes"]]
    first, second = label["levels"][0], label["levels"][1]

    renamed = workspace.post(path, json={"op": "rename", "from": first, "to": "Renamed"}).json()
    curated = [renamed["curated"]["levels"][c] for c in renamed["curated"]["codes"]]
    assert curated == ["Renamed" if v == first else v for v in original]
    assert renamed["edits"][0] | {"at": None} == {
        "edit": 1, "op": "rename", "base_column": "label", "from_labels": first,
        "to_label": "Renamed", "n_cells": original.count(first), "note": "", "at": None}
    merged = workspace.post(path, json={"op": "merge", "from": ["Renamed", second],
                                        "to": "Merged"}).json()
    assert merged["edits"][1]["n_cells"] == original.count(first) + original.count(second)
    picked = view["cells"][:7]
    relabelled = workspace.post(path, json={"op": "relabel", "cells": picked,
                                            "to": "Picked"}).json()
    codes = relabelled["curated"]["codes"]
    assert [relabelled["curated"]["levels"][c] for c in codes[:7]] == ["Picked"] * 7
    assert relabelled["revision"] == merged["revision"] + 1

    assert_error(workspace.post(path, json={"op": "rename", "from": first, "to": "x"}), 422,
                 "unknown_label", "no cell is labelled")  # it was renamed away
    assert_error(workspace.post(path, json={"op": "relabel", "cells": ["nope"], "to": "x"}),
                 422, "unknown_cells")
    assert_error(workspace.post(path, json={"op": "paint", "to": "x"}), 422, "invalid_edit")
    assert_error(workspace.post(path, json={"op": "rename", "from": "Merged", "to": " "}), 422,
                 "invalid_edit")
    assert_error(workspace.post(path, json={"op": "rename", "from": "Merged", "to": "y",
                                            "base": "label_raw"}), 409, "curation_base_fixed")
    undone = workspace.delete(path + "/last").json()
    assert len(undone["edits"]) == 2
    # The calls themselves never change.
    calls = workspace.download(arrow_job["id"], "calls.parquet")
    import pyarrow.parquet as pq

    table = pq.read_table(pa.BufferReader(calls.content))
    assert pa.compute.cast(table.column("label"), pa.string()).to_pylist() == original
    assert table.column("label_curated").to_pylist()[:3] == [
        "Merged" if v in (first, second) else v for v in original[:3]]
    history = json.loads(table.schema.metadata[b"scbridge.curation"])
    assert [e["op"] for e in history["edits"]] == ["rename", "merge"]
    workspace.delete(path)


def test_exports_csv_parquet_edits_h5ad_and_one_time_links(workspace: Workspace,
                                                           arrow_job: dict[str, Any],
                                                           marker_arrow: Path,
                                                           tmp_path: Path) -> None:
    import anndata

    import bridge

    job_id = arrow_job["id"]
    edits = f"{WS}/jobs/{job_id}/edits"
    workspace.delete(edits)
    expected = bridge.annotate(str(marker_arrow), progress=False)
    top = pa.compute.cast(expected.column("label"), pa.string()).to_pylist()
    workspace.post(edits, json={"op": "rename", "from": top[0], "to": "Curated one"})

    link = workspace.post(f"{WS}/jobs/{job_id}/downloads", json={"kind": "calls.csv"}).json()
    assert link["filename"] == "markers400-calls.csv"
    first = httpx.get(workspace.url + link["url"])
    assert first.status_code == 200
    assert "attachment" in first.headers["content-disposition"]
    assert_error(httpx.get(workspace.url + link["url"]), 404, "download_expired")
    rows = list(csv.DictReader(first.text.splitlines()))
    assert [r["label"] for r in rows] == top
    assert [r["label_curated"] for r in rows] == ["Curated one" if v == top[0] else v
                                                  for v in top]
    assert rows[0]["markers"] == ";".join(expected.column("markers")[0].as_py())

    edits_csv = list(csv.DictReader(workspace.download(job_id, "edits.csv").text.splitlines()))
    assert len(edits_csv) == 1 and edits_csv[0]["op"] == "rename"
    assert edits_csv[0]["from_labels"] == top[0] and edits_csv[0]["to_label"] == "Curated one"

    h5ad = tmp_path / "out.h5ad"
    h5ad.write_bytes(workspace.download(job_id, "object.h5ad").content)
    adata = anndata.read_h5ad(h5ad)
    assert adata.obs_names.tolist() == expected.column("cell").to_pylist()
    assert adata.obs["cell_type"].astype(str).tolist() == top
    assert (adata.obs["cell_type_curated"] == "Curated one").sum() == top.count(top[0])
    assert adata.obsm["X_scbridge_layout"].shape == (len(top), 2)
    assert_error(workspace.post(f"{WS}/jobs/{job_id}/downloads", json={"kind": "zip"}), 422,
                 "unknown_export")
    workspace.delete(edits)


@pytest.mark.needs_r
def test_rds_report_and_h5ad_exports_of_a_seurat_upload(workspace: Workspace, pbmc_small: Path,
                                                        tmp_path: Path) -> None:
    job = workspace.run(pbmc_small, layout="pca")
    view = workspace.get(f"{WS}/jobs/{job['id']}/cells").json()
    label = next(c for c in view["columns"] if c["name"] == "label")
    first = label["levels"][0]
    n_first = label["codes"].count(0)
    workspace.post(f"{WS}/jobs/{job['id']}/edits",
                   json={"op": "rename", "from": first, "to": "Curated one"})
    rds = tmp_path / "annotated.rds"
    rds.write_bytes(workspace.download(job["id"], "object.rds").content)
    out = run_r(f'x <- readRDS("{rds}"); m <- x@meta.data; cat(class(x), nrow(m), '
                'sum(m$cell_type_curated == "Curated one"), sum(m$cell_type == '
                f'"{first}"), "RNA_snn_res.1" %in% names(m), sep = "|")')
    assert out.split("|") == ["Seurat", "80", str(n_first), str(n_first), "TRUE"]
    report = workspace.download(job["id"], "report.html").text
    assert "<svg" in report and "Curated one" in report and "pbmc_small" in report
    h5ad = tmp_path / "from_rds.h5ad"
    h5ad.write_bytes(workspace.download(job["id"], "object.h5ad").content)
    import anndata

    adata = anndata.read_h5ad(h5ad)
    assert adata.n_obs == 80 and "cell_type_curated" in adata.obs
    workspace.delete(f"{WS}/jobs/{job['id']}")


# -- limits, expiry, several processes -----------------------------------------------------
def test_job_limit_per_key_disk_cap_and_expiry(tmp_path: Path, marker_arrow: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from bridge.server import Settings, create_app

    monkeypatch.setenv("SCBRIDGE_WORK_DIR", str(tmp_path / "work"))
    monkeypatch.setenv("SCBRIDGE_WORKSPACE_MAX_JOBS", "2")
    app = create_app(Settings(api_keys=(API_KEY, OTHER_KEY)))
    with ThreadServer(app) as server:
        ws = Workspace(server.url, tmp_path / "work", tmp_path / "none.log")
        jobs = [ws.run(marker_arrow, layout="pca") for _ in range(2)]
        upload = ws.upload(marker_arrow).json()["id"]
        assert_error(ws.post(f"{WS}/jobs", json={"upload_id": upload}), 429, "too_many_jobs",
                     "delete")
        # The other key has its own allowance.
        assert ws.start(marker_arrow, OTHER_KEY, layout="pca")["state"] in ("queued", "running")
        # A finished job past its time is removed with its files, at the next look.
        record = ws.work_dir / "jobs" / jobs[0]["id"] / "job.json"
        job = json.loads(record.read_text())
        job["finished"] -= 25 * 3600
        record.write_text(json.dumps(job))
        listed = [j["id"] for j in ws.get(f"{WS}/jobs").json()["jobs"]]
        assert listed == [jobs[1]["id"]]
        assert not record.parent.exists()
        # Disk cap: with room for nothing more, uploads and jobs are refused with 507.
        monkeypatch.setattr(app.state.workspace, "limits",
                            app.state.workspace.limits.__class__(
                                **{**app.state.workspace.limits.__dict__, "max_work_bytes": 1}))
        assert_error(ws.upload(marker_arrow), 507, "workspace_full", "delete")
        for j in ws.get(f"{WS}/jobs", OTHER_KEY).json()["jobs"]:
            ws.events(j["id"], OTHER_KEY)
    # Shutting the app down removes nothing of a work folder it was given ...
    assert (tmp_path / "work" / "jobs").exists()


def test_a_temporary_work_folder_is_removed_at_shutdown(marker_arrow: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from bridge.server import Settings, create_app

    monkeypatch.delenv("SCBRIDGE_WORK_DIR", raising=False)
    app = create_app(Settings(api_keys=(API_KEY,)))
    with ThreadServer(app) as server:
        ws = Workspace(server.url, Path("."), Path("."))
        ws.run(marker_arrow, layout="pca")
        root = app.state.workspace.root
        assert any((root / "jobs").iterdir())
    assert not root.exists()


def test_two_processes_sharing_a_work_folder_see_the_same_jobs(tmp_path: Path,
                                                               marker_arrow: Path) -> None:
    """What ``scbridge serve --workers N`` relies on: state on disk, not in one process."""
    import shutil

    from bridge.server._jobs import JobManager, WorkspaceLimits, owner_of

    limits = WorkspaceLimits(work_dir=str(tmp_path / "shared"))
    a, b = JobManager(limits), JobManager(limits)
    owner = owner_of(API_KEY)
    engine = {"model": "markers", "atlas": None, "params": {}, "min_confidence": None,
              "layout": "umap"}
    copy = tmp_path / "data.arrow"
    shutil.copy(marker_arrow, copy)
    job = a.create(owner, {"layout": "umap"}, engine, path=str(copy))
    assert b.status(owner, job["id"])["name"] == "data.arrow"
    assert [j["id"] for j in b.list(owner)] == [job["id"]]
    with pytest.raises(Exception, match="no job"):
        b.status(owner_of(OTHER_KEY), job["id"])
    deadline = time.monotonic() + 60
    while a.status(owner, job["id"])["state"] == "queued":
        assert time.monotonic() < deadline
        time.sleep(0.1)
    b.cancel(owner, job["id"])  # asks through the flag file; a's watcher stops the child
    deadline = time.monotonic() + 60
    while a.status(owner, job["id"])["state"] == "running":
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert b.status(owner, job["id"])["state"] == "cancelled"
    token = a.issue_download(owner, job["id"], copy, "x.arrow", "application/octet-stream")
    assert b.redeem_download(token)["filename"] == "x.arrow"
    with pytest.raises(Exception, match="used already"):
        a.redeem_download(token)
    a.close()
    b.close()
    assert copy.exists()  # a local file read in place is never removed or changed


# -- the browser ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from conftest import browser_status

    if browser_status() is not None:
        pytest.skip(browser_status() or "")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


def open_page(browser: Any, url: str) -> tuple[Any, list[str], list[str]]:
    """A new page at ``url``; returns it, its script errors, and every URL it requested."""
    page = browser.new_page(viewport={"width": 1400, "height": 900}, accept_downloads=True)
    errors: list[str] = []
    requests: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("request", lambda r: requests.append(r.url))
    page.goto(url)
    return page, errors, requests


def sign_in(page: Any, key: str = API_KEY) -> None:
    from playwright.sync_api import expect

    page.get_by_test_id("api-key-input").fill(key)
    page.get_by_test_id("api-key-input").press("Enter")
    expect(page.get_by_test_id("key-state")).to_have_text("key set for this tab")


def upload_and_run(page: Any, path: Path) -> None:
    from playwright.sync_api import expect

    page.get_by_test_id("upload-input").set_input_files(str(path))
    expect(page.get_by_test_id("run-button")).to_be_enabled(timeout=60_000)
    page.get_by_test_id("run-button").click()
    expect(page.get_by_test_id("job-status")).to_have_text("done", timeout=300_000)


PAINTED = """() => {
  const c = document.querySelector('[data-testid=embedding-canvas]');
  const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  const colours = new Set();
  let painted = 0;
  for (let i = 0; i < d.length; i += 4) {
    if (d[i] !== 255 || d[i + 1] !== 255 || d[i + 2] !== 255) {
      painted++;
      colours.add((d[i] << 16) | (d[i + 1] << 8) | d[i + 2]);
    }
  }
  return {painted, colours: colours.size};
}"""


def label_rows(page: Any) -> dict[str, int]:
    rows = page.locator("[data-testid=label-table] tbody tr")
    return {r.get_attribute("data-label"): int(r.get_attribute("data-count"))
            for r in rows.all()}


@pytest.mark.needs_r
@pytest.mark.needs_browser
def test_browser_annotates_pbmc_small_and_exports_what_scbridge_annotate_makes(
        workspace: Workspace, browser: Any, pbmc_small: Path, tmp_path: Path) -> None:
    from playwright.sync_api import expect

    page, errors, requests = open_page(browser, workspace.url + "/")
    sign_in(page)
    upload_and_run(page, pbmc_small)
    expect(page.locator("[data-testid=label-table] tbody tr").first).to_be_visible()
    labels = label_rows(page)
    assert sum(labels.values()) == 80 and len(labels) >= 3
    drawn = page.evaluate(PAINTED)
    assert drawn["painted"] > 80 * 4 and drawn["colours"] >= len(labels)

    # Rename the largest label.
    old = max(labels, key=lambda k: labels[k])
    page.get_by_test_id("tab-curation").click()
    page.get_by_test_id("rename-from").select_option(old)
    page.get_by_test_id("rename-to").fill("Classical monocyte (curated)")
    page.get_by_test_id("rename-button").click()
    edit = page.locator("[data-testid=edits-table] tbody tr")
    expect(edit).to_have_count(1)
    assert edit.first.get_attribute("data-op") == "rename"
    page.get_by_test_id("tab-labels").click()
    expect(page.locator('[data-testid=label-table] tbody tr[data-label="Classical monocyte '
                        '(curated)"]')).to_have_attribute("data-count", str(labels[old]))

    page.get_by_test_id("tab-export").click()
    with page.expect_download() as download:
        page.get_by_test_id("download-csv").click()
    ours = tmp_path / "workspace-calls.csv"
    download.value.save_as(ours)
    with page.expect_download() as download:
        page.get_by_test_id("download-edits").click()
    edits_file = tmp_path / "edits.csv"
    download.value.save_as(edits_file)

    theirs = tmp_path / "cli-calls.csv"
    done = subprocess.run([sys.executable, "-m", "bridge", "annotate", str(pbmc_small), "--out",
                           str(theirs), "--quiet"], capture_output=True, text=True,
                          env=subprocess_env(), timeout=300)
    assert done.returncode == 0, done.stderr
    ours_rows = list(csv.DictReader(ours.read_text().splitlines()))
    cli_rows = list(csv.DictReader(theirs.read_text().splitlines()))
    assert [r["cell"] for r in ours_rows] == [r["cell"] for r in cli_rows]
    assert [r["label"] for r in ours_rows] == [r["label"] for r in cli_rows]
    assert [r["confidence"] for r in ours_rows] == [r["confidence"] for r in cli_rows]
    assert [r["label_curated"] for r in ours_rows] == [
        "Classical monocyte (curated)" if r["label"] == old else r["label"] for r in cli_rows]
    edits = list(csv.DictReader(edits_file.read_text().splitlines()))
    assert [(e["op"], e["from_labels"], e["to_label"], e["n_cells"]) for e in edits] == [
        ("rename", old, "Classical monocyte (curated)", str(labels[old]))]

    # The key stayed in this tab's sessionStorage and in no URL.
    assert page.evaluate("sessionStorage.getItem('scbridge.apiKey')") == API_KEY
    assert page.evaluate("localStorage.length") == 0
    assert requests and not [u for u in requests if API_KEY in u]
    assert not errors, errors
    page.close()


@pytest.mark.needs_browser
def test_browser_shows_the_services_message_for_a_malformed_upload(workspace: Workspace,
                                                                    browser: Any,
                                                                    tmp_path: Path) -> None:
    from playwright.sync_api import expect

    broken = tmp_path / "broken.rds"
    broken.write_bytes(b"col1,col2\n1,2\n")
    page, _, _ = open_page(browser, workspace.url + "/")
    sign_in(page)
    page.get_by_test_id("upload-input").set_input_files(str(broken))
    message = page.get_by_test_id("error-message")
    expect(message).to_contain_text("broken.rds is not an R data file (saveRDS / save)")
    expect(message).to_contain_text("request")  # the request id, for the administrator
    assert message.get_attribute("data-code") == "unrecognised_file"
    expect(page.get_by_test_id("run-button")).to_be_disabled()
    # A wrong key is reported in the service's words too.
    page.get_by_test_id("api-key-input").fill("a-wrong-key-123")
    page.get_by_test_id("api-key-input").press("Enter")
    expect(message).to_contain_text("the API key is not valid for this server")
    page.close()


@pytest.mark.needs_browser
def test_browser_pan_zoom_lasso_relabel_and_cell_table(workspace: Workspace, browser: Any,
                                                       marker_arrow: Path) -> None:
    from playwright.sync_api import expect

    page, errors, _ = open_page(browser, workspace.url + "/")
    sign_in(page)
    page.get_by_test_id("upload-input").set_input_files(str(marker_arrow))
    expect(page.get_by_test_id("run-button")).to_be_enabled(timeout=60_000)
    page.get_by_test_id("run-button").click()
    expect(page.get_by_test_id("job-status")).to_have_text("done", timeout=300_000)
    expect(page.locator("[data-testid=label-table] tbody tr").first).to_be_visible()
    box = page.get_by_test_id("embedding-overlay").bounding_box()
    cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2

    before = page.evaluate("window.scbridgeWorkspace.scatter.view.scale")
    page.mouse.move(cx, cy)
    page.mouse.wheel(0, -300)
    expect(page.get_by_test_id("selection")).to_have_text("no selection")
    page.wait_for_timeout(200)
    after = page.evaluate("window.scbridgeWorkspace.scatter.view")
    assert after["scale"] > before
    page.mouse.move(cx, cy)
    page.mouse.down()
    page.mouse.move(cx + 60, cy + 40, steps=5)
    page.mouse.up()
    panned = page.evaluate("window.scbridgeWorkspace.scatter.view")
    assert panned["tx"] != after["tx"] and panned["ty"] != after["ty"]
    latencies = page.evaluate(
        "window.scbridgeWorkspace.scatter.stats.draws.filter(d => d.latency !== null).length")
    assert latencies >= 1
    page.get_by_test_id("reset-view").click()

    # Lasso a box in the middle of the plot, then relabel those cells.
    page.get_by_test_id("mode-lasso").click()
    half = min(box["width"], box["height"]) * 0.45
    page.mouse.move(cx - half, cy - half)
    page.mouse.down()
    for x, y in ((cx + half, cy - half), (cx + half, cy + half), (cx - half, cy + half)):
        page.mouse.move(x, y, steps=4)
    page.mouse.up()
    expect(page.get_by_test_id("selection")).to_contain_text("cells selected (lasso)")
    selected = int(page.get_by_test_id("selection").text_content().split()[0].replace(",", ""))
    assert 0 < selected <= 400
    page.get_by_test_id("relabel-to").fill("lassoed")
    page.get_by_test_id("relabel-button").click()
    row = page.locator("[data-testid=edits-table] tbody tr")
    expect(row).to_have_count(1)
    assert row.first.get_attribute("data-op") == "relabel"
    page.get_by_test_id("tab-labels").click()
    expect(page.locator('[data-testid=label-table] tbody tr[data-label="lassoed"]')
           ).to_have_attribute("data-count", str(selected))

    # The cells table: virtualised, searchable.
    page.get_by_test_id("tab-cells").click()
    expect(page.get_by_test_id("cell-count")).to_have_text("400 of 400 cells")
    assert page.locator("[data-testid=cell-table] .vrow").count() < 60
    page.get_by_test_id("cell-search").fill("m12")
    expect(page.get_by_test_id("cell-count")).to_contain_text("of 400 cells")
    shown = int(page.get_by_test_id("cell-count").text_content().split()[0])
    assert 1 <= shown < 400
    page.locator("[data-testid=cell-table] .vrow").first.click()
    expect(page.get_by_test_id("detail")).to_contain_text("marker genes of the call")
    for tab in ("composition", "confidence", "dotplot"):
        page.get_by_test_id(f"tab-{tab}").click()
        # The curated labels' dot plot is computed on first request: allow for a busy machine.
        expect(page.get_by_test_id(f"{tab}-chart").locator("svg")).to_be_visible(
            timeout=60_000)
    assert not errors, errors
    page.close()


@pytest.mark.needs_r
@pytest.mark.needs_browser
def test_scbridge_workspace_opens_the_file_with_a_one_time_link(browser: Any, pbmc_small: Path,
                                                                tmp_path: Path) -> None:
    from playwright.sync_api import expect

    output = tmp_path / "workspace.out"
    with output.open("wb") as sink:
        proc = subprocess.Popen([sys.executable, "-m", "bridge", "workspace", str(pbmc_small),
                                 "--no-browser", "--layout", "pca", "--log-level", "info"],
                                stdout=sink,
                                stderr=subprocess.STDOUT, env=subprocess_env())
    try:
        deadline = time.monotonic() + 60

        def printed() -> list[str]:  # the address line (log lines may come before it)
            return [t for t in output.read_text().splitlines() if t.startswith("scbridge")]

        while not printed() and proc.poll() is None:
            assert time.monotonic() < deadline, output.read_text()
            time.sleep(0.1)
        line = next(iter(printed()), output.read_text())
        assert line.startswith("scbridge workspace: http://127.0.0.1:"), line
        url = line.split(": ", 1)[1].strip()
        base, _, token = url.partition("/#login=")
        assert token and "key" not in url.lower()
        wait_healthy(base, proc)
        page, errors, requests = open_page(browser, url)
        expect(page.get_by_test_id("job-status")).to_have_text("done", timeout=300_000)
        expect(page.locator("[data-testid=label-table] tbody tr").first).to_be_visible()
        assert sum(label_rows(page).values()) == 80
        assert "#login" not in page.url
        key = page.evaluate("sessionStorage.getItem('scbridge.apiKey')")
        assert key and not [u for u in requests if key in u or token in u]
        # The link worked once.
        again = httpx.post(f"{base}{WS}/session", json={"token": token})
        assert_error(again, 401, "login_link_used")
        assert not errors, errors
        page.close()
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    # Ctrl-C: a clean shutdown that removes the server's temporary work folder.
    log = output.read_text()
    assert proc.returncode in (0, 130), log
    assert "Traceback" not in log, log
    folder = Path(log.split("workspace work folder ", 1)[1].split()[0])
    assert folder.name.startswith("scbridge-workspace-") and not folder.exists()
