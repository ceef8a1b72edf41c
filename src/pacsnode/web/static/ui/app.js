// The pacsnode UI: a single page (Preact + htm, no build step) over the
// node's own APIs.  Views are chosen by the URL's hash (#/study/UID …);
// /ui/inspect is the local file inspector.
import { html, render, useEffect, useState } from './vendor/htm-preact-standalone-3.1.1.js';
import { allows, getJSON, HttpError, ROLES, setToken, SIGNED_OUT_EVENT, token } from './api.js';
import * as oidcLogin from './oidc.js';
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

// Sign in: at the OIDC provider when the node offers it, or with a token
// pasted here (an API token, or an access token got elsewhere).
function Login({ why, config, onToken, onSignOut }) {
  const [value, setValue] = useState('');
  const [busy, setBusy] = useState(false);
  const [problem, setProblem] = useState('');
  const submit = (e) => { e.preventDefault(); onToken(value.trim()); };
  const oidc = oidcLogin.offered(config) ? config.oidc : null;
  const blocked = oidc ? oidcLogin.cannotSignIn() : '';
  const provider = () => {
    setBusy(true);
    oidcLogin.beginSignIn().catch((e) => { setBusy(false); setProblem(e.message); });
  };
  const tokenForm = html`
    <form class="token-login" onSubmit=${submit}>
      <input type="password" name="token" placeholder="Token" value=${value}
        onInput=${(e) => setValue(e.target.value)} autocomplete="off" />
      <button type="submit" class=${oidc ? 'secondary' : ''}>Sign in with the token</button>
      <p class="muted">The token is kept in this tab only (sessionStorage).</p>
    </form>`;
  return html`
    <section class="login">
      <h2>Sign in</h2>
      ${why && html`<p class="error login-why">${why}</p>`}
      ${(problem || blocked) && html`<p class="error">${problem || blocked}</p>`}
      ${config && config.oidc && config.oidc.error && html`<p class="error">${config.oidc.error}</p>`}
      ${oidc && html`
        <p>This node signs you in with <b>${new URL(oidc.issuer).host}</b>.</p>
        <button class="oidc-sign-in" disabled=${busy || !!blocked} onClick=${provider}>Sign in</button>
        ${token() && html` <button class="secondary" onClick=${onSignOut}>Sign in as someone else</button>`}
        <details class="token-login"><summary>Use an API token instead</summary>${tokenForm}</details>`}
      ${!oidc && html`
        <p>This node asks for an access token (<code>pacsnode token create</code>, or an OIDC access token).</p>
        ${tokenForm}`}
    </section>`;
}

const inspecting = () => location.pathname.replace(/\/+$/, '').endsWith('/ui/inspect');

// The least role of a view, when it needs more than a reader's.
const NEEDS = { upload: 'writer', remote: 'operator' };

function View({ hash, me, config }) {
  const parts = hash.replace(/^#\/?/, '').split('/').map(decodeURIComponent);
  if (inspecting()) return html`<${Inspect} />`;
  const needed = NEEDS[parts[0]];
  if (needed && !allows(me, needed)) {
    return html`<p class="error need-role">This page needs the role ${needed} (or higher);
      you have the role ${me.role || 'none'}.</p>`;
  }
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

function refusal(e) {
  if (!(e instanceof HttpError)) return `The node did not answer: ${e.message}`;
  if (e.status === 403) {
    const who = oidcLogin.displayName();
    return `You are signed in${who ? ` as ${who}` : ''}, but this node refused: ${e.message}. ` +
      `Ask its administrator for one of the roles ${ROLES.join(', ')}.`;
  }
  if (e.status === 401) return token() ? `The node refused this credential: ${e.message}` : '';
  return `The node did not answer: ${e.message}`;
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
      setMe(null);
      setLoginWhy(refusal(e));
    }
  };
  useEffect(() => {
    const expired = (e) => {
      setMe(null);
      setLoginWhy(`Signed out: ${e.detail}. Sign in again.`);
    };
    window.addEventListener(SIGNED_OUT_EVENT, expired);
    (async () => {
      const c = await getJSON('/ui/config.json').catch(() => ({}));
      setConfig(c);
      if (inspecting()) return;
      if (oidcLogin.offered(c)) {
        oidcLogin.install(c);
        if (oidcLogin.atCallback()) {
          try {
            if (!await oidcLogin.finishSignIn()) { setLoginWhy(''); return; }
          } catch (e) {
            setLoginWhy(e.message);
            return;
          }
        }
      } else if (oidcLogin.atCallback()) {
        history.replaceState(null, '', '/ui/');
      }
      if (c.auth === 'on' && !token()) setLoginWhy('');  // nothing to ask the node with yet
      else signIn();
    })();
    return () => window.removeEventListener(SIGNED_OUT_EVENT, expired);
  }, []);

  const onToken = (t) => { oidcLogin.signOut(); setToken(t); signIn(); };
  const signOut = () => {
    const away = oidcLogin.signOut();  // forgets the token too
    if (away) { location.assign(away); return; }
    setMe(null);
    setLoginWhy('');
  };
  const who = me && me.auth === 'on' && (me.kind === 'oidc' && oidcLogin.displayName() || me.user);
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
      <span class="who">${who && html`${who} (${me.role || 'no role'}) <button class="small" onClick=${signOut}>Sign out</button>`}</span>
    </header>
    <main>
      ${inspecting() ? html`<${Inspect} />`
        : loginWhy !== null ? html`<${Login} why=${loginWhy} config=${config} onToken=${onToken} onSignOut=${signOut} />`
        : me ? html`<${View} hash=${hash} me=${me} config=${config || {}} />`
        : html`<p class="muted">Connecting…</p>`}
    </main>`;
}

render(html`<${App} />`, document.getElementById('app'));
