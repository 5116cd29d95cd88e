// The convolution view: every input channel with its kernel, the intermediate maps, and their
// sum plus the bias giving the output map; a window slides with the arithmetic written out.
import { ANIMATION_MS, MAX_INTERMEDIATE, MAX_TERMS_CHANNELS } from './config.js';
import { cssColor, colorOf, makeScale } from './color.js';
import { convCell, fmt, intermediateMap, productString, sumString, windowOrigin } from './draw-utils.js';
import { getWeights } from './api.js';
import { animator, cellAt, el, hideTip, legend, mapBox, placeRect, showTip } from './render.js';

export const NAME = 'conv';

export function title(ctx) {
  const h = ctx.layer.hyper;
  return `${ctx.layer.name} · channel ${ctx.channel} — convolution (kernel ${h.kernel.join('×')}, stride ${h.stride.join('×')}, padding ${h.padding.join('×')})`;
}

function kernelGrid(weight, o, cc, scale) {
  const [, cinG, k0, k1] = weight.shape;
  const grid = el('div', { class: 'kernel', style: { gridTemplateColumns: `repeat(${k1}, 16px)` } });
  for (let a = 0; a < k0; a++) {
    for (let b = 0; b < k1; b++) {
      const w = weight.data[((o * cinG + cc) * k0 + a) * k1 + b];
      const cell = el('div', { style: { background: cssColor(colorOf(scale, w)) }, 'data-weight': w });
      cell.addEventListener('mousemove', (e) => showTip(e, `w[${a}, ${b}] = ${fmt(w, 4)}`));
      cell.addEventListener('mouseleave', hideTip);
      grid.append(cell);
    }
  }
  return grid;
}

function absMax(arrays) {
  let m = 0;
  for (const a of arrays) for (const v of a) m = Math.max(m, Math.abs(v));
  return m || 1;
}

/** The arithmetic for output cell (i, j), as text lines; the last line holds the value. */
function arithmetic(res, i, j, serverValue) {
  const shown = res.channels.slice(0, MAX_TERMS_CHANNELS);
  const lines = shown.map((ch) => `channel ${ch.channel}: ${productString(ch.terms, ch.sum)}`);
  const rest = res.channels.slice(MAX_TERMS_CHANNELS);
  if (rest.length) lines.push(`… ${rest.length} more channels: Σ = ${fmt(rest.reduce((a, c) => a + c.sum, 0))}`);
  const sums = res.channels.length <= 16 ? res.channels.map((c) => c.sum)
    : [res.channels.reduce((a, c) => a + c.sum, 0)];
  return { lines, final: `out[${i}, ${j}] = ${sumString(sums, res.bias, res.value)}`, server: serverValue };
}

export async function render(body, ctx) {
  const { layer, channel: o } = ctx;
  const inName = layer.inputs[0];
  const acts = await ctx.fullActivations([inName, layer.name]);
  const X = acts[inName];
  const Y = acts[layer.name];
  const { weight, bias } = await getWeights(layer.name);
  const hyper = { dilation: [1, 1], groups: 1, ...layer.hyper };
  const [, Ho, Wo] = Y.shape;
  const [, cinG] = weight.shape;
  const g = Math.floor(o / (weight.shape[0] / (hyper.groups || 1)));
  const chans = Array.from({ length: Math.min(cinG, MAX_INTERMEDIATE) }, (_, cc) => ({ cc, c: g * cinG + cc }));
  const inter = chans.map(({ cc, c }) => intermediateMap(X, weight, o, cc, c, hyper, Ho, Wo));
  const interScale = makeScale(-absMax(inter.map((m) => m.data)), absMax(inter.map((m) => m.data)), { mode: 'neuron' });
  const kScale = makeScale(-absMax([weight.data]), absMax([weight.data]), { mode: 'neuron' });
  const xs = ctx.trace.stats[inName];
  const inScale = makeScale(xs.min, xs.max, { mode: 'layer' });
  const ys = ctx.trace.stats[layer.name];
  const outScale = makeScale(ys.channel_min[o], ys.channel_max[o], { mode: 'neuron' });
  const px = Math.min(120, 12 * X.shape[2]);
  const rows = chans.map(({ cc, c }, k) => {
    const inBox = mapBox(X, c, inScale, px);
    const win = el('div', { class: 'win' });
    inBox.box.append(win);
    const midBox = mapBox(inter[k], 0, interScale, Math.min(120, 12 * Wo));
    const cell = el('div', { class: 'cell' });
    midBox.box.append(cell);
    return { inBox, win, midBox, cell, node: el('div', { class: 'chanrow' },
      el('div', { class: 'viewcol' }, inBox.box, el('span', { class: 'label' }, `input ch ${c}`)),
      el('div', { class: 'viewcol' }, kernelGrid(weight, o, cc, kScale), el('span', { class: 'label' }, 'kernel')),
      el('span', { class: 'op' }, '='),
      el('div', { class: 'viewcol' }, midBox.box, el('span', { class: 'label' }, `intermediate ${c}`))) };
  });
  const outBox = mapBox(Y, o, outScale, Math.min(240, 12 * Wo));
  const outCell = el('div', { class: 'cell' });
  outBox.box.append(outCell);
  const arith = el('div', { class: 'arith', id: 'conv-arith' });
  const resultBox = el('div', { class: 'arith' });
  const show = (p) => {
    const i = Math.floor(p / Wo);
    const j = p % Wo;
    const [r0, c0] = windowOrigin(i, j, hyper.stride, hyper.padding);
    const span = [hyper.dilation[0] * (hyper.kernel[0] - 1) + 1, hyper.dilation[1] * (hyper.kernel[1] - 1) + 1];
    rows.forEach((r) => {
      placeRect(r.win, r.inBox.cell, r0, c0, span[0], span[1]);
      placeRect(r.cell, r.midBox.cell, i, j, 1, 1);
    });
    placeRect(outCell, outBox.cell, i, j, 1, 1);
    const res = convCell(X, weight, bias, o, i, j, hyper);
    const a = arithmetic(res, i, j, Y.data[(o * Ho + i) * Wo + j]);
    resultBox.replaceChildren(
      el('span', { class: 'result', id: 'conv-result', 'data-row': i, 'data-col': j, 'data-value': res.value }, a.final),
      el('span', { class: 'muted' }, `\n(the network computed ${fmt(a.server, 5)})`));
    arith.replaceChildren(a.lines.join('\n'));
  };
  const anim = animator(Ho * Wo, show, ANIMATION_MS);
  const scrub = (box, H, W) => box.canvas.addEventListener('mousemove', (e) => {
    const [i, j] = cellAt(e, box.canvas, H, W);
    anim.set(i * Wo + j);
  });
  scrub(outBox, Ho, Wo);
  rows.forEach((r) => scrub(r.midBox, Ho, Wo));
  const more = cinG > chans.length ? el('p', { class: 'muted' }, `showing ${chans.length} of ${cinG} input channels; the sum below uses all of them`) : null;
  const named = (text, node) => el('div', {}, el('span', {}, text), node);
  body.replaceChildren(el('div', { class: 'conv-layout' },
    el('div', { class: 'conv-channels' }, ...rows.map((r) => r.node), more,
      el('div', { class: 'legends' }, named('input', legend(inScale, 110)), named('kernel', legend(kScale, 90)),
        named('intermediate', legend(interScale, 110)))),
    el('div', { class: 'conv-side' },
      el('span', { class: 'label muted' }, `Σ of the ${cinG} intermediate maps + bias ${fmt(res0(bias, o))} =`),
      outBox.box, el('span', { class: 'label muted' }, `${layer.name} channel ${o} (hover to move the window)`),
      named('', legend(outScale, 160)), anim.node, resultBox,
      el('span', { class: 'label muted' }, 'window × kernel, channel by channel:'), arith)));
  anim.set(0);
  return () => anim.stop();
}

function res0(bias, o) {
  return bias ? bias.data[o] : 0;
}
