"""Screenshots of every view of the browser workspace, for docs/workspace.md.

Runs ``scbridge workspace FILE --no-browser`` on the sorted PBMC of ../shared/data (3,500
cells; ``SeuratObject::pbmc_small`` saved by R where that is absent), opens its sign-in link
in headless Chromium and saves one PNG per view under docs/img/::

    python tools/workspace_screenshots.py [--file DATA] [--out docs/img]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = os.environ.get("SCBRIDGE_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


def default_file(tmp: Path) -> Path:
    for parent in ROOT.parents:
        candidate = parent / "shared" / "data" / "sorted_pbmc_seurat.rds"
        if candidate.exists():
            return candidate
    out = tmp / "pbmc_small.rds"
    subprocess.run(["Rscript", "-e", f'saveRDS(SeuratObject::pbmc_small, "{out}")'], check=True)
    return out


def start(file: Path, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    proc = subprocess.Popen([sys.executable, "-m", "bridge", "workspace", str(file),
                             "--no-browser"], stdout=log.open("wb"), stderr=subprocess.STDOUT,
                            cwd=ROOT)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        for line in log.read_text().splitlines():
            if line.startswith("scbridge workspace: http"):
                return proc, line.split(": ", 1)[1].strip()
        time.sleep(0.1)
    raise RuntimeError(log.read_text())


def shoot(page: Any, out: Path, name: str) -> None:
    page.wait_for_timeout(300)
    page.screenshot(path=str(out / f"workspace-{name}.png"))
    print(f"wrote {out / f'workspace-{name}.png'}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--file", type=Path)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "img")
    args = parser.parse_args()

    from playwright.sync_api import expect, sync_playwright

    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        file = args.file or default_file(Path(tmp))
        proc, url = start(file, Path(tmp) / "workspace.log")
        try:
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path=CHROMIUM,
                                                     args=CHROMIUM_ARGS)
                page = browser.new_page(viewport={"width": 1480, "height": 920},
                                        accept_downloads=True)
                page.goto(url)
                expect(page.get_by_test_id("job-status")).to_have_text("running",
                                                                       timeout=60_000)
                expect(page.get_by_test_id("job-message")).to_contain_text("embedding",
                                                                           timeout=300_000)
                shoot(page, args.out, "running")
                expect(page.get_by_test_id("job-status")).to_have_text("done",
                                                                       timeout=1_800_000)
                expect(page.locator("[data-testid=label-table] tbody tr").first).to_be_visible()
                shoot(page, args.out, "labels")

                page.get_by_test_id("colour-select").select_option("confidence")
                page.get_by_test_id("tab-confidence").click()
                shoot(page, args.out, "confidence")

                page.get_by_test_id("colour-select").select_option("mito_fraction")
                page.get_by_test_id("tab-composition").click()
                shoot(page, args.out, "composition")

                page.get_by_test_id("colour-select").select_option("label")
                page.get_by_test_id("tab-dotplot").click()
                expect(page.get_by_test_id("dotplot-chart").locator("svg")).to_be_visible(
                    timeout=120_000)
                first = page.locator("[data-testid=legend] .key").first
                first.click()
                page.wait_for_timeout(1500)
                shoot(page, args.out, "dotplot")

                page.get_by_test_id("tab-cells").click()
                page.get_by_test_id("cell-filter-confidence").fill("0.9")
                page.locator("[data-testid=cell-table] .vrow").nth(2).click()
                expect(page.get_by_test_id("detail")).to_contain_text("marker genes of the call")
                shoot(page, args.out, "cells")

                # Curation: rename the largest label, lasso a region and relabel it.
                page.locator("#clear-selection").click()
                page.get_by_test_id("tab-curation").click()
                largest = page.locator("[data-testid=label-table] tbody tr").first
                old = largest.get_attribute("data-label") or ""
                page.get_by_test_id("rename-from").select_option(old)
                page.get_by_test_id("rename-to").fill(f"{old} (checked)")
                page.get_by_test_id("rename-button").click()
                expect(page.locator("[data-testid=edits-table] tbody tr")).to_have_count(1)
                page.get_by_test_id("mode-lasso").click()
                box = page.get_by_test_id("embedding-overlay").bounding_box() or {}
                # Around a cell of the second largest label (screen position from the plot).
                sx, sy = page.evaluate("""() => {
                  const w = window.scbridgeWorkspace, col = w.state.columns.get('label');
                  const xs = [], ys = [];
                  col.codes.forEach((c, i) => {
                    if (c === 1) { const [x, y] = w.scatter.screenOf(i); xs.push(x); ys.push(y); }
                  });
                  const mid = (a) => a.sort((p, q) => p - q)[a.length >> 1] / w.scatter.dpr;
                  return [mid(xs), mid(ys)];
                }""")
                cx, cy = box["x"] + sx, box["y"] + sy
                page.mouse.move(cx - 35, cy - 30)
                page.mouse.down()
                for dx, dy in ((30, -45), (45, 10), (10, 40), (-40, 25)):
                    page.mouse.move(cx + dx, cy + dy, steps=6)
                page.mouse.up()
                page.get_by_test_id("relabel-to").fill("lasso: to review")
                page.get_by_test_id("relabel-button").click()
                expect(page.locator("[data-testid=edits-table] tbody tr")).to_have_count(2)
                shoot(page, args.out, "curation")

                page.get_by_test_id("tab-export").click()
                with page.expect_download():
                    page.get_by_test_id("download-csv").click()
                expect(page.get_by_test_id("export-state")).to_contain_text("calls.csv")
                shoot(page, args.out, "export")
                browser.close()
        finally:
            proc.terminate()
            proc.wait(timeout=60)
    return 0


if __name__ == "__main__":
    sys.exit(main())
