// The study page: its attributes (QIDO-RS), series with thumbnails and counts, labels
// (the label routes), and the full header of an instance as a searchable tag tree
// (WADO-RS metadata, named with the dictionary at /ui/dictionary.json).
import { DICOMWEB, dicomJson, el, formatDate, formatTime, imageUrl, json, ok, setStatus, start, text } from "./api.js";
import { showAccess, showChecks } from "./study_extras.js";

const study = document.getElementById("main").dataset.study;
const base = `${DICOMWEB}/studies/${encodeURIComponent(study)}`;
let dictionary = null;

const ATTRIBUTES = [
  ["Patient name", "PatientName"],
  ["Patient ID", "PatientID"],
  ["Birth date", "PatientBirthDate"],
  ["Sex", "PatientSex"],
  ["Study date", "StudyDate"],
  ["Study time", "StudyTime"],
  ["Description", "StudyDescription"],
  ["Accession number", "AccessionNumber"],
  ["Study ID", "StudyID"],
  ["Referring physician", "ReferringPhysicianName"],
  ["Modalities", "ModalitiesInStudy"],
  ["Series", "NumberOfStudyRelatedSeries"],
  ["Instances", "NumberOfStudyRelatedInstances"],
  ["Study Instance UID", "StudyInstanceUID"],
];

async function showAttributes() {
  const { items } = await dicomJson(
    `${DICOMWEB}/studies?StudyInstanceUID=${encodeURIComponent(study)}&includefield=StudyDescription`,
  );
  if (!items.length) throw new Error("No such study, or you may not see it.");
  const item = items[0];
  const name = text(item, "PatientName") || "(no name)";
  document.getElementById("study-title").textContent = `${name}: ${text(item, "StudyDescription") || "study"}`;
  document.title = `${name} · dicomhub`;
  const dl = document.getElementById("attributes");
  dl.replaceChildren();
  for (const [label, key] of ATTRIBUTES) {
    const raw = text(item, key);
    const value = key.endsWith("Date") ? formatDate(raw) : key.endsWith("Time") ? formatTime(raw) : raw;
    dl.append(el("dt", { text: label }), el("dd", { text: value }));
  }
}

async function showLabels() {
  const labels = await json(`${base}/labels`);
  const list = document.getElementById("labels");
  list.replaceChildren(
    ...labels.map((label) => {
      const remove = el("button", { type: "button", "aria-label": `Remove label ${label}` }, "×");
      remove.addEventListener("click", () => changeLabel("DELETE", label));
      return el("li", { "data-label": label }, el("span", { text: label }), remove);
    }),
  );
  if (!labels.length) list.append(el("li", { class: "none", text: "No labels" }));
}

async function changeLabel(method, label) {
  const error = document.getElementById("label-error");
  error.textContent = "";
  try {
    await ok(`${base}/labels/${encodeURIComponent(label)}`, { method });
    await showLabels();
  } catch (e) {
    error.textContent = String(e.message || e);
  }
}

async function showSeries() {
  const { items } = await dicomJson(`${base}/series?includefield=SeriesDescription`);
  items.sort((a, b) => (Number(text(a, "SeriesNumber")) || 0) - (Number(text(b, "SeriesNumber")) || 0));
  const list = document.getElementById("series");
  list.replaceChildren();
  for (const item of items) {
    const uid = text(item, "SeriesInstanceUID");
    const count = text(item, "NumberOfSeriesRelatedInstances");
    const img = el("img", { alt: "", width: "128", height: "128", class: "thumb" });
    const href = `/ui/studies/${encodeURIComponent(study)}/series/${encodeURIComponent(uid)}/viewer`;
    const description = text(item, "SeriesDescription") || "(no description)";
    list.append(
      el(
        "li",
        { "data-series": uid },
        el("a", { href, "aria-label": `View series ${text(item, "SeriesNumber")}: ${description}` }, img),
        el("div", { class: "caption" },
          el("strong", { text: `${text(item, "Modality")} #${text(item, "SeriesNumber")}` }),
          el("span", { text: description }),
          el("span", { class: "count", text: `${count} instance${count === "1" ? "" : "s"}` }),
        ),
      ),
    );
    imageUrl(`${base}/series/${encodeURIComponent(uid)}/thumbnail`)
      .then((url) => {
        img.src = url;
        img.alt = `Thumbnail of series ${text(item, "SeriesNumber")}`;
      })
      .catch(() => img.classList.add("no-thumb"));
  }
  setStatus(`${items.length} series`);
  return items;
}

async function fillInstances(series) {
  const select = document.getElementById("header-instance");
  select.replaceChildren();
  for (const item of series) {
    const uid = text(item, "SeriesInstanceUID");
    const { items } = await dicomJson(`${base}/series/${encodeURIComponent(uid)}/instances?limit=1000`);
    items.sort((a, b) => (Number(text(a, "InstanceNumber")) || 0) - (Number(text(b, "InstanceNumber")) || 0));
    for (const inst of items) {
      const option = el("option", {
        value: `${uid}/${text(inst, "SOPInstanceUID")}`,
        text: `Series ${text(item, "SeriesNumber")}, instance ${text(inst, "InstanceNumber")}`,
      });
      select.append(option);
    }
  }
  select.addEventListener("change", showHeader);
  if (select.options.length) await showHeader();
}

function describe(tag) {
  const entry = dictionary && dictionary[tag];
  return entry ? entry[0] : tag.slice(4) === "0000" ? "GroupLength" : "(private or unknown)";
}

function valueText(element) {
  if (element.BulkDataURI) return "(bulk data)";
  if (element.InlineBinary) return "(binary)";
  const vals = element.Value || [];
  return vals.map((v) => (v && typeof v === "object" ? v.Alphabetic || JSON.stringify(v) : String(v))).join("\\");
}

function tree(dataset) {
  const ul = el("ul", { role: "group" });
  for (const tag of Object.keys(dataset).sort()) {
    const element = dataset[tag];
    const label = `(${tag.slice(0, 4)},${tag.slice(4)}) ${describe(tag)} ${element.vr}`;
    if (element.vr === "SQ") {
      const details = el("details", { open: "" }, el("summary", { text: `${label} [${(element.Value || []).length} items]` }));
      (element.Value || []).forEach((item, i) => {
        const itemDetails = el("details", { open: "" }, el("summary", { text: `Item ${i + 1}` }), tree(item));
        details.append(itemDetails);
      });
      ul.append(el("li", { "data-text": label.toLowerCase() }, details));
    } else {
      const value = valueText(element);
      ul.append(
        el(
          "li",
          { "data-text": `${label} ${value}`.toLowerCase() },
          el("code", { text: label }),
          " ",
          el("span", { class: "value", text: value }),
        ),
      );
    }
  }
  return ul;
}

async function showHeader() {
  const [series, instance] = document.getElementById("header-instance").value.split("/");
  if (!dictionary) dictionary = await json("/ui/dictionary.json");
  const { items } = await dicomJson(
    `${base}/series/${encodeURIComponent(series)}/instances/${encodeURIComponent(instance)}/metadata`,
  );
  const container = document.getElementById("header");
  container.replaceChildren(items.length ? tree(items[0]) : el("p", { text: "No header." }));
  filterHeader();
}

function filterHeader() {
  // A line stays when it or anything inside it (a sequence's items) matches.
  const plain = (s) => s.toLowerCase().replace(/[(),]/g, "");
  const needle = plain(document.getElementById("header-filter").value.trim());
  for (const li of document.querySelectorAll("#header li")) {
    li.hidden = Boolean(needle) && !plain(li.textContent).includes(needle);
  }
}

document.getElementById("header-filter").addEventListener("input", filterHeader);
document.getElementById("label-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const input = document.getElementById("label-name");
  changeLabel("PUT", input.value.trim()).then(() => {
    input.value = "";
  });
});

start(async () => {
  await showAttributes();
  const [, series] = await Promise.all([showLabels(), showSeries(), showChecks(study), showAccess(study)]);
  await fillInstances(series);
});

// The link to the OHIF viewer (when the server has it installed).
import "./ohif-link.js";
