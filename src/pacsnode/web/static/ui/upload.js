// Upload: files, folders and zips stored through STOW-RS, in batches, with
// progress from the browser's upload events.
import { html, useState } from './vendor/htm-preact-standalone-3.1.1.js';
import { authHeaders, HttpError, renewToken, TAG } from './api.js';
import { entries, isDicom } from './files.js';

const BATCH_BYTES = 32 * 1024 * 1024;
const BATCH_FILES = 50;

// One STOW-RS request; resolves to the counts {stored, failed}.
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
        reject(new HttpError(xhr.status, answer.error || `HTTP ${xhr.status}`));
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

  // Files are read and sent batch by batch: memory holds one batch (and
  // the zip being read), whatever the size of the folder.
  const start = async (fileList) => {
    if (!fileList || !fileList.length) return;
    const total = Array.from(fileList).reduce((n, f) => n + f.size, 0);
    const s = { phase: 'sending', sent: 0, total, stored: 0, failed: 0, skipped: 0, files: 0 };
    const show = (extra = {}) => setState({ ...s, ...extra });
    let batch = [], batchBytes = 0, batchShare = 0;
    const flush = async () => {
      if (!batch.length) return;
      const size = batchBytes, share = batchShare;
      const progress = (loaded) => show({ sent: s.sent + (share * Math.min(loaded, size)) / size });
      let result;
      try {
        result = await stow(batch, progress);
      } catch (e) {  // an access token that expired: renewed once, the batch sent again
        if (!(e instanceof HttpError && e.status === 401 && await renewToken())) throw e;
        result = await stow(batch, progress);
      }
      batch = []; batchBytes = 0; batchShare = 0;
      s.sent += share; s.stored += result.stored; s.failed += result.failed;
      show();
    };
    show();
    try {
      for await (const entry of entries(fileList)) {
        if (!isDicom(entry.bytes)) { s.skipped++; s.sent += entry.share; continue; }
        s.files++;
        batch.push(entry); batchBytes += entry.bytes.length; batchShare += entry.share;
        if (batchBytes >= BATCH_BYTES || batch.length >= BATCH_FILES) await flush();
      }
      await flush();
    } catch (e) {
      setState({ ...s, phase: 'error', message: `Upload stopped: ${e.message}` });
      return;
    }
    setState({ ...s, sent: total, phase: 'done' });
    if (onDone) onDone();
  };

  // Copied before the input is cleared (which empties its live FileList).
  const pick = (e) => { start(Array.from(e.target.files)); e.target.value = ''; };
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
      ${state && (state.phase === 'sending' || state.phase === 'done') && html`
        <progress max="100" value=${pct}></progress> <span>${pct}%</span>
        <p class="upload-result">${state.phase === 'done' ? 'Done: ' : ''}${state.stored} stored${state.failed ? `, ${state.failed} refused` : ''}${state.skipped ? `, ${state.skipped} not DICOM (skipped)` : ''} of ${state.files} files.</p>`}
      ${state && state.phase === 'error' && html`<p class="error">${state.message} (${state.stored} stored before)</p>`}
    </section>`;
}
