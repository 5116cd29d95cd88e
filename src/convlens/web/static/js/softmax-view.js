// Softmax: logits, their exponentials, the normalizing sum and the probabilities; hover a row
// to pair its terms.
import { getWeights } from './api.js';
import { channelOrder, denseString, denseTerms, fmt, softmaxString, softmaxTerms } from './draw-utils.js';
import { el } from './render.js';

const MAX_ROWS = 20;
const MAX_DENSE_WEIGHTS = 4_000_000; // above this the logits' arithmetic is not fetched

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

export async function render(body, ctx) {
  const { model, trace } = ctx;
  // A model whose output already is probabilities: its logits are not sent; use log p (same softmax).
  const logits = model.outputs === 'probabilities' ? trace.probabilities.map((p) => Math.log(Math.max(p, 1e-30))) : trace.logits;
  const t = softmaxTerms(logits);
  const formula = el('div', { class: 'arith', id: 'softmax-formula' });
  // Many classes (ImageNet): the 20 most probable and the one clicked; the sum is over all.
  const shown = model.classes.length <= MAX_ROWS ? model.classes.map((_, k) => k)
    : [...new Set([...channelOrder(t.probs, 1).slice(0, MAX_ROWS), ctx.channel ?? trace.predicted])];
  const rows = shown.map((k) => [model.classes[k], k]).map(([name, k]) => el('tr', { 'data-k': k, tabindex: 0 },
    el('td', { style: { textAlign: 'left' } }, name), el('td', {}, fmt(logits[k])), el('td', {}, fmt(t.exps[k])),
    el('td', {}, fmt(t.probs[k], 4)),
    el('td', { style: { width: '160px', textAlign: 'left' } }, el('div', { style: { height: '8px', width: `${150 * t.probs[k]}px`, background: k === trace.predicted ? '#2563eb' : '#94a3b8', borderRadius: '4px' } }))));
  const dense = await logitArithmetic(ctx);
  const denseBox = el('div', { class: 'arith', id: 'dense-formula' });
  const pick = (k) => {
    rows.forEach((r) => r.classList.toggle('hl', Number(r.dataset.k) === k));
    formula.replaceChildren(el('span', { class: 'result', id: 'softmax-result', 'data-k': k, 'data-value': t.probs[k] }, softmaxString(k, logits)));
    if (dense) {
      const d = dense(k);
      denseBox.replaceChildren(`logit of ${model.classes[k]} from ${ctx.layer.inputs[0]} (largest terms first):\n`,
        el('span', { class: 'result', 'data-value': d.value }, denseString(k, d)));
    }
  };
  rows.forEach((r) => { const k = Number(r.dataset.k); r.addEventListener('mouseenter', () => pick(k)); r.addEventListener('focus', () => pick(k)); });
  const table = el('table', { class: 'softmax-table' },
    el('tr', {}, el('th', { style: { textAlign: 'left' } }, 'class'), el('th', {}, 'logit z'),
      el('th', {}, t.shift ? `e^(z − ${fmt(t.shift)})` : 'e^z'), el('th', {}, 'p = e^z / Σ'), el('th', {}, '')),
    ...rows,
    el('tr', {}, el('td', { style: { textAlign: 'left' } }, el('b', {}, 'Σ')), el('td', {}), el('td', {}, el('b', {}, fmt(t.sum))), el('td', {}, '1.0000'), el('td', {})));
  body.replaceChildren(el('div', { class: 'viewrow' }, table), formula, dense ? denseBox : null);
  pick(ctx.channel ?? trace.predicted);
  return null;
}
