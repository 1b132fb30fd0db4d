// Peers (/admin/peers): list, add or edit (PUT replaces every field), remove, verify
// (POST /admin/peers/NAME/echo: a C-ECHO and/or a one-study QIDO-RS).
import { el, json, setStatus, start } from "./api.js";
import { button, fill, gate, post, row, words } from "./admin.js";

const form = document.getElementById("peer-form");
const tbody = document.querySelector("#peers tbody");
const FIELDS = ["ae_title", "host", "dicomweb_url", "description"];
let registered = new Set(); // peers of the index: saving one of these changes only the form's fields

function path(name) {
  return `/admin/peers/${encodeURIComponent(name)}`;
}

function edit(peer) {
  form.elements.name.value = peer.name;
  for (const f of FIELDS) form.elements[f].value = peer[f] || "";
  form.elements.port.value = peer.port ?? "";
  form.elements.roles.value = (peer.roles || []).join(", ");
  form.elements.name.focus();
}

async function verify(peer, output) {
  output.textContent = "Verifying…";
  output.className = "";
  const found = await post(`${path(peer.name)}/echo`);
  const parts = [];
  for (const [what, label] of [["dimse", "C-ECHO"], ["dicomweb", "QIDO-RS"]]) {
    const r = found[what];
    if (r) parts.push(`${label} ${r.ok ? "succeeded" : "failed"}${r.status ? ` (${r.status})` : ""} in ${r.seconds} s${r.ok ? "" : `: ${r.detail}`}`);
  }
  output.textContent = parts.join("; ");
  output.className = found.ok ? "ok" : "error";
}

async function load() {
  const peers = await json("/admin/peers");
  registered = new Set(peers.filter((p) => p.source !== "config").map((p) => p.name));
  fill(
    tbody,
    peers.map((peer) => {
      const output = el("output", { "aria-live": "polite" });
      const actions = el("span", { class: "inline" }, button("Verify", () => verify(peer, output), { "aria-label": `Verify ${peer.name}` }));
      if (peer.source !== "config") {
        actions.append(
          button("Edit", () => edit(peer), { "aria-label": `Edit ${peer.name}` }),
          button("Remove", () => remove(peer), { "aria-label": `Remove ${peer.name}` }),
        );
      }
      const tr = row(peer.name, peer.ae_title, peer.host, peer.port ?? "", peer.dicomweb_url, (peer.roles || []).join(", "), peer.source, actions, output);
      tr.dataset.peer = peer.name;
      return tr;
    }),
    "No peers are registered.",
  );
}

async function remove(peer) {
  if (!window.confirm(`Remove the peer ${peer.name}?`)) return;
  await json(path(peer.name), { method: "DELETE" });
  setStatus(`Removed ${peer.name}.`);
  await load();
}

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  const name = form.elements.name.value.trim();
  const body = {};
  for (const f of FIELDS) body[f] = form.elements[f].value.trim();
  const port = form.elements.port.value.trim();
  body.port = port ? Number(port) : null;
  body.roles = words(form.elements.roles.value);
  try {
    // PATCH keeps what the form does not show (credentials, TLS); PUT creates.
    const method = registered.has(name) ? "PATCH" : "PUT";
    await json(path(name), { method, headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
    setStatus(`Saved ${name}.`);
    form.reset();
    await load();
  } catch (error) {
    setStatus(String(error.message || error), true);
  }
});

start(async () => {
  if (await gate()) await load();
});
