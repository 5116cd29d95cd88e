// The API of an exported explainer: answers recorded by `convlens export` from the server's own
// routes (see convlens/offline/export.py), kept in #convlens-data. Nothing is computed here
// but the choice of a recorded answer; what was not recorded is said plainly.
(() => {
  const data = JSON.parse(document.getElementById('convlens-data').textContent);
  const model = data.responses['GET /model'].body;
  const methods = model.capabilities?.methods || [];
  const images = Object.keys(data.traces);
  const elsewhere = 'open the model with `convlens serve` or `convlens.show` in a notebook for that';

  function answer(recorded) {
    if (!recorded) return null;
    if (recorded.status >= 400) throw new Error(recorded.body?.error || `HTTP ${recorded.status}`);
    return structuredClone(recorded.body); // the page may change what it is given
  }

  function notHere(what) {
    throw new Error(`not in this exported file: ${what}; ${elsewhere}`);
  }

  /** A trace: the recorded one (at the export's caps), restricted to the layers asked for. */
  function trace(query) {
    const id = query.get('image');
    const doc = data.traces[id];
    if (!doc) notHere(`image ${JSON.stringify(id)} (it holds ${images.join(', ')})`);
    const asked = query.get('layers');
    if (!asked) return structuredClone(doc); // the overview: whatever detail the export holds
    const names = asked.split(',').map((n) => n.trim()).filter(Boolean);
    const maxChannels = Number(query.get('max_channels')) || Infinity;
    const maxSize = Number(query.get('max_size')) || Infinity;
    const out = { ...doc, activations: {}, stats: {}, caps: {} };
    for (const name of names) {
      if (!(name in doc.activations)) notHere(`layer ${JSON.stringify(name)}`);
      const cut = doc.caps[name];
      if (cut && (maxChannels > cut.channels || maxSize > Math.max(...cut.size))) {
        notHere(`layer ${name} in full (it holds ${cut.channels} of ${cut.of_channels} channels at ` +
          `${cut.size.join('×')} of ${cut.of_size.join('×')}: the export's caps; export again with ` +
          'larger --max-channels / --max-size to see this view)');
      }
      out.activations[name] = doc.activations[name];
      out.stats[name] = doc.stats[name];
      if (cut) out.caps[name] = cut;
    }
    return structuredClone(out);
  }

  // the panel sends every parameter as its input reads it: a list default comes back as "8,8"
  function atDefault(spec, value) {
    if (!spec) return false;
    return JSON.stringify(spec.default) === JSON.stringify(value) || String(spec.default) === String(value);
  }

  /** The key an explanation was recorded under: parameters at their defaults left out. */
  function explainKey(req) {
    const method = methods.find((m) => m.name === req.method);
    const defaults = method?.params || {};
    const params = Object.entries(req.params || {})
      .filter(([k, v]) => !atDefault(defaults[k], v))
      .sort(([a], [b]) => (a < b ? -1 : 1));
    const predicted = data.traces[req.image_id]?.predicted;
    const target = req.target === predicted ? null : req.target ?? null;
    return JSON.stringify([req.image_id, req.method, target, req.layer ?? null, Object.fromEntries(params)]);
  }

  function explain(body) {
    const req = JSON.parse(body);
    const found = answer(data.explanations[explainKey(req)]);
    if (found) return found;
    notHere(`${req.method} for this image with these settings (it holds each method with its ` +
      'default parameters, for the predicted class and the default layer)');
  }

  function route(method, path, body) {
    const url = new URL(path, 'http://export.invalid');
    const p = decodeURIComponent(url.pathname);
    if (method === 'GET' && p === '/model') return answer(data.responses['GET /model']);
    if (method === 'GET' && p === '/trace') return trace(url.searchParams);
    if (method === 'GET' && p.startsWith('/weights/')) {
      return answer(data.responses[`GET ${p}`]) ?? notHere(`the weights of ${p.slice(9)}`);
    }
    if (method === 'POST' && p === '/explain') return explain(body);
    if (method === 'GET' && p.startsWith('/units/')) notHere('units (their feature visualization needs the model)');
    if (method === 'POST' && p === '/images') notHere('new images (it holds the images chosen at export)');
    return notHere(`${method} ${p}`);
  }

  globalThis.convlensTransport = {
    exported: true,
    async request(path, options = {}) {
      return route((options.method || 'GET').toUpperCase(), path, options.body);
    },
    async asset(url) {
      return data.assets[url] || url;
    },
  };
})();
