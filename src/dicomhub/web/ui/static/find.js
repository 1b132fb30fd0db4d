// The find page: the form becomes QIDO-RS parameters (PS3.18 8.3.4), so the search is
// the archive's own indexed query; pages of "limit" studies follow with offset. The
// form's state is kept in the page URL, so a search can be bookmarked or reloaded.
// dicomhub's QIDO-RS extensions do the rest: "label" narrows to a label's studies,
// "orderby" sorts on the server (so the order holds across pages) for the columns
// marked data-server, and "count=true" gives the total for "1–25 of N".
import { DICOMWEB, el, formatDate, json, number, request, setStatus, start, text } from "./api.js";

const FIELDS = ["PatientName", "PatientID", "ModalitiesInStudy", "AccessionNumber", "StudyDescription"];
const form = document.getElementById("search");
const tbody = document.querySelector("#studies tbody");
let rows = [];
let sort = { key: null, descending: false };

function dicomDate(iso) {
  return iso ? iso.replaceAll("-", "") : "";
}

// The labels the caller may see, for the label menu (a label from a link is kept too).
async function loadLabels() {
  const select = form.elements.label;
  const wanted = new URLSearchParams(window.location.search).get("label");
  const labels = (await json(`${DICOMWEB}/labels`)).map((item) => item.label);
  if (wanted && !labels.includes(wanted)) labels.push(wanted);
  for (const label of labels.sort()) select.add(new Option(label, label));
}

function stateFromUrl() {
  const params = new URLSearchParams(window.location.search);
  for (const name of [...FIELDS, "from", "to", "label"]) {
    if (params.has(name)) form.elements[name].value = params.get(name);
  }
  const orderby = params.get("orderby") || "";
  sort = orderby
    ? { key: orderby.replace(/^-/, ""), descending: orderby.startsWith("-"), server: true }
    : { key: null, descending: false };
  const limit = parseInt(params.get("limit") || "25", 10);
  if (limit > 0) {
    // A page size from a link that the menu does not offer becomes one of its choices.
    const select = form.elements.limit;
    if (![...select.options].some((o) => o.value === String(limit))) select.add(new Option(String(limit)));
    select.value = String(limit);
  }
  return Math.max(0, parseInt(params.get("offset") || "0", 10) || 0);
}

function qidoParams(offset) {
  const params = new URLSearchParams();
  for (const name of FIELDS) {
    const value = form.elements[name].value.trim();
    if (value) params.set(name, value);
  }
  const from = dicomDate(form.elements.from.value);
  const to = dicomDate(form.elements.to.value);
  if (from || to) params.set("StudyDate", from === to ? from : `${from}-${to}`);
  if (form.elements.label.value) params.set("label", form.elements.label.value);
  if (sort.server) params.set("orderby", `${sort.descending ? "-" : ""}${sort.key}`);
  params.set("count", "true");
  params.set("includefield", "StudyDescription");
  params.set("limit", form.elements.limit.value);
  params.set("offset", String(offset));
  return params;
}

function pageUrl(offset) {
  const params = new URLSearchParams();
  for (const name of [...FIELDS, "from", "to", "label"]) {
    const value = form.elements[name].value.trim();
    if (value) params.set(name, value);
  }
  if (sort.server) params.set("orderby", `${sort.descending ? "-" : ""}${sort.key}`);
  if (form.elements.limit.value !== "25") params.set("limit", form.elements.limit.value);
  if (offset) params.set("offset", String(offset));
  const query = params.toString();
  return query ? `/?${query}` : "/";
}

function cell(item, key) {
  if (key === "StudyDate") return formatDate(text(item, key));
  return text(item, key);
}

function render() {
  const ordered = [...rows];
  // A server-side order came with the rows; other columns sort the page shown.
  if (sort.key && !sort.server) {
    const th = document.querySelector(`th[data-key="${sort.key}"]`);
    const numeric = th.hasAttribute("data-numeric");
    ordered.sort((a, b) => {
      const x = numeric ? number(a, sort.key) : cell(a, sort.key);
      const y = numeric ? number(b, sort.key) : cell(b, sort.key);
      const c = numeric ? x - y : String(x).localeCompare(String(y));
      return sort.descending ? -c : c;
    });
  }
  tbody.replaceChildren(
    ...ordered.map((item) => {
      const uid = text(item, "StudyInstanceUID");
      const link = el("a", { href: `/ui/studies/${encodeURIComponent(uid)}` }, text(item, "PatientName") || "(no name)");
      return el(
        "tr",
        { "data-study": uid },
        el("td", {}, link),
        ...["PatientID", "StudyDate", "ModalitiesInStudy", "AccessionNumber", "StudyDescription"].map((key) =>
          el("td", { text: cell(item, key) }),
        ),
        el("td", { class: "num", text: cell(item, "NumberOfStudyRelatedSeries") }),
        el("td", { class: "num", text: cell(item, "NumberOfStudyRelatedInstances") }),
      );
    }),
  );
  for (const th of document.querySelectorAll("#studies th")) {
    th.setAttribute(
      "aria-sort",
      th.dataset.key === sort.key ? (sort.descending ? "descending" : "ascending") : "none",
    );
  }
}

// Like api.js's dicomJson, plus the X-Total-Count header that count=true asks for.
async function searchStudies(path) {
  const response = await request(path, { headers: { Accept: "application/dicom+json" } });
  if (response.status === 204) return { items: [], more: false, total: 0 };
  if (!response.ok) {
    let reason = `${response.status} ${response.statusText}`;
    try {
      reason = `${response.status}: ${(await response.json()).error}`;
    } catch (_) {
      // Not JSON: the status line says enough.
    }
    throw new Error(reason);
  }
  const warning = response.headers.get("Warning") || "";
  const total = response.headers.get("X-Total-Count");
  return {
    items: await response.json(),
    more: warning.includes("exceeded the limit"),
    total: total === null ? null : parseInt(total, 10),
  };
}

let latest = 0;

async function search(offset) {
  const limit = parseInt(form.elements.limit.value, 10);
  const mine = ++latest;
  setStatus("Searching…");
  const { items, more, total } = await searchStudies(`${DICOMWEB}/studies?${qidoParams(offset)}`);
  // Two clicks in a row: only the answer to the last search is shown.
  if (mine !== latest) return;
  rows = items;
  render();
  const first = items.length ? offset + 1 : 0;
  const of = total === null ? (more ? " (more on the next page)" : "") : ` of ${total}`;
  setStatus(items.length ? `Studies ${first}–${offset + items.length}${of}` : "No study matches.");
  document.getElementById("page-info").textContent = items.length ? `Page ${Math.floor(offset / limit) + 1}` : "";
  const prev = document.getElementById("prev");
  const next = document.getElementById("next");
  prev.disabled = offset === 0;
  next.disabled = !more;
  prev.onclick = () => go(Math.max(0, offset - limit));
  next.onclick = () => go(offset + limit);
}

function go(offset) {
  history.pushState(null, "", pageUrl(offset));
  return search(offset).catch((error) => setStatus(String(error.message || error), true));
}

for (const th of document.querySelectorAll("#studies th")) {
  th.querySelector("button").addEventListener("click", () => {
    const server = th.hasAttribute("data-server");
    sort = { key: th.dataset.key, descending: sort.key === th.dataset.key && !sort.descending, server };
    // A server-side order starts again at the first page; a page-only one just redraws.
    if (server) go(0);
    else render();
  });
}

form.addEventListener("submit", (event) => {
  event.preventDefault();
  go(0);
});
form.addEventListener("reset", () => setTimeout(() => go(0), 0));
window.addEventListener("popstate", () => search(stateFromUrl()));

start(async () => {
  await loadLabels();
  await search(stateFromUrl());
});
