// The detail dialog: one view per layer kind, opened from a neuron, closed with Escape.
// The overview stays underneath, so closing returns to the same scroll place and focus.
import * as conv from './conv-view.js';
import * as activation from './activation-view.js';
import * as pool from './pool-view.js';
import * as flatten from './flatten-view.js';
import * as softmax from './softmax-view.js';

let cleanup = null;
let returnFocus = null;

/** Which view shows a layer; the last layer (the class scores) always opens softmax. */
export function viewFor(layer, isLast) {
  if (isLast) return softmax;
  if (layer.kind === 'conv') return conv;
  if (['maxpool', 'avgpool', 'adaptive_pool'].includes(layer.kind)) return pool;
  if (layer.kind === 'flatten' || layer.output_shape.length === 1) return flatten;
  return activation; // ReLU and every other element-wise layer (batch norm, add, ...)
}

export function close() {
  const dlg = document.getElementById('detail');
  if (dlg.hidden) return;
  if (cleanup) cleanup();
  cleanup = null;
  dlg.hidden = true;
  document.getElementById('detail-body').replaceChildren();
  if (returnFocus && document.contains(returnFocus)) returnFocus.focus({ preventScroll: true });
}

export async function open(ctx) {
  close();
  returnFocus = document.activeElement;
  const dlg = document.getElementById('detail');
  const body = document.getElementById('detail-body');
  const view = viewFor(ctx.layer, ctx.isLast);
  document.getElementById('detail-title').textContent = view.title(ctx);
  dlg.dataset.view = view.NAME;
  dlg.hidden = false;
  document.getElementById('detail-close').focus({ preventScroll: true });
  try {
    cleanup = (await view.render(body, ctx)) || null;
  } catch (err) {
    body.replaceChildren(Object.assign(document.createElement('p'), { className: 'error-text', textContent: String(err.message || err) }));
  }
}

export function install() {
  document.getElementById('detail-close').addEventListener('click', close);
  document.addEventListener('keydown', (e) => { if (e.key === 'Escape') close(); });
  document.getElementById('detail').addEventListener('click', (e) => { if (e.target.id === 'detail') close(); });
}
