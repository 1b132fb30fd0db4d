// What every page shares: the caller's token, DICOMweb requests with it, the log-in
// form, and reading DICOM JSON (PS3.18 F.2). The token lives in sessionStorage: it
// goes with each request as "Authorization: Bearer", never into a URL or a cookie.

const TOKEN_KEY = "dicomhub.token";

export const DICOMWEB = "/dicomweb";

export class Unauthorized extends Error {}

export function token() {
  return sessionStorage.getItem(TOKEN_KEY);
}

function headers(extra) {
  const h = new Headers(extra || {});
  const t = token();
  if (t) h.set("Authorization", `Bearer ${t}`);
  return h;
}

// fetch() with the caller's token; a 401 opens the log-in form and throws Unauthorized.
export async function request(path, options = {}) {
  const response = await fetch(path, { ...options, headers: headers(options.headers) });
  if (response.status === 401) {
    showLogin(token() ? "The token was refused (expired or revoked?)." : "");
    throw new Unauthorized("authentication required");
  }
  return response;
}

async function failure(response) {
  let reason = `${response.status} ${response.statusText}`;
  try {
    const body = await response.json();
    if (body && body.error) reason = `${response.status}: ${body.error}`;
  } catch (_) {
    // Not JSON: the status line says enough.
  }
  return new Error(reason);
}

// A DICOM JSON search or metadata request: [] for 204 and a 404 of a study one may not see.
export async function dicomJson(path) {
  const response = await request(path, { headers: { Accept: "application/dicom+json" } });
  // 404: no such resource, or one the caller may not see (the archive does not tell them apart).
  if (response.status === 204 || response.status === 404) return { items: [], more: false };
  if (!response.ok) throw await failure(response);
  const warning = response.headers.get("Warning") || "";
  return { items: await response.json(), more: warning.includes("exceeded the limit") };
}

export async function json(path, options = {}) {
  const response = await request(path, options);
  if (!response.ok) throw await failure(response);
  return response.status === 204 ? null : response.json();
}

export async function ok(path, options = {}) {
  const response = await request(path, options);
  if (!response.ok) throw await failure(response);
  return response;
}

// An image the archive renders (thumbnails): fetched with the token, shown as a blob URL.
export async function imageUrl(path) {
  const response = await request(path, { headers: { Accept: "image/jpeg, image/png" } });
  if (!response.ok) throw await failure(response);
  return URL.createObjectURL(await response.blob());
}

// ---- DICOM JSON

export const TAGS = {
  PatientName: "00100010",
  PatientID: "00100020",
  PatientBirthDate: "00100030",
  PatientSex: "00100040",
  StudyInstanceUID: "0020000D",
  StudyDate: "00080020",
  StudyTime: "00080030",
  StudyID: "00200010",
  AccessionNumber: "00080050",
  StudyDescription: "00081030",
  ReferringPhysicianName: "00080090",
  ModalitiesInStudy: "00080061",
  NumberOfStudyRelatedSeries: "00201206",
  NumberOfStudyRelatedInstances: "00201208",
  SeriesInstanceUID: "0020000E",
  SeriesNumber: "00200011",
  SeriesDescription: "0008103E",
  Modality: "00080060",
  NumberOfSeriesRelatedInstances: "00201209",
  SOPInstanceUID: "00080018",
  InstanceNumber: "00200013",
};

function tagOf(key) {
  return TAGS[key] || key;
}

export function values(item, key) {
  const element = item && item[tagOf(key)];
  return (element && element.Value) || [];
}

// One attribute as display text (person names by their alphabetic group).
export function text(item, key) {
  return values(item, key)
    .map((v) => (v && typeof v === "object" ? v.Alphabetic || "" : String(v)))
    .join("\\");
}

export function number(item, key) {
  const v = values(item, key)[0];
  return v === undefined || v === null || v === "" ? NaN : Number(v);
}

export function formatDate(da) {
  return /^\d{8}$/.test(da) ? `${da.slice(0, 4)}-${da.slice(4, 6)}-${da.slice(6, 8)}` : da;
}

export function formatTime(tm) {
  const m = /^(\d{2})(\d{2})?(\d{2})?/.exec(tm || "");
  return m ? [m[1], m[2], m[3]].filter(Boolean).join(":") + tm.slice(m[0].length) : tm;
}

export function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attributes)) {
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else node.setAttribute(k, v);
  }
  for (const child of children) node.append(child);
  return node;
}

export function setStatus(message, isError = false) {
  const status = document.getElementById("status");
  if (!status) return;
  status.textContent = message;
  status.classList.toggle("error", isError);
}

// Run a page: its errors go to the status line, a refused token to the log-in form.
export function start(main) {
  setUpLogin();
  showAdminMenu();
  main().catch((error) => {
    if (error instanceof Unauthorized) return;
    setStatus(String(error.message || error), true);
  });
}

// ---- log in / out

function showLogin(message) {
  const section = document.getElementById("login");
  section.hidden = false;
  document.getElementById("login-error").textContent = message;
  document.getElementById("login-token").focus();
}

function setUpLogin() {
  const logout = document.getElementById("logout");
  logout.hidden = !token();
  if (token()) document.getElementById("who").textContent = "Logged in with a token";
  logout.addEventListener("click", () => {
    sessionStorage.removeItem(TOKEN_KEY);
    window.location.reload();
  });
  document.getElementById("login-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const value = document.getElementById("login-token").value.trim();
    // Checked with the cheapest search there is before it is kept.
    const response = await fetch(`${DICOMWEB}/studies?limit=1`, {
      headers: { Authorization: `Bearer ${value}`, Accept: "application/dicom+json" },
    });
    if (response.status === 401) {
      document.getElementById("login-error").textContent = "This token is not valid.";
      return;
    }
    sessionStorage.setItem(TOKEN_KEY, value);
    window.location.reload();
  });
  offerOidcLogin();
}

// "Log in with <provider>": offered only when the server has OIDC log-in configured.
function offerOidcLogin() {
  fetch("/ui/login/options")
    .then((response) => (response.ok ? response.json() : null))
    .then((options) => {
      if (!options || !options.oidc) return;
      const link = document.getElementById("login-oidc-link");
      link.textContent = `Log in with ${options.oidc.name}`;
      link.href = options.oidc.url;
      document.getElementById("login-oidc").hidden = false;
    })
    .catch(() => {});
}

// ---- the Admin menu, and any element marked data-admin: shown to callers with the
// administer grant (to everyone without access control). Only a convenience: the
// admin routes check the grant again.

function showAdminMenu() {
  fetch("/api/me", { headers: headers() })
    .then((response) => (response.ok ? response.json() : null))
    .then((me) => {
      if (!me) return;
      for (const node of document.querySelectorAll("[data-admin]")) node.hidden = !me.administer;
      if (me.name && token()) document.getElementById("who").textContent = `Logged in as ${me.name}`;
    })
    .catch(() => {});
}
