// The detail view: one view per layer kind, opened from a neuron, closed with Escape. It
// expands in place inside the overview's box, growing out of the clicked map; the overview stays
// underneath, so closing returns to the same place and focus.
import * as conv from './conv-view.js';
import * as activation from './activation-view.js';
import * as pool from './pool-view.js';
import * as flatten from './flatten-view.js';
import * as softmax from './softmax-view.js';

let cleanup = null;
const EXPAND_MS = 450; // the in-place expansion's duration
let returnFocus = null;

/** Which view shows a layer; the last layer (the class scores) always opens softmax. */
export function viewFor(layer, isLast) {
  if (isLast) return softmax;
  if (layer.kind === 'conv') return conv;
  if (['maxpool', 'avgpool', 'adaptive_pool'].includes(layer.kind)) return pool;
  if (layer.kind === 'flatten' || layer.output_shape.length === 1) return flatten;
  return activation; // ReLU and every other element-wise layer (batch norm, add, ...)
}

/** The wrap the detail view expands inside (the overview's box). */
const wrap = () => document.getElementById('detail').parentElement;

export function close() {
  const dlg = document.getElementById('detail');
  if (dlg.hidden) return;
  if (cleanup) cleanup();
  cleanup = null;
  dlg.hidden = true;
  dlg.getAnimations().forEach((a) => a.cancel());
  wrap().style.minHeight = '';
  wrap().classList.remove('expanded');
  document.getElementById('detail-body').replaceChildren();
  if (returnFocus && document.contains(returnFocus)) returnFocus.focus({ preventScroll: true });
}

/**
 * Grow the view out of the clicked map, in place inside the overview (CNN Explainer's
 * expansion): a clip that starts at the map's box and opens to the whole overview.
 */
function expandFrom(dlg, from) {
  const box = wrap().getBoundingClientRect();
  const r = from?.getBoundingClientRect?.();
  if (!r || !r.width) return null;
  const inset = (t, rt, b, l, round) => `inset(${t}px ${rt}px ${b}px ${l}px round ${round}px)`;
  const start = inset(r.top - box.top, box.right - r.right, box.bottom - r.bottom, r.left - box.left, 3);
  dlg.dataset.from = `${Math.round(r.left - box.left)},${Math.round(r.top - box.top)}`;
  return dlg.animate([{ clipPath: start, opacity: 0.5 }, { clipPath: inset(0, 0, 0, 0, 8), opacity: 1 }],
    { duration: EXPAND_MS, easing: 'cubic-bezier(0.2, 0.7, 0.2, 1)' });
}

/** Let the overview's box grow when the view is taller than the overview. */
function fitHeight(dlg) {
  wrap().style.minHeight = `${Math.max(wrap().offsetHeight, dlg.firstElementChild.scrollHeight)}px`;
}

export async function open(ctx, from = null) {
  close();
  returnFocus = document.activeElement;
  const dlg = document.getElementById('detail');
  const body = document.getElementById('detail-body');
  const view = viewFor(ctx.layer, ctx.isLast);
  document.getElementById('detail-title').textContent = view.title(ctx);
  dlg.dataset.view = view.NAME;
  dlg.hidden = false;
  wrap().classList.add('expanded');
  const anim = expandFrom(dlg, from);
  dlg.dataset.expanding = anim ? 'true' : 'false';
  anim?.finished.then(() => { dlg.dataset.expanding = 'false'; }).catch(() => {});
  document.getElementById('detail-close').focus({ preventScroll: true });
  try {
    cleanup = (await view.render(body, ctx)) || null;
  } catch (err) {
    body.replaceChildren(Object.assign(document.createElement('p'), { className: 'error-text', textContent: String(err.message || err) }));
  }
  if (!dlg.hidden) fitHeight(dlg);
}

export function install() {
  document.getElementById('detail-close').addEventListener('click', close);
  document.addEventListener('keydown', (e) => { if (e.key === 'Escape') close(); });
}
