// Remote DICOM nodes: the registry (/api/v1/nodes), C-ECHO, C-FIND through
// the node, retrieve jobs and their live progress (/api/v1/jobs).
import { html, useEffect, useState } from './vendor/htm-preact-standalone-3.1.1.js';
import { formatDate, getJSON, request, sendJSON } from './api.js';

const enc = encodeURIComponent;

export function Jobs({ refresh }) {
  const [jobs, setJobs] = useState([]);
  const [error, setError] = useState('');
  useEffect(() => {
    let alive = true;
    let timer = null;
    const poll = () => getJSON('/api/v1/jobs?limit=20').then(
      (j) => { if (alive) { setJobs(j.jobs); setError(''); } },
      (e) => alive && setError(e.message)).finally(() => { if (alive) timer = setTimeout(poll, 1000); });
    poll();
    return () => { alive = false; clearTimeout(timer); };
  }, [refresh]);
  const cancel = (id) => request('DELETE', `/api/v1/jobs/${id}`).catch((e) => setError(e.message));
  return html`
    <h3>Jobs</h3>
    ${error && html`<p class="error">${error}</p>`}
    ${!jobs.length ? html`<p class="muted">No job yet.</p>` : html`
    <table class="jobs"><thead><tr><th>Job</th><th>Node</th><th>What</th><th>State</th><th>Progress</th><th></th></tr></thead>
      <tbody>${jobs.map((j) => {
        const done = j.completed + j.warning;
        const ended = !['pending', 'running'].includes(j.state);
        const total = j.remaining != null ? done + j.failed + j.remaining : ended ? done + j.failed : null;
        return html`<tr class="job-row" data-job=${j.id} data-state=${j.state}>
          <td class="mono">${j.id.slice(0, 8)}</td><td>${j.node}</td>
          <td>${j.level} ${(j.series_uid || j.study_uid || '').slice(-16)}</td>
          <td class=${`state ${j.state}`}>${j.state}</td>
          <td>${total ? html`<progress max=${total} value=${done}></progress>` : ''}
            <span class="job-count">${done}${total ? ` / ${total}` : ''}${j.failed ? `, ${j.failed} failed` : ''}</span>
            ${j.error && html`<div class="muted">${j.error}</div>`}</td>
          <td>${(j.state === 'pending' || j.state === 'running') && html`<button class="small" onClick=${() => cancel(j.id)}>Cancel</button>`}</td>
        </tr>`;
      })}</tbody></table>`}`;
}

function AddNode({ onAdded }) {
  const [form, setForm] = useState({ name: '', aet: '', host: '127.0.0.1', port: '104' });
  const [error, setError] = useState('');
  const submit = async (e) => {
    e.preventDefault();
    setError('');
    try {
      await sendJSON('PUT', `/api/v1/nodes/${enc(form.name)}`, { aet: form.aet, host: form.host, port: Number(form.port) });
      setForm({ name: '', aet: '', host: '127.0.0.1', port: '104' });
      onAdded();
    } catch (err) { setError(err.message); }
  };
  const field = (name, label, type = 'text') => html`<label>${label}
    <input name=${name} type=${type} value=${form[name]} required onInput=${(e) => setForm({ ...form, [name]: e.target.value })} /></label>`;
  return html`<form class="add-node search" onSubmit=${submit}>
    ${field('name', 'Name')} ${field('aet', 'AE title')} ${field('host', 'Host')} ${field('port', 'Port', 'number')}
    <button type="submit">Add node</button>
    ${error && html`<p class="error">${error}</p>`}</form>`;
}

function Query({ nodes, onRetrieve }) {
  const [form, setForm] = useState({ node: '', PatientName: '', PatientID: '', StudyDate: '', ModalitiesInStudy: '', AccessionNumber: '' });
  const [results, setResults] = useState(null);
  const [error, setError] = useState('');
  const node = form.node || (nodes[0] && nodes[0].name) || '';
  const submit = async (e) => {
    e.preventDefault();
    setError(''); setResults(null);
    const query = {};
    for (const k of ['PatientName', 'PatientID', 'StudyDate', 'ModalitiesInStudy', 'AccessionNumber']) if (form[k]) query[k] = form[k];
    try {
      const r = await sendJSON('POST', `/api/v1/nodes/${enc(node)}/find`, {
        level: 'STUDY', query, limit: 200,
        fields: ['StudyInstanceUID', 'PatientName', 'PatientID', 'StudyDate', 'StudyDescription', 'ModalitiesInStudy', 'AccessionNumber', 'NumberOfStudyRelatedInstances'],
      });
      setResults(r.results);
    } catch (err) { setError(err.message); }
  };
  const retrieve = async (study) => {
    try {
      await sendJSON('POST', `/api/v1/nodes/${enc(node)}/retrieve`, { StudyInstanceUID: study });
      onRetrieve();
    } catch (err) { setError(err.message); }
  };
  const field = (name, label) => html`<label>${label}<input name=${name} value=${form[name]} onInput=${(e) => setForm({ ...form, [name]: e.target.value })} /></label>`;
  const text = (v) => (Array.isArray(v) ? v.join(', ') : v == null ? '' : String(v));
  return html`
    <h3>Query a node</h3>
    <form class="search remote-query" onSubmit=${submit}>
      <label>Node<select name="node" value=${node} onChange=${(e) => setForm({ ...form, node: e.target.value })}>
        ${nodes.map((n) => html`<option value=${n.name}>${n.name}</option>`)}</select></label>
      ${field('PatientName', 'Patient name')} ${field('PatientID', 'Patient ID')}
      ${field('StudyDate', 'Date (YYYYMMDD or range)')} ${field('ModalitiesInStudy', 'Modality')} ${field('AccessionNumber', 'Accession')}
      <button type="submit" disabled=${!node}>Query</button>
    </form>
    ${error && html`<p class="error">${error}</p>`}
    ${results && html`<table class="remote-results"><thead><tr><th>Patient</th><th>ID</th><th>Date</th><th>Modalities</th><th>Description</th><th>Instances</th><th></th></tr></thead>
      <tbody>${results.map((r) => html`<tr class="remote-row" data-study=${r.StudyInstanceUID}>
        <td>${text(r.PatientName)}</td><td>${text(r.PatientID)}</td><td>${formatDate(text(r.StudyDate))}</td>
        <td>${text(r.ModalitiesInStudy)}</td><td>${text(r.StudyDescription)}</td><td class="num">${text(r.NumberOfStudyRelatedInstances)}</td>
        <td><button class="small retrieve" onClick=${() => retrieve(r.StudyInstanceUID)}>Retrieve</button></td></tr>`)}</tbody></table>
      ${!results.length && html`<p class="muted">No match on ${node}.</p>`}`}`;
}

// OHIF's data source for a registered node (web/ohif.py): the gateway.
const ohifFor = (name) => `/ohif/?datasources=${enc(`remote-${name}`)}`;

export function Remote({ config = {} }) {
  const [nodes, setNodes] = useState(null);
  const [echo, setEcho] = useState({});
  const [error, setError] = useState('');
  const [jobsTick, setJobsTick] = useState(0);
  const load = () => getJSON('/api/v1/nodes').then((r) => setNodes(r.nodes), (e) => setError(e.message));
  useEffect(load, []);
  const doEcho = async (name) => {
    setEcho({ ...echo, [name]: '…' });
    try {
      const r = await sendJSON('POST', `/api/v1/nodes/${enc(name)}/echo`);
      setEcho((e) => ({ ...e, [name]: r.ok ? `ok (${Math.round(r.ms)} ms)` : `failed: ${r.error}` }));
    } catch (err) { setEcho((e) => ({ ...e, [name]: `failed: ${err.message}` })); }
  };
  const remove = async (name) => {
    if (!confirm(`Remove the node ${name}?`)) return;
    try { await request('DELETE', `/api/v1/nodes/${enc(name)}`); load(); } catch (err) { setError(err.message); }
  };
  return html`
    <section>
      <h2>Remote nodes</h2>
      ${error && html`<p class="error">${error}</p>`}
      ${nodes && html`<table class="nodes"><thead><tr><th>Name</th><th>AE title</th><th>Host</th><th>Port</th><th>From</th><th></th></tr></thead>
        <tbody>${nodes.map((n) => html`<tr class="node-row" data-node=${n.name}>
          <td>${n.name}</td><td>${n.aet}</td><td>${n.host}</td><td>${n.port}</td><td>${n.source}</td>
          <td><button class="small" onClick=${() => doEcho(n.name)}>Echo</button>
            ${config.ohif && html` <a class="button small open-ohif" href=${ohifFor(n.name)}>Browse in OHIF</a>`}
            ${n.source === 'runtime' && html` <button class="small secondary" onClick=${() => remove(n.name)}>Remove</button>`}
            <span class="echo-result">${echo[n.name] || ''}</span></td></tr>`)}</tbody></table>
        ${!nodes.length && html`<p class="muted">No remote node yet: add one below.</p>`}`}
      <${AddNode} onAdded=${load} />
      ${nodes && nodes.length > 0 && html`<${Query} nodes=${nodes} onRetrieve=${() => setJobsTick(jobsTick + 1)} />`}
      <${Jobs} refresh=${jobsTick} />
    </section>`;
}
