import test from 'node:test';
import assert from 'node:assert/strict';
import { decodeTensor } from '../js/api.js';

const b64 = (bytes) => Buffer.from(bytes).toString('base64');
const f32 = (values) => b64(new Uint8Array(new Float32Array(values).buffer));

test('decodeTensor puts the rows of a top_channels map in their channels', () => {
  // a whole uint8 map of 4 channels (2 numbers each) and its rows 1 and 3, as the server sends them
  const whole = { shape: [4, 2], dtype: 'uint8', b64: b64([0, 255, 10, 20, 30, 40, 50, 60]), offset: [0, 1, 2, 3], scale: [0.5, 0.25, 1, 2] };
  const rows = { shape: [2, 2], dtype: 'uint8', b64: b64([10, 20, 50, 60]), offset: [1, 3], scale: [0.25, 2], channels: [1, 3], of_channels: 4 };
  const w = decodeTensor(whole);
  const r = decodeTensor(rows);
  assert.deepEqual(r.shape, [4, 2]);
  assert.deepEqual([...r.rows], [1, 3]);
  assert.equal(r.quantized, true);
  assert.deepEqual(Array.from(r.data.subarray(2, 4)), Array.from(w.data.subarray(2, 4)));
  assert.deepEqual(Array.from(r.data.subarray(6, 8)), Array.from(w.data.subarray(6, 8)));
  assert.deepEqual(Array.from(r.data.subarray(0, 2)), [0, 0]); // not sent: zeros until fetched
  assert.equal(w.rows, undefined);
});

test('decodeTensor: float32 rows too', () => {
  const r = decodeTensor({ shape: [1, 3], dtype: 'float32', b64: f32([1.5, -2, 3]), channels: [2], of_channels: 3 });
  assert.deepEqual(r.shape, [3, 3]);
  assert.deepEqual(Array.from(r.data), [0, 0, 0, 0, 0, 0, 1.5, -2, 3]);
  assert.deepEqual(Array.from(decodeTensor({ shape: [3], dtype: 'float32', b64: f32([1, 2, 3]) }).data), [1, 2, 3]);
});
