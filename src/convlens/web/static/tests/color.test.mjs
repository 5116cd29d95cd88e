import test from 'node:test';
import assert from 'node:assert/strict';
import * as C from '../js/color.js';
import { decodeTensor } from '../js/api.js';

test('interpolate hits the stops and clamps', () => {
  const stops = [[0, 0, 0], [100, 200, 50]];
  assert.deepEqual(C.interpolate(stops, 0), [0, 0, 0]);
  assert.deepEqual(C.interpolate(stops, 1), [100, 200, 50]);
  assert.deepEqual(C.interpolate(stops, 0.5), [50, 100, 25]);
  assert.deepEqual(C.interpolate(stops, 7), [100, 200, 50]);
  assert.deepEqual(C.interpolate(stops, NaN), [0, 0, 0]);
});

test('signed ranges are diverging and symmetric, zero is the middle colour', () => {
  const s = C.makeScale(-1, 3);
  assert.equal(s.signed, true);
  assert.deepEqual([s.lo, s.hi], [-3, 3]);
  assert.deepEqual(C.colorOf(s, 0), C.DIVERGING[3]);
  const u = C.makeScale(0, 2);
  assert.equal(u.signed, false);
  assert.deepEqual(C.colorOf(u, 0), [255, 255, 255]);
  assert.deepEqual(C.colorOf(u, 2), C.SEQUENTIAL.at(-1));
  const flat = C.makeScale(1, 1);
  assert.ok(flat.hi > flat.lo);
});

test('legendText says which scale', () => {
  assert.equal(C.legendText(C.makeScale(-1, 1, { mode: 'block' })), 'per block of layers · diverging around 0');
  assert.equal(C.legendText(C.makeScale(0, 1, { mode: 'neuron' })), 'per neuron · sequential from the minimum');
});

test('rangeFor: neuron, layer, block and global ranges', () => {
  const stats = {
    input: { min: -5, max: 5, channel_min: [-5], channel_max: [5] },
    a: { min: -1, max: 2, channel_min: [-1, 0], channel_max: [1, 2] },
    b: { min: 0, max: 4, channel_min: [0, 1], channel_max: [4, 3] },
    c: { min: 0, max: 9, channel_min: [0], channel_max: [9] },
  };
  const blocks = { a: 'block 1', b: 'block 1', c: 'block 2' };
  assert.deepEqual(C.rangeFor('neuron', 'a', 1, stats, blocks), [0, 2]);
  assert.deepEqual(C.rangeFor('layer', 'a', 1, stats, blocks), [-1, 2]);
  assert.deepEqual(C.rangeFor('block', 'a', 0, stats, blocks), [-1, 4]);
  assert.deepEqual(C.rangeFor('global', 'a', 0, stats, blocks), [-1, 9]); // input left out
});

test('mapPixels colours each value', () => {
  const s = C.makeScale(0, 1);
  const px = C.mapPixels(Float32Array.from([9, 0, 1]), 1, 1, 2, s);
  assert.deepEqual([...px], [255, 255, 255, 255, ...C.SEQUENTIAL.at(-1), 255]);
});

test('decodeTensor reads little-endian float32', () => {
  const f = Float32Array.from([1.5, -2, 0.25]);
  const b64 = Buffer.from(f.buffer).toString('base64');
  const t = decodeTensor({ shape: [3], dtype: 'float32', b64 });
  assert.deepEqual([...t.data], [1.5, -2, 0.25]);
  assert.equal(decodeTensor(null), null);
});

test('mapPixels paints exactly what colorOf gives, value by value', () => {
  for (const s of [C.makeScale(-2, 3), C.makeScale(0.5, 4), C.makeScale(1, 1)]) {
    const data = Float32Array.from([-3, -2, -0.7, 0, 0.001, 0.5, 1, 2.2, 3, 9, NaN, Infinity]);
    const px = C.mapPixels(data, 2, 2, 5, s);
    for (let k = 0; k < 10; k++) {
      assert.deepEqual([...px.slice(4 * k, 4 * k + 4)], [...C.colorOf(s, data[2 + k]), 255]);
    }
  }
});

test('shortRange writes a legend in a few characters', () => {
  assert.equal(C.shortRange(C.makeScale(-1.3912, 0.5)), '±1.4');
  assert.equal(C.shortRange(C.makeScale(0, 5.634)), '0…5.6');
  assert.equal(C.shortRange(C.makeScale(0, 1)), '0…1');
  assert.equal(C.shortRange(C.makeScale(-0.00012, 0.0003)), '±3.0e-4');
  assert.equal(C.shortRange(C.makeScale(2, 123456)), '2…1.2e+5');
  assert.equal(C.shortRange({ lo: -2.5, hi: 7.25 }), '−2.5…7.3');
});
