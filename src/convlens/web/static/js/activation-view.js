// Element-wise layers (ReLU and the other activations, batch norm, additions): the input and
// output maps of one channel side by side; hover a cell to see its value go through the layer.
import { makeScale } from './color.js';
import { activationFn, activationString, fmt } from './draw-utils.js';
import { cellAt, el, legend, mapBox, placeRect } from './render.js';

export const NAME = 'activation';
const SVG = 'http://www.w3.org/2000/svg';

function svgEl(tag, attrs = {}) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  return node;
}

/**
 * The layer's function y = f(x) over the channel's input range, as CNN Explainer draws ReLU,
 * with the hovered element marked on the curve. Returns {node, mark(x, y)}.
 */
export function functionPlot(f, lo, hi, op) {
  const w = 240;
  const h = 180;
  const pad = 30;
  const span = hi - lo || 1;
  const xs = Array.from({ length: 121 }, (_, k) => lo - 0.05 * span + (k / 120) * 1.1 * span);
  const ys = xs.map(f);
  const [ylo, yhi] = [Math.min(0, ...ys), Math.max(0, ...ys)];
  const sx = (x) => pad + ((x - xs[0]) / (xs.at(-1) - xs[0])) * (w - pad - 8);
  const sy = (y) => h - pad - ((y - ylo) / (yhi - ylo || 1)) * (h - pad - 8);
  const svg = svgEl('svg', { width: w, height: h, class: 'fn-plot', id: 'relu-plot', role: 'img', 'aria-label': `${op}: output against input` });
  const axis = (x1, y1, x2, y2) => svg.append(svgEl('line', { x1, y1, x2, y2, class: 'axis' }));
  axis(pad, sy(0), w - 8, sy(0));
  if (xs[0] <= 0 && xs.at(-1) >= 0) axis(sx(0), 8, sx(0), h - pad);
  svg.append(svgEl('path', { class: 'curve', d: xs.map((x, k) => `${k ? 'L' : 'M'}${sx(x).toFixed(1)},${sy(ys[k]).toFixed(1)}`).join(' ') }));
  const label = (x, y, text, anchor = 'middle') => {
    const t = svgEl('text', { x, y, 'text-anchor': anchor });
    t.textContent = text;
    svg.append(t);
  };
  label(w - 8, h - 8, `input x (${fmt(lo, 2)} … ${fmt(hi, 2)})`, 'end');
  label(4, 12, `${op}(x)`, 'start');
  const guide = svgEl('path', { class: 'guide' });
  const dot = svgEl('circle', { r: 4.5, class: 'dot' });
  const value = svgEl('text', { class: 'value', 'text-anchor': 'start' });
  svg.append(guide, dot, value);
  const mark = (x, y) => {
    const [px, py] = [sx(x), sy(y)];
    guide.setAttribute('d', `M${px},${sy(0)} V${py} H${pad}`);
    dot.setAttribute('cx', px);
    dot.setAttribute('cy', py);
    svg.dataset.x = String(x);
    svg.dataset.y = String(y);
    value.setAttribute('x', Math.min(px + 6, w - 90));
    value.setAttribute('y', Math.max(py - 8, 20));
    value.textContent = `(${fmt(x, 2)}, ${fmt(y, 2)})`;
  };
  return { node: svg, mark };
}

export function title(ctx) {
  return `${ctx.layer.name} · channel ${ctx.channel} — ${ctx.layer.op} (element-wise)`;
}

function formula(layer, xs, y) {
  if (layer.kind === 'add') return `${xs.map((x) => fmt(x)).join(' + ')} = ${fmt(y)}`;
  if (layer.kind === 'activation') return activationString(layer.op, xs[0], y, layer.hyper);
  return `${layer.op}(${fmt(xs[0])}) = ${fmt(y)}`;
}

export async function render(body, ctx) {
  const { layer, channel: c } = ctx;
  const names = [...layer.inputs, layer.name];
  const acts = await ctx.fullActivations(names, c); // channel c of each, exact
  const Y = acts[layer.name];
  const [, H, W] = Y.shape;
  const px = Math.min(300, Math.max(120, 8 * W));
  const scaleOf = (n) => {
    const s = ctx.trace.stats[n];
    return makeScale(s.channel_min[c], s.channel_max[c], { mode: 'neuron' });
  };
  const boxes = names.map((n) => ({ name: n, ...mapBox(acts[n], c, scaleOf(n), px), mark: el('div', { class: 'cell' }) }));
  boxes.forEach((b) => b.box.append(b.mark));
  const out = el('div', { class: 'arith', id: 'elementwise-formula' });
  const f = layer.kind === 'activation' && layer.inputs.length === 1 ? activationFn(layer.op, layer.hyper) : null;
  const inStats = ctx.trace.stats[layer.inputs[0]];
  const plot = f ? functionPlot(f, inStats.channel_min?.[c] ?? inStats.min, inStats.channel_max?.[c] ?? inStats.max, layer.op) : null;
  const show = (i, j) => {
    boxes.forEach((b) => placeRect(b.mark, b.cell, i, j, 1, 1));
    const xs = layer.inputs.map((n) => acts[n].data[(c * H + i) * W + j]);
    const y = Y.data[(c * H + i) * W + j];
    out.replaceChildren(`[${i}, ${j}]  `, el('span', { class: 'result' }, formula(layer, xs, y)));
    plot?.mark(xs[0], y);
  };
  boxes.forEach((b) => b.canvas.addEventListener('mousemove', (e) => show(...cellAt(e, b.canvas, H, W))));
  const cols = boxes.map((b, k) => el('div', { class: 'viewcol' }, b.box,
    el('span', { class: 'label' }, k === boxes.length - 1 ? `output: ${b.name}` : `input: ${b.name}`),
    legend(scaleOf(b.name), 140)));
  const parts = [];
  cols.forEach((col, k) => {
    if (k) parts.push(el('span', { class: 'op' }, k === cols.length - 1 ? `→ ${layer.op} →` : '+'));
    parts.push(col);
  });
  if (plot) parts.push(el('div', { class: 'viewcol' }, plot.node, el('span', { class: 'label' }, `${layer.op}: the hovered value on the curve`)));
  body.replaceChildren(el('div', { class: 'viewrow' }, ...parts),
    el('p', { class: 'muted' }, 'Hover a cell in either map; each map has its own colour scale (per neuron).'), out);
  show(0, 0);
  return null;
}
