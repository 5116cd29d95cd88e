// Flatten: which input pixel becomes which element of the vector, in the model's own order
// (PyTorch flattens channel by channel, row by row; a Keras model channels last).
import { RDBU, colorOf, cssColor, lut, makeScale } from './color.js';
import { getWeights } from './api.js';
import { channelOrder, fmt, flattenIndex, unflattenIndex } from './draw-utils.js';
import { cellAt, el, mapBox, placeRect } from './render.js';

export const NAME = 'flatten';
const MAX_ELEMENTS = 4096;
const MAX_EDGES = 2048; // edges drawn into one output: the largest |w·x| when there are more
const MAX_OUTPUTS = 10;
const SVG = 'http://www.w3.org/2000/svg';

function svgEl(tag, attrs = {}) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  return node;
}

/** The last layer when it is a dense layer reading `name` (the flattened units), else null. */
function outputLayerOf(ctx, name) {
  const last = ctx.model.graph.layers.at(-1);
  return last.kind === 'linear' && last.inputs[0] === name ? last : null;
}

/**
 * The flattened units joined to the output classes, as CNN Explainer draws them: every unit's
 * edge into the chosen class, coloured by its weight (RdBu: red positive, blue negative, the
 * stronger the darker and more opaque). Hover or focus another class to see its edges.
 */
async function outputEdges(ctx, V, info) {
  const out = outputLayerOf(ctx, ctx.layer.name);
  if (!out) return null;
  const { weight, bias } = await getWeights(out.name);
  const [K, N] = weight.shape;
  const { model, trace } = ctx;
  const classes = K <= MAX_OUTPUTS ? [...Array(K).keys()]
    : channelOrder(trace.probabilities, MAX_OUTPUTS).slice(0, MAX_OUTPUTS);
  const W = 640;
  const H = Math.max(260, 26 * classes.length + 20);
  const x0 = 60;
  const x1 = W - 170;
  const unitY = (j) => 20 + ((j + 0.5) / N) * (H - 30);
  const classY = (r) => 20 + ((r + 0.5) / classes.length) * (H - 30);
  const svg = svgEl('svg', { width: W, height: H, id: 'flatten-edges', class: 'flatten-edges' });
  const edges = svgEl('g');
  svg.append(edges);
  // the units as a thin coloured strip (their values), like the overview's vector column
  const s = ctx.trace.stats[ctx.layer.name];
  const vScale = makeScale(s.min, s.max, { mode: 'layer' });
  const strip = svgEl('g');
  for (let j = 0; j < N; j++) {
    strip.append(svgEl('rect', { x: x0 - 12, y: unitY(j) - (H - 30) / N / 2, width: 12, height: Math.max(0.6, (H - 30) / N), fill: cssColor(colorOf(vScale, V.data[j])) }));
  }
  const unitsLabel = svgEl('text', { x: 2, y: 12, 'text-anchor': 'start', class: 'lbl' });
  unitsLabel.textContent = `${N} units`;
  svg.append(strip, unitsLabel);
  const table = lut(RDBU);
  const draw = (k, row) => {
    let wmax = 0;
    for (let j = 0; j < N; j++) wmax = Math.max(wmax, Math.abs(weight.data[k * N + j]));
    const all = [...Array(N).keys()];
    const keep = N <= MAX_EDGES ? all
      : all.sort((a, b) => Math.abs(weight.data[k * N + b] * V.data[b]) - Math.abs(weight.data[k * N + a] * V.data[a])).slice(0, MAX_EDGES);
    edges.replaceChildren(...keep.map((j) => {
      const w = weight.data[k * N + j];
      const t = 0.5 + 0.5 * (w / (wmax || 1)); // RdBu: 0 = blue (negative), 1 = red (positive)
      const [ya, yb] = [unitY(j), classY(row)];
      const mx = (x0 + x1) / 2;
      return svgEl('path', {
        class: 'fedge', d: `M${x0},${ya.toFixed(1)} C${mx},${ya.toFixed(1)} ${mx},${yb.toFixed(1)} ${x1},${yb.toFixed(1)}`,
        stroke: cssColor(table[Math.round(t * 255)]), 'stroke-opacity': (0.12 + 0.88 * Math.abs(w) / (wmax || 1)).toFixed(3),
        'data-j': j, 'data-w': w,
      });
    }));
    svg.dataset.target = String(k);
    svg.dataset.edges = String(keep.length);
    let z = bias ? bias.data[k] : 0;
    for (let j = 0; j < N; j++) z += weight.data[k * N + j] * V.data[j];
    info.replaceChildren(`logit of ${model.classes[k]} = Σⱼ w[${k}, j]·x[j] + b = `, el('span', { class: 'result', id: 'flatten-logit', 'data-value': z }, fmt(z)),
      `   (${keep.length < N ? `the ${keep.length} largest |w·x| of ${N} edges drawn; ` : ''}red: w > 0, blue: w < 0, darker = larger |w| up to ${fmt(wmax, 3)})`);
    svg.querySelectorAll('.cls').forEach((c) => c.classList.toggle('on', Number(c.dataset.k) === k));
  };
  classes.forEach((k, row) => {
    const g = svgEl('g', { class: 'cls', 'data-k': k, tabindex: 0, role: 'button', 'aria-label': `edges into ${model.classes[k]}` });
    const dot = svgEl('circle', { cx: x1 + 6, cy: classY(row), r: 5 });
    const label = svgEl('text', { x: x1 + 16, y: classY(row) + 4, class: 'lbl' });
    label.textContent = `${model.classes[k]} ${(100 * trace.probabilities[k]).toFixed(1)} %`;
    g.append(dot, label);
    g.addEventListener('mouseenter', () => draw(k, row));
    g.addEventListener('focus', () => draw(k, row));
    svg.append(g);
  });
  const target = ctx.target ?? trace.predicted;
  const row = Math.max(0, classes.indexOf(target));
  draw(classes[row], row);
  return el('div', { class: 'viewcol flatten-out' }, el('span', { class: 'label' }, `${ctx.layer.name} → ${out.name}: each unit's weight into the class (hover a class)`), svg);
}

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
  const logit = el('div', { class: 'arith', id: 'flatten-logit-formula' });
  const edges = await outputEdges(ctx, V, logit);
  if (!edges) return null;
  const part = [el('h4', {}, 'into the output classes'), edges, logit];
  // Come from an output class: its edges first; otherwise after the maps and the vector.
  if (ctx.target !== null && ctx.target !== undefined) body.prepend(...part);
  else body.append(...part);
  return null;
}
