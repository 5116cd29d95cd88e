// Flatten: which input pixel becomes which element of the vector, in the model's own order
// (PyTorch flattens channel by channel, row by row; a Keras model channels last).
import { makeScale, colorOf, cssColor } from './color.js';
import { fmt, flattenIndex, unflattenIndex } from './draw-utils.js';
import { cellAt, el, mapBox, placeRect } from './render.js';

export const NAME = 'flatten';
const MAX_ELEMENTS = 4096;

export function title(ctx) {
  return `${ctx.layer.name} — ${ctx.layer.op} (${ctx.layer.input_shapes[0]?.join('×')} → ${ctx.layer.output_shape.join('×')})`;
}

export async function render(body, ctx) {
  const { layer } = ctx;
  const inName = layer.inputs[0];
  const acts = await ctx.fullActivations([inName, layer.name]);
  const X = acts[inName];
  const V = acts[layer.name];
  if (!X || X.shape.length !== 3) {
    body.replaceChildren(el('p', {}, `${layer.name} maps a vector of ${X?.data.length} to ${V.data.length} values.`));
    return null;
  }
  const order = layer.hyper?.order === 'hwc' ? 'hwc' : 'chw';
  const [C, H, W] = X.shape;
  const s = ctx.trace.stats[inName];
  const scale = makeScale(s.min, s.max, { mode: 'layer' });
  const info = el('div', { class: 'arith', id: 'flatten-formula' });
  const n = Math.min(V.data.length, MAX_ELEMENTS);
  const cells = Array.from({ length: n }, (_, k) => el('div', { style: { background: cssColor(colorOf(scale, V.data[k])) }, 'data-k': k }));
  const vec = el('div', { class: 'vector' }, ...cells);
  const px = Math.max(48, Math.min(96, 6 * W));
  const maps = Array.from({ length: C }, (_, c) => ({ c, ...mapBox(X, c, scale, px), mark: el('div', { class: 'cell' }) }));
  const select = (c, h, w) => {
    const k = flattenIndex(c, h, w, [C, H, W], order);
    maps.forEach((m) => { m.mark.style.display = m.c === c ? '' : 'none'; });
    placeRect(maps[c].mark, maps[c].cell, h, w, 1, 1);
    vec.querySelector('.hl')?.classList.remove('hl');
    cells[k]?.classList.add('hl');
    const rule = order === 'chw' ? `c·H·W + h·W + w = ${c}·${H}·${W} + ${h}·${W} + ${w}` : `(h·W + w)·C + c = (${h}·${W} + ${w})·${C} + ${c}`;
    info.replaceChildren(`${inName}[${c}, ${h}, ${w}] → element `, el('span', { class: 'result', id: 'flatten-result', 'data-index': k }, `${rule} = ${k}`),
      `   value ${fmt(X.data[(c * H + h) * W + w])} = ${fmt(V.data[k])}`);
  };
  maps.forEach((m) => {
    m.box.append(m.mark);
    m.canvas.addEventListener('mousemove', (e) => select(m.c, ...cellAt(e, m.canvas, H, W)));
  });
  vec.addEventListener('mousemove', (e) => {
    const k = Number(e.target.dataset?.k);
    if (Number.isInteger(k)) select(...unflattenIndex(k, [C, H, W], order));
  });
  body.replaceChildren(
    el('p', { class: 'muted' }, `${C} maps of ${H}×${W} → a vector of ${V.data.length} (order: ${order === 'chw' ? 'channel, row, column — PyTorch' : 'row, column, channel — channels last'}). Hover a pixel or an element.`),
    el('div', { class: 'viewrow' }, ...maps.map((m) => el('div', { class: 'viewcol' }, m.box, el('span', { class: 'label' }, `ch ${m.c}`)))),
    el('h4', {}, `vector${n < V.data.length ? ` (first ${n} of ${V.data.length})` : ''}`), vec, info);
  select(0, 0, 0);
  return null;
}
