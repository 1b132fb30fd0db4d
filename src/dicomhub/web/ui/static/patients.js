// The patients page: the form becomes a query of /dicomweb/patients, dicomhub's
// patient-level QIDO-RS resource (the patient level of C-FIND: name and ID with the
// same wildcards), sorted by name on the server so that pages follow one another with
// offset. The archive only answers patients with a study the caller may see, and
// counts only those studies. A patient's name opens the find page for its ID.
import { DICOMWEB, el, formatDate, request, setStatus, start, text } from "./api.js";

const FIELDS = ["PatientName", "PatientID"];
const NUMBER_OF_PATIENT_RELATED_STUDIES = "00201200";
const form = document.getElementById("search");
const tbody = document.querySelector("#patients tbody");

function stateFromUrl() {
  const params = new URLSearchParams(window.location.search);
  for (const name of FIELDS) form.elements[name].value = params.get(name) || "";
  const limit = parseInt(params.get("limit") || "25", 10);
  const select = form.elements.limit;
  if (limit > 0) {
    if (![...select.options].some((o) => o.value === String(limit))) select.add(new Option(String(limit)));
    select.value = String(limit);
  }
  return Math.max(0, parseInt(params.get("offset") || "0", 10) || 0);
}

function fieldParams() {
  const params = new URLSearchParams();
  for (const name of FIELDS) {
    const value = form.elements[name].value.trim();
    if (value) params.set(name, value);
  }
  return params;
}

function pageUrl(offset) {
  const params = fieldParams();
  if (form.elements.limit.value !== "25") params.set("limit", form.elements.limit.value);
  if (offset) params.set("offset", String(offset));
  const query = params.toString();
  return query ? `/ui/patients?${query}` : "/ui/patients";
}

async function searchPatients(offset) {
  const params = fieldParams();
  params.set("orderby", "PatientName,PatientID");
  params.set("count", "true");
  params.set("limit", form.elements.limit.value);
  params.set("offset", String(offset));
  const response = await request(`${DICOMWEB}/patients?${params}`, { headers: { Accept: "application/dicom+json" } });
  const total = response.headers.get("X-Total-Count");
  const more = (response.headers.get("Warning") || "").includes("exceeded the limit");
  if (response.status === 204) return { items: [], more, total: 0 };
  if (!response.ok) {
    let reason = `${response.status} ${response.statusText}`;
    try {
      reason = `${response.status}: ${(await response.json()).error}`;
    } catch (_) {
      // Not JSON: the status line says enough.
    }
    throw new Error(reason);
  }
  return { items: await response.json(), more, total: total === null ? null : parseInt(total, 10) };
}

function render(items) {
  tbody.replaceChildren(
    ...items.map((item) => {
      const id = text(item, "PatientID");
      const studies = `/?${new URLSearchParams({ PatientID: id })}`;
      return el(
        "tr",
        { "data-patient": id },
        el("td", {}, el("a", { href: studies }, text(item, "PatientName") || "(no name)")),
        el("td", { text: id }),
        el("td", { text: formatDate(text(item, "PatientBirthDate")) }),
        el("td", { text: text(item, "PatientSex") }),
        el("td", { class: "num", text: text(item, NUMBER_OF_PATIENT_RELATED_STUDIES) }),
      );
    }),
  );
}

let latest = 0;

async function search(offset) {
  const limit = parseInt(form.elements.limit.value, 10);
  const mine = ++latest;
  setStatus("Searching…");
  const { items, more, total } = await searchPatients(offset);
  // Two searches in a row: only the answer to the last one is shown.
  if (mine !== latest) return;
  render(items);
  const of = total === null ? (more ? " (more on the next page)" : "") : ` of ${total}`;
  setStatus(items.length ? `Patients ${offset + 1}–${offset + items.length}${of}` : "No patient matches.");
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

form.addEventListener("submit", (event) => {
  event.preventDefault();
  go(0);
});
form.addEventListener("reset", () => setTimeout(() => go(0), 0));
window.addEventListener("popstate", () => search(stateFromUrl()));

start(async () => {
  await search(stateFromUrl());
});
