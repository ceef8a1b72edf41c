// Signing in at the OIDC provider: the authorization code flow with PKCE
// (RFC 7636, S256), done by the page as a public client — no client secret,
// no library: crypto.getRandomValues and crypto.subtle for the verifier and
// its challenge, fetch for the token endpoint.  The node says where the
// provider's endpoints are (GET /ui/config.json → oidc, web/oidc_login.py).
//
// The access token is kept where a pasted API token is (sessionStorage
// 'pacsnode.token', so OHIF at /ohif/ in this tab sends it too); the refresh
// token, the ID token (for the name shown and for signing out), the expiry
// and where to renew under 'pacsnode.oidc'.  All of it lives in this tab only.
import { setRenewer, setToken } from './api.js';

const SESSION_KEY = 'pacsnode.oidc';
const PENDING_KEY = 'pacsnode.oidc.pending';
// Where the provider sends the user back, with ?code=…&state=… (and after
// signing out there, with nothing).
export const CALLBACK = '/ui/callback';
// A token is renewed this long before it expires.
const RENEW_BEFORE_MS = 30_000;

let provider = null;  // config.oidc of the node
let timer = null;

const redirectURI = () => location.origin + CALLBACK;

function base64url(bytes) {
  let text = '';
  for (const b of bytes) text += String.fromCharCode(b);
  return btoa(text).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
}

const randomText = (n) => base64url(crypto.getRandomValues(new Uint8Array(n)));

async function challengeOf(verifier) {
  const digest = await crypto.subtle.digest('SHA-256', new TextEncoder().encode(verifier));
  return base64url(new Uint8Array(digest));
}

function readJSON(key) {
  try { return JSON.parse(sessionStorage.getItem(key) || 'null'); } catch (_) { return null; }
}

// The tab's OIDC sign-in ({refresh, id_token, expires_at}), or null.
export const session = () => readJSON(SESSION_KEY);

// Whether the node offers OIDC sign-in: config.oidc with its endpoints.
export const offered = (config) => !!(config && config.oidc && config.oidc.authorization_endpoint);

export const atCallback = () => location.pathname.replace(/\/+$/, '') === CALLBACK;

// Why this page cannot do the flow ('' when it can): crypto.subtle exists
// only in a secure context (https, or http on localhost / 127.0.0.1).
export function cannotSignIn() {
  if (window.isSecureContext && window.crypto && crypto.subtle) return '';
  return 'Signing in with the provider needs this page to be opened over https (or on ' +
    'localhost): the browser offers the cryptography PKCE needs only there.';
}

// Called once the node's config is known: renew tokens from now on.
export function install(config) {
  provider = config.oidc;
  setRenewer(renew);
  schedule();
}

// For a page of this tab other than the UI (OHIF's app-config.js imports
// this): renew the UI's OIDC access token before it expires, from what the
// sign-in left in sessionStorage.
export function keepRenewing() {
  const s = session();
  if (!s || !s.token_endpoint || !s.refresh) return;
  provider = { token_endpoint: s.token_endpoint, client_id: s.client_id };
  schedule();
}

// Off to the provider's sign-in page; back at CALLBACK afterwards.
export async function beginSignIn() {
  const verifier = randomText(48);  // 64 characters (RFC 7636: 43 to 128)
  const state = randomText(16);
  sessionStorage.setItem(PENDING_KEY, JSON.stringify({ state, verifier, back: location.hash }));
  const url = new URL(provider.authorization_endpoint);
  const params = {
    response_type: 'code', client_id: provider.client_id, redirect_uri: redirectURI(),
    scope: provider.scopes, state, code_challenge: await challengeOf(verifier),
    code_challenge_method: 'S256',
  };
  for (const [k, v] of Object.entries(params)) url.searchParams.set(k, v);
  location.assign(url.toString());
}

// Back from the provider: the code exchanged for tokens.  Leaves the address
// bar at the view the user started from (the code never stays in it);
// resolves to whether a sign-in was completed (false: back from signing
// out), throws an Error in plain words when the provider or the answer
// says no.
export async function finishSignIn() {
  const params = new URLSearchParams(location.search);
  const pending = readJSON(PENDING_KEY);
  sessionStorage.removeItem(PENDING_KEY);
  history.replaceState(null, '', '/ui/' + ((pending && pending.back) || ''));
  window.dispatchEvent(new HashChangeEvent('hashchange'));  // the views follow the hash
  if (params.has('error')) {
    const what = params.get('error_description') || params.get('error');
    throw new Error(`The sign-in service did not sign you in: ${what}`);
  }
  if (!params.has('code')) return false;
  if (!pending || params.get('state') !== pending.state) {
    throw new Error('This answer of the sign-in service does not belong to a sign-in started ' +
      'in this tab (it may have been opened twice); sign in again.');
  }
  keep(await tokenRequest({
    grant_type: 'authorization_code', code: params.get('code'), redirect_uri: redirectURI(),
    client_id: provider.client_id, code_verifier: pending.verifier,
  }));
  return true;
}

async function tokenRequest(form) {
  let response;
  try {
    response = await fetch(provider.token_endpoint, {
      method: 'POST', body: new URLSearchParams(form),
      headers: { 'Content-Type': 'application/x-www-form-urlencoded', Accept: 'application/json' },
    });
  } catch (e) {
    throw new Error(`The sign-in service's token endpoint could not be reached (${e.message}); ` +
      `its client ${provider.client_id} must allow this page's origin ${location.origin}.`);
  }
  let body = {};
  try { body = await response.json(); } catch (_) { /* not JSON */ }
  if (!response.ok || !body.access_token) {
    const why = body.error_description || body.error || `HTTP ${response.status}`;
    throw new Error(`The sign-in service gave no access token: ${why}`);
  }
  return body;
}

function keep(tokens) {
  const before = session() || {};
  setToken(tokens.access_token);
  sessionStorage.setItem(SESSION_KEY, JSON.stringify({
    refresh: tokens.refresh_token || before.refresh || '',
    id_token: tokens.id_token || before.id_token || '',
    expires_at: tokens.expires_in ? Date.now() + 1000 * Number(tokens.expires_in) : 0,
    token_endpoint: provider.token_endpoint,
    client_id: provider.client_id,
  }));
  schedule();
}

// A new access token from the refresh token; false when there is none or
// the provider refuses it (the user signs in again).
async function renew() {
  const s = session();
  if (!provider || !s || !s.refresh) return false;
  try {
    keep(await tokenRequest({ grant_type: 'refresh_token', refresh_token: s.refresh,
      client_id: provider.client_id }));
    return true;
  } catch (_) {
    sessionStorage.setItem(SESSION_KEY, JSON.stringify({ ...s, refresh: '' }));
    return false;
  }
}

// Renew a little before the access token expires, while this page is open.
function schedule() {
  clearTimeout(timer);
  const s = session();
  if (!provider || !s || !s.refresh || !s.expires_at) return;
  const wait = Math.max(5_000, s.expires_at - Date.now() - RENEW_BEFORE_MS);
  if (wait < 2 ** 31) timer = setTimeout(renew, wait);
}

// Who the ID token says signed in (its name claims), or '' (shown only;
// the node trusts the access token, never this).
export function displayName() {
  const s = session();
  if (!s || !s.id_token) return '';
  try {
    const part = s.id_token.split('.')[1].replace(/-/g, '+').replace(/_/g, '/');
    const bytes = Uint8Array.from(atob(part), (c) => c.charCodeAt(0));
    const claims = JSON.parse(new TextDecoder().decode(bytes));
    return claims.preferred_username || claims.name || claims.email || '';
  } catch (_) {
    return '';
  }
}

// Forget the tab's tokens; the provider's end-session URL to go to (so its
// own session ends too and the next sign-in asks again), or null.
export function signOut() {
  const s = session();
  clearTimeout(timer);
  setToken('');
  sessionStorage.removeItem(SESSION_KEY);
  if (!s || !provider || !provider.end_session_endpoint) return null;
  const url = new URL(provider.end_session_endpoint);
  url.searchParams.set('client_id', provider.client_id);
  url.searchParams.set('post_logout_redirect_uri', redirectURI());
  if (s.id_token) url.searchParams.set('id_token_hint', s.id_token);
  return url.toString();
}
