import test from 'node:test';
import assert from 'node:assert/strict';
import * as U from '../js/draw-utils.js';

test('outputSize matches the formula and flags settings that do not tile', () => {
  assert.equal(U.outputSize(64, 3, 0, 1).size, 62); // Tiny VGG conv
  assert.equal(U.outputSize(62, 2, 0, 2).size, 31); // its 2×2 pool
  assert.equal(U.outputSize(28, 3, 1, 1).size, 28); // same padding
  assert.equal(U.outputSize(227, 11, 0, 4).size, 55); // AlexNet conv1
  const bad = U.outputSize(7, 3, 0, 3);
  assert.equal(bad.size, null);
  assert.equal(bad.tiles, false);
  assert.equal(bad.floored, 2); // what PyTorch would give by flooring
  assert.match(bad.error, /does not tile/);
  assert.match(U.outputSize(2, 5, 1, 1).error, /larger than the padded input/);
  assert.equal(U.outputSize(10, 3, 0, 1, 2).size, 6); // dilation 2: effective kernel 5
});

test('outputSizeFormula writes the numbers in', () => {
  assert.equal(U.outputSizeFormula(7, 3, 1, 2), '(n + 2p − k) / s + 1 = (7 + 2·1 − 3) / 2 + 1 = 6 / 2 + 1 = 4');
  assert.match(U.outputSizeFormula(7, 3, 0, 3), /✗$/);
});

test('windowCells follows stride, padding and dilation', () => {
  const h = { kernel: [2, 2], stride: [2, 2], padding: [1, 1], dilation: [1, 1] };
  assert.deepEqual(U.windowCells(1, 2, h), [[1, 3], [1, 4], [2, 3], [2, 4]]);
  const d = { kernel: [2, 1], stride: [1, 1], padding: [0, 0], dilation: [3, 1] };
  assert.deepEqual(U.windowCells(0, 0, d), [[0, 0], [3, 0]]);
});

test('adaptiveRange reproduces PyTorch adaptive pooling windows', () => {
  // 5 → 3: [0,2), [1,4), [3,5)
  assert.deepEqual([0, 1, 2].map((i) => U.adaptiveRange(i, 5, 3)), [[0, 2], [1, 4], [3, 5]]);
});

test('convCell equals a hand computation, with padding, stride and bias', () => {
  // input 2×3×3, weight 1×2×2×2
  const input = { shape: [2, 3, 3], data: Float32Array.from([1, 2, 3, 4, 5, 6, 7, 8, 9, -1, 0, 1, 2, 0, -2, 1, 1, 1]) };
  const weight = { shape: [1, 2, 2, 2], data: Float32Array.from([1, 0, 0, 1, 0.5, 0.5, -1, 2]) };
  const bias = { shape: [1], data: Float32Array.from([0.25]) };
  const h = { kernel: [2, 2], stride: [1, 1], padding: [0, 0], dilation: [1, 1] };
  // out[0,1,1]: ch0: 5*1 + 9*1 = 14; ch1: 0*.5 + -2*.5 + 1*-1 + 1*2 = 0 ; +0.25
  const r = U.convCell(input, weight, bias, 0, 1, 1, h);
  assert.equal(r.channels[0].sum, 14);
  assert.equal(r.channels[1].sum, 0);
  assert.equal(r.value, 14.25);
  // padding 1, stride 2: out[0,0,0] reads rows/cols −1..0: only x[.,0,0] is inside
  const p = U.convCell(input, weight, null, 0, 0, 0, { ...h, stride: [2, 2], padding: [1, 1] });
  assert.equal(p.value, 1 * 1 + -1 * 2);
});

test('convCell respects groups', () => {
  const input = { shape: [2, 1, 1], data: Float32Array.from([3, 5]) };
  const weight = { shape: [2, 1, 1, 1], data: Float32Array.from([2, 10]) };
  const h = { kernel: [1, 1], stride: [1, 1], padding: [0, 0], dilation: [1, 1], groups: 2 };
  assert.equal(U.convCell(input, weight, null, 0, 0, 0, h).value, 6);
  assert.equal(U.convCell(input, weight, null, 1, 0, 0, h).value, 50);
});

test('arithmetic strings', () => {
  assert.equal(U.productString([{ x: 1, w: -0.5 }, { x: 2, w: 0.25 }], 0), '1.00×−0.50 + 2.00×0.25 = 0.000');
  assert.equal(U.sumString([1, -2], 0.5, -0.5), '1.000 + −2.000 + 0.500 (bias) = −0.500');
  assert.deepEqual(U.poolString('maxpool', [1, 3, -2, 0]), { text: 'max(1.00, 3.00, −2.00, 0.00) = 3.000', value: 3 });
  assert.equal(U.poolString('avgpool', [1, 3]).value, 2);
  assert.equal(U.activationString('ReLU', -1.2, 0), 'max(0, −1.200) = 0.000');
  assert.equal(U.activationString('relu_1', 2, 2), 'max(0, 2.000) = 2.000');
  assert.match(U.activationString('LeakyReLU', -1, -0.1, { negative_slope: 0.1 }), /0\.1×−1\.000 = −0\.100/);
  assert.equal(U.parseFmt(U.fmt(-1.23456)), -1.235);
  assert.equal(U.fmt(0), '0.000');
});

test('flatten order round-trips for PyTorch and Keras orders', () => {
  const shape = [3, 4, 5];
  assert.equal(U.flattenIndex(1, 2, 3, shape), 1 * 20 + 2 * 5 + 3);
  assert.equal(U.flattenIndex(1, 2, 3, shape, 'hwc'), (2 * 5 + 3) * 3 + 1);
  for (const order of ['chw', 'hwc']) {
    for (let k = 0; k < 60; k++) {
      const [c, h, w] = U.unflattenIndex(k, shape, order);
      assert.equal(U.flattenIndex(c, h, w, shape, order), k);
    }
  }
});

test('softmaxTerms sums to one and matches exp by hand, also for huge logits', () => {
  const t = U.softmaxTerms([0, Math.log(3)]);
  assert.ok(Math.abs(t.probs[1] - 0.75) < 1e-12);
  assert.ok(Math.abs(t.sum - 4) < 1e-12);
  const big = U.softmaxTerms([1000, 1000]);
  assert.deepEqual(big.probs, [0.5, 0.5]);
  assert.match(U.softmaxString(1, [0, Math.log(3)]), /= 3\.000 \/ 4\.000 = 0\.7500$/);
});

test('channelOrder puts the most active first only when paging', () => {
  assert.deepEqual(U.channelOrder([1, 5, 3], 10), [0, 1, 2]);
  assert.deepEqual(U.channelOrder([1, 5, 3], 2), [1, 2, 0]);
  const p = U.pageOf([4, 3, 2, 1, 0], 2, 2);
  assert.deepEqual(p, { page: 2, pages: 3, channels: [0] });
  assert.equal(U.pageOf([1], 9, 2).page, 0);
});

test('blockNames: VGG blocks end at pools, nested modules use their parent', () => {
  const L = (name, kind, module, shape = [1, 2, 2]) => ({ name, kind, module, inputs: [], output_shape: shape });
  const vgg = [L('input', 'input', null), L('c1', 'conv', 'c1'), L('p1', 'maxpool', 'p1'), L('c2', 'conv', 'c2'), L('fc', 'linear', 'fc', [10])];
  assert.deepEqual(U.blockNames(vgg), ['input', 'block 1', 'block 1', 'block 2', 'head']);
  const res = [L('input', 'input', null), L('layer1.0.conv1', 'conv', 'layer1.0.conv1'), L('fc', 'linear', 'fc', [10])];
  assert.deepEqual(U.blockNames(res), ['input', 'layer1.0', 'fc']);
});

test('layoutOverview fits columns in the box and centres neurons', () => {
  const cols = [
    { name: 'input', role: 'maps', count: 3 },
    { name: 'conv', role: 'maps', count: 10 },
    { name: 'flatten', role: 'vector', count: 1 },
    { name: 'out', role: 'output', count: 10 },
  ];
  const lay = U.layoutOverview(cols, { width: 1200, height: 600, top: 40, bottom: 30 });
  assert.equal(lay.columns.length, 4);
  assert.equal(lay.columns[1].neurons.length, 10);
  const xs = lay.columns.map((c) => c.x);
  assert.deepEqual([...xs].sort((a, b) => a - b), xs); // left to right in graph order
  const last = lay.columns[1].neurons.at(-1);
  assert.ok(last.y + last.size <= 600 - 30 + 1e-9); // the tallest column fits
  const first = lay.columns[0].neurons[0];
  assert.ok(first.y > lay.columns[1].neurons[0].y); // shorter column centred
  assert.ok(lay.width <= 1200 + 1e-9);
  // a deep network keeps to the width: smaller thumbnails and gaps, no sideways scroll
  const deep = Array.from({ length: 60 }, (_, i) => ({ name: `l${i}`, role: 'maps', count: 10 }));
  deep.push({ name: 'out', role: 'output', count: 10 });
  for (const w of [800, 1280]) {
    const fit = U.layoutOverview(deep, { width: w, height: 600, left: 20, minColumnGap: 46 });
    const end = fit.columns.at(-1);
    assert.ok(end.x + end.width <= w - 20 + 1e-9, `${w}: last column ends at ${end.x + end.width}`);
    assert.ok(fit.neuronSize >= 4 && fit.spacing >= 2);
    assert.equal(fit.width, w);
  }
});

test('readsFrom: conv reads all (or its group), element-wise reads its channel', () => {
  const conv = { kind: 'conv', hyper: { groups: 1 }, output_shape: [4, 2, 2] };
  assert.deepEqual(U.readsFrom(conv, 2, 3), [0, 1, 2]);
  const grouped = { kind: 'conv', hyper: { groups: 2 }, output_shape: [4, 2, 2] };
  assert.deepEqual(U.readsFrom(grouped, 3, 4), [2, 3]);
  assert.deepEqual(U.readsFrom({ kind: 'activation', hyper: {} }, 1, 3), [1]);
});

test('edgePath draws skip connections above', () => {
  assert.equal(U.edgePath(0, 10, 100, 20), 'M0,10 C50,10 50,20 100,20');
  assert.match(U.edgePath(0, 50, 100, 60, true, 30), /C20,20 80,20/);
});

test('intermediateMap summed over channels plus bias equals convCell everywhere', () => {
  const input = { shape: [2, 4, 5], data: Float32Array.from({ length: 40 }, (_, k) => Math.sin(k)) };
  const weight = { shape: [3, 2, 3, 2], data: Float32Array.from({ length: 36 }, (_, k) => Math.cos(k)) };
  const bias = { shape: [3], data: Float32Array.from([0.1, -0.2, 0.3]) };
  const hyper = { kernel: [3, 2], stride: [1, 2], padding: [1, 0], dilation: [1, 1] };
  const Ho = U.outputSize(4, 3, 1, 1).size; // 4
  const Wo = U.outputSize(5, 2, 0, 2).floored; // 2 (floored along this axis)
  const maps = [0, 1].map((c) => U.intermediateMap(input, weight, 2, c, c, hyper, Ho, Wo));
  for (let i = 0; i < Ho; i++) {
    for (let j = 0; j < Wo; j++) {
      const want = U.convCell(input, weight, bias, 2, i, j, hyper).value;
      const got = maps[0].data[i * Wo + j] + maps[1].data[i * Wo + j] + 0.3;
      assert.ok(Math.abs(want - got) < 1e-5, `${i},${j}`);
    }
  }
});

test('poolCells: regular and adaptive windows', () => {
  const pool = { kind: 'maxpool', hyper: { kernel: [3, 3], stride: [2, 2], padding: [0, 0] } };
  assert.equal(U.poolCells(pool, 1, 1).length, 9);
  assert.deepEqual(U.poolCells(pool, 1, 1)[0], [2, 2]);
  const ad = { kind: 'adaptive_pool', input_shapes: [[1, 5, 5]], output_shape: [1, 3, 3], hyper: {} };
  assert.deepEqual(U.poolCells(ad, 0, 0), [[0, 0], [0, 1], [1, 0], [1, 1]]);
});

test('outputCellFor inverts windowOrigin and clamps at the edges', () => {
  const h = { kernel: [3, 3], stride: [2, 2], padding: [1, 1] };
  for (let i = 0; i < 4; i++) {
    for (let j = 0; j < 4; j++) {
      const [r, c] = U.windowOrigin(i, j, h.stride, h.padding);
      assert.deepEqual(U.outputCellFor(r, c, h, 4, 4), [i, j]);
    }
  }
  assert.deepEqual(U.outputCellFor(100, -5, h, 4, 4), [3, 0]);
});

test('denseTerms sums every product plus the bias and lists the largest first', () => {
  const weight = { shape: [2, 3], data: Float32Array.from([1, 2, 3, -1, 0.5, 10]) };
  const bias = { shape: [2], data: Float32Array.from([0.5, -1]) };
  const d = U.denseTerms(weight, bias, [1, -2, 0.1], 1, 2); // products −1, −1, 1
  assert.deepEqual(U.denseTerms(weight, null, [0, 0, 1], 0, 1).terms.map((t) => t.j), [2]);
  assert.ok(Math.abs(d.value - (-1 - 1 + 1 - 1)) < 1e-6);
  assert.deepEqual(d.terms.map((t) => t.j), [0, 1]); // a tie keeps the order
  assert.equal(d.restCount, 1);
  assert.ok(Math.abs(d.restSum - 1) < 1e-6);
  assert.match(U.denseString(1, d), /^z1 = .* \(1 more: 1\.000\) \+ −1\.000 \(bias\) = −2\.000$/);
});

test('activationFn: the plotted functions match their definitions', () => {
  const relu = U.activationFn('ReLU');
  assert.equal(relu(-2), 0);
  assert.equal(relu(1.5), 1.5);
  assert.equal(U.activationFn('relu6')(9), 6);
  assert.equal(U.activationFn('LeakyReLU', { negative_slope: 0.2 })(-5), -1);
  assert.ok(Math.abs(U.activationFn('sigmoid')(0) - 0.5) < 1e-12);
  assert.equal(U.activationFn('BatchNorm2d'), null);
});

test('playgroundNumbers: a hand-computed corner and the padding', () => {
  const { x, w, y, size } = U.playgroundNumbers(5, 3, 1, 2);
  assert.equal(size, 3);
  assert.deepEqual(w[0], [-1, 0, 1]);
  // y[0,0] reads rows −1..1, columns −1..1: the padding is 0, so x[0][1] + x[1][1] − 0 − 0
  assert.equal(y[0][0], x[0][1] + x[1][1]);
  // y[1,1] reads rows 1..3, columns 1..3
  let want = 0;
  for (let a = 0; a < 3; a++) want += x[1 + a][3] - x[1 + a][1];
  assert.equal(y[1][1], want);
  assert.equal(U.playgroundNumbers(8, 3, 0, 2).y, null); // does not tile
});

test('sampleMap takes the nearest cell to each target centre, like pixelated scaling', () => {
  // 2 channels of 4×6: value = 100·c + 10·row + col, so every sample names its cell
  const H = 4, W = 6;
  const data = new Float32Array(2 * H * W).map((_, k) => 100 * Math.floor(k / (H * W)) + 10 * Math.floor((k % (H * W)) / W) + (k % W));
  const t = { shape: [2, H, W], data };
  const down = U.sampleMap(t, 1, 2, 3); // centres 0.5/2·4 = 1 → row 1, 3 → row 3; cols 1, 3, 5
  assert.deepEqual([...down], [111, 113, 115, 131, 133, 135]);
  const same = U.sampleMap(t, 0, H, W);
  assert.deepEqual([...same], [...data.slice(0, H * W)]);
  const up = U.sampleMap({ shape: [2, 2], data: new Float32Array([1, 2, 3, 4]) }, 0, 4, 4);
  assert.deepEqual([...up], [1, 1, 2, 2, 1, 1, 2, 2, 3, 3, 4, 4, 3, 3, 4, 4]);
});

test('deviceRect: adjacent boxes share an edge, none is empty', () => {
  const a = U.deviceRect(10.3, 5, 20.4, 20.4, 1.5);
  const b = U.deviceRect(10.3 + 20.4, 5, 20.4, 20.4, 1.5);
  assert.equal(a[0] + a[2], b[0]);
  assert.deepEqual(U.deviceRect(0, 0, 0.1, 0.1, 1), [0, 0, 1, 1]);
});

test('reads agrees with readsFrom on every channel pair', () => {
  const layers = [
    { kind: 'conv', hyper: { groups: 1 }, output_shape: [8, 4, 4] },
    { kind: 'conv', hyper: { groups: 4 }, output_shape: [8, 4, 4] },
    { kind: 'conv', hyper: { groups: 8 }, output_shape: [8, 4, 4] },
    { kind: 'linear', hyper: {}, output_shape: [5] },
    { kind: 'activation', hyper: {}, output_shape: [8, 4, 4] },
    { kind: 'maxpool', hyper: {}, output_shape: [6, 2, 2] },
  ];
  for (const layer of layers) {
    for (let c = 0; c < layer.output_shape[0]; c++) {
      const list = U.readsFrom(layer, c, 8);
      for (let s = -1; s <= 9; s++) assert.equal(U.reads(layer, c, 8, s), list.includes(s), `${layer.kind} ${c} ${s}`);
    }
  }
});
