// The convolution view: every input channel with its kernel, the intermediate maps, and their
// sum plus the bias giving the output map; a window slides with the arithmetic written out.
import { ANIMATION_MS, MAX_INTERMEDIATE } from './config.js';
import { cssColor, colorOf, makeScale } from './color.js';
import {
  convCell, fmt, intermediateMap, outputCellFor, productString, sumString, windowOrigin,
} from './draw-utils.js';
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

/** Map sizes in px: large enough to see small maps, small enough to fit many rows. */
function clamp(v, lo, hi) {
  return Math.min(hi, Math.max(lo, v));
}

function absMax(arrays) {
  let m = 0;
  for (const a of arrays) for (const v of a) m = Math.max(m, Math.abs(v));
  return m || 1;
}

/** The arithmetic for output cell (i, j): the page's channels written out, the rest summed. */
function arithmetic(res, i, j, page) {
  const onPage = new Set(page);
  const shown = res.channels.filter((ch) => onPage.has(ch.channel));
  const lines = shown.map((ch) => `channel ${ch.channel}: ${productString(ch.terms, ch.sum)}`);
  const rest = res.channels.filter((ch) => !onPage.has(ch.channel));
  if (rest.length) lines.push(`… ${rest.length} more channels: Σ = ${fmt(rest.reduce((a, c) => a + c.sum, 0))}`);
  const sums = res.channels.length <= 16 ? res.channels.map((c) => c.sum)
    : [res.channels.reduce((a, c) => a + c.sum, 0)];
  return { lines, final: `out[${i}, ${j}] = ${sumString(sums, res.bias, res.value)}` };
}

/** A dashed frame around a map showing the zero padding the window may slide over. */
function paddingFrame(box, padding) {
  const [ph, pw] = padding;
  if (!ph && !pw) return;
  const frame = el('div', { class: 'padframe', title: `zero padding ${ph}×${pw}` });
  placeRect(frame, box.cell, -ph, -pw, box.H + 2 * ph, box.W + 2 * pw);
  box.box.style.margin = `${ph * box.cell}px ${pw * box.cell}px`;
  box.box.prepend(frame);
}

/** The current window's numbers as a k×k grid, coloured like the input map. */
function windowGrid(k1) {
  const node = el('div', { class: 'kernel window-grid', style: { gridTemplateColumns: `repeat(${k1}, 16px)` } });
  const set = (terms, scale) => {
    node.replaceChildren(...terms.map((t) => {
      const cell = el('div', { style: { background: cssColor(colorOf(scale, t.x)) } });
      cell.addEventListener('mousemove', (e) => showTip(e, `x[${t.r}, ${t.q}] = ${fmt(t.x, 4)}`));
      cell.addEventListener('mouseleave', hideTip);
      return cell;
    }));
  };
  return { node, set };
}

/** One input channel: its map with the window, its kernel, and its intermediate map. */
function channelRow(data, c, cc, inter, scales, px) {
  const { X, weight, o, hyper, Wo } = data;
  const inBox = mapBox(X, c, scales.input, px);
  paddingFrame(inBox, hyper.padding);
  const win = el('div', { class: 'win' });
  inBox.box.append(win);
  const midBox = mapBox(inter, 0, scales.inter, clamp(12 * Wo, 72, 120));
  const cell = el('div', { class: 'cell' });
  midBox.box.append(cell);
  const grid = windowGrid(hyper.kernel[1]);
  const node = el('div', { class: 'chanrow' },
    el('div', { class: 'viewcol' }, inBox.box, el('span', { class: 'label' }, `input ch ${c}`)),
    el('div', { class: 'viewcol' }, grid.node, el('span', { class: 'label' }, 'window')),
    el('span', { class: 'op' }, '×'),
    el('div', { class: 'viewcol' }, kernelGrid(weight, o, cc, scales.kernel), el('span', { class: 'label' }, 'kernel')),
    el('span', { class: 'op' }, '='),
    el('div', { class: 'viewcol' }, midBox.box, el('span', { class: 'label' }, `intermediate ${c}`)));
  return { inBox, win, midBox, cell, grid, node };
}

/** The input channels of page `page`: [{cc (index in the kernel), c (input channel)}]. */
function pageChannels(data, page) {
  const { cinG, g } = data;
  const from = page * MAX_INTERMEDIATE;
  return Array.from({ length: Math.min(MAX_INTERMEDIATE, cinG - from) }, (_, k) => ({ cc: from + k, c: g * cinG + from + k }));
}

/** Build the rows of one page of input channels into `list`; returns the rows. */
function drawPage(list, data, page, scales, onScrub) {
  const { X, weight, o, hyper, Ho, Wo } = data;
  const chans = pageChannels(data, page);
  const inter = chans.map(({ cc, c }) => intermediateMap(X, weight, o, cc, c, hyper, Ho, Wo));
  const m = absMax(inter.map((x) => x.data));
  const pageScales = { ...scales, inter: makeScale(-m, m, { mode: 'neuron' }) };
  const px = clamp(12 * X.shape[2], 96, 120);
  const rows = chans.map(({ cc, c }, k) => ({ c, ...channelRow(data, c, cc, inter[k], pageScales, px) }));
  rows.forEach((r) => { onScrub(r.midBox); onScrub(r.inBox, true); });
  const named = (text, node) => el('div', {}, el('span', {}, text), node);
  list.replaceChildren(...rows.map((r) => r.node), el('div', { class: 'legends' },
    named('input', legend(scales.input, 110)), named('kernel', legend(scales.kernel, 90)),
    named('intermediate', legend(pageScales.inter, 110))));
  return rows;
}

function pager(data, onPage) {
  const pages = Math.ceil(data.cinG / MAX_INTERMEDIATE);
  if (pages <= 1) return null;
  let page = 0;
  const label = el('span', { class: 'muted' });
  const go = (d) => {
    page = Math.min(pages - 1, Math.max(0, page + d));
    const from = page * MAX_INTERMEDIATE;
    label.textContent = `input channels ${from}–${Math.min(data.cinG, from + MAX_INTERMEDIATE) - 1} of ${data.cinG} (the sum uses all)`;
    onPage(page);
  };
  const node = el('div', { class: 'anim' },
    el('button', { type: 'button', 'aria-label': 'previous input channels', onclick: () => go(-1) }, '‹'),
    el('button', { type: 'button', 'aria-label': 'next input channels', class: 'next-channels', onclick: () => go(1) }, '›'), label);
  return { node, start: () => go(0) };
}

async function loadData(ctx) {
  const { layer, channel: o } = ctx;
  const inName = layer.inputs[0];
  // exact numbers: every input channel (the sum uses all), and the output's one channel
  const [inputs, output, { weight, bias }] = await Promise.all([
    ctx.fullActivations([inName]), ctx.fullActivations([layer.name], o), getWeights(layer.name),
  ]);
  const hyper = { dilation: [1, 1], groups: 1, ...layer.hyper };
  const acts = { ...inputs, ...output };
  const Y = acts[layer.name];
  const cinG = weight.shape[1];
  const g = Math.floor(o / (weight.shape[0] / (hyper.groups || 1)));
  return { inName, X: acts[inName], Y, weight, bias, hyper, o, cinG, g, Ho: Y.shape[1], Wo: Y.shape[2] };
}

export async function render(body, ctx) {
  const data = await loadData(ctx);
  const { X, Y, weight, bias, hyper, o, Ho, Wo, cinG } = data;
  const xs = ctx.trace.stats[data.inName];
  const ys = ctx.trace.stats[ctx.layer.name];
  const k = absMax([weight.data]);
  const scales = {
    input: makeScale(xs.min, xs.max, { mode: 'layer' }),
    kernel: makeScale(-k, k, { mode: 'neuron' }),
    output: makeScale(ys.channel_min[o], ys.channel_max[o], { mode: 'neuron' }),
  };
  const outBox = mapBox(Y, o, scales.output, clamp(12 * Wo, 160, 240));
  const outCell = el('div', { class: 'cell' });
  outBox.box.append(outCell);
  const arith = el('div', { class: 'arith', id: 'conv-arith' });
  const resultBox = el('div', { class: 'arith' });
  let rows = [];
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
    const byChannel = new Map(res.channels.map((ch) => [ch.channel, ch.terms]));
    rows.forEach((r) => r.grid.set(byChannel.get(r.c), scales.input));
    const a = arithmetic(res, i, j, rows.map((r) => r.c));
    resultBox.replaceChildren(
      el('span', { class: 'result', id: 'conv-result', 'data-row': i, 'data-col': j, 'data-value': res.value }, a.final),
      el('span', { class: 'muted' }, `\n(the network computed ${fmt(Y.data[(o * Ho + i) * Wo + j], 5)})`));
    arith.replaceChildren(a.lines.join('\n'));
  };
  const anim = animator(Ho * Wo, show, ANIMATION_MS);
  // Hovering an output or intermediate map picks that cell; hovering an input map picks the
  // window that starts there.
  const scrub = (box, isInput = false) => box.canvas.addEventListener('mousemove', (e) => {
    const [i, j] = isInput ? outputCellFor(...cellAt(e, box.canvas, box.H, box.W), hyper, Ho, Wo)
      : cellAt(e, box.canvas, Ho, Wo);
    anim.set(i * Wo + j);
  });
  scrub(outBox);
  const list = el('div');
  const setPage = (page) => {
    rows = drawPage(list, data, page, scales, scrub);
    show(anim.position);
  };
  const pg = pager(data, setPage);
  body.replaceChildren(el('div', { class: 'conv-layout' },
    el('div', { class: 'conv-channels' }, pg?.node ?? null, list),
    el('div', { class: 'conv-side' },
      el('span', { class: 'label muted' }, `Σ of the ${cinG} intermediate maps + bias ${fmt(bias ? bias.data[o] : 0)} =`),
      outBox.box, el('span', { class: 'label muted' }, `${ctx.layer.name} channel ${o} (hover to move the window)`),
      legend(scales.output, 160), anim.node, resultBox,
      el('span', { class: 'label muted' }, 'window × kernel, channel by channel:'), arith)));
  if (pg) pg.start();
  else setPage(0);
  anim.set(0);
  return () => anim.stop();
}
