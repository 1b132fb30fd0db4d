// The viewer: one series, every frame of every instance in order. Frames come over
// WADO-RS as uncompressed little-endian octet streams (whatever syntax is stored:
// the archive transcodes), and the Modality LUT (Rescale Slope/Intercept) and the VOI
// window (PS3.3 C.11.2.1.2.1, the same formula as /rendered) are applied here, so a
// window/level drag redraws from the pixel values in memory with no round trip.
import { DICOMWEB, dicomJson, formatDate, request, setStatus, start, text } from "./api.js";

const main = document.getElementById("main");
const study = main.dataset.study;
const series = main.dataset.series;
const seriesUrl = `${DICOMWEB}/studies/${encodeURIComponent(study)}/series/${encodeURIComponent(series)}`;
const canvas = document.getElementById("image");
const viewport = document.getElementById("viewport");
const context = canvas.getContext("2d");
const slider = document.getElementById("slice");
const FRAME_ACCEPT = 'multipart/related; type="application/octet-stream"; transfer-syntax=1.2.840.10008.1.2.1';

// Center and width in modality units (Hounsfield for CT).
const PRESETS = {
  lung: [-600, 1500],
  bone: [400, 1800],
  brain: [40, 80],
  abdomen: [50, 400],
};

const state = { images: [], index: 0, window: null, zoom: 1, panX: 0, panY: 0, frame: null };
const cache = new Map();

function first(item, tag) {
  const v = item[tag] && item[tag].Value;
  return v && v.length ? v[0] : undefined;
}

function num(item, tag, fallback) {
  const v = Number(first(item, tag));
  return Number.isFinite(v) ? v : fallback;
}

// One entry per frame: what decoding and the overlay need from its instance's header.
function imagesOf(metadata) {
  const images = [];
  metadata.sort((a, b) => num(a, "00200013", 0) - num(b, "00200013", 0));
  for (const item of metadata) {
    const frames = num(item, "00280008", 1);
    const center = num(item, "00281050", NaN);
    const width = num(item, "00281051", NaN);
    const header = {
      instance: first(item, "00080018"),
      instanceNumber: num(item, "00200013", 0),
      rows: num(item, "00280010", 0),
      columns: num(item, "00280011", 0),
      samples: num(item, "00280002", 1),
      planar: num(item, "00280006", 0),
      bitsAllocated: num(item, "00280100", 16),
      bitsStored: num(item, "00280101", num(item, "00280100", 16)),
      signed: num(item, "00280103", 0) === 1,
      photometric: String(first(item, "00280004") || "MONOCHROME2").trim().toUpperCase(),
      slope: num(item, "00281053", 1),
      intercept: num(item, "00281052", 0),
      window: Number.isFinite(center) && Number.isFinite(width) && width >= 1 ? [center, width] : null,
    };
    for (let f = 1; f <= frames; f += 1) images.push({ ...header, frame: f, frames });
  }
  return images;
}

function partBody(buffer, contentType) {
  const match = /boundary="?([^";]+)"?/i.exec(contentType || "");
  if (!match) return new Uint8Array(buffer);
  const bytes = new Uint8Array(buffer);
  const find = (needle, from) => {
    outer: for (let i = from; i <= bytes.length - needle.length; i += 1) {
      for (let j = 0; j < needle.length; j += 1) if (bytes[i + j] !== needle[j]) continue outer;
      return i;
    }
    return -1;
  };
  const encode = (s) => new TextEncoder().encode(s);
  const start = find(encode("\r\n\r\n"), find(encode(`--${match[1]}`), 0)) + 4;
  const end = find(encode(`\r\n--${match[1]}`), start);
  return bytes.slice(start, end < 0 ? bytes.length : end);
}

// Stored values of one frame as numbers (sign and bits stored as the header says).
function storedValues(image, body) {
  const count = image.rows * image.columns * image.samples;
  const buffer = body.buffer.slice(body.byteOffset, body.byteOffset + body.byteLength);
  let raw;
  if (image.bitsAllocated === 8) raw = new Uint8Array(buffer, 0, count);
  else if (image.bitsAllocated === 16) raw = image.signed ? new Int16Array(buffer, 0, count) : new Uint16Array(buffer, 0, count);
  else if (image.bitsAllocated === 32) raw = image.signed ? new Int32Array(buffer, 0, count) : new Uint32Array(buffer, 0, count);
  else throw new Error(`cannot display ${image.bitsAllocated} bits allocated`);
  const bits = image.bitsStored;
  if (bits >= image.bitsAllocated || image.samples !== 1) return raw;
  const out = new Int32Array(count);
  const shift = 32 - bits;
  for (let i = 0; i < count; i += 1) {
    out[i] = image.signed ? (raw[i] << shift) >> shift : raw[i] & ((1 << bits) - 1);
  }
  return out;
}

function fetchFrame(index) {
  if (cache.has(index)) return cache.get(index);
  const image = state.images[index];
  const url = `${seriesUrl}/instances/${encodeURIComponent(image.instance)}/frames/${image.frame}`;
  const promise = request(url, { headers: { Accept: FRAME_ACCEPT } }).then(async (response) => {
    if (!response.ok) throw new Error(`frame ${image.frame} of instance ${image.instanceNumber}: ${response.status}`);
    const body = partBody(await response.arrayBuffer(), response.headers.get("Content-Type"));
    const values = storedValues(image, body);
    let low = Infinity;
    let high = -Infinity;
    if (image.samples === 1) {
      for (let i = 0; i < values.length; i += 1) {
        const v = values[i] * image.slope + image.intercept;
        if (v < low) low = v;
        if (v > high) high = v;
      }
    }
    return { image, values, low, high };
  });
  promise.catch(() => cache.delete(index));
  cache.set(index, promise);
  return promise;
}

// The header's window, else the frame's full range (as the server renders with no window).
function defaultWindow(frame) {
  return frame.image.window ? [...frame.image.window] : null;
}

function draw() {
  const frame = state.frame;
  if (!frame) return;
  const { image, values } = frame;
  if (canvas.width !== image.columns || canvas.height !== image.rows) {
    canvas.width = image.columns;
    canvas.height = image.rows;
    layout();
  }
  const out = context.createImageData(image.columns, image.rows);
  const px = out.data;
  const n = image.rows * image.columns;
  if (image.samples === 3) {
    const top = image.bitsAllocated === 8 ? 1 : 255 / ((1 << Math.min(image.bitsStored, 16)) - 1);
    for (let i = 0; i < n; i += 1) {
      for (let s = 0; s < 3; s += 1) {
        const v = image.planar === 1 ? values[s * n + i] : values[i * 3 + s];
        px[i * 4 + s] = Math.round(v * top);
      }
      px[i * 4 + 3] = 255;
    }
  } else {
    const invert = image.photometric === "MONOCHROME1";
    const { slope, intercept } = image;
    const win = state.window;
    let scale;
    let offset;
    if (win) {
      const [c, w] = win;
      // ((v - (c - 0.5)) / (w - 1) + 0.5) * 255, as a * v + b.
      scale = w <= 1 ? 0 : 255 / (w - 1);
      offset = w <= 1 ? 0 : (0.5 - (c - 0.5) / (w - 1)) * 255;
    } else {
      scale = frame.high > frame.low ? 255 / (frame.high - frame.low) : 0;
      offset = -frame.low * scale;
    }
    const threshold = win ? win[0] - 0.5 : 0;
    const binary = win && win[1] <= 1;
    for (let i = 0; i < n; i += 1) {
      const v = values[i] * slope + intercept;
      let g = binary ? (v <= threshold ? 0 : 255) : v * scale + offset;
      g = g < 0 ? 0 : g > 255 ? 255 : Math.round(g);
      if (invert) g = 255 - g;
      px[i * 4] = g;
      px[i * 4 + 1] = g;
      px[i * 4 + 2] = g;
      px[i * 4 + 3] = 255;
    }
  }
  context.putImageData(out, 0, 0);
  canvas.dataset.instance = image.instance;
  canvas.dataset.frame = String(image.frame);
  canvas.dataset.windowCenter = state.window ? String(state.window[0]) : "";
  canvas.dataset.windowWidth = state.window ? String(state.window[1]) : "";
  canvas.dataset.draws = String(Number(canvas.dataset.draws || 0) + 1);
  overlay();
}

function layout() {
  if (!canvas.width) return;
  const fit = Math.min(viewport.clientWidth / canvas.width, viewport.clientHeight / canvas.height) || 1;
  const scale = fit * state.zoom;
  canvas.style.width = `${canvas.width * scale}px`;
  canvas.style.height = `${canvas.height * scale}px`;
  canvas.style.transform = `translate(-50%, -50%) translate(${state.panX}px, ${state.panY}px)`;
  overlay();
}

let meta = {};

function overlay() {
  const image = state.images[state.index];
  if (!image) return;
  document.getElementById("overlay-tl").textContent = `${meta.name}\n${meta.id}`;
  document.getElementById("overlay-tr").textContent = `${meta.date}\n${meta.description}`;
  const frameText = image.frames > 1 ? ` frame ${image.frame}/${image.frames}` : "";
  document.getElementById("overlay-bl").textContent =
    `Image ${state.index + 1}/${state.images.length} (instance ${image.instanceNumber}${frameText})`;
  const w = state.window;
  document.getElementById("overlay-br").textContent =
    `${w ? `W ${Math.round(w[1])} L ${Math.round(w[0])}` : "W/L full range"}\nZoom ${Math.round(state.zoom * 100)}%`;
}

let showing = 0;

async function show(index) {
  const target = Math.max(0, Math.min(state.images.length - 1, index));
  state.index = target;
  slider.value = String(target + 1);
  overlay();
  const ticket = (showing += 1);
  const frame = await fetchFrame(target);
  if (ticket !== showing) return; // scrolled on meanwhile
  const firstFrame = state.frame === null;
  state.frame = frame;
  if (firstFrame) state.window = defaultWindow(frame);
  draw();
  // Read ahead in the direction one usually scrolls.
  for (const next of [target + 1, target + 2, target - 1]) {
    if (next >= 0 && next < state.images.length) fetchFrame(next).catch(() => {});
  }
}

function setWindow(center, width) {
  state.window = [center, Math.max(1, width)];
  draw();
}

function zoomBy(factor) {
  state.zoom = Math.max(0.1, Math.min(20, state.zoom * factor));
  layout();
}

// ---- input

let drag = null;
viewport.addEventListener("contextmenu", (event) => event.preventDefault());
viewport.addEventListener("pointerdown", (event) => {
  viewport.focus();
  const pan = event.shiftKey || event.button === 1 || event.button === 2;
  let win = state.window;
  if (!win && state.frame) {
    const { low, high } = state.frame;
    win = [(low + high) / 2, Math.max(1, high - low)];
  }
  drag = { pan, x: event.clientX, y: event.clientY, panX: state.panX, panY: state.panY, win };
  viewport.setPointerCapture(event.pointerId);
});
viewport.addEventListener("pointermove", (event) => {
  if (!drag) return;
  const dx = event.clientX - drag.x;
  const dy = event.clientY - drag.y;
  if (drag.pan) {
    state.panX = drag.panX + dx;
    state.panY = drag.panY + dy;
    layout();
  } else if (drag.win) {
    // One screen pixel moves the window by a 256th of its width (at least one unit):
    // right widens, down raises the level.
    const step = Math.max(1, drag.win[1] / 256);
    setWindow(drag.win[0] + dy * step, drag.win[1] + dx * step);
  }
});
for (const type of ["pointerup", "pointercancel"]) viewport.addEventListener(type, () => (drag = null));

viewport.addEventListener(
  "wheel",
  (event) => {
    event.preventDefault();
    if (event.ctrlKey) zoomBy(event.deltaY < 0 ? 1.1 : 1 / 1.1);
    else show(state.index + (event.deltaY > 0 ? 1 : -1));
  },
  { passive: false },
);

viewport.addEventListener("keydown", (event) => {
  const keys = {
    ArrowDown: () => show(state.index + 1),
    ArrowRight: () => show(state.index + 1),
    ArrowUp: () => show(state.index - 1),
    ArrowLeft: () => show(state.index - 1),
    PageDown: () => show(state.index + 10),
    PageUp: () => show(state.index - 10),
    Home: () => show(0),
    End: () => show(state.images.length - 1),
    "+": () => zoomBy(1.25),
    "=": () => zoomBy(1.25),
    "-": () => zoomBy(0.8),
  };
  const action = keys[event.key];
  if (action) {
    event.preventDefault();
    action();
  }
});

slider.addEventListener("input", () => show(Number(slider.value) - 1));
document.getElementById("zoom-in").addEventListener("click", () => zoomBy(1.25));
document.getElementById("zoom-out").addEventListener("click", () => zoomBy(0.8));
document.getElementById("reset").addEventListener("click", () => {
  state.zoom = 1;
  state.panX = 0;
  state.panY = 0;
  if (state.frame) state.window = defaultWindow(state.frame);
  layout();
  draw();
});
for (const button of document.querySelectorAll("[data-preset]")) {
  button.addEventListener("click", () => {
    const preset = PRESETS[button.dataset.preset];
    if (preset) setWindow(...preset);
    else if (state.frame) {
      state.window = defaultWindow(state.frame);
      draw();
    }
  });
}
window.addEventListener("resize", layout);

start(async () => {
  document.getElementById("back").href = `/ui/studies/${encodeURIComponent(study)}`;
  setStatus("Loading the series…");
  const { items } = await dicomJson(`${seriesUrl}/metadata`);
  if (!items.length) throw new Error("No such series, or you may not see it.");
  const head = items[0];
  meta = {
    name: text(head, "PatientName"),
    id: text(head, "PatientID"),
    date: formatDate(text(head, "StudyDate")),
    description: `${text(head, "Modality")} ${text(head, "SeriesDescription")}`.trim(),
  };
  document.title = `${meta.name} ${meta.description} · dicomhub`;
  state.images = imagesOf(items);
  slider.max = String(state.images.length);
  await show(0);
  setStatus(`${state.images.length} image${state.images.length === 1 ? "" : "s"}`);
});

