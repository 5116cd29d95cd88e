// The API of the explainer inside the notebook widget's frame: each request goes to the host
// page (the widget, widget.js), which sends it to the kernel; the kernel answers it with the
// server's own routes (convlens/notebook/widget.py). The frame also tells the host which image
// and which neuron are shown, and follows the host's choice of image (the widget's state).
(() => {
  const host = window.parent;
  const pending = new Map();
  let next = 0;
  let store = null;
  const wanted = { image: null, selected: null };

  window.addEventListener('message', (e) => {
    if (e.source !== host || !e.data || typeof e.data !== 'object') return;
    const m = e.data;
    if (m.convlens === 'response') {
      const done = pending.get(m.id);
      pending.delete(m.id);
      if (done) done(m);
    } else if (m.convlens === 'state') {
      const selectedChanged = JSON.stringify(m.state.selected) !== JSON.stringify(wanted.selected);
      Object.assign(wanted, m.state);
      follow(selectedChanged);
    }
  });

  function ask(method, path, body, file) {
    return new Promise((resolve) => {
      next += 1;
      pending.set(next, resolve);
      host.postMessage({ convlens: 'request', id: next, method, path, body, file }, '*');
    });
  }

  function tell(state) {
    Object.assign(wanted, state); // the host will echo it; never pull the page back meanwhile
    host.postMessage({ convlens: 'state', state }, '*');
  }

  /** Show the host's image (and neuron) when the page shows another. */
  function follow(selectedChanged = false) {
    if (!store || !store.get('trace')) return;
    if (wanted.image && wanted.image !== store.get('imageId')) {
      document.querySelector(`#samples button[data-id="${CSS.escape(wanted.image)}"]`)?.click();
      return;
    }
    const sel = wanted.selected;
    const now = store.get('selected');
    if (selectedChanged && sel && (sel.layer !== now?.layer || sel.channel !== now?.channel)) {
      const key = `${sel.layer}|${sel.channel}`;
      const match = `[data-key="${CSS.escape(key)}"]`;
      const neuron = document.querySelector(`#overview ${match}`) || document.querySelector(match);
      neuron?.dispatchEvent(new MouseEvent('click', { bubbles: true }));
    }
  }

  globalThis.convlensTransport = {
    widget: true,
    async request(path, options = {}) {
      let body = options.body ?? null;
      let file = null;
      if (body instanceof FormData) {
        const f = body.get('file');
        file = { name: f.name || 'upload', type: f.type || '', bytes: await f.arrayBuffer() };
        body = null;
      }
      const m = await ask((options.method || 'GET').toUpperCase(), path, body, file);
      let doc = null;
      try { doc = JSON.parse(new TextDecoder().decode(m.body)); } catch { doc = null; }
      if (m.status >= 400 || doc === null) throw new Error(doc?.error || `HTTP ${m.status}`);
      return doc;
    },
    async asset(url) {
      const m = await ask('GET', url.replace(/^\/api\/v1/, ''), null, null);
      if (m.status >= 400) return url;
      return URL.createObjectURL(new Blob([m.body], { type: m.contentType || 'image/png' }));
    },
    attach({ store: s }) {
      store = s;
      s.on('imageId', (id) => tell({ image: id }));
      s.on('selected', (sel) => tell({ selected: sel ? { layer: sel.layer, channel: sel.channel } : null }));
      s.on('trace', () => setTimeout(() => follow(), 0));
    },
  };
})();
