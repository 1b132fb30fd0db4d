// What the admin pages share: the "not allowed" gate and small table helpers.
// The gate only decides what the page shows; every admin route checks the
// caller's grants again and answers 403 without the administer grant.
import { el, json, setStatus } from "./api.js";

// The caller (GET /api/me), after showing the page's content to an administrator
// or the "not allowed" message to anyone else; null for the latter.
export async function gate() {
  const me = await json("/api/me");
  if (!me.administer) {
    const denied = document.getElementById("denied");
    denied.textContent =
      `Not allowed: ${me.name || "this caller"} does not hold the administer grant, ` +
      "and this page only shows what an administrator may see.";
    denied.hidden = false;
    return null;
  }
  document.getElementById("admin").hidden = false;
  return me;
}

export function row(...cells) {
  return el("tr", {}, ...cells.map((c) => (c instanceof Node ? el("td", {}, c) : el("td", { text: c ?? "" }))));
}

export function fill(tbody, rows, empty) {
  tbody.replaceChildren(...rows);
  if (!rows.length) {
    const columns = tbody.closest("table").querySelectorAll("thead th").length;
    tbody.append(el("tr", {}, el("td", { colspan: String(columns), class: "none", text: empty })));
  }
}

export function button(label, onClick, attributes = {}) {
  const b = el("button", { type: "button", ...attributes, text: label });
  b.addEventListener("click", () => {
    b.disabled = true;
    Promise.resolve(onClick())
      .catch((error) => setStatus(String(error.message || error), true))
      .finally(() => {
        b.disabled = false;
      });
  });
  return b;
}

export function when(iso) {
  if (!iso) return "";
  const d = new Date(iso);
  return Number.isNaN(d.getTime()) ? String(iso) : d.toLocaleString();
}

export function define(dl, entries) {
  dl.replaceChildren(
    ...entries.flatMap(([term, value]) => [el("dt", { text: term }), el("dd", { text: String(value ?? "") })]),
  );
}

export function post(path, body) {
  return json(path, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body ?? {}),
  });
}

export function words(text) {
  return text
    .split(",")
    .map((w) => w.trim())
    .filter(Boolean);
}
