// The image viewer: a series' slices fetched as raw frames (WADO-RS frames,
// native little endian) and windowed on a canvas here, so window/level and
// scrolling need no round trip.  Slices are prefetched nearest first.
import { html, useEffect, useRef, useState } from './vendor/htm-preact-standalone-3.1.1.js';
import { getJSON, number, request, value, values } from './api.js';
import { canvasPoint, defaultWindow, draw, firstPart, makeImage, PRESETS, typedPixels, valueAt }
  from './pixels.js';

const RAW = 'multipart/related; type="application/octet-stream"; transfer-syntax=1.2.840.10008.1.2.1';
const PREFETCH = 4; // requests in flight

// The series' image instances in slice order (position along the normal,
// else Instance Number).
function sliceOrder(metadata) {
  const images = metadata.filter((m) => number(m, 'Rows', 0) > 0);
  const normal = (m) => {
    const o = values(m, 'ImageOrientationPatient').map(Number);
    if (o.length !== 6) return null;
    return [o[1] * o[5] - o[2] * o[4], o[2] * o[3] - o[0] * o[5], o[0] * o[4] - o[1] * o[3]];
  };
  const depth = (m) => {
    const p = values(m, 'ImagePositionPatient').map(Number);
    const nrm = normal(m);
    return p.length === 3 && nrm ? p[0] * nrm[0] + p[1] * nrm[1] + p[2] * nrm[2] : null;
  };
  const keyed = images.map((m) => ({ m, d: depth(m), n: number(m, 'InstanceNumber', 0) }));
  const byDepth = keyed.every((k) => k.d !== null);
  keyed.sort((a, b) => (byDepth ? a.d - b.d : a.n - b.n) || a.n - b.n);
  // One entry per frame.
  const out = [];
  for (const { m } of keyed) {
    const frames = number(m, 'NumberOfFrames', 1);
    for (let f = 1; f <= frames; f++) out.push({ meta: m, frame: f });
  }
  return out;
}

function imageMeta(m) {
  const wc = values(m, 'WindowCenter').map(Number);
  const ww = values(m, 'WindowWidth').map(Number);
  return {
    rows: number(m, 'Rows', 0), columns: number(m, 'Columns', 0),
    samples: number(m, 'SamplesPerPixel', 1), planar: number(m, 'PlanarConfiguration', 0) === 1,
    photometric: value(m, 'PhotometricInterpretation') || 'MONOCHROME2',
    bitsAllocated: number(m, 'BitsAllocated', 16), signed: number(m, 'PixelRepresentation', 0) === 1,
    slope: number(m, 'RescaleSlope', 1), intercept: number(m, 'RescaleIntercept', 0),
    window: wc.length && ww.length && Number.isFinite(wc[0]) && Number.isFinite(ww[0]) ? [wc[0], ww[0]] : null,
  };
}

async function loadFrame(study, series, slice) {
  const sop = value(slice.meta, 'SOPInstanceUID');
  const url = `/dicomweb/studies/${study}/series/${series}/instances/${sop}/frames/${slice.frame}`;
  const response = await request('GET', url, { headers: { Accept: RAW } });
  const meta = imageMeta(slice.meta);
  const bytes = firstPart(await response.arrayBuffer(), response.headers.get('content-type'));
  return makeImage(meta, typedPixels(bytes, meta.bitsAllocated, meta.signed));
}

export function Viewer({ study, series }) {
  const canvas = useRef(null);
  const [slices, setSlices] = useState(null);
  const [index, setIndex] = useState(0);
  const [win, setWin] = useState(null);
  const [probe, setProbe] = useState(null);
  const [error, setError] = useState('');
  const [loaded, setLoaded] = useState(0);
  const cache = useRef(new Map());
  const pending = useRef(new Map());
  const current = useRef(0);

  // Metadata of the series, then the slice list.
  useEffect(() => {
    let alive = true;
    cache.current = new Map();
    pending.current = new Map();
    getJSON(`/dicomweb/studies/${study}/series/${series}/metadata`)
      .then((md) => {
        if (!alive) return;
        const s = sliceOrder(md);
        if (!s.length) setError('This series has no images.');
        setSlices(s);
        const middle = Math.floor(s.length / 2);
        setIndex(middle);
      })
      .catch((e) => alive && setError(e.message));
    return () => { alive = false; };
  }, [study, series]);

  const fetchSlice = (i) => {
    if (cache.current.has(i)) return Promise.resolve(cache.current.get(i));
    if (pending.current.has(i)) return pending.current.get(i);
    const p = loadFrame(study, series, slices[i]).then((img) => {
      cache.current.set(i, img);
      pending.current.delete(i);
      setLoaded(cache.current.size);
      return img;
    }, (e) => { pending.current.delete(i); throw e; });
    pending.current.set(i, p);
    return p;
  };

  // Prefetch every slice, nearest to the one shown first.
  const prefetch = () => {
    if (!slices) return;
    const busy = () => pending.current.size;
    const next = () => {
      const c = current.current;
      for (let d = 0; d < slices.length; d++) {
        for (const i of [c + d, c - d]) {
          if (i >= 0 && i < slices.length && !cache.current.has(i) && !pending.current.has(i)) return i;
        }
      }
      return -1;
    };
    while (busy() < PREFETCH) {
      const i = next();
      if (i < 0) return;
      fetchSlice(i).then(prefetch, () => {});
    }
  };

  // Show the current slice (fetching it first when needed).
  useEffect(() => {
    if (!slices || !slices.length) return;
    current.current = index;
    let alive = true;
    fetchSlice(index).then((img) => {
      if (!alive) return;
      let w = win;
      if (!w) { w = defaultWindow(img); setWin(w); }
      draw(canvas.current, img, w[0], w[1]);
      Object.assign(canvas.current.dataset, { slice: String(index), center: String(w[0]), width: String(w[1]) });
      prefetch();
    }, (e) => alive && setError(e.message));
    return () => { alive = false; };
  }, [slices, index, win]);

  const step = (d) => slices && setIndex((i) => Math.max(0, Math.min(slices.length - 1, i + d)));

  const onWheel = (e) => { e.preventDefault(); step(e.deltaY > 0 ? 1 : -1); };
  const onKey = (e) => {
    if (e.target.tagName === 'INPUT') return; // the slider moves itself
    if (e.key === 'ArrowDown' || e.key === 'ArrowRight' || e.key === 'PageDown') { step(1); e.preventDefault(); }
    if (e.key === 'ArrowUp' || e.key === 'ArrowLeft' || e.key === 'PageUp') { step(-1); e.preventDefault(); }
  };

  // Drag: horizontal = width, vertical = center (as most viewers do).
  const onPointerDown = (e) => {
    if (!win) return;
    const start = [e.clientX, e.clientY];
    const [c0, w0] = win;
    const img = cache.current.get(index);
    const range = img && img.samples === 1 ? Math.max(1, img.max - img.min) : 256;
    const sensitivity = range / 500;
    canvas.current.setPointerCapture(e.pointerId);
    const move = (ev) => {
      const dx = ev.clientX - start[0], dy = ev.clientY - start[1];
      setWin([c0 + dy * sensitivity, Math.max(1, w0 + dx * sensitivity)]);
    };
    const up = () => {
      canvas.current.removeEventListener('pointermove', move);
      canvas.current.removeEventListener('pointerup', up);
    };
    canvas.current.addEventListener('pointermove', move);
    canvas.current.addEventListener('pointerup', up);
  };

  const onMove = (e) => {
    const img = cache.current.get(index);
    if (!img) return;
    const [x, y] = canvasPoint(canvas.current, e);
    const v = valueAt(img, x, y);
    setProbe(v === null ? null : { x, y, v });
  };

  if (error) return html`<p class="error">${error}</p>`;
  if (!slices) return html`<p class="muted">Loading the series…</p>`;
  const img = cache.current.get(index);
  const fmt = (v) => (Array.isArray(v) ? v.join(', ') : Number.isInteger(v) ? v : v.toFixed(2));
  return html`
    <div class="viewer" tabindex="0" onKeyDown=${onKey}>
      <div class="viewer-tools">
        <label>Slice <input type="range" min="0" max=${slices.length - 1} value=${index}
          onInput=${(e) => setIndex(Number(e.target.value))} /></label>
        <span class="slice-label">${index + 1} / ${slices.length}</span>
        <span class="muted">loaded ${loaded}</span>
        ${img && img.samples === 1 && html`
          <span>Window: <b class="window-label">C ${Math.round(win ? win[0] : 0)} W ${Math.round(win ? win[1] : 0)}</b></span>
          ${PRESETS.map((p) => html`<button class="small" onClick=${() => setWin([p.c, p.w])}>${p.name}</button>`)}
          <button class="small" onClick=${() => setWin(defaultWindow(img))}>Auto</button>`}
      </div>
      <canvas ref=${canvas} class="image" onWheel=${onWheel} onPointerDown=${onPointerDown}
        onPointerMove=${onMove} onPointerLeave=${() => setProbe(null)}></canvas>
      <div class="probe">${probe
        ? html`x ${probe.x}, y ${probe.y}: <b class="pixel-value">${fmt(probe.v)}</b>`
        : html`<span class="muted">Drag to change window/level; wheel or arrow keys to scroll.</span>`}</div>
    </div>`;
}
