// Small DOM helpers shared by the views: a channel as a canvas, a colour legend, the tooltip.
import { colorOf, cssColor, legendText, mapPixels, shortRange } from './color.js';
import { fmt } from './draw-utils.js';

/** Create an element with attributes and children. */
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === 'class') node.className = v;
    else if (k === 'style') Object.assign(node.style, v);
    else if (k.startsWith('on')) node.addEventListener(k.slice(2), v);
    else if (v !== null && v !== undefined && v !== false) node.setAttribute(k, v === true ? '' : v);
  }
  for (const c of children.flat()) if (c !== null && c !== undefined) node.append(c);
  return node;
}

/** Paint channel `c` of a (C,H,W) tensor (or an (H,W) map) into a canvas at native size. */
export function paintMap(canvas, tensor, c, scale) {
  const [H, W] = tensor.shape.length === 3 ? tensor.shape.slice(1) : tensor.shape;
  canvas.width = W;
  canvas.height = H;
  const ctx = canvas.getContext('2d');
  ctx.putImageData(new ImageData(mapPixels(tensor.data, c * H * W, H, W, scale), W, H), 0, 0);
  return canvas;
}

/** A map canvas shown at `px` pixels wide (pixelated), inside a positioned box for overlays. */
export function mapBox(tensor, c, scale, px) {
  const [H, W] = tensor.shape.length === 3 ? tensor.shape.slice(1) : tensor.shape;
  const canvas = paintMap(el('canvas', { class: 'map' }), tensor, c, scale);
  const cell = px / W;
  canvas.style.width = `${px}px`;
  canvas.style.height = `${H * cell}px`;
  const box = el('div', { class: 'mapbox' }, canvas);
  return { box, canvas, cell, H, W };
}

/** Cell (row, col) under a mouse event on a map canvas. */
export function cellAt(event, canvas, H, W) {
  const r = canvas.getBoundingClientRect();
  const col = Math.floor(((event.clientX - r.left) / r.width) * W);
  const row = Math.floor(((event.clientY - r.top) / r.height) * H);
  return [Math.min(H - 1, Math.max(0, row)), Math.min(W - 1, Math.max(0, col))];
}

/** A horizontal gradient bar with its end values and what the scale means. */
export function legend(scale, width, { caption = true, compact = false } = {}) {
  const bar = el('canvas', { width: 64, height: 1 });
  const ctx = bar.getContext('2d');
  for (let x = 0; x < 64; x++) {
    ctx.fillStyle = cssColor(colorOf(scale, scale.lo + ((x + 0.5) / 64) * (scale.hi - scale.lo)));
    ctx.fillRect(x, 0, 1, 1);
  }
  // Under a column too narrow for two numbers the range is written once: ±hi when the scale
  // is symmetric around 0, lo…hi otherwise (two significant digits; the title has all).
  const ends = compact ? el('div', { class: 'ends compact' }, el('span', {}, shortRange(scale)))
    : el('div', { class: 'ends' }, el('span', {}, fmt(scale.lo, 2)), el('span', {}, fmt(scale.hi, 2)));
  const node = el('div', { class: 'legend', style: { width: `${width}px` } }, bar, ends);
  if (caption) node.title = `${legendText(scale)}: ${fmt(scale.lo, 3)} to ${fmt(scale.hi, 3)}`;
  return node;
}

const tip = () => document.getElementById('tooltip');

export function showTip(event, html) {
  const t = tip();
  t.innerHTML = html;
  t.hidden = false;
  // A keyboard focus has no pointer position: place the tip at the focused element.
  const box = event.clientX === undefined ? event.target.getBoundingClientRect() : null;
  const [px, py] = box ? [box.right, box.bottom] : [event.clientX, event.clientY];
  const x = Math.min(window.innerWidth - t.offsetWidth - 8, px + 14);
  t.style.left = `${x}px`;
  t.style.top = `${Math.min(window.innerHeight - t.offsetHeight - 8, py + 14)}px`;
}

export function hideTip() {
  tip().hidden = true;
}

/** Place an absolutely positioned rectangle over map cells [r0, r0+h) × [c0, c0+w). */
export function placeRect(node, cell, r0, c0, h, w) {
  Object.assign(node.style, {
    left: `${c0 * cell - 1}px`, top: `${r0 * cell - 1}px`,
    width: `${w * cell + 2}px`, height: `${h * cell + 2}px`,
  });
}

/**
 * Play / pause / step / scrub controls over positions 0..n−1. `onStep(p)` draws position p.
 * Returns {node, set(p), stop()}; hovering elsewhere calls set(p) to scrub.
 */
export function animator(n, onStep, intervalMs) {
  let pos = 0;
  let timer = null;
  const slider = el('input', { type: 'range', min: 0, max: Math.max(0, n - 1), value: 0, 'aria-label': 'window position' });
  const label = el('span', { class: 'muted' });
  const playBtn = el('button', { type: 'button', class: 'play', 'aria-label': 'play or pause' }, '▶ play');
  const set = (p) => {
    pos = ((p % n) + n) % n;
    slider.value = String(pos);
    label.textContent = `${pos + 1} / ${n}`;
    onStep(pos);
  };
  const stop = () => {
    if (timer) clearInterval(timer);
    timer = null;
    playBtn.textContent = '▶ play';
  };
  const play = () => {
    if (timer) return stop();
    timer = setInterval(() => set(pos + 1), intervalMs);
    playBtn.textContent = '❚❚ pause';
    return undefined;
  };
  playBtn.addEventListener('click', play);
  slider.addEventListener('input', () => { stop(); set(Number(slider.value)); });
  const node = el('div', { class: 'anim' }, playBtn,
    el('button', { type: 'button', 'aria-label': 'previous window', onclick: () => { stop(); set(pos - 1); } }, '◀'),
    el('button', { type: 'button', 'aria-label': 'next window', class: 'step', onclick: () => { stop(); set(pos + 1); } }, '▶|'),
    slider, label);
  return { node, set: (p) => { stop(); set(p); }, stop, get position() { return pos; } };
}
