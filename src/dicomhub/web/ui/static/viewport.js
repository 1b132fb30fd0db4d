// A viewport: one series (or one image of it) drawn on a canvas from raw pixel values,
// shared by the series viewer (viewer.js) and the study viewer (study_viewer.js).
// Frames come over WADO-RS as uncompressed little-endian octet streams and the Modality
// LUT and VOI window (PS3.3 C.11.2.1.2.1, the formula of /rendered) are applied here.
// A multi-frame object plays as cine at its Recommended Display Frame Rate (0008,2144),
// else 1000 / Frame Time (0018,1063), else Cine Rate (0018,0040), else 10 frames/s.
import { DICOMWEB, dicomJson, el, request } from "./api.js";

export const FRAME_ACCEPT =
  'multipart/related; type="application/octet-stream"; transfer-syntax=1.2.840.10008.1.2.1';
const DEFAULT_FPS = 10;
// The first image drawn by any viewport of the page (for the UI benchmark).
export const FIRST_IMAGE_MARK = "dicomhub:first-image";

export function first(item, tag) {
  const v = item[tag] && item[tag].Value;
  return v && v.length ? v[0] : undefined;
}

export function num(item, tag, fallback) {
  const v = Number(first(item, tag));
  return Number.isFinite(v) ? v : fallback;
}

// One entry per frame: what decoding and the overlay need from its instance's header.
export function imagesOf(metadata) {
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

export function partBody(buffer, contentType) {
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
export function storedValues(image, body) {
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


// Frames per second of a multi-frame object, from its header.
export function cineRate(item) {
  const recommended = num(item, "00082144", NaN);
  if (recommended > 0) return recommended;
  const frameTime = num(item, "00181063", NaN);
  if (frameTime > 0) return 1000 / frameTime;
  const cine = num(item, "00180040", NaN);
  return cine > 0 ? cine : DEFAULT_FPS;
}

// Grey levels (or colours) of one frame into an ImageData, with the window [center, width]
// (null: the frame's full range).
export function paint(context, frame, win) {
  const { image, values } = frame;
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
    let scale;
    let offset;
    if (win) {
      const [c, w] = win;
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
}

// One frame's stored values and range, fetched over WADO-RS.
export async function loadFrame(seriesUrl, image) {
  const url = `${seriesUrl}/instances/${encodeURIComponent(image.instance)}/frames/${image.frame}`;
  const response = await request(url, { headers: { Accept: FRAME_ACCEPT } });
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
}

export function markFirstImage() {
  if (!performance.getEntriesByName(FIRST_IMAGE_MARK).length) performance.mark(FIRST_IMAGE_MARK);
}

// The window of a drag that starts with none set: the frame's full range.
export function rangeWindow(frame) {
  return frame ? [(frame.low + frame.high) / 2, Math.max(1, frame.high - frame.low)] : null;
}

// Mouse and keys on a viewport element, the same in both viewers: a drag changes the
// window (right widens, down raises the level), shift-drag or the right or middle button
// pans, Ctrl+wheel and +/- zoom, the wheel and arrow keys step through the images.
// `target` draws: dragWindow() (the window a drag starts from, or null), setWindow(c, w),
// panOffset() ([x, y]), setPan(x, y), zoomBy(factor) and step(delta).
export function interact(element, target) {
  let drag = null;
  element.addEventListener("contextmenu", (event) => event.preventDefault());
  element.addEventListener("pointerdown", (event) => {
    element.focus();
    const pan = event.shiftKey || event.button === 1 || event.button === 2;
    const [panX, panY] = target.panOffset();
    drag = { pan, x: event.clientX, y: event.clientY, panX, panY, win: target.dragWindow() };
    element.setPointerCapture(event.pointerId);
  });
  element.addEventListener("pointermove", (event) => {
    if (!drag) return;
    const dx = event.clientX - drag.x;
    const dy = event.clientY - drag.y;
    if (drag.pan) target.setPan(drag.panX + dx, drag.panY + dy);
    else if (drag.win) {
      // One screen pixel moves the window by a 256th of its width (at least one unit).
      const step = Math.max(1, drag.win[1] / 256);
      target.setWindow(drag.win[0] + dy * step, Math.max(1, drag.win[1] + dx * step));
    }
  });
  for (const type of ["pointerup", "pointercancel"]) element.addEventListener(type, () => (drag = null));
  element.addEventListener(
    "wheel",
    (event) => {
      event.preventDefault();
      if (event.ctrlKey) target.zoomBy(event.deltaY < 0 ? 1.1 : 1 / 1.1);
      else target.step(event.deltaY > 0 ? 1 : -1);
    },
    { passive: false },
  );
  const keys = {
    ArrowDown: () => target.step(1),
    ArrowRight: () => target.step(1),
    ArrowUp: () => target.step(-1),
    ArrowLeft: () => target.step(-1),
    PageDown: () => target.step(10),
    PageUp: () => target.step(-10),
    "+": () => target.zoomBy(1.25),
    "=": () => target.zoomBy(1.25),
    "-": () => target.zoomBy(0.8),
  };
  element.addEventListener("keydown", (event) => {
    const action = keys[event.key];
    if (action) {
      event.preventDefault();
      action();
    }
  });
}

// One cell of the study viewer: a canvas, a caption with the window and zoom, and for
// more than one frame a slider and cine (play/pause, frames per second); interact()'s
// mouse and keys on the image.
export class Viewport {
  constructor(cell, display) {
    this.display = display;
    this.seriesUrl = `${DICOMWEB}/studies/${encodeURIComponent(display.study)}/series/${encodeURIComponent(display.series)}`;
    this.images = [];
    this.index = 0;
    this.cache = new Map();
    this.window = null;
    this.current = null;
    this.zoom = 1;
    this.panX = 0;
    this.panY = 0;
    this.timer = null;
    this.ticket = 0;
    this.canvas = el("canvas");
    this.context = this.canvas.getContext("2d");
    this.caption = el("span");
    this.overlay = el("span", { class: "vp-info" });
    this.slider = el("input", { type: "range", min: "1", max: "1", value: "1", "aria-label": "Frame" });
    this.play = el("button", { type: "button", text: "Play", "aria-pressed": "false" });
    this.fps = el("input", { type: "number", min: "1", max: "120", step: "1", value: String(DEFAULT_FPS), "aria-label": "Frames per second" });
    this.controls = el("div", { class: "vp-controls", hidden: "" }, this.play, this.fps, el("span", { text: "frames/s" }), this.slider);
    this.stage = el("div", {
      class: "vp-stage",
      tabindex: "0",
      role: "application",
      "aria-label": "Image: mouse wheel or arrow keys scroll, drag changes window and level, shift-drag pans, control-wheel or +/- zoom",
    }, this.canvas);
    cell.replaceChildren(this.stage, el("div", { class: "vp-caption" }, this.caption, this.overlay), this.controls);
    cell.dataset.series = display.series;
    if (display.instance) cell.dataset.instance = display.instance;
    this.slider.addEventListener("input", () => this.show(Number(this.slider.value) - 1));
    this.play.addEventListener("click", () => (this.timer ? this.pause() : this.start()));
    this.fps.addEventListener("change", () => {
      if (this.timer) this.start();
    });
    interact(this.stage, this);
  }

  dragWindow() {
    return this.window || rangeWindow(this.current);
  }

  setWindow(center, width) {
    this.window = [center, Math.max(1, width)];
    if (this.current) this.draw(this.current);
  }

  panOffset() {
    return [this.panX, this.panY];
  }

  setPan(x, y) {
    this.panX = x;
    this.panY = y;
    this.place();
  }

  zoomBy(factor) {
    this.zoom = Math.max(0.1, Math.min(20, this.zoom * factor));
    this.place();
  }

  step(delta) {
    this.show(this.index + delta);
  }

  // Zoom and pan move the canvas, so neither repaints the image.
  place() {
    this.canvas.style.transform = `translate(${this.panX}px, ${this.panY}px) scale(${this.zoom})`;
    this.info();
  }

  info() {
    const w = this.window;
    this.overlay.textContent = `${w ? `W ${Math.round(w[1])} L ${Math.round(w[0])}` : "W/L full range"} · Zoom ${Math.round(this.zoom * 100)}%`;
  }

  draw(frame) {
    paint(this.context, frame, this.window);
    this.canvas.dataset.windowCenter = this.window ? String(this.window[0]) : "";
    this.canvas.dataset.windowWidth = this.window ? String(this.window[1]) : "";
    this.canvas.dataset.draws = String(Number(this.canvas.dataset.draws || 0) + 1);
    this.info();
  }

  async load() {
    const { items } = await dicomJson(`${this.seriesUrl}/metadata`);
    const mine = this.display.instance ? items.filter((i) => first(i, "00080018") === this.display.instance) : items;
    if (!mine.length) throw new Error("series not found");
    this.images = imagesOf(mine);
    const head = mine[0];
    const description = [this.display.prior ? "Prior" : "", this.display.modality, this.display.description, this.display.laterality, this.display.view];
    this.caption.textContent = `${description.filter(Boolean).join(" ")} (${this.images.length} image${this.images.length === 1 ? "" : "s"})`;
    if (this.images.length > 1) {
      this.controls.hidden = false;
      this.slider.max = String(this.images.length);
      this.fps.value = String(Math.round(cineRate(head) * 100) / 100);
    }
    await this.show(0);
  }

  frame(index) {
    if (!this.cache.has(index)) {
      const promise = loadFrame(this.seriesUrl, this.images[index]);
      promise.catch(() => this.cache.delete(index));
      this.cache.set(index, promise);
    }
    return this.cache.get(index);
  }

  async show(index) {
    const count = this.images.length;
    if (!count) return;
    const target = ((index % count) + count) % count;
    this.index = target;
    this.slider.value = String(target + 1);
    const ticket = (this.ticket += 1);
    const frame = await this.frame(target);
    if (ticket !== this.ticket) return;
    if (this.window === null) this.window = frame.image.window ? [...frame.image.window] : null;
    if (this.canvas.width !== frame.image.columns || this.canvas.height !== frame.image.rows) {
      this.canvas.width = frame.image.columns;
      this.canvas.height = frame.image.rows;
    }
    this.current = frame;
    this.draw(frame);
    markFirstImage();
    this.canvas.dataset.instance = frame.image.instance;
    this.canvas.dataset.frame = String(frame.image.frame);
    this.canvas.dataset.index = String(target);
    if (target + 1 < count) this.frame(target + 1).catch(() => {});
  }

  // Cine: one frame every 1/fps s, looping; a frame not loaded yet is waited for.
  start() {
    this.pause();
    const fps = Math.max(1, Math.min(120, Number(this.fps.value) || DEFAULT_FPS));
    this.play.textContent = "Pause";
    this.play.setAttribute("aria-pressed", "true");
    this.timer = setInterval(() => this.show(this.index + 1), 1000 / fps);
  }

  pause() {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
    this.play.textContent = "Play";
    this.play.setAttribute("aria-pressed", "false");
  }
}
