// Entry point: load the model and the first image, draw the overview, wire the panels.
import { getModel, getTrace } from './api.js';
import { legendText, makeScale } from './color.js';
import * as detail from './detail.js';
import * as explainPanel from './explain-panel.js';
import * as inputs from './inputs.js';
import { drawOverview } from './overview.js';
import * as playground from './playground.js';
import * as store from './store.js';
import * as timeline from './timeline.js';
import * as unitPanel from './unit-panel.js';
import { el } from './render.js';
import { OVERVIEW_MAX_SIZE } from './config.js';

const overviewRoot = () => document.getElementById('overview');

/** Activations of `names` at full resolution: refetched without caps when the trace cut them. */
async function fullActivations(names) {
  const trace = store.get('trace');
  const capped = names.filter((n) => trace.caps?.[n] || !trace.activations[n]);
  if (!capped.length) return Object.fromEntries(names.map((n) => [n, trace.activations[n]]));
  const full = await getTrace(store.get('imageId'), { layers: names, maxChannels: 4096, maxSize: 4096 });
  return Object.fromEntries(names.map((n) => [n, full.activations[n]]));
}

function openNeuron({ layer, channel, target = null }) {
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

function redraw() {
  const model = store.get('model');
  const trace = store.get('trace');
  if (!model || !trace) return;
  drawOverview(overviewRoot(), model, trace, openNeuron);
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

// Thumbnails are at most MAX_NEURON px: a coarser trace keeps big models fast; the detail
// views fetch the layers they show at full resolution (fullActivations).
const overviewTrace = (imageId) => getTrace(imageId, { maxSize: OVERVIEW_MAX_SIZE });

/** A short name for an image, shown on the results that belong to it. */
function imageLabel(imageId, label) {
  if (label) return label;
  const s = store.get('model').samples.find((x) => x.id === imageId);
  return s ? `sample ${s.name}${s.label_name ? ` (${s.label_name})` : ''}` : imageId;
}

async function loadImage(imageId, pending = null, ticket = store.newImageRequest(), label = null) {
  const trace = (pending && (await pending)) || (await overviewTrace(imageId));
  if (!store.isLatest(ticket)) return; // a newer image (or a failed upload) came meanwhile
  document.querySelector('.input-pair').hidden = false;
  detail.close(); // its numbers belong to the previous image
  store.set('imageLabel', imageLabel(imageId, label));
  store.set('imageId', imageId);
  store.set('trace', trace);
  showPrediction(store.get('model'), trace);
  redraw();
  document.body.dataset.readyMs = String(Math.round(performance.now())); // since navigation start
  document.body.dataset.ready = 'true';
}

async function start() {
  detail.install();
  inputs.install(loadImage);
  explainPanel.install(document.getElementById('explain-panel'));
  unitPanel.install(document.getElementById('unit-panel'));
  playground.install(document.getElementById('playground'));
  timeline.install(document.getElementById('timeline-panel'));
  document.getElementById('scale-mode').addEventListener('change', (e) => { store.set('scaleMode', e.target.value); redraw(); });
  document.getElementById('show-details').addEventListener('change', (e) => { store.set('showDetails', e.target.checked); redraw(); });
  let resizeTimer = null;
  window.addEventListener('resize', () => { clearTimeout(resizeTimer); resizeTimer = setTimeout(redraw, 150); });
  try {
    const model = await getModel(); // (preloaded by index.html)
    store.set('model', model);
    document.getElementById('model-name').textContent = `${model.name} · ${model.input_spec.channels}×${model.input_spec.height}×${model.input_spec.width} · ${model.classes.length} classes`;
    document.title = `convlens · ${model.name}`;
    if (model.samples.length) await loadImage(model.samples[0].id);
    else {
      // Nothing to show yet: no picture frames (no broken-image icons), just what to do.
      document.querySelector('.input-pair').hidden = true;
      document.getElementById('status').textContent = 'This model has no sample images: upload one (button above, drop or paste).';
      document.body.dataset.ready = 'true'; // ready for an upload
    }
  } catch (err) {
    const status = document.getElementById('status');
    status.textContent = `Could not load the model: ${err.message || err}`;
    status.classList.add('error');
  }
}

start();
