// The study list (QIDO-RS search with paging; each study's series classes),
// a study's page (series with thumbnails, counts, classes; ZIP download;
// delete) and the viewer page.
import { html, useEffect, useState } from './vendor/htm-preact-standalone-3.1.1.js';
import { allows, formatDate, getJSON, imageURL, request, token, value, values }
  from './api.js';
import { Viewer } from './viewer.js';

const PAGE = 25;

// QIDO-RS parameters from the search form (PS3.18 8.3.4).
function qido(form, offset) {
  const q = new URLSearchParams();
  const wild = (s) => (/[*?]/.test(s) ? s : `*${s}*`);
  if (form.patientName) q.set('PatientName', wild(form.patientName));
  if (form.patientID) q.set('PatientID', wild(form.patientID));
  const d = (s) => s.replaceAll('-', '');
  if (form.dateFrom || form.dateTo) q.set('StudyDate', `${d(form.dateFrom || '')}-${d(form.dateTo || '')}`);
  if (form.modality) q.set('ModalitiesInStudy', form.modality.toUpperCase());
  if (form.accession) q.set('AccessionNumber', wild(form.accession));
  if (form.description) q.set('StudyDescription', wild(form.description));
  for (const f of ['ModalitiesInStudy', 'NumberOfStudyRelatedSeries', 'NumberOfStudyRelatedInstances', 'StudyDescription']) {
    q.append('includefield', f);
  }
  q.set('limit', String(PAGE + 1));
  q.set('offset', String(offset));
  return q.toString();
}

// Classes of the series of a page of studies, in one request:
// StudyInstanceUID → its series' classes (each once, in series order).
async function studyClasses(studies) {
  const uids = studies.map((s) => value(s, 'StudyInstanceUID')).filter(Boolean);
  if (!uids.length) return {};
  const q = new URLSearchParams({ StudyInstanceUID: uids.join('\\'), limit: '100000' });
  const { results } = await getJSON(`/api/v1/series?${q}`);
  const out = {};
  for (const hit of results) {
    const list = out[hit.StudyInstanceUID] || (out[hit.StudyInstanceUID] = []);
    for (const c of hit.classes) if (!list.includes(c)) list.push(c);
  }
  return out;
}

export function StudyList({ me }) {
  const [form, setForm] = useState(() => {
    try { return JSON.parse(sessionStorage.getItem('pacsnode.search')) || {}; } catch (_) { return {}; }
  });
  const [offset, setOffset] = useState(0);
  const [result, setResult] = useState(null);
  const [error, setError] = useState('');
  const [classes, setClasses] = useState({});

  const search = (f, o) => {
    setError('');
    sessionStorage.setItem('pacsnode.search', JSON.stringify(f));
    getJSON(`/dicomweb/studies?${qido(f, o)}`).then(
      (studies) => {
        const page = studies.slice(0, PAGE);
        setResult({ studies: page, more: studies.length > PAGE });
        // Classes are extra: the list stands without them.
        studyClasses(page).then(setClasses, () => setClasses({}));
      },
      (e) => { setResult(null); setError(e.message); });
  };
  useEffect(() => search(form, offset), [offset]);

  const submit = (e) => { e.preventDefault(); if (offset) setOffset(0); else search(form, 0); };
  const field = (name, label, type = 'text') => html`
    <label>${label}<input type=${type} name=${name} value=${form[name] || ''}
      onInput=${(e) => setForm({ ...form, [name]: e.target.value })} /></label>`;
  return html`
    <section>
      <h2>Studies</h2>
      <form class="search" onSubmit=${submit}>
        ${field('patientName', 'Patient name')} ${field('patientID', 'Patient ID')}
        ${field('dateFrom', 'From', 'date')} ${field('dateTo', 'To', 'date')}
        ${field('modality', 'Modality')} ${field('accession', 'Accession')}
        ${field('description', 'Description')}
        <button type="submit">Search</button>
        <button type="button" class="secondary" onClick=${() => { setForm({}); setOffset(0); search({}, 0); }}>Clear</button>
      </form>
      ${error && html`<p class="error">${error}</p>`}
      ${result && html`
        <table class="studies">
          <thead><tr><th>Patient</th><th>ID</th><th>Date</th><th>Modalities</th><th>Description</th>
            <th>Accession</th><th>Series</th><th>Instances</th><th>Classes</th></tr></thead>
          <tbody>${result.studies.map((s) => html`
            <tr class="study-row" data-study=${value(s, 'StudyInstanceUID')}
              onClick=${() => { location.hash = `#/study/${value(s, 'StudyInstanceUID')}`; }}>
              <td class="patient-name">${value(s, 'PatientName')}</td><td>${value(s, 'PatientID')}</td>
              <td>${formatDate(value(s, 'StudyDate'))}</td><td>${values(s, 'ModalitiesInStudy').join(', ')}</td>
              <td>${value(s, 'StudyDescription')}</td><td>${value(s, 'AccessionNumber')}</td>
              <td class="num">${value(s, 'NumberOfStudyRelatedSeries')}</td>
              <td class="num">${value(s, 'NumberOfStudyRelatedInstances')}</td>
              <td class="classes">${(classes[value(s, 'StudyInstanceUID')] || []).map((c) => html`<span class="tag">${c}</span>`)}</td>
            </tr>`)}</tbody>
        </table>
        ${!result.studies.length && html`<p class="muted empty">No study matches.</p>`}
        <div class="pager">
          <button class="small" disabled=${offset === 0} onClick=${() => setOffset(Math.max(0, offset - PAGE))}>Previous</button>
          <span>${result.studies.length ? `${offset + 1}–${offset + result.studies.length}` : ''}</span>
          <button class="small" disabled=${!result.more} onClick=${() => setOffset(offset + PAGE)}>Next</button>
        </div>`}
    </section>`;
}

function Thumbnail({ study, series }) {
  const [src, setSrc] = useState(null);
  const [failed, setFailed] = useState(false);
  useEffect(() => {
    let url = null;
    imageURL(`/dicomweb/studies/${study}/series/${series}/thumbnail`).then(
      (u) => { url = u; setSrc(u); }, () => setFailed(true));
    return () => url && URL.revokeObjectURL(url);
  }, [study, series]);
  if (failed) return html`<div class="thumb none">no image</div>`;
  return src ? html`<img class="thumb" src=${src} alt="" />` : html`<div class="thumb"></div>`;
}

function Classes({ series }) {
  const [classes, setClasses] = useState(null);
  useEffect(() => {
    // Shown only when the node classifies series (404 otherwise).
    getJSON(`/api/v1/series/${series}/classification`).then((c) => setClasses(c.classes || []), () => {});
  }, [series]);
  if (!classes || !classes.length) return null;
  return html`<div class="classes">${classes.map((c) => html`<span class="tag">${typeof c === 'string' ? c : c.id || c.name || JSON.stringify(c)}</span>`)}</div>`;
}

// ZIP download: a plain link with auth off; with a token, fetched and saved
// (a link could not carry it).
function ZipLink({ study }) {
  const href = `/api/v1/studies/${study}/archive`;
  const [busy, setBusy] = useState('');
  if (!token()) return html`<a class="button" href=${href} download=${`${study}.zip`}>Download ZIP</a>`;
  const save = async (e) => {
    e.preventDefault();
    setBusy('…');
    try {
      const r = await request('GET', href);
      const url = URL.createObjectURL(await r.blob());
      const a = Object.assign(document.createElement('a'), { href: url, download: `${study}.zip` });
      a.click();
      setTimeout(() => URL.revokeObjectURL(url), 10000);
      setBusy('');
    } catch (err) { setBusy(` failed: ${err.message}`); }
  };
  return html`<a class="button" href=${href} onClick=${save}>Download ZIP${busy}</a>`;
}

export function StudyPage({ study, me, config }) {
  const [info, setInfo] = useState(null);
  const [series, setSeries] = useState(null);
  const [error, setError] = useState('');
  useEffect(() => {
    getJSON(`/dicomweb/studies?StudyInstanceUID=${study}&includefield=StudyDescription&includefield=NumberOfStudyRelatedInstances`)
      .then((s) => (s.length ? setInfo(s[0]) : setError('This study is not in the archive.')), (e) => setError(e.message));
    getJSON(`/dicomweb/studies/${study}/series?includefield=NumberOfSeriesRelatedInstances&includefield=SeriesDescription`)
      .then((s) => setSeries(s.sort((a, b) => (Number(value(a, 'SeriesNumber')) || 0) - (Number(value(b, 'SeriesNumber')) || 0))),
        (e) => setError(e.message));
  }, [study]);

  const remove = async () => {
    if (!confirm(`Delete this study (${value(info, 'PatientName')}, ${value(info, 'StudyDescription') || study}) and all its instances?`)) return;
    try {
      await request('DELETE', `/dicomweb/studies/${study}`);
      location.hash = '#/';
    } catch (e) { setError(`Delete failed: ${e.message}`); }
  };

  if (error) return html`<p class="error">${error}</p>`;
  if (!info) return html`<p class="muted">Loading…</p>`;
  return html`
    <section>
      <p><a href="#/">← Studies</a></p>
      <h2 class="study-title">${value(info, 'PatientName') || '(no name)'} <small>${value(info, 'PatientID')}</small></h2>
      <p>${formatDate(value(info, 'StudyDate'))} · ${value(info, 'StudyDescription')} · accession ${value(info, 'AccessionNumber') || '—'}
        · ${value(info, 'NumberOfStudyRelatedInstances')} instances</p>
      <div class="row">
        <${ZipLink} study=${study} />
        ${config.ohif && html`<a class="button" href=${`/ohif/viewer?StudyInstanceUIDs=${study}`}>Open in OHIF</a>`}
        ${allows(me, 'editor') && html`<button class="danger" onClick=${remove}>Delete study</button>`}
      </div>
      <p class="muted mono">${study}</p>
      <div class="series-grid">${(series || []).map((s) => {
        const uid = value(s, 'SeriesInstanceUID');
        return html`
          <a class="series-card" href=${`#/view/${study}/${uid}`} data-series=${uid}>
            <${Thumbnail} study=${study} series=${uid} />
            <div><b>${value(s, 'Modality')}</b> #${value(s, 'SeriesNumber')} ${value(s, 'SeriesDescription')}</div>
            <div class="muted">${value(s, 'NumberOfSeriesRelatedInstances')} instances</div>
            <${Classes} series=${uid} />
          </a>`;
      })}</div>
    </section>`;
}

export function ViewerPage({ study, series }) {
  const [info, setInfo] = useState(null);
  useEffect(() => {
    getJSON(`/dicomweb/studies/${study}/series?SeriesInstanceUID=${series}&includefield=SeriesDescription`)
      .then((s) => setInfo(s[0] || null), () => {});
  }, [study, series]);
  return html`
    <section>
      <p><a href=${`#/study/${study}`}>← Study</a>
        ${info && html` · <b>${value(info, 'Modality')}</b> #${value(info, 'SeriesNumber')} ${value(info, 'SeriesDescription')}`}</p>
      <${Viewer} study=${study} series=${series} />
    </section>`;
}
