// Element-wise layers (ReLU and the other activations, batch norm, additions): the input and
// output maps of one channel side by side; hover a cell to see its value go through the layer.
import { makeScale } from './color.js';
import { activationString, fmt } from './draw-utils.js';
import { cellAt, el, legend, mapBox, placeRect } from './render.js';

export const NAME = 'activation';

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
  const acts = await ctx.fullActivations(names);
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
  const show = (i, j) => {
    boxes.forEach((b) => placeRect(b.mark, b.cell, i, j, 1, 1));
    const xs = layer.inputs.map((n) => acts[n].data[(c * H + i) * W + j]);
    const y = Y.data[(c * H + i) * W + j];
    out.replaceChildren(`[${i}, ${j}]  `, el('span', { class: 'result' }, formula(layer, xs, y)));
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
  body.replaceChildren(el('div', { class: 'viewrow' }, ...parts),
    el('p', { class: 'muted' }, 'Hover a cell in either map; each map has its own colour scale (per neuron).'), out);
  show(0, 0);
  return null;
}
