// Recent DIMSE associations (/admin/associations, newest first) and counts over them.
import { el, json, start } from "./api.js";
import { define, fill, gate, row, when } from "./admin.js";

// {"C-STORE": {"0x0000": 3}} or {"C-ECHO": 1}: one line per operation.
function operations(ops) {
  if (!ops || typeof ops !== "object") return "";
  return Object.entries(ops)
    .map(([op, v]) => {
      if (v && typeof v === "object") {
        return `${op} ${Object.entries(v).map(([status, n]) => `${n}×${status}`).join(" ")}`;
      }
      return `${op} ×${v}`;
    })
    .join("; ");
}

start(async () => {
  if (!(await gate())) return;
  const found = await json("/admin/associations?limit=200");
  const outcomes = {};
  const callers = new Set();
  for (const a of found) {
    outcomes[a.outcome] = (outcomes[a.outcome] || 0) + 1;
    callers.add(a.calling_ae_title);
  }
  define(document.getElementById("counts"), [
    ["Associations listed", found.length],
    ["Calling AEs", callers.size],
    ...Object.entries(outcomes).map(([outcome, n]) => [`Outcome ${outcome}`, n]),
  ]);
  fill(
    document.querySelector("#associations tbody"),
    found.map((a) => {
      const status = el("span", { class: a.outcome === "accepted" || a.outcome === "released" ? "" : "error", text: a.reason ? `${a.outcome} (${a.reason})` : a.outcome });
      return row(when(a.started_at), a.calling_ae_title, a.called_ae_title, a.peer_host, `${(a.milliseconds / 1000).toFixed(2)} s`, operations(a.operations), status);
    }),
    "No associations yet.",
  );
});
