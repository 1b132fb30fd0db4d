// The viewer: one series, every frame of every instance in order. Frames come over
// WADO-RS as uncompressed little-endian octet streams (whatever syntax is stored:
// the archive transcodes), and the Modality LUT (Rescale Slope/Intercept) and the VOI
// window (PS3.3 C.11.2.1.2.1, the same formula as /rendered) are applied here, so a
// window/level drag redraws from the pixel values in memory with no round trip.
import { DICOMWEB, dicomJson, formatDate, setStatus, start, text } from "./api.js";
import { cineRate, imagesOf, interact, loadFrame, markFirstImage, paint, rangeWindow } from "./viewport.js";

const main = document.getElementById("main");
const study = main.dataset.study;
const series = main.dataset.series;
const seriesUrl = `${DICOMWEB}/studies/${encodeURIComponent(study)}/series/${encodeURIComponent(series)}`;
const canvas = document.getElementById("image");
const viewport = document.getElementById("viewport");
const context = canvas.getContext("2d");
const slider = document.getElementById("slice");

// Center and width in modality units (Hounsfield for CT).
const PRESETS = {
  lung: [-600, 1500],
  bone: [400, 1800],
  brain: [40, 80],
  abdomen: [50, 400],
};

const state = { images: [], index: 0, window: null, zoom: 1, panX: 0, panY: 0, frame: null };
const cache = new Map();

function fetchFrame(index) {
  if (cache.has(index)) return cache.get(index);
  const promise = loadFrame(seriesUrl, state.images[index]);
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
  const { image } = frame;
  if (canvas.width !== image.columns || canvas.height !== image.rows) {
    canvas.width = image.columns;
    canvas.height = image.rows;
    layout();
  }
  paint(context, frame, state.window);
  markFirstImage();
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

// ---- input (drag, wheel, arrows and zoom keys: viewport.js's interact, as in the study viewer)

interact(viewport, {
  dragWindow: () => state.window || rangeWindow(state.frame),
  setWindow,
  panOffset: () => [state.panX, state.panY],
  setPan(x, y) {
    state.panX = x;
    state.panY = y;
    layout();
  },
  zoomBy,
  step: (delta) => show(state.index + delta),
});
viewport.addEventListener("keydown", (event) => {
  const action = { Home: () => show(0), End: () => show(state.images.length - 1) }[event.key];
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

// Cine: the images in turn at the frames per second shown, looping (a multi-frame
// object's rate comes from its header; see viewport.js's cineRate).
const play = document.getElementById("play");
const fps = document.getElementById("fps");
let cine = null;
function stopCine() {
  if (cine) clearInterval(cine);
  cine = null;
  play.textContent = "Play";
  play.setAttribute("aria-pressed", "false");
}
function startCine() {
  stopCine();
  const rate = Math.max(1, Math.min(120, Number(fps.value) || 10));
  play.textContent = "Pause";
  play.setAttribute("aria-pressed", "true");
  cine = setInterval(() => show(state.index + 1 < state.images.length ? state.index + 1 : 0), 1000 / rate);
}
play.addEventListener("click", () => (cine ? stopCine() : startCine()));
fps.addEventListener("change", () => {
  if (cine) startCine();
});

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
  if (state.images.length > 1) {
    document.getElementById("cine").hidden = false;
    const multiFrame = items.find((item) => Number((item["00280008"] || {}).Value?.[0] || 1) > 1);
    fps.value = String(Math.round(cineRate(multiFrame || head) * 100) / 100);
  }
  await show(0);
  setStatus(`${state.images.length} image${state.images.length === 1 ? "" : "s"}`);
});

