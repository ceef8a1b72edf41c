// The pacsnode UI: a single page (Preact + htm, no build step) over the
// node's own APIs.  Views are chosen by the URL's hash (#/study/UID …);
// /ui/inspect is the local file inspector.
import { html, render, useEffect, useState } from './vendor/htm-preact-standalone-3.1.1.js';
import { allows, getJSON, HttpError, setToken, token } from './api.js';
import { Inspect } from './inspect.js';
import { Upload } from './upload.js';
import { StudyList, StudyPage, ViewerPage } from './studies.js';
import { Remote } from './remote.js';
import { Arrivals, System } from './system.js';

function useHash() {
  const [hash, setHash] = useState(location.hash);
  useEffect(() => {
    const on = () => setHash(location.hash);
    window.addEventListener('hashchange', on);
    return () => window.removeEventListener('hashchange', on);
  }, []);
  return hash;
}

function Login({ why, onToken }) {
  const [value, setValue] = useState('');
  const submit = (e) => { e.preventDefault(); onToken(value.trim()); };
  return html`
    <form class="login" onSubmit=${submit}>
      <h2>Sign in</h2>
      <p>This node asks for an access token (<code>pacsnode token create</code>, or an OIDC access token).</p>
      ${why && html`<p class="error">${why}</p>`}
      <input type="password" name="token" placeholder="Token" value=${value}
        onInput=${(e) => setValue(e.target.value)} autocomplete="off" />
      <button type="submit">Sign in</button>
      <p class="muted">The token is kept in this tab only (sessionStorage).</p>
    </form>`;
}

const inspecting = () => location.pathname.replace(/\/+$/, '').endsWith('/ui/inspect');

function View({ hash, me, config }) {
  const parts = hash.replace(/^#\/?/, '').split('/').map(decodeURIComponent);
  if (inspecting()) return html`<${Inspect} />`;
  switch (parts[0]) {
    case 'study': return html`<${StudyPage} study=${parts[1]} me=${me} config=${config} />`;
    case 'view': return html`<${ViewerPage} study=${parts[1]} series=${parts[2]} />`;
    case 'upload': return html`<${Upload} />`;
    case 'remote': return html`<${Remote} me=${me} config=${config} />`;
    case 'arrivals': return html`<${Arrivals} />`;
    case 'system': return html`<${System} me=${me} config=${config} />`;
    default: return html`<${StudyList} me=${me} />`;
  }
}

function App() {
  const hash = useHash();
  const [config, setConfig] = useState(null);
  const [me, setMe] = useState(null);
  const [loginWhy, setLoginWhy] = useState(null);

  const signIn = async () => {
    try {
      setMe(await getJSON('/api/v1/me'));
      setLoginWhy(null);
    } catch (e) {
      if (e instanceof HttpError && (e.status === 401 || e.status === 403)) {
        setLoginWhy(token() ? `The node refused this token: ${e.message}` : '');
      } else {
        setLoginWhy(`The node did not answer: ${e.message}`);
      }
    }
  };
  useEffect(() => {
    getJSON('/ui/config.json').then(setConfig, () => setConfig({}));
    if (!inspecting()) signIn();
  }, []);

  const onToken = (t) => { setToken(t); signIn(); };
  const signOut = () => { setToken(''); setMe(null); setLoginWhy(''); };
  const here = inspecting() ? 'inspect' : (hash.replace(/^#\/?/, '').split('/')[0] || 'studies');
  const link = (href, key, label) => html`<a href=${href} class=${here === key ? 'active' : ''}>${label}</a>`;
  return html`
    <header>
      <a class="brand" href="/ui/#/">pacsnode</a>
      <nav>
        ${link('/ui/#/', 'studies', 'Studies')}
        ${link('/ui/#/arrivals', 'arrivals', 'Arrivals')}
        ${(!me || allows(me, 'writer')) && link('/ui/#/upload', 'upload', 'Upload')}
        ${(!me || allows(me, 'operator')) && link('/ui/#/remote', 'remote', 'Remote nodes')}
        ${link('/ui/#/system', 'system', 'System')}
        ${link('/ui/inspect', 'inspect', 'Inspect files')}
        ${config && config.ohif && html`<a href="/ohif/">OHIF</a>`}
      </nav>
      <span class="who">${me && me.auth === 'on' && html`${me.user} (${me.role || 'no role'}) <button class="small" onClick=${signOut}>Sign out</button>`}</span>
    </header>
    <main>
      ${inspecting() ? html`<${Inspect} />`
        : loginWhy !== null ? html`<${Login} why=${loginWhy} onToken=${onToken} />`
        : me ? html`<${View} hash=${hash} me=${me} config=${config || {}} />`
        : html`<p class="muted">Connecting…</p>`}
    </main>`;
}

render(html`<${App} />`, document.getElementById('app'));
