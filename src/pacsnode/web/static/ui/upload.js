// Upload: files, folders and zips stored through STOW-RS, in batches, with
// progress from the browser's upload events.
import { html, useState } from '../vendor/htm-preact-standalone-3.1.1.js';
import { authHeaders, TAG } from './api.js';
import { isDicom, readFiles } from './files.js';

const BATCH_BYTES = 32 * 1024 * 1024;
const BATCH_FILES = 50;

function batches(files) {
  const out = [];
  let cur = [], size = 0;
  for (const f of files) {
    if (cur.length && (size + f.bytes.length > BATCH_BYTES || cur.length >= BATCH_FILES)) {
      out.push(cur); cur = []; size = 0;
    }
    cur.push(f); size += f.bytes.length;
  }
  if (cur.length) out.push(cur);
  return out;
}

// One STOW-RS request; resolves to {stored, failed, reasons}.
function stow(batch, onBytes) {
  const boundary = 'pacsnode-ui-' + Math.random().toString(16).slice(2);
  const parts = [];
  for (const f of batch) {
    parts.push(`--${boundary}\r\nContent-Type: application/dicom\r\n\r\n`, f.bytes, '\r\n');
  }
  parts.push(`--${boundary}--\r\n`);
  const body = new Blob(parts);
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open('POST', '/dicomweb/studies');
    const headers = authHeaders({
      'Content-Type': `multipart/related; type="application/dicom"; boundary=${boundary}`,
      Accept: 'application/dicom+json',
    });
    for (const [k, v] of Object.entries(headers)) xhr.setRequestHeader(k, v);
    xhr.upload.onprogress = (e) => onBytes(e.loaded);
    xhr.onerror = () => reject(new Error('the node could not be reached'));
    xhr.onload = () => {
      let answer = {};
      try { answer = JSON.parse(xhr.responseText || '{}'); } catch (_) { /* not JSON */ }
      if (xhr.status >= 400 && xhr.status !== 409) {
        reject(new Error(answer.error || `HTTP ${xhr.status}`));
        return;
      }
      const seq = (tag) => (answer[tag] && answer[tag].Value) || [];
      resolve({ stored: seq(TAG.ReferencedSOPSequence).length, failed: seq(TAG.FailedSOPSequence).length });
    };
    xhr.send(body);
  });
}

export function Upload({ onDone }) {
  const [state, setState] = useState(null);

  const start = async (fileList) => {
    if (!fileList || !fileList.length) return;
    setState({ phase: 'reading', done: 0, total: fileList.length });
    let files;
    try {
      files = await readFiles(fileList, (done, total) => setState({ phase: 'reading', done, total }));
    } catch (e) {
      setState({ phase: 'error', message: `Could not read the files: ${e.message}` });
      return;
    }
    const dicom = files.filter((f) => isDicom(f.bytes));
    const skipped = files.length - dicom.length;
    const total = dicom.reduce((n, f) => n + f.bytes.length, 0);
    let sent = 0, stored = 0, failed = 0;
    setState({ phase: 'sending', sent, total, stored, failed, skipped, files: dicom.length });
    try {
      for (const batch of batches(dicom)) {
        const size = batch.reduce((n, f) => n + f.bytes.length, 0);
        const result = await stow(batch, (loaded) =>
          setState({ phase: 'sending', sent: sent + Math.min(loaded, size), total, stored, failed, skipped, files: dicom.length }));
        sent += size; stored += result.stored; failed += result.failed;
        setState({ phase: 'sending', sent, total, stored, failed, skipped, files: dicom.length });
      }
    } catch (e) {
      setState({ phase: 'error', message: `Upload stopped: ${e.message}`, stored, failed, skipped });
      return;
    }
    setState({ phase: 'done', sent, total, stored, failed, skipped, files: dicom.length });
    if (onDone) onDone();
  };

  const pick = (e) => { start(e.target.files); e.target.value = ''; };
  const drop = (e) => { e.preventDefault(); start(e.dataTransfer.files); };
  const pct = state && state.total ? Math.round((100 * state.sent) / state.total) : 0;
  return html`
    <section class="upload" onDragOver=${(e) => e.preventDefault()} onDrop=${drop}>
      <h2>Upload</h2>
      <p class="muted">DICOM files, a folder, or zips of them (drop them here). They are stored through STOW-RS.</p>
      <div class="row">
        <label class="button">Files or zips<input type="file" multiple hidden data-upload="files" onChange=${pick} /></label>
        <label class="button">A folder<input type="file" webkitdirectory multiple hidden data-upload="folder" onChange=${pick} /></label>
      </div>
      ${state && state.phase === 'reading' && html`<p>Reading ${state.done} / ${state.total}…</p>`}
      ${state && (state.phase === 'sending' || state.phase === 'done') && html`
        <progress max="100" value=${pct}></progress> <span>${pct}%</span>
        <p class="upload-result">${state.phase === 'done' ? 'Done: ' : ''}${state.stored} stored${state.failed ? `, ${state.failed} refused` : ''}${state.skipped ? `, ${state.skipped} not DICOM (skipped)` : ''} of ${state.files} files.</p>`}
      ${state && state.phase === 'error' && html`<p class="error">${state.message}</p>`}
    </section>`;
}
