// The embedding scatter: up to 100,000+ points written straight into an ImageData pixel
// buffer (no per-point canvas calls, no GPU needed), so a full redraw takes a few ms and pan /
// zoom stay smooth on a software-rendered browser.  A second canvas on top draws the lasso
// and the selected cell.

import { BACKGROUND_WORD, GREY } from "./colours.js";

const MARGIN = 0.04;

function seededOrder(n, seed = 7) {
  // Draw order shuffled once, so no label is painted over wholesale by the next one.
  const order = new Uint32Array(n);
  for (let i = 0; i < n; i++) order[i] = i;
  let s = seed >>> 0;
  for (let i = n - 1; i > 0; i--) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    const j = s % (i + 1);
    const t = order[i];
    order[i] = order[j];
    order[j] = t;
  }
  return order;
}

export class Scatter {
  constructor(canvas, overlay, { onPick, onLasso, onDraw } = {}) {
    this.canvas = canvas;
    this.overlay = overlay;
    this.ctx = canvas.getContext("2d", { alpha: false });
    this.octx = overlay.getContext("2d");
    this.onPick = onPick || (() => {});
    this.onLasso = onLasso || (() => {});
    this.onDraw = onDraw || (() => {});
    this.n = 0;
    this.mode = "pan";
    this.pointScale = 1;
    this.highlight = null;
    this.marked = -1;
    this.view = { scale: 1, tx: 0, ty: 0 };
    this.pending = 0;
    this.inputTime = null;
    this.stats = { draws: [] };
    this.dpr = window.devicePixelRatio || 1;
    this._bindEvents();
    new ResizeObserver(() => this.resize()).observe(canvas.parentElement);
  }

  setPoints(x, y) {
    const n = x.length;
    let x0 = Infinity, x1 = -Infinity, y0 = Infinity, y1 = -Infinity;
    for (let i = 0; i < n; i++) {
      if (x[i] < x0) x0 = x[i];
      if (x[i] > x1) x1 = x[i];
      if (y[i] < y0) y0 = y[i];
      if (y[i] > y1) y1 = y[i];
    }
    const span = Math.max(x1 - x0, y1 - y0) || 1;
    // Unit square, aspect kept, y pointing up.
    this.nx = new Float32Array(n);
    this.ny = new Float32Array(n);
    const cx = (x0 + x1) / 2, cy = (y0 + y1) / 2;
    for (let i = 0; i < n; i++) {
      this.nx[i] = 0.5 + (x[i] - cx) / span;
      this.ny[i] = 0.5 - (y[i] - cy) / span;
    }
    this.n = n;
    this.order = seededOrder(n);
    this.colours = new Uint32Array(n).fill(GREY);
    this.highlight = null;
    this.marked = -1;
    this.resize(false);
    this.resetView();
  }

  setColours(colours) {
    this.colours = colours;
    this.requestDraw();
  }

  setHighlight(mask) {
    this.highlight = mask;
    this.requestDraw();
  }

  mark(index) {
    this.marked = index;
    this.drawOverlay();
  }

  setMode(mode) {
    this.mode = mode;
    this.canvas.parentElement.dataset.mode = mode;
  }

  resize(redraw = true) {
    const box = this.canvas.parentElement.getBoundingClientRect();
    const w = Math.max(50, Math.round(box.width * this.dpr));
    const h = Math.max(50, Math.round(box.height * this.dpr));
    if (w !== this.canvas.width || h !== this.canvas.height) {
      const old = { w: this.canvas.width, h: this.canvas.height };
      for (const c of [this.canvas, this.overlay]) {
        c.width = w;
        c.height = h;
      }
      if (redraw && old.w > 0) {
        // Keep the centre of the view where it was.
        this.view.tx += (w - old.w) / 2;
        this.view.ty += (h - old.h) / 2;
      }
      this.image = null;
    }
    if (redraw) this.requestDraw();
  }

  resetView() {
    const w = this.canvas.width, h = this.canvas.height;
    const scale = Math.min(w, h) * (1 - 2 * MARGIN);
    this.view = { scale, tx: (w - scale) / 2, ty: (h - scale) / 2 };
    this.requestDraw();
  }

  zoomBy(factor, cx = this.canvas.width / 2, cy = this.canvas.height / 2, inputTime = null) {
    const v = this.view;
    const next = Math.max(0.2 * this.baseScale(), Math.min(400 * this.baseScale(), v.scale * factor));
    const f = next / v.scale;
    v.tx = cx - (cx - v.tx) * f;
    v.ty = cy - (cy - v.ty) * f;
    v.scale = next;
    this.requestDraw(inputTime);
  }

  panBy(dx, dy, inputTime = null) {
    this.view.tx += dx;
    this.view.ty += dy;
    this.requestDraw(inputTime);
  }

  baseScale() {
    return Math.min(this.canvas.width, this.canvas.height) * (1 - 2 * MARGIN);
  }

  requestDraw(inputTime = null) {
    if (inputTime !== null && this.inputTime === null) this.inputTime = inputTime;
    if (this.pending) return;
    this.pending = requestAnimationFrame(() => {
      this.pending = 0;
      this.draw();
    });
  }

  radius() {
    // Points grow a little as one zooms in, and are smaller when there are many.
    const base = this.n > 50000 ? 1.1 : this.n > 10000 ? 1.6 : this.n > 2000 ? 2.4 : 3.5;
    const zoom = Math.sqrt(this.view.scale / this.baseScale());
    return Math.max(1, Math.min(12, base * this.dpr * this.pointScale * Math.min(zoom, 4)));
  }

  stamp(width, r) {
    const key = `${width}:${r}`;
    if (this._stampKey === key) return this._stamp;
    const offsets = [];
    const ri = Math.ceil(r);
    for (let dy = -ri; dy <= ri; dy++) {
      for (let dx = -ri; dx <= ri; dx++) {
        if (dx * dx + dy * dy <= r * r + 0.5) offsets.push(dy * width + dx);
      }
    }
    this._stampKey = key;
    this._stamp = { offsets: Int32Array.from(offsets), reach: ri };
    return this._stamp;
  }

  draw() {
    const started = performance.now();
    const w = this.canvas.width, h = this.canvas.height;
    if (!this.image || this.image.width !== w || this.image.height !== h) {
      this.image = this.ctx.createImageData(w, h);
      this.pixels = new Uint32Array(this.image.data.buffer);
    }
    const px = this.pixels;
    px.fill(BACKGROUND_WORD);
    if (this.n) {
      const { offsets, reach } = this.stamp(w, this.radius());
      const hl = this.highlight;
      if (hl) {
        this._pass(px, w, h, offsets, reach, (i) => !hl[i], () => GREY);
        this._pass(px, w, h, offsets, reach, (i) => hl[i], (i) => this.colours[i]);
      } else {
        this._pass(px, w, h, offsets, reach, null, (i) => this.colours[i]);
      }
    }
    this.ctx.putImageData(this.image, 0, 0);
    this.drawOverlay();
    const ended = performance.now();
    const record = { at: ended, ms: ended - started, latency: this.inputTime === null ? null : ended - this.inputTime };
    this.inputTime = null;
    this.stats.draws.push(record);
    if (this.stats.draws.length > 500) this.stats.draws.shift();
    this.onDraw(record);
    return record;
  }

  _pass(px, w, h, offsets, reach, keep, colourOf) {
    const { scale, tx, ty } = this.view;
    const nx = this.nx, ny = this.ny, order = this.order, n = this.n;
    const m = offsets.length;
    const colours = this.colours;
    for (let k = 0; k < n; k++) {
      const i = order[k];
      if (keep !== null && !keep(i)) continue;
      const x = (tx + nx[i] * scale) | 0;
      const y = (ty + ny[i] * scale) | 0;
      if (x < -reach || y < -reach || x >= w + reach || y >= h + reach) continue;
      const c = keep === null ? colours[i] : colourOf(i);
      const base = y * w + x;
      if (x >= reach && y >= reach && x < w - reach && y < h - reach) {
        for (let j = 0; j < m; j++) px[base + offsets[j]] = c;
      } else {
        // Near an edge: skip the pixels outside the canvas.
        for (let j = 0; j < m; j++) {
          const o = offsets[j];
          const dy = Math.round(o / w);
          const dx = o - dy * w;
          const xx = x + dx, yy = y + dy;
          if (xx >= 0 && yy >= 0 && xx < w && yy < h) px[base + o] = c;
        }
      }
    }
  }

  screenOf(i) {
    const { scale, tx, ty } = this.view;
    return [tx + this.nx[i] * scale, ty + this.ny[i] * scale];
  }

  drawOverlay(path = null) {
    const o = this.octx;
    o.clearRect(0, 0, this.overlay.width, this.overlay.height);
    if (this.marked >= 0 && this.marked < this.n) {
      const [x, y] = this.screenOf(this.marked);
      o.lineWidth = 2 * this.dpr;
      o.strokeStyle = "#000";
      o.beginPath();
      o.arc(x, y, this.radius() + 5 * this.dpr, 0, 2 * Math.PI);
      o.stroke();
    }
    if (path && path.length > 1) {
      o.lineWidth = 1.5 * this.dpr;
      o.strokeStyle = "#c00";
      o.fillStyle = "rgba(200,0,0,0.08)";
      o.beginPath();
      o.moveTo(path[0][0], path[0][1]);
      for (const [x, y] of path) o.lineTo(x, y);
      o.closePath();
      o.fill();
      o.stroke();
    }
  }

  nearest(sx, sy, within) {
    let best = -1, bestD = within * within;
    const { scale, tx, ty } = this.view;
    for (let i = 0; i < this.n; i++) {
      const dx = tx + this.nx[i] * scale - sx;
      const dy = ty + this.ny[i] * scale - sy;
      const d = dx * dx + dy * dy;
      if (d < bestD) {
        bestD = d;
        best = i;
      }
    }
    return best;
  }

  inside(path) {
    // Cells whose screen position lies inside the lasso polygon (even-odd rule).
    const mask = new Uint8Array(this.n);
    let x0 = Infinity, x1 = -Infinity, y0 = Infinity, y1 = -Infinity;
    for (const [x, y] of path) {
      x0 = Math.min(x0, x); x1 = Math.max(x1, x);
      y0 = Math.min(y0, y); y1 = Math.max(y1, y);
    }
    const xs = Float64Array.from(path.map((p) => p[0]));
    const ys = Float64Array.from(path.map((p) => p[1]));
    const m = path.length;
    const { scale, tx, ty } = this.view;
    let count = 0;
    for (let i = 0; i < this.n; i++) {
      const px = tx + this.nx[i] * scale, py = ty + this.ny[i] * scale;
      if (px < x0 || px > x1 || py < y0 || py > y1) continue;
      let odd = false;
      for (let a = 0, b = m - 1; a < m; b = a++) {
        if ((ys[a] > py) !== (ys[b] > py) && px < ((xs[b] - xs[a]) * (py - ys[a])) / (ys[b] - ys[a]) + xs[a]) odd = !odd;
      }
      if (odd) {
        mask[i] = 1;
        count++;
      }
    }
    return { mask, count };
  }

  _bindEvents() {
    const el = this.overlay;
    let drag = null;
    const pos = (e) => {
      const r = el.getBoundingClientRect();
      return [(e.clientX - r.left) * this.dpr, (e.clientY - r.top) * this.dpr];
    };
    el.addEventListener("pointerdown", (e) => {
      el.setPointerCapture(e.pointerId);
      const [x, y] = pos(e);
      drag = { x, y, startX: x, startY: y, path: [[x, y]], moved: false, lasso: this.mode === "lasso" || e.shiftKey };
    });
    el.addEventListener("pointermove", (e) => {
      if (!drag) return;
      const [x, y] = pos(e);
      if (Math.abs(x - drag.startX) + Math.abs(y - drag.startY) > 4 * this.dpr) drag.moved = true;
      if (drag.lasso) {
        drag.path.push([x, y]);
        this.drawOverlay(drag.path);
      } else {
        this.panBy(x - drag.x, y - drag.y, e.timeStamp);
      }
      drag.x = x;
      drag.y = y;
    });
    const finish = (e) => {
      if (!drag) return;
      const d = drag;
      drag = null;
      if (!d.moved) {
        const [x, y] = pos(e);
        this.onPick(this.nearest(x, y, 10 * this.dpr));
        return;
      }
      if (d.lasso && d.path.length > 2) {
        const { mask, count } = this.inside(d.path);
        this.drawOverlay();
        this.onLasso(mask, count);
      }
    };
    el.addEventListener("pointerup", finish);
    el.addEventListener("pointercancel", () => {
      drag = null;
      this.drawOverlay();
    });
    el.addEventListener("wheel", (e) => {
      e.preventDefault();
      const [x, y] = pos(e);
      const delta = e.deltaMode === 1 ? e.deltaY * 16 : e.deltaY;
      this.zoomBy(Math.exp(-delta * 0.0015), x, y, e.timeStamp);
    }, { passive: false });
  }
}
