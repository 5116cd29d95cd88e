// Talking to the server (docs/web-api.md) and decoding its tensors.
import { API } from './config.js';

/** Base64 to bytes: the browser's own decoder where it has one (Uint8Array.fromBase64), else
 * atob and a plain loop (a mapping callback per byte costs ~10× more on a 4 MB trace). */
export function base64Bytes(b64) {
  if (typeof Uint8Array.fromBase64 === 'function') return Uint8Array.fromBase64(b64);
  const text = atob(b64);
  const bytes = new Uint8Array(text.length);
  for (let i = 0; i < text.length; i++) bytes[i] = text.charCodeAt(i);
  return bytes;
}

/**
 * {"shape", "dtype": "float32", "b64"} → {shape, data: Float32Array} (little-endian, C order);
 * a "uint8" map (C, ...) is dequantized: value = offset[c] + scale[c] * q. A map that sent
 * only some channels (`channels`: the channel of each row, of `of_channels`; the trace's
 * `top_channels`) becomes the whole map with `rows`, the Set of channels it holds: the other
 * channels are zeros until fetched.
 */
export function decodeTensor(t) {
  if (!t) return null;
  const bytes = base64Bytes(t.b64);
  const rows = t.channels || null;
  const shape = rows ? [t.of_channels, ...t.shape.slice(1)] : t.shape;
  const part = rows ? { rows: new Set(rows) } : {};
  if (t.dtype === 'uint8') {
    const per = t.shape[0] ? bytes.length / t.shape[0] : 0;
    const data = new Float32Array(rows ? t.of_channels * per : bytes.length);
    for (let c = 0, i = 0; c < t.shape[0]; c++) {
      const offset = t.offset[c], scale = t.scale[c];
      let at = rows ? rows[c] * per : i;
      for (const end = i + per; i < end; i++) data[at++] = offset + scale * bytes[i];
    }
    return { shape, data, quantized: true, ...part }; // within scale[c] / 2 of the exact values
  }
  if (t.dtype && t.dtype !== 'float32') throw new Error(`unsupported tensor dtype ${t.dtype}`);
  const sent = new Float32Array(bytes.buffer, bytes.byteOffset, bytes.length / 4);
  if (!rows) return { shape, data: sent };
  const per = t.shape[0] ? sent.length / t.shape[0] : 0;
  const data = new Float32Array(t.of_channels * per);
  rows.forEach((c, k) => data.set(sent.subarray(k * per, (k + 1) * per), c * per));
  return { shape, data, ...part };
}

/** The answer index.html's inline script fetched and parsed early for this GET, taken once
 * (a later request for the same path asks the server again); null when there is none. */
function takeEarly(path, options) {
  const early = globalThis.convlensEarly;
  if (!early || (options.method && options.method !== 'GET')) return null;
  const url = new URL(`${API}${path}`, document.baseURI).href;
  const pending = early.get(url);
  early.delete(url);
  return pending || null;
}

/**
 * How requests reach the explainer's API. The default is HTTP to the server that served this
 * page; a page running without a server (the notebook widget, an exported file) sets
 * `globalThis.convlensTransport` before this module runs, answering the same routes with the
 * same documents:
 *   request(path, {method, headers, body}) -> Promise<the JSON body>, rejecting with an Error
 *     whose message is the API's `error` line;
 *   asset(url) -> Promise<a URL an <img> can show> (a sample image the API serves).
 */
export const httpTransport = {
  async request(path, options = {}) {
    const { res, body } = await (takeEarly(path, options) || fetch(`${API}${path}`, options)
      .then((r) => r.json().then((b) => ({ res: r, body: b }), () => ({ res: r, body: null }))));
    if (!res.ok || body === null) throw new Error(body?.error || `${res.status} ${res.statusText}`);
    return body;
  },
  async asset(url) {
    return url;
  },
};

export function transport() {
  return globalThis.convlensTransport || httpTransport;
}

function request(path, options = {}) {
  return transport().request(path, options);
}

/** The model document; its sample URLs made showable by the transport. */
export async function getModel() {
  const model = await request('/model');
  const t = transport();
  if (t !== httpTransport) {
    await Promise.all(model.samples.map(async (s) => { s.url = await t.asset(s.url); }));
  }
  return model;
}

/**
 * The trace with every tensor decoded. `encoding: 'uint8'` asks for maps quantized per channel
 * (a quarter of the bytes; decoded tensors then carry `quantized: true`, and a view showing
 * numbers fetches the exact ones: getChannel, or this with the default float32);
 * `topChannels: k` only each map's k most active channels (decoded tensors carry `rows`).
 */
export async function getTrace(imageId, {
  layers = null, maxChannels = null, maxSize = null, encoding = null, topChannels = null,
} = {}) {
  const q = new URLSearchParams({ image: imageId });
  if (layers) q.set('layers', layers.join(','));
  if (maxChannels) q.set('max_channels', String(maxChannels));
  if (maxSize) q.set('max_size', String(maxSize));
  if (encoding && encoding !== 'float32') q.set('encoding', encoding);
  if (topChannels) q.set('top_channels', String(topChannels));
  const doc = await request(`/trace?${q}`);
  const activations = {};
  for (const [name, t] of Object.entries(doc.activations)) activations[name] = decodeTensor(t);
  return { ...doc, activations, inputTensor: decodeTensor(doc.input.tensor) };
}

// Exact channels already fetched, by image, layer and channel (a few, the newest kept).
const channelCache = new Map();
const CHANNELS_KEPT = 64;

/** One channel's exact float32 map {shape: [H, W], data} at full size (GET /activations). */
export function getChannel(imageId, layer, channel) {
  const key = `${imageId}|${layer}|${channel}`;
  if (!channelCache.has(key)) {
    const q = new URLSearchParams({ image: imageId });
    const pending = request(`/activations/${encodeURIComponent(layer)}/${channel}?${q}`)
      .then((body) => decodeTensor(body.map));
    pending.catch(() => channelCache.delete(key)); // a failure is not kept
    channelCache.set(key, pending);
    if (channelCache.size > CHANNELS_KEPT) channelCache.delete(channelCache.keys().next().value);
  }
  return channelCache.get(key);
}

const weightCache = new Map();
export async function getWeights(layer) {
  if (!weightCache.has(layer)) {
    const body = await request(`/weights/${encodeURIComponent(layer)}`);
    weightCache.set(layer, { weight: decodeTensor(body.weight), bias: decodeTensor(body.bias) });
  }
  return weightCache.get(layer);
}

export function uploadImage(file) {
  const form = new FormData();
  form.append('file', file, file.name || 'pasted.png');
  return request('/images', { method: 'POST', body: form });
}

export async function explain(body) {
  const res = await request('/explain', {
    method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify(body),
  });
  return { ...res, map: decodeTensor(res.map) };
}

/** GET `path` (a route under the API, e.g. '/timeline') through the transport. */
export function getJSON(path) {
  return request(path);
}

export async function getUnit(layer, channel) {
  const res = await request(`/units/${encodeURIComponent(layer)}/${channel}`);
  return { ...res, kernel: decodeTensor(res.kernel) };
}
