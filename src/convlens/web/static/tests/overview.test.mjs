import test from 'node:test';
import assert from 'node:assert/strict';
import { buildColumns, edgesInto, resolver } from '../js/overview.js';
import { layoutOverview } from '../js/draw-utils.js';

const L = (name, kind, inputs, shape, hyper = {}) => ({ name, kind, op: kind, inputs, output_shape: shape, module: name, hyper, params: 0 });

/** A model and a trace with only what the overview reads: shapes and per-channel maxima. */
function fake(layers, classes) {
  const activations = {};
  const stats = {};
  for (const l of layers) {
    const n = l.output_shape.reduce((a, b) => a * b, 1);
    activations[l.name] = { shape: l.output_shape, data: new Float32Array(n) };
    const C = l.output_shape.length === 3 ? l.output_shape[0] : 0;
    stats[l.name] = { min: 0, max: 1, channel_min: Array(C).fill(0), channel_max: Array.from({ length: C }, (_, c) => c) };
  }
  const model = { graph: { layers }, classes, input_spec: { channels: layers[0].output_shape[0] } };
  const trace = { activations, stats, probabilities: classes.map((_, k) => (k === 1 ? 0.9 : 0.1 / (classes.length - 1))), predicted: 1 };
  return { model, trace };
}

function edgesOf(model, trace) {
  const cols = buildColumns(model, trace);
  const lay = layoutOverview(cols.map((c) => ({ name: c.layer.name, role: c.role, count: c.count })), { width: 1200, height: 600 });
  const colOf = new Map(cols.map((c, i) => [c.layer.name, i]));
  const resolve = resolver(model.graph.layers, colOf);
  return { cols, edges: cols.flatMap((_, i) => edgesInto(cols, lay, i, resolve, colOf)) };
}

test('a chain: conv reads every input channel, ReLU and pool one each, dropout hidden', () => {
  const layers = [
    L('input', 'input', [], [3, 8, 8]),
    L('conv', 'conv', ['input'], [4, 6, 6], { groups: 1 }),
    L('relu', 'activation', ['conv'], [4, 6, 6]),
    L('pool', 'maxpool', ['relu'], [4, 3, 3]),
    L('flat', 'flatten', ['pool'], [36]),
    L('drop', 'dropout', ['flat'], [36]),
    L('fc', 'linear', ['drop'], [5]),
  ];
  const { model, trace } = fake(layers, ['a', 'b', 'c', 'd', 'e']);
  const { cols, edges } = edgesOf(model, trace);
  assert.deepEqual(cols.map((c) => c.role), ['maps', 'maps', 'maps', 'maps', 'vector', 'output']);
  const count = (name) => edges.filter((e) => e.layer === name).length;
  assert.equal(count('conv'), 4 * 3);
  assert.equal(count('relu'), 4);
  assert.equal(count('pool'), 4);
  assert.equal(count('flat'), 4); // every map feeds the vector
  assert.equal(count('fc'), 5); // the vector fans out to every class (through the hidden dropout)
  assert.ok(edges.every((e) => !e.skip));
  assert.ok(edges.filter((e) => e.layer === 'relu').every((e) => e.source === `conv|${cols[2].channels[e.target]}`));
});

test('a residual block: the skip input is one arc, the add reads its channel', () => {
  const layers = [
    L('input', 'input', [], [2, 4, 4]),
    L('c1', 'conv', ['input'], [2, 4, 4], { groups: 1 }),
    L('c2', 'conv', ['c1'], [2, 4, 4], { groups: 1 }),
    L('add', 'add', ['c2', 'c1'], [2, 4, 4]),
    L('pool', 'adaptive_pool', ['add'], [2, 1, 1]),
    L('flat', 'flatten', ['pool'], [2]),
    L('fc', 'linear', ['flat'], [3]),
  ];
  const { model, trace } = fake(layers, ['x', 'y', 'z']);
  const { edges } = edgesOf(model, trace);
  const add = edges.filter((e) => e.layer === 'add');
  assert.equal(add.filter((e) => e.skip).length, 1);
  assert.equal(add.filter((e) => !e.skip).length, 2);
  assert.match(add.find((e) => e.skip).d, /^M[\d.]+,[\d.]+ C/);
});

test('a wide layer shows its most active channels first, a page at a time', () => {
  const layers = [L('input', 'input', [], [1, 4, 4]), L('wide', 'conv', ['input'], [25, 2, 2], { groups: 1 }), L('fc', 'linear', ['wide'], [2])];
  const { model, trace } = fake(layers, ['p', 'q']);
  const { cols } = edgesOf(model, trace);
  assert.equal(cols[1].pages, 3);
  assert.deepEqual(cols[1].channels, [24, 23, 22, 21, 20, 19, 18, 17, 16, 15]); // channel_max = c
});

test('many classes: the output column lists the most probable first', () => {
  const classes = Array.from({ length: 30 }, (_, k) => `c${k}`);
  const layers = [L('input', 'input', [], [1, 2, 2]), L('fc', 'linear', ['input'], [30])];
  const { model, trace } = fake(layers, classes);
  const { cols } = edgesOf(model, trace);
  assert.equal(cols[1].count, 10);
  assert.equal(cols[1].classOrder[0], 1);
});

test('binned keeps the largest magnitude of each bin', async () => {
  const { binned } = await import('../js/overview.js');
  assert.deepEqual([...binned(Float32Array.from([1, -5, 2, 3, 0, -1]), 3).data], [-5, 3, -1]);
  assert.equal(binned(Float32Array.from([1, 2]), 3).shape[0], 2);
});
