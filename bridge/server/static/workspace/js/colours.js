// Colours: the report's categorical palette (Okabe-Ito, then Tableau 10) and a viridis ramp,
// as CSS strings and as packed RGBA words for the scatter's pixel buffer.

export const PALETTE = [
  "#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442",
  "#000000", "#4E79A7", "#F28E2B", "#59A14F", "#E15759", "#B07AA1", "#9C755F",
  "#76B7B2", "#EDC948", "#FF9DA7", "#BAB0AC",
];
export const MISSING = "#d0d0d0";
export const BACKGROUND = "#ffffff";

// viridis at 9 stops (matplotlib), interpolated to 256 entries.
const VIRIDIS_STOPS = [
  [68, 1, 84], [71, 44, 122], [59, 81, 139], [44, 113, 142], [33, 144, 141],
  [39, 173, 129], [92, 200, 99], [170, 220, 50], [253, 231, 37],
];

function hexToRgb(hex) {
  const v = parseInt(hex.slice(1), 16);
  return [(v >> 16) & 255, (v >> 8) & 255, v & 255];
}

// Packed little-endian RGBA (what a Uint32Array view of ImageData.data holds).
export function pack([r, g, b], a = 255) {
  return ((a << 24) | (b << 16) | (g << 8) | r) >>> 0;
}

export function categoryColour(index) {
  return index < 0 ? MISSING : PALETTE[index % PALETTE.length];
}

export const RAMP = (() => {
  const out = [];
  for (let i = 0; i < 256; i++) {
    const t = (i / 255) * (VIRIDIS_STOPS.length - 1);
    const k = Math.min(Math.floor(t), VIRIDIS_STOPS.length - 2);
    const f = t - k;
    out.push(VIRIDIS_STOPS[k].map((c, j) => Math.round(c + (VIRIDIS_STOPS[k + 1][j] - c) * f)));
  }
  return out;
})();

export function rampCss(t) {
  const [r, g, b] = RAMP[Math.max(0, Math.min(255, Math.round(t * 255)))];
  return `rgb(${r},${g},${b})`;
}

// Blues for the dot plot (light grey-blue to dark blue), as in the static report.
export function blues(value) {
  const v = Math.max(0, Math.min(1, value));
  const a = [222, 235, 247];
  const b = [8, 48, 107];
  const c = a.map((x, j) => Math.round(x + (b[j] - x) * v));
  return `rgb(${c[0]},${c[1]},${c[2]})`;
}

// One packed colour per cell for a column of the view.
export function cellColours(column, n) {
  const out = new Uint32Array(n);
  const missing = pack(hexToRgb(MISSING));
  if (column.kind === "numeric") {
    const ramp = RAMP.map((rgb) => pack(rgb));
    const { lo, hi } = column;
    const span = hi > lo ? hi - lo : 1;
    const values = column.values;
    for (let i = 0; i < n; i++) {
      const v = values[i];
      out[i] = Number.isNaN(v) ? missing : ramp[Math.max(0, Math.min(255, ((v - lo) / span) * 255 | 0))];
    }
    return out;
  }
  const table = PALETTE.map((hex) => pack(hexToRgb(hex)));
  const codes = column.codes;
  for (let i = 0; i < n; i++) {
    const c = codes[i];
    out[i] = c < 0 ? missing : table[c % table.length];
  }
  return out;
}

export const GREY = pack([225, 225, 225]);
export const BACKGROUND_WORD = pack(hexToRgb(BACKGROUND));
