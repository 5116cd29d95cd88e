// Explanations: choose a method, its target class, layer and parameters; see the map over the
// input; keep earlier results side by side to compare methods.
import { explain } from './api.js';
import { explanationScale, legendText } from './color.js';
import { el, legend, paintMap } from './render.js';
import * as store from './store.js';

const MAX_CARDS = 6;

function paramInput(name, spec) {
  const type = spec?.type || 'str';
  const value = spec?.default ?? '';
  if (type === 'bool') return el('input', { type: 'checkbox', 'data-param': name, 'data-type': type, checked: Boolean(value) });
  const literal = /^Literal\[(.*)\]$/.exec(type);
  const choices = spec?.choices || (literal ? literal[1].split(',').map((c) => c.trim().replace(/^['"]|['"]$/g, '')) : null);
  if (choices) {
    return el('select', { 'data-param': name, 'data-type': 'str' }, ...choices.map((c) => el('option', { value: c, selected: c === value }, String(c))));
  }
  return el('input', { type: type === 'int' || type === 'float' ? 'number' : 'text', step: type === 'float' ? 'any' : '1', value: value ?? '', 'data-param': name, 'data-type': type, style: { width: '80px' } });
}

function readParams(box) {
  const params = {};
  box.querySelectorAll('[data-param]').forEach((node) => {
    const t = node.dataset.type;
    if (t === 'bool') params[node.dataset.param] = node.checked;
    else if (node.value === '') return;
    else if (t === 'int') params[node.dataset.param] = parseInt(node.value, 10);
    else if (t === 'float') params[node.dataset.param] = parseFloat(node.value);
    else params[node.dataset.param] = node.value;
  });
  return params;
}

/**
 * One result: the server's overlay and the map drawn here, both on ONE colour map (the
 * server's: RdBu for signed maps, viridis for non-negative ones) with ONE legend saying what the
 * colours mean, and the image the result belongs to.
 */
function resultCard(res, imageId, imageLabel) {
  const [H, W] = res.map.shape;
  const scale = explanationScale(res.map.data, res.signed);
  const map = paintMap(el('canvas', { class: 'pixelated map', style: { height: `${120 * H / W}px` } }), res.map, 0, scale);
  const key = legend(scale, 246, { caption: false });
  key.classList.add('explain-legend');
  key.dataset.lo = String(scale.lo);
  key.dataset.hi = String(scale.hi);
  key.dataset.stops = JSON.stringify(scale.stops);
  return el('div', { class: 'card explain-card', 'data-method': res.method, 'data-image': imageId },
    el('div', { class: 'card-image', title: `computed for ${imageLabel}` }, `image: ${imageLabel}`),
    el('div', { class: 'pair' }, el('img', { src: res.overlay, alt: `${res.method} overlay`, class: 'overlay' }), map),
    key, el('div', { class: 'legend-words' }, legendText(scale)),
    el('div', {}, el('b', {}, res.method), ` → ${res.target_name}`),
    el('div', { class: 'muted' }, `${res.layer ? `layer ${res.layer} · ` : ''}${res.signed ? 'signed' : 'non-negative'}${res.seconds !== undefined ? ` · ${res.seconds.toFixed(2)} s` : ''}`));
}

/** Method, target and layer selects plus the method's parameters; `read()` gives the request. */
function controls(model, methods) {
  const method = el('select', { id: 'explain-method', 'aria-label': 'method' },
    ...methods.map((m) => el('option', { value: m.name, title: m.paper || '' }, m.title || m.name)));
  const target = el('select', { id: 'explain-target', 'aria-label': 'target class' }, el('option', { value: '' }, 'predicted class'),
    ...model.classes.map((c, k) => el('option', { value: k }, c)));
  const spatial = model.graph.layers.filter((l) => l.output_shape.length === 3 && l.kind !== 'input');
  const layer = el('select', { id: 'explain-layer', 'aria-label': 'layer' }, el('option', { value: '' }, 'default layer'),
    ...spatial.map((l) => el('option', { value: l.name }, l.name)));
  const params = el('span', { class: 'row' });
  const fill = () => {
    const m = methods.find((x) => x.name === method.value);
    layer.disabled = m?.needs_layer === false; // input-gradient methods have no layer to choose
    const entries = Object.entries(m?.params || {}).filter(([k]) => !['layer', 'target'].includes(k));
    params.replaceChildren(...entries.map(([k, spec]) => el('label', {}, `${k} `, paramInput(k, spec))));
  };
  method.addEventListener('change', fill);
  fill();
  const read = () => ({
    method: method.value, target: target.value === '' ? null : Number(target.value),
    layer: layer.disabled ? null : layer.value || null, params: readParams(params),
  });
  return { node: [el('div', { class: 'row' }, method, target, layer), params], read };
}

async function runOnce(read, cards, status) {
  status.className = 'muted';
  status.textContent = 'computing…';
  const imageId = store.get('imageId');
  const imageLabel = store.get('imageLabel');
  const ticket = store.latest('explain'); // only the newest click writes the status line
  try {
    const res = await explain({ image_id: imageId, ...read() });
    if (imageId !== store.get('imageId')) { // the image changed meanwhile: not shown with the new one
      if (ticket.current()) status.textContent = `(a result for ${imageLabel} was dropped: the image changed)`;
      return;
    }
    cards.prepend(resultCard(res, imageId, imageLabel));
    while (cards.children.length > MAX_CARDS) cards.lastChild.remove();
    if (ticket.current()) status.textContent = '';
  } catch (err) {
    if (!ticket.current()) return;
    status.className = 'error-text';
    status.textContent = String(err.message || err);
  }
}

export function install(root) {
  const build = (model) => {
    const methods = model.capabilities?.methods || [];
    root.replaceChildren(el('h3', {}, 'Explanations'));
    if (!methods.length) {
      root.append(el('p', { class: 'muted' }, 'This server has no explanation methods installed.'));
      return;
    }
    const form = controls(model, methods);
    const cards = el('div', { class: 'cards', id: 'explain-cards' });
    const status = el('span', { class: 'muted', id: 'explain-status', role: 'status' });
    root.append(...form.node,
      el('div', { class: 'row' },
        el('button', { type: 'button', id: 'explain-run', onclick: () => runOnce(form.read, cards, status) }, 'Explain'),
        el('button', { type: 'button', onclick: () => cards.replaceChildren() }, 'Clear'), status),
      el('p', { class: 'muted' }, 'Each result is kept beside the earlier ones for the same image to compare methods.'), cards);
  };
  store.on('model', build);
  if (store.get('model')) build(store.get('model')); // installed after the model came
  // Another image: the cards computed for the previous one go (each names its image anyway).
  store.on('imageId', (id) => {
    root.querySelectorAll('.explain-card').forEach((c) => { if (c.dataset.image !== id) c.remove(); });
  });
}
