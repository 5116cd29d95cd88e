// The overview: one column per layer, each neuron a heatmap of its feature map, edges between
// the columns. Everything is placed from the layer graph by draw-utils.layoutOverview.
import { LAYER_COLORS, MAX_CLASSES, MAX_NEURON, MIN_NEURON, OVERVIEW_HEIGHT_MIN, PAGE_SIZE } from './config.js';
import { GRAY, RGB_TINTS, makeScale, mapPixels, rangeFor, legendText } from './color.js';
import {
  blockNames, channelOrder, columnRole, countText, deviceRect, edgePath, fmt, layoutOverview,
  pageOf, reads, sampleMap, shapeText, visibleLayers,
} from './draw-utils.js';
import { el, hideTip, legend, paintMap, showTip } from './render.js';
import * as store from './store.js';

const SVG = 'http://www.w3.org/2000/svg';
const WINDOW_KINDS = new Set(['conv', 'maxpool', 'avgpool']);
const COMPACT_LEGEND_PITCH = 30; // px between columns below which no legend fits ("±2.1" at 9 px)
const MAX_STRIP = 2048; // rows of a vector strip (a canvas cannot be arbitrarily tall)

/** Resolve a layer name through hidden layers (dropout) to the column that shows it. */
export function resolver(layers, shown) {
  const byName = new Map(layers.map((l) => [l.name, l]));
  return function resolve(name) {
    let n = name;
    while (n && !shown.has(n)) n = byName.get(n)?.inputs[0];
    return n;
  };
}

/** Column specs: the layer, its role, and the channels it shows on its current page. */
export function buildColumns(model, trace) {
  const layers = visibleLayers(model.graph.layers);
  const pages = store.get('pages');
  const blocks = Object.fromEntries(
    blockNames(model.graph.layers).map((b, i) => [model.graph.layers[i].name, b]));
  return layers.map((layer, i) => {
    const role = columnRole(layer, i === layers.length - 1);
    const act = trace.activations[layer.name];
    const stats = trace.stats[layer.name] || {};
    if (role === 'output') { // the most probable classes first when there are many
      const k = model.classes.length;
      const order = k <= MAX_CLASSES ? [...Array(k).keys()]
        : channelOrder(trace.probabilities, MAX_CLASSES).slice(0, MAX_CLASSES);
      return { layer, role, count: order.length, channels: order, classOrder: order, block: blocks[layer.name] };
    }
    if (role !== 'maps') return { layer, role, count: 1, channels: [0], block: blocks[layer.name] };
    const sent = act ? act.shape[0] : 0;
    const chMax = (stats.channel_max || []).slice(0, sent);
    const order = chMax.length === sent ? channelOrder(chMax, PAGE_SIZE) : [...Array(sent).keys()];
    const pg = pageOf(order, pages[layer.name] || 0, PAGE_SIZE);
    return {
      layer, role, count: pg.channels.length, channels: pg.channels, page: pg.page,
      pages: pg.pages, total: layer.output_shape[0], sent, block: blocks[layer.name],
    };
  });
}

// The model's spatial layers and block names, worked out once per model (scaleFor runs for
// every neuron drawn: ~320 times per draw for VGG-16).
const layerFacts = new WeakMap();
function factsOf(model) {
  if (!layerFacts.has(model)) {
    const layers = model.graph.layers;
    layerFacts.set(model, {
      spatial: new Set(layers.filter((l) => l.output_shape.length === 3).map((l) => l.name)),
      blocks: Object.fromEntries(blockNames(layers).map((b, i) => [layers[i].name, b])),
    });
  }
  return layerFacts.get(model);
}

function scaleFor(model, trace, name, c) {
  const mode = store.get('scaleMode');
  const { spatial, blocks } = factsOf(model);
  const [lo, hi] = rangeFor(mode, name, c, trace.stats, blocks, spatial);
  return makeScale(lo, hi, { mode });
}

function inputScale(model, c) {
  const stops = model.input_spec.channels === 1 ? GRAY : RGB_TINTS[c % 3];
  return { ...makeScale(0, 1, { stops }), mode: 'input pixels' };
}

// ------------------------------------------------------------------ drawing pieces

function svgEl(tag, attrs) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  return node;
}

/** Height of one column label: name and shape, plus two lines of details. */
function labelHeight(details) {
  return details ? 50 : 26;
}

/** Column pitch (left edge to left edge) of a layout. */
function pitch(lay) {
  return lay.columns.length > 1 ? lay.columns[1].x - lay.columns[0].x : Infinity;
}

/** How labels fit: one row, two staggered rows, or names turned upright for a deep network. */
function labelMode(lay) {
  const p = pitch(lay);
  if (p >= 110) return 'row';
  return p >= 64 ? 'stagger' : 'upright';
}

/** Room above the neurons for the labels of `cols` in `mode`. */
function labelRoom(cols, mode, details) {
  if (mode === 'row') return labelHeight(details) + 12;
  if (mode === 'stagger') return 2 * labelHeight(details) + 12;
  const longest = Math.max(...cols.map((c) => c.layer.name.length));
  return Math.min(150, 12 + 6.2 * longest);
}

function drawLabels(svg, cols, lay, details, mode, room) {
  lay.columns.forEach((pos, i) => {
    const { layer } = cols[i];
    const cx = pos.x + pos.width / 2;
    const color = LAYER_COLORS[layer.kind] || LAYER_COLORS.other;
    const params = layer.params ? ` · ${countText(layer.params)} params` : '';
    if (mode === 'upright' && cols[i].role !== 'output') {
      // Read bottom to top, ending just above the column; shape and params in the tooltip.
      const t = svgEl('text', { x: cx + 4, y: room - 6, class: 'name upright', transform: `rotate(-90 ${cx + 4} ${room - 6})` });
      t.style.fontSize = `${Math.min(10, Math.max(6, pitch(lay) + 1))}px`; // one line per column
      t.textContent = layer.name;
      t.style.fill = color;
      const tip = svgEl('title', {});
      tip.textContent = `${layer.name} · ${shapeText(layer.output_shape)}${params}`;
      t.append(tip);
      svg.append(t);
      return;
    }
    const dy = mode === 'stagger' && i % 2 ? labelHeight(details) : 0;
    const anchor = mode === 'upright' ? 'end' : 'middle';
    const x = mode === 'upright' ? pos.x + pos.width : cx;
    const y0 = mode === 'upright' ? room - labelHeight(details) - 4 : 0;
    const text = (cls, y, s) => {
      const t = svgEl('text', { x, y: y0 + y + dy, 'text-anchor': anchor, class: cls });
      t.textContent = s;
      svg.append(t);
      return t;
    };
    text('name', 14, layer.name).style.fill = color;
    text('sub', 26, `${shapeText(layer.output_shape)}${params}`);
    if (details) {
      const h = layer.hyper || {};
      const win = WINDOW_KINDS.has(layer.kind)
        ? `k${h.kernel?.join('×')} s${h.stride?.join('×')} p${h.padding?.join('×')}` : layer.op;
      text('sub', 38, win);
      const rf = layer.receptive_field;
      text('block', 50, rf ? `${cols[i].block} · RF ${rf.global ? 'all' : rf.size.join('×')}` : cols[i].block);
    }
  });
}

function neuronCenter(pos, k, side) {
  const n = pos.neurons[Math.min(k, pos.neurons.length - 1)];
  return [side === 'out' ? pos.x + pos.width : pos.x, n.y + n.size / 2];
}

/**
 * The edges into column i, as data: {layer, target (neuron slot), source ("layer|channel"), d,
 * skip}. A skip connection (an input that is not the previous column) is one arc between the
 * column tops; otherwise each shown neuron is joined to the shown neurons it reads.
 */
export function edgesInto(cols, lay, i, resolve, colOf) {
  const col = cols[i];
  const pos = lay.columns[i];
  const prevName = i > 0 ? cols[i - 1].layer.name : null;
  const edges = [];
  for (const srcName of col.layer.inputs.map(resolve)) {
    const j = colOf.get(srcName);
    if (j === undefined) continue;
    const src = cols[j];
    const spos = lay.columns[j];
    if (srcName !== prevName) {
      const top = Math.min(spos.neurons[0].y, pos.neurons[0].y);
      const d = edgePath(spos.x + spos.width / 2, top, pos.x + pos.width / 2, top, true, 24);
      edges.push({ layer: col.layer.name, target: null, source: null, d, skip: true });
      continue;
    }
    const targets = col.role === 'output' ? col.channels.map((_, e) => e) : col.channels.map((_, t) => t);
    targets.forEach((t) => {
      const maps = col.role === 'maps';
      src.channels.forEach((sch, s) => {
        if (maps && !reads(col.layer, col.channels[t], src.total || 1, sch)) return;
        const [x0, y0] = neuronCenter(spos, s, 'out');
        const [x1, y1] = neuronCenter(pos, t, 'in');
        edges.push({ layer: col.layer.name, target: t, source: `${src.layer.name}|${sch}`, d: edgePath(x0, y0, x1, y1), skip: false });
      });
    });
  }
  return edges;
}

/** Draw every edge as an SVG path (the svg is new at every draw, so there is nothing to
 * update or remove); returns layer → slot → {paths, sources} for hovering. */
function drawEdges(svg, edges) {
  const index = new Map();
  const paths = document.createDocumentFragment();
  for (const e of edges) {
    const path = document.createElementNS(SVG, 'path');
    path.setAttribute('class', e.skip ? 'edge skip' : 'edge');
    path.setAttribute('d', e.d);
    paths.append(path);
    if (e.skip) continue;
    if (!index.has(e.layer)) index.set(e.layer, new Map());
    const slots = index.get(e.layer);
    if (!slots.has(e.target)) slots.set(e.target, { paths: [], sources: [] });
    slots.get(e.target).paths.push(path);
    slots.get(e.target).sources.push(e.source);
  }
  svg.append(paths);
  return index;
}

function neuronTip(layer, c, trace, scale) {
  const s = trace.stats[layer.name];
  const range = s && s.channel_min && s.channel_min.length > c
    ? `values ${fmt(s.channel_min[c])} … ${fmt(s.channel_max[c])}` : '';
  return `<b>${layer.name}</b> · channel ${c}<br>${range}<br><span style="opacity:.75">colours: ${legendText(scale)} [${fmt(scale.lo, 2)}, ${fmt(scale.hi, 2)}]</span>`;
}

function hoverHandlers(stage, index, layer, key, tipHtml) {
  const links = index.get(layer.name)?.get(key);
  const on = (e) => {
    stage.classList.add('hovering');
    links?.paths.forEach((p) => p.classList.add('hl'));
    links?.sources.forEach((s) => stage.querySelector(`[data-key="${CSS.escape(s)}"]`)?.classList.add('reads'));
    showTip(e, tipHtml());
  };
  const off = () => {
    stage.classList.remove('hovering');
    stage.querySelectorAll('.hl').forEach((p) => p.classList.remove('hl'));
    stage.querySelectorAll('.reads').forEach((p) => p.classList.remove('reads'));
    hideTip();
  };
  return { mouseenter: on, mousemove: (e) => showTip(e, tipHtml()), mouseleave: off, focus: on, blur: off };
}

function bind(node, handlers) {
  for (const [ev, fn] of Object.entries(handlers)) node.addEventListener(ev, fn);
}

function drawMaps(stage, ctx, col, pos) {
  const { model, trace, index, onOpen } = ctx;
  const isInput = col.layer.kind === 'input';
  const act = isInput ? trace.inputTensor : trace.activations[col.layer.name];
  col.channels.forEach((c, k) => {
    const n = pos.neurons[k];
    const scale = isInput ? inputScale(model, c) : scaleFor(model, trace, col.layer.name, c);
    // painted into the stage's one map canvas (paintAtlas); this canvas is the neuron's box;
    // a channel the trace has not sent yet (a later page of a big model's) stays blank until
    // `onMissing` has fetched it and drawn again
    if (act.rows && !act.rows.has(c)) ctx.missing.add(col.layer.name);
    else ctx.atlas.push({ tensor: act, c, scale, x: pos.x, y: n.y, size: n.size });
    const canvas = el('canvas', {
      class: 'neuron', tabindex: 0, role: 'button', 'data-layer': col.layer.name,
      'data-channel': c, 'data-key': `${col.layer.name}|${c}`,
      'aria-label': `${col.layer.name} channel ${c}`, width: 1, height: 1,
    });
    Object.assign(canvas.style, { left: `${pos.x}px`, top: `${n.y}px`, width: `${n.size}px`, height: `${n.size}px` });
    bind(canvas, hoverHandlers(stage, index, col.layer, k, () => neuronTip(col.layer, c, trace, scale)));
    canvas.addEventListener('click', () => onOpen({ layer: col.layer.name, channel: c }));
    canvas.addEventListener('keydown', (e) => { if (e.key === 'Enter' || e.key === ' ') { e.preventDefault(); onOpen({ layer: col.layer.name, channel: c }); } });
    stage.append(canvas);
  });
}

/** A long vector as at most `n` rows, each the bin's value of largest magnitude. */
export function binned(data, n) {
  if (data.length <= n) return { shape: [data.length, 1], data };
  const out = new Float32Array(n);
  for (let b = 0; b < n; b++) {
    const lo = Math.floor((b * data.length) / n);
    const hi = Math.floor(((b + 1) * data.length) / n);
    let v = data[lo];
    for (let k = lo + 1; k < hi; k++) if (Math.abs(data[k]) > Math.abs(v)) v = data[k];
    out[b] = v;
  }
  return { shape: [n, 1], data: out };
}

function drawStrip(stage, ctx, col, pos) {
  const { model, trace, index, onOpen } = ctx;
  const act = trace.activations[col.layer.name];
  if (!act) return;
  const n = pos.neurons[0];
  const N = act.data.length;
  const scale = scaleFor(model, trace, col.layer.name, 0);
  const canvas = paintMap(el('canvas', {
    class: 'strip', tabindex: 0, role: 'button', 'data-layer': col.layer.name, 'data-key': `${col.layer.name}|0`,
    'aria-label': `${col.layer.name}: vector of ${N}`,
  }), binned(act.data, MAX_STRIP), 0, scale);
  Object.assign(canvas.style, { left: `${pos.x}px`, top: `${n.y}px`, width: `${pos.width}px`, height: `${n.size}px` });
  bind(canvas, hoverHandlers(stage, index, col.layer, 0, () => `<b>${col.layer.name}</b> · vector of ${N}<br>values ${fmt(trace.stats[col.layer.name]?.min ?? 0)} … ${fmt(trace.stats[col.layer.name]?.max ?? 0)}`));
  canvas.addEventListener('click', () => onOpen({ layer: col.layer.name, channel: 0 }));
  canvas.addEventListener('keydown', (e) => { if (e.key === 'Enter') onOpen({ layer: col.layer.name, channel: 0 }); });
  stage.append(canvas);
}

function drawOutput(stage, ctx, col, pos) {
  const { model, trace, onOpen } = ctx;
  const box = el('div', { class: 'outcol', style: { left: `${pos.x}px`, top: `${pos.neurons[0].y}px`, width: `${pos.width}px` } });
  col.classOrder.forEach((k, row) => {
    const name = model.classes[k];
    const p = trace.probabilities[k];
    const rowEl = el('div', {
      class: `outrow${k === trace.predicted ? ' top' : ''}`, tabindex: 0, role: 'button',
      'data-layer': col.layer.name, 'data-channel': k, 'data-key': `${col.layer.name}|${k}`,
      style: { height: `${pos.neurons[row].size}px` }, title: `${name}: ${(100 * p).toFixed(1)} %`,
      'aria-label': `class ${name}, probability ${(100 * p).toFixed(1)} percent`,
    }, el('span', { class: 'cls' }, name), el('div', { class: 'bar' }, el('span', { style: { width: `${100 * p}%` } })));
    rowEl.addEventListener('click', () => onOpen({ layer: col.layer.name, channel: k }));
    rowEl.addEventListener('keydown', (e) => { if (e.key === 'Enter') onOpen({ layer: col.layer.name, channel: k }); });
    bind(rowEl, hoverHandlers(stage, ctx.index, col.layer, row, () => `<b>${name}</b><br>logit ${fmt(trace.logits[k])} · p = ${fmt(p, 4)}`));
    box.append(rowEl);
  });
  if (model.classes.length > col.classOrder.length) {
    box.append(el('div', { class: 'muted', style: { fontSize: '10px' } }, `top ${col.classOrder.length} of ${model.classes.length} classes`));
  }
  stage.append(box);
}

function drawLegendAndPager(stage, ctx, col, pos) {
  const last = pos.neurons.at(-1);
  const y = last.y + last.size + 6;
  const isInput = col.layer.kind === 'input';
  const roomy = ctx.pitch >= 64; // a legend is 60 px wide
  // Narrower columns get a one-number legend; in a deep network the tooltip says it.
  const compact = !roomy && ctx.pitch >= COMPACT_LEGEND_PITCH;
  const drawn = (roomy || compact) && col.role === 'maps' && (isInput || store.get('scaleMode') !== 'neuron');
  if (drawn) {
    const w = roomy ? Math.max(60, pos.width + 20) : ctx.pitch - 4;
    // The input is drawn in pixel units (0..1), grey or one tint per colour channel.
    const scale = isInput ? { ...makeScale(0, 1, { stops: GRAY }), mode: 'input pixels' }
      : scaleFor(ctx.model, ctx.trace, col.layer.name, 0);
    const lg = legend(scale, w, { compact });
    Object.assign(lg.style, { left: `${pos.x + pos.width / 2 - w / 2}px`, top: `${y}px` });
    stage.append(lg);
  }
  if (col.pages > 1) {
    const go = (d) => () => {
      store.get('pages')[col.layer.name] = col.page + d;
      ctx.redraw();
    };
    const upright = ctx.pitch < 56; // narrow columns: the pager's buttons stacked
    const w = Math.max(6, Math.min(16, ctx.pitch - 2));
    const pager = el('div', {
      class: upright ? 'pager upright' : 'pager',
      style: upright ? { left: `${pos.x + pos.width / 2 - w / 2}px`, top: `${drawn ? y + 22 : y}px`, width: `${w}px` }
        : { left: `${pos.x - 12}px`, top: `${drawn ? y + 22 : y}px` },
    },
    el('button', { type: 'button', 'aria-label': `previous channels of ${col.layer.name}`, onclick: go(-1), disabled: col.page === 0 }, '‹'),
    upright ? null : el('span', {}, `${col.page + 1}/${col.pages}`),
    el('button', { type: 'button', 'aria-label': `next channels of ${col.layer.name}`, onclick: go(1), disabled: col.page === col.pages - 1 }, '›'));
    pager.title = `page ${col.page + 1} of ${col.pages}, most active first; ${col.sent} of ${col.total} channels sent`;
    stage.append(pager);
  }
}

/**
 * Every neuron's map in one canvas under the neurons' own (transparent) canvases, sampled at
 * the thumbnails' device pixels as `image-rendering: pixelated` would show them: one canvas
 * context and a few hundred small writes instead of a context and a full-size write per
 * neuron, which cost a big model's overview most of its draw time (VGG-16: ~320 neurons).
 */
function paintAtlas(items, width, height) {
  const ratio = window.devicePixelRatio || 1;
  const canvas = el('canvas', { class: 'atlas', 'aria-hidden': 'true' });
  canvas.width = Math.max(1, Math.ceil(width * ratio));
  canvas.height = Math.max(1, Math.ceil(height * ratio));
  Object.assign(canvas.style, { width: `${width}px`, height: `${height}px` });
  const g = canvas.getContext('2d');
  for (const it of items) {
    const [x, y, w, h] = deviceRect(it.x, it.y, it.size, it.size, ratio);
    const pixels = mapPixels(sampleMap(it.tensor, it.c, h, w), 0, h, w, it.scale);
    g.putImageData(new ImageData(pixels, w, h), x, y);
  }
  return canvas;
}

/**
 * Draw the overview into `root`. `onOpen({layer, channel})` is called when a neuron is chosen;
 * `onMissing(layerNames)` when a page shows channels the trace does not hold yet (drawn blank).
 */
export function drawOverview(root, model, trace, onOpen, onMissing = null) {
  const t0 = performance.now();
  const cols = buildColumns(model, trace);
  const details = store.get('showDetails');
  let height = Math.max(OVERVIEW_HEIGHT_MIN, Math.min(760, window.innerHeight - root.getBoundingClientRect().top - 16));
  const specs = cols.map((c) => ({ name: c.layer.name, role: c.role, count: c.count }));
  const box = { width: root.clientWidth, height, left: 24, bottom: 56, minColumnGap: 46, maxNeuron: MAX_NEURON, minNeuron: MIN_NEURON };
  // Labels take one row, two staggered rows when the columns are close, or stand upright when
  // they are closer still; the neurons start below whichever room that needs.
  let mode = 'row';
  let lay = layoutOverview(specs, { ...box, top: labelRoom(cols, mode, details) });
  for (const next of ['stagger', 'upright']) {
    if (labelMode(lay) === mode) break;
    mode = next;
    lay = layoutOverview(specs, { ...box, top: labelRoom(cols, mode, details) });
  }
  const room = labelRoom(cols, mode, details);
  if (mode === 'upright') { // one-number legends (when they fit) above the stacked pagers
    box.bottom = pitch(lay) >= COMPACT_LEGEND_PITCH ? 52 : 30;
    lay = layoutOverview(specs, { ...box, top: room });
  }
  // Thumbnails limited by the width leave the height unused: shrink the drawing to its content.
  const rows = cols.at(-1).role === 'output' ? cols.at(-1).count : 0;
  const tallest = Math.max(1, ...cols.map((c) => (c.role === 'maps' ? c.count : 1)));
  const need = room + box.bottom + Math.max(tallest * (lay.neuronSize + 6), rows * 22, 160);
  if (need < height) {
    height = need;
    lay = layoutOverview(specs, { ...box, height, top: room });
  }
  const stage = el('div', { class: 'stage', style: { width: `${lay.width}px`, height: `${height}px` } });
  const svg = svgEl('svg', { width: lay.width, height });
  stage.append(svg);
  const colOf = new Map(cols.map((c, i) => [c.layer.name, i]));
  const resolve = resolver(model.graph.layers, colOf);
  const index = drawEdges(svg, cols.flatMap((_, i) => edgesInto(cols, lay, i, resolve, colOf)));
  drawLabels(svg, cols, lay, details, mode, room);
  const ctx = {
    model, trace, index, onOpen, pitch: pitch(lay), atlas: [], missing: new Set(),
    redraw: () => drawOverview(root, model, trace, onOpen, onMissing),
  };
  cols.forEach((col, i) => {
    const pos = lay.columns[i];
    if (col.role === 'maps') drawMaps(stage, ctx, col, pos);
    else if (col.role === 'vector') drawStrip(stage, ctx, col, pos);
    else drawOutput(stage, ctx, col, pos);
    if (col.role === 'maps') drawLegendAndPager(stage, ctx, col, pos);
  });
  svg.after(paintAtlas(ctx.atlas, lay.width, height)); // above the edges, below the neurons
  const scroll = root.scrollLeft;
  root.replaceChildren(stage);
  root.scrollLeft = scroll;
  root.dataset.columns = String(cols.length);
  root.dataset.labels = mode;
  root.dataset.width = String(root.clientWidth); // the width this drawing fits (tests wait on it)
  root.dataset.drawMs = String(Math.round(performance.now() - t0));
  root.dataset.missing = [...ctx.missing].join(','); // layers waiting for channels (tests)
  if (ctx.missing.size && onMissing) onMissing([...ctx.missing]);
  return { columns: cols, layout: lay };
}
