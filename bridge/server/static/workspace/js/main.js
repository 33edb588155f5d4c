// The workspace page: sign in with the API key, upload, run a job, explore, curate, export.
// Every text that comes from data (labels, cell ids, genes, file names) goes in through
// textContent, never as markup.

import * as api from "./api.js";
import * as charts from "./charts.js";
import { categoryColour, cellColours, rampCss } from "./colours.js";
import { Scatter } from "./scatter.js";
import { VirtualTable } from "./table.js";

const $ = (id) => document.getElementById(id);
const CURATED = "label_curated";
const FINISHED = ["done", "failed", "cancelled"];

const state = {
  options: null,
  upload: null,
  job: null,
  view: null,
  columns: new Map(),
  group: "label",
  colour: "label",
  selection: null,
  selectionCount: 0,
  cell: -1,
  label: null,
  dotplots: new Map(),
  curation: null,
  following: null,
  sort: { key: null, descending: false },
};
// Read by the benchmarks and tests: the browser's own timings.
const timings = {};
window.scbridgeWorkspace = { state, timings };

let scatter = null;
let cellTable = null;

function make(tag, attrs = {}, text = null) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "dataset") Object.assign(node.dataset, v);
    else node.setAttribute(k, v);
  }
  if (text !== null) node.textContent = text;
  return node;
}

// -- messages ---------------------------------------------------------------------------
function showError(err) {
  const box = $("error");
  const message = err && err.message ? err.message : String(err);
  box.replaceChildren(make("strong", {}, message));
  if (err && err.hint) box.appendChild(make("span", { class: "hint" }, ` ${err.hint}.`));
  if (err && (err.requestId || err.request_id)) {
    box.appendChild(make("span", { class: "rid" }, ` (request ${err.requestId || err.request_id})`));
  }
  box.dataset.code = (err && err.code) || "";
  box.hidden = false;
}

function clearError() {
  $("error").hidden = true;
  $("error").replaceChildren();
}

async function guarded(work) {
  clearError();
  try {
    return await work();
  } catch (err) {
    if (err.name !== "AbortError") showError(err);
    return undefined;
  }
}

function bytes(n) {
  if (n > 1e9) return `${(n / 1e9).toFixed(2)} GB`;
  if (n > 1e6) return `${(n / 1e6).toFixed(1)} MB`;
  return `${Math.max(1, Math.round(n / 1e3))} KB`;
}

// -- sign in ----------------------------------------------------------------------------
async function signIn() {
  if (!api.getKey()) return;
  try {
    state.options = await api.request("/v1/workspace/options");
  } catch (err) {
    if (err.status === 401) api.setKey("");
    updateKeyState();
    throw err;
  }
  updateKeyState();
  fillOptions();
  await refreshJobs(true);
}

function updateKeyState() {
  const on = Boolean(api.getKey());
  $("key-state").textContent = on ? "key set for this tab" : "no key";
  document.body.classList.toggle("signed-in", on && Boolean(state.options));
  $("run").disabled = !(on && state.upload);
}

function fillOptions() {
  const o = state.options;
  const model = $("model");
  model.replaceChildren(...o.models.map((m) => make("option", { value: m.name }, m.name)));
  model.value = o.default_model;
  const tissue = $("tissue");
  tissue.replaceChildren(make("option", { value: "" }, "all"), ...o.tissues.map((t) => make("option", { value: t }, t)));
  fillAtlases();
  $("upload-limit").textContent = `up to ${bytes(o.limits.max_upload_bytes)}, ${o.limits.max_cells.toLocaleString()} cells`;
}

function fillAtlases() {
  const m = state.options.models.find((x) => x.name === $("model").value);
  const atlases = m ? m.atlases : [];
  $("atlas").replaceChildren(...atlases.map((a) => make("option", { value: a }, a)));
  $("atlas").disabled = atlases.length < 2;
  $("tissue").disabled = $("model").value !== "markers";
}

// -- upload and run ---------------------------------------------------------------------
async function handleFile(file) {
  if (!file) return;
  await guarded(async () => {
    const typed = $("api-key").value.trim();
    if (typed) {  // a key typed but not yet confirmed with Enter / "Use key"
      api.setKey(typed);
      $("api-key").value = "";
      await signIn();
    }
    if (!api.getKey() || !state.options) {
      throw new api.ApiError(401, { code: "missing_api_key", message: "type the API key first.", hint: "paste the key the server's administrator gave you (or use the link scbridge workspace printed)" });
    }
    const suffix = file.name.includes(".") ? file.name.slice(file.name.lastIndexOf(".")).toLowerCase() : "";
    if (!state.options.input_suffixes.includes(suffix)) {
      throw new api.ApiError(422, { code: "unsupported_file_type", message: `'${file.name}': the workspace reads ${state.options.input_suffixes.join(", ")} files.`, hint: "upload an .h5ad, a Seurat / SingleCellExperiment / dgCMatrix .rds, an Arrow CSR .arrow file or a 10x .h5" });
    }
    const limit = state.options.limits.max_upload_bytes;
    if (file.size > limit) {
      throw new api.ApiError(413, { code: "body_too_large", message: `${file.name} (${bytes(file.size)}) is larger than this server's upload limit of ${bytes(limit)}.`, hint: "subset the data, or start the server with a larger --max-body-mb" });
    }
    state.upload = null;
    updateKeyState();
    const bar = $("upload-progress");
    bar.hidden = false;
    bar.value = 0;
    $("upload-state").textContent = `uploading ${file.name} (${bytes(file.size)})`;
    try {
      state.upload = await api.upload(file, (f) => { bar.value = f; }, limit);
    } catch (err) {
      $("upload-state").textContent = `${file.name} was not accepted`;
      throw err;
    } finally {
      bar.hidden = true;
    }
    $("upload-state").textContent = `${state.upload.name}: ${bytes(state.upload.size)}, ${state.upload.format}`;
    updateKeyState();
  });
}

async function run() {
  // Forget the job on screen at once: its "done" must not be read as the new job's.
  if (state.following) state.following.abort();
  state.job = null;
  $("explore").hidden = true;
  $("job-status").textContent = "starting";
  $("job-status").dataset.state = "starting";
  $("job-progress").value = 0;
  $("run").disabled = true;
  await guarded(async () => {
    const threshold = $("min-confidence").value;
    const job = await api.request("/v1/workspace/jobs", {
      method: "POST",
      json: {
        upload_id: state.upload.id,
        model: $("model").value,
        reference_atlas: $("atlas").value || null,
        tissue: $("tissue").disabled ? null : $("tissue").value || null,
        min_confidence: threshold === "" ? null : Number(threshold),
      },
    });
    state.upload = null;
    $("upload-state").textContent = "";
    updateKeyState();
    await openJob(job);
  });
}

function showStatus(status) {
  $("job-status").textContent = status.state;
  $("job-status").dataset.state = status.state;
  $("job-progress").value = status.progress || 0;
  const pct = status.state === "running" ? ` (${Math.round(100 * status.progress)}%)` : "";
  $("job-message").textContent = `${status.name}: ${status.message || status.stage}${pct}`;
  $("cancel").hidden = FINISHED.includes(status.state);
}

async function openJob(status) {
  if (state.following) state.following.abort();
  state.job = status;
  showStatus(status);
  $("explore").hidden = true;
  if (status.state === "done") {
    await loadResults(status);
    return;
  }
  if (FINISHED.includes(status.state)) {
    if (status.error) showError(status.error);
    return;
  }
  const controller = new AbortController();
  state.following = controller;
  try {
    const last = await api.followJob(status.id, (s) => {
      state.job = s;
      showStatus(s);
      if (s.state === "done" && timings.doneAt === undefined) timings.doneAt = performance.now();
    }, controller.signal);
    if (state.following === controller) state.following = null;
    await refreshJobs(false);
    if (last.state === "done") await loadResults(last);
    else if (last.error) showError(last.error);
  } catch (err) {
    if (err.name !== "AbortError") showError(err);
  }
}

async function refreshJobs(openLatest) {
  const { jobs } = await api.request("/v1/workspace/jobs");
  const list = $("jobs");
  list.replaceChildren();
  for (const job of jobs) {
    const item = make("li", { dataset: { job: job.id } });
    item.append(make("span", { class: "name" }, job.name), make("span", { class: `state ${job.state}` }, job.state));
    const open = make("button", { type: "button" }, "open");
    open.addEventListener("click", () => guarded(async () => openJob(await api.request(`/v1/workspace/jobs/${job.id}`))));
    const remove = make("button", { type: "button" }, "delete");
    remove.addEventListener("click", () => guarded(async () => {
      await api.request(`/v1/workspace/jobs/${job.id}`, { method: "DELETE" });
      if (state.job && state.job.id === job.id) {
        state.job = null;
        $("explore").hidden = true;
        $("job-status").textContent = "none";
      }
      await refreshJobs(false);
    }));
    item.append(open, remove);
    list.appendChild(item);
  }
  $("jobs-count").textContent = `(${jobs.length})`;
  if (openLatest && jobs.length && !state.job) await openJob(jobs[0]);
}

// -- results ----------------------------------------------------------------------------
function prepareColumn(column, n) {
  if (column.kind === "numeric") {
    const values = new Float32Array(n);
    let k = 0;
    column.values.forEach((v, i) => {
      values[i] = v === null ? NaN : v;
      if (v !== null) k++;
    });
    const finite = new Float32Array(k);
    k = 0;
    for (const v of values) if (!Number.isNaN(v)) finite[k++] = v;
    finite.sort();  // a typed array sorts numerically, and fast
    const at = (q) => (finite.length ? finite[Math.min(finite.length - 1, Math.floor(q * (finite.length - 1)))] : 0);
    return { name: column.name, kind: "numeric", values, lo: at(0.005), hi: at(0.995) };
  }
  return { name: column.name, kind: column.kind, levels: column.levels, codes: Int32Array.from(column.codes) };
}

async function loadResults(status) {
  const started = performance.now();
  const view = await api.request(`/v1/workspace/jobs/${status.id}/cells`);
  timings.fetchedAt = performance.now();
  const n = view.n_cells;
  state.view = view;
  // The label column first: the cells are drawn before the other columns are prepared.
  const first = view.columns.find((c) => c.name === "label") || view.columns[0];
  state.columns = new Map([[first.name, prepareColumn(first, n)]]);
  state.selection = null;
  state.selectionCount = 0;
  state.cell = -1;
  state.label = null;
  state.dotplots = new Map();
  $("explore").hidden = false;
  scatter.resize(false);
  scatter.setPoints(Float32Array.from(view.x), Float32Array.from(view.y));
  state.group = "label";
  state.colour = "label";
  scatter.colours = cellColours(state.columns.get("label"), n);
  scatter.draw();
  timings.firstDrawAt = performance.now();
  timings.loadMs = timings.firstDrawAt - started;
  timings.cells = n;
  state.columns = new Map(view.columns.map((c) => [c.name, c === first ? state.columns.get(c.name) : prepareColumn(c, n)]));
  $("layout-name").textContent = `${view.layout} of the PCA embedding, ${n.toLocaleString()} cells`;
  const reply = await api.request(`/v1/workspace/jobs/${status.id}/edits`);
  applyCuration(reply, false);
  buildCellTable();
  renderAll();
  showWarnings(status);
}

function showWarnings(status) {
  const box = $("warnings");
  box.replaceChildren();
  api.request(`/v1/workspace/jobs/${status.id}/summary`).then((summary) => {
    for (const w of summary.warnings || []) box.appendChild(make("p", {}, w));
    box.hidden = !box.children.length;
    const p = summary.provenance || {};
    $("provenance").textContent = [
      `${summary.n_cells.toLocaleString()} cells x ${(summary.n_genes || 0).toLocaleString()} genes`,
      state.view.provenance.model ? `model ${state.view.provenance.model}` : "",
      state.view.provenance.genes_matched !== undefined ? `genes matched ${(100 * state.view.provenance.genes_matched).toFixed(0)}%` : "",
      p.source || summary.source || "",
    ].filter(Boolean).join(" · ");
  }).catch(showError);
}

function groupColumn() {
  return state.columns.get(state.group) || state.columns.get("label");
}

function labelCounts(column) {
  const counts = new Array(column.levels.length).fill(0);
  for (const c of column.codes) if (c >= 0) counts[c]++;
  return column.levels.map((label, code) => ({ label, code, count: counts[code] }))
    .filter((r) => r.count > 0).sort((a, b) => b.count - a.count);
}

function fillColourSelect() {
  const select = $("colour-by");
  const groups = { label: "Labels", numeric: "Numbers", category: "Groups and metadata" };
  const parts = [];
  for (const [kind, title] of Object.entries(groups)) {
    const names = [...state.columns.values()].filter((c) => c.kind === kind).map((c) => c.name);
    if (!names.length) continue;
    const optgroup = make("optgroup", { label: title });
    for (const name of names) optgroup.appendChild(make("option", { value: name }, name === CURATED ? "label (curated)" : name));
    parts.push(optgroup);
  }
  select.replaceChildren(...parts);
  select.value = state.colour;
}

function setColour(name) {
  const column = state.columns.get(name);
  if (!column) return;
  state.colour = name;
  if (column.kind !== "numeric") state.group = name;
  renderAll();
}

function renderAll() {
  fillColourSelect();
  const column = state.columns.get(state.colour);
  scatter.setColours(cellColours(column, state.view.n_cells));
  renderLegend(column);
  renderLabelTable();
  renderCuration();
  renderActiveView();
  refreshCellTable();
}

function renderLegend(column) {
  const legend = $("legend");
  legend.replaceChildren();
  if (column.kind === "numeric") {
    const bar = make("div", { class: "ramp" });
    for (let k = 0; k <= 20; k++) {
      const stop = make("span");
      stop.style.background = rampCss(k / 20);
      bar.appendChild(stop);
    }
    legend.append(make("span", {}, column.lo.toPrecision(3)), bar, make("span", {}, column.hi.toPrecision(3)),
      make("span", { class: "muted" }, ` ${column.name} (0.5th to 99.5th percentile)`));
    return;
  }
  const rows = labelCounts(column).slice(0, 80);
  for (const r of rows) {
    const item = make("button", { type: "button", class: "key", dataset: { label: r.label } });
    const swatch = make("span", { class: "swatch" });
    swatch.style.background = categoryColour(r.code);
    item.append(swatch, make("span", {}, r.label));
    item.addEventListener("click", () => selectLabel(column.name, r.label));
    legend.appendChild(item);
  }
}

function renderLabelTable() {
  const column = groupColumn();
  const body = $("label-table").querySelector("tbody");
  body.replaceChildren();
  $("label-column").textContent = column.name === CURATED ? "label (curated)" : column.name;
  const confidence = state.columns.get("confidence");
  const total = state.view.n_cells;
  const byCode = column.levels.map(() => []);
  if (confidence) {
    column.codes.forEach((c, i) => {
      if (c >= 0 && !Number.isNaN(confidence.values[i])) byCode[c].push(confidence.values[i]);
    });
  }
  for (const r of labelCounts(column)) {
    const values = byCode[r.code].sort((a, b) => a - b);
    const median = values.length ? values[Math.floor((values.length - 1) / 2)] : NaN;
    const row = make("tr", { dataset: { label: r.label, count: String(r.count) } });
    const swatch = make("span", { class: "swatch" });
    swatch.style.background = categoryColour(r.code);
    const name = make("td");
    name.append(swatch, make("span", {}, r.label));
    row.append(name, make("td", { class: "num" }, r.count.toLocaleString()),
      make("td", { class: "num" }, `${((100 * r.count) / total).toFixed(1)}%`),
      make("td", { class: "num" }, Number.isNaN(median) ? "" : median.toFixed(2)));
    row.classList.toggle("active", state.label === r.label);
    row.addEventListener("click", () => selectLabel(column.name, r.label));
    body.appendChild(row);
  }
}

// -- selection and details ------------------------------------------------------------
function setSelection(mask, count, what) {
  state.selection = mask;
  state.selectionCount = count;
  scatter.setHighlight(mask);
  $("selection").textContent = mask ? `${count.toLocaleString()} cells selected${what ? ` (${what})` : ""}` : "no selection";
  $("clear-selection").hidden = !mask;
  $("relabel-button").disabled = !mask || !count;
  $("relabel-count").textContent = mask ? `${count.toLocaleString()} selected cells` : "no cells selected (lasso, or click a label)";
  refreshCellTable();
}

function selectLabel(columnName, label) {
  const column = state.columns.get(columnName);
  const code = column.levels.indexOf(label);
  const mask = new Uint8Array(state.view.n_cells);
  let count = 0;
  column.codes.forEach((c, i) => {
    if (c === code) {
      mask[i] = 1;
      count++;
    }
  });
  state.label = label;
  setSelection(mask, count, `${label}`);
  renderLabelTable();
  showLabelDetail(columnName, label);
}

async function showLabelDetail(columnName, label) {
  const box = $("detail");
  box.replaceChildren(make("h3", {}, label), make("p", { class: "muted" }, "marker genes (one against all other cells)…"));
  const data = await dotplotFor(columnName).catch((err) => { showError(err); return null; });
  if (!data || state.label !== label) return;
  const rows = (data.markers[label] || []).slice(0, 10);
  const table = make("table", { class: "small", "data-testid": "label-markers" });
  table.appendChild(make("tr")).append(...["gene", "log2 FC", "in label", "in rest", "adj. p"].map((t) => make("th", {}, t)));
  for (const r of rows) {
    table.appendChild(make("tr")).append(make("td", {}, r.gene),
      make("td", { class: "num" }, (r.log2_fold_change ?? NaN).toFixed(2)),
      make("td", { class: "num" }, `${Math.round(100 * r.fraction_in_label)}%`),
      make("td", { class: "num" }, `${Math.round(100 * r.fraction_in_rest)}%`),
      make("td", { class: "num" }, r.p_value_adjusted === null ? "" : r.p_value_adjusted.toExponential(1)));
  }
  box.replaceChildren(make("h3", {}, `${label}: top marker genes`), rows.length ? table : make("p", { class: "muted" }, "no marker genes (a label needs other labels to compare with)"));
}

async function pickCell(index) {
  if (index < 0) return;
  state.cell = index;
  scatter.mark(index);
  if (cellTable) cellTable.setActive(index);
  await guarded(async () => {
    const cell = await api.request(`/v1/workspace/jobs/${state.job.id}/cells/${index}`);
    const box = $("detail");
    const list = make("dl");
    const add = (k, v) => list.append(make("dt", {}, k), make("dd", {}, v));
    add("cell", cell.cell);
    for (const name of [...state.columns.keys()].filter((k) => state.columns.get(k).kind === "label")) {
      const col = state.columns.get(name);
      const code = col.codes[index];
      add(name === CURATED ? "label (curated)" : name, code >= 0 ? col.levels[code] : "-");
    }
    add("confidence", cell.confidence === null ? "-" : cell.confidence.toFixed(3));
    add("ontology id", cell.ontology_id || "-");
    add("alternates", (cell.alternates || []).map((a) => `${a.label} (${a.score.toFixed(2)})`).join(", ") || "-");
    add("marker genes of the call", (cell.markers || []).join(", ") || "-");
    if ("qc_pass" in cell) add("QC", cell.qc_pass ? "pass" : `flagged: ${cell.qc_reason}`);
    box.replaceChildren(make("h3", {}, "Selected cell"), list);
  });
}

// -- views on the side ------------------------------------------------------------------
function activeView() {
  const tab = document.querySelector("#tabs button.active");
  return tab ? tab.dataset.view : "labels";
}

function showView(name) {
  for (const tab of document.querySelectorAll("#tabs button")) tab.classList.toggle("active", tab.dataset.view === name);
  for (const panel of document.querySelectorAll(".view")) panel.hidden = panel.id !== `view-${name}`;
  renderActiveView();
}

function renderActiveView() {
  const view = activeView();
  if (view === "composition") renderComposition();
  else if (view === "confidence") renderConfidence();
  else if (view === "dotplot") renderDotplot();
  else if (view === "cells" && cellTable) cellTable.render();
}

function renderComposition() {
  const column = groupColumn();
  const rows = labelCounts(column).slice(0, 60);
  $("composition").replaceChildren(charts.composition(rows, state.view.n_cells));
}

function renderConfidence() {
  const column = groupColumn();
  const confidence = state.columns.get("confidence");
  if (!confidence) {
    $("confidence").replaceChildren(make("p", { class: "muted" }, "these calls have no confidence"));
    return;
  }
  const byCode = column.levels.map(() => []);
  column.codes.forEach((c, i) => {
    if (c >= 0 && !Number.isNaN(confidence.values[i])) byCode[c].push(confidence.values[i]);
  });
  const rows = labelCounts(column).slice(0, 60).map((r) => ({ ...r, values: Float32Array.from(byCode[r.code]).sort() }));
  $("confidence").replaceChildren(charts.confidence(rows));
}

async function dotplotFor(columnName) {
  const revision = columnName === CURATED && state.curation ? state.curation.revision : 0;
  const key = `${columnName}@${revision}`;
  if (!state.dotplots.has(key)) {
    const promise = api.request(`/v1/workspace/jobs/${state.job.id}/dotplot?column=${encodeURIComponent(columnName)}`);
    state.dotplots.set(key, promise);
    promise.catch(() => state.dotplots.delete(key));
  }
  return state.dotplots.get(key);
}

async function renderDotplot() {
  const column = groupColumn();
  const box = $("dotplot");
  box.replaceChildren(make("p", { class: "muted" }, `marker genes of ${column.name}…`));
  const data = await dotplotFor(column.name).catch((err) => { showError(err); return null; });
  if (!data || groupColumn().name !== column.name) return;
  if (!data.genes.length) {
    box.replaceChildren(make("p", { class: "muted" }, "a dot plot needs at least two labels"));
    return;
  }
  box.replaceChildren(charts.dotplot(data, (label) => selectLabel(column.name, label)));
}

// -- the cells table ----------------------------------------------------------------------
function cellText(row, key) {
  if (key === "cell") return state.view.cells[row];
  const column = state.columns.get(key);
  if (!column) return "";
  if (column.kind === "numeric") {
    const v = column.values[row];
    return Number.isNaN(v) ? "" : Math.abs(v) >= 100 ? v.toFixed(0) : v.toFixed(3);
  }
  const code = column.codes[row];
  return code >= 0 ? column.levels[code] : "";
}

function tableColumns() {
  const keys = ["cell", state.group];
  for (const name of ["label", CURATED, "confidence", "total_counts", "n_genes", "mito_fraction", "doublet_score", "qc_pass"]) {
    if (state.columns.has(name) && !keys.includes(name)) keys.push(name);
  }
  return keys.map((key) => ({
    key, title: key === CURATED ? "label (curated)" : key,
    width: key === "cell" ? 170 : state.columns.get(key) && state.columns.get(key).kind === "numeric" ? 92 : 170,
    numeric: Boolean(state.columns.get(key) && state.columns.get(key).kind === "numeric"),
  }));
}

function buildCellTable() {
  cellTable = new VirtualTable($("cell-table"), tableColumns(), cellText, {
    onRowClick: (row) => pickCell(row),
    onSort: (key) => {
      state.sort = { key, descending: state.sort.key === key ? !state.sort.descending : false };
      refreshCellTable();
    },
  });
  const filter = $("cell-filter-label");
  filter.replaceChildren(make("option", { value: "" }, "all labels"));
}

function refreshCellTable() {
  if (!state.view) return;
  const columns = tableColumns();
  if (!cellTable || cellTable.columns.map((c) => c.key).join() !== columns.map((c) => c.key).join()) buildCellTable();
  const group = groupColumn();
  const filter = $("cell-filter-label");
  const wanted = filter.value;
  if (filter.dataset.column !== group.name || filter.options.length - 1 !== group.levels.length) {
    filter.replaceChildren(make("option", { value: "" }, "all labels"), ...labelCounts(group).map((r) => make("option", { value: String(r.code) }, r.label)));
    filter.dataset.column = group.name;
  }
  filter.value = [...filter.options].some((o) => o.value === wanted) ? wanted : "";
  const code = filter.value === "" ? null : Number(filter.value);
  const search = $("cell-search").value.trim().toLowerCase();
  const minConfidence = Number($("cell-filter-confidence").value || 0);
  const qcOnly = $("cell-filter-qc").checked;
  const selectedOnly = $("cell-filter-selection").checked && state.selection;
  const confidence = state.columns.get("confidence");
  const qc = state.columns.get("qc_pass");
  const passCode = qc ? qc.levels.indexOf("true") : -1;
  const n = state.view.n_cells;
  const searchable = search ? [...state.columns.values()].filter((c) => c.kind !== "numeric") : [];
  const out = [];
  for (let i = 0; i < n; i++) {
    if (code !== null && group.codes[i] !== code) continue;
    if (minConfidence > 0 && confidence && !(confidence.values[i] >= minConfidence)) continue;
    if (qcOnly && qc && qc.codes[i] !== passCode) continue;
    if (selectedOnly && !state.selection[i]) continue;
    if (search) {
      let hit = state.view.cells[i].toLowerCase().includes(search);
      for (let k = 0; !hit && k < searchable.length; k++) {
        const c = searchable[k].codes[i];
        hit = c >= 0 && searchable[k].levels[c].toLowerCase().includes(search);
      }
      if (!hit) continue;
    }
    out.push(i);
  }
  let index = Int32Array.from(out);
  const { key, descending } = state.sort;
  if (key && (key === "cell" || state.columns.has(key))) {
    const column = state.columns.get(key);
    const value = key === "cell" ? (i) => state.view.cells[i]
      : column.kind === "numeric" ? (i) => column.values[i] : (i) => (column.codes[i] >= 0 ? column.levels[column.codes[i]] : "");
    const sign = descending ? -1 : 1;
    const sorted = Array.from(index).sort((a, b) => {
      const va = value(a), vb = value(b);
      return (va < vb ? -1 : va > vb ? 1 : 0) * sign;
    });
    index = Int32Array.from(sorted);
  }
  cellTable.setIndex(index);
  $("cell-count").textContent = `${index.length.toLocaleString()} of ${n.toLocaleString()} cells`;
}

// -- curation -------------------------------------------------------------------------------
function applyCuration(reply, switchTo = true) {
  state.curation = reply;
  const has = reply.edits.length > 0;
  if (has) {
    state.columns.set(CURATED, { name: CURATED, kind: "label", levels: reply.curated.levels, codes: Int32Array.from(reply.curated.codes) });
    if (switchTo || state.group === "label") {
      state.group = CURATED;
      if (state.columns.get(state.colour).kind !== "numeric") state.colour = CURATED;
    }
  } else {
    state.columns.delete(CURATED);
    if (state.group === CURATED) state.group = reply.base;
    if (state.colour === CURATED) state.colour = reply.base;
  }
  for (const key of [...state.dotplots.keys()]) if (key.startsWith(`${CURATED}@`)) state.dotplots.delete(key);
}

function currentCuratedLevels() {
  const column = state.columns.get(CURATED) || state.columns.get(state.curation.base);
  return labelCounts(column).map((r) => r.label);
}

function renderCuration() {
  if (!state.curation) return;
  const base = $("curation-base");
  const labels = [...state.columns.values()].filter((c) => c.kind === "label" && c.name !== CURATED).map((c) => c.name);
  base.replaceChildren(...labels.map((name) => make("option", { value: name }, name)));
  base.value = state.curation.base;
  base.disabled = state.curation.edits.length > 0;
  const levels = currentCuratedLevels();
  $("rename-from").replaceChildren(...levels.map((l) => make("option", { value: l }, l)));
  $("merge-from").replaceChildren(...levels.map((l) => make("option", { value: l }, l)));
  const body = $("edits-table").querySelector("tbody");
  body.replaceChildren();
  for (const e of state.curation.edits) {
    const row = make("tr", { dataset: { op: e.op, to: e.to_label } });
    const sources = e.from_labels ? e.from_labels.split(";") : [];
    const from = make("td", { title: sources.join("\n") },
      sources.length > 3 ? `${sources.slice(0, 3).join("; ")} and ${sources.length - 3} more` : sources.join("; "));
    row.append(make("td", { class: "num" }, String(e.edit)), make("td", {}, e.op), from,
      make("td", {}, e.to_label), make("td", { class: "num" }, e.n_cells.toLocaleString()));
    body.appendChild(row);
  }
  $("edits-empty").hidden = state.curation.edits.length > 0;
  $("undo-edit").disabled = !state.curation.edits.length;
  $("clear-edits").disabled = !state.curation.edits.length;
}

async function edit(body) {
  await guarded(async () => {
    const reply = await api.request(`/v1/workspace/jobs/${state.job.id}/edits`, {
      method: "POST", json: { base: state.curation.base, ...body },
    });
    applyCuration(reply);
    renderAll();
  });
}

async function changeEdits(path) {
  await guarded(async () => {
    const reply = await api.request(`/v1/workspace/jobs/${state.job.id}/edits${path}`, { method: "DELETE" });
    applyCuration(reply);
    renderAll();
  });
}

// -- wiring ------------------------------------------------------------------------------
function bind() {
  $("key-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const key = $("api-key").value.trim();
    if (!key) return;
    api.setKey(key);
    $("api-key").value = "";
    guarded(signIn);
  });
  $("forget-key").addEventListener("click", () => {
    api.setKey("");
    state.options = null;
    updateKeyState();
  });
  $("model").addEventListener("change", fillAtlases);
  $("file").addEventListener("change", (e) => handleFile(e.target.files[0]));
  const drop = $("drop");
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    handleFile(e.dataTransfer.files[0]);
  });
  $("run").addEventListener("click", run);
  $("cancel").addEventListener("click", () => guarded(async () => {
    showStatus(await api.request(`/v1/workspace/jobs/${state.job.id}/cancel`, { method: "POST" }));
  }));
  $("colour-by").addEventListener("change", (e) => setColour(e.target.value));
  for (const tab of document.querySelectorAll("#tabs button")) tab.addEventListener("click", () => showView(tab.dataset.view));
  $("mode-pan").addEventListener("click", () => setMode("pan"));
  $("mode-lasso").addEventListener("click", () => setMode("lasso"));
  $("zoom-in").addEventListener("click", () => scatter.zoomBy(1.5));
  $("zoom-out").addEventListener("click", () => scatter.zoomBy(1 / 1.5));
  $("reset-view").addEventListener("click", () => scatter.resetView());
  $("point-size").addEventListener("input", (e) => {
    scatter.pointScale = Number(e.target.value);
    scatter.requestDraw();
  });
  $("clear-selection").addEventListener("click", () => {
    state.label = null;
    setSelection(null, 0, "");
    renderLabelTable();
  });
  for (const id of ["cell-search", "cell-filter-label", "cell-filter-confidence", "cell-filter-qc", "cell-filter-selection"]) {
    $(id).addEventListener("input", refreshCellTable);
  }
  $("curation-base").addEventListener("change", (e) => {
    state.curation.base = e.target.value;
    renderCuration();
  });
  $("rename-button").addEventListener("click", () => {
    const to = $("rename-to").value.trim();
    if (to) edit({ op: "rename", from: $("rename-from").value, to }).then(() => { $("rename-to").value = ""; });
  });
  $("merge-button").addEventListener("click", () => {
    const from = [...$("merge-from").selectedOptions].map((o) => o.value);
    const to = $("merge-to").value.trim();
    if (from.length && to) edit({ op: "merge", from, to }).then(() => { $("merge-to").value = ""; });
  });
  $("relabel-button").addEventListener("click", () => {
    const to = $("relabel-to").value.trim();
    if (!to || !state.selection) return;
    const cells = [];
    state.selection.forEach((on, i) => { if (on) cells.push(state.view.cells[i]); });
    edit({ op: "relabel", cells, to }).then(() => { $("relabel-to").value = ""; });
  });
  $("undo-edit").addEventListener("click", () => changeEdits("/last"));
  $("clear-edits").addEventListener("click", () => changeEdits(""));
  for (const button of document.querySelectorAll("[data-export]")) {
    button.addEventListener("click", () => guarded(async () => {
      const kind = button.dataset.export;
      $("export-state").textContent = `preparing ${kind}…`;
      try {
        const link = await api.download(state.job.id, kind);
        $("export-state").textContent = `${link.filename} (${bytes(link.size)})`;
      } catch (err) {
        $("export-state").textContent = `${kind} failed`;
        throw err;
      }
    }));
  }
}

function setMode(mode) {
  scatter.setMode(mode);
  $("mode-pan").classList.toggle("active", mode === "pan");
  $("mode-lasso").classList.toggle("active", mode === "lasso");
}

async function boot() {
  scatter = new Scatter($("embedding-canvas"), $("embedding-overlay"), {
    onPick: (i) => pickCell(i),
    onLasso: (mask, count) => {
      state.label = null;
      setSelection(count ? mask : null, count, "lasso");
      renderLabelTable();
      if (count) showView("curation");
    },
    onDraw: (record) => { timings.lastDraw = record; },
  });
  window.scbridgeWorkspace.scatter = scatter;
  bind();
  setMode("pan");
  if (location.hash.startsWith("#login=")) {
    const token = decodeURIComponent(location.hash.slice(7));
    history.replaceState(null, "", location.pathname + location.search);
    await guarded(async () => {
      const { api_key: key } = await api.request("/v1/workspace/session", { method: "POST", json: { token } });
      api.setKey(key);
    });
  }
  updateKeyState();
  if (api.getKey()) await guarded(signIn);
  document.body.dataset.ready = "true";
}

boot();
