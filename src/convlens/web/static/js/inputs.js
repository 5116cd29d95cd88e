// Inputs: the model's sample images as a picker; upload by file dialog, drag and drop or paste;
// the original beside what the model sees.
import { uploadImage } from './api.js';
import { el } from './render.js';
import * as store from './store.js';

function showPair(original, processed, caption) {
  document.getElementById('original-img').src = original;
  document.getElementById('processed-img').src = processed;
  document.getElementById('original-cap').textContent = caption;
}

async function upload(file, onImage) {
  if (!file) return;
  const status = document.getElementById('status');
  const ticket = store.newImageRequest(); // this upload supersedes any image still loading
  try {
    const res = await uploadImage(file);
    if (!store.isLatest(ticket)) return;
    showPair(res.original, res.processed, `original ${res.width}×${res.height}`);
    document.querySelectorAll('#samples button').forEach((b) => b.setAttribute('aria-selected', 'false'));
    await onImage(res.image_id, null, ticket, `upload ${file.name || 'pasted image'}`);
  } catch (err) {
    if (!store.isLatest(ticket)) return;
    showUploadError(err);
    if (status) status.textContent = '';
  }
}

/** The error of a failed upload: it wraps inside the input bar and has a close button. */
function showUploadError(err) {
  const box = el('div', { class: 'upload-error', role: 'alert' },
    el('span', { class: 'error-text', id: 'upload-error' }, `Upload failed: ${err.message || err}`),
    el('button', { type: 'button', class: 'close', 'aria-label': 'dismiss the upload error', onclick: () => box.remove() }, '✕'));
  document.getElementById('prediction').replaceChildren(box);
}

function samplePicker(model, onImage) {
  const box = document.getElementById('samples');
  box.replaceChildren(...model.samples.map((s, k) => {
    const btn = el('button', { type: 'button', role: 'option', 'aria-selected': k === 0 ? 'true' : 'false', 'data-id': s.id, title: s.label_name ? `${s.name} (${s.label_name})` : s.name },
      el('img', { src: s.url, alt: s.name }));
    btn.addEventListener('click', async () => {
      box.querySelectorAll('button').forEach((b) => b.setAttribute('aria-selected', String(b === btn)));
      document.getElementById('original-img').src = s.url;
      document.getElementById('original-cap').textContent = s.label_name ? `sample: ${s.label_name}` : 'sample';
      await onImage(s.id);
    });
    return btn;
  }));
}

function dropAndPaste(onImage) {
  const hint = document.getElementById('drop-hint');
  let depth = 0;
  window.addEventListener('dragenter', (e) => { e.preventDefault(); depth += 1; hint.hidden = false; });
  window.addEventListener('dragleave', () => { depth -= 1; if (depth <= 0) { hint.hidden = true; depth = 0; } });
  window.addEventListener('dragover', (e) => e.preventDefault());
  window.addEventListener('drop', (e) => {
    e.preventDefault();
    hint.hidden = true;
    depth = 0;
    upload(e.dataTransfer?.files?.[0], onImage);
  });
  window.addEventListener('paste', (e) => {
    const item = [...(e.clipboardData?.items || [])].find((i) => i.type.startsWith('image/'));
    if (item) upload(item.getAsFile(), onImage);
  });
}

export function install(onImage) {
  const input = document.getElementById('file-input');
  input.addEventListener('change', () => { upload(input.files[0], onImage); input.value = ''; });
  document.getElementById('upload-button').addEventListener('click', () => input.click());
  dropAndPaste(onImage);
  store.on('model', (model) => samplePicker(model, onImage));
  store.on('trace', (trace) => {
    document.getElementById('processed-img').src = trace.input.processed;
    if (!document.getElementById('original-img').getAttribute('src')) document.getElementById('original-img').src = trace.input.processed;
  });
}

export { showPair };
