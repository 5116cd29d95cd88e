// The unit panel: for a clicked neuron, its feature visualization, its kernel and its top
// dataset patches (each when the server has it).
import { getUnit } from './api.js';
import { makeScale } from './color.js';
import { el, paintMap } from './render.js';
import * as store from './store.js';

function kernelCanvases(kernel) {
  const [C, kh, kw] = kernel.shape;
  let m = 0;
  for (const v of kernel.data) m = Math.max(m, Math.abs(v));
  const scale = makeScale(-m || -1, m || 1, { mode: 'neuron' });
  const px = Math.max(24, 8 * kw);
  return Array.from({ length: Math.min(C, 32) }, (_, c) => {
    const cv = paintMap(el('canvas', { class: 'pixelated', title: `input channel ${c}`, style: { width: `${px}px`, height: `${px * kh / kw}px`, outline: '1px solid #e5e7eb' } }), kernel, c, scale);
    return cv;
  });
}

export function install(root) {
  const empty = () => root.replaceChildren(el('h3', {}, 'Unit'), el('p', { class: 'muted' }, 'Click a neuron in the overview to see what it responds to.'));
  const show = async (sel) => {
    if (!sel) return empty();
    const ticket = store.latest('unit'); // a slower answer for an earlier click is dropped
    root.replaceChildren(el('h3', {}, `Unit ${sel.layer} · ${sel.channel}`), el('p', { class: 'muted' }, 'loading…'));
    root.dataset.unit = `${sel.layer}|${sel.channel}`;
    let unit;
    try {
      unit = await getUnit(sel.layer, sel.channel);
      if (!ticket.current()) return undefined;
    } catch (err) {
      if (!ticket.current()) return undefined;
      root.replaceChildren(el('h3', {}, `Unit ${sel.layer} · ${sel.channel}`), el('p', { class: 'muted' }, String(err.message || err)));
      return undefined;
    }
    const fv = unit.featurevis ? el('img', { src: unit.featurevis, alt: 'feature visualization', style: { width: '128px', height: '128px' } })
      : el('p', { class: 'muted' }, 'no feature visualization on this server');
    const kernel = unit.kernel ? el('div', { class: 'row' }, ...kernelCanvases(unit.kernel)) : el('p', { class: 'muted' }, 'no kernel (not a convolution)');
    const patches = unit.top_patches?.length ? el('div', { class: 'row' }, ...unit.top_patches.map((src) => el('img', { src, alt: 'top patch', style: { width: '48px', height: '48px' } })))
      : el('p', { class: 'muted' }, 'no dataset scan (start the server with --scan DIR)');
    root.replaceChildren(el('h3', { id: 'unit-title', 'data-unit': `${sel.layer}|${sel.channel}` }, `Unit ${sel.layer} · channel ${sel.channel}`),
      el('div', { class: 'viewrow' }, el('div', { class: 'viewcol' }, el('span', { class: 'label' }, 'feature visualization'), fv),
        el('div', { class: 'viewcol' }, el('span', { class: 'label' }, 'kernel (one square per input channel)'), kernel)),
      el('span', { class: 'label muted' }, 'top dataset patches'), patches);
    return undefined;
  };
  store.on('selected', show);
  show(store.get('selected')); // installed after the first draw: a neuron may be chosen already
}
