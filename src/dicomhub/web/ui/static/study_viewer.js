// The study viewer: the study laid out by the hanging protocol the server chose
// (/api/studies/{study}/hanging), one Viewport (viewport.js) per cell of its grid.
import { json, setStatus, start } from "./api.js";
import { Viewport } from "./viewport.js";

const study = document.getElementById("main").dataset.study;
const grid = document.getElementById("grid");

start(async () => {
  document.getElementById("back").href = `/ui/studies/${encodeURIComponent(study)}`;
  setStatus("Loading the study…");
  let layout;
  try {
    layout = await json(`/api/studies/${encodeURIComponent(study)}/hanging`);
  } catch (error) {
    throw new Error(String(error.message).startsWith("404") ? "No such study, or you may not see it." : error.message);
  }
  document.getElementById("protocol").textContent = `Hanging protocol: ${layout.protocol} (${layout.rows} × ${layout.columns})`;
  grid.style.gridTemplateColumns = `repeat(${layout.columns}, 1fr)`;
  grid.style.gridTemplateRows = `repeat(${layout.rows}, 1fr)`;
  grid.dataset.protocol = layout.protocol;
  const loads = [];
  grid.replaceChildren();
  for (const display of layout.viewports) {
    const cell = document.createElement("div");
    cell.className = "vp";
    grid.append(cell);
    if (!display) {
      cell.classList.add("empty");
      continue;
    }
    if (display.prior) cell.classList.add("prior");
    loads.push(new Viewport(cell, display).load());
  }
  await Promise.all(loads);
  setStatus(`${loads.length} viewport${loads.length === 1 ? "" : "s"}`);
});
