// Softmax: logits, their exponentials, the normalizing sum and the probabilities; hover a row
// to pair its terms.
import { getWeights } from './api.js';
import { channelOrder, denseString, denseTerms, fmt, softmaxString, softmaxTerms } from './draw-utils.js';
import { colorOf, cssColor, inkFor, makeScale } from './color.js';
import { el, legend } from './render.js';

const MAX_ROWS = 20;
const MAX_DENSE_WEIGHTS = 4_000_000; // above this the logits' arithmetic is not fetched
const STAGE_MS = 800; // one step of the softmax animation
// CNN Explainer's softmax, step by step: the logits, their exponentials, the sum, the division.
const STAGES = [
  'logits z, coloured by value (diverging around 0)',
  'exponentials e^z: every logit made positive, large ones much larger',
  'their sum Σ e^z over all classes',
  'each e^z divided by the sum: probabilities that add up to 1',
];

export const NAME = 'softmax';

export function title(ctx) {
  return `${ctx.layer.name} — softmax over ${ctx.model.classes.length} classes`;
}

/** For a final linear layer, how the logit of class k came to be; null otherwise. */
async function logitArithmetic(ctx) {
  const { layer } = ctx;
  if (layer.kind !== 'linear' || ctx.model.outputs !== 'logits') return null;
  const [out, inp] = [layer.output_shape[0], layer.input_shapes[0]?.[0] ?? 0];
  if (out * inp > MAX_DENSE_WEIGHTS) return null;
  const [{ weight, bias }, acts] = await Promise.all([getWeights(layer.name), ctx.fullActivations([layer.inputs[0]])]);
  const x = acts[layer.inputs[0]].data;
  return (k) => denseTerms(weight, bias, x, k);
}

/** A coloured table cell: background from `scale`, text readable on it. */
function colouredCell(value, scale, text, stage) {
  const rgb = colorOf(scale, value);
  return el('td', { class: `s${stage}`, style: { background: cssColor(rgb), color: inkFor(rgb) } }, text);
}

/** Play the stages once on open; ▶ replays, the step button advances. Returns {node, stop}. */
function stageAnimator(table, caption) {
  let stage = 0;
  let timer = null;
  const show = (k) => {
    stage = k;
    table.dataset.stage = String(k);
    caption.replaceChildren(el('b', {}, `step ${k} of ${STAGES.length}: `), STAGES[k - 1]);
  };
  const stop = () => { if (timer) clearInterval(timer); timer = null; };
  const play = () => {
    stop();
    show(1);
    timer = setInterval(() => { if (stage >= STAGES.length) stop(); else show(stage + 1); }, STAGE_MS);
  };
  const node = el('div', { class: 'anim', id: 'softmax-anim' },
    el('button', { type: 'button', class: 'play', onclick: play }, '▶ replay'),
    el('button', { type: 'button', class: 'step', 'aria-label': 'next softmax step', onclick: () => { stop(); show(stage >= STAGES.length ? 1 : stage + 1); } }, '▶|'),
    caption);
  return { node, play, stop };
}

export async function render(body, ctx) {
  const { model, trace } = ctx;
  // A model whose output already is probabilities: its logits are not sent; use log p (same softmax).
  const logits = model.outputs === 'probabilities' ? trace.probabilities.map((p) => Math.log(Math.max(p, 1e-30))) : trace.logits;
  const t = softmaxTerms(logits);
  const formula = el('div', { class: 'arith', id: 'softmax-formula' });
  // Many classes (ImageNet): the 20 most probable and the one clicked; the sum is over all.
  const shown = model.classes.length <= MAX_ROWS ? model.classes.map((_, k) => k)
    : [...new Set([...channelOrder(t.probs, 1).slice(0, MAX_ROWS), ctx.channel ?? trace.predicted])];
  const zScale = makeScale(Math.min(...logits), Math.max(...logits), { mode: 'neuron' });
  const eScale = makeScale(0, Math.max(...t.exps), { mode: 'neuron' });
  const rows = shown.map((k) => [model.classes[k], k]).map(([name, k]) => el('tr', { 'data-k': k, tabindex: 0 },
    el('td', { style: { textAlign: 'left' } }, name), colouredCell(logits[k], zScale, fmt(logits[k]), 1),
    colouredCell(t.exps[k], eScale, fmt(t.exps[k]), 2),
    el('td', { class: 's4' }, fmt(t.probs[k], 4)),
    el('td', { class: 's4', style: { width: '160px', textAlign: 'left' } }, el('div', { class: 'pbar', style: { height: '8px', width: `${150 * t.probs[k]}px`, background: k === trace.predicted ? '#2563eb' : '#94a3b8', borderRadius: '4px' } }))));
  const dense = await logitArithmetic(ctx);
  const denseBox = el('div', { class: 'arith', id: 'dense-formula' });
  const flattenName = ctx.layer.inputs[0];
  const toFlatten = el('button', { type: 'button', id: 'flatten-link' });
  const pick = (k) => {
    rows.forEach((r) => r.classList.toggle('hl', Number(r.dataset.k) === k));
    formula.replaceChildren(el('span', { class: 'result', id: 'softmax-result', 'data-k': k, 'data-value': t.probs[k] }, softmaxString(k, logits)));
    toFlatten.textContent = `⇠ ${model.classes[k]}'s logit from the ${flattenName} units (edges)`;
    toFlatten.onclick = () => ctx.openLayer?.(flattenName, { target: k });
    if (dense) {
      const d = dense(k);
      denseBox.replaceChildren(`logit of ${model.classes[k]} from ${ctx.layer.inputs[0]} (largest terms first):\n`,
        el('span', { class: 'result', 'data-value': d.value }, denseString(k, d)));
    }
  };
  rows.forEach((r) => { const k = Number(r.dataset.k); r.addEventListener('mouseenter', () => pick(k)); r.addEventListener('focus', () => pick(k)); });
  const table = el('table', { class: 'softmax-table', id: 'softmax-table', 'data-stage': '4' },
    el('tr', {}, el('th', { style: { textAlign: 'left' } }, 'class'), el('th', { class: 's1' }, 'logit z'),
      el('th', { class: 's2' }, t.shift ? `e^(z − ${fmt(t.shift)})` : 'e^z'), el('th', { class: 's4' }, 'p = e^z / Σ'), el('th', { class: 's4' }, '')),
    ...rows,
    el('tr', { class: 'sum' }, el('td', { style: { textAlign: 'left' } }, el('b', {}, 'Σ')), el('td', {}), el('td', { class: 's3' }, el('b', {}, fmt(t.sum))), el('td', { class: 's4' }, '1.0000'), el('td', {})));
  const anim = stageAnimator(table, el('span', { class: 'muted', id: 'softmax-step' }));
  const keys = el('div', { class: 'legends' }, el('div', {}, el('span', {}, 'logit z'), legend(zScale, 120)),
    el('div', {}, el('span', {}, 'e^z'), legend(eScale, 120)));
  const hasEdges = ctx.layer.kind === 'linear' && ctx.model.graph.layers.some((l) => l.name === flattenName);
  body.replaceChildren(anim.node, el('div', { class: 'viewrow' }, table, keys), formula,
    hasEdges ? el('div', { class: 'row' }, toFlatten) : null, dense ? denseBox : null);
  pick(ctx.channel ?? trace.predicted);
  anim.play();
  return () => anim.stop();
}
