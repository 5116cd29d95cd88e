// Pure helpers for drawing: layout, window arithmetic, output-size formula, number strings.
// No DOM here, so `node --test` covers every function (tests/draw-utils.test.mjs).

/** Format a number for the arithmetic strings: fixed decimals, a real minus sign. */
export function fmt(x, digits = 3) {
  if (!Number.isFinite(x)) return String(x);
  const s = Math.abs(x) >= 1e5 || (Math.abs(x) < 1e-3 && x !== 0)
    ? x.toExponential(2) : x.toFixed(digits);
  return s.replace(/^-/, '−');
}

/** Parse a number printed by fmt back (the browser tests read the arithmetic this way). */
export function parseFmt(s) {
  return Number(String(s).replace(/−/g, '-'));
}

/** Shape as "C×H×W". */
export function shapeText(shape) {
  return shape.join('×');
}

/** Parameter count in short form: 1234 → "1.2k". */
export function countText(n) {
  if (n >= 1e6) return `${(n / 1e6).toFixed(1)}M`;
  if (n >= 1e3) return `${(n / 1e3).toFixed(1)}k`;
  return String(n);
}

// --------------------------------------------------------------- output size

/**
 * Output length of a sliding window along one axis (Dumoulin & Visin 2016, eq. 6):
 * o = (n + 2p − d(k − 1) − 1) / s + 1. A setting tiles when the division is exact; otherwise
 * the last rows/columns of the padded input are never read (PyTorch floors silently).
 */
export function outputSize(n, k, p, s, d = 1) {
  const kEff = d * (k - 1) + 1;
  const span = n + 2 * p - kEff;
  if (![n, k, s, d].every((v) => Number.isInteger(v) && v >= 1) || !Number.isInteger(p) || p < 0) {
    return { size: null, tiles: false, error: 'sizes, kernel, stride and dilation must be whole numbers ≥ 1 and padding ≥ 0' };
  }
  if (span < 0) {
    return { size: null, tiles: false, span, error: `the kernel (${kEff}) is larger than the padded input (${n + 2 * p})` };
  }
  const rest = span % s;
  const size = Math.floor(span / s) + 1;
  if (rest !== 0) {
    return {
      size: null, floored: size, tiles: false, span, rest,
      error: `does not tile: n + 2p − k = ${span} is not divisible by the stride ${s}; `
        + `the last ${rest} padded row(s) would never be read`,
    };
  }
  return { size, tiles: true, span, rest: 0, error: null };
}

/** The output-size formula written out with the current numbers. */
export function outputSizeFormula(n, k, p, s) {
  const r = outputSize(n, k, p, s);
  const lhs = `(n + 2p − k) / s + 1 = (${n} + 2·${p} − ${k}) / ${s} + 1`;
  if (r.size !== null) return `${lhs} = ${r.span} / ${s} + 1 = ${r.size}`;
  if (r.floored !== undefined) return `${lhs} = ${r.span} / ${s} + 1 = ${fmt(r.span / s + 1, 2)} ✗`;
  return `${lhs} ✗`;
}

/**
 * The playground's numbers: an n×n input of digits 0–9 (a fixed pattern), a k×k kernel that
 * finds vertical edges (−1 left of the centre column, +1 right of it, 0 on it), and their
 * cross-correlation with zero padding p and stride s, y[i,j] = Σ_a Σ_b x[i·s+a−p, j·s+b−p]·w[a,b].
 * Returns {x, w, y, size} as arrays of rows (y is null when the setting does not tile).
 */
export function playgroundNumbers(n, k, p, s) {
  const x = Array.from({ length: n }, (_, r) => Array.from({ length: n }, (__, c) => (r * 7 + c * 3 + r * c) % 10));
  const mid = (k - 1) / 2;
  const w = Array.from({ length: k }, () => Array.from({ length: k }, (_, b) => (k === 1 ? 1 : Math.sign(b - mid))));
  const res = outputSize(n, k, p, s);
  if (!res.size) return { x, w, y: null, size: null };
  const at = (r, c) => (r < 0 || c < 0 || r >= n || c >= n ? 0 : x[r][c]);
  const y = Array.from({ length: res.size }, (_, i) => Array.from({ length: res.size }, (__, j) => {
    let acc = 0;
    for (let a = 0; a < k; a++) for (let b = 0; b < k; b++) acc += at(i * s + a - p, j * s + b - p) * w[a][b];
    return acc;
  }));
  return { x, w, y, size: res.size };
}

// --------------------------------------------------------------- windows

/** Top-left input coordinate of output cell (i, j) (may be negative inside the padding). */
export function windowOrigin(i, j, stride, padding) {
  return [i * stride[0] - padding[0], j * stride[1] - padding[1]];
}

/** Input cells [row, col] read by output cell (i, j), in kernel order (row-major). */
export function windowCells(i, j, hyper) {
  const [k0, k1] = hyper.kernel;
  const d = hyper.dilation || [1, 1];
  const [r0, c0] = windowOrigin(i, j, hyper.stride, hyper.padding || [0, 0]);
  const cells = [];
  for (let a = 0; a < k0; a++) for (let b = 0; b < k1; b++) cells.push([r0 + a * d[0], c0 + b * d[1]]);
  return cells;
}

/** Window of PyTorch's adaptive pooling: [start, end) = [⌊i·n/o⌋, ⌈(i+1)·n/o⌉). */
export function adaptiveRange(i, n, o) {
  return [Math.floor((i * n) / o), Math.ceil(((i + 1) * n) / o)];
}

/** Value of a (C,H,W) tensor at (c, r, q), 0 inside the padding. */
export function at(t, c, r, q) {
  const [, H, W] = t.shape;
  if (r < 0 || q < 0 || r >= H || q >= W) return 0;
  return t.data[(c * H + r) * W + q];
}

/**
 * One output value of a 2-D convolution (cross-correlation, as in PyTorch), term by term:
 * y[o,i,j] = b[o] + Σ_c Σ_a Σ_b x[c, i·s + a·d − p, j·s + b·d − p] · w[o, c, a, b].
 * Returns per input channel its terms and partial sum, and the total.
 */
export function convCell(input, weight, bias, o, i, j, hyper) {
  const [, cinG, k0, k1] = weight.shape;
  const groups = hyper.groups || 1;
  const cout = weight.shape[0];
  const g = Math.floor(o / (cout / groups));
  const cells = windowCells(i, j, hyper);
  const channels = [];
  let total = bias ? bias.data[o] : 0;
  for (let cc = 0; cc < cinG; cc++) {
    const c = g * cinG + cc;
    const terms = cells.map(([r, q], t) => {
      const w = weight.data[((o * cinG + cc) * k0 + Math.floor(t / k1)) * k1 + (t % k1)];
      return { x: at(input, c, r, q), w, r, q };
    });
    const sum = terms.reduce((acc, t) => acc + t.x * t.w, 0);
    channels.push({ channel: c, terms, sum });
    total += sum;
  }
  return { channels, bias: bias ? bias.data[o] : 0, value: total };
}

/** "x₁×w₁ + x₂×w₂ + … = s" for one channel's window. */
export function productString(terms, sum) {
  const parts = terms.map((t) => `${fmt(t.x, 2)}×${fmt(t.w, 2)}`);
  return `${parts.join(' + ')} = ${fmt(sum)}`;
}

/** The last line: channel sums plus the bias giving the output value. */
export function sumString(sums, bias, value) {
  const parts = sums.map((s) => fmt(s));
  return `${parts.join(' + ')} + ${fmt(bias)} (bias) = ${fmt(value)}`;
}

/** "max(a, b, …) = v" or "avg(a, b, …) = v" for a pooling window. */
export function poolString(kind, values) {
  const isMax = kind === 'maxpool' || kind === 'adaptive_max';
  const v = isMax ? Math.max(...values) : values.reduce((a, b) => a + b, 0) / values.length;
  const name = isMax ? 'max' : 'avg';
  return { text: `${name}(${values.map((x) => fmt(x, 2)).join(', ')}) = ${fmt(v)}`, value: v };
}

/** An activation written out for one element, with its value, e.g. "max(0, −1.200) = 0.000". */
export function activationString(op, x, y, hyper = {}) {
  const name = String(op).toLowerCase();
  const X = fmt(x);
  const Y = fmt(y);
  if (name.startsWith('relu6')) return `min(max(0, ${X}), 6) = ${Y}`;
  if (name.startsWith('leakyrelu') || name === 'leaky_relu') {
    return `${X} ≥ 0 ? ${X} : ${hyper.negative_slope ?? 0.01}×${X} = ${Y}`;
  }
  if (name.startsWith('relu')) return `max(0, ${X}) = ${Y}`;
  if (name.startsWith('sigmoid')) return `1 / (1 + e^(−${X})) = ${Y}`;
  if (name.startsWith('tanh')) return `tanh(${X}) = ${Y}`;
  if (name.startsWith('gelu')) return `${X}·Φ(${X}) = ${Y}`;
  if (name.startsWith('silu')) return `${X}·σ(${X}) = ${Y}`;
  return `${op}(${X}) = ${Y}`;
}

/**
 * The element-wise function of an activation op, for plotting it (null when unknown): ReLU
 * max(0, x), ReLU6, leaky ReLU (slope `negative_slope`, default 0.01), sigmoid, tanh, SiLU, GELU
 * (tanh approximation, Hendrycks & Gimpel 2016).
 */
export function activationFn(op, hyper = {}) {
  const name = String(op).toLowerCase();
  const sig = (x) => 1 / (1 + Math.exp(-x));
  if (name.startsWith('relu6')) return (x) => Math.min(Math.max(0, x), 6);
  if (name.startsWith('leakyrelu') || name === 'leaky_relu') {
    const a = hyper.negative_slope ?? 0.01;
    return (x) => (x >= 0 ? x : a * x);
  }
  if (name.startsWith('relu')) return (x) => Math.max(0, x);
  if (name.startsWith('sigmoid')) return sig;
  if (name.startsWith('tanh')) return Math.tanh;
  if (name.startsWith('silu') || name.startsWith('swish')) return (x) => x * sig(x);
  if (name.startsWith('gelu')) return (x) => 0.5 * x * (1 + Math.tanh(0.7978845608 * (x + 0.044715 * x ** 3)));
  return null;
}

// --------------------------------------------------------------- flatten and softmax

/** Flat index of (c, h, w) in the model's flatten order (PyTorch: C-order; Keras: channels last). */
export function flattenIndex(c, h, w, shape, order = 'chw') {
  const [C, H, W] = shape;
  return order === 'hwc' ? (h * W + w) * C + c : (c * H + h) * W + w;
}

/** Inverse of flattenIndex: the (c, h, w) that element k came from. */
export function unflattenIndex(k, shape, order = 'chw') {
  const [C, H, W] = shape;
  if (order === 'hwc') return [k % C, Math.floor(k / (C * W)), Math.floor(k / C) % W];
  return [Math.floor(k / (H * W)), Math.floor(k / W) % H, k % W];
}

/**
 * Softmax written out: e^{z_i − m} / Σ_j e^{z_j − m}. The shift m (the largest logit, when any
 * logit exceeds 80) keeps exp finite and does not change the probabilities.
 */
export function softmaxTerms(logits) {
  const big = Math.max(...logits);
  const shift = big > 80 ? big : 0;
  const exps = logits.map((z) => Math.exp(z - shift));
  const sum = exps.reduce((a, b) => a + b, 0);
  return { shift, exps, sum, probs: exps.map((e) => e / sum) };
}

export function softmaxString(i, logits) {
  const t = softmaxTerms(logits);
  const z = t.shift ? `e^(${fmt(logits[i])} − ${fmt(t.shift)})` : `e^${fmt(logits[i])}`;
  return `p${i} = ${z} / Σⱼ e^zⱼ = ${fmt(t.exps[i])} / ${fmt(t.sum)} = ${fmt(t.probs[i], 4)}`;
}

// --------------------------------------------------------------- overview layout

const HIDDEN_KINDS = new Set(['dropout']);

/** The layers the overview shows as columns, in graph order (dropout is identity at eval). */
export function visibleLayers(layers) {
  return layers.filter((l) => !HIDDEN_KINDS.has(l.kind));
}

/** Column role: a grid of maps, a vector strip, or the class output. */
export function columnRole(layer, isLast) {
  if (isLast) return 'output';
  return layer.output_shape.length === 3 ? 'maps' : 'vector';
}

/** Channel order for a column: the most active first when the layer is wider than a page. */
export function channelOrder(channelMax, pageSize) {
  const idx = channelMax.map((_, i) => i);
  if (channelMax.length <= pageSize) return idx;
  return idx.sort((a, b) => channelMax[b] - channelMax[a] || a - b);
}

/** The channels on page `page` of an ordered list. */
export function pageOf(order, page, pageSize) {
  const pages = Math.max(1, Math.ceil(order.length / pageSize));
  const p = Math.min(Math.max(0, page), pages - 1);
  return { page: p, pages, channels: order.slice(p * pageSize, (p + 1) * pageSize) };
}

/**
 * Block names: a module's parent path (`layer1.0.conv1` → `layer1.0`) when the network nests
 * modules, otherwise a counter that steps after every pooling layer (VGG-style blocks).
 */
export function blockNames(layers) {
  let block = 1;
  const nested = layers.some((l) => (l.module || '').includes('.'));
  return layers.map((l) => {
    if (l.kind === 'input') return 'input';
    if (nested) {
      const m = l.module || l.inputs[0] || l.name;
      const parts = m.split('.');
      return parts.length > 1 ? parts.slice(0, -1).join('.') : m;
    }
    const name = `block ${block}`;
    if (['maxpool', 'avgpool', 'adaptive_pool'].includes(l.kind)) block += 1;
    return l.output_shape.length === 3 ? name : 'head';
  });
}

/**
 * Positions for every column and neuron. Pure: from the layers, how many neurons each column
 * shows, and the box to fill. Columns are evenly spaced; a column's neurons are centred
 * vertically. The neuron size is the largest that fits both the tallest column into the height
 * AND every column into the width: a deep network gets smaller thumbnails and narrower gaps
 * (down to `minColumnGap`'s floor of one thumbnail) rather than a sideways scroll.
 *
 * Returns {columns: [{name, x, width, neurons: [{y, size}]}], neuronSize, spacing, width, height}.
 */
export function layoutOverview(cols, box) {
  const { width, height, top = 40, bottom = 30, minColumnGap = 72, maxNeuron = 56, minNeuron = 4, gap = 6 } = box;
  const left = box.left ?? 20;
  const outputWidth = box.outputWidth ?? 150;
  const tallest = Math.max(1, ...cols.map((c) => (c.role === 'maps' ? c.count : 1)));
  const avail = height - top - bottom;
  const vGap = (n) => Math.max(1, Math.min(gap, Math.round(n / 6))); // gap between neurons
  let neuron = Math.min(maxNeuron, Math.floor((avail - gap * (tallest - 1)) / tallest));
  // Width: the fixed columns (vectors, output) plus the map columns and the gaps between.
  const nMaps = cols.filter((c) => c.role === 'maps').length;
  const fixed = cols.reduce((a, c) => a + (c.role === 'output' ? outputWidth : c.role === 'vector' ? 14 : 0), 0);
  const room = width - 2 * left - fixed;
  const nGaps = Math.max(1, cols.length - 1);
  if (nMaps) {
    const withGap = Math.floor((room - nGaps * minColumnGap) / nMaps);
    // When the preferred gaps leave thumbnails smaller than they could be, gaps shrink with them.
    const shared = Math.floor(room / (nMaps + nGaps));
    neuron = Math.min(neuron, Math.max(withGap, shared));
  }
  neuron = Math.max(minNeuron, neuron);
  const g = vGap(neuron);
  neuron = Math.max(minNeuron, Math.min(neuron, Math.floor((avail - g * (tallest - 1)) / tallest)));
  const colW = (c) => (c.role === 'output' ? outputWidth : c.role === 'vector' ? 14 : neuron);
  const natural = cols.reduce((a, c) => a + colW(c), 0);
  // Evenly spread over the width; only when even the smallest thumbnails do not fit does a
  // 2-px floor let the drawing grow past it (and the overview scroll).
  const spacing = Math.max(2, (width - natural - 2 * left) / nGaps);
  let x = left;
  const columns = cols.map((c) => {
    const w = colW(c);
    const n = c.role === 'maps' ? c.count : 1;
    const rowH = c.role === 'output' ? Math.min(24, avail / Math.max(1, c.count)) : neuron;
    const items = c.role === 'output' ? c.count : n;
    const colH = c.role === 'maps' ? n * neuron + (n - 1) * g : c.role === 'output' ? items * rowH : Math.min(avail, 0.8 * avail);
    const y0 = top + (avail - colH) / 2;
    const neurons = [];
    for (let k = 0; k < items; k++) {
      neurons.push(c.role === 'maps' ? { y: y0 + k * (neuron + g), size: neuron }
        : c.role === 'output' ? { y: y0 + k * rowH, size: rowH } : { y: y0, size: colH });
    }
    const col = { name: c.name, role: c.role, x, width: w, neurons };
    x += w + spacing;
    return col;
  });
  return { columns, neuronSize: neuron, spacing, width: Math.max(width, x - spacing + left), height };
}

/** Which neurons of the input column(s) a neuron reads, by channel, for hover highlighting. */
export function readsFrom(layer, channel, inputChannels) {
  const all = Array.from({ length: inputChannels }, (_, i) => i);
  if (layer.kind === 'conv') {
    const groups = layer.hyper.groups || 1;
    if (groups === 1) return all;
    const per = inputChannels / groups;
    const g = Math.floor(channel / (layer.output_shape[0] / groups));
    return all.slice(g * per, (g + 1) * per);
  }
  if (layer.kind === 'linear' || layer.kind === 'flatten') return all;
  return channel < inputChannels ? [channel] : [];
}

/** Whether `readsFrom(layer, channel, inputChannels)` holds `source`, without making the list
 * (the overview asks for every pair of neurons it may join). */
export function reads(layer, channel, inputChannels, source) {
  if (!(source >= 0 && source < inputChannels)) return false;
  if (layer.kind === 'conv') {
    const groups = layer.hyper.groups || 1;
    if (groups === 1) return true;
    const per = inputChannels / groups;
    const g = Math.floor(channel / (layer.output_shape[0] / groups));
    return source >= g * per && source < (g + 1) * per;
  }
  if (layer.kind === 'linear' || layer.kind === 'flatten') return true;
  return source === channel;
}

/** An SVG path for an edge: a smooth horizontal S-curve, or an arc above for a skip connection. */
export function edgePath(x0, y0, x1, y1, skip = false, lift = 30) {
  if (skip) {
    const top = Math.min(y0, y1) - lift;
    return `M${x0},${y0} C${x0 + 20},${top} ${x1 - 20},${top} ${x1},${y1}`;
  }
  const mx = (x0 + x1) / 2;
  return `M${x0},${y0} C${mx},${y0} ${mx},${y1} ${x1},${y1}`;
}

/**
 * One input channel's contribution to a convolution output map (before summing channels and
 * adding the bias): m[i,j] = Σ_a Σ_b x[c, i·s + a·d − p, j·s + b·d − p] · w[o, cc, a, b].
 */
export function intermediateMap(input, weight, o, cc, c, hyper, Hout, Wout) {
  const [, cinG, k0, k1] = weight.shape;
  const out = new Float32Array(Hout * Wout);
  const d = hyper.dilation || [1, 1];
  const base = (o * cinG + cc) * k0 * k1;
  for (let i = 0; i < Hout; i++) {
    for (let j = 0; j < Wout; j++) {
      const [r0, c0] = windowOrigin(i, j, hyper.stride, hyper.padding || [0, 0]);
      let acc = 0;
      for (let a = 0; a < k0; a++) {
        for (let b = 0; b < k1; b++) acc += at(input, c, r0 + a * d[0], c0 + b * d[1]) * weight.data[base + a * k1 + b];
      }
      out[i * Wout + j] = acc;
    }
  }
  return { shape: [Hout, Wout], data: out };
}

/** Input cells of pooling output (i, j): a regular window, or PyTorch's adaptive one. */
export function poolCells(layer, i, j) {
  if (layer.kind === 'adaptive_pool') {
    const [, H, W] = layer.input_shapes[0];
    const [, Ho, Wo] = layer.output_shape;
    const [r0, r1] = adaptiveRange(i, H, Ho);
    const [c0, c1] = adaptiveRange(j, W, Wo);
    const cells = [];
    for (let r = r0; r < r1; r++) for (let q = c0; q < c1; q++) cells.push([r, q]);
    return cells;
  }
  return windowCells(i, j, { dilation: [1, 1], ...layer.hyper });
}

/** The output cell whose window starts nearest to input cell (r, c): hovering the input scrubs. */
export function outputCellFor(r, c, hyper, Ho, Wo) {
  const p = hyper.padding || [0, 0];
  const i = Math.floor((r + p[0]) / hyper.stride[0]);
  const j = Math.floor((c + p[1]) / hyper.stride[1]);
  return [Math.min(Ho - 1, Math.max(0, i)), Math.min(Wo - 1, Math.max(0, j))];
}

/**
 * A fully connected output written out: z_k = Σ_j w[k, j]·x[j] + b[k], with the `top` terms of
 * largest magnitude listed and the others summed. Returns {terms, restSum, restCount, value}.
 */
export function denseTerms(weight, bias, x, k, top = 8) {
  const n = x.length;
  const all = Array.from({ length: n }, (_, j) => ({ j, x: x[j], w: weight.data[k * n + j] }));
  all.forEach((t) => { t.p = t.x * t.w; });
  const sorted = [...all].sort((a, b) => Math.abs(b.p) - Math.abs(a.p));
  const terms = sorted.slice(0, top);
  const restSum = sorted.slice(top).reduce((a, t) => a + t.p, 0);
  const b = bias ? bias.data[k] : 0;
  const value = all.reduce((a, t) => a + t.p, 0) + b;
  return { terms, restSum, restCount: Math.max(0, n - top), bias: b, value };
}

export function denseString(k, d) {
  const parts = d.terms.map((t) => `${fmt(t.x, 2)}×${fmt(t.w, 2)}`);
  if (d.restCount) parts.push(`(${d.restCount} more: ${fmt(d.restSum)})`);
  return `z${k} = ${parts.join(' + ')} + ${fmt(d.bias)} (bias) = ${fmt(d.value)}`;
}

/**
 * Channel `c` of a (C, H, W) tensor (or an (H, W) map) sampled to `rows`×`cols` cells the way
 * CSS `image-rendering: pixelated` scales a canvas (nearest cell to each cell's centre): the
 * values the overview paints at the thumbnail's own pixel size.
 */
export function sampleMap(tensor, c, rows, cols) {
  const [H, W] = tensor.shape.length === 3 ? tensor.shape.slice(1) : tensor.shape;
  const offset = c * H * W;
  const out = new Float32Array(rows * cols);
  const across = new Int32Array(cols);
  for (let j = 0; j < cols; j++) across[j] = Math.min(W - 1, Math.floor(((j + 0.5) * W) / cols));
  for (let i = 0; i < rows; i++) {
    const from = offset + Math.min(H - 1, Math.floor(((i + 0.5) * H) / rows)) * W;
    for (let j = 0; j < cols; j++) out[i * cols + j] = tensor.data[from + across[j]];
  }
  return out;
}

/** A box's device pixels: [x, y, width, height], edges rounded so neighbours never overlap. */
export function deviceRect(x, y, w, h, ratio) {
  const x0 = Math.round(x * ratio), y0 = Math.round(y * ratio);
  return [x0, y0, Math.max(1, Math.round((x + w) * ratio) - x0), Math.max(1, Math.round((y + h) * ratio) - y0)];
}
