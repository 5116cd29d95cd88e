// TF.js itself as the reference runtime: load a model.json folder (layers or graph model) with
// TF.js's own loaders over an in-memory IO handler, run it on raw float32 NHWC inputs and
// write the raw float32 outputs.
//
//   node predict.js MODEL_DIR|MODEL.json INPUT.bin N,H,W,C OUTPUT.bin
//
// Pure-JS CPU backend (no tfjs-node native binary); prints the output shape as JSON.
'use strict';
const fs = require('fs');
const path = require('path');
const tf = require('@tensorflow/tfjs');

function artifacts(source) {
  const file = source.endsWith('.json') ? source : path.join(source, 'model.json');
  const dir = path.dirname(file);
  const doc = JSON.parse(fs.readFileSync(file, 'utf8'));
  const specs = [];
  const chunks = [];
  for (const group of doc.weightsManifest || []) {
    specs.push(...group.weights);
    for (const p of group.paths) chunks.push(fs.readFileSync(path.join(dir, p)));
  }
  const all = Buffer.concat(chunks);
  const weightData = all.buffer.slice(all.byteOffset, all.byteOffset + all.byteLength);
  return {
    modelTopology: doc.modelTopology,
    format: doc.format,
    generatedBy: doc.generatedBy,
    convertedBy: doc.convertedBy,
    signature: doc.signature,
    userDefinedMetadata: doc.userDefinedMetadata,
    modelInitializer: doc.modelInitializer,
    weightSpecs: specs,
    weightData,
  };
}

async function main() {
  const [dir, input, shapeText, output] = process.argv.slice(2);
  await tf.setBackend('cpu');
  const art = artifacts(dir);
  const handler = tf.io.fromMemory(art);
  const model = art.format === 'graph-model'
    ? await tf.loadGraphModel(handler)
    : await tf.loadLayersModel(handler);
  const shape = shapeText.split(',').map(Number);
  const raw = fs.readFileSync(input);
  const x = tf.tensor(new Float32Array(raw.buffer, raw.byteOffset, raw.byteLength / 4), shape);
  const y = model.predict(x);
  const out = Array.isArray(y) ? y[0] : y;
  const data = await out.data();
  fs.writeFileSync(output, Buffer.from(new Float32Array(data).buffer));
  process.stdout.write(JSON.stringify({ shape: out.shape }) + '\n');
}

main().catch((e) => { process.stderr.write(String(e && e.stack || e) + '\n'); process.exit(1); });
