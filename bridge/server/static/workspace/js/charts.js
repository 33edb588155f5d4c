// Small SVG charts built with DOM calls (text always through textContent, never as markup):
// label composition, confidence per label, marker dot plot.

import { blues, categoryColour } from "./colours.js";

const NS = "http://www.w3.org/2000/svg";

function el(name, attrs = {}, text = null) {
  const node = document.createElementNS(NS, name);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  if (text !== null) node.textContent = text;
  return node;
}

function svg(width, height, label) {
  return el("svg", { width, height, viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": label, class: "chart" });
}

function titled(node, text) {
  node.appendChild(el("title", {}, text));
  return node;
}

const LEFT = 190;

// Long labels are shortened to fit the left margin; the full text is in a tooltip.
function name(label, x, y, attrs = {}) {
  const short = label.length > 25 ? `${label.slice(0, 24)}…` : label;
  return titled(el("text", { x, y, "text-anchor": "end", ...attrs }, short), label);
}

// rows: [{label, count, code}] most frequent first.
export function composition(rows, total) {
  const barH = 18, width = 220;
  const peak = Math.max(1, ...rows.map((r) => r.count));
  const out = svg(LEFT + width + 110, 16 + barH * rows.length, "label composition");
  rows.forEach((r, k) => {
    const y = 8 + k * barH;
    const w = (width * r.count) / peak;
    out.appendChild(name(r.label, LEFT - 6, y + 13));
    out.appendChild(titled(el("rect", { x: LEFT, y: y + 2, width: w.toFixed(1), height: barH - 4, fill: categoryColour(r.code) }),
      `${r.label}: ${r.count.toLocaleString()} cells`));
    out.appendChild(el("text", { x: (LEFT + w + 4).toFixed(1), y: y + 13 },
      `${r.count.toLocaleString()} (${((100 * r.count) / Math.max(total, 1)).toFixed(1)}%)`));
  });
  return out;
}

function quantile(sorted, q) {
  if (!sorted.length) return NaN;
  const pos = (sorted.length - 1) * q;
  const lo = Math.floor(pos), hi = Math.ceil(pos);
  return sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo);
}

// rows: [{label, code, values: Float32Array sorted}]
export function confidence(rows) {
  const rowH = 20, width = 240;
  const height = 20 + rowH * rows.length + 30;
  const out = svg(LEFT + width + 60, height, "confidence per label");
  const x = (v) => LEFT + width * Math.max(0, Math.min(1, v));
  for (let t = 0; t <= 1.0001; t += 0.2) {
    out.appendChild(el("line", { x1: x(t), x2: x(t), y1: 12, y2: height - 25, stroke: "#ddd" }));
    out.appendChild(el("text", { x: x(t), y: height - 10, "text-anchor": "middle" }, t.toFixed(1)));
  }
  rows.forEach((r, k) => {
    const y = 16 + k * rowH;
    out.appendChild(name(r.label, LEFT - 6, y + 14));
    if (!r.values.length) return;
    const [p5, q1, med, q3, p95] = [0.05, 0.25, 0.5, 0.75, 0.95].map((q) => quantile(r.values, q));
    const mid = y + rowH / 2;
    out.appendChild(el("line", { x1: x(p5), x2: x(p95), y1: mid, y2: mid, stroke: "#555" }));
    out.appendChild(titled(el("rect", { x: x(q1), y: y + 3, width: Math.max(x(q3) - x(q1), 1), height: rowH - 6,
      fill: categoryColour(r.code), "fill-opacity": 0.7, stroke: "#333" }),
      `${r.label}: median ${med.toFixed(2)}, quartiles ${q1.toFixed(2)}-${q3.toFixed(2)}, ${r.values.length.toLocaleString()} cells`));
    out.appendChild(el("line", { x1: x(med), x2: x(med), y1: y + 3, y2: y + rowH - 3, stroke: "#000", "stroke-width": 2 }));
  });
  out.appendChild(el("text", { x: LEFT + width / 2, y: height, "text-anchor": "middle" }, "confidence"));
  return out;
}

// data: the /dotplot reply (labels, genes, fraction, scaled).
export function dotplot(data, onLabel) {
  const cell = 18, top = 96;
  const width = LEFT + cell * data.genes.length + 150;
  const height = top + cell * data.labels.length + 20;
  const out = svg(width, Math.max(height, top + 140), "marker dot plot");
  out.classList.add("wide");  // scrolls sideways rather than shrinking its dots
  data.genes.forEach((gene, j) => {
    const gx = LEFT + cell * j + cell / 2;
    out.appendChild(el("text", { transform: `translate(${gx.toFixed(1)},${top - 6}) rotate(-60)` }, gene));
  });
  data.labels.forEach((label, i) => {
    const gy = top + cell * i + cell / 2;
    const text = name(label, LEFT - 6, (gy + 4).toFixed(1), { class: "clickable" });
    text.addEventListener("click", () => onLabel(label));
    out.appendChild(text);
    data.genes.forEach((gene, j) => {
      const f = data.fraction[i][j], m = data.scaled[i][j];
      if (!(f > 0)) return;
      const gx = LEFT + cell * j + cell / 2;
      out.appendChild(titled(el("circle", { cx: gx.toFixed(1), cy: gy.toFixed(1), r: ((cell / 2 - 1) * Math.sqrt(f)).toFixed(2), fill: blues(m) }),
        `${gene} in ${label}: ${(100 * f).toFixed(0)}% of cells, scaled mean ${m.toFixed(2)}`));
    });
  });
  const lx = LEFT + cell * data.genes.length + 20;
  [0.25, 0.5, 1.0].forEach((f, k) => {
    out.appendChild(el("circle", { cx: lx + 8, cy: top + 10 + 20 * k, r: ((cell / 2 - 1) * Math.sqrt(f)).toFixed(2), fill: "#888" }));
    out.appendChild(el("text", { x: lx + 22, y: top + 14 + 20 * k }, `${f * 100}% cells`));
  });
  [0, 0.5, 1].forEach((m, k) => {
    out.appendChild(el("rect", { x: lx, y: top + 74 + 16 * k, width: 16, height: 12, fill: blues(m) }));
    out.appendChild(el("text", { x: lx + 22, y: top + 84 + 16 * k }, `mean ${m.toFixed(1)}`));
  });
  return out;
}
