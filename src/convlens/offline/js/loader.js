// Runs the explainer's modules from the page's own #convlens-modules table (see page.py):
// each module gets a blob: URL once its dependencies have theirs, so the browser evaluates them
// exactly as it would the served files. Classic scripts, if the page gains any, run first, in order.
const table = JSON.parse(document.getElementById('convlens-modules').textContent);
const urls = new Map();
const blobUrl = (text) => URL.createObjectURL(new Blob([text], { type: 'text/javascript' }));
const escaped = table.prefix.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
const placeholder = new RegExp(`${escaped}([\\w./-]+)`, 'g');

function moduleUrl(name) {
  if (!urls.has(name)) {
    const source = table.modules[name];
    if (source === undefined) throw new Error(`module ${name} is not in this page`);
    urls.set(name, blobUrl(source.replace(placeholder, (_, dep) => moduleUrl(dep))));
  }
  return urls.get(name);
}

function runClassic(name) {
  return new Promise((resolve, reject) => {
    const script = document.createElement('script');
    script.src = blobUrl(table.scripts[name]);
    script.onload = resolve;
    script.onerror = () => reject(new Error(`script ${name} failed to load`));
    document.head.append(script);
  });
}

// A module that calls fetch('/api/v1/…') itself instead of going through api.js still reaches
// the page's transport: a file page has no server to fetch from.
const transport = globalThis.convlensTransport;
if (transport) {
  const networkFetch = globalThis.fetch.bind(globalThis);
  globalThis.fetch = async (input, init = {}) => {
    const url = new URL(typeof input === 'string' ? input : input.url, document.baseURI);
    if (!url.pathname.startsWith('/api/v1/')) return networkFetch(input, init);
    const json = (doc, status) => new Response(JSON.stringify(doc), { status, headers: { 'Content-Type': 'application/json' } });
    try {
      return json(await transport.request(url.pathname.slice('/api/v1'.length) + url.search, init), 200);
    } catch (err) {
      return json({ error: String(err.message || err) }, 404);
    }
  };
}

for (const name of table.classic) await runClassic(name);
await import(moduleUrl(table.entry));
// a host (the notebook widget) may follow the page's state through the same store instance
if (globalThis.convlensTransport?.attach && table.modules['js/store.js'] !== undefined) {
  globalThis.convlensTransport.attach({ store: await import(moduleUrl('js/store.js')) });
}
