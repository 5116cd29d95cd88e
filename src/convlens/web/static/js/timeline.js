// The training timeline (`convlens train --watch`): a slider over the served run's snapshots
// showing the first layer's filters, the probe image's activations and Grad-CAM, dead units
// and the loss at each step. Hidden when the served model has no timeline.
import { getJSON } from './api.js'; // through the transport: the notebook widget sees it too
import { el } from './render.js';

const img = (src, alt, attrs = {}) => el('img', { src, alt, class: 'pixelated', ...attrs });
const col = (label, ...children) => el('div', { class: 'viewcol' }, el('span', { class: 'label' }, label), ...children);

/** Fill `root` with the timeline player (or keep it hidden when there is no timeline). */
export async function install(root) {
  if (!root) return;
  root.hidden = true;
  let doc;
  try {
    doc = await getJSON('/timeline');
  } catch {
    return; // an older server without the route: nothing to show
  }
  if (!doc.available || !doc.frames.length) return;
  const last = doc.frames.length - 1;
  const slider = el('input', {
    type: 'range', id: 'timeline-slider', min: '0', max: String(last), step: '1', value: String(last),
    'aria-label': 'training step', style: { width: '100%' },
  });
  const label = el('div', { id: 'timeline-label', class: 'timeline-label', 'aria-live': 'polite' });
  const dead = el('div', { id: 'timeline-dead', class: 'muted' });
  const filters = img('', `filters of ${doc.filters_layer}`, { id: 'timeline-filters', style: { width: '160px' } });
  const cam = img('', 'Grad-CAM on the probe image', { id: 'timeline-gradcam', style: { width: '112px' } });
  const chart = img('', 'loss so far', { id: 'timeline-loss' });
  const acts = el('div', { id: 'timeline-activations' });
  root.replaceChildren(
    el('h3', {}, `Training timeline · ${doc.frames.length} snapshots, every ${doc.every} steps`),
    el('div', { class: 'row' }, el('span', { class: 'muted' }, 'step'), slider),
    label, dead,
    el('div', { class: 'viewrow' },
      col(`filters of ${doc.filters_layer}`, filters),
      col(`probe (${doc.probe_class})`, img(doc.probe_image, 'probe image', { style: { width: '112px' } })),
      col(`Grad-CAM at ${doc.cam_layer}`, cam),
      col('loss (blue: training, red: validation)', chart)),
    el('span', { class: 'label muted' }, 'the probe image’s activations (first channels)'), acts,
  );
  root.hidden = false;

  const cache = new Map();
  let wanted = last;
  async function show(i) {
    wanted = i;
    const info = doc.frames[i];
    label.textContent = info.label;
    let frame = cache.get(i);
    if (!frame) {
      try {
        frame = await getJSON(`/timeline/frames/${i}`);
      } catch (err) {
        dead.textContent = String(err.message || err);
        return;
      }
      cache.set(i, frame);
    }
    if (wanted !== i) return; // the slider moved on while this frame loaded
    label.textContent = frame.label;
    filters.src = frame.filters;
    cam.src = frame.gradcam;
    chart.src = frame.loss_chart;
    dead.textContent = frame.dead_text;
    acts.replaceChildren(...frame.activations.map((a) => el('div', { class: 'row' },
      el('span', { class: 'muted', style: { width: '90px' } }, a.layer), img(a.image, `activations of ${a.layer}`))));
    root.dataset.frame = String(i);
  }
  slider.addEventListener('input', () => show(Number(slider.value)));
  await show(last);
}
