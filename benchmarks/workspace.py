"""The browser workspace in headless Chromium: 100,000 cells drawn after the job finishes, and
pan / zoom redraws, beside the ways a page usually draws a scatter.

One run:

1. makes 100,000 cells (the sorted PBMC of ../shared/data resampled with binomial thinning, so
   every cell differs; a synthetic set where that data is absent) as an Arrow CSR file;
2. starts ``scbridge workspace FILE --no-browser`` and opens its sign-in link in headless
   Chromium (Debian's, driven by Playwright) as a user would, waiting for the job;
3. reads the page's own timings (``performance.now()``): when the ``done`` status arrived,
   when the cells were fetched, when the first full draw ended; and, against the server's
   record of when the job finished, the time from job end to drawn cells;
4. zooms with the mouse wheel and pans by dragging, 30 times each, and reports each redraw's
   latency from the input event's own timestamp to the end of the draw, and the draw's cost;
5. draws the same 100,000 points, same colours, in the same browser the two usual ways: one
   SVG ``<circle>`` per cell (what bridge.write_report's static page does) and one canvas ``arc()``
   per cell, timing the first draw and a zoom redraw (until two animation frames later, i.e.
   painted) the same way for all three, and prints the ratios.

Targets (issue 15): drawn within 2 s of the job finishing; a pan or zoom redraws within 100 ms.

Usage::

    python benchmarks/workspace.py                 # 100,000 cells, UMAP layout (minutes)
    python benchmarks/workspace.py --layout pca    # the same drawing, without UMAP's wait
    python benchmarks/workspace.py --cells 20000   # a quicker run
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import scipy.sparse as sp

ROOT = Path(__file__).resolve().parents[1]
# ../shared/data beside the project (looked for above it too, for git worktrees).
SHARED = next((p / "shared" / "data" / "sorted_pbmc_seurat.rds" for p in ROOT.parents
               if (p / "shared" / "data" / "sorted_pbmc_seurat.rds").exists()),
              ROOT.parent / "shared" / "data" / "sorted_pbmc_seurat.rds")
CHROMIUM = os.environ.get("SCBRIDGE_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


def make_cells(n_cells: int, out: Path, seed: int = 0) -> tuple[Path, str]:
    """``n_cells`` distinct cells as an Arrow CSR file (made once), and where they came from."""
    from bridge import CellMatrix
    from bridge.io import read, write

    if out.exists():
        return out, out.with_suffix(".txt").read_text()
    rng = np.random.default_rng(seed)
    if SHARED.exists():
        source = read(str(SHARED))
        rows = rng.integers(0, source.n_cells, n_cells)
        X = sp.csr_matrix(source.X[rows])
        X.data = rng.binomial(X.data.astype(np.int64), 0.6).astype(np.float32)
        genes = source.genes
        origin = (f"sorted PBMC ({source.n_cells:,} cells) resampled to {n_cells:,}, "
                  "counts thinned to 60%")
    else:
        # Each cell expresses the positive markers of one of 12 cell types of the embedded
        # marker database (so the markers engine has real genes to call).
        from bridge.engines.markers import load_marker_database

        db = load_marker_database()
        types = [t for t in range(db.n_types) if (db.positive[t] > 0).sum() >= 5][:12]
        label = rng.integers(0, len(types), n_cells)
        rate = np.full((len(types), len(db.genes)), 0.1)
        for k, t in enumerate(types):
            rate[k, db.positive[t] > 0] = 4.0
        X = sp.csr_matrix(rng.poisson(rate[label]).astype(np.float32))
        genes = np.array(db.genes)
        origin = (f"synthetic: {n_cells:,} cells of {len(types)} marker-database cell types "
                  f"({SHARED} is absent)")
    X.eliminate_zeros()
    matrix = CellMatrix(X, [f"cell{i}" for i in range(n_cells)], genes, source="benchmark")
    out.parent.mkdir(parents=True, exist_ok=True)
    write(matrix, out)
    out.with_suffix(".txt").write_text(origin)
    return out, origin


def start_workspace(data: Path, layout: str, n_cells: int, log: Path
                    ) -> tuple[subprocess.Popen[bytes], str]:
    sink = log.open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "bridge", "workspace", str(data),
                             "--no-browser", "--layout", layout, "--max-cells", str(n_cells),
                             "--log-level", "info"], stdout=sink, stderr=subprocess.STDOUT,
                            cwd=ROOT)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        for line in log.read_text().splitlines():
            if line.startswith("scbridge workspace: http"):
                return proc, line.split(": ", 1)[1].strip()
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    raise RuntimeError(f"scbridge workspace did not start:\n{log.read_text()[-3000:]}")


NEXT_PAINT = "() => new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))"


def interact(page: Any, box: dict[str, float]) -> list[dict[str, float]]:
    """30 wheel zooms and 30 drag pans; the draw records they caused."""
    cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.evaluate("() => { window.scbridgeWorkspace.scatter.stats.draws.length = 0; }")
    page.mouse.move(cx, cy)
    for k in range(30):
        page.mouse.wheel(0, -120 if k % 4 < 2 else 120)
        page.evaluate(NEXT_PAINT)
    for k in range(30):
        dx = 40 if k % 2 == 0 else -40
        page.mouse.move(cx, cy)
        page.mouse.down()
        page.mouse.move(cx + dx, cy + dx / 2, steps=2)
        page.mouse.up()
        page.evaluate(NEXT_PAINT)
    return page.evaluate("() => window.scbridgeWorkspace.scatter.stats.draws")


OURS_TIMED = """async () => {
  const s = window.scbridgeWorkspace.scatter;
  const paint = () => new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)));
  await paint();
  const out = {first: [], zoom: []};
  for (let k = 0; k < 5; k++) {
    s.resetView(); await paint();
    let t = performance.now(); s.draw(); await paint(); out.first.push(performance.now() - t);
    t = performance.now(); s.zoomBy(1.5); s.draw(); await paint(); out.zoom.push(performance.now() - t);
  }
  return out;
}"""

PEERS = """async ({x, y, colours, size}) => {
  const n = x.length;
  const paint = () => new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)));
  const css = colours.map(c => `rgb(${c & 255},${(c >> 8) & 255},${(c >> 16) & 255})`);
  let x0 = Infinity, x1 = -Infinity, y0 = Infinity, y1 = -Infinity;
  for (let i = 0; i < n; i++) { x0 = Math.min(x0, x[i]); x1 = Math.max(x1, x[i]); y0 = Math.min(y0, y[i]); y1 = Math.max(y1, y[i]); }
  const span = Math.max(x1 - x0, y1 - y0) || 1;
  const out = {svg_first: [], svg_zoom: [], arc_first: [], arc_zoom: []};
  for (let k = 0; k < 3; k++) {
    document.body.replaceChildren();
    const NS = "http://www.w3.org/2000/svg";
    let t = performance.now();
    const svg = document.createElementNS(NS, "svg");
    svg.setAttribute("width", size); svg.setAttribute("height", size);
    svg.setAttribute("viewBox", `${x0} ${y0} ${span} ${span}`);
    const r = span / size * 1.2;
    for (let i = 0; i < n; i++) {
      const c = document.createElementNS(NS, "circle");
      c.setAttribute("cx", x[i]); c.setAttribute("cy", y[i]); c.setAttribute("r", r);
      c.setAttribute("fill", css[i]);
      svg.appendChild(c);
    }
    document.body.appendChild(svg);
    await paint();
    out.svg_first.push(performance.now() - t);
    t = performance.now();
    svg.setAttribute("viewBox", `${x0 + span / 6} ${y0 + span / 6} ${span / 1.5} ${span / 1.5}`);
    await paint();
    out.svg_zoom.push(performance.now() - t);
  }
  for (let k = 0; k < 3; k++) {
    document.body.replaceChildren();
    const canvas = document.createElement("canvas");
    canvas.width = size; canvas.height = size;
    document.body.appendChild(canvas);
    const ctx = canvas.getContext("2d");
    const draw = (scale, ox, oy) => {
      ctx.fillStyle = "#fff"; ctx.fillRect(0, 0, size, size);
      for (let i = 0; i < n; i++) {
        ctx.fillStyle = css[i];
        ctx.beginPath();
        ctx.arc(ox + (x[i] - x0) / span * size * scale, oy + (y[i] - y0) / span * size * scale, 1.2, 0, 2 * Math.PI);
        ctx.fill();
      }
    };
    let t = performance.now(); draw(1, 0, 0); await paint(); out.arc_first.push(performance.now() - t);
    t = performance.now(); draw(1.5, -size / 4, -size / 4); await paint(); out.arc_zoom.push(performance.now() - t);
  }
  return out;
}"""


def median(values: list[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cells", type=int, default=100_000)
    parser.add_argument("--layout", choices=("auto", "umap", "pca"), default="auto")
    parser.add_argument("--data-dir", default=os.path.join(tempfile.gettempdir(),
                                                           "scbridge-bench-workspace"))
    args = parser.parse_args()

    from playwright.sync_api import expect, sync_playwright

    data, origin = make_cells(args.cells, Path(args.data_dir) / f"cells{args.cells}.arrow")
    log = Path(args.data_dir) / "workspace.log"
    print(f"data: {origin}; {data.stat().st_size / 1e6:.0f} MB Arrow CSR", flush=True)
    started = time.time()
    proc, url = start_workspace(data, args.layout, args.cells, log)
    base = url.split("/#", 1)[0]
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.goto(url)
            expect(page.get_by_test_id("job-status")).to_have_text(
                re.compile("^(done|failed|cancelled)$"), timeout=3_600_000)
            if page.get_by_test_id("job-status").text_content() != "done":
                raise RuntimeError(f"the job did not finish: "
                                   f"{page.get_by_test_id('error-message').text_content()}")
            expect(page.locator("[data-testid=label-table] tbody tr").first).to_be_visible(
                timeout=60_000)
            job_seconds = time.time() - started
            timings = page.evaluate("() => ({...window.scbridgeWorkspace.timings, "
                                    "origin: performance.timeOrigin})")
            key = page.evaluate("() => sessionStorage.getItem('scbridge.apiKey')")
            jobs = httpx.get(f"{base}/v1/workspace/jobs",
                             headers={"Authorization": f"Bearer {key}"}).json()["jobs"]
            finished = jobs[0]["finished"]
            drawn_epoch = (timings["origin"] + timings["firstDrawAt"]) / 1000
            box = page.get_by_test_id("embedding-overlay").bounding_box()
            draws = interact(page, box)
            ours = page.evaluate(OURS_TIMED)
            canvas = page.evaluate("() => [document.querySelector('#embedding-canvas').width, "
                                   "document.querySelector('#embedding-canvas').height]")
            points = page.evaluate("() => ({x: Array.from(window.scbridgeWorkspace.state.view.x), "
                                   "y: Array.from(window.scbridgeWorkspace.state.view.y), "
                                   "colours: Array.from(window.scbridgeWorkspace.scatter.colours)})")
            peer_page = browser.new_page(viewport={"width": 1400, "height": 900})
            peer_page.set_content("<!DOCTYPE html><body style='margin:0'></body>")
            peers = peer_page.evaluate(PEERS, {**points, "size": min(canvas)})
            version = browser.version
            browser.close()
    finally:
        proc.terminate()
        proc.wait(timeout=60)

    latency = [d["latency"] for d in draws if d["latency"] is not None]
    cost = [d["ms"] for d in draws]
    n = timings["cells"]
    print(f"\nscbridge workspace, {n:,} cells, headless Chromium {version} (software rendering, "
          f"--disable-gpu), {os.cpu_count()} cores; layout {args.layout}; canvas "
          f"{canvas[0]}x{canvas[1]} px")
    print(f"job (read, annotate, QC, embed, layout, markers) and page load: {job_seconds:.1f} s")
    print("\nafter the job finished (target: drawn within 2 s)")
    print(f"  'done' event -> cells fetched -> first full draw (browser clock): "
          f"{timings['fetchedAt'] - timings['doneAt']:.0f} ms -> "
          f"{timings['firstDrawAt'] - timings['doneAt']:.0f} ms")
    print(f"  job finished (server clock) -> first full draw (browser clock): "
          f"{drawn_epoch - finished:.2f} s")
    print("\npan / zoom (target: redraw within 100 ms); 30 wheel zooms, 30 drags")
    print(f"  input event -> redraw done: median {median(latency):.1f} ms, max "
          f"{max(latency):.1f} ms over {len(latency)} redraws")
    print(f"  draw itself: median {median(cost):.1f} ms, max {max(cost):.1f} ms")
    rows = [("ours: ImageData pixels", ours["first"], ours["zoom"]),
            ("peer: one SVG <circle> per cell (bridge.write_report)", peers["svg_first"],
             peers["svg_zoom"]),
            ("peer: canvas arc() per cell", peers["arc_first"], peers["arc_zoom"])]
    print("\nsame points, same colours, until painted (2 animation frames), median of runs")
    print(f"  {'':56s} {'first draw':>12s} {'zoom redraw':>12s} {'ratio':>14s}")
    ours_first, ours_zoom = median(ours["first"]), median(ours["zoom"])
    for name, first, zoom in rows:
        ratio = "" if name.startswith("ours") else \
            f"{median(first) / ours_first:5.1f}x / {median(zoom) / ours_zoom:4.1f}x"
        print(f"  {name:56s} {median(first):9.0f} ms {median(zoom):9.0f} ms {ratio:>14s}")
    summary = {"cells": n, "layout": args.layout, "chromium": version,
               "done_to_drawn_ms": timings["firstDrawAt"] - timings["doneAt"],
               "finished_to_drawn_s": drawn_epoch - finished,
               "redraw_latency_ms": {"median": median(latency), "max": max(latency)},
               "draw_ms": {"median": median(cost), "max": max(cost)},
               "first_draw_ms": {r[0]: median(r[1]) for r in rows},
               "zoom_redraw_ms": {r[0]: median(r[2]) for r in rows}}
    print("\n" + json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
