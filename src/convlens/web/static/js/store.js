// A small shared state: get/set with subscribers per key.
const state = {
  model: null, // GET /model
  trace: null, // decoded GET /trace
  imageId: null,
  imageLabel: '', // what the current image is called on the results that belong to it
  scaleMode: 'layer',
  showDetails: false,
  pages: {}, // layer name -> page index
  selected: null, // {layer, channel}
  weights: {}, // layer name -> decoded weights
  imageRequest: 0, // bumped by every new image choice; an older request's answer is dropped
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

// A ticket for a new image request: later, `isLatest(ticket)` says whether a newer choice
// (a click, an upload, even a failed one) has come since, so a slow answer never overwrites it.
export function newImageRequest() {
  state.imageRequest += 1;
  return state.imageRequest;
}

export function isLatest(ticket) {
  return ticket === state.imageRequest;
}

/**
 * Tickets for any other kind of request (a unit, an explanation): `latest(kind)` gives a ticket,
 * `ticket.current()` says whether it is still the newest of its kind.
 */
const counters = {};
export function latest(kind) {
  counters[kind] = (counters[kind] || 0) + 1;
  const mine = counters[kind];
  return { current: () => counters[kind] === mine };
}
