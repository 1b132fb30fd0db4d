// Upload on the studies page: files or folders (chosen, or dropped on the drop zone) go
// to STOW-RS one file per request, a few at a time, and each gets its row in the
// result table: stored, stored with a warning, failed (the STOW-RS failure reason), or
// not DICOM (no Part 10 preamble: not sent). Shown only to callers who may store
// (GET /api/rights); STOW-RS decides anyway.
import { DICOMWEB, Unauthorized, el, json, request } from "./api.js";

const AT_ONCE = 4;
const FAILED_SOP_SEQUENCE = "00081198";
const REFERENCED_SOP_SEQUENCE = "00081199";
const WARNING_REASON = "00081196";
const FAILURE_REASON = "00081197";
// PS3.18 Table 10.5.3-3 and PS3.4 Annex B status codes the archive uses.
const REASONS = {
  0xa700: "out of resources",
  0xa900: "data set does not match SOP class",
  0xc000: "cannot understand",
  0x0110: "processing failure",
  0x0122: "SOP class not supported",
  0x0124: "not authorized",
  0xa770: "transfer syntax not supported",
  0xb000: "coercion of data elements",
  0xb006: "elements discarded",
  0xb007: "data set does not match SOP class",
  0xc122: "referenced transfer syntax not supported",
};

const section = document.getElementById("upload");
const zone = document.getElementById("drop-zone");
const status = document.getElementById("upload-status");
const table = document.getElementById("upload-results");
const tbody = table.querySelector("tbody");
let done = 0;
let total = 0;

function reasonText(code) {
  if (code === undefined) return "";
  const hex = `0x${Number(code).toString(16).toUpperCase().padStart(4, "0")}`;
  return REASONS[code] ? `${REASONS[code]} (${hex})` : hex;
}

function first(body, sequence, tag) {
  const items = (body && body[sequence] && body[sequence].Value) || [];
  for (const item of items) {
    const value = item[tag] && item[tag].Value && item[tag].Value[0];
    if (value !== undefined) return value;
  }
  return undefined;
}

async function isPart10(file) {
  if (file.size < 132) return false;
  const head = new Uint8Array(await file.slice(128, 132).arrayBuffer());
  return String.fromCharCode(...head) === "DICM";
}

async function store(file) {
  if (!(await isPart10(file))) return ["not DICOM", "no DICOM Part 10 header (DICM at byte 128): not sent"];
  const boundary = `dicomhub-${crypto.randomUUID()}`;
  const body = new Blob([
    `--${boundary}\r\nContent-Type: application/dicom\r\n\r\n`,
    file,
    `\r\n--${boundary}--\r\n`,
  ]);
  const response = await request(`${DICOMWEB}/studies`, {
    method: "POST",
    body,
    headers: {
      "Content-Type": `multipart/related; type="application/dicom"; boundary=${boundary}`,
      Accept: "application/dicom+json",
    },
  });
  let answer = null;
  try {
    answer = await response.json();
  } catch (_) {
    // An error without a DICOM JSON body: the status line says it.
  }
  if (response.status === 200) return ["stored", ""];
  const failure = first(answer, FAILED_SOP_SEQUENCE, FAILURE_REASON);
  if (failure !== undefined) return ["failed", reasonText(failure)];
  const warning = first(answer, REFERENCED_SOP_SEQUENCE, WARNING_REASON);
  if (response.status === 202) return ["warning", reasonText(warning) || response.headers.get("Warning") || ""];
  const error = answer && answer.error ? answer.error : response.statusText;
  return ["failed", `${response.status}: ${error}`];
}

function progress() {
  status.textContent = `${done} of ${total} files done`;
}

async function upload(files) {
  if (!files.length) return;
  table.hidden = false;
  total += files.length;
  progress();
  const queue = files.map((file) => {
    const cells = [el("td", { text: file.webkitRelativePath || file.relativePath || file.name }), el("td", { text: "…" }), el("td")];
    const row = el("tr", {}, ...cells);
    tbody.append(row);
    return { file, row, cells };
  });
  async function worker() {
    for (let item = queue.shift(); item; item = queue.shift()) {
      let result;
      try {
        result = await store(item.file);
      } catch (error) {
        if (error instanceof Unauthorized) return;
        result = ["failed", String(error.message || error)];
      }
      item.cells[1].textContent = result[0];
      item.cells[2].textContent = result[1];
      item.row.dataset.result = result[0];
      done += 1;
      progress();
    }
  }
  await Promise.all(Array.from({ length: AT_ONCE }, worker));
}

// A dropped folder: walk its entries (a directory reader gives at most 100 a call).
async function entriesOf(entry, path) {
  if (entry.isFile) {
    const file = await new Promise((resolve, reject) => entry.file(resolve, reject));
    file.relativePath = path + file.name;
    return [file];
  }
  const reader = entry.createReader();
  const found = [];
  for (;;) {
    const batch = await new Promise((resolve, reject) => reader.readEntries(resolve, reject));
    if (!batch.length) break;
    for (const child of batch) found.push(...(await entriesOf(child, `${path}${entry.name}/`)));
  }
  return found;
}

async function dropped(event) {
  event.preventDefault();
  zone.classList.remove("over");
  const items = Array.from(event.dataTransfer.items || []);
  const entries = items.map((i) => (i.webkitGetAsEntry ? i.webkitGetAsEntry() : null));
  let files = [];
  if (entries.length && entries.every(Boolean)) {
    for (const entry of entries) files.push(...(await entriesOf(entry, "")));
  } else {
    files = Array.from(event.dataTransfer.files || []);
  }
  await upload(files);
}

async function setUp() {
  let rights;
  try {
    rights = await json("/api/rights");
  } catch (_) {
    return; // not logged in yet (the page shows the log-in form) or no API: no upload
  }
  // Decided (the tests wait for this): shown to those who may store, else left hidden.
  section.dataset.checked = "true";
  if (!rights.store) return;
  section.hidden = false;
  for (const id of ["upload-files", "upload-folder"]) {
    const input = document.getElementById(id);
    input.addEventListener("change", async () => {
      await upload(Array.from(input.files));
      input.value = "";
    });
  }
  zone.addEventListener("dragover", (event) => {
    event.preventDefault();
    zone.classList.add("over");
  });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (event) => {
    dropped(event).catch((error) => {
      status.textContent = String(error.message || error);
    });
  });
}

setUp();
