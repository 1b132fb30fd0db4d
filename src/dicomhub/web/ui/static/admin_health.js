// Health: /healthz, the archive's gauges from /metrics (objects held, decode failures,
// Storage Commitment states, background queues), validation by source, decode failures.
import { json, ok, start } from "./api.js";
import { define, fill, gate, row } from "./admin.js";

// Prometheus text exposition: "name{label="value"} number" lines, for the gauges shown here.
function gauges(exposition) {
  const found = {};
  for (const line of exposition.split("\n")) {
    const m = /^(dicomhub_[a-z_]+)(?:\{([^}]*)\})? ([0-9.eE+-]+)$/.exec(line);
    if (!m) continue;
    const label = m[2] ? (/="([^"]*)"/.exec(m[2]) || [])[1] || "" : "";
    (found[m[1]] ||= {})[label] = Number(m[3]);
  }
  return found;
}

function yesNo(value) {
  return value ? "ok" : "unavailable";
}

start(async () => {
  if (!(await gate())) return;
  const health = await (await fetch("/healthz")).json();
  define(document.getElementById("health"), [
    ["Status", health.status],
    ["Version", health.version],
    ["Index", yesNo(health.index)],
    ["Storage", yesNo(health.storage)],
    ["DIMSE", yesNo(health.dimse)],
  ]);
  const g = gauges(await (await ok("/metrics")).text());
  const objects = g.dicomhub_objects || {};
  define(document.getElementById("storage"), [
    ...Object.entries(objects).map(([level, n]) => [`${level[0].toUpperCase()}${level.slice(1)}`, n]),
    ["Decode failures", (g.dicomhub_decode_failures || {})[""] ?? 0],
    ...Object.entries(g.dicomhub_storage_commitments || {}).map(([state, n]) => [`Storage commitments ${state}`, n]),
  ]);
  define(
    document.getElementById("background"),
    Object.entries(g.dicomhub_background_queue_depth || {}).map(([queue, n]) => [`Waiting: ${queue}`, n]),
  );
  const sources = await json("/admin/validation/summary");
  fill(
    document.querySelector("#validation tbody"),
    sources.map((s) =>
      row(
        s.source_ae_title ?? "(not over DIMSE)",
        String(s.instances_checked),
        String(s.instances_with_errors),
        String(s.instances_with_warnings),
        String(s.instances_rejected),
      ),
    ),
    "Nothing validated yet.",
  );
  const failures = await json("/admin/decode-failures");
  fill(
    document.querySelector("#decode tbody"),
    failures.slice(0, 100).map((f) => row(f.sop_instance_uid, f.transfer_syntax_uid, f.reason)),
    "No decode failures.",
  );
});
