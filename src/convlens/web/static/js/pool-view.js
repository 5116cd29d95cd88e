// Pooling (max, average, adaptive; any window and stride): the window over the input map and
// the output cell it produces, with the reduction written out.
import { ANIMATION_MS } from './config.js';
import { makeScale } from './color.js';
import { outputCellFor, poolCells, poolString } from './draw-utils.js';
import { animator, cellAt, el, legend, mapBox, placeRect } from './render.js';

export const NAME = 'pool';

export function title(ctx) {
  const h = ctx.layer.hyper;
  const win = h.kernel ? `window ${h.kernel.join('×')}, stride ${h.stride.join('×')}` : `to ${ctx.layer.output_shape.slice(1).join('×')}`;
  return `${ctx.layer.name} · channel ${ctx.channel} — ${ctx.layer.op} (${win})`;
}

export async function render(body, ctx) {
  const { layer, channel: c } = ctx;
  const inName = layer.inputs[0];
  const acts = await ctx.fullActivations([inName, layer.name], c); // channel c of each, exact
  const X = acts[inName];
  const Y = acts[layer.name];
  const [, H, W] = X.shape;
  const [, Ho, Wo] = Y.shape;
  const sIn = ctx.trace.stats[inName];
  const scale = makeScale(sIn.channel_min[c], sIn.channel_max[c], { mode: 'neuron' });
  const inBox = mapBox(X, c, scale, Math.min(320, Math.max(160, 8 * W)));
  const outBox = mapBox(Y, c, scale, Math.min(320, Math.max(100, 8 * Wo)));
  const marks = new Map();
  const outMark = el('div', { class: 'cell' });
  outBox.box.append(outMark);
  const kind = layer.op.toLowerCase().includes('max') ? 'maxpool' : 'avgpool';
  const arith = el('div', { class: 'arith', id: 'pool-arith' });
  const show = (p) => {
    const i = Math.floor(p / Wo);
    const j = p % Wo;
    marks.forEach((m) => m.remove());
    marks.clear();
    const cells = poolCells(layer, i, j);
    cells.forEach(([r, q]) => {
      const m = el('div', { class: 'win' });
      placeRect(m, inBox.cell, r, q, 1, 1);
      inBox.box.append(m);
      marks.set(`${r},${q}`, m);
    });
    placeRect(outMark, outBox.cell, i, j, 1, 1);
    const vals = cells.map(([r, q]) => (r < 0 || q < 0 || r >= H || q >= W ? -Infinity : X.data[(c * H + r) * W + q]))
      .filter((v) => v !== -Infinity);
    const res = poolString(kind, vals);
    arith.replaceChildren(`out[${i}, ${j}] = `, el('span', { class: 'result', id: 'pool-result', 'data-value': res.value }, res.text),
      el('span', { class: 'muted' }, `   (the network computed ${Y.data[(c * Ho + i) * Wo + j].toFixed(3)})`));
  };
  const anim = animator(Ho * Wo, show, ANIMATION_MS);
  outBox.canvas.addEventListener('mousemove', (e) => {
    const [i, j] = cellAt(e, outBox.canvas, Ho, Wo);
    anim.set(i * Wo + j);
  });
  if (layer.hyper.kernel) { // hovering the input picks the window that starts there
    inBox.canvas.addEventListener('mousemove', (e) => {
      const [i, j] = outputCellFor(...cellAt(e, inBox.canvas, H, W), layer.hyper, Ho, Wo);
      anim.set(i * Wo + j);
    });
  }
  body.replaceChildren(el('div', { class: 'viewrow' },
    el('div', { class: 'viewcol' }, inBox.box, el('span', { class: 'label' }, `input: ${inName} (${H}×${W})`)),
    el('span', { class: 'op' }, '→'),
    el('div', { class: 'viewcol' }, outBox.box, el('span', { class: 'label' }, `output (${Ho}×${Wo})`), legend(scale, 160))),
  anim.node, arith);
  anim.set(0);
  return () => anim.stop();
}
