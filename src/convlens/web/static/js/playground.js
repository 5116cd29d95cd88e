// Hyperparameter playground: input size, padding, kernel size and stride; every cell shows its
// number (input digits, the kernel's weights, the output sums), the window animates over the
// padded input with its arithmetic written out, the output-size formula shows the numbers, and a
// setting that does not tile is an error rather than silently floored.
import { ANIMATION_MS } from './config.js';
import { outputSize, outputSizeFormula, playgroundNumbers, windowOrigin } from './draw-utils.js';
import { el } from './render.js';

export const MAX_INPUT = 32; // the cap: 32 + 2·4 padding = 40 cells still fit a row at 14 px or more
const PARAMS = [
  { key: 'n', label: 'input size', min: 1, max: MAX_INPUT, value: 7 },
  { key: 'p', label: 'padding', min: 0, max: 4, value: 0 },
  { key: 'k', label: 'kernel size', min: 1, max: 7, value: 3 },
  { key: 's', label: 'stride', min: 1, max: 5, value: 1 },
];
const MIN_CELL = 14; // px: below this a two-digit number is no longer readable
const MAX_CELL = 26;
const NS = 'http://www.w3.org/2000/svg';

function control(param, state, onChange) {
  const range = el('input', { type: 'range', min: param.min, max: param.max, value: param.value, id: `pg-${param.key}-range`, 'aria-label': param.label });
  const box = el('input', { type: 'number', min: param.min, max: param.max, value: param.value, id: `pg-${param.key}`, style: { width: '56px' }, 'aria-label': `${param.label} (number, ${param.min}–${param.max})` });
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

function svgEl(tag, attrs = {}) {
  const node = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  return node;
}

/** Fill colour of a cell from its value: input digits blue, weights red/blue, outputs amber. */
function fill(kind, v, vmax) {
  const t = Math.min(1, Math.abs(v) / (vmax || 1));
  if (kind === 'weight') return v > 0 ? `rgba(214, 96, 77, ${0.15 + 0.6 * t})` : v < 0 ? `rgba(67, 147, 195, ${0.15 + 0.6 * t})` : '#f8fafc';
  if (kind === 'output') return v >= 0 ? `rgba(245, 158, 11, ${0.12 + 0.6 * t})` : `rgba(67, 147, 195, ${0.12 + 0.6 * t})`;
  return `rgba(59, 130, 246, ${0.08 + 0.5 * t})`;
}

/**
 * A grid of numbered cells; `pad` rings of padding are drawn dashed with 0s. Returns {svg, win}:
 * `win` is the highlight rectangle to move with `place`.
 */
function numberGrid(rows, pad, cell, kind, id) {
  const n = rows.length;
  const total = n + 2 * pad;
  const vmax = Math.max(1, ...rows.flat().map(Math.abs));
  const svg = svgEl('svg', { width: total * cell + 2, height: total * cell + 2, class: `pg-cells ${kind}`, id });
  const digits = Math.max(...rows.flat().map((v) => String(v).length), 1);
  const font = Math.max(7, Math.min(cell * 0.55, (cell - 3) / (0.62 * digits)));
  for (let r = 0; r < total; r++) {
    for (let c = 0; c < total; c++) {
      const inside = r >= pad && c >= pad && r < pad + n && c < pad + n;
      const v = inside ? rows[r - pad][c - pad] : 0;
      svg.append(svgEl('rect', {
        x: 1 + c * cell, y: 1 + r * cell, width: cell - 2, height: cell - 2, rx: 2,
        fill: inside ? fill(kind, v, vmax) : '#f3f4f6', stroke: inside ? 'none' : '#cbd5e1', 'stroke-dasharray': '2 2',
      }));
      const t = svgEl('text', { x: 1 + c * cell + (cell - 2) / 2, y: 1 + r * cell + (cell - 2) / 2, class: inside ? 'num' : 'num pad' });
      t.style.fontSize = `${font.toFixed(1)}px`;
      t.textContent = String(v);
      svg.append(t);
    }
  }
  const win = svgEl('rect', { class: 'pg-win' });
  svg.append(win);
  return { svg, win, cell };
}

function place(grid, r, c, h, w) {
  const { win, cell } = grid;
  win.setAttribute('x', 1 + c * cell);
  win.setAttribute('y', 1 + r * cell);
  win.setAttribute('width', w * cell - 2);
  win.setAttribute('height', h * cell - 2);
}

/** The cell size that fits the padded input (and the output beside it when there is room). */
function cellSize(root, total) {
  const width = Math.max(200, root.clientWidth - 40);
  return Math.max(MIN_CELL, Math.min(MAX_CELL, Math.floor(width / total)));
}

export function install(root) {
  const state = Object.fromEntries(PARAMS.map((p) => [p.key, p.value]));
  let timer = null;
  const stage = el('div', { class: 'pg-grid' });
  const formula = el('div', { class: 'pg-formula', id: 'pg-formula' });
  const arith = el('div', { class: 'pg-formula muted', id: 'pg-arith' });
  const error = el('div', { class: 'error-text', id: 'pg-error', role: 'alert' });
  const redraw = () => {
    if (timer) clearInterval(timer);
    const { n, p, k, s } = state;
    const res = outputSize(n, k, p, s);
    const nums = playgroundNumbers(n, k, p, s);
    formula.textContent = `output size = ${outputSizeFormula(n, k, p, s)}`;
    error.textContent = res.error || '';
    arith.textContent = '';
    root.dataset.tiles = String(res.tiles);
    const cell = cellSize(root, n + 2 * p);
    const input = numberGrid(nums.x, p, cell, 'input', 'pg-input');
    const kernel = numberGrid(nums.w, 0, Math.max(cell, 18), 'weight', 'pg-kernel');
    const parts = [el('div', { class: 'viewcol' }, input.svg, el('span', { class: 'label' }, `input ${n}×${n}, padding ${p}`)),
      el('span', { class: 'op' }, '∗'), el('div', { class: 'viewcol' }, kernel.svg, el('span', { class: 'label' }, `kernel ${k}×${k}`))];
    if (res.size) {
      const out = numberGrid(nums.y, 0, cell, 'output', 'pg-output');
      parts.push(el('span', { class: 'op' }, '='), el('div', { class: 'viewcol' }, out.svg, el('span', { class: 'label' }, `output ${res.size}×${res.size}`)));
      let t = 0;
      const show = (i, j) => {
        const [r0, c0] = windowOrigin(i, j, [s, s], [0, 0]); // origin in padded coordinates
        place(input, r0, c0, k, k);
        place(out, i, j, 1, 1);
        const terms = [];
        for (let a = 0; a < k; a++) {
          for (let b = 0; b < k; b++) {
            const [r, c] = [r0 + a - p, c0 + b - p];
            const x = r < 0 || c < 0 || r >= n || c >= n ? 0 : nums.x[r][c];
            if (nums.w[a][b]) terms.push(`${x}·${nums.w[a][b] < 0 ? '(−1)' : nums.w[a][b]}`);
          }
        }
        arith.textContent = `out[${i}, ${j}] = ${terms.join(' + ') || '0'} = ${String(nums.y[i][j]).replace('-', '−')}`;
      };
      const step = () => {
        show(Math.floor(t / res.size), t % res.size);
        t = (t + 1) % (res.size * res.size);
      };
      step();
      timer = setInterval(step, ANIMATION_MS * 2);
      // Hovering the output holds the window on that cell; leaving resumes the animation.
      out.svg.addEventListener('mousemove', (e) => {
        const r = out.svg.getBoundingClientRect();
        const i = Math.min(res.size - 1, Math.max(0, Math.floor((e.clientY - r.top - 1) / cell)));
        const j = Math.min(res.size - 1, Math.max(0, Math.floor((e.clientX - r.left - 1) / cell)));
        clearInterval(timer);
        t = i * res.size + j;
        show(i, j);
      });
      out.svg.addEventListener('mouseleave', () => { clearInterval(timer); timer = setInterval(step, ANIMATION_MS * 2); });
    } else if (res.floored) {
      // Show the padded rows and columns no window reaches.
      const total = n + 2 * p;
      const col = input.win.cloneNode();
      input.svg.append(col);
      place(input, total - res.rest, 0, res.rest, total);
      place({ win: col, cell }, 0, total - res.rest, total, res.rest);
      [input.win, col].forEach((r) => r.classList.add('unread'));
    }
    stage.replaceChildren(...parts);
  };
  root.replaceChildren(el('h3', {}, 'Hyperparameter playground'),
    el('div', { class: 'pg-controls' }, ...PARAMS.flatMap((p) => control(p, state, redraw))),
    el('p', { class: 'muted' }, `Input up to ${MAX_INPUT}×${MAX_INPUT}; the kernel finds vertical edges (−1 | 0 | +1).`),
    stage, formula, arith, error);
  redraw();
  let resizeTimer = null;
  window.addEventListener('resize', () => { clearTimeout(resizeTimer); resizeTimer = setTimeout(redraw, 200); });
}
