// Entry point: load the model and the first image, draw the overview, then wire the panels.
// Only what the first draw needs is imported here (index.html preloads exactly these); the
// detail views and the panels below the overview are imported after it (`later`), so their
// modules neither compete with the trace for the network nor delay the draw.
import { getChannel, getModel, getTrace } from './api.js';
import { legendText, makeScale } from './color.js';
import * as inputs from './inputs.js';
import { drawOverview } from './overview.js';
import * as store from './store.js';
import { el } from './render.js';
import { OVERVIEW_MAX_SIZE, PAGE_SIZE, QUANTIZE_ABOVE } from './config.js';

const overviewRoot = () => document.getElementById('overview');

/** Every layer's output size in numbers, summed (what a trace without caps would send). */
function activationNumbers(model) {
  return model.graph.layers.reduce((sum, l) => sum + l.output_shape.reduce((a, b) => a * b, 1), 0);
}

/** The overview trace's encoding: uint8 above QUANTIZE_ABOVE numbers, unless the URL says. */
function traceEncoding(model) {
  const asked = new URLSearchParams(window.location.search).get('trace');
  if (asked === 'uint8' || asked === 'float32') return asked;
  return activationNumbers(model) > QUANTIZE_ABOVE ? 'uint8' : 'float32';
}

// Exact layers already refetched for the current image (name -> decoded float32 tensor).
let exactLayers = { imageId: null, layers: new Map() };

/** Exact, full-size layers: from the trace when it holds them so, else refetched (cached). */
async function exactLayersOf(names) {
  const imageId = store.get('imageId');
  if (exactLayers.imageId !== imageId) exactLayers = { imageId, layers: new Map() };
  const missing = names.filter((n) => !exactLayers.layers.has(n));
  if (missing.length) {
    const full = getTrace(imageId, { layers: missing, maxChannels: 4096, maxSize: 4096 });
    missing.forEach((n) => exactLayers.layers.set(n, full.then((t) => t.activations[n])));
    full.catch(() => missing.forEach((n) => exactLayers.layers.delete(n)));
  }
  const got = await Promise.all(names.map((n) => exactLayers.layers.get(n)));
  return Object.fromEntries(names.map((n, k) => [n, got[k]]));
}

/** Layer `name` as a full-size tensor whose channel `c` holds the exact map (GET
 * /activations); the other channels are zero: a view asking this way reads only channel c. */
async function exactChannel(name, c) {
  const shape = store.get('model').graph.layers.find((l) => l.name === name).output_shape;
  const map = await getChannel(store.get('imageId'), name, c);
  const data = new Float32Array(shape.reduce((a, b) => a * b, 1));
  data.set(map.data, c * map.data.length);
  return { shape, data };
}

/**
 * Activations of `names` with exact values at full resolution, as the detail views print them.
 * Taken from the trace when it sent the layer whole in float32; otherwise refetched: with
 * `channel` (a view that reads one channel of each layer) only that channel of a quantized
 * map (GET /activations, cached by api.js), else whole layers uncapped in float32 (cached).
 */
async function fullActivations(names, channel = null) {
  const trace = store.get('trace');
  const exact = (n) => trace.activations[n] && !trace.caps?.[n] && !trace.activations[n].quantized;
  const perChannel = (n) => channel !== null && trace.activations[n]?.quantized && trace.activations[n].shape.length === 3;
  const whole = names.filter((n) => !exact(n) && !perChannel(n));
  const [layers, channels] = await Promise.all([
    whole.length ? exactLayersOf(whole) : {},
    Promise.all(names.filter((n) => !exact(n) && perChannel(n)).map(async (n) => [n, await exactChannel(n, channel)])),
  ]);
  const fetched = { ...layers, ...Object.fromEntries(channels) };
  return Object.fromEntries(names.map((n) => [n, exact(n) ? trace.activations[n] : fetched[n]]));
}

// The modules not needed for the first draw, imported and installed once (see `later`).
let deferred = null;
let detail = null; // detail.js once imported: nothing can be open before

/**
 * Import and install the detail views and the panels: after the first draw, or at once when
 * something needs them first (a neuron opened). Each panel starts from the state it finds (the
 * model, a selection made meanwhile), so installing late loses nothing.
 */
function later() {
  deferred ||= Promise.all([
    import('./detail.js'), import('./explain-panel.js'), import('./unit-panel.js'),
    import('./playground.js'), import('./timeline.js'),
  ]).then(([detailView, explainPanel, unitPanel, playground, timeline]) => {
    detail = detailView;
    detail.install();
    explainPanel.install(document.getElementById('explain-panel'));
    unitPanel.install(document.getElementById('unit-panel'));
    playground.install(document.getElementById('playground'));
    timeline.install(document.getElementById('timeline-panel'));
    performance.mark('convlens:panels');
    document.body.dataset.panelsMs = String(Math.round(performance.now()));
  });
  return deferred;
}

/** `fn` once the browser has painted what is drawn now (a frame, then a task), or after
 * 200 ms where no frame comes (a page the browser does not render: a hidden notebook output). */
function afterPaint(fn) {
  let done = false;
  const once = () => { if (!done) { done = true; fn(); } };
  requestAnimationFrame(() => setTimeout(once, 0));
  setTimeout(once, 200);
}

/** Everything installed: the page is ready for use (tests wait for this). The first call
 * imports the deferred modules once the first draw is on the screen. */
function markReady() {
  const ready = () => later().then(() => { document.body.dataset.ready = 'true'; }, (err) => {
    const status = document.getElementById('status');
    status.textContent = `Could not load the page's panels: ${err.message || err}`;
    status.classList.add('error');
  });
  if (deferred) ready();
  else afterPaint(ready);
}

function openNeuron(choice) {
  later().then(() => openNeuronNow(choice));
}

function openNeuronNow({ layer, channel, target = null }) {
  const model = store.get('model');
  const layers = model.graph.layers;
  const lay = layers.find((l) => l.name === layer);
  store.set('selected', { layer, channel });
  document.querySelectorAll('.neuron.selected').forEach((n) => n.classList.remove('selected'));
  const from = document.querySelector(`#overview [data-key="${CSS.escape(`${layer}|${channel}`)}"]`);
  from?.classList.add('selected');
  if (lay.kind === 'input') return;
  const openLayer = (name, extra = {}) => openNeuron({ layer: name, channel: 0, ...extra });
  detail.open({
    model, trace: store.get('trace'), layer: lay, channel, target, isLast: lay === layers.at(-1), fullActivations, openLayer,
  }, from);
}

// A big model's overview trace holds each map's first page of channels only (`topChannels`);
// the channels another page shows are fetched when it is shown: the layer's whole capped map,
// at the overview's caps and encoding (per channel, the very numbers of the first page's).
const filling = new Map(); // "image|layer" -> the request filling it

function fillChannels(names) {
  const imageId = store.get('imageId');
  const trace = store.get('trace');
  const todo = names.filter((n) => !filling.has(`${imageId}|${n}`));
  if (!todo.length) return;
  const pending = getTrace(imageId, {
    layers: todo, maxSize: OVERVIEW_MAX_SIZE, encoding: traceEncoding(store.get('model')),
  });
  todo.forEach((n) => filling.set(`${imageId}|${n}`, pending));
  pending.then((part) => {
    if (store.get('trace') !== trace) return; // another image meanwhile
    for (const n of todo) if (part.activations[n]) trace.activations[n] = part.activations[n];
    redraw();
  }, () => todo.forEach((n) => filling.delete(`${imageId}|${n}`))); // tried again at the next draw
}

function redraw() {
  const model = store.get('model');
  const trace = store.get('trace');
  if (!model || !trace) return;
  drawOverview(overviewRoot(), model, trace, openNeuron, fillChannels);
  const mode = store.get('scaleMode');
  const text = mode === 'neuron'
    ? 'colours: per neuron (hover a neuron for its range)'
    : `colours: ${legendText(makeScale(-1, 1, { mode }))} when signed (white = 0)`;
  const node = document.getElementById('legend-text');
  node.textContent = text;
  node.title = `${text}; the input column is in pixel units 0–1`;
}

function showPrediction(model, trace) {
  const k = trace.predicted;
  document.getElementById('prediction').replaceChildren('prediction: ',
    el('b', { id: 'predicted-class' }, model.classes[k]), ` (${(100 * trace.probabilities[k]).toFixed(1)} %)`);
}

// Thumbnails are at most MAX_NEURON px: a coarser trace keeps big models fast (and a big
// model's is quantized); the detail views fetch what they show exactly (fullActivations).
// A quantized (big) model's trace sends each map's first page only: fillChannels the rest.
const topChannels = (encoding) => (encoding === 'uint8' ? PAGE_SIZE : null);
const overviewTrace = (imageId) => {
  const encoding = traceEncoding(store.get('model'));
  return getTrace(imageId, { maxSize: OVERVIEW_MAX_SIZE, encoding, topChannels: topChannels(encoding) });
};

/** A short name for an image, shown on the results that belong to it. */
function imageLabel(imageId, label) {
  if (label) return label;
  const s = store.get('model').samples.find((x) => x.id === imageId);
  return s ? `sample ${s.name}${s.label_name ? ` (${s.label_name})` : ''}` : imageId;
}

async function loadImage(imageId, pending = null, ticket = store.newImageRequest(), label = null) {
  const trace = (pending && (await pending)) || (await overviewTrace(imageId));
  performance.mark('convlens:trace');
  if (!store.isLatest(ticket)) return; // a newer image (or a failed upload) came meanwhile
  document.querySelector('.input-pair').hidden = false;
  detail?.close(); // its numbers belong to the previous image
  store.set('imageLabel', imageLabel(imageId, label));
  store.set('imageId', imageId);
  store.set('trace', trace);
  showPrediction(store.get('model'), trace);
  redraw();
  // the overview drawn, in ms since navigation start (benchmarks/page.py reads it)
  document.body.dataset.readyMs = String(Math.round(performance.now()));
  // and on the screen: the frame after the draw (readyMs leaves out its style, layout, paint)
  requestAnimationFrame(() => setTimeout(() => {
    document.body.dataset.paintedMs = String(Math.round(performance.now()));
  }, 0));
  markReady();
}

/** The first trace as the server named it in index.html's preload link (the first sample at
 * the overview's caps, the page's own rule: tests/test_web_bigtrace.py), asked for at once,
 * beside the model, by the very URL the preload fetched; null without one (an exported page). */
function preloadedTrace() {
  const link = document.querySelector('link[rel="preload"][href*="/trace?"]');
  if (!link) return null;
  const q = new URL(link.href).searchParams;
  const imageId = q.get('image');
  const maxSize = Number(q.get('max_size'));
  if (!imageId || maxSize !== OVERVIEW_MAX_SIZE) return null;
  const top = Number(q.get('top_channels')) || null;
  const pending = getTrace(imageId, { maxSize, encoding: q.get('encoding'), topChannels: top });
  pending.catch(() => {}); // its failure shows when loadImage awaits it
  return { imageId, encoding: q.get('encoding') || 'float32', top, pending };
}

async function start() {
  performance.mark('convlens:start');
  const modelAnswer = getModel(); // (preloaded by index.html) parsed while the panels install
  modelAnswer.catch(() => {}); // shown below
  const firstTrace = preloadedTrace();
  inputs.install(loadImage);
  document.getElementById('scale-mode').addEventListener('change', (e) => { store.set('scaleMode', e.target.value); redraw(); });
  document.getElementById('show-details').addEventListener('change', (e) => { store.set('showDetails', e.target.checked); redraw(); });
  let resizeTimer = null;
  window.addEventListener('resize', () => { clearTimeout(resizeTimer); resizeTimer = setTimeout(redraw, 150); });
  try {
    const model = await modelAnswer;
    performance.mark('convlens:model');
    store.set('model', model);
    document.getElementById('model-name').textContent = `${model.name} · ${model.input_spec.channels}×${model.input_spec.height}×${model.input_spec.width} · ${model.classes.length} classes`;
    document.title = `convlens · ${model.name}`;
    if (model.samples.length) {
      const first = model.samples[0].id;
      const encoding = traceEncoding(model);
      const same = firstTrace && firstTrace.imageId === first && firstTrace.encoding === encoding
        && firstTrace.top === topChannels(encoding);
      await loadImage(first, same ? firstTrace.pending : null);
    }
    else {
      // Nothing to show yet: no picture frames (no broken-image icons), just what to do.
      document.querySelector('.input-pair').hidden = true;
      document.getElementById('status').textContent = 'This model has no sample images: upload one (button above, drop or paste).';
      markReady(); // ready for an upload
    }
  } catch (err) {
    const status = document.getElementById('status');
    status.textContent = `Could not load the model: ${err.message || err}`;
    status.classList.add('error');
    later().catch(() => {}); // the panels that need no model (the playground) still work
  }
}

start();
