// A small shared state: get/set with subscribers per key.
const state = {
  model: null, // GET /model
  trace: null, // decoded GET /trace
  imageId: null,
  scaleMode: 'layer',
  showDetails: false,
  pages: {}, // layer name -> page index
  selected: null, // {layer, channel}
  weights: {}, // layer name -> decoded weights
};
const listeners = {};

export function get(key) {
  return state[key];
}

export function set(key, value) {
  state[key] = value;
  (listeners[key] || []).forEach((fn) => fn(value));
}

export function on(key, fn) {
  (listeners[key] ||= []).push(fn);
}
