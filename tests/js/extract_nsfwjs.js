// Write a model bundled in the nsfwjs npm package (MIT, Infinite Red) as a plain TF.js folder:
// nsfwjs ships model.json and its shards as JS modules (the shard base64-encoded) so that
// bundlers can inline them. This unwraps them with the package's own loaders, unchanged.
//
//   node extract_nsfwjs.js mobilenet_v2 OUT_DIR
'use strict';
const fs = require('fs');
const path = require('path');

const LOADERS = {
  mobilenet_v2: () => require('nsfwjs/models/mobilenet_v2').MobileNetV2Model,
  mobilenet_v2_mid: () => require('nsfwjs/models/mobilenet_v2_mid').MobileNetV2MidModel,
  inception_v3: () => require('nsfwjs/models/inception_v3').InceptionV3Model,
};

async function main() {
  const [name, out] = process.argv.slice(2);
  const model = LOADERS[name]();
  const mod = await model.modelJson();
  const json = mod.default && mod.default.modelTopology ? mod.default : mod;
  fs.mkdirSync(out, { recursive: true });
  const paths = [];
  for (let i = 0; i < model.numOfWeightBundles; i++) {
    const bundle = await model.weightBundles[i]();
    const base64 = bundle.default || bundle;
    const file = `group1-shard${i + 1}of${model.numOfWeightBundles}.bin`;
    fs.writeFileSync(path.join(out, file), Buffer.from(base64, 'base64'));
    paths.push(file);
  }
  const doc = {
    modelTopology: json.modelTopology,
    weightsManifest: json.weightsManifest.map((g) => ({ ...g, paths })),
  };
  fs.writeFileSync(path.join(out, 'model.json'), JSON.stringify(doc));
  const dist = path.dirname(require.resolve('nsfwjs'));
  const classes = require(path.join(dist, 'nsfw_classes.js')).NSFW_CLASSES;
  // convlens's sidecar: the class names nsfwjs reports, in output order.
  fs.writeFileSync(path.join(out, 'model.convlens.json'), JSON.stringify({ classes: Object.values(classes) }));
}

main().catch((e) => { console.error(e); process.exit(1); });
