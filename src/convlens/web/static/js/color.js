// Colour scales for feature maps: ranges per neuron, layer, block or the whole network, and
// the colours themselves. Pure (no DOM), covered by tests/color.test.mjs.

export const SCALE_MODES = ['layer', 'block', 'global', 'neuron'];

const MODE_TEXT = {
  neuron: 'per neuron',
  layer: 'per layer',
  block: 'per block of layers',
  global: 'global (all layers)',
};

// Light, print-friendly stops: white to a deep blue for ≥ 0 maps; orange–white–blue around zero
// (the diverging stops follow ColorBrewer's PuOr, so zero is exactly white).
export const SEQUENTIAL = [[255, 255, 255], [198, 219, 239], [107, 174, 214], [33, 113, 181], [8, 48, 107]];
export const DIVERGING = [[179, 88, 6], [241, 163, 64], [254, 224, 182], [247, 247, 247], [216, 218, 235], [153, 142, 195], [84, 39, 136]];
export const GRAY = [[0, 0, 0], [255, 255, 255]];
export const RGB_TINTS = [[[0, 0, 0], [230, 40, 40]], [[0, 0, 0], [40, 180, 60]], [[0, 0, 0], [50, 90, 230]]];

// The explanation maps' colours, the SAME anchors as the server's overlay PNGs
// (src/convlens/io/color.py `_ANCHORS`: ColorBrewer's RdBu for signed maps, viridis for
// non-negative ones); tests/test_web_layout.py checks that the two lists stay equal.
const hex = (h) => [1, 3, 5].map((i) => parseInt(h.slice(i, i + 2), 16));
export const RDBU = ['#053061', '#2166ac', '#4393c3', '#92c5de', '#d1e5f0', '#f7f7f7',
  '#fddbc7', '#f4a582', '#d6604d', '#b2182b', '#67001f'].map(hex);
export const VIRIDIS = ['#440154', '#472c7a', '#3b518b', '#2c718e', '#21908d',
  '#27ad81', '#5cc863', '#aadc32', '#fde725'].map(hex);

/** A 256-entry table through the stops, built like io/color.py's `lut` (then indexed by rint). */
export function lut(stops) {
  return Array.from({ length: 256 }, (_, k) => {
    const u = (k / 255) * (stops.length - 1);
    const i = Math.min(stops.length - 2, Math.floor(u));
    const f = u - i;
    return [0, 1, 2].map((c) => Math.round(stops[i][c] + (stops[i + 1][c] - stops[i][c]) * f));
  });
}

/**
 * The scale of an explanation map, as the server colours its overlay (io/color.py Scale.fit):
 * signed maps on RdBu over ±max|v| (white = 0, red raises the score, blue lowers it);
 * non-negative maps on viridis over [min, max].
 */
export function explanationScale(data, signed) {
  let lo = Infinity;
  let hi = -Infinity;
  for (const v of data) if (Number.isFinite(v)) { lo = Math.min(lo, v); hi = Math.max(hi, v); }
  if (!(hi >= lo)) { lo = 0; hi = 1; }
  if (signed) {
    const m = Math.max(Math.abs(lo), Math.abs(hi)) || 1;
    return { lo: -m, hi: m, signed: true, mode: 'explanation', stops: RDBU, table: lut(RDBU) };
  }
  if (hi <= lo) hi = lo + 1;
  return { lo, hi, signed: false, mode: 'explanation', stops: VIRIDIS, table: lut(VIRIDIS) };
}

/** Linear interpolation through evenly spaced colour stops, t in [0, 1]. */
export function interpolate(stops, t) {
  const u = Math.min(1, Math.max(0, Number.isFinite(t) ? t : 0)) * (stops.length - 1);
  const i = Math.min(stops.length - 2, Math.floor(u));
  const f = u - i;
  const a = stops[i];
  const b = stops[i + 1];
  return [0, 1, 2].map((k) => Math.round(a[k] + (b[k] - a[k]) * f));
}

/**
 * A scale over [lo, hi]. Signed ranges become diverging and symmetric around zero
 * (−m..m with m = max(|lo|, |hi|)) so that white always means zero.
 */
export function makeScale(lo, hi, { mode = 'layer', stops = null } = {}) {
  const signed = lo < 0;
  let a = lo;
  let b = hi;
  if (signed) {
    const m = Math.max(Math.abs(lo), Math.abs(hi));
    a = -m;
    b = m;
  }
  if (!(b > a)) b = a + 1; // a constant map: any colour, but no division by zero
  return { lo: a, hi: b, signed, mode, stops: stops || (signed ? DIVERGING : SEQUENTIAL) };
}

export function colorOf(scale, v) {
  const t = (v - scale.lo) / (scale.hi - scale.lo);
  if (scale.table) return scale.table[Math.round(Math.min(1, Math.max(0, Number.isFinite(t) ? t : 0.5)) * 255)];
  return interpolate(scale.stops, t);
}

export function cssColor(rgb) {
  return `rgb(${rgb[0]},${rgb[1]},${rgb[2]})`;
}

/** What a legend says: the range's extent and how the colours were chosen. */
export function legendText(scale) {
  if (scale.mode === 'explanation') {
    return scale.signed ? 'blue lowers the class score · white = 0 · red raises it'
      : 'dark violet = least relevant · yellow = most relevant';
  }
  const kind = scale.signed ? 'diverging around 0' : 'sequential from the minimum';
  return `${MODE_TEXT[scale.mode] || scale.mode} · ${kind}`;
}

/** A scale's range in a few characters: "±2.1" (symmetric) or "0…5.6". */
export function shortRange(scale) {
  const short = (x) => {
    const v = Number(x.toPrecision(2));
    const s = v !== 0 && (Math.abs(v) >= 1e4 || Math.abs(v) < 1e-3) ? v.toExponential(1) : String(v);
    return s.replace(/^-/, '−');
  };
  return scale.lo === -scale.hi && scale.hi > 0 ? `±${short(scale.hi)}` : `${short(scale.lo)}…${short(scale.hi)}`;
}

/** The [min, max] of channel `c` of a layer from the trace's stats. */
function channelRange(stats, c) {
  return [stats.channel_min[c], stats.channel_max[c]];
}

/**
 * The value range used to colour channel `c` of layer `name` under a scale mode.
 * `stats` is the trace's {layer: {min, max, channel_min, channel_max}}; `blocks` maps layer
 * names to block names (only layers with a spatial output take part in block and global).
 */
export function rangeFor(mode, name, c, stats, blocks = {}, spatial = null) {
  const s = stats[name];
  if (!s) return [0, 1];
  if (mode === 'neuron' && s.channel_min && c < s.channel_min.length) return channelRange(s, c);
  if (mode === 'layer' || mode === 'neuron') return [s.min, s.max];
  const members = Object.keys(stats).filter((n) => (spatial ? spatial.has(n) : true)
    && (mode === 'global' || blocks[n] === blocks[name]) && n !== 'input');
  if (!members.length) return [s.min, s.max];
  return [Math.min(...members.map((n) => stats[n].min)), Math.max(...members.map((n) => stats[n].max))];
}

/**
 * RGBA pixels of an H×W map under a scale (for ImageData). `offset` selects a channel inside
 * a larger (C,H,W) buffer.
 */
export function mapPixels(data, offset, H, W, scale) {
  const out = new Uint8ClampedArray(H * W * 4);
  if (scale.table) {
    for (let k = 0; k < H * W; k++) {
      const [r, g, b] = colorOf(scale, data[offset + k]);
      out[4 * k] = r;
      out[4 * k + 1] = g;
      out[4 * k + 2] = b;
      out[4 * k + 3] = 255;
    }
    return out;
  }
  // colorOf's interpolation inlined, same arithmetic, no arrays per pixel: a big model's
  // overview paints ~2 M pixels, where the allocations cost most of its draw time
  const { stops, lo } = scale;
  const span = scale.hi - scale.lo;
  const n = stops.length - 1;
  for (let k = 0; k < H * W; k++) {
    const t = (data[offset + k] - lo) / span;
    const u = Math.min(1, Math.max(0, Number.isFinite(t) ? t : 0)) * n;
    const i = Math.min(n - 1, Math.floor(u));
    const f = u - i;
    const a = stops[i];
    const b = stops[i + 1];
    out[4 * k] = Math.round(a[0] + (b[0] - a[0]) * f);
    out[4 * k + 1] = Math.round(a[1] + (b[1] - a[1]) * f);
    out[4 * k + 2] = Math.round(a[2] + (b[2] - a[2]) * f);
    out[4 * k + 3] = 255;
  }
  return out;
}

/** Text colour readable on a given background. */
export function inkFor(rgb) {
  const lum = 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2];
  return lum > 150 ? '#222' : '#fff';
}
