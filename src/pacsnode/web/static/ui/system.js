// Recent arrivals (the change feed, followed live) and the system page.
import { html, useEffect, useRef, useState } from './vendor/htm-preact-standalone-3.1.1.js';
import { allows, formatBytes, formatDate, getJSON, request, value } from './api.js';
import { Jobs } from './remote.js';

const BACKLOG = 500;   // changes shown from before the page opened
const RETRY_MS = 2000; // wait before following again after the stream broke

// The change feed as server-sent events (GET /api/v1/changes/stream), read
// with fetch because it carries the token (an EventSource cannot).  Calls
// onChanges with each batch; resolves to the last sequence number seen when
// the node ends the stream, rejects when it breaks.
async function follow(since, onChanges, signal) {
  const response = await request('GET', `/api/v1/changes/stream?since=${since}`,
    { headers: { Accept: 'text/event-stream' }, signal });
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = '';
  for (;;) {
    const { value: text, done } = await reader.read();
    if (done) return since;
    buffer += text;
    const batch = [];
    let end;
    while ((end = buffer.indexOf('\n\n')) >= 0) {
      const event = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let data = '';
      for (const line of event.split('\n')) {
        if (line.startsWith('id:')) since = Number(line.slice(3)) || since;
        else if (line.startsWith('data:')) data += line.slice(5);
      }
      if (data) batch.push(JSON.parse(data));
    }
    if (batch.length) onChanges(batch);
  }
}

export function Arrivals() {
  const [studies, setStudies] = useState([]);
  const [error, setError] = useState('');
  const byStudy = useRef(new Map());
  const info = useRef(new Map());

  useEffect(() => {
    let alive = true;
    const stop = new AbortController();
    const describe = (uid) => {
      if (info.current.has(uid)) return;
      info.current.set(uid, null);
      getJSON(`/dicomweb/studies?StudyInstanceUID=${uid}&includefield=StudyDescription`).then((r) => {
        info.current.set(uid, r[0] || { gone: true });
        if (alive) setStudies([...byStudy.current.values()]);
      }, () => {});
    };
    const take = (changes) => {
      for (const c of changes) {
        if (c.level !== 'instance') continue;
        const s = byStudy.current.get(c.study_uid) || { uid: c.study_uid, stored: 0, deleted: 0, at: c.at };
        if (c.action === 'deleted') s.deleted++; else s.stored++;
        s.at = c.at;
        byStudy.current.delete(c.study_uid);
        byStudy.current.set(c.study_uid, s); // most recent last
        describe(c.study_uid);
      }
      if (alive) { setStudies([...byStudy.current.values()]); setError(''); }
    };
    (async () => {
      let since = 0;
      try {
        since = Math.max(0, (await getJSON('/api/v1/changes/latest')).seq - BACKLOG);
      } catch (e) { setError(e.message); return; }
      while (alive) {
        try {
          since = await follow(since, (changes) => {
            take(changes);
            since = changes[changes.length - 1].seq;
          }, stop.signal);
        } catch (e) {
          if (!alive) return;
          setError(`The live feed broke (${e.message}); following again…`);
        }
        await new Promise((resume) => setTimeout(resume, RETRY_MS));
      }
    })();
    return () => { alive = false; stop.abort(); };
  }, []);

  const rows = [...studies].reverse().slice(0, 50);
  return html`
    <section>
      <h2>Recent arrivals</h2>
      <p class="muted">Studies as instances arrive or leave, newest first; updates live.</p>
      ${error && html`<p class="error">${error}</p>`}
      <table class="arrivals"><thead><tr><th>Last change</th><th>Patient</th><th>Date</th><th>Description</th><th>Stored</th><th>Deleted</th></tr></thead>
        <tbody>${rows.map((s) => {
          const i = info.current.get(s.uid);
          return html`<tr class="arrival-row" data-study=${s.uid}
            onClick=${() => i && !i.gone && (location.hash = `#/study/${s.uid}`)}>
            <td>${new Date(s.at).toLocaleTimeString()}</td>
            <td>${i ? (i.gone ? html`<span class="muted">(no longer stored)</span>` : value(i, 'PatientName')) : '…'}</td>
            <td>${i && !i.gone ? formatDate(value(i, 'StudyDate')) : ''}</td>
            <td>${i && !i.gone ? value(i, 'StudyDescription') : ''}</td>
            <td class="num arrival-stored">${s.stored}</td><td class="num">${s.deleted || ''}</td></tr>`;
        })}</tbody></table>
      ${!rows.length && html`<p class="muted">Nothing has arrived yet.</p>`}
    </section>`;
}

export function System({ me, config }) {
  const [stats, setStats] = useState(undefined);
  const [health, setHealth] = useState('');
  useEffect(() => {
    getJSON('/api/v1/statistics').then(setStats, () => setStats(null));
    getJSON('/api/v1/health').then((h) => setHealth(h.status), (e) => setHealth(e.message));
  }, []);
  const row = (label, v, cls = '') => html`<tr><th>${label}</th><td class=${cls}>${v}</td></tr>`;
  return html`
    <section>
      <h2>System</h2>
      <table class="system">
        ${row('Version', config.version || '')}
        ${row('Health', health)}
        ${me.auth === 'on' && row('Signed in as', `${me.user} (${me.role || 'no role'})`)}
        ${stats && html`
          ${row('Patients', stats.patients, 'num stat-patients')}
          ${row('Studies', stats.studies, 'num stat-studies')}
          ${row('Series', stats.series, 'num')}
          ${row('Instances', stats.instances, 'num stat-instances')}
          ${row('Stored', formatBytes(stats.bytes), 'num')}
          ${row('Disk free', formatBytes(stats.disk_free), 'num')}`}
      </table>
      ${stats === null && html`<p class="muted">This node does not report statistics (no /api/v1/statistics).</p>`}
      ${allows(me, 'operator') && html`<${Jobs} />`}
    </section>`;
}
