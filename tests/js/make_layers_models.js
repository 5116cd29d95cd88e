// Write the TF.js *layers-model* fixtures with TensorFlow.js itself (not run in CI; the output
// is committed under tests/fixtures/tfjs/layers-*):
//
//   npm ci --prefix tests/js && node tests/js/make_layers_models.js
//
// Each model is built with tf.layers and seeded initialisers (non-zero biases and batch-norm
// statistics, so nothing is trivially zero), then saved through tf.io.withSaveHandler: the
// handler receives TF.js's own serialisation (modelTopology, weightSpecs, weightData) and
// writes model.json + one shard as TF.js's file handlers do.
'use strict';
const fs = require('fs');
const path = require('path');
const tf = require('@tensorflow/tfjs');

const OUT = path.resolve(__dirname, '..', 'fixtures', 'tfjs');
let seed = 1;
const init = {
  kernel: () => tf.initializers.glorotUniform({ seed: seed++ }),
  bias: () => tf.initializers.randomNormal({ mean: 0, stddev: 0.2, seed: seed++ }),
};
const conv = (cfg) => tf.layers.conv2d({
  kernelInitializer: init.kernel(), biasInitializer: init.bias(), ...cfg,
});
const bn = (name) => tf.layers.batchNormalization({
  name,
  gammaInitializer: tf.initializers.randomUniform({ minval: 0.5, maxval: 1.5, seed: seed++ }),
  betaInitializer: tf.initializers.randomNormal({ mean: 0, stddev: 0.1, seed: seed++ }),
  movingMeanInitializer: tf.initializers.randomNormal({ mean: 0, stddev: 0.1, seed: seed++ }),
  movingVarianceInitializer: tf.initializers.randomUniform({ minval: 0.5, maxval: 1.5, seed: seed++ }),
});
const dense = (cfg) => tf.layers.dense({
  kernelInitializer: tf.initializers.randomNormal({ mean: 0, stddev: 0.5, seed: seed++ }),
  biasInitializer: init.bias(), ...cfg,
});

function sequential() {
  const m = tf.sequential({ name: 'layers_sequential' });
  m.add(conv({ inputShape: [16, 16, 3], filters: 8, kernelSize: 3, padding: 'same', activation: 'relu', name: 'conv1' }));
  m.add(bn('bn1'));
  m.add(tf.layers.depthwiseConv2d({
    kernelSize: 3, depthMultiplier: 2, strides: 2, padding: 'same', name: 'dw',
    depthwiseInitializer: init.kernel(), biasInitializer: init.bias(), activation: 'relu6',
  }));
  m.add(tf.layers.separableConv2d({
    filters: 12, kernelSize: 3, padding: 'valid', name: 'sep', activation: 'elu',
    depthwiseInitializer: init.kernel(), pointwiseInitializer: init.kernel(), biasInitializer: init.bias(),
  }));
  m.add(tf.layers.maxPooling2d({ poolSize: 2, name: 'pool' }));
  m.add(conv({ filters: 10, kernelSize: 1, name: 'conv2' }));
  m.add(tf.layers.flatten({ name: 'flatten' }));
  m.add(dense({ units: 6, activation: 'softmax', name: 'fc' }));
  return m;
}

function residual() {
  const inp = tf.input({ shape: [16, 16, 3], name: 'image' });
  let x = conv({ filters: 8, kernelSize: 3, padding: 'same', name: 'stem' }).apply(inp);
  x = bn('stem_bn').apply(x);
  x = tf.layers.reLU({ name: 'stem_relu' }).apply(x);
  let y = conv({ filters: 8, kernelSize: 3, padding: 'same', activation: 'relu', name: 'res_a' }).apply(x);
  y = conv({ filters: 8, kernelSize: 3, padding: 'same', name: 'res_b' }).apply(y);
  y = bn('res_bn').apply(y);
  x = tf.layers.add({ name: 'res_add' }).apply([x, y]);
  x = tf.layers.activation({ activation: 'relu', name: 'res_relu' }).apply(x);
  x = tf.layers.globalAveragePooling2d({ name: 'gap' }).apply(x);
  const out = dense({ units: 5, name: 'logits' }).apply(x);
  return tf.model({ inputs: inp, outputs: out, name: 'layers_residual' });
}

function inception() {
  const inp = tf.input({ shape: [15, 15, 3], name: 'image' });
  const x = conv({ filters: 6, kernelSize: 3, strides: 2, padding: 'same', activation: 'relu', name: 'stem' }).apply(inp);
  const b1 = conv({ filters: 4, kernelSize: 1, activation: 'relu', name: 'b1_1x1' }).apply(x);
  let b2 = conv({ filters: 4, kernelSize: 1, activation: 'relu', name: 'b2_1x1' }).apply(x);
  b2 = conv({ filters: 6, kernelSize: 3, padding: 'same', activation: 'relu', name: 'b2_3x3' }).apply(b2);
  let b3 = tf.layers.maxPooling2d({ poolSize: 3, strides: 1, padding: 'same', name: 'b3_pool' }).apply(x);
  b3 = conv({ filters: 3, kernelSize: 1, activation: 'relu', name: 'b3_1x1' }).apply(b3);
  let y = tf.layers.concatenate({ name: 'mixed' }).apply([b1, b2, b3]);
  y = tf.layers.globalMaxPooling2d({ name: 'gmp' }).apply(y);
  const out = dense({ units: 4, activation: 'softmax', name: 'fc' }).apply(y);
  return tf.model({ inputs: inp, outputs: out, name: 'layers_inception' });
}

function mobilenetBlock() {
  // MobileNetV2's inverted residual: 1×1 expand + ReLU6, 3×3 depthwise + ReLU6, 1×1 project.
  const inp = tf.input({ shape: [16, 16, 3], name: 'image' });
  let x = conv({ filters: 8, kernelSize: 3, strides: 2, padding: 'same', useBias: false, name: 'Conv1' }).apply(inp);
  x = bn('bn_Conv1').apply(x);
  x = tf.layers.reLU({ maxValue: 6, name: 'Conv1_relu' }).apply(x);
  let y = conv({ filters: 24, kernelSize: 1, useBias: false, name: 'expand' }).apply(x);
  y = bn('expand_BN').apply(y);
  y = tf.layers.reLU({ maxValue: 6, name: 'expand_relu' }).apply(y);
  y = tf.layers.depthwiseConv2d({ kernelSize: 3, padding: 'same', useBias: false, name: 'depthwise',
    depthwiseInitializer: init.kernel() }).apply(y);
  y = bn('depthwise_BN').apply(y);
  y = tf.layers.reLU({ maxValue: 6, name: 'depthwise_relu' }).apply(y);
  y = conv({ filters: 8, kernelSize: 1, useBias: false, name: 'project' }).apply(y);
  y = bn('project_BN').apply(y);
  x = tf.layers.add({ name: 'block_add' }).apply([x, y]);
  x = tf.layers.globalAveragePooling2d({ name: 'gap' }).apply(x);
  const out = dense({ units: 5, activation: 'softmax', name: 'predictions' }).apply(x);
  return tf.model({ inputs: inp, outputs: out, name: 'layers_mobilenet_block' });
}

async function save(model, name) {
  const dir = path.join(OUT, name);
  fs.rmSync(dir, { recursive: true, force: true });
  fs.mkdirSync(dir, { recursive: true });
  await model.save(tf.io.withSaveHandler(async (art) => {
    const shard = 'group1-shard1of1.bin';
    fs.writeFileSync(path.join(dir, shard), Buffer.from(art.weightData));
    const doc = {
      modelTopology: art.modelTopology,
      format: art.format,
      generatedBy: art.generatedBy,
      convertedBy: art.convertedBy,
      weightsManifest: [{ paths: [shard], weights: art.weightSpecs }],
    };
    fs.writeFileSync(path.join(dir, 'model.json'), JSON.stringify(doc));
    return { modelArtifactsInfo: { dateSaved: new Date(), modelTopologyType: 'JSON' } };
  }));
  console.log(`${name}: ${model.countParams()} parameters`);
}

async function main() {
  await tf.setBackend('cpu');
  await save(sequential(), 'layers-sequential');
  await save(residual(), 'layers-residual');
  await save(inception(), 'layers-inception');
  await save(mobilenetBlock(), 'layers-mobilenet-block');
}

main().catch((e) => { console.error(e); process.exit(1); });
