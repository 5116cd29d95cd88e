// The notebook widget (anywidget): the explainer's page in a frame of its own (its ids, styles
// and key handlers stay out of the notebook), its API requests carried to the kernel as custom
// messages, and the shown image / neuron kept in the widget's state both ways.
function render({ model, el }) {
  const frame = document.createElement('iframe');
  frame.title = 'convlens explainer';
  frame.style.cssText = 'width: 100%; border: 1px solid #e5e7eb; border-radius: 4px; display: block;';
  const size = () => { frame.style.height = `${model.get('height')}px`; };
  size();

  // a widget shown twice has two views on one model, and every custom message reaches both:
  // each view tags its requests and takes only the answers to its own
  const view = `${Date.now().toString(36)}-${Math.random().toString(36).slice(2)}`;
  const toFrame = (msg, transfer = []) => frame.contentWindow?.postMessage(msg, '*', transfer);
  const state = () => ({ image: model.get('image') || null, selected: model.get('selected') || null });

  const onFrame = (e) => {
    if (e.source !== frame.contentWindow || !e.data || typeof e.data !== 'object') return;
    const m = e.data;
    if (m.convlens === 'request') {
      const buffers = m.file ? [m.file.bytes] : [];
      const file = m.file ? { name: m.file.name, type: m.file.type } : null;
      const request = { kind: 'request', view, id: m.id, method: m.method, path: m.path, body: m.body, file };
      model.send(request, undefined, buffers);
    } else if (m.convlens === 'state') {
      for (const [k, v] of Object.entries(m.state)) model.set(k, v);
      model.save_changes();
    }
  };
  const onKernel = (msg, buffers) => {
    if (!msg || msg.kind !== 'response' || msg.view !== view) return;
    const b = buffers?.[0];
    const body = b ? new Uint8Array(b.buffer, b.byteOffset, b.byteLength).slice().buffer : new ArrayBuffer(0);
    toFrame({ convlens: 'response', id: msg.id, status: msg.status, contentType: msg.contentType, body }, [body]);
  };
  const onState = () => toFrame({ convlens: 'state', state: state() });

  window.addEventListener('message', onFrame);
  model.on('msg:custom', onKernel);
  model.on('change:image', onState);
  model.on('change:selected', onState);
  model.on('change:height', size);
  frame.addEventListener('load', onState);
  frame.srcdoc = model.get('_page');
  el.append(frame);
  return () => {
    window.removeEventListener('message', onFrame);
    model.off('msg:custom', onKernel);
    model.off('change:image', onState);
    model.off('change:selected', onState);
    model.off('change:height', size);
  };
}

export default { render };
