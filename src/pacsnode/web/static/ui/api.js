// Talking to the node: fetch with the user's token, DICOM JSON helpers.
// Every call goes to this node's own APIs (QIDO/WADO/STOW-RS and /api/v1).

export const TOKEN_KEY = 'pacsnode.token';

export function token() {
  return sessionStorage.getItem(TOKEN_KEY) || '';
}

export function setToken(value) {
  if (value) sessionStorage.setItem(TOKEN_KEY, value);
  else sessionStorage.removeItem(TOKEN_KEY);
}

export function authHeaders(extra = {}) {
  const t = token();
  return t ? { ...extra, Authorization: 'Bearer ' + t } : { ...extra };
}

export class HttpError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

async function reason(response) {
  try {
    const body = await response.json();
    if (body && body.error) return body.error;
  } catch (_) { /* not JSON */ }
  return `${response.status} ${response.statusText}`;
}

// How an expired credential is renewed: set by oidc.js while the user is
// signed in at an OIDC provider that gave a refresh token.  Resolves to
// whether a new token is in place.
let renewer = null;
let renewing = null;

export function setRenewer(fn) {
  renewer = fn;
}

// One renewal at a time, however many requests found the token expired.
export function renewToken() {
  if (!renewer) return Promise.resolve(false);
  if (!renewing) renewing = renewer().catch(() => false).finally(() => { renewing = null; });
  return renewing;
}

// Sent on window when the node refuses the tab's credential (401) and it
// cannot be renewed: the page goes back to signing in.
export const SIGNED_OUT_EVENT = 'pacsnode:signed-out';

// A 401 on a request that carried `sent`: renew the token (unless another
// request did already) and say whether to try again.
async function retryAfter401(sent) {
  if (!sent) return false;
  if (token() && token() !== sent) return true;
  return renewToken();
}

// fetch() that throws HttpError (with the node's plain-words reason) on
// 4xx/5xx.  A 401 (an expired access token) is answered by renewing the
// token once and asking again.
export async function request(method, url, { body, headers, json, signal } = {}) {
  const extra = { ...(headers || {}) };
  if (json !== undefined) {
    extra['Content-Type'] = 'application/json';
    body = JSON.stringify(json);
  }
  const sent = token();
  let response = await fetch(url, { method, headers: authHeaders(extra), body, signal });
  if (response.status === 401 && await retryAfter401(sent)) {
    response = await fetch(url, { method, headers: authHeaders(extra), body, signal });
  }
  if (!response.ok) {
    const why = await reason(response);
    if (response.status === 401 && sent) {
      window.dispatchEvent(new CustomEvent(SIGNED_OUT_EVENT, { detail: why }));
    }
    throw new HttpError(response.status, why);
  }
  return response;
}

export async function getJSON(url) {
  const response = await request('GET', url, { headers: { Accept: 'application/json' } });
  if (response.status === 204) return [];
  return response.json();
}

export const sendJSON = async (method, url, json) => {
  const response = await request(method, url, { json, headers: { Accept: 'application/json' } });
  return response.status === 204 ? null : response.json();
};

// An image the node renders, as an object URL (an <img src> could not carry the token).
export async function imageURL(url) {
  const response = await request('GET', url, { headers: { Accept: 'image/jpeg, image/png' } });
  return URL.createObjectURL(await response.blob());
}

// ------------------------------------------------------------ DICOM JSON
export const TAG = {
  PatientName: '00100010', PatientID: '00100020', PatientBirthDate: '00100030',
  PatientSex: '00100040', StudyDate: '00080020', StudyTime: '00080030',
  AccessionNumber: '00080050', ModalitiesInStudy: '00080061', Modality: '00080060',
  StudyDescription: '00081030', SeriesDescription: '0008103E',
  StudyInstanceUID: '0020000D', SeriesInstanceUID: '0020000E', SOPInstanceUID: '00080018',
  SeriesNumber: '00200011', InstanceNumber: '00200013',
  NumberOfStudyRelatedSeries: '00201206', NumberOfStudyRelatedInstances: '00201208',
  NumberOfSeriesRelatedInstances: '00201209', NumberOfFrames: '00280008',
  ImagePositionPatient: '00200032', ImageOrientationPatient: '00200037',
  SamplesPerPixel: '00280002', PhotometricInterpretation: '00280004',
  PlanarConfiguration: '00280006', Rows: '00280010', Columns: '00280011',
  BitsAllocated: '00280100', BitsStored: '00280101', PixelRepresentation: '00280103',
  WindowCenter: '00281050', WindowWidth: '00281051',
  RescaleIntercept: '00281052', RescaleSlope: '00281053',
  FailedSOPSequence: '00081198', ReferencedSOPSequence: '00081199',
};

function plain(v) {
  if (v && typeof v === 'object' && 'Alphabetic' in v) return v.Alphabetic;
  return v;
}

// All values of an attribute of a DICOM JSON object.
export function values(obj, keyword) {
  const e = obj && obj[TAG[keyword] || keyword];
  return e && Array.isArray(e.Value) ? e.Value.map(plain) : [];
}

// The first value, or '' when absent.
export function value(obj, keyword) {
  const all = values(obj, keyword);
  return all.length ? all[0] : '';
}

export function number(obj, keyword, fallback) {
  const v = value(obj, keyword);
  const n = typeof v === 'number' ? v : parseFloat(v);
  return Number.isFinite(n) ? n : fallback;
}

// 20240131 -> 2024-01-31
export function formatDate(d) {
  return d && d.length === 8 ? `${d.slice(0, 4)}-${d.slice(4, 6)}-${d.slice(6)}` : d || '';
}

export function formatBytes(n) {
  if (n == null) return '';
  const units = ['B', 'KB', 'MB', 'GB', 'TB'];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
}

export const ROLES = ['reader', 'writer', 'editor', 'operator', 'admin'];

// Whether the signed-in user (GET /api/v1/me) may do what `role` may; with
// auth off (role null) everything is allowed.
export function allows(me, role) {
  if (!me || me.auth !== 'on') return true;
  return ROLES.indexOf(me.role) >= ROLES.indexOf(role);
}
