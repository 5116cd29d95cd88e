// Hyperparameter playground: input size, padding, kernel size and stride; the window animates
// over the padded input, the output-size formula shows the numbers, and a setting that does not
// tile is an error rather than silently floored.
import { ANIMATION_MS } from './config.js';
import { outputSize, outputSizeFormula, windowOrigin } from './draw-utils.js';
import { el } from './render.js';

const PARAMS = [
  { key: 'n', label: 'input size', min: 1, max: 16, value: 7 },
  { key: 'p', label: 'padding', min: 0, max: 4, value: 0 },
  { key: 'k', label: 'kernel size', min: 1, max: 7, value: 3 },
  { key: 's', label: 'stride', min: 1, max: 5, value: 1 },
];
const CELL = 18;

function control(param, state, onChange) {
  const range = el('input', { type: 'range', min: param.min, max: param.max, value: param.value, id: `pg-${param.key}-range`, 'aria-label': param.label });
  const box = el('input', { type: 'number', min: param.min, max: param.max, value: param.value, id: `pg-${param.key}`, style: { width: '56px' }, 'aria-label': `${param.label} (number)` });
  const update = (v) => {
    const x = Math.round(Number(v));
    if (!Number.isFinite(x)) return;
    state[param.key] = Math.min(param.max, Math.max(param.min, x));
    range.value = String(state[param.key]);
    box.value = String(state[param.key]);
    onChange();
  };
  range.addEventListener('input', () => update(range.value));
  box.addEventListener('change', () => update(box.value));
  return [el('label', { for: `pg-${param.key}` }, param.label), range, box];
}

function gridSvg(size, pad, cellColor) {
  const total = size + 2 * pad;
  const svg = document.createElementNS('http://www.w3.org/2000/svg', 'svg');
  svg.setAttribute('width', total * CELL + 2);
  svg.setAttribute('height', total * CELL + 2);
  for (let r = 0; r < total; r++) {
    for (let c = 0; c < total; c++) {
      const inside = r >= pad && c >= pad && r < pad + size && c < pad + size;
      const rect = document.createElementNS('http://www.w3.org/2000/svg', 'rect');
      Object.entries({ x: 1 + c * CELL, y: 1 + r * CELL, width: CELL - 2, height: CELL - 2, rx: 2,
        fill: inside ? cellColor : '#f3f4f6', stroke: inside ? 'none' : '#d1d5db', 'stroke-dasharray': '2 2' })
        .forEach(([k, v]) => rect.setAttribute(k, v));
      svg.append(rect);
    }
  }
  const win = document.createElementNS('http://www.w3.org/2000/svg', 'rect');
  win.setAttribute('fill', 'rgba(245, 158, 11, 0.25)');
  win.setAttribute('stroke', '#f59e0b');
  win.setAttribute('stroke-width', 2);
  svg.append(win);
  return { svg, win };
}

function place(win, r, c, h, w) {
  win.setAttribute('x', 1 + c * CELL);
  win.setAttribute('y', 1 + r * CELL);
  win.setAttribute('width', w * CELL - 2);
  win.setAttribute('height', h * CELL - 2);
}

export function install(root) {
  const state = Object.fromEntries(PARAMS.map((p) => [p.key, p.value]));
  let timer = null;
  const stage = el('div', { class: 'pg-grid' });
  const formula = el('div', { class: 'pg-formula', id: 'pg-formula' });
  const error = el('div', { class: 'error-text', id: 'pg-error', role: 'alert' });
  const redraw = () => {
    if (timer) clearInterval(timer);
    const { n, p, k, s } = state;
    const res = outputSize(n, k, p, s);
    formula.textContent = `output size = ${outputSizeFormula(n, k, p, s)}`;
    error.textContent = res.error || '';
    root.dataset.tiles = String(res.tiles);
    const input = gridSvg(n, p, '#bfdbfe');
    const parts = [el('div', { class: 'viewcol' }, input.svg, el('span', { class: 'label' }, `input ${n}×${n}, padding ${p}`))];
    if (res.size) {
      const out = gridSvg(res.size, 0, '#fde68a');
      parts.push(el('span', { class: 'op' }, '→'), el('div', { class: 'viewcol' }, out.svg, el('span', { class: 'label' }, `output ${res.size}×${res.size}`)));
      let t = 0;
      const step = () => {
        const i = Math.floor(t / res.size);
        const j = t % res.size;
        const [r0, c0] = windowOrigin(i, j, [s, s], [0, 0]); // origin in padded coordinates
        place(input.win, r0, c0, k, k);
        place(out.win, i, j, 1, 1);
        t = (t + 1) % (res.size * res.size);
      };
      step();
      timer = setInterval(step, ANIMATION_MS * 2);
      // Hovering the output holds the window on that cell; leaving resumes the animation.
      out.svg.addEventListener('mousemove', (e) => {
        const r = out.svg.getBoundingClientRect();
        const i = Math.min(res.size - 1, Math.floor((e.clientY - r.top - 1) / CELL));
        const j = Math.min(res.size - 1, Math.floor((e.clientX - r.left - 1) / CELL));
        clearInterval(timer);
        t = Math.max(0, i) * res.size + Math.max(0, j);
        step();
      });
      out.svg.addEventListener('mouseleave', () => { clearInterval(timer); timer = setInterval(step, ANIMATION_MS * 2); });
    } else if (res.floored) {
      // Show where the windows would fall, and the padded rows no window reaches.
      const total = n + 2 * p;
      const col = input.win.cloneNode();
      input.svg.append(col);
      place(input.win, total - res.rest, 0, res.rest, total);
      place(col, 0, total - res.rest, total, res.rest);
      [input.win, col].forEach((r) => { r.setAttribute('fill', 'rgba(185, 28, 28, 0.18)'); r.setAttribute('stroke', '#b91c1c'); });
    }
    stage.replaceChildren(...parts);
  };
  root.replaceChildren(el('h3', {}, 'Hyperparameter playground'),
    el('div', { class: 'viewrow' }, el('div', { class: 'pg-controls' }, ...PARAMS.flatMap((p) => control(p, state, redraw))), stage),
    formula, error);
  redraw();
}
