// /ui/inspect: DICOM files, folders or zips from the user's disk parsed
// here (dicom-parser) and shown as a searchable tag tree, with the image when
// its pixel data is native or baseline JPEG.  Nothing is sent to the node:
// the only request is for the data dictionary (tag names), a GET without a
// body.
import { html, useEffect, useRef, useState } from './vendor/htm-preact-standalone-3.1.1.js';
import { readFiles } from './files.js';
import { defaultWindow, draw, makeImage, typedPixels } from './pixels.js';

const NATIVE_LE = ['1.2.840.10008.1.2', '1.2.840.10008.1.2.1'];
const JPEG_BASELINE = '1.2.840.10008.1.2.4.50'; // the one the browser decodes itself
const TEXT_VRS = new Set(['AE', 'AS', 'CS', 'DA', 'DS', 'DT', 'IS', 'LO', 'LT', 'PN', 'SH', 'ST', 'TM', 'UC', 'UI', 'UR', 'UT']);
const NUMBER_VRS = { US: [2, 'uint16'], SS: [2, 'int16'], UL: [4, 'uint32'], SL: [4, 'int32'], FL: [4, 'float'], FD: [8, 'double'] };

let dictionary = null;
async function loadDictionary() {
  if (!dictionary) {
    const r = await fetch('/ui/dictionary.json');
    dictionary = r.ok ? await r.json() : {};
  }
  return dictionary;
}

const tagKey = (t) => t.slice(1).toUpperCase(); // 'x00100010' -> '00100010'
const tagLabel = (t) => `(${t.slice(1, 5)},${t.slice(5, 9)})`.toUpperCase();

function elementValue(ds, el, vr) {
  if (el.items) return `${el.items.length} item${el.items.length === 1 ? '' : 's'}`;
  if (el.fragments) return `${el.fragments.length} fragments (encapsulated)`;
  if (TEXT_VRS.has(vr)) {
    const s = ds.string(el.tag);
    return s === undefined ? '' : s;
  }
  if (NUMBER_VRS[vr]) {
    const [size, kind] = NUMBER_VRS[vr];
    const n = Math.floor(el.length / size);
    const shown = [];
    for (let i = 0; i < Math.min(n, 16); i++) shown.push(ds[kind](el.tag, i));
    return shown.join('\\') + (n > 16 ? ` … (${n} values)` : '');
  }
  if (vr === 'AT' && el.length >= 4) return ds.attributeTag(el.tag) || '';
  return `(${el.length} bytes)`;
}

// The data set as rows {tag, vr, keyword, name, value, items?}.
function rowsOf(ds, dict) {
  return Object.keys(ds.elements).sort().map((t) => {
    const el = ds.elements[t];
    const entry = dict[tagKey(t)] || [];
    const vr = el.vr || entry[0] || (el.items ? 'SQ' : 'UN');
    const row = { tag: t, vr, keyword: entry[1] || '', name: entry[2] || (parseInt(t.slice(5), 16) === 0 ? 'Group Length' : ''), value: '' };
    try { row.value = elementValue(ds, el, vr); } catch (e) { row.value = `(unreadable: ${e.message})`; }
    if (el.items) row.items = el.items.map((item) => (item.dataSet ? rowsOf(item.dataSet, dict) : []));
    return row;
  });
}

function matches(row, q) {
  if (!q) return true;
  const hay = `${tagLabel(row.tag)} ${row.keyword} ${row.name} ${row.value}`.toLowerCase();
  if (hay.includes(q)) return true;
  return !!row.items && row.items.some((item) => item.some((r) => matches(r, q)));
}

function TagRows({ rows, query, depth }) {
  return rows.filter((r) => matches(r, query)).map((r) => html`
    <tr class="tag-row" data-keyword=${r.keyword}>
      <td style=${`padding-left:${0.4 + depth * 1.2}em`} class="mono">${tagLabel(r.tag)}</td>
      <td class="mono">${r.vr}</td><td title=${r.name}>${r.keyword || r.name}</td>
      <td class="tag-value">${r.value}</td>
    </tr>
    ${r.items && r.items.map((item, i) => html`
      <tr class="item-row"><td colspan="4" style=${`padding-left:${1.6 + depth * 1.2}em`}>Item ${i + 1}</td></tr>
      <${TagRows} rows=${item} query=${query} depth=${depth + 1} />`)}`);
}

// The first frame, when it is native little-endian pixel data.
function imageOf(ds) {
  const ts = ds.string('x00020010');
  const px = ds.elements.x7fe00010;
  const rows = ds.uint16('x00280010'), columns = ds.uint16('x00280011');
  if (!px || !rows || !columns) return { why: 'no image' };
  if (ts && !NATIVE_LE.includes(ts.trim())) return { why: `compressed pixel data (${ts}) is not decoded in the browser` };
  const samples = ds.uint16('x00280002') || 1;
  const bits = ds.uint16('x00280100') || 16;
  const bytes = (rows * columns * samples * bits) / 8;
  if (px.length < bytes) return { why: 'pixel data shorter than the image' };
  const raw = new Uint8Array(ds.byteArray.buffer, ds.byteArray.byteOffset + px.dataOffset, bytes);
  const signed = ds.uint16('x00280103') === 1;
  const num = (t, d) => { const v = parseFloat(ds.string(t)); return Number.isFinite(v) ? v : d; };
  const wc = num('x00281050', NaN), ww = num('x00281051', NaN);
  const meta = { rows, columns, samples, planar: ds.uint16('x00280006') === 1,
    photometric: (ds.string('x00280004') || 'MONOCHROME2').trim(), bitsAllocated: bits, signed,
    slope: num('x00281053', 1), intercept: num('x00281052', 0),
    window: Number.isFinite(wc) && Number.isFinite(ww) ? [wc, ww] : null };
  return { image: makeImage(meta, typedPixels(raw, bits, signed)) };
}

// The first frame of baseline JPEG pixel data (8-bit), as the browser decodes it.
async function jpegFrame(ds, canvas) {
  const px = ds.elements.x7fe00010;
  const frames = parseInt(ds.string('x00280008') || '1', 10) || 1;
  const dp = window.dicomParser;
  const bytes = frames === 1
    ? dp.readEncapsulatedPixelDataFromFragments(ds, px, 0, px.fragments.length)
    : px.basicOffsetTable && px.basicOffsetTable.length
      ? dp.readEncapsulatedImageFrame(ds, px, 0)
      : dp.readEncapsulatedPixelDataFromFragments(ds, px, 0, 1);
  const bitmap = await createImageBitmap(new Blob([bytes], { type: 'image/jpeg' }));
  canvas.width = bitmap.width;
  canvas.height = bitmap.height;
  canvas.getContext('2d').drawImage(bitmap, 0, 0);
}

function Preview({ ds }) {
  const canvas = useRef(null);
  const [why, setWhy] = useState('');
  useEffect(() => {
    const fail = (e) => setWhy(`cannot show the image: ${e.message || e}`);
    try {
      const ts = (ds.string('x00020010') || '').trim();
      if (ts === JPEG_BASELINE && ds.elements.x7fe00010) {
        setWhy('');
        jpegFrame(ds, canvas.current).catch(fail);
        return;
      }
      const r = imageOf(ds);
      if (r.image) {
        const [c, w] = defaultWindow(r.image);
        draw(canvas.current, r.image, c, w);
        setWhy('');
      } else setWhy(r.why);
    } catch (e) { fail(e); }
  }, [ds]);
  return html`<div class="preview">
    <canvas ref=${canvas} class="image" hidden=${!!why}></canvas>
    ${why && html`<p class="muted">Image: ${why}.</p>`}</div>`;
}

export function Inspect() {
  const [files, setFiles] = useState([]);
  const [selected, setSelected] = useState(0);
  const [query, setQuery] = useState('');
  const [busy, setBusy] = useState('');

  const open = async (fileList) => {
    if (!fileList || !fileList.length) return;
    setBusy('Reading…');
    const dict = await loadDictionary();
    const parsed = [];
    for (const f of await readFiles(fileList)) {
      try {
        const ds = window.dicomParser.parseDicom(f.bytes);
        parsed.push({ name: f.name, ds, rows: rowsOf(ds, dict) });
      } catch (e) {
        parsed.push({ name: f.name, error: typeof e === 'string' ? e : e.message || String(e) });
      }
    }
    setFiles(parsed);
    setSelected(0);
    setBusy('');
  };

  // Copied before the input is cleared (which empties its live FileList).
  const pick = (e) => { open(Array.from(e.target.files)); e.target.value = ''; };
  const drop = (e) => { e.preventDefault(); open(e.dataTransfer.files); };
  const current = files[selected];
  return html`
    <section onDragOver=${(e) => e.preventDefault()} onDrop=${drop}>
      <h2>Inspect files</h2>
      <p class="muted">DICOM files, a folder or zips from your disk are read in this browser: nothing is sent to the node.</p>
      <div class="row">
        <label class="button">Files or zips<input type="file" multiple hidden data-inspect="files" onChange=${pick} /></label>
        <label class="button">A folder<input type="file" webkitdirectory multiple hidden data-inspect="folder" onChange=${pick} /></label>
        <input type="search" placeholder="Search tags and values" value=${query}
          onInput=${(e) => setQuery(e.target.value.toLowerCase())} class="inspect-search" />
      </div>
      ${busy && html`<p>${busy}</p>`}
      <div class="inspect">
        <ul class="file-list">${files.map((f, i) => html`
          <li class=${i === selected ? 'selected' : ''} onClick=${() => setSelected(i)}>${f.name}${f.error ? ' ⚠' : ''}</li>`)}
        </ul>
        <div class="inspect-main">
          ${current && current.error && html`<p class="error">${current.name}: not readable as DICOM (${current.error}).</p>`}
          ${current && current.ds && html`
            <${Preview} ds=${current.ds} />
            <table class="tags"><thead><tr><th>Tag</th><th>VR</th><th>Name</th><th>Value</th></tr></thead>
              <tbody><${TagRows} rows=${current.rows} query=${query} depth=${0} /></tbody></table>`}
        </div>
      </div>
    </section>`;
}
